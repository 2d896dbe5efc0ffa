"""Warnings: legal statements that are likely not what the author meant (a steer stacked over layers, an
``ablate`` whose raw 0 lies between the poles, a floor over most text on every token at many layers) are
reported with the one renderer as ``warning:``, in JSON with ``"severity": "warning"``, by ``check``,
``explain``, ``run`` and ``compare``; ``--strict`` makes them errors (exit 1).  They fire on these cases
and not on any shipped example."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nnsight import TransformersModel
from transformers import AutoModelForCausalLM

import constraintdsl as cdsl
from constraintdsl.cli.app import main
from constraintdsl.compiler.lint import merge_variant_warnings
from constraintdsl.compiler.plan import Plan
from constraintdsl.concepts.artifact import load_artifact, save_artifact
from constraintdsl.errors import render
from constraintdsl.lang.variants import ends_as_values, expand
from constraintdsl.models.loading import load_model
from tests.test_compare import write_concepts
from tests.test_compiler import artifact
from tests.tiny import tiny_config, tiny_hf, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "specs" / "examples"
HEAD = 'version 1\nconcept a from pairs "a.yaml"\n'
LAYERS = tuple(range(6))
# The tiny concept (tests.test_compiler.artifact): negative pole at 1 raw, pole distance 2 raw, calibration
# percentiles p1..p99 at 0.1..9.9 raw, so its p75 is 7.5 raw = 3.25 calibrated.


@pytest.fixture(scope="module")
def model() -> Any:
    """A tiny Llama with six layers, so a statement can span more than a few of them."""
    config = tiny_config("llama")
    config.num_hidden_layers = 6
    hf = AutoModelForCausalLM.from_config(config).eval()
    return TransformersModel(hf, tokenizer=tiny_tokenizer())


def between(seed: int = 1, layers: tuple[int, ...] = LAYERS) -> Any:
    """A concept whose raw 0 lies half way between its poles (negative pole at -1 raw, positive at +1)."""
    art = artifact(seed=seed, layers=layers)
    cal = art.calibration
    assert cal is not None
    ones = np.ones(len(layers), dtype=np.float32)
    return replace(art, calibration=replace(cal, neg_mean=-ones, pos_mean=ones, mean=0 * ones))


def warnings_of(model: Any, body: str, concept: Any = None) -> list[str]:
    plan = cdsl.compile(cdsl.parse(HEAD + body, "w.cdsl"), model, concepts={"a": concept or artifact(layers=LAYERS)})
    assert all(d.severity == "warning" for d in plan.warnings)
    return [d.message + " | " + (d.hint or "") for d in plan.warnings]


def test_a_steer_over_several_layers_warns_with_its_total_once_it_exceeds_three_pole_distances(model: Any) -> None:
    assert warnings_of(model, "steer a by 1 at layers 0-2\n") == []  # exactly 3: not beyond
    (w,) = warnings_of(model, "steer a by 1.1 at layers 0-2\n")
    assert "adds its amount at each of 3 layers" in w
    assert "6.6 raw in all, 3.3 pole distances at layer 2" in w
    assert "steer at one layer" in w and "by 1 at each of these layers" in w
    (w,) = warnings_of(model, "steer a by -2 at layers 3-4 on generated\n")
    assert "-8 raw in all, 4 pole distances at layer 4" in w
    (w,) = warnings_of(model, "steer a by 3.5 at layer 1\n")
    assert "adds 3.5 pole distances at layer 1 (7 raw), more than 3" in w
    assert warnings_of(model, "steer a by 2 raw at layers 0-2\n") == []  # 6 raw in all: 3 pole distances
    uncalibrated = artifact(layers=LAYERS, calibrated=False)
    assert warnings_of(model, "steer a by 9 raw at layers 0-5\n", uncalibrated) == []  # no pole distance to judge by


def test_an_ablate_between_the_poles_warns_with_the_calibrated_value_and_suggests_a_cap_or_pin(model: Any) -> None:
    (w,) = warnings_of(model, "ablate a at layers 1-2 on generated\n", between())
    assert "pins the raw projection to 0, which lies between a's poles at layers 1-2 (0.50 calibrated" in w
    assert "`clamp a <= 0 at layers 1-2 on generated`" in w and "`pin a = 0 at layers 1-2 on generated`" in w
    assert warnings_of(model, "ablate a at layers 1-2\n") == []  # raw 0 is below this concept's negative pole


def test_a_floor_on_all_tokens_above_most_text_at_more_than_three_layers_warns(model: Any) -> None:
    (w,) = warnings_of(model, "clamp a >= 3.3 at layers 0-3\n")
    assert "puts a floor on all tokens above the concept's p75 at 4 of its 4 layers" in w
    assert "`clamp a >= 3.3 at layers 0-3 on generated`" in w
    assert len(warnings_of(model, "clamp a >= 3.3 at layers 0-3 on prompt\n")) == 1
    assert len(warnings_of(model, "pin a = 4 at layers 0-5\n")) == 1
    assert len(warnings_of(model, "clamp a in [3.3, 5] at layers 2-5\n")) == 1
    assert warnings_of(model, "clamp a >= 3.3 at layers 0-2\n") == []  # three layers are "a few"
    assert warnings_of(model, "clamp a >= 3.2 at layers 0-5\n") == []  # below p75 (3.25)
    assert warnings_of(model, "clamp a >= 3.3 at layers 0-5 on generated\n") == []
    assert warnings_of(model, "clamp a <= 3.3 at layers 0-5\n") == []


def test_warnings_shared_by_every_variant_appear_once_and_the_others_name_their_variants(model: Any) -> None:
    spec = cdsl.parse(HEAD + "let k = 1 | 2 | 3\nsteer a by $k at layers 0-2\nablate a at layer 1\n", "v.cdsl")
    per = []
    for v in expand(spec):
        plan = cdsl.compile(v.spec, model, concepts={"a": between()})
        per.append((v.name, plan.warnings))
    merged = merge_variant_warnings(per)
    assert [d.span.line for d in merged] == [4, 4, 5]
    assert merged[0].message.startswith("in variant k=2: `steer a by 2 at layers 0-2`")
    assert merged[1].message.startswith("in variant k=3: `steer a by 3 at layers 0-2`")
    assert merged[2].message.startswith("`ablate a` pins")  # every variant has it: said once, as it is


def test_a_warning_at_one_end_of_a_range_names_that_end_not_a_variant(model: Any) -> None:
    spec = cdsl.parse(HEAD + "let k = 1 .. 3\nsteer a by $k at layers 0-2\n", "r.cdsl")
    per = []
    for v in expand(ends_as_values(spec)):
        per.append((v.name, cdsl.compile(v.spec, model, concepts={"a": between()}).warnings))
    (merged,) = merge_variant_warnings(per, ends=True)
    assert merged.message.startswith("at the range end k=3: `steer a by 3 at layers 0-2`"), merged.message


def test_warnings_render_with_the_one_renderer_and_as_json(model: Any) -> None:
    text = HEAD + "steer a by 2 at layers 0-1\n"
    plan: Plan = cdsl.compile(cdsl.parse(text, "r.cdsl"), model, concepts={"a": artifact(layers=LAYERS)})
    out = render(plan.warnings, {"r.cdsl": text})
    assert out.startswith("r.cdsl:3:1: warning: `steer a by 2 at layers 0-1` adds its amount at each of 2 layers")
    assert "\n    steer a by 2 at layers 0-1\n    ^~~~" in out and "\nhint: steer at one layer" in out
    (d,) = plan.warnings
    assert d.to_dict()["severity"] == "warning" and d.to_dict()["line"] == 3


# -- the command line: check, explain, run, compare on a tiny model saved to a folder ------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("warnings")
    folder = root / "tiny"
    tiny_hf("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    write_concepts(load_model(str(folder)), root)  # a.safetensors, b.safetensors (metadata for this model)
    a = load_artifact(root / "a.safetensors")
    save_artifact(replace(between(layers=(0, 1, 2)), metadata=a.metadata), root / "mid.safetensors")
    head = f'version 1\nmodel "{folder}"\nconcept a from file "a.safetensors"\nconcept m from file "mid.safetensors"\n'
    (root / "warn.cdsl").write_text(head + "steer a by 2 at layers 0-2\nablate m at layer 1 on generated\n")
    (root / "fine.cdsl").write_text(head + "steer a by 1 at layer 1\nclamp m <= 0 at layer 1 on generated\n")
    (root / "prompts.txt").write_text("hello there\n")
    (root / "corpus.txt").write_text("The cat sat on the mat and looked out of the window at the rain. " * 4)
    return root


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_check_reports_warnings_from_concept_files_without_loading_the_model(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = work / "warn.cdsl"
    code, out, err = run(["check", str(spec)], capsys)
    assert code == 0 and f"ok: {spec} (2 concepts, 2 constraints, 2 warnings)" in out
    assert f"{spec}:5:1: warning: `steer a by 2 at layers 0-2` adds its amount at each of 3 layers" in err
    assert f"{spec}:6:1: warning: `ablate m` pins the raw projection to 0" in err
    code, out, _ = run(["check", "--format", "json", str(spec)], capsys)
    (result,) = json.loads(out)["files"]
    assert code == 0 and result["ok"] is True
    assert [(d["line"], d["severity"]) for d in result["diagnostics"]] == [(5, "warning"), (6, "warning")]
    code, out, err = run(["check", str(work / "fine.cdsl")], capsys)
    assert (code, err) == (0, "")


def test_strict_makes_warnings_errors_in_check_explain_run_and_compare(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = str(work / "warn.cdsl")
    code, out, err = run(["check", "--strict", spec], capsys)
    assert code == 1 and f"{spec}:5:1: error: `steer a by 2" in err and "ok:" not in out
    code, out, _ = run(["check", "--strict", "--format", "json", spec], capsys)
    assert code == 1 and {d["severity"] for d in json.loads(out)["files"][0]["diagnostics"]} == {"error"}
    compare = [
        "compare",
        spec,
        "--prompts",
        str(work / "prompts.txt"),
        "--corpus",
        str(work / "corpus.txt"),
        "--window",
        "8",
        "--max-new-tokens",
        "2",
        "--no-store",
    ]
    for args in (["explain", spec], ["run", spec, "--prompt", "hi", "--max-new-tokens", "2"], compare):
        code, out, err = run([*args, "--strict"], capsys)
        assert code == 1, (args[0], err)
        assert f"{spec}:5:1: error: `steer a by 2 at layers 0-2`" in err and f"{spec}:6:1: error: `ablate m`" in err
        assert "warning(s) treated as errors (--strict)" in err and "constrained:" not in out and "ΔNLL" not in out
        code, out, err = run(args, capsys)
        assert code == 0, (args[0], err)
        assert f"{spec}:5:1: warning: `steer a by 2 at layers 0-2`" in err and "Traceback" not in err


def test_json_outputs_carry_the_warnings_as_diagnostics(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = str(work / "warn.cdsl")
    code, out, _ = run(["explain", spec, "--format", "json"], capsys)
    explained = json.loads(out)
    assert code == 0 and [d["severity"] for d in explained["diagnostics"]] == ["warning", "warning"]
    code, out, _ = run(["run", spec, "--prompt", "hi", "--max-new-tokens", "2", "--format", "json"], capsys)
    assert code == 0 and [d["line"] for d in json.loads(out)["diagnostics"]] == [5, 6]
    code, out, _ = run(
        [
            "compare",
            spec,
            "--prompts",
            str(work / "prompts.txt"),
            "--corpus",
            str(work / "corpus.txt"),
            "--window",
            "8",
            "--max-new-tokens",
            "2",
            "--no-store",
            "--json",
        ],
        capsys,
    )
    assert code == 0 and [d["line"] for d in json.loads(out)["diagnostics"]] == [5, 6]


def test_explain_shows_each_raw_value_with_its_calibrated_value_per_layer(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = work / "cal.cdsl"
    spec.write_text(
        (work / "warn.cdsl").read_text().split("steer")[0]
        + "clamp a >= 0.3 at layer 1\nsteer a by 1.5 at layers 0-1\nablate m at layer 2\npin a = 1 raw at layer 0\n"
    )
    code, out, _ = run(["explain", str(spec)], capsys)
    assert code == 0
    assert "≥ 1.6 raw (0.3 cal)" in out  # negative pole 1 raw, pole distance 2 raw
    assert "add 3 raw (1.5 pole dist., 1.5 so far)" in out and "add 3 raw (1.5 pole dist., 3 so far)" in out
    assert "= 0 raw (0.5 cal)" in out  # m's raw 0: half way between its poles
    assert "= 1 raw (0 cal)" in out
    assert "tokens: every selection leaves out each sequence's first real token (the attention sink" in out
    code, out, _ = run(["explain", str(spec), "--format", "json"], capsys)
    ops = [op for site in json.loads(out)["sites"] for op in site["ops"]]
    clamp = next(op for op in ops if op["statement"].startswith("clamp"))
    assert clamp["lo_raw"] == pytest.approx(1.6) and clamp["lo_cal"] == pytest.approx(0.3)
    steers = [op["pole_distances_so_far"] for op in ops if op["statement"].startswith("steer")]
    assert steers == [pytest.approx(1.5), pytest.approx(3.0)]


# -- SmolLM2: the issue's cases warn, and no shipped example does ----------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> Any:
    return cdsl.load_model("smollm2")


def _examples() -> list[Path]:
    return sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".cdsl", ".yaml"))


@pytest.mark.slow
def test_no_shipped_example_warns_in_any_variant(smollm2: Any) -> None:
    assert len(_examples()) >= 8
    for path in _examples():
        spec = cdsl.load(path)
        for variant in expand(ends_as_values(spec)):  # a continuous let: both ends of its range
            plan = cdsl.compile(variant.spec, smollm2, progress=False)
            assert plan.warnings == (), f"{path} {variant.name}: {[d.message for d in plan.warnings]}"


@pytest.mark.slow
def test_the_issues_cases_warn_on_smollm2(smollm2: Any) -> None:
    head = 'version 1\nconcept refusal from pairs "../data/refusal.yaml"\n'

    def warned(body: str) -> str:
        spec = cdsl.parse(head + body, str(EXAMPLES / "inline.cdsl"))
        (d,) = cdsl.compile(spec, smollm2, progress=False).warnings
        return d.message

    assert "adds its amount at each of 13 layers" in warned("steer refusal by 1 at layers 8-20\n")
    assert "between refusal's poles at layers 8-20 (0.24 to 0.88 calibrated" in warned(
        "ablate refusal at layers 8-20 on generated\n"
    )
    assert "puts a floor on all tokens above the concept's p75" in warned("clamp refusal >= 1 at layers 8-20\n")
