"""Read back what a plan did to every token: the residual stream after a layer, as the next layer receives it.

"A clamp holds" means every selected token's projection satisfies the bound after the layer, not that the
mean does: these helpers give each token's projection (a torch pre-hook on the next layer sees exactly what
the plan left in the stream), with padding and the first real token of each row (the attention sink, which
no statement selects) marked out.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from constraintdsl.models.sites import arch_sites, hf_module
from constraintdsl.run import runner

__all__ = ["projections_after", "real_tokens"]


@contextmanager
def _stream_after(model: Any, layers: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """While active, ``seen[layer]`` is the residual stream that leaves ``layer`` (the next layer's input, or
    the final norm's input after the last layer), as the forward pass computed it."""
    module = hf_module(model)
    assert module is not None
    path = arch_sites(model).layers
    stack: Any = module
    for part in path.split("."):
        stack = getattr(stack, part)
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for layer in layers:
        if layer + 1 >= len(stack):
            raise ValueError("reading after the last layer is not supported here; clamp an earlier layer")

        def hook(_: Any, args: Any, kwargs: Any, layer: int = layer) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            seen[layer] = hidden.detach().float().cpu().clone()

        handles.append(stack[layer + 1].register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def real_tokens(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` True on every real token but the first of each row (padding and the sink are out)."""
    mask = attention_mask.bool()
    first = mask.long().argmax(dim=1)
    out = mask.clone()
    out[torch.arange(mask.shape[0]), first] = False
    return out


def projections_after(
    model: Any, payload: dict[str, Any], inputs: Any, layers: list[int], directions: dict[int, torch.Tensor]
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """One traced forward pass over ``inputs`` with ``payload`` applied: each token's raw projection on
    ``directions[layer]`` after each of ``layers`` (``[B, T]``), and the mask of :func:`real_tokens`."""
    with _stream_after(model, layers) as seen:
        result = runner.trace(model, payload, inputs)
    mask = real_tokens(result.attention_mask)
    return {layer: seen[layer] @ directions[layer].float().cpu() for layer in layers}, mask
