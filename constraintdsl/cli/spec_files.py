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
from constraintdsl.files import check_output_file, read_bytes
from constraintdsl.lang.canonical import format_let_values, spec_hash, to_dsl, to_yaml
from constraintdsl.lang.diff import diff, render_changes
from constraintdsl.lang.loading import concept_hashes, load, parse_file, read_text, spec_sources
from constraintdsl.lang.parser import is_yaml_path, normalize_text
from constraintdsl.lang.variants import continuous, expand

from .common import EXIT_FAILED, EXIT_INVALID, EXIT_OK, OutputFormat, SpecFormat, StrictOpt, emit_warnings, warnings_as

__all__ = ["check", "diff_files", "fmt", "hash_file", "register", "schema"]


def check(
    paths: list[str],
    *,
    fmt: str,
    out: TextIO,
    err: TextIO,
    resolve_concepts: bool = True,
    model: str | None = None,
    strict: bool = False,
) -> int:
    """``cdsl check``: load each spec (includes), open every concept file and pair set it names, and report
    every problem; exit 1 when a spec has problems, 2 when a file cannot be read at all.

    With ``model`` (a name, hub id or folder) each spec is also checked against that model's config and
    tokenizer, without loading its weights (see :mod:`constraintdsl.compiler.preflight`).  A spec with lets also
    reports its variants: their count in text, their names in JSON (``variants``; empty for a spec
    without lets).  Warnings are reported where they can be known without loading the model
    (:func:`constraintdsl.compiler.lint.spec_warnings`: concept files present or cached); ``strict``
    makes them errors (exit 1)."""
    from constraintdsl.compiler.lint import spec_warnings
    from constraintdsl.compiler.preflight import check_files

    described = None
    if model is not None:
        from constraintdsl.models.loading import describe_model

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
                    from constraintdsl.compiler.preflight import check_model

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
        ranges = continuous(spec)
        variants = [v.name for v in expand(spec)] if spec.lets and not ranges else []
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
            if ranges:
                counts += ", to tune: " + ", ".join(f"{let.name} = {format_let_values(let)}" for let in ranges)
            if spec.checks:
                counts += f", {len(spec.checks)} budget/target statement{'s' * (len(spec.checks) != 1)}"
            if warnings:
                counts += f", {len(warnings)} warning{'s' * (len(warnings) != 1)}"
            if described is not None:
                counts += f"; fits {described[1].id}"
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
    from constraintdsl.lang.yaml_twin import json_schema

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


# -- the command line ------------------------------------------------------------------------

Files = Annotated[list[str], typer.Argument(help="spec files (.cdsl or .yaml)", metavar="FILE...")]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", help="text or json")]


def _check_cmd(
    files: Files,
    format: FormatOpt = OutputFormat.text,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="also check against this model's config and tokenizer (layers, hidden size, depth; no weights "
            "are loaded): smollm2, a Hugging Face id or a local folder",
        ),
    ] = None,
    strict: StrictOpt = False,
) -> None:
    """Check spec files, their includes and every concept file and pair set they name; report every problem,
    and the warnings that can be known without loading the model (concept files present or cached)."""
    raise typer.Exit(check(files, fmt=format.value, out=sys.stdout, err=sys.stderr, model=model, strict=strict))


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
