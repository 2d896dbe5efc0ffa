"""``cdsl tune SPEC``: search a spec's continuous lets for the best variant its budgets and targets allow.

The search is :func:`constraintdsl.compare.tune.tune`; this module parses the flags (the inputs are
``cdsl compare``'s), checks every input and output before the model loads, prints each evaluated point as it
comes, and writes the chosen concrete spec in canonical form (``-o``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from constraintdsl.errors import UserError

from .common import EXIT_FAILED, EXIT_OK, Dtype
from .compare import (
    ABOpt,
    ABScore,
    ABScoreOpt,
    CompareOptions,
    CorpusOpt,
    CorpusTokensOpt,
    HostOpt,
    JsonOpt,
    LimitOpt,
    MaxNewTokensOpt,
    PromptsOpt,
    RequestTokensOpt,
    StoreOpt,
    WindowOpt,
    _Bar,
    _inputs,
    _open_store,
    _preflight,
    options_model,
    with_spec_data,
)

if TYPE_CHECKING:
    from constraintdsl.compare.tune import Point, TuneResult
    from constraintdsl.lang.spec import Spec

__all__ = ["OUTPUT_MARK", "register", "tune_command"]

OUTPUT_MARK = "# tuned by cdsl tune"  # the first line of a file tune wrote; only such a file is replaced


def _check_output(path: str) -> None:
    from constraintdsl.files import check_output_file

    target = Path(path)
    ours = False
    if target.is_file():
        try:
            with target.open("rb") as f:
                ours = f.read(len(OUTPUT_MARK)).decode("utf-8", "replace") == OUTPUT_MARK
        except OSError as exc:
            raise UserError("-o", f"cannot read {path}: {exc.strerror}", None) from None
    if target.suffix.lower() in (".yaml", ".yml"):
        raise UserError("-o", "tune writes the chosen spec as DSL text", "name the file …/tuned.cdsl")
    check_output_file(path, "-o", replaceable=ours)


def _check_plot(path: str) -> None:
    from constraintdsl.compare.tune import PLOT_MARK
    from constraintdsl.files import check_output_file

    target = Path(path)
    ours = False
    if target.is_file():
        try:
            with target.open("rb") as f:
                head = f.read(4096)
        except OSError as exc:
            raise UserError("--plot", f"cannot read {path}: {exc.strerror}", None) from None
        ours = head.startswith(b"\x89PNG") and PLOT_MARK.encode() in head
    check_output_file(path, "--plot", replaceable=ours)


def _head(points: Sequence[Point], spec: Spec) -> list[str]:
    names = [n for n, _ in points[0].values] if points else []
    return ["round", *names, *(c.statement for c in points[0].checks), "meets"] if points else []


def _line(p: Point) -> list[str]:
    cells = [str(p.round), *(f"{v:g}" for _, v in p.values)]
    for c in p.checks:
        shown = "n/a" if c.measured is None else f"{c.measured:.4g}"
        cells.append(f"{shown} {'ok' if c.passed else 'x'}")
    cells.append("yes" if p.meets else "no")
    return cells


def tune_command(
    opts: CompareOptions,
    *,
    goal: str | None,
    tolerance: float | None,
    per_round: int,
    max_rounds: int,
    output: str | None,
    out: TextIO,
    plot: str | None = None,
    err: TextIO,
) -> int:
    """``cdsl tune``: exit 0 with the chosen spec when a point meets every budget and target, 1 when none does."""
    from constraintdsl.compare.tune import MAX_ROUNDS, check_tunable, tune
    from constraintdsl.lang.loading import load
    from constraintdsl.tables import text_table

    (path,) = opts.specs
    spec = load(path)
    check_tunable(spec, goal)
    opts = with_spec_data(opts, [spec])
    read = _preflight(opts, [spec])
    if output is not None:
        _check_output(output)
    if plot is not None:
        _check_plot(plot)
    if not 1 <= max_rounds <= 4 * MAX_ROUNDS:
        raise UserError("--max-rounds", f"{max_rounds} rounds is out of range", f"give 1 to {4 * MAX_ROUNDS}")
    target: bool | str = (opts.host or True) if opts.remote or opts.host else False
    model = options_model(opts, spec, err, lazy=bool(target))
    inputs = _inputs(opts, read, model.tokenizer)
    rows: list[list[str]] = []
    head: list[str] = []

    def on_round(number: int, points: Sequence[Point]) -> None:
        nonlocal head
        if not points:
            return
        head = head or _head(points, spec)
        rows.extend(_line(p) for p in points)
        if opts.fmt == "text":
            err.write(f"round {number}: {len(points)} point(s) evaluated\n")

    result = tune(
        model,
        spec,
        inputs,
        goal=goal,
        tolerance=tolerance,
        per_round=per_round,
        max_rounds=max_rounds,
        remote=target,
        request_tokens=opts.request_tokens,
        on_round=on_round,
        progress=_Bar(err) if opts.fmt == "text" else None,
    )
    if opts.record and result.points:
        run_id = _record(opts, path, model, inputs, result)
        err.write(f"recorded run {run_id} ({len(result.points)} points)\n")
    if output is not None and result.spec is not None:
        from constraintdsl.atomic import write_atomic

        text = f"{OUTPUT_MARK} from {path} ({result.objective}): {result.best.name() if result.best else ''}\n"
        from constraintdsl.lang.loading import relocate

        # concept paths are relative to the spec's folder: rewrite them for the output's
        write_atomic(output, text + relocate(result.spec, Path(output).parent).to_dsl(), where="-o")
        err.write(f"wrote {output}\n")
    if plot is not None and result.points:
        from constraintdsl.atomic import write_bytes_atomic
        from constraintdsl.compare.tune import frontier_png

        write_bytes_atomic(plot, frontier_png(result, spec), where="--plot")
        err.write(f"wrote {plot}\n")
    if opts.fmt == "json":
        out.write(json.dumps(result.to_dict(), indent=2, allow_nan=True) + "\n")
    else:
        out.write(_report(result, head, rows, text_table))
    if not result.found:
        err.write(f"{path}: error: {result.message}\n")
        if output is not None:
            err.write(f"nothing written to {output}\n")
        return EXIT_FAILED
    return EXIT_OK


def _record(opts: CompareOptions, path: str, model: Any, inputs: Any, result: TuneResult) -> str:
    """Every evaluated point as one result of a ``tune`` run in the store (labelled by its let values)."""
    from constraintdsl.models.loading import model_identity

    ident = model_identity(model)
    summary = {k: v for k, v in result.to_dict().items() if k != "points"}
    record = _open_store(opts.store).record(
        command="tune",
        model=ident.id,
        revision=ident.revision,
        inputs_hash=inputs.digest(),
        settings={"inputs": inputs.describe(), "spec": path, "tune": summary},
        results=[
            {
                "label": p.name(),
                "spec_hash": p.row.get("key", ""),
                "spec_path": path,
                "spec_text": p.row.get("spec_text", ""),
                "metrics": {**p.row, "label": p.name(), "tune": {"round": p.round, "meets": p.meets}},
            }
            for p in result.points
        ],
    )
    return record.id


def _report(result: TuneResult, head: list[str], rows: list[list[str]], text_table: Any) -> str:
    lines = [f"goal: {result.objective}", ""]
    if rows:
        lines += [text_table(head, rows), ""]
    lines.append(
        f"{len(result.points)} points in {result.rounds} rounds, {result.forward_passes} forward passes; "
        f"tolerance {', '.join(f'{n} {t:g}' for n, t in result.tolerance.items())}"
    )
    lines.append(result.message)
    if result.spec is not None:
        lines += ["", "chosen spec:", result.spec.to_dsl().rstrip()]
    return "\n".join(lines) + "\n"


def _tune_cmd(
    spec: Annotated[str, typer.Argument(help="a spec with continuous lets (let x = lo .. hi) and budgets/targets")],
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="write the chosen concrete spec (canonical DSL) here")
    ] = None,
    plot: Annotated[
        str | None,
        typer.Option("--plot", help="draw every evaluated point on the tax/goal plane, the chosen one marked (PNG)"),
    ] = None,
    goal: Annotated[
        str | None,
        typer.Option(
            "--goal",
            help="target: best first target within the budgets (default with a target); tax: least tax reaching "
            "every target; strongest: largest let values within the budgets (default without a target)",
        ),
    ] = None,
    tolerance: Annotated[
        float | None, typer.Option("--tolerance", help="stop when the bracket is this narrow (default: range/100)")
    ] = None,
    per_round: Annotated[int, typer.Option("--per-round", min=2, max=64, help="new points per round")] = 4,
    max_rounds: Annotated[int, typer.Option("--max-rounds", min=1, max=48, help="at most this many rounds")] = 12,
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
    json_: JsonOpt = False,
    store: StoreOpt = None,
    no_store: Annotated[bool, typer.Option("--no-store", help="do not record the points in the store")] = False,
    remote: Annotated[bool, typer.Option("--remote", help="run on NDIF (one request per round)")] = False,
    host: HostOpt = None,
    request_tokens: RequestTokensOpt = None,
) -> None:
    """Search the spec's continuous lets for the best variant within its budgets and targets; print every
    evaluated point; with -o write the chosen spec.  Exit 1 when no point meets every budget and target."""
    opts = CompareOptions(
        specs=(spec,),
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
        marginal=False,
        fmt="json" if json_ else "text",
        store=store,
        record=not no_store,
        remote=remote,
        host=host,
        request_tokens=request_tokens,
    )
    code = tune_command(
        opts,
        goal=goal,
        tolerance=tolerance,
        per_round=per_round,
        max_rounds=max_rounds,
        output=output,
        out=sys.stdout,
        err=sys.stderr,
        plot=plot,
    )
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``cdsl tune`` to the app."""
    app.command("tune")(_tune_cmd)
