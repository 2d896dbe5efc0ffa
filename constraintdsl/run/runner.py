"""The local runner: a compiled plan's payload applied to an nnsight model.

Every run goes through :func:`constraintdsl.runtime.interventions.intervene` inside a real ``with`` block in this
file (nnsight captures trace bodies from source).  A run without a payload takes the same path, so
baseline and constrained results differ only by the interventions.

- :func:`generate` and :func:`trace` run prompts and return texts, ids or logits with telemetry;
- :func:`apply` goes inside a user's own ``model.trace`` / ``model.generate`` / ``tracer.invoke``;
- :func:`install` / :func:`uninstall` keep a payload on the model (an nnsight edit) for every later run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import nnsight
import torch
from nnsight.intervention.iterator import Iterations

from constraintdsl.models import ndif
from constraintdsl.models.backend import on_device, run_backend
from constraintdsl.runtime import interventions

__all__ = [
    "GenerateResult",
    "RemoteJob",
    "TraceResult",
    "apply",
    "encode",
    "fetch",
    "generate",
    "generate_variants",
    "install",
    "installed",
    "run_states",
    "submit",
    "trace",
    "trace_variants",
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
    ``telemetry`` is ``[n_entries, len(interventions.TELEMETRY_FIELDS)]`` summed over every generation
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
    """What :func:`trace` returns: ``logits`` [B, T, V] of one forward pass over left-padded inputs, left
    on the model's device (``.cpu()`` them as needed: for a large vocabulary the copy can cost more than
    the forward pass); ``attention_mask`` says which columns are real; telemetry as in
    :class:`GenerateResult`."""

    logits: torch.Tensor
    attention_mask: torch.Tensor
    telemetry: torch.Tensor | None
    seconds: float


def _device(model: Any) -> torch.device | None:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) and device.type != "meta" else None


def encode(model: Any, prompts: Prompt | Sequence[Prompt], *, chat: bool | None = None) -> dict[str, torch.Tensor]:
    """Tokenize ``prompts`` (a string, a chat as a list of ``{"role", "content"}`` messages, or a list
    of either) into left-padded ``input_ids`` and ``attention_mask``.

    ``chat`` (the same default for :func:`generate` and :func:`trace`): None formats prompts with the
    tokenizer's chat template when it has one, and uses them as plain text otherwise; True requires the
    template; False is plain text (what nnsight's own ``model.trace("…")`` sees, with the tokenizer's
    special tokens such as BOS).  With the template a string becomes one user turn, the assistant's turn is
    opened, and the template writes its own special tokens.
    """
    tokenizer = model.tokenizer
    has_template = getattr(tokenizer, "chat_template", None) is not None
    use_chat = has_template if chat is None else chat
    items: list[Prompt]
    if isinstance(prompts, str) or (
        isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], Mapping)  # a single chat
    ):
        items = [prompts]  # type: ignore[list-item]
    else:
        items = list(prompts)  # type: ignore[arg-type]
    texts: list[str] = []
    for item in items:
        if use_chat:
            messages = [{"role": "user", "content": item}] if isinstance(item, str) else list(item)
            if not has_template:
                raise ValueError("the tokenizer has no chat template; pass chat=False to use prompts as plain text")
            texts.append(str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)))
        elif isinstance(item, str):
            texts.append(item)
        else:
            raise TypeError("a chat prompt (a list of messages) needs a tokenizer with a chat template")
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not use_chat)
    finally:
        tokenizer.padding_side = side
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _as_inputs(model: Any, inputs: Any, chat: bool | None) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` on the model's device (nnsight passes tensors as given)."""
    if isinstance(inputs, Mapping):
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids) if mask is None else mask}
    elif isinstance(inputs, torch.Tensor):
        ids = inputs if inputs.dim() == 2 else inputs[None]
        enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    else:
        enc = encode(model, inputs, chat=chat)
    return on_device(model, enc)


def run_states(
    model: Any, payloads: Sequence[dict[str, Any] | None], telemetry: bool
) -> tuple[list[bool], list[dict[str, Any]]]:
    """Per payload: whether its telemetry is recorded (never for a baseline) and a fresh runtime state
    on the model's device."""
    records = [telemetry and p is not None for p in payloads]
    device = _device(model)
    return records, [
        interventions.new_state(p or {}, device, telemetry=r) for p, r in zip(payloads, records, strict=True)
    ]


def generate(
    model: Any,
    payload: dict[str, Any] | None,
    prompts: Prompt | Sequence[Prompt] | Mapping[str, torch.Tensor],
    *,
    max_new_tokens: int = 32,
    chat: bool | None = None,
    telemetry: bool = True,
    remote: bool | str = False,
    timeout: float | None = None,
    progress: Callable[[str], None] | None = None,
    **gen_kwargs: Any,
) -> GenerateResult:
    """Generate from ``prompts`` with ``payload`` applied at every step (prefill and each KV-cached
    token); ``payload=None`` is the baseline through the same path.

    Greedy unless ``gen_kwargs`` say otherwise (``do_sample=True``, ...).  Text prompts are formatted with
    the tokenizer's chat template when it has one, unless ``chat=False`` (see :func:`encode`; :func:`trace`
    treats them the same way).  Already tokenized input
    (``{"input_ids", "attention_mask"}``) is used as given.  ``telemetry=False`` skips recording it
    (cheaper per step); the result's ``telemetry`` is then None.

    ``remote``: ``True`` runs on NDIF (host from ``NDIF_HOST`` or nnsight's config, key from
    ``NDIF_API_KEY`` or nnsight's config), a URL runs on that server; only the generated ids and
    the telemetry come back.  ``timeout`` bounds the wait (seconds); ``progress`` receives status
    lines.  See :func:`generate_variants` for several payloads in one request.
    """
    (result,) = generate_variants(
        model,
        [payload],
        prompts,
        max_new_tokens=max_new_tokens,
        chat=chat,
        telemetry=telemetry,
        remote=remote,
        timeout=timeout,
        progress=progress,
        **gen_kwargs,
    )
    return result


def generate_variants(
    model: Any,
    payloads: Sequence[dict[str, Any] | None],
    prompts: Prompt | Sequence[Prompt] | Mapping[str, torch.Tensor],
    *,
    max_new_tokens: int = 32,
    chat: bool | None = None,
    telemetry: bool = True,
    remote: bool | str = False,
    timeout: float | None = None,
    progress: Callable[[str], None] | None = None,
    backend: Any = None,
    **gen_kwargs: Any,
) -> list[GenerateResult]:
    """:func:`generate` for several payloads (``None`` for a baseline) over the same prompts in ONE
    generation (and one NDIF request when remote): one invoke per payload, each holding every prompt.

    Returns one :class:`GenerateResult` per payload, in order; each has its own ids and telemetry,
    and ``seconds`` is the wall time of the whole batch.  ``backend`` (an nnsight ``Backend``)
    overrides where the trace runs; ``remote`` builds one for NDIF.
    """
    job = _generate_job(model, payloads, prompts, max_new_tokens, chat, telemetry, gen_kwargs)
    backend = run_backend(model, payloads, remote, timeout=timeout, progress=progress, given=backend)
    started = time.perf_counter()
    new_ids, teles = _run_generate(model, job, backend)
    return _generate_results(model, job, new_ids, teles, time.perf_counter() - started)


@dataclass(frozen=True)
class RemoteJob:
    """A request submitted without waiting (:func:`submit`): what :func:`fetch` needs to rebuild the
    results once the server has them.  ``to_dict`` / ``from_dict`` make it storable as JSON."""

    job_id: str
    host: str
    model_key: str
    kind: str  # "generate" or "trace"
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    records: tuple[bool, ...]
    logits: str = "all"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields."""
        return {
            "job_id": self.job_id,
            "host": self.host,
            "model_key": self.model_key,
            "kind": self.kind,
            "input_ids": self.input_ids.tolist(),
            "attention_mask": self.attention_mask.tolist(),
            "records": list(self.records),
            "logits": self.logits,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RemoteJob:
        """Inverse of :meth:`to_dict`."""
        return cls(
            job_id=str(data["job_id"]),
            host=str(data["host"]),
            model_key=str(data["model_key"]),
            kind=str(data["kind"]),
            input_ids=torch.tensor(data["input_ids"], dtype=torch.long),
            attention_mask=torch.tensor(data["attention_mask"], dtype=torch.long),
            records=tuple(bool(r) for r in data["records"]),
            logits=str(data.get("logits", "all")),
        )


@dataclass(frozen=True)
class _Job:
    enc: dict[str, torch.Tensor]
    payloads: list[dict[str, Any] | None]
    records: list[bool]
    states: list[dict[str, Any]]
    max_new_tokens: int
    gen_kwargs: dict[str, Any]


def _generate_job(
    model: Any,
    payloads: Sequence[dict[str, Any] | None],
    prompts: Any,
    max_new_tokens: int,
    chat: bool | None,
    telemetry: bool,
    gen_kwargs: dict[str, Any],
) -> _Job:
    if not payloads:
        raise ValueError("generate_variants needs at least one payload (None for the baseline)")
    enc = _as_inputs(model, prompts, chat)
    kwargs = dict(gen_kwargs)
    kwargs.setdefault("do_sample", False)
    pad = getattr(model.tokenizer, "pad_token_id", None)
    if pad is not None:
        kwargs.setdefault("pad_token_id", pad)
    records, states = run_states(model, payloads, telemetry)
    return _Job(enc, list(payloads), records, states, max_new_tokens, kwargs)


def _run_generate(model: Any, job: _Job, backend: Any) -> tuple[Any, Any]:
    """The generation block (it must live in this file: nnsight captures it from source, and on NDIF
    it is this source that runs).  Returns the generated columns of every row and the telemetry
    tensors, one per payload (None when not recorded); both None when ``backend`` did not wait."""
    enc, payloads, states = job.enc, job.payloads, job.states
    width = int(enc["input_ids"].shape[1])
    new_ids = None
    teles = None
    with (
        torch.no_grad(),
        model.generate(max_new_tokens=job.max_new_tokens, backend=backend, **job.gen_kwargs) as tracer,
    ):
        teles = nnsight.save([])
        for index in range(len(payloads)):
            with tracer.invoke(enc):
                teles.append(states[index]["tele"])
                payload = payloads[index]
                if payload is not None:
                    interventions.intervene_steps(model, payload, states[index], tracer.all())
        # the loops above end when generation does; the ids come from a block of their own
        with tracer.invoke():
            new_ids = nnsight.save(tracer.result[:, width:])
    return new_ids, teles


def _generate_results(model: Any, job: _Job, new_ids: Any, teles: Any, seconds: float) -> list[GenerateResult]:
    if new_ids is None or teles is None:
        raise RuntimeError("the generation returned no result")
    return _split_generate(model, job.enc, job.records, new_ids, teles, seconds)


def _split_generate(
    model: Any,
    enc: Mapping[str, torch.Tensor],
    records: Sequence[bool],
    new_ids: torch.Tensor,
    teles: Sequence[torch.Tensor | None],
    seconds: float,
) -> list[GenerateResult]:
    prompt_ids = enc["input_ids"].cpu()
    rows, width = int(prompt_ids.shape[0]), int(prompt_ids.shape[1])
    new_ids = new_ids.cpu()
    results = []
    for index, record in enumerate(records):
        ids = torch.cat([prompt_ids, new_ids[index * rows : (index + 1) * rows].to(prompt_ids.dtype)], dim=1)
        texts = [str(t) for t in model.tokenizer.batch_decode(ids[:, width:], skip_special_tokens=True)]
        tele = teles[index]
        results.append(
            GenerateResult(
                texts=texts,
                ids=ids,
                prompt_width=width,
                attention_mask=enc["attention_mask"].cpu(),
                telemetry=tele.detach().cpu() if record and tele is not None else None,
                seconds=seconds,
            )
        )
    return results


def trace(
    model: Any,
    payload: dict[str, Any] | None,
    inputs: Prompt | Sequence[Prompt] | Mapping[str, torch.Tensor] | torch.Tensor,
    *,
    chat: bool | None = None,
    telemetry: bool = True,
    logits: str = "all",
    remote: bool | str = False,
    timeout: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> TraceResult:
    """One forward pass over ``inputs`` with ``payload`` applied; ``payload=None`` is the baseline.

    ``inputs``: text, a list of texts or chats, token ids, or an encoding.  Text is formatted with the
    tokenizer's chat template when it has one, unless ``chat=False`` — the same default as :func:`generate`
    (see :func:`encode`), so a trace sees exactly the prompt a generation starts from.
    ``logits="last"`` keeps only each row's last position (``[B, 1, V]``: with left padding that
    is every row's last real token), which is what to bring back from a remote run; ``"all"``
    keeps ``[B, T, V]``.  ``remote``, ``timeout``, ``progress``: as in :func:`generate`.
    """
    (result,) = trace_variants(
        model,
        [payload],
        inputs,
        chat=chat,
        telemetry=telemetry,
        logits=logits,
        remote=remote,
        timeout=timeout,
        progress=progress,
    )
    return result


def trace_variants(
    model: Any,
    payloads: Sequence[dict[str, Any] | None],
    inputs: Prompt | Sequence[Prompt] | Mapping[str, torch.Tensor] | torch.Tensor,
    *,
    chat: bool | None = None,
    telemetry: bool = True,
    logits: str = "all",
    remote: bool | str = False,
    timeout: float | None = None,
    progress: Callable[[str], None] | None = None,
    backend: Any = None,
) -> list[TraceResult]:
    """:func:`trace` for several payloads over the same inputs in one forward pass (one NDIF request
    when remote): one invoke per payload.  Returns one :class:`TraceResult` per payload."""
    if logits not in ("all", "last"):
        raise ValueError(f"logits must be 'all' or 'last', not {logits!r}")
    if not payloads:
        raise ValueError("trace_variants needs at least one payload (None for the baseline)")
    enc = _as_inputs(model, inputs, chat)
    records, states = run_states(model, payloads, telemetry)
    backend = run_backend(model, payloads, remote, timeout=timeout, progress=progress, given=backend)
    started = time.perf_counter()
    outs, teles = _run_trace(model, enc, list(payloads), states, logits == "last", backend)
    seconds = time.perf_counter() - started
    if outs is None or teles is None:
        raise RuntimeError("the trace returned no result")
    return _split_trace(enc, records, outs, teles, seconds)


def _run_trace(
    model: Any,
    enc: dict[str, torch.Tensor],
    payloads: list[dict[str, Any] | None],
    states: list[dict[str, Any]],
    last: bool,
    backend: Any,
) -> tuple[Any, Any]:
    """The forward block (captured from this file's source, like :func:`_run_generate`)."""
    outs = None
    teles = None
    with torch.no_grad(), model.trace(backend=backend) as tracer:
        outs = nnsight.save([])
        teles = nnsight.save([])
        for index in range(len(payloads)):
            with tracer.invoke(enc):
                teles.append(states[index]["tele"])
                payload = payloads[index]
                if payload is not None:
                    interventions.intervene(model, payload, states[index])
                out = model.output.logits
                outs.append(out[:, -1:] if last else out)
    return outs, teles


def _split_trace(
    enc: Mapping[str, torch.Tensor],
    records: Sequence[bool],
    outs: Sequence[torch.Tensor],
    teles: Sequence[torch.Tensor | None],
    seconds: float,
) -> list[TraceResult]:
    results = []
    for index, record in enumerate(records):
        tele = teles[index]
        results.append(
            TraceResult(
                logits=outs[index].detach(),
                attention_mask=enc["attention_mask"].cpu(),
                telemetry=tele.detach().cpu() if record and tele is not None else None,
                seconds=seconds,
            )
        )
    return results


def submit(
    model: Any,
    payloads: Sequence[dict[str, Any] | None],
    prompts: Prompt | Sequence[Prompt] | Mapping[str, torch.Tensor],
    *,
    remote: bool | str = True,
    max_new_tokens: int = 32,
    chat: bool | None = None,
    telemetry: bool = True,
    progress: Callable[[str], None] | None = None,
    **gen_kwargs: Any,
) -> RemoteJob:
    """Send a :func:`generate_variants` request to NDIF without waiting; :func:`fetch` collects it."""
    if not remote:
        raise ValueError("submit needs a remote server (remote=True or a URL)")
    job = _generate_job(model, payloads, prompts, max_new_tokens, chat, telemetry, gen_kwargs)
    backend = run_backend(model, payloads, remote, blocking=False, progress=progress)
    _run_generate(model, job, backend)
    if backend.job_id is None:
        raise RuntimeError("the server assigned no request id")
    return RemoteJob(
        job_id=str(backend.job_id),
        host=str(backend.host),
        model_key=str(backend.model_key),
        kind="generate",
        input_ids=job.enc["input_ids"],
        attention_mask=job.enc["attention_mask"],
        records=tuple(job.records),
    )


def fetch(
    model: Any,
    job: RemoteJob,
    *,
    wait: float | None = 0.0,
    progress: Callable[[str], None] | None = None,
) -> list[GenerateResult] | None:
    """The results of a job sent with :func:`submit`, or None while it is still running.

    ``wait``: seconds to keep polling (None: until done); ``model`` decodes the ids (its tokenizer)."""
    started = time.perf_counter()
    result = ndif.collect(job.host, job.model_key, job.job_id, wait=wait, progress=progress)
    if result is None:
        return None
    enc = {"input_ids": job.input_ids, "attention_mask": job.attention_mask}
    return _split_generate(model, enc, job.records, result["new_ids"], result["teles"], time.perf_counter() - started)


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
        state = interventions.new_state(payload, _device(model), telemetry=telemetry)
        if telemetry:
            nnsight.save(state["tele"])
    if steps == "one":
        interventions.intervene(model, payload, state)
    elif steps == "auto":
        interventions.intervene(model, payload, state)
        if state["generating"]:
            interventions.intervene_steps(model, payload, state, Iterations(1, None))
    else:
        interventions.intervene_steps(model, payload, state, steps)
    return state


def install(model: Any, payload: dict[str, Any]) -> None:
    """Keep ``payload`` on ``model`` for every later ``trace`` / ``generate`` (all steps), as an
    nnsight edit; replaces what an earlier :func:`install` put there and leaves other edits alone."""
    uninstall(model)
    before = list(model._edits)
    with model.edit(inplace=True) as tracer:
        state = interventions.new_state(payload, telemetry=False)  # an edit's state is not kept
        interventions.intervene_steps(model, payload, state, tracer.all())
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
