"""The site table: every supported architecture exposes resid/attn/mlp as [B, T, H] through nnsight."""

from __future__ import annotations

from typing import Any

import nnsight
import pytest
import torch
from transformers import AutoConfig

from constraintdsl.errors import UserError
from constraintdsl.models.sites import (
    ARCHITECTURES,
    SITES,
    arch_sites,
    as_bth,
    hidden_size,
    layer_module,
    num_layers,
    replace_bth,
    site_module,
)
from tests.tiny import HIDDEN, LAYERS, TINY_ARCHITECTURES, tiny_config, tiny_hf, tiny_nnsight, tiny_tokenizer

PROMPTS = ["The cat sat on the mat", "Paris"]


def test_every_architecture_in_the_table_has_a_tiny_model() -> None:
    assert set(TINY_ARCHITECTURES) == set(ARCHITECTURES)


def _read_sites(model: Any, layer: int) -> dict[str, torch.Tensor]:
    # Read in forward order (attention, MLP, then the layer's output) within one invoke.
    with torch.no_grad(), model.trace(PROMPTS):
        attn = nnsight.save(as_bth(site_module(model, layer, "attn").output).detach().clone())
        mlp = nnsight.save(as_bth(site_module(model, layer, "mlp").output).detach().clone())
        resid = nnsight.save(as_bth(site_module(model, layer, "resid").output).detach().clone())
    return {"attn": attn, "mlp": mlp, "resid": resid}


@pytest.mark.parametrize("model_type", TINY_ARCHITECTURES)
def test_each_site_read_in_a_trace_is_bth_and_equals_what_a_torch_hook_sees(model_type: str) -> None:
    model = tiny_nnsight(model_type)
    layer = 1
    hooked: dict[str, torch.Tensor] = {}
    handles = []
    for site in SITES:
        module = site_module(model, layer, site)._module

        def hook(_mod: torch.nn.Module, _inp: Any, out: Any, site: str = site) -> None:
            hooked[site] = as_bth(out).detach().clone()

        handles.append(module.register_forward_hook(hook))
    try:
        seen = _read_sites(model, layer)
    finally:
        for handle in handles:
            handle.remove()

    n_tokens = max(len(ids) for ids in tiny_tokenizer()(PROMPTS)["input_ids"])
    for site in SITES:
        assert seen[site].shape == (len(PROMPTS), n_tokens, HIDDEN), site
        torch.testing.assert_close(seen[site], hooked[site], rtol=0, atol=0)


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gpt_neox", "gemma3"])
def test_resid_site_is_the_residual_stream_after_the_layer(model_type: str) -> None:
    model = tiny_nnsight(model_type)
    seen = _read_sites(model, 0)
    raw = tiny_hf(model_type)
    batch = tiny_tokenizer()(PROMPTS, return_tensors="pt", padding=True)
    # nnsight derives position ids from the attention mask (left padding); GPT-2's positions need them.
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        states = raw(**batch, position_ids=positions, output_hidden_states=True).hidden_states
    torch.testing.assert_close(seen["resid"], states[1])


@pytest.mark.parametrize("model_type", TINY_ARCHITECTURES)
def test_layer_count_and_hidden_size_come_from_the_model(model_type: str) -> None:
    for model in (tiny_hf(model_type), tiny_config(model_type)):
        assert num_layers(model) == LAYERS
        assert hidden_size(model) == HIDDEN


def test_raw_models_give_torch_modules_and_nnsight_models_give_envoys() -> None:
    raw = tiny_hf("llama")
    assert layer_module(raw, 2) is raw.model.layers[2]
    assert site_module(raw, 2, "attn") is raw.model.layers[2].self_attn
    assert site_module(raw, 0, "mlp") is raw.model.layers[0].mlp
    wrapped = tiny_nnsight("gpt2")
    assert site_module(wrapped, 1, "attn")._module is wrapped._module.transformer.h[1].attn


def test_unknown_architecture_is_an_error_naming_what_was_found() -> None:
    config = AutoConfig.for_model("opt", vocab_size=64, hidden_size=16, num_hidden_layers=1)
    with pytest.raises(UserError) as err:
        arch_sites(config)
    assert err.value.where == "--model"
    assert "'opt'" in err.value.message
    assert "llama" in (err.value.hint or "") and "gpt2" in (err.value.hint or "")


def test_unknown_architecture_error_names_the_model_class() -> None:
    from transformers import AutoModelForCausalLM

    config = AutoConfig.for_model(
        "opt",
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        ffn_dim=32,
        word_embed_proj_dim=16,
    )
    with pytest.raises(UserError, match="OPTForCausalLM"):
        num_layers(AutoModelForCausalLM.from_config(config))


def test_a_layer_out_of_range_is_an_error_before_any_trace() -> None:
    with pytest.raises(UserError, match="out of range") as err:
        layer_module(tiny_nnsight("llama"), LAYERS)
    assert err.value.hint == f"use layers 0..{LAYERS - 1}"
    with pytest.raises(UserError):
        layer_module(tiny_hf("llama"), -1)


def test_an_unknown_site_is_an_error_with_a_suggestion() -> None:
    with pytest.raises(UserError, match="unknown site 'mpl'") as err:
        site_module(tiny_hf("llama"), 0, "mpl")
    assert err.value.hint == "did you mean 'mlp'?"


def test_something_that_is_not_a_model_is_an_error() -> None:
    with pytest.raises(UserError, match="expected a Hugging Face causal language model"):
        arch_sites(torch.nn.Linear(2, 2))


def test_as_bth_takes_the_first_element_of_a_tuple_and_rejects_other_shapes() -> None:
    x = torch.zeros(2, 3, 4)
    assert as_bth(x) is x
    assert as_bth((x, None)) is x
    with pytest.raises(TypeError, match=r"\(3, 4\)"):
        as_bth(torch.zeros(3, 4))


def test_replace_bth_keeps_the_output_structure() -> None:
    x, y = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    assert replace_bth(x, y) is y
    replaced = replace_bth((x, "extra"), y)
    assert isinstance(replaced, tuple) and replaced[0] is y and replaced[1] == "extra"


def test_an_edit_written_through_a_site_changes_the_next_layer() -> None:
    model = tiny_nnsight("llama")
    with torch.no_grad(), model.trace(PROMPTS):
        out = site_module(model, 0, "attn").output
        site_module(model, 0, "attn").output = replace_bth(out, torch.zeros_like(as_bth(out)))
        edited = nnsight.save(as_bth(site_module(model, 0, "resid").output).detach().clone())
    with torch.no_grad(), model.trace(PROMPTS):
        plain = nnsight.save(as_bth(site_module(model, 0, "resid").output).detach().clone())
    assert not torch.allclose(edited, plain)
