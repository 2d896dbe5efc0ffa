"""Semantic diff of two specs: statements added, removed, and changed field by field.

Header fields compare by name, concepts and lets by name, and operations by their keyword and
concept: unchanged statements pair up first, then the remaining ones with the same keyword
and concept pair in file order and report their differing fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from constraintdsl.errors import Span

from .canonical import (
    format_check,
    format_gate,
    format_let_values,
    format_scale,
    format_tokens,
    format_value,
    format_where,
    statement_dsl,
)
from .nodes import Budget, Check, Clamp, Concept, Op, Pin, Scale, SpecLike, Steer

__all__ = ["Change", "diff", "render_changes"]


@dataclass(frozen=True, slots=True)
class Change:
    """One semantic difference; ``fields`` holds (field, old, new) for ``changed``."""

    kind: Literal["added", "removed", "changed"]
    subject: str
    fields: tuple[tuple[str, str, str], ...] = ()
    old: Span | None = None
    new: Span | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "fields": [{"field": f, "old": o, "new": n} for f, o, n in self.fields],
            "old": self.old.to_dict() if self.old else None,
            "new": self.new.to_dict() if self.new else None,
        }

    def render(self) -> str:
        """One line: ``~ clamp helpfulness: min 0.3 → 0.5 (a:3:1 → b:3:1)``."""
        if self.kind == "changed":
            body = "; ".join(f"{o} → {n}" if f == self.subject else f"{f} {o} → {n}" for f, o, n in self.fields)
            where = f"  ({self.old} → {self.new})" if self.old and self.new else ""
            return f"~ {self.subject}: {body}{where}"
        sign, span = ("+", self.new) if self.kind == "added" else ("-", self.old)
        return f"{sign} {self.subject}  ({span})"


def _op_fields(op: Op) -> dict[str, str]:
    f: dict[str, str] = {}
    if isinstance(op, Clamp):
        f["min"] = format_value(op.min) if op.min is not None else "none"
        f["max"] = format_value(op.max) if op.max is not None else "none"
    elif isinstance(op, Pin):
        f["value"] = format_value(op.value)
    elif isinstance(op, Steer):
        f["by"] = format_value(op.by)
    elif isinstance(op, Scale):
        f["by"] = format_scale(op.by)
    f["where"] = format_where(op.where).removeprefix("at ")
    f["site"] = op.site
    f["tokens"] = format_tokens(op.tokens)
    f["gate"] = format_gate(op.gate) if op.gate else "none"
    return f


def _concept_fields(c: Concept) -> dict[str, str]:
    return {
        "from": c.source,
        "path": c.path,
        "method": c.method,
        "feature": "none" if c.feature is None else str(c.feature),
        "calibrated": "none" if c.calibrated is None else c.calibrated,
    }


def _changed(a: dict[str, str], b: dict[str, str]) -> tuple[tuple[str, str, str], ...]:
    return tuple((k, a[k], b[k]) for k in a if a[k] != b[k])


def diff(a: SpecLike, b: SpecLike) -> list[Change]:
    """Semantic changes that turn spec ``a`` into spec ``b`` (empty when they are equal)."""
    for arg in (a, b):
        if not isinstance(arg, SpecLike):
            raise TypeError(f"diff() takes two Specs (from constraintdsl.load), not {type(arg).__name__}")
    out: list[Change] = []
    for key in ("version", "name", "model"):
        va, vb = getattr(a, key), getattr(b, key)
        if va != vb:
            old, new = ("none" if v is None else str(v) for v in (va, vb))
            out.append(Change("changed", key, ((key, old, new),)))
    for inc in a.includes:
        if inc not in b.includes:
            out.append(Change("removed", statement_dsl(inc), old=inc.span))
    for inc in b.includes:
        if inc not in a.includes:
            out.append(Change("added", statement_dsl(inc), new=inc.span))
    bc = {c.name: c for c in b.concepts}
    ac = {c.name: c for c in a.concepts}
    for c in a.concepts:
        if c.name not in bc:
            out.append(Change("removed", statement_dsl(c), old=c.span))
        elif c != bc[c.name]:
            fields = _changed(_concept_fields(c), _concept_fields(bc[c.name]))
            out.append(Change("changed", f"concept {c.name}", fields, c.span, bc[c.name].span))
    for c in b.concepts:
        if c.name not in ac:
            out.append(Change("added", statement_dsl(c), new=c.span))
    bl = {v.name: v for v in b.lets}
    al = {v.name: v for v in a.lets}
    for v in a.lets:
        if v.name not in bl:
            out.append(Change("removed", statement_dsl(v), old=v.span))
        elif v != bl[v.name]:
            subject = f"let {v.name}"
            values = (subject, format_let_values(v), format_let_values(bl[v.name]))
            out.append(Change("changed", subject, (values,), v.span, bl[v.name].span))
    for v in b.lets:
        if v.name not in al:
            out.append(Change("added", statement_dsl(v), new=v.span))
    out.extend(_diff_ops(list(a.constraints), list(b.constraints)))
    ad, bd = {x.kind: x for x in a.data}, {x.kind: x for x in b.data}
    for kind, x in ad.items():
        if kind not in bd:
            out.append(Change("removed", statement_dsl(x), old=x.span))
        elif x != bd[kind]:
            out.append(
                Change("changed", f"data {kind}", ((f"data {kind}", x.path, bd[kind].path),), x.span, bd[kind].span)
            )
    out.extend(Change("added", statement_dsl(x), new=x.span) for kind, x in bd.items() if kind not in ad)
    out.extend(_diff_checks(a.checks, b.checks))
    return out


def _check_key(check: Check) -> str:
    """Budgets pair by measure, targets by measure and direction: ``budget kl``, ``target ab >=``."""
    if isinstance(check, Budget):
        return f"budget {check.measure}"
    return f"target {check.measure} {check.cmp}"


def _diff_checks(a: tuple[Check, ...], b: tuple[Check, ...]) -> list[Change]:
    """``~ budget kl: 0.05 → 0.1``; added and removed budgets and targets."""
    out: list[Change] = []
    bk = {_check_key(c): c for c in b}
    ak = {_check_key(c): c for c in a}
    for c in a:
        key = _check_key(c)
        if key not in bk:
            out.append(Change("removed", format_check(c), old=c.span))
        elif c != bk[key]:
            other = bk[key]
            old = format_check(c).rsplit(" ", 1)[1]
            new = format_check(other).rsplit(" ", 1)[1]
            out.append(Change("changed", key, ((key, old, new),), c.span, other.span))
    out.extend(Change("added", format_check(c), new=c.span) for c in b if _check_key(c) not in ak)
    return out


def _diff_ops(a: list[Op], b: list[Op]) -> list[Change]:
    rest_a = list(range(len(a)))
    rest_b = list(range(len(b)))
    for i in list(rest_a):  # identical statements pair first
        for j in rest_b:
            if a[i] == b[j]:
                rest_a.remove(i)
                rest_b.remove(j)
                break
    out: list[Change] = []
    for i in list(rest_a):
        for j in rest_b:
            if a[i].keyword == b[j].keyword and a[i].concept == b[j].concept:
                fields = _changed(_op_fields(a[i]), _op_fields(b[j]))
                out.append(Change("changed", f"{a[i].keyword} {a[i].concept}", fields, a[i].span, b[j].span))
                rest_a.remove(i)
                rest_b.remove(j)
                break
    out.extend(Change("removed", statement_dsl(a[i]), old=a[i].span) for i in rest_a)
    out.extend(Change("added", statement_dsl(b[j]), new=b[j].span) for j in rest_b)
    return out


def render_changes(changes: list[Change], a: str, b: str) -> str:
    """Text report: a header line, then one line per change (or ``no semantic changes``)."""
    if not changes:
        return f"{a} and {b}: no semantic changes\n"
    return "\n".join([f"--- {a}", f"+++ {b}", *(c.render() for c in changes)]) + "\n"
