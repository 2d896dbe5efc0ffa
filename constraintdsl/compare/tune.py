"""``cdsl tune``: search a spec's continuous lets for the best variant its budgets and targets allow.

The goal (:func:`tune`'s ``goal``):

- ``"target"`` (the default when the spec has a target): the best value of its first target (higher for ``>=``,
  lower for ``<=``) among points within every budget (and any further targets);
- ``"tax"`` (least tax): the lowest value of the first budget's measure (KL without a budget) among points that
  reach every target;
- ``"strongest"`` (the default without a target): the largest let values within every budget — each let's
  position in its range, averaged over the lets.

A point *meets both* when every budget and target holds there; the answer is the best point that meets both
(or, when none does, the best point found, reported as such, never as a solution).

Every round evaluates a batch of candidate variants as arms of one
:func:`~constraintdsl.compare.comparison.compare` (shared forward passes; the baseline's A/B scores are kept from
the first round). One let: a coarse grid over the whole range first (nothing assumes a monotone response), then
each round places new points evenly inside the interval between the best point's two evaluated neighbours (only
towards the neighbour that breaks a constraint when the best point sits at such a frontier), so the frontier or an
interior optimum is bracketed ever more tightly, until the bracket is narrower than the tolerance. At a frontier
the new points sit within ± the tolerance of where the measured margins put the crossing (a quadratic through the
bracket's ends and the nearest other point), as long as that halves the bracket each round; else they are spread
evenly again.
Several lets: a coarse grid (3 points per let), then a pattern search: each round tries a step up and down along
every let from the best point, and halves the steps when none is better.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from constraintdsl.errors import Diagnostic, SpecError, UserError
from constraintdsl.lang.canonical import format_check, format_number
from constraintdsl.lang.nodes import Budget, Let, Target, Value

from .checks import CheckResult, evaluate, measured_value

if TYPE_CHECKING:
    from constraintdsl.lang.spec import Spec

    from .comparison import Inputs, Row

__all__ = ["PLOT_MARK", "Point", "TuneResult", "check_tunable", "frontier_png", "tune"]

Goal = Literal["target", "tax", "strongest"]
MAX_ROUNDS = 12
MAX_LETS = 4


@dataclass(frozen=True)
class Point:
    """One evaluated variant: its let values (numbers in each let's unit), what was measured, the checks."""

    values: tuple[tuple[str, float], ...]
    round: int
    objective: float | None  # the goal's value (higher is better after the goal's sign); None: not measured
    meets: bool  # every budget and target holds
    feasible: bool  # the goal's constraints hold (budgets, or targets for least tax)
    violation: float  # how far the goal's constraints are broken (0 when feasible)
    tax: dict[str, float] = field(default_factory=dict)
    checks: tuple[CheckResult, ...] = ()
    row: dict[str, Any] = field(default_factory=dict, repr=False)
    # the goal's tightest constraint's signed margin, relative to its limit: > 0 inside, < 0 broken
    slack: float = math.inf

    def name(self) -> str:
        """``floor=0.75,cap=2``."""
        return ",".join(f"{n}={format_number(v)}" for n, v in self.values)

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "values": dict(self.values),
            "round": self.round,
            "objective": self.objective,
            "meets": self.meets,
            "feasible": self.feasible,
            "tax": self.tax,
            "checks": [c.to_dict() for c in self.checks],
        }


@dataclass(frozen=True)
class TuneResult:
    """A finished search: every point in the order evaluated, the best one, and its concrete spec."""

    goal: Goal
    objective: str  # what was optimized, in words
    points: tuple[Point, ...]
    best: Point | None
    found: bool  # ``best`` meets every budget and target
    spec: Spec | None  # the chosen concrete spec (``best``'s values bound), when found
    rounds: int
    forward_passes: int
    tolerance: dict[str, float]
    message: str
    sequences: int = 0  # forward work: input sequences times the arms each went through, over every round

    def to_dict(self) -> dict[str, Any]:
        """Plain data (``--json``)."""
        return {
            "goal": self.goal,
            "objective": self.objective,
            "found": self.found,
            "best": self.best.to_dict() if self.best is not None else None,
            "spec": self.spec.to_dsl() if self.spec is not None else None,
            "rounds": self.rounds,
            "forward_passes": self.forward_passes,
            "sequences": self.sequences,
            "tolerance": self.tolerance,
            "message": self.message,
            "points": [p.to_dict() for p in self.points],
        }


def _goal(spec: Spec, goal: str | None) -> Goal:
    targets = [c for c in spec.checks if isinstance(c, Target)]
    budgets = [c for c in spec.checks if isinstance(c, Budget)]
    if goal is None:
        return "target" if targets else "strongest"
    if goal not in ("target", "tax", "strongest"):
        raise UserError("--goal", f"unknown goal '{goal}'", "choose target, tax or strongest")
    if goal == "target" and not targets:
        raise UserError("--goal", "the spec has no `target` to aim at", "add one, e.g. target ab >= 0.1")
    if goal == "strongest" and not budgets:
        raise UserError("--goal", "the strongest variant needs a `budget` to stay within", "add budget kl <= 0.05")
    return goal  # type: ignore[return-value]


def _describe(spec: Spec, goal: Goal) -> str:
    if goal == "target":
        t = next(c for c in spec.checks if isinstance(c, Target))
        return f"{'highest' if t.cmp == '>=' else 'lowest'} {t.measure} (`{format_check(t)}`) within every budget"
    if goal == "tax":
        b = next((c for c in spec.checks if isinstance(c, Budget)), None)
        return f"least {b.measure if b else 'kl'} reaching every target"
    return "largest let values within every budget"


def _check_spec(spec: Spec) -> tuple[Let, ...]:
    from constraintdsl.lang.loading import spec_sources
    from constraintdsl.lang.variants import continuous

    lets = continuous(spec)
    listed = [let for let in spec.lets if let.range is None]
    problems: list[Diagnostic] = []
    where = lets[0].span if lets else spec.lets[0].span if spec.lets else None
    where = where or (spec.constraints[0].span if spec.constraints else None)
    if where is None:
        raise UserError(spec.path, "nothing to tune: the spec has no constraints", None)
    if not lets:
        problems.append(
            Diagnostic(
                where, "nothing to tune: the spec has no continuous let", "make a value a range: let floor = 0 .. 3"
            )
        )
    for let in listed:
        problems.append(
            Diagnostic(
                let.span,
                f"let '{let.name}' lists values; tune searches ranges only",
                f"make it a range (let {let.name} = lo .. hi), or fix one value in the spec",
            )
        )
    if len(lets) > MAX_LETS:
        problems.append(
            Diagnostic(lets[MAX_LETS].span, f"tune searches at most {MAX_LETS} lets at once", "fix the others' values")
        )
    if not spec.checks:
        problems.append(
            Diagnostic(
                where,
                "tune needs a `budget` or a `target` to judge variants by",
                "add one: budget kl <= 0.05, target ab >= 0.1",
            )
        )
    if problems:
        raise SpecError(problems, spec_sources(spec))
    return lets


def check_tunable(spec: Spec, goal: str | None = None) -> None:
    """Everything :func:`tune` checks of the spec and the goal, without the model: call it before loading one."""
    _check_spec(spec)
    _goal(spec, goal)


def _round_value(x: float, tol: float) -> float:
    """``x`` rounded to two digits finer than the tolerance, so chosen values read cleanly."""
    digits = max(0, 2 - math.floor(math.log10(tol))) if tol > 0 else 12
    return round(x, digits)


def tune(
    model: Any,
    spec: Spec,
    inputs: Inputs,
    *,
    goal: str | None = None,
    tolerance: float | Mapping[str, float] | None = None,
    per_round: int = 4,
    max_rounds: int = MAX_ROUNDS,
    remote: bool | str = False,
    on_round: Callable[[int, Sequence[Point]], None] | None = None,
    progress: Any = None,
    concepts: Mapping[str, Any] | None = None,
    request_tokens: int | None = None,
) -> TuneResult:
    """Search ``spec``'s continuous lets for the best variant (see the module docstring).

    ``tolerance``: the bracket width (in each let's unit) at which the search stops; a number for every let
    or a mapping by name (default: 1/100 of each range).  ``per_round``: new points a round evaluates for one
    let (at least 2; the first round evaluates ``per_round + 1`` evenly spaced points over the whole range).
    ``on_round(round, points)`` is called after each round with that round's points.  ``remote``: each round
    is one NDIF request while within ``request_tokens`` (see :func:`~constraintdsl.compare.comparison.compare`).
    Raises
    :class:`SpecError` (located) for a spec tune cannot search and :class:`UserError` for a bad option.
    """
    from constraintdsl.lang.variants import bind

    from .comparison import Baseline, compare

    lets = _check_spec(spec)
    chosen_goal = _goal(spec, goal)
    if per_round < 2:
        raise UserError("--per-round", f"{per_round} point(s) per round cannot bracket anything", "use at least 2")
    ranges: dict[str, tuple[float, float]] = {}
    units: dict[str, Value] = {}
    for let in lets:
        assert let.range is not None
        ranges[let.name] = (let.range[0].number, let.range[1].number)
        units[let.name] = let.range[0]
    tol: dict[str, float] = {}
    for name, (lo, hi) in ranges.items():
        t = tolerance.get(name) if isinstance(tolerance, Mapping) else tolerance
        tol[name] = float(t) if t is not None else (hi - lo) / 100
        if not tol[name] > 0:
            raise UserError("--tolerance", f"tolerance {t} is not positive", "give a step in the let's unit, e.g. 0.01")
    names = list(ranges)
    points: list[Point] = []
    seen: dict[tuple[float, ...], Point] = {}
    passes = sequences = 0
    kept = Baseline()  # the baseline's A/B scores: computed once, in the first round
    budgets = [c for c in spec.checks if isinstance(c, Budget)]
    targets = [c for c in spec.checks if isinstance(c, Target)]

    def objective(row: Row, values: Sequence[float]) -> float | None:
        if chosen_goal == "target":
            value, _ = measured_value(targets[0], row)
            return None if value is None else (value if targets[0].cmp == ">=" else -value)
        if chosen_goal == "tax":
            measure = budgets[0] if budgets else Budget("kl", math.inf)
            value, _ = measured_value(measure, row)
            return None if value is None else -value
        return sum(
            (v - ranges[n][0]) / (ranges[n][1] - ranges[n][0]) for n, v in zip(names, values, strict=True)
        ) / len(names)

    def constraint_checks(results: Sequence[CheckResult]) -> list[tuple[Budget | Target, CheckResult]]:
        pairs = list(zip(spec.checks, results, strict=True))
        if chosen_goal == "tax":
            return [(c, r) for c, r in pairs if isinstance(c, Target)]
        if chosen_goal == "target":
            return [(c, r) for c, r in pairs if isinstance(c, Budget) or c is not targets[0]]
        return [(c, r) for c, r in pairs if isinstance(c, Budget)]

    def run_round(candidates: list[tuple[float, ...]], number: int) -> list[Point]:
        nonlocal passes, sequences
        fresh = []
        for xs in candidates:
            xs = tuple(
                min(max(_round_value(x, tol[n]), ranges[n][0]), ranges[n][1]) for n, x in zip(names, xs, strict=True)
            )
            if xs not in seen and xs not in fresh:
                fresh.append(xs)
        if not fresh:
            return []
        concrete = [bind(spec, {n: Value(x, units[n].unit) for n, x in zip(names, xs, strict=True)}) for xs in fresh]
        comparison = compare(
            model,
            concrete,
            inputs,
            marginal=False,
            remote=remote,
            progress=progress,
            concepts=concepts,
            baseline=kept,
            request_tokens=request_tokens,
        )
        passes += sum(comparison.passes.values())
        sequences += sum(comparison.sequences.values())
        out = []
        for xs, row in zip(fresh, comparison.rows[1:], strict=True):
            results = evaluate(spec.checks, row)
            cons = constraint_checks(results)
            violation = sum(_excess(c, r) for c, r in cons if not r.passed)
            point = Point(
                values=tuple(zip(names, xs, strict=True)),
                round=number,
                objective=objective(row, xs),
                meets=all(r.passed for r in results),
                feasible=all(r.passed for _, r in cons),
                violation=violation,
                tax=dict(row.tax),
                checks=tuple(results),
                row=row.to_dict(),
                slack=min((_slack(c, r) for c, r in cons), default=math.inf),
            )
            seen[xs] = point
            out.append(point)
        points.extend(out)
        if on_round is not None:
            on_round(number, out)
        return out

    def best() -> Point | None:
        return max(points, key=_score) if points else None

    number = 0
    guided_width: float | None = None  # the bracket's width when the last round was placed by the margins
    if len(names) == 1:
        (name,) = names
        lo, hi = ranges[name]
        run_round([(lo + (hi - lo) * i / per_round,) for i in range(per_round + 1)], number)
        while number + 1 < max_rounds:
            top = best()
            assert top is not None
            xs = sorted(k[0] for k in seen)
            here = top.values[0][1]
            at = xs.index(here)
            left, right = xs[max(at - 1, 0)], xs[min(at + 1, len(xs) - 1)]
            # at a frontier (one neighbour breaks the goal's constraints, the other side holds) the answer lies
            # between the best point and that neighbour: refine there only, as bisection would
            broken = [x for x in (left, right) if x != here and not seen[(x,)].feasible]
            frontier = top.feasible and len(broken) == 1
            if frontier:
                left, right = min(here, broken[0]), max(here, broken[0])
            if max(right - here, here - left) <= tol[name]:
                break
            number += 1
            inner = [left + (right - left) * i / (per_round + 1) for i in range(1, per_round + 1)]
            # at a frontier, place the round's points around where the measured margins say the crossing is
            # (within ± the tolerance of it), while that keeps halving the bracket; else spread them evenly
            width = right - left
            if frontier and (guided_width is None or width <= guided_width / 2):
                guess = _crossing([(x, seen[(x,)].slack) for x in xs], here, broken[0])
                near = (
                    [guess + tol[name] * (2 * i / (per_round - 1) - 1) for i in range(per_round)]
                    if guess is not None
                    else []
                )
                near = [x for x in near if left < x < right]
                if near:
                    inner = near
            guided_width = width if frontier else None
            if not run_round([(x,) for x in inner], number):
                break
    else:
        grid = [[lo, (lo + hi) / 2, hi] for lo, hi in ranges.values()]
        run_round(list(itertools.product(*grid)), number)
        step = {n: (hi - lo) / 4 for n, (lo, hi) in ranges.items()}
        while number + 1 < max_rounds and any(step[n] > tol[n] for n in names):
            top = best()
            assert top is not None
            centre = [v for _, v in top.values]
            moves: list[tuple[float, ...]] = []
            for i, n in enumerate(names):
                for sign in (-1, 1):
                    moved = list(centre)
                    moved[i] = centre[i] + sign * step[n]
                    moves.append(tuple(moved))
            number += 1
            run_round(moves, number)
            if best() is top:
                step = {n: s / 2 for n, s in step.items()}
    top = best()
    found = top is not None and top.meets
    chosen = None
    if found and top is not None:
        chosen = bind(spec, {n: Value(x, units[n].unit) for n, x in top.values})
    return TuneResult(
        goal=chosen_goal,
        objective=_describe(spec, chosen_goal),
        points=tuple(points),
        best=top,
        found=found,
        spec=chosen,
        rounds=number + 1,
        forward_passes=passes,
        sequences=sequences,
        tolerance=tol,
        message=_message(spec, chosen_goal, top, found),
    )


def _excess(check: Budget | Target, result: CheckResult) -> float:
    """How far a failed check is from its limit, relative to the limit's size (∞ when not measured)."""
    if result.measured is None or not math.isfinite(result.measured):
        return math.inf
    limit = float(check.limit if isinstance(check, Budget) else check.value)
    return abs(result.measured - limit) / max(abs(limit), 1e-9)


def _slack(check: Budget | Target, result: CheckResult) -> float:
    """A check's signed margin relative to its limit: positive when it holds, negative when broken (−∞ when not
    measured)."""
    if result.measured is None or not math.isfinite(result.measured):
        return -math.inf
    limit = float(check.limit if isinstance(check, Budget) else check.value)
    upper = isinstance(check, Budget) or check.cmp == "<="
    return (limit - result.measured if upper else result.measured - limit) / max(abs(limit), 1e-9)


def _crossing(points: Sequence[tuple[float, float]], inside: float, outside: float) -> float | None:
    """Where the margin crosses zero between ``inside`` (margin ≥ 0) and ``outside`` (margin < 0), estimated
    from the measured ``(value, margin)`` points: a quadratic through the two ends and the evaluated point
    nearest to them, else a straight line between the ends; None when the margins are not finite."""
    known = {x: m for x, m in points if math.isfinite(m)}
    if inside not in known or outside not in known:
        return None
    lo, hi = min(inside, outside), max(inside, outside)
    others = sorted((x for x in known if x not in (inside, outside)), key=lambda x: min(abs(x - lo), abs(x - hi)))
    if others:
        xs = [inside, outside, others[0]]
        a, b, c = np.polyfit(xs, [known[x] for x in xs], 2)
        roots = [float(r.real) for r in np.roots([a, b, c]) if abs(r.imag) < 1e-12 and lo < r.real < hi]
        if len(roots) == 1:
            return roots[0]
    m_in, m_out = known[inside], known[outside]
    return inside + (outside - inside) * m_in / (m_in - m_out)


def _score(p: Point) -> tuple[int, int, float]:
    """Points order by: meets everything, then the goal's constraints hold, then the objective (or, when the
    constraints fail, the smaller violation)."""
    if p.feasible:
        return (int(p.meets), 1, p.objective if p.objective is not None else -math.inf)
    return (0, 0, -p.violation)


def _message(spec: Spec, goal: Goal, top: Point | None, found: bool) -> str:
    if top is None:
        return "no point was evaluated"
    if found:
        return f"best: {top.name()} meets every budget and target"
    failed = [c for c in top.checks if not c.passed]
    why = "; ".join(f"{c.statement}: {c.why}" for c in failed)
    if top.feasible:
        return f"no evaluated point meets every budget and target; the best within the constraints, {top.name()}: {why}"
    return f"no evaluated point meets every budget and target; the closest, {top.name()}: {why}"


PLOT_MARK = "cdsl tune"  # the PNG's Software field; an existing PNG that carries it may be replaced


def _axes(result: TuneResult, spec: Spec) -> tuple[str, Callable[[Point], float], str, Callable[[Point], float]]:
    """The frontier's axes: x the tax the goal watches, y what the goal improves."""
    budgets = [c for c in spec.checks if isinstance(c, Budget)]
    targets = [c for c in spec.checks if isinstance(c, Target)]
    tax = budgets[0].measure if budgets else "kl"
    key = {"nll": "delta_nll", "kl": "kl", "ppl": "ppl_ratio"}[tax]
    x_label = {"nll": "ΔNLL per token (nats)", "kl": "mean KL per token", "ppl": "perplexity ratio"}[tax]

    def x_of(p: Point) -> float:
        return float(p.tax.get(key, math.nan))

    if targets:
        target = targets[0]
        index = list(spec.checks).index(target)

        def y_of(p: Point) -> float:
            value = p.checks[index].measured
            return math.nan if value is None else value

        return f"tax: {x_label}", x_of, f"target: {format_check(target)}", y_of
    names = [n for n, _ in result.points[0].values] if result.points else []
    if len(names) == 1:
        return f"tax: {x_label}", x_of, f"let {names[0]}", lambda p: p.values[0][1]
    return f"tax: {x_label}", x_of, "let strength (mean position in each range)", lambda p: p.objective or math.nan


def frontier_png(result: TuneResult, spec: Spec) -> bytes:
    """The evaluated points on the tax/goal plane, those meeting every budget and target filled, the budget and
    target limits drawn, the chosen point starred: a PNG (rendered in memory)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_label, x_of, y_label, y_of = _axes(result, spec)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ok = [p for p in result.points if p.meets]
    bad = [p for p in result.points if not p.meets]
    if ok:
        ax.plot([x_of(p) for p in ok], [y_of(p) for p in ok], "o", color="tab:blue", label="meets every check")
    if bad:
        ax.plot([x_of(p) for p in bad], [y_of(p) for p in bad], "o", mfc="none", color="tab:red", label="misses one")
    for p in result.points:
        ax.annotate(p.name(), (x_of(p), y_of(p)), textcoords="offset points", xytext=(4, 3), fontsize=6)
    budgets = [c for c in spec.checks if isinstance(c, Budget)]
    if budgets:
        ax.axvline(budgets[0].limit, color="tab:red", ls="--", lw=0.8, label=format_check(budgets[0]))
    targets = [c for c in spec.checks if isinstance(c, Target)]
    if targets:
        ax.axhline(targets[0].value, color="tab:green", ls="--", lw=0.8, label=format_check(targets[0]))
    if result.found and result.best is not None:
        ax.plot([x_of(result.best)], [y_of(result.best)], "*", ms=16, color="gold", mec="k", label="chosen")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(f"cdsl tune — {spec.name or spec.path}: {result.objective}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": PLOT_MARK})
    plt.close(fig)
    return buf.getvalue()
