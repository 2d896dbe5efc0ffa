"""Peak memory of the A/B pass of ``cdsl compare``: 50 items × 6 arms on SmolLM2, in a fresh process.

    python benchmarks/ab_memory.py [--ab specs/data/ab/refusal-letters.yaml] [--arms 6] [--score mean]

Workload: the baseline and ``--arms - 1`` variants of a refusal floor (``clamp refusal >= $floor at layers
10-14``), every item's two answers teacher-forced through :func:`constraintdsl.ab_pass.run_ab` — the code path
``compare`` runs — on SmolLM2-135M in float32 on the CPU.

- ``ab_peak_rss_mb``: the process's peak resident memory (VmHWM) during the A/B pass, model weights included;
  the peak mark is reset after the model is loaded, the arms are compiled and one short forward has paged every
  weight in, so loading's own transient peak does not count (target ≤ 2,000 MB);
- ``loaded_rss_mb``: resident memory just before the pass (the weights, the compiled arms, the libraries);
- ``ab_own_mb``: the difference, what the pass itself added at its peak;
- ``full_logits_mb``: for scale, what one pass holding every arm's full logits would allocate for its logits
  alone (arms × rows × width × vocabulary float32s; computed, not measured);
- the pass count and the baseline's mean p(match) and saturated items (p < 0.05 or > 0.95) under the
  chosen scoring.

The memory figures are measured and do not depend on other processes; ``ab_seconds`` does (a timing).  The
last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPEC = """version 1
name "refusal-floor"
concept refusal from pairs "{data}"
let floor = {levels}
clamp refusal >= $floor at layers 10-14
"""


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def child(ab_path: str, arms: int, score: str, threads: int, items: int | None, budget: int | None) -> dict[str, Any]:
    """Load, compile, reset the peak mark, run the A/B pass; the figures as a dict."""
    import torch

    from constraintdsl import load, load_model
    from constraintdsl.compare.ab import load_ab
    from constraintdsl.compare.ab_pass import AB_TOKEN_BUDGET, ab_rows, item_probabilities, plan_passes, run_ab
    from constraintdsl.compare.comparison import _payloads, build_arms

    torch.set_num_threads(threads)
    model = load_model("smollm2")
    ab = load_ab(ab_path)
    if items is not None:
        ab = replace(ab, items=ab.items[:items])
    tokens = budget or AB_TOKEN_BUDGET
    levels = " | ".join(f"{0.25 * (i + 1):g}" for i in range(arms - 1))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "floor.cdsl"
        path.write_text(SPEC.format(data=ROOT / "specs" / "data" / "refusal.yaml", levels=levels))
        built, _ = build_arms(model, [load(path)], marginal=False)
    payloads = _payloads(built, range(len(built)))
    assert len(payloads) == arms
    rows = ab_rows(model.tokenizer, ab)
    vocab = int(model.config.vocab_size)
    width = max(len(s) for s in rows.seqs)
    groups = plan_passes(rows, arms, vocab, token_budget=tokens)
    with torch.no_grad():  # page every weight in (they are mapped from the file), so the pass's figure is its own
        model._module(input_ids=torch.tensor([rows.seqs[0]]))
    _reset_peak()
    loaded = _status_mb("VmRSS")
    started = time.perf_counter()
    sums, counts, passes, _ = run_ab(model, payloads, ab, token_budget=tokens)
    seconds = time.perf_counter() - started
    peak = _status_mb("VmHWM")
    match = torch.tensor([item.match == "a" for item in ab.items])
    p = item_probabilities(sums[0], counts, match, score)
    saturated = int(((p < 0.05) | (p > 0.95)).sum())
    return {
        "ab_peak_rss_mb": round(peak, 1),
        "loaded_rss_mb": round(loaded, 1),
        "ab_own_mb": round(peak - loaded, 1),
        "full_logits_mb": round(arms * len(rows) * width * vocab * 4 / 2**20, 1),
        "items": len(ab.items),
        "arms": arms,
        "passes": passes,
        "planned_passes": len(groups),
        "score": score,
        "baseline_p_match": round(float(p.mean()), 4),
        "baseline_saturated": saturated,
        "ab_seconds": round(seconds, 2),
        "threads": threads,
        "token_budget": tokens,
        "set": str(Path(ab_path).relative_to(ROOT)) if Path(ab_path).is_relative_to(ROOT) else ab_path,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ab", default=str(ROOT / "specs" / "data" / "ab" / "refusal-letters.yaml"))
    parser.add_argument("--arms", type=int, default=6, help="the baseline and arms - 1 variants")
    parser.add_argument("--score", default="mean", choices=["mean", "sum"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--items", type=int, default=None, help="use only the first N items")
    parser.add_argument("--token-budget", type=int, default=None, help="tokens per pass (default: the shipped one)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arms < 2:
        parser.error("--arms must be at least 2 (the baseline and one variant)")
    if args.child:
        ab = str(Path(args.ab).resolve())
        print(json.dumps(child(ab, args.arms, args.score, args.threads, args.items, args.token_budget)))
        return
    cmd = [sys.executable, __file__, "--child", "--ab", args.ab, "--arms", str(args.arms), "--score", args.score]
    cmd += ["--threads", str(args.threads)]
    cmd += ["--items", str(args.items)] if args.items else []
    cmd += ["--token-budget", str(args.token_budget)] if args.token_budget else []
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(done.returncode)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    rows = [
        ("A/B set", f"{out['set']}: {out['items']} items, {out['score']} scoring"),
        ("arms", f"{out['arms']} (baseline + {out['arms'] - 1} variants)"),
        ("passes", f"{out['passes']} (at most {out['token_budget']:,} tokens each)"),
        ("RSS before the pass", f"{out['loaded_rss_mb']:.0f} MB (model, arms, libraries)"),
        ("peak RSS during the pass", f"{out['ab_peak_rss_mb']:.0f} MB (+{out['ab_own_mb']:.0f} MB)  target ≤ 2,000"),
        ("full logits, for scale", f"{out['full_logits_mb']:.0f} MB (one pass of every arm's full logits; computed)"),
        ("baseline p(match)", f"{out['baseline_p_match']:.3f}; saturated {out['baseline_saturated']}/{out['items']}"),
        (
            "A/B wall time",
            f"{out['ab_seconds']:.1f} s ({out['threads']} torch thread(s); re-measure on a quiet machine)",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
