"""A spec or a concept as a llama.cpp control vector: what can be exported, and the vector per layer.

llama.cpp adds one vector per layer to the output of that decoder block, on every token, always
(``--control-vector-scaled FILE:SCALE``, ``--control-vector-layer-range START END``).  So a spec can be
exported exactly when every statement is an additive steer of the residual stream on all tokens without a
gate, at layers 1 and up: ``steer C by v [at …] [in resid] [on all]``.  The vector at layer L is the sum over
the steers acting there of ``amount · u`` (the raw displacement the compiled plan adds, any unit resolved to
raw for the model).  Everything else is refused with a located error naming the statement:

- ``clamp``, ``pin``, ``ablate``, ``scale``: they depend on the activation (a projection is read first), and
  a control vector is a constant;
- ``in attn`` / ``in mlp``: llama.cpp adds its vector to the block output only;
- ``on prompt``/``generated``/``last N``/``first N``: llama.cpp adds it to every token;
- ``when …``: llama.cpp has no gates;
- layer 0: llama.cpp's loader refuses ``direction.0`` and never adds a vector there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from constraintdsl.concepts.artifact import ConceptArtifact
from constraintdsl.errors import Diagnostic, Span, SpecError, UserError
from constraintdsl.lang.canonical import statement_dsl
from constraintdsl.lang.loading import spec_sources
from constraintdsl.lang.nodes import Depth, Steer
from constraintdsl.lang.spec import Spec

from .plan import Plan

__all__ = ["UNITS", "artifact_vectors", "export_problems", "plan_vectors", "provenance"]

UNITS = ("calibrated", "vec", "raw")
_WHY = {
    "clamp": "a clamp reads the projection before it moves it; a control vector adds a constant",
    "pin": "a pin reads the projection before it moves it; a control vector adds a constant",
    "ablate": "an ablation reads the projection before it removes it; a control vector adds a constant",
    "scale": "a scale multiplies the projection it reads; a control vector adds a constant",
}


def export_problems(spec: Spec) -> list[Diagnostic]:
    """Why each statement of ``spec`` cannot become part of a llama.cpp control vector (empty: it can).

    Checked without a model; layer 0 reached through negative indices or a depth is checked by
    :func:`plan_vectors` once the model's layer count is known.
    """
    out: list[Diagnostic] = []
    if not spec.constraints:
        out.append(Diagnostic(_file_span(spec), "the spec has no statements to export", None))
    for op in spec.constraints:
        text = statement_dsl(op)
        if not isinstance(op, Steer):
            out.append(
                Diagnostic(
                    op.span,
                    f"`{text}` cannot be exported: llama.cpp control vectors only add; {_WHY[op.keyword]}",
                    "export the steers alone (a spec with only `steer` statements)",
                )
            )
            continue
        if op.site != "resid":
            out.append(
                Diagnostic(
                    op.span,
                    f"`{text}` acts `in {op.site}`; llama.cpp adds control vectors to the block output only",
                    "steer `in resid` (the default) to export",
                )
            )
        if op.tokens.kind != "all":
            out.append(
                Diagnostic(
                    op.span,
                    f"`{text}` acts on some tokens only; llama.cpp adds a control vector to every token",
                    "drop the `on …` clause to export",
                )
            )
        if op.gate is not None:
            out.append(
                Diagnostic(
                    op.gate.span, f"`{text}` has a gate; llama.cpp applies a control vector always", "drop `when …`"
                )
            )
        if isinstance(op.where, Depth):
            at_zero = op.where.start <= 0
        else:
            at_zero = any(item.start == 0 or item.stop == 0 for item in op.where.items)
        if at_zero:
            out.append(Diagnostic(op.span, *_layer_zero(text)))
    return out


def _layer_zero(text: str) -> tuple[str, str]:
    return (
        f"`{text}` acts at layer 0; llama.cpp never adds a control vector there (its loader refuses direction.0)",
        "start at layer 1",
    )


def _file_span(spec: Spec) -> Span:
    return Span(spec.path, 1, 1)


def plan_vectors(plan: Plan) -> dict[int, np.ndarray[Any, Any]]:
    """The control vector of a compiled, exportable spec: layer → the sum of ``amount · u`` of its steers.

    ``plan`` must come from a spec without :func:`export_problems`; a steer that landed on layer 0 (through a
    negative index or a depth) is reported here.
    """
    diags = [Diagnostic(entry.span, *_layer_zero(entry.text)) for entry in plan.entries if entry.layer == 0]
    if diags:
        raise SpecError(_unique(diags), spec_sources(plan.spec))
    vectors: dict[int, np.ndarray[Any, Any]] = {}
    for site in plan.payload["sites"]:
        if site["site"] != "resid" or site["bounds"] or site["gate_reads"]:
            raise ValueError(f"layer {site['layer']} ({site['site']}) holds more than steers")
        for action in site["actions"]:
            u = np.asarray(action["u"].double().cpu().numpy(), dtype=np.float64)
            add = float(action["amount"]) * u
            layer = int(site["layer"])
            vectors[layer] = vectors[layer] + add if layer in vectors else add
    return {layer: v.astype(np.float32) for layer, v in sorted(vectors.items())}


def _unique(diags: list[Diagnostic]) -> list[Diagnostic]:
    seen: list[Diagnostic] = []
    for d in diags:
        if all(d.span != s.span for s in seen):
            seen.append(d)
    return seen


def artifact_vectors(
    artifact: ConceptArtifact, *, unit: str | None = None, layers: list[int] | None = None
) -> tuple[dict[int, np.ndarray[Any, Any]], str]:
    """A concept as a control vector: per layer, one ``unit`` along its direction; and the unit used.

    ``calibrated`` (the default when the concept is calibrated): the pole distance, so llama.cpp's
    ``--control-vector-scaled FILE:s`` equals ``steer C by s`` at those layers; ``vec`` (the default for an
    imported vector without calibration): the stored vector itself, as imported; ``raw``: the unit direction.
    ``layers`` picks some of the concept's layers (default: all but layer 0, which llama.cpp never uses).
    """
    where = artifact.path or artifact.concept
    if artifact.layers is None:
        raise UserError(where, "a raw .npy vector has no layers", "export a spec that steers it at chosen layers")
    chosen = unit or ("calibrated" if artifact.calibration is not None else "vec")
    if chosen not in UNITS:
        raise UserError("--unit", f"unknown unit '{chosen}'", f"units: {', '.join(UNITS)}")
    if chosen == "calibrated" and artifact.calibration is None:
        raise UserError(
            "--unit",
            f"concept '{artifact.concept}' has no calibration",
            "use --unit vec or --unit raw, or calibrate it",
        )
    if chosen == "vec" and artifact.norms is None:
        raise UserError(
            "--unit",
            f"concept '{artifact.concept}' stores a unit direction only (it was extracted)",
            "use --unit calibrated (one pole distance) or --unit raw",
        )
    if layers is None:
        picked = [layer for layer in artifact.layers if layer >= 1]
    else:
        missing = [layer for layer in layers if layer not in artifact.layers]
        if missing:
            raise UserError(
                "--layers", f"concept '{artifact.concept}' has no layer(s) {missing}", f"it has {list(artifact.layers)}"
            )
        if 0 in layers:
            raise UserError("--layers", "llama.cpp never adds a control vector at layer 0", "start at layer 1")
        picked = sorted(set(layers))
    if not picked:
        raise UserError(where, "the concept has no layer llama.cpp can use (only layer 0)")
    out: dict[int, np.ndarray[Any, Any]] = {}
    for layer in picked:
        row = artifact.row(layer)
        size = _unit_size(artifact, row, chosen)
        out[layer] = (np.asarray(artifact.directions[row], dtype=np.float64) * size).astype(np.float32)
    return out, chosen


def _unit_size(artifact: ConceptArtifact, row: int, unit: str) -> float:
    if unit == "calibrated":
        assert artifact.calibration is not None
        return float(artifact.calibration.scale[row])
    if unit == "vec":
        assert artifact.norms is not None
        return float(artifact.norms[row])
    return 1.0


def provenance(metadata: Mapping[str, str]) -> dict[str, str]:
    """GGUF string keys recording where a control vector came from (llama.cpp ignores them)."""
    return {f"constraintdsl.{k}": str(v) for k, v in sorted(metadata.items())}
