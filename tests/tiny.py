"""Tiny random models and an offline tokenizer, for tests that need no trained weights.

Every architecture in :data:`constraintdsl.sites.ARCHITECTURES` has a factory here (hidden size 32, two or
three layers), seeded so the same call always gives the same weights.  The tokenizer is a byte-level BPE
trained in memory on a few sentences, so any text tokenizes (no unknown tokens), and it carries a ChatML chat
template like SmolLM2's.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

__all__ = [
    "CHAT_TEMPLATE",
    "HIDDEN",
    "TINY_ARCHITECTURES",
    "tiny_config",
    "tiny_hf",
    "tiny_nnsight",
    "tiny_tokenizer",
]

HIDDEN = 32
LAYERS = 3

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_SPECIAL = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "The cat sat on the mat and looked out of the window.",
    "I am so happy to help you with that question!",
    "That is a terrible idea and I will not do it.",
    "Thank you very much, this was wonderful and kind.",
    "Please find attached the report you requested, sir.",
    "hey whats up, lol that was awesome",
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Sorry, I can't help with that request.",
    "user assistant system: How do I bake bread? Mix flour, water, salt and yeast.",
    "0 1 2 3 4 5 6 7 8 9 , . ; : ! ? ' \" ( ) - _",
]


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return str(tok.to_str())


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh byte-level BPE tokenizer (about 320 tokens) with pad/bos/eos and a ChatML chat template."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        padding_side="left",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _vocab() -> int:
    return len(tiny_tokenizer())


def _ids() -> dict[str, int]:
    tok = tiny_tokenizer()
    return {
        "pad_token_id": int(tok.pad_token_id),
        "bos_token_id": int(tok.bos_token_id),
        "eos_token_id": int(tok.eos_token_id),
    }


def _llama_like(**extra: Any) -> dict[str, Any]:
    return {
        "vocab_size": _vocab(),
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": HIDDEN // 4,
        "intermediate_size": 2 * HIDDEN,
        "max_position_embeddings": 256,
        **_ids(),
        **extra,
    }


def _gpt2_like() -> dict[str, Any]:
    return {"vocab_size": _vocab(), "n_embd": HIDDEN, "n_layer": LAYERS, "n_head": 4, "n_positions": 256}


def _config_kwargs(model_type: str) -> dict[str, Any]:
    if model_type == "gpt2":
        return {**_gpt2_like(), **_ids()}
    if model_type == "gptj":
        return {**_gpt2_like(), "rotary_dim": 4, **_ids()}
    if model_type == "gpt_neo":
        return {
            "vocab_size": _vocab(),
            "hidden_size": HIDDEN,
            "num_layers": LAYERS,
            "num_heads": 4,
            "attention_types": [[["global", "local"], 1], [["global"], 1]],
            "max_position_embeddings": 256,
            "window_size": 8,
            **_ids(),
        }
    if model_type == "gpt_neox":
        return _llama_like(rotary_pct=0.5)
    if model_type in ("qwen2_moe", "qwen3_moe", "mixtral"):
        return _llama_like(num_experts=4, num_local_experts=4, num_experts_per_tok=2, moe_intermediate_size=HIDDEN)
    if model_type == "gemma3":
        text = _llama_like()
        vision = {
            "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "image_size": 28,
            "patch_size": 14,
        }
        return {"text_config": text, "vision_config": vision, "mm_tokens_per_image": 4}
    if model_type == "phi":
        return _llama_like(partial_rotary_factor=0.5)
    return _llama_like()


def tiny_config(model_type: str) -> PretrainedConfig:
    """A tiny config of ``model_type`` (a key of ``ARCHITECTURES``) sized to the tiny tokenizer."""
    config = AutoConfig.for_model(model_type, **_config_kwargs(model_type))
    config._attn_implementation = "eager"
    return config  # type: ignore[no-any-return]


def tiny_hf(model_type: str = "llama", seed: int = 0) -> PreTrainedModel:
    """A tiny random ``*ForCausalLM`` of ``model_type`` in eval mode, same weights for the same seed."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type), dtype=torch.float32)
    return model.eval()  # type: ignore[no-any-return]


def tiny_nnsight(model_type: str = "llama", seed: int = 0) -> Any:
    """:func:`tiny_hf` wrapped as an nnsight ``TransformersModel`` with :func:`tiny_tokenizer`."""
    from nnsight import TransformersModel

    return TransformersModel(tiny_hf(model_type, seed), tokenizer=tiny_tokenizer())


# Every architecture of the site table; test_sites checks that the two stay the same.
TINY_ARCHITECTURES: tuple[str, ...] = (
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "smollm3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "gemma3",
    "phi",
    "phi3",
    "olmo",
    "olmo2",
    "granite",
    "starcoder2",
    "stablelm",
    "gpt2",
    "gptj",
    "gpt_neo",
    "gpt_neox",
)
