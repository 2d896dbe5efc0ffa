"""What every ``cdsl`` verb shares: exit codes, option types and the ``--debug`` switch."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

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
    "VariantOpt",
    "debug",
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
