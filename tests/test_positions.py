"""Token selections mean the same on the prefill and on every KV-cached step, for left-padded batches:
each row of a batch gets what it gets alone, ``on generated`` never touches a prompt token, and
``last N`` / ``first N`` count real tokens only."""

from __future__ import annotations

from typing import Any

import nnsight
import pytest
import torch
from nnsight.intervention.interleaver import OutOfOrderError

from constraintdsl.run import runner
from constraintdsl.runtime import interventions as runtime
from constraintdsl.runtime.interventions import ALL, FIRST, GENERATED, LAST, STEER
from tests.test_lowering import (  # noqa: F401  (one_thread is an autouse fixture)
    NEW_TOKENS,
    PROMPTS,
    _action,
    _bound,
    _site,
    _walk,
    encode,
    one_thread,
    rich_payload,
    unit,
)
from tests.tiny import HIDDEN, tiny_nnsight

ARCHS = ("llama", "gpt2")
GEN = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS}  # same length alone and batched


@pytest.fixture(scope="module", params=ARCHS)
def arch(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def model(arch: str) -> Any:
    return tiny_nnsight(arch)


def layers_of(model: Any) -> Any:
    return _walk(model, "model.layers" if model.config.model_type == "llama" else "transformer.h")


def test_each_row_of_a_padded_batch_gets_the_logits_it_gets_alone(arch: str, model: Any) -> None:
    payload = rich_payload(arch)
    enc = encode(PROMPTS)
    batch = runner.trace(model, payload, enc)
    assert not enc["attention_mask"].all()
    for row, prompt in enumerate(PROMPTS):
        alone = runner.trace(model, payload, encode([prompt])).logits[0]
        real = enc["attention_mask"][row].bool()
        torch.testing.assert_close(batch.logits[row, real], alone, rtol=0, atol=1e-5)


def test_each_row_of_a_padded_batch_generates_what_it_generates_alone(arch: str, model: Any) -> None:
    payload = rich_payload(arch)
    enc = encode(PROMPTS)
    batch = runner.generate(model, payload, enc, **GEN)
    base = runner.generate(model, None, enc, **GEN)
    assert not torch.equal(batch.new_ids, base.new_ids)
    for row, prompt in enumerate(PROMPTS):
        alone = runner.generate(model, payload, encode([prompt]), **GEN)
        assert torch.equal(batch.new_ids[row], alone.new_ids[0]), prompt


def test_invokes_of_different_lengths_with_apply_in_its_own_invoke_match_each_row_alone(arch: str, model: Any) -> None:
    payload = rich_payload(arch)
    with torch.no_grad(), model.generate(**GEN, do_sample=False) as tracer:
        for prompt in PROMPTS:
            with tracer.invoke(encode([prompt])):
                pass
        with tracer.invoke():
            runner.apply(model, payload)
        with tracer.invoke():
            ids = nnsight.save(tracer.result)
    for row, prompt in enumerate(PROMPTS):
        alone = runner.generate(model, payload, encode([prompt]), **GEN)
        assert torch.equal(ids[row, -NEW_TOKENS:], alone.new_ids[0]), prompt


def _generated_only(arch: str) -> dict[str, Any]:
    u, v = unit(11), unit(12)
    group = runtime.prepare_group(v[None], [True], [True])
    sites = [
        _site(arch, 0, "attn", actions=[_action(STEER, u, 0.5, GENERATED, 0)]),
        _site(
            arch,
            1,
            "resid",
            actions=[_action(STEER, u, 0.5, GENERATED, 1)],
            dirs=v[None],
            bounds=[_bound(0, 0.0, 0.0, GENERATED, 2)],
            groups=[([0], group)],
        ),
    ]
    return {"sites": sites, "n_entries": 3, "n_gates": 0}


def _per_step_outputs(model: Any, payload: dict[str, Any] | None, enc: dict[str, torch.Tensor]) -> list[Any]:
    """Every layer's output at every step, read in an invoke after the one that applies ``payload``."""
    layers = layers_of(model)
    with torch.no_grad(), model.generate(**GEN, do_sample=False) as tracer:
        with tracer.invoke(enc):
            if payload is not None:
                runner.apply(model, payload)
        with tracer.invoke():
            steps = nnsight.save([])
            for _ in tracer.iter[:NEW_TOKENS]:
                steps.append([layer.output.clone() for layer in layers])
    return list(steps)


def test_on_generated_never_touches_prompt_tokens_at_any_step(arch: str, model: Any) -> None:
    payload = _generated_only(arch)
    enc = encode(PROMPTS)
    base = _per_step_outputs(model, None, enc)
    run = _per_step_outputs(model, payload, enc)
    assert len(base) == len(run) == NEW_TOKENS
    # The prefill is the only call that carries prompt tokens (later ones read them from the KV cache):
    # every layer's output there is bit-identical to the baseline's.
    for mine, theirs in zip(run[0], base[0], strict=True):
        assert torch.equal(mine, theirs)
    # Each later step's single token is a generated one, and it is edited.
    assert all(step[0].shape[1] == 1 for step in run[1:])
    assert not torch.equal(run[1][1], base[1][1])
    result = runner.generate(model, payload, enc, **GEN)
    assert result.telemetry is not None
    selected = result.telemetry[:, runtime.TELEMETRY_FIELDS.index("selected")]
    assert (selected == len(PROMPTS) * (NEW_TOKENS - 1)).all()


def test_on_generated_selects_nothing_in_a_plain_trace(arch: str, model: Any) -> None:
    enc = encode(PROMPTS)
    payload = _generated_only(arch)
    assert torch.equal(runner.trace(model, payload, enc).logits, runner.trace(model, None, enc).logits)


def _site_deltas(model: Any, payload: dict[str, Any], enc: dict[str, torch.Tensor], u: torch.Tensor) -> torch.Tensor:
    """Change of layer 1's output projected on ``u``, constrained minus baseline, [B, T]."""
    layer = layers_of(model)[1]
    outs = []
    for p in (payload, None):
        with torch.no_grad(), model.trace() as tracer:
            with tracer.invoke(enc):
                if p is not None:
                    runner.apply(model, p)
            with tracer.invoke():
                h = layer.output.save()
        outs.append(h @ u)
    return outs[0] - outs[1]


def test_last_n_and_first_n_select_the_same_real_tokens_padded_as_alone(arch: str, model: Any) -> None:
    u = torch.eye(HIDDEN)[0]
    v = torch.eye(HIDDEN)[1]
    payload = {
        "sites": [
            _site(
                arch,
                1,
                "resid",
                actions=[_action(STEER, u, 1.0, LAST, 0, count=2), _action(STEER, v, 1.0, FIRST, 1, count=3)],
            )
        ],
        "n_entries": 2,
        "n_gates": 0,
    }
    enc = encode(PROMPTS)
    batch_last = _site_deltas(model, payload, enc, u)
    batch_first = _site_deltas(model, payload, enc, v)
    for row, prompt in enumerate(PROMPTS):
        real = enc["attention_mask"][row].bool()
        n = int(real.sum())
        expect_last = torch.zeros(n)
        expect_last[max(1, n - 2) :] = 1.0  # never the first real token (the attention sink)
        expect_first = torch.zeros(n)
        expect_first[1 : min(4, n)] = 1.0  # `first 3` counts from the token after the sink
        torch.testing.assert_close(batch_last[row, real], expect_last, rtol=0, atol=1e-6)
        torch.testing.assert_close(batch_first[row, real], expect_first, rtol=0, atol=1e-6)
        assert (batch_last[row, ~real] == 0).all() and (batch_first[row, ~real] == 0).all()
        alone = encode([prompt])
        torch.testing.assert_close(_site_deltas(model, payload, alone, u)[0], expect_last, rtol=0, atol=1e-6)
        torch.testing.assert_close(_site_deltas(model, payload, alone, v)[0], expect_first, rtol=0, atol=1e-6)


def test_positions_count_real_tokens_across_the_kv_cache() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 0, 1]])
    positions, total = runtime.positions_from_mask(mask, 2)
    assert positions.tolist() == [[1, 2], [3, 4], [-1, 2]]
    assert total.tolist() == [3, 5, 3]
    positions, total = runtime.positions_from_mask(mask, 5)
    assert positions[0].tolist() == [-1, -1, 0, 1, 2]


@pytest.mark.parametrize("tokens", [ALL, GENERATED])
def test_telemetry_selection_counts_match_the_token_selection(arch: str, model: Any, tokens: int) -> None:
    u = unit(21)
    site = _site(
        arch,
        2,
        "resid",
        dirs=u[None],
        bounds=[_bound(0, -1e9, 1e9, tokens, 0)],
        groups=[([0], runtime.prepare_group(u[None], [True], [True]))],
    )
    enc = encode(PROMPTS)
    result = runner.generate(model, {"sites": [site], "n_entries": 1, "n_gates": 0}, enc, **GEN)
    assert result.telemetry is not None
    prompt = int(enc["attention_mask"].sum()) - len(PROMPTS) if tokens == ALL else 0  # each row's sink left out
    assert result.telemetry[0, 0] == prompt + len(PROMPTS) * (NEW_TOKENS - 1)


def test_apply_inside_one_invoke_of_several_edits_only_that_invokes_rows(arch: str, model: Any) -> None:
    payload = rich_payload(arch)
    short, long = PROMPTS[1], PROMPTS[0]
    with torch.no_grad(), model.generate(**GEN, do_sample=False) as tracer:
        with tracer.invoke(encode([short])):
            runner.apply(model, payload)
        with tracer.invoke(encode([long])):
            pass
        with tracer.invoke():
            ids = nnsight.save(tracer.result)
    constrained = runner.generate(model, payload, encode([short]), **GEN)
    baseline = runner.generate(model, None, encode([long]), **GEN)
    assert torch.equal(ids[0, -NEW_TOKENS:], constrained.new_ids[0])
    assert torch.equal(ids[1, -NEW_TOKENS:], baseline.new_ids[0])


@pytest.mark.parametrize("generate", [False, True], ids=["trace", "generate"])
def test_sites_out_of_forward_order_are_an_error_not_a_quiet_end(arch: str, model: Any, generate: bool) -> None:
    payload = _generated_only(arch)
    payload = {**payload, "sites": payload["sites"][::-1]}
    enc = encode(PROMPTS)
    with pytest.raises(OutOfOrderError):
        if generate:
            runner.generate(model, payload, enc, max_new_tokens=3)
        else:
            runner.trace(model, payload, enc)


def test_a_gate_used_before_it_is_read_is_a_clear_error(arch: str, model: Any) -> None:
    payload = rich_payload(arch)
    payload = {**payload, "sites": [{**payload["sites"][0], "gate_reads": []}, *payload["sites"][1:]]}
    with pytest.raises(ValueError, match=r"uses gate\(s\) \[0\] before they are read"):
        runner.trace(model, payload, encode(PROMPTS))
