"""Parse + validate throughput for generated 1,000- and 10,000-statement specs.

Prints a table, then one JSON line: ms_1k, ms_10k, growth_10k_over_1k (target: ms_1k < 100,
growth <= 12, i.e. linear).  Each figure is the best of several interleaved repeats, measured
in this run.
"""

from __future__ import annotations

import json
import random
import time

from constraintdsl import parse

OPS = [
    "clamp c{i} >= {v} at layers {a}-{b}",
    "clamp c{i} in [{v}, {w}] at layer {a} on generated",
    "pin c{i} = {v} at layers {a},{b} on last 3",
    "ablate c{i} at layers -{b}..-1 in attn",
    "steer c{i} by {v} sd at layer {a} on prompt",
    "scale c{i} by {v} at depth 40%-60% when c0 > {v} at layer {a}",
    "clamp c{i} <= p{p} at layers {a}-{b} in mlp  # comment",
]


def make_spec(n: int, seed: int = 0) -> str:
    """A valid spec with ``n`` operations over 20 concepts (plus the header and concepts)."""
    rng = random.Random(seed)
    lines = ["version 1", 'name "bench"', 'model "smollm2"']
    lines += [f'concept c{i} from pairs "data/c{i}.yaml"' for i in range(20)]
    for _ in range(n):
        a = rng.randint(0, 20)
        v = round(rng.uniform(-2, 2), 2)
        lines.append(
            rng.choice(OPS).format(
                i=rng.randint(0, 19), a=a, b=a + rng.randint(0, 9), v=v, w=v + 1, p=rng.randint(1, 99)
            )
        )
    return "\n".join(lines) + "\n"


def best_ms(text: str, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        spec = parse(text, "bench.cdsl")
        best = min(best, (time.perf_counter() - t0) * 1000)
    assert spec.constraints
    return best


def main() -> None:
    small, large = make_spec(1_000), make_spec(10_000)
    parse(small)  # build the parser once, outside the timings
    ms_1k, ms_10k = float("inf"), float("inf")
    for _ in range(3):  # interleaved so both sizes see the same machine load
        ms_1k = min(ms_1k, best_ms(small, 3))
        ms_10k = min(ms_10k, best_ms(large, 2))
    growth = ms_10k / ms_1k
    print(f"{'spec':>18} {'ms':>10} {'statements/s':>14}")
    print(f"{'1,000 statements':>18} {ms_1k:>10.1f} {1000 / ms_1k * 1000:>14,.0f}")
    print(f"{'10,000 statements':>18} {ms_10k:>10.1f} {10000 / ms_10k * 1000:>14,.0f}")
    print(f"growth 10k/1k: {growth:.2f} (linear = 10; target <= 12); 1k target < 100 ms")
    print(json.dumps({"ms_1k": round(ms_1k, 2), "ms_10k": round(ms_10k, 2), "growth_10k_over_1k": round(growth, 3)}))


if __name__ == "__main__":
    main()
