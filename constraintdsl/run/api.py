"""The model-facing Python API: compile a spec for a model, run it, apply it inside your own nnsight
blocks, or install it persistently.

Every function here raises :class:`~constraintdsl.errors.SpecError` for bad input (a spec, a missing
file, a model that does not fit the plan) and :class:`TypeError` for an argument of the wrong type.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

from constraintdsl.compiler.plan import Plan
from constraintdsl.compiler.resolve import check_plan_model
from constraintdsl.compiler.resolve import resolve as resolve_plan
from constraintdsl.errors import public
from constraintdsl.lang.loading import load
from constraintdsl.lang.spec import Spec
from constraintdsl.models.sites import hf_module

from . import runner

__all__ = ["BoundPlan", "apply", "compile", "install", "resolve", "uninstall"]


@dataclass(frozen=True)
class BoundPlan(Plan):
    """A :class:`Plan` bound to the model it was resolved for: it can run itself.

    ``generate``/``trace`` run prompts with the plan applied; ``apply`` goes inside your own
    ``with model.generate(...)`` / ``model.trace(...)`` block.  Pass ``model=`` to run it on another
    instance of the same model.
    """

    @classmethod
    def of(cls, plan: Plan) -> BoundPlan:
        """``plan`` with the run methods (the same data; nothing is copied)."""
        return cls(**{f.name: getattr(plan, f.name) for f in fields(plan)})

    @public
    def generate(self, prompts: Any, *, model: Any = None, **kwargs: Any) -> runner.GenerateResult:
        """Generate from ``prompts`` with the plan applied at every step; returns texts, ids and
        telemetry (see :func:`constraintdsl.run.runner.generate`; rows via :meth:`telemetry`).

        ``model`` (default: the one it was compiled for) must be that model: another one is an error
        before anything runs."""
        return runner.generate(self.target(model), self.payload, prompts, **kwargs)

    @public
    def trace(self, inputs: Any, *, model: Any = None, **kwargs: Any) -> runner.TraceResult:
        """One forward pass over ``inputs`` with the plan applied; returns logits and telemetry."""
        return runner.trace(self.target(model), self.payload, inputs, **kwargs)

    @public
    def apply(self, state: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Apply inside your own ``with model.generate(...)`` / ``model.trace(...)`` block (see
        :func:`constraintdsl.run.runner.apply`); returns the run state, whose ``"tele"`` is saved."""
        result: dict[str, Any] = runner.apply(self.target(None), self.payload, state, **kwargs)
        return result

    def target(self, model: Any = None) -> Any:
        """The model to run on: ``model`` when given, else the one the plan was compiled for.

        A model other than that one is checked first: same id and revision, layer count and hidden size,
        or a :class:`UserError` that says which differ (the plan's directions and layers belong to its
        model).  An object that is not a model is a :class:`TypeError`.
        """
        return plan_target(self, model)


def plan_target(plan: Plan, model: Any = None) -> Any:
    """The model ``plan`` runs on (see :meth:`BoundPlan.target`)."""
    target = plan.model_ref if model is None else model
    if target is None:
        raise TypeError("this plan holds no model object; pass model=")
    if target is not plan.model_ref:
        check_plan_model(plan.model, target)
    return target


def _model(model: Any, where: str) -> Any:
    if hf_module(model) is None:
        hint = " (load one with constraintdsl.load_model(name))" if isinstance(model, str) else ""
        raise TypeError(
            f"{where} needs a model: an nnsight TransformersModel or a transformers model, "
            f"not {type(model).__name__}{hint}"
        )
    return model


def _spec(spec: Any, where: str) -> Spec:
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, str | os.PathLike):
        return load(spec)
    raise TypeError(f"{where} takes a Spec or the path of a spec file, not {type(spec).__name__}")


def resolve(spec: Spec, model: Any, **kwargs: Any) -> BoundPlan:
    """Resolve ``spec`` for ``model`` (see :func:`constraintdsl.compiler.resolve.resolve`), bound to it."""
    return BoundPlan.of(resolve_plan(spec, model, **kwargs))


@public
def compile(spec: Spec | str | os.PathLike[str], model: Any, **kwargs: Any) -> BoundPlan:
    """Resolve a spec (or a spec file) for ``model`` into a :class:`BoundPlan`; see :func:`resolve`."""
    return resolve(_spec(spec, "compile()"), _model(model, "compile()"), **kwargs)


@public
def apply(plan: Plan | Spec | str | os.PathLike[str], model: Any = None, **kwargs: Any) -> dict[str, Any]:
    """Apply a plan inside the caller's ``with model.generate(...)`` / ``model.trace(...)`` block.

    Given a spec instead of a plan, it is compiled for ``model`` first (better: compile once,
    outside the block).  A plan applied to a model other than the one it was compiled for is an
    error before anything is traced.  Returns the run state; its ``"tele"`` tensor is saved.
    """
    if not isinstance(plan, Plan):
        if model is None:
            raise TypeError("apply(spec, model): a spec needs the model to compile it for")
        plan = compile(plan, model)
    result: dict[str, Any] = runner.apply(plan_target(plan, model), plan.payload, **kwargs)
    return result


@public
def install(plan: Plan, model: Any = None) -> None:
    """Keep ``plan`` on the model for every later trace and generate (an nnsight edit)."""
    if not isinstance(plan, Plan):
        raise TypeError(f"install() takes a Plan (from constraintdsl.compile), not {type(plan).__name__}")
    runner.install(plan_target(plan, model), plan.payload)


@public
def uninstall(model: Any) -> None:
    """Remove what :func:`install` put on ``model`` (other edits stay)."""
    runner.uninstall(_model(model, "uninstall()"))
