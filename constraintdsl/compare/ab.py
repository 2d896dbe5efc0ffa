"""A/B behavior sets: two-answer multiple-choice items that measure a behavior by which answer a model prefers.

Each item asks one question and offers two answers that differ in the behavior only; ``match`` names the answer
on the behavior's positive pole::

    behavior: sentiment          # the concept the set measures
    items:
      - question: "My neighbour painted her fence bright yellow. What do you think?"
        a: "What a cheerful choice; it will brighten the whole street."
        b: "That sounds garish; it will be an eyesore for the street."
        match: a

``format: letters`` makes the set multiple-choice in the common letter form: the question is shown with its
choices ``(A) …`` and ``(B) …`` (given as ``a`` and ``b``, or written into the question itself), the reply is
``(A`` or ``(B``, and only the letter is scored.  See docs/compare-data.md.

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
from constraintdsl.errors import Span, SpecError, UserError, clip, did_you_mean
from constraintdsl.files import read_bytes

__all__ = ["ANSWERS", "FORMATS", "ITEM_KEYS", "TOP_KEYS", "ABItem", "ABSet", "load_ab"]

TOP_KEYS: tuple[str, ...] = ("behavior", "format", "items")
ITEM_KEYS: tuple[str, ...] = ("question", "a", "b", "match")
ANSWERS: tuple[str, ...] = ("a", "b")
# "text": the answers are the replies, scored whole; "letters": multiple choice, the reply is "(A" or "(B"
FORMATS: tuple[str, ...] = ("text", "letters")
LETTER_REPLIES: tuple[str, str] = ("(A", "(B")


@dataclass(frozen=True, slots=True)
class ABItem:
    """One question with two answers; ``match`` (``"a"`` or ``"b"``) is the answer showing the behavior.

    In a set of ``format: letters`` the answers are the choices ``(A)`` and ``(B)``; they are None when the
    question already lists them."""

    question: str
    a: str | None
    b: str | None
    match: str
    span: Span | None = None  # the whole item

    @property
    def matching(self) -> str | None:
        """The text of the answer that matches the behavior (None for choices written into the question)."""
        return self.a if self.match == "a" else self.b

    @property
    def other(self) -> str | None:
        """The text of the answer that does not match the behavior (None for choices written into the question)."""
        return self.b if self.match == "a" else self.a

    def user_text(self, fmt: str = "text") -> str:
        """The user turn: the question, and in the letter form its two choices (unless the question has them)."""
        if fmt == "letters" and self.a is not None and self.b is not None:
            return f"{self.question}\n\n(A) {self.a}\n(B) {self.b}"
        return self.question

    def replies(self, fmt: str = "text") -> tuple[str, str]:
        """The assistant replies scored for answers a and b: the answers, or ``(A`` and ``(B`` in the letter form."""
        if fmt == "letters":
            return LETTER_REPLIES
        assert self.a is not None and self.b is not None  # a text item always has both
        return self.a, self.b


@dataclass(frozen=True, slots=True)
class ABSet:
    """A loaded A/B set; ``sha256`` is the hex digest of the file's bytes; ``format`` is ``text`` or ``letters``."""

    behavior: str
    items: tuple[ABItem, ...]
    path: str
    sha256: str
    format: str = "text"

    def count(self, answer: str) -> int:
        """How many items have ``answer`` (``"a"`` or ``"b"``) as their matching answer."""
        return sum(1 for item in self.items if item.match == answer)


def _inline_choices(question: str) -> bool:
    return "(A)" in question and "(B)" in question


def _parse_item(p: _Problems, node: yaml.Node, index: int, fmt: str) -> ABItem | None:
    where = f"item {index}"
    span = _span(p.path, node)
    if not isinstance(node, yaml.MappingNode):
        p.add(span, f"{where} must be a mapping with keys {', '.join(ITEM_KEYS)}, got {_describe(node)}")
        return None
    fields = _yaml_mapping(p, node, ITEM_KEYS, where)
    # in the letter form, 'a' and 'b' may be left out when the question lists the choices itself
    optional = ("a", "b") if fmt == "letters" and "a" not in fields and "b" not in fields else ()
    values: dict[str, str | None] = {}
    complete = True
    for key in ITEM_KEYS:
        if key not in fields:
            values[key] = None
            if key in optional:
                continue
            complete = False
            if fmt == "letters" and key in ANSWERS:
                other = "b" if key == "a" else "a"
                p.add(span, f"{where} gives '{other}' but not '{key}'", "give both choices, or neither")
            else:
                p.add(span, f"{where} is missing '{key}'", f"every item has {', '.join(ITEM_KEYS)}")
            continue
        value = _yaml_string(p, fields[key][1], f"'{key}' of {where}")
        if key == "match" and value is not None and value not in ANSWERS:
            hint = "use 'a' or 'b' (lower case)" if value.strip().lower() in ANSWERS else "use 'a' or 'b'"
            p.add(_span(p.path, fields[key][1]), f"'match' of {where} must be 'a' or 'b', got '{clip(value)}'", hint)
            value = None
        if value is None:
            complete = False
        values[key] = value
    question, a, b, match = (values[key] for key in ITEM_KEYS)
    if a is not None and b is not None and a.strip() == b.strip():
        p.add(span, f"{where}: answers 'a' and 'b' are identical, so the item measures nothing")
        return None
    if fmt == "letters" and question is not None:
        qspan = _span(p.path, fields["question"][1])
        if optional and not _inline_choices(question):
            p.add(
                qspan,
                f"{where} has no choices: the question lists none as (A) … and (B) …, and 'a'/'b' are not given",
                "give the choices as 'a' and 'b', or write them into the question as (A) … (B) …",
            )
            return None
        if not optional and _inline_choices(question):
            p.add(
                qspan,
                f"{where} gives its choices twice: in the question as (A)/(B) and as 'a'/'b'",
                "keep one: the tool adds '(A) <a>' and '(B) <b>' after the question",
            )
            return None
    if not complete or question is None or match is None:
        return None
    return ABItem(question=question, a=a, b=b, match=match, span=span)


def _parse(p: _Problems) -> tuple[str | None, str, list[ABItem]]:
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
    fmt = "text"
    if "format" in top:
        given = _yaml_string(p, top["format"][1], "'format'")
        if given is not None and given not in FORMATS:
            hint = did_you_mean(given, FORMATS) or f"use one of: {', '.join(FORMATS)}"
            p.add(_span(p.path, top["format"][1]), f"unknown A/B format '{clip(given)}'", hint)
        elif given is not None:
            fmt = given
    items: list[ABItem] = []
    if "items" not in top:
        p.add(Span(p.path, 1, 1), "missing required key 'items'")
        return behavior, fmt, items
    items_node = top["items"][1]
    if isinstance(items_node, yaml.ScalarNode) and items_node.tag == "tag:yaml.org,2002:null":
        p.add(_span(p.path, top["items"][0]), "the A/B set has no items", "add items with question, a, b and match")
        return behavior, fmt, items
    if not isinstance(items_node, yaml.SequenceNode):
        p.add(_span(p.path, items_node), f"'items' must be a list, got {_describe(items_node)}")
        return behavior, fmt, items
    first_seen: dict[str, int] = {}
    for index, node in enumerate(items_node.value, start=1):
        item = _parse_item(p, node, index, fmt)
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
    return behavior, fmt, items


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
    behavior, fmt, items = _parse(problems)
    problems.raise_if_any()
    assert behavior is not None  # a missing or invalid behavior was reported above
    return ABSet(behavior=behavior, items=tuple(items), path=name, sha256=hashlib.sha256(data).hexdigest(), format=fmt)
