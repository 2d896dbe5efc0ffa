"""The Python API: typed immutable specs with spans, includes, equality, hashing, diff."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

import constraintdsl as cdsl
from constraintdsl import Clamp, Spec, SpecError, Unit, Value, load, parse
from constraintdsl.lang.nodes import Depth, LayerRange, Layers, Tokens

HEAD = 'version 1\nconcept h from pairs "h.yaml"\nconcept r from pairs "r.yaml"\n'


def test_a_parsed_statement_is_typed_immutable_and_carries_its_span() -> None:
    spec = parse(HEAD + "clamp h in [0.1, 12.5 raw] at layers 10-12,14 in attn on last 3\n", "s.cdsl")
    (op,) = spec.constraints
    assert isinstance(op, Clamp)
    assert op.min == Value(0.1) and op.max == Value(12.5, Unit.raw)
    assert op.where == Layers((LayerRange(10, 12), LayerRange(14, 14)))
    assert (op.site, op.tokens) == ("attn", Tokens("last", 3))
    assert (op.span.path, op.span.line, op.span.col) == ("s.cdsl", 4, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        op.concept = "r"  # type: ignore[misc]


def test_equality_ignores_spans_comments_and_layout() -> None:
    a = parse(HEAD + "clamp h >= 0.3 at layers 10-14\n")
    b = parse("# comment\n" + HEAD.replace("concept h", "concept   h") + "\n\nclamp h ≥ 0.30 at layers 14,10..13\n")
    assert a == b and a.hash() == b.hash()


def test_depth_percentiles_sd_gates_and_negative_layers_parse() -> None:
    spec = parse(HEAD + "pin h = p25 at depth 40%-60% when r > 1.5 sd at layer -8\nablate r at layers -4..-1\n")
    pin, ablate = spec.constraints
    assert pin.where == Depth(40, 60)
    assert pin.gate is not None and pin.gate.layer == -8 and pin.gate.value == Value(1.5, Unit.sd)
    assert ablate.where == Layers((LayerRange(-4, -1),))


def test_errors_are_collected_from_every_line_not_just_the_first() -> None:
    with pytest.raises(SpecError) as info:
        parse(HEAD + "clamp h > 1 at layer 1\nclamp q >= 1 at layer 1\nablate r at layers 14-10\n", "e.cdsl")
    assert [d.span.line for d in info.value.diagnostics] == [4, 5, 6]


def test_spec_error_is_a_user_error_and_renders_once(tmp_path: Path) -> None:
    with pytest.raises(cdsl.UserError) as info:
        parse("version 3\n", "v.cdsl")
    assert str(info.value) == info.value.render()
    assert info.value.render().startswith("v.cdsl:1:9: error: unsupported spec version 3")


def _write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def test_includes_resolve_relative_to_the_including_file_and_concept_paths_are_rebased(
    tmp_path: Path,
) -> None:
    _write(
        tmp_path,
        {
            "main.cdsl": 'version 1\ninclude "lib/concepts.cdsl"\nclamp h >= 0.3 at layer 3\n',
            "lib/concepts.cdsl": 'version 1\ninclude "more.cdsl"\nconcept h from pairs "../data/h.yaml"\n',
            "lib/more.cdsl": 'version 1\nconcept r from pairs "r.yaml"\nablate r at layer 1\n',
        },
    )
    spec = load(tmp_path / "main.cdsl")
    assert [c.name for c in spec.concepts] == ["r", "h"]
    assert [c.path for c in spec.concepts] == ["lib/r.yaml", "data/h.yaml"]
    assert [op.keyword for op in spec.constraints] == ["ablate", "clamp"]
    assert spec.includes == ()
    assert spec.constraints[0].span.path.endswith("more.cdsl")


def test_a_file_included_twice_counts_once(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "main.cdsl": 'version 1\ninclude "a.cdsl"\ninclude "b.cdsl"\n',
            "a.cdsl": 'version 1\ninclude "c.cdsl"\n',
            "b.cdsl": 'version 1\ninclude "c.cdsl"\n',
            "c.cdsl": 'version 1\nconcept h from pairs "h.yaml"\n',
        },
    )
    assert [c.name for c in load(tmp_path / "main.cdsl").concepts] == ["h"]


def test_an_include_cycle_is_an_error_showing_the_chain(tmp_path: Path) -> None:
    _write(tmp_path, {"a.cdsl": 'version 1\ninclude "b.cdsl"\n', "b.cdsl": 'version 1\ninclude "a.cdsl"\n'})
    with pytest.raises(SpecError) as info:
        load(tmp_path / "a.cdsl")
    (d,) = info.value.diagnostics
    assert d.message.startswith("include cycle: ") and d.message.count("→") == 2
    assert d.span.path.endswith("b.cdsl") and d.span.line == 2


def test_a_missing_include_is_an_error_at_the_include_with_the_chain(tmp_path: Path) -> None:
    _write(tmp_path, {"a.cdsl": 'version 1\ninclude "b.cdsl"\n', "b.cdsl": 'version 1\ninclude "gone.cdsl"\n'})
    with pytest.raises(SpecError) as info:
        load(tmp_path / "a.cdsl")
    (d,) = info.value.diagnostics
    assert "gone.cdsl" in d.message and d.hint is not None and "a.cdsl → " in d.hint


def test_a_concept_defined_in_two_included_files_is_an_error(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "main.cdsl": 'version 1\ninclude "a.cdsl"\nconcept h from pairs "other.yaml"\n',
            "a.cdsl": 'version 1\nconcept h from pairs "h.yaml"\n',
        },
    )
    with pytest.raises(SpecError, match="concept 'h' is defined twice"):
        load(tmp_path / "main.cdsl")


def test_yaml_and_dsl_files_can_include_each_other(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "main.yaml": "version: 1\ninclude: [c.cdsl]\nconstraints:\n  - {op: ablate, concept: h, layers: 3}\n",
            "c.cdsl": 'version 1\nconcept h from pairs "h.yaml"\n',
        },
    )
    spec = load(tmp_path / "main.yaml")
    assert spec.constraints[0].concept == "h"


def test_spec_methods_round_trip_through_dict_yaml_and_dsl() -> None:
    spec = parse(HEAD + "steer h by -1.5 sd at layer 6 on prompt\nscale r by 0.5 at layers 4-8\n")
    assert spec.to_dict()["constraints"][0] == {
        "op": "steer",
        "concept": "h",
        "by": "-1.5 sd",
        "layers": 6,
        "tokens": "prompt",
    }
    assert parse(spec.to_dsl()) == spec
    assert cdsl.spec_hash(spec) == spec.hash()


def test_diff_is_empty_for_equal_specs_and_field_by_field_otherwise() -> None:
    a = parse(HEAD + "clamp h >= 0.3 at layers 10-14\n")
    b = parse(HEAD + "clamp h >= 0.5 at layers 10-16 on generated\n")
    assert cdsl.diff(a, a) == []
    (change,) = cdsl.diff(a, b)
    assert change.kind == "changed"
    assert change.fields == (
        ("min", "0.3", "0.5"),
        ("where", "layers 10-14", "layers 10-16"),
        ("tokens", "all", "generated"),
    )


def test_importing_the_package_has_no_heavy_side_effects() -> None:
    code = (
        "import sys, constraintdsl; "
        "assert 'torch' not in sys.modules and 'nnsight' not in sys.modules, sorted(sys.modules); "
        "from constraintdsl.lang.parser import _lark; assert _lark.cache_info().currsize == 0"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_api_is_listed_in_dunder_all() -> None:
    for name in cdsl.__all__:
        assert hasattr(cdsl, name), name
    assert {"parse", "load", "Spec", "SpecError", "spec_hash", "diff"} <= set(cdsl.__all__)
    assert isinstance(parse(HEAD), Spec)


def test_the_grammar_ships_inside_the_wheel(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(root),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    import zipfile

    (wheel,) = tmp_path.glob("constraintdsl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "constraintdsl/grammars/constraint.lark" in names
    assert "constraintdsl/lang/parser.py" in names
