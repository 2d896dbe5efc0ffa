"""The typed, immutable values a constraint spec is made of: statements, values, layers, tokens, gates.

Each statement class shares its name with the DSL keyword, the grammar rule and the YAML
``op``: ``clamp`` → :class:`Clamp`, ``pin`` → :class:`Pin`, and so on.  Source spans ride
along on every statement but never take part in equality, so a DSL file and its YAML twin
produce equal specs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol, TypeAlias, runtime_checkable

from constraintdsl.errors import Span

__all__ = [
    "BUDGET_MEASURES",
    "CONCEPT_SOURCES",
    "DATA_KINDS",
    "SITES",
    "TOKEN_KINDS",
    "Ablate",
    "Budget",
    "Check",
    "Clamp",
    "Concept",
    "ConceptSource",
    "Data",
    "Depth",
    "Gate",
    "Include",
    "LayerRange",
    "Layers",
    "Let",
    "Op",
    "Pin",
    "Ref",
    "Scale",
    "SpecLike",
    "Statement",
    "Steer",
    "Target",
    "Tokens",
    "Unit",
    "Value",
    "Where",
    "op_refs",
]

SITES: tuple[str, ...] = ("resid", "attn", "mlp")
TOKEN_KINDS: tuple[str, ...] = ("all", "prompt", "generated", "last", "first")
# Where a concept's direction comes from: extracted from pairs, a concept file, or imported from another tool.
CONCEPT_SOURCES: tuple[str, ...] = ("pairs", "file", "gguf", "svec", "sae")
ConceptSource: TypeAlias = Literal["pairs", "file", "gguf", "svec", "sae"]
NO_SPAN = Span("<spec>", 1, 1)


class Unit(str, enum.Enum):
    """How a value is measured: calibrated (bare number), raw projection, percentile, std devs, or
    ``vec``: times the stored vector's norm at that layer (imported vectors keep their norms)."""

    calibrated = "calibrated"
    raw = "raw"
    percentile = "percentile"
    sd = "sd"
    vec = "vec"


@dataclass(frozen=True, slots=True)
class Value:
    """A number with its unit; for percentiles ``number`` is the level (``p25`` → 25)."""

    number: float
    unit: Unit = Unit.calibrated


@dataclass(frozen=True, slots=True)
class Ref:
    """``$name``: a placeholder for a value bound by a ``let`` (see :mod:`constraintdsl.lang.variants`)."""

    name: str
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class LayerRange:
    """Inclusive layer range; a single layer has ``start == stop``. Negative counts from the end."""

    start: int
    stop: int


@dataclass(frozen=True, slots=True)
class Layers:
    """An explicit layer selection: a union of inclusive ranges."""

    items: tuple[LayerRange, ...]


@dataclass(frozen=True, slots=True)
class Depth:
    """A model-portable layer selection by relative depth, in percent (inclusive)."""

    start: float
    stop: float


Where: TypeAlias = Layers | Depth


@dataclass(frozen=True, slots=True)
class Tokens:
    """Which token positions an op acts on; ``count`` only for ``last``/``first``."""

    kind: Literal["all", "prompt", "generated", "last", "first"] = "all"
    count: int | None = None


ALL_TOKENS = Tokens()


@dataclass(frozen=True, slots=True)
class Gate:
    """``when <concept> <cmp> <value> [at layer N]``: apply only to sequences whose prompt passes."""

    concept: str
    cmp: Literal[">=", "<=", ">", "<"]
    value: Value | Ref
    layer: int | None = None
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Concept:
    """``concept NAME from SOURCE "PATH" [method mean|pca] [feature N] [calibrated on "pairs.yaml"]``.

    ``source`` is ``pairs`` (extracted), ``file`` (a concept artifact or a raw ``.npy`` vector), or an
    import: ``gguf`` (a llama.cpp control vector), ``svec`` (an IBM activation-steering vector) or ``sae``
    (a sae-lens folder; ``feature`` picks the decoder row).  ``calibrated`` names a pair set on which an
    imported direction is calibrated (as extraction calibrates its own).
    """

    keyword: ClassVar[str] = "concept"
    name: str
    source: ConceptSource
    path: str
    method: Literal["mean", "pca"] = "mean"
    feature: int | None = None
    calibrated: str | None = None
    span: Span = field(default=NO_SPAN, compare=False, repr=False)
    name_span: Span = field(default=NO_SPAN, compare=False, repr=False)
    path_span: Span = field(default=NO_SPAN, compare=False, repr=False)
    calibrated_span: Span = field(default=NO_SPAN, compare=False, repr=False)


DATA_KINDS: tuple[str, ...] = ("corpus", "ab", "prompts")


@dataclass(frozen=True, slots=True)
class Data:
    """``data corpus "neutral.txt"``: the evaluation data budgets and targets are measured on — the reference
    corpus, the A/B set, the prompts — relative to the spec file; ``cdsl compare``/``tune`` flags override it."""

    keyword: ClassVar[str] = "data"
    kind: Literal["corpus", "ab", "prompts"]
    path: str
    span: Span = field(default=NO_SPAN, compare=False, repr=False)
    path_span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Include:
    """``include "other.cdsl"``: composition, relative to the including file."""

    keyword: ClassVar[str] = "include"
    path: str
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Let:
    """``let NAME = v1 | v2 | …``: the values a ``$NAME`` sweeps over, in order; or ``let NAME = lo .. hi``,
    a continuous range (``values`` empty, ``range`` the inclusive ends) that ``tune`` searches."""

    keyword: ClassVar[str] = "let"
    name: str
    values: tuple[Value, ...]
    range: tuple[Value, Value] | None = None
    span: Span = field(default=NO_SPAN, compare=False, repr=False)
    name_span: Span = field(default=NO_SPAN, compare=False, repr=False)
    value_spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class _OpBase:
    """Fields shared by every operation, in canonical clause order."""

    concept: str
    where: Where
    site: str = "resid"
    tokens: Tokens = ALL_TOKENS
    gate: Gate | None = None
    span: Span = field(default=NO_SPAN, compare=False, repr=False)
    concept_span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Clamp(_OpBase):
    """Hard bound(s) on the projection: ``>= min``, ``<= max`` or ``in [min, max]``."""

    keyword: ClassVar[str] = "clamp"
    min: Value | Ref | None = None
    max: Value | Ref | None = None


@dataclass(frozen=True, slots=True)
class Pin(_OpBase):
    """Pin the projection to one value: ``pin c = v``."""

    keyword: ClassVar[str] = "pin"
    value: Value | Ref = Value(0.0)


@dataclass(frozen=True, slots=True)
class Ablate(_OpBase):
    """Remove the component along the direction (raw projection pinned to 0)."""

    keyword: ClassVar[str] = "ablate"


@dataclass(frozen=True, slots=True)
class Steer(_OpBase):
    """Add ``by`` (calibrated: times the pole distance) along the unit direction."""

    keyword: ClassVar[str] = "steer"
    by: Value | Ref = Value(0.0)


@dataclass(frozen=True, slots=True)
class Scale(_OpBase):
    """Multiply the raw projection by ``by``."""

    keyword: ClassVar[str] = "scale"
    by: float | Ref = 1.0


Op: TypeAlias = Clamp | Pin | Ablate | Steer | Scale

# What a budget may cap, each measured per predicted token of the reference corpus against the baseline:
# the rise in negative log-likelihood (nats), the mean KL(baseline ‖ constrained), the perplexity ratio.
BUDGET_MEASURES: tuple[str, ...] = ("nll", "kl", "ppl")


@dataclass(frozen=True, slots=True)
class Budget:
    """``budget kl <= 0.05``: a ceiling on one tax measure over the reference corpus.

    ``measure`` is ``nll`` (ΔNLL per token, nats), ``kl`` (mean KL(baseline ‖ constrained) per token) or
    ``ppl`` (perplexity ratio).  Not an intervention: ``compare`` asserts it and ``tune`` searches within it."""

    keyword: ClassVar[str] = "budget"
    measure: Literal["nll", "kl", "ppl"]
    limit: float
    span: Span = field(default=NO_SPAN, compare=False, repr=False)
    measure_span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Target:
    """``target ab >= 0.1`` or ``target sentiment >= 0.5``: a goal for one effect.

    ``measure`` ``ab`` is the shift of mean p(match) on the A/B set from the baseline's; any other name is a
    concept, whose readout shift on the generated text (calibrated units) is the effect.  ``cmp`` says which
    way is better (``>=``: higher).  Not an intervention: ``compare`` asserts it and ``tune`` aims at it."""

    keyword: ClassVar[str] = "target"
    measure: str
    cmp: Literal[">=", "<="]
    value: float
    span: Span = field(default=NO_SPAN, compare=False, repr=False)
    measure_span: Span = field(default=NO_SPAN, compare=False, repr=False)


Check: TypeAlias = Budget | Target
Statement: TypeAlias = Concept | Include | Let | Op | Check | Data
OP_CLASSES: dict[str, type[Op]] = {c.keyword: c for c in (Clamp, Pin, Ablate, Steer, Scale)}
VALUE_FIELDS: tuple[str, ...] = ("min", "max", "value", "by")


def op_refs(op: Op) -> list[tuple[str, Ref]]:
    """The ``$name`` placeholders in one operation, in text order, each with the field it fills
    (``min``, ``max``, ``value``, ``by`` or ``when`` for the gate's threshold)."""
    out: list[tuple[str, Ref]] = []
    for key in VALUE_FIELDS:
        v = getattr(op, key, None)
        if isinstance(v, Ref):
            out.append((key, v))
    if op.gate is not None and isinstance(op.gate.value, Ref):
        out.append(("when", op.gate.value))
    return out


@runtime_checkable
class SpecLike(Protocol):
    """What formatting, hashing and diffing read of a spec; :class:`constraintdsl.lang.spec.Spec` is one.

    Those functions sit below the ``Spec`` class (whose methods call them), so they name its shape,
    not the class.
    """

    @property
    def version(self) -> int: ...
    @property
    def name(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def includes(self) -> tuple[Include, ...]: ...
    @property
    def concepts(self) -> tuple[Concept, ...]: ...
    @property
    def lets(self) -> tuple[Let, ...]: ...
    @property
    def constraints(self) -> tuple[Op, ...]: ...
    @property
    def checks(self) -> tuple[Check, ...]: ...
    @property
    def data(self) -> tuple[Data, ...]: ...
    @property
    def path(self) -> str: ...
    @property
    def comments(self) -> tuple[tuple[int, str], ...]: ...
    @property
    def header_lines(self) -> tuple[tuple[str, int], ...]: ...
