"""Where a model's traces run: on the model's own device, or on NDIF.

:func:`on_device` moves inputs to the model; :func:`run_backend` picks the nnsight backend a run goes
through (None for a local run, one for NDIF when ``remote`` is set).  Every stage that runs the model
(extraction, generation, measurement passes) goes through these two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import ndif

__all__ = ["on_device", "run_backend"]


def on_device(model: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` moved to the device of ``model``'s first parameter (unchanged for a meta or
    unknown device, e.g. a model built lazily for a remote run)."""
    module = getattr(model, "__dict__", {}).get("_module", model)
    try:
        device = next(module.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return tensors
    if device.type == "meta":
        return tensors
    return {k: v.to(device) for k, v in tensors.items()}


def run_backend(
    model: Any,
    payloads: Sequence[dict[str, Any] | None],
    remote: bool | str,
    *,
    blocking: bool = True,
    timeout: float | None = None,
    progress: Callable[[str], None] | None = None,
    given: Any = None,
) -> Any:
    """The backend a run goes through: ``given`` (with the runtime registered to travel by value, as
    any non-local backend may serialize the block), one for NDIF when ``remote`` is set, else None."""
    if given is None and not remote:
        return None
    if given is not None:
        ndif.register_runtime()
        return given
    ndif.check_payloads(model, payloads)
    return ndif.backend_for(model, remote, blocking=blocking, timeout=timeout, progress=progress)
