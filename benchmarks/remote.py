"""Remote cost on NDIF: request and response bytes and wall time per request, for 1 and for 8 variants
of a spec over 4 prompts in ONE request, next to the same generation run locally; how many requests a
demo-size comparison takes; and what a client that never reads the weights costs at scale.

Needs a server with the models deployed (``scripts/ndif/local_ndif.py up --big`` prints the host and the
scale model's folder)::

    .venv/bin/python benchmarks/remote.py --host http://127.0.0.1:PORT [--tiny FOLDER] [--big FOLDER] [--repeats 3]

``--host`` defaults to ``CDSL_NDIF_HOST``; ``--tiny`` (default ``CDSL_NDIF_TINY``) adds the tiny model's
rows, which show that the response does not grow with the hidden size (32 there, 576 for SmolLM2).
Each model first runs both sizes once, locally and remotely (a warm-up: the server loads and caches, the client
imports), then ``--repeats`` rounds interleave them — 1 then 8 variants, then 8 then 1, … — each size locally
and then remotely, so a change in the machine's load touches both sizes alike.  Figures are medians over the
rounds.  Prints a table, then as its last line one JSON object for SmolLM2: ``request_bytes_1``,
``response_bytes_1``, ``request_bytes_8``, ``response_bytes_8``, ``time_ratio_8_vs_1`` (remote seconds for 8
variants over seconds for 1), ``local_ratio_8_vs_1`` (the same generation run locally; on a CPU server the
remote ratio tracks it, since the server computes on the same kind of machine) and ``remote_over_local_8``
(remote seconds over local seconds for the 8 variants: what the round trip and the server add).

``requests_per_compare``: the demo's comparison (``constraintdsl/cli/demo.py``'s ``COMPARE``: the
sentiment-floor sweep and the refusal cap, the sentiment A/B set, the first 8 shipped prompts, 24 new tokens,
2048 corpus tokens) sent with ``compare(..., remote=host)`` from SmolLM2 read without its weights:
``Comparison.requests`` (one request: one nnsight session), with ``compare_remote_s``.

``--big`` (default ``CDSL_NDIF_BIG``; the scale model ``local_ndif.py --big`` deploys, 1.13B parameters in
float32): ``concept build``, ``explain``, ``run`` and ``compare`` on it, each from a fresh client process spied
as in tests/remote/test_scale_remote.py; ``client_peak_rss_mb`` is the largest peak RSS of the four,
``weights_mb`` the weights' size, ``client_rss_over_weights`` their ratio (the target: under 0.25) and
``client_weight_reads`` how many weight files the clients opened (the target: 0).
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
    parser.add_argument("--big", default=os.environ.get("CDSL_NDIF_BIG"), help="the scale model's folder")
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
                "remote_over_local_8": round(runs[8]["remote_s"] / runs[8]["local_s"], 3),
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
    demo = demo_compare(args.host)
    print(
        f"demo comparison (SmolLM2 without its weights, remote): {demo['requests_per_compare']} request(s), "
        f"{demo['compare_remote_s']:.1f} s; forward passes {demo['passes']}"
    )
    summary.update(requests_per_compare=demo["requests_per_compare"], compare_remote_s=demo["compare_remote_s"])
    if args.big:
        summary.update(client_at_scale(Path(args.big), args.host))
    print(json.dumps(summary))
    return 0


def demo_compare(host: str) -> dict[str, Any]:
    """The demo's comparison sent with ``compare(..., remote=host)`` from SmolLM2 read without its weights."""
    from constraintdsl.cli.compare import shipped
    from constraintdsl.cli.run import read_prompts
    from constraintdsl.compare.ab import load_ab
    from constraintdsl.compare.comparison import Inputs, compare, corpus_windows, read_corpus
    from constraintdsl.lang.loading import load
    from constraintdsl.models.loading import load_lazy

    model = load_lazy("smollm2")
    specs = [load(str(REPO / "specs" / "examples" / f"{name}.cdsl")) for name in ("sentiment-sweep", "refusal-cap")]
    prompts = tuple(read_prompts(str(shipped("prompts")))[:8])  # --limit 8
    windows, total = corpus_windows(model.tokenizer, read_corpus(str(shipped("corpus"))), window=128, max_tokens=2048)
    ab = load_ab(str(REPO / "specs" / "data" / "ab" / "sentiment.yaml"))
    inputs = Inputs(prompts, windows, total, ab=ab, max_new_tokens=24)
    started = time.perf_counter()
    result = compare(model, specs, inputs, remote=host)
    seconds = time.perf_counter() - started
    return {"requests_per_compare": result.requests, "compare_remote_s": round(seconds, 1), "passes": result.passes}


def client_at_scale(big: Path, host: str) -> dict[str, Any]:
    """The scale model's four client commands, spied as in tests/remote/test_scale_remote.py: the clients'
    largest peak RSS against the weights' size, and the weight files they opened (none expected)."""
    import tempfile

    from tests.remote.test_scale_remote import scale_session, weights_bytes

    size = weights_bytes(big)
    with tempfile.TemporaryDirectory(prefix="cdsl-scale-bench-") as tmp:
        runs = scale_session(big, host, Path(tmp))
    for run in runs.values():
        print(run.summary(size))
    failed = [f"{run.command} (exit {run.code})" for run in runs.values() if run.code != 0]
    if failed:
        raise SystemExit(
            f"at scale: {', '.join(failed)} failed:\n"
            + next(run.failure(size) for run in runs.values() if run.code != 0)
        )
    peak = max(run.peak_rss_bytes for run in runs.values())
    return {
        "client_peak_rss_mb": round(peak / 1e6, 1),
        "client_peak_rss_mb_by_command": {verb: round(run.peak_rss_bytes / 1e6, 1) for verb, run in runs.items()},
        "weights_mb": round(size / 1e6, 1),
        "client_rss_over_weights": round(peak / size, 4),
        "client_weight_reads": sum(len(run.weight_reads(big)) for run in runs.values()),
        "scale_requests_per_compare": json.loads(runs["compare"].stdout)["requests"],
    }


if __name__ == "__main__":
    sys.exit(main())
