"""Everything a run would hit, checked before any model work: the files a spec names, opened and validated,
and — given a model's config alone, without its weights — layers, hidden size and depth.

``cdsl check`` reports all of it; ``explain``, ``run`` and ``compare`` run the same checks before they
load a model, so a bad concept file or pair set is reported in a second, not after a model load.

Without a model (:func:`check_files`):

- every concept file is read (bounded, regular files only) and validated: format (safetensors or ``.npy``;
  pickles refused), finite non-zero unit directions, shapes and metadata;
- every pair set is read and validated: schema, UTF-8, distinct poles, at least one train pair;
- each statement is checked against the concept files it uses: units a raw vector cannot give
  (calibrated, ``p25``, ``sd``), percentiles outside the calibrated levels, the site a concept was
  extracted at, and explicit layers the file has no direction for.

With a model (:func:`check_model`, from :func:`constraintdsl.models.describe_model`): layer ranges,
negative indices and depths resolved for that depth, gate layers, each concept file's model, revision,
hidden size and layers, and each pair set's texts against the model's tokenizer (tokens to count, chat
template, context length).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from constraintdsl.errors import Diagnostic, Span, SpecError, UserError
from constraintdsl.lang.loading import concept_file_hash, spec_sources
from constraintdsl.lang.nodes import Clamp, Layers, Op, Pin, Ref, Scale, Steer, Unit, Value
from constraintdsl.lang.spec import Spec

if TYPE_CHECKING:
    from constraintdsl.concepts.artifact import ConceptArtifact
    from constraintdsl.concepts.pairs import PairSet
    from constraintdsl.models.loading import ModelIdentity

__all__ = ["Opened", "check_files", "check_host", "check_model"]


@dataclass
class Opened:
    """What :func:`check_files` opened: artifacts and pair sets by concept name, and each file's hash."""

    artifacts: dict[str, ConceptArtifact] = field(default_factory=dict)
    pairs: dict[str, PairSet] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)  # "concept:NAME" -> "sha256:…"


class _Problems:
    def __init__(self, spec: Spec) -> None:
        self.diags: list[Diagnostic] = []
        self.sources: dict[str, str] = {}
        self.spec = spec

    def add(self, span: Span, message: str, hint: str | None = None) -> None:
        self.diags.append(Diagnostic(span, message, hint))

    def absorb(self, error: UserError, span: Span) -> None:
        if isinstance(error, SpecError):
            self.diags.extend(error.diagnostics)
            self.sources.update(error.sources)
        else:
            self.add(span, error.message, error.hint)

    def raise_if_any(self) -> None:
        if self.diags:
            raise SpecError(_unique(self.diags), {**spec_sources(self.spec), **self.sources})


def _unique(diags: list[Diagnostic]) -> list[Diagnostic]:
    seen: set[tuple[str, int, int, str]] = set()
    out = []
    for d in diags:
        key = (d.span.path, d.span.line, d.span.col, d.message)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _values(spec: Spec, value: Value | Ref | float | None) -> list[Value]:
    """The concrete values ``value`` stands for (every value of a let for a ``$name``)."""
    if isinstance(value, Value):
        return [value]
    if isinstance(value, Ref):
        let = next((x for x in spec.lets if x.name == value.name), None)
        return list(let.values) if let is not None else []
    return []


def _valued(op: Op) -> Iterator[tuple[Value | Ref | float | None, Span]]:
    if isinstance(op, Clamp):
        yield op.min, op.span
        yield op.max, op.span
    elif isinstance(op, Pin):
        yield op.value, op.span
    elif isinstance(op, Steer):
        yield op.by, op.span


def check_files(spec: Spec) -> Opened:
    """Open every concept file and pair set ``spec`` names and check the statements against them.

    Raises :class:`SpecError` with every problem found (located at the statements, or inside the data
    files); returns what was opened.
    """
    from constraintdsl.concepts.interop import open_concept
    from constraintdsl.concepts.pairs import load_pairs

    problems = _Problems(spec)
    opened = Opened()
    base = Path(spec.path).parent
    for concept in spec.concepts:
        path = Path(os.path.normpath(base / concept.path))
        kind = "pairs" if concept.source == "pairs" else "concept"
        try:
            opened.hashes[f"concept:{concept.name}"] = concept_file_hash(
                path, kind, at=concept.path_span, folder=concept.source == "sae"
            )
        except UserError as e:
            problems.absorb(e, concept.path_span)
            continue
        try:
            if concept.source == "pairs":
                opened.pairs[concept.name] = load_pairs(path, span=concept.path_span)
            else:
                art = open_concept(concept.source, path, feature=concept.feature, span=concept.path_span)
                if concept.calibrated is None:  # else it gets its calibration from the pair set at compile time
                    opened.artifacts[concept.name] = art
        except UserError as e:
            problems.absorb(e, concept.path_span)
        if concept.calibrated is not None:
            cpath = Path(os.path.normpath(base / concept.calibrated))
            try:
                key = f"concept:{concept.name}:calibrated"
                opened.hashes[key] = concept_file_hash(cpath, "pairs", at=concept.calibrated_span)
                load_pairs(cpath, span=concept.calibrated_span)
            except UserError as e:
                problems.absorb(e, concept.calibrated_span)
    for op in spec.constraints:
        _check_op(spec, op, opened, problems)
    problems.raise_if_any()
    return opened


def _check_op(spec: Spec, op: Op, opened: Opened, problems: _Problems) -> None:
    art = opened.artifacts.get(op.concept)
    if art is not None:
        _check_site(op.concept, art, op.site, op.concept_span, problems)
        if not isinstance(op, Scale):
            for value, span in _valued(op):
                for v in _values(spec, value):
                    _check_unit(op.concept, art, v, span, problems)
        if isinstance(op.where, Layers) and art.layers is not None:
            explicit = sorted({x for r in op.where.items if r.start >= 0 for x in range(r.start, r.stop + 1)})
            _check_layers(op.concept, art, explicit[:10_000], op.span, problems)
    gate = op.gate
    if gate is not None:
        gart = opened.artifacts.get(gate.concept)
        if gart is not None:
            _check_site(gate.concept, gart, "resid", gate.span, problems)
            for v in _values(spec, gate.value):
                _check_unit(gate.concept, gart, v, gate.span, problems)
            if gate.layer is not None and gate.layer >= 0 and gart.layers is not None:
                _check_layers(gate.concept, gart, [gate.layer], gate.span, problems)


def _check_site(name: str, art: ConceptArtifact, site: str, span: Span, problems: _Problems) -> None:
    art_site = art.metadata.get("site")
    if art.layers is not None and art_site is not None and art_site != site:
        problems.add(
            span,
            f"concept '{name}' was extracted at site '{art_site}', but this statement reads site '{site}'",
            f"extract it for '{site}' (cdsl concept build --site {site}) or drop `in {site}`",
        )


def _check_unit(name: str, art: ConceptArtifact, value: Value, span: Span, problems: _Problems) -> None:
    from constraintdsl.lang.canonical import format_number, format_value

    if value.unit is Unit.raw:
        return
    cal = art.calibration
    if cal is None:
        problems.add(
            span,
            f"concept '{name}' is a raw vector without calibration, so '{format_value(value)}' has no meaning",
            f"use raw units, e.g. {format_number(value.number)} raw",
        )
        return
    levels = list(cal.levels)
    if value.unit is Unit.percentile and not levels[0] <= value.number <= levels[-1]:
        problems.add(
            span,
            f"percentile p{format_number(value.number)} is outside the calibrated range "
            f"p{format_number(levels[0])}..p{format_number(levels[-1])} of concept '{name}'",
        )


def _ranges(layers: Sequence[int]) -> str:
    """``0-4,7``: sorted layers as ranges."""
    out: list[list[int]] = []
    for i in sorted(layers):
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in out) or "none"


def _check_layers(name: str, art: ConceptArtifact, layers: Sequence[int], span: Span, problems: _Problems) -> None:
    have = set(art.layers or ())
    missing = [x for x in layers if x not in have]
    if missing:
        problems.add(
            span,
            f"concept '{name}' has no direction at layer {missing[0]} (it has layers {_ranges(sorted(have))})",
            f"rebuild it with those layers (cdsl concept build --layers …), or act on layers {_ranges(sorted(have))}",
        )


def check_model(spec: Spec, opened: Opened, identity: ModelIdentity, config: Any, tokenizer: Any = None) -> None:
    """Check ``spec`` against a model known by its config alone (no weights): layers and gates in range,
    every concept file made for this model and holding the layers used, every pair set encodable by its
    tokenizer (when given) within its context.  Raises :class:`SpecError` with every problem."""
    from constraintdsl.concepts.artifact import check_compatible
    from constraintdsl.models.sites import arch_sites

    from .resolve import gate_layer, op_layers

    problems = _Problems(spec)
    n = identity.num_layers
    try:
        arch_sites(config)
    except UserError as e:
        problems.add(Span(spec.path, 0, 0), e.message, e.hint)
        problems.raise_if_any()
    for name, artifact in opened.artifacts.items():
        concept = spec.concept(name)
        assert concept is not None
        try:
            check_compatible(artifact, identity, concept.path_span)
        except UserError as e:
            problems.absorb(e, concept.path_span)
    for op in spec.constraints:
        layers, problem = op_layers(op, n, identity.id)
        if problem is not None:
            problems.diags.append(problem)
            continue
        art = opened.artifacts.get(op.concept)
        if art is not None and art.layers is not None:
            _check_layers(op.concept, art, layers, op.span, problems)
        if op.gate is not None and layers:
            layer, problem = gate_layer(op, layers, n, identity.id)
            if problem is not None:
                problems.diags.append(problem)
            gart = opened.artifacts.get(op.gate.concept)
            if layer is not None and gart is not None and gart.layers is not None:
                _check_layers(op.gate.concept, gart, [layer], op.gate.span, problems)
    if tokenizer is not None:
        limit = int(getattr(_text_config(config), "max_position_embeddings", 0) or 0)
        for name, pair_set in opened.pairs.items():
            concept = spec.concept(name)
            assert concept is not None
            _check_tokens(pair_set, tokenizer, limit, concept.path_span, identity.id, problems)
    problems.raise_if_any()


def _text_config(config: Any) -> Any:
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def _check_tokens(
    pair_set: PairSet, tokenizer: Any, limit: int, span: Span, model_id: str, problems: _Problems
) -> None:
    from constraintdsl.concepts.extract import encode_pairs

    try:
        items = encode_pairs(tokenizer, pair_set)
    except UserError as e:
        problems.absorb(e, span)
        return
    if limit <= 0:
        return
    for item in items:
        if len(item.ids) > limit:
            pair = pair_set.pairs[item.pair]
            where = (pair.positive_span if item.pole > 0 else pair.negative_span) or pair.span or span
            problems.add(
                where,
                f"this text is {len(item.ids):,} tokens with its prompt; {model_id} reads at most {limit:,}",
                "shorten it",
            )


def check_host(host: str, flag: str = "--host") -> str:
    """An NDIF server URL (``http://HOST:PORT`` or ``https://HOST``), checked before anything runs."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(host)
        port = parts.port
    except ValueError as exc:
        raise UserError(
            flag, f"{host!r} is not a server URL ({exc})", "give http://HOST:PORT or https://HOST"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(flag, f"{host!r} is not a server URL", "give http://HOST:PORT or https://HOST")
    if port is not None and not 0 < port < 65536:
        raise UserError(flag, f"port {port} is out of range", "ports are 1..65535")
    return host.rstrip("/")
