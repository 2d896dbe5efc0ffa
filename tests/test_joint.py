"""The joint bound solve for any number of directions, against independent float64 references.

Every instance is first put to the compiler's acceptance test (``compiler.joint``); a set it
accepts must come out of the runtime with every bound met on every token and the solution equal
to scipy's bounded least squares within 1e-5 (relative), and a set it refuses must be one whose
Gram matrix is below the threshold.  Instances: up to 64 directions with pairwise cosines up to
about 0.6, one- and two-sided bounds and pins, several statements on one direction (and on its
opposite), sets tuned to sit just above and just below the acceptance threshold, tokens exactly
on their bounds.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from constraintdsl import SpecError
from constraintdsl.compiler import joint
from constraintdsl.concepts.artifact import ConceptArtifact
from constraintdsl.runtime import interventions as rt
from constraintdsl.runtime.interventions import ALL, GENERATED, LAST, PROMPT, apply_site, prepare_group
from tests.qp import kkt_violation, reference
from tests.test_compiler import H as TINY_H
from tests.test_compiler import artifact, compile_
from tests.tiny import tiny_nnsight

H = 96
TOL = 1e-5
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def directions(rng: np.random.Generator, k: int, cos: float, eig: float | None = None, h: int = H) -> np.ndarray:
    """k unit rows (float32) leaning on a shared direction (pairwise cosines around ``cos``); with
    ``eig``, the last row is rebuilt so the Gram matrix's smallest eigenvalue is about ``eig``."""
    base = rng.standard_normal(h)
    base /= np.linalg.norm(base)
    v = rng.standard_normal((k, h))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    w = np.sqrt(cos * rng.uniform(0.5, 1.0, (k, 1)))
    u = w * base + np.sqrt(1 - w**2) * v
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    if eig is not None and k > 1:
        comb = rng.standard_normal(k - 1) @ u[:-1]
        comb /= np.linalg.norm(comb)
        e = rng.standard_normal(h)
        e -= u[:-1].T @ np.linalg.lstsq(u[:-1].T, e, rcond=None)[0]
        e /= np.linalg.norm(e)
        t = math.sqrt(eig)
        u[-1] = comb * math.sqrt(1 - t * t) + t * e
    u = u.astype(np.float32)
    return (u / np.linalg.norm(u.astype(np.float64), axis=1, keepdims=True)).astype(np.float32)


def bounds(rng: np.random.Generator, k: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """Per direction: two-sided, floor only, ceiling only or a pin, around projections of size ``spread``."""
    lo = rng.uniform(-1.5, 0.5, k) * spread
    hi = lo + rng.uniform(0.0, 2.0, k) * spread
    kind = rng.integers(0, 4, k)
    lo = np.where(kind == 2, -np.inf, lo)
    hi = np.where(kind == 1, np.inf, np.where(kind == 3, lo, hi))
    return lo.astype(np.float32).astype(np.float64), hi.astype(np.float32).astype(np.float64)


def site_of(u: np.ndarray, lo: np.ndarray, hi: np.ndarray, tokens: int = ALL) -> dict[str, Any]:
    """The payload the compiler builds for one statement per direction (groups as resolve makes them)."""
    dirs = torch.tensor(u)
    comps = joint.components(dirs)
    return {
        "actions": [],
        "dirs": dirs,
        "bounds": [
            {"dir": i, "lo": float(lo[i]), "hi": float(hi[i]), "sign": 1.0, "tokens": tokens, "count": 0}
            | {"gate": -1, "entry": i, "label": f"s{i}"}
            for i in range(len(u))
        ],
        "groups": [
            (c, prepare_group(dirs[c], [bool(np.isfinite(lo[i])) for i in c], [bool(np.isfinite(hi[i])) for i in c]))
            for c in comps
        ],
        "feasible": True,
    }


def run_site(site: dict[str, Any], h: np.ndarray, tele: torch.Tensor | None = None) -> np.ndarray:
    n = h.shape[0]
    pos = torch.arange(n)[None] + 1  # every token after the sink (position 0), which no selection includes
    out = apply_site(torch.tensor(h)[None], site, pos, torch.tensor([n + 1]), torch.tensor([n + 1]), {}, tele)
    return out[0].double().numpy()


def check_exact(h: np.ndarray, got: np.ndarray, u: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    """Every bound holds on every token and the result is the float64 QP solution (1e-5 relative)."""
    u64 = u.astype(np.float64)
    for x0, x in zip(h.astype(np.float64), got, strict=True):
        ref = reference(x0, u64, lo, hi)
        scale = 1.0 + np.linalg.norm(ref)
        assert np.linalg.norm(x - ref) <= TOL * scale, (np.linalg.norm(x - ref) / scale, scale)
        proj = u64 @ x
        tol = TOL * (1.0 + np.linalg.norm(x))
        assert (proj >= lo - tol).all() and (proj <= hi + tol).all()


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.sampled_from([2, 3, 4, 5, 8, 16, 33, 64]),
    cos=st.floats(0.0, 0.6),
    spread=st.sampled_from([0.3, 2.0, 40.0]),
)
def test_the_joint_solve_equals_a_float64_qp_on_random_non_orthogonal_sets(
    seed: int, k: int, cos: float, spread: float
) -> None:
    rng = np.random.default_rng(seed)
    u = directions(rng, k, cos)
    assert joint.dependence(torch.tensor(u)) is None  # cosines ≤ 0.6: comfortably independent
    lo, hi = bounds(rng, k, spread)
    site = site_of(u, lo, hi)
    event(f"method {site['groups'][0][1]['method']}")
    h = (rng.standard_normal((5, H)) * spread / 2).astype(np.float32)
    check_exact(h, run_site(site, h), u, lo, hi)


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.sampled_from([2, 3, 6, 12, 24, 48, 64]),
    log_eig=st.floats(-7.0, -1.0),
)
def test_a_near_dependent_set_is_solved_exactly_or_refused_at_compile_time(seed: int, k: int, log_eig: float) -> None:
    rng = np.random.default_rng(seed)
    u = directions(rng, k, 0.3, eig=10.0**log_eig)
    smallest = float(np.linalg.eigvalsh(u.astype(np.float64) @ u.astype(np.float64).T)[0])
    dep = joint.dependence(torch.tensor(u))
    if dep is not None:
        event("refused")
        assert smallest < joint.DEPENDENT and dep.eigenvalue == pytest.approx(smallest)
        assert k - 1 in dep.involved  # the rebuilt row is part of the dependent combination
        return
    event("accepted")
    assert smallest >= joint.DEPENDENT
    lo, hi = bounds(rng, k, 2.0)
    h = (rng.standard_normal((4, H)) * 2).astype(np.float32)
    check_exact(h, run_site(site_of(u, lo, hi), h), u, lo, hi)


def test_a_set_at_the_acceptance_threshold_is_exact_on_its_hardest_direction() -> None:
    """Bounds that pull the two sides of a nearly dependent pair apart need a move of ~1/√λ along
    the difference; the float64 solve makes it and meets both bounds to float32 precision."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal(H)
    a /= np.linalg.norm(a)
    e = rng.standard_normal(H)
    e -= (e @ a) * a
    e /= np.linalg.norm(e)
    t = math.sqrt(2 * 1.5e-6)  # Gram eigenvalue 1 − cos ≈ 1.5e-6, just above the threshold
    b = a * math.sqrt(1 - t * t) + e * t
    u = np.stack([a, b]).astype(np.float32)
    assert joint.dependence(torch.tensor(u)) is None
    lo = np.array([0.5, -np.inf])
    hi = np.array([np.inf, -0.5])  # ⟨a, x⟩ ≥ 0.5 while ⟨b, x⟩ ≤ −0.5
    h = (rng.standard_normal((3, H)) * 3).astype(np.float32)
    got = run_site(site_of(u, lo, hi), h)
    assert np.linalg.norm(got[0] - h[0]) > 100  # a long way along a − b
    check_exact(h, got, u, lo, hi)


def test_two_hundred_fifty_six_directions_at_one_site_meet_the_kkt_conditions() -> None:
    rng = np.random.default_rng(256)
    k, h_dim = 256, 384
    u = directions(rng, k, 0.5, h=h_dim)
    assert joint.dependence(torch.tensor(u)) is None
    h = (rng.standard_normal((48, h_dim)) * 2).astype(np.float32)
    p = h.astype(np.float64) @ u.T.astype(np.float64)
    lo = np.quantile(p, 0.05, axis=0).astype(np.float32).astype(np.float64)  # about 10% of bounds violated
    hi = np.quantile(p, 0.95, axis=0).astype(np.float32).astype(np.float64)
    site = site_of(u, lo, hi)
    assert site["groups"][0][1]["method"] == "active" and len(site["groups"]) == 1
    got = run_site(site, h)
    moved = np.linalg.norm(got - h, axis=1) > 0
    assert moved.sum() >= 40
    worst = kkt_violation(h.astype(np.float64), got, u.astype(np.float64), lo, hi)
    assert worst <= 1e-6
    check_exact(h[:1], got[:1], u, lo, hi)


def test_the_least_index_safeguard_reaches_the_same_solution(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no block pivots allowed after the first round, the solve moves one bound at a time."""
    monkeypatch.setattr(rt, "_TRIES", -1)
    rng = np.random.default_rng(11)
    u = directions(rng, 24, 0.6)
    lo, hi = bounds(rng, 24, 2.0)
    h = (rng.standard_normal((6, H)) * 2).astype(np.float32)
    check_exact(h, run_site(site_of(u, lo, hi), h), u, lo, hi)


def test_the_face_enumeration_and_the_active_set_method_agree_where_both_apply() -> None:
    rng = np.random.default_rng(3)
    for k in (2, 3, 4, 5):
        u = directions(rng, k, 0.5)
        lo, hi = bounds(rng, k, 2.0)
        site = site_of(u, lo, hi)
        group = site["groups"][0][1]
        assert group["method"] == "faces"
        h = (rng.standard_normal((40, H)) * 2).astype(np.float32)
        faces = run_site(site, h[:8])  # few tokens move: faces
        forced = dict(group, method="active")
        active = run_site(dict(site, groups=[(site["groups"][0][0], forced)]), h[:8])
        assert np.abs(faces - active).max() <= 1e-5 * (1 + np.abs(active).max())
        check_exact(h[:8], faces, u, lo, hi)
        many = dict(group, face_rows=16)  # beyond face_rows moving tokens the active set takes over
        check_exact(h[:3], run_site(dict(site, groups=[(site["groups"][0][0], many)]), h)[:3], u, lo, hi)


def test_tokens_exactly_on_their_bounds_and_pins_between_them_are_degenerate_but_exact() -> None:
    rng = np.random.default_rng(5)
    k = 6
    u = directions(rng, k, 0.5)
    h = (rng.standard_normal((4, H)) * 2).astype(np.float32)
    p = h.astype(np.float64) @ u.T.astype(np.float64)
    lo = np.full(k, -np.inf)
    hi = np.full(k, np.inf)
    lo[0] = float(np.float32(p[0, 0]))  # token 0 sits on this floor
    hi[1] = float(np.float32(p[0, 1]))  # ... and on this ceiling
    lo[2] = hi[2] = float(np.float32(p[1, 2] + 1.0))  # a pin that moves token 1
    lo[3] = float(np.float32(p[1, 3]))  # token 1 starts on this floor: after the pin it may stay or leave it
    site = site_of(u, lo, hi)
    got = run_site(site, h)
    check_exact(h, got, u, lo, hi)
    untouched = run_site(site_of(u, np.full(k, -1e4), np.full(k, 1e4)), h)
    assert np.array_equal(untouched, h.astype(np.float64))  # satisfied tokens keep their exact bits


def test_contradicting_bounds_in_a_hand_built_payload_are_reported_naming_the_statements() -> None:
    u = directions(np.random.default_rng(1), 2, 0.3)
    site = site_of(u, np.array([0.0, -np.inf]), np.array([np.inf, np.inf]))
    del site["feasible"]
    site["bounds"].append(dict(site["bounds"][0], lo=-math.inf, hi=-1.0, entry=2, label="`clamp a <= -1` (line 9)"))
    with pytest.raises(ValueError, match=r"infeasible bounds at this site: s0, `clamp a <= -1` \(line 9\)"):
        run_site(site, np.zeros((2, H), dtype=np.float32))


def test_a_solve_that_cannot_converge_stops_and_names_its_statements(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rt, "_held_solve", lambda gram, held, z: -z)  # multipliers of the wrong sign
    u = directions(np.random.default_rng(2), 8, 0.5)
    site = site_of(u, np.full(8, 1.0), np.full(8, 2.0))
    site["path"] = "model.layers.3"
    with pytest.raises(RuntimeError, match=r"at model\.layers\.3 did not converge for s0, s1, .*s7"):
        run_site(site, np.zeros((3, H), dtype=np.float32))


# -- the compiler's side: what it accepts, merges and refuses ------------------------------------


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_nnsight("llama")


def concepts(u: np.ndarray) -> dict[str, ConceptArtifact]:
    return {f"c{i}": artifact(row) for i, row in enumerate(u)}


def spec_for(names: list[str], body: list[str]) -> str:
    return "".join(f'concept {n} from pairs "{n}.yaml"\n' for n in names) + "".join(body)


def test_twenty_four_non_orthogonal_bounds_at_one_site_compile_into_one_exact_group(model: Any) -> None:
    rng = np.random.default_rng(24)
    u = directions(rng, 24, 0.6, h=TINY_H)
    names = [f"c{i}" for i in range(24)]
    plan = compile_(model, spec_for(names, [f"clamp {n} in [-0.2, 0.4] at layer 1\n" for n in names]), **concepts(u))
    (site,) = plan.payload["sites"]
    ((members, group),) = site["groups"]
    assert members == list(range(24)) and group["method"] == "active" and site["feasible"]
    assert "joint: 24 directions solved together, exactly" in plan.explain()
    assert "active-set method in float64" in plan.explain()
    h = (rng.standard_normal((1, 6, TINY_H)) * 3).astype(np.float32)
    pos = torch.arange(6)[None] + 1  # after the sink
    out = apply_site(torch.tensor(h), site, pos, torch.tensor([7]), torch.tensor([7]), {})[0].double().numpy()
    lo = np.array([b["lo"] for b in site["bounds"]])
    hi = np.array([b["hi"] for b in site["bounds"]])
    check_exact(h[0], out, site["dirs"].numpy(), lo, hi)


def test_the_same_direction_twice_is_merged_but_a_nearly_parallel_one_is_refused_naming_both(model: Any) -> None:
    rng = np.random.default_rng(9)
    a = directions(rng, 1, 0.0, h=TINY_H)[0]
    same = compile_(model, "clamp a >= 0 at layer 0\nclamp b <= 1 at layer 0\n", a=artifact(a), b=artifact(a.copy()))
    assert same.payload["sites"][0]["dirs"].shape == (1, TINY_H)
    e = rng.standard_normal(TINY_H).astype(np.float32)
    near = a + 1e-4 * e / np.linalg.norm(e)  # |cos| ≈ 1 − 5e-9: was merged before, now refused
    with pytest.raises(SpecError) as info:
        compile_(model, "clamp a >= 0 at layer 0\nclamp b <= 1 at layer 0\n", a=artifact(a), b=artifact(near))
    (d,) = info.value.diagnostics
    assert "the directions of `clamp a >= 0 at layer 0` (line 4), `clamp b <= 1 at layer 0` (line 5)" in d.message
    assert "nearly parallel" in d.message and "cannot be met exactly" in d.message and d.span.line == 5


def test_a_dependent_triple_is_refused_naming_its_three_statements_and_not_a_bystander(model: Any) -> None:
    rng = np.random.default_rng(4)
    u = directions(rng, 4, 0.2, h=TINY_H)
    u[2] = ((u[0] + u[1]) / np.linalg.norm(u[0] + u[1])).astype(np.float32)  # c2 in the plane of c0, c1
    names = ["c0", "c3", "c1", "c2"]
    body = [f"clamp {n} >= 0 at layer 2\n" for n in names]
    with pytest.raises(SpecError) as info:
        resolve_spec(model, spec_for(names, body), concepts(u))
    (d,) = info.value.diagnostics
    assert "`clamp c0 >= 0 at layer 2` (line 6), `clamp c1 >= 0 at layer 2` (line 8), `clamp c2" in d.message
    assert "c3" not in d.message and "linearly dependent" in d.message


def resolve_spec(model: Any, body: str, given: dict[str, ConceptArtifact]) -> Any:
    from constraintdsl import parse
    from constraintdsl.compiler.resolve import resolve

    return resolve(parse("version 1\n" + body, "t.cdsl"), model, concepts=given)


def test_contradicting_bounds_on_one_direction_are_still_a_compile_time_error(model: Any) -> None:
    with pytest.raises(SpecError, match="infeasible at layer 0"):
        compile_(model, "clamp a >= 1 raw at layer 0\nclamp a <= 0 raw at layer 0 on last 2\n")


@pytest.mark.parametrize("tokens", [PROMPT, GENERATED, LAST])
def test_statements_on_different_tokens_solve_each_token_with_the_bounds_that_apply_to_it(tokens: int) -> None:
    rng = np.random.default_rng(tokens)
    k = 7
    u = directions(rng, k, 0.5)
    lo, hi = bounds(rng, k, 2.0)
    site = site_of(u, lo, hi)
    for b in site["bounds"][::2]:
        b["tokens"], b["count"] = tokens, 2
    n = 6
    h = (rng.standard_normal((n, H)) * 2).astype(np.float32)
    pos = torch.arange(n)[None]
    out = apply_site(torch.tensor(h)[None], site, pos, torch.tensor([3]), torch.tensor([n]), {})[0].double().numpy()
    masks = [
        rt.token_mask(b["tokens"], b["count"], pos, torch.tensor([3]), torch.tensor([n]))[0] for b in site["bounds"]
    ]
    for t in range(n):
        on = np.array([bool(m[t]) for m in masks])
        check_exact(h[t : t + 1], out[t : t + 1], u, np.where(on, lo, -np.inf), np.where(on, hi, np.inf))
