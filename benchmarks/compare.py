"""Batched comparison versus one spec at a time: wall time and forward passes.

    python benchmarks/compare.py [--variants 8] [--prompts 16] [--new-tokens 16] [--corpus-tokens 512]

Workload (SmolLM2-135M, float32, CPU by default): a sentiment floor swept over ``--variants`` levels
(``let floor = …``), the first ``--prompts`` comparison prompts, ``--new-tokens`` generated tokens,
and the first ``--corpus-tokens`` tokens of the shipped reference corpus in windows of 128.

- **batched**: ``compare`` itself: the baseline and every variant as invokes of shared passes (the
  corpus passes, one generation, one readout pass).  Remote, the whole comparison is one NDIF request
  (within ``--request-tokens``; ``benchmarks/remote.py`` counts it against a server), or one per pass.
- **sequential**: each arm alone (the baseline, then each variant) through the same three passes,
  the way one would run them one spec at a time.  Its wall time is the sum of the per-arm forward
  costs; it needs (1 + variants)× the passes and requests.

``batched_over_sum_ratio`` = batched wall time / sequential wall time (target ≤ 1.1: batching adds no
cost beyond the compute).  Rounds alternate the two orders and each figure is the fastest round (on
a shared machine other processes only ever add time).  One torch thread by default (``--threads``).

Passes and requests are **counted on the real code path**, not derived from a formula: a forward pre-hook
on the model's torch module counts every forward it runs (a generation runs one per new token), and a wrapper
around the module's ``generate`` counts generations.  A request is one trace or one generation (each is one
NDIF request when a remote comparison goes pass by pass): the forwards outside a generation plus the
generations.  ``--ab FILE`` adds
an A/B set to both (its passes and requests counted the same way).  The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from constraintdsl import load, load_model  # noqa: E402
from constraintdsl.cli.run import read_prompts  # noqa: E402
from constraintdsl.compare.ab import load_ab  # noqa: E402
from constraintdsl.compare.ab_pass import run_ab  # noqa: E402
from constraintdsl.compare.comparison import (  # noqa: E402
    PASS_LOGIT_BUDGET,
    Inputs,
    _payloads,
    build_arms,
    compare,
    corpus_windows,
    read_corpus,
)
from constraintdsl.compare.passes import score_corpus  # noqa: E402
from constraintdsl.run.readout import (  # noqa: E402
    Read,
    generated_mask,
    project_rows,
)
from constraintdsl.run.runner import generate_variants  # noqa: E402

SPEC = """version 1
name "floor-sweep"
concept sentiment from pairs "{data}"
let floor = {levels}
clamp sentiment >= $floor at layers 10-14 on generated
"""


class Calls:
    """Counts what the model actually runs: ``forwards`` (calls of its torch module's forward), ``generations``
    (calls of its ``generate``) and ``requests`` (traces and generations: the forwards outside a generation
    plus the generations — one NDIF request each with ``--remote``)."""

    def __init__(self, model: Any) -> None:
        hf = model._module
        self.forwards = self.generations = self.outside = 0
        self._generating = False
        hf.register_forward_pre_hook(self._forward)
        original = hf.generate

        def generate(*args: Any, **kwargs: Any) -> Any:
            self.generations += 1
            self._generating = True
            try:
                return original(*args, **kwargs)
            finally:
                self._generating = False

        hf.generate = generate

    def _forward(self, *_: Any) -> None:
        self.forwards += 1
        self.outside += not self._generating

    def snapshot(self) -> tuple[int, int]:
        """(forwards, requests) so far."""
        return self.forwards, self.outside + self.generations


def sequential(model: Any, arms: list[Any], inputs: Inputs, read: Read) -> float:
    """Each arm alone through the corpus passes, the A/B set (if any), a generation and a readout; seconds."""
    rows, width = (int(x) for x in inputs.corpus.shape)
    vocab = int(model.tokenizer.vocab_size)
    per_pass = max(1, PASS_LOGIT_BUDGET // (width * vocab))
    stops = {int(t) for t in (model.tokenizer.eos_token_id, model.tokenizer.pad_token_id) if t is not None}
    started = time.perf_counter()
    for payload in _payloads(arms, range(len(arms))):
        for start in range(0, rows, per_pass):
            ids = inputs.corpus[start : start + per_pass]
            score_corpus(model, [payload], ids, torch.ones_like(ids), prompt_len=inputs.prompt_tokens)
        if inputs.ab is not None:
            run_ab(model, [payload], inputs.ab)
        (gen,) = generate_variants(model, [payload], list(inputs.prompts), max_new_tokens=inputs.max_new_tokens)
        sel = generated_mask(gen.ids, gen.prompt_width, stops)
        mask = torch.cat([gen.attention_mask.bool(), sel[:, gen.prompt_width :]], dim=1).long()
        project_rows(model, gen.ids, mask, sel, [read])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--variants", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--corpus-tokens", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default=None, help="move the model here (e.g. cuda)")
    parser.add_argument("--ab", default=None, help="an A/B set to score too (e.g. specs/data/ab/sentiment.yaml)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model)
    if args.device:
        model._module.to(args.device)
    levels = " | ".join(f"{0.25 * (i + 1):g}" for i in range(args.variants))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.cdsl"
        path.write_text(SPEC.format(data=ROOT / "specs" / "data" / "sentiment.yaml", levels=levels))
        spec = load(path)
        prompts = read_prompts(str(ROOT / "specs" / "prompts" / "compare.txt"))[: args.prompts]
        windows, total = corpus_windows(
            model.tokenizer, read_corpus(str(ROOT / "specs" / "corpus" / "neutral.txt")), max_tokens=args.corpus_tokens
        )
        ab = load_ab(args.ab) if args.ab else None
        inputs = Inputs(tuple(prompts), windows, total, ab=ab, max_new_tokens=args.new_tokens)
        arms, _ = build_arms(model, [spec], marginal=False)
        plan = arms[1].plan
        assert plan is not None
        from constraintdsl.concepts.artifact import load_artifact
        from constraintdsl.concepts.extract import recommended_layers

        art = load_artifact(plan.concepts["sentiment"])
        layer = recommended_layers(art, top=1)[0]
        read = Read(layer, "resid", torch.tensor(art.direction(layer))[None])

        compare(model, [spec], inputs, marginal=False)  # warm-up: caches, allocator, lazy imports
        calls = Calls(model)
        batched: list[float] = []
        seq: list[float] = []
        counted: dict[str, tuple[int, int]] = {}
        for r in range(args.rounds):
            for which in ("batched", "sequential") if r % 2 == 0 else ("sequential", "batched"):
                before = calls.snapshot()
                if which == "batched":
                    t0 = time.perf_counter()
                    result = compare(model, [spec], inputs, marginal=False)
                    batched.append(time.perf_counter() - t0)
                else:
                    seq.append(sequential(model, arms, inputs, read))
                after = calls.snapshot()
                counted[which] = (after[0] - before[0], after[1] - before[1])
                print(f"round {r + 1} {which}: {(batched if which == 'batched' else seq)[-1]:.2f} s", flush=True)
    arms_n = args.variants + 1
    rows = [
        (
            "workload",
            f"{arms_n} arms × {len(prompts)} prompts, {args.new_tokens} new tokens, {windows.numel()} corpus "
            f"tokens" + (f", {len(ab.items)} A/B items" if ab is not None else ""),
        ),
        (
            "batched (compare)",
            f"{min(batched):.2f} s; {counted['batched'][0]} forward passes, "
            f"{counted['batched'][1]} requests (traces + generations, counted)",
        ),
        (
            "one arm at a time",
            f"{min(seq):.2f} s; {counted['sequential'][0]} forward passes, "
            f"{counted['sequential'][1]} requests (counted)",
        ),
        ("batched / one at a time", f"{min(batched) / min(seq):.3f}  (target ≤ 1.1; a timing: re-measure when quiet)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    out = {
        "device": str(getattr(model, "device", "cpu")),
        "arms": arms_n,
        "prompts": len(prompts),
        "new_tokens": args.new_tokens,
        "corpus_tokens": int(windows.numel()),
        "batched_seconds": round(min(batched), 3),
        "sequential_seconds": round(min(seq), 3),
        "batched_over_sum_ratio": round(min(batched) / min(seq), 4),
        "ab_items": len(ab.items) if ab is not None else 0,
        "forward_passes_batched": counted["batched"][0],
        "forward_passes_sequential": counted["sequential"][0],
        "requests_batched": counted["batched"][1],
        "requests_sequential": counted["sequential"][1],
        "passes_reported_by_compare": result.passes,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
