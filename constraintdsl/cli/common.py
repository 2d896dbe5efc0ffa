"""What every ``cdsl`` verb shares: exit codes, option types, the ``--debug`` switch and how warnings are shown."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from constraintdsl.errors import Diagnostic, Span, SpecError, UserError, render
from constraintdsl.lang.loading import read_text

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
    "jobs_dir",
    "read_job",
    "read_prompts",
    "save_job",
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


def read_prompts(path: str) -> list[str]:
    """Prompts from a file: ``.txt`` one per line (blank lines and ``#`` comments skipped), or
    ``.jsonl`` with one ``{"prompt": "…"}`` (or a JSON string) per line."""
    text = read_text(path, kind="prompts")
    prompts: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or (stripped.startswith("#") and not path.endswith(".jsonl")):
            continue
        if path.endswith(".jsonl"):
            try:
                item = json.loads(stripped)
            except json.JSONDecodeError as e:
                raise SpecError.single(
                    Span(path, lineno, e.colno), f"invalid JSON: {e.msg}", None, source=text
                ) from None
            value = item.get("prompt") if isinstance(item, dict) else item
            if not isinstance(value, str) or not value.strip():
                raise SpecError.single(
                    Span(path, lineno, 1), 'each line must be {"prompt": "…"} or a JSON string', None, source=text
                )
            prompts.append(value)
        else:
            prompts.append(stripped)
    if not prompts:
        raise UserError(
            "--prompts", f"{path} holds no prompts", 'one prompt per line (.txt) or {"prompt": …} per line (.jsonl)'
        )
    return prompts


def jobs_dir() -> Path:
    """Where ``--no-wait`` keeps what ``cdsl job`` needs: ``<cache>/jobs``."""
    from constraintdsl.models.loading import cache_dir

    return cache_dir() / "jobs"


def save_job(job_id: str, record: dict[str, Any]) -> None:
    """Keep ``record`` (JSON-able) for ``cdsl job JOB_ID`` (written atomically)."""
    from constraintdsl.atomic import write_atomic

    folder = jobs_dir()
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / f"{job_id}.json", json.dumps(record))


def read_job(job_id: str) -> dict[str, Any]:
    """The record ``--no-wait`` kept for ``job_id``, or a :class:`UserError` naming the id."""
    if not job_id.replace("-", "").isalnum():
        raise UserError("ID", f"{job_id!r} is not a job id", "use the id `cdsl run --no-wait` printed")
    path = jobs_dir() / f"{job_id}.json"
    if not path.is_file():
        raise UserError("ID", f"no job {job_id} was submitted from this machine", f"looked in {jobs_dir()}")
    record: dict[str, Any] = json.loads(path.read_text())
    return record
