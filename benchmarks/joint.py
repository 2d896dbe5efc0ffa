"""Exact joint bounds for many directions at one layer: cost against a plain forward, and exactness.

Workload (SmolLM2-135M, float32, CPU by default): a forward pass over 8×64 tokens with k = 1, 8, 32,
64 and 256 random non-orthogonal unit directions (pairwise cosines about 0.3) clamped jointly at one
layer, each to the band between the 5th and 95th percentile of its own projections on these tokens
(so about 10% of the tokens violate each bound, and a token typically violates several at once).
The directions are concept artifacts made here and compiled through the public API
(``cdsl.compile(spec, model, concepts=...)``); the forward runs through the runner, as ``cdsl run``
does.  Every variant is timed in the same run, interleaved round by round (median of the rounds),
against the plain transformers model.

Exactness: the compiled site is applied by the runtime to that layer's real activations, and the
result is checked against the optimality (KKT) conditions in float64 with numpy (``tests/qp.py``,
no code shared with the runtime): ``max_kkt_violation`` is the largest violation relative to
``1 + ‖h‖`` over every token and every k.

The last section times the two small-k methods (face enumeration, active set) on the same
activations for k = 2..5 and a varying number of tokens that must move, which is what
``runtime.interventions.FACE_ROWS`` encodes.

The last line is one JSON object: ``forward_ratio_k1`` … ``forward_ratio_k256`` (telemetry off),
``forward_ratio_k{k}_with_telemetry``, ``max_kkt_violation``, ``moved_fraction_k{k}`` and
``held_per_moved_token_k{k}``, and ``faces_speedup_k{k}_n{n}`` (active-set time over faces time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import constraintdsl as cdsl
from benchmarks.overhead import CLOCK, timed
from constraintdsl.concepts.artifact import ConceptArtifact
from constraintdsl.run import runner
from constraintdsl.runtime import interventions as rt
from tests.qp import kkt_violation

KS = (1, 8, 32, 64, 256)
LAYER = 15


def random_directions(rng: np.random.Generator, k: int, hidden: int, cos: float = 0.3) -> np.ndarray:
    """k unit rows sharing a common component: pairwise cosines about ``cos``."""
    base = rng.standard_normal(hidden)
    base /= np.linalg.norm(base)
    v = rng.standard_normal((k, hidden))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    u = np.sqrt(cos) * base + np.sqrt(1 - cos) * v
    return (u / np.linalg.norm(u, axis=1, keepdims=True)).astype(np.float32)


def layer_output(model: Any, enc: dict[str, torch.Tensor]) -> torch.Tensor:
    """The residual stream after ``LAYER`` for ``enc`` (a plain forward with a hook)."""
    captured: dict[str, torch.Tensor] = {}

    def hook(_m: Any, _i: Any, out: Any) -> None:
        captured["h"] = (out[0] if isinstance(out, tuple) else out).detach().clone()

    handle = model._module.model.layers[LAYER].register_forward_hook(hook)
    try:
        with torch.no_grad():
            model._module(**enc)
    finally:
        handle.remove()
    return captured["h"]


def compiled_plan(model: Any, u: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> Any:
    """k clamps in raw units at ``LAYER``, one concept artifact per direction, through ``cdsl.compile``."""
    names = [f"d{i}" for i in range(len(u))]
    lines = ["version 1"] + [f'concept {n} from pairs "{n}.yaml"' for n in names]
    lines += [
        f"clamp {n} in [{a:.6f} raw, {b:.6f} raw] at layer {LAYER}" for n, a, b in zip(names, lo, hi, strict=True)
    ]
    arts = {n: ConceptArtifact(row[None, :], (LAYER,), None, {}) for n, row in zip(names, u, strict=True)}
    spec = cdsl.parse("\n".join(lines) + "\n", str(Path(__file__).resolve()))
    return cdsl.compile(spec, model, concepts=arts)


def check_site(plan: Any, h: torch.Tensor, enc: dict[str, torch.Tensor]) -> tuple[float, float, float]:
    """Apply the compiled site to ``h`` with the runtime; returns the worst KKT violation (float64,
    independent), the fraction of real tokens moved and the mean number of bounds each moved token
    ends on."""
    (site,) = plan.payload["sites"]
    positions, total = rt.positions_from_mask(enc["attention_mask"], h.shape[1])
    out = rt.apply_site(h, site, positions, total, total, {})
    x0 = h.reshape(-1, h.shape[-1]).double().numpy()
    x1 = out.reshape(-1, h.shape[-1]).double().numpy()
    u = site["dirs"].double().numpy()
    lo = np.array([b["lo"] for b in site["bounds"]])
    hi = np.array([b["hi"] for b in site["bounds"]])
    selected = rt.token_mask(rt.ALL, 0, positions, total, total).reshape(-1).numpy()
    assert np.array_equal(x1[~selected], x0[~selected]), "a token no statement selects was changed"
    worst = kkt_violation(x0[selected], x1[selected], u, lo, hi)
    moved = np.linalg.norm(x1 - x0, axis=1) > 0
    proj = x1[moved] @ u.T
    near = 1e-5 * (1 + np.linalg.norm(x1[moved], axis=1, keepdims=True))
    on_bound = (np.abs(proj - lo) <= near) | (np.abs(proj - hi) <= near)
    held = float(on_bound.sum(1).mean()) if moved.any() else 0.0
    return worst, float(moved.sum() / selected.sum()), held


def face_speedups(h: torch.Tensor, rounds: int) -> dict[str, float]:
    """Active-set time over face-enumeration time for k = 2..5 and n tokens that must move."""
    x = h.reshape(-1, h.shape[-1]).float()
    rng = np.random.default_rng(5)
    out: dict[str, float] = {}
    for k in (2, 3, 4, 5):
        u = torch.tensor(random_directions(rng, k, x.shape[1], cos=0.5))
        faces = rt.prepare_group(u, [True] * k, [True] * k)
        assert faces["method"] == "faces"
        faces = dict(faces, face_rows=1 << 62)
        active = dict(faces, method="active")
        p = x @ u.T
        lo = p.quantile(0.3, dim=0)  # about 30% of tokens under each floor
        for n in (1, 16, 64, 512):
            rows = x[torch.nonzero((p < lo).any(1)).squeeze(1)[:n]]
            times: dict[str, list[float]] = {"faces": [], "active": []}
            lo_n, hi_n = lo.expand(rows.shape[0], k), torch.full((rows.shape[0], k), float("inf"))
            for _ in range(rounds):
                for name, group in (("faces", faces), ("active", active)):
                    args = (rows, group, lo_n, hi_n)
                    timed(lambda args=args: [rt.solve_bounds(*args) for _ in range(5)], times[name])
            out[f"faces_speedup_k{k}_n{n}"] = statistics.median(times["active"]) / statistics.median(times["faces"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--ks", default=",".join(map(str, KS)), help="comma-separated numbers of directions")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    parser.add_argument("--model", default="smollm2", help="smollm2, or a local folder of the same architecture")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="cpu: process CPU time (shared CPU machines)"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        CLOCK[0] = time.process_time

    model = cdsl.load_model(args.model)
    words = "the quick brown fox jumps over the lazy dog while the cat sleeps " * 16
    enc = dict(
        model.tokenizer(
            [words] * args.batch, return_tensors="pt", truncation=True, max_length=args.tokens, padding=True
        )
    )
    model._module.to(args.device)
    enc = runner.on_device(model, enc)
    h = layer_output(model, enc).float()
    hidden = h.shape[-1]
    flat = h.reshape(-1, hidden).double().cpu().numpy()
    rng = np.random.default_rng(0)

    ks = [int(k) for k in args.ks.split(",")]
    plans: dict[int, Any] = {}
    result: dict[str, Any] = {"device": args.device, "clock": args.clock, "tokens": int(enc["attention_mask"].sum())}
    worst = 0.0
    for k in ks:
        u = random_directions(rng, k, hidden)
        proj = flat @ u.T.astype(np.float64)
        lo, hi = np.percentile(proj, 5, axis=0), np.percentile(proj, 95, axis=0)
        plans[k] = compiled_plan(model, u, lo, hi)
        kkt, moved, held = check_site(plans[k], h.cpu(), {k_: v.cpu() for k_, v in enc.items()})
        worst = max(worst, kkt)
        result[f"moved_fraction_k{k}"] = round(moved, 4)
        result[f"held_per_moved_token_k{k}"] = round(held, 2)

    hf = model._module

    def plain() -> Any:
        with torch.no_grad():
            return hf(**enc).logits

    variants: dict[str, Callable[[], Any]] = {"plain": plain}
    for k in ks:
        payload = plans[k].payload
        variants[f"k{k}"] = lambda payload=payload: runner.trace(model, payload, enc, telemetry=False)
        variants[f"k{k}+telemetry"] = lambda payload=payload: runner.trace(model, payload, enc)
    for fn in variants.values():  # warm up every path once
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            timed(fn, times[name])
    ms = {name: statistics.median(v) for name, v in times.items()}

    print(f"{'variant':<16} {'ms':>10} {'× plain':>9}   tokens moved   bounds held per moved token")
    print(f"{'plain':<16} {ms['plain']:>10.1f} {1.0:>9.3f}")
    for k in ks:
        for suffix in ("", "+telemetry"):
            name = f"k{k}{suffix}"
            extra = f"   {result[f'moved_fraction_k{k}']:>12.1%}   {result[f'held_per_moved_token_k{k}']:>6.2f}"
            print(f"{name:<16} {ms[name]:>10.1f} {ms[name] / ms['plain']:>9.3f}" + ("" if suffix else extra))
        result[f"forward_ratio_k{k}"] = round(ms[f"k{k}"] / ms["plain"], 4)
        result[f"forward_ratio_k{k}_with_telemetry"] = round(ms[f"k{k}+telemetry"] / ms["plain"], 4)
    result["max_kkt_violation"] = float(f"{worst:.3g}")
    print(f"max KKT violation (relative to 1 + ‖h‖): {worst:.3g}")

    speed = face_speedups(h.cpu(), max(3, args.rounds))
    print("active-set time / face-enumeration time, by k (rows) and tokens that move (columns 1, 16, 64, 512):")
    for k in (2, 3, 4, 5):
        print(f"  k={k}: " + "  ".join(f"{speed[f'faces_speedup_k{k}_n{n}']:6.2f}" for n in (1, 16, 64, 512)))
    result.update({key: round(v, 3) for key, v in speed.items()})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
