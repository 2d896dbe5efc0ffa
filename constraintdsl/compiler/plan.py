"""The Plan: a spec resolved for one model, as pure data the torch-only runtime interprets.

``payload`` is what travels (to the runtime, and to NDIF); ``entries`` name each statement × layer × site
for telemetry.  ``explain()`` prints it; ``telemetry(tele)`` turns a run's accumulated sums into rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from constraintdsl.errors import Diagnostic
from constraintdsl.lang.spec import Spec
from constraintdsl.models.loading import ModelIdentity

from .explain import explain
from .telemetry import Entry, TelemetryRow, summarize

__all__ = ["Entry", "Plan"]


@dataclass(frozen=True)
class Plan:
    """A spec resolved for one model: per-site op codes, tensors, bounds, positions and gates.

    Pure data: print it (``explain()``) to see what will run.  ``cdsl.compile`` returns it bound to its
    model (:class:`constraintdsl.run.api.BoundPlan`), which adds ``generate``/``trace``/``apply``.
    """

    spec: Spec
    model: ModelIdentity
    payload: dict[str, Any]
    entries: tuple[Entry, ...]
    concepts: Mapping[str, str]  # concept name → artifact path (or "<given>")
    model_ref: Any = field(default=None, repr=False, compare=False)  # the model it was resolved for
    warnings: tuple[Diagnostic, ...] = field(default=(), compare=False)  # severity "warning", by location

    def explain(self) -> str:
        """Human-readable resolved plan: layers, raw bounds per layer, positions, gates, groups."""
        return explain(self)

    def telemetry(self, tele: Any) -> list[TelemetryRow]:
        """Telemetry rows (calibrated units) from a run's accumulated telemetry tensor."""
        return summarize(self.entries, tele)
