"""Building a concept: extraction from a pair set, or the cached artifact with the same content key.

Artifacts are cached by content (model id, revision and dtype, site, method, dataset bytes, layers, tool
version and extraction revision) under ``cache_dir()/concepts/``, so a second build costs nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from constraintdsl.errors import Span, SpecError, UserError
from constraintdsl.models.loading import ModelIdentity, cache_dir, model_identity

from .artifact import FORMAT_VERSION, ConceptArtifact, load_artifact, save_artifact, tool_version
from .extract import extract, resolve_layers
from .pairs import PairSet, load_pairs

__all__ = [
    "CALIBRATION_REVISION",
    "EXTRACTION_REVISION",
    "build_concept",
    "cache_key",
    "cache_path",
    "calibrate_concept",
    "concept_cache_key",
]

# Part of the cache key: bump when extraction or calibration semantics change, so stale cache entries are not reused.
# 2: percentiles from the held-out split's projections (one forward per sequence); 1: from the train split's.
EXTRACTION_REVISION = "2"


def cache_key(
    identity: ModelIdentity,
    *,
    dataset_sha256: str,
    layers: Sequence[int],
    site: str,
    method: str,
    dtype: str,
    read: str = "all",
) -> str:
    """Content key of a concept build: sha256 of everything the artifact's bytes depend on.

    Model id, revision and dtype, site, method, dataset sha256, which completion tokens are read, layers,
    tool version and extraction revision.
    """
    parts = {
        "format": FORMAT_VERSION,
        "model_id": identity.id,
        "revision": identity.revision or "",
        "dtype": dtype,
        "site": site,
        "method": method,
        "dataset_sha256": dataset_sha256,
        "layers": [int(x) for x in layers],
        "tool_version": tool_version(),
        "extraction_revision": EXTRACTION_REVISION,
    }
    # entries built before `read` existed read every token: "all" keeps their keys (same meaning, same key)
    if read != "all":
        parts["read"] = read
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cache_path(key: str) -> Path:
    """Where the artifact with cache ``key`` lives: ``cache_dir()/concepts/<key>.safetensors``."""
    return Path(cache_dir()) / "concepts" / f"{key}.safetensors"


def _model_dtype(model: Any) -> str:
    import torch

    inner = getattr(model, "__dict__", {}).get("_module", model)
    if isinstance(inner, torch.nn.Module):
        for p in inner.parameters():
            return str(p.dtype).removeprefix("torch.")
    return "unknown"


def concept_cache_key(
    pair_set: PairSet, model: Any, *, layers: Sequence[int] | None, site: str, method: str
) -> tuple[str, list[int]]:
    """The cache key of building ``pair_set`` on ``model`` (and the resolved absolute layers)."""
    chosen = resolve_layers(model, layers)
    key = cache_key(
        model_identity(model),
        dataset_sha256=pair_set.sha256,
        layers=chosen,
        site=site,
        method=method,
        dtype=_model_dtype(model),
        read=pair_set.read,
    )
    return key, chosen


def build_concept(
    pairs_path: str | Path,
    model: Any,
    *,
    layers: Sequence[int] | None = None,
    site: str = "resid",
    method: str = "mean",
    use_cache: bool = True,
    write_cache: bool | None = None,
    batch_size: int = 16,
    progress: bool = True,
    span: Span | None = None,
    pairs: PairSet | None = None,
    remote: bool | str = False,
    timeout: float | None = None,
) -> ConceptArtifact:
    """Extract a concept from a pair dataset, or reuse the cached artifact with the same content key.

    The key covers the model id, revision and dtype, the site, method, dataset bytes, the tokens read, layers
    and tool version; the artifact is stored at :func:`cache_path` and returned with its ``path`` set.
    ``use_cache=False`` always extracts; ``write_cache`` (default: ``use_cache``) stores the result.
    ``remote`` / ``timeout``: extract on NDIF (see :func:`constraintdsl.concepts.extract`); the result fills
    the same cache entry, as it equals a local extraction.
    """
    pair_set = pairs if pairs is not None else load_pairs(pairs_path, span=span)
    key, chosen = concept_cache_key(pair_set, model, layers=layers, site=site, method=method)
    target = cache_path(key)
    if use_cache and target.exists():
        try:
            return load_artifact(target)
        except UserError:
            target.unlink(missing_ok=True)  # a corrupt cache entry is rebuilt, not trusted
    artifact = extract(
        model,
        pair_set,
        layers=chosen,
        site=site,
        method=method,
        batch_size=batch_size,
        progress=progress,
        remote=remote,
        timeout=timeout,
    )
    if not (use_cache if write_cache is None else write_cache):
        return artifact
    save_artifact(artifact, target)
    return replace(artifact, path=str(target))


# Part of a calibration's cache key: bump when calibrating an imported direction changes meaning.
CALIBRATION_REVISION = "1"


def _vector_sha256(artifact: ConceptArtifact) -> str:
    """sha256 of what a direction is: layers, unit rows and stored norms (not where the file lies)."""
    h = hashlib.sha256(json.dumps(list(artifact.layers or ())).encode())
    h.update(np.ascontiguousarray(artifact.directions, dtype=np.float32).tobytes())
    if artifact.norms is not None:
        h.update(np.ascontiguousarray(artifact.norms, dtype=np.float32).tobytes())
    return h.hexdigest()


def calibrate_concept(
    artifact: ConceptArtifact,
    pairs_path: str | Path,
    model: Any,
    *,
    use_cache: bool = True,
    batch_size: int = 16,
    progress: bool = True,
    span: Span | None = None,
    remote: bool | str = False,
    timeout: float | None = None,
) -> ConceptArtifact:
    """Calibrate an imported direction on a pair set, as extraction calibrates its own.

    The directions (and stored norms) stay as they are; the pair set gives pole means, the pole distance
    (the calibrated unit), std, percentiles and held-out AUROC at each of the artifact's layers, read at the
    artifact's site.  Cached by content (the vector, the pair set, model id, revision and dtype, site, tool
    version).  A layer where the positive pole does not project above the negative one is an error: the
    calibrated unit would point against the stored vector there.  ``remote`` / ``timeout``: run the forward
    passes on NDIF (see :func:`constraintdsl.concepts.extract`).
    """
    if artifact.layers is None:
        raise UserError(str(pairs_path), "a raw vector without layers cannot be calibrated; give it layers first")
    pair_set = load_pairs(pairs_path, span=span)
    site = artifact.metadata.get("site", "resid")
    identity = model_identity(model)
    parts = {
        "kind": "calibration",
        "vector": _vector_sha256(artifact),
        "dataset_sha256": pair_set.sha256,
        "model_id": identity.id,
        "revision": identity.revision or "",
        "dtype": _model_dtype(model),
        "site": site,
        "tool_version": tool_version(),
        "calibration_revision": CALIBRATION_REVISION,
    }
    target = cache_path(hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest())
    if use_cache and target.exists():
        try:
            return load_artifact(target)
        except UserError:
            target.unlink(missing_ok=True)
    made = extract(
        model,
        pair_set,
        layers=list(artifact.layers),
        site=site,
        batch_size=batch_size,
        progress=progress,
        fixed=artifact.directions,
        remote=remote,
        timeout=timeout,
    )
    assert made.calibration is not None
    flipped = [artifact.layers[i] for i in np.flatnonzero(made.calibration.scale <= 0)]
    if flipped:
        message = (
            f"on {pair_set.path} the positive pole does not project above the negative one at layer(s) "
            f"{flipped} of '{artifact.path}': calibrated units would point against the stored vector there"
        )
        hint = "check that the pairs' positive side is the vector's positive side (or use `vec`/raw units)"
        if span is not None:
            raise SpecError.single(span, message, hint)
        raise UserError(str(pairs_path), message, hint)
    imported = {k: v for k, v in artifact.metadata.items() if k not in made.metadata and k not in ("format", "units")}
    calibrated = replace(
        made,
        metadata={**made.metadata, **imported, "concept": artifact.concept, "vector_path": str(artifact.path)},
        norms=artifact.norms,
    )
    if use_cache:
        save_artifact(calibrated, target)
        return replace(calibrated, path=str(target))
    return calibrated
