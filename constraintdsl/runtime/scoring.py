"""Torch-only scoring sums for ``cdsl compare``, computed inside an nnsight trace.

Each function turns one forward pass's tensors into a few small float64 sums that can be saved,
sent back from a server and added across batches; :mod:`constraintdsl.compare.metrics` turns the totals
into the reported numbers.  Like :mod:`constraintdsl.runtime.interventions`, this module travels to NDIF by value,
so it imports nothing but torch and the standard library's ``math``/``typing``/``collections``.

No ``from __future__ import annotations`` here: this module is pickled by value, and that
statement leaves a ``__future__`` object in its namespace that the server would have to import.
Every annotation below is valid at run time on Python 3.10+.
"""

import typing

import torch

__all__ = [
    "CHUNK_ROWS",
    "SUM_FIELDS",
    "answer_logprob",
    "corpus_sums",
    "fold_corpus",
    "hidden_sums",
    "moment_summary",
    "predicted_rows",
]

# The entries of the vector :func:`corpus_sums` returns, in order.
SUM_FIELDS = ("count", "nll_sum", "entropy_sum", "kl_sum")
# Rows of [rows, vocab] float32 temporaries handled at once (256 × 49k ≈ 50 MB each).
CHUNK_ROWS = 256


def predicted_rows(mask: torch.Tensor) -> torch.Tensor:
    """Which positions of a ``[B, T]`` mask (1 = real token) predict a counted next token: ``[B, T - 1]`` bool,
    true where the token and the next one are both real."""
    real = mask != 0
    return real[:, :-1] & real[:, 1:]


def corpus_sums(
    logits: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    base_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced next-token sums over a batch: ``(sums, logp)``.

    ``logits`` ``[B, T, V]`` (any float dtype; computed in float32), ``ids`` ``[B, T]``, ``mask``
    ``[B, T]`` (1 = real token).  Position t predicts ``ids[t + 1]`` and counts when both tokens are
    real (:func:`predicted_rows`).  ``sums`` is a float64 vector ``[count, nll_sum, entropy_sum,
    kl_sum]`` (:data:`SUM_FIELDS`) on the logits' device, where ``kl_sum`` adds KL(base ‖ this) over
    the counted positions (0 without ``base_logp``).

    ``logp`` is this run's float32 log-softmax at the counted positions only, ``[N, V]`` in
    row-major (b, t) order; pass it as ``base_logp`` of another run on the same ``ids``/``mask``.
    ``base_logp`` may also be a full ``[B, T, V]`` log-softmax, whose counted positions are used.
    """
    rows = predicted_rows(mask)
    targets = ids[:, 1:][rows]
    logp = torch.log_softmax(logits[:, :-1][rows].to(torch.float32), dim=-1)
    base = None
    if base_logp is not None:
        base = base_logp[:, :-1][rows] if base_logp.dim() == 3 else base_logp
        if base.shape != logp.shape:
            raise ValueError(f"base_logp covers {tuple(base.shape)} predictions, this run {tuple(logp.shape)}")
    nll = -logp.gather(-1, targets.unsqueeze(-1)).to(torch.float64).sum()
    entropy = torch.zeros((), dtype=torch.float64, device=logp.device)
    kl = torch.zeros((), dtype=torch.float64, device=logp.device)
    for start in range(0, logp.shape[0], CHUNK_ROWS):
        lp = logp[start : start + CHUNK_ROWS]
        p = lp.exp()
        # where p underflows to 0 the term is 0, even if lp is -inf (masked vocabulary)
        entropy = entropy - torch.where(p > 0, p * lp, 0.0).sum(dtype=torch.float64)
        if base is not None:
            blp = base[start : start + CHUNK_ROWS].to(torch.float32)
            bp = blp.exp()
            kl = kl + torch.where(bp > 0, bp * (blp - lp), 0.0).sum(dtype=torch.float64)
    count = torch.tensor(float(logp.shape[0]), dtype=torch.float64, device=logp.device)
    return torch.stack([count, nll, entropy, kl]), logp


def hidden_sums(h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float64 moment sums of hidden states ``h`` ``[B, T, H]`` over real tokens (``mask`` ``[B, T]``, 1 = real):
    ``(n, s, ss)`` = the count (a 0-d tensor), the sum ``[H]`` and the sum of outer products ``[H, H]``.

    Sums from several batches add up to the sums of all of them; see
    :func:`constraintdsl.compare.metrics.participation_ratio`."""
    x = h[mask != 0].to(torch.float64)
    n = torch.tensor(float(x.shape[0]), dtype=torch.float64, device=x.device)
    return n, x.sum(dim=0), x.T @ x


def moment_summary(n: torch.Tensor, s: torch.Tensor, ss: torch.Tensor) -> torch.Tensor:
    """From :func:`hidden_sums` totals, ``[count, tr C, ‖C‖_F²]`` float64 of the population covariance
    ``C = ss / n − μ μᵀ`` (``μ = s / n``): all a participation ratio needs, without the ``[H, H]`` sums."""
    count = n.to(torch.float64)
    mean = s / count
    cov = ss / count - torch.outer(mean, mean)
    return torch.stack([count, torch.trace(cov), (cov * cov).sum()])


def fold_corpus(passes: list[typing.Any]) -> list[list[torch.Tensor]]:
    """Per payload, every corpus pass's results (each pass: one ``[sums, (n, s, ss), telemetry]`` per payload)
    added up, with the hidden moments reduced by :func:`moment_summary`: ``[sums, summary]`` per payload.  Run
    where the passes ran (on the server, for a comparison sent as one request), so ``[H, H]`` sums never travel."""
    out = []
    for index in range(len(passes[0])):
        sums = passes[0][index][0]
        n, s, ss = passes[0][index][1]
        for later in passes[1:]:
            sums = sums + later[index][0]
            n, s, ss = n + later[index][1][0], s + later[index][1][1], ss + later[index][1][2]
        out.append([sums, moment_summary(n, s, ss)])
    return out


def answer_logprob(logits: torch.Tensor, ids: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """The log-probability of each row's answer: ``[B]`` float64, the sum over the tokens marked by
    ``answer_mask`` ``[B, T]`` of ``log p(ids[t] | ..., t - 1)``, each predicted from the position before it.

    Only the predicting positions' rows of ``logits`` ``[B, T, V]`` are normalized, :data:`CHUNK_ROWS` at a
    time in float32, so the temporaries stay small whatever the batch.  A mark at position 0 has nothing to
    predict it and is an error."""
    marked = answer_mask != 0
    if bool(marked[:, 0].any()):
        raise ValueError("answer_mask marks position 0, which no position predicts")
    where = marked[:, 1:].nonzero()  # [N, 2]: (row, position predicting position + 1), row-major
    rows = where[:, 0].to(logits.device)
    cols = where[:, 1].to(logits.device)
    targets = ids.to(logits.device)[rows, cols + 1]
    out = torch.zeros(ids.shape[0], dtype=torch.float64, device=logits.device)
    for start in range(0, int(rows.shape[0]), CHUNK_ROWS):
        r, c = rows[start : start + CHUNK_ROWS], cols[start : start + CHUNK_ROWS]
        chunk = logits[r, c].to(torch.float32)  # [n, V]
        picked = chunk.gather(-1, targets[start : start + CHUNK_ROWS].unsqueeze(-1)).squeeze(-1)
        token_lp = (picked - torch.logsumexp(chunk, dim=-1)).to(torch.float64)
        out = out.index_add(0, r, token_lp)
    return out
