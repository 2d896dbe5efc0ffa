"""The model-facing API on a tiny model: compile a spec, generate with it, apply it inside your own
nnsight block, install it persistently."""

from __future__ import annotations

from typing import Any

import nnsight
import pytest
import torch

import constraintdsl as cdsl
from tests.test_compiler import artifact
from tests.tiny import tiny_nnsight

SPEC = cdsl.parse(
    'version 1\nconcept a from pairs "a.yaml"\nconcept b from pairs "b.yaml"\n'
    "clamp a >= 0.5 at layers 1-2\nablate b at layer 1 on generated\n",
    "api.cdsl",
)


@pytest.fixture(scope="module")
def model() -> Any:
    torch.manual_seed(0)
    return tiny_nnsight("llama")


@pytest.fixture(scope="module")
def plan(model: Any) -> Any:
    return cdsl.compile(SPEC, model, concepts={"a": artifact(seed=1), "b": artifact(seed=2)})


def test_plan_generate_returns_texts_ids_and_telemetry_rows(plan: Any) -> None:
    result = plan.generate(["hello there", "a longer prompt about the weather"], max_new_tokens=4)
    assert len(result.texts) == 2 and result.new_ids.shape == (2, 4)
    rows = plan.telemetry(result.telemetry)
    assert [(r.statement, r.layer) for r in rows][:2] == [
        ("clamp a >= 0.5 at layers 1-2", 1),
        ("clamp a >= 0.5 at layers 1-2", 2),
    ]
    assert all(r.selected > 0 for r in rows)


def test_apply_inside_the_users_own_trace_matches_plan_trace(model: Any, plan: Any) -> None:
    enc = model.tokenizer(["hello there"], return_tensors="pt")
    with torch.no_grad(), model.trace(dict(enc)):
        cdsl.apply(plan)
        mine = nnsight.save(model.lm_head.output)
    expected = plan.trace(dict(enc)).logits
    assert torch.allclose(mine, expected, atol=1e-6)


def test_apply_compiles_a_spec_given_with_its_model(model: Any) -> None:
    with pytest.raises(TypeError, match="needs the model"):
        cdsl.apply(SPEC)


def test_install_keeps_the_plan_on_for_later_runs_until_uninstalled(model: Any, plan: Any) -> None:
    from constraintdsl.run import runner

    enc = dict(model.tokenizer(["hello there"], return_tensors="pt"))
    plain = runner.trace(model, None, enc).logits
    constrained = plan.trace(enc).logits
    assert not torch.allclose(plain, constrained, atol=1e-4)  # the plan does bind on this input
    cdsl.install(plan)
    try:
        assert torch.allclose(runner.trace(model, None, enc).logits, constrained, atol=1e-6)
    finally:
        cdsl.uninstall(model)
    assert torch.allclose(runner.trace(model, None, enc).logits, plain, atol=1e-6)
