"""The ``cdsl`` command line: the root app, its ``--debug`` switch, and the one place errors become exit codes.

Each verb group lives in its own module, with its argument parsing beside its work:
``spec_files`` (check, fmt, hash, diff, schema), ``run`` (explain, run, job), ``concept`` (concept build|show),
``compare`` (compare, runs list|show) and ``export`` (export).

Exit codes: 0 ok, 1 check failed (or specs differ), 2 invalid input or usage, 3 internal error,
130 interrupted (Ctrl-C).
Errors are rendered as ``file:line:col: error: …`` without tracebacks unless ``--debug``.
"""

from __future__ import annotations

import signal
import sys
from typing import Annotated, Any

import typer

from constraintdsl.errors import UserError

from . import compare, concept, export, models, run, spec_files, tune
from .common import EXIT_INTERNAL, EXIT_INVALID, debug

__all__ = ["app", "main"]

app = typer.Typer(
    name="cdsl",
    help="constraintdsl: constraint sets over a model's concept directions, as data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from constraintdsl import __version__

        sys.stdout.write(f"cdsl (constraintdsl) {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _main(
    debug_: Annotated[bool, typer.Option("--debug", help="show tracebacks for internal errors")] = False,
    version: Annotated[
        bool, typer.Option("--version", help="print the version and exit", callback=_version, is_eager=True)
    ] = False,
) -> None:
    debug["on"] = debug_


for _group in (spec_files, run, concept, compare, tune, export):
    _group.register(app)
models.register(app)


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
        return EXIT_INVALID
    except KeyboardInterrupt:
        raise
    except OSError as e:
        if debug["on"]:
            raise
        # an OS error on a path that no check caught: still the user's path, still exit 2
        from constraintdsl.files import os_error

        where = e.filename if isinstance(e.filename, str) else None
        if where is None:
            sys.stderr.write(f"error: {e.strerror or e}\n")
        else:
            sys.stderr.write(os_error(e, where, "use").render() + "\n")
        return EXIT_INVALID
    except Exception as e:
        interventions = sys.modules.get("constraintdsl.runtime.interventions")
        if interventions is not None and isinstance(e, interventions.NonFiniteActivation) and not debug["on"]:
            located = UserError(
                e.where or "SPEC",
                e.message,
                "use a smaller amount; `cdsl explain` shows each statement's raw and calibrated values per layer",
            )
            sys.stderr.write(located.render() + "\n")
            return EXIT_INVALID
        if debug["on"]:
            raise
        sys.stderr.write(f"internal error: {type(e).__name__}: {e}\nhint: rerun with --debug for the traceback\n")
        return EXIT_INTERNAL
    return 0
