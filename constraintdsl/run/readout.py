"""Concept readouts of generated text: how far along a concept's direction the model's own
activations sit on the tokens it generated, read by a plain (unconstrained) forward pass.

This is the behavioral "effect" measure: generate with and without a spec, then read both
texts the same way and compare, in calibrated units.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nnsight
import numpy as np
import torch

from constraintdsl.concepts.artifact import ConceptArtifact
from constraintdsl.models.backend import on_device, run_backend
from constraintdsl.models.sites import arch_sites

if TYPE_CHECKING:
    from constraintdsl.compiler.plan import Plan

__all__ = [
    "Effect",
    "Read",
    "calibrate_reads",
    "calibrated_readouts",
    "concept_read_list",
    "concept_reads",
    "generated_mask",
    "project_rows",
    "read_paths",
    "readout",
    "readout_inputs",
    "stop_ids",
]


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
    from constraintdsl.concepts.artifact import load_artifact
    from constraintdsl.concepts.extract import recommended_layers

    paths: dict[str, str] = {}
    for plan in plans:
        for name in sorted({e.concept for e in plan.entries}):
            path = plan.concepts.get(name)
            if path and path != "<given>" and path not in paths.values():
                paths[name if name not in paths else f"{name} ({path})"] = path
    reads = []
    for label, path in paths.items():
        if not path.endswith(".safetensors"):  # a .npy, or an import not calibrated on pairs: no calibration
            continue
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

    attention, gen = readout_inputs(ids, prompt_mask, prompt_width, stop_ids(model))
    raws = project_rows(model, ids, attention, gen, concept_read_list(reads), remote=remote)
    return calibrate_reads(reads, raws)


def stop_ids(model: Any) -> list[int]:
    """The token ids that end a generated text (end of sequence, padding)."""
    tok = model.tokenizer
    return sorted({int(t) for t in (tok.eos_token_id, tok.pad_token_id) if t is not None})


def readout_inputs(
    ids: torch.Tensor, prompt_mask: torch.Tensor, prompt_width: int, stops: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention mask (the prompt's, then the generated tokens up to each row's first stop) and the
    tokens read (the generated ones) of a readout pass over ``ids``.  Torch only: a comparison sent as one
    NDIF request runs it on the server, on ids generated there."""
    gen = generated_mask(ids, prompt_width, set(stops))
    attention = torch.cat([prompt_mask.to(torch.bool), gen[:, prompt_width:]], dim=1).to(torch.long)
    return attention, gen


def concept_read_list(reads: Sequence[tuple[ConceptArtifact, int]]) -> list[Read]:
    """A :class:`Read` of each ``(artifact, layer)``'s direction at the artifact's site."""
    return [
        Read(layer, art.metadata.get("site", "resid"), torch.tensor(np.asarray(art.direction(layer)))[None])
        for art, layer in reads
    ]


def calibrate_reads(reads: Sequence[tuple[ConceptArtifact, int]], raws: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Raw mean projections (``[B, 1]`` per read, from :func:`project_rows`) in each concept's calibrated units."""
    out = []
    for (art, layer), raw in zip(reads, raws, strict=True):
        cal = art.calibration
        assert cal is not None, "a readout needs a calibrated concept"
        row = art.row(layer)
        out.append((raw[:, 0].detach().cpu().to(torch.float64) - float(cal.neg_mean[row])) / float(cal.scale[row]))
    return out


def readout(
    model: Any, artifact: ConceptArtifact, layer: int, ids: torch.Tensor, prompt_mask: torch.Tensor, prompt_width: int
) -> torch.Tensor:
    """:func:`calibrated_readouts` for one concept at one layer."""
    (values,) = calibrated_readouts(model, [(artifact, layer)], ids, prompt_mask, prompt_width)
    return values


@dataclass(frozen=True)
class Read:
    """A readout: the mean projection on ``directions`` ``[k, H]`` of a site's output at ``layer``."""

    layer: int
    site: str
    directions: torch.Tensor


def project_rows(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    select: torch.Tensor,
    reads: Sequence[Read],
    *,
    remote: bool | str = False,
    timeout: float | None = None,
    progress: Callable[[str], None] | None = None,
    backend: Any = None,
) -> list[torch.Tensor]:
    """One plain forward pass over ``ids`` (no payload); for each read, the mean raw projection of
    each row's ``select``-ed tokens on its directions: ``[B, k]`` float32 (NaN where a row selects
    nothing)."""
    if select.shape != ids.shape:
        raise ValueError("select must have the shape of ids")
    paths, directions = read_paths(model, reads)
    backend = run_backend(model, [None], remote, timeout=timeout, progress=progress, given=backend)
    enc = on_device(model, {"input_ids": ids, "attention_mask": mask})
    outs = _run_project(model, enc, select, paths, directions, backend)
    if outs is None:
        raise RuntimeError("the readout pass returned no result")
    return [o.detach().cpu() for o in outs]


def read_paths(model: Any, reads: Sequence[Read]) -> tuple[list[str], list[torch.Tensor]]:
    """Each read's module path in ``model`` and its directions as float32 ``[k, H]``."""
    layers = arch_sites(model).layers
    paths = [f"{layers}.{r.layer}" + ("" if r.site == "resid" else "." + _sublayer(model, r.site)) for r in reads]
    return paths, [r.directions.to(torch.float32) for r in reads]


def _sublayer(model: Any, site: str) -> str:
    sites = arch_sites(model)
    return sites.attn if site == "attn" else sites.mlp


def _run_project(
    model: Any,
    enc: dict[str, torch.Tensor],
    select: torch.Tensor,
    paths: list[str],
    directions: list[torch.Tensor],
    backend: Any,
) -> Any:
    outs = None
    with torch.no_grad(), model.trace(enc, backend=backend):
        outs = nnsight.save([])
        for index in range(len(paths)):
            envoy = model
            for part in paths[index].split("."):
                envoy = getattr(envoy, part)
            out = envoy.output
            h = out[0] if isinstance(out, (tuple, list)) else out
            proj = h.to(torch.float32) @ directions[index].T.to(h.device)  # [B, T, k]
            weight = select.to(device=h.device, dtype=torch.float32)[..., None]
            outs.append((proj * weight).sum(dim=1) / weight.sum(dim=1))  # 0/0 = NaN for an empty row
    return outs
