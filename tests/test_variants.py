"""Variants: `let NAME = v1 | v2 | …` and `$NAME` — syntax, the spec, expansion into concrete specs,
selection by name, errors, includes, and the canonical text, YAML twin, hash and diff of a sweep."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import constraintdsl as cdsl
from constraintdsl import Let, Ref, SpecError, UserError, Value, Variant, expand, load, parse
from constraintdsl.cli.app import main
from constraintdsl.lang.nodes import Clamp, Concept, Gate, LayerRange, Layers, Pin, Scale, Steer, Unit
from constraintdsl.lang.spec import Spec
from constraintdsl.lang.validate import MAX_VARIANTS, assemble
from constraintdsl.lang.variants import select
from constraintdsl.lang.yaml_twin import parse_yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "specs" / "examples"
HEAD = 'version 1\nconcept h from pairs "h.yaml"\nconcept s from pairs "s.yaml"\n'


def sweep(body: str, path: str = "sweep.cdsl") -> Spec:
    return parse(HEAD + body, path)


def yaml_spec(text: str, path: str = "twin.yaml") -> Spec:
    header, statements, diags = parse_yaml(text, path)
    return assemble(header, statements, [], diags, path, text)


def errors(source: str, path: str = "bad.cdsl") -> list[tuple[int, int, str, str | None]]:
    with pytest.raises(SpecError) as info:
        parse(source, path)
    return [(d.span.line, d.span.col, d.message, d.hint) for d in info.value.diagnostics]


# -- the spec -------------------------------------------------------------------------------------------------


def test_a_let_and_its_uses_parse_into_let_and_ref_with_spans() -> None:
    spec = sweep("let floor = 0.1 | 12.5 raw | p25 | -1.5 sd\nclamp h >= $floor at layers 10-14\n")
    (let,) = spec.lets
    assert let == Let("floor", (Value(0.1), Value(12.5, Unit.raw), Value(25, Unit.percentile), Value(-1.5, Unit.sd)))
    assert (let.span.line, let.name_span.col) == (4, 5)
    assert [(s.col, s.end_col) for s in let.value_spans] == [(13, 16), (19, 27), (30, 33), (36, 43)]
    (op,) = spec.constraints
    assert isinstance(op, Clamp) and op.min == Ref("floor")
    assert isinstance(op.min, Ref) and (op.min.span.line, op.min.span.col, op.min.span.end_col) == (5, 12, 18)
    assert spec.let("floor") is let and spec.let("ceiling") is None


def test_variables_go_in_every_value_position_and_in_unicode_spellings() -> None:
    spec = sweep(
        "let a = 0.1 | 0.2\nlet b = 0.5 | 0.9\nlet k = 2 | 3\n"
        "clamp h ≥ $a at layers 10–14 when s > $b\n"
        "clamp s in [$a, $b] at layer 1\n"
        "clamp s ≤ $b at layer 2\n"
        "pin s = $a at layer 3\n"
        "steer h by $k at layer 4 when s ≤ $a at layer 2\n"
        "scale s by $k at layer 5\n"
    )
    ops = spec.constraints
    assert isinstance(ops[0], Clamp) and ops[0].min == Ref("a") and ops[0].gate == Gate("s", ">", Ref("b"))
    assert isinstance(ops[1], Clamp) and (ops[1].min, ops[1].max) == (Ref("a"), Ref("b"))
    assert isinstance(ops[2], Clamp) and ops[2].max == Ref("b")
    assert isinstance(ops[3], Pin) and ops[3].value == Ref("a")
    assert isinstance(ops[4], Steer) and ops[4].by == Ref("k") and ops[4].gate == Gate("s", "<=", Ref("a"), 2)
    assert isinstance(ops[5], Scale) and ops[5].by == Ref("k")
    text = spec.to_dsl()
    assert "clamp h >= $a at layers 10-14 when s > $b" in text and "≤" not in text
    assert parse(text) == spec


def test_a_let_may_come_after_its_use_and_canonical_text_moves_it_before_the_ops() -> None:
    spec = sweep("clamp h >= $floor at layer 1\nlet floor = 0.1 | 0.3\n")
    text = spec.to_dsl()
    assert text.index("let floor = 0.1 | 0.3") < text.index("clamp h >= $floor")
    assert text.index('concept s from pairs "s.yaml"') < text.index("let floor")
    assert parse(text) == spec


def test_a_let_with_one_value_is_allowed_and_gives_one_named_variant() -> None:
    (variant,) = expand(sweep("let alpha = 2\nsteer s by $alpha at layer 3\n"))
    assert variant.name == "alpha=2"
    assert variant.spec == sweep("steer s by 2 at layer 3\n")


# -- expansion ------------------------------------------------------------------------------------------------


def test_a_spec_without_lets_is_its_own_single_variant_named_empty() -> None:
    spec = sweep("clamp h >= 0.3 at layer 1\n")
    assert expand(spec) == [Variant("", (), spec)]


def test_variants_are_the_product_of_the_lets_in_declaration_order_the_last_changing_fastest() -> None:
    spec = sweep(
        "let floor = 0.1 | 0.3 | 0.5\nlet alpha = 2 | -1\nclamp h >= $floor at layer 1\nsteer s by $alpha at layer 2\n"
    )
    variants = expand(spec)
    assert [v.name for v in variants] == [
        "floor=0.1,alpha=2",
        "floor=0.1,alpha=-1",
        "floor=0.3,alpha=2",
        "floor=0.3,alpha=-1",
        "floor=0.5,alpha=2",
        "floor=0.5,alpha=-1",
    ]
    assert variants[3].bindings == (("floor", Value(0.3)), ("alpha", Value(-1.0)))
    assert len({v.spec.hash() for v in variants}) == 6


def test_each_variant_hashes_exactly_like_the_same_spec_written_out_by_hand() -> None:
    spec = sweep(
        "let floor = 0.1 | p25\nlet k = 0.5 | 2\n"
        "clamp h >= $floor at layers 10-14 when s > $floor\nscale s by $k at layer 3\npin s = $floor at layer 4\n"
    )
    by_name = {v.name: v.spec for v in expand(spec)}
    by_hand = parse(
        '# written out, in another order of lines\nversion 1\nconcept h from pairs "h.yaml"\n'
        'concept s from pairs "s.yaml"\nclamp h ≥ p25 at layers 10–14 when s > p25\n'
        "scale s by 2.0 at layer 3\npin s = p25 at layer 4\n",
        "by-hand.cdsl",
    )
    assert by_name["floor=p25,k=2"] == by_hand
    assert by_name["floor=p25,k=2"].hash() == by_hand.hash()
    assert by_name["floor=0.1,k=2"].hash() != by_hand.hash()


def test_a_variant_spec_has_no_lets_or_variables_and_keeps_name_model_concepts_and_spans() -> None:
    spec = parse(
        'version 1\nname "s"\nmodel "smollm2"\nconcept h from pairs "h.yaml"\n'
        "let k = 0.5 | 2\nscale h by $k at layer 3 when h > $k\n",
        "keep.cdsl",
    )
    for variant in expand(spec):
        v = variant.spec
        assert (v.name, v.model, v.concepts, v.path) == (spec.name, spec.model, spec.concepts, spec.path)
        assert v.lets == () and "$" not in v.to_dsl()
        (op,) = v.constraints
        assert isinstance(op, Scale) and isinstance(op.by, float) and op.gate is not None
        assert op.gate.value == Value(op.by)
        assert op.span == spec.constraints[0].span and op.span.line == 6
        assert parse(v.to_dsl()) == v


def test_variant_names_format_values_canonically() -> None:
    spec = sweep("let a = 0.30 | +2.0 | 1e-3 | 12.50 raw | p25.0 | -1.5 sd\nclamp s >= $a at layer 1\n")
    names = [v.name for v in expand(spec)]
    assert names == ["a=0.3", "a=2", "a=0.001", "a=12.5 raw", "a=p25", "a=-1.5 sd"]


def test_expand_refuses_a_hand_built_spec_whose_variable_has_no_let() -> None:
    op = Clamp("h", Layers((LayerRange(1, 1),)), min=Ref("floor"))
    spec = Spec(concepts=(Concept("h", "pairs", "h.yaml"),), constraints=(op,))
    with pytest.raises(SpecError, match=r"undefined variable \$floor"):
        expand(spec)


# -- select ---------------------------------------------------------------------------------------------------

SWEEP2 = "let floor = 0.1 | 0.3\nlet alpha = 1 | 12.5 raw\nclamp h >= $floor at layer 1\nsteer s by $alpha at layer 2\n"


@pytest.mark.parametrize(
    "choice",
    [
        "floor=0.3,alpha=12.5 raw",
        "alpha=12.5 raw,floor=0.3",
        " floor = 0.30 , alpha = 12.50  raw ",
        "floor=+.3,alpha=12.5 raw",
    ],
)
def test_select_finds_a_variant_by_name_in_any_order_and_any_spelling_of_its_values(choice: str) -> None:
    variant = select(sweep(SWEEP2), choice)
    assert variant.name == "floor=0.3,alpha=12.5 raw"
    assert variant == expand(sweep(SWEEP2))[3]


@pytest.mark.parametrize(
    ("choice", "message", "hint"),
    [
        ("floor=0.2,alpha=1", "let 'floor' has no value 0.2", "its values are 0.1 | 0.3"),
        ("floor=0.1", "no value given for let 'alpha'", "choose one of floor=0.1,alpha=1, floor=0.1,alpha=12.5 raw, "),
        ("flor=0.1,alpha=1", "has no let 'flor'", "did you mean 'floor'?"),
        ("floor=0.1,floor=0.3", "let 'floor' is given twice", "give each let once: floor=0.1,alpha=1"),
        ("floor", "cannot read 'floor' as name=value", "choose one of "),
        ("floor=high,alpha=1", "cannot read the value of floor: expected a number, got 'high'", "choose one of "),
        ("floor=$x,alpha=1", "cannot read the value of floor: a `let` value is a number", "choose one of "),
    ],
)
def test_select_says_what_is_wrong_and_lists_the_choices(choice: str, message: str, hint: str) -> None:
    with pytest.raises(UserError) as info:
        select(sweep(SWEEP2), choice)
    assert info.value.where == "--variant"
    assert message in info.value.message
    assert info.value.hint is not None and hint in info.value.hint


def test_select_on_a_spec_without_lets_takes_only_the_empty_choice() -> None:
    spec = sweep("clamp h >= 0.3 at layer 1\n")
    assert select(spec, "").spec == spec
    with pytest.raises(UserError, match="has no variants"):
        select(spec, "floor=0.3")


def test_a_long_list_of_choices_is_cut_short_with_a_count() -> None:
    values = " | ".join(str(i) for i in range(40))
    with pytest.raises(UserError) as info:
        select(sweep(f"let k = {values}\nscale s by $k at layer 1\n"), "k=99")
    assert info.value.hint == "its values are " + values
    with pytest.raises(UserError) as info:
        select(sweep(f"let k = {values}\nscale s by $k at layer 1\n"), "k")
    assert info.value.hint is not None and info.value.hint.endswith(", … and 28 more")


# -- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "line", "col", "message", "hint"),
    [
        (
            "let floor = 0.1 | 0.3\nclamp h >= $flor at layer 1\n",
            5,
            12,
            "undefined variable $flor",
            "did you mean '$floor'?",
        ),
        (
            "clamp h >= $x at layer 1\n",
            4,
            12,
            "undefined variable $x",
            "define it on its own line: let x = 0.1 | 0.3 | 0.5",
        ),
        (
            "let a = 1\nlet a = 2\nclamp h >= $a at layer 1\n",
            5,
            5,
            "let 'a' is defined twice",
            "the first is at line 4",
        ),
        ("let a = 1 | 2\nclamp h >= 1 at layer 1\n", 4, 5, "let 'a' is never used", None),
        ("let a = 1 | 0.5 | 1.0\nclamp h >= $a at layer 1\n", 4, 19, "value 1 appears twice in let 'a'", None),
        (
            "let a = 1 | p25\nsteer h by $a at layer 1\n",
            4,
            13,
            "p25 in let 'a' does not fit `steer h by $a`",
            "steer by",
        ),
        (
            "let a = 1 | 2 sd\nscale h by $a at layer 1\n",
            4,
            13,
            "2 sd in let 'a' does not fit `scale h by $a`",
            "scale",
        ),
        ("let a = 1\nlet b = $a\nclamp h >= $b at layer 1\n", 5, 9, "a `let` value is a number, not a variable", None),
        (
            "let lo = 0 | 0.5\nlet hi = 0.4 | 1\nclamp h in [$lo, $hi] at layer 1\n",
            6,
            1,
            "empty interval in variant lo=0.5,hi=0.4: 0.5 is above 0.4",
            None,
        ),
        ("let hi = 0.1 | 1\nclamp h in [0.5, $hi] at layer 1\n", 5, 1, "empty interval in variant hi=0.1", None),
        (
            "let a = 1\nclamp h >= $a at layers $a\n",
            5,
            25,
            "a variable cannot stand for a layer, depth or token count",
            None,
        ),
        ("let a = 1\nablate h at layer 1 on first $a\n", 5, 30, "a variable cannot stand for a layer", None),
        ("let = 1\n", 4, 5, "`let` needs a name and '='", None),
        ("let a = 1, 2\nclamp h >= $a at layer 1\n", 4, 10, "expected values separated by '|'", None),
    ],
)
def test_each_mistake_with_variables_is_a_located_error_with_a_hint(
    body: str, line: int, col: int, message: str, hint: str | None
) -> None:
    diags = errors(HEAD + body)
    assert len(diags) == 1, diags
    (got_line, got_col, got_message, got_hint) = diags[0]
    assert (got_line, got_col) == (line, col)
    assert message in got_message
    assert got_hint is not None
    if hint is not None:
        assert hint in got_hint


def test_same_variable_at_both_ends_of_an_interval_is_never_empty() -> None:
    spec = sweep("let a = 0.1 | 0.9\nclamp h in [$a, $a] at layer 1\n")
    assert len(expand(spec)) == 2


def test_too_many_variants_is_an_error_naming_every_let_and_the_count() -> None:
    lets = "".join(f"let v{i} = 1 | 2 | 3 | 4\n" for i in range(5)) + "let w = 1 | 2 | 3\n"
    uses = "".join(f"pin h = $v{i} at layer {i}\n" for i in range(5)) + "pin h = $w at layer 9\n"
    ((line, col, message, hint),) = errors(HEAD + lets + uses)
    assert (line, col) == (9, 5)  # the let that takes the product past the limit
    assert message == (
        "these lets expand to 3,072 variants (v0: 4 × v1: 4 × v2: 4 × v3: 4 × v4: 4 × w: 3); at most 1,024 are allowed"
    )
    assert hint is not None and "sweep fewer values" in hint
    exactly = "".join(f"let v{i} = 1 | 2 | 3 | 4\n" for i in range(5))
    spec = sweep(exactly + "".join(f"pin h = $v{i} at layer {i}\n" for i in range(5)))
    assert len(expand(spec)) == 4**5 == MAX_VARIANTS


def test_a_broken_let_line_does_not_also_make_its_uses_undefined() -> None:
    diags = errors(
        HEAD + "let floor = 0.1 ; 0.3\nclamp h >= $floor at layer 1\nlet k = 1 | bad\nscale h by $k at layer 1\n"
    )
    assert [(line, msg.split(",")[0]) for line, _, msg, _ in diags] == [
        (4, "unexpected character ';'"),
        (6, "expected a number"),
    ]


# -- includes: lets are global to the loaded spec ------------------------------------------------------------


def _write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")


def test_a_let_from_an_included_file_is_used_and_swept_with_the_including_files_lets(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "lib/values.cdsl": "version 1\nlet floor = 0.2 | 0.4\n",
            "lib/more.yaml": "version: 1\nlet: {k: [1, 2]}\n",
            "main.cdsl": 'version 1\ninclude "lib/values.cdsl"\nconcept h from pairs "h.yaml"\nlet alpha = 3\n'
            'include "lib/more.yaml"\nclamp h >= $floor at layer 1\nsteer h by $alpha at layer 2\n'
            "scale h by $k at layer 3\n",
        },
    )
    spec = load(tmp_path / "main.cdsl")
    assert [let.name for let in spec.lets] == ["floor", "alpha", "k"]  # in the order the files are read
    assert [v.name for v in expand(spec)][:3] == [
        "floor=0.2,alpha=3,k=1",
        "floor=0.2,alpha=3,k=2",
        "floor=0.4,alpha=3,k=1",
    ]
    assert cdsl.parse_file(tmp_path / "lib/values.cdsl").lets[0].name == "floor"  # a library of lets checks alone


def test_a_let_defined_in_two_files_is_an_error_pointing_at_both(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "lib.cdsl": "version 1\nlet floor = 0.2\n",
            "main.cdsl": 'version 1\ninclude "lib.cdsl"\nconcept h from pairs "h.yaml"\nlet floor = 0.5\n'
            "clamp h >= $floor at layer 1\n",
        },
    )
    with pytest.raises(SpecError) as info:
        load(tmp_path / "main.cdsl")
    (d,) = info.value.diagnostics
    assert (d.span.path, d.span.line, d.message) == (str(tmp_path / "main.cdsl"), 4, "let 'floor' is defined twice")
    assert d.hint == f"the first is at {tmp_path / 'lib.cdsl'}:2:5"


def test_a_let_that_no_file_of_the_spec_uses_is_reported_in_its_own_file(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "lib.cdsl": 'version 1\nconcept h from pairs "h.yaml"\nlet floor = 0.2 | 0.4\nlet spare = 1\n'
            "ablate h at layer 0\n",
            "main.cdsl": 'version 1\ninclude "lib.cdsl"\nclamp h >= $floor at layer 1\n',
        },
    )
    with pytest.raises(SpecError) as info:
        load(tmp_path / "main.cdsl")
    (d,) = info.value.diagnostics
    assert (d.span.path, d.span.line, d.message) == (str(tmp_path / "lib.cdsl"), 4, "let 'spare' is never used")


def test_an_included_file_cannot_use_a_let_of_the_file_that_includes_it(tmp_path: Path) -> None:
    # the same rule as for concepts: a file's variables are defined in it or in the files it includes
    _write(
        tmp_path,
        {
            "lib.cdsl": 'version 1\nconcept h from pairs "h.yaml"\nclamp h >= $floor at layer 1\n',
            "main.cdsl": 'version 1\ninclude "lib.cdsl"\nlet floor = 0.2\n',
        },
    )
    with pytest.raises(SpecError, match=r"undefined variable \$floor") as info:
        load(tmp_path / "main.cdsl")
    assert info.value.diagnostics[0].span.path == str(tmp_path / "lib.cdsl")


# -- YAML twin, canonical text, hash, diff, CLI --------------------------------------------------------------


def test_the_shipped_sweep_and_its_yaml_twin_are_equal_with_equal_hashes_and_variants() -> None:
    dsl, twin = load(EXAMPLES / "helpfulness-sweep.cdsl"), load(EXAMPLES / "helpfulness-sweep.yaml")
    assert dsl == twin and dsl.hash() == twin.hash()
    assert [(v.name, v.spec.hash()) for v in expand(dsl)] == [(v.name, v.spec.hash()) for v in expand(twin)]
    assert [v.name for v in expand(dsl)] == ["floor=0.1", "floor=0.3", "floor=0.5", "floor=0.7"]
    floor_03 = next(v for v in expand(dsl) if v.name == "floor=0.3").spec
    by_hand = load(EXAMPLES / "assistant-floor.cdsl")
    assert floor_03.constraints == by_hand.constraints and floor_03.concepts == by_hand.concepts


def test_yaml_lets_take_lists_or_a_dsl_string_and_values_take_dsl_lines_and_quoted_variables() -> None:
    dsl = sweep(
        "let floor = 0.1 | p25\nlet k = 0.5 | 1\n"
        "clamp h >= $floor at layer 1 when s > $floor\nscale s by $k at layer 2\n"
    )
    twin = yaml_spec(
        "version: 1\nconcepts:\n  h: {from: pairs, path: h.yaml}\n  s: {from: pairs, path: s.yaml}\n"
        'let:\n  floor: "0.1 | p25"\n  k: [0.5, 1]\n'
        'constraints:\n  - "clamp h >= $floor at layer 1 when s > $floor"\n'
        '  - {op: scale, concept: s, by: "$k", layers: 2}\n'
    )
    assert twin == dsl and twin.hash() == dsl.hash()
    assert yaml_spec(dsl.to_yaml()) == dsl
    assert dsl.to_dict()["let"] == {"floor": [0.1, "p25"], "k": [0.5, 1.0]}


def test_yaml_let_problems_are_located() -> None:
    text = (
        "version: 1\nconcepts:\n  h: {from: pairs, path: h.yaml}\nlet:\n  floor: 0.3\n  bad-name: [1]\n"
        "constraints:\n  - {op: clamp, concept: h, min: $floor, layers: 1}\n"
    )
    with pytest.raises(SpecError) as info:
        yaml_spec(text)
    got = [(d.span.line, d.span.col, d.message) for d in info.value.diagnostics]
    assert got == [
        (5, 10, "let 'floor' must be a list of values, not a number"),
        (6, 3, "'bad-name' is not a variable name"),
    ]


def test_canonical_text_of_a_sweep_round_trips_and_formatting_is_idempotent() -> None:
    source = HEAD + "clamp h ≥ $floor at layers 10–14  # the floor\n# sweep it\nlet floor = 0.10 | +0.3 | 12.50 raw\n"
    spec = sweep(source.split("\n", 3)[3])
    text = spec.to_dsl(comments=True)
    assert "let floor = 0.1 | 0.3 | 12.5 raw" in text and "clamp h >= $floor at layers 10-14  # the floor" in text
    again = parse(text)
    assert again == spec and again.to_dsl(comments=True) == text


def test_the_hash_covers_every_let_value() -> None:
    a = sweep("let floor = 0.1 | 0.3\nclamp h >= $floor at layer 1\n")
    b = sweep("let floor = 0.1 | 0.3 | 0.5\nclamp h >= $floor at layer 1\n")
    c = sweep("let floor = 0.3 | 0.1\nclamp h >= $floor at layer 1\n")
    assert len({a.hash(), b.hash(), c.hash()}) == 3  # the order of the values names the variants, so it counts


def test_diff_reports_changed_added_and_removed_lets_and_a_bound_turned_variable() -> None:
    a = parse(
        HEAD + "let floor = 0.1 | 0.3\nlet old = 1\nclamp h >= 0.3 at layer 1\npin s = $old at layer 2\n"
        "pin h = $floor at layer 5\n",
        "a.cdsl",
    )
    b = parse(
        HEAD + "let floor = 0.1 | 0.3 | 0.5\nlet k = 2\nclamp h >= $floor at layer 1\nscale s by $k at layer 2\n"
        "pin h = $floor at layer 5\n",
        "b.cdsl",
    )
    rendered = [c.render() for c in a.diff(b)]
    assert rendered == [
        "~ let floor: 0.1 | 0.3 → 0.1 | 0.3 | 0.5  (a.cdsl:4:1 → b.cdsl:4:1)",
        "- let old = 1  (a.cdsl:5:1)",
        "+ let k = 2  (b.cdsl:5:1)",
        "~ clamp h: min 0.3 → $floor  (a.cdsl:6:1 → b.cdsl:6:1)",
        "- pin s = $old at layer 2  (a.cdsl:7:1)",
        "+ scale s by $k at layer 2  (b.cdsl:7:1)",
    ]


def test_cdsl_check_says_how_many_variants_in_text_and_names_them_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    sweep_file, plain = str(EXAMPLES / "helpfulness-sweep.cdsl"), str(EXAMPLES / "assistant-floor.cdsl")
    assert main(["check", sweep_file, plain]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"ok: {sweep_file} (1 concepts, 1 constraints, 4 variants of floor)",
        f"ok: {plain} (1 concepts, 1 constraints)",
    ]
    assert main(["check", "--format", "json", sweep_file, plain]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert [f["variants"] for f in files] == [["floor=0.1", "floor=0.3", "floor=0.5", "floor=0.7"], []]


def test_cdsl_hash_and_fmt_cover_lets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "h.yaml").write_text("pairs: []\n")
    path = tmp_path / "s.cdsl"
    path.write_text('version 1\nconcept h from pairs "h.yaml"\nclamp h ≥ $f at layer 1\nlet f = 0.10 | 0.3\n')
    assert main(["fmt", str(path)]) == 0
    assert (
        path.read_text()
        == 'version 1\n\nconcept h from pairs "h.yaml"\n\nlet f = 0.1 | 0.3\n\nclamp h >= $f at layer 1\n'
    )
    assert main(["fmt", "--check", str(path)]) == 0
    capsys.readouterr()
    assert main(["hash", str(path)]) == 0
    first = capsys.readouterr().out.split()[0]
    path.write_text(path.read_text().replace("0.1 | 0.3", "0.1 | 0.4"))
    assert main(["hash", str(path)]) == 0
    assert capsys.readouterr().out.split()[0] != first


# -- properties -----------------------------------------------------------------------------------------------

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
plain_numbers = st.one_of(st.integers(-50, 50).map(float), st.sampled_from([0.1, 0.25, 1.5, -0.3, 1e-3, 12.5]))


@st.composite
def sweeps(draw: Any) -> Spec:
    """A spec with 1-3 lets of distinct plain numbers and ops using each let at least once."""
    names = draw(st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True), min_size=1, max_size=3, unique=True))
    lets = tuple(
        Let(n, tuple(Value(x) for x in draw(st.lists(plain_numbers, min_size=1, max_size=4, unique=True))))
        for n in names
    )
    where = Layers((LayerRange(1, 1),))
    ops: list[Any] = []
    for n in names:
        kind = draw(st.sampled_from(["clamp", "pin", "steer", "scale", "gate"]))
        if kind == "clamp":
            ops.append(Clamp("h", where, max=Ref(n)))
        elif kind == "pin":
            ops.append(Pin("h", where, value=Ref(n)))
        elif kind == "steer":
            ops.append(Steer("h", where, by=Ref(n)))
        elif kind == "scale":
            ops.append(Scale("h", where, by=Ref(n)))
        else:
            ops.append(Clamp("h", where, min=Value(0.1), gate=Gate("h", ">", Ref(n))))
    return Spec(concepts=(Concept("h", "pairs", "h.yaml"),), lets=lets, constraints=tuple(ops))


@FAST
@given(sweeps())
def test_the_number_of_variants_is_the_product_of_the_let_sizes_and_each_is_concrete(spec: Spec) -> None:
    variants = expand(spec)
    assert len(variants) == math.prod(len(let.values) for let in spec.lets)
    assert len({v.name for v in variants}) == len(variants)
    for v in variants:
        assert "$" not in v.spec.to_dsl() and parse(v.spec.to_dsl()) == v.spec
        assert select(spec, v.name) == v


@FAST
@given(sweeps())
def test_a_sweep_round_trips_through_dsl_and_yaml_and_formatting_is_idempotent(spec: Spec) -> None:
    text = spec.to_dsl()
    assert parse(text) == spec
    assert parse(text).to_dsl() == text
    twin = yaml_spec(spec.to_yaml())
    assert twin == spec and twin.hash() == spec.hash()
