"""``cdsl compare`` and ``cdsl runs list|show``: constraint sets compared on the same inputs, and the run store.

Each verb's work is a function that returns an exit code (progress to ``err``, results to ``out``);
:func:`register` adds their command-line parsing to the ``cdsl`` app.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from constraintdsl.errors import Diagnostic, UserError
from constraintdsl.lang.loading import load

from .common import EXIT_FAILED, EXIT_OK, Dtype, StrictOpt, emit_warnings, save_job

if TYPE_CHECKING:
    from constraintdsl.compare.checks import CheckResult
    from constraintdsl.compare.comparison import Comparison, Inputs, Row
    from constraintdsl.compare.session import CompareJob
    from constraintdsl.compare.store import RunRecord, RunStore
    from constraintdsl.errors import Diagnostic
    from constraintdsl.lang.spec import Spec

__all__ = [
    "CompareOptions",
    "compare_command",
    "options_model",
    "register",
    "runs_list",
    "runs_show",
    "shipped",
    "with_spec_data",
]

_SHIPPED = {
    "prompts": ("prompts", "compare.txt"),
    "corpus": ("corpus", "neutral.txt"),
}


def shipped(kind: str) -> Path:
    """A data file the project ships (``prompts``: the comparison prompts, ``corpus``: the neutral
    reference corpus): inside the installed package, or in the source tree's ``specs/``."""
    folder, name = _SHIPPED[kind]
    here = Path(__file__).resolve().parents[1]  # the package folder
    for candidate in (here / "data" / folder / name, here.parent / "specs" / folder / name):
        if candidate.is_file():
            return candidate
    raise UserError(f"--{kind}", f"the shipped {kind} file is missing from this installation", f"pass --{kind} FILE")


@dataclass(frozen=True)
class CompareOptions:
    """Everything ``cdsl compare`` was asked, after parsing."""

    specs: tuple[str, ...]
    prompts: str | None = None
    prompt_limit: int | None = None
    corpus: str | None = None
    corpus_tokens: int | None = 8192
    window: int = 128
    ab: str | None = None
    ab_score: str = "mean"
    model: str | None = None
    dtype: str = "float32"
    max_new_tokens: int = 32
    marginal: bool = True
    report: str | None = None
    effect: str | None = None
    fmt: str = "text"
    store: str | None = None
    record: bool = True
    from_store: bool = False
    remote: bool = False
    host: str | None = None
    strict: bool = False
    junit: str | None = None
    no_wait: bool = False
    request_tokens: int | None = None


class _StrictStop(Exception):
    """``--strict`` turned the specs' warnings into errors: stop before any pass."""


class _Bar:
    """A progress bar over a comparison's passes on ``err`` (compile messages before it as plain lines)."""

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self.bar: Any = None

    def __call__(self, message: str, done: int = 0, total: int = 0) -> None:
        from tqdm.auto import tqdm

        if total == 0:
            self.err.write(f"  {message}\n")
            self.err.flush()
            return
        if self.bar is None:
            self.bar = tqdm(total=total, file=self.err, unit="pass", dynamic_ncols=True, leave=True)
        self.bar.set_description_str(message[:60])
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()


@dataclass(frozen=True)
class _Read:
    """The comparison's input files, read and checked before any model work."""

    prompts: tuple[str, ...]
    documents: list[str]
    ab: Any  # ABSet | None


def _read_inputs(opts: CompareOptions) -> _Read:
    from constraintdsl.compare.ab import load_ab
    from constraintdsl.compare.comparison import read_corpus

    from .common import read_prompts

    prompts_path = opts.prompts or str(shipped("prompts"))
    prompts = read_prompts(prompts_path)
    if opts.prompt_limit is not None:
        prompts = prompts[: opts.prompt_limit]
    if not prompts:
        raise UserError(prompts_path, "no prompts to generate from", "write one prompt per line")
    documents = read_corpus(opts.corpus or str(shipped("corpus")))
    ab = load_ab(opts.ab) if opts.ab is not None else None
    return _Read(tuple(prompts), documents, ab)


def _inputs(opts: CompareOptions, read: _Read, tokenizer: Any) -> Inputs:
    from constraintdsl.compare.comparison import Inputs, corpus_windows

    windows, total = corpus_windows(tokenizer, read.documents, window=opts.window, max_tokens=opts.corpus_tokens)
    # the shipped files are named as such, not by where this installation keeps them
    sources = [
        ("prompts", opts.prompts or "shipped: prompts/compare.txt"),
        ("corpus", opts.corpus or "shipped: corpus/neutral.txt"),
    ]
    if opts.ab is not None:
        sources.append(("ab", opts.ab))
    return Inputs(
        prompts=read.prompts,
        corpus=windows,
        corpus_tokens_total=total,
        ab=read.ab,
        max_new_tokens=opts.max_new_tokens,
        sources=tuple(sources),
        ab_score=opts.ab_score,
    )


def _specs(paths: tuple[str, ...]) -> list[Spec]:
    from constraintdsl.lang.variants import refuse_continuous

    if not paths:
        raise UserError("SPEC", "give at least one spec file to compare with the baseline", None)
    specs = [load(p) for p in paths]
    for spec in specs:
        refuse_continuous(spec, "`cdsl compare`")
    return specs


def options_model(opts: CompareOptions, spec: Spec, err: TextIO, *, lazy: bool) -> Any:
    """The model ``opts`` name (else ``spec``'s, else the embedded one), read without its weights when
    ``lazy`` (a remote comparison or tuning: the server holds them)."""
    from constraintdsl.models.loading import DEFAULT_MODEL, check_model_name, load_lazy, load_model

    chosen = opts.model or spec.model or DEFAULT_MODEL
    check_model_name(chosen)
    if lazy:
        err.write(f"reading model {chosen} ({opts.dtype}) without its weights…\n")
        return load_lazy(chosen, dtype=opts.dtype)
    err.write(f"loading model {chosen} ({opts.dtype})…\n")
    return load_model(chosen, dtype=opts.dtype)


def with_spec_data(opts: CompareOptions, specs: Sequence[Spec]) -> CompareOptions:
    """``opts`` with the prompts, corpus and A/B set the specs name (``data`` statements) where no flag gives
    them; specs that name different files for one kind are refused unless the flag chooses."""
    from dataclasses import replace

    from constraintdsl.errors import SpecError
    from constraintdsl.lang.loading import spec_sources

    changes: dict[str, str] = {}
    for kind, flag in (("prompts", "--prompts"), ("corpus", "--corpus"), ("ab", "--ab")):
        if getattr(opts, kind) is not None:
            continue
        named = [
            (str(Path(spec.path).parent / d.path) if not Path(d.path).is_absolute() else d.path, d, spec)
            for spec in specs
            for d in spec.data
            if d.kind == kind
        ]
        paths = {Path(p).resolve() for p, _, _ in named}
        if len(paths) > 1:
            first, other = named[0], next(n for n in named if Path(n[0]).resolve() != Path(named[0][0]).resolve())
            raise SpecError(
                Diagnostic(
                    other[1].span,
                    f"the specs name different {kind} files: {other[0]} here, {first[0]} at {first[1].span}",
                    f"compare them on one: pass {flag} FILE",
                ),
                {**spec_sources(first[2]), **spec_sources(other[2])},
            )
        if named:
            changes[kind] = named[0][0]
    return replace(opts, **changes) if changes else opts  # type: ignore[arg-type]


def _open_store(path: str | None) -> RunStore:
    from constraintdsl.compare.store import RunStore

    return RunStore(path)


def _preflight(opts: CompareOptions, specs: list[Spec]) -> _Read:
    """Everything that can be checked without the model, before it is loaded: every spec's concept files
    and pair sets, the prompts, corpus and A/B set, ``--effect``, ``--corpus-tokens``, the host, and that
    the report folder and the store can be written."""
    from constraintdsl.compiler.preflight import check_files, check_host
    from constraintdsl.errors import SpecError

    if opts.corpus_tokens is not None and opts.corpus_tokens < opts.window:
        raise UserError(
            "--corpus-tokens",
            f"{opts.corpus_tokens} tokens make no window of {opts.window} (--window)",
            f"give 0 (the whole corpus) or at least {opts.window}",
        )
    problems: list[SpecError] = []
    for spec in specs:
        try:
            check_files(spec)
        except SpecError as e:
            problems.append(e)
    if problems:
        raise SpecError(
            [d for e in problems for d in e.diagnostics], {k: v for e in problems for k, v in e.sources.items()}
        )
    _check_effect(opts, specs)
    from constraintdsl.compare.checks import check_junit_path, require_measures

    require_measures(specs, ab=opts.ab is not None)
    if opts.junit is not None:
        check_junit_path(opts.junit)
    if opts.host is not None:
        check_host(opts.host)
    read = _read_inputs(opts)
    if opts.report is not None:
        from constraintdsl.compare.report import REPORT_FILES
        from constraintdsl.files import check_output_dir

        check_output_dir(opts.report, "--report", REPORT_FILES)
    if opts.record or opts.from_store:
        _open_store(opts.store).check(writable=opts.record and not opts.from_store, flag="--store")
    return read


def compare_command(
    opts: CompareOptions, *, out: TextIO, err: TextIO, collect: tuple[CompareJob, float] | None = None
) -> int:
    """``cdsl compare``: the baseline and every spec/variant on the same inputs; tables, JSON, report, store.

    Every input and output location is checked before the model is loaded (see :func:`_preflight`).  With
    ``opts.no_wait`` the comparison is only submitted (one NDIF request): its id goes to ``out`` and
    ``cdsl job ID`` (``collect``: the job and seconds to wait) brings it back, reported and recorded as here."""
    from constraintdsl.compare.comparison import collect_compare, compare, submit_compare

    target: bool | str = (opts.host or True) if opts.remote or opts.host else False
    if opts.no_wait and not target:
        raise UserError("--no-wait", "--no-wait needs --remote or --host (only a server can hold a job)", None)
    if opts.no_wait and opts.from_store:
        raise UserError("--no-wait", "--from-store runs nothing, so there is nothing to leave running", None)
    specs = _specs(opts.specs)
    opts = with_spec_data(opts, specs)
    read = _preflight(opts, specs)
    # remote, or rebuilt from the store: nothing runs here, so the weights are not read
    model = options_model(opts, specs[0], err, lazy=bool(target) or opts.from_store)
    inputs = _inputs(opts, read, model.tokenizer)
    info = inputs.describe()
    err.write(
        f"inputs: {info['prompts']} prompts, corpus {info['corpus_tokens_used']} of {info['corpus_tokens_total']} "
        f"tokens (--corpus-tokens), A/B items {info['ab_items']}"
        + (f" ({opts.ab_score} scoring)" if info["ab_items"] else "")
        + "\n"
    )
    emitted: list[Diagnostic] = []
    sources: dict[str, str] = {}
    if opts.from_store:
        comparison = _from_store(opts, specs, model, inputs)
    else:

        def on_warnings(warnings: Sequence[Diagnostic], texts: Mapping[str, str]) -> None:
            # the specs' warnings, once compiled: before any pass, so --strict stops there
            emitted.extend(warnings)
            sources.update(texts)
            if emit_warnings(warnings, texts, err=err, strict=opts.strict) != EXIT_OK:
                raise _StrictStop

        try:
            if opts.no_wait:
                job = submit_compare(
                    model,
                    specs,
                    inputs,
                    remote=target,
                    marginal=opts.marginal,
                    progress=_Bar(err),
                    on_warnings=on_warnings,
                    request_tokens=opts.request_tokens,
                )
                save_job(job.job_id, {"kind": "compare", "job": job.to_dict(), "options": _portable(opts)})
                out.write(job.job_id + "\n")
                err.write(f"submitted; fetch the comparison with: cdsl job {job.job_id}\n")
                return EXIT_OK
            if collect is not None:
                collected = collect_compare(
                    model,
                    specs,
                    inputs,
                    collect[0],
                    wait=collect[1],
                    marginal=opts.marginal,
                    progress=_Bar(err),
                    request_tokens=opts.request_tokens,
                )
                if collected is None:
                    err.write(f"job {collect[0].job_id} is still running; try again later (or --wait SECONDS)\n")
                    return EXIT_FAILED
                comparison = collected
            else:
                comparison = compare(
                    model,
                    specs,
                    inputs,
                    marginal=opts.marginal,
                    remote=target,
                    progress=_Bar(err),
                    on_warnings=on_warnings,
                    request_tokens=opts.request_tokens,
                )
        except _StrictStop:
            return EXIT_FAILED
        if opts.record:
            comparison = _record(opts, comparison)
    # warnings found while measuring (about an input file, say) come with the result
    later = [w for w in comparison.warnings if w not in emitted]
    if emit_warnings(later, _texts(later, sources), err=err, strict=opts.strict) != EXIT_OK:
        return EXIT_FAILED
    from constraintdsl.compare.checks import evaluate_comparison

    results = evaluate_comparison(specs, comparison)
    _emit(opts, comparison, out, err, results)
    return _assert(opts, specs, results, comparison, out, err)


def collect_command(record: Mapping[str, Any], *, wait: float, fmt: str, out: TextIO, err: TextIO) -> int:
    """``cdsl job ID`` for a comparison sent with ``cdsl compare --no-wait``: the options recorded then, the
    passes planned again (nothing else is sent), the result reported, recorded and asserted as ``cdsl compare``
    does; exit 1 while it is still running."""
    from constraintdsl.compare.session import CompareJob

    options = dict(record["options"])
    options["specs"] = tuple(options["specs"])
    opts = replace(CompareOptions(**options), no_wait=False, fmt="json" if fmt == "json" else options["fmt"])
    return compare_command(opts, out=out, err=err, collect=(CompareJob.from_dict(record["job"]), wait))


def _portable(opts: CompareOptions) -> dict[str, Any]:
    """``opts`` as JSON-able data whose file paths hold from any working folder (for ``cdsl job``)."""
    data = asdict(opts)
    for name in ("prompts", "corpus", "ab", "report", "store", "junit"):
        if data[name] is not None:
            data[name] = str(Path(data[name]).absolute())
    data["specs"] = [str(Path(p).absolute()) for p in opts.specs]
    return data


def _assert(
    opts: CompareOptions,
    specs: list[Spec],
    results: Sequence[CheckResult],
    comparison: Comparison,
    out: TextIO,
    err: TextIO,
) -> int:
    """The specs' budgets and targets as assertions: a table of results, each failure rendered as an error
    at its statement, ``--junit`` written; exit 1 when one fails."""
    from constraintdsl.atomic import write_atomic
    from constraintdsl.compare.checks import junit_xml
    from constraintdsl.errors import render
    from constraintdsl.lang.loading import spec_sources
    from constraintdsl.tables import text_table

    if opts.junit is not None:
        write_atomic(opts.junit, junit_xml(results, seconds=comparison.seconds.get("total", 0.0)), where="--junit")
        err.write(f"wrote {opts.junit} ({len(results)} checks)\n")
    if not results:
        return EXIT_OK
    if opts.fmt == "text":
        rows = [[r.arm, r.statement, "ok" if r.passed else "FAIL", r.why, f"line {r.span.line}"] for r in results]
        out.write(
            "\nbudgets and targets:\n" + text_table(["arm", "statement", "result", "measured", "where"], rows) + "\n"
        )
    failed = [r for r in results if not r.passed]
    if not failed:
        return EXIT_OK
    sources: dict[str, str] = {}
    for spec in specs:
        sources.update(spec_sources(spec))
    err.write(render([r.diagnostic() for r in failed], sources) + "\n")
    err.write(f"{len(failed)} of {len(results)} budget/target checks failed\n")
    return EXIT_FAILED


def _texts(warnings: Sequence[Diagnostic], known: Mapping[str, str]) -> dict[str, str]:
    """Source texts to render ``warnings`` with: those known, and the files they point into when readable."""
    from constraintdsl.lang.loading import read_text

    texts = dict(known)
    for w in warnings:
        if w.span.path not in texts:
            with contextlib.suppress(UserError, OSError):
                texts[w.span.path] = read_text(w.span.path)
    return texts


def _check_effect(opts: CompareOptions, specs: list[Spec]) -> None:
    """Refuse an ``--effect`` that no run could produce, before anything runs."""
    if opts.effect is None:
        return
    if opts.effect == "ab":
        if opts.ab is None:
            raise UserError("--effect", "--effect ab needs an A/B set", "add --ab FILE")
        return
    used = sorted({op.concept for spec in specs for op in spec.constraints})
    if opts.effect not in used:
        from constraintdsl.errors import did_you_mean

        raise UserError(
            "--effect",
            f"no spec constrains a concept named '{opts.effect}'",
            did_you_mean(opts.effect, [*used, "ab"]) or f"choose one of: {', '.join([*used, 'ab'])}",
        )


def _record(opts: CompareOptions, comparison: Comparison) -> Comparison:
    from dataclasses import replace

    store = _open_store(opts.store)
    record = store.record(
        command="compare",
        model=comparison.model,
        revision=comparison.revision,
        inputs_hash=comparison.inputs_hash,
        settings={
            "inputs": comparison.inputs,
            "forward_passes": comparison.passes,
            "sequences": comparison.sequences,
            "seconds": comparison.seconds,
            "prompts": list(comparison.prompts),
        },
        results=[
            {
                "label": r.label,
                "spec_hash": r.key,
                "spec_path": r.source or "",
                "spec_text": r.spec_text,
                "metrics": r.to_dict(),
            }
            for r in comparison.rows
        ],
    )
    return replace(comparison, run_id=record.id)


def _from_store(opts: CompareOptions, specs: list[Spec], model: Any, inputs: Inputs) -> Comparison:
    """Rebuild a comparison from recorded results: the newest result of each spec/variant for this
    model and these inputs; nothing runs."""
    from constraintdsl.compare.comparison import Comparison, Row, spec_arms
    from constraintdsl.models.loading import model_identity

    ident = model_identity(model)
    digest = inputs.digest()
    store = _open_store(opts.store)
    wanted = [("baseline", "baseline"), *((arm.label, arm.key) for arm in spec_arms(specs))]
    rows: list[Row] = []
    runs: list[str] = []
    missing: list[str] = []
    settings: dict[str, Any] = {}
    for label, key in wanted:
        found = store.latest_result(key, ident.id, digest, revision=ident.revision)
        if found is None:
            missing.append(label)
            continue
        run, result = found
        rows.append(Row.from_dict(result.metrics))
        settings = settings or run.settings
        if run.id not in runs:
            runs.append(run.id)
    if missing:
        raise UserError(
            "--from-store",
            f"no recorded result for {', '.join(missing)} with model {ident.id} and inputs {digest[:19]}…",
            "run the comparison once without --from-store (same inputs and options), then rebuild it",
        )
    return Comparison(
        model=ident.id,
        revision=ident.revision,
        inputs_hash=digest,
        inputs=inputs.describe(),
        rows=tuple(rows),
        prompts=inputs.prompts,
        passes=dict(settings.get("forward_passes", {})),
        sequences=dict(settings.get("sequences", {})),
        seconds=dict(settings.get("seconds", {})),
        run_id=",".join(runs),
        warnings=_warnings(rows, inputs.ab.path if inputs.ab is not None else None),
    )


def _warnings(rows: list[Row] | tuple[Row, ...], ab_path: str | None) -> tuple[Diagnostic, ...]:
    """The warnings a comparison's rows call for (recomputed for a recorded run): the A/B saturation one."""
    from constraintdsl.compare.ab_pass import saturation_warning

    if not rows or ab_path is None:
        return ()
    warning = saturation_warning(rows[0].ab, ab_path)
    return (warning,) if warning is not None else ()


def _emit(
    opts: CompareOptions, comparison: Comparison, out: TextIO, err: TextIO, results: Sequence[CheckResult] = ()
) -> None:
    from constraintdsl.compare.report import ab_table, load_table, summary_table, write_report

    # the comparison's warnings were rendered by compare_command (once, with --strict applied)
    if opts.report is not None:
        command = "cdsl compare " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["compare"] else ""
        path = write_report(comparison, opts.report, concept=opts.effect, command=command)
        err.write(f"wrote report {path}/report.md\n")
    if opts.fmt == "json":
        data = comparison.to_dict()
        data["checks"] = [r.to_dict() for r in results]
        out.write(json.dumps(data, indent=2, allow_nan=True) + "\n")
        return
    out.write(summary_table(comparison) + "\n\n")
    if comparison.rows[0].ab is not None:
        out.write(ab_table(comparison) + "\n\n")
    out.write(load_table(comparison) + "\n")
    p = comparison.passes
    out.write(
        f"\nforward passes: {', '.join(f'{k} {v}' for k, v in p.items())}; "
        f"{comparison.seconds.get('total', math.nan):.1f} s"
        + (f"; run {comparison.run_id}" if comparison.run_id else "")
        + "\n"
    )


def runs_list(store_path: str | None, *, limit: int, fmt: str, out: TextIO) -> int:
    """``cdsl runs list``: recorded runs, newest first."""
    from constraintdsl.tables import text_table

    records = _open_store(store_path).list(limit=limit)
    if fmt == "json":
        out.write(json.dumps([_run_dict(r) for r in records], indent=2, allow_nan=True) + "\n")
        return EXIT_OK
    if not records:
        out.write("no runs recorded\n")
        return EXIT_OK
    # a terminal gets a short inputs hash; a pipe or a file the whole one (machine-readable lines are never cut)
    short = getattr(out, "isatty", lambda: False)()
    body = [
        [
            r.id,
            _when(r.created),
            r.model,
            r.inputs_hash[:19] if short else r.inputs_hash,
            ", ".join(x.label for x in r.results[1:]),
        ]
        for r in records
    ]
    out.write(text_table(["id", "created", "model", "inputs", "specs"], body) + "\n")
    return EXIT_OK


def runs_show(store_path: str | None, run_id: str, *, fmt: str, out: TextIO) -> int:
    """``cdsl runs show ID``: one recorded run's table (or JSON)."""
    from constraintdsl.compare.comparison import Comparison, Row
    from constraintdsl.compare.report import ab_table, load_table, summary_table
    from constraintdsl.errors import render

    record = _open_store(store_path).get(run_id)
    if fmt == "json":
        out.write(json.dumps(_run_dict(record), indent=2, allow_nan=True) + "\n")
        return EXIT_OK
    settings = record.settings
    rows = tuple(Row.from_dict(r.metrics) for r in record.results)
    ab_path = dict(settings.get("inputs", {}).get("sources", {})).get("ab")
    comparison = Comparison(
        model=record.model,
        revision=record.revision,
        inputs_hash=record.inputs_hash,
        inputs=dict(settings.get("inputs", {})),
        rows=rows,
        prompts=tuple(settings.get("prompts", ())),
        passes=dict(settings.get("forward_passes", {})),
        sequences=dict(settings.get("sequences", {})),
        seconds=dict(settings.get("seconds", {})),
        run_id=record.id,
        warnings=_warnings(rows, ab_path),
    )
    out.write(f"run {record.id}  {_when(record.created)}  model {record.model}  inputs {record.inputs_hash}\n\n")
    out.write(summary_table(comparison) + "\n\n")
    if rows and rows[0].ab is not None:
        out.write(ab_table(comparison) + "\n\n")
    out.write(load_table(comparison) + "\n")
    if comparison.warnings:
        out.write("\n" + render(comparison.warnings) + "\n")
    return EXIT_OK if record.results else EXIT_FAILED


def _when(created: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(created, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _run_dict(record: RunRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "created": record.created,
        "command": record.command,
        "model": record.model,
        "revision": record.revision,
        "inputs_hash": record.inputs_hash,
        "settings": record.settings,
        "tool_version": record.tool_version,
        "results": [
            {"label": r.label, "spec_hash": r.spec_hash, "spec_path": r.spec_path, "metrics": r.metrics}
            for r in record.results
        ],
    }


# -- the command line ------------------------------------------------------------------------

runs_app = typer.Typer(help="Recorded comparison runs (the local run store).", no_args_is_help=True)


class ABScore(str, Enum):
    mean = "mean"
    sum = "sum"


# The inputs and run options `cdsl compare` and `cdsl tune` share.
PromptsOpt = Annotated[
    str | None, typer.Option("--prompts", help="prompt file (default: the shipped comparison prompts)")
]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="use only the first N prompts")]
CorpusOpt = Annotated[
    str | None, typer.Option("--corpus", help="reference corpus (default: the shipped neutral corpus)")
]
CorpusTokensOpt = Annotated[
    int,
    typer.Option("--corpus-tokens", min=0, help="use the corpus's first N tokens (0: all; else at least --window)"),
]
WindowOpt = Annotated[int, typer.Option("--window", min=2, max=8192, help="tokens per corpus window")]
ABOpt = Annotated[str | None, typer.Option("--ab", help="A/B behavior set (YAML)")]
ABScoreOpt = Annotated[
    ABScore,
    typer.Option("--ab-score", help="score an A/B answer by the mean log-probability of its tokens, or by their sum"),
]
MaxNewTokensOpt = Annotated[int, typer.Option("--max-new-tokens", min=1, max=4096)]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of tables")]
HostOpt = Annotated[str | None, typer.Option("--host", help="NDIF server URL (implies --remote)")]
RequestTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--request-tokens",
        min=0,
        help="remote: the most tokens (forwarded over every pass and arm) sent as ONE request; more goes pass by "
        "pass (default 2,000,000; 0: always pass by pass)",
    ),
]


StoreOpt = Annotated[
    str | None,
    typer.Option("--store", help="run store file (default: $CONSTRAINTDSL_STORE or runs.sqlite in the cache dir)"),
]


def _compare_cmd(
    specs: Annotated[list[str], typer.Argument(help="spec files to compare with the baseline", metavar="SPEC...")],
    prompts: PromptsOpt = None,
    limit: LimitOpt = None,
    corpus: CorpusOpt = None,
    corpus_tokens: CorpusTokensOpt = 8192,
    window: WindowOpt = 128,
    ab: ABOpt = None,
    ab_score: ABScoreOpt = ABScore.mean,
    model: Annotated[
        str | None, typer.Option("--model", help="smollm2, a Hugging Face id or a local folder (default: the spec's)")
    ] = None,
    dtype: Annotated[Dtype, typer.Option("--dtype", help="model weights dtype")] = Dtype.float32,
    max_new_tokens: MaxNewTokensOpt = 32,
    no_marginal: Annotated[
        bool, typer.Option("--no-marginal", help="skip the leave-one-out runs behind marginal tax")
    ] = False,
    report: Annotated[
        str | None, typer.Option("--report", help="write a Markdown report with PNG plots into this folder")
    ] = None,
    effect: Annotated[
        str | None,
        typer.Option(
            "--effect",
            help="the frontier's effect axis: a concept's readout shift, or 'ab' (default: ab with --ab, else "
            "the first concept)",
        ),
    ] = None,
    json_: JsonOpt = False,
    store: StoreOpt = None,
    no_store: Annotated[bool, typer.Option("--no-store", help="do not record this run in the store")] = False,
    from_store: Annotated[
        bool, typer.Option("--from-store", help="rebuild from recorded results; run nothing")
    ] = False,
    remote: Annotated[bool, typer.Option("--remote", help="run on NDIF (host: --host, NDIF_HOST or config)")] = False,
    host: HostOpt = None,
    strict: StrictOpt = False,
    junit: Annotated[
        str | None,
        typer.Option("--junit", help="write every budget and target's result as JUnit XML (for CI) to this file"),
    ] = None,
    no_wait: Annotated[
        bool,
        typer.Option("--no-wait", help="submit the remote comparison as one request, print its job id and exit"),
    ] = False,
    request_tokens: RequestTokensOpt = None,
) -> None:
    """Run the baseline and every spec/variant on the same inputs, batched, and report effect, tax,
    load, marginal tax and degrees of freedom.  Every `budget` and `target` of the specs is asserted on
    what was measured: exit 1 when one fails."""
    opts = CompareOptions(
        specs=tuple(specs),
        prompts=prompts,
        prompt_limit=limit,
        corpus=corpus,
        corpus_tokens=corpus_tokens or None,
        window=window,
        ab=ab,
        ab_score=ab_score.value,
        model=model,
        dtype=dtype.value,
        max_new_tokens=max_new_tokens,
        marginal=not no_marginal,
        report=report,
        effect=effect,
        fmt="json" if json_ else "text",
        store=store,
        record=not no_store,
        from_store=from_store,
        remote=remote,
        host=host,
        strict=strict,
        junit=junit,
        no_wait=no_wait,
        request_tokens=request_tokens,
    )
    raise typer.Exit(compare_command(opts, out=sys.stdout, err=sys.stderr))


@runs_app.command("list")
def _runs_list_cmd(
    store: StoreOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="at most this many runs")] = 50,
    json_: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List recorded runs, newest first."""

    raise typer.Exit(runs_list(store, limit=limit, fmt="json" if json_ else "text", out=sys.stdout))


@runs_app.command("show")
def _runs_show_cmd(
    run_id: Annotated[str, typer.Argument(help="a run id (or a unique prefix)", metavar="ID")],
    store: StoreOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show one recorded run."""

    raise typer.Exit(runs_show(store, run_id, fmt="json" if json_ else "text", out=sys.stdout))


def register(app: typer.Typer) -> None:
    """Add ``compare`` and ``runs list|show`` to the ``cdsl`` app."""
    app.command("compare")(_compare_cmd)
    app.add_typer(runs_app, name="runs")
