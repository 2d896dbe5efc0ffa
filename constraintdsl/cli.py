"""The ``cdsl`` command line: argument parsing only; the work is in ``commands``.

Exit codes: 0 ok, 1 check failed (or specs differ), 2 invalid input or usage, 3 internal error.
Errors are rendered as ``file:line:col: error: …`` without tracebacks unless ``--debug``.
"""

from __future__ import annotations

import sys
from enum import Enum
from typing import Annotated

import typer

from . import commands
from .cli_concept import Dtype
from .errors import UserError

__all__ = ["app", "main"]

EXIT_INTERNAL = 3

app = typer.Typer(
    name="cdsl",
    help="constraintdsl: constraint sets over a model's concept directions, as data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_state = {"debug": False}


class OutputFormat(str, Enum):
    text = "text"
    json = "json"


class SpecFormat(str, Enum):
    dsl = "dsl"
    yaml = "yaml"


Files = Annotated[list[str], typer.Argument(help="spec files (.cdsl or .yaml)", metavar="FILE...")]


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks for internal errors")] = False,
) -> None:
    _state["debug"] = debug


StrictOpt = Annotated[bool, typer.Option("--strict", help="treat warnings as errors (exit 1)")]


@app.command()
def check(
    files: Files,
    format: Annotated[OutputFormat, typer.Option("--format", help="text or json")] = OutputFormat.text,
    strict: StrictOpt = False,
) -> None:
    """Check spec files: syntax, references, includes and concept files; report every problem, and the
    warnings that can be known without loading the model (concept files present or cached)."""
    raise typer.Exit(commands.check(files, fmt=format.value, out=sys.stdout, err=sys.stderr, strict=strict))


@app.command()
def fmt(
    files: Files,
    check: Annotated[bool, typer.Option("--check", help="only report files that would change (exit 1)")] = False,
    to: Annotated[SpecFormat | None, typer.Option("--to", help="print the file converted to dsl or yaml")] = None,
) -> None:
    """Rewrite spec files in canonical form (idempotent; comments kept in DSL files)."""
    raise typer.Exit(commands.fmt(files, check_only=check, to=to.value if to else None, out=sys.stdout, err=sys.stderr))


@app.command("hash")
def hash_(file: Annotated[str, typer.Argument(help="spec file", metavar="FILE")]) -> None:
    """Print the content hash of a spec: canonical form plus the hashes of its concept files."""
    raise typer.Exit(commands.hash_file(file, out=sys.stdout))


@app.command()
def diff(
    old: Annotated[str, typer.Argument(metavar="A")],
    new: Annotated[str, typer.Argument(metavar="B")],
    format: Annotated[OutputFormat, typer.Option("--format", help="text or json")] = OutputFormat.text,
) -> None:
    """Semantic diff of two specs (exit 1 when they differ)."""
    raise typer.Exit(commands.diff_files(old, new, fmt=format.value, out=sys.stdout))


@app.command()
def schema(
    output: Annotated[str | None, typer.Option("-o", "--output", help="write to this file")] = None,
) -> None:
    """Print the JSON Schema of the YAML spec form."""
    raise typer.Exit(commands.schema(output, out=sys.stdout))


ModelOpt = Annotated[
    str | None,
    typer.Option("--model", help="model: smollm2, a Hugging Face id or a local folder (default: the spec's)"),
]
DtypeOpt = Annotated[Dtype, typer.Option("--dtype", help="model weights dtype")]
VariantOpt = Annotated[
    str | None,
    typer.Option("--variant", help="for a spec with `let` lines: the variant to use, e.g. floor=0.3"),
]


@app.command()
def explain(
    spec: Annotated[str, typer.Argument(help="spec file", metavar="SPEC")],
    model: ModelOpt = None,
    dtype: DtypeOpt = Dtype.float32,
    format: Annotated[OutputFormat, typer.Option("--format", help="text or json")] = OutputFormat.text,
    variant: VariantOpt = None,
    strict: StrictOpt = False,
) -> None:
    """Print the resolved plan (layers, raw and calibrated values per layer, positions, gates) and its
    warnings, without running the model."""
    from . import execute

    raise typer.Exit(
        execute.explain_spec(
            spec,
            model_name=model,
            dtype=dtype.value,
            fmt=format.value,
            out=sys.stdout,
            err=sys.stderr,
            variant=variant,
            strict=strict,
        )
    )


@app.command()
def run(
    spec: Annotated[str, typer.Argument(help="spec file", metavar="SPEC")],
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="a prompt (repeatable)")] = None,
    prompts: Annotated[str | None, typer.Option("--prompts", help="file: one prompt per line, or .jsonl")] = None,
    model: ModelOpt = None,
    dtype: DtypeOpt = Dtype.float32,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, max=4096)] = 32,
    no_baseline: Annotated[bool, typer.Option("--no-baseline", help="skip the unconstrained generation")] = False,
    format: Annotated[OutputFormat, typer.Option("--format", help="text or json")] = OutputFormat.text,
    remote: Annotated[
        bool,
        typer.Option("--remote", help="run on NDIF (host: --host, NDIF_HOST or nnsight's config; key: NDIF_API_KEY)"),
    ] = False,
    host: Annotated[str | None, typer.Option("--host", help="NDIF server URL (implies --remote)")] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0.1, help="seconds to wait for a remote run")
    ] = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="submit the remote run, print its job id and exit (see `cdsl job`)")
    ] = False,
    variant: VariantOpt = None,
    strict: StrictOpt = False,
) -> None:
    """Generate with the spec applied, beside the unconstrained baseline, and show which constraints bound."""
    from . import execute

    if (prompt is None) == (prompts is None):
        raise UserError("--prompt", "give prompts with --prompt TEXT (repeatable) or --prompts FILE", None)
    texts = list(prompt) if prompt else execute.read_prompts(str(prompts))
    raise typer.Exit(
        execute.run_spec(
            spec,
            prompts=texts,
            model_name=model,
            dtype=dtype.value,
            max_new_tokens=max_new_tokens,
            baseline=not no_baseline,
            fmt=format.value,
            out=sys.stdout,
            err=sys.stderr,
            remote=remote,
            host=host,
            timeout=timeout,
            wait=not no_wait,
            variant=variant,
            strict=strict,
        )
    )


@app.command()
def job(
    job_id: Annotated[str, typer.Argument(help="the id `cdsl run --no-wait` printed", metavar="ID")],
    wait: Annotated[float, typer.Option("--wait", min=0, help="seconds to keep polling before giving up")] = 0.0,
    format: Annotated[OutputFormat, typer.Option("--format", help="text or json")] = OutputFormat.text,
) -> None:
    """Fetch the result of a remote run submitted with `cdsl run --remote --no-wait` (exit 1 while it runs)."""
    from . import execute

    raise typer.Exit(execute.fetch_job(job_id, wait=wait, fmt=format.value, out=sys.stdout, err=sys.stderr))


def _mount_subcommands() -> None:
    from .cli_compare import compare, runs_app
    from .cli_concept import concept_app

    app.add_typer(concept_app, name="concept")
    app.command("compare")(compare)
    app.add_typer(runs_app, name="runs")


_mount_subcommands()


def main(argv: list[str] | None = None) -> int:
    """Run ``cdsl``; returns the exit code instead of raising SystemExit."""
    try:
        app(args=argv, prog_name="cdsl")
    except SystemExit as e:  # click's own usage errors exit 2 with their message
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except UserError as e:
        sys.stderr.write(e.render() + "\n")
        return commands.EXIT_INVALID
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except Exception as e:
        runtime = sys.modules.get("constraintdsl.runtime")
        if runtime is not None and isinstance(e, runtime.NonFiniteActivation) and not _state["debug"]:
            located = UserError(
                e.where or "SPEC",
                e.message,
                "use a smaller amount; `cdsl explain` shows each statement's raw and calibrated values per layer",
            )
            sys.stderr.write(located.render() + "\n")
            return commands.EXIT_INVALID
        if _state["debug"]:
            raise
        sys.stderr.write(f"internal error: {type(e).__name__}: {e}\nhint: rerun with --debug for the traceback\n")
        return EXIT_INTERNAL
    return 0
