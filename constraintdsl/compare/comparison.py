"""Compare constraint sets as data (DESIGN §7): the baseline and every spec and variant on the same inputs.

Every spec is expanded into its variants (``let``), compiled for the model, and run together with the
unconstrained baseline as invokes of shared forward passes:

- **corpus pass(es)**: the neutral reference corpus, teacher-forced, in windows of ``window`` tokens
  (the first ``prompt_tokens`` of each act as its prompt).  Gives the tax (ΔNLL per token, KL(baseline ‖
  constrained), perplexity ratio), next-token entropy and the participation ratio of final hidden states.
  For the **marginal tax** of a statement, the spec without that statement runs as one more invoke of
  the same passes (identical leave-one-out specs, and those equal to the baseline, run once).
- **A/B pass(es)** (with an A/B set): the log-probability of both answers of every item, teacher-forced,
  scored by mean log-probability per answer token (or summed), in passes of bounded size
  (:mod:`constraintdsl.compare.ab_pass`); per item p(match), per arm the paired shift from the baseline.
- **generation**: every prompt under every spec in one generation; its telemetry gives the load
  (binding fraction and correction per statement and layer).
- **readout pass**: a plain forward over every arm's generated text reads each constrained concept at
  its best layer: the effect is the shift of that reading, in calibrated units, from the baseline's.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from constraintdsl.errors import Diagnostic, UserError, public
from constraintdsl.lang.loading import read_text

if TYPE_CHECKING:
    from constraintdsl.compiler.plan import Plan
    from constraintdsl.lang.spec import Spec

    from .ab import ABSet
    from .session import CompareJob

__all__ = [
    "Arm",
    "Baseline",
    "Comparison",
    "Inputs",
    "Row",
    "build_arms",
    "collect_compare",
    "compare",
    "corpus_windows",
    "read_corpus",
    "spec_arms",
    "submit_compare",
]

DEFAULT_WINDOW = 128
DEFAULT_PROMPT_TOKENS = 16
# logits of one corpus pass: arms × rows × window × vocabulary float32s, kept under this many (1.5 GB)
PASS_LOGIT_BUDGET = 384_000_000


class Progress(Protocol):
    """Receives ``(message, done, total)`` as a comparison goes: passes done of ``total``."""

    def __call__(self, message: str, done: int = 0, total: int = 0) -> None: ...


@dataclass(frozen=True)
class Inputs:
    """What every arm runs on.  ``corpus`` holds token windows ``[N, window]``."""

    prompts: tuple[str, ...]
    corpus: torch.Tensor
    corpus_tokens_total: int
    ab: ABSet | None = None
    max_new_tokens: int = 32
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS
    sources: tuple[tuple[str, str], ...] = ()  # ("prompts", path), ("corpus", path), ("ab", path)
    ab_score: str = "mean"  # how A/B answers are scored: "mean" or "sum" log-probability per answer token

    def digest(self) -> str:
        """``sha256:<hex>`` of everything that determines the results besides the specs and the model."""
        h = hashlib.sha256()
        h.update(json.dumps(list(self.prompts)).encode())
        h.update(self.corpus.to(torch.int64).numpy().tobytes())
        h.update(str(tuple(self.corpus.shape)).encode())
        h.update(json.dumps([self.max_new_tokens, self.prompt_tokens]).encode())
        if self.ab is not None:
            h.update(self.ab.sha256.encode())
            # runs recorded before A/B scoring was a choice were summed: "sum" keeps their digest
            if self.ab_score != "sum":
                h.update(f"ab_score={self.ab_score}".encode())
        return "sha256:" + h.hexdigest()

    def describe(self) -> dict[str, Any]:
        """Plain-data summary for reports."""
        rows, width = (int(x) for x in self.corpus.shape)
        return {
            "prompts": len(self.prompts),
            "max_new_tokens": self.max_new_tokens,
            "corpus_windows": rows,
            "corpus_window": width,
            "corpus_tokens_used": rows * width,
            "corpus_tokens_total": self.corpus_tokens_total,
            "corpus_prompt_tokens": self.prompt_tokens,
            "ab_items": len(self.ab.items) if self.ab is not None else 0,
            "ab_behavior": self.ab.behavior if self.ab is not None else None,
            "ab_score": self.ab_score if self.ab is not None else None,
            "ab_format": self.ab.format if self.ab is not None else None,
            "ab_questions": [
                {"line": item.span.line if item.span is not None else None, "question": item.question}
                for item in (self.ab.items if self.ab is not None else ())
            ],
            "sources": dict(self.sources),
        }


@public
def read_corpus(path: str) -> list[str]:
    """Documents of a corpus file: plain text, documents separated by lines holding only ``---``."""
    text = read_text(path, kind="corpus")
    docs: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip() == "---":
            docs.append([])
        else:
            docs[-1].append(line)
    out = ["\n".join(d).strip() for d in docs]
    out = [d for d in out if d]
    if not out:
        raise UserError(path, "the corpus is empty", "write plain text; separate documents with lines of ---")
    return out


@public
def corpus_windows(
    tokenizer: Any, documents: Sequence[str], *, window: int = DEFAULT_WINDOW, max_tokens: int | None = None
) -> tuple[torch.Tensor, int]:
    """Token windows ``[N, window]`` of the documents (joined by the end-of-text token, cut in order;
    the last partial window is dropped) and the total token count.  ``max_tokens`` keeps the first
    ``max_tokens // window`` windows."""
    if window < 2:
        raise UserError("--window", f"a window of {window} tokens predicts nothing", "use at least 2 (default 128)")
    sep = tokenizer.eos_token_id
    stream: list[int] = []
    for doc in documents:
        stream.extend(int(t) for t in tokenizer(doc, add_special_tokens=False)["input_ids"])
        if sep is not None:
            stream.append(int(sep))
    total = len(stream)
    n = total // window
    if max_tokens is not None:
        n = min(n, max_tokens // window)
    if n == 0:
        raise UserError(
            "--corpus",
            f"the corpus gives no full window of {window} tokens (it has {total}, limit {max_tokens})",
            "use a longer corpus, a smaller --window or a larger --corpus-tokens",
        )
    return torch.tensor(stream[: n * window], dtype=torch.long).view(n, window), total


@dataclass(frozen=True)
class Arm:
    """One column of a comparison: the baseline (``spec`` None) or one concrete spec (a variant).

    ``main`` arms are reported; the others are leave-one-out specs run for marginal tax.
    """

    label: str
    key: str  # "baseline", or the spec's content hash (canonical text + concept files)
    spec: Spec | None = None
    plan: Plan | None = None
    source: str | None = None
    variant: str = ""
    main: bool = True


@dataclass
class Row:
    """Every number a comparison reports for one main arm (the baseline first).  Plain data: it
    round-trips through JSON and the run store."""

    label: str
    key: str
    source: str | None = None
    variant: str = ""
    spec_text: str = ""
    tax: dict[str, float] = field(default_factory=dict)
    dof: dict[str, float] = field(default_factory=dict)
    effect: dict[str, dict[str, Any]] = field(default_factory=dict)
    ab: dict[str, Any] | None = None
    load: list[dict[str, Any]] = field(default_factory=list)
    marginal: list[dict[str, Any]] = field(default_factory=list)
    generations: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        """The inverse of :meth:`to_dict`."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class Comparison:
    """A finished comparison: ``rows[0]`` is the baseline."""

    model: str
    revision: str
    inputs_hash: str
    inputs: dict[str, Any]
    rows: tuple[Row, ...]
    prompts: tuple[str, ...]
    passes: dict[str, int]
    seconds: dict[str, float]
    run_id: str | None = None
    warnings: tuple[Diagnostic, ...] = ()  # about the specs (and inputs), severity "warning"
    # the forward work per kind of pass: input sequences times the arms each went through (a batched pass
    # over k arms and n sequences counts k·n), so comparisons of different sizes can be set side by side
    sequences: dict[str, int] = field(default_factory=dict)
    requests: int = 0  # NDIF requests it took (0: run here)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the ``--json`` output); warnings are ``diagnostics`` with ``"severity": "warning"``."""
        return {
            "diagnostics": [d.to_dict() for d in self.warnings],
            "model": {"id": self.model, "revision": self.revision},
            "inputs_hash": self.inputs_hash,
            "inputs": self.inputs,
            "prompts": list(self.prompts),
            "forward_passes": self.passes,
            "sequences": self.sequences,
            "requests": self.requests,
            "seconds": self.seconds,
            "run_id": self.run_id,
            "rows": [r.to_dict() for r in self.rows],
        }


def _label(spec: Spec) -> str:
    return spec.name or Path(spec.path).stem


def _key(spec: Spec, given: Mapping[str, Any] | None = None) -> str:
    """The spec's content hash: canonical text plus each concept's file hash (or, for a concept given as
    an artifact object, the hash of its tensors)."""
    from constraintdsl.lang.canonical import spec_hash
    from constraintdsl.lang.loading import concept_hashes

    given = given or {}
    files = replace(spec, concepts=tuple(c for c in spec.concepts if c.name not in given))
    extra = concept_hashes(files)
    for name in sorted(given):
        art = given[name]
        h = hashlib.sha256(np.ascontiguousarray(art.directions).tobytes())
        h.update(repr(art.layers).encode())
        if art.calibration is not None:
            for f in fields(art.calibration):
                h.update(np.ascontiguousarray(getattr(art.calibration, f.name)).tobytes())
        extra[f"concept:{name}"] = "given:" + h.hexdigest()
    return spec_hash(spec, extra)


def _without(spec: Spec, index: int) -> Spec:
    return replace(spec, constraints=spec.constraints[:index] + spec.constraints[index + 1 :])


def spec_arms(specs: Sequence[Spec], concepts: Mapping[str, Any] | None = None) -> list[Arm]:
    """One uncompiled arm per variant of every spec, in order, with unique labels (``name[floor=0.3]``,
    ``name#2`` for a repeated name) and content keys; the baseline is not among them."""
    from constraintdsl.lang.variants import expand

    arms: list[Arm] = []
    labels: set[str] = {"baseline"}
    for spec in specs:
        for variant in expand(spec):
            label = _label(spec) + (f"[{variant.name}]" if variant.name else "")
            base, n = label, 2
            while label in labels:
                label, n = f"{base}#{n}", n + 1
            labels.add(label)
            arms.append(Arm(label, _key(variant.spec, concepts), variant.spec, None, spec.path, variant.name))
    return arms


def build_arms(
    model: Any,
    specs: Sequence[Spec],
    *,
    marginal: bool = True,
    progress: Progress | None = None,
    concepts: Mapping[str, Any] | None = None,
    remote: bool | str = False,
) -> tuple[list[Arm], dict[tuple[int, int], int]]:
    """The baseline, every variant of every spec (:func:`spec_arms`, compiled for ``model``; ``concepts``
    as in :func:`~constraintdsl.compiler.resolve`) and, with ``marginal``, every leave-one-out spec.
    Returns the arms (``arms[0]`` the baseline) and ``drops``: (main arm, statement index) → the arm
    without that statement.  ``remote``: concepts that need forward passes to compile run them on NDIF."""
    from constraintdsl.compiler.resolve import resolve

    arms = [Arm(label="baseline", key="baseline")]
    index: dict[str, int] = {"baseline": 0}
    main: list[int] = []
    for arm in spec_arms(specs, concepts):
        assert arm.spec is not None
        if progress:
            progress(f"compiling {arm.label}")
        arms.append(replace(arm, plan=resolve(arm.spec, model, progress=False, concepts=concepts, remote=remote)))
        main.append(len(arms) - 1)
        index.setdefault(arm.key, len(arms) - 1)
    drops: dict[tuple[int, int], int] = {}
    if marginal:
        for a in main:
            full = arms[a].spec
            assert full is not None
            for i in range(len(full.constraints)):
                rest = _without(full, i)
                key = _key(rest, concepts) if rest.constraints else "baseline"
                if key not in index:
                    plan = resolve(rest, model, progress=False, concepts=concepts, remote=remote)
                    arms.append(Arm(f"{arms[a].label} without #{i + 1}", key, rest, plan, arms[a].source, main=False))
                    index[key] = len(arms) - 1
                drops[(a, i)] = index[key]
    return arms, drops


def _unique(arms: Sequence[Arm]) -> tuple[list[int], list[int]]:
    """Indices of the arms that actually run (first of each key) and, per arm, its runner."""
    first: dict[str, int] = {}
    runs: list[int] = []
    of: list[int] = []
    for i, arm in enumerate(arms):
        if arm.key not in first:
            first[arm.key] = len(runs)
            runs.append(i)
        of.append(first[arm.key])
    return runs, of


def _payloads(arms: Sequence[Arm], which: Sequence[int]) -> list[dict[str, Any] | None]:
    return [None if arms[i].plan is None else arms[i].plan.payload for i in which]  # type: ignore[union-attr]


def _add(total: list[Any] | None, part: Sequence[Any]) -> list[Any]:
    if total is None:
        return [p.clone() if isinstance(p, torch.Tensor) else p for p in part]
    return [t + p for t, p in zip(total, part, strict=True)]


@dataclass
class _Sums:
    corpus: torch.Tensor | None = None
    hidden: list[torch.Tensor] | None = None
    moments: torch.Tensor | None = None  # [count, tr C, ‖C‖_F²], folded where the passes ran (one request)


@dataclass
class Baseline:
    """The unconstrained baseline's A/B log-probabilities, kept by :func:`compare` for later comparisons on the
    same model and inputs (``cdsl tune`` compares round after round against one baseline).

    Empty until a comparison fills it; a comparison whose model or inputs differ from those it was filled
    for scores the baseline again and refills it.  Only the A/B scores are kept: each arm's are its own,
    while the corpus pass takes KL against the baseline's logits in the same pass, and generation and
    readout share one batch."""

    key: tuple[str, str, str] | None = None  # model id, revision, inputs digest
    ab: torch.Tensor | None = None
    ab_counts: torch.Tensor | None = None


def _windows_per_pass(model: Any, arms: int, width: int) -> int:
    vocab = int(getattr(model.tokenizer, "vocab_size", 50_000) or 50_000)
    return max(1, PASS_LOGIT_BUDGET // max(1, arms * width * vocab))


def _corpus(
    model: Any,
    arms: Sequence[Arm],
    runs: Sequence[int],
    inputs: Inputs,
    remote: bool | str,
    tick: Callable[[str, int], None],
) -> tuple[list[_Sums], int, float]:
    from .passes import score_corpus

    payloads = _payloads(arms, runs)
    rows, width = (int(x) for x in inputs.corpus.shape)
    per_pass = _windows_per_pass(model, len(payloads), width)
    sums = [_Sums() for _ in runs]
    passes, seconds = 0, 0.0
    for start in range(0, rows, per_pass):
        ids = inputs.corpus[start : start + per_pass]
        tick(f"corpus windows {start + 1}-{start + len(ids)} of {rows}", passes)
        scores, took = score_corpus(
            model,
            payloads,
            ids,
            torch.ones_like(ids),
            prompt_len=inputs.prompt_tokens,
            telemetry=False,  # the load is read from the generation's telemetry
            remote=remote,
        )
        passes += 1
        seconds += took
        for s, score in zip(sums, scores, strict=True):
            s.corpus = score.sums.clone() if s.corpus is None else s.corpus + score.sums
            s.hidden = _add(s.hidden, score.hidden)
    return sums, passes, seconds


def _statement_load(plan: Plan, tele: torch.Tensor | None) -> list[dict[str, Any]]:
    """Per statement: binding fraction and correction over every layer it acts at, and per layer."""
    from constraintdsl.compiler.telemetry import summarize

    if tele is None:
        return []
    rows = summarize(plan.entries, tele)
    out: list[dict[str, Any]] = []
    for i, op in enumerate(plan.spec.constraints):
        mine = [(e, r) for e, r in zip(plan.entries, rows, strict=True) if e.statement == i]
        selected = sum(r.selected for _, r in mine)
        binding = sum(r.binding for _, r in mine)
        corr = sum((r.mean_correction or 0.0) * r.binding for _, r in mine)
        out.append(
            {
                "statement": mine[0][1].statement if mine else op.keyword,
                "line": op.span.line,
                "keyword": op.keyword,
                "binding_fraction": binding / selected if selected else 0.0,
                "mean_correction": corr / binding if binding else 0.0,
                "max_correction": max((r.max_correction or 0.0 for _, r in mine), default=0.0),
                "units": mine[0][1].units if mine else "calibrated",
                "layers": [
                    {
                        "layer": r.layer,
                        "site": r.site,
                        "binding_fraction": r.binding_fraction,
                        "mean_correction": r.mean_correction,
                    }
                    for _, r in mine
                ],
            }
        )
    return out


def _reads(arms: Sequence[Arm], main: Sequence[int]) -> list[tuple[str, Any, int]]:
    """(label, artifact, layer) of every calibrated concept the main arms constrain (read on their text)."""
    from constraintdsl.run.readout import concept_reads

    return concept_reads([plan for plan in (arms[a].plan for a in main) if plan is not None])


def _effects(
    model: Any, arms: Sequence[Arm], main: Sequence[int], gens: Sequence[Any], remote: bool | str
) -> tuple[dict[int, dict[str, dict[str, Any]]], int]:
    """Per main arm: concept → readout (calibrated, mean over prompts) and its shift from the baseline's."""
    from constraintdsl.run.readout import calibrated_readouts

    reads = _reads(arms, main)
    if not reads:
        return _effect_rows(reads, [], [0, *main], 0), 0
    ids = torch.cat([g.ids for g in gens])
    mask = torch.cat([g.attention_mask for g in gens])
    values = calibrated_readouts(
        model, [(art, layer) for _, art, layer in reads], ids, mask, gens[0].prompt_width, remote=remote
    )
    return _effect_rows(reads, values, [0, *main], int(gens[0].ids.shape[0])), 1


def _effect_rows(
    reads: Sequence[tuple[str, Any, int]], values: Sequence[torch.Tensor], order: Sequence[int], per: int
) -> dict[int, dict[str, dict[str, Any]]]:
    """Per arm of ``order`` (``per`` rows each in ``values``): concept → mean readout and shift from the first's."""
    out: dict[int, dict[str, dict[str, Any]]] = {a: {} for a in order}
    for (label, _, layer), calibrated in zip(reads, values, strict=True):
        base = None
        for k, a in enumerate(order):
            part = calibrated[k * per : (k + 1) * per]
            ok = ~part.isnan()
            mean = float(part[ok].mean()) if bool(ok.any()) else math.nan
            base = mean if base is None else base
            out[a][label] = {
                "layer": layer,
                "value": mean,
                "baseline": base,
                "shift": mean - base,
                "prompts": int(ok.sum()),
            }
    return out


def compare(
    model: Any,
    specs: Sequence[Spec],
    inputs: Inputs,
    *,
    marginal: bool = True,
    remote: bool | str = False,
    progress: Progress | None = None,
    concepts: Mapping[str, Any] | None = None,
    on_warnings: Callable[[Sequence[Diagnostic], Mapping[str, str]], None] | None = None,
    ab_score: str | None = None,
    baseline: Baseline | None = None,
    request_tokens: int | None = None,
) -> Comparison:
    """Run the baseline and every spec/variant on ``inputs``, batched; see the module docstring.

    ``progress(message, done, total)`` is called before each pass (``done`` passes of ``total`` so far;
    ``total`` is 0 while specs are being compiled).  ``on_warnings(warnings, sources)`` is called once the
    specs are compiled, before any pass, with their warnings (merged over each spec's variants) and the
    texts to render them with; it may raise to stop the comparison there.  ``ab_score`` (``"mean"`` or
    ``"sum"``; default ``inputs.ab_score``, itself ``"mean"``) is how A/B answers are scored
    (:mod:`constraintdsl.compare.ab_pass`).  ``baseline``: the baseline's A/B scores are taken from it when it
    was filled for this model and these inputs (not scored again), else kept in it.

    Remote (``remote``), every pass goes in ONE request (:mod:`constraintdsl.compare.session`) while the
    estimated work is within ``request_tokens`` (default :data:`~constraintdsl.compare.session.REQUEST_TOKENS`;
    0: always pass by pass), else one request per pass."""
    got = _compare(
        model,
        specs,
        inputs,
        marginal=marginal,
        remote=remote,
        progress=progress,
        concepts=concepts,
        on_warnings=on_warnings,
        ab_score=ab_score,
        baseline=baseline,
        request_tokens=request_tokens,
    )
    assert isinstance(got, Comparison)
    return got


def submit_compare(
    model: Any,
    specs: Sequence[Spec],
    inputs: Inputs,
    *,
    remote: bool | str = True,
    marginal: bool = True,
    progress: Progress | None = None,
    concepts: Mapping[str, Any] | None = None,
    on_warnings: Callable[[Sequence[Diagnostic], Mapping[str, str]], None] | None = None,
    ab_score: str | None = None,
    request_tokens: int | None = None,
) -> CompareJob:
    """:func:`compare`'s passes sent to NDIF as one request without waiting (``cdsl compare --no-wait``);
    :func:`collect_compare` with the same specs, inputs and options brings the comparison back.  A comparison
    beyond one request's budget cannot be sent so (it would take a request per pass): a :class:`UserError`."""
    got = _compare(
        model,
        specs,
        inputs,
        marginal=marginal,
        remote=remote or True,
        progress=progress,
        concepts=concepts,
        on_warnings=on_warnings,
        ab_score=ab_score,
        request_tokens=request_tokens,
        submit=True,
    )
    assert not isinstance(got, Comparison) and got is not None
    return got


def collect_compare(
    model: Any,
    specs: Sequence[Spec],
    inputs: Inputs,
    job: CompareJob,
    *,
    wait: float | None = 0.0,
    marginal: bool = True,
    progress: Progress | None = None,
    concepts: Mapping[str, Any] | None = None,
    ab_score: str | None = None,
    request_tokens: int | None = None,
) -> Comparison | None:
    """The comparison :func:`submit_compare` sent as ``job`` (same specs, inputs and options: its passes are
    planned again here, nothing else is sent), or None while the server is still running it; ``wait``:
    seconds to keep polling (None: until done)."""
    got = _compare(
        model,
        specs,
        inputs,
        marginal=marginal,
        remote=job.host,
        progress=progress,
        concepts=concepts,
        ab_score=ab_score,
        request_tokens=request_tokens,
        collect=(job, wait),
    )
    assert got is None or isinstance(got, Comparison)
    return got


def _compare(
    model: Any,
    specs: Sequence[Spec],
    inputs: Inputs,
    *,
    marginal: bool = True,
    remote: bool | str = False,
    progress: Progress | None = None,
    concepts: Mapping[str, Any] | None = None,
    on_warnings: Callable[[Sequence[Diagnostic], Mapping[str, str]], None] | None = None,
    ab_score: str | None = None,
    baseline: Baseline | None = None,
    request_tokens: int | None = None,
    submit: bool = False,
    collect: tuple[CompareJob, float | None] | None = None,
) -> Comparison | CompareJob | None:
    from constraintdsl.models.loading import model_identity
    from constraintdsl.run.runner import generate_variants

    from . import metrics
    from .ab_pass import (
        ab_passes,
        ab_summary,
        answer_counts,
        check_score,
        item_probabilities,
        run_ab,
        saturation_warning,
    )

    if ab_score is not None:
        inputs = replace(inputs, ab_score=ab_score)
    check_score(inputs.ab_score)
    report = progress or (lambda message, done=0, total=0: None)
    started = time.perf_counter()
    arms, drops = build_arms(model, specs, marginal=marginal, progress=report, concepts=concepts, remote=remote)
    main = [i for i, a in enumerate(arms) if a.main and a.spec is not None]
    warnings, sources = spec_warnings(arms, main)
    if on_warnings is not None and warnings:
        on_warnings(warnings, sources)
    runs, of = _unique(arms)
    ident = model_identity(model)
    key = (ident.id, ident.revision, inputs.digest())
    kept = baseline if baseline is not None and baseline.key == key and baseline.ab is not None else None
    seconds: dict[str, float] = {}
    passes: dict[str, int] = {}
    n_windows, width = (int(x) for x in inputs.corpus.shape)
    n_corpus = -(-n_windows // _windows_per_pass(model, len(runs), width))
    ab_arms = [*main] if kept is not None else [0, *main]
    n_ab = ab_passes(model, inputs.ab, len(ab_arms)) if inputs.ab is not None and ab_arms else 0
    total = n_corpus + n_ab + 2
    done = [0]

    def tick(message: str, at: int = 0) -> None:
        report(message, at, total)

    ab_lp: list[torch.Tensor] | None = None
    ab_counts: torch.Tensor | None = None
    shown = _payloads(arms, [0, *main])
    work = None
    if remote:
        from .session import REQUEST_TOKENS, plan_session

        budget = REQUEST_TOKENS if request_tokens is None else request_tokens
        work = plan_session(
            model,
            corpus_payloads=_payloads(arms, runs),
            corpus=inputs.corpus,
            windows_per_pass=_windows_per_pass(model, len(runs), width),
            prompt_tokens=inputs.prompt_tokens,
            ab=inputs.ab,
            ab_payloads=_payloads(arms, ab_arms),
            shown_payloads=shown,
            prompts=inputs.prompts,
            max_new_tokens=inputs.max_new_tokens,
            reads=[(art, layer) for _, art, layer in _reads(arms, main)],
        )
        if work.tokens > budget:
            if submit or collect is not None:
                raise UserError(
                    "--no-wait",
                    f"this comparison's work ({work.tokens:,} tokens forwarded) exceeds one request's budget "
                    f"({budget:,}), so it would go pass by pass, one request each, and cannot be left to run",
                    "run it without --no-wait, or raise --request-tokens",
                )
            report(
                f"the comparison's work ({work.tokens:,} tokens) exceeds one request's budget ({budget:,}): "
                "sending it pass by pass",
                0,
                total,
            )
            work = None
    elif submit or collect is not None:
        raise UserError("--no-wait", "--no-wait needs --remote (only a server can hold a job)", None)
    if work is not None:
        from .session import collect_session, run_session, submit_session

        def status(line: str) -> None:
            report(line, 0, total)

        if submit:
            report(f"submitting every pass ({sum(work.passes.values())}) as one request", 0, total)
            return submit_session(model, work, remote, progress=status)
        if collect is not None:
            maybe = collect_session(model, work, collect[0], wait=collect[1], progress=status)
            if maybe is None:
                return None
            got = maybe
        else:
            report(f"sending every pass ({sum(work.passes.values())}) as one request", 0, total)
            got = run_session(model, work, remote, progress=status)
        passes.update(work.passes)
        seconds["request"] = got.seconds
        sums = [_Sums(corpus=corpus, moments=moments) for corpus, moments in got.corpus]
        if inputs.ab is not None:
            ab_lp, ab_counts = got.ab, answer_counts(model, inputs.ab)
        gens = got.generations
        reads = _reads(arms, main)
        effects = _effect_rows(reads, got.readouts, [0, *main], len(inputs.prompts))
        requests = 1
    else:
        sums, passes["corpus"], seconds["corpus"] = _corpus(model, arms, runs, inputs, remote, tick)
        done[0] = n_corpus

        if inputs.ab is not None:

            def ab_tick(message: str) -> None:
                tick(message, done[0])
                done[0] += 1

            if ab_arms:
                ab_lp, ab_counts, passes["ab"], seconds["ab"] = run_ab(
                    model, _payloads(arms, ab_arms), inputs.ab, remote=remote, tick=ab_tick
                )

        tick(
            f"generating {inputs.max_new_tokens} tokens for {len(inputs.prompts)} prompt(s) × {len(main) + 1} arms",
            total - 2,
        )
        gens = generate_variants(
            model,
            shown,
            list(inputs.prompts),
            max_new_tokens=inputs.max_new_tokens,
            remote=remote,
        )
        seconds["generate"] = gens[0].seconds
        passes["generate"] = 1

        tick("reading concepts on the generated text", total - 1)
        t0 = time.perf_counter()
        effects, passes["readout"] = _effects(model, arms, main, gens, remote)
        seconds["readout"] = time.perf_counter() - t0
        requests = sum(passes.values()) if remote else 0
    if inputs.ab is not None:
        if not ab_arms:
            assert kept is not None and kept.ab_counts is not None
            ab_lp, ab_counts, passes["ab"] = [], kept.ab_counts, 0
        assert ab_lp is not None
        if kept is not None:
            assert kept.ab is not None
            ab_lp = [kept.ab, *ab_lp]
        elif baseline is not None:
            baseline.key, baseline.ab, baseline.ab_counts = key, ab_lp[0], ab_counts

    base = sums[of[0]]
    assert base.corpus is not None

    def tax_of(arm: int) -> dict[str, float]:
        s = sums[of[arm]].corpus
        assert s is not None and base.corpus is not None
        return metrics.tax(base.corpus, s)

    def pr_of(arm: int) -> float:
        moments, h = sums[of[arm]].moments, sums[of[arm]].hidden
        if moments is not None:
            return metrics.participation_ratio_of(*(float(x) for x in moments))
        assert h is not None
        return metrics.participation_ratio(*h)

    rows: list[Row] = []
    base_pr = pr_of(0)
    probs: list[torch.Tensor] = []
    if inputs.ab is not None and ab_lp is not None and ab_counts is not None:
        match = torch.tensor([item.match == "a" for item in inputs.ab.items])
        probs = [item_probabilities(lp, ab_counts, match, inputs.ab_score) for lp in ab_lp]
    for k, a in enumerate([0, *main]):
        arm = arms[a]
        tax = tax_of(a)
        row = Row(
            label=arm.label,
            key=arm.key,
            source=arm.source,
            variant=arm.variant,
            spec_text=arm.spec.to_dsl() if arm.spec is not None else "",
            tax=tax,
            dof={"participation_ratio": pr_of(a), "baseline_participation_ratio": base_pr},
            effect=effects.get(a, {}),
            generations=list(gens[k].texts),
        )
        if probs and inputs.ab is not None:
            row.ab = ab_summary(
                probs[k], probs[0], behavior=inputs.ab.behavior, score=inputs.ab_score, fmt=inputs.ab.format
            )
        if arm.plan is not None:
            row.load = _statement_load(arm.plan, gens[k].telemetry)
            assert arm.spec is not None
            for i, op in enumerate(arm.spec.constraints):
                if (a, i) not in drops:
                    continue
                rest = tax_of(drops[(a, i)])
                row.marginal.append(
                    {
                        "statement": row.load[i]["statement"] if i < len(row.load) else op.keyword,
                        "line": op.span.line,
                        "delta_nll": tax["delta_nll"] - rest["delta_nll"],
                        "kl": tax["kl"] - rest["kl"],
                    }
                )
        rows.append(row)
    report("done", total, total)
    seconds["total"] = time.perf_counter() - started
    arms_shown = len(main) + 1
    sequences = {"corpus": len(runs) * n_windows, "generate": arms_shown * len(inputs.prompts)}
    if inputs.ab is not None:
        sequences["ab"] = len(ab_arms) * 2 * len(inputs.ab.items)
    sequences["readout"] = arms_shown * len(inputs.prompts) if passes["readout"] else 0
    ident = model_identity(model)
    warning = saturation_warning(rows[0].ab, inputs.ab.path) if inputs.ab is not None else None
    return Comparison(
        model=ident.id,
        revision=ident.revision,
        inputs_hash=inputs.digest(),
        inputs=inputs.describe(),
        rows=tuple(rows),
        prompts=inputs.prompts,
        passes=passes,
        seconds=seconds,
        warnings=tuple(warnings) + ((warning,) if warning is not None else ()),
        sequences=sequences,
        requests=requests,
    )


def spec_warnings(arms: Sequence[Arm], main: Sequence[int]) -> tuple[list[Diagnostic], dict[str, str]]:
    """The compiled main arms' warnings, merged over each spec's variants, and the source texts they point into."""
    from constraintdsl.compiler.lint import merge_variant_warnings
    from constraintdsl.lang.loading import spec_sources

    by_spec: dict[str | None, list[tuple[str, Sequence[Diagnostic]]]] = {}
    sources: dict[str, str] = {}
    for a in main:
        arm = arms[a]
        if arm.plan is None or arm.spec is None:
            continue
        by_spec.setdefault(arm.source, []).append((arm.variant, arm.plan.warnings))
        sources.update(spec_sources(arm.spec))
    merged = [d for per_variant in by_spec.values() for d in merge_variant_warnings(per_variant)]
    return merged, sources
