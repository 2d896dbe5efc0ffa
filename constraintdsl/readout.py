"""Concept readouts of generated text: how far along a concept's direction the model's own
activations sit on the tokens it generated, read by a plain (unconstrained) forward pass.

This is the behavioral "effect" measure: generate with and without a spec, then read both
texts the same way and compare, in calibrated units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nnsight
import numpy as np
import torch

from .artifacts import ConceptArtifact
from .sites import as_bth, site_module

__all__ = ["Effect", "generated_mask", "readout"]


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


def readout(
    model: Any, artifact: ConceptArtifact, layer: int, ids: torch.Tensor, prompt_mask: torch.Tensor, prompt_width: int
) -> torch.Tensor:
    """Mean calibrated projection on ``artifact``'s direction at ``layer`` over each row's generated
    tokens (NaN for a row that generated nothing), from a plain forward pass over ``ids``."""
    tok = model.tokenizer
    stops = {int(t) for t in (tok.eos_token_id, tok.pad_token_id) if t is not None}
    gen = generated_mask(ids, prompt_width, stops)
    attention = torch.cat([prompt_mask.to(torch.bool), gen[:, prompt_width:]], dim=1).to(torch.long)
    with torch.no_grad(), model.trace({"input_ids": ids, "attention_mask": attention}):
        hidden = nnsight.save(as_bth(site_module(model, layer, "resid").output))
    u = torch.tensor(np.asarray(artifact.direction(layer)), dtype=torch.float32)
    proj = hidden.detach().to(torch.float32).cpu() @ u  # [B, T]
    n = gen.sum(dim=1)
    raw = torch.where(gen, proj, torch.zeros_like(proj)).sum(dim=1) / n.clamp(min=1)
    cal = artifact.calibration
    assert cal is not None, "a readout needs a calibrated concept"
    row = artifact.row(layer)
    calibrated = (raw - float(cal.neg_mean[row])) / float(cal.scale[row])
    return torch.where(n > 0, calibrated, torch.full_like(calibrated, float("nan")))
