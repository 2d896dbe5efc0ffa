"""Budgets and targets as statements: what they read as, their canonical text, diff and schema, and that
continuous lets are searched by ``tune`` rather than expanded."""

from __future__ import annotations

from pathlib import Path

import pytest

import constraintdsl as cdsl
from constraintdsl.lang.nodes import Budget, Target
from constraintdsl.lang.variants import bind, continuous, count, ends_as_values
from constraintdsl.lang.yaml_twin import json_schema

HEAD = 'version 1\nconcept sentiment from pairs "data/sentiment.yaml"\n'


def load(tmp_path: Path, body: str, name: str = "s.cdsl") -> cdsl.Spec:
    path = tmp_path / name
    path.write_text(HEAD + body)
    return cdsl.load(path)


def test_budgets_and_targets_are_checks_not_constraints(tmp_path: Path) -> None:
    spec = load(tmp_path, "clamp sentiment >= 0.3 at layer 2\nbudget kl <= 0.05\ntarget ab >= 0.1\n")
    assert [op.keyword for op in spec.constraints] == ["clamp"]
    assert spec.checks == (Budget("kl", 0.05), Target("ab", ">=", 0.1))
    assert spec.checks[0].span.line == 4 and spec.checks[1].measure_span.col == 8


def test_unicode_comparisons_read_as_their_ascii_forms(tmp_path: Path) -> None:
    a = load(tmp_path, "clamp sentiment >= 0.3 at layer 2\nbudget ppl ≤ 1.5\ntarget sentiment ≥ 0.5\n", "a.cdsl")
    b = load(tmp_path, "clamp sentiment >= 0.3 at layer 2\nbudget ppl <= 1.5\ntarget sentiment >= 0.5\n", "b.cdsl")
    assert a == b and a.hash() == b.hash()


def test_the_order_of_checks_does_not_change_the_hash(tmp_path: Path) -> None:
    a = load(tmp_path, "clamp sentiment >= 0.3 at layer 2\ntarget ab >= 0.1\nbudget kl <= 0.05\n", "a.cdsl")
    b = load(tmp_path, "budget kl <= 0.05\nclamp sentiment >= 0.3 at layer 2\ntarget ab >= 0.1\n", "b.cdsl")
    assert a.hash() == b.hash()
    assert a.to_dsl().endswith("budget kl <= 0.05\ntarget ab >= 0.1\n")


def test_changing_a_budget_changes_the_hash_and_reads_as_one_change(tmp_path: Path) -> None:
    a = load(tmp_path, "clamp sentiment >= 0.3 at layer 2\nbudget kl <= 0.05\n", "a.cdsl")
    b = load(tmp_path, "clamp sentiment >= 0.3 at layer 2\nbudget kl <= 0.1\ntarget ab >= 0.2\n", "b.cdsl")
    assert a.hash() != b.hash()
    lines = [c.render().split("  (")[0] for c in a.diff(b)]
    assert lines == ["~ budget kl: 0.05 → 0.1", "+ target ab >= 0.2"]


def test_the_yaml_schema_names_budget_and_target_ops() -> None:
    text = str(json_schema())
    assert "'budget'" in text and "'target'" in text and "'ppl'" in text


def test_a_continuous_let_is_not_expanded_but_named_with_its_location(tmp_path: Path) -> None:
    spec = load(tmp_path, "let floor = 0 .. 3\nclamp sentiment >= $floor at layer 2\n")
    assert continuous(spec)[0].range == (cdsl.Value(0.0), cdsl.Value(3.0))
    assert count(spec) == 1
    with pytest.raises(cdsl.SpecError) as info:
        cdsl.expand(spec)
    text = info.value.render()
    assert "s.cdsl:3:1" in text and "cdsl tune" in text and "let floor = 0 | … | 3" in text


def test_binding_a_continuous_let_gives_the_spec_written_out_by_hand(tmp_path: Path) -> None:
    spec = load(tmp_path, "let floor = 0 .. 3\nclamp sentiment >= $floor at layer 2\n", "a.cdsl")
    by_hand = load(tmp_path, "clamp sentiment >= 1.25 at layer 2\n", "b.cdsl")
    assert bind(spec, {"floor": cdsl.Value(1.25)}).hash() == by_hand.hash()


def test_checks_over_a_range_look_at_both_ends(tmp_path: Path) -> None:
    spec = load(tmp_path, "let floor = 0 .. 3\nclamp sentiment >= $floor at layer 2\n")
    assert [v.name for v in cdsl.expand(ends_as_values(spec))] == ["floor=0", "floor=3"]
