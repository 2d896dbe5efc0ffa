"""What each ``cdsl`` verb does, apart from argument parsing (that is ``cli``).

Each function takes already-parsed arguments and output streams and returns an exit code:
0 ok, 1 check failed (or specs differ), 2 invalid input.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, TextIO

from .atomic import write_atomic
from .canonical import spec_hash, to_dsl, to_yaml
from .diff import diff, render_changes
from .errors import Diagnostic, Span, SpecError, UserError
from .files import check_output_file, read_bytes
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
    "fmt",
    "hash_file",
    "schema",
]

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def concept_hashes(spec: Spec) -> dict[str, str]:
    """``concept:NAME`` → sha256 of the file each concept names (pairs data or artifact).

    Paths are relative to the spec's folder.  A missing or unreadable file (or one that is not a regular
    file, or too large) is an error at the statement that names it; every such problem is reported.
    """
    base = Path(spec.path).parent
    out: dict[str, str] = {}
    diags: list[Diagnostic] = []
    for c in spec.concepts:
        p = Path(os.path.normpath(base / c.path))
        try:
            data = read_bytes(p, "concept" if c.source == "file" else "pairs", at=c.path_span)
        except SpecError as e:
            diags.extend(e.diagnostics)
            continue
        out[f"concept:{c.name}"] = "sha256:" + hashlib.sha256(data).hexdigest()
    if diags:
        raise SpecError(diags, spec_sources(spec))
    return out


def check(
    paths: list[str], *, fmt: str, out: TextIO, err: TextIO, resolve_concepts: bool = True, model: str | None = None
) -> int:
    """``cdsl check``: load each spec (includes), open every concept file and pair set it names, and report
    every problem; exit 1 when a spec has problems, 2 when a file cannot be read at all.

    With ``model`` (a name, hub id or folder) each spec is also checked against that model's config and
    tokenizer, without loading its weights (see :mod:`constraintdsl.preflight`).  A spec with lets also
    reports its variants: their count in text, their names in JSON (``variants``; empty for a spec
    without lets)."""
    from .preflight import check_files

    described = None
    if model is not None:
        from .models import describe_model

        described = describe_model(model)
    code = EXIT_OK
    results: list[dict[str, Any]] = []
    for path in paths:
        try:
            spec = load(path)
            if resolve_concepts:
                opened = check_files(spec)
                extra = opened.hashes
                if described is not None:
                    from .preflight import check_model

                    config, identity, tokenizer = described
                    check_model(spec, opened, identity, config, tokenizer)
            else:
                extra = {}
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
        results.append(
            {
                "path": path,
                "ok": True,
                "hash": digest,
                "concepts": len(spec.concepts),
                "constraints": len(spec.constraints),
                "variants": variants,
                "diagnostics": [],
            }
        )
        if fmt == "text":
            counts = f"{len(spec.concepts)} concepts, {len(spec.constraints)} constraints"
            if variants:
                counts += f", {len(variants)} variants of {', '.join(let.name for let in spec.lets)}"
            if described is not None:
                counts += f"; fits {described[1].id}"
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
    """``cdsl fmt``: rewrite files in canonical form (atomically), or ``--check``, or ``--to``.

    Every file is handled and reported; the exit code is 2 when a file could not be read or written (or
    is invalid), else 1 when ``--check`` found a file to reformat, else 0."""
    if to is not None and len(paths) != 1:
        raise UserError(
            "--to",
            "--to converts one file at a time and prints it",
            "cdsl fmt spec.cdsl --to yaml > spec.yaml",
        )
    code = EXIT_OK
    for path in paths:
        try:
            changed = _fmt_one(path, check_only=check_only, to=to, out=out)
        except UserError as e:
            err.write(e.render() + "\n")
            code = EXIT_INVALID
            continue
        if changed and check_only:
            code = max(code, EXIT_FAILED)
    return code


def _fmt_one(path: str, *, check_only: bool, to: str | None, out: TextIO) -> bool:
    """Format one file; whether it is (or, with ``check_only``, would be) rewritten."""
    spec = parse_file(path)
    as_yaml = is_yaml_path(path) if to is None else to == "yaml"
    canonical = to_yaml(spec) if as_yaml else to_dsl(spec, comments=True)
    if to is not None:
        out.write(canonical)
        return False
    text = normalize_text(read_text(path))
    if text == canonical:
        return False
    if check_only:
        out.write(f"would reformat {path}\n")
        return True
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
    return True


def hash_file(path: str, *, out: TextIO) -> int:
    """``cdsl hash``: sha256 of the canonical spec plus the hashes of its concept files."""
    spec = load(path)
    extra = concept_hashes(spec)
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
        check_output_file(output, "-o", replaceable=_is_our_schema(Path(output)))
        write_atomic(Path(output), text, where="-o", parents=True)
        out.write(f"wrote {output}\n")
    return EXIT_OK


def _is_our_schema(path: Path) -> bool:
    """Whether ``path`` is missing or holds a schema this command wrote (so it may be replaced)."""
    try:
        if not path.exists() or path.is_dir():
            return True  # nothing to lose (a folder is refused by the output check)
        data = json.loads(read_bytes(path, "spec").decode("utf-8"))
    except (UserError, UnicodeDecodeError, ValueError, OSError):
        return False
    return isinstance(data, dict) and data.get("title") == "constraintdsl spec"
