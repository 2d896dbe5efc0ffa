"""``cdsl compare`` and ``cdsl runs list|show``: argument parsing only (the work is in ``compare_commands``)."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Annotated

import typer

from .cli_concept import Dtype

__all__ = ["compare", "runs_app"]

runs_app = typer.Typer(help="Recorded comparison runs (the local run store).", no_args_is_help=True)


class ABScore(str, Enum):
    mean = "mean"
    sum = "sum"


StoreOpt = Annotated[
    str | None,
    typer.Option("--store", help="run store file (default: $CONSTRAINTDSL_STORE or runs.sqlite in the cache dir)"),
]


def compare(
    specs: Annotated[list[str], typer.Argument(help="spec files to compare with the baseline", metavar="SPEC...")],
    prompts: Annotated[
        str | None, typer.Option("--prompts", help="prompt file (default: the shipped comparison prompts)")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="use only the first N prompts")] = None,
    corpus: Annotated[
        str | None, typer.Option("--corpus", help="reference corpus (default: the shipped neutral corpus)")
    ] = None,
    corpus_tokens: Annotated[
        int, typer.Option("--corpus-tokens", min=2, help="use the corpus's first N tokens (0: all)")
    ] = 8192,
    window: Annotated[int, typer.Option("--window", min=2, max=8192, help="tokens per corpus window")] = 128,
    ab: Annotated[str | None, typer.Option("--ab", help="A/B behavior set (YAML)")] = None,
    ab_score: Annotated[
        ABScore,
        typer.Option(
            "--ab-score",
            help="score an A/B answer by the mean log-probability of its tokens, or by their sum",
        ),
    ] = ABScore.mean,
    model: Annotated[
        str | None, typer.Option("--model", help="smollm2, a Hugging Face id or a local folder (default: the spec's)")
    ] = None,
    dtype: Annotated[Dtype, typer.Option("--dtype", help="model weights dtype")] = Dtype.float32,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, max=4096)] = 32,
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
    json_: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
    store: StoreOpt = None,
    no_store: Annotated[bool, typer.Option("--no-store", help="do not record this run in the store")] = False,
    from_store: Annotated[
        bool, typer.Option("--from-store", help="rebuild from recorded results; run nothing")
    ] = False,
    remote: Annotated[bool, typer.Option("--remote", help="run on NDIF (host: --host, NDIF_HOST or config)")] = False,
    host: Annotated[str | None, typer.Option("--host", help="NDIF server URL (implies --remote)")] = None,
) -> None:
    """Run the baseline and every spec/variant on the same inputs, batched, and report effect, tax,
    load, marginal tax and degrees of freedom."""
    from .compare_commands import CompareOptions, compare_command

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
    )
    raise typer.Exit(compare_command(opts, out=sys.stdout, err=sys.stderr))


@runs_app.command("list")
def runs_list(
    store: StoreOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="at most this many runs")] = 50,
    json_: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List recorded runs, newest first."""
    from .compare_commands import runs_list as list_

    raise typer.Exit(list_(store, limit=limit, fmt="json" if json_ else "text", out=sys.stdout))


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="a run id (or a unique prefix)", metavar="ID")],
    store: StoreOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show one recorded run."""
    from .compare_commands import runs_show as show

    raise typer.Exit(show(store, run_id, fmt="json" if json_ else "text", out=sys.stdout))
