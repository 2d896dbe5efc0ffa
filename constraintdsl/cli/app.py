"""The ``cdsl`` command line: the root app, its ``--debug`` switch, and the one place errors become exit codes.

Each verb group lives in its own module, with its argument parsing beside its work:
``spec_files`` (check, fmt, hash, diff, schema), ``run`` (explain, run, job), ``concept`` (concept build|show),
``compare`` (compare, runs list|show) and ``export`` (export).

Exit codes: 0 ok, 1 check failed (or specs differ), 2 invalid input or usage, 3 internal error.
Errors are rendered as ``file:line:col: error: …`` without tracebacks unless ``--debug``.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from constraintdsl.errors import UserError

from . import compare, concept, export, run, spec_files
from .common import EXIT_INTERNAL, EXIT_INVALID, debug

__all__ = ["app", "main"]

app = typer.Typer(
    name="cdsl",
    help="constraintdsl: constraint sets over a model's concept directions, as data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(
    debug_: Annotated[bool, typer.Option("--debug", help="show tracebacks for internal errors")] = False,
) -> None:
    debug["on"] = debug_


for _group in (spec_files, run, concept, compare, export):
    _group.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run ``cdsl``; returns the exit code instead of raising SystemExit."""
    try:
        app(args=argv, prog_name="cdsl")
    except SystemExit as e:  # click's own usage errors exit 2 with their message
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except UserError as e:
        sys.stderr.write(e.render() + "\n")
        return EXIT_INVALID
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except Exception as e:
        if debug["on"]:
            raise
        sys.stderr.write(f"internal error: {type(e).__name__}: {e}\nhint: rerun with --debug for the traceback\n")
        return EXIT_INTERNAL
    return 0
