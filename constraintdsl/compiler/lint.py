"""Warnings without running a model: what ``cdsl check`` can tell from a spec, its concept files and the
concept cache, and the merging of warnings over a spec's variants.

``cdsl check`` loads no weights.  It reads the default model's config (the spec's ``model``, else the
embedded SmolLM2, when that is known offline) and every concept it can find without extracting: ``from
file`` artifacts, and ``from pairs`` concepts already in the cache for that model (float32, every layer,
as a run builds them).  Each variant is then resolved against that config exactly as a run would
resolve it, and the warnings of the resolved plan are kept; statements whose concepts are not available
are left out, and errors are left to ``explain``/``run``, which know the model for sure.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from constraintdsl.errors import Diagnostic, SpecError, UserError
from constraintdsl.lang.spec import Spec

__all__ = ["merge_variant_warnings", "spec_warnings"]


def merge_variant_warnings(
    per_variant: Sequence[tuple[str, Sequence[Diagnostic]]], *, ends: bool = False
) -> list[Diagnostic]:
    """One list of warnings for a spec's variants (``(variant name, warnings)``; a spec without lets is one
    variant named ""): a warning every variant shares appears once as it is; one that only some variants
    have says which (``in variant floor=2: …``; with ``ends``, the variants are the ends of continuous lets:
    ``at the range end floor=3: …``)."""
    names = [name for name, _ in per_variant]
    seen: dict[tuple[Any, str, str | None], list[str]] = {}
    order: list[Diagnostic] = []
    for name, warnings in per_variant:
        for d in warnings:
            key = (d.span, d.message, d.hint)
            if key not in seen:
                seen[key] = []
                order.append(d)
            seen[key].append(name)
    out = []
    for d in order:
        which = seen[(d.span, d.message, d.hint)]
        if len(which) == len(names) or not any(which):
            out.append(d)
        else:
            if ends:
                label = "at the range end" if len(which) == 1 else "at the range ends"
            else:
                label = "in variant" if len(which) == 1 else "in variants"
            out.append(replace(d, message=f"{label} {', '.join(which)}: {d.message}"))
    return sorted(out, key=lambda d: (d.span.path, d.span.line, d.span.col))


def _artifacts(spec: Spec, identity: Any, num_layers: int) -> dict[str, Any]:
    """The concepts of ``spec`` available without extracting: artifact files, and cached pair builds."""
    from constraintdsl.concepts.artifact import load_artifact
    from constraintdsl.concepts.build import cache_key, cache_path
    from constraintdsl.concepts.interop import open_concept
    from constraintdsl.concepts.pairs import load_pairs

    base = Path(spec.path).parent
    sites: dict[str, str] = {}
    for op in spec.constraints:
        sites.setdefault(op.concept, op.site)
        if op.gate is not None:
            sites.setdefault(op.gate.concept, "resid")
    found: dict[str, Any] = {}
    for concept in spec.concepts:
        path = Path(os.path.normpath(base / concept.path))
        try:
            if concept.source != "pairs":
                if concept.calibrated is None:  # an imported vector calibrated on a pair set needs the model
                    found[concept.name] = open_concept(concept.source, path, feature=concept.feature)
                continue
            pairs = load_pairs(path)
            key = cache_key(
                identity,
                dataset_sha256=pairs.sha256,
                layers=list(range(num_layers)),
                site=sites.get(concept.name, "resid"),
                method=concept.method,
                dtype="float32",
                read=pairs.read,
            )
            target = cache_path(key)
            if target.is_file():
                found[concept.name] = load_artifact(target)
        except (UserError, OSError):
            continue  # `check` reports unreadable concept files on its own
    return found


def spec_warnings(spec: Spec) -> list[Diagnostic]:
    """The warnings a run of ``spec`` on its default model would give, as far as they can be known
    without loading the model's weights (see the module docstring)."""
    from constraintdsl.lang.variants import ends_as_values, expand
    from constraintdsl.models.loading import DEFAULT_MODEL, peek_identity

    from .resolve import resolve

    base = Path(spec.path).parent
    if not spec.constraints or not any(Path(os.path.normpath(base / c.path)).is_file() for c in spec.concepts):
        return []  # nothing to read calibration from: no need to look at the model
    peeked = peek_identity(spec.model or DEFAULT_MODEL)
    if peeked is None:
        return []
    identity, config = peeked
    arts = _artifacts(spec, identity, identity.num_layers)
    if not arts:
        return []
    per_variant: list[tuple[str, Sequence[Diagnostic]]] = []
    for variant in expand(ends_as_values(spec)):  # a range's warnings are its ends'
        ops = tuple(
            op for op in variant.spec.constraints if op.concept in arts and (op.gate is None or op.gate.concept in arts)
        )
        if not ops:
            per_variant.append((variant.name, []))
            continue
        try:
            plan = resolve(
                replace(variant.spec, constraints=ops), config, concepts=arts, identity=identity, progress=False
            )
        except (SpecError, UserError):
            per_variant.append((variant.name, []))
            continue
        per_variant.append((variant.name, plan.warnings))
    # a spec whose lets are all ranges: its "variants" here are the ranges' ends, and say so
    return merge_variant_warnings(per_variant, ends=bool(spec.lets) and all(let.range for let in spec.lets))
