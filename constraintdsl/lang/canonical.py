"""The canonical forms of a spec: DSL text, plain data (the YAML twin), YAML text, and its hash.

Canonical DSL puts the header first, then includes, concepts, lets, constraints, and last the evaluation
data (corpus, ab, prompts) with the budgets and targets (budgets first, each in file order), each statement
with ASCII operators, default clauses left out and clauses in the order at, in, on, when.
Formatting is idempotent, and a spec's hash is the sha256 of its canonical DSL text.
"""

from __future__ import annotations

import hashlib
from typing import Any

import yaml

from .nodes import (
    DATA_KINDS,
    Ablate,
    Budget,
    Check,
    Clamp,
    Concept,
    Data,
    Depth,
    Gate,
    Include,
    LayerRange,
    Layers,
    Let,
    Op,
    Pin,
    Ref,
    Scale,
    SpecLike,
    Steer,
    Target,
    Tokens,
    Unit,
    Value,
    Where,
)

__all__ = [
    "canonical_checks",
    "canonical_data",
    "describe_check",
    "format_check",
    "format_gate",
    "format_layers",
    "format_let_values",
    "format_number",
    "format_tokens",
    "format_value",
    "format_where",
    "spec_hash",
    "statement_dsl",
    "to_dict",
    "to_dsl",
    "to_yaml",
]


def format_number(x: float) -> str:
    """Shortest text that reads back to the same float; integral values without ``.0``."""
    if x == 0:
        return "0"
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(float(x))


def format_value(v: Value | Ref) -> str:
    """``0.3``, ``12.5 raw``, ``1.5 sd``, ``p25``, or ``$floor`` for a variable."""
    if isinstance(v, Ref):
        return f"${v.name}"
    if v.unit is Unit.percentile:
        return f"p{format_number(v.number)}"
    if v.unit is Unit.calibrated:
        return format_number(v.number)
    return f"{format_number(v.number)} {v.unit.value}"


def format_let_values(let: Let) -> str:
    """``0.1 | 0.3 | p25`` — a let's alternatives, or ``0 .. 3`` — its range, as written after ``=``."""
    if let.range is not None:
        return f"{format_value(let.range[0])} .. {format_value(let.range[1])}"
    return " | ".join(format_value(v) for v in let.values)


def format_check(check: Check) -> str:
    """``budget kl <= 0.05`` or ``target ab >= 0.1``."""
    if isinstance(check, Budget):
        return f"budget {check.measure} <= {format_number(check.limit)}"
    return f"target {check.measure} {check.cmp} {format_number(check.value)}"


def _range(r: LayerRange) -> str:
    if r.start == r.stop:
        return str(r.start)
    sep = ".." if r.start < 0 or r.stop < 0 else "-"
    return f"{r.start}{sep}{r.stop}"


def format_layers(layers: Layers) -> str:
    """``10-14,16`` — the layer list without the ``at layers`` words."""
    return ",".join(_range(r) for r in layers.items)


def format_depth(depth: Depth) -> str:
    """``40%-60%`` or ``50%``."""
    if depth.start == depth.stop:
        return f"{format_number(depth.start)}%"
    return f"{format_number(depth.start)}%-{format_number(depth.stop)}%"


def format_where(where: Where) -> str:
    """``at layer 12``, ``at layers 10-14`` or ``at depth 40%-60%``."""
    if isinstance(where, Depth):
        return f"at depth {format_depth(where)}"
    single = len(where.items) == 1 and where.items[0].start == where.items[0].stop
    return f"at {'layer' if single else 'layers'} {format_layers(where)}"


def format_tokens(tokens: Tokens) -> str:
    """``generated``, ``last 3``; ``last`` alone means ``last 1``."""
    if tokens.kind == "last" and tokens.count == 1:
        return "last"
    return tokens.kind if tokens.count is None else f"{tokens.kind} {tokens.count}"


def format_gate(gate: Gate) -> str:
    """``harmful > 0.5`` or ``harmful > 0.5 at layer 8`` (without ``when``)."""
    text = f"{gate.concept} {gate.cmp} {format_value(gate.value)}"
    return text if gate.layer is None else f"{text} at layer {gate.layer}"


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t"}


def quote(text: str) -> str:
    """A DSL string literal: double quotes; backslash, quote, newline, tab and controls escaped."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


_quote = quote


def _op_head(op: Op) -> str:
    if isinstance(op, Clamp):
        if op.min is not None and op.max is not None:
            bound = f"in [{format_value(op.min)}, {format_value(op.max)}]"
        elif op.min is not None:
            bound = f">= {format_value(op.min)}"
        else:
            assert op.max is not None
            bound = f"<= {format_value(op.max)}"
        return f"clamp {op.concept} {bound}"
    if isinstance(op, Pin):
        return f"pin {op.concept} = {format_value(op.value)}"
    if isinstance(op, Steer):
        return f"steer {op.concept} by {format_value(op.by)}"
    if isinstance(op, Scale):
        return f"scale {op.concept} by {format_scale(op.by)}"
    assert isinstance(op, Ablate)
    return f"ablate {op.concept}"


def format_scale(by: float | Ref) -> str:
    """A ``scale`` factor: a plain number or ``$k``."""
    return format_value(by) if isinstance(by, Ref) else format_number(by)


MEASURE_MEANINGS = {
    "nll": "ΔNLL per corpus token (nats) against the baseline",
    "kl": "mean KL(baseline ‖ constrained) per corpus token",
    "ppl": "perplexity ratio to the baseline on the corpus",
    "ab": "shift of mean p(match) on the A/B set from the baseline's",
}


def describe_check(check: Check) -> str:
    """What a budget or target asks, in words: ``mean KL(baseline ‖ constrained) per corpus token at most 0.05``."""
    meaning = MEASURE_MEANINGS.get(
        check.measure, f"shift of concept {check.measure}'s readout on generated text (calibrated units)"
    )
    if isinstance(check, Budget):
        return f"{meaning} at most {format_number(check.limit)}"
    return f"{meaning} {'at least' if check.cmp == '>=' else 'at most'} {format_number(check.value)}"


def canonical_data(data: tuple[Data, ...]) -> tuple[Data, ...]:
    """``data`` statements in the order corpus, ab, prompts."""
    return tuple(sorted(data, key=lambda d: DATA_KINDS.index(d.kind)))


def statement_dsl(stmt: Concept | Include | Let | Op | Check | Data) -> str:
    """One statement as canonical DSL (no newline)."""
    if isinstance(stmt, Data):
        return f"data {stmt.kind} {_quote(stmt.path)}"
    if isinstance(stmt, Budget | Target):
        return format_check(stmt)
    if isinstance(stmt, Let):
        return f"let {stmt.name} = {format_let_values(stmt)}"
    if isinstance(stmt, Include):
        return f"include {_quote(stmt.path)}"
    if isinstance(stmt, Concept):
        text = f"concept {stmt.name} from {stmt.source} {_quote(stmt.path)}"
        if stmt.method != "mean":
            text += f" method {stmt.method}"
        if stmt.feature is not None:
            text += f" feature {stmt.feature}"
        if stmt.calibrated is not None:
            text += f" calibrated on {_quote(stmt.calibrated)}"
        return text
    parts = [_op_head(stmt), format_where(stmt.where)]
    if stmt.site != "resid":
        parts.append(f"in {stmt.site}")
    if stmt.tokens.kind != "all":
        parts.append(f"on {format_tokens(stmt.tokens)}")
    if stmt.gate is not None:
        parts.append(f"when {format_gate(stmt.gate)}")
    return " ".join(parts)


def to_dsl(spec: SpecLike, *, comments: bool = False) -> str:
    """Canonical DSL text of ``spec`` (ends with a newline)."""
    header: list[tuple[str, int | None]] = [(f"version {spec.version}", _line(spec, "version"))]
    if spec.name is not None:
        header.append((f"name {_quote(spec.name)}", _line(spec, "name")))
    if spec.model is not None:
        header.append((f"model {_quote(spec.model)}", _line(spec, "model")))
    groups: list[list[tuple[str, int | None]]] = [header]
    statements: tuple[tuple[Concept | Include | Let | Op | Check | Data, ...], ...] = (
        spec.includes,
        spec.concepts,
        spec.lets,
        spec.constraints,
        canonical_data(spec.data) + canonical_checks(spec.checks),
    )
    for stmts in statements:
        if stmts:
            groups.append([(statement_dsl(s), s.span.line if s.span.path == spec.path else None) for s in stmts])
    if not comments or not spec.comments:
        return "\n\n".join("\n".join(text for text, _ in g) for g in groups) + "\n"
    return _with_comments(spec, groups)


def canonical_checks(checks: tuple[Check, ...]) -> tuple[Check, ...]:
    """Budgets first, then targets, each in file order."""
    return tuple(c for c in checks if isinstance(c, Budget)) + tuple(c for c in checks if isinstance(c, Target))


def _check_data(check: Check) -> dict[str, Any]:
    if isinstance(check, Budget):
        return {"op": "budget", "measure": check.measure, "max": check.limit}
    return {"op": "target", "measure": check.measure, "min" if check.cmp == ">=" else "max": check.value}


def _line(spec: SpecLike, key: str) -> int | None:
    return dict(spec.header_lines).get(key)


def _with_comments(spec: SpecLike, groups: list[list[tuple[str, int | None]]]) -> str:
    stmt_lines = sorted(line for g in groups for _, line in g if line is not None)
    stmt_set = set(stmt_lines)
    leading: dict[int, list[str]] = {}
    inline: dict[int, str] = {}
    tail: list[str] = []
    for line, text in spec.comments:
        if line in stmt_set:
            inline[line] = text
            continue
        nxt = next((s for s in stmt_lines if s > line), None)
        if nxt is None:
            tail.append(text)
        else:
            leading.setdefault(nxt, []).append(text)
    blocks: list[str] = []
    for g in groups:
        out: list[str] = []
        for stmt_text, stmt_line in g:
            if stmt_line is None:
                out.append(stmt_text)
                continue
            out.extend(leading.get(stmt_line, []))
            out.append(f"{stmt_text}  {inline[stmt_line]}" if stmt_line in inline else stmt_text)
        blocks.append("\n".join(out))
    if tail:
        blocks.append("\n".join(tail))
    return "\n\n".join(blocks) + "\n"


def _value_data(v: Value | Ref) -> float | str:
    return v.number if isinstance(v, Value) and v.unit is Unit.calibrated else format_value(v)


def _op_data(op: Op) -> dict[str, Any]:
    d: dict[str, Any] = {"op": op.keyword, "concept": op.concept}
    if isinstance(op, Clamp):
        if op.min is not None:
            d["min"] = _value_data(op.min)
        if op.max is not None:
            d["max"] = _value_data(op.max)
    elif isinstance(op, Pin):
        d["value"] = _value_data(op.value)
    elif isinstance(op, Steer):
        d["by"] = _value_data(op.by)
    elif isinstance(op, Scale):
        d["by"] = format_value(op.by) if isinstance(op.by, Ref) else op.by
    if isinstance(op.where, Depth):
        d["depth"] = format_depth(op.where)
    else:
        items = op.where.items
        d["layers"] = items[0].start if len(items) == 1 and items[0].start == items[0].stop else format_layers(op.where)
    if op.site != "resid":
        d["site"] = op.site
    if op.tokens.kind != "all":
        d["tokens"] = format_tokens(op.tokens)
    if op.gate is not None:
        d["when"] = format_gate(op.gate)
    return d


def to_dict(spec: SpecLike) -> dict[str, Any]:
    """The spec as plain data, in the YAML twin's structure (defaults left out)."""
    d: dict[str, Any] = {"version": spec.version}
    if spec.name is not None:
        d["name"] = spec.name
    if spec.model is not None:
        d["model"] = spec.model
    if spec.includes:
        d["include"] = [i.path for i in spec.includes]
    if spec.concepts:
        concepts: dict[str, Any] = {}
        for c in spec.concepts:
            entry: dict[str, Any] = {"from": c.source, "path": c.path}
            if c.method != "mean":
                entry["method"] = c.method
            if c.feature is not None:
                entry["feature"] = c.feature
            if c.calibrated is not None:
                entry["calibrated"] = c.calibrated
            concepts[c.name] = entry
        d["concepts"] = concepts
    if spec.data:
        d["data"] = {x.kind: x.path for x in canonical_data(spec.data)}
    if spec.lets:
        d["let"] = {v.name: _let_data(v) for v in spec.lets}
    if spec.constraints or spec.checks:
        d["constraints"] = [_op_data(op) for op in spec.constraints]
        d["constraints"] += [_check_data(c) for c in canonical_checks(spec.checks)]
    return d


def _let_data(let: Let) -> list[float | str] | str:
    """A listed let as a list of values; a continuous one as its DSL text, ``"0 .. 3"``."""
    if let.range is not None:
        return format_let_values(let)
    return [_value_data(x) for x in let.values]


def _yaml_quote(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch.isprintable() and ch not in "\x85\u2028\u2029\ufeff":
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def _flow(data: Any) -> str:
    """One line of YAML flow text for a scalar or a mapping; checked to read back unchanged."""
    text = yaml.safe_dump(data, default_flow_style=True, allow_unicode=True, width=1_000_000, sort_keys=False)
    text = text.removesuffix("\n").removesuffix("\n...").strip()
    try:
        if yaml.safe_load(text) == data:
            return text
    except yaml.YAMLError:  # pyyaml can dump a string it cannot read back plain (e.g. "\xa0`")
        pass
    # pyyaml leaves some odd strings plain (or splits them in flow context): quote every string
    if isinstance(data, dict):
        return "{" + ", ".join(f"{_flow_item(k)}: {_flow_item(v)}" for k, v in data.items()) + "}"
    return _flow_item(data)


def _flow_item(value: Any) -> str:
    return _yaml_quote(value) if isinstance(value, str) else _flow(value)


def to_yaml(spec: SpecLike) -> str:
    """Canonical YAML text: block structure, one flow mapping per concept and constraint."""
    d = to_dict(spec)
    lines: list[str] = []
    for key in ("version", "name", "model"):
        if key in d:
            lines.append(f"{key}: {_flow(d[key])}")
    if "include" in d:
        lines.append("include:")
        lines.extend(f"  - {_flow(p)}" for p in d["include"])
    if "concepts" in d:
        lines.append("concepts:")
        lines.extend(f"  {_flow(name)}: {_flow(entry)}" for name, entry in d["concepts"].items())
    if "data" in d:
        lines.append("data:")
        lines.extend(f"  {kind}: {_flow(path)}" for kind, path in d["data"].items())
    if "let" in d:
        lines.append("let:")
        lines.extend(
            f"  {_flow(name)}: {_flow(xs) if isinstance(xs, str) else '[' + ', '.join(_flow_item(x) for x in xs) + ']'}"
            for name, xs in d["let"].items()
        )
    if "constraints" in d:
        lines.append("constraints:")
        lines.extend(f"  - {_flow(entry)}" for entry in d["constraints"])
    return "\n".join(lines) + "\n"


def spec_hash(spec: SpecLike, extra: dict[str, str] | None = None) -> str:
    """``sha256:<hex>`` of the canonical DSL text, plus ``extra`` (e.g. concept artifact hashes)."""
    h = hashlib.sha256(to_dsl(spec).encode("utf-8"))
    for key in sorted(extra or {}):
        h.update(f"\n{key}={(extra or {})[key]}".encode())
    return f"sha256:{h.hexdigest()}"
