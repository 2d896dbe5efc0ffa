"""The model-facing Python API: compile a spec for a model, apply it inside your own nnsight
blocks, or install it persistently.

Every function here raises :class:`~constraintdsl.errors.SpecError` for bad input (a spec, a missing
file, a model that does not fit the plan) and :class:`TypeError` for an argument of the wrong type.
"""

from __future__ import annotations

import os
from typing import Any

from .compiler import Plan, resolve
from .errors import public
from .load import load
from .sites import hf_module
from .spec import Spec

__all__ = ["apply", "compile", "install", "uninstall"]


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


@public
def compile(spec: Spec | str | os.PathLike[str], model: Any, **kwargs: Any) -> Plan:
    """Resolve a spec (or a spec file) for ``model`` into a :class:`Plan`; see :func:`resolve`."""
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
    from . import runner

    result: dict[str, Any] = runner.apply(plan.target(model), plan.payload, **kwargs)
    return result


@public
def install(plan: Plan, model: Any = None) -> None:
    """Keep ``plan`` on the model for every later trace and generate (an nnsight edit)."""
    if not isinstance(plan, Plan):
        raise TypeError(f"install() takes a Plan (from constraintdsl.compile), not {type(plan).__name__}")
    from . import runner

    runner.install(plan.target(model), plan.payload)


@public
def uninstall(model: Any) -> None:
    """Remove what :func:`install` put on ``model`` (other edits stay)."""
    from . import runner

    runner.uninstall(_model(model, "uninstall()"))
