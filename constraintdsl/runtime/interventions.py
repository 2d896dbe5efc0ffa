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

The joint step is an exact small quadratic program.  Writing ``y = U Δ`` for the change of the
projections, the least-norm ``Δ`` with that ``y`` is ``Uᵀ G⁻¹ y`` (``G = U Uᵀ``), so the problem
is ``min yᵀ G⁻¹ y`` over the box ``lo − p ≤ y ≤ hi − p``.  Its solution has some bounds active
and the rest free; for k directions there are at most 3^k such faces, and each face's optimum
is a fixed linear map of the active bounds, precomputed at compile time.  At run time every
face is evaluated for all tokens at once and the cheapest feasible one wins — no loop over
tokens, exact up to float32 rounding.  Mutually orthogonal directions form separate groups, so
one-direction groups reduce to the closed form ``h + (lo − p)₊ u − (p − hi)₊ u``.

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
MAX_JOINT = 6  # directions solved jointly in one group (3**6 faces)


def prepare_group(directions: torch.Tensor, has_lo: list[bool], has_hi: list[bool]) -> dict[str, Any]:
    """Precompute one group's faces: ``directions`` [k, H] unit rows; which of them can have a
    lower / upper bound.

    Returns the group dict the runtime reads: ``u`` [k, H], ``minv`` [k, k] (G⁻¹), ``maps``
    [C, k, k] (a face's projection change is ``maps[c] @ z``, z the bounds it holds),
    ``act_lo`` / ``act_hi`` [C, k] (which bounds face c holds at their lower / upper value).
    """
    u = directions.to(torch.float64)
    k = u.shape[0]
    minv = torch.linalg.inv(u @ u.T)
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
        "u": directions.to(torch.float32).contiguous(),
        "minv": minv.to(torch.float32),
        "maps": torch.stack(maps).to(torch.float32),
        "act_lo": torch.tensor(act_lo, dtype=torch.bool),
        "act_hi": torch.tensor(act_hi, dtype=torch.bool),
    }


def solve_bounds(
    h: torch.Tensor, group: dict[str, Any], lo: torch.Tensor, hi: torch.Tensor, p: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-L2 change of ``h`` [N, H] (float32) with ``lo ≤ ⟨u_i, h⟩ ≤ hi`` for the group.

    ``lo``/``hi`` are [N, k] per token (±inf where a side is unbounded at that token); ``p`` [N, k]
    the projections ``h @ u.T`` when the caller has them already.  Returns ``delta`` [N, H], the
    change of each projection ``y`` [N, k], and ``active`` [N, k] (the bounds held by the solution;
    all False where ``h`` already satisfies every bound).
    """
    u = group["u"]
    if p is None:
        p = h @ u.T  # [N, k]
    a, b = lo - p, hi - p
    act_lo, act_hi = group["act_lo"], group["act_hi"]  # [C, k]
    z = torch.where(act_lo[None], torch.nan_to_num(a, neginf=0.0)[:, None, :], 0.0)
    z = z + torch.where(act_hi[None], torch.nan_to_num(b, posinf=0.0)[:, None, :], 0.0)  # [N, C, k]
    y = torch.einsum("cij,ncj->nci", group["maps"], z)  # [N, C, k]
    tol = 1e-5 * (1.0 + p.abs())[:, None, :]
    feasible = ((y >= a[:, None, :] - tol) & (y <= b[:, None, :] + tol)).all(-1)
    # a face may only hold bounds that exist at this token
    usable = ~((act_lo[None] & ~torch.isfinite(a)[:, None, :]) | (act_hi[None] & ~torch.isfinite(b)[:, None, :])).any(
        -1
    )
    cost = torch.einsum("nci,ij,ncj->nc", y, group["minv"], y)
    cost = torch.where(feasible & usable, cost, torch.full_like(cost, math.inf))
    best = cost.argmin(dim=1)  # [N]; face 0 (all free, y = 0) wins ties, so satisfied tokens stay put
    y_best = y[torch.arange(y.shape[0], device=y.device), best]
    active = (act_lo | act_hi)[best]
    delta = (y_best @ group["minv"]) @ u
    return delta, y_best, active


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


def _record(
    tele: torch.Tensor,
    entry: int,
    sel: torch.Tensor,
    bind: torch.Tensor,
    corr: torch.Tensor,
    rel: torch.Tensor,
    before: torch.Tensor,
    after: torch.Tensor,
) -> None:
    """Accumulate one statement's telemetry for this call into row ``entry`` of ``tele``."""
    zero = torch.zeros((), dtype=torch.float32, device=tele.device)
    corr_b = torch.where(bind, corr.abs(), zero)
    rel_b = torch.where(bind, rel, zero)
    row = torch.stack(
        [
            sel.sum().to(torch.float32),
            bind.sum().to(torch.float32),
            corr_b.sum(),
            corr_b.max() if corr_b.numel() else zero,
            rel_b.sum(),
            rel_b.max() if rel_b.numel() else zero,
            torch.where(sel, before, zero).sum(),
            torch.where(sel, after, zero).sum(),
        ]
    )
    old = tele[entry]
    tele[entry] = torch.stack(
        [
            old[0] + row[0],
            old[1] + row[1],
            old[2] + row[2],
            torch.maximum(old[3], row[3]),
            old[4] + row[4],
            torch.maximum(old[5], row[5]),
            old[6] + row[6],
            old[7] + row[7],
        ]
    )


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
    count, gate, entry — lo/hi in the frame of ``dirs[dir]``, sign ±1 the statement's own
    orientation) and ``groups`` (list of (direction indices, prepared group)).  ``gates`` maps
    a gate id to a bool [B] row mask.
    """
    B, T, H = h.shape
    x = h.to(torch.float32).reshape(B * T, H)
    # float32 holds float16/bfloat16 exactly, so rows no statement moves round-trip bit for bit;
    # only a wider dtype needs the explicit mask at the end
    exact = h.dtype in (torch.float32, torch.float16, torch.bfloat16)
    changed = None if exact else torch.zeros(B * T, dtype=torch.bool, device=h.device)
    norm = x.norm(dim=1).clamp(min=1e-12) if tele is not None else x[:, 0]  # only telemetry divides by it

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
    checks: list[tuple[list[dict[str, Any]], torch.Tensor, torch.Tensor, torch.Tensor]] = []
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
            _record(tele, act["entry"], sel, sel & (step != 0), step, step.abs() / norm, p, new @ u)
        x = torch.where(sel[:, None], new, x)
        if changed is not None:
            changed = changed | (sel & (step != 0))

    members = site["bounds"]
    if members:
        dirs = site["dirs"]  # [K, H]; each bound statement is a member on one direction
        K = dirs.shape[0]
        lo = torch.full((x.shape[0], K), -math.inf, device=x.device)
        hi = torch.full((x.shape[0], K), math.inf, device=x.device)
        applies = []
        for m in members:
            sel = selected(m)
            applies.append(sel)
            col = m["dir"]
            lo[:, col] = torch.where(sel, lo[:, col].clamp(min=m["lo"]), lo[:, col])
            hi[:, col] = torch.where(sel, hi[:, col].clamp(max=m["hi"]), hi[:, col])
        delta_total = torch.zeros_like(x)
        active_all = torch.zeros(x.shape[0], K, dtype=torch.bool, device=x.device)
        change_all = torch.zeros(x.shape[0], K, device=x.device)
        before = x @ dirs.T  # [N, K]: every bounded projection, computed once
        for idx_list, group in site["groups"]:
            idx = torch.tensor(idx_list, dtype=torch.long, device=x.device)
            delta, y, active = solve_bounds(x, group, lo[:, idx], hi[:, idx], before[:, idx])
            delta_total = delta_total + delta
            active_all[:, idx] = active
            change_all[:, idx] = y
        moved = active_all.any(dim=1)
        new = x + delta_total
        any_sel = torch.stack(applies).any(dim=0)[:, None]
        checks.append((members, any_sel, before, before + change_all))
        fine.append((torch.where(any_sel, before + change_all, torch.zeros_like(before)).abs() <= limit).all())
        if tele is not None:
            rel = delta_total.norm(dim=1) / norm
            after = torch.where(moved[:, None], new @ dirs.T, before)
            for m, sel in zip(members, applies, strict=True):
                col = m["dir"]
                tol = 1e-4 * (1.0 + before[:, col].abs())
                violated = (before[:, col] < m["lo"] - tol) | (before[:, col] > m["hi"] + tol)
                held = ((after[:, col] - m["lo"]).abs() <= tol) | ((after[:, col] - m["hi"]).abs() <= tol)
                bind = sel & moved & active_all[:, col] & (violated | held)
                change = after[:, col] - before[:, col]
                _record(tele, m["entry"], sel, bind, change, rel, m["sign"] * before[:, col], m["sign"] * after[:, col])
        x = torch.where(moved[:, None], new, x)
        if changed is not None:
            changed = changed | moved

    if fine and not bool(fine[0] if len(fine) == 1 else torch.stack(fine).all()):
        raise _non_finite(site, checks, limit, h.dtype)
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


def _label(op: dict[str, Any]) -> str:
    return str(op.get("label") or f"statement #{op.get('entry', '?')}")


def _non_finite(
    site: dict[str, Any],
    checks: list[tuple[list[dict[str, Any]], torch.Tensor, torch.Tensor, torch.Tensor]],
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
