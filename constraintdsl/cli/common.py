"""What every ``cdsl`` verb shares: exit codes, option types, the ``--debug`` switch and how warnings are shown."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from enum import Enum
from typing import Annotated, TextIO

import typer

from constraintdsl.errors import Diagnostic, render

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERNAL",
    "EXIT_INVALID",
    "EXIT_OK",
    "Dtype",
    "DtypeOpt",
    "ModelOpt",
    "OutputFormat",
    "SpecFormat",
    "StrictOpt",
    "VariantOpt",
    "debug",
    "emit_warnings",
    "warnings_as",
]

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERNAL = 0, 1, 2, 3

# set by the root callback (``cdsl --debug …``), read when an internal error is caught
debug = {"on": False}


class OutputFormat(str, Enum):
    text = "text"
    json = "json"


class SpecFormat(str, Enum):
    dsl = "dsl"
    yaml = "yaml"


class Dtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"


ModelOpt = Annotated[
    str | None,
    typer.Option("--model", help="model: smollm2, a Hugging Face id or a local folder (default: the spec's)"),
]
DtypeOpt = Annotated[Dtype, typer.Option("--dtype", help="model weights dtype")]
VariantOpt = Annotated[
    str | None,
    typer.Option("--variant", help="for a spec with `let` lines: the variant to use, e.g. floor=0.3"),
]
StrictOpt = Annotated[bool, typer.Option("--strict", help="treat warnings as errors (exit 1)")]


def warnings_as(diagnostics: Sequence[Diagnostic], strict: bool) -> list[Diagnostic]:
    """``diagnostics`` as they are reported: warnings, or errors under ``--strict``."""
    return [replace(d, severity="error") if strict else d for d in diagnostics]


def emit_warnings(diagnostics: Sequence[Diagnostic], sources: Mapping[str, str], *, err: TextIO, strict: bool) -> int:
    """Render warnings on ``err`` with the one renderer (as errors under ``strict``); returns
    :data:`EXIT_FAILED` when ``strict`` turned any into an error, else :data:`EXIT_OK`."""
    if not diagnostics:
        return EXIT_OK
    err.write(render(warnings_as(diagnostics, strict), sources) + "\n")
    if strict:
        err.write(f"{len(diagnostics)} warning(s) treated as errors (--strict)\n")
        return EXIT_FAILED
    return EXIT_OK
