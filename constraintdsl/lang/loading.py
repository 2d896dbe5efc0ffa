"""Reading spec files: one file as written (``parse_file``), or a whole spec with its
``include``s followed and flattened (``load``)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import replace
from pathlib import Path, PurePosixPath

from constraintdsl.errors import Diagnostic, Span, SpecError, UserError
from constraintdsl.files import LIMITS, explain_os_error, kind_of, read_bytes

from .canonical import canonical_checks, canonical_data
from .nodes import Budget, Check, Concept, Data, Include, Let, Op, Target
from .parser import is_yaml_path, normalize_text, parse_file_statements
from .spec import Spec
from .validate import assemble, check_checks, check_concepts, check_data, check_lets

__all__ = [
    "MAX_BYTES",
    "SAE_FILES",
    "concept_file_hash",
    "concept_hashes",
    "load",
    "parse",
    "parse_file",
    "read_text",
    "spec_sources",
]

MAX_BYTES = LIMITS["spec"]


def read_text(path: str | os.PathLike[str], *, at: Span | None = None, kind: str = "spec") -> str:
    """A text file's contents (UTF-8), or a located error: missing, not a regular file, too large (see
    :data:`constraintdsl.files.LIMITS` for ``kind``), unreadable, not UTF-8."""
    where = str(path)
    data = read_bytes(path, kind, at=at)
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
    if not isinstance(text, str):
        hint = " (to read a file, use constraintdsl.load(path))" if isinstance(text, Path) else ""
        raise TypeError(f"parse() takes the spec's text as a str, not {type(text).__name__}{hint}")
    if path is not None and not isinstance(path, str):
        raise TypeError(f"parse()'s path names the text's file for messages: a str, not {type(path).__name__}")
    name = path or "<string>"
    text = normalize_text(text)
    header, statements, comments, diags = parse_file_statements(text, name)
    return assemble(header, statements, comments, diags, name, text)


def parse_file(path: str | os.PathLike[str], *, at: Span | None = None) -> Spec:
    """One file as written: DSL or YAML by extension, includes listed but not followed."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"parse_file() takes the path of a spec file (str or Path), not {type(path).__name__}")
    text = normalize_text(read_text(path, at=at))
    name = str(path)
    comments: list[tuple[int, str]] = []
    if is_yaml_path(path):
        from .yaml_twin import parse_yaml

        header, statements, diags = parse_yaml(text, name)
    else:
        header, statements, comments, diags = parse_file_statements(text, name)
    return assemble(header, statements, comments, diags, name, text, included=at is not None)


def load(path: str | os.PathLike[str]) -> Spec:
    """The spec a file means: includes resolved relative to each including file and flattened.

    A file included twice (diamond) counts once; a cycle or a missing include is an error that
    shows the include chain.  Concept paths are rewritten relative to ``path``'s folder.
    Concepts and lets are global to the flattened spec: each name is defined once across all
    its files; a file may use the names defined in it and in the files it includes, and a let
    counts as used when any file of the spec uses it.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"load() takes the path of a spec file (str or Path), not {type(path).__name__}")
    root = Path(path)
    sources: dict[str, str] = {}
    seen: set[Path] = set()
    concepts: list[Concept] = []
    lets: list[Let] = []
    constraints: list[Op] = []
    checks: list[Check] = []
    data: list[Data] = []
    files: list[str] = []

    def visit(p: Path, chain: tuple[Path, ...], at: Include | None) -> Spec:
        real = _real(p)
        seen.add(real)
        try:
            spec = parse_file(p, at=at.span if at else None)
        except SpecError as e:
            sources.update(e.sources)
            raise SpecError(e.diagnostics, sources) from None
        files.append(str(p))
        items: list[tuple[int, Include | Concept | Let | Op | Check | Data]] = [(s.span.line, s) for s in spec.includes]
        items += [(s.span.line, s) for s in spec.concepts]
        items += [(s.span.line, s) for s in spec.lets]
        items += [(s.span.line, s) for s in spec.constraints]
        items += [(s.span.line, s) for s in spec.checks]
        items += [(s.span.line, s) for s in spec.data]
        for _, stmt in sorted(items, key=lambda t: t[0]):
            if isinstance(stmt, Include):
                target = Path(os.path.normpath(p.parent / stmt.path))
                treal = _real(target)
                if treal in {_real(c) for c in (*chain, p)}:
                    names = " → ".join(str(c) for c in (*chain, p, target))
                    raise SpecError(
                        Diagnostic(stmt.span, f"include cycle: {names}", "remove one of these includes"),
                        _texts(sources, (*chain, p)),
                    )
                if treal in seen:
                    continue
                what = _include_problem(target)
                if what is not None:
                    names = " → ".join(str(c) for c in (*chain, p, target))
                    raise SpecError(
                        Diagnostic(stmt.span, f"included file {what}: {target}", f"include chain: {names}"),
                        _texts(sources, (*chain, p)),
                    )
                visit(target, (*chain, p), stmt)
            elif isinstance(stmt, Concept):
                concepts.append(_rebase(stmt, p.parent, root.parent))
            elif isinstance(stmt, Let):
                lets.append(stmt)
            elif isinstance(stmt, Budget | Target):
                checks.append(stmt)
            elif isinstance(stmt, Data):
                data.append(_rebase_data(stmt, p.parent, root.parent))
            else:
                constraints.append(stmt)
        return spec

    try:
        top = visit(root, (), None)
    except SpecError as e:
        raise SpecError(e.diagnostics, {**_texts({}, [Path(f) for f in files]), **e.sources}) from None
    diags = (
        check_concepts(concepts, constraints)
        + check_lets(lets, constraints)
        + check_checks(checks, concepts)
        + check_data(data)
    )
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
        checks=canonical_checks(tuple(checks)),
        data=canonical_data(tuple(data)),
        path=str(root),
        sources=tuple(files),
        comments=top.comments,
        header_lines=top.header_lines,
    )


def _real(path: Path) -> Path:
    # os.path.realpath does not raise on a symlink loop (Path.resolve does, on Python < 3.13)
    return Path(os.path.realpath(path))


def _include_problem(target: Path) -> str | None:
    """Why an included path cannot be read as a spec file, or None when it is a regular file."""
    try:
        kind = kind_of(target)
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return f"cannot be read ({explain_os_error(exc)[0]})"
    if kind is None:
        return None
    return "is a directory, not a spec file" if kind == "a folder" else f"is {kind}, not a spec file"


def _rebase(concept: Concept, folder: Path, root_folder: Path) -> Concept:
    def rebased(path: str) -> str:
        if folder == root_folder or PurePosixPath(path).is_absolute():
            return path
        return PurePosixPath(Path(os.path.relpath(folder / path, root_folder))).as_posix()

    calibrated = None if concept.calibrated is None else rebased(concept.calibrated)
    return replace(concept, path=rebased(concept.path), calibrated=calibrated)


def _rebase_data(data: Data, folder: Path, root_folder: Path) -> Data:
    if folder == root_folder or PurePosixPath(data.path).is_absolute():
        return data
    return replace(data, path=PurePosixPath(Path(os.path.relpath(folder / data.path, root_folder))).as_posix())


def relocate(spec: Spec, folder: str | os.PathLike[str]) -> Spec:
    """``spec`` with its concept paths rewritten relative to ``folder``, for writing it there (its paths are
    relative to its own file's folder)."""
    here, there = Path(os.path.abspath(Path(spec.path).parent)), Path(os.path.abspath(folder))
    return replace(
        spec,
        concepts=tuple(_rebase(c, here, there) for c in spec.concepts),
        data=tuple(_rebase_data(d, here, there) for d in spec.data),
    )


def spec_sources(spec: Spec) -> dict[str, str]:
    """The texts of every file ``spec`` came from, for rendering errors that point into them."""
    return _texts({}, [Path(p) for p in spec.sources or (spec.path,)])


def _texts(sources: dict[str, str], paths: tuple[Path, ...] | list[Path]) -> dict[str, str]:
    out = dict(sources)
    for p in paths:
        if str(p) not in out:
            with contextlib.suppress(UserError, UnicodeDecodeError):
                out[str(p)] = normalize_text(read_bytes(p, "spec").decode("utf-8"))
    return out


# The files of a sae-lens SAE folder that a concept reads (docs/interop.md).
SAE_FILES = ("cfg.json", "sae_weights.safetensors")


def concept_file_hash(path: str | os.PathLike[str], kind: str, *, at: Span | None = None, folder: bool = False) -> str:
    """``sha256:<hex>`` of a concept file's or pair set's bytes (``kind``: ``"concept"`` or ``"pairs"``);
    with ``folder`` (an SAE, ``from sae``), of its folder's :data:`SAE_FILES` in order.  Each file is read
    as :func:`constraintdsl.files.read_bytes` reads it (a regular file within the size limit), so a problem
    is a located error."""
    p = Path(path)
    h = hashlib.sha256()
    for f in [p / name for name in SAE_FILES] if folder and p.is_dir() else [p]:
        h.update(read_bytes(f, kind, at=at))
    return "sha256:" + h.hexdigest()


def concept_hashes(spec: Spec) -> dict[str, str]:
    """``concept:NAME`` → sha256 of the file each concept names (pairs data, artifact or imported vector;
    for an SAE folder, its ``cfg.json`` and weights), and ``concept:NAME:calibrated`` → sha256 of the pair
    set a ``calibrated on`` clause names.

    Paths are relative to the spec's folder.  A missing or unreadable file (or one that is not a regular
    file, or too large) is an error at the statement that names it; every such problem is reported.
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
            kind = "pairs" if c.source == "pairs" or key.endswith(":calibrated") else "concept"
            try:
                out[key] = concept_file_hash(p, kind, at=span, folder=kind == "concept" and c.source == "sae")
            except SpecError as e:
                diags.extend(e.diagnostics)
    if diags:
        raise SpecError(diags, spec_sources(spec))
    return out
