"""Contrastive pair datasets: the YAML / JSONL format that concept directions are extracted from.

A dataset names a concept and its two poles and lists pairs of texts that differ mainly in that concept::

    concept: sentiment
    description: Positive versus negative emotional tone.
    positive: positive
    negative: negative
    read: all                                    # which completion tokens count: all (default), first, last
    pairs:
      - positive: "What a lovely morning, I feel great."
        negative: "What a dreary morning, I feel awful."
      - prompt: "How was the film?"              # chat-shaped: completions are assistant replies
        positive: "Wonderful, I loved every minute."
        negative: "Dull, I regretted going."
        split: test                              # train (default) or test

A JSONL file holds one pair object per line with the same keys; its concept name is the file's stem, and every
completion token is read (``read: all``).

Every problem is a :class:`~constraintdsl.errors.SpecError` located at ``file:line:col``.  YAML is
parsed with PyYAML's safe composer only (no object construction), aliases and duplicate keys are refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from constraintdsl.errors import Diagnostic, Span, SpecError, UserError, did_you_mean
from constraintdsl.files import read_bytes

__all__ = ["PAIR_KEYS", "READS", "SPLITS", "TOP_KEYS", "Pair", "PairSet", "load_pairs"]

SPLITS: tuple[str, ...] = ("train", "test")
# which tokens of each completion are read: every one, the first, or the last (e.g. an answer letter)
READS: tuple[str, ...] = ("all", "first", "last")
TOP_KEYS: tuple[str, ...] = ("concept", "description", "positive", "negative", "read", "pairs")
PAIR_KEYS: tuple[str, ...] = ("prompt", "positive", "negative", "split")

_STR_TAG = "tag:yaml.org,2002:str"
_TAG_NAMES = {
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a date",
    "tag:yaml.org,2002:map": "a mapping",
    "tag:yaml.org,2002:seq": "a list",
}


@dataclass(frozen=True, slots=True)
class Pair:
    """One contrastive pair: two completions (of one optional chat ``prompt``) that differ in the concept."""

    positive: str
    negative: str
    prompt: str | None = None
    split: str = "train"
    span: Span | None = None  # the whole pair
    positive_span: Span | None = None
    negative_span: Span | None = None

    @property
    def is_chat(self) -> bool:
        """Whether the completions are assistant replies to ``prompt`` (formatted with a chat template)."""
        return self.prompt is not None


@dataclass(frozen=True, slots=True)
class PairSet:
    """A loaded pair dataset; ``sha256`` is the hex digest of the file's bytes (part of the cache key);
    ``read`` says which completion tokens are read (:data:`READS`, part of the cache key too)."""

    path: str
    concept: str
    description: str
    positive_label: str
    negative_label: str
    pairs: tuple[Pair, ...]
    sha256: str
    read: str = "all"

    @property
    def train(self) -> tuple[Pair, ...]:
        """Pairs of the ``train`` split (directions and calibration come from these)."""
        return tuple(p for p in self.pairs if p.split == "train")

    @property
    def test(self) -> tuple[Pair, ...]:
        """Pairs of the ``test`` split (held-out AUROC is measured on these)."""
        return tuple(p for p in self.pairs if p.split == "test")

    @property
    def is_chat(self) -> bool:
        """Whether the pairs are chat-shaped (a dataset is all chat-shaped or all plain)."""
        return bool(self.pairs) and self.pairs[0].is_chat


class _Problems:
    """Collects diagnostics so a file reports every problem at once, not just the first."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.text = text
        self.diags: list[Diagnostic] = []

    def add(self, span: Span, message: str, hint: str | None = None) -> None:
        self.diags.append(Diagnostic(span, message, hint))

    def raise_if_any(self) -> None:
        if self.diags:
            raise SpecError(self.diags, {self.path: self.text})


# --------------------------------------------------------------------------------------------- YAML


class _NoAliasLoader(yaml.SafeLoader):
    """The safe loader, refusing aliases (``*name``): they can expand exponentially and are never needed."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.MarkedYAMLError(None, None, "aliases (*name) are not allowed in data files", event.start_mark)
        return super().compose_node(parent, index)


def _span(path: str, node: yaml.Node) -> Span:
    start, end = node.start_mark, node.end_mark
    return Span(path, start.line + 1, start.column + 1, end.line + 1, end.column + 1)


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode) and node.tag not in _TAG_NAMES and node.tag != _STR_TAG:
        return f"a value tagged {node.tag}"
    return _TAG_NAMES.get(node.tag, "a string" if node.tag == _STR_TAG else f"a {node.tag} value")


def _yaml_string(p: _Problems, node: yaml.Node, what: str, *, allow_empty: bool = False) -> str | None:
    if not isinstance(node, yaml.ScalarNode) or node.tag != _STR_TAG:
        hint = "put the text in quotes" if isinstance(node, yaml.ScalarNode) else None
        p.add(_span(p.path, node), f"{what} must be a string, got {_describe(node)}", hint)
        return None
    value = str(node.value)
    if not allow_empty and not value.strip():
        p.add(_span(p.path, node), f"{what} must not be empty")
        return None
    return value


def _yaml_mapping(
    p: _Problems, node: yaml.MappingNode, allowed: Sequence[str], where: str
) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """Keys of a mapping node -> (key node, value node); reports duplicate, unknown and non-string keys."""
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR_TAG:
            p.add(_span(p.path, key_node), f"keys of {where} must be strings, got {_describe(key_node)}")
            continue
        key = str(key_node.value)
        if key in out:
            first = out[key][0].start_mark
            p.add(
                _span(p.path, key_node),
                f"duplicate key '{key}' in {where} (first at line {first.line + 1})",
            )
            continue
        if key not in allowed:
            hint = did_you_mean(key, allowed) or f"allowed keys: {', '.join(allowed)}"
            p.add(_span(p.path, key_node), f"unknown key '{key}' in {where}", hint)
            continue
        out[key] = (key_node, value_node)
    return out


def _compose(p: _Problems) -> yaml.Node:
    """The file's YAML node tree (safe composer, no aliases); invalid YAML or an empty file is a located error."""
    try:
        root = yaml.compose(p.text, Loader=_NoAliasLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        message = exc.problem or exc.context or "invalid YAML"
        raise SpecError.single(Span(p.path, line, col), f"invalid YAML: {message}", source=p.text) from None
    except yaml.YAMLError as exc:
        raise SpecError.single(Span(p.path, 1, 1), f"invalid YAML: {exc}", source=p.text) from None
    if root is None:
        raise SpecError.single(Span(p.path, 1, 1), "the file is empty", source=p.text)
    return root


def _parse_yaml(p: _Problems, data: bytes) -> tuple[dict[str, Any], list[Pair]]:
    root = _compose(p)
    if not isinstance(root, yaml.MappingNode):
        raise SpecError.single(
            _span(p.path, root),
            f"a pair dataset must be a mapping with keys {', '.join(TOP_KEYS)}, got {_describe(root)}",
            source=p.text,
        )
    top = _yaml_mapping(p, root, TOP_KEYS, "the dataset")
    header: dict[str, Any] = {}
    for key in ("concept", "description", "positive", "negative"):
        if key in top:
            header[key] = _yaml_string(p, top[key][1], f"'{key}'", allow_empty=key == "description")
        elif key != "description":
            p.add(Span(p.path, 1, 1), f"missing required key '{key}'")
    if header.get("positive") is not None and header.get("positive") == header.get("negative"):
        p.add(
            _span(p.path, top["negative"][1]),
            f"the two poles have the same name '{header['positive']}'",
            "name the positive and the negative pole differently (e.g. positive / negative)",
        )
    if "read" in top:
        read = _yaml_string(p, top["read"][1], "'read'")
        if read is not None and read not in READS:
            hint = did_you_mean(read, READS) or f"use one of: {', '.join(READS)}"
            p.add(_span(p.path, top["read"][1]), f"unknown read '{read}': which completion tokens to read", hint)
        elif read is not None:
            header["read"] = read
    pairs: list[Pair] = []
    if "pairs" not in top:
        p.add(Span(p.path, 1, 1), "missing required key 'pairs'")
        return header, pairs
    pairs_node = top["pairs"][1]
    if not isinstance(pairs_node, yaml.SequenceNode):
        p.add(_span(p.path, pairs_node), f"'pairs' must be a list, got {_describe(pairs_node)}")
        return header, pairs
    for index, item in enumerate(pairs_node.value):
        where = f"pair {index + 1}"
        span = _span(p.path, item)
        if not isinstance(item, yaml.MappingNode):
            p.add(span, f"{where} must be a mapping with 'positive' and 'negative', got {_describe(item)}")
            continue
        fields = _yaml_mapping(p, item, PAIR_KEYS, where)
        values: dict[str, str | None] = {}
        for key, (_, value_node) in fields.items():
            values[key] = _yaml_string(p, value_node, f"'{key}' of {where}")
        missing = [k for k in ("positive", "negative") if k not in fields]
        for key in missing:
            p.add(span, f"{where} is missing '{key}'")
        pair = _make_pair(p, values, span, where, fields_span=lambda k, f=fields: _span(p.path, f[k][1]))
        if pair is not None and not missing:
            pairs.append(pair)
    return header, pairs


# -------------------------------------------------------------------------------------------- JSONL


def _json_col(line: str, key: str) -> int:
    at = line.find(json.dumps(key))
    return at + 1 if at >= 0 else 1


def _parse_jsonl(p: _Problems, stem: str) -> tuple[dict[str, Any], list[Pair]]:
    header: dict[str, Any] = {
        "concept": stem,
        "description": "",
        "positive": "positive",
        "negative": "negative",
    }
    pairs: list[Pair] = []
    index = 0
    for lineno, line in enumerate(p.text.splitlines(), start=1):
        if not line.strip():
            continue
        index += 1
        where = f"pair {index}"
        span = Span(p.path, lineno, 1, lineno, len(line) + 1)
        duplicates: list[str] = []

        def pairs_hook(items: list[tuple[str, Any]], dup: list[str] = duplicates) -> dict[str, Any]:
            seen: dict[str, Any] = {}
            for k, v in items:
                if k in seen:
                    dup.append(k)
                seen[k] = v
            return seen

        try:
            obj = json.loads(line, object_pairs_hook=pairs_hook)
        except json.JSONDecodeError as exc:
            p.add(Span(p.path, lineno, exc.colno), f"invalid JSON: {exc.msg}")
            continue
        for key in duplicates:
            p.add(Span(p.path, lineno, _json_col(line, key)), f"duplicate key '{key}' in {where}")
        if not isinstance(obj, dict):
            p.add(span, f"{where} must be a JSON object with 'positive' and 'negative'")
            continue
        values: dict[str, str | None] = {}
        for key, value in obj.items():
            key_span = Span(p.path, lineno, _json_col(line, key))
            if key not in PAIR_KEYS:
                hint = did_you_mean(key, PAIR_KEYS) or f"allowed keys: {', '.join(PAIR_KEYS)}"
                p.add(key_span, f"unknown key '{key}' in {where}", hint)
            elif not isinstance(value, str):
                got = "null" if value is None else type(value).__name__
                p.add(key_span, f"'{key}' of {where} must be a string, got {got}")
                values[key] = None
            elif not value.strip():
                p.add(key_span, f"'{key}' of {where} must not be empty")
                values[key] = None
            else:
                values[key] = value
        missing = [k for k in ("positive", "negative") if k not in obj]
        for key in missing:
            p.add(span, f"{where} is missing '{key}'")
        pair = _make_pair(
            p,
            values,
            span,
            where,
            fields_span=lambda k, ln=line, no=lineno: Span(p.path, no, _json_col(ln, k)),
        )
        if pair is not None and not missing:
            pairs.append(pair)
    return header, pairs


# ------------------------------------------------------------------------------------------- common


def _make_pair(p: _Problems, values: dict[str, str | None], span: Span, where: str, fields_span: Any) -> Pair | None:
    split = values.get("split") or "train"
    if split not in SPLITS:
        hint = did_you_mean(split, SPLITS) or "use 'train' or 'test'"
        p.add(fields_span("split"), f"unknown split '{split}' in {where}", hint)
        return None
    if any(v is None for v in values.values()):
        return None  # already reported
    positive, negative = values.get("positive"), values.get("negative")
    if positive is None or negative is None:
        return None
    if positive == negative:
        p.add(span, f"{where}: 'positive' and 'negative' are identical, so the pair carries no contrast")
        return None
    return Pair(
        positive=positive,
        negative=negative,
        prompt=values.get("prompt"),
        split=split,
        span=span,
        positive_span=fields_span("positive"),
        negative_span=fields_span("negative"),
    )


def _check_set(p: _Problems, pairs: list[Pair]) -> None:
    if not pairs:
        if not p.diags:
            p.add(Span(p.path, 1, 1), "the dataset has no pairs")
        return
    first = pairs[0]
    for pair in pairs[1:]:
        if pair.is_chat != first.is_chat and pair.span is not None:
            first_line = first.span.line if first.span else 1
            kind, other = ("a plain pair", "chat-shaped") if first.is_chat else ("chat-shaped", "plain")
            p.add(
                pair.span,
                f"this is {kind}, but the first pair (line {first_line}) is {other}; "
                "a dataset is all chat-shaped (every pair has 'prompt') or all plain",
            )
            break
    if not any(pair.split == "train" for pair in pairs):
        p.add(Span(p.path, 1, 1), "the dataset has no train pairs", "leave 'split' out (train) for most pairs")


def _decode(path: str, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start].decode("utf-8", errors="replace")  # columns count characters
        line = before.count("\n") + 1
        col = len(before) - (before.rfind("\n") + 1) + 1
        raise SpecError.single(Span(path, line, col), f"the file is not UTF-8 text (byte {exc.start})") from None
    return text.removeprefix("\ufeff")


def load_pairs(path: str | Path, *, span: Span | None = None) -> PairSet:
    """Load a pair dataset from a ``.yaml``/``.yml`` or ``.jsonl`` file.

    Every problem in the file is reported at once as a :class:`SpecError`; a missing or unreadable file is
    a :class:`SpecError` at ``span`` (the spec statement that names the file) when given, else a
    :class:`UserError` naming the path.
    """
    name = str(path)
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in (".yaml", ".yml", ".jsonl"):
        message = f"unsupported pair dataset format '{suffix or file.name}'"
        hint = "pair datasets are .yaml, .yml or .jsonl files"
        if span is not None:
            raise SpecError.single(span, f"{name}: {message}", hint)
        raise UserError(name, message, hint)
    data = read_bytes(path, "pairs", at=span)
    text = _decode(name, data)
    problems = _Problems(name, text)
    if suffix == ".jsonl":
        header, pairs = _parse_jsonl(problems, file.stem)
    else:
        header, pairs = _parse_yaml(problems, data)
    _check_set(problems, pairs)
    problems.raise_if_any()
    return PairSet(
        path=name,
        concept=str(header["concept"]),
        description=str(header.get("description") or ""),
        positive_label=str(header["positive"]),
        negative_label=str(header["negative"]),
        pairs=tuple(pairs),
        sha256=hashlib.sha256(data).hexdigest(),
        read=str(header.get("read") or "all"),
    )
