"""Budgets and targets judged on measured values: what ``cdsl compare`` asserts and ``cdsl tune`` aims at.

A ``budget`` reads the tax of a comparison row (``nll``: ΔNLL per token, ``kl``: mean KL(baseline ‖
constrained) per token, ``ppl``: perplexity ratio), a ``target`` its A/B shift (``ab``) or a concept's readout
shift.  A check passes when its measured value is within its limit (budgets, ``<=``; targets, ``>=`` or
``<=``), limits included.  A value that was not measured (no A/B set, a concept that is not read out) fails,
saying why, so a claim is never passed by default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from constraintdsl.errors import Diagnostic, Span, SpecError, UserError
from constraintdsl.lang.canonical import format_check, format_number
from constraintdsl.lang.nodes import Budget, Check, Target

if TYPE_CHECKING:
    from constraintdsl.lang.spec import Spec

    from .comparison import Comparison, Row

__all__ = [
    "JUNIT_MARK",
    "CheckResult",
    "check_junit_path",
    "evaluate",
    "evaluate_comparison",
    "is_junit_file",
    "junit_xml",
    "measured_value",
    "require_measures",
]

TAX_KEYS = {"nll": "delta_nll", "kl": "kl", "ppl": "ppl_ratio"}
JUNIT_MARK = "cdsl compare"  # the test-suite name; an existing file that carries it may be replaced


@dataclass(frozen=True)
class CheckResult:
    """One budget or target judged on one comparison row (one spec variant)."""

    arm: str
    statement: str
    span: Span
    measured: float | None
    passed: bool
    why: str  # the comparison in words: "measured 0.083, above the limit 0.05"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (``--json``)."""
        return {
            "arm": self.arm,
            "statement": self.statement,
            "where": str(self.span),
            "measured": self.measured,
            "passed": self.passed,
            "why": self.why,
        }

    def diagnostic(self) -> Diagnostic:
        """A failed check as an error located at its statement (for the one renderer)."""
        return Diagnostic(self.span, f"`{self.statement}` fails for {self.arm}: {self.why}", None)


def measured_value(check: Check, row: Row) -> tuple[float | None, str]:
    """The value ``check`` reads from ``row``, or None and why it was not measured."""
    if isinstance(check, Budget):
        value = row.tax.get(TAX_KEYS[check.measure])
        return (float(value), "") if value is not None else (None, "the tax was not measured")
    if check.measure == "ab":
        if row.ab is None:
            return None, "no A/B set was given (--ab FILE)"
        return float(row.ab["shift"]), ""
    effect = row.effect.get(check.measure)
    if effect is None:
        return None, (
            f"concept {check.measure} has no readout: only calibrated concept files the spec constrains are read"
        )
    return float(effect["shift"]), ""


def _judge(check: Check, value: float) -> tuple[bool, str]:
    limit = check.limit if isinstance(check, Budget) else check.value
    upper = isinstance(check, Budget) or check.cmp == "<="
    ok = math.isfinite(value) and (value <= limit if upper else value >= limit)
    shown = f"{value:.4g}"
    if ok:
        return True, f"measured {shown}, within {'<=' if upper else '>='} {format_number(limit)}"
    side = "not finite" if not math.isfinite(value) else ("above" if upper else "below")
    return False, f"measured {shown}, {side} the limit {format_number(limit)}"


def evaluate(checks: Sequence[Check], row: Row) -> list[CheckResult]:
    """Every check judged on one row."""
    out: list[CheckResult] = []
    for check in checks:
        value, missing = measured_value(check, row)
        if value is None:
            out.append(CheckResult(row.label, format_check(check), check.span, None, False, f"not measured: {missing}"))
            continue
        ok, why = _judge(check, value)
        out.append(CheckResult(row.label, format_check(check), check.span, value, ok, why))
    return out


def evaluate_comparison(specs: Sequence[Spec], comparison: Comparison) -> list[CheckResult]:
    """Every spec's checks on each of its variants' rows (rows follow the specs and their variants in order)."""
    from constraintdsl.lang.variants import count

    out: list[CheckResult] = []
    rows = list(comparison.rows[1:])
    at = 0
    for spec in specs:
        n = count(spec)
        for row in rows[at : at + n]:
            out.extend(evaluate(spec.checks, row))
        at += n
    return out


def require_measures(specs: Sequence[Spec], *, ab: bool, flag: str = "--ab") -> None:
    """Before any model work: a target on ``ab`` needs an A/B set; a located error names every such target."""
    from constraintdsl.lang.loading import spec_sources

    missing = [c for s in specs for c in s.checks if isinstance(c, Target) and c.measure == "ab" and not ab]
    if not missing:
        return
    sources: dict[str, str] = {}
    for spec in specs:
        sources.update(spec_sources(spec))
    raise SpecError(
        [
            Diagnostic(c.span, "this target reads the A/B p(match) shift, but no A/B set is given", f"add {flag} FILE")
            for c in missing
        ],
        sources,
    )


def junit_xml(results: Sequence[CheckResult], *, seconds: float = 0.0) -> str:
    """JUnit XML for CI systems: one test case per check and arm, a failure for each that failed."""
    failures = sum(not r.passed for r in results)
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<testsuites name={quoteattr(JUNIT_MARK)} tests="{len(results)}" failures="{failures}">',
        f'  <testsuite name={quoteattr(JUNIT_MARK)} tests="{len(results)}" failures="{failures}" errors="0" '
        f'time="{seconds:.3f}">',
    ]
    for r in results:
        head = (
            f"    <testcase classname={quoteattr(r.span.path)} name={quoteattr(f'{r.arm}: {r.statement}')} "
            f'file={quoteattr(r.span.path)} line="{r.span.line}"'
        )
        if r.passed:
            lines.append(f"{head}>")
            lines.append(f"      <system-out>{_text(r.why)}</system-out>")
            lines.append("    </testcase>")
        else:
            message = f"{r.span}: {r.statement} fails for {r.arm}: {r.why}"
            lines.append(f"{head}>")
            kind = r.statement.split(" ", 1)[0]
            lines.append(f'      <failure message={quoteattr(message)} type="{kind}">{_text(message)}</failure>')
            lines.append("    </testcase>")
    lines += ["  </testsuite>", "</testsuites>"]
    return "\n".join(lines) + "\n"


def _text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def is_junit_file(data: bytes) -> bool:
    """True for a JUnit file this tool wrote (so ``--junit`` may replace it)."""
    head = data[:400].decode("utf-8", "replace")
    return head.startswith("<?xml") and f"<testsuites name={quoteattr(JUNIT_MARK)}" in head


def check_junit_path(path: str) -> None:
    """Before any model work: ``--junit`` can be written, and an existing file there is one we wrote."""
    from pathlib import Path

    from constraintdsl.files import check_output_file

    target = Path(path)
    ours = False
    if target.is_file():
        try:
            with target.open("rb") as f:
                ours = is_junit_file(f.read(400))
        except OSError as exc:
            raise UserError("--junit", f"cannot read {path}: {exc.strerror}", None) from None
    check_output_file(path, "--junit", replaceable=ours)
