"""The local runner: a compiled plan's payload applied to an nnsight model.

Every run goes through :func:`constraintdsl.runtime.intervene` inside a real ``with`` block in this
file (nnsight captures trace bodies from source).  A run without a payload takes the same path, so
baseline and constrained results differ only by the interventions.

- :func:`generate` and :func:`trace` run prompts and return texts, ids or logits with telemetry;
- :func:`apply` goes inside a user's own ``model.trace`` / ``model.generate`` / ``tracer.invoke``;
- :func:`install` / :func:`uninstall` keep a payload on the model (an nnsight edit) for every later run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import nnsight
import torch
from nnsight.intervention.iterator import Iterations

from constraintdsl import runtime

__all__ = [
    "GenerateResult",
    "TraceResult",
    "apply",
    "encode",
    "generate",
    "install",
    "installed",
    "trace",
    "uninstall",
]

# The edits install() added to a model, kept on the Envoy itself so uninstall() removes only those.
_EDITS_ATTR = "_constraintdsl_edits"

Prompt = str | Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class GenerateResult:
    """What :func:`generate` returns.

    ``ids`` is the whole batch as the model saw it: ``prompt_width`` (left-padded) prompt columns,
    then the generated tokens.  ``texts`` are the completions only, decoded without special tokens.
    ``telemetry`` is ``[n_entries, len(runtime.TELEMETRY_FIELDS)]`` summed over every generation
    step, or None for a baseline run.
    """

    texts: list[str]
    ids: torch.Tensor
    prompt_width: int
    attention_mask: torch.Tensor
    telemetry: torch.Tensor | None
    seconds: float

    @property
    def new_ids(self) -> torch.Tensor:
        """The generated tokens only, ``[B, new]``."""
        return self.ids[:, self.prompt_width :]


@dataclass(frozen=True)
class TraceResult:
    """What :func:`trace` returns: ``logits`` [B, T, V] of one forward pass over left-padded inputs
    (``attention_mask`` says which columns are real), and telemetry as in :class:`GenerateResult`."""

    logits: torch.Tensor
    attention_mask: torch.Tensor
    telemetry: torch.Tensor | None
    seconds: float


def _device(model: Any) -> torch.device | None:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) and device.type != "meta" else None


def encode(model: Any, prompts: Prompt | Sequence[Prompt], *, chat: bool = True) -> dict[str, torch.Tensor]:
    """Tokenize ``prompts`` (a string, a chat as a list of ``{"role", "content"}`` messages, or a list
    of either) into left-padded ``input_ids`` and ``attention_mask``.

    With ``chat`` a string becomes one user turn, and every prompt is formatted with the tokenizer's
    chat template with the assistant's turn opened; the template writes its own special tokens.
    """
    tokenizer = model.tokenizer
    items: list[Prompt]
    if isinstance(prompts, str) or (
        isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], Mapping)  # a single chat
    ):
        items = [prompts]  # type: ignore[list-item]
    else:
        items = list(prompts)  # type: ignore[arg-type]
    texts: list[str] = []
    for item in items:
        if chat:
            messages = [{"role": "user", "content": item}] if isinstance(item, str) else list(item)
            if getattr(tokenizer, "chat_template", None) is None:
                raise ValueError("the tokenizer has no chat template; pass chat=False to use prompts as plain text")
            texts.append(str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)))
        elif isinstance(item, str):
            texts.append(item)
        else:
            raise TypeError("a chat prompt (a list of messages) needs chat=True")
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not chat)
    finally:
        tokenizer.padding_side = side
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _as_inputs(model: Any, inputs: Any, chat: bool) -> dict[str, torch.Tensor]:
    if isinstance(inputs, Mapping):
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids) if mask is None else mask}
    if isinstance(inputs, torch.Tensor):
        ids = inputs if inputs.dim() == 2 else inputs[None]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return encode(model, inputs, chat=chat)


def generate(
    model: Any,
    payload: dict[str, Any] | None,
    prompts: Prompt | Sequence[Prompt] | Mapping[str, torch.Tensor],
    *,
    max_new_tokens: int = 32,
    chat: bool = True,
    telemetry: bool = True,
    **gen_kwargs: Any,
) -> GenerateResult:
    """Generate from ``prompts`` with ``payload`` applied at every step (prefill and each KV-cached
    token); ``payload=None`` is the baseline through the same path.

    Greedy unless ``gen_kwargs`` say otherwise (``do_sample=True``, ...); chat prompts are formatted
    with the tokenizer's chat template unless ``chat=False``.  Already tokenized input
    (``{"input_ids", "attention_mask"}``) is used as given.  ``telemetry=False`` skips recording it
    (cheaper per step); the result's ``telemetry`` is then None.
    """
    enc = _as_inputs(model, prompts, chat)
    gen_kwargs.setdefault("do_sample", False)
    pad = getattr(model.tokenizer, "pad_token_id", None)
    if pad is not None:
        gen_kwargs.setdefault("pad_token_id", pad)
    record = telemetry and payload is not None
    state = runtime.new_state(payload or {}, _device(model), telemetry=record)
    started = time.perf_counter()
    with torch.no_grad(), model.generate(max_new_tokens=max_new_tokens, **gen_kwargs) as tracer:
        with tracer.invoke(enc):
            if record:
                tele = nnsight.save(state["tele"])
            if payload is not None:
                runtime.intervene_steps(model, payload, state, tracer.all())
        # the loop above ends when generation does; the ids come from a block of their own
        with tracer.invoke():
            ids = nnsight.save(tracer.result)
    seconds = time.perf_counter() - started
    ids = ids.cpu()
    width = int(enc["input_ids"].shape[1])
    texts = [str(t) for t in model.tokenizer.batch_decode(ids[:, width:], skip_special_tokens=True)]
    return GenerateResult(
        texts=texts,
        ids=ids,
        prompt_width=width,
        attention_mask=enc["attention_mask"],
        telemetry=tele.detach().cpu() if record else None,
        seconds=seconds,
    )


def trace(
    model: Any,
    payload: dict[str, Any] | None,
    inputs: Prompt | Sequence[Prompt] | Mapping[str, torch.Tensor] | torch.Tensor,
    *,
    chat: bool = False,
    telemetry: bool = True,
) -> TraceResult:
    """One forward pass over ``inputs`` with ``payload`` applied; ``payload=None`` is the baseline.

    ``inputs``: text (plain unless ``chat=True``), a list of texts, token ids, or an encoding.
    """
    enc = _as_inputs(model, inputs, chat)
    record = telemetry and payload is not None
    state = runtime.new_state(payload or {}, _device(model), telemetry=record)
    started = time.perf_counter()
    with torch.no_grad(), model.trace(enc):
        if record:
            tele = nnsight.save(state["tele"])
        if payload is not None:
            runtime.intervene(model, payload, state)
        logits = nnsight.save(model.output.logits)
    seconds = time.perf_counter() - started
    return TraceResult(
        logits=logits.detach().cpu(),
        attention_mask=enc["attention_mask"],
        telemetry=tele.detach().cpu() if record else None,
        seconds=seconds,
    )


def apply(
    model: Any,
    payload: dict[str, Any],
    state: dict[str, Any] | None = None,
    *,
    steps: Any = "auto",
    telemetry: bool = True,
) -> Any:
    """Apply ``payload`` inside the caller's own trace block; returns the run's state dict.

    Call it where the block starts reading the model (it reads the root module's inputs, which come
    before every layer), or in its own ``tracer.invoke()`` beside the invokes that hold your own
    interventions (an empty invoke covers the whole batch).  ``steps``:

    - ``"auto"``: this forward call, and when it is a generation (the call carries a KV cache)
      every later step too.  In a generation the code after ``apply`` runs once the model has
      finished: it can save values (e.g. the telemetry) but not read the model;
    - ``"one"``: this forward call only, e.g. inside your own ``for step in tracer.iter[...]`` loop,
      passing the returned state back in on each step;
    - ``tracer.all()`` / ``tracer.iter[a:b]``: those steps.

    The telemetry is ``state["tele"]``, already saved (``nnsight.save``), summed in place; None with
    ``telemetry=False`` (applies to a state made here).
    """
    if state is None:
        state = runtime.new_state(payload, _device(model), telemetry=telemetry)
        if telemetry:
            nnsight.save(state["tele"])
    if steps == "one":
        runtime.intervene(model, payload, state)
    elif steps == "auto":
        runtime.intervene(model, payload, state)
        if state["generating"]:
            runtime.intervene_steps(model, payload, state, Iterations(1, None))
    else:
        runtime.intervene_steps(model, payload, state, steps)
    return state


def install(model: Any, payload: dict[str, Any]) -> None:
    """Keep ``payload`` on ``model`` for every later ``trace`` / ``generate`` (all steps), as an
    nnsight edit; replaces what an earlier :func:`install` put there and leaves other edits alone."""
    uninstall(model)
    before = list(model._edits)
    with model.edit(inplace=True) as tracer:
        state = runtime.new_state(payload, telemetry=False)  # an edit's state is not kept
        runtime.intervene_steps(model, payload, state, tracer.all())
    ours = [edit for edit in model._edits if not any(edit is old for old in before)]
    model.__dict__[_EDITS_ATTR] = ours


def installed(model: Any) -> bool:
    """Whether :func:`install` has put a payload on ``model``."""
    return bool(model.__dict__.get(_EDITS_ATTR))


def uninstall(model: Any) -> None:
    """Remove what :func:`install` put on ``model`` (other edits stay); a no-op when nothing is installed."""
    ours = model.__dict__.pop(_EDITS_ATTR, [])
    if ours:
        model._edits = [edit for edit in model._edits if not any(edit is mine for mine in ours)]
