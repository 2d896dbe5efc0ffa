"""The ``cdsl`` command line: argument parsing only; the work is in ``commands``.

Exit codes: 0 ok, 1 check failed (or specs differ), 2 invalid input or usage, 3 internal error.
Errors are rendered as ``file:line:col: error: …`` without tracebacks unless ``--debug``.
"""

from __future__ import annotations

import signal
import sys
from enum import Enum
from typing import Annotated, Any

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


def _version(value: bool) -> None:
    if value:
        from . import __version__

        sys.stdout.write(f"cdsl (constraintdsl) {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks for internal errors")] = False,
    version: Annotated[
        bool, typer.Option("--version", help="print the version and exit", callback=_version, is_eager=True)
    ] = False,
) -> None:
    _state["debug"] = debug


@app.command()
def check(
    files: Files,
    format: Annotated[OutputFormat, typer.Option("--format", help="text or json")] = OutputFormat.text,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="also check against this model's config and tokenizer (layers, hidden size, depth; no weights "
            "are loaded): smollm2, a Hugging Face id or a local folder",
        ),
    ] = None,
) -> None:
    """Check spec files, their includes and every concept file and pair set they name; report every problem."""
    raise typer.Exit(commands.check(files, fmt=format.value, out=sys.stdout, err=sys.stderr, model=model))


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
) -> None:
    """Print the resolved plan (layers, raw bounds per layer, positions, gates) without running the model."""
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


_NAMED_METAVARS = {
    "report": "DIR",
    "model": "MODEL",
    "host": "URL",
    "variant": "NAME=VALUE",
    "effect": "CONCEPT|ab",
    "prompt": "TEXT",
    "layers": "LAYERS",
}
_FILE_OPTIONS = ("prompts", "corpus", "ab", "store", "output", "pairs")


def _metavars(command: Any) -> None:
    """Help without type placeholders (``<bool>``, ``<str>``): flags show nothing, other options a word
    that says what goes there (N, X, FILE, DIR, MODEL, a|b)."""
    help_option = command.get_help_option(command.context_class(command))
    if help_option is not None:
        help_option.metavar = ""
    for param in command.params:
        if getattr(param, "param_type_name", "") == "argument":
            param.display_type_rich = lambda ctx: None  # the metavar (FILE...) says it
            continue
        if getattr(param, "param_type_name", "") != "option" or param.metavar is not None:
            continue
        desc = getattr(param, "type_descriptor", None)
        annotation = getattr(desc, "annotation", None)
        if param.is_flag:
            param.metavar = ""
        elif getattr(desc, "is_choice", False):
            param.metavar = "|".join(str(getattr(c, "value", c)) for c in desc.choices or ())  # type: ignore[union-attr]
        elif annotation is int:
            param.metavar = "N"
        elif annotation is float:
            param.metavar = "X"
        elif param.name in _NAMED_METAVARS:
            param.metavar = _NAMED_METAVARS[param.name]
        else:
            param.metavar = "FILE" if param.name in _FILE_OPTIONS else "TEXT"
    for sub in getattr(command, "commands", {}).values():
        _metavars(sub)


_COMMAND: list[Any] = []


def _command() -> Any:
    if not _COMMAND:
        command = typer.main.get_command(app)
        _metavars(command)
        _COMMAND.append(command)
    return _COMMAND[0]


class _Interrupt:
    """Ctrl-C: raise KeyboardInterrupt as usual, and remember it, so that an interrupt that a library turns
    into another exception (or typer into a silent exit 130) still ends in one line and exit 130."""

    def __init__(self) -> None:
        self.hit = False
        self.previous: Any = None

    def __enter__(self) -> _Interrupt:
        try:
            self.previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: leave signals alone
            self.previous = None
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        self.hit = True
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    """Run ``cdsl``; returns the exit code instead of raising SystemExit.

    Exit codes: 0 ok, 1 check failed, 2 invalid input (every problem with a user's file, flag or model),
    3 an internal error (a bug: the message asks for ``--debug``), 130 interrupted (Ctrl-C)."""
    interrupt = _Interrupt()
    try:
        with interrupt:
            code = _run(argv)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    if interrupt.hit:
        sys.stderr.write("cdsl: interrupted\n")
        return EXIT_INTERRUPTED
    return code


def _run(argv: list[str] | None) -> int:
    try:
        _command().main(args=argv, prog_name="cdsl", standalone_mode=True)
    except SystemExit as e:  # click's own usage errors exit 2 with their message
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except UserError as e:
        sys.stderr.write(e.render() + "\n")
        return commands.EXIT_INVALID
    except KeyboardInterrupt:
        raise
    except OSError as e:
        if _state["debug"]:
            raise
        # an OS error on a path that no check caught: still the user's path, still exit 2
        from .files import os_error

        where = e.filename if isinstance(e.filename, str) else None
        if where is None:
            sys.stderr.write(f"error: {e.strerror or e}\n")
        else:
            sys.stderr.write(os_error(e, where, "use").render() + "\n")
        return commands.EXIT_INVALID
    except Exception as e:
        if _state["debug"]:
            raise
        sys.stderr.write(f"internal error: {type(e).__name__}: {e}\nhint: rerun with --debug for the traceback\n")
        return EXIT_INTERNAL
    return 0
