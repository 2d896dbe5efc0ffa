"""The runtime's math, on tiny tensors: every selected token ends up within all its bounds, the
correction equals a reference QP solution on random non-orthogonal directions, the step is
idempotent, and everything a statement does not touch keeps its exact bits."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from constraintdsl.compiler import joint
from constraintdsl.runtime.interventions import (
    ALL,
    GENERATED,
    LAST,
    PROMPT,
    STEER,
    apply_site,
    prepare_group,
    solve_bounds,
)

H = 8
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def unit_rows(rng: np.random.Generator, k: int, h: int = H) -> torch.Tensor:
    u = rng.standard_normal((k, h))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return torch.tensor(u, dtype=torch.float32)


def bounds_for(rng: np.random.Generator, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    lo = torch.tensor(rng.uniform(-2, 1, k), dtype=torch.float32)
    hi = lo + torch.tensor(rng.uniform(0, 2, k), dtype=torch.float32)
    kind = rng.integers(0, 4, k)  # 0 both, 1 only lo, 2 only hi, 3 pin
    lo = torch.where(torch.tensor(kind == 2), torch.tensor(-math.inf), lo)
    hi = torch.where(torch.tensor(kind == 1), torch.tensor(math.inf), hi)
    hi = torch.where(torch.tensor(kind == 3), lo, hi)
    return lo, hi


def reference(h: np.ndarray, u: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Closest point to h with lo <= u @ x <= hi, by scipy's SLSQP in float64."""
    cons = []
    for i in range(len(lo)):
        if np.isfinite(lo[i]):
            cons.append({"type": "ineq", "fun": lambda x, i=i: u[i] @ x - lo[i], "jac": lambda x, i=i: u[i]})
        if np.isfinite(hi[i]):
            cons.append({"type": "ineq", "fun": lambda x, i=i: hi[i] - u[i] @ x, "jac": lambda x, i=i: -u[i]})
    res = minimize(
        lambda x: float(((x - h) ** 2).sum()),
        h.copy(),
        jac=lambda x: 2 * (x - h),
        constraints=cons,
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    return np.asarray(res.x)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 4))
def test_the_joint_correction_equals_a_reference_qp_on_non_orthogonal_directions(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    u = unit_rows(rng, k)
    assume(joint.dependence(u) is None)  # what the compiler accepts (dependent sets are refused there)
    lo, hi = bounds_for(rng, k)
    h = torch.tensor(rng.standard_normal((5, H)) * 2, dtype=torch.float32)
    group = prepare_group(u, torch.isfinite(lo).tolist(), torch.isfinite(hi).tolist())
    delta, _, _ = solve_bounds(h, group, lo.expand(5, k), hi.expand(5, k))
    for n in range(5):
        ref = reference(h[n].double().numpy(), u.double().numpy(), lo.double().numpy(), hi.double().numpy())
        got = (h[n] + delta[n]).double().numpy()
        assert np.allclose(got, ref, atol=1e-5 * (1 + np.abs(ref).max())), (got, ref)


def site_for(u: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, tokens: int = ALL, count: int = 0) -> dict[str, Any]:
    k = u.shape[0]
    return {
        "actions": [],
        "dirs": u,
        "bounds": [
            {
                "dir": i,
                "lo": float(lo[i]),
                "hi": float(hi[i]),
                "sign": 1.0,
                "tokens": tokens,
                "count": count,
                "gate": -1,
                "entry": i,
            }
            for i in range(k)
        ],
        "groups": [(list(range(k)), prepare_group(u, torch.isfinite(lo).tolist(), torch.isfinite(hi).tolist()))],
    }


def positions_of(B: int, T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pos = torch.arange(T).repeat(B, 1)
    return pos, torch.full((B,), T), torch.full((B,), T)


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 4),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
)
def test_every_selected_token_satisfies_every_bound_after_the_runtime(seed: int, k: int, dtype: torch.dtype) -> None:
    rng = np.random.default_rng(seed)
    u = unit_rows(rng, k)
    assume(joint.dependence(u) is None)
    lo, hi = bounds_for(rng, k)
    h = (torch.tensor(rng.standard_normal((2, 6, H)) * 3, dtype=torch.float32)).to(dtype)
    out = apply_site(h, site_for(u, lo, hi), *positions_of(2, 6), {})
    assert out.dtype == dtype and torch.isfinite(out).all()
    picked = out[:, 1:]  # every token but each sequence's first (the attention sink, never selected)
    proj = picked.float().reshape(-1, H) @ u.T
    # float32: within 1e-4 relative; half precisions: within their rounding of h itself
    eps = 1e-4 if dtype == torch.float32 else 4 * torch.finfo(dtype).eps
    tol = eps * (1 + picked.float().reshape(-1, H).norm(dim=1, keepdim=True))
    assert (proj >= lo - tol).all() and (proj <= hi + tol).all()


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 3))
def test_the_step_is_idempotent_and_leaves_the_orthogonal_complement_alone(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    u = unit_rows(rng, k)
    assume(joint.dependence(u) is None)
    lo, hi = bounds_for(rng, k)
    site = site_for(u, lo, hi)
    h = torch.tensor(rng.standard_normal((1, 7, H)) * 3, dtype=torch.float32)
    once = apply_site(h, site, *positions_of(1, 7), {})
    twice = apply_site(once, site, *positions_of(1, 7), {})
    assert torch.allclose(once, twice, atol=1e-5 * (1 + float(once.abs().max())))
    q, _ = torch.linalg.qr(u.T.double())  # orthonormal basis of span(u)
    complement = torch.eye(H, dtype=torch.float64) - q @ q.T
    assert torch.allclose(
        (once.double() - h.double()) @ complement, torch.zeros(1, 7, H, dtype=torch.float64), atol=1e-5
    )


def test_tokens_that_already_satisfy_the_bounds_keep_their_exact_bits() -> None:
    rng = np.random.default_rng(0)
    u = unit_rows(rng, 2)
    h = torch.tensor(rng.standard_normal((1, 4, H)), dtype=torch.bfloat16)
    lo = torch.tensor([-100.0, -100.0])
    hi = torch.tensor([100.0, 100.0])
    out = apply_site(h, site_for(u, lo, hi), *positions_of(1, 4), {})
    assert torch.equal(out.view(torch.int16), h.view(torch.int16))


def test_unselected_tokens_and_padding_keep_their_exact_bits() -> None:
    rng = np.random.default_rng(1)
    u = unit_rows(rng, 1)
    h = torch.tensor(rng.standard_normal((2, 5, H)) * 3, dtype=torch.float32)
    positions = torch.tensor([[-1, -1, 0, 1, 2], [0, 1, 2, 3, 4]])  # row 0 left-padded by two
    prompt_len = torch.tensor([2, 3])
    total = torch.tensor([3, 5])
    site = site_for(u, torch.tensor([5.0]), torch.tensor([5.0]), tokens=GENERATED)  # pin to 5
    out = apply_site(h, site, positions, prompt_len, total, {})
    selected = torch.tensor([[False, False, False, False, True], [False, False, False, True, True]])
    assert torch.equal(out[~selected], h[~selected])
    assert torch.allclose(out[selected] @ u[0], torch.full((3,), 5.0), atol=1e-4)


def test_token_selections_count_on_real_tokens_from_the_right() -> None:
    from constraintdsl.runtime.interventions import FIRST, token_mask

    positions = torch.tensor([[-1, 0, 1, 2], [0, 1, 2, 3]])
    prompt_len, total = torch.tensor([3, 4]), torch.tensor([3, 4])
    assert token_mask(LAST, 2, positions, prompt_len, total).tolist() == [
        [False, False, True, True],
        [False, False, True, True],
    ]
    # `first N` counts from the token after the first real one (the attention sink, never selected)
    assert token_mask(FIRST, 1, positions, prompt_len, total).tolist() == [
        [False, False, True, False],
        [False, True, False, False],
    ]
    assert token_mask(PROMPT, 0, positions, prompt_len, total)[0].tolist() == [False, False, True, True]
    for kind, count in ((ALL, 0), (PROMPT, 0), (GENERATED, 0), (LAST, 4), (FIRST, 4)):
        assert not token_mask(kind, count, positions, torch.tensor([0, 0]), total)[positions == 0].any(), kind


def test_steer_adds_the_amount_along_the_direction_before_the_bounds() -> None:
    u = torch.zeros(1, H)
    u[0, 0] = 1.0
    h = torch.zeros(1, 3, H)
    site = site_for(u, torch.tensor([-math.inf]), torch.tensor([1.5]))
    site["actions"] = [{"kind": STEER, "u": u[0], "amount": 2.0, "tokens": ALL, "count": 0, "gate": -1, "entry": 9}]
    tele = torch.zeros(10, 8)
    out = apply_site(h, site, *positions_of(1, 3), {}, tele)
    assert torch.allclose(out[0, 1:, 0], torch.full((2,), 1.5))  # steered to 2, clamped back to 1.5
    assert torch.equal(out[0, 0], h[0, 0])  # the first token (the attention sink) is never selected
    assert tele[9, 0] == 2 and tele[0, 1] == 2  # steer saw 2 tokens; the ceiling bound both


def test_no_finite_input_becomes_nan_or_inf_even_with_huge_norms() -> None:
    rng = np.random.default_rng(3)
    u = unit_rows(rng, 3)
    h = torch.tensor(rng.standard_normal((1, 4, H)), dtype=torch.float32) * 3e4  # attention-sink sized
    lo, hi = torch.tensor([0.0, -1.0, 2.0]), torch.tensor([0.0, 1.0, math.inf])
    out = apply_site(h, site_for(u, lo, hi), *positions_of(1, 4), {})
    assert torch.isfinite(out).all()


class _CountTorchCalls(torch.overrides.TorchFunctionMode):
    """Counts every torch function and tensor method called while active."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.calls += 1
        return func(*args, **(kwargs or {}))


def _torch_calls(work: Any) -> int:
    with _CountTorchCalls() as counter:
        work()
    return counter.calls


@pytest.mark.parametrize("k", [1, 2, 3])
def test_the_solver_runs_without_a_python_loop_over_tokens(k: int) -> None:
    # A Python loop over tokens would call torch once (or more) per token: the number of torch calls
    # must not change between 8 and 4096 tokens, and the result must still be right.
    rng = np.random.default_rng(k)
    u = unit_rows(rng, k)
    group = prepare_group(u, [True] * k, [True] * k)

    def solve(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = torch.tensor(np.random.default_rng(n).standard_normal((n, H)) * 3, dtype=torch.float32)
        return h, *solve_bounds(h, group, torch.full((n, k), -0.1), torch.full((n, k), 0.1))[:2]

    assert _torch_calls(lambda: solve(8)) == _torch_calls(lambda: solve(4096))
    h, delta, y = solve(4096)
    assert delta.shape == (4096, H) and y.shape == (4096, k)
    proj = (h + delta) @ u.T
    assert bool(((proj >= -0.1 - 1e-4) & (proj <= 0.1 + 1e-4)).all())


def test_a_site_is_applied_without_a_python_loop_over_tokens() -> None:
    rng = np.random.default_rng(9)
    u = unit_rows(rng, 2)
    site = site_for(u, torch.tensor([0.0, -1.0]), torch.tensor([0.5, 1.0]))

    def apply(t: int) -> None:
        h = torch.tensor(np.random.default_rng(t).standard_normal((2, t, H)) * 3, dtype=torch.float32)
        apply_site(h, site, *positions_of(2, t), {}, torch.zeros(4, 8))

    assert _torch_calls(lambda: apply(4)) == _torch_calls(lambda: apply(2048))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_untouched_tokens_keep_their_bits_in_wider_and_narrower_dtypes(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(5)
    u = unit_rows(rng, 1)
    h = torch.tensor(rng.standard_normal((1, 6, H)) * 3, dtype=dtype)
    site = site_for(u, torch.tensor([100.0]), torch.tensor([100.0]), tokens=LAST, count=2)  # pin the last two
    out = apply_site(h, site, *positions_of(1, 6), {})
    assert torch.equal(out[0, :4], h[0, :4])
    assert not torch.equal(out[0, 4:], h[0, 4:])
