"""Telemetry rows: which statements bound, where, how hard (DESIGN §3, "which joints bear the load").

The runtime accumulates raw sums per plan entry (statement × layer × site); this module turns
them into per-entry rows in calibrated units and relative to ‖h‖.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from constraintdsl.errors import Span
from constraintdsl.runtime.interventions import TELEMETRY_FIELDS

__all__ = ["Entry", "TelemetryRow", "summarize"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One telemetry row: a statement at one layer and site, with what converts raw to calibrated."""

    statement: int  # index into spec.constraints
    text: str  # the statement in canonical DSL
    keyword: str
    concept: str
    layer: int
    site: str
    scale: float | None  # raw units per calibrated unit (pole distance); None for raw-only concepts
    offset: float | None  # raw value of calibrated 0 (negative pole mean)
    lo: float  # resolved raw bounds for bounds, the raw amount/factor for actions
    hi: float
    span: Span = field(compare=False)


@dataclass(frozen=True, slots=True)
class TelemetryRow:
    """One statement at one layer and site, over every token it saw."""

    statement: str
    line: int
    layer: int
    site: str
    selected: int  # tokens the statement applied to
    binding: int  # tokens it moved
    binding_fraction: float
    mean_correction: float | None  # |Δ projection| where binding, calibrated units (raw when uncalibrated)
    max_correction: float | None
    mean_relative: float | None  # ‖Δh‖ / ‖h‖ where binding
    max_relative: float | None
    before: float | None  # mean projection over selected tokens, calibrated (raw when uncalibrated)
    after: float | None
    units: str  # "calibrated" or "raw"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(entries: Sequence[Entry], tele: torch.Tensor) -> list[TelemetryRow]:
    """Rows for every plan entry from an accumulated telemetry tensor ``[n_entries, 8]``."""
    idx = {name: i for i, name in enumerate(TELEMETRY_FIELDS)}
    t = tele.detach().to(torch.float64).cpu()
    rows = []
    for i, e in enumerate(entries):
        r = t[i]
        sel, bind = int(r[idx["selected"]]), int(r[idx["binding"]])
        calibrated = e.scale is not None and abs(e.scale) > 0
        scale = abs(e.scale) if calibrated and e.scale is not None else 1.0
        offset = e.offset if calibrated and e.offset is not None else 0.0
        div = e.scale if calibrated and e.scale is not None else 1.0

        def mean(key: str, n: int, r: torch.Tensor = r) -> float | None:
            return float(r[idx[key]]) / n if n else None

        corr = mean("corr_sum", bind)
        before = mean("before_sum", sel)
        after = mean("after_sum", sel)
        rows.append(
            TelemetryRow(
                statement=e.text,
                line=e.span.line,
                layer=e.layer,
                site=e.site,
                selected=sel,
                binding=bind,
                binding_fraction=bind / sel if sel else 0.0,
                mean_correction=None if corr is None else corr / scale,
                max_correction=float(r[idx["corr_max"]]) / scale if bind else None,
                mean_relative=mean("rel_sum", bind),
                max_relative=float(r[idx["rel_max"]]) if bind else None,
                before=None if before is None else (before - offset) / div,
                after=None if after is None else (after - offset) / div,
                units="calibrated" if calibrated else "raw",
            )
        )
    return rows
