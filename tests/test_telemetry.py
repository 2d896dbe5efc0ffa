"""Telemetry against an independent computation: float64 numpy for the actions, scipy's QP for the
joint bounds, and the binding rule applied to the result — never the runtime's own solve.

The binding rule (README, "telemetry"): an action binds on the selected tokens it changes; a bound
statement binds on a token it applies to when that token was outside the statement's bound before
the joint solve (by more than the solver's slack), or when the solve moved the token and left it
on the statement's bound.  So a statement whose violation another statement's move repaired
still counts, and so does one the solution leans on without having been violated.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from constraintdsl.compiler import joint
from constraintdsl.runtime import interventions as rt
from constraintdsl.runtime.interventions import ALL, GENERATED, LAST, PROMPT, SCALE, STEER, apply_site, prepare_group
from tests.qp import reference

H = 24
B, T, PROMPT_LEN = 2, 6, 3
FIELD = {name: i for i, name in enumerate(rt.TELEMETRY_FIELDS)}
SELECTIONS = [(ALL, 0), (PROMPT, 0), (GENERATED, 0), (LAST, 2)]


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def random_site(rng: np.random.Generator) -> dict[str, Any]:
    """A site with 0-2 actions and 2-6 bounded directions (one of them exactly orthogonal to the rest,
    so the site has two groups), one to three statements per direction in either orientation, on
    different tokens; the statements on one direction share a point, so they never contradict."""
    k = int(rng.integers(2, 7))
    base = rng.standard_normal(H)
    dirs = [unit(np.concatenate([[0.0], 0.6 * base[1:] + rng.standard_normal(H - 1)])) for _ in range(k - 1)]
    dirs.append(unit(np.eye(H)[0]))  # orthogonal to every other: its own group
    u = np.stack(dirs)
    bounds: list[dict[str, Any]] = []
    for d in range(k):
        common = rng.normal(0, 1.5)
        for _ in range(int(rng.integers(1, 4))):
            kind = rng.integers(0, 4)
            lo = common - rng.uniform(0, 2) if kind in (0, 1) else -math.inf
            hi = common + rng.uniform(0, 2) if kind in (0, 2) else math.inf
            if kind == 3:
                lo = hi = common
            tokens, count = SELECTIONS[int(rng.integers(0, len(SELECTIONS)))]
            sign = float(rng.choice([1.0, -1.0]))
            bounds.append(
                {"dir": d, "lo": float(np.float32(lo)), "hi": float(np.float32(hi)), "sign": sign}
                | {"tokens": tokens, "count": count, "gate": -1}
            )
    actions = []
    for _ in range(int(rng.integers(0, 3))):
        tokens, count = SELECTIONS[int(rng.integers(0, len(SELECTIONS)))]
        kind = int(rng.choice([STEER, SCALE]))
        amount = float(rng.uniform(-2, 2)) if kind == STEER else float(rng.uniform(0, 2))
        actions.append(
            {"kind": kind, "u": torch.tensor(unit(rng.standard_normal(H))), "amount": amount}
            | {"tokens": tokens, "count": count, "gate": -1}
        )
    entries = rng.permutation(len(actions) + len(bounds)).tolist()
    for op, entry in zip(actions + bounds, entries, strict=True):
        op["entry"] = int(entry)
    dirs_t = torch.tensor(u)
    groups = []
    for comp in joint.components(dirs_t):
        has_lo = [any(math.isfinite(b["lo"]) for b in bounds if b["dir"] == i) for i in comp]
        has_hi = [any(math.isfinite(b["hi"]) for b in bounds if b["dir"] == i) for i in comp]
        groups.append((comp, prepare_group(dirs_t[comp], has_lo, has_hi)))
    assert len(groups) == 2
    return {"actions": actions, "dirs": dirs_t, "bounds": bounds, "groups": groups, "feasible": True}


def selection(op: dict[str, Any], positions: torch.Tensor) -> np.ndarray:
    """Which tokens a statement applies to (token selection is not what is under test here)."""
    mask = rt.token_mask(op["tokens"], op["count"], positions, torch.tensor([PROMPT_LEN] * B), torch.tensor([T] * B))
    return mask.reshape(-1).numpy()


def expected(site: dict[str, Any], h: np.ndarray, positions: torch.Tensor, n_entries: int) -> np.ndarray:
    """The telemetry of one call, computed independently in float64."""
    x = h.reshape(-1, H).astype(np.float64)
    norm0 = np.linalg.norm(x, axis=1)
    rows = np.zeros((n_entries, len(rt.TELEMETRY_FIELDS)))

    def record(entry: int, sel: Any, bind: Any, corr: Any, rel: Any, before: Any, after: Any) -> None:
        r = rows[entry]
        r[FIELD["selected"]] += sel.sum()
        r[FIELD["binding"]] += bind.sum()
        r[FIELD["corr_sum"]] += np.abs(corr)[bind].sum()
        r[FIELD["corr_max"]] = max(r[FIELD["corr_max"]], np.abs(corr)[bind].max(initial=0.0))
        r[FIELD["rel_sum"]] += rel[bind].sum()
        r[FIELD["rel_max"]] = max(r[FIELD["rel_max"]], rel[bind].max(initial=0.0))
        r[FIELD["before_sum"]] += before[sel].sum()
        r[FIELD["after_sum"]] += after[sel].sum()

    for act in site["actions"]:
        u = act["u"].double().numpy()
        sel = selection(act, positions)
        p = x @ u
        step = np.full_like(p, act["amount"]) if act["kind"] == STEER else p * (act["amount"] - 1.0)
        step = np.where(sel, step, 0.0)
        new = x + step[:, None] * u
        record(act["entry"], sel, sel & (step != 0), step, np.abs(step) / norm0, p, new @ u)
        x = new

    u = site["dirs"].double().numpy()
    k = len(u)
    sels = [selection(b, positions) for b in site["bounds"]]
    p = x @ u.T
    solved = x.copy()
    moved = np.zeros(len(x), dtype=bool)
    for t in range(len(x)):
        lo, hi = np.full(k, -np.inf), np.full(k, np.inf)
        for b, sel in zip(site["bounds"], sels, strict=True):
            if sel[t]:
                lo[b["dir"]] = max(lo[b["dir"]], b["lo"])
                hi[b["dir"]] = min(hi[b["dir"]], b["hi"])
        slack = rt.SLACK * (1 + np.abs(p[t]))
        if ((p[t] < lo - slack) | (p[t] > hi + slack)).any():  # the solver's slack: only these move
            solved[t] = reference(x[t], u, lo, hi)
            moved[t] = True
    after_all = solved @ u.T
    rel = np.linalg.norm(solved - x, axis=1) / norm0
    for b, sel in zip(site["bounds"], sels, strict=True):
        before, after = p[:, b["dir"]], after_all[:, b["dir"]]
        slack = rt.SLACK * (1 + np.abs(before))
        violated = (before < b["lo"] - slack) | (before > b["hi"] + slack)
        at = 1e-6 * (1 + np.linalg.norm(solved, axis=1))
        on_bound = (np.abs(after - b["lo"]) <= at) | (np.abs(after - b["hi"]) <= at)
        bind = sel & (violated | (moved & on_bound))
        record(b["entry"], sel, bind, after - before, rel, b["sign"] * before, b["sign"] * after)
    return rows


def check(site: dict[str, Any], hs: list[np.ndarray]) -> torch.Tensor:
    n_entries = len(site["actions"]) + len(site["bounds"])
    positions = torch.arange(T).repeat(B, 1)
    tele = torch.zeros(n_entries, len(rt.TELEMETRY_FIELDS))
    want = np.zeros((n_entries, len(rt.TELEMETRY_FIELDS)))
    for h in hs:
        apply_site(torch.tensor(h), site, positions, torch.tensor([PROMPT_LEN] * B), torch.tensor([T] * B), {}, tele)
        one = expected(site, h, positions, n_entries)
        maxima = [FIELD["corr_max"], FIELD["rel_max"]]
        sums = [i for i in range(len(rt.TELEMETRY_FIELDS)) if i not in maxima]
        want[:, sums] += one[:, sums]
        want[:, maxima] = np.maximum(want[:, maxima], one[:, maxima])
    got = tele.double().numpy()
    counts = [FIELD["selected"], FIELD["binding"]]
    assert np.array_equal(got[:, counts], want[:, counts]), (got[:, counts], want[:, counts])
    assert np.allclose(got, want, rtol=1e-4, atol=1e-4), np.abs(got - want).max(axis=0)
    return tele


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_telemetry_equals_an_independent_float64_computation_over_two_calls(seed: int) -> None:
    rng = np.random.default_rng(seed)
    site = random_site(rng)
    hs = [(rng.standard_normal((B, T, H)) * 1.5).astype(np.float32) for _ in range(2)]
    check(site, hs)


def two_directions(cos: float) -> torch.Tensor:
    a = np.eye(H)[1]
    b = cos * np.eye(H)[1] + math.sqrt(1 - cos * cos) * np.eye(H)[2]
    return torch.tensor(np.stack([a, b]), dtype=torch.float32)


def pair_site(cos: float, a: tuple[float, float], b: tuple[float, float]) -> dict[str, Any]:
    u = two_directions(cos)
    bounds = [
        {"dir": i, "lo": lo, "hi": hi, "sign": 1.0, "tokens": ALL, "count": 0, "gate": -1, "entry": i}
        for i, (lo, hi) in enumerate((a, b))
    ]
    has_lo = [math.isfinite(a[0]), math.isfinite(b[0])]
    has_hi = [math.isfinite(a[1]), math.isfinite(b[1])]
    return {"actions": [], "dirs": u, "bounds": bounds, "groups": [([0, 1], prepare_group(u, has_lo, has_hi))]}


def one_token(site: dict[str, Any], pa: float, pb_free: float) -> torch.Tensor:
    """Telemetry of one token whose projection on a is ``pa`` and on b's own axis is ``pb_free``."""
    h = np.zeros((1, 1, H), dtype=np.float32)
    h[0, 0, 1], h[0, 0, 2] = pa, pb_free
    tele = torch.zeros(2, len(rt.TELEMETRY_FIELDS))
    apply_site(
        torch.tensor(h), site, torch.ones(1, 1, dtype=torch.long), torch.tensor([2]), torch.tensor([2]), {}, tele
    )
    return tele


def test_a_statement_whose_violation_another_statements_move_repairs_still_binds() -> None:
    # a ≥ 0 is broken (−0.1); b ≥ 2 moves the token along b by 2.08, which lifts a to 1.56:
    # the solution does not sit on a's bound, but a was violated, so a binds (with its correction)
    tele = one_token(pair_site(0.8, (0.0, math.inf), (2.0, math.inf)), -0.1, 0.0)
    assert tele[:, FIELD["binding"]].tolist() == [1.0, 1.0]
    assert math.isclose(float(tele[0, FIELD["corr_sum"]]), 0.8 * 2.08, rel_tol=1e-5)
    assert math.isclose(float(tele[0, FIELD["after_sum"]]), -0.1 + 0.8 * 2.08, rel_tol=1e-5)


def test_a_statement_the_solution_leans_on_binds_without_having_been_violated() -> None:
    # a ≤ 0.5 holds before (0.4); b ≥ 2 alone would push a to 1.74, so the solution holds a at 0.5
    tele = one_token(pair_site(0.8, (-math.inf, 0.5), (2.0, math.inf)), 0.4, 0.0)
    assert tele[:, FIELD["binding"]].tolist() == [1.0, 1.0]
    assert math.isclose(float(tele[0, FIELD["after_sum"]]), 0.5, rel_tol=1e-5)


def test_a_statement_moved_within_its_bounds_does_not_bind() -> None:
    tele = one_token(pair_site(0.8, (-math.inf, 10.0), (2.0, math.inf)), 0.4, 0.0)
    assert tele[:, FIELD["binding"]].tolist() == [0.0, 1.0]
    assert tele[0, FIELD["selected"]] == 1 and tele[0, FIELD["corr_sum"]] == 0
    assert math.isclose(float(tele[0, FIELD["after_sum"]]), 0.4 + 0.8 * 1.68, rel_tol=1e-5)


def test_of_two_floors_on_one_direction_only_the_one_the_solution_sits_on_binds_when_neither_was_violated() -> None:
    u = two_directions(0.8)
    floors = [(0.0, math.inf), (0.3, math.inf), (-math.inf, 0.5)]  # two floors on a, then a ceiling on b
    bounds = [
        {"dir": d, "lo": lo, "hi": hi, "sign": 1.0, "tokens": ALL, "count": 0, "gate": -1, "entry": e}
        for e, (d, (lo, hi)) in enumerate(zip([0, 0, 1], floors, strict=True))
    ]
    site = {
        "actions": [],
        "dirs": u,
        "bounds": bounds,
        "groups": [([0, 1], prepare_group(u, [True, False], [False, True]))],
    }
    # a = 1, b = 2: the ceiling on b pulls a down to its floor 0.3 (not to 0, which it never reaches)
    h = np.zeros((1, 1, H), dtype=np.float32)
    h[0, 0, 1], h[0, 0, 2] = 1.0, (2.0 - 0.8) / 0.6
    tele = torch.zeros(3, len(rt.TELEMETRY_FIELDS))
    apply_site(
        torch.tensor(h), site, torch.ones(1, 1, dtype=torch.long), torch.tensor([2]), torch.tensor([2]), {}, tele
    )
    assert tele[:, FIELD["binding"]].tolist() == [0.0, 1.0, 1.0]
    check(site, [np.repeat(np.repeat(h, B, 0), T, 1)])
