"""DSL text → :class:`~constraintdsl.lang.spec.Spec`.

The Lark grammar (``grammars/constraint.lark``) is the whole surface syntax.  Statements never
span lines, so the file is parsed one line at a time: every bad line is reported, not just
the first.  Parse trees never leave this module; what leaves is typed statements plus
:class:`~constraintdsl.errors.Diagnostic` for anything wrong.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput

from constraintdsl.errors import Diagnostic, Span, clip, describe_char, did_you_mean

from .canonical import format_layers, format_number, format_value
from .nodes import (
    BUDGET_MEASURES,
    CONCEPT_SOURCES,
    DATA_KINDS,
    OP_CLASSES,
    SITES,
    TOKEN_KINDS,
    Budget,
    Concept,
    ConceptSource,
    Data,
    Depth,
    Gate,
    Include,
    LayerRange,
    Layers,
    Let,
    Op,
    Ref,
    Statement,
    Target,
    Tokens,
    Unit,
    Value,
    Where,
)
from .syntax_errors import EXAMPLES, MESSAGES

__all__ = ["Header", "grammar_path", "normalize_text", "parse_file_statements", "parse_fragment"]

FRAGMENT_RULES = ("value", "layer_list", "percent_range", "tokens_sel", "gate_expr", "let_values", "let_span")
UNITS = ("raw", "sd", "vec")
METHODS = ("mean", "pca")
SOURCES = CONCEPT_SOURCES
IMPORTED = ("gguf", "svec", "sae")  # directions made by other tools (docs/interop.md)
PAIR_SUFFIXES = (".yaml", ".yml", ".jsonl")
ARTIFACT_SUFFIXES = (".safetensors", ".npy")
SOURCE_SUFFIXES = {"gguf": ".gguf", "svec": ".svec"}
MAX_FEATURE = 100_000_000
Index = int  # (inside _Builder, `int` names its method)
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")
MAX_INT = {"version": 1_000_000, "layer": 99_999, "token count": 100_000_000}
_CLAUSE_KEYS = {"layers": "at", "depth": "at", "site": "in", "tokens": "on", "gate": "when"}
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)")
_PERCENTILE = re.compile(r"p(\d+(?:\.\d+)?)")
_LET_NAME = re.compile(r"[ \t]*let[ \t]+([A-Za-z_][A-Za-z0-9_]*)")
_CMP_ASCII = {"≥": ">=", "≤": "<="}
_CHAR_HINTS = {
    "“": 'use straight double quotes: "…"',
    "”": 'use straight double quotes: "…"',
    "‘": "use straight quotes: '…'",
    "’": "use straight quotes: '…'",
    "—": "an em dash is not a range; use '-', '–' or '..': 10-14",
    "−": "use the ASCII minus sign '-'",
    "≠": "there is no 'not equal' bound; use >=, <= or in [a, b]",
    "\u00a0": "a no-break space; replace it with an ordinary space",
    "\u200b": "an invisible zero-width space; delete it",
    "\ufeff": "a byte-order mark inside the file; delete it",
    "$": "a variable is `$` and a name, defined by a `let` line: let floor = 0.1 | 0.3, then >= $floor",
    ";": "one statement per line; start a new line instead of ';'",
}


def grammar_path() -> Path:
    """Where the grammar file is: inside the installed package, or beside it in a source tree."""
    here = Path(__file__).resolve().parents[1]  # the package folder
    for candidate in (here / "grammars" / "constraint.lark", here.parent / "grammars" / "constraint.lark"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("constraintdsl's grammar file constraint.lark is missing from the installation")


@functools.cache
def _lark() -> Lark:
    return Lark(
        grammar_path().read_text(encoding="utf-8"),
        parser="lalr",
        lexer="contextual",
        start=["start", *FRAGMENT_RULES],
        maybe_placeholders=False,
    )


def normalize_text(text: str) -> str:
    """Strip a leading byte-order mark and turn CRLF / CR line ends into LF."""
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


@dataclass
class Header:
    """Header statements of one file (version, name, model), with spans for checking."""

    version: tuple[int, Span] | None = None
    name: tuple[str, Span] | None = None
    model: tuple[str, Span] | None = None
    first_statement: Span | None = None
    version_number: Span | None = None
    duplicates: list[tuple[str, Span, Span]] = field(default_factory=list)
    broken_lets: set[str] = field(default_factory=set)  # lets already reported as unreadable


@dataclass
class _Builder:
    """Turns parse trees into statements; collects every problem as a Diagnostic."""

    path: str
    line: int = 1
    col0: int = 0  # added to lark's 1-based column (fragments inside YAML scalars)
    diags: list[Diagnostic] = field(default_factory=list)

    # -- positions ---------------------------------------------------------
    def tok_span(self, tok: Token) -> Span:
        line = self.line + (tok.line or 1) - 1
        col = (tok.column or 1) + (self.col0 if (tok.line or 1) == 1 else 0)
        end = col + len(str(tok))
        return Span(self.path, line, col, line, end)

    def tree_span(self, node: Tree[Token] | Token) -> Span:
        first, last = _edge_token(node, 0), _edge_token(node, -1)
        if first is None or last is None:
            return Span(self.path, self.line, 1 + self.col0)
        a, b = self.tok_span(first), self.tok_span(last)
        return Span(self.path, a.line, a.col, b.end_line, b.end_col)

    def error(self, span: Span, message: str, hint: str | None = None) -> None:
        self.diags.append(Diagnostic(span, message, hint))

    # -- statements --------------------------------------------------------
    def statement(self, tree: Tree[Token], header: Header) -> Statement | None:
        kind = str(tree.data)
        span = self.tree_span(tree)
        if header.first_statement is None:
            header.first_statement = span
        kids = _kids(tree)
        if kind == "version":
            if header.version is None:
                header.version_number = self.tok_span(cast(Token, kids[0]))
            number = self.int(cast(Token, kids[0]), "version")
            if number is None:
                return None
            self._header(header, "version", (number, span))
            return None
        if kind in ("name", "model"):
            text = self.string(cast(Token, kids[0]))
            self._header(header, kind, (text, span))
            return None
        if kind == "include":
            return Include(self.string(cast(Token, kids[0])), span=span)
        if kind == "concept":
            return self.concept(tree, span)
        if kind in ("budget", "target"):
            return self.check(kind, tree, span)
        if kind == "data":
            return self.data(tree, span)
        if kind in ("let", "let_range"):
            before = len(self.diags)
            let = self.let(tree, span)
            if len(self.diags) > before:  # neither it nor a `$x` among its values is reported again
                header.broken_lets.add(let.name)
                header.broken_lets.update(
                    str(t)[1:] for t in tree.scan_values(lambda t: isinstance(t, Token) and t.type == "REF")
                )
            return let
        return self.op(kind, tree, span)

    def _header(self, header: Header, key: str, item: tuple[Any, Span]) -> None:
        prev = getattr(header, key)
        if prev is not None:
            header.duplicates.append((key, prev[1], item[1]))
        else:
            setattr(header, key, item)

    def int(self, tok: Token, what: str) -> int | None:
        """A whole number token, refusing absurd sizes (a layer past 99,999, say) with a located error."""
        text = str(tok)
        limit = MAX_INT[what]
        if len(text.lstrip("+-")) > 9 or abs(int(text)) > limit:
            self.error(self.tok_span(tok), f"{what} {clip(text, 20)} is out of range", f"a {what} is at most {limit:,}")
            return None
        return int(text)

    def string(self, tok: Token) -> str:
        raw = str(tok)[1:-1]
        text = _ESCAPE.sub(_unescape, raw)
        if not text.strip():
            self.error(self.tok_span(tok), "empty string", "write the name or path between the quotes")
        return text

    def concept(self, tree: Tree[Token], span: Span) -> Concept:
        kids = _kids(tree)
        name_tok, source_tok, path_tok = (cast(Token, k) for k in kids[:3])
        source = str(source_tok)
        if source not in SOURCES:
            self.error(
                self.tok_span(source_tok),
                f"unknown concept source '{clip(source)}'",
                did_you_mean(source, SOURCES)
                or 'a concept comes `from pairs "data.yaml"`, `from file "x.safetensors"`, `from gguf "x.gguf"`, '
                '`from svec "x.svec"` or `from sae "folder" feature N`',
            )
            source = "pairs"
            known = False
        else:
            known = True
        method = "mean"
        feature: int | None = None
        calibrated: str | None = None
        calibrated_span = Span(self.path, self.line, 1)
        seen: dict[str, Tree[Token]] = {}
        for option in cast(list[Tree[Token]], kids[3:]):
            kind = str(option.data)
            if kind in seen:
                self.error(
                    self.tree_span(option),
                    f"a second `{kind}` in one concept statement",
                    f"keep the one at column {self.tree_span(seen[kind]).col}",
                )
                continue
            seen[kind] = option
            tok = cast(Token, _kids(option)[0])
            if kind == "method":
                method = str(tok)
                if method not in METHODS:
                    self.error(
                        self.tok_span(tok),
                        f"unknown method '{clip(method)}'",
                        did_you_mean(method, METHODS) or "methods: mean, pca",
                    )
                    method = "mean"
                elif source != "pairs":
                    self.error(self.tree_span(option), *METHOD_ON_FILE)
            elif kind == "feature":
                if source != "sae":
                    self.error(self.tree_span(option), *FEATURE_ON_OTHER)
                else:
                    feature = self.feature(tok)
            else:
                calibrated = self.string(tok)
                calibrated_span = self.tok_span(tok)
                problem = calibration_problem(source, calibrated)
                if problem is not None:
                    self.error(self.tree_span(option) if source == "pairs" else calibrated_span, *problem)
        if source == "sae" and "feature" not in seen:
            self.error(span, *FEATURE_MISSING)
        path = self.string(path_tok)
        if known:
            self._check_concept_path(source, path, self.tok_span(path_tok))
        return Concept(
            str(name_tok),
            cast(ConceptSource, source),
            path,
            cast(Literal["mean", "pca"], method),
            feature,
            calibrated,
            span=span,
            name_span=self.tok_span(name_tok),
            path_span=self.tok_span(path_tok),
            calibrated_span=calibrated_span,
        )

    def feature(self, tok: Token) -> Index | None:
        """``feature N``: an SAE feature index (a decoder row), for ``from sae`` only."""
        text = str(tok)
        if text.startswith("-"):
            self.error(self.tok_span(tok), f"feature {text} is negative", "features are numbered from 0")
            return None
        if len(text.lstrip("+")) > 9 or int(text) > MAX_FEATURE:
            self.error(self.tok_span(tok), f"feature {clip(text, 20)} is out of range", None)
            return None
        return int(text)

    def data(self, tree: Tree[Token], span: Span) -> Data | None:
        """``data corpus|ab|prompts "PATH"``."""
        kind_tok, path_tok = (cast(Token, k) for k in _kids(tree))
        kind = str(kind_tok)
        path = self.string(path_tok)
        if kind not in DATA_KINDS:
            self.error(
                self.tok_span(kind_tok),
                f"unknown data kind '{clip(kind)}'",
                did_you_mean(kind, DATA_KINDS)
                or 'data names the reference corpus, the A/B set or the prompts: data corpus "neutral.txt"',
            )
            return None
        if not path.strip():
            return None
        return Data(cast(Literal["corpus", "ab", "prompts"], kind), path, span=span, path_span=self.tok_span(path_tok))

    def check(self, kind: str, tree: Tree[Token], span: Span) -> Budget | Target | None:
        """``budget MEASURE <= LIMIT`` or ``target MEASURE >= VALUE`` (or ``<=``): plain numbers only."""
        measure_tok, cmp_tok, value_tree = _kids(tree)
        measure, measure_span = str(measure_tok), self.tok_span(cast(Token, measure_tok))
        cmp = _CMP_ASCII.get(str(cmp_tok), str(cmp_tok))
        cmp_span = self.tok_span(cast(Token, cmp_tok))
        ok = True
        if kind == "budget" and measure not in BUDGET_MEASURES:
            self.error(
                measure_span,
                f"unknown budget measure '{clip(measure)}'",
                did_you_mean(measure, BUDGET_MEASURES)
                or "a budget caps nll (ΔNLL per token), kl (mean KL per token) or ppl (perplexity ratio)",
            )
            ok = False
        if kind == "budget" and cmp != "<=":
            self.error(cmp_span, f"a budget is a ceiling, not `{cmp}`", f"write budget {measure} <= LIMIT")
            ok = False
        if kind == "target" and cmp not in (">=", "<="):
            self.error(
                cmp_span,
                f"a target is reached at its value: use `>=` or `<=`, not `{cmp}`",
                f"target {measure} >= VALUE (higher is better) or <= VALUE (lower is better)",
            )
            ok = False
        value = self.value(cast(Tree[Token], value_tree), kind)
        if isinstance(value, Ref):
            self.error(
                value.span,
                f"a {kind} is a fixed number, not a variable",
                "write the number; lets vary the constraints, budgets and targets judge them",
            )
            return None
        if value is None or not ok:
            return None
        if value.unit is not Unit.calibrated:
            self.error(
                self.tree_span(cast(Tree[Token], value_tree)),
                f"a {kind} is a plain number, without a unit",
                "budgets are in nats, KL or a ratio; concept targets in calibrated units (pole distances)",
            )
            return None
        if kind == "budget":
            if (value.number < 0 and measure != "nll") or (measure == "ppl" and value.number <= 0):
                self.error(
                    self.tree_span(cast(Tree[Token], value_tree)),
                    f"budget {measure} <= {format_number(value.number)} can never be met",
                    "KL is never negative and a perplexity ratio is positive",
                )
                return None
            return Budget(
                cast(Literal["nll", "kl", "ppl"], measure), value.number, span=span, measure_span=measure_span
            )
        return Target(measure, cast(Literal[">=", "<="], cmp), value.number, span=span, measure_span=measure_span)

    def let(self, tree: Tree[Token], span: Span) -> Let:
        if str(tree.data) == "let_range":
            return self.let_range(tree, span)
        name_tok, values_tree = cast(Token, _kids(tree)[0]), cast(Tree[Token], _kids(tree)[1])
        values = self.let_values(values_tree)
        return Let(
            str(name_tok),
            tuple(v for v, _ in values),
            span=span,
            name_span=self.tok_span(name_tok),
            value_spans=tuple(s for _, s in values),
        )

    def let_range(self, tree: Tree[Token], span: Span) -> Let:
        """``let NAME = lo .. hi``: a continuous range, ends inclusive, both in one unit, ``lo < hi``."""
        name_tok, span_tree = _kids(tree)
        ends = self.let_span(cast(Tree[Token], span_tree))
        lo_tree, hi_tree = _kids(cast(Tree[Token], span_tree))
        return Let(
            str(name_tok),
            (),
            ends,
            span=span,
            name_span=self.tok_span(name_tok),
            value_spans=(self.tree_span(lo_tree), self.tree_span(hi_tree)),
        )

    def let_span(self, tree: Tree[Token]) -> tuple[Value, Value] | None:
        """The two ends of a continuous let (``0 .. 3``), checked: numbers of one unit, the first below
        the second."""
        span = self.tree_span(tree)
        lo_tree, hi_tree = cast(list[Tree[Token]], _kids(tree))
        lo, hi = self.value(lo_tree, "let"), self.value(hi_tree, "let")
        if not isinstance(lo, Value) or not isinstance(hi, Value):
            return None
        if lo.unit != hi.unit:
            self.error(
                span,
                f"the ends of a range differ in unit: {format_value(lo)} and {format_value(hi)}",
                "write both ends in one unit: let floor = 0 .. 3, or 1 raw .. 4 raw",
            )
            return None
        if not lo.number < hi.number:
            self.error(
                span,
                f"empty range: {format_value(lo)} is not below {format_value(hi)}",
                f"write the smaller end first: {format_value(hi)} .. {format_value(lo)}"
                if lo.number > hi.number
                else "a range needs two different ends; for one value, write the value itself",
            )
            return None
        return (lo, hi)

    def let_values(self, tree: Tree[Token]) -> list[tuple[Value, Span]]:
        """The alternatives of a ``let`` (``0.1 | 12.5 raw | p25``), each with its span.

        A bad alternative is reported and left out, so the let still defines its name."""
        out: list[tuple[Value, Span]] = []
        for item in cast(list[Tree[Token]], _kids(tree)):
            v = self.value(item, "let")
            if isinstance(v, Value):
                out.append((v, self.tree_span(item)))
        return out

    def _check_concept_path(self, source: str, path: str, span: Span) -> None:
        problem = concept_path_problem(source, path)
        if problem is not None:
            self.error(span, *problem)

    def op(self, kind: str, tree: Tree[Token], span: Span) -> Op | None:
        kids = _kids(tree)
        name_tok = cast(Token, kids.pop(0))
        fields: dict[str, Any] = {
            "concept": str(name_tok),
            "span": span,
            "concept_span": self.tok_span(name_tok),
        }
        if kind == "clamp":
            fields.update(self.bound(cast(Tree[Token], kids.pop(0))))
        elif kind == "pin":
            fields["value"] = self.value(cast(Tree[Token], kids.pop(0)), "pin")
        elif kind == "steer":
            fields["by"] = self.value(cast(Tree[Token], kids.pop(0)), "steer")
        elif kind == "scale":
            factor = self.value(cast(Tree[Token], kids.pop(0)), "scale")
            fields["by"] = factor.number if isinstance(factor, Value) else factor
        seen: dict[str, Tree[Token]] = {}
        for clause in cast(list[Tree[Token]], kids):
            key = _CLAUSE_KEYS[str(clause.data)]
            if key in seen:
                self.error(
                    self.tree_span(clause),
                    f"a second `{key}` clause in one statement",
                    f"merge it with the first one at column {self.tree_span(seen[key]).col}",
                )
                continue
            seen[key] = clause
            if key == "at":
                fields["where"] = self.where(clause)
            elif key == "in":
                fields["site"] = self.site(cast(Token, _kids(clause)[0]))
            elif key == "on":
                fields["tokens"] = self.tokens(cast(Tree[Token], _kids(clause)[0]))
            else:
                fields["gate"] = self.gate(cast(Tree[Token], _kids(clause)[0]))
        if "where" not in fields:
            self.error(
                span,
                f"`{kind}` needs a layer selection",
                f"add `at layers A-B`, `at layer N` or `at depth 40%-60%`: {kind} {name_tok} … at layers 10-14",
            )
            return None
        if any(v is None for v in fields.values()):
            return None  # a part was invalid and has been reported
        return OP_CLASSES[kind](**fields)

    def bound(self, tree: Tree[Token]) -> dict[str, Value | Ref | None]:
        kind = str(tree.data)
        if kind == "between":
            lo_t, hi_t = cast(list[Tree[Token]], _kids(tree))
            lo, hi = self.value(lo_t, "clamp"), self.value(hi_t, "clamp")
            if isinstance(lo, Value) and isinstance(hi, Value) and lo.unit == hi.unit and lo.number > hi.number:
                self.error(
                    self.tree_span(tree),
                    f"empty interval: {format_value(lo)} is above {format_value(hi)}",
                    f"write the smaller bound first: in [{format_value(hi)}, {format_value(lo)}]",
                )
                return {"min": None, "max": None}
            return {"min": lo, "max": hi}
        v = self.value(cast(Tree[Token], _kids(tree)[1]), "clamp")
        return {"min": v} if kind == "at_least" else {"max": v}

    def value(self, tree: Tree[Token], context: str) -> Value | Ref | None:
        """A value, or a ``$name`` placeholder (whose units are checked against its ``let`` later)."""
        toks = cast(list[Token], _kids(tree))
        span = self.tree_span(tree)
        if str(tree.data) == "ref":
            if context == "let":
                self.error(span, *LET_OF_REF)
                return None
            return Ref(str(toks[0])[1:], span=span)
        if str(tree.data) in ("word", "percentile"):
            word = str(toks[0])
            m = _PERCENTILE.fullmatch(word)
            if m is None:
                self.error(
                    span,
                    f"expected a number, got '{clip(word)}'",
                    "values are numbers with an optional unit: 0.3, 12.5 raw, p25, 1.5 sd",
                )
                return None
            number = float(m.group(1))
            if not 0 <= number <= 100:
                self.error(span, f"percentile {word} is outside p0..p100", None)
                return None
            value = Value(number, Unit.percentile)
        else:
            number = float(str(toks[0]))
            problem = number_problem(number, str(toks[0]))
            if problem is not None:
                self.error(span, *problem)
                return None
            unit = Unit.calibrated
            if len(toks) > 1:
                word = str(toks[1])
                if word not in UNITS:
                    self.error(
                        self.tok_span(toks[1]),
                        f"unknown unit '{clip(word)}'",
                        did_you_mean(word, UNITS) or "units: none (calibrated), raw, sd, vec, or a percentile like p25",
                    )
                    return None
                unit = Unit(word)
            value = Value(number, unit)
        problem = unit_problem(value, context)
        if problem is not None:
            self.error(span, *problem)
            return None
        return value

    def where(self, clause: Tree[Token]) -> Where | None:
        if str(clause.data) == "depth":
            return self.percent_range(cast(Tree[Token], _kids(clause)[0]))
        return self.layer_list(cast(Tree[Token], _kids(clause)[-1]))

    def layer_list(self, tree: Tree[Token]) -> Layers | None:
        items: list[LayerRange] = []
        ok = True
        for item in cast(list[Tree[Token]], _kids(tree)):
            toks = cast(list[Token], _kids(item))
            a, b = self.int(toks[0], "layer"), self.int(toks[-1], "layer")
            if a is None or b is None:
                ok = False
                continue
            if (a >= 0) == (b >= 0) and a > b:
                self.error(self.tree_span(item), f"reversed layer range {a}-{b}", f"write it low to high: {b}-{a}")
                ok = False
                continue
            items.append(LayerRange(a, b))
        return Layers(canonical_layers(items)) if ok else None

    def percent_range(self, tree: Tree[Token]) -> Depth | None:
        toks = cast(list[Token], _kids(tree))
        a = float(str(toks[0]).rstrip("%"))
        b = float(str(toks[-1]).rstrip("%"))
        span = self.tree_span(tree)
        if a > 100 or b > 100:
            self.error(span, "depth is a percentage of the model's layers, 0% to 100%", None)
            return None
        if a > b:
            self.error(
                span,
                f"reversed depth range {format_number(a)}%-{format_number(b)}%",
                f"write it low to high: {format_number(b)}%-{format_number(a)}%",
            )
            return None
        return Depth(a, b)

    def site(self, tok: Token) -> str:
        site = str(tok)
        if site not in SITES:
            self.error(
                self.tok_span(tok),
                f"unknown site '{clip(site)}'",
                did_you_mean(site, SITES) or "sites: resid (default), attn, mlp",
            )
            return "resid"
        return site

    def tokens(self, tree: Tree[Token]) -> Tokens | None:
        toks = cast(list[Token], _kids(tree))
        kind = str(toks[0])
        span = self.tree_span(tree)
        if kind not in TOKEN_KINDS:
            self.error(
                self.tok_span(toks[0]),
                f"unknown token selection '{clip(kind)}'",
                did_you_mean(kind, TOKEN_KINDS) or "on all | prompt | generated | last [N] | first N",
            )
            return None
        count = self.int(toks[1], "token count") if len(toks) > 1 else None
        if len(toks) > 1 and count is None:
            return None
        if kind in ("all", "prompt", "generated") and count is not None:
            self.error(span, f"`on {kind}` takes no count", "a count goes with `last` or `first`: on last 3")
            return None
        if kind == "first" and count is None:
            self.error(span, "`on first` needs a count", "on first 2")
            return None
        if kind == "last" and count is None:
            count = 1
        if count is not None and count < 1:
            self.error(span, f"a token count must be at least 1, not {count}", None)
            return None
        return Tokens(cast(Literal["all", "prompt", "generated", "last", "first"], kind), count)

    def gate(self, tree: Tree[Token]) -> Gate | None:
        toks = _kids(tree)
        name_tok, cmp_tok, value_tree = cast(Token, toks[0]), cast(Token, toks[1]), cast(Tree[Token], toks[2])
        value = self.value(value_tree, "gate")
        if value is None:
            return None
        layer: int | None = None
        if len(toks) > 3:
            layers = self.layer_list(cast(Tree[Token], toks[-1]))
            if layers is None:
                return None
            items = layers.items
            if len(items) != 1 or items[0].start != items[0].stop:
                self.error(
                    self.tree_span(cast(Tree[Token], toks[-1])),
                    f"a gate reads one layer, not {format_layers(layers)}",
                    f"a gate reads a single layer: … when {name_tok} {cmp_tok} {format_value(value)} "
                    f"at layer {items[0].start}",
                )
                return None
            layer = items[0].start
        cmp = _CMP_ASCII.get(str(cmp_tok), str(cmp_tok))
        return Gate(
            str(name_tok),
            cast(Literal[">=", "<=", ">", "<"], cmp),
            value,
            layer,
            span=self.tree_span(tree),
        )


LET_OF_REF = ("a `let` value is a number, not a variable", "write the values out: let floor = 0.1 | 0.3 | 0.5")
STEER_PERCENTILE = ("a percentile is a position, not a displacement", "steer by calibrated units (2.0), `raw` or `sd`")
SCALE_UNIT = ("`scale` takes a plain factor, without a unit", "scale sentiment by 0.5")


FLOAT32_MAX = 3.4028234663852886e38  # every projection is computed in float32


def number_problem(number: float, text: str) -> tuple[str, str] | None:
    """Why a number written in a spec can never be used, whatever the model: not finite, or beyond float32's
    range, in which every projection is computed (``text`` is the number as written)."""
    if not math.isfinite(number):
        return f"number {clip(text, 30)} is not finite", "use a finite number"
    if abs(number) > FLOAT32_MAX:
        return (
            f"number {clip(text, 30)} is beyond float32's range (±3.4e38), in which every projection is computed",
            "a bare number is in pole distances (calibrated units); effects beyond 1,000 pole distances are refused",
        )
    return None


def unit_problem(value: Value, context: str) -> tuple[str, str] | None:
    """Why ``value`` makes no sense in ``context`` (``steer``/``scale``; others take any unit), if it doesn't."""
    if context == "steer" and value.unit is Unit.percentile:
        return STEER_PERCENTILE
    if context == "scale" and value.unit is not Unit.calibrated:
        return SCALE_UNIT
    return None


def _unescape(m: re.Match[str]) -> str:
    esc = m.group(1)
    if len(esc) == 5:
        return chr(int(esc[1:], 16))
    return {"n": "\n", "t": "\t"}.get(esc, esc)


def concept_path_problem(source: str, path: str) -> tuple[str, str | None] | None:
    """What is wrong with a concept path for its source (by suffix), if anything: (message, hint)."""
    lower = path.lower()
    suffix = "." + lower.rsplit(".", 1)[1] if "." in lower.rsplit("/", 1)[-1] else ""
    if not path.strip():
        return None
    if suffix in PICKLE_SUFFIXES:
        return (
            f"refused: '{suffix}' files are pickles, and loading one can run code",
            "convert the direction to .safetensors (or a single raw vector to .npy)",
        )
    if source == "file" and suffix not in ARTIFACT_SUFFIXES:
        return (
            f"a concept file must be .safetensors or .npy, not '{clip(suffix or path)}'",
            "build one with `cdsl concept build`",
        )
    if source == "pairs" and suffix not in PAIR_SUFFIXES:
        return f"a pairs file must be .yaml, .yml or .jsonl, not '{clip(suffix or path)}'", None
    wanted = SOURCE_SUFFIXES.get(source)
    if wanted is not None and suffix != wanted:
        return (
            f"a `from {source}` file must end in {wanted}, not '{clip(suffix or path)}'",
            "from gguf: a llama.cpp control vector (.gguf); from svec: an activation-steering vector (.svec)",
        )
    return None


METHOD_ON_FILE = ("`method` applies to `from pairs` only", "a concept file already holds its direction; drop `method`")
FEATURE_ON_OTHER = ("`feature` applies to `from sae` only", 'an SAE feature: concept NAME from sae "folder" feature 12')
FEATURE_MISSING = (
    "`from sae` needs a feature index",
    'name the decoder row to use: concept NAME from sae "folder" feature 12',
)


def calibration_problem(source: str, path: str) -> tuple[str, str | None] | None:
    """What is wrong with ``calibrated on PATH`` for a concept from ``source``, if anything."""
    if source == "pairs":
        return ("a concept from pairs is calibrated on its own pairs", "drop `calibrated on`")
    if not path.strip():
        return None
    suffix = Path(path).suffix.lower()
    if suffix not in PAIR_SUFFIXES:
        return (
            f"a calibration set is a pairs file (.yaml, .yml or .jsonl), not '{clip(suffix or path)}'",
            'calibrated on "pairs.yaml" (the format of docs/concepts.md)',
        )
    return None


def canonical_layers(items: list[LayerRange]) -> tuple[LayerRange, ...]:
    """Union of ranges, sorted and merged; non-negative and negative indices kept apart, and
    ranges that cross from one to the other (``0..-1``) kept as written."""
    out: list[LayerRange] = []
    for sign_items in (
        sorted((r for r in items if r.start >= 0 and r.stop >= 0), key=lambda r: r.start),
        sorted((r for r in items if r.start < 0 and r.stop < 0), key=lambda r: r.start),
    ):
        merged: list[LayerRange] = []
        for r in sign_items:
            if merged and r.start <= merged[-1].stop + 1:
                merged[-1] = LayerRange(merged[-1].start, max(merged[-1].stop, r.stop))
            else:
                merged.append(r)
        out.extend(merged)
    mixed: list[LayerRange] = []
    for r in items:
        if (r.start >= 0) != (r.stop >= 0) and r not in mixed:
            mixed.append(r)
    return tuple(out) + tuple(mixed)


_VALUE_TOKENS = frozenset(
    {"NAME", "INT", "NUMBER", "PERCENT", "PERCENTILE", "STRING", "GE", "LE", "CMP", "RANGE", "REF"}
)


def _kids(tree: Tree[Token]) -> list[Any]:
    """A tree's children without its keyword and punctuation tokens."""
    return [c for c in tree.children if not isinstance(c, Token) or c.type in _VALUE_TOKENS]


def _edge_token(node: Tree[Token] | Token, end: int) -> Token | None:
    """The first (``end=0``) or last (``end=-1``) token under a node."""
    while not isinstance(node, Token):
        if not node.children:
            return None
        node = node.children[end]
    return node


# -- syntax errors ---------------------------------------------------------


def _syntax_diagnostic(err: UnexpectedInput, text: str, builder: _Builder, start: str) -> Diagnostic:
    line = builder.line + (err.line or 1) - 1 if err.line and err.line > 0 else builder.line
    col = (err.column if err.column and err.column > 0 else len(text.split("\n")[0]) + 1) + builder.col0
    label = _label(err) if start == "start" else None
    if label is None and str(getattr(getattr(err, "token", None), "type", "")) == "REF":
        wanted = set(getattr(err, "expected", set()) or getattr(err, "accepts", set()))
        if wanted & {"INT", "PERCENT"}:  # a `$name` where a layer, depth or count goes (YAML fragments)
            label = "variable_position"
    if isinstance(err, UnexpectedCharacters):
        pos = err.pos_in_stream or 0
        ch = text[pos] if pos < len(text) else ""
        span = Span(builder.path, line, col, line, col + 1)
        if ch in ('"', "'"):
            return Diagnostic(span, "unterminated string", f"close it with {ch} on the same line")
        hint = _CHAR_HINTS.get(ch)
        if hint is None and label is not None:
            message, hint = MESSAGES[label]
            return Diagnostic(span, message.format(found=f"character {describe_char(ch)}"), hint)
        return Diagnostic(span, f"unexpected character {describe_char(ch)}", hint)
    tok = getattr(err, "token", None)
    at_end = tok is None or tok.type == "$END"
    if at_end:  # point just past the last character of the statement, before any comment
        cut = _comment_start(text)
        col = len(text[:cut].rstrip()) + 1 + builder.col0
    found = "end of line" if at_end else f"'{clip(str(tok), 40)}'"
    width = 1 if at_end else max(1, len(str(tok)))
    span = Span(builder.path, line, col, line, col + width)
    if label is not None:
        message, hint = MESSAGES[label]
        return Diagnostic(span, message.format(found=found), _hint_from_line(label, text, tok) or hint)
    expected = sorted(
        {_describe_terminal(t) for t in getattr(err, "expected", set()) or getattr(err, "accepts", set())}
    )
    exp = ", ".join(expected[:8]) if expected else "something else"
    return Diagnostic(span, f"unexpected {found}; expected {exp}", None)


def _hint_from_line(label: str, text: str, tok: Any) -> str | None:
    """For mistakes with one obvious fix, the user's own statement with that fix applied."""
    pos = getattr(tok, "start_pos", None)
    if tok is None or pos is None or not 0 <= pos < len(text):
        return None
    statement = text[: _comment_start(text)].strip()
    offset = len(text) - len(text.lstrip())
    pos -= offset
    value = str(tok)
    if not 0 <= pos < len(statement) or statement[pos : pos + len(value)] != value:
        return None
    number = _NUMBER.fullmatch(value) is not None
    if label == "clamp_strict" and value in (">", "<"):
        return statement[:pos] + value + "=" + statement[pos + 1 :]
    if label == "clamp_equals" and value == "=" and statement.startswith("clamp "):
        return "to hold a value exactly, use pin: pin " + statement[len("clamp ") :]
    if label == "concept_from" and value in ("pairs", "file"):
        return statement[:pos] + "from " + statement[pos:]
    if label == "by_missing" and number:
        return statement[:pos] + "by " + statement[pos:]
    if label == "pin_equals" and number:
        return statement[:pos] + "= " + statement[pos:]
    if label == "pin_equals" and value in (">=", "<=", "≥", "≤"):
        return statement[:pos] + "=" + statement[pos + len(value) :]
    return None


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)")


@functools.cache
def _example_index() -> tuple[dict[tuple[Any, str], str], dict[Any, str]]:
    """(parser state, token type) → label, and parser state → label, from the example table.

    Built once by parsing every example (what lark's ``match_examples`` does on each call)."""
    exact: dict[tuple[Any, str], str] = {}
    by_state: dict[Any, str] = {}
    for label, examples in EXAMPLES.items():
        for example in examples:
            try:
                _lark().parse(example, start="start")
            except UnexpectedInput as ut:
                exact.setdefault((_state_key(ut), _error_kind(ut)), label)
                by_state.setdefault(_state_key(ut), label)
    return exact, by_state


def _state_key(err: UnexpectedInput) -> Any:
    """A hashable form of the parser state at an error, equal when lark's would compare equal."""
    state = err.state
    if hasattr(state, "position"):  # lark's ParserState compares stack depth and top state
        return (len(state.state_stack), state.position)
    return state


def _error_kind(err: UnexpectedInput) -> str:
    tok = getattr(err, "token", None)
    return "<char>" if isinstance(err, UnexpectedCharacters) else str(getattr(tok, "type", "$END"))


def _label(err: UnexpectedInput) -> str | None:
    """The error-by-example label whose examples fail in the same parser state, if any."""
    exact, by_state = _example_index()
    key = _state_key(err)
    label = exact.get((key, _error_kind(err)))
    return label if label is not None else by_state.get(key)


_TERMINAL_NAMES = {
    "NAME": "a name",
    "INT": "a whole number",
    "NUMBER": "a number",
    "PERCENT": "a percentage",
    "PERCENTILE": "a percentile (p25)",
    "STRING": 'a "quoted string"',
    "GE": "'>='",
    "LE": "'<='",
    "CMP": "a comparison (>=, <=, >, <)",
    "RANGE": "'-'",
    "REF": "a variable ($name)",
    "$END": "end of line",
}


def _describe_terminal(name: str) -> str:
    if name in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[name]
    try:
        pattern = _lark().get_terminal(name).pattern.value
        return f"'{pattern}'"
    except Exception:
        return name.lower()


# -- entry points -----------------------------------------------------------


def _parse_line(builder: _Builder, line_text: str, start: str = "start") -> Tree[Token] | None:
    try:
        return _lark().parse(line_text, start=start)
    except UnexpectedInput as err:
        builder.diags.append(_syntax_diagnostic(err, line_text, builder, start))
        return None


def parse_file_statements(
    text: str, path: str
) -> tuple[Header, list[Statement], list[tuple[int, str]], list[Diagnostic]]:
    """Parse DSL text line by line: header, statements, comments (line, text), diagnostics."""
    header = Header()
    statements: list[Statement] = []
    comments: list[tuple[int, str]] = []
    builder = _Builder(path)
    for lineno, raw in enumerate(text.split("\n"), start=1):
        stripped = raw.strip(" \t")
        if not stripped:
            continue
        if stripped.startswith("#"):
            comments.append((lineno, stripped))
            continue
        builder.line = lineno
        hash_at = _comment_start(raw)
        if hash_at is not None:
            comments.append((lineno, raw[hash_at:].rstrip()))
        tree = _parse_line(builder, raw)
        if tree is None:
            let = _LET_NAME.match(raw)
            if let is not None:  # its uses are not also "undefined"
                header.broken_lets.add(let.group(1))
            continue
        if not tree.children:
            continue
        stmt = builder.statement(cast(Tree[Token], tree.children[0]), header)
        if stmt is not None:
            statements.append(stmt)
    return header, statements, comments, builder.diags


def _comment_start(line: str) -> int | None:
    if "#" not in line:
        return None
    quote: str | None = None
    escaped = False
    for i, ch in enumerate(line):
        if escaped:
            escaped = False
        elif ch == "\\" and quote:
            escaped = True
        elif quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return i
    return None


def parse_fragment(
    text: str, rule: str, *, path: str, line: int, col: int, context: str = "clamp"
) -> tuple[Any, list[Diagnostic]]:
    """Parse a fragment (a YAML scalar) with one of the grammar's fragment rules.

    ``line``/``col`` is where the fragment's first character sits in its file.
    Returns the built value (None when invalid) and the diagnostics.
    """
    builder = _Builder(path, line=line, col0=col - 1)
    tree = _parse_line(builder, text, start=rule)
    if tree is None:
        return None, builder.diags
    build: dict[str, Callable[[Tree[Token]], Any]] = {
        "value": lambda t: builder.value(t, context),
        "layer_list": builder.layer_list,
        "percent_range": builder.percent_range,
        "tokens_sel": builder.tokens,
        "gate_expr": builder.gate,
        "let_values": builder.let_values,
        "let_span": builder.let_span,
    }
    return build[rule](tree), builder.diags


def parse_statement(
    text: str, header: Header, *, path: str, line: int, col: int
) -> tuple[Statement | None, list[Diagnostic]]:
    """Parse one DSL statement written inside another file (a YAML constraint string)."""
    builder = _Builder(path, line=line, col0=col - 1)
    tree = _parse_line(builder, text)
    if tree is None:
        return None, builder.diags
    if not tree.children:
        builder.error(
            Span(path, line, col), "empty statement", 'write a DSL line, e.g. "ablate refusal at layers 8-20"'
        )
        return None, builder.diags
    return builder.statement(cast(Tree[Token], tree.children[0]), header), builder.diags


def is_yaml_path(path: str | os.PathLike[str]) -> bool:
    """True for ``.yaml``/``.yml`` spec files."""
    return Path(path).suffix.lower() in (".yaml", ".yml")
