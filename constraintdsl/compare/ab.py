"""A/B behavior sets: two-answer multiple-choice items that measure a behavior by which answer a model prefers.

Each item asks one question and offers two answers that differ in the behavior only; ``match`` names the answer
on the behavior's positive pole::

    behavior: sentiment          # the concept the set measures
    items:
      - question: "My neighbour painted her fence bright yellow. What do you think?"
        a: "What a cheerful choice; it will brighten the whole street."
        b: "That sounds garish; it will be an eyesore for the street."
        match: a

``cdsl compare`` reports the shift in probability of the matching answer.  The YAML is read with the pair
datasets' safe, located reader (:mod:`constraintdsl.concepts.pairs`); every problem is a located
:class:`~constraintdsl.errors.SpecError`, all of a file's problems at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml

from constraintdsl.concepts.pairs import _compose, _decode, _describe, _Problems, _span, _yaml_mapping, _yaml_string
from constraintdsl.errors import Span, SpecError, UserError, clip
from constraintdsl.files import read_bytes

__all__ = ["ANSWERS", "ITEM_KEYS", "TOP_KEYS", "ABItem", "ABSet", "load_ab"]

TOP_KEYS: tuple[str, ...] = ("behavior", "items")
ITEM_KEYS: tuple[str, ...] = ("question", "a", "b", "match")
ANSWERS: tuple[str, ...] = ("a", "b")


@dataclass(frozen=True, slots=True)
class ABItem:
    """One question with two answers; ``match`` (``"a"`` or ``"b"``) is the answer showing the behavior."""

    question: str
    a: str
    b: str
    match: str
    span: Span | None = None  # the whole item

    @property
    def matching(self) -> str:
        """The text of the answer that matches the behavior."""
        return self.a if self.match == "a" else self.b

    @property
    def other(self) -> str:
        """The text of the answer that does not match the behavior."""
        return self.b if self.match == "a" else self.a


@dataclass(frozen=True, slots=True)
class ABSet:
    """A loaded A/B set; ``sha256`` is the hex digest of the file's bytes."""

    behavior: str
    items: tuple[ABItem, ...]
    path: str
    sha256: str

    def count(self, answer: str) -> int:
        """How many items have ``answer`` (``"a"`` or ``"b"``) as their matching answer."""
        return sum(1 for item in self.items if item.match == answer)


def _parse_item(p: _Problems, node: yaml.Node, index: int) -> ABItem | None:
    where = f"item {index}"
    span = _span(p.path, node)
    if not isinstance(node, yaml.MappingNode):
        p.add(span, f"{where} must be a mapping with keys {', '.join(ITEM_KEYS)}, got {_describe(node)}")
        return None
    fields = _yaml_mapping(p, node, ITEM_KEYS, where)
    values: dict[str, str | None] = {}
    for key in ITEM_KEYS:
        if key not in fields:
            p.add(span, f"{where} is missing '{key}'", f"every item has {', '.join(ITEM_KEYS)}")
            values[key] = None
            continue
        value = _yaml_string(p, fields[key][1], f"'{key}' of {where}")
        if key == "match" and value is not None and value not in ANSWERS:
            hint = "use 'a' or 'b' (lower case)" if value.strip().lower() in ANSWERS else "use 'a' or 'b'"
            p.add(_span(p.path, fields[key][1]), f"'match' of {where} must be 'a' or 'b', got '{clip(value)}'", hint)
            value = None
        values[key] = value
    question, a, b, match = (values[key] for key in ITEM_KEYS)
    if a is not None and b is not None and a.strip() == b.strip():
        p.add(span, f"{where}: answers 'a' and 'b' are identical, so the item measures nothing")
        return None
    if question is None or a is None or b is None or match is None:
        return None
    return ABItem(question=question, a=a, b=b, match=match, span=span)


def _parse(p: _Problems) -> tuple[str | None, list[ABItem]]:
    root = _compose(p)
    if not isinstance(root, yaml.MappingNode):
        raise SpecError.single(
            _span(p.path, root),
            f"an A/B set must be a mapping with keys {', '.join(TOP_KEYS)}, got {_describe(root)}",
            source=p.text,
        )
    top = _yaml_mapping(p, root, TOP_KEYS, "the A/B set")
    behavior: str | None = None
    if "behavior" in top:
        behavior = _yaml_string(p, top["behavior"][1], "'behavior'")
    else:
        p.add(Span(p.path, 1, 1), "missing required key 'behavior'", "name the concept the set measures")
    items: list[ABItem] = []
    if "items" not in top:
        p.add(Span(p.path, 1, 1), "missing required key 'items'")
        return behavior, items
    items_node = top["items"][1]
    if isinstance(items_node, yaml.ScalarNode) and items_node.tag == "tag:yaml.org,2002:null":
        p.add(_span(p.path, top["items"][0]), "the A/B set has no items", "add items with question, a, b and match")
        return behavior, items
    if not isinstance(items_node, yaml.SequenceNode):
        p.add(_span(p.path, items_node), f"'items' must be a list, got {_describe(items_node)}")
        return behavior, items
    first_seen: dict[str, int] = {}
    for index, node in enumerate(items_node.value, start=1):
        item = _parse_item(p, node, index)
        if item is None or item.span is None:
            continue
        key = " ".join(item.question.split()).casefold()
        if key in first_seen:
            p.add(
                item.span,
                f"item {index} repeats the question of the item at line {first_seen[key]}",
                "each question appears once; remove or reword one of them",
            )
            continue
        first_seen[key] = item.span.line
        items.append(item)
    if not items and not p.diags:
        p.add(_span(p.path, items_node), "the A/B set has no items", "add items with question, a, b and match")
    return behavior, items


def load_ab(path: str | Path) -> ABSet:
    """Load an A/B behavior set from a ``.yaml``/``.yml`` file.

    Every problem in the file is reported at once as a :class:`SpecError` at ``file:line:col``; a missing or
    unreadable file, or one of another format, is a :class:`UserError` naming the path.
    """
    name = str(path)
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in (".yaml", ".yml"):
        raise UserError(name, f"unsupported A/B set format '{suffix or file.name}'", "A/B sets are .yaml or .yml files")
    data = read_bytes(path, "ab")
    problems = _Problems(name, _decode(name, data))
    behavior, items = _parse(problems)
    problems.raise_if_any()
    assert behavior is not None  # a missing or invalid behavior was reported above
    return ABSet(behavior=behavior, items=tuple(items), path=name, sha256=hashlib.sha256(data).hexdigest())
