"""The model-facing Python API: compile a spec for a model, apply it inside your own nnsight
blocks, or install it persistently."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .compiler import Plan, resolve
from .load import load
from .spec import Spec

__all__ = ["apply", "compile", "install", "uninstall"]


def compile(spec: Spec | str | Path, model: Any, **kwargs: Any) -> Plan:
    """Resolve a spec (or a spec file) for ``model`` into a :class:`Plan`; see :func:`resolve`."""
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
    from . import runner

    result: dict[str, Any] = runner.apply(model or plan.model_ref, plan.payload, **kwargs)
    return result


def install(plan: Plan, model: Any = None) -> None:
    """Keep ``plan`` on the model for every later trace and generate (an nnsight edit)."""
    from . import runner

    runner.install(model or plan.model_ref, plan.payload)


def uninstall(model: Any) -> None:
    """Remove what :func:`install` put on ``model`` (other edits stay)."""
    from . import runner

    runner.uninstall(model)
