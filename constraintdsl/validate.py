"""Checks across statements: header, duplicate concepts, references to undefined concepts.

Local checks (units, ranges, sites, …) happen while each statement is built, in the parser
and the YAML twin alike; this module sees the whole file (or the whole flattened spec).
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import Diagnostic, Span, SpecError, clip, did_you_mean
from .parser import Header
from .spec import Concept, Include, Op, Spec, Statement

__all__ = ["SUPPORTED_VERSION", "assemble", "check_concepts"]

SUPPORTED_VERSION = 1
MISSING_DSL = "missing `version 1`"
MISSING_YAML = "missing `version: 1`"


def assemble(
    header: Header,
    statements: Sequence[Statement],
    comments: Sequence[tuple[int, str]],
    diags: list[Diagnostic],
    path: str,
    text: str,
) -> Spec:
    """Check one file's header and statements and build its :class:`Spec` (or raise)."""
    diags = list(diags)
    header_diags = check_header(header, path, bool(statements) or bool(diags))
    if diags:  # a broken file may have lost its version line; don't also claim it is missing
        header_diags = [d for d in header_diags if d.message not in (MISSING_DSL, MISSING_YAML, "empty spec")]
    diags.extend(header_diags)
    includes = tuple(s for s in statements if isinstance(s, Include))
    concepts = tuple(s for s in statements if isinstance(s, Concept))
    constraints = tuple(s for s in statements if not isinstance(s, Include | Concept))
    diags.extend(check_concepts(concepts, constraints, references=not includes))
    if diags:
        raise SpecError(diags, {path: text})
    return Spec(
        version=header.version[0] if header.version else SUPPORTED_VERSION,
        name=header.name[0] if header.name else None,
        model=header.model[0] if header.model else None,
        includes=includes,
        concepts=concepts,
        constraints=constraints,
        path=path,
        sources=(path,),
        comments=tuple(comments),
        header_lines=tuple(
            (key, item[1].line)
            for key, item in (("version", header.version), ("name", header.name), ("model", header.model))
            if item is not None
        ),
    )


def check_header(header: Header, path: str, has_content: bool) -> list[Diagnostic]:
    """version first and equal to 1; name/model/version at most once."""
    out: list[Diagnostic] = []
    if header.version is None:
        yaml = path.lower().endswith((".yaml", ".yml"))
        opening = "`version: 1`" if yaml else "the line `version 1`"
        if not has_content:
            out.append(Diagnostic(Span(path, 1, 1), "empty spec", f"a spec starts with {opening}"))
        else:
            where = header.first_statement or Span(path, 1, 1)
            out.append(Diagnostic(where, MISSING_YAML if yaml else MISSING_DSL, f"a spec starts with {opening}"))
    else:
        number, span = header.version
        if header.first_statement is not None and header.first_statement != span:
            out.append(Diagnostic(span, "`version` must be the first statement", "move `version 1` to the top"))
        if number != SUPPORTED_VERSION:
            out.append(
                Diagnostic(
                    header.version_number or span,
                    f"unsupported spec version {clip(str(number), 20)}",
                    "this constraintdsl reads `version 1` specs",
                )
            )
    for key, first, second in header.duplicates:
        out.append(Diagnostic(second, f"a second `{key}` statement", f"the first is at line {first.line}; keep one"))
    return out


def check_concepts(
    concepts: Sequence[Concept], constraints: Sequence[Op], *, references: bool = True
) -> list[Diagnostic]:
    """Concepts defined once; every op and gate names a defined concept (when ``references``)."""
    out: list[Diagnostic] = []
    defined: dict[str, Concept] = {}
    for c in concepts:
        if c.name in defined:
            first = defined[c.name].name_span
            where = f"line {first.line}" if first.path == c.name_span.path else str(first)
            out.append(
                Diagnostic(c.name_span, f"concept '{c.name}' is defined twice", f"the first definition is at {where}")
            )
        else:
            defined[c.name] = c
    if not references:
        return out
    for op in constraints:
        if op.concept not in defined:
            out.append(_undefined(op.concept, op.concept_span, defined))
        if op.gate is not None and op.gate.concept not in defined:
            g = op.gate.span
            out.append(
                _undefined(
                    op.gate.concept,
                    Span(g.path, g.line, g.col, g.line, g.col + len(op.gate.concept)),
                    defined,
                )
            )
    return out


def _undefined(name: str, span: Span, defined: dict[str, Concept]) -> Diagnostic:
    hint = did_you_mean(name, defined) or f'define it first: concept {name} from pairs "data/{name}.yaml"'
    return Diagnostic(span, f"unknown concept '{name}'", hint)
