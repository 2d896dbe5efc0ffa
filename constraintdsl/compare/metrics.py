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

__all__ = ["ab_probability", "participation_ratio", "tax"]


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
    trace = float(np.trace(cov))
    square = float(np.sum(cov * cov))  # tr(C²) = ‖C‖_F² for symmetric C
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
