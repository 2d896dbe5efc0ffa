"""Checks across statements: header, duplicate concepts and lets, references to undefined
concepts and variables, lets never used, let values whose unit does not fit where they are used.

Local checks (units, ranges, sites, …) happen while each statement is built, in the parser
and the YAML twin alike; this module sees the whole file (or the whole flattened spec).
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Collection, Sequence
from typing import cast

from constraintdsl.errors import Diagnostic, Span, SpecError, clip, did_you_mean

from .canonical import canonical_checks, canonical_data, format_value
from .nodes import (
    OP_CLASSES,
    Budget,
    Check,
    Clamp,
    Concept,
    Data,
    Include,
    Let,
    Op,
    Ref,
    Statement,
    Target,
    Value,
    op_refs,
)
from .parser import Header, unit_problem
from .spec import Spec

__all__ = ["SUPPORTED_VERSION", "assemble", "check_checks", "check_concepts", "check_data", "check_lets", "let_points"]

MAX_VARIANTS = 1024  # variants one spec may expand to

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
    *,
    included: bool = False,
) -> Spec:
    """Check one file's header and statements and build its :class:`Spec` (or raise).

    ``included`` marks a file read through another's ``include``: its lets may be used by
    the including file, so "never used" is left to the check of the whole spec.
    """
    diags = list(diags)
    header_diags = check_header(header, path, bool(statements) or bool(diags))
    if diags:  # a broken file may have lost its version line; don't also claim it is missing
        header_diags = [d for d in header_diags if d.message not in (MISSING_DSL, MISSING_YAML, "empty spec")]
    diags.extend(header_diags)
    includes = tuple(s for s in statements if isinstance(s, Include))
    concepts = tuple(s for s in statements if isinstance(s, Concept))
    lets = tuple(s for s in statements if isinstance(s, Let))
    constraints = cast(tuple[Op, ...], tuple(s for s in statements if isinstance(s, tuple(OP_CLASSES.values()))))
    checks = tuple(s for s in statements if isinstance(s, Budget | Target))
    data = tuple(s for s in statements if isinstance(s, Data))
    diags.extend(check_data(data))
    diags.extend(check_concepts(concepts, constraints, references=not includes))
    diags.extend(check_checks(checks, concepts, references=not includes))
    # A file without operations (a library of concepts and lets) is checked for unused lets where it is included.
    diags.extend(
        check_lets(
            lets,
            constraints,
            references=not includes,
            unused=not included and bool(constraints),
            broken=header.broken_lets,
        )
    )
    if diags:
        raise SpecError(diags, {path: text})
    return Spec(
        version=header.version[0] if header.version else SUPPORTED_VERSION,
        name=header.name[0] if header.name else None,
        model=header.model[0] if header.model else None,
        includes=includes,
        concepts=concepts,
        lets=lets,
        constraints=constraints,
        checks=canonical_checks(checks),
        data=canonical_data(data),
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


def check_checks(checks: Sequence[Check], concepts: Sequence[Concept], *, references: bool = True) -> list[Diagnostic]:
    """At most one budget per measure and one target per measure and direction; with ``references``,
    every target names ``ab`` or a defined concept."""
    out: list[Diagnostic] = []
    seen: dict[tuple[str, ...], Check] = {}
    names = {c.name for c in concepts}
    for check in checks:
        key = (check.keyword, check.measure) + ((check.cmp,) if isinstance(check, Target) else ())
        if key in seen:
            first = seen[key].span
            where = f"line {first.line}" if first.path == check.span.path else str(first)
            out.append(
                Diagnostic(
                    check.span,
                    f"a second `{' '.join(key)}` statement",
                    f"the first is at {where}; keep one (the stricter one is what you mean)",
                )
            )
            continue
        seen[key] = check
        if references and isinstance(check, Target) and check.measure != "ab" and check.measure not in names:
            hint = did_you_mean(check.measure, [*sorted(names), "ab"]) or (
                "a target names `ab` (the A/B p(match) shift) or a concept of this spec (its readout shift)"
            )
            out.append(Diagnostic(check.measure_span, f"unknown target '{clip(check.measure)}'", hint))
    return out


def check_data(data: Sequence[Data]) -> list[Diagnostic]:
    """At most one ``data`` statement per kind."""
    out: list[Diagnostic] = []
    seen: dict[str, Data] = {}
    for d in data:
        if d.kind in seen:
            first = seen[d.kind].span
            where = f"line {first.line}" if first.path == d.span.path else str(first)
            out.append(Diagnostic(d.span, f"a second `data {d.kind}` statement", f"the first is at {where}; keep one"))
        else:
            seen[d.kind] = d
    return out


def let_points(let: Let) -> tuple[Value, ...]:
    """The values a let's checks must hold for: its listed values, or a range's two ends."""
    return let.values if let.range is None else let.range


def _undefined(name: str, span: Span, defined: dict[str, Concept]) -> Diagnostic:
    hint = did_you_mean(name, defined) or f'define it first: concept {name} from pairs "data/{name}.yaml"'
    return Diagnostic(span, f"unknown concept '{name}'", hint)


def check_lets(
    lets: Sequence[Let],
    constraints: Sequence[Op],
    *,
    references: bool = True,
    unused: bool = True,
    broken: Collection[str] = (),
) -> list[Diagnostic]:
    """Lets defined once, without repeated values, and at most :data:`MAX_VARIANTS` variants in all.

    With ``references``: every ``$name`` is defined, each let value fits every place its variable
    is used (``steer``/``scale`` take no percentile), and an interval stays non-empty in every variant.
    With ``unused`` as well: every let is used somewhere.  ``broken`` names lets whose lines were
    already reported as unreadable: neither they nor their uses are reported again.
    """
    out: list[Diagnostic] = []
    defined: dict[str, Let] = {}
    for let in lets:
        if let.name in defined:
            first = defined[let.name].name_span
            where = f"line {first.line}" if first.path == let.name_span.path else str(first)
            out.append(Diagnostic(let.name_span, f"let '{let.name}' is defined twice", f"the first is at {where}"))
            continue
        defined[let.name] = let
        out.extend(_repeated_values(let))
    out.extend(_too_many(list(defined.values())))
    if not references:
        return out
    used: set[str] = set()
    for op in constraints:
        for key, ref in op_refs(op):
            let_ = defined.get(ref.name)
            if let_ is None and ref.name in broken:
                continue
            if let_ is None:
                out.append(_undefined_ref(ref, defined))
                close = difflib.get_close_matches(ref.name, list(defined), n=1, cutoff=0.6)
                used.update(close)  # the misspelt use is reported; don't also call its let unused
                continue
            used.add(ref.name)
            out.extend(_unfit_values(let_, op, key, ref))
        if isinstance(op, Clamp) and op.min is not None and op.max is not None:
            out.extend(_empty_intervals(op, defined))
    if unused:
        for let in defined.values():
            if let.name not in used and let.name not in broken:
                out.append(
                    Diagnostic(
                        let.name_span,
                        f"let '{let.name}' is never used",
                        f"use it as ${let.name} where a value goes (clamp … >= ${let.name}), or delete the line",
                    )
                )
    return out


def _repeated_values(let: Let) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    seen: list[Value] = []
    for i, v in enumerate(let.values):
        if v in seen:
            span = let.value_spans[i] if i < len(let.value_spans) else let.span
            out.append(
                Diagnostic(
                    span,
                    f"value {format_value(v)} appears twice in let '{let.name}'",
                    "each value makes one variant; delete the repeat",
                )
            )
        else:
            seen.append(v)
    return out


def _too_many(lets: list[Let]) -> list[Diagnostic]:
    total = 1
    lets = [let for let in lets if let.range is None]  # a range is searched by tune, not expanded
    for i, let in enumerate(lets):
        total *= len(let.values)
        if total > MAX_VARIANTS:
            count = math.prod(len(x.values) for x in lets)
            sizes = " × ".join(f"{x.name}: {len(x.values)}" for x in lets)
            return [
                Diagnostic(
                    lets[i].name_span,
                    f"these lets expand to {count:,} variants ({sizes}); at most {MAX_VARIANTS:,} are allowed",
                    "sweep fewer values, or split the sweep into several spec files",
                )
            ]
    return []


def _undefined_ref(ref: Ref, defined: dict[str, Let]) -> Diagnostic:
    hint = did_you_mean(f"${ref.name}", [f"${name}" for name in defined])
    return Diagnostic(
        ref.span,
        f"undefined variable ${ref.name}",
        hint or f"define it on its own line: let {ref.name} = 0.1 | 0.3 | 0.5",
    )


def _unfit_values(let: Let, op: Op, key: str, ref: Ref) -> list[Diagnostic]:
    context = "gate" if key == "when" else op.keyword
    out: list[Diagnostic] = []
    for i, v in enumerate(let_points(let)):
        problem = unit_problem(v, context)
        if problem is not None:
            span = let.value_spans[i] if i < len(let.value_spans) else let.span
            use = f"`{op.keyword} {op.concept} by ${ref.name}` ({_where(ref.span, span)})"
            message = f"{format_value(v)} in let '{let.name}' does not fit {use}: {problem[0]}"
            out.append(Diagnostic(span, message, problem[1]))
    return out


def _where(use: Span, here: Span) -> str:
    return f"line {use.line}" if use.path == here.path else str(use)


def _empty_intervals(op: Clamp, defined: dict[str, Let]) -> list[Diagnostic]:
    """An interval with a variable must hold min <= max in every variant (same units compared)."""
    assert op.min is not None and op.max is not None
    if not isinstance(op.min, Ref) and not isinstance(op.max, Ref):
        return []

    def choices(v: Value | Ref) -> list[tuple[str | None, Value]]:
        if isinstance(v, Value):
            return [(None, v)]
        let = defined.get(v.name)
        return [(v.name, x) for x in let_points(let)] if let is not None else []

    for (lo_name, lo), (hi_name, hi) in itertools.product(choices(op.min), choices(op.max)):
        if lo_name is not None and lo_name == hi_name and lo != hi:
            continue  # one variable gives one value per variant
        if lo.unit == hi.unit and lo.number > hi.number:
            binding = ",".join(f"{n}={format_value(x)}" for n, x in ((lo_name, lo), (hi_name, hi)) if n is not None)
            return [
                Diagnostic(
                    op.span,
                    f"empty interval in variant {binding}: {format_value(lo)} is above {format_value(hi)}",
                    "every variant needs min <= max; change the let values or the bounds",
                )
            ]
    return []
