"""Remote cost on NDIF: request and response bytes and wall time per request, for 1 and for 8 variants
of a spec over 4 prompts in ONE request, next to the same generation run locally.

Needs a server with the models deployed (``scripts/ndif/local_ndif.py up`` prints the host)::

    .venv/bin/python benchmarks/remote.py --host http://127.0.0.1:PORT [--tiny FOLDER] [--repeats 3]

``--host`` defaults to ``CDSL_NDIF_HOST``; ``--tiny`` (default ``CDSL_NDIF_TINY``) adds the tiny model's
rows, which show that the response does not grow with the hidden size (32 there, 576 for SmolLM2).
Each model first runs both sizes once, locally and remotely (a warm-up: the server loads and caches, the client
imports), then ``--repeats`` rounds interleave them — 1 then 8 variants, then 8 then 1, … — each size locally
and then remotely, so a change in the machine's load touches both sizes alike.  Figures are medians over the
rounds.  Prints a table, then as its last line one JSON object for SmolLM2: ``request_bytes_1``,
``response_bytes_1``, ``request_bytes_8``, ``response_bytes_8``, ``time_ratio_8_vs_1`` (remote seconds for 8
variants over seconds for 1) and ``local_ratio_8_vs_1`` (the same generation run locally; on a CPU server the
remote ratio tracks it, since the server computes on the same kind of machine).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PROMPTS = [
    "Write one sentence about the sea.",
    "How do I bake bread?",
    "Tell me about your weekend.",
    "What is the capital of France?",
]
FACTORS = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]


def variants(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Eight variants of one payload: every steer amount scaled by a different factor."""
    out = []
    for factor in FACTORS:
        p = copy.deepcopy(payload)
        for site in p["sites"]:
            for action in site["actions"]:
                action["amount"] = float(action["amount"]) * factor
        out.append(p)
    return out


def _once(model: Any, payloads: list[dict[str, Any]], host: str, tokens: int) -> tuple[float, float, int, int]:
    """One local and one remote run of ``payloads``: (local s, remote s, request bytes, response bytes)."""
    from constraintdsl.models import ndif as remote
    from constraintdsl.run import runner

    started = time.perf_counter()
    runner.generate_variants(model, payloads, PROMPTS, max_new_tokens=tokens)
    local = time.perf_counter() - started
    remote.check_payloads(model, payloads)
    backend = remote.backend_for(model, host)
    started = time.perf_counter()
    runner.generate_variants(model, payloads, PROMPTS, max_new_tokens=tokens, backend=backend)
    far = time.perf_counter() - started
    return local, far, backend.stats.request_bytes, backend.stats.response_bytes


def measure(
    model: Any, sizes: dict[int, list[dict[str, Any]]], host: str, tokens: int, repeats: int
) -> dict[int, dict[str, float]]:
    """Per size: median seconds locally and remotely over interleaved rounds after a warm-up, and the remote
    request's bytes each way."""
    for payloads in sizes.values():  # warm-up
        _once(model, payloads, host, tokens)
    runs: dict[int, list[tuple[float, float, int, int]]] = {n: [] for n in sizes}
    order = list(sizes)
    for r in range(repeats):
        for n in order if r % 2 == 0 else list(reversed(order)):
            runs[n].append(_once(model, sizes[n], host, tokens))
    return {
        n: {
            "local_s": statistics.median(x[0] for x in got),
            "remote_s": statistics.median(x[1] for x in got),
            "request_bytes": got[-1][2],
            "response_bytes": got[-1][3],
        }
        for n, got in runs.items()
    }


def main() -> int:
    """Run the benchmark; the last line printed is the JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("CDSL_NDIF_HOST"))
    parser.add_argument("--tiny", default=os.environ.get("CDSL_NDIF_TINY"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    if not args.host:
        parser.error("give --host URL (or CDSL_NDIF_HOST); scripts/ndif/local_ndif.py up starts a local NDIF")

    import torch

    from constraintdsl.compiler.resolve import resolve
    from constraintdsl.lang.loading import load
    from constraintdsl.models.loading import load_model

    torch.manual_seed(0)
    spec = load(str(REPO / "specs" / "examples" / "sentiment-steer.cdsl"))
    models = [("smollm2", load_model("smollm2"))]
    if args.tiny:
        models.append(("tiny", load_model(args.tiny)))
    rows, summary = [], {}
    for name, model in models:
        if name == "smollm2":
            payload = resolve(spec, model).payload
        else:
            from tests.test_compiler import compile_

            spec_text = "steer a by 1.5 at layer 1 on prompt\nclamp a >= 1.0 at layers 0-2 on generated\n"
            payload = compile_(model, spec_text).payload
        eight = variants(payload)
        runs = measure(model, {1: eight[:1], 8: eight}, args.host, args.tokens, args.repeats)
        hidden = int(model.config.hidden_size)
        for n, r in runs.items():
            sizes = [f"{r['request_bytes']:,}", f"{r['response_bytes']:,}"]
            rows.append(
                [name, str(hidden), f"{n}×{len(PROMPTS)}", *sizes, f"{r['remote_s']:.2f}", f"{r['local_s']:.2f}"]
            )
        if name == "smollm2":
            summary = {
                "request_bytes_1": runs[1]["request_bytes"],
                "response_bytes_1": runs[1]["response_bytes"],
                "request_bytes_8": runs[8]["request_bytes"],
                "response_bytes_8": runs[8]["response_bytes"],
                "time_ratio_8_vs_1": round(runs[8]["remote_s"] / runs[1]["remote_s"], 3),
                "local_ratio_8_vs_1": round(runs[8]["local_s"] / runs[1]["local_s"], 3),
                "tokens": args.tokens,
                "host": args.host,
            }
    head = ["model", "hidden", "variants×prompts", "request B", "response B", "remote s", "local s"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for i, row in enumerate([head, *rows]):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(
        f"(after a warm-up, median of {args.repeats} interleaved rounds; {args.tokens} new tokens, greedy; "
        "remote = one request per row)"
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
