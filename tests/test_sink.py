"""The attention sink is never selected: the first real token of every sequence (after left padding; the
first token of every corpus window) keeps its exact hidden state under every operation and every token
selection, on the prefill, through KV-cached generation and in a teacher-forced pass, read at every layer
through nnsight."""

from __future__ import annotations

from typing import Any

import nnsight
import pytest
import torch

import constraintdsl as cdsl
from constraintdsl.run import runner
from constraintdsl.runtime import interventions as runtime
from tests.test_compiler import artifact
from tests.test_lowering import encode
from tests.tiny import tiny_nnsight

# A long prompt, a two-token one and a one-token one: left padding differs per row, and the last row's
# only prompt token is its sink.
PROMPTS = ["Hello there friend, how are you today?", "Hi", "The cat sat on the mat.", "I"]
NEW = 4
OPS = {
    "clamp": "clamp a >= 40 raw",
    "pin": "pin a = 3 raw",
    "ablate": "ablate a",
    "steer": "steer a by 2",
    "scale": "scale a by 3",
}
SELECTIONS = ["all", "prompt", "generated", "last", "last 3", "first 1", "first 2"]


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_nnsight("llama")


def _plan(model: Any, statement: str) -> Any:
    spec = cdsl.parse(f'version 1\nconcept a from pairs "a.yaml"\n{statement}\n', "sink.cdsl")
    return cdsl.compile(spec, model, concepts={"a": artifact(seed=1)})


def _generate_outputs(model: Any, payload: dict[str, Any] | None, enc: dict[str, torch.Tensor]) -> list[Any]:
    """Every layer's output at every generation step (step 0 is the prefill), read in an invoke after
    the one that applies ``payload``."""
    layers = model.model.layers
    with torch.no_grad(), model.generate(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False) as tracer:
        with tracer.invoke(enc):
            if payload is not None:
                runner.apply(model, payload)
        with tracer.invoke():
            steps = nnsight.save([])
            for _ in tracer.iter[:NEW]:
                steps.append([layer.output.clone() for layer in layers])
    return list(steps)


def _first_real(mask: torch.Tensor) -> torch.Tensor:
    """Column of each row's first real token in a left-padded batch."""
    return (mask.long().cumsum(dim=1) == 0).sum(dim=1)


@pytest.mark.parametrize("tokens", SELECTIONS)
@pytest.mark.parametrize("op", list(OPS))
def test_the_first_real_token_keeps_its_bits_through_kv_cached_generation(model: Any, op: str, tokens: str) -> None:
    plan = _plan(model, f"{OPS[op]} at layers 0-2 on {tokens}")
    enc = encode(PROMPTS)
    assert not enc["attention_mask"].all()  # left-padded
    base = _generate_outputs(model, None, enc)
    run = _generate_outputs(model, plan.payload, enc)
    rows = torch.arange(len(PROMPTS))
    sink = _first_real(enc["attention_mask"])
    # The prefill is the only call that holds the sink (later steps read it from the KV cache).
    for layer, (mine, theirs) in enumerate(zip(run[0], base[0], strict=True)):
        assert torch.equal(mine[rows, sink], theirs[rows, sink]), f"layer {layer}"
    # The spec does act: some other token's hidden state differs somewhere.
    pairs = [(m, t) for step_m, step_t in zip(run, base, strict=True) for m, t in zip(step_m, step_t, strict=True)]
    assert any(not torch.equal(m, t) for m, t in pairs)


@pytest.mark.parametrize("tokens", SELECTIONS)
def test_the_first_token_of_every_window_keeps_its_bits_in_a_teacher_forced_pass(model: Any, tokens: str) -> None:
    plan = _plan(model, f"clamp a >= 40 raw at layers 0-2 on {tokens}")
    tok = model.tokenizer
    text = " ".join(PROMPTS * 3)
    ids = torch.tensor(tok(text)["input_ids"][:24]).view(3, 8)  # three unpadded corpus windows
    enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def outputs(payload: dict[str, Any] | None) -> list[torch.Tensor]:
        with torch.no_grad(), model.trace() as tracer:
            with tracer.invoke(enc):
                if payload is not None:
                    state = runtime.new_state(payload)
                    state["given_prompt_len"] = torch.full((3,), 3)  # each window's first 3 tokens: its prompt
                    runner.apply(model, payload, state, steps="one")
            with tracer.invoke():
                out = nnsight.save([layer.output.clone() for layer in model.model.layers])
        return list(out)

    base, run = outputs(None), outputs(plan.payload)
    for mine, theirs in zip(run, base, strict=True):
        assert torch.equal(mine[:, 0], theirs[:, 0])
    assert not torch.equal(run[-1], base[-1])


def test_telemetry_never_counts_the_first_token(model: Any) -> None:
    enc = encode(PROMPTS)
    real = enc["attention_mask"].sum(dim=1)
    for tokens, per_row in (
        ("all", real - 1),
        ("prompt", real - 1),
        ("first 2", (real - 1).clamp(max=2)),
        ("last 3", (real - 1).clamp(max=3)),
    ):
        plan = _plan(model, f"clamp a >= 40 raw at layer 1 on {tokens}")
        result = runner.trace(model, plan.payload, enc)
        assert result.telemetry is not None
        selected = result.telemetry[0, runtime.TELEMETRY_FIELDS.index("selected")]
        assert selected == per_row.sum(), tokens


def test_a_gate_reads_the_prompt_without_its_first_token_and_a_one_token_prompt_passes_no_gate(model: Any) -> None:
    h = torch.tensor([[[1000.0], [1.0], [3.0]], [[0.0], [0.0], [1000.0]]])
    positions = torch.tensor([[0, 1, 2], [-1, -1, 0]])  # the second row is one left-padded token
    values = runtime.gate_values(h, torch.ones(1), positions, torch.tensor([3, 1]))
    assert values[0] == 2.0 and values[1].isnan()
    plan = _plan(model, "steer a by 2 at layer 1 when a > -1e9 raw at layer 0")  # passes for any real prompt mean
    enc = encode(PROMPTS)
    base, run = _generate_outputs(model, None, enc), _generate_outputs(model, plan.payload, enc)
    last = len(PROMPTS) - 1  # "I": its only prompt token is its sink
    for step_m, step_t in zip(run, base, strict=True):
        assert torch.equal(step_m[1][last], step_t[1][last])  # never edited, at any step
    assert not torch.equal(run[0][1][0], base[0][1][0])  # the other rows are
