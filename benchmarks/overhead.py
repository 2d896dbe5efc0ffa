"""Overhead of a compiled spec versus plain transformers, hand-written nnsight and raw torch hooks.

Workload (SmolLM2-135M, float32, CPU): a forward pass over 8×64 tokens and a greedy generation of
32 tokens (batch 1), with three non-orthogonal concepts clamped jointly at five layers.  Every
variant is timed in the same run, interleaved round by round, and each figure is the median of
its rounds; ratios are against the plain model measured alongside.  The same is repeated on a
tiny Llama, where the fixed per-trace Python cost dominates.

Timings use one torch thread by default (``--threads``): on a small shared machine, two threads
competing with a neighbour swing by several times, one thread much less.

Variants:
- plain: the transformers model alone (no nnsight);
- hooks: raw torch forward hooks applying the same joint clamp (runtime.solve_bounds) — no nnsight;
- handwritten: an nnsight trace written by hand for this spec: the same joint clamp at the same
  five layers, no plan interpretation, no token selection, no telemetry;
- compiled: the spec compiled by constraintdsl and run by its runner (telemetry off, and on).

The last line is one JSON object: forward_ratio_vs_plain, generate_ratio_vs_plain,
forward_ratio_vs_handwritten, generate_ratio_vs_handwritten, tiny_ratio_vs_handwritten (and the
telemetry-on figures).
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

import nnsight
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import constraintdsl as cdsl
from constraintdsl.concepts.artifact import PERCENTILE_LEVELS, Calibration, ConceptArtifact
from constraintdsl.run import runner
from constraintdsl.runtime import interventions as runtime

LAYERS = (10, 11, 12, 13, 14)
SPEC = """version 1
concept helpfulness from pairs "../specs/data/helpfulness.yaml"
concept sentiment from pairs "../specs/data/sentiment.yaml"
concept formality from pairs "../specs/data/formality.yaml"
clamp helpfulness >= 0.5 at layers 10-14
clamp sentiment in [0.2, 1.2] at layers 10-14
clamp formality <= 0.8 at layers 10-14
"""


# wall time by default; --clock cpu counts this process's CPU time instead, which a busy shared
# machine disturbs far less (CPU runs only: a GPU's time is not this process's CPU time)
CLOCK: list[Callable[[], float]] = [time.perf_counter]


def timed(fn: Callable[[], Any], into: list[float]) -> None:
    """Append one timing of ``fn`` in ms (by :data:`CLOCK`; a GPU is synchronized around it) to ``into``."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = CLOCK[0]()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    into.append((CLOCK[0]() - t0) * 1000)


def site_groups(plan: Any, device: torch.device) -> dict[int, tuple[dict[str, Any], torch.Tensor, torch.Tensor]]:
    """Per layer: the prepared group and the static lo/hi rows, taken from the compiled plan, on ``device``."""
    out = {}
    for site in plan.payload["sites"]:
        ((_, group),) = site["groups"]
        group = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in group.items()}
        lo = torch.tensor([b["lo"] for b in site["bounds"]], dtype=torch.float32, device=device)
        hi = torch.tensor([b["hi"] for b in site["bounds"]], dtype=torch.float32, device=device)
        out[site["layer"]] = (group, lo, hi)
    return out


def clamp_tensor(h: torch.Tensor, group: dict[str, Any], lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The hand-written joint clamp: every token, all bounds, no masks, no telemetry."""
    b, t, d = h.shape
    x = h.reshape(b * t, d).to(torch.float32)
    delta, at_lo, at_hi = runtime.solve_bounds(x, group, lo.expand(b * t, -1), hi.expand(b * t, -1))
    moved = (at_lo | at_hi).any(dim=1, keepdim=True)
    return torch.where(moved, x + delta, x).reshape(b, t, d).to(h.dtype)


def handwritten_forward(model: Any, enc: dict[str, torch.Tensor], groups: dict[int, Any]) -> Any:
    with torch.no_grad(), model.trace(enc):
        for layer in LAYERS:
            group, lo, hi = groups[layer]
            out = model.model.layers[layer].output
            model.model.layers[layer].output = clamp_tensor(out, group, lo, hi)
        logits = nnsight.save(model.output.logits)
    return logits


def handwritten_generate(model: Any, enc: dict[str, torch.Tensor], groups: dict[int, Any], n: int) -> Any:
    with (
        torch.no_grad(),
        model.generate(max_new_tokens=n, do_sample=False, pad_token_id=model.tokenizer.pad_token_id) as tracer,
    ):
        with tracer.invoke(enc):
            for _step in tracer.iter[:n]:
                for layer in LAYERS:
                    group, lo, hi = groups[layer]
                    out = model.model.layers[layer].output
                    model.model.layers[layer].output = clamp_tensor(out, group, lo, hi)
        with tracer.invoke():
            ids = nnsight.save(tracer.result)
    return ids


def with_hooks(hf: Any, groups: dict[int, Any]) -> list[Any]:
    handles = []
    for layer in LAYERS:
        group, lo, hi = groups[layer]

        def hook(_m: Any, _i: Any, out: Any, group: Any = group, lo: Any = lo, hi: Any = hi) -> Any:
            if isinstance(out, tuple):
                return (clamp_tensor(out[0], group, lo, hi), *out[1:])
            return clamp_tensor(out, group, lo, hi)

        handles.append(hf.model.layers[layer].register_forward_hook(hook))
    return handles


def measure(
    model: Any,
    plan: Any,
    enc: dict[str, torch.Tensor],
    gen_enc: dict[str, torch.Tensor],
    rounds: int,
    new_tokens: int,
    include_generate: bool = True,
) -> dict[str, float]:
    hf = model._module
    groups = site_groups(plan, next(hf.parameters()).device)
    pad = model.tokenizer.pad_token_id
    times: dict[str, list[float]] = {}

    def plain_f() -> Any:
        with torch.no_grad():
            return hf(**enc).logits

    def hooks_f() -> Any:
        handles = with_hooks(hf, groups)
        try:
            with torch.no_grad():
                return hf(**enc).logits
        finally:
            for h in handles:
                h.remove()

    def plain_g() -> Any:
        with torch.no_grad():
            return hf.generate(**gen_enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)

    def hooks_g() -> Any:
        handles = with_hooks(hf, groups)
        try:
            return plain_g()
        finally:
            for h in handles:
                h.remove()

    variants: dict[str, Callable[[], Any]] = {
        "forward/plain": plain_f,
        "forward/hooks": hooks_f,
        "forward/handwritten": lambda: handwritten_forward(model, enc, groups),
        "forward/compiled": lambda: runner.trace(model, plan.payload, enc, telemetry=False),
        "forward/compiled+telemetry": lambda: runner.trace(model, plan.payload, enc),
    }
    if include_generate:
        variants.update(
            {
                "generate/plain": plain_g,
                "generate/hooks": hooks_g,
                "generate/handwritten": lambda: handwritten_generate(model, gen_enc, groups, new_tokens),
                "generate/compiled": lambda: runner.generate(
                    model, plan.payload, gen_enc, max_new_tokens=new_tokens, telemetry=False
                ),
                "generate/compiled+telemetry": lambda: runner.generate(
                    model, plan.payload, gen_enc, max_new_tokens=new_tokens
                ),
            }
        )
    for fn in variants.values():  # warm up every path once
        fn()
    for _ in range(rounds):
        for name, fn in variants.items():
            timed(fn, times.setdefault(name, []))
    return {name: statistics.median(v) for name, v in times.items()}


def tiny_setup() -> tuple[Any, Any, dict[str, torch.Tensor]]:
    import numpy as np

    from tests.tiny import tiny_nnsight

    model = tiny_nnsight("llama")
    rng = np.random.default_rng(0)
    n_layers = model._module.config.num_hidden_layers
    hidden = model._module.config.hidden_size
    ones = np.ones(n_layers, dtype=np.float32)
    cal = Calibration(
        pos_mean=ones * 2,
        neg_mean=ones * 0,
        scale=ones * 2,
        mean=ones,
        std=ones,
        percentiles=np.tile(np.asarray(PERCENTILE_LEVELS, dtype=np.float32), (n_layers, 1)),
        auroc=ones,
    )
    arts = {}
    for name in ("helpfulness", "sentiment", "formality"):
        d = rng.standard_normal((n_layers, hidden)).astype(np.float32)
        arts[name] = ConceptArtifact(d / np.linalg.norm(d, axis=1, keepdims=True), tuple(range(n_layers)), cal, {})
    spec = cdsl.parse(SPEC.replace("10-14", "0-2"), "tiny.cdsl")
    plan = cdsl.compile(spec, model, concepts=arts)
    enc = dict(model.tokenizer(["a short tiny prompt"] * 2, return_tensors="pt", padding=True))
    return model, plan, enc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    parser.add_argument("--model", default="smollm2", help="smollm2, or a local folder of the same architecture")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="cpu: process CPU time (shared CPU machines)"
    )
    parser.add_argument("--device", default="cpu", help="run on this device (e.g. cuda); concepts are built first")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        CLOCK[0] = time.process_time

    model = cdsl.load_model(args.model)
    spec = cdsl.parse(SPEC, str(Path(__file__).resolve()))
    plan = cdsl.compile(spec, model, progress=False)
    words = "the quick brown fox jumps over the lazy dog while the cat sleeps " * 8
    enc = dict(model.tokenizer([words] * 8, return_tensors="pt", truncation=True, max_length=64, padding=True))
    gen_enc = runner.encode(model, ["Describe your weekend in two sentences."])
    model._module.to(args.device)
    enc, gen_enc = runner.on_device(model, enc), runner.on_device(model, gen_enc)
    big = measure(model, plan, enc, gen_enc, args.rounds, args.new_tokens)

    global LAYERS
    LAYERS = (0, 1, 2)
    tiny_model, tiny_plan, tiny_enc = tiny_setup()
    tiny_model._module.to(args.device)
    tiny_enc = runner.on_device(tiny_model, tiny_enc)
    tiny = measure(tiny_model, tiny_plan, tiny_enc, tiny_enc, args.rounds * 3, 8, include_generate=False)

    print(f"{'variant':<30} {'SmolLM2 ms':>12} {'× plain':>9}")
    for kind in ("forward", "generate"):
        base = big[f"{kind}/plain"]
        for name in ("plain", "hooks", "handwritten", "compiled", "compiled+telemetry"):
            ms = big[f"{kind}/{name}"]
            print(f"{kind + '/' + name:<30} {ms:>12.2f} {ms / base:>9.3f}")
    print(f"{'tiny forward (ms)':<30} " + "  ".join(f"{k.split('/')[1]}={v:.2f}" for k, v in tiny.items()))
    result: dict[str, Any] = {
        "forward_ratio_vs_plain": big["forward/compiled"] / big["forward/plain"],
        "generate_ratio_vs_plain": big["generate/compiled"] / big["generate/plain"],
        "forward_ratio_vs_handwritten": big["forward/compiled"] / big["forward/handwritten"],
        "generate_ratio_vs_handwritten": big["generate/compiled"] / big["generate/handwritten"],
        "tiny_ratio_vs_handwritten": tiny["forward/compiled"] / tiny["forward/handwritten"],
        "forward_ratio_vs_plain_with_telemetry": big["forward/compiled+telemetry"] / big["forward/plain"],
        "generate_ratio_vs_plain_with_telemetry": big["generate/compiled+telemetry"] / big["generate/plain"],
        "hooks_forward_ratio_vs_plain": big["forward/hooks"] / big["forward/plain"],
    }
    print(json.dumps({"device": args.device, "clock": args.clock, **{k: round(v, 4) for k, v in result.items()}}))


if __name__ == "__main__":
    main()
