"""Where activations live in each supported architecture: the one table of module paths.

A *site* is a place whose output a constraint reads or writes, per decoder layer:

- ``resid``: the decoder layer's output, i.e. the residual stream after that layer;
- ``attn``: the attention module's output (before any post-attention norm and the residual add);
- ``mlp``: the MLP module's output (before any post-MLP norm and the residual add).

Every accessor accepts an nnsight ``TransformersModel`` (and then returns nnsight Envoys), a raw Hugging Face
``PreTrainedModel`` (and then returns ``torch.nn.Module`` objects), or, where no module is needed, a
``PretrainedConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PretrainedConfig

from constraintdsl.errors import UserError, did_you_mean

__all__ = [
    "ARCHITECTURES",
    "SITES",
    "ArchSites",
    "arch_sites",
    "as_bth",
    "hf_module",
    "hidden_size",
    "layer_module",
    "model_config",
    "model_type",
    "num_layers",
    "replace_bth",
    "site_module",
    "unembed_path",
]

SITES: tuple[str, ...] = ("resid", "attn", "mlp")


@dataclass(frozen=True, slots=True)
class ArchSites:
    """Module paths for one architecture, relative to the ``*ForCausalLM`` root."""

    layers: str  # dotted path to the decoder-layer ModuleList
    attn: str  # attribute of one decoder layer: the attention module
    mlp: str  # attribute of one decoder layer: the MLP module


_LLAMA_LIKE = ArchSites(layers="model.layers", attn="self_attn", mlp="mlp")
_GPT2_LIKE = ArchSites(layers="transformer.h", attn="attn", mlp="mlp")

# Keyed by ``config.model_type``.  Only architectures whose attention and MLP modules return their own
# contribution (the residual add happens in the decoder layer) belong here: BLOOM, for example, adds the
# residual inside its attention and MLP modules, so their outputs would not be the sites named above.
ARCHITECTURES: dict[str, ArchSites] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen2_moe": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "qwen3_moe": _LLAMA_LIKE,
    "smollm3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    # Gemma 3 with vision: the causal-LM class is Gemma3ForConditionalGeneration, text stack one level down.
    "gemma3": ArchSites(layers="model.language_model.layers", attn="self_attn", mlp="mlp"),
    "phi": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "granite": _LLAMA_LIKE,
    "starcoder2": _LLAMA_LIKE,
    "stablelm": _LLAMA_LIKE,
    "gpt2": _GPT2_LIKE,
    "gptj": _GPT2_LIKE,
    "gpt_neo": _GPT2_LIKE,
    "gpt_neox": ArchSites(layers="gpt_neox.layers", attn="attention", mlp="mlp"),
}


def hf_module(model: object) -> torch.nn.Module | None:
    """The torch module behind ``model``: itself if it is one, the wrapped module of an nnsight Envoy."""
    if isinstance(model, torch.nn.Module):
        return model
    # nnsight Envoys keep the wrapped module in ``_module``; reading __dict__ avoids Envoy.__getattr__.
    inner = getattr(model, "__dict__", {}).get("_module")
    return inner if isinstance(inner, torch.nn.Module) else None


def model_config(model: object) -> PretrainedConfig:
    """The Hugging Face config of an nnsight model, a raw HF model, or a config itself."""
    if isinstance(model, PretrainedConfig):
        return model
    inner = hf_module(model)
    config = getattr(inner, "config", None)
    if not isinstance(config, PretrainedConfig):
        raise UserError(
            "--model",
            f"expected a Hugging Face causal language model, got {type(model).__name__}",
            "pass a model loaded with constraintdsl.models.load_model or a transformers PreTrainedModel",
        )
    return config


def model_type(model: object) -> str:
    """``config.model_type`` of ``model``."""
    return str(model_config(model).model_type)


def _class_name(model: object) -> str:
    inner = hf_module(model)
    if inner is not None:
        return type(inner).__name__
    archs = getattr(model, "architectures", None)
    return str(archs[0]) if archs else type(model).__name__


def arch_sites(model: object) -> ArchSites:
    """The site paths for ``model``'s architecture; an unknown architecture is a :class:`UserError`."""
    kind = model_type(model)
    sites = ARCHITECTURES.get(kind)
    if sites is None:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UserError(
            "--model",
            f"unsupported architecture: model_type '{kind}' ({_class_name(model)}) has no site table",
            f"supported model types: {supported}",
        )
    return sites


def _text_config(model: object) -> PretrainedConfig:
    config = model_config(model)
    text = config.get_text_config()
    return text if isinstance(text, PretrainedConfig) else config


def num_layers(model: object) -> int:
    """Number of decoder layers."""
    arch_sites(model)
    return int(_text_config(model).num_hidden_layers)


def hidden_size(model: object) -> int:
    """Width ``H`` of the residual stream (and of every site)."""
    arch_sites(model)
    return int(_text_config(model).hidden_size)


def _walk(root: Any, dotted: str) -> Any:
    node = root
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def layer_module(model: object, layer: int) -> Any:
    """Decoder layer ``layer`` (0-based): an Envoy for an nnsight model, a torch module for a raw HF model."""
    sites = arch_sites(model)
    if isinstance(model, PretrainedConfig):
        raise UserError("--model", "a config has no modules; pass a loaded model")
    n = num_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise UserError(
            "--layers",
            f"layer {layer!r} is out of range: {model_type(model)} has {n} layers",
            f"use layers 0..{n - 1}",
        )
    return _walk(model, sites.layers)[layer]


def site_module(model: object, layer: int, site: str) -> Any:
    """The module whose ``.output`` is ``site`` at ``layer``; ``resid`` is the decoder layer itself."""
    if site not in SITES:
        hint = did_you_mean(site, SITES) or f"sites are: {', '.join(SITES)}"
        raise UserError("site", f"unknown site '{site}'", hint)
    block = layer_module(model, layer)
    if site == "resid":
        return block
    sites = arch_sites(model)
    return getattr(block, sites.attn if site == "attn" else sites.mlp)


def as_bth(output: Any) -> torch.Tensor:
    """A site module's output as its ``[B, T, H]`` tensor (a tuple gives its first element)."""
    value = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(value, torch.Tensor) or value.dim() != 3:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(f"expected a [B, T, H] tensor as a site's output, got {shape}")
    return value


def replace_bth(output: Any, value: torch.Tensor) -> Any:
    """``output`` with its ``[B, T, H]`` tensor replaced by ``value``, keeping any tuple structure.

    Use it to assign a new site value: ``module.output = replace_bth(module.output, new)``.
    """
    if isinstance(output, tuple):
        return (value, *output[1:])
    if isinstance(output, list):
        return [value, *output[1:]]
    return value


def unembed_path(model: object) -> str:
    """Dotted path of the output-embedding module (``lm_head``, ``embed_out``, …): its ``.input`` is the
    final hidden state ``[B, T, H]`` that the next-token logits are read from."""
    inner = hf_module(model)
    getter = getattr(inner, "get_output_embeddings", None)
    head = getter() if inner is not None and callable(getter) else None
    if head is None or inner is None:
        raise UserError("--model", f"{_class_name(model)} has no output embedding (it is not a causal language model)")
    for name, module in inner.named_modules():
        if module is head and name:
            return str(name)
    raise UserError("--model", f"the output embedding of {_class_name(model)} is not among its modules")
