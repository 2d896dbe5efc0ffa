"""The whole constraint set: :class:`Spec`, an immutable value with its canonical forms, hash and diff.

Its statements are the values of :mod:`constraintdsl.lang.nodes`.  ``parse`` gives what one file says;
``load`` gives what it means (includes followed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .canonical import spec_hash, to_dict, to_dsl, to_yaml
from .diff import Change, diff
from .nodes import Check, Concept, Data, Include, Let, Op

__all__ = ["Spec"]


@dataclass(frozen=True, slots=True)
class Spec:
    """A whole constraint set.

    ``parse`` gives what one file says (its ``include`` statements listed, not followed);
    ``load`` gives what it means: includes resolved and flattened, ``includes`` empty.
    A spec with ``lets`` stands for several concrete variants (:mod:`constraintdsl.lang.variants`).
    ``checks`` (``budget`` and ``target`` statements) say what a run must show; the compiler never reads them.
    """

    version: int = 1
    name: str | None = None
    model: str | None = None
    includes: tuple[Include, ...] = ()
    concepts: tuple[Concept, ...] = ()
    lets: tuple[Let, ...] = ()
    constraints: tuple[Op, ...] = ()
    checks: tuple[Check, ...] = ()  # budgets and targets: claims about the run, never interventions
    data: tuple[Data, ...] = ()  # the evaluation data they are measured on (corpus, ab, prompts)
    path: str = field(default="<string>", compare=False)
    sources: tuple[str, ...] = field(default=(), compare=False, repr=False)
    comments: tuple[tuple[int, str], ...] = field(default=(), compare=False, repr=False)
    header_lines: tuple[tuple[str, int], ...] = field(default=(), compare=False, repr=False)

    def let(self, name: str) -> Let | None:
        """The ``let`` statement named ``name``, if any."""
        for v in self.lets:
            if v.name == name:
                return v
        return None

    def data_path(self, kind: str) -> str | None:
        """The path a ``data`` statement gives for ``kind`` (``corpus``, ``ab``, ``prompts``), if any."""
        for d in self.data:
            if d.kind == kind:
                return d.path
        return None

    def concept(self, name: str) -> Concept | None:
        """The concept statement named ``name``, if any."""
        for c in self.concepts:
            if c.name == name:
                return c
        return None

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (the YAML twin's structure)."""
        return to_dict(self)

    def to_dsl(self, *, comments: bool = False) -> str:
        """Canonical DSL text; with ``comments=True`` the file's comments are kept."""
        return to_dsl(self, comments=comments)

    def to_yaml(self) -> str:
        """Canonical YAML text."""
        return to_yaml(self)

    def hash(self) -> str:
        """``sha256:<hex>`` of the canonical form."""
        return spec_hash(self)

    def diff(self, other: Spec) -> list[Change]:
        """Semantic changes from this spec to ``other``."""
        return diff(self, other)
