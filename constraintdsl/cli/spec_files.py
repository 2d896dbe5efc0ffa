"""``cdsl check``, ``fmt``, ``hash``, ``diff`` and ``schema``: the verbs on spec files (no model needed).

Each verb's work is a function that takes parsed arguments and output streams and returns an exit code
(0 ok, 1 check failed or specs differ, 2 invalid input); :func:`register` adds the command-line
parsing for them to the ``cdsl`` app.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from constraintdsl.atomic import write_atomic
from constraintdsl.errors import Span, SpecError, UserError
from constraintdsl.lang.canonical import spec_hash, to_dsl, to_yaml
from constraintdsl.lang.diff import diff, render_changes
from constraintdsl.lang.loading import concept_hashes, load, parse_file, read_text
from constraintdsl.lang.parser import is_yaml_path, normalize_text
from constraintdsl.lang.spec import Spec
from constraintdsl.lang.variants import expand

from .common import EXIT_FAILED, EXIT_INVALID, EXIT_OK, OutputFormat, SpecFormat

__all__ = ["check", "diff_files", "fmt", "hash_file", "register", "schema"]


def _load_checked(path: str, *, resolve_concepts: bool) -> tuple[Spec, dict[str, str]]:
    spec = load(path)
    return spec, concept_hashes(spec) if resolve_concepts else {}


def check(paths: list[str], *, fmt: str, out: TextIO, err: TextIO, resolve_concepts: bool = True) -> int:
    """``cdsl check``: load each spec (includes, concept files) and report every problem.

    A spec with lets also reports its variants: their count in text, their names in JSON
    (``variants``; empty for a spec without lets)."""
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
            out.write(f"ok: {path} ({counts})\n")
    if fmt == "json":
        out.write(json.dumps({"files": results}, indent=2, ensure_ascii=False) + "\n")
    return code


def _yaml_comment(text: str) -> tuple[int, int] | None:
    """Line and column of the first YAML comment, if any (pyyaml would drop it)."""
    from constraintdsl.lang.parser import _comment_start

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
    from constraintdsl.lang.yaml_twin import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if output is None:
        out.write(text)
    else:
        write_atomic(Path(output), text)
        out.write(f"wrote {output}\n")
    return EXIT_OK


# -- the command line ------------------------------------------------------------------------

Files = Annotated[list[str], typer.Argument(help="spec files (.cdsl or .yaml)", metavar="FILE...")]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", help="text or json")]


def _check_cmd(files: Files, format: FormatOpt = OutputFormat.text) -> None:
    """Check spec files: syntax, references, includes and concept files; report every problem."""
    raise typer.Exit(check(files, fmt=format.value, out=sys.stdout, err=sys.stderr))


def _fmt_cmd(
    files: Files,
    check: Annotated[bool, typer.Option("--check", help="only report files that would change (exit 1)")] = False,
    to: Annotated[SpecFormat | None, typer.Option("--to", help="print the file converted to dsl or yaml")] = None,
) -> None:
    """Rewrite spec files in canonical form (idempotent; comments kept in DSL files)."""
    raise typer.Exit(fmt(files, check_only=check, to=to.value if to else None, out=sys.stdout, err=sys.stderr))


def _hash_cmd(file: Annotated[str, typer.Argument(help="spec file", metavar="FILE")]) -> None:
    """Print the content hash of a spec: canonical form plus the hashes of its concept files."""
    raise typer.Exit(hash_file(file, out=sys.stdout))


def _diff_cmd(
    old: Annotated[str, typer.Argument(metavar="A")],
    new: Annotated[str, typer.Argument(metavar="B")],
    format: FormatOpt = OutputFormat.text,
) -> None:
    """Semantic diff of two specs (exit 1 when they differ)."""
    raise typer.Exit(diff_files(old, new, fmt=format.value, out=sys.stdout))


def _schema_cmd(
    output: Annotated[str | None, typer.Option("-o", "--output", help="write to this file")] = None,
) -> None:
    """Print the JSON Schema of the YAML spec form."""
    raise typer.Exit(schema(output, out=sys.stdout))


def register(app: typer.Typer) -> None:
    """Add ``check``, ``fmt``, ``hash``, ``diff`` and ``schema`` to the ``cdsl`` app."""
    app.command("check")(_check_cmd)
    app.command("fmt")(_fmt_cmd)
    app.command("hash")(_hash_cmd)
    app.command("diff")(_diff_cmd)
    app.command("schema")(_schema_cmd)
