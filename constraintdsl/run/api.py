"""The model-facing Python API: compile a spec for a model, run it, apply it inside your own nnsight
blocks, or install it persistently."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from constraintdsl.compiler.plan import Plan
from constraintdsl.compiler.resolve import resolve as resolve_plan
from constraintdsl.lang.loading import load
from constraintdsl.lang.spec import Spec

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

    def generate(self, prompts: Any, *, model: Any = None, **kwargs: Any) -> runner.GenerateResult:
        """Generate from ``prompts`` with the plan applied at every step; returns texts, ids and
        telemetry (see :func:`constraintdsl.run.runner.generate`; rows via :meth:`telemetry`)."""
        return runner.generate(model or self.model_ref, self.payload, prompts, **kwargs)

    def trace(self, inputs: Any, *, model: Any = None, **kwargs: Any) -> runner.TraceResult:
        """One forward pass over ``inputs`` with the plan applied; returns logits and telemetry."""
        return runner.trace(model or self.model_ref, self.payload, inputs, **kwargs)

    def apply(self, state: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Apply inside your own ``with model.generate(...)`` / ``model.trace(...)`` block (see
        :func:`constraintdsl.run.runner.apply`); returns the run state, whose ``"tele"`` is saved."""
        result: dict[str, Any] = runner.apply(self.model_ref, self.payload, state, **kwargs)
        return result


def resolve(spec: Spec, model: Any, **kwargs: Any) -> BoundPlan:
    """Resolve ``spec`` for ``model`` (see :func:`constraintdsl.compiler.resolve.resolve`), bound to it."""
    return BoundPlan.of(resolve_plan(spec, model, **kwargs))


def compile(spec: Spec | str | Path, model: Any, **kwargs: Any) -> BoundPlan:
    """Resolve a spec (or a spec file) for ``model`` into a :class:`BoundPlan`; see :func:`resolve`."""
    return resolve(load(spec) if isinstance(spec, str | Path) else spec, model, **kwargs)


def apply(plan: Plan | Spec | str | Path, model: Any = None, **kwargs: Any) -> dict[str, Any]:
    """Apply a plan inside the caller's ``with model.generate(...)`` / ``model.trace(...)`` block.

    Given a spec instead of a plan, it is compiled for ``model`` first (better: compile once,
    outside the block).  Returns the run state; its ``"tele"`` tensor is saved.
    """
    if not isinstance(plan, Plan):
        if model is None:
            raise TypeError("apply(spec, model): a spec needs the model to compile it for")
        plan = compile(plan, model)
    result: dict[str, Any] = runner.apply(model or plan.model_ref, plan.payload, **kwargs)
    return result


def install(plan: Plan, model: Any = None) -> None:
    """Keep ``plan`` on the model for every later trace and generate (an nnsight edit)."""
    runner.install(model or plan.model_ref, plan.payload)


def uninstall(model: Any) -> None:
    """Remove what :func:`install` put on ``model`` (other edits stay)."""
    runner.uninstall(model)
