"""Against a real NDIF server (``make test-ndif`` runs ndif 0.1.2 on loopback): remote results equal
local ones, problems are caught before sending or come back as clear errors, and many variants travel
in one request.  Skipped without a server (see conftest.py)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from constraintdsl.compiler.resolve import resolve
from constraintdsl.lang.loading import load
from constraintdsl.models import ndif as remote
from constraintdsl.run import runner
from tests.test_compiler import compile_
from tests.tiny import tiny_hf, tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]
TINY_SPEC = (
    "clamp a >= 0.5 at layer 0\n"
    "ablate b at layer 1\n"
    "steer a by 1.5 at layer 2\n"
    "clamp a in [0, 1] at layers 1-2 on last 2 when b > 0.5 at layer 0\n"
)
PROMPTS = ["Hello there friend, how are you today?", "Hi", "The cat sat on the mat.", "Please help me."]
CHATS = ["Write one sentence about the sea.", "How do I bake bread?"]


def _same(local: list[Any], far: list[Any]) -> None:
    assert len(local) == len(far)
    for near_result, far_result in zip(local, far, strict=True):
        assert torch.equal(near_result.ids, far_result.ids)
        if near_result.telemetry is None:
            assert far_result.telemetry is None
        else:
            # sums over many tokens in float32: the server may add them in another order (its own thread count)
            torch.testing.assert_close(far_result.telemetry, near_result.telemetry, rtol=1e-5, atol=1e-5)


class Requests:
    """Counts the requests actually POSTed, and keeps every backend's sizes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.posted = 0
        self.backends: list[remote.NdifBackend] = []
        original_post = remote.NdifBackend._post
        original_init = remote.NdifBackend.__init__

        def post(backend: remote.NdifBackend, request: Any, blob: bytes) -> Any:
            self.posted += 1
            return original_post(backend, request, blob)

        def init(backend: remote.NdifBackend, *args: Any, **kwargs: Any) -> None:
            original_init(backend, *args, **kwargs)
            self.backends.append(backend)

        monkeypatch.setattr(remote.NdifBackend, "_post", post)
        monkeypatch.setattr(remote.NdifBackend, "__init__", init)


def test_remote_generation_equals_local_under_clamp_ablate_steer_and_a_gate(tiny_model: Any, ndif_host: str) -> None:
    plan = compile_(tiny_model, TINY_SPEC)
    local = runner.generate_variants(tiny_model, [None, plan.payload], PROMPTS, max_new_tokens=8)
    far = runner.generate_variants(tiny_model, [None, plan.payload], PROMPTS, max_new_tokens=8, remote=ndif_host)
    _same(local, far)
    assert far[1].telemetry is not None and far[1].telemetry[:, 1].sum() > 0  # statements did bind


def test_remote_logits_equal_local_within_1e_5(tiny_model: Any, ndif_host: str) -> None:
    plan = compile_(tiny_model, TINY_SPEC)
    local = runner.trace(tiny_model, plan.payload, PROMPTS)
    far = runner.trace(tiny_model, plan.payload, PROMPTS, remote=ndif_host)
    real = local.attention_mask.bool()
    torch.testing.assert_close(far.logits[real], local.logits[real], rtol=0, atol=1e-5)
    assert far.telemetry is not None and local.telemetry is not None
    torch.testing.assert_close(far.telemetry, local.telemetry, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["sentiment-steer", "gated-floor"])
def test_an_example_spec_on_smollm2_gives_the_same_generation_and_last_logits_remotely(
    smollm2: Any, ndif_host: str, name: str
) -> None:
    plan = resolve(load(str(REPO / "specs" / "examples" / f"{name}.cdsl")), smollm2)
    local = runner.generate_variants(smollm2, [None, plan.payload], CHATS, max_new_tokens=12)
    far = runner.generate_variants(smollm2, [None, plan.payload], CHATS, max_new_tokens=12, remote=ndif_host)
    _same(local, far)
    near_trace = runner.trace(smollm2, plan.payload, CHATS, chat=True, logits="last")
    far_trace = runner.trace(smollm2, plan.payload, CHATS, chat=True, logits="last", remote=ndif_host)
    assert far_trace.logits.shape == (len(CHATS), 1, smollm2.config.vocab_size)
    torch.testing.assert_close(far_trace.logits, near_trace.logits, rtol=0, atol=1e-5)


def test_a_layer_the_remote_model_lacks_fails_before_anything_is_sent(
    tiny_model: Any, smollm2: Any, ndif_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = resolve(load(str(REPO / "specs" / "examples" / "sentiment-steer.cdsl")), smollm2)  # layers 6 and 10-14
    sent = Requests(monkeypatch)
    with pytest.raises(remote.RemoteFailure) as caught:
        runner.generate(tiny_model, plan.payload, PROMPTS, max_new_tokens=4, remote=ndif_host)
    assert caught.value.kind == "payload"
    assert "model.layers.6" in str(caught.value) and "nothing was sent" in str(caught.value)
    assert sent.posted == 0 and not sent.backends


def test_a_server_side_exception_comes_back_as_a_clear_error_naming_the_request(
    tiny_model: Any, ndif_host: str
) -> None:
    payload = copy.deepcopy(compile_(tiny_model, TINY_SPEC).payload)
    payload["sites"][0]["bounds"][0]["gate"] = 7  # a gate nothing reads: the runtime raises on the server
    with pytest.raises(remote.RemoteFailure) as caught:
        runner.generate(tiny_model, payload, PROMPTS, max_new_tokens=4, remote=ndif_host)
    error = caught.value
    assert error.kind == "server" and error.request_id
    text = str(error)
    assert f"request {error.request_id} failed on the server" in text
    assert "uses gate(s) [7] before they are read" in text
    assert "Traceback" not in text  # one sentence, not the server's traceback ...
    assert "ValueError" in error.detail  # ... which stays available on the error


def test_eight_variants_by_four_prompts_travel_in_one_request_and_match_local(
    tiny_model: Any, ndif_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    payloads: list[dict[str, Any] | None] = [None]
    payloads += [compile_(tiny_model, f"steer a by {k * 0.5} at layer 1\n").payload for k in range(1, 4)]
    payloads += [compile_(tiny_model, f"clamp a >= {k * 0.25} at layers 0-2\n").payload for k in range(1, 4)]
    payloads.append(compile_(tiny_model, TINY_SPEC).payload)
    assert len(payloads) == 8 and len(PROMPTS) == 4
    local = runner.generate_variants(tiny_model, payloads, PROMPTS, max_new_tokens=6)
    sent = Requests(monkeypatch)
    far = runner.generate_variants(tiny_model, payloads, PROMPTS, max_new_tokens=6, remote=ndif_host)
    assert sent.posted == 1
    _same(local, far)
    stats = sent.backends[0].stats
    assert stats.request_bytes > 0 and 0 < stats.response_bytes < 20_000  # ids and telemetry only


def test_a_job_submitted_without_waiting_is_fetched_later(tiny_model: Any, ndif_host: str) -> None:
    plan = compile_(tiny_model, TINY_SPEC)
    local = runner.generate_variants(tiny_model, [None, plan.payload], PROMPTS, max_new_tokens=6)
    job = runner.submit(tiny_model, [None, plan.payload], PROMPTS, remote=ndif_host, max_new_tokens=6)
    assert job.job_id
    again = runner.RemoteJob.from_dict(job.to_dict())  # what `cdsl job ID` stores and reads back
    far = runner.fetch(tiny_model, again, wait=120)
    assert far is not None
    _same(local, far)


def test_a_model_the_server_does_not_host_is_a_clear_error(tmp_path: Path, ndif_host: str) -> None:
    from constraintdsl.models.loading import load_model

    folder = tmp_path / "not-hosted"
    tiny_hf("llama", seed=3).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    model = load_model(str(folder))
    shutil.rmtree(folder)  # the server cannot load it either
    with pytest.raises(remote.RemoteFailure) as caught:
        runner.generate(model, None, PROMPTS[:1], max_new_tokens=2, remote=ndif_host, timeout=120)
    assert caught.value.kind == "not_hosted", str(caught.value)
    assert caught.value.request_id and "does not host this model" in str(caught.value)
