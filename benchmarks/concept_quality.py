"""Regenerate the quality table of docs/concepts.md: best layer and held-out AUROC per shipped concept.

    python benchmarks/concept_quality.py [--model smollm2] [--method mean] [--no-cache] [--threads 1]

Builds (or reuses from the concept cache) every ``specs/data/*.yaml`` concept at all layers of the residual
stream and prints a Markdown table.  AUROC is on each dataset's held-out ``test`` split; the percentiles
(not shown) come from the same split.  ``build s`` is 0 for a concept reused from the cache; torch runs one
intra-op thread by default, because on a shared machine a busy neighbour makes every thread barrier wait and
build times swing by 10x or more (``--threads 0`` keeps torch's default).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from constraintdsl.concepts.build import build_concept
from constraintdsl.concepts.extract import recommended_layers
from constraintdsl.models.loading import load_model

DATA = Path(__file__).resolve().parent.parent / "specs" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--method", default="mean", choices=["mean", "pca"])
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    model = load_model(args.model)
    rows = []
    for path in sorted(DATA.glob("*.yaml")):
        start = time.perf_counter()
        art = build_concept(path, model, method=args.method, use_cache=not args.no_cache, progress=False)
        seconds = time.perf_counter() - start
        cal = art.calibration
        assert cal is not None and art.layers is not None
        best = recommended_layers(art, top=3)
        row = art.row(best[0])
        auc = cal.auroc.astype(np.float64)
        layers_above = [art.layers[i] for i in np.flatnonzero(auc >= 0.9)]
        rows.append(
            f"| {art.concept} | {art.metadata.get('train_pairs')}/{art.metadata.get('test_pairs')} "
            f"| {best[0]} | {auc[row]:.3f} | {cal.scale[row]:.2f} | {cal.scale[row] / cal.std[row]:.2f} "
            f"| {', '.join(map(str, best))} | {len(layers_above)}/{len(art.layers)} | {seconds:.1f} |"
        )
    print(f"Model `{args.model}`, site `resid`, method `{args.method}`.\n")
    print(
        "| concept | train/test pairs | best layer | held-out AUROC | pole distance (raw) "
        "| distance / std | recommended | layers with AUROC ≥ 0.90 | build s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
