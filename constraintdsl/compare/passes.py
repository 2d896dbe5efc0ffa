"""Measurement passes for comparisons: teacher-forced scoring of a corpus and of A/B answers.
(Concept readouts of given rows are in :mod:`constraintdsl.run.readout`.)

Like the runner, every pass is one ``model.trace`` whose body lives in this file (nnsight captures
it from source; on NDIF this source runs) with one invoke per payload, so a baseline and any number
of constraint sets share one forward pass and one request.  Only reduced results come back: sums
(:mod:`constraintdsl.runtime.scoring`), per-row numbers and telemetry, never activations or logits.

In a teacher-forced pass each row's first ``prompt_len`` tokens count as the prompt and the rest as
generated text, so ``on prompt`` / ``on generated`` ops and gates act as they would in generation.
``on last N`` acts on the row's last N tokens only (in generation every new token is last in turn).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nnsight
import torch

from constraintdsl.models.backend import on_device, run_backend
from constraintdsl.models.sites import unembed_path
from constraintdsl.run.runner import run_states
from constraintdsl.runtime import interventions, scoring

__all__ = [
    "AnswerScore",
    "CorpusScore",
    "PassWork",
    "answers_work",
    "corpus_work",
    "score_answers",
    "score_corpus",
]


@dataclass(frozen=True)
class CorpusScore:
    """One payload's sums over a corpus batch.

    ``sums``: float64 ``[count, nll_sum, entropy_sum, kl_sum]`` over counted next-token predictions
    (KL against the batch's first payload, the baseline).  ``hidden``: float64 ``(n, sum [H],
    sum of outer products [H, H])`` of the final hidden states (the output embedding's input) over
    real tokens.  ``telemetry`` as in :class:`constraintdsl.run.runner.GenerateResult`.
    """

    sums: torch.Tensor
    hidden: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    telemetry: torch.Tensor | None


@dataclass(frozen=True)
class AnswerScore:
    """One payload's summed log-probability of each row's answer tokens, ``[B]``."""

    logprob: torch.Tensor
    telemetry: torch.Tensor | None


def _states(
    model: Any, payloads: Sequence[dict[str, Any] | None], telemetry: bool, prompt_len: torch.Tensor
) -> tuple[list[bool], list[dict[str, Any]]]:
    records, states = run_states(model, payloads, telemetry)
    for state in states:
        state["given_prompt_len"] = prompt_len
    return records, states


def _check(payloads: Sequence[dict[str, Any] | None], ids: torch.Tensor, mask: torch.Tensor) -> None:
    if not payloads:
        raise ValueError("give at least one payload (None for the baseline)")
    if ids.dim() != 2 or ids.shape != mask.shape:
        raise ValueError(f"ids and mask must both be [B, T], got {tuple(ids.shape)} and {tuple(mask.shape)}")


def _prompt_lengths(prompt_len: int | torch.Tensor, rows: int) -> torch.Tensor:
    if isinstance(prompt_len, int):
        return torch.full((rows,), prompt_len, dtype=torch.long)
    return prompt_len.to(torch.long)


@dataclass(frozen=True)
class PassWork:
    """What one scoring pass's trace takes, prepared on the client: inputs on the model's device, a fresh
    runtime state and whether telemetry is kept per payload, the output embedding's path (None: not cut),
    and for an answer pass the answer mask and how many last positions keep their logits."""

    enc: dict[str, torch.Tensor]
    states: list[dict[str, Any]]
    records: list[bool]
    head: str | None
    answer: torch.Tensor | None = None
    keep: int = 0


def corpus_work(
    model: Any,
    payloads: Sequence[dict[str, Any] | None],
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    prompt_len: int | torch.Tensor = 0,
    telemetry: bool = True,
) -> PassWork:
    """The inputs of :func:`score_corpus`'s trace (see there)."""
    _check(payloads, ids, mask)
    records, states = _states(model, payloads, telemetry, _prompt_lengths(prompt_len, int(ids.shape[0])))
    enc = on_device(model, {"input_ids": ids, "attention_mask": mask})
    return PassWork(enc=enc, states=states, records=records, head=unembed_path(model))


def answers_work(
    model: Any,
    payloads: Sequence[dict[str, Any] | None],
    ids: torch.Tensor,
    mask: torch.Tensor,
    answer_mask: torch.Tensor,
    prompt_len: torch.Tensor,
    *,
    keep: int | None = None,
    telemetry: bool = True,
) -> PassWork:
    """The inputs of :func:`score_answers`'s trace (see there)."""
    _check(payloads, ids, mask)
    width = int(ids.shape[1])
    if keep is not None:
        if not 2 <= keep <= width:
            raise ValueError(f"keep must be between 2 and the row width {width}, got {keep}")
        if bool((answer_mask[:, : width - keep + 1] != 0).any()):
            raise ValueError(f"an answer starts before the last {keep - 1} positions; raise keep")
    records, states = _states(model, payloads, telemetry, prompt_len)
    cut = width - (keep or width)
    enc = on_device(model, {"input_ids": ids, "attention_mask": mask, "answer": answer_mask[:, cut:]})
    answer = enc.pop("answer")
    head = unembed_path(model) if keep is not None else None
    return PassWork(enc=enc, states=states, records=records, head=head, answer=answer, keep=keep or width)


def score_corpus(
    model: Any,
    payloads: Sequence[dict[str, Any] | None],
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    prompt_len: int | torch.Tensor = 0,
    telemetry: bool = True,
    remote: bool | str = False,
    timeout: float | None = None,
    progress: Callable[[str], None] | None = None,
    backend: Any = None,
) -> tuple[list[CorpusScore], float]:
    """Teacher-forced scoring of ``ids`` ``[B, T]`` (left-padded; ``mask`` marks real tokens) under
    every payload in ONE forward pass.  KL is taken against the first payload's distribution (the
    baseline, None, in a comparison).

    Returns one :class:`CorpusScore` per payload and the wall time of the pass.
    """
    work = corpus_work(model, payloads, ids, mask, prompt_len=prompt_len, telemetry=telemetry)
    backend = run_backend(model, payloads, remote, timeout=timeout, progress=progress, given=backend)
    started = time.perf_counter()
    assert work.head is not None
    outs = _run_corpus(model, work.enc, list(payloads), work.states, work.head, backend)
    seconds = time.perf_counter() - started
    if outs is None:
        raise RuntimeError("the corpus pass returned no result")
    scores = []
    for (sums, hidden, tele), record in zip(outs, work.records, strict=True):
        n, s, ss = (t.detach().cpu() for t in hidden)
        scores.append(
            CorpusScore(
                sums=sums.detach().cpu(),
                hidden=(n, s, ss),
                telemetry=tele.detach().cpu() if record and tele is not None else None,
            )
        )
    return scores, seconds


def _run_corpus(
    model: Any,
    enc: dict[str, torch.Tensor],
    payloads: list[dict[str, Any] | None],
    states: list[dict[str, Any]],
    head_path: str,
    backend: Any,
) -> Any:
    outs = None
    with torch.no_grad(), model.trace(backend=backend) as tracer:
        outs = nnsight.save([])
        head = model
        for part in head_path.split("."):
            head = getattr(head, part)
        # the baseline's log-probabilities, shared with the later invokes through a list: every invoke's
        # body sees the same list object, and invokes reach the logits in order
        shared: list[Any] = []
        for index in range(len(payloads)):
            with tracer.invoke(enc):
                payload = payloads[index]
                if payload is not None:
                    interventions.intervene(model, payload, states[index])
                hidden = scoring.hidden_sums(head.input, enc["attention_mask"])
                logits = model.output.logits
                base = shared[0] if shared else None  # read after this invoke's logits: the baseline's are in
                sums, logp = scoring.corpus_sums(logits, enc["input_ids"], enc["attention_mask"], base)
                if index == 0:
                    shared.append(logp)
                outs.append([sums, hidden, states[index]["tele"]])
    return outs


def score_answers(
    model: Any,
    payloads: Sequence[dict[str, Any] | None],
    ids: torch.Tensor,
    mask: torch.Tensor,
    answer_mask: torch.Tensor,
    prompt_len: torch.Tensor,
    *,
    keep: int | None = None,
    telemetry: bool = True,
    remote: bool | str = False,
    timeout: float | None = None,
    progress: Callable[[str], None] | None = None,
    backend: Any = None,
) -> tuple[list[AnswerScore], float]:
    """Summed log-probability of each row's answer tokens (``answer_mask``) under every payload (None
    for the baseline) in ONE forward pass; each row's first ``prompt_len`` real tokens are its prompt.

    ``keep``: the output embedding runs on the last ``keep`` positions only (its input is cut inside the
    trace), so the pass holds ``keep`` rather than ``T`` positions of logits per row.  Every answer must lie
    in the last ``keep - 1`` positions (left-padded rows whose answers end them: ``keep`` = the longest
    answer + 1)."""
    work = answers_work(model, payloads, ids, mask, answer_mask, prompt_len, keep=keep, telemetry=telemetry)
    backend = run_backend(model, payloads, remote, timeout=timeout, progress=progress, given=backend)
    started = time.perf_counter()
    assert work.answer is not None
    outs = _run_answers(model, work.enc, work.answer, list(payloads), work.states, work.head, work.keep, backend)
    seconds = time.perf_counter() - started
    if outs is None:
        raise RuntimeError("the answer pass returned no result")
    return [
        AnswerScore(logprob=lp.detach().cpu(), telemetry=tele.detach().cpu() if record and tele is not None else None)
        for (lp, tele), record in zip(outs, work.records, strict=True)
    ], seconds


def _run_answers(
    model: Any,
    enc: dict[str, torch.Tensor],
    answer_mask: torch.Tensor,
    payloads: list[dict[str, Any] | None],
    states: list[dict[str, Any]],
    head_path: str | None,
    keep: int,
    backend: Any,
) -> Any:
    outs = None
    with torch.no_grad(), model.trace(backend=backend) as tracer:
        outs = nnsight.save([])
        kept = enc["input_ids"][:, enc["input_ids"].shape[1] - keep :]
        for index in range(len(payloads)):
            with tracer.invoke(enc):
                payload = payloads[index]
                if payload is not None:
                    interventions.intervene(model, payload, states[index])
                logprob = scoring.answer_logprob(model.output.logits, kept, answer_mask)
                outs.append([logprob, states[index]["tele"]])
        if head_path is not None:
            # one invoke over the whole batch cuts the output embedding's input to the last `keep` positions,
            # so no arm's logits are formed over the prompt (the arms' invokes read the cut logits)
            with tracer.invoke():
                head = model
                for part in head_path.split("."):
                    head = getattr(head, part)
                h = head.input
                head.input = h[:, h.shape[1] - keep :]
    return outs
