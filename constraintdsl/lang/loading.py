"""Reading spec files: one file as written (``parse_file``), or a whole spec with its
``include``s followed and flattened (``load``)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import replace
from pathlib import Path, PurePosixPath

from constraintdsl.errors import Diagnostic, Span, SpecError, UserError

from .nodes import Concept, Include, Let, Op
from .parser import is_yaml_path, normalize_text, parse_file_statements
from .spec import Spec
from .validate import assemble, check_concepts, check_lets

__all__ = ["MAX_BYTES", "concept_hashes", "load", "parse", "parse_file", "read_text", "spec_sources"]

MAX_BYTES = 16 * 1024 * 1024


def read_text(path: str | Path, *, at: Span | None = None) -> str:
    """A spec file's text (UTF-8), or a located error: missing file, too large, not UTF-8."""
    p = Path(path)
    where = str(path)

    def fail(message: str, hint: str | None = None) -> SpecError | UserError:
        if at is not None:
            return SpecError.single(at, message, hint)
        return UserError(where, message, hint)

    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise fail(f"no such file: {where}", "check the path (includes are relative to the including file)") from None
    except IsADirectoryError:
        raise fail(f"{where} is a directory, not a spec file") from None
    except OSError as e:
        raise fail(f"cannot read {where}: {e.strerror}") from None
    if len(data) > MAX_BYTES:
        raise fail(f"{where} is {len(data)} bytes; spec files are limited to {MAX_BYTES // (1024 * 1024)} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[: e.start].decode("utf-8", errors="replace")
        line = before.count("\n") + 1
        col = len(before) - (before.rfind("\n") + 1) + 1
        raise SpecError.single(
            Span(where, line, col), f"invalid UTF-8 byte 0x{data[e.start]:02x}", "save the file as UTF-8"
        ) from None


def parse(text: str, path: str | None = None) -> Spec:
    """Parse one spec file's DSL text into a :class:`Spec` (``include`` statements not followed).

    Raises :class:`SpecError` with every problem found in the file.
    """
    name = path or "<string>"
    text = normalize_text(text)
    header, statements, comments, diags = parse_file_statements(text, name)
    return assemble(header, statements, comments, diags, name, text)


def parse_file(path: str | Path, *, at: Span | None = None) -> Spec:
    """One file as written: DSL or YAML by extension, includes listed but not followed."""
    text = normalize_text(read_text(path, at=at))
    name = str(path)
    comments: list[tuple[int, str]] = []
    if is_yaml_path(path):
        from .yaml_twin import parse_yaml

        header, statements, diags = parse_yaml(text, name)
    else:
        header, statements, comments, diags = parse_file_statements(text, name)
    return assemble(header, statements, comments, diags, name, text, included=at is not None)


def load(path: str | Path) -> Spec:
    """The spec a file means: includes resolved relative to each including file and flattened.

    A file included twice (diamond) counts once; a cycle or a missing include is an error that
    shows the include chain.  Concept paths are rewritten relative to ``path``'s folder.
    Concepts and lets are global to the flattened spec: each name is defined once across all
    its files; a file may use the names defined in it and in the files it includes, and a let
    counts as used when any file of the spec uses it.
    """
    root = Path(path)
    sources: dict[str, str] = {}
    seen: set[Path] = set()
    concepts: list[Concept] = []
    lets: list[Let] = []
    constraints: list[Op] = []
    files: list[str] = []

    def visit(p: Path, chain: tuple[Path, ...], at: Include | None) -> Spec:
        real = p.resolve()
        seen.add(real)
        try:
            spec = parse_file(p, at=at.span if at else None)
        except SpecError as e:
            sources.update(e.sources)
            raise SpecError(e.diagnostics, sources) from None
        files.append(str(p))
        items: list[tuple[int, Include | Concept | Let | Op]] = [(s.span.line, s) for s in spec.includes]
        items += [(s.span.line, s) for s in spec.concepts]
        items += [(s.span.line, s) for s in spec.lets]
        items += [(s.span.line, s) for s in spec.constraints]
        for _, stmt in sorted(items, key=lambda t: t[0]):
            if isinstance(stmt, Include):
                target = Path(os.path.normpath(p.parent / stmt.path))
                treal = target.resolve()
                if treal in {c.resolve() for c in (*chain, p)}:
                    names = " → ".join(str(c) for c in (*chain, p, target))
                    raise SpecError(
                        Diagnostic(stmt.span, f"include cycle: {names}", "remove one of these includes"),
                        _texts(sources, (*chain, p)),
                    )
                if treal in seen:
                    continue
                if not target.is_file():
                    names = " → ".join(str(c) for c in (*chain, p, target))
                    what = "is a directory, not a spec file" if target.is_dir() else "not found"
                    raise SpecError(
                        Diagnostic(stmt.span, f"included file {what}: {target}", f"include chain: {names}"),
                        _texts(sources, (*chain, p)),
                    )
                visit(target, (*chain, p), stmt)
            elif isinstance(stmt, Concept):
                concepts.append(_rebase(stmt, p.parent, root.parent))
            elif isinstance(stmt, Let):
                lets.append(stmt)
            else:
                constraints.append(stmt)
        return spec

    try:
        top = visit(root, (), None)
    except SpecError as e:
        raise SpecError(e.diagnostics, {**_texts({}, [Path(f) for f in files]), **e.sources}) from None
    diags = check_concepts(concepts, constraints) + check_lets(lets, constraints)
    if diags:
        raise SpecError(diags, _texts({}, [Path(f) for f in files]))
    model = top.model
    return Spec(
        version=top.version,
        name=top.name,
        model=model,
        includes=(),
        concepts=tuple(concepts),
        lets=tuple(lets),
        constraints=tuple(constraints),
        path=str(root),
        sources=tuple(files),
        comments=top.comments,
        header_lines=top.header_lines,
    )


def _rebase(concept: Concept, folder: Path, root_folder: Path) -> Concept:
    def rebased(path: str) -> str:
        if folder == root_folder or PurePosixPath(path).is_absolute():
            return path
        return PurePosixPath(Path(os.path.relpath(folder / path, root_folder))).as_posix()

    calibrated = None if concept.calibrated is None else rebased(concept.calibrated)
    return replace(concept, path=rebased(concept.path), calibrated=calibrated)


def spec_sources(spec: Spec) -> dict[str, str]:
    """The texts of every file ``spec`` came from, for rendering errors that point into them."""
    return _texts({}, [Path(p) for p in spec.sources or (spec.path,)])


def _texts(sources: dict[str, str], paths: tuple[Path, ...] | list[Path]) -> dict[str, str]:
    out = dict(sources)
    for p in paths:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            out.setdefault(str(p), normalize_text(p.read_text(encoding="utf-8")))
    return out


# The files of a sae-lens SAE folder that a concept reads (docs/interop.md).
SAE_FILES = ("cfg.json", "sae_weights.safetensors")


def _sha256(path: Path) -> str:
    """sha256 of a file's bytes (a folder: of its SAE files, in order), read in chunks."""
    h = hashlib.sha256()
    files = [path / name for name in SAE_FILES] if path.is_dir() else [path]
    for f in files:
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def concept_hashes(spec: Spec) -> dict[str, str]:
    """``concept:NAME`` → sha256 of the file each concept names (pairs data, artifact or imported vector;
    for an SAE folder, its ``cfg.json`` and weights), and ``concept:NAME:calibrated`` → sha256 of the pair
    set a ``calibrated on`` clause names.

    Paths are relative to the spec's folder.  A missing or unreadable file is an error at the
    statement's path.
    """
    base = Path(spec.path).parent
    out: dict[str, str] = {}
    diags: list[Diagnostic] = []
    for c in spec.concepts:
        named = [(f"concept:{c.name}", c.path, c.path_span)]
        if c.calibrated is not None:
            named.append((f"concept:{c.name}:calibrated", c.calibrated, c.calibrated_span))
        for key, path, span in named:
            p = Path(os.path.normpath(base / path))
            try:
                out[key] = _sha256(p)
            except FileNotFoundError as e:
                missing = Path(e.filename) if e.filename else p
                diags.append(
                    Diagnostic(span, f"concept file not found: {missing}", "paths are relative to the spec file")
                )
            except OSError as e:
                diags.append(Diagnostic(span, f"cannot read concept file {p}: {e.strerror}", None))
    if diags:
        raise SpecError(diags, spec_sources(spec))
    return out
