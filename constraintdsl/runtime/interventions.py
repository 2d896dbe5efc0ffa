"""The torch-only runtime that touches activations.

It interprets a compiled plan (plain dicts, lists, ints, floats and tensors) at each site of
the model.  It imports nothing but torch and the standard library's ``math``/``typing``,
because it travels to NDIF by value (``nnsight.register``) where this package is not
installed.

Semantics at one site (DESIGN §3), for every selected token of a ``[B, T, H]`` activation:

1. actions in file order: ``steer`` adds ``amount · u``; ``scale`` multiplies ``⟨u, h⟩`` by k;
2. then every bound ``lo_i ≤ ⟨u_i, h⟩ ≤ hi_i`` (clamp, pin, ablate) jointly: ``h`` moves to
   the closest point (least L2 change) that satisfies all bounds that apply to that token.

No selection ever includes a sequence's first real token (the attention sink; :func:`token_mask`).
An edit whose projections leave the dtype's range stops the run with :class:`NonFiniteActivation`.

The joint step is an exact small quadratic program.  The least-L2 change lies in the span of
the directions, ``Δ = Uᵀλ``; with ``G = U Uᵀ`` and ``p = U h`` the problem is to find λ with
``lo − p ≤ Gλ ≤ hi − p`` where each λ_i is 0 unless its bound is held (≥ 0 at a lower bound,
≤ 0 at an upper one).  :func:`prepare_group` picks how each group of non-orthogonal directions
is solved, and every method works on all tokens at once (no loop over tokens):

- one direction: the closed form ``h + (lo − p)₊ u − (p − hi)₊ u``;
- two to five well-conditioned directions (five: when at most 128 tokens move): the 3^k faces of
  the box, each a linear map precomputed at compile time, all evaluated for the tokens that
  violate a bound and the cheapest feasible one kept (benchmarks/joint.py measures the choice);
- anything else (up to MAX_JOINT directions): an active-set method (block principal pivoting
  with a least-index safeguard, finite) in float64 on the tokens that violate a bound, exact
  to float32 precision for every set the compiler accepts (Gram eigenvalues ≥ 1e-6).

Tokens within SLACK of every bound are never moved and keep their exact bits.

No ``from __future__ import annotations`` here: this module is pickled by value, and that
statement leaves a ``__future__`` object in its namespace that the server would have to import.
Every annotation below is valid at run time on Python 3.10+.
"""

import math
from typing import Any

import torch

__all__ = [
    "ALL",
    "FIRST",
    "GENERATED",
    "LAST",
    "PROMPT",
    "SINK",
    "TELEMETRY_FIELDS",
    "NonFiniteActivation",
    "apply_site",
    "gate_values",
    "prepare_group",
    "solve_bounds",
    "token_mask",
]

# token selection codes
ALL, PROMPT, GENERATED, LAST, FIRST = 0, 1, 2, 3, 4
SINK = 0  # position of every sequence's first real token (the attention sink), which no selection picks
STEER, SCALE = 0, 1
# per telemetry entry (statement × layer × site), accumulated over calls
TELEMETRY_FIELDS = (
    "selected",  # selected tokens seen
    "binding",  # tokens this statement moved
    "corr_sum",  # sum of |Δ⟨u, h⟩| (raw units) where binding
    "corr_max",
    "rel_sum",  # sum of ‖Δh‖ / ‖h‖ where binding
    "rel_max",
    "before_sum",  # sum of ⟨u, h⟩ before the site's edit, over selected tokens
    "after_sum",  # ... and after it
)
N_FIELDS = len(TELEMETRY_FIELDS)
_MAX_COLS = (3, 5)  # corr_max, rel_max: folded in by maximum, every other field by sum
MAX_JOINT = 1024  # bounded directions solved jointly in one group at one site
FACE_MAX = 5  # groups of 2..FACE_MAX directions may enumerate their 3^k faces when well conditioned ...
FACE_MIN_EIG = 0.05  # ... that is, when the Gram matrix's smallest eigenvalue is at least this;
FACE_ROWS = (0, 0, 1 << 62, 1 << 62, 1 << 62, 128)  # ... and at most this many tokens move (by k; measured)
SLACK = 1e-5  # a bound counts as met within SLACK · (1 + |⟨u, h⟩|); only tokens beyond it move
_TRIES = 3  # block pivots without progress before the least-index single pivot takes over
_BUDGET = 1 << 22  # float64 elements of active-set Gram blocks solved at once (32 MiB)


def prepare_group(directions: torch.Tensor, has_lo: list[bool], has_hi: list[bool]) -> dict[str, Any]:
    """Precompute one group of jointly solved directions: ``directions`` [k, H] unit rows; which of
    them can have a lower / upper bound.

    Returns the group dict the runtime reads; ``method`` says how :func:`solve_bounds` solves it:

    - ``"one"`` (k = 1): the closed form ``(lo − p)₊ u − (p − hi)₊ u``; ``u`` [1, H].
    - ``"faces"`` (2 ≤ k ≤ FACE_MAX with Gram eigenvalues ≥ FACE_MIN_EIG): every face of the box
      evaluated at once for the tokens that violate a bound.  ``minv`` [k, k] (G⁻¹), ``maps``
      [C, k, k] (a face's projection change is ``maps[c] @ z``, z the bounds it holds), ``act_lo``
      / ``act_hi`` [C, k] (which bounds face c holds at their lower / upper value); ``face_rows``:
      when more tokens than this move, the active-set method is faster and is used instead.
    - ``"active"`` (any other k up to MAX_JOINT): a batched active-set method on the dual, exact
      on every set whose Gram matrix is positive definite in float64.

    Every group has ``u`` [k, H] float32; all but ``"one"`` have ``gram`` [k, k] float64 (G).
    """
    u = directions.to(torch.float32).contiguous()
    k = u.shape[0]
    if k == 1:
        return {"method": "one", "u": u}
    gram = u.to(torch.float64) @ u.to(torch.float64).T
    if k > FACE_MAX or float(torch.linalg.eigvalsh(gram).min()) < FACE_MIN_EIG:
        return {"method": "active", "u": u, "gram": gram}
    minv = torch.linalg.inv(gram)
    maps, act_lo, act_hi = [], [], []
    for code in range(3**k):
        state = [(code // 3**i) % 3 for i in range(k)]  # 0 free, 1 at lower, 2 at upper
        if any((s == 1 and not has_lo[i]) or (s == 2 and not has_hi[i]) for i, s in enumerate(state)):
            continue
        active = [i for i, s in enumerate(state) if s]
        free = [i for i, s in enumerate(state) if not s]
        r = torch.zeros(k, k, dtype=torch.float64)
        for i in active:
            r[i, i] = 1.0
        if active and free:
            m_ff = minv[free][:, free]
            m_fa = minv[free][:, active]
            r[torch.tensor(free)[:, None], torch.tensor(active)[None, :]] = -torch.linalg.solve(m_ff, m_fa)
        maps.append(r)
        act_lo.append([s == 1 for s in state])
        act_hi.append([s == 2 for s in state])
    return {
        "method": "faces",
        "u": u,
        "gram": gram,
        "face_rows": FACE_ROWS[k],
        "minv": minv.to(torch.float32),
        "maps": torch.stack(maps).to(torch.float32),
        "act_lo": torch.tensor(act_lo, dtype=torch.bool),
        "act_hi": torch.tensor(act_hi, dtype=torch.bool),
    }


def solve_bounds(
    h: torch.Tensor, group: dict[str, Any], lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-L2 change of ``h`` [N, H] (float32) with ``lo ≤ ⟨u_i, h⟩ ≤ hi`` for the group.

    ``lo``/``hi`` are [N, k] per token (±inf where a side is unbounded at that token; lo ≤ hi).
    Tokens within SLACK of every bound are left alone.  Returns ``delta`` [N, H] and which bounds
    the solution holds, ``at_lo`` / ``at_hi`` [N, k] (all False on tokens that do not move).
    """
    _, _, solved = _solve(h, group, lo, hi)
    if solved is None:
        none = torch.zeros(lo.shape, dtype=torch.bool, device=h.device)
        return torch.zeros_like(h), none, none.clone()
    return solved


Solved = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # delta [N, H], at_lo [N, k], at_hi [N, k]
# statements, their selection [N, 1 or k], projections before and after their edit [N, 1 or k]
Check = tuple[list[dict[str, Any]], torch.Tensor, torch.Tensor, torch.Tensor]


def _solve(
    h: torch.Tensor, group: dict[str, Any], lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, Solved | None]:
    """:func:`solve_bounds`, also returning the projections ``p`` [N, k] and which bounds each
    token violated by more than SLACK, ``out`` [N, k]; the solution is None when no token violated
    any (the faces and active methods find that first and stop there)."""
    u = group["u"]
    p = h @ u.T  # [N, k]
    tol = SLACK * (1.0 + p.abs())
    below, above = p < lo - tol, p > hi + tol
    if group.get("method") == "one":
        y = torch.where(below, lo - p, torch.where(above, hi - p, 0.0))
        return p, below | above, (y * u, below, above)
    out = below | above
    rows = out.any(1).nonzero().squeeze(1)
    if rows.numel() == 0:
        return p, out, None
    if group.get("method") == "active" or rows.numel() > group.get("face_rows", 1 << 62):
        d, d_lo, d_hi = _solve_active(h[rows], group, lo[rows], hi[rows], below[rows], above[rows])
    else:
        d, d_lo, d_hi = _solve_faces(p[rows], group, lo[rows], hi[rows])
    delta = torch.zeros_like(h)
    at_lo = torch.zeros_like(out)
    at_hi = torch.zeros_like(out)
    delta[rows], at_lo[rows], at_hi[rows] = d, d_lo, d_hi
    return p, out, (delta, at_lo, at_hi)


def _solve_faces(
    p: torch.Tensor, group: dict[str, Any], lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every face of the box for every token at once; the cheapest feasible one wins."""
    a, b = lo - p, hi - p
    act_lo, act_hi = group["act_lo"], group["act_hi"]  # [C, k]
    z = torch.where(act_lo[None], torch.nan_to_num(a, neginf=0.0)[:, None, :], 0.0)
    z = z + torch.where(act_hi[None], torch.nan_to_num(b, posinf=0.0)[:, None, :], 0.0)  # [N, C, k]
    y = torch.einsum("cij,ncj->nci", group["maps"], z)  # [N, C, k]
    tol = SLACK * (1.0 + p.abs())[:, None, :]
    feasible = ((y >= a[:, None, :] - tol) & (y <= b[:, None, :] + tol)).all(-1)
    # a face may only hold bounds that exist at this token
    usable = ~((act_lo[None] & ~torch.isfinite(a)[:, None, :]) | (act_hi[None] & ~torch.isfinite(b)[:, None, :])).any(
        -1
    )
    cost = torch.einsum("nci,ij,ncj->nc", y, group["minv"], y)
    cost = torch.where(feasible & usable, cost, torch.full_like(cost, math.inf))
    best = cost.argmin(dim=1)  # [N]
    y_best = y[torch.arange(y.shape[0], device=y.device), best]
    return (y_best @ group["minv"]) @ group["u"], act_lo[best], act_hi[best]


def _solve_active(
    h: torch.Tensor,
    group: dict[str, Any],
    lo: torch.Tensor,
    hi: torch.Tensor,
    below: torch.Tensor,
    above: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The joint solve for any k, exact, on the tokens that violate a bound (in float64).

    With ``Δ = Uᵀλ`` (the least-norm change lies in the span of the directions) and ``y = Gλ`` the
    change of the projections, the optimality (KKT) conditions of the projection are, per bound i:
    free (λ_i = 0, a_i ≤ y_i ≤ b_i), held at its lower value (y_i = a_i, λ_i ≥ 0) or at its upper
    value (y_i = b_i, λ_i ≤ 0), where ``a = lo − p``, ``b = hi − p``.  A guess of the held set fixes
    λ by one solve with the held rows and columns of G; :func:`_pivot` corrects the guess until every
    condition holds.  Solving with G's blocks (never G⁻¹), in float64, keeps it exact down to the
    compiler's acceptance threshold on G's smallest eigenvalue.
    """
    work = torch.device("cpu") if h.device.type == "mps" else h.device  # MPS has no float64
    x = h.to(work, torch.float64)
    u64 = group["u"].to(work, torch.float64)
    p64 = x @ u64.T
    a = lo.to(work, torch.float64) - p64
    b = hi.to(work, torch.float64) - p64
    lam, held_lo, held_hi = _pivot(group["gram"].to(work), a, b, below.to(work), above.to(work))
    return (lam @ u64).to(h.device, torch.float32), held_lo.to(h.device), held_hi.to(h.device)


def _pivot(
    gram: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    held_lo: torch.Tensor,
    held_hi: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Block principal pivoting for ``a ≤ Gλ ≤ b`` in complementarity with λ (float64, [R, k]).

    Starts from the bounds the tokens violate (``held_lo`` / ``held_hi``), solves for λ on that held
    set, then moves every bound whose condition fails: a free bound its solution crosses becomes
    held, a held bound whose multiplier has the wrong sign becomes free.  That usually ends in one
    to three solves; a row that makes no progress for ``_TRIES`` rounds moves only its first failing
    bound (Murty's least-index rule) until it does, which terminates for a positive definite G
    (Júdice and Pires's safeguard).  Rows stop being solved as soon as they are exact.
    """
    rows, k = a.shape
    pinned = all_pinned = a == b  # a pin holds either way: its multiplier may have either sign
    scale = (
        1.0
        + torch.where(torch.isfinite(a), a.abs(), 0.0).amax(1)
        + torch.where(torch.isfinite(b), b.abs(), 0.0).amax(1)
    )
    lam_out = torch.zeros_like(a)
    lo_out = torch.zeros_like(held_lo)
    hi_out = torch.zeros_like(held_hi)
    live = torch.arange(rows, device=a.device)
    best = torch.full((rows,), k + 1, dtype=torch.long, device=a.device)
    stall = torch.zeros(rows, dtype=torch.long, device=a.device)
    for _ in range(100 + 20 * k):
        held = held_lo | held_hi
        z = torch.where(held_lo, a, torch.where(held_hi, b, torch.zeros_like(a)))
        lam = _held_solve(gram, held, z)
        y = lam @ gram
        # float64 rounding of y = Gλ grows with |λ| (large when G is near singular)
        tol = (1e-9 * scale + 1e-14 * k * lam.abs().amax(1))[:, None]
        up = ~held & (y < a - tol)
        down = ~held & (y > b + tol)
        free_lo = held_lo & ~pinned & (lam < -tol)
        free_hi = held_hi & ~pinned & (lam > tol)
        bad = up | down | free_lo | free_hi
        count = bad.sum(1)
        done = count == 0
        if bool(done.any()):
            fin = live[done]
            lam_out[fin], lo_out[fin], hi_out[fin] = lam[done], held_lo[done], held_hi[done]
            if bool(done.all()):
                # a pin that holds is at both of its bounds
                return lam_out, lo_out | (hi_out & all_pinned), hi_out | (lo_out & all_pinned)
            keep = ~done
            live, a, b, pinned, scale = live[keep], a[keep], b[keep], pinned[keep], scale[keep]
            held_lo, held_hi, bad, count = held_lo[keep], held_hi[keep], bad[keep], count[keep]
            up, down, free_lo, free_hi = up[keep], down[keep], free_lo[keep], free_hi[keep]
            best, stall = best[keep], stall[keep]
        better = count < best
        best = torch.where(better, count, best)
        stall = torch.where(better, torch.zeros_like(stall), stall + 1)
        first = bad & (bad.to(torch.int32).cumsum(1) == 1)
        flip = torch.where((stall > _TRIES)[:, None], first, bad)
        held_lo = (held_lo & ~(flip & free_lo)) | (flip & up)
        held_hi = (held_hi & ~(flip & free_hi)) | (flip & down)
    raise RuntimeError(f"constraintdsl: the joint bound solve did not converge ({k} directions)")


def _held_solve(gram: torch.Tensor, held: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """λ [R, k] with ``G[S, S] λ_S = z_S`` on each row's held set S and 0 elsewhere (float64).

    Each row's held columns are gathered to the front, padded with the identity to a common width
    and solved by a batched Cholesky.  Rows are bucketed by held-set size (widths 1, 2, 4, 8, …) so
    a few tokens that hold many bounds (an attention sink far outside every band) do not widen
    everyone's system, and go in blocks of at most ``_BUDGET`` matrix elements, so memory stays
    bounded for any k.
    """
    count = held.sum(1)
    lam = torch.zeros_like(z)
    top = int(count.max()) if z.shape[0] else 0
    if top == 0:
        return lam
    order = torch.argsort((~held).to(torch.uint8), dim=1, stable=True)[:, :top]  # held columns first
    bucket = torch.ceil(torch.log2(count.clamp(min=1).to(torch.float64))).to(torch.long)
    buckets = [int(b) for b in torch.unique(bucket[count > 0])]
    for b in buckets:
        rows = ((bucket == b) & (count > 0)).nonzero().squeeze(1) if len(buckets) > 1 else None
        m = min(1 << b, top)
        idx_all = order[:, :m] if rows is None else order[rows, :m]
        n_all = count if rows is None else count[rows]
        z_all = z if rows is None else z[rows]
        valid_all = torch.arange(m, device=z.device)[None, :] < n_all[:, None]
        eye = torch.eye(m, dtype=z.dtype, device=z.device)
        step = max(1, _BUDGET // (m * m))
        out = torch.zeros_like(z_all)
        for s in range(0, idx_all.shape[0], step):
            idx, ok = idx_all[s : s + step], valid_all[s : s + step]
            block = torch.where(ok[:, :, None] & ok[:, None, :], gram[idx[:, :, None], idx[:, None, :]], eye)
            rhs = torch.where(ok, z_all[s : s + step].gather(1, idx), 0.0)
            chol, info = torch.linalg.cholesky_ex(block)
            if bool((info != 0).any()):  # not positive definite in float64: LU instead
                sol = torch.linalg.solve(block, rhs)
            else:
                sol = torch.cholesky_solve(rhs[:, :, None], chol)[:, :, 0]
            out[s : s + step].scatter_(1, idx, torch.where(ok, sol, 0.0))
        if rows is None:
            return out
        lam[rows] = out
    return lam


def token_mask(
    kind: int, count: int, positions: torch.Tensor, prompt_len: torch.Tensor, total_len: torch.Tensor
) -> torch.Tensor:
    """Which tokens a selection picks, as bool [B, T].

    ``positions`` [B, T] is each token's index in its real (unpadded) sequence, -1 for padding;
    ``prompt_len`` and ``total_len`` [B] are real lengths of the prompt and of the sequence so far.

    The first real token of every sequence (position 0, the attention sink: a huge norm and an
    outlier projection on every direction) is never selected, by any selection: ``first N`` is the
    N tokens after it, and ``last N`` never reaches back to it.
    """
    real = positions > SINK
    if kind == PROMPT:
        return real & (positions < prompt_len[:, None])
    if kind == GENERATED:
        return real & (positions >= prompt_len[:, None])
    if kind == LAST:
        return real & (positions >= (total_len - count)[:, None])
    if kind == FIRST:
        return real & (positions <= SINK + count)
    return real


def gate_values(h: torch.Tensor, u: torch.Tensor, positions: torch.Tensor, prompt_len: torch.Tensor) -> torch.Tensor:
    """Mean raw projection on ``u`` over each row's prompt tokens but the first (the attention sink, which
    no selection includes); [B] float32, NaN for a row whose prompt has no other token (every comparison
    with NaN is false, so such a row passes no gate)."""
    proj = h.to(torch.float32) @ u.to(torch.float32)  # [B, T]
    take = (positions > SINK) & (positions < prompt_len[:, None])
    n = take.sum(dim=1)
    mean = torch.where(take, proj, torch.zeros_like(proj)).sum(dim=1) / n.clamp(min=1)
    return torch.where(n > 0, mean, torch.full_like(mean, math.nan))


def _fold(tele: torch.Tensor, entries: list[int], parts: list[list[torch.Tensor]]) -> None:
    """Add one site's telemetry for this call into ``tele``: one reduction over the tokens for all
    of the site's statements, then one fold for the sums and one per maximum.

    ``parts`` hold [sel, bind, corr, rel, before, after] blocks, each [E_i, N] (rel may be
    [1, N]), stacked in the order of ``entries``.
    """
    cols = [torch.cat(c) if len(c) > 1 else c[0] for c in zip(*parts, strict=True)]
    sel, bind, corr, rel, before, after = cols
    zero = torch.zeros((), dtype=torch.float32, device=tele.device)
    corr_b = torch.where(bind, corr.abs(), zero)
    rel_b = torch.where(bind, rel, zero)
    none = zero.expand(corr_b.shape)
    # in TELEMETRY_FIELDS order, the two maxima as zeros: they are folded in below
    fields = [sel.to(torch.float32), bind.to(torch.float32), corr_b, none, rel_b, none]
    sums = torch.stack([*fields, torch.where(sel, before, zero), torch.where(sel, after, zero)], dim=1).sum(-1)
    idx = torch.tensor(entries, dtype=torch.long, device=tele.device)
    tele.index_add_(0, idx, sums)
    if corr_b.shape[1]:
        peaks = torch.stack([corr_b, rel_b], dim=1).amax(-1)  # [E, 2]
        for j, col in enumerate(_MAX_COLS):
            tele[:, col].scatter_reduce_(0, idx, peaks[:, j], "amax")


def apply_site(
    h: torch.Tensor,
    site: dict[str, Any],
    positions: torch.Tensor,
    prompt_len: torch.Tensor,
    total_len: torch.Tensor,
    gates: dict[int, torch.Tensor],
    tele: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply one site's actions, then its bounds jointly, to ``h`` [B, T, H]; returns the new
    activation in ``h``'s dtype.  Tokens no statement changes keep their exact bits.

    ``site`` holds ``actions`` (dicts: kind, u, amount, tokens, count, gate, entry), ``dirs``
    [K, H] (the distinct bounded directions), ``bounds`` (dicts: dir, lo, hi, sign, tokens,
    count, gate, entry and optionally label — lo/hi in the frame of ``dirs[dir]``, sign ±1 the
    statement's own orientation) and ``groups`` (list of (direction indices, prepared group)).
    ``gates`` maps a gate id to a bool [B] row mask.  ``feasible`` (set by the compiler) says
    that no two bounds on one direction can contradict each other on a token; without it that is
    checked here.

    Telemetry (``tele``, rows by ``entry``) follows the binding rule: an action binds on the
    tokens it changes; a bound binds on a token it applies to when the token moves in its group's
    joint solve and either the bound was violated before the solve (by more than SLACK) or the
    solution holds it (the statement's own bound is the one the solution sits on).
    """
    B, T, H = h.shape
    x = h.to(torch.float32).reshape(B * T, H)
    # float32 holds float16/bfloat16 exactly, so rows no statement moves round-trip bit for bit;
    # only a wider dtype needs the explicit mask at the end
    exact = h.dtype in (torch.float32, torch.float16, torch.bfloat16)
    changed = None if exact else torch.zeros(B * T, dtype=torch.bool, device=h.device)
    norm = x.norm(dim=1).clamp(min=1e-12) if tele is not None else x[:, 0]  # only telemetry divides by it
    entries: list[int] = []
    parts: list[list[torch.Tensor]] = []

    masks: dict[tuple[int, int, int], torch.Tensor] = {}  # statements usually share selections

    def selected(op: dict[str, Any]) -> torch.Tensor:
        key = (op["tokens"], op["count"], op["gate"])
        m = masks.get(key)
        if m is None:
            m = token_mask(op["tokens"], op["count"], positions, prompt_len, total_len)
            if op["gate"] >= 0:
                m = m & gates[op["gate"]][:, None]
            m = masks[key] = m.reshape(B * T)
        return m

    # every edit's projections after it, on the tokens it selects, must stay within the dtype's range
    # (this also catches NaN: a comparison with NaN is false); one check, and one sync, per site
    limit = torch.finfo(h.dtype).max if h.dtype.is_floating_point else math.inf
    checks: list[Check] = []
    fine: list[torch.Tensor] = []

    for act in site["actions"]:
        u = act["u"]
        sel = selected(act)
        p = x @ u
        step = torch.full_like(p, act["amount"]) if act["kind"] == STEER else p * (act["amount"] - 1.0)
        step = torch.where(sel, step, torch.zeros_like(step))
        checks.append(([act], sel[:, None], p[:, None], (p + step)[:, None]))
        fine.append((torch.where(sel, p + step, torch.zeros_like(p)).abs() <= limit).all())
        new = x + step[:, None] * u[None, :]
        if tele is not None:
            entries.append(act["entry"])
            parts.append([t[None] for t in (sel, sel & (step != 0), step, step.abs() / norm, p, new @ u)])
        x = torch.where(sel[:, None], new, x)
        if changed is not None:
            changed = changed | (sel & (step != 0))

    members = site["bounds"]
    if members:
        x, moved = _apply_bounds(
            x, site, members, [selected(m) for m in members], norm, tele, entries, parts, (limit, checks, fine)
        )
        if changed is not None and moved is not None:
            changed = changed | moved

    if fine and not bool(fine[0] if len(fine) == 1 else torch.stack(fine).all()):
        raise _non_finite(site, checks, limit, h.dtype)
    if tele is not None and entries:
        _fold(tele, entries, parts)
    out = x.reshape(B, T, H).to(h.dtype)
    return out if changed is None else torch.where(changed.reshape(B, T, 1), out, h)


class NonFiniteActivation(FloatingPointError):
    """Activations left the range of the model's dtype (inf or NaN) at a site with statements.

    ``where`` is the blamed statement's ``file:line:col`` ("" when unknown); ``upstream`` is True when
    the activations were already out of range before this site's edits (an earlier edit, or the model
    itself, put them there), False when this site's edit did it."""

    def __init__(self, message: str, where: str = "", upstream: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.upstream = upstream

    def __reduce__(self) -> Any:
        return (type(self), (self.message, self.where, self.upstream))


def _non_finite(
    site: dict[str, Any],
    checks: list[Check],
    limit: float,
    dtype: torch.dtype,
) -> NonFiniteActivation:
    """The error for a site whose check failed: which statement, and whether its input was already bad."""
    at = f"layer {site.get('layer', '?')} ({site.get('path', '?')})"
    name = str(dtype).replace("torch.", "")
    for ops, sel, before, after in checks:
        bad_in = (sel & ~(before.abs() <= limit)).any(dim=0)  # [columns]
        bad_out = (sel & ~(after.abs() <= limit)).any(dim=0)
        if bool(bad_in.any()):
            return NonFiniteActivation(
                f"activations reaching {at} were already inf/NaN or beyond {name}'s range before its edits",
                "",
                True,
            )
        if bool(bad_out.any()):
            op = next((o for o in ops if bool(bad_out[int(o.get("dir", 0))])), ops[0])
            return NonFiniteActivation(
                f"the edit of `{_label(op)}` at {at} pushed activations to inf/NaN or beyond {name}'s range",
                str(op.get("where", "")),
                False,
            )
    return NonFiniteActivation(f"activations at {at} left {name}'s range", "", True)


def _apply_bounds(
    x: torch.Tensor,
    site: dict[str, Any],
    members: list[dict[str, Any]],
    sels: list[torch.Tensor],
    norm: torch.Tensor,
    tele: torch.Tensor | None,
    entries: list[int],
    parts: list[list[torch.Tensor]],
    guard: tuple[float, list[Check], list[torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The joint bound step of :func:`apply_site` on ``x`` [N, H]: returns the new ``x`` and which
    rows moved (None: none did), appends the bounds' telemetry to ``entries`` / ``parts``, and the
    range check of the bounded projections to ``guard`` (limit, checks, fine)."""
    dirs = site["dirs"]  # [K, H]; each bound statement is a member on one direction
    n, k = x.shape[0], dirs.shape[0]
    dev = x.device
    m_lo = torch.tensor([float(m["lo"]) for m in members], dtype=torch.float32, device=dev)
    m_hi = torch.tensor([float(m["hi"]) for m in members], dtype=torch.float32, device=dev)
    shared = all(sel is sels[0] for sel in sels)  # one token selection for all (the usual case)
    applies = sels[0][None, :].expand(len(members), n) if shared else torch.stack(sels)  # [M, N]
    simple = len(members) == k and all(m["dir"] == i for i, m in enumerate(members))  # one statement per direction
    cols = None if simple else torch.tensor([m["dir"] for m in members], dtype=torch.long, device=dev)
    if cols is None:
        lo = torch.where(applies.T, m_lo, -math.inf)  # [N, K]
        hi = torch.where(applies.T, m_hi, math.inf)
    else:  # the tightest of the statements that apply to each token, per direction
        index = cols[None, :].expand(n, -1)
        lo = torch.full((n, k), -math.inf, device=dev)
        hi = torch.full((n, k), math.inf, device=dev)
        lo = lo.scatter_reduce_(1, index, torch.where(applies.T, m_lo, -math.inf), "amax")
        hi = hi.scatter_reduce_(1, index, torch.where(applies.T, m_hi, math.inf), "amin")
    if not site.get("feasible") and bool((lo > hi).any()):
        raise ValueError(_infeasible(site, members, lo > hi))

    groups = site["groups"]
    moved_col: torch.Tensor | None = None  # per direction, whether its group moved the token
    solved: Solved | None = None
    if len(groups) == 1 and list(groups[0][0]) == list(range(k)):
        p, out, solved = _solve_named(x, groups[0][1], lo, hi, site, members, groups[0][0])
    else:
        p = torch.empty(n, k, device=dev)
        out = torch.zeros(n, k, dtype=torch.bool, device=dev)
        for idx_list, group in groups:
            idx = torch.tensor(idx_list, dtype=torch.long, device=dev)
            g_p, g_out, g_solved = _solve_named(x, group, lo[:, idx], hi[:, idx], site, members, idx_list)
            p[:, idx], out[:, idx] = g_p, g_out
            if g_solved is not None:
                g_delta, g_lo, g_hi = g_solved
                if solved is None:
                    solved = (torch.zeros_like(x), torch.zeros_like(out), torch.zeros_like(out))
                solved[1][:, idx], solved[2][:, idx] = g_lo, g_hi
                solved = (solved[0] + g_delta, solved[1], solved[2])
                if tele is not None:
                    moved_col = torch.zeros_like(out) if moved_col is None else moved_col
                    moved_col[:, idx] = (g_lo | g_hi).any(1, keepdim=True)
    moved = None
    after = p
    if solved is not None:
        delta, at_lo, at_hi = solved
        moved = (at_lo | at_hi).any(1)
        new = x + delta
        after = torch.where(moved[:, None], new @ dirs.T, p)
        x = torch.where(moved[:, None], new, x)
    limit, checks, fine = guard
    any_sel = applies.any(0)[:, None]
    checks.append((members, any_sel, p, after))
    fine.append((torch.where(any_sel, after, torch.zeros_like(after)).abs() <= limit).all())

    if tele is not None:
        # binding: violated before the solve, or held by its solution (at this statement's own bound)
        if cols is None:
            bind = out if solved is None else out | solved[1] | solved[2]  # [N, K]: each direction's own bound
            bind, before, after = bind.T, p.T, after.T
        else:
            before, after = p.T[cols], after.T[cols]  # [M, N]
            tol = SLACK * (1.0 + before.abs())
            bind = applies & ((before < m_lo[:, None] - tol) | (before > m_hi[:, None] + tol))
            if solved is not None and moved is not None:
                _, at_lo, at_hi = solved
                pinned = lo == hi  # a held pin sits on both of its bounds
                hold_lo = (at_lo | (at_hi & pinned)).T[cols] & (m_lo[:, None] >= lo.T[cols])
                hold_hi = (at_hi | (at_lo & pinned)).T[cols] & (m_hi[:, None] <= hi.T[cols])
                moves = moved[None, :] if moved_col is None else moved_col.T[cols]
                bind = bind | (applies & moves & (hold_lo | hold_hi))
        if solved is None:
            rel = torch.zeros_like(norm)[None, :]
        else:
            rel = (solved[0].norm(dim=1) / norm)[None, :].expand(len(members), -1)
        if any(m["sign"] != 1 for m in members):  # before/after in each statement's own orientation
            sign = torch.tensor([float(m["sign"]) for m in members], dtype=torch.float32, device=dev)[:, None]
            before, after = sign * before, sign * after
        entries.extend(m["entry"] for m in members)
        parts.append([applies, bind, after - before, rel, before, after])
    return x, moved


def _solve_named(
    x: torch.Tensor,
    group: dict[str, Any],
    lo: torch.Tensor,
    hi: torch.Tensor,
    site: dict[str, Any],
    members: list[dict[str, Any]],
    idx_list: list[int],
) -> tuple[torch.Tensor, torch.Tensor, Solved | None]:
    """:func:`_solve`, naming the group's statements if it fails."""
    try:
        return _solve(x, group, lo, hi)
    except RuntimeError as exc:
        if "did not converge" not in str(exc):
            raise
        names = [_label(m) for m in members if m["dir"] in idx_list]
        raise RuntimeError(
            f"constraintdsl: the joint bound solve at {site.get('path', 'this site')} did not converge "
            f"for {', '.join(names)}; please report this with the spec"
        ) from exc


def _label(op: dict[str, Any]) -> str:
    """How messages name a statement: its label from the compiler, else its entry number."""
    return str(op.get("label") or f"statement #{op.get('entry', '?')}")


def _infeasible(site: dict[str, Any], members: list[dict[str, Any]], empty: torch.Tensor) -> str:
    """Name the statements whose bounds on one direction leave nothing on some token."""
    col = int(empty.any(0).nonzero()[0, 0])
    names = [_label(m) for m in members if m["dir"] == col]
    return (
        f"constraintdsl: infeasible bounds at {site.get('path', 'this site')}: {', '.join(names)} "
        "leave no value on some tokens (a lower bound above an upper bound on the same direction)"
    )


# ---------------------------------------------------------------------------------------------
# Trace side: walking a plan inside an nnsight trace (or any object with the same module tree).
#
# A plan payload is ``{"sites": [...], "n_entries": int, "n_gates": int}``; each site dict holds
# ``path`` (dotted, from the model root to the module whose ``.output`` is the site), the
# ``apply_site`` fields and ``gate_reads`` (read before the site's own edits, on the prefill).
# ``state`` carries what one run shares across its forward calls: the gate masks and prompt
# lengths fixed at the prefill, the call counter and the telemetry tensor.

__all__ += ["GATE_CMPS", "SCALE", "STEER", "intervene", "intervene_steps", "new_state", "positions_from_mask"]

GATE_CMPS = (">=", "<=", ">", "<")


def new_state(
    payload: dict[str, Any], device: torch.device | str | None = None, *, telemetry: bool = True
) -> dict[str, Any]:
    """Fresh per-run state for ``payload``: telemetry ``tele`` [n_entries, len(TELEMETRY_FIELDS)]
    float32 zeros on ``device`` (None with ``telemetry=False``, which skips recording: about half
    the cost of a site), no gates, no prompt lengths yet, no calls.  Set ``given_prompt_len`` ([B]
    real prompt lengths) before a teacher-forced pass to treat each row's later tokens as generated.

    ``tele`` is accumulated in place, so a reference saved before the run sees every step.  Give
    the model's device when it is known; otherwise the tensor follows the activations' device at
    the first call (its storage moves, the object stays the same).
    """
    rows = int(payload.get("n_entries", 0))
    return {
        "tele": torch.zeros(rows, N_FIELDS, dtype=torch.float32, device=device) if telemetry else None,
        "gates": {},
        "prompt_len": None,
        "calls": 0,
        "generating": False,
        "waiting": False,
        "cache": {},
        "given_prompt_len": None,
        "last_edit": None,
    }


def positions_from_mask(mask: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the last ``width`` columns of a ``[B, S]`` attention mask (the tokens of this
    forward call; earlier columns are the KV cache) and the real length so far.

    Returns ``positions`` [B, width] (each token's index among its row's real tokens, -1 for
    padding) and ``total_len`` [B] (real tokens up to and including this call).
    """
    real = mask.to(torch.long) != 0
    counted = real.to(torch.long).cumsum(dim=-1) - 1
    positions = torch.where(real, counted, torch.full_like(counted, -1))[:, -width:]
    return positions, real.sum(dim=-1)


def _walk(root: Any, path: str) -> Any:
    node = root
    for part in path.split("."):
        node = getattr(node, part)  # ModuleList entries are attributes named "0", "1", ... (Envoys alike)
    return node


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    return value


def _site_device(site: dict[str, Any]) -> Any:
    """The device of a site's tensors (all of a compiled site's tensors share one), or None."""
    dirs = site.get("dirs")
    if isinstance(dirs, torch.Tensor) and dirs.numel():
        return dirs.device
    for op in (*site.get("actions", ()), *site.get("gate_reads", ())):
        return op["u"].device
    return None


def _call_inputs(model: Any) -> tuple[torch.Tensor | None, int, int, int, bool]:
    """The root call's attention mask (or None), batch size, token count, KV-cache length (read now:
    the layers extend the cache as they run) and whether the call carries a cache."""
    args, kwargs = model.inputs
    ids = kwargs.get("input_ids")
    if ids is None:
        ids = kwargs.get("inputs_embeds")
    if ids is None and args:
        ids = args[0]
    if not isinstance(ids, torch.Tensor):
        raise TypeError("constraintdsl: the model call has no input_ids or inputs_embeds to count tokens from")
    if ids.dim() == 1:
        ids = ids[None]
    mask = kwargs.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        mask = None
    cache = kwargs.get("past_key_values")
    past = 0
    if mask is None:
        start = kwargs.get("cache_position")
        length = getattr(cache, "get_seq_length", None)
        if isinstance(start, torch.Tensor) and start.numel():
            past = int(start.reshape(-1)[0])
        elif callable(length):
            past = int(length())
    return mask, int(ids.shape[0]), int(ids.shape[1]), past, cache is not None


def _compare(values: torch.Tensor, cmp: str, threshold: float) -> torch.Tensor:
    if cmp == ">=":
        return values >= threshold
    if cmp == "<=":
        return values <= threshold
    if cmp == ">":
        return values > threshold
    if cmp == "<":
        return values < threshold
    raise ValueError(f"constraintdsl: unknown gate comparison {cmp!r}; expected one of {GATE_CMPS}")


def _replace_first(output: Any, value: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (value, *output[1:])
    if isinstance(output, list):
        return [value, *output[1:]]
    return value


_MAX_FIELDS = [TELEMETRY_FIELDS.index("corr_max"), TELEMETRY_FIELDS.index("rel_max")]
_SUM_FIELDS = [i for i in range(N_FIELDS) if i not in _MAX_FIELDS]


def _merge_telemetry(tele: torch.Tensor, part: torch.Tensor) -> None:
    tele[:, _SUM_FIELDS] += part[:, _SUM_FIELDS]
    tele[:, _MAX_FIELDS] = torch.maximum(tele[:, _MAX_FIELDS], part[:, _MAX_FIELDS])


def _blame(exc: NonFiniteActivation, state: dict[str, Any]) -> NonFiniteActivation:
    """An out-of-range input names the last edit before it in this run (or the model, when none)."""
    if not exc.upstream:
        return exc
    last = state.get("last_edit")
    if last is None:
        return NonFiniteActivation(
            f"{exc.message}, and no edit of this run came before them (the model, or another intervention, made them)",
            "",
            True,
        )
    where, label, layer = last
    return NonFiniteActivation(f"{exc.message}, after the edit of `{label}` at layer {layer}", where, True)


def intervene(model: Any, payload: dict[str, Any], state: dict[str, Any]) -> None:
    """Apply ``payload`` to one forward call of ``model`` inside a trace.

    ``model`` is the root of the module tree (an nnsight model, or anything whose attribute paths
    and ``.inputs`` / ``.output`` behave like one).  Reads the root call's inputs for the attention
    mask (nnsight left-pads), then every site in forward order: gate reads on the prefill, then
    ``apply_site``, and the site's output is replaced by the result (tuple outputs keep their other
    members).  Call it once per forward call, first in its block: it reads the root's inputs, which
    come before every other module of that call.
    """
    state["waiting"] = True
    mask, batch, width, past, cached = _call_inputs(model)
    state["waiting"] = False
    if state["calls"] == 0:
        state["generating"] = cached
    full = torch.ones(batch, past + width, dtype=torch.long) if mask is None else mask
    positions, total_len = positions_from_mask(full, width)
    prefill = state["prompt_len"] is None
    if prefill:
        # a teacher-forced pass may say where each row's prompt ends (the rest counts as generated)
        given = state.get("given_prompt_len")
        state["prompt_len"] = total_len if given is None else torch.minimum(given.to(total_len.device), total_len)
    prompt_len: torch.Tensor = state["prompt_len"]
    # per device: (positions, prompt_len, total_len, gates), for models spread over several devices
    local_rows: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]] = {}
    for index, site in enumerate(payload["sites"]):
        envoy = _walk(model, site["path"])
        output = envoy.output
        h = output[0] if isinstance(output, (tuple, list)) else output
        device = h.device
        name = str(device)
        if name not in local_rows:
            if not local_rows and state["tele"] is not None and state["tele"].device != device:
                state["tele"].data = state["tele"].data.to(device)  # same object: saved references see updates
            local_rows[name] = (positions.to(device), prompt_len.to(device), total_len.to(device), {})
        pos, plen, tlen, gates = local_rows[name]
        key = (index, name)
        local = state["cache"].get(key)
        if local is None:
            # a site already on this device is used as it is; copying walks every tensor of it
            local = site if _site_device(site) in (None, device) else _to_device(site, device)
            state["cache"][key] = local
        if prefill:
            for read in local.get("gate_reads", ()):
                values = gate_values(h, read["u"], pos, plen)
                state["gates"][read["gate"]] = _compare(values, read["cmp"], float(read["threshold"]))
        if local.get("actions") or local.get("bounds"):
            missing = {op["gate"] for op in (*local.get("actions", ()), *local.get("bounds", ()))} - {-1}
            missing -= state["gates"].keys()
            if missing:
                raise ValueError(
                    f"constraintdsl: site {site['path']} uses gate(s) {sorted(missing)} before they are read"
                )
            for gate, rows in state["gates"].items():
                if gate not in gates or gates[gate].device != device:
                    gates[gate] = rows.to(device)
            tele = state["tele"]
            try:
                if tele is None or tele.device == device:
                    new = apply_site(h, local, pos, plen, tlen, gates, tele)
                else:  # a model spread over devices: count here, fold into the run's tensor
                    part = torch.zeros_like(tele, device=device)
                    new = apply_site(h, local, pos, plen, tlen, gates, part)
                    _merge_telemetry(tele, part.to(tele.device))
            except NonFiniteActivation as exc:
                raise _blame(exc, state) from None
            envoy.output = _replace_first(output, new)
            ops = [*local.get("actions", ()), *local.get("bounds", ())]
            state["last_edit"] = (str(ops[-1].get("where", "")), _label(ops[-1]), site.get("layer", "?"))
    state["calls"] += 1


def intervene_steps(model: Any, payload: dict[str, Any], state: dict[str, Any], steps: Any) -> None:
    """Run :func:`intervene` once per step of ``steps`` (``tracer.all()``, ``tracer.iter[a:b]``).

    When the run ends before the loop does (generation stopped, or a plain trace has only one
    forward call), the loop ends quietly and the code after it still runs: nnsight ends a loop
    that outruns the run by throwing ``OutOfOrderError`` into the step still waiting for the
    root's inputs, which is caught here.  Code after the loop can save values but can no longer
    read the model.  Any other error, or one before the first call, propagates.
    """
    try:
        for _ in steps:
            intervene(model, payload, state)
    except Exception as exc:
        # Matched by name: this module may not import nnsight (it travels to NDIF by value).
        if not (type(exc).__name__ == "OutOfOrderError" and state["waiting"] and state["calls"] > 0):
            raise
        state["waiting"] = False
