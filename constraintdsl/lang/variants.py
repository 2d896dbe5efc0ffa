"""Variants: a spec with ``let`` lines stands for several concrete specs, one per combination.

``let floor = 0.1 | 0.3`` and ``let alpha = 1 | 2`` give four variants, named ``floor=0.1,alpha=1``,
``floor=0.1,alpha=2``, ``floor=0.3,alpha=1`` and ``floor=0.3,alpha=2``: the product of the lets in
declaration order, the last let changing fastest.  Each variant's spec has every ``$name`` replaced
by its value and no lets, so it hashes exactly like the same spec written out by hand.

Lets are global to a loaded spec, like concepts: after ``load`` flattens the includes there is one
namespace and one product of lets (in the order the files are read), a name defined in two files is
an error, a file may use the lets defined in it and in the files it includes, and a let counts as used
when any file of the spec uses it (so a file of lets alone is a reusable sweep).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import cast

from constraintdsl.errors import Diagnostic, SpecError, UserError, clip, did_you_mean

from .canonical import format_value
from .loading import spec_sources
from .nodes import Gate, Let, Op, Ref, Scale, Value, op_refs
from .parser import parse_fragment
from .spec import Spec
from .validate import check_lets

__all__ = [
    "Variant",
    "bind",
    "continuous",
    "count",
    "expand",
    "first_ref",
    "refuse_continuous",
    "select",
    "variant_name",
]

_SHOWN = 12  # variant names listed in an error before "… and N more"


@dataclass(frozen=True)
class Variant:
    """One concrete spec out of a sweep.

    ``name`` is ``floor=0.3`` or ``floor=0.3,alpha=2`` (``""`` for a spec without lets), its values
    written as in canonical text; ``spec`` has no lets and no ``$name`` left, and keeps the
    original's name, model, concepts and spans.
    """

    name: str
    bindings: tuple[tuple[str, Value], ...]
    spec: Spec


def variant_name(bindings: tuple[tuple[str, Value], ...]) -> str:
    """``floor=0.3,alpha=2``: each let's name and canonical value, in declaration order."""
    return ",".join(f"{name}={format_value(value)}" for name, value in bindings)


def count(spec: Spec) -> int:
    """How many variants ``spec`` expands to (1 without lets); a continuous let (a range) counts as one,
    since ``tune`` searches it and nothing expands it."""
    return math.prod(len(let.values) for let in spec.lets if let.range is None)


def continuous(spec: Spec) -> tuple[Let, ...]:
    """The spec's continuous lets (``let floor = 0 .. 3``), in declaration order."""
    return tuple(let for let in spec.lets if let.range is not None)


def ends_as_values(spec: Spec) -> Spec:
    """``spec`` with every continuous let turned into a listed one of its two ends (``0 .. 3`` → ``0 | 3``):
    what checks that must hold over the whole range look at."""
    if not continuous(spec):
        return spec
    lets = tuple(let if let.range is None else replace(let, values=let.range, range=None) for let in spec.lets)
    return replace(spec, lets=lets)


def refuse_continuous(spec: Spec, verb: str = "this command") -> None:
    """A located :class:`SpecError` at the first continuous let: ``verb`` needs listed values."""
    lets = continuous(spec)
    if not lets:
        return
    let = lets[0]
    assert let.range is not None
    lo, hi = (format_value(v) for v in let.range)
    raise SpecError(
        Diagnostic(
            let.span,
            f"let '{let.name}' is a range ({lo} .. {hi}), which {verb} cannot expand into variants",
            f"search it with `cdsl tune {spec.path}`, or list values: let {let.name} = {lo} | … | {hi}",
        ),
        spec_sources(spec),
    )


def _checked(spec: Spec) -> None:
    """Refuse a spec whose lets cannot expand (hand-built specs; parsed ones are checked already)."""

    diags = check_lets(spec.lets, spec.constraints, unused=False)
    if diags:
        raise SpecError(diags, spec_sources(spec))


def bind(spec: Spec, values: Mapping[str, Value]) -> Spec:
    """``spec`` with every ``$name`` of ``values`` replaced by its value and those lets dropped (others stay)."""
    return replace(
        spec,
        lets=tuple(let for let in spec.lets if let.name not in values),
        constraints=tuple(_bind_op(op, values) for op in spec.constraints),
    )


def _bind_op(op: Op, values: Mapping[str, Value]) -> Op:
    changes: dict[str, object] = {}
    for key, ref in op_refs(op):
        if ref.name not in values:
            continue
        value = values[ref.name]
        if key == "when":
            changes["gate"] = replace(cast(Gate, op.gate), value=value)
        elif key == "by" and isinstance(op, Scale):
            changes["by"] = value.number
        else:
            changes[key] = value
    return replace(op, **changes) if changes else op  # type: ignore[arg-type]


def expand(spec: Spec) -> list[Variant]:
    """Every variant of ``spec``: the product of its lets in declaration order (one if it has none).

    Raises :class:`SpecError` for a spec whose variables are undefined or whose lets are unfit
    (only possible for a spec built in Python; parsed specs are checked when read).
    """
    if not isinstance(spec, Spec):
        raise TypeError(f"expand() takes a Spec (from constraintdsl.load), not {type(spec).__name__}")
    if not spec.lets and not any(op_refs(op) for op in spec.constraints):
        return [Variant("", (), spec)]
    refuse_continuous(spec)
    _checked(spec)
    names = [let.name for let in spec.lets]
    out: list[Variant] = []
    for combo in itertools.product(*(let.values for let in spec.lets)):
        bindings = tuple(zip(names, combo, strict=True))
        out.append(Variant(variant_name(bindings), bindings, bind(spec, dict(bindings))))
    return out


def select(spec: Spec, choice: str, *, flag: str = "--variant") -> Variant:
    """The variant named by ``choice``: ``floor=0.3`` or ``floor=0.3,alpha=2``.

    Lets may be given in any order and values in any spelling that reads back to the same value
    (``floor=0.30`` selects ``floor=0.3``); every let must be given.  A spec without lets has one
    variant, chosen by ``""``.  Anything else is a :class:`UserError` naming ``flag`` and
    listing the choices.
    """
    variants = expand(spec)
    by_name = {v.name: v for v in variants}
    text = choice.strip()
    if text in by_name:
        return by_name[text]
    if not spec.lets:
        raise UserError(flag, f"{spec.path} has no variants (no `let` lines)", f"leave out {flag}")
    wanted: dict[str, Value] = {}
    lets = {let.name: let for let in spec.lets}
    for part in text.split(","):
        name, eq, raw = (s.strip() for s in part.partition("="))
        if not eq or not name:
            raise UserError(flag, f"cannot read '{clip(part.strip())}' as name=value", _choices(variants))
        if name not in lets:
            hint = did_you_mean(name, lets) or f"the lets are: {', '.join(lets)}"
            raise UserError(flag, f"{spec.path} has no let '{clip(name)}'", hint)
        if name in wanted:
            raise UserError(flag, f"let '{name}' is given twice", "give each let once: " + _example(variants))
        wanted[name] = _read_value(raw, name, flag, variants)
    missing = [name for name in lets if name not in wanted]
    if missing:
        raise UserError(flag, f"no value given for let {', '.join(repr(m) for m in missing)}", _choices(variants))
    key = variant_name(tuple((name, wanted[name]) for name in lets))
    if key in by_name:
        return by_name[key]
    bad = next(name for name in lets if wanted[name] not in lets[name].values)
    values = " | ".join(format_value(v) for v in lets[bad].values)
    raise UserError(flag, f"let '{bad}' has no value {format_value(wanted[bad])}", f"its values are {values}")


def _read_value(raw: str, name: str, flag: str, variants: list[Variant]) -> Value:
    value, diags = parse_fragment(raw, "value", path=flag, line=1, col=1, context="let")
    if diags or not isinstance(value, Value):
        why = diags[0].message if diags else "not a value"
        raise UserError(flag, f"cannot read the value of {name}: {why}", _choices(variants))
    return value


def _example(variants: list[Variant]) -> str:
    return variants[0].name


def _choices(variants: list[Variant]) -> str:
    names = [v.name for v in variants]
    shown = ", ".join(names[:_SHOWN])
    more = f", … and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return f"choose one of {shown}{more}"


def first_ref(spec: Spec) -> Ref | None:
    """The first ``$name`` left in ``spec``'s operations, if any."""
    for op in spec.constraints:
        refs = op_refs(op)
        if refs:
            return refs[0][1]
    return None
