"""A whole comparison as ONE NDIF request: its corpus, A/B, generation and readout passes in one nnsight session.

Sent pass by pass, a remote comparison waits in the server's queue once per pass (4–6 times for a demo-size
comparison).  Here every pass's trace runs inside one ``model.session``: the session block below is what the
server runs, calling the same pass functions a local comparison calls (they travel by value with the runtime,
see :func:`register_passes`), and the generated ids stay on the server for the readout pass that reads them.
Only the reduced results come back — per-arm sums, per-row log-probabilities, generated ids, telemetry and
readouts — so a comparison's results equal its pass-by-pass ones.

One request runs as one job, and a server ends a job that runs too long (NDIF: after an hour), so a
comparison goes as one request only while its estimated work (:attr:`SessionWork.tokens`, tokens forwarded
over every pass and arm) is within a budget (:data:`REQUEST_TOKENS`, ``cdsl compare --request-tokens``);
beyond it, it is sent pass by pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nnsight
import torch

if TYPE_CHECKING:
    from constraintdsl.concepts.artifact import ConceptArtifact
    from constraintdsl.run.runner import GenerateResult

    from .ab import ABSet
    from .ab_pass import ABGroup
    from .passes import PassWork

__all__ = [
    "REQUEST_TOKENS",
    "CompareJob",
    "SessionResult",
    "SessionWork",
    "collect_session",
    "plan_session",
    "register_passes",
    "run_session",
    "submit_session",
]

# Tokens forwarded (summed over passes and arms) that one request may carry: about 2·10⁶ tokens of a 70B model
# take tens of minutes on one GPU, well inside NDIF's one-hour limit per job.
REQUEST_TOKENS = 2_000_000

_registered = False


def register_passes() -> None:
    """Make the modules whose functions hold the passes' traces travel by value (idempotent).

    cloudpickle then sends each function the session calls with only the names it reads (torch, nnsight and
    the runtime, itself registered), so the server needs nothing of this package."""
    global _registered
    if not _registered:
        from constraintdsl.models.ndif import register_runtime
        from constraintdsl.run import readout, runner

        from . import passes

        register_runtime()
        for module in (passes, runner, readout):
            nnsight.register(module)
        _registered = True


@dataclass(frozen=True)
class SessionWork:
    """Every pass of a comparison, prepared on the client (inputs, fresh runtime states, payloads).

    ``corpus``: one :class:`~constraintdsl.compare.passes.PassWork` per corpus pass, each over
    ``corpus_payloads``; ``ab``: one per A/B pass over ``ab_payloads``, with its item group; ``job``: the
    generation (one invoke per arm shown); ``read_paths`` / ``read_dirs`` / ``reads``: the readout over the
    generated text (none when nothing is read); ``stops``: the tokens that end a generated text; ``tokens``:
    the estimated work, tokens forwarded over every pass and arm."""

    corpus: list[PassWork]
    corpus_payloads: list[dict[str, Any] | None]
    ab: list[tuple[ABGroup, PassWork]]
    ab_payloads: list[dict[str, Any] | None]
    job: Any  # the runner's generation job
    reads: list[tuple[ConceptArtifact, int]]
    read_paths: list[str]
    read_dirs: list[torch.Tensor]
    stops: list[int]
    tokens: int

    @property
    def payloads(self) -> list[dict[str, Any] | None]:
        """Every payload the request carries (for the checks before sending)."""
        return [*self.corpus_payloads, *self.ab_payloads, *self.job.payloads]

    @property
    def passes(self) -> dict[str, int]:
        """The forward passes it runs, by kind (as a pass-by-pass comparison counts them)."""
        return {
            "corpus": len(self.corpus),
            "ab": len(self.ab),
            "generate": 1,
            "readout": 1 if self.read_paths else 0,
        }


@dataclass(frozen=True)
class SessionResult:
    """What came back, on the CPU: per corpus payload its corpus sums over every pass and the summary of its
    final hidden states' moments (``[count, tr C, ‖C‖_F²]``, folded on the server: the ``[H, H]`` sums stay
    there), every A/B reply's summed log-probability per A/B payload, the generations (one per arm shown), the
    calibrated readouts (one ``[arms · prompts]`` tensor per read), and the request's wall time."""

    corpus: list[tuple[torch.Tensor, torch.Tensor]]
    ab: list[torch.Tensor]
    generations: list[GenerateResult]
    readouts: list[torch.Tensor]
    seconds: float


def plan_session(
    model: Any,
    *,
    corpus_payloads: Sequence[dict[str, Any] | None],
    corpus: torch.Tensor,
    windows_per_pass: int,
    prompt_tokens: int,
    ab: ABSet | None,
    ab_payloads: Sequence[dict[str, Any] | None],
    shown_payloads: Sequence[dict[str, Any] | None],
    prompts: Sequence[str],
    max_new_tokens: int,
    reads: Sequence[tuple[ConceptArtifact, int]],
) -> SessionWork:
    """The passes of a comparison as :func:`constraintdsl.compare.comparison.compare` runs them one by one:
    the corpus in passes of ``windows_per_pass`` windows, the A/B set in the groups of
    :func:`~constraintdsl.compare.ab_pass.ab_groups`, one generation of every prompt under every shown
    payload, and one readout pass over what they generated."""
    from constraintdsl.run.readout import concept_read_list, read_paths, stop_ids
    from constraintdsl.run.runner import _generate_job

    from .ab_pass import ab_groups
    from .passes import answers_work, corpus_work

    c_payloads, a_payloads = list(corpus_payloads), list(ab_payloads)
    rows, width = (int(x) for x in corpus.shape)
    corpus_passes = [
        corpus_work(
            model,
            c_payloads,
            corpus[start : start + windows_per_pass],
            torch.ones_like(corpus[start : start + windows_per_pass]),
            prompt_len=prompt_tokens,
            telemetry=False,  # the load is read from the generation's telemetry
        )
        for start in range(0, rows, windows_per_pass)
    ]
    tokens = len(c_payloads) * rows * width
    ab_passes: list[tuple[ABGroup, PassWork]] = []
    if ab is not None and a_payloads:
        for group in ab_groups(model, ab, len(a_payloads)):
            ids, mask = group.ids, group.mask
            work = answers_work(
                model, a_payloads, ids, mask, group.answer, group.prompt_len, keep=group.keep, telemetry=False
            )
            ab_passes.append((group, work))
            tokens += len(a_payloads) * int(group.ids.numel())
    job = _generate_job(model, list(shown_payloads), list(prompts), max_new_tokens, None, True, {})
    generated = (
        len(shown_payloads) * int(job.enc["input_ids"].shape[0]) * (int(job.enc["input_ids"].shape[1]) + max_new_tokens)
    )
    paths, dirs = read_paths(model, concept_read_list(reads)) if reads else ([], [])
    tokens += generated * (2 if reads else 1)
    return SessionWork(
        corpus=corpus_passes,
        corpus_payloads=c_payloads,
        ab=ab_passes,
        ab_payloads=a_payloads,
        job=job,
        reads=list(reads),
        read_paths=paths,
        read_dirs=dirs,
        stops=stop_ids(model),
        tokens=tokens,
    )


def run_session(
    model: Any,
    work: SessionWork,
    remote: bool | str,
    *,
    timeout: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> SessionResult:
    """Send ``work`` to the NDIF server ``remote`` names as one request, wait, and bring the results back."""
    from constraintdsl.models.backend import run_backend

    register_passes()
    backend = run_backend(model, work.payloads, remote, timeout=timeout, progress=progress)
    started = time.perf_counter()
    out = _run_session(model, work, backend)
    if out is None:
        raise RuntimeError("the comparison's request returned no result")
    return _results(model, work, out, time.perf_counter() - started)


@dataclass(frozen=True)
class CompareJob:
    """A comparison sent without waiting (:func:`submit_session`): the request's id, server and model key."""

    job_id: str
    host: str
    model_key: str

    def to_dict(self) -> dict[str, str]:
        """Plain JSON-able fields."""
        return {"job_id": self.job_id, "host": self.host, "model_key": self.model_key}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompareJob:
        """Inverse of :meth:`to_dict`."""
        return cls(job_id=str(data["job_id"]), host=str(data["host"]), model_key=str(data["model_key"]))


def submit_session(
    model: Any, work: SessionWork, remote: bool | str, *, progress: Callable[[str], None] | None = None
) -> CompareJob:
    """Send ``work`` as one request without waiting; :func:`collect_session` brings its results back."""
    from constraintdsl.models.backend import run_backend

    register_passes()
    backend = run_backend(model, work.payloads, remote, blocking=False, progress=progress)
    _run_session(model, work, backend)
    if backend.job_id is None:
        raise RuntimeError("the server assigned no request id")
    return CompareJob(job_id=str(backend.job_id), host=str(backend.host), model_key=str(backend.model_key))


def collect_session(
    model: Any,
    work: SessionWork,
    job: CompareJob,
    *,
    wait: float | None = 0.0,
    progress: Callable[[str], None] | None = None,
) -> SessionResult | None:
    """The results of ``job`` (sent by :func:`submit_session` for this same ``work``, planned again from the
    same specs and inputs), or None while it is still running; ``wait``: seconds to keep polling (None: until
    done)."""
    from constraintdsl.models.ndif import collect

    started = time.perf_counter()
    result = collect(job.host, job.model_key, job.job_id, wait=wait, progress=progress)
    if result is None:
        return None
    return _results(model, work, result["out"], time.perf_counter() - started)


def _results(model: Any, work: SessionWork, out: Any, seconds: float) -> SessionResult:
    """The session's saved values, reduced on the CPU like the pass-by-pass results."""
    from constraintdsl.run.readout import calibrate_reads
    from constraintdsl.run.runner import _split_generate

    corpus_raw, answers_raw, new_ids, teles, reads_raw = out
    corpus = [(sums.detach().cpu(), summary.detach().cpu()) for sums, summary in corpus_raw]
    ab: list[torch.Tensor] = []
    if work.ab:
        from .ab_pass import fill_answers

        replies = 2 * sum(len(group.items) for group, _ in work.ab)
        ab = [torch.zeros(replies, dtype=torch.float64) for _ in work.ab_payloads]
        for (group, _), outs in zip(work.ab, answers_raw, strict=True):
            fill_answers(ab, group, [lp.detach().cpu() for lp, _ in outs])
    job = work.job
    generations = _split_generate(model, job.enc, job.records, new_ids, teles, seconds)
    readouts = calibrate_reads(work.reads, reads_raw) if work.read_paths else []
    return SessionResult(corpus=corpus, ab=ab, generations=generations, readouts=readouts, seconds=seconds)


def _run_session(model: Any, work: SessionWork, backend: Any) -> Any:
    """The session block (it must live in this file: nnsight captures it from source, and on NDIF it is this
    source that runs).  It calls the pass functions of a local comparison; inside a session their traces run
    where the session runs, and what one pass computes (the generated ids) feeds the next there."""
    from constraintdsl.compare.passes import _run_answers, _run_corpus
    from constraintdsl.run.readout import _run_project, readout_inputs
    from constraintdsl.run.runner import _run_generate
    from constraintdsl.runtime.scoring import fold_corpus

    corpus_run, answers_run, generate_run, project_run, inputs_of, fold = (
        _run_corpus,
        _run_answers,
        _run_generate,
        _run_project,
        readout_inputs,
        fold_corpus,
    )
    corpus_passes = [(w.enc, w.states, w.head or "") for w in work.corpus]
    ab_passes = [(w.enc, w.answer, w.states, w.head, w.keep) for _, w in work.ab if w.answer is not None]
    corpus_payloads, ab_payloads, job = work.corpus_payloads, work.ab_payloads, work.job
    paths, dirs, stops = work.read_paths, work.read_dirs, work.stops
    out = None
    with torch.no_grad(), model.session(backend=backend):
        passes = []
        for enc, states, head in corpus_passes:
            passes.append(corpus_run(model, enc, corpus_payloads, states, head, None))
        corpus = fold(passes)
        answers = []
        for enc, answer, states, cut_at, keep in ab_passes:
            answers.append(answers_run(model, enc, answer, ab_payloads, states, cut_at, keep, None))
        new_ids, teles = generate_run(model, job, None)
        reads = []
        if paths:
            arms = len(job.payloads)
            prompt_ids = job.enc["input_ids"]
            ids = torch.cat([prompt_ids.repeat(arms, 1), new_ids.to(prompt_ids.dtype)], dim=1)
            mask = job.enc["attention_mask"].repeat(arms, 1)
            attention, select = inputs_of(ids, mask, int(prompt_ids.shape[1]), stops)
            reads = project_run(model, {"input_ids": ids, "attention_mask": attention}, select, paths, dirs, None)
        out = nnsight.save([corpus, answers, new_ids, teles, reads])
    return out
