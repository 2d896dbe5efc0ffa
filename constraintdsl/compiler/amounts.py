"""Judging a statement's amounts once they are resolved for a model: errors and warnings.

Errors (the spec is refused, located at the statement):

- a value that is not finite, or whose magnitude no dtype can hold (beyond float32's ±3.4e38, the
  dtype every projection is computed in), is refused by the parser already
  (:func:`constraintdsl.parser.number_problem`; ``cdsl check`` too);
- a raw bound or amount beyond the model dtype's range at some layer;
- for a calibrated concept, an effect beyond :data:`MAX_POLE_DISTANCES` pole distances: a ``steer``
  amount, a bound's distance from the negative pole, or the change a ``scale`` factor makes to the
  largest projection the concept's calibration saw at that layer.

Warnings (legal and exact, but likely not what the author meant; ``--strict`` makes them errors):

- **steer stacking**: the residual stream keeps what each layer adds, so a steer over several layers
  adds its amount once per layer; warned when the sum over its layers exceeds
  :data:`STEER_WARN_POLE_DISTANCES` pole distances of the last layer;
- **ablate between the poles**: ``ablate`` pins the raw projection to 0; for a mean-difference direction
  raw 0 usually lies between the two pole means, so ablating moves text that sits below it *towards* the
  concept; warned when raw 0 lies strictly between the poles (calibrated 0 < value < 1) at some layer;
- **a floor over most text**: a lower bound (``clamp >=``, ``clamp in``, ``pin``) on ``all`` or
  ``prompt`` tokens at more than :data:`FEW_LAYERS` layers, which at more than :data:`FEW_LAYERS` of them
  lies above the :data:`FLOOR_WARN_PERCENTILE`-th percentile of the concept's held-out calibration
  projections (both poles together): more than three quarters of the text the concept was measured on sits
  below it, so it would move most tokens of ordinary text at every one of those layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from constraintdsl.errors import Diagnostic
from constraintdsl.lang.canonical import format_number, statement_dsl
from constraintdsl.lang.nodes import Ablate, Clamp, Pin, Scale, Steer, Tokens, Value
from constraintdsl.lang.parser import FLOAT32_MAX

if TYPE_CHECKING:
    from constraintdsl.concepts.artifact import ConceptArtifact
    from constraintdsl.lang.nodes import Op

__all__ = [
    "FEW_LAYERS",
    "FLOOR_WARN_PERCENTILE",
    "MAX_POLE_DISTANCES",
    "STEER_WARN_POLE_DISTANCES",
    "Resolved",
    "judge",
    "resolved_row",
]

MAX_POLE_DISTANCES = 1000.0
STEER_WARN_POLE_DISTANCES = 3.0
FEW_LAYERS = 3
FLOOR_WARN_PERCENTILE = 75.0


@dataclass(frozen=True, slots=True)
class Resolved:
    """One statement at one layer, resolved: raw ``lo``/``hi`` (bounds), or the raw amount / factor in
    both (steer / scale), with the concept's calibration row at that layer (None when uncalibrated)."""

    layer: int
    lo: float
    hi: float
    scale: float | None = None  # pole distance, raw
    neg_mean: float | None = None
    reach: float | None = None  # the largest |projection| the calibration saw (raw): |p1|, |p99|, the poles
    p_floor: float | None = None  # the FLOOR_WARN_PERCENTILE-th percentile of the calibration, raw

    def cal(self, raw: float) -> float | None:
        """``raw`` in calibrated units at this layer (0 the negative pole, 1 the positive), if calibrated."""
        if self.scale is None or self.neg_mean is None or not self.scale:
            return None
        return (raw - self.neg_mean) / self.scale


def resolved_row(art: ConceptArtifact, layer: int, lo: float, hi: float) -> Resolved:
    """A :class:`Resolved` for ``layer`` with the calibration of ``art`` at that layer (if any)."""
    cal = art.calibration
    if cal is None:
        return Resolved(layer, lo, hi)
    row = art.row(layer)
    levels = list(cal.levels)
    pct = np.asarray(cal.percentiles[row], dtype=np.float64)
    reach = max(abs(float(pct[0])), abs(float(pct[-1])), abs(float(cal.pos_mean[row])), abs(float(cal.neg_mean[row])))
    return Resolved(
        layer,
        lo,
        hi,
        scale=float(cal.scale[row]),
        neg_mean=float(cal.neg_mean[row]),
        reach=reach,
        p_floor=float(np.interp(FLOOR_WARN_PERCENTILE, levels, pct)),
    )


def _g(x: float) -> str:
    return f"{x:.3g}"


def _layers(rows: Sequence[Resolved]) -> str:
    layers = [r.layer for r in rows]
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}-{layers[-1]}"
    return ("layer " if len(layers) == 1 else "layers ") + ",".join(map(str, layers))


def judge(op: Op, rows: Sequence[Resolved], dtype_max: float, dtype: str) -> tuple[list[Diagnostic], list[Diagnostic]]:
    """Errors and warnings for ``op`` resolved at ``rows`` (ascending layers) in a model whose activation
    dtype ``dtype`` holds magnitudes up to ``dtype_max``.  At most one error per statement."""
    text = statement_dsl(op)
    error = _range_error(op, rows, dtype_max, dtype) or _pole_error(op, rows)
    if error is not None:
        return [Diagnostic(op.span, error[0], error[1])], []
    warnings = [w for w in (_steer_stack(op, rows, text), _ablate_between(op, rows), _floor(op, rows)) if w]
    return [], warnings


def _range_error(op: Op, rows: Sequence[Resolved], dtype_max: float, dtype: str) -> tuple[str, str] | None:
    limit = min(dtype_max, FLOAT32_MAX)
    for r in rows:
        for raw in {r.lo, r.hi}:
            if math.isinf(raw) and isinstance(op, Clamp):
                continue  # an open side of a clamp
            if not math.isfinite(raw) or abs(raw) > limit:
                what = "factor" if isinstance(op, Scale) else "amount" if isinstance(op, Steer) else "bound"
                return (
                    f"at layer {r.layer} this {what} is {_g(raw)}{'' if isinstance(op, Scale) else ' raw'}, "
                    f"beyond the range of {dtype} (±{_g(limit)})",
                    "use a smaller value; `cdsl explain` shows each statement's raw value per layer",
                )
    return None


def _pole_error(op: Op, rows: Sequence[Resolved]) -> tuple[str, str] | None:
    hint = (
        f"effects beyond {MAX_POLE_DISTANCES:,.0f} pole distances are refused: a bare number is in pole "
        "distances (1 = the distance between the concept's two pole means)"
    )
    for r in rows:
        if r.scale is None or not r.scale:
            continue
        if isinstance(op, Steer):
            size = abs(r.lo) / abs(r.scale)
            if size > MAX_POLE_DISTANCES:
                return f"at layer {r.layer} this steer adds {_g(size)} pole distances ({_g(r.lo)} raw)", hint
        elif isinstance(op, Scale):
            if r.reach is None:
                continue
            size = abs(r.lo - 1.0) * r.reach / abs(r.scale)
            if size > MAX_POLE_DISTANCES:
                return (
                    f"at layer {r.layer} scaling by {format_number(r.lo)} moves a projection of {_g(r.reach)} raw "
                    f"(the largest in the concept's calibration) by {_g(size)} pole distances",
                    hint,
                )
        elif not isinstance(op, Ablate):
            for raw in {r.lo, r.hi}:
                c = r.cal(raw) if math.isfinite(raw) else None
                if c is not None and abs(c) > MAX_POLE_DISTANCES:
                    return f"at layer {r.layer} this bound lies {_g(abs(c))} pole distances from the poles", hint
    return None


def _steer_stack(op: Op, rows: Sequence[Resolved], text: str) -> Diagnostic | None:
    if not isinstance(op, Steer) or not rows or rows[-1].scale is None or not rows[-1].scale:
        return None
    total_raw = sum(r.lo for r in rows)
    last = rows[-1]
    assert last.scale is not None
    total = abs(total_raw) / abs(last.scale)
    if total <= STEER_WARN_POLE_DISTANCES:
        return None
    if len(rows) == 1:
        message = (
            f"`{text}` adds {_g(total)} pole distances at layer {last.layer} ({_g(total_raw)} raw), more than "
            f"{format_number(STEER_WARN_POLE_DISTANCES)}"
        )
        hint = "pushes beyond a few pole distances usually break fluency; try a smaller amount"
    else:
        per = op.by.number if isinstance(op.by, Value) else 1.0
        fit = per * STEER_WARN_POLE_DISTANCES / total
        message = (
            f"`{text}` adds its amount at each of {len(rows)} layers, and the residual stream keeps every "
            f"addition: {_g(total_raw)} raw in all, {_g(total)} pole distances at layer {last.layer}"
        )
        hint = f"steer at one layer (the stream carries the addition on), or by {fit:.2g} at each of these layers"
    return Diagnostic(op.span, message, hint, severity="warning")


def _ablate_between(op: Op, rows: Sequence[Resolved]) -> Diagnostic | None:
    if not isinstance(op, Ablate):
        return None
    inside = [(r, c) for r in rows if (c := r.cal(0.0)) is not None and 0.0 < c < 1.0]
    if not inside:
        return None
    values = [c for _, c in inside]
    where = _layers([r for r, _ in inside])
    low, high = f"{min(values):.2f}", f"{max(values):.2f}"
    span = low if low == high else f"{low} to {high}"
    message = (
        f"`ablate {op.concept}` pins the raw projection to 0, which lies between {op.concept}'s poles at {where} "
        f"({span} calibrated; 0 is the negative pole, 1 the positive): text below it is moved towards "
        f"{op.concept}, not away"
    )
    cap = statement_dsl(Clamp(op.concept, op.where, op.site, op.tokens, op.gate, max=Value(0.0)))
    pin = statement_dsl(Pin(op.concept, op.where, op.site, op.tokens, op.gate, value=Value(0.0)))
    hint = f"to remove {op.concept}, hold it at or below its negative pole: `{cap}` (or `{pin}`)"
    return Diagnostic(op.span, message, hint, severity="warning")


def _floor(op: Op, rows: Sequence[Resolved]) -> Diagnostic | None:
    if not isinstance(op, Clamp | Pin) or op.tokens.kind not in ("all", "prompt") or len(rows) <= FEW_LAYERS:
        return None
    if isinstance(op, Clamp) and op.min is None:
        return None
    over = [r for r in rows if r.p_floor is not None and math.isfinite(r.lo) and r.lo > r.p_floor]
    if len(over) <= FEW_LAYERS:
        return None
    text = statement_dsl(op)
    message = (
        f"`{text}` puts a floor on {op.tokens.kind} tokens above the concept's p{format_number(FLOOR_WARN_PERCENTILE)} "
        f"at {len(over)} of its {len(rows)} layers: more than three quarters of the held-out calibration tokens "
        "(both poles) sit below it there, so it moves most tokens of ordinary text at every one of those layers"
    )
    only_generated = statement_dsl(replace(op, tokens=Tokens("generated")))
    hint = f"act on generated tokens only (`{only_generated}`), at fewer layers, or with a lower floor"
    return Diagnostic(op.span, message, hint, severity="warning")
