"""Which bounded directions at one site are the same, which are linearly dependent, which are solved together.

The runtime solves every bound at a site jointly and exactly (``runtime.interventions``): the
least-L2 change of ``h`` that meets them all.  That problem is well posed, and solvable to float32
precision, only when the distinct directions are linearly independent with some margin, so
:func:`dependence` is the compiler's acceptance test.  Everything here is pure numerics on the
statements' unit directions; ``resolve`` turns the answers into diagnostics.

- Two statements' directions are **the same** (or opposite) when ``‖u_i ∓ u_j‖ ≤ SAME``: the same
  vector up to float32 rounding.  Their bounds apply to one direction (the second's mirrored when
  opposite), so they can only contradict each other, which resolve checks.
- The distinct directions must be **independent**: the smallest eigenvalue of their Gram matrix
  ``G = U Uᵀ`` at least ``DEPENDENT``.  Below it, bounds on the nearly dependent combination
  need a change of size ``~ 1/√λ`` that float32 activations cannot carry exactly (and two nearly
  parallel directions with different bounds ask for exactly that); the set is refused.  At and
  above it the runtime's float64 solve on G's blocks meets every bound to float32 precision.
- Directions that are orthogonal to every other (``|cos| ≤ ORTHOGONAL``) are solved on their own;
  the rest form connected groups of non-orthogonal directions, each solved jointly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DEPENDENT", "ORTHOGONAL", "SAME", "Dependence", "components", "dependence", "distinct_directions"]

SAME = 1e-6  # ‖u_i ∓ u_j‖ at most this: one direction (float32 rounding of the same vector)
ORTHOGONAL = 1e-6  # |cos| at most this: solved separately (the coupling is below float32 precision)
DEPENDENT = 1e-6  # smallest Gram eigenvalue below this: linearly dependent, refused


@dataclass(frozen=True, slots=True)
class Dependence:
    """A refused direction set: the Gram matrix's smallest eigenvalue, the directions that carry
    its eigenvector (the nearly dependent combination), and their largest pairwise |cos|."""

    eigenvalue: float
    involved: tuple[int, ...]
    max_cos: float


def distinct_directions(directions: Sequence[torch.Tensor]) -> tuple[list[int], list[float], torch.Tensor]:
    """Map each statement's unit direction onto the distinct directions of a site.

    Returns, per statement, the column of its direction and its sign (+1, or −1 when it is the
    opposite of that column), and the distinct directions [K, H] (each as first named, float32).
    """
    u = torch.stack([d.to(torch.float32) for d in directions]).to(torch.float64).numpy()
    sq = (u * u).sum(1)
    dots = u @ u.T
    near_plus = sq[:, None] + sq[None, :] - 2.0 * dots <= SAME * SAME  # ‖u_i − u_j‖²
    near_minus = sq[:, None] + sq[None, :] + 2.0 * dots <= SAME * SAME  # ‖u_i + u_j‖²
    cols: list[int] = []
    signs: list[float] = []
    firsts: list[int] = []  # statement index of each distinct direction
    for i in range(len(u)):
        for col, j in enumerate(firsts):
            if near_plus[i, j] or near_minus[i, j]:
                cols.append(col)
                signs.append(1.0 if near_plus[i, j] else -1.0)
                break
        else:
            cols.append(len(firsts))
            signs.append(1.0)
            firsts.append(i)
    return cols, signs, torch.stack([directions[i].to(torch.float32) for i in firsts])


def dependence(directions: torch.Tensor) -> Dependence | None:
    """None when the distinct ``directions`` [K, H] are independent enough to solve exactly
    (smallest Gram eigenvalue ≥ DEPENDENT); otherwise what makes them dependent."""
    u = directions.to(torch.float64)
    if u.shape[0] < 2:
        return None
    gram = (u @ u.T).numpy()
    values, vectors = np.linalg.eigh(gram)
    if values[0] >= DEPENDENT:
        return None
    weight = np.abs(vectors[:, 0])
    involved = tuple(int(i) for i in np.nonzero(weight >= 0.05 * weight.max())[0])
    sub = np.abs(gram[np.ix_(involved, involved)] - np.eye(len(involved)) * np.diag(gram)[list(involved)])
    return Dependence(eigenvalue=float(values[0]), involved=involved, max_cos=float(sub.max()) if sub.size else 0.0)


def components(directions: torch.Tensor) -> list[list[int]]:
    """The groups solved jointly: connected components of "not orthogonal" (|cos| > ORTHOGONAL)
    over the distinct ``directions`` [K, H], each sorted, in order of their first member."""
    u = directions.to(torch.float64).numpy()
    linked = np.abs(u @ u.T) > ORTHOGONAL
    seen = np.zeros(len(u), dtype=bool)
    out: list[list[int]] = []
    for start in range(len(u)):
        if seen[start]:
            continue
        comp = np.zeros(len(u), dtype=bool)
        comp[start] = True
        frontier = comp.copy()
        while frontier.any():
            reach = linked[frontier].any(0) & ~comp
            comp |= reach
            frontier = reach
        seen |= comp
        out.append([int(i) for i in np.nonzero(comp)[0]])
    return out
