"""Concept extraction cost on SmolLM2: throughput against a plain forward, early stop, and memory growth.

    python benchmarks/extract.py [--pairs specs/data/sentiment.yaml] [--repeats 3] [--early-layer 10]

Measures, in one run, on the same tokens and batches:

- ``throughput_ratio_vs_forward``: dataset tokens per second of a full extraction (``extract``, all layers)
  over tokens per second of a plain forward (``model(**inputs)``, logits included) over the same sequences
  once.  With a test split extraction forwards every sequence once (train: directions and streaming sums;
  test: projections for percentiles and AUROC), so this is also the per-forwarded-token ratio; a dataset
  without a test split forwards its train split twice.  ``per_pass_throughput_ratio`` divides by the
  tokens the extraction actually forwarded (equal to the end-to-end ratio when ``passes`` is 1).
- ``early_stop_cost_ratio``: extraction cost with the deepest layer ``L`` over ``L/N`` of the cost with all
  ``N`` layers (1.0 means cost exactly proportional to depth).
- ``rss_growth_10x``: (peak RSS of a process while extracting 10x the pairs) / (the same for 1x) - 1, each
  in a fresh subprocess, the peak mark reset after loading the model (so loading's own transient peak does
  not hide extraction's); ``extraction_rss_growth_10x_mb`` is the growth of extraction's memory above the
  loaded model.  The 1x dataset has ``--rss-pairs`` train pairs and as many test pairs (by default one
  full batch of each).

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
    _reset_peak()
    before = _status_mb("VmRSS")
    extract(model, pairs, batch_size=BATCH, progress=False)
    print(json.dumps({"peak_mb": _status_mb("VmHWM"), "before_mb": before, "pairs": len(pairs.pairs)}))


def _rss(pairs_path: str, count: int, times: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", pairs_path, str(count), str(times)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _timed(fn: Any) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _plain_forward(model: Any, pairs: PairSet) -> tuple[float, int]:
    """Seconds for ``model(**inputs)`` over every sequence of ``pairs`` (same batches), and tokens."""
    hf = model._module
    items = encode_pairs(model.tokenizer, pairs)
    pad = int(model.tokenizer.pad_token_id or 0)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in _batches(items, BATCH):
            ids, mask, _ = _tensors(batch, pad)
            hf(input_ids=ids, attention_mask=mask)
    return time.perf_counter() - start, sum(len(item.ids) for item in items)


def _extraction(model: Any, pairs: PairSet, layers: list[int] | None = None) -> float:
    start = time.perf_counter()
    extract(model, pairs, layers=layers, batch_size=BATCH, progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pairs", default=str(ROOT / "specs" / "data" / "sentiment.yaml"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--early-layer", type=int, default=10, help="L: number of layers run when stopping early")
    parser.add_argument(
        "--rss-pairs", type=int, default=8, help="train (and as many test) pairs in the 1x dataset of the RSS test"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: stable timings on a shared machine)"
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.child:
        _child(args.child[0], int(args.child[1]), int(args.child[2]))
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
    t_fwd, t_ext, t_early, t_full = best["fwd"], best["ext"], best["early"], best["full"]
    fwd_tps = all_tokens / t_fwd
    ext_tps = all_tokens / t_ext
    ratio = ext_tps / fwd_tps
    per_pass = (forwarded / t_ext) / fwd_tps
    early_ratio = t_early / (t_full * args.early_layer / n_layers)
    med = {k: statistics.median(v) for k, v in wall.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    cpu_ratio = cpu_med["fwd"] / cpu_med["ext"]
    cpu_early = cpu_med["early"] / (cpu_med["full"] * args.early_layer / n_layers)

    # Without a test split extraction projects the train tokens in a second pass and skips the H x H sums.

    one = _rss(args.pairs, args.rss_pairs, 1)
    ten = _rss(args.pairs, args.rss_pairs, 10)
    growth = ten["peak_mb"] / one["peak_mb"] - 1
    ext_one = one["peak_mb"] - one["before_mb"]
    ext_ten = ten["peak_mb"] - ten["before_mb"]

    rows = [
        ("dataset", f"{pairs.path}: {len(pairs.pairs)} pairs, {all_tokens} tokens ({train_tokens} train)"),
        ("model / threads", f"smollm2 float32, {n_layers} layers, torch threads {torch.get_num_threads()}"),
        ("repeats", f"{args.repeats}, interleaved; best (median) wall seconds"),
        ("plain forward (logits)", f"{t_fwd:.2f} s ({med['fwd']:.2f})  {fwd_tps:.0f} tok/s"),
        (
            "extraction, all layers",
            f"{t_ext:.2f} s ({med['ext']:.2f})  {ext_tps:.0f} dataset tok/s, {passes} pass(es) per sequence",
        ),
        ("throughput ratio", f"{ratio:.3f} end-to-end; {per_pass:.3f} per forwarded token"),
        ("  by CPU time (median)", f"{cpu_ratio:.3f} end-to-end"),
        (
            f"early stop L={args.early_layer}/{n_layers}",
            f"{t_early:.2f} s ({med['early']:.2f}) vs all layers {t_full:.2f} s ({med['full']:.2f})",
        ),
        ("early-stop cost ratio", f"{early_ratio:.3f}  (1.0 = cost proportional to depth)"),
        ("  by CPU time (median)", f"{cpu_early:.3f}"),
        (
            "peak RSS 1x",
            f"{one['peak_mb']:.0f} MB ({one['pairs']} pairs; +{ext_one:.1f} MB over the loaded model)",
        ),
        (
            "peak RSS 10x",
            f"{ten['peak_mb']:.0f} MB ({ten['pairs']} pairs; +{ext_ten:.1f} MB over the loaded model)",
        ),
        ("RSS growth 10x", f"{growth * 100:.2f}%"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(
        json.dumps(
            {
                "throughput_ratio_vs_forward": round(ratio, 4),
                "per_pass_throughput_ratio": round(per_pass, 4),
                "passes": passes,
                "early_stop_cost_ratio": round(early_ratio, 4),
                "early_stop_layers": [args.early_layer, n_layers],
                "rss_growth_10x": round(growth, 4),
                "extraction_rss_growth_10x_mb": round(ext_ten - ext_one, 1),
                "forward_tokens_per_s": round(fwd_tps, 1),
                "extraction_tokens_per_s": round(ext_tps, 1),
                "repeats": args.repeats,
                "timing": "fastest of interleaved repeats, wall clock",
            }
        )
    )


if __name__ == "__main__":
    main()
