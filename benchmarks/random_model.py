"""Make a model folder with the shape of another and random weights, for timings only.

    python benchmarks/random_model.py SHAPE_FOLDER OUT_FOLDER [--seed 0]

``SHAPE_FOLDER`` holds a ``config.json`` and tokenizer files (no weights needed); ``OUT_FOLDER`` gets the same
files plus random weights from the config's own initialization.  Compute cost depends only on the shape, so
the benchmarks' ratios hold on such a model where the real weights cannot travel (e.g. a GPU machine with no
network).  Nothing about behaviour can be read from it.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shape", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    config = AutoConfig.from_pretrained(args.shape)
    model = AutoModelForCausalLM.from_config(config)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    for f in args.shape.iterdir():
        if f.is_file() and not f.name.startswith(("model", "config.json")):
            shutil.copy2(f, args.out / f.name)
    print(f"wrote {args.out} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M random parameters)")


if __name__ == "__main__":
    main()
