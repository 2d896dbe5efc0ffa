"""Torch-only per-batch reductions for concept extraction, computed inside an nnsight trace.

:mod:`constraintdsl.concepts.extract` forwards each batch of pair texts once and, at every layer it reads, turns the
counted tokens' activations into a few small tensors here: per-pole token sums, a centered second moment,
per-example means, or per-token scalar projections.  Only these come back (from a server too), never the
activations themselves; the caller adds them across batches.  A local run goes through the same functions, so
a remote extraction equals a local one by construction.

Like :mod:`constraintdsl.runtime.scoring`, this module travels to NDIF by value, so it imports nothing but torch.  No
``from __future__ import annotations`` here: the server would have to import the ``__future__`` object it
leaves in the namespace.  Every annotation below is valid at run time on Python 3.10+.
"""

import torch

__all__ = ["batch_index", "counted", "project", "train_sums"]


def counted(output: object, mask: torch.Tensor) -> torch.Tensor:
    """The counted tokens' activations ``[n, H]`` of a site's output ``[B, T, H]`` (a tuple gives its first
    element), selected by the ``[B, T]`` bool ``mask``, rows in order, each row left to right."""
    value = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(value, torch.Tensor) or value.dim() != 3:
        raise TypeError(f"expected a [B, T, H] tensor as a site's output, got {type(value).__name__}")
    return value[mask.to(value.device)]


def batch_index(rows: torch.Tensor, poles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(membership, by_pole)`` for a batch: ``membership`` ``[B, n]`` float32 marks each counted token's row
    (``rows`` ``[n]``), ``by_pole`` ``[2, B]`` float64 marks the positive rows, then the negative ones (``poles``
    ``[B]``, +1 or -1).  Row sums and pole sums are then one matrix product each."""
    membership = torch.zeros(int(poles.shape[0]), int(rows.shape[0]), dtype=torch.float32, device=rows.device)
    membership[rows, torch.arange(int(rows.shape[0]), device=rows.device)] = 1.0
    by_pole = torch.stack([poles == 1, poles == -1]).to(torch.float64)
    return membership, by_pole


def train_sums(
    acts: torch.Tensor,
    membership: torch.Tensor,
    by_pole: torch.Tensor,
    counts: torch.Tensor,
    shift: torch.Tensor | None,
    second: bool,
    means: bool,
    into: torch.Tensor | None = None,
) -> list[torch.Tensor | None]:
    """One layer's train-split sums over a batch: ``[pole_sums, shift, moment, row_means]``.

    ``acts`` ``[n, H]`` (any float dtype; summed in float32), ``membership`` and ``by_pole`` from
    :func:`batch_index`, ``counts`` ``[B]`` counted tokens per row.

    - ``pole_sums`` ``[2, H]`` float64: token sums of the positive and of the negative pole;
    - ``shift`` ``[H]`` float32: the given one, or this batch's token mean when ``shift`` is None (the first
      batch fixes it for all later ones); None unless ``second``;
    - ``moment`` ``[H, H]`` float32: the sum of ``(x - shift)(x - shift)^T`` over the tokens (``second``);
    - ``row_means`` ``[B, H]`` float64: each row's mean activation (``means``, for ``pca``).

    With ``into`` (a float64 ``[H, H]`` accumulator, in a local run) the moment is added there in place and
    None is returned for it, so no batch keeps every layer's moment at once.
    """
    x = acts.to(torch.float32)
    device = x.device
    per_row = torch.mm(membership.to(device), x).to(torch.float64)  # [B, H] sums over each row's tokens
    pole_sums = torch.mm(by_pole.to(device), per_row)
    moment = None
    if second:
        shift = x.mean(0) if shift is None else shift.to(device=device, dtype=torch.float32)
        centered = x - shift
        moment = torch.mm(centered.mT, centered)
        if into is not None:
            into.add_(moment.to(into.device))
            moment = None
    else:
        shift = None
    row_means = per_row / counts.to(device=device, dtype=torch.float64)[:, None] if means else None
    return [pole_sums, shift, moment, row_means]


def project(acts: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Each counted token's scalar projection ``[n]`` (float64) on the unit ``direction`` ``[H]``."""
    return acts.to(torch.float64) @ direction.to(device=acts.device, dtype=torch.float64)
