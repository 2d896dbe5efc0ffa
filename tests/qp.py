"""Independent float64 references for the joint bound step: scipy's bounded least squares, and a
KKT certificate computed from the result alone.  Neither shares code with the runtime."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import lsq_linear

F64 = np.ndarray[Any, np.dtype[np.float64]]


def reference(h: F64, u: F64, lo: F64, hi: F64) -> F64:
    """The closest point to ``h`` [H] with ``lo ≤ u @ x ≤ hi`` (u [k, H] independent rows; ±inf
    for missing sides), in float64.

    The change lies in span(u) = span(Q) for ``uᵀ = Q R``: ``x = h + Q c``, ``‖x − h‖ = ‖c‖`` and
    ``u @ x = p + Rᵀ c``.  With ``y = Rᵀ c`` the problem is ``min ‖R⁻ᵀ y‖`` over the box
    ``lo − p ≤ y ≤ hi − p``: scipy's bounded-variable least squares (BVLS), with pinned
    coordinates (lo = hi) fixed first.
    """
    q, r = np.linalg.qr(u.T)
    p = u @ h
    a, b = lo - p, hi - p
    m = np.linalg.inv(r.T)
    pinned = a == b
    y = np.where(pinned, a, 0.0)
    free = ~pinned
    if free.any():
        res = lsq_linear(m[:, free], -m[:, pinned] @ y[pinned], bounds=(a[free], b[free]), method="bvls", tol=1e-15)
        y[free] = res.x
    return np.asarray(h + q @ (m @ y))


def kkt_violation(h: F64, x: F64, u: F64, lo: F64, hi: F64) -> float:
    """How far ``x`` is from being the least-L2 change of ``h`` meeting ``lo ≤ u @ x ≤ hi``, as the
    largest violation of the optimality (KKT) conditions over the tokens (rows of ``h``, ``x``
    [N, H]), each relative to ``1 + ‖h‖`` of its token:

    - the change lies in span(u): ``x − h = uᵀλ`` (least-squares residual);
    - every bound holds;
    - a multiplier pushes only against a bound the solution sits on: ``λ_i > 0`` only at ``lo_i``,
      ``λ_i < 0`` only at ``hi_i`` (measured as ``min(|λ_i|, distance to that bound)``).

    The problem is strictly convex, so a point with all three at zero is its unique solution.
    """
    h, x = np.atleast_2d(h), np.atleast_2d(x)
    scale = 1.0 + np.linalg.norm(h, axis=1)
    d = x - h
    lam = np.linalg.lstsq(u.T, d.T, rcond=None)[0].T  # [N, k]
    stationarity = np.linalg.norm(d - lam @ u, axis=1)
    proj = x @ u.T
    below = np.where(np.isfinite(lo), lo - proj, 0.0)
    above = np.where(np.isfinite(hi), proj - hi, 0.0)
    primal = np.maximum(np.maximum(below, above), 0.0).max(axis=1)
    gap_lo = np.abs(np.where(np.isfinite(lo), proj - lo, np.inf))
    gap_hi = np.abs(np.where(np.isfinite(hi), hi - proj, np.inf))
    comp = np.where(lam > 0, np.minimum(lam, gap_lo), np.minimum(-lam, gap_hi)).max(axis=1)
    return float((np.maximum(np.maximum(stationarity, primal), comp) / scale).max())
