"""``cdsl tune`` against an exhaustive grid: the largest sentiment floor within a KL budget, and what each costs.

    python benchmarks/tune.py [--budget 0.05] [--grid 32] [--prompts 4] [--new-tokens 8] [--corpus-tokens 1024]

Workload (SmolLM2-135M, float32, CPU): the shipped sentiment concept and A/B set, the spec

    let floor = 0 .. 3
    clamp sentiment >= $floor at layers 10-14 on generated
    budget kl <= 0.05

searched by :func:`constraintdsl.tune` (goal: the strongest floor within the budget; tolerance half a grid
step by default), against every one of ``--grid`` evenly spaced floors over the same range run as arms of one
:func:`constraintdsl.compare.comparison.compare` (the exhaustive answer: the largest grid floor within the
budget).  Both measure the same things on the same inputs (corpus windows, prompts, the A/B set).

- ``tune_value`` / ``grid_value``: the floor each picks (``null`` when none is within the budget);
- ``within_one_grid_step``: the two differ by at most one grid step (target: true);
- ``forward_passes_tune`` / ``forward_passes_grid``: batched forward passes each ran, as ``compare`` counts
  them (corpus passes, A/B passes, one per generation, one readout pass); ``passes_ratio`` = tune / grid.  A
  batched pass carries every arm of its round, so the grid (one round of 33 arms) needs few of them while its
  compute grows with its arms; hence also
- ``sequences_tune`` / ``sequences_grid``: the forward work, input sequences times the arms each went through
  (``Comparison.sequences``), and ``work_ratio`` = tune / grid (target ≤ 0.34);
- ``seconds_ratio`` = tune's wall time / the grid's, from the same run (re-measure on a quiet machine);
- ``tune_points``, ``tune_rounds``.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import constraintdsl as cdsl  # noqa: E402
from constraintdsl.cli.run import read_prompts  # noqa: E402
from constraintdsl.compare.ab import load_ab  # noqa: E402
from constraintdsl.compare.comparison import Inputs, compare, corpus_windows, read_corpus  # noqa: E402

SPEC = """version 1
name "sentiment-floor"
concept sentiment from pairs "{data}"
let floor = {lo} .. {hi}
clamp sentiment >= $floor at layers 10-14 on generated
budget kl <= {budget}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=0.05, help="KL budget per corpus token")
    parser.add_argument("--low", type=float, default=0.0)
    parser.add_argument("--high", type=float, default=3.0)
    parser.add_argument("--grid", type=int, default=32, help="floors in the exhaustive grid")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--corpus-tokens", type=int, default=1024)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--per-round", type=int, default=4)
    parser.add_argument("--tolerance", type=float, default=None, help="default: half a grid step")
    parser.add_argument("--ab", default=str(ROOT / "specs" / "data" / "ab" / "sentiment.yaml"))
    parser.add_argument("--no-ab", action="store_true", help="leave the A/B set out of both")
    args = parser.parse_args()

    model = cdsl.load_model("smollm2")
    prompts = tuple(read_prompts(str(ROOT / "specs" / "prompts" / "compare.txt"))[: args.prompts])
    documents = read_corpus(str(ROOT / "specs" / "corpus" / "neutral.txt"))
    windows, total = corpus_windows(model.tokenizer, documents, window=args.window, max_tokens=args.corpus_tokens)
    ab = None if args.no_ab else load_ab(args.ab)
    inputs = Inputs(prompts=prompts, corpus=windows, corpus_tokens_total=total, ab=ab, max_new_tokens=args.new_tokens)
    step = (args.high - args.low) / (args.grid - 1)
    tolerance = args.tolerance if args.tolerance is not None else step / 2

    with tempfile.TemporaryDirectory() as tmp:
        data = ROOT / "specs" / "data" / "sentiment.yaml"
        text = SPEC.format(data=data, lo=args.low, hi=args.high, budget=args.budget)
        path = Path(tmp) / "floor.cdsl"
        path.write_text(text)
        spec = cdsl.load(path)

        t0 = time.perf_counter()
        result = cdsl.tune(model, spec, inputs, goal="strongest", tolerance=tolerance, per_round=args.per_round)
        tune_seconds = time.perf_counter() - t0
        tune_value = result.best.values[0][1] if result.found and result.best is not None else None
        for p in result.points:
            print(f"tune  round {p.round}  floor {p.values[0][1]:.4g}  kl {p.tax['kl']:.4g}  meets {p.meets}")

        floors = [round(args.low + step * i, 6) for i in range(args.grid)]
        grid_specs = []
        for i, floor in enumerate(floors):
            gpath = Path(tmp) / f"grid{i}.cdsl"
            gpath.write_text(text.replace(f"let floor = {args.low} .. {args.high}\n", "").replace("$floor", f"{floor}"))
            grid_specs.append(cdsl.load(gpath))
        t0 = time.perf_counter()
        grid = compare(model, grid_specs, inputs, marginal=False)
        grid_seconds = time.perf_counter() - t0
    grid_kl = [row.tax["kl"] for row in grid.rows[1:]]
    for floor, kl in zip(floors, grid_kl, strict=True):
        print(f"grid  floor {floor:.4g}  kl {kl:.4g}  within {kl <= args.budget}")
    within = [f for f, kl in zip(floors, grid_kl, strict=True) if kl <= args.budget]
    grid_value = max(within) if within else None
    passes_grid = sum(grid.passes.values())
    sequences_grid = sum(grid.sequences.values())
    out: dict[str, Any] = {
        "benchmark": "tune",
        "budget_kl": args.budget,
        "range": [args.low, args.high],
        "grid_points": args.grid,
        "grid_step": step,
        "tolerance": tolerance,
        "tune_value": tune_value,
        "grid_value": grid_value,
        "within_one_grid_step": (
            tune_value is not None and grid_value is not None and abs(tune_value - grid_value) <= step + 1e-9
        )
        or (tune_value is None and grid_value is None),
        "forward_passes_tune": result.forward_passes,
        "forward_passes_grid": passes_grid,
        "passes_ratio": result.forward_passes / passes_grid if passes_grid else None,
        "sequences_tune": result.sequences,
        "sequences_grid": sequences_grid,
        "work_ratio": result.sequences / sequences_grid if sequences_grid else None,
        "seconds_ratio": round(tune_seconds / grid_seconds, 3) if grid_seconds else None,
        "tune_points": len(result.points),
        "tune_rounds": result.rounds,
        "tune_seconds": round(tune_seconds, 2),
        "grid_seconds": round(grid_seconds, 2),
        "inputs": {
            "prompts": len(prompts),
            "new_tokens": args.new_tokens,
            "corpus_tokens": int(windows.numel()),
            "ab_items": len(ab.items) if ab is not None else 0,
        },
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
