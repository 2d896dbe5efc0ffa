"""What ``cdsl compare`` and ``cdsl runs`` do, apart from argument parsing.

Each function returns an exit code; progress goes to ``err``, results to ``out``.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .commands import EXIT_FAILED, EXIT_OK
from .errors import UserError
from .load import load

if TYPE_CHECKING:
    from .compare import Comparison, Inputs, Row
    from .errors import Diagnostic
    from .spec import Spec
    from .store import RunRecord, RunStore

__all__ = ["CompareOptions", "compare_command", "runs_list", "runs_show", "shipped"]

_SHIPPED = {
    "prompts": ("prompts", "compare.txt"),
    "corpus": ("corpus", "neutral.txt"),
}


def shipped(kind: str) -> Path:
    """A data file the project ships (``prompts``: the comparison prompts, ``corpus``: the neutral
    reference corpus): inside the installed package, or in the source tree's ``specs/``."""
    folder, name = _SHIPPED[kind]
    here = Path(__file__).resolve().parent
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


def _inputs(opts: CompareOptions, tokenizer: Any) -> Inputs:
    from .ab import load_ab
    from .compare import Inputs, corpus_windows, read_corpus
    from .execute import read_prompts

    prompts_path = opts.prompts or str(shipped("prompts"))
    prompts = read_prompts(prompts_path)
    if opts.prompt_limit is not None:
        prompts = prompts[: opts.prompt_limit]
    if not prompts:
        raise UserError(prompts_path, "no prompts to generate from", "write one prompt per line")
    corpus_path = opts.corpus or str(shipped("corpus"))
    windows, total = corpus_windows(
        tokenizer, read_corpus(corpus_path), window=opts.window, max_tokens=opts.corpus_tokens
    )
    # the shipped files are named as such, not by where this installation keeps them
    sources = [
        ("prompts", opts.prompts or "shipped: prompts/compare.txt"),
        ("corpus", opts.corpus or "shipped: corpus/neutral.txt"),
    ]
    ab = None
    if opts.ab is not None:
        ab = load_ab(opts.ab)
        sources.append(("ab", opts.ab))
    return Inputs(
        prompts=tuple(prompts),
        corpus=windows,
        corpus_tokens_total=total,
        ab=ab,
        max_new_tokens=opts.max_new_tokens,
        sources=tuple(sources),
        ab_score=opts.ab_score,
    )


def _specs(paths: tuple[str, ...]) -> list[Spec]:
    if not paths:
        raise UserError("SPEC", "give at least one spec file to compare with the baseline", None)
    return [load(p) for p in paths]


def _open_store(path: str | None) -> RunStore:
    from .store import RunStore

    return RunStore(path)


def compare_command(opts: CompareOptions, *, out: TextIO, err: TextIO) -> int:
    """``cdsl compare``: the baseline and every spec/variant on the same inputs; tables, JSON, report, store."""
    from .compare import compare
    from .models import DEFAULT_MODEL, load_model

    specs = _specs(opts.specs)
    _check_effect(opts, specs)
    chosen = opts.model or specs[0].model or DEFAULT_MODEL
    err.write(f"loading model {chosen} ({opts.dtype})…\n")
    model = load_model(chosen, dtype=opts.dtype)
    inputs = _inputs(opts, model.tokenizer)
    info = inputs.describe()
    err.write(
        f"inputs: {info['prompts']} prompts, corpus {info['corpus_tokens_used']} of {info['corpus_tokens_total']} "
        f"tokens (--corpus-tokens), A/B items {info['ab_items']}"
        + (f" ({opts.ab_score} scoring)" if info["ab_items"] else "")
        + "\n"
    )
    if opts.from_store:
        comparison = _from_store(opts, specs, model, inputs)
    else:
        target: bool | str = (opts.host or True) if opts.remote or opts.host else False
        comparison = compare(model, specs, inputs, marginal=opts.marginal, remote=target, progress=_Bar(err))
        if opts.record:
            comparison = _record(opts, comparison)
    _emit(opts, comparison, out, err)
    return EXIT_OK


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
        from .errors import did_you_mean

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
    from .compare import Comparison, Row, spec_arms
    from .models import model_identity

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
        seconds=dict(settings.get("seconds", {})),
        run_id=",".join(runs),
        warnings=_warnings(rows, inputs.ab.path if inputs.ab is not None else None),
    )


def _warnings(rows: list[Row] | tuple[Row, ...], ab_path: str | None) -> tuple[Diagnostic, ...]:
    """The warnings a comparison's rows call for (recomputed for a recorded run): the A/B saturation one."""
    from .ab_pass import saturation_warning

    if not rows or ab_path is None:
        return ()
    warning = saturation_warning(rows[0].ab, ab_path)
    return (warning,) if warning is not None else ()


def _emit(opts: CompareOptions, comparison: Comparison, out: TextIO, err: TextIO) -> None:
    from .errors import render
    from .report import ab_table, load_table, summary_table, write_report

    if comparison.warnings:
        err.write(render(comparison.warnings) + "\n")
    if opts.report is not None:
        command = "cdsl compare " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["compare"] else ""
        path = write_report(comparison, opts.report, concept=opts.effect, command=command)
        err.write(f"wrote report {path}/report.md\n")
    if opts.fmt == "json":
        out.write(json.dumps(comparison.to_dict(), indent=2, allow_nan=True) + "\n")
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
    from .execute import text_table

    records = _open_store(store_path).list(limit=limit)
    if fmt == "json":
        out.write(json.dumps([_run_dict(r) for r in records], indent=2, allow_nan=True) + "\n")
        return EXIT_OK
    if not records:
        out.write("no runs recorded\n")
        return EXIT_OK
    body = [
        [r.id, _when(r.created), r.model, r.inputs_hash[:19], ", ".join(x.label for x in r.results[1:])]
        for r in records
    ]
    out.write(text_table(["id", "created", "model", "inputs", "specs"], body) + "\n")
    return EXIT_OK


def runs_show(store_path: str | None, run_id: str, *, fmt: str, out: TextIO) -> int:
    """``cdsl runs show ID``: one recorded run's table (or JSON)."""
    from .compare import Comparison, Row
    from .errors import render
    from .report import ab_table, load_table, summary_table

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
