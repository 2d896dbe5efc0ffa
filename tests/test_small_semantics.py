"""Small semantics met on the way: ``concept build -o`` fills the cache too; ``trace`` and ``generate`` read a
plain string prompt the same way; the cached SmolLM2 config carries ``rope_theta`` at the top level;
telemetry tables label the units of every row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from nnsight import TransformersModel

import constraintdsl as cdsl
from constraintdsl.cli.app import main
from constraintdsl.cli.run import telemetry_table
from constraintdsl.compare.comparison import Comparison, Row
from constraintdsl.compare.report import load_table
from constraintdsl.compiler.telemetry import TelemetryRow
from constraintdsl.concepts.artifact import artifact_hash, load_artifact
from constraintdsl.concepts.build import cache_path, concept_cache_key
from constraintdsl.concepts.pairs import load_pairs
from constraintdsl.models.loading import _top_level_rope_theta, load_model
from constraintdsl.run import runner
from tests.test_artifacts import PAIRS
from tests.test_compiler import artifact
from tests.tiny import tiny_hf, tiny_nnsight, tiny_tokenizer


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("small") / "tiny"
    tiny_hf("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_concept_build_with_an_output_file_fills_the_cache_too(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONSTRAINTDSL_CACHE", str(tmp_path / "cache"))
    pairs = tmp_path / "tone.yaml"
    pairs.write_text(PAIRS)
    out = tmp_path / "tone.safetensors"
    args = ["concept", "build", "--pairs", str(pairs), "--model", str(folder), "--no-progress"]
    assert main([*args, "-o", str(out)]) == 0
    key, _ = concept_cache_key(load_pairs(pairs), load_model(str(folder)), layers=None, site="resid", method="mean")
    cached = cache_path(key)
    assert cached.is_file() and artifact_hash(cached) == artifact_hash(out)
    assert f"wrote cache entry {cached}" in capsys.readouterr().out.replace("\n", "")
    assert main(args) == 0  # a spec's `from pairs` (and a build without -o) now finds it
    assert "reused from cache" in capsys.readouterr().out
    assert load_artifact(cached).layers == load_artifact(out).layers


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_nnsight("llama")


def test_trace_and_generate_read_a_plain_string_prompt_the_same_way(model: Any) -> None:
    spec = cdsl.parse('version 1\nconcept a from pairs "a.yaml"\nclamp a >= 0.5 at layers 1-2\n', "p.cdsl")
    plan = cdsl.compile(spec, model, concepts={"a": artifact(seed=1)})
    prompt = "What is the capital of France?"
    traced = plan.trace(prompt)
    generated = plan.generate(prompt, max_new_tokens=1)
    # the trace's last position predicts exactly the token the generation starts with
    assert int(traced.logits[0, -1].argmax()) == int(generated.new_ids[0, 0])
    assert torch.equal(generated.ids[:, : generated.prompt_width], runner.encode(model, prompt)["input_ids"])
    # the default is the chat template (the tokenizer has one), for both; chat=False is plain text for both
    chat = runner.encode(model, prompt, chat=True)["input_ids"]
    plain = runner.encode(model, prompt, chat=False)["input_ids"]
    assert torch.equal(runner.encode(model, prompt)["input_ids"], chat) and not torch.equal(chat, plain)
    assert torch.equal(plan.trace(prompt, chat=True).logits, traced.logits)
    assert plan.trace(prompt, chat=False).logits.shape[1] == plain.shape[1]
    assert plan.generate(prompt, max_new_tokens=1, chat=False).prompt_width == plain.shape[1]


def test_without_a_chat_template_both_read_plain_text() -> None:
    tok = tiny_tokenizer()
    tok.chat_template = None
    bare = TransformersModel(tiny_hf("llama"), tokenizer=tok)
    prompt = "The cat sat on the mat."
    plain = runner.encode(bare, prompt, chat=False)["input_ids"]
    assert torch.equal(runner.encode(bare, prompt)["input_ids"], plain)
    result = runner.generate(bare, None, prompt, max_new_tokens=1)
    assert result.prompt_width == plain.shape[1]
    assert runner.trace(bare, None, prompt).logits.shape[1] == plain.shape[1]
    with pytest.raises(ValueError, match="no chat template"):
        runner.encode(bare, prompt, chat=True)


def test_a_model_folder_gets_rope_theta_at_the_top_level_of_its_config(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama", "rope_parameters": {"rope_theta": 100000.0}}))
    _top_level_rope_theta(tmp_path)
    data = json.loads(config.read_text())
    assert data["rope_theta"] == 100000.0 and data["rope_parameters"] == {"rope_theta": 100000.0}
    before = config.stat().st_mtime_ns
    _top_level_rope_theta(tmp_path)  # already there: the file is left alone
    assert config.stat().st_mtime_ns == before
    config.write_text(json.dumps({"model_type": "gpt2"}))
    _top_level_rope_theta(tmp_path)
    assert "rope_theta" not in json.loads(config.read_text())


@pytest.mark.slow
def test_the_cached_smollm2_config_carries_its_rope_base_at_the_top_level() -> None:
    from transformers import AutoConfig

    from constraintdsl.models.loading import _embedded_folder

    folder, _ = _embedded_folder()
    data = json.loads((folder / "config.json").read_text())
    assert data["rope_theta"] == data["rope_parameters"]["rope_theta"] == 100000.0
    assert AutoConfig.from_pretrained(folder).rope_parameters["rope_theta"] == 100000.0


def _row(statement: str, units: str) -> TelemetryRow:
    return TelemetryRow(statement, 5, 1, "resid", 10, 4, 0.4, 1.5, 2.0, 0.01, 0.02, -0.5, 0.3, units)


def test_telemetry_tables_label_the_units_of_every_row() -> None:
    text = telemetry_table(
        [_row("clamp a >= 0.3 at layer 1", "calibrated"), _row("steer r by 2 raw at layer 1", "raw")]
    )
    head, _, cal, raw = text.splitlines()
    assert "units" in head.split()
    assert cal.split()[cal.split().index("40%") + 1] == "cal"
    assert raw.split()[raw.split().index("40%") + 1] == "raw"
    load = [{"statement": "steer r by 2 raw at layer 1", "line": 4, "binding_fraction": 1.0, "mean_correction": 2.0}]
    comparison = Comparison(
        model="m",
        revision="r",
        inputs_hash="h",
        inputs={},
        rows=(Row("baseline", "baseline"), Row("s", "k", load=[{**load[0], "units": "raw"}])),
        prompts=(),
        passes={},
        seconds={},
    )
    table = load_table(comparison).splitlines()
    assert "units" in table[0] and table[2].split()[-4] == "raw"
