"""``make demo``: the main job on the embedded SmolLM2, end to end.

1. check every example spec (syntax, includes, concept files) and print its hash;
2. build — or reuse from the cache — the four shipped concepts and print their quality;
3. explain a gated, jointly solved spec (the resolved plan);
4. run the sentiment spec on neutral prompts: baseline and constrained generations side by side,
   the effect on generated text, and which constraints bound;
5. compare a sentiment-floor sweep (four variants) and a refusal cap against the baseline on the
   same inputs: effect, tax, load, marginal tax, degrees of freedom; write the report with its plots
   to ``reports/demo/`` and record the run in the local store.

Run it with ``python -m constraintdsl.cli.demo`` (``make demo``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[2]

# The comparison README shows (its table and docs/compare-demo/frontier.png come from this command).
COMPARE = [
    "cdsl",
    "compare",
    "specs/examples/sentiment-sweep.cdsl",
    "specs/examples/refusal-cap.cdsl",
    "--ab",
    "specs/data/ab/sentiment.yaml",
    "--limit",
    "8",
    "--max-new-tokens",
    "24",
    "--corpus-tokens",
    "2048",
    "--report",
    "reports/demo",
]


def _section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def main() -> int:
    """Run the demo; returns the exit code."""
    from constraintdsl.concepts.build import build_concept
    from constraintdsl.concepts.extract import recommended_layers
    from constraintdsl.models.loading import load_model

    from .app import main as cdsl
    from .run import read_prompts

    examples = ROOT / "specs" / "examples"
    if not examples.is_dir():
        print("the demo runs from a source checkout (specs/ not found)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    specs = sorted(str(p.relative_to(ROOT)) for p in examples.iterdir() if p.suffix in (".cdsl", ".yaml"))

    _section("1. check the example specs")
    code = cdsl(["check", *specs])
    for spec in specs:
        cdsl(["hash", spec])
    if code != 0:
        return code

    _section("2. the shipped concepts on SmolLM2 (built once, then cached)")
    model = load_model("smollm2")
    print(f"{'concept':<12} {'best layer':>10} {'held-out AUROC':>15} {'pole distance':>14}  recommended layers")
    for data in sorted((ROOT / "specs" / "data").glob("*.yaml")):
        art = build_concept(data, model, progress=True)
        cal = art.calibration
        assert cal is not None
        best = recommended_layers(art, top=3)
        row = art.row(best[0])
        print(f"{art.concept:<12} {best[0]:>10} {float(cal.auroc[row]):>15.3f} {float(cal.scale[row]):>14.2f}  {best}")

    _section("3. explain: a gated spec, two directions clamped jointly")
    code = cdsl(["explain", "specs/examples/gated-floor.cdsl"])
    if code != 0:
        return code

    _section("4. run: sentiment steer + floor on neutral prompts, beside the baseline")
    prompts = read_prompts(str(ROOT / "specs" / "prompts" / "neutral.txt"))
    args = ["run", "specs/examples/sentiment-steer.cdsl", "--max-new-tokens", "24"]
    for p in prompts:
        args += ["--prompt", p]
    code = cdsl(args)
    if code != 0:
        return code

    _section("5. compare: a sentiment-floor sweep and a refusal cap, with their alignment tax")
    print("$ " + " ".join(COMPARE), flush=True)
    code = cdsl(COMPARE[1:])
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s", flush=True)
    print(_path_hint(), flush=True)
    return code


def _path_hint() -> str:
    """How to get ``cdsl`` on PATH: it lives in the virtualenv ``make`` created, not on the system PATH."""
    scripts = Path(sys.executable).parent
    if (scripts / "cdsl").exists():
        try:
            shown = scripts.relative_to(Path.cwd())
        except ValueError:
            shown = scripts
        return f"cdsl is installed in {shown}: run `source {shown}/activate` to put it on PATH (or call {shown}/cdsl)"
    return "cdsl is not on PATH: install the package (pip install -e .) to get the command"


if __name__ == "__main__":
    import os

    os.chdir(ROOT)
    sys.exit(main())
