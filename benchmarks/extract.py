"""Concept extraction cost on SmolLM2: throughput against a plain forward, early stop, and memory growth.

    python benchmarks/extract.py [--pairs specs/data/sentiment.yaml] [--repeats 3] [--early-layer 10]

Measures, in one run, on the same tokens and batches:

- ``throughput_ratio_vs_same_layers``: dataset tokens per second of a full extraction (``extract``, all
  layers) over tokens per second of a plain forward **through the same layers** — the same sequences, batches
  and positions, stopped right after the last decoder layer, where extraction stops (no final norm, no LM
  head).  Like for like: below 1 by what reading 30 layers and forming the streaming sums cost.
- ``throughput_ratio_vs_full_forward``: the same over a plain full forward (``model(**inputs)``: final norm
  and LM head included, logits out), what a user would call "a forward pass".  It is higher than the first
  by the share of the forward that the LM head takes (about a fifth on SmolLM2), which extraction never runs.
  With a test split extraction forwards every sequence once (train: directions and streaming sums; test:
  projections for percentiles and AUROC), so these are also per-forwarded-token ratios; a dataset without a
  test split forwards its train split twice, and ``per_pass_throughput_ratio`` (against the same layers)
  divides by the tokens the extraction actually forwarded.
- ``early_stop_cost_ratio``: extraction cost with the deepest layer ``L`` over ``L/N`` of the cost with all
  ``N`` layers (1.0 means cost exactly proportional to depth).
- ``rss_growth_10x``: the growth of **extraction's own memory** from 1x to 10x the pairs,
  ``own_10x / own_1x - 1``, where ``own`` is the peak RSS while extracting minus the RSS just before (after the
  model is loaded and one forward has paged its weights in, so neither the weights nor loading's transient
  peak count), each in a fresh subprocess, the median of ``--rss-runs`` of them (one run's figure moves by
  ±20 MB with the allocator).  ``extraction_own_mb_1x`` / ``_10x`` are those medians and ``retained_mb_1x`` /
  ``_10x`` the RSS after extraction minus before.  The 1x dataset has ``--rss-pairs`` train pairs and as many
  test pairs (by default one full batch of each).

Repeats are interleaved (forward, extraction, early, full, then the reverse order) and each variant's
fastest repeat is used: on a shared machine other processes only ever add time, so the minimum is the
least disturbed measurement (medians and process CPU time are printed too).  The last line printed is one
JSON object.  By default torch runs one intra-op thread: with several, a busy neighbour process makes every
thread barrier wait and timings swing by 10x; the ratios are what this measures (``--threads N`` to change).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from constraintdsl.concepts.extract import _batches, _tensors, encode_pairs, extract
from constraintdsl.concepts.pairs import Pair, PairSet, load_pairs
from constraintdsl.models.loading import load_model
from constraintdsl.models.sites import site_module

ROOT = Path(__file__).resolve().parent.parent
BATCH = 16


def _status_mb(field: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (current) of this process from /proc, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak() -> None:
    """Reset the peak-RSS mark, so the peak measured afterwards is that of extraction, not model loading."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _scaled(pairs: PairSet, count: int, times: int) -> PairSet:
    """The first ``count`` pairs of each split, repeated ``times`` times with a distinct suffix (no two rows equal)."""
    base = [pair for pair in pairs.pairs if pair.split == "train"][:count]
    base += [pair for pair in pairs.pairs if pair.split == "test"][:count]
    out: list[Pair] = []
    for k in range(times):
        for pair in base:
            tag = f" ({k})" if k else ""
            out.append(Pair(pair.positive + tag, pair.negative + tag, pair.prompt, pair.split, pair.span))
    return PairSet(pairs.path, pairs.concept, "", "+", "-", tuple(out), pairs.sha256)


def _child(pairs_path: str, count: int, times: int) -> None:
    model = load_model("smollm2")
    pairs = _scaled(load_pairs(pairs_path), count, times)
    with torch.no_grad():  # page every weight in (they are mapped from the file): they are not extraction's
        model._module(input_ids=torch.tensor([encode_pairs(model.tokenizer, pairs)[0].ids]))
    _reset_peak()
    before = _status_mb("VmRSS")
    extract(model, pairs, batch_size=BATCH, progress=False)
    after = _status_mb("VmRSS")
    out = {"peak_mb": _status_mb("VmHWM"), "before_mb": before, "after_mb": after, "pairs": len(pairs.pairs)}
    print(json.dumps(out))


def _rss(pairs_path: str, count: int, times: int, runs: int) -> dict[str, Any]:
    """Extraction's memory over ``runs`` fresh processes: the median own peak and retained MB, and the pairs."""
    got = []
    for _ in range(runs):
        cmd = [sys.executable, __file__, "--child", pairs_path, str(count), str(times)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        got.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {
        "own_mb": statistics.median(g["peak_mb"] - g["before_mb"] for g in got),
        "retained_mb": statistics.median(g["after_mb"] - g["before_mb"] for g in got),
        "before_mb": statistics.median(g["before_mb"] for g in got),
        "own_all_mb": [round(g["peak_mb"] - g["before_mb"], 1) for g in got],
        "pairs": got[0]["pairs"],
    }


def _timed(fn: Any) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


class _Stop(Exception):
    """Raised by a forward hook to end a forward pass after a given layer."""


def _plain_forward(model: Any, pairs: PairSet, stop_after: int | None = None) -> tuple[float, int]:
    """Seconds for a plain torch forward over every sequence of ``pairs`` (the extraction's batches and
    positions), and tokens.  ``stop_after`` None: the full ``model(**inputs)`` (final norm, LM head, logits);
    a layer index: the forward ends right after that decoder layer, as extraction's does."""
    hf = model._module
    items = encode_pairs(model.tokenizer, pairs)
    pad = int(model.tokenizer.pad_token_id or 0)
    handle = None
    if stop_after is not None:

        def stop(*_: Any) -> None:
            raise _Stop

        handle = site_module(hf, stop_after, "resid").register_forward_hook(stop)
    start = time.perf_counter()
    try:
        with torch.no_grad():
            for batch in _batches(items, BATCH):
                ids, mask, _ = _tensors(batch, pad)
                positions = torch.arange(ids.shape[1], dtype=torch.long).unsqueeze(0).expand_as(ids)
                with contextlib.suppress(_Stop):
                    hf(input_ids=ids, attention_mask=mask, position_ids=positions)
    finally:
        if handle is not None:
            handle.remove()
    return time.perf_counter() - start, sum(len(item.ids) for item in items)


def _extraction(model: Any, pairs: PairSet, layers: list[int] | None = None) -> float:
    start = time.perf_counter()
    extract(model, pairs, layers=layers, batch_size=BATCH, progress=False)
    return time.perf_counter() - start


def _memory(args: argparse.Namespace) -> dict[str, Any]:
    """The memory test: extraction's own memory at 1x and 10x the pairs; the JSON fields and ``rows`` to print."""
    one = _rss(args.pairs, args.rss_pairs, 1, args.rss_runs)
    ten = _rss(args.pairs, args.rss_pairs, 10, args.rss_runs)
    ext_one, ext_ten = one["own_mb"], ten["own_mb"]
    growth = ext_ten / ext_one - 1
    rows = [
        (
            "extraction's memory 1x",
            f"+{ext_one:.1f} MB at its peak, +{one['retained_mb']:.1f} MB after ({one['pairs']} pairs; over "
            f"{one['before_mb']:.0f} MB with the model loaded; median of {one['own_all_mb']})",
        ),
        (
            "extraction's memory 10x",
            f"+{ext_ten:.1f} MB at its peak, +{ten['retained_mb']:.1f} MB after ({ten['pairs']} pairs; over "
            f"{ten['before_mb']:.0f} MB with the model loaded; median of {ten['own_all_mb']})",
        ),
        ("growth of its memory 10x", f"{growth * 100:.1f}%  (peak over the loaded model, 10x vs 1x)"),
    ]
    return {
        "rss_growth_10x": round(growth, 4),
        "extraction_own_mb_1x": round(ext_one, 1),
        "extraction_own_mb_10x": round(ext_ten, 1),
        "retained_mb_1x": round(one["retained_mb"], 1),
        "retained_mb_10x": round(ten["retained_mb"], 1),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pairs", default=str(ROOT / "specs" / "data" / "sentiment.yaml"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--early-layer", type=int, default=10, help="L: number of layers run when stopping early")
    parser.add_argument(
        "--rss-pairs", type=int, default=8, help="train (and as many test) pairs in the 1x dataset of the RSS test"
    )
    parser.add_argument("--rss-runs", type=int, default=3, help="fresh processes per size in the RSS test (median)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: stable timings on a shared machine)"
    )
    parser.add_argument("--rss-only", action="store_true", help="only the memory test (no timings)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.child:
        _child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    if args.rss_only:
        memory = _memory(args)
        for key, value in memory.pop("rows"):
            print(f"{key:<24}  {value}")
        print(json.dumps(memory))
        return

    model = load_model("smollm2")
    pairs = load_pairs(args.pairs)
    n_layers = int(model._module.config.num_hidden_layers)
    items = encode_pairs(model.tokenizer, pairs)
    all_tokens = sum(len(item.ids) for item in items)
    train_tokens = sum(len(item.ids) for item in items if item.split == "train")
    passes = 1 if pairs.test else 2
    forwarded = all_tokens if pairs.test else 2 * train_tokens

    _plain_forward(model, pairs)  # warm-up
    _extraction(model, pairs, [0])
    jobs = {
        "fwd": lambda: _plain_forward(model, pairs),
        "same": lambda: _plain_forward(model, pairs, n_layers - 1),
        "ext": lambda: _extraction(model, pairs),
        "early": lambda: _extraction(model, pairs, [args.early_layer - 1]),
        "full": lambda: _extraction(model, pairs, [n_layers - 1]),
    }
    wall: dict[str, list[float]] = {k: [] for k in jobs}
    cpu: dict[str, list[float]] = {k: [] for k in jobs}
    for r in range(args.repeats):
        for what in list(jobs) if r % 2 == 0 else list(reversed(jobs)):
            w, c = _timed(jobs[what])
            wall[what].append(w)
            cpu[what].append(c)
    best = {k: min(v) for k, v in wall.items()}
    t_fwd, t_same, t_ext, t_early, t_full = best["fwd"], best["same"], best["ext"], best["early"], best["full"]
    fwd_tps = all_tokens / t_fwd
    same_tps = all_tokens / t_same
    ext_tps = all_tokens / t_ext
    ratio_full = ext_tps / fwd_tps
    ratio_same = ext_tps / same_tps
    per_pass = (forwarded / t_ext) / same_tps
    head_share = 1 - t_same / t_fwd
    early_ratio = t_early / (t_full * args.early_layer / n_layers)
    med = {k: statistics.median(v) for k, v in wall.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    cpu_ratio = cpu_med["same"] / cpu_med["ext"]
    cpu_early = cpu_med["early"] / (cpu_med["full"] * args.early_layer / n_layers)

    memory = _memory(args)

    rows = [
        ("dataset", f"{pairs.path}: {len(pairs.pairs)} pairs, {all_tokens} tokens ({train_tokens} train)"),
        ("model / threads", f"smollm2 float32, {n_layers} layers, torch threads {torch.get_num_threads()}"),
        ("repeats", f"{args.repeats}, interleaved; best (median) wall seconds"),
        ("full forward (LM head, logits)", f"{t_fwd:.2f} s ({med['fwd']:.2f})  {fwd_tps:.0f} tok/s"),
        (
            f"forward through layers 0-{n_layers - 1}",
            f"{t_same:.2f} s ({med['same']:.2f})  {same_tps:.0f} tok/s (stops where extraction stops; "
            f"the final norm and LM head are {head_share * 100:.0f}% of the full forward)",
        ),
        (
            "extraction, all layers",
            f"{t_ext:.2f} s ({med['ext']:.2f})  {ext_tps:.0f} dataset tok/s, {passes} pass(es) per sequence",
        ),
        (
            "ratio vs the same layers",
            f"{ratio_same:.3f} end-to-end; {per_pass:.3f} per forwarded token  (like for like: the cost of reading "
            "and reducing every layer)",
        ),
        ("  by CPU time (median)", f"{cpu_ratio:.3f} end-to-end"),
        ("ratio vs a full forward", f"{ratio_full:.3f}  (includes the LM head extraction never runs)"),
        (
            f"early stop L={args.early_layer}/{n_layers}",
            f"{t_early:.2f} s ({med['early']:.2f}) vs all layers {t_full:.2f} s ({med['full']:.2f})",
        ),
        ("early-stop cost ratio", f"{early_ratio:.3f}  (1.0 = cost proportional to depth)"),
        ("  by CPU time (median)", f"{cpu_early:.3f}"),
        *memory.pop("rows"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(
        json.dumps(
            {
                "throughput_ratio_vs_same_layers": round(ratio_same, 4),
                "throughput_ratio_vs_full_forward": round(ratio_full, 4),
                "per_pass_throughput_ratio": round(per_pass, 4),
                "lm_head_share_of_forward": round(head_share, 4),
                "passes": passes,
                "early_stop_cost_ratio": round(early_ratio, 4),
                "early_stop_layers": [args.early_layer, n_layers],
                **memory,
                "forward_tokens_per_s": round(fwd_tps, 1),
                "same_layers_tokens_per_s": round(same_tps, 1),
                "extraction_tokens_per_s": round(ext_tps, 1),
                "repeats": args.repeats,
                "timing": "fastest of interleaved repeats, wall clock",
            }
        )
    )


if __name__ == "__main__":
    main()
