"""A spec with variables does not compile as a whole; each of its variants compiles like the same spec
written out by hand (on a tiny model with given concept artifacts)."""

from __future__ import annotations

from typing import Any

import pytest

from constraintdsl import SpecError, expand, parse
from constraintdsl.compiler.resolve import resolve
from tests.test_compiler import HEAD, artifact
from tests.tiny import tiny_nnsight


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_nnsight("llama")


def test_resolving_a_spec_with_variables_is_an_error_at_its_first_variable(model: Any) -> None:
    spec = parse(
        HEAD + "let floor = 0.1 | 0.3 | 0.5 | 0.7\nlet k = 2\nablate b at layer 0\n"
        "clamp a >= $floor at layer 1\nscale b by $k at layer 2\n",
        "sweep.cdsl",
    )
    with pytest.raises(SpecError) as info:
        resolve(spec, model, concepts={"a": artifact(seed=1), "b": artifact(seed=2)})
    (d,) = info.value.diagnostics
    assert (d.span.path, d.span.line, d.span.col) == ("sweep.cdsl", 7, 12)
    assert d.message == "this spec has variants (floor: 4 values, k: 1 value)"
    assert d.hint == "compile one variant (`constraintdsl.expand`) or compare them with `cdsl compare`"


def test_each_variant_compiles_to_the_plan_of_the_spec_written_out_by_hand(model: Any) -> None:
    given = {"a": artifact(seed=1), "b": artifact(seed=2)}
    spec = parse(
        HEAD + "let floor = 0.3 | p25\nlet k = 0.5 | 2\n"
        "clamp a >= $floor at layer 1 when b > $floor at layer 0\nscale b by $k at layer 2\n"
        "pin b = $floor at layer 1\n",
        "sweep.cdsl",
    )
    for variant in expand(spec):
        floor = "0.3" if "floor=0.3" in variant.name else "p25"
        k = "0.5" if "k=0.5" in variant.name else "2"
        by_hand = parse(
            HEAD + f"clamp a >= {floor} at layer 1 when b > {floor} at layer 0\nscale b by {k} at layer 2\n"
            f"pin b = {floor} at layer 1\n",
            "by-hand.cdsl",
        )
        got, want = resolve(variant.spec, model, concepts=given), resolve(by_hand, model, concepts=given)
        assert [(e.keyword, e.layer, e.lo, e.hi) for e in got.entries] == [
            (e.keyword, e.layer, e.lo, e.hi) for e in want.entries
        ]
        assert [s["gate_reads"][0]["threshold"] for s in got.payload["sites"] if s["gate_reads"]] == [
            s["gate_reads"][0]["threshold"] for s in want.payload["sites"] if s["gate_reads"]
        ]
