"""The numbers ``cdsl compare`` reports, reduced from the sums :mod:`constraintdsl.runtime.scoring` collects.

Sums are added over batches (and over remote requests) first; these functions run once on the totals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from constraintdsl.runtime.scoring import SUM_FIELDS

__all__ = ["ab_probability", "paired_shift", "participation_ratio", "participation_ratio_of", "t_quantile", "tax"]


def _array(x: Any) -> npt.NDArray[np.float64]:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def participation_ratio(n: Any, s: Any, ss: Any) -> float:
    """Effective dimensionality of a cloud of vectors from its moment sums (:func:`scoring.hidden_sums`).

    ``n`` is the count, ``s`` the sum ``[H]`` and ``ss`` the sum of outer products ``[H, H]``.  With the
    population covariance ``C = ss / n - μ μᵀ`` (``μ = s / n``) and its eigenvalues ``λ``::

        PR = (tr C)² / tr(C²) = (Σ λ)² / Σ λ²

    PR is 1 when all variance lies along one direction and H when it is spread equally over H
    orthogonal directions (isotropic data); in between it counts the directions that matter.
    Raises ValueError for no vectors or no variance.
    """
    count = float(_array(n))
    if count <= 0:
        raise ValueError("participation ratio of no vectors: the corpus has no counted tokens")
    mean = _array(s) / count
    cov = _array(ss) / count - np.outer(mean, mean)
    return participation_ratio_of(count, float(np.trace(cov)), float(np.sum(cov * cov)))  # tr(C²) = ‖C‖_F²


def participation_ratio_of(count: float, trace: float, square: float) -> float:
    """:func:`participation_ratio` from the covariance's trace and squared Frobenius norm (what
    :func:`constraintdsl.runtime.scoring.moment_summary` computes where the passes ran)."""
    if count <= 0:
        raise ValueError("participation ratio of no vectors: the corpus has no counted tokens")
    if not trace > 0 or square == 0:
        raise ValueError("participation ratio of vectors with no variance (all counted hidden states are equal)")
    return trace * trace / square


def _per_token(sums: Any, which: str) -> dict[str, float]:
    v = _array(sums)
    if v.shape != (len(SUM_FIELDS),):
        raise ValueError(f"{which} sums must have {len(SUM_FIELDS)} entries {SUM_FIELDS}, got shape {v.shape}")
    count, nll, entropy, kl = (float(x) for x in v)
    if not count > 0:
        raise ValueError(f"{which} sums count no predicted tokens: the corpus is empty or every sequence is 1 token")
    return {"tokens": count, "nll": nll / count, "entropy": entropy / count, "kl": kl / count}


def tax(base_sums: Any, sums: Any) -> dict[str, float]:
    """Tax of a constrained run against the baseline, both given as :func:`scoring.corpus_sums` vectors
    ``[count, nll_sum, entropy_sum, kl_sum]`` over the same corpus (``sums``' KL taken against the baseline).

    Returns per predicted token: ``delta_nll`` (this NLL − baseline NLL), ``kl`` (mean KL(base ‖ this)),
    ``ppl_ratio`` (this perplexity / the baseline's, ``exp(delta_nll)``), ``entropy`` (this run's mean
    next-token entropy), ``base_entropy``, ``nll`` and ``tokens``.  Raises ValueError when either counts
    no tokens or the two counts differ (different inputs).
    """
    base, this = _per_token(base_sums, "baseline"), _per_token(sums, "run")
    if base["tokens"] != this["tokens"]:
        raise ValueError(
            f"baseline counts {base['tokens']:.0f} tokens, the run {this['tokens']:.0f}: not the same corpus"
        )
    delta = this["nll"] - base["nll"]
    return {
        "delta_nll": delta,
        "kl": this["kl"],
        "ppl_ratio": math.exp(delta),
        "entropy": this["entropy"],
        "base_entropy": base["entropy"],
        "nll": this["nll"],
        "tokens": this["tokens"],
    }


def ab_probability(
    logp_a: torch.Tensor | Sequence[float],
    logp_b: torch.Tensor | Sequence[float],
    match: torch.Tensor | Sequence[bool],
) -> torch.Tensor:
    """Probability of the behavior-matching answer of each A/B item, normalized over its two answers:
    ``exp(lp_match) / (exp(lp_a) + exp(lp_b))``, computed as ``exp(lp_match − logsumexp(lp_a, lp_b))``.

    ``logp_a`` / ``logp_b`` are the answers' log-probabilities (:func:`scoring.answer_logprob`), ``match``
    is true where answer A is the matching one.  Returns float64 ``[B]``.
    """
    a = torch.as_tensor(logp_a, dtype=torch.float64)
    b = torch.as_tensor(logp_b, dtype=torch.float64).to(a.device)
    m = torch.as_tensor(match, device=a.device).to(torch.bool)
    if not a.shape == b.shape == m.shape:
        raise ValueError(f"logp_a, logp_b and match differ in shape: {a.shape}, {b.shape}, {m.shape}")
    total = torch.logsumexp(torch.stack([a, b]), dim=0)
    return torch.exp(torch.where(m, a, b) - total)


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t distribution with ``df`` degrees of freedom (0 < q < 1, df > 0),
    by bisection on its CDF (the regularized incomplete beta function) to about 1e-12."""
    if not 0.0 < q < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < q < 1 and df > 0, got q={q}, df={df}")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < q:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def paired_shift(values: Sequence[float], baseline: Sequence[float]) -> dict[str, Any]:
    """Paired statistics of per-item differences ``d = values − baseline``: ``shift`` (their mean), ``se`` (the
    standard error of that mean, ``sd(d) / √n`` with the n − 1 sample standard deviation), ``ci95`` (the 95%
    Student-t interval ``shift ± t(0.975, n − 1) · se``), ``up`` / ``down`` (items with d > 0 / d < 0) and
    ``n``.  With one item ``se`` and the interval are NaN; with none this is a ValueError."""
    v, b = _array(values), _array(baseline)
    if v.shape != b.shape or v.ndim != 1:
        raise ValueError(f"values and baseline must be equal-length vectors, got {v.shape} and {b.shape}")
    n = int(v.shape[0])
    if n == 0:
        raise ValueError("paired statistics of no items")
    d = v - b
    mean = float(d.mean())
    if n > 1:
        se = float(d.std(ddof=1)) / math.sqrt(n)
        half = t_quantile(0.975, n - 1) * se
        ci = [mean - half, mean + half]
    else:
        se, ci = math.nan, [math.nan, math.nan]
    return {"shift": mean, "se": se, "ci95": ci, "up": int((d > 0).sum()), "down": int((d < 0).sum()), "n": n}
