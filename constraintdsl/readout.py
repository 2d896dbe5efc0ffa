"""Concept readouts of generated text: how far along a concept's direction the model's own
activations sit on the tokens it generated, read by a plain (unconstrained) forward pass.

This is the behavioral "effect" measure: generate with and without a spec, then read both
texts the same way and compare, in calibrated units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .artifacts import ConceptArtifact

if TYPE_CHECKING:
    from .compiler import Plan

__all__ = ["Effect", "calibrated_readouts", "concept_reads", "generated_mask", "readout"]


@dataclass(frozen=True, slots=True)
class Effect:
    """A concept's readout on generated tokens, baseline vs constrained, in calibrated units."""

    concept: str
    layer: int
    auroc: float
    baseline: float
    constrained: float
    shift: float
    moved_up: int  # prompts whose readout rose
    prompts: int

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


def generated_mask(ids: torch.Tensor, prompt_width: int, stop_ids: set[int]) -> torch.Tensor:
    """bool [B, T]: generated tokens up to (not including) the first stop token of each row."""
    gen = ids[:, prompt_width:]
    is_stop = torch.zeros_like(gen, dtype=torch.bool)
    for s in stop_ids:
        is_stop |= gen == s
    after = torch.cumsum(is_stop.to(torch.int64), dim=1) > 0
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, prompt_width:] = ~after
    return mask


def concept_reads(plans: Sequence[Plan]) -> list[tuple[str, ConceptArtifact, int]]:
    """The readouts a set of plans calls for: every calibrated concept file they constrain, at its best
    layer (highest held-out AUROC), as ``(label, artifact, layer)``.  A name that two plans bind to
    different files is labelled ``name (path)`` the second time; concepts given as objects are skipped."""
    from .artifacts import load_artifact
    from .concepts import recommended_layers

    paths: dict[str, str] = {}
    for plan in plans:
        for name in sorted({e.concept for e in plan.entries}):
            path = plan.concepts.get(name)
            if path and path != "<given>" and path not in paths.values():
                paths[name if name not in paths else f"{name} ({path})"] = path
    reads = []
    for label, path in paths.items():
        art = load_artifact(path)
        best = recommended_layers(art, top=1)
        if art.calibration is not None and best:
            reads.append((label, art, best[0]))
    return reads


def calibrated_readouts(
    model: Any,
    reads: Sequence[tuple[ConceptArtifact, int]],
    ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    prompt_width: int,
    *,
    remote: bool | str = False,
) -> list[torch.Tensor]:
    """For each ``(artifact, layer)``: every row's mean calibrated projection over its generated tokens
    (``[B]`` float64, NaN for a row that generated nothing), read at the artifact's site by ONE plain
    forward pass over ``ids`` (``prompt_width`` left-padded prompt columns, then generated ones)."""
    from .measure import Read, project_rows

    tok = model.tokenizer
    stops = {int(t) for t in (tok.eos_token_id, tok.pad_token_id) if t is not None}
    gen = generated_mask(ids, prompt_width, stops)
    attention = torch.cat([prompt_mask.to(torch.bool), gen[:, prompt_width:]], dim=1).to(torch.long)
    wanted = [
        Read(layer, art.metadata.get("site", "resid"), torch.tensor(np.asarray(art.direction(layer)))[None])
        for art, layer in reads
    ]
    out = []
    for (art, layer), raw in zip(reads, project_rows(model, ids, attention, gen, wanted, remote=remote), strict=True):
        cal = art.calibration
        assert cal is not None, "a readout needs a calibrated concept"
        row = art.row(layer)
        out.append((raw[:, 0].to(torch.float64) - float(cal.neg_mean[row])) / float(cal.scale[row]))
    return out


def readout(
    model: Any, artifact: ConceptArtifact, layer: int, ids: torch.Tensor, prompt_mask: torch.Tensor, prompt_width: int
) -> torch.Tensor:
    """:func:`calibrated_readouts` for one concept at one layer."""
    (values,) = calibrated_readouts(model, [(artifact, layer)], ids, prompt_mask, prompt_width)
    return values
