"""Property tests over generated specs: canonical text and YAML round-trip exactly, formatting
is idempotent, and any input — random or a mutated valid spec — raises only SpecError."""

from __future__ import annotations

import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from constraintdsl import SpecError, parse
from constraintdsl.lang.nodes import (
    Ablate,
    Budget,
    Clamp,
    Concept,
    Depth,
    Gate,
    LayerRange,
    Layers,
    Op,
    Pin,
    Scale,
    Steer,
    Target,
    Tokens,
    Unit,
    Value,
)
from constraintdsl.lang.parser import FLOAT32_MAX, canonical_layers
from constraintdsl.lang.spec import Spec
from constraintdsl.lang.yaml_twin import parse_yaml

FAST = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
text = st.text(
    alphabet=st.characters(categories=("L", "N", "P", "S", "Zs"), exclude_characters="\u2028\u2029\x85"),
    min_size=1,
    max_size=20,
).filter(lambda s: s.strip() != "")
# every number a spec may hold: finite and within float32's range (the parser refuses the rest)
finite = st.floats(min_value=-FLOAT32_MAX, max_value=FLOAT32_MAX, allow_nan=False, allow_infinity=False, width=64)
numbers = st.one_of(finite, st.integers(-1000, 1000).map(float), st.sampled_from([0.3, -0.5, 1.5, 2.0, 1e-3]))
percentiles = st.one_of(st.integers(0, 100).map(float), st.integers(0, 1000).map(lambda i: i / 10))


@st.composite
def values(draw: Any, *, percentile: bool = True) -> Value:
    units = [Unit.calibrated, Unit.raw, Unit.sd] + ([Unit.percentile] if percentile else [])
    unit = draw(st.sampled_from(units))
    number = draw(percentiles if unit is Unit.percentile else numbers)
    return Value(number, unit)


@st.composite
def wheres(draw: Any) -> Layers | Depth:
    if draw(st.booleans()):
        a, b = sorted(draw(st.lists(st.integers(0, 100).map(float), min_size=2, max_size=2)))
        return Depth(a, b)
    idx = draw(st.lists(st.integers(-40, 60), min_size=1, max_size=6))
    mixed = draw(st.lists(st.tuples(st.integers(0, 5), st.integers(-5, -1)), max_size=1))
    items = [LayerRange(i, i) for i in idx] + [LayerRange(a, b) for a, b in mixed]
    return Layers(canonical_layers(items))


tokens = st.one_of(
    st.sampled_from(["all", "prompt", "generated"]).map(lambda k: Tokens(k)),  # type: ignore[arg-type]
    st.tuples(st.sampled_from(["last", "first"]), st.integers(1, 64)).map(lambda t: Tokens(t[0], t[1])),  # type: ignore[arg-type]
)


@st.composite
def ops(draw: Any, concepts: list[str]) -> Op:
    kind = draw(st.sampled_from(["clamp", "pin", "ablate", "steer", "scale"]))
    common: dict[str, Any] = {
        "concept": draw(st.sampled_from(concepts)),
        "where": draw(wheres()),
        "site": draw(st.sampled_from(["resid", "attn", "mlp"])),
        "tokens": draw(tokens),
    }
    if draw(st.booleans()):
        common["gate"] = Gate(
            draw(st.sampled_from(concepts)),
            draw(st.sampled_from([">=", "<=", ">", "<"])),
            draw(values()),
            draw(st.none() | st.integers(-30, 30)),
        )
    if kind == "clamp":
        lo, hi = draw(values()), draw(values())
        shape = draw(st.sampled_from(["min", "max", "both"]))
        if shape == "both" and lo.unit == hi.unit and lo.number > hi.number:
            lo, hi = hi, lo
        return Clamp(**common, min=lo if shape != "max" else None, max=hi if shape != "min" else None)
    if kind == "pin":
        return Pin(**common, value=draw(values()))
    if kind == "steer":
        return Steer(**common, by=draw(values(percentile=False)))
    if kind == "scale":
        return Scale(**common, by=draw(numbers))
    return Ablate(**common)


@st.composite
def specs(draw: Any) -> Spec:
    concept_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    concepts = tuple(
        Concept(
            n,
            src := draw(st.sampled_from(["pairs", "file"])),
            draw(text) + (".yaml" if src == "pairs" else ".safetensors"),
            draw(st.sampled_from(["mean", "pca"])) if src == "pairs" else "mean",
        )
        for n in concept_names
    )
    constraints = tuple(draw(st.lists(ops(concept_names), max_size=6)))
    return Spec(
        version=1,
        name=draw(st.none() | text),
        model=draw(st.none() | text),
        concepts=concepts,
        constraints=constraints,
        checks=draw(checks(concept_names)),
    )


@st.composite
def checks(draw: Any, concept_names: list[str]) -> tuple[Budget | Target, ...]:
    """Budgets (one per measure) then targets (one per measure and direction): the canonical order."""
    measures = draw(st.lists(st.sampled_from(["nll", "kl", "ppl"]), unique=True, max_size=3))
    budgets = tuple(
        Budget(m, draw(numbers) if m == "nll" else abs(draw(numbers)) + (1e-3 if m == "ppl" else 0.0)) for m in measures
    )
    keys = draw(
        st.lists(
            st.tuples(st.sampled_from([*concept_names, "ab"]), st.sampled_from([">=", "<="])), unique=True, max_size=3
        )
    )
    return budgets + tuple(Target(m, c, draw(numbers)) for m, c in keys)


@FAST
@given(specs())
def test_canonical_text_parses_back_to_the_same_spec(spec: Spec) -> None:
    assert parse(spec.to_dsl()) == spec


@FAST
@given(specs())
def test_formatting_is_idempotent(spec: Spec) -> None:
    once = parse(spec.to_dsl()).to_dsl(comments=True)
    assert parse(once).to_dsl(comments=True) == once


@FAST
@given(specs())
def test_dsl_to_yaml_to_dsl_is_the_identity(spec: Spec) -> None:
    from constraintdsl.lang.validate import assemble

    yaml_text = spec.to_yaml()
    header, statements, diags = parse_yaml(yaml_text, "twin.yaml")
    twin = assemble(header, statements, [], diags, "twin.yaml", yaml_text)
    assert twin == spec
    assert twin.to_dsl() == spec.to_dsl()
    assert twin.hash() == spec.hash()


def test_a_string_pyyaml_dumps_plain_but_cannot_read_back_is_quoted_in_the_yaml_twin() -> None:
    from constraintdsl.lang.validate import assemble

    spec = parse('version 1\nmodel "\u00a0`"\nconcept A from pairs "0.yaml"\n')
    yaml_text = spec.to_yaml()
    header, statements, diags = parse_yaml(yaml_text, "twin.yaml")
    assert assemble(header, statements, [], diags, "twin.yaml", yaml_text).model == "\u00a0`"


_MUTATION_CHARS = string.printable + "≥≤–—“”‘’−≠\u00a0\u200b\ufeff\t\r$%[]\"'#éλ中"


@st.composite
def mutated(draw: Any) -> str:
    source = draw(specs()).to_dsl()
    for _ in range(draw(st.integers(1, 4))):
        if not source:
            break
        i = draw(st.integers(0, len(source) - 1))
        action = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        ch = draw(st.sampled_from(_MUTATION_CHARS))
        if action == "insert":
            source = source[:i] + ch + source[i:]
        elif action == "delete":
            source = source[:i] + source[i + 1 :]
        elif action == "replace":
            source = source[:i] + ch + source[i + 1 :]
        else:
            j = draw(st.integers(i, min(len(source), i + 20)))
            source = source[:j] + source[i:j] + source[j:]
    return source


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_specs_raise_only_spec_errors(source: str) -> None:
    try:
        parse(source, "mutated.cdsl")
    except SpecError as e:
        assert e.diagnostics and all(d.span.line >= 1 and d.span.col >= 1 for d in e.diagnostics)


def _located(diagnostics: Any) -> bool:
    return bool(diagnostics) and all(d.span.line >= 1 and d.span.col >= 1 for d in diagnostics)


@settings(max_examples=1200, deadline=None)
@given(st.text(max_size=200))
def test_random_text_raises_only_spec_errors_in_either_form(source: str) -> None:
    from constraintdsl.lang.validate import assemble

    try:
        parse(source, "random.cdsl")
    except SpecError as e:
        assert _located(e.diagnostics)
    # the YAML reader reports problems as diagnostics instead of raising; the spec is built from them
    header, statements, diags = parse_yaml(source, "random.yaml")
    assert all(d.span.line >= 1 and d.span.col >= 1 for d in diags)
    try:
        spec = assemble(header, statements, [], diags, "random.yaml", source)
    except SpecError as e:
        assert _located(e.diagnostics)
        assert {(d.span.line, d.span.col, d.message) for d in diags} <= {
            (d.span.line, d.span.col, d.message) for d in e.diagnostics
        }
    else:
        assert not diags and spec.version == 1


@st.composite
def ranged(draw: Any) -> tuple[str, float, float, str]:
    """A spec text with one continuous let (``let x = lo .. hi``) used by a steer, and its ends and unit."""
    lo, hi = sorted(draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=2, max_size=2)))
    if lo == hi:
        hi = lo + 1.0
    unit = draw(st.sampled_from(["", " raw", " sd"]))
    text = (
        'version 1\nconcept c from file "c.safetensors"\n'
        f"let x = {lo!r}{unit} .. {hi!r}{unit}\nsteer c by $x at layers 1-2\n"
    )
    return text, lo, hi, unit.strip() or "calibrated"


@FAST
@given(ranged(), st.floats(0, 1))
def test_a_continuous_let_round_trips_and_any_point_of_its_range_binds_to_a_spec_that_round_trips(
    case: tuple[str, float, float, str], where: float
) -> None:
    from constraintdsl.lang.validate import assemble
    from constraintdsl.lang.variants import bind, continuous

    text, lo, hi, unit = case
    spec = parse(text, "r.cdsl")
    (let,) = continuous(spec)
    assert let.range is not None and (let.range[0].number, let.range[1].number) == (lo, hi)
    assert let.range[0].unit.value == let.range[1].unit.value == unit
    assert parse(spec.to_dsl(), "r.cdsl") == spec
    yaml_text = spec.to_yaml()
    header, statements, diags = parse_yaml(yaml_text, "twin.yaml")
    assert assemble(header, statements, [], diags, "twin.yaml", yaml_text) == spec
    point = min(max(lo + (hi - lo) * where, lo), hi)
    bound = bind(spec, {"x": Value(point, let.range[0].unit)})
    assert not bound.lets and not continuous(bound)
    (steer,) = bound.constraints
    assert isinstance(steer, Steer) and isinstance(steer.by, Value) and steer.by.number == point
    assert parse(bound.to_dsl(), "r.cdsl") == bound
