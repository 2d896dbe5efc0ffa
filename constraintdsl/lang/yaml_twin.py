"""The YAML twin of the DSL: the same spec as data.

Loaded safely and strictly: no tags, no aliases (so no billion-laughs), no duplicate keys,
no unknown keys.  Every problem points at its line and column.  Strings inside the YAML
(values like ``"12.5 raw"`` or ``$floor``, layers like ``"10-14"``, whole DSL lines) are parsed
with the grammar's own rules, so both forms share one syntax.  Variants are a ``let`` mapping:
``let: {floor: [0.1, 0.3, "p25"]}`` (or ``floor: "0.1 | 0.3 | p25"``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

import yaml
import yaml.reader
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from constraintdsl.errors import Diagnostic, Span, clip, describe_char, did_you_mean

from .nodes import (
    BUDGET_MEASURES,
    OP_CLASSES,
    SITES,
    Budget,
    Concept,
    LayerRange,
    Layers,
    Let,
    Op,
    Ref,
    Statement,
    Target,
    Value,
)
from .parser import (
    FEATURE_MISSING,
    FEATURE_ON_OTHER,
    MAX_FEATURE,
    MAX_INT,
    METHOD_ON_FILE,
    Header,
    calibration_problem,
    concept_path_problem,
    number_problem,
    parse_fragment,
    parse_statement,
)

__all__ = ["ConceptEntry", "Document", "json_schema", "parse_yaml"]

_Strict = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
ValueField = float | int | str
LayersField = int | list[int] | str


class ConceptEntry(BaseModel):
    """``concepts: {NAME: {from: pairs|file|gguf|svec|sae, path: ..., method: mean|pca, feature: N,
    calibrated: pairs.yaml}}``."""

    model_config = _Strict
    from_: Literal["pairs", "file", "gguf", "svec", "sae"] = Field(
        alias="from",
        description="pairs: contrastive examples; file: an artifact; gguf: a llama.cpp control vector; "
        "svec: an activation-steering vector; sae: a sae-lens folder (with `feature`)",
    )
    path: str = Field(description="relative to this spec file")
    method: Literal["mean", "pca"] = "mean"
    feature: int | None = Field(None, description="from sae: the feature (decoder row) to use")
    calibrated: str | None = Field(None, description="a pairs file to calibrate an imported direction on")


class _OpEntry(BaseModel):
    model_config = _Strict
    concept: str
    layers: LayersField | None = Field(None, description='12, [10, 12, 14] or "10-14", "-4..-1"')
    depth: str | None = Field(None, description='"40%-60%"')
    site: str = Field("resid", description="resid | attn | mlp")
    tokens: str = Field("all", description="all | prompt | generated | last [N] | first N")
    when: str | None = Field(None, description='a gate: "harmful > 0.5 at layer 8"')


class ClampEntry(_OpEntry):
    """``clamp``: ``min`` and/or ``max`` (numbers are calibrated; or "12.5 raw", "p25", "1.5 sd")."""

    op: Literal["clamp"]
    min: ValueField | None = None
    max: ValueField | None = None


class PinEntry(_OpEntry):
    """``pin``: hold the projection at ``value``."""

    op: Literal["pin"]
    value: ValueField


class AblateEntry(_OpEntry):
    """``ablate``: remove the component along the direction."""

    op: Literal["ablate"]


class SteerEntry(_OpEntry):
    """``steer``: add ``by`` along the direction."""

    op: Literal["steer"]
    by: ValueField


class ScaleEntry(_OpEntry):
    """``scale``: multiply the projection by ``by``."""

    op: Literal["scale"]
    by: ValueField


class BudgetEntry(BaseModel):
    """``budget``: a ceiling ``max`` on one tax measure over the reference corpus."""

    model_config = _Strict
    op: Literal["budget"]
    measure: Literal["nll", "kl", "ppl"] = Field(
        description="nll: ΔNLL per token (nats); kl: mean KL(baseline ‖ constrained) per token; ppl: perplexity ratio"
    )
    max: float | int


class TargetEntry(BaseModel):
    """``target``: an effect to reach, ``min`` (higher is better) or ``max`` (lower is better)."""

    model_config = _Strict
    op: Literal["target"]
    measure: str = Field(description="ab: the A/B p(match) shift; or a concept: its readout shift (calibrated)")
    min: float | int | None = None
    max: float | int | None = None


CHECK_MODELS: dict[str, type[BaseModel]] = {"budget": BudgetEntry, "target": TargetEntry}

ENTRY_MODELS: dict[str, type[_OpEntry]] = {
    "clamp": ClampEntry,
    "pin": PinEntry,
    "ablate": AblateEntry,
    "steer": SteerEntry,
    "scale": ScaleEntry,
}
assert set(ENTRY_MODELS) == set(OP_CLASSES)


class Document(BaseModel):
    """A constraintdsl spec file in YAML form (version 1)."""

    model_config = ConfigDict(extra="forbid", strict=True, title="constraintdsl spec")
    version: int = Field(description="spec language version; must be 1")
    name: str | None = None
    model: str | None = Field(None, description="default model, e.g. smollm2 or a Hugging Face id")
    include: list[str] = Field(default_factory=list, description="other spec files, relative to this one")
    concepts: dict[str, ConceptEntry] = Field(default_factory=dict)
    data: dict[Literal["corpus", "ab", "prompts"], str] = Field(
        default_factory=dict,
        description="evaluation data, relative to this file: {corpus: neutral.txt, ab: ab.yaml, prompts: prompts.txt}",
    )
    let: dict[str, list[ValueField] | str] = Field(
        default_factory=dict,
        description='variants: {floor: [0.1, 0.3, "p25"]}, or a range for tune: {floor: "0 .. 3"}; '
        'used as "$floor" in a value',
    )
    constraints: list[
        str | ClampEntry | PinEntry | AblateEntry | SteerEntry | ScaleEntry | BudgetEntry | TargetEntry
    ] = Field(default_factory=list, description="each a mapping with `op`, or one DSL line")


def json_schema() -> dict[str, Any]:
    """JSON Schema of the YAML form, for editors."""
    schema = Document.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


# -- located loading ----------------------------------------------------------


class _Refused(Exception):
    def __init__(self, mark: yaml.Mark, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.mark, self.message, self.hint = mark, message, hint


class _Loader(yaml.SafeLoader):
    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise _Refused(
                event.start_mark, "YAML aliases are not allowed in spec files", "write the value out in full"
            )
        return super().compose_node(parent, index)


@dataclass
class _Item:
    """A YAML value with where it starts (and where its key starts, for mappings)."""

    value: Any
    node: Node
    key_node: Node | None = None


_PLAIN_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
}


class _Reader:
    def __init__(self, path: str, loader: _Loader) -> None:
        self.path = path
        self.loader = loader
        self.diags: list[Diagnostic] = []

    def span(self, node: Node) -> Span:
        s, e = node.start_mark, node.end_mark
        end_col = e.column + 1 if e.line == s.line else None
        return Span(self.path, s.line + 1, s.column + 1, e.line + 1, end_col)

    def error(self, node: Node, message: str, hint: str | None = None) -> None:
        self.diags.append(Diagnostic(self.span(node), message, hint))

    def read(self, node: Node) -> Any:
        """Plain Python data where mappings are dict[str, _Item] and sequences list[_Item]."""
        if isinstance(node, ScalarNode):
            if node.tag not in _PLAIN_TAGS:
                raise _Refused(node.start_mark, f"YAML tag {node.tag!r} is not allowed in spec files", "remove the tag")
            try:
                value = self.loader.construct_object(node)
            except (ValueError, OverflowError) as e:
                raise _Refused(
                    node.start_mark, f"cannot read the value {clip(str(node.value), 30)}: {clip(str(e), 80)}"
                ) from None
            if isinstance(value, float) and not math.isfinite(value):
                raise _Refused(node.start_mark, f"number {node.value} is not finite", None)
            return value
        if isinstance(node, SequenceNode):
            if node.tag != "tag:yaml.org,2002:seq":
                raise _Refused(node.start_mark, f"YAML tag {node.tag!r} is not allowed in spec files", "remove the tag")
            return [_Item(self.read(n), n) for n in node.value]
        if isinstance(node, MappingNode):
            if node.tag != "tag:yaml.org,2002:map":
                raise _Refused(node.start_mark, f"YAML tag {node.tag!r} is not allowed in spec files", "remove the tag")
            out: dict[Any, _Item] = {}
            for key_node, value_node in node.value:
                key = self.read(key_node)
                if isinstance(key, list | dict):
                    raise _Refused(key_node.start_mark, "a mapping key must be a plain word", None)
                if key == "<<":
                    raise _Refused(key_node.start_mark, "YAML merge keys (<<) are not allowed in spec files", None)
                if key in out:
                    first = cast(Node, out[key].key_node).start_mark.line + 1
                    raise _Refused(
                        key_node.start_mark, f"duplicate key '{key}'", f"the first '{key}' is at line {first}"
                    )
                out[key] = _Item(self.read(value_node), value_node, key_node)
            return out
        raise _Refused(node.start_mark, "unsupported YAML node", None)


def _plain(item: Any) -> Any:
    if isinstance(item, _Item):
        return _plain(item.value)
    if isinstance(item, dict):
        return {k: _plain(v) for k, v in item.items()}
    if isinstance(item, list):
        return [_plain(v) for v in item]
    return item


_TYPE_WORDS = {
    bool: "a boolean",
    int: "a number",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a mapping",
}
_EXPECT = {
    "version": "a whole number",
    "name": "a string",
    "model": "a string",
    "include": "a list of paths",
    "concepts": "a mapping of concept names",
    "constraints": "a list",
    "let": "a mapping of names to lists of values, like {floor: [0.1, 0.3]}",
    "from": "`pairs`, `file`, `gguf`, `svec` or `sae`",
    "feature": "a whole number (a decoder row)",
    "calibrated": "a path to a pairs file",
    "path": "a string",
    "method": "`mean` or `pca`",
    "concept": "a concept name",
    "layers": 'a layer number, a list of numbers, or a string like "10-14"',
    "depth": 'a string like "40%-60%"',
    "site": "resid, attn or mlp",
    "tokens": 'a string like "generated" or "last 3"',
    "when": 'a string like "harmful > 0.5"',
    "min": 'a number or a string like "12.5 raw"',
    "max": 'a number or a string like "12.5 raw"',
    "value": 'a number or a string like "12.5 raw"',
    "by": 'a number or a string like "1.5 sd"',
}


def _type_word(value: Any) -> str:
    if value is None:
        return "nothing"
    return _TYPE_WORDS.get(type(value), type(value).__name__)


def _validate(reader: _Reader, model: type[BaseModel], mapping: _Item, what: str) -> BaseModel | None:
    """Validate a mapping against a pydantic model, turning its errors into located diagnostics."""
    data = cast(dict[str, _Item], mapping.value)
    try:
        return model.model_validate(_plain(data))
    except ValidationError as err:
        seen: set[str] = set()
        fields = [f.alias or name for name, f in model.model_fields.items()]
        errors = err.errors()
        unknown = {str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden" and e["loc"]}
        suggested = {did_you_mean(k, fields) for k in unknown}
        for e in errors:
            key = str(e["loc"][0]) if e["loc"] else ""
            if key in seen:
                continue
            seen.add(key)
            if e["type"] == "extra_forbidden":
                item = data[key]
                reader.error(
                    cast(Node, item.key_node),
                    f"unknown key '{clip(key)}' in {what}",
                    did_you_mean(key, fields) or f"keys: {', '.join(fields)}",
                )
            elif e["type"] == "missing":
                if f"did you mean '{key}'?" in suggested:
                    continue  # the misspelt key is reported, with this one as its suggestion
                reader.error(
                    mapping.node, f"{what} is missing '{key}'", f"add `{key}:` ({_EXPECT.get(key, 'a value')})"
                )
            elif key in data:
                item = data[key]
                expected = _EXPECT.get(key, "another value")
                if key == "layers" and isinstance(item.value, list):
                    bad = next(s for s in item.value if not isinstance(s.value, int) or isinstance(s.value, bool))
                    reader.error(bad.node, f"a layer must be a whole number, not {_type_word(bad.value)}", None)
                elif e["type"] == "literal_error" and isinstance(item.value, str):
                    got = f"'{clip(item.value)}'"
                    reader.error(
                        item.node, f"'{key}' must be {expected}, not {got}", did_you_mean(item.value, _choices(e))
                    )
                else:
                    reader.error(item.node, f"'{key}' must be {expected}, not {_type_word(item.value)}", None)
            else:
                reader.error(mapping.node, f"invalid {what}: {e['msg']}", None)
        return None


def _choices(e: Any) -> list[str]:
    expected = str(e.get("ctx", {}).get("expected", ""))
    return [w.strip(" '") for w in expected.replace(" or ", ",").split(",") if w.strip(" '")]


def _scalar_pos(node: Node) -> tuple[int, int]:
    """Where a scalar's text begins (1-based), skipping an opening quote."""
    quoted = isinstance(node, ScalarNode) and node.style in ("'", '"')
    return node.start_mark.line + 1, node.start_mark.column + 1 + (1 if quoted else 0)


def _fragment(reader: _Reader, item: _Item, rule: str, context: str = "clamp") -> Any:
    line, col = _scalar_pos(item.node)
    value, diags = parse_fragment(str(item.value), rule, path=reader.path, line=line, col=col, context=context)
    reader.diags.extend(diags)
    return value


def _value(reader: _Reader, item: _Item, context: str) -> Value | Ref | None:
    if isinstance(item.value, bool):
        reader.error(item.node, "expected a number, not a boolean", None)
        return None
    if isinstance(item.value, int | float):
        try:
            number = float(item.value)
        except OverflowError:  # an integer too large for any float
            number = math.inf if item.value > 0 else -math.inf
        problem = number_problem(number, str(getattr(item.node, "value", item.value)))
        if problem is not None:
            reader.error(item.node, *problem)
            return None
        return Value(number)
    return cast(Value | Ref | None, _fragment(reader, item, "value", context))


def _check(reader: _Reader, item: _Item, op: str) -> Budget | Target | None:
    """``{op: budget, measure: kl, max: 0.05}`` or ``{op: target, measure: ab, min: 0.1}``."""
    data = cast(dict[str, _Item], item.value)
    if op == "budget" and "measure" in data and data["measure"].value not in BUDGET_MEASURES:
        word = data["measure"].value
        reader.error(
            data["measure"].node,
            f"unknown budget measure '{clip(str(word))}'",
            (did_you_mean(word, BUDGET_MEASURES) if isinstance(word, str) else None)
            or "a budget caps nll (ΔNLL per token), kl (mean KL per token) or ppl (perplexity ratio)",
        )
        return None
    if _validate(reader, CHECK_MODELS[op], item, f"`{op}`") is None:
        return None
    span, measure_span = reader.span(item.node), reader.span(data["measure"].node)
    measure = str(data["measure"].value)
    bounds = [k for k in ("min", "max") if k in data]
    if op == "budget":
        limit = _value(reader, data["max"], "budget")
        if not isinstance(limit, Value):
            return None
        if (limit.number < 0 and measure != "nll") or (measure == "ppl" and limit.number <= 0):
            reader.error(
                data["max"].node,
                f"budget {measure} <= {limit.number:g} can never be met",
                "KL is never negative and a perplexity ratio is positive",
            )
            return None
        return Budget(cast(Literal["nll", "kl", "ppl"], measure), limit.number, span=span, measure_span=measure_span)
    if len(bounds) != 1:
        reader.error(
            item.node,
            "a target has one of `min` (higher is better) or `max` (lower is better)",
            "target: {op: target, measure: ab, min: 0.1}",
        )
        return None
    value = _value(reader, data[bounds[0]], "target")
    if not isinstance(value, Value):
        return None
    cmp: Literal[">=", "<="] = ">=" if bounds[0] == "min" else "<="
    return Target(measure, cmp, value.number, span=span, measure_span=measure_span)


def _op(reader: _Reader, item: _Item) -> Op | Budget | Target | None:
    data = cast(dict[str, _Item], item.value)
    op_item = data.get("op")
    kinds = [*ENTRY_MODELS, *CHECK_MODELS]
    if op_item is None:
        reader.error(
            item.node,
            "constraint is missing 'op'",
            f"add `op:` ({', '.join(kinds)}), or write the constraint as one DSL line",
        )
        return None
    op = op_item.value
    if isinstance(op, str) and op in CHECK_MODELS:
        return _check(reader, item, op)
    if not isinstance(op, str) or op not in ENTRY_MODELS:
        word = op if isinstance(op, str) else _type_word(op)
        hint = (did_you_mean(op, kinds) if isinstance(op, str) else None) or f"ops: {', '.join(kinds)}"
        reader.error(op_item.node, f"unknown op '{word}'", hint)
        return None
    entry = _validate(reader, ENTRY_MODELS[op], item, f"`{op}` constraint")
    if entry is None:
        return None
    before = len(reader.diags)
    fields: dict[str, Any] = {
        "concept": data["concept"].value,
        "span": reader.span(item.node),
        "concept_span": reader.span(data["concept"].node),
    }
    if "layers" in data and "depth" in data:
        reader.error(cast(Node, data["depth"].key_node), "give `layers` or `depth`, not both", None)
    elif "layers" in data:
        layers = data["layers"]
        if isinstance(layers.value, int) and not isinstance(layers.value, bool):
            fields["where"] = _layer_items(reader, _Item([layers], layers.node))
        elif isinstance(layers.value, list):
            fields["where"] = _layer_items(reader, layers)
        else:
            fields["where"] = _fragment(reader, layers, "layer_list")
    elif "depth" in data:
        fields["where"] = _fragment(reader, data["depth"], "percent_range")
    else:
        reader.error(
            item.node,
            f"`{op}` constraint needs `layers` or `depth`",
            'add `layers: "10-14"` or `depth: "40%-60%"`',
        )
    if "site" in data:
        site = data["site"]
        if site.value not in SITES:
            reader.error(
                site.node,
                f"unknown site '{site.value}'",
                did_you_mean(str(site.value), SITES) or "sites: resid, attn, mlp",
            )
        else:
            fields["site"] = site.value
    if "tokens" in data:
        fields["tokens"] = _fragment(reader, data["tokens"], "tokens_sel")
    if "when" in data:
        fields["gate"] = _fragment(reader, data["when"], "gate_expr")
    for key in ("min", "max", "value", "by"):
        if key in data:
            fields[key] = _value(reader, data[key], op)
    if op == "clamp" and "min" not in data and "max" not in data:
        reader.error(item.node, "`clamp` constraint needs `min` and/or `max`", "add `min: 0.3`")
    if op == "scale" and isinstance(fields.get("by"), Value):
        fields["by"] = cast(Value, fields["by"]).number
    if op == "clamp" and isinstance(fields.get("min"), Value) and isinstance(fields.get("max"), Value):
        lo, hi = cast(Value, fields["min"]), cast(Value, fields["max"])
        if lo.unit == hi.unit and lo.number > hi.number:
            reader.error(data["min"].node, "empty interval: `min` is above `max`", "swap them")
    if len(reader.diags) > before or any(v is None for v in fields.values()):
        return None
    return OP_CLASSES[op](**fields)


def _layer_items(reader: _Reader, item: _Item) -> Layers | None:
    from .parser import canonical_layers

    ranges = []
    for sub in cast(list[_Item], item.value):
        if not isinstance(sub.value, int) or isinstance(sub.value, bool):
            reader.error(sub.node, f"a layer must be a whole number, not {_type_word(sub.value)}", None)
            return None
        if abs(sub.value) > MAX_INT["layer"]:
            reader.error(
                sub.node,
                f"layer {clip(str(sub.value), 20)} is out of range",
                f"a layer is at most {MAX_INT['layer']:,}",
            )
            return None
        ranges.append(LayerRange(sub.value, sub.value))
    if not ranges:
        reader.error(item.node, "empty layer list", "name at least one layer")
        return None
    return Layers(canonical_layers(ranges))


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _let(reader: _Reader, name: Any, entry: _Item, header: Header) -> Let | None:
    """``floor: [0.1, 0.3, "p25"]`` or ``floor: "0.1 | 0.3 | p25"`` under ``let:``."""
    key_node = cast(Node, entry.key_node)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        reader.error(
            key_node,
            f"'{clip(str(name))}' is not a variable name",
            "a let's name is letters, digits and _, not starting with a digit: floor, alpha_2",
        )
        return None
    values: list[tuple[Value, Span]] = []
    before = len(reader.diags)
    if isinstance(entry.value, str) and ".." in entry.value:
        ends = cast(tuple[Value, Value] | None, _fragment(reader, entry, "let_span"))
        if ends is None:
            header.broken_lets.add(name)
        span = reader.span(key_node)
        return Let(name, (), ends, span=span, name_span=span, value_spans=(reader.span(entry.node),) * 2)
    if isinstance(entry.value, str):
        values = cast(list[tuple[Value, Span]], _fragment(reader, entry, "let_values") or [])
    elif isinstance(entry.value, list):
        for sub in cast(list[_Item], entry.value):
            if isinstance(sub.value, list | dict) or sub.value is None:
                reader.error(sub.node, f'a let value is a number or a string like "p25", not {_type_word(sub.value)}')
                continue
            v = _value(reader, sub, "let")
            if isinstance(v, Value):
                values.append((v, reader.span(sub.node)))
        if not entry.value:
            reader.error(entry.node, f"let '{name}' has no values", "give one or more: floor: [0.1, 0.3, 0.5]")
    else:
        reader.error(
            entry.node,
            f"let '{name}' must be a list of values, not {_type_word(entry.value)}",
            f"{name}: [0.1, 0.3, 0.5]",
        )
        header.broken_lets.add(name)
        return None
    if len(reader.diags) > before:
        header.broken_lets.add(name)
    span = reader.span(key_node)
    return Let(name, tuple(v for v, _ in values), span=span, name_span=span, value_spans=tuple(s for _, s in values))


def _iter_mapping(item: _Item) -> Iterator[tuple[str, _Item]]:
    yield from cast(dict[str, _Item], item.value).items()


def parse_yaml(text: str, path: str) -> tuple[Header, list[Statement], list[Diagnostic]]:
    """Parse YAML spec text into header and statements; all problems as diagnostics."""
    header = Header()
    bad = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if bad is not None:
        before = text[: bad.start()]
        line, col = before.count("\n") + 1, bad.start() - (before.rfind("\n") + 1) + 1
        message = f"character {describe_char(bad.group()[0])} is not allowed in YAML"
        return (
            header,
            [],
            [
                Diagnostic(
                    Span(path, line, col),
                    message,
                    "delete it, or write it as an escape in a double-quoted string",
                )
            ],
        )
    loader = _Loader(text)
    reader = _Reader(path, loader)
    try:
        root_node = loader.get_single_node()
        if root_node is None:
            return header, [], reader.diags
        root = _Item(reader.read(root_node), root_node)
    except _Refused as r:
        reader.diags.append(Diagnostic(Span(path, r.mark.line + 1, r.mark.column + 1), r.message, r.hint))
        return header, [], reader.diags
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reader.diags.append(Diagnostic(Span(path, line, col), f"invalid YAML: {e.problem or e.context}", None))
        return header, [], reader.diags
    except yaml.YAMLError as e:
        reader.diags.append(Diagnostic(Span(path, 1, 1), f"invalid YAML: {e}", None))
        return header, [], reader.diags
    except RecursionError:
        reader.diags.append(
            Diagnostic(Span(path, 1, 1), "YAML nesting is too deep", "a spec is at most a few levels deep")
        )
        return header, [], reader.diags
    finally:
        loader.dispose()
    if not isinstance(root.value, dict):
        reader.error(
            root_node,
            f"a YAML spec is a mapping (version, concepts, constraints), not {_type_word(root.value)}",
            None,
        )
        return header, [], reader.diags
    data = cast(dict[str, _Item], root.value)
    top = {k: v for k, v in data.items() if k not in ("concepts", "let", "constraints")}
    for key in ("concepts", "let", "constraints"):
        if key in data:
            kind = list if key == "constraints" else dict
            if data[key].value is None:
                top[key] = _Item({} if kind is dict else [], data[key].node, data[key].key_node)
            elif not isinstance(data[key].value, kind):
                reader.error(data[key].node, f"'{key}' must be {_EXPECT[key]}, not {_type_word(data[key].value)}", None)
    doc = _validate(reader, Document, _Item(top, root_node), "the spec")
    statements: list[Statement] = []
    if doc is not None:
        d = cast(Document, doc)
        v = data["version"]
        header.version = (d.version, reader.span(v.key_node or v.node))
        header.version_number = reader.span(v.node)
        header.first_statement = header.version[1]
        if d.name is not None:
            header.name = (d.name, reader.span(data["name"].node))
        if d.model is not None:
            header.model = (d.model, reader.span(data["model"].node))
        from .nodes import Include

        for inc in cast(list[_Item], data["include"].value) if "include" in data else []:
            statements.append(Include(str(inc.value), span=reader.span(inc.node)))
        from .nodes import Data

        for data_kind, entry in _iter_mapping(data["data"]) if "data" in data else []:
            span = reader.span(cast(Node, entry.key_node))
            statements.append(
                Data(
                    cast(Literal["corpus", "ab", "prompts"], data_kind),
                    str(entry.value),
                    span=span,
                    path_span=reader.span(entry.node),
                )
            )
    if isinstance(data.get("concepts", _Item(None, root_node)).value, dict):
        for name, entry in _iter_mapping(data["concepts"]):
            if not isinstance(entry.value, dict):
                reader.error(
                    entry.node,
                    f"concept '{name}' must be a mapping like {{from: pairs, path: data.yaml}}",
                    None,
                )
                continue
            ce = _validate(reader, ConceptEntry, entry, f"concept '{name}'")
            if ce is None:
                continue
            c = cast(ConceptEntry, ce)
            problem = concept_path_problem(c.from_, c.path)
            if problem is not None:
                reader.error(entry.value["path"].node, *problem)
            if c.from_ != "pairs" and "method" in entry.value:
                reader.error(cast(Node, entry.value["method"].key_node), *METHOD_ON_FILE)
            if c.feature is not None and c.from_ != "sae":
                reader.error(cast(Node, entry.value["feature"].key_node), *FEATURE_ON_OTHER)
            elif c.feature is not None and not 0 <= c.feature <= MAX_FEATURE:
                reader.error(entry.value["feature"].node, f"feature {c.feature} is out of range", None)
            elif c.from_ == "sae" and c.feature is None:
                reader.error(cast(Node, entry.key_node), *FEATURE_MISSING)
            calibrated_span = reader.span(cast(Node, entry.key_node))
            if c.calibrated is not None:
                calibrated_span = reader.span(entry.value["calibrated"].node)
                cal_problem = calibration_problem(c.from_, c.calibrated)
                if cal_problem is not None:
                    reader.error(entry.value["calibrated"].node, *cal_problem)
            statements.append(
                Concept(
                    str(name),
                    c.from_,
                    c.path,
                    c.method,
                    c.feature,
                    c.calibrated,
                    span=reader.span(cast(Node, entry.key_node)),
                    name_span=reader.span(cast(Node, entry.key_node)),
                    path_span=reader.span(entry.value["path"].node),
                    calibrated_span=calibrated_span,
                )
            )
    if isinstance(data.get("let", _Item(None, root_node)).value, dict):
        for name, entry in _iter_mapping(data["let"]):
            let = _let(reader, name, entry, header)
            if let is not None:
                statements.append(let)
    if isinstance(data.get("constraints", _Item(None, root_node)).value, list):
        for entry in cast(list[_Item], data["constraints"].value):
            if isinstance(entry.value, str):
                line, col = _scalar_pos(entry.node)
                stmt, diags = parse_statement(entry.value, Header(), path=path, line=line, col=col)
                reader.diags.extend(diags)
                if stmt is None and not diags:
                    reader.error(entry.node, "only operations may be written as DSL lines in `constraints`", None)
                elif stmt is not None and not isinstance(stmt, (*OP_CLASSES.values(), Budget, Target)):
                    reader.error(
                        entry.node,
                        "only operations may be written as DSL lines in `constraints`",
                        "put lets under `let:`, like let: {floor: [0.1, 0.3]}"
                        if isinstance(stmt, Let)
                        else "put concepts under `concepts:`",
                    )
                elif stmt is not None:
                    statements.append(stmt)
            elif isinstance(entry.value, dict):
                op = _op(reader, entry)
                if op is not None:
                    statements.append(op)
            else:
                reader.error(
                    entry.node,
                    f"a constraint is a mapping with `op` or a DSL line, not {_type_word(entry.value)}",
                    None,
                )
    return header, statements, reader.diags
