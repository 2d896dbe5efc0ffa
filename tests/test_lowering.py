"""The nnsight lowering against a hand-written raw-torch reference, and the runner's entry points.

The reference applies the same payload with ``register_forward_hook`` on the same modules of an
identical tiny model that nnsight never touched, computing positions from the attention mask it
captures with a forward pre-hook on the root module.  Logits (trace) and greedy ids (generate) must
be identical.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import nnsight
import pytest
import torch

from constraintdsl.run import runner
from constraintdsl.runtime import interventions as runtime
from constraintdsl.runtime.interventions import (
    ALL,
    FIRST,
    GENERATED,
    LAST,
    PROMPT,
    SCALE,
    STEER,
    apply_site,
    gate_values,
)
from tests.tiny import HIDDEN, tiny_hf, tiny_nnsight, tiny_tokenizer

ARCHS = ("llama", "gpt2")
PROMPTS = ["Hello there friend, how are you today?", "Hi", "The cat sat on the mat."]
NEW_TOKENS = 10

_PATHS = {"llama": ("model.layers", "self_attn"), "gpt2": ("transformer.h", "attn")}


def unit(seed: int, mix: torch.Tensor | None = None, weight: float = 0.0) -> torch.Tensor:
    """A seeded random unit direction, optionally leaning towards ``mix`` (non-orthogonal to it)."""
    v = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(seed))
    v = v / v.norm()
    if mix is not None:
        v = weight * mix + (1 - weight) * v
        v = v / v.norm()
    return v


def encode(texts: list[str]) -> dict[str, torch.Tensor]:
    """Left-padded plain-text encoding (the layout nnsight feeds the model)."""
    tok = tiny_tokenizer()
    enc = tok(texts, return_tensors="pt", padding=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """What nnsight passes as ``position_ids`` for a left-padded batch: each row counted from its first token."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _bound(d: int, lo: float, hi: float, tokens: int, entry: int, count: int = 0, gate: int = -1) -> dict[str, Any]:
    return {"dir": d, "lo": lo, "hi": hi, "sign": 1.0, "tokens": tokens, "count": count, "gate": gate, "entry": entry}


def _action(kind: int, u: torch.Tensor, amount: float, tokens: int, entry: int, count: int = 0, gate: int = -1) -> Any:
    return {"kind": kind, "u": u, "amount": amount, "tokens": tokens, "count": count, "gate": gate, "entry": entry}


def _site(arch: str, layer: int, site: str, **parts: Any) -> dict[str, Any]:
    layers, attn = _PATHS[arch]
    path = f"{layers}.{layer}" + (f".{attn}" if site == "attn" else "")
    base: dict[str, Any] = {
        "actions": [],
        "dirs": torch.zeros(0, HIDDEN),
        "bounds": [],
        "groups": [],
        "gate_reads": [],
    }
    return {"layer": layer, "site": site, "path": path, **base, **parts}


def gate_threshold(arch: str, texts: list[str], u: torch.Tensor) -> float:
    """A threshold on the layer-0 prompt mean that the rows of ``PROMPTS`` fall on both sides of."""
    enc = encode(texts)
    with torch.no_grad():
        hs = tiny_hf(arch)(**enc, position_ids=position_ids(enc["attention_mask"]), output_hidden_states=True)
    mask = enc["attention_mask"]
    pos = torch.where(mask.bool(), mask.cumsum(-1) - 1, -1)
    values = gate_values(hs.hidden_states[1], u, pos, mask.sum(-1))
    ordered = values.sort().values
    return float((ordered[0] + ordered[1]) / 2)  # the lowest row fails, the others pass


def rich_payload(arch: str) -> dict[str, Any]:
    """Clamp-like joint bounds on 2 non-orthogonal directions at 2 layers, an ablate, steer and scale
    actions, an ``attn`` site, a gate read at layer 0 and used later, and every token selection."""
    d0 = unit(1)
    d1 = unit(2, d0, 0.6)  # cos(d0, d1) ≈ 0.6
    d2, d3 = unit(3), unit(4)
    pair = torch.stack([d0, d1])
    joint = runtime.prepare_group(pair, [True, True], [True, True])
    single = runtime.prepare_group(d2[None], [True], [True])
    attn_group = runtime.prepare_group(d1[None], [False], [True])
    threshold = gate_threshold(arch, PROMPTS, d3)
    sites = [
        _site(
            arch,
            0,
            "resid",
            actions=[_action(STEER, d2, 0.05, LAST, 0, count=2)],
            gate_reads=[{"gate": 0, "u": d3, "threshold": threshold, "cmp": ">="}],
        ),
        _site(
            arch,
            1,
            "attn",
            dirs=d1[None],
            bounds=[_bound(0, -math.inf, -0.002, FIRST, 1, count=3, gate=0)],
            groups=[([0], attn_group)],
        ),
        _site(
            arch,
            1,
            "resid",
            dirs=pair,
            bounds=[_bound(0, 0.01, math.inf, ALL, 2), _bound(1, -math.inf, -0.005, ALL, 3)],
            groups=[([0, 1], joint)],
        ),
        _site(
            arch,
            2,
            "resid",
            actions=[_action(SCALE, d3, 0.5, PROMPT, 4)],
            dirs=torch.cat([pair, d2[None]]),
            bounds=[
                _bound(0, -0.01, 0.02, PROMPT, 5),
                _bound(1, 0.0, math.inf, GENERATED, 6),
                _bound(2, 0.0, 0.0, GENERATED, 7, gate=0),  # ablate, gated
            ],
            groups=[([0, 1], joint), ([2], single)],
        ),
    ]
    return {"sites": sites, "n_entries": 8, "n_gates": 1}


def _walk(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part)
    return root


@contextmanager
def reference_hooks(hf: torch.nn.Module, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Apply ``payload`` to ``hf`` with plain torch hooks: a pre-hook on the root captures the mask,
    forward hooks on the sites call ``runtime.apply_site``.  Yields the run's state (telemetry)."""
    state: dict[str, Any] = {"tele": torch.zeros(payload["n_entries"], 8), "gates": {}, "prompt_len": None}
    call: dict[str, Any] = {}

    def root_pre(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        width = ids.shape[1]
        mask = kwargs.get("attention_mask")
        if mask is None:  # transformers drops an all-ones mask: every token so far is real
            cache = kwargs.get("past_key_values")
            past = 0 if cache is None else cache.get_seq_length()  # before the layers extend it
            mask = torch.ones(ids.shape[0], past + width, dtype=torch.long)
        real = mask.bool()
        counted = real.long().cumsum(-1) - 1
        call["positions"] = torch.where(real, counted, -1)[:, -width:]
        call["total_len"] = real.sum(-1)
        call["first"] = state["prompt_len"] is None
        if call["first"]:
            state["prompt_len"] = call["total_len"]

    def site_hook(site: dict[str, Any]) -> Any:
        def hook(_module: torch.nn.Module, _args: Any, output: Any) -> Any:
            h = output[0] if isinstance(output, tuple) else output
            if call["first"]:
                for read in site["gate_reads"]:
                    value = gate_values(h, read["u"], call["positions"], state["prompt_len"])
                    assert read["cmp"] == ">="
                    state["gates"][read["gate"]] = value >= read["threshold"]
            if not (site["actions"] or site["bounds"]):
                return None
            new = apply_site(
                h, site, call["positions"], state["prompt_len"], call["total_len"], state["gates"], state["tele"]
            )
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    handles = [hf.register_forward_pre_hook(root_pre, with_kwargs=True)]
    handles += [_walk(hf, s["path"]).register_forward_hook(site_hook(s)) for s in payload["sites"]]
    try:
        yield state
    finally:
        for handle in handles:
            handle.remove()


def reference_generate(arch: str, payload: dict[str, Any] | None, enc: dict[str, torch.Tensor]) -> Any:
    """Greedy ids (and telemetry) from the raw model with the reference hooks."""
    hf = tiny_hf(arch)
    pad = tiny_tokenizer().pad_token_id
    kwargs = {"position_ids": position_ids(enc["attention_mask"]), "max_new_tokens": NEW_TOKENS}
    with torch.no_grad():
        if payload is None:
            return hf.generate(**enc, **kwargs, do_sample=False, pad_token_id=pad), None
        with reference_hooks(hf, payload) as state:
            ids = hf.generate(**enc, **kwargs, do_sample=False, pad_token_id=pad)
        return ids, state["tele"]


def reference_logits(arch: str, payload: dict[str, Any] | None, enc: dict[str, torch.Tensor]) -> Any:
    """Logits (and telemetry) of one raw forward pass with the reference hooks."""
    hf = tiny_hf(arch)
    with torch.no_grad():
        if payload is None:
            return hf(**enc, position_ids=position_ids(enc["attention_mask"])).logits, None
        with reference_hooks(hf, payload) as state:
            logits = hf(**enc, position_ids=position_ids(enc["attention_mask"])).logits
        return logits, state["tele"]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny matmuls run in microseconds on one thread; on a busy machine, more threads spin and wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=ARCHS)
def arch(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def model(arch: str) -> Any:
    return tiny_nnsight(arch)


@pytest.fixture(scope="module")
def payload(arch: str) -> dict[str, Any]:
    return rich_payload(arch)


def test_the_test_payload_binds_its_gate_splits_the_rows_and_changes_the_output(model: Any, payload: Any) -> None:
    enc = encode(PROMPTS)
    base = runner.generate(model, None, enc, max_new_tokens=NEW_TOKENS)
    run = runner.generate(model, payload, enc, max_new_tokens=NEW_TOKENS)
    assert not torch.equal(base.ids, run.ids)
    tele = run.telemetry
    assert tele is not None
    binding = tele[:, runtime.TELEMETRY_FIELDS.index("binding")]
    assert (binding > 0).all(), binding  # every statement moved something
    state = runtime.new_state(payload)
    with torch.no_grad(), model.trace(enc):
        runner.apply(model, payload, state, steps="one")
    gate = state["gates"][0]
    assert gate.any() and not gate.all()


@pytest.mark.parametrize("texts", [PROMPTS, PROMPTS[:1]], ids=["padded-batch", "one-prompt"])
def test_trace_logits_are_identical_to_the_raw_torch_hook_reference(
    arch: str, model: Any, payload: Any, texts: list[str]
) -> None:
    enc = encode(texts)
    got = runner.trace(model, payload, enc)
    want, tele = reference_logits(arch, payload, enc)
    assert torch.equal(got.logits, want)
    assert got.telemetry is not None
    torch.testing.assert_close(got.telemetry, tele, rtol=0, atol=0)
    base = runner.trace(model, None, enc)
    assert torch.equal(base.logits, reference_logits(arch, None, enc)[0])
    assert not torch.equal(base.logits, got.logits)


@pytest.mark.parametrize("texts", [PROMPTS, PROMPTS[:1]], ids=["padded-batch", "one-prompt"])
def test_greedy_generation_is_identical_to_the_raw_torch_hook_reference(
    arch: str, model: Any, payload: Any, texts: list[str]
) -> None:
    enc = encode(texts)
    got = runner.generate(model, payload, enc, max_new_tokens=NEW_TOKENS)
    want, tele = reference_generate(arch, payload, enc)
    assert got.ids.shape[1] >= enc["input_ids"].shape[1] + 8
    assert torch.equal(got.ids, want)
    assert got.telemetry is not None
    torch.testing.assert_close(got.telemetry, tele, rtol=1e-6, atol=1e-6)
    base = runner.generate(model, None, enc, max_new_tokens=NEW_TOKENS)
    assert torch.equal(base.ids, reference_generate(arch, None, enc)[0])


def test_chat_prompts_are_formatted_with_the_chat_template_by_default(model: Any) -> None:
    enc = runner.encode(model, ["Hi", [{"role": "user", "content": "Hello"}]])
    first, second = (model.tokenizer.decode(row, skip_special_tokens=False) for row in enc["input_ids"])
    assert (
        first
        == "<pad>" * int((enc["attention_mask"][0] == 0).sum())
        + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert second == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert enc["attention_mask"][0, 0] == 0 and enc["attention_mask"][1].all()  # left padding
    result = runner.generate(model, None, "Hi", max_new_tokens=4)
    assert len(result.texts) == 1 and result.new_ids.shape == (1, 4)


def test_apply_inside_a_users_own_trace_works_next_to_their_own_saves(model: Any, payload: Any) -> None:
    enc = encode(PROMPTS)
    layers = _walk(model, _PATHS[model.config.model_type][0])
    with torch.no_grad(), model.trace(enc):
        state = runner.apply(model, payload)
        mine = layers[2].output.save()
        logits = model.output.logits.save()
        tele = nnsight.save(state["tele"])
    expected = runner.trace(model, payload, enc)
    assert torch.equal(logits, expected.logits)
    assert mine.shape == (len(PROMPTS), enc["input_ids"].shape[1], HIDDEN)
    assert expected.telemetry is not None
    assert torch.equal(tele, expected.telemetry)


def test_apply_in_its_own_invoke_covers_every_generation_step_beside_the_users_invoke(model: Any, payload: Any) -> None:
    enc = encode(PROMPTS)
    layers = _walk(model, _PATHS[model.config.model_type][0])
    with torch.no_grad(), model.generate(max_new_tokens=NEW_TOKENS, do_sample=False) as tracer:
        with tracer.invoke(enc):
            seen = nnsight.save([])
            for _ in tracer.iter[:3]:
                seen.append(layers[0].output.shape)
        with tracer.invoke():
            state = runner.apply(model, payload)
            tele = nnsight.save(state["tele"])
            done = nnsight.save("after apply")
        with tracer.invoke():
            ids = nnsight.save(tracer.result)
    expected = runner.generate(model, payload, enc, max_new_tokens=NEW_TOKENS)
    assert torch.equal(ids, expected.ids)
    assert expected.telemetry is not None
    torch.testing.assert_close(tele, expected.telemetry, rtol=1e-6, atol=1e-6)
    assert [s[1] for s in seen] == [enc["input_ids"].shape[1], 1, 1]
    assert done == "after apply"


def test_apply_one_step_at_a_time_inside_the_users_own_loop(model: Any, payload: Any) -> None:
    enc = encode(PROMPTS)
    gen = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}
    with torch.no_grad(), model.generate(**gen) as tracer:
        with tracer.invoke(enc):
            state = None
            for _ in tracer.iter[:NEW_TOKENS]:
                state = runner.apply(model, payload, state, steps="one")
                last = model.lm_head.output.save()
            calls = nnsight.save(state["calls"])
        with tracer.invoke():
            ids = nnsight.save(tracer.result)
    expected = runner.generate(model, payload, enc, **gen)
    assert torch.equal(ids, expected.ids)
    assert calls == NEW_TOKENS
    assert last.shape[1] == 1


def test_install_keeps_the_payload_on_every_later_run_and_uninstall_removes_only_it(model: Any, payload: Any) -> None:
    enc = encode(PROMPTS)
    constrained = runner.trace(model, payload, enc).logits
    constrained_ids = runner.generate(model, payload, enc, max_new_tokens=NEW_TOKENS).ids
    baseline = runner.trace(model, None, enc).logits
    head = model.lm_head
    with model.edit(inplace=True):
        head.output[:] = head.output * 1.0  # the user's own edit, which must survive uninstall
    users = list(model._edits)
    try:
        runner.install(model, payload)
        assert runner.installed(model)
        with torch.no_grad(), model.trace(enc):
            logits = model.output.logits.save()
        assert torch.equal(logits, constrained)
        with torch.no_grad(), model.generate(enc, max_new_tokens=NEW_TOKENS, do_sample=False) as tracer:
            ids = nnsight.save(tracer.result)
        assert torch.equal(ids, constrained_ids)
        runner.install(model, payload)  # a second install replaces the first
        assert len(model._edits) == len(users) + 1
        runner.uninstall(model)
        assert not runner.installed(model)
        assert all(a is b for a, b in zip(model._edits, users, strict=True))
        with torch.no_grad(), model.trace(enc):
            logits = model.output.logits.save()
        assert torch.equal(logits, baseline)
    finally:
        runner.uninstall(model)
        model.clear_edits()


def test_generate_telemetry_counts_every_real_token_across_all_steps(model: Any) -> None:
    enc = encode(PROMPTS)
    u = unit(7)
    layer_path = f"{_PATHS[model.config.model_type][0]}.1"
    site = _site(
        model.config.model_type,
        1,
        "resid",
        dirs=u[None],
        bounds=[_bound(0, -1e9, 1e9, ALL, 0), _bound(0, -1e9, 1e9, GENERATED, 1)],
        groups=[([0], runtime.prepare_group(u[None], [True], [True]))],
    )
    assert site["path"] == layer_path
    run = runner.generate(model, {"sites": [site], "n_entries": 2, "n_gates": 0}, enc, max_new_tokens=NEW_TOKENS)
    steps = run.ids.shape[1] - run.prompt_width  # forward calls: the prefill, then one per later token
    rows = len(PROMPTS)
    prompt_tokens = int(enc["attention_mask"].sum()) - rows  # each row's first token (the sink) is never selected
    assert run.telemetry is not None
    selected = run.telemetry[:, runtime.TELEMETRY_FIELDS.index("selected")]
    assert selected[0] == prompt_tokens + rows * (steps - 1)
    assert selected[1] == rows * (steps - 1)
    assert (run.telemetry[:, runtime.TELEMETRY_FIELDS.index("binding")] == 0).all()


def test_a_bad_path_fails_with_the_envoys_error_and_the_model_still_works(model: Any) -> None:
    site = {**_site(model.config.model_type, 0, "resid"), "path": "nope.layers.0"}
    bad = {"sites": [site], "n_entries": 0, "n_gates": 0}
    enc = encode(PROMPTS[:1])
    with pytest.raises(AttributeError):
        runner.trace(model, bad, enc)
    assert runner.trace(model, None, enc).logits.shape[0] == 1


def test_turning_telemetry_off_changes_nothing_but_the_telemetry(model: Any, payload: Any) -> None:
    enc = encode(PROMPTS)
    on = runner.generate(model, payload, enc, max_new_tokens=NEW_TOKENS)
    off = runner.generate(model, payload, enc, max_new_tokens=NEW_TOKENS, telemetry=False)
    assert torch.equal(on.ids, off.ids) and off.telemetry is None
    traced = runner.trace(model, payload, enc, telemetry=False)
    assert torch.equal(traced.logits, runner.trace(model, payload, enc).logits) and traced.telemetry is None
