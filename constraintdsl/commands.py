"""What each ``cdsl`` verb does, apart from argument parsing (that is ``cli``).

Each function takes already-parsed arguments and output streams and returns an exit code:
0 ok, 1 check failed (or specs differ), 2 invalid input.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from .atomic import write_atomic
from .canonical import spec_hash, to_dsl, to_yaml
from .diff import diff, render_changes
from .errors import Diagnostic, Span, SpecError, UserError, render
from .load import load, parse_file, read_text, spec_sources
from .parser import is_yaml_path, normalize_text
from .spec import Spec
from .variants import expand

__all__ = [
    "EXIT_FAILED",
    "EXIT_INVALID",
    "EXIT_OK",
    "check",
    "concept_hashes",
    "diff_files",
    "emit_warnings",
    "fmt",
    "hash_file",
    "schema",
    "warnings_as",
]

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def concept_hashes(spec: Spec) -> dict[str, str]:
    """``concept:NAME`` → sha256 of the file each concept names (pairs data or artifact).

    Paths are relative to the spec's folder.  A missing or unreadable file is an error at the
    statement's path.
    """
    base = Path(spec.path).parent
    out: dict[str, str] = {}
    diags: list[Diagnostic] = []
    for c in spec.concepts:
        p = Path(os.path.normpath(base / c.path))
        try:
            out[f"concept:{c.name}"] = "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
        except FileNotFoundError:
            diags.append(Diagnostic(c.path_span, f"concept file not found: {p}", "paths are relative to the spec file"))
        except OSError as e:
            diags.append(Diagnostic(c.path_span, f"cannot read concept file {p}: {e.strerror}", None))
    if diags:
        raise SpecError(diags, spec_sources(spec))
    return out


def _load_checked(path: str, *, resolve_concepts: bool) -> tuple[Spec, dict[str, str]]:
    spec = load(path)
    return spec, concept_hashes(spec) if resolve_concepts else {}


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


def check(
    paths: list[str], *, fmt: str, out: TextIO, err: TextIO, resolve_concepts: bool = True, strict: bool = False
) -> int:
    """``cdsl check``: load each spec (includes, concept files) and report every problem.

    A spec with lets also reports its variants: their count in text, their names in JSON
    (``variants``; empty for a spec without lets).  Warnings are reported where they can be known
    without loading the model (:func:`constraintdsl.lint.spec_warnings`: concept files present or
    cached); ``strict`` makes them errors (exit 1)."""
    from .lint import spec_warnings

    code = EXIT_OK
    results: list[dict[str, Any]] = []
    for path in paths:
        try:
            spec, extra = _load_checked(path, resolve_concepts=resolve_concepts)
        except SpecError as e:
            code = max(code, EXIT_FAILED)
            results.append({"path": path, "ok": False, **e.to_dict()})
            if fmt == "text":
                err.write(e.render() + "\n")
            continue
        except UserError as e:
            code = EXIT_INVALID
            results.append({"path": path, "ok": False, **e.to_dict()})
            if fmt == "text":
                err.write(e.render() + "\n")
            continue
        digest = spec_hash(spec, extra)
        variants = [v.name for v in expand(spec)] if spec.lets else []
        warnings = spec_warnings(spec) if resolve_concepts else []
        failed = strict and bool(warnings)
        if failed:
            code = max(code, EXIT_FAILED)
        results.append(
            {
                "path": path,
                "ok": not failed,
                "hash": digest,
                "concepts": len(spec.concepts),
                "constraints": len(spec.constraints),
                "variants": variants,
                "diagnostics": [d.to_dict() for d in warnings_as(warnings, strict)],
            }
        )
        if fmt == "text":
            emit_warnings(warnings, spec_sources(spec), err=err, strict=strict)
            if failed:
                continue
            counts = f"{len(spec.concepts)} concepts, {len(spec.constraints)} constraints"
            if variants:
                counts += f", {len(variants)} variants of {', '.join(let.name for let in spec.lets)}"
            if warnings:
                counts += f", {len(warnings)} warning{'s' * (len(warnings) != 1)}"
            out.write(f"ok: {path} ({counts})\n")
    if fmt == "json":
        out.write(json.dumps({"files": results}, indent=2, ensure_ascii=False) + "\n")
    return code


def _yaml_comment(text: str) -> tuple[int, int] | None:
    """Line and column of the first YAML comment, if any (pyyaml would drop it)."""
    from .parser import _comment_start

    for lineno, line in enumerate(text.split("\n"), start=1):
        col = _comment_start(line)
        if col is not None and (col == 0 or line[col - 1] in " \t"):
            return lineno, col + 1
    return None


def fmt(paths: list[str], *, check_only: bool, to: str | None, out: TextIO, err: TextIO) -> int:
    """``cdsl fmt``: rewrite files in canonical form (atomically), or ``--check``, or ``--to``."""
    if to is not None and len(paths) != 1:
        raise UserError(
            "--to",
            "--to converts one file at a time and prints it",
            "cdsl fmt spec.cdsl --to yaml > spec.yaml",
        )
    code = EXIT_OK
    for path in paths:
        spec = parse_file(path)
        as_yaml = is_yaml_path(path) if to is None else to == "yaml"
        canonical = to_yaml(spec) if as_yaml else to_dsl(spec, comments=True)
        if to is not None:
            out.write(canonical)
            continue
        text = normalize_text(read_text(path))
        if text == canonical:
            continue
        if check_only:
            out.write(f"would reformat {path}\n")
            code = EXIT_FAILED
            continue
        if as_yaml:
            where = _yaml_comment(text)
            if where is not None:
                raise SpecError.single(
                    Span(path, where[0], where[1]),
                    "fmt would drop this comment (YAML comments are not kept)",
                    "delete the YAML comments first, or leave the file as it is (`cdsl fmt --check` only reports)",
                    source=text,
                )
        write_atomic(Path(path), canonical)
        out.write(f"reformatted {path}\n")
    return code


def hash_file(path: str, *, out: TextIO) -> int:
    """``cdsl hash``: sha256 of the canonical spec plus the hashes of its concept files."""
    spec, extra = _load_checked(path, resolve_concepts=True)
    out.write(f"{spec_hash(spec, extra)}  {path}\n")
    return EXIT_OK


def diff_files(a: str, b: str, *, fmt: str, out: TextIO) -> int:
    """``cdsl diff``: semantic differences; exit 1 when the specs differ."""
    changes = diff(load(a), load(b))
    if fmt == "json":
        out.write(json.dumps({"old": a, "new": b, "changes": [c.to_dict() for c in changes]}, indent=2) + "\n")
    else:
        out.write(render_changes(changes, a, b))
    return EXIT_FAILED if changes else EXIT_OK


def schema(output: str | None, *, out: TextIO) -> int:
    """``cdsl schema``: JSON Schema of the YAML form (to stdout or a file)."""
    from .yaml_twin import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if output is None:
        out.write(text)
    else:
        write_atomic(Path(output), text)
        out.write(f"wrote {output}\n")
    return EXIT_OK
