"""Amounts no model can carry are located errors, never internal errors or empty generations: non-finite
numbers and numbers beyond float32 at ``check`` already, effects beyond 1,000 pole distances or the model's
dtype when the spec is resolved, and activations an edit pushes out of range at run time (exit 2, the
statement's file:line:col, no traceback)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import constraintdsl as cdsl
from constraintdsl import SpecError
from constraintdsl.cli.app import main
from constraintdsl.models.loading import load_model
from constraintdsl.run import runner
from constraintdsl.runtime.interventions import NonFiniteActivation
from tests.test_compare import write_concepts
from tests.test_compiler import SCALE, artifact
from tests.tiny import tiny_hf, tiny_nnsight, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
HEAD = 'version 1\nconcept a from file "a.safetensors"\nconcept r from file "r.npy"\n'
LINE = 4  # the statement's line in every spec below


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny model, a calibrated concept ``a`` and a raw (uncalibrated) vector ``r`` for it."""
    root = tmp_path_factory.mktemp("amounts")
    folder = root / "tiny"
    tiny_hf("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    write_concepts(load_model(str(folder)), root)
    np.save(root / "r.npy", np.random.default_rng(0).standard_normal(32).astype(np.float32))
    return root


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def write(work: Path, name: str, text: str) -> Path:
    path = work / name
    path.write_text(text)
    return path


def check_code(work: Path, capsys: pytest.CaptureFixture[str]) -> int:
    """What ``check`` returns for any invalid spec (a syntax error), to compare with."""
    code, _, _ = run(["check", str(write(work, "syntax.cdsl", HEAD + "clamp a > 1 at layer 1\n"))], capsys)
    assert code != 0
    return code


# Caught by `check`: no dtype can hold these, whatever the model.
AT_CHECK = [
    ("steer a by 1e300 at layer 1", 12, "number 1e300 is beyond float32's range"),
    ("steer a by -4e38 raw at layer 1", 12, "number -4e38 is beyond float32's range"),
    ("clamp a >= 1e39 at layer 1", 12, "number 1e39 is beyond float32's range"),
    ("steer a by 1e400 at layer 1", 12, "number 1e400 is not finite"),
    ("scale a by 5e38 at layer 1", 12, "number 5e38 is beyond float32's range"),
    ("pin a = 1 at layer 1 when a > 1e300", 31, "number 1e300 is beyond float32's range"),
]


@pytest.mark.parametrize(("statement", "col", "message"), AT_CHECK)
def test_a_number_no_dtype_can_hold_is_a_located_error_at_check_and_explain_and_run(
    work: Path, capsys: pytest.CaptureFixture[str], statement: str, col: int, message: str
) -> None:
    spec = write(work, "bad.cdsl", HEAD + statement + "\n")
    code, _, err = run(["check", str(spec)], capsys)
    assert code == check_code(work, capsys)
    assert f"{spec}:{LINE}:{col}: error: {message}" in err and "Traceback" not in err
    for verb in (["explain"], ["run", "--prompt", "hi", "--max-new-tokens", "2"]):
        code, out, err = run([*verb, str(spec), "--model", str(work / "tiny")], capsys)
        assert code == 2, err
        assert f"{spec}:{LINE}:{col}: error: {message}" in err and "Traceback" not in err
        assert "constrained:" not in out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{op: steer, concept: a, by: .nan, layers: 1}", "number .nan is not finite"),
        ("{op: clamp, concept: a, min: -.inf, layers: 1}", "number -.inf is not finite"),
        ("{op: scale, concept: a, by: .inf, layers: 1}", "number .inf is not finite"),
        ("{op: steer, concept: a, by: 1" + "0" * 400 + ", layers: 1}", "is not finite"),
        ("{op: pin, concept: a, value: 3.5e+38, layers: 1}", "number 3.5e+38 is beyond float32's range"),
    ],
)
def test_yaml_non_finite_and_huge_numbers_are_located_errors(
    work: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    spec = write(
        work, "bad.yaml", f"version: 1\nconcepts:\n  a: {{from: file, path: a.safetensors}}\nconstraints:\n  - {text}\n"
    )
    code, _, err = run(["check", str(spec)], capsys)
    assert code == check_code(work, capsys)
    assert f"{spec}:5:" in err and message in err and "Traceback" not in err


def test_a_let_value_no_dtype_can_hold_is_located_at_the_value(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(work, "let.cdsl", HEAD + "let k = 1 | 1e300\nsteer a by $k at layer 1\n")
    code, _, err = run(["check", str(spec)], capsys)
    assert code == check_code(work, capsys)
    assert f"{spec}:4:13: error: number 1e300 is beyond float32's range" in err


# Caught when resolved for the model: beyond 1,000 pole distances (the tiny concept: pole distance 2 raw,
# negative pole at 1 raw, calibration projections up to 9.9 raw).
AT_RESOLVE = [
    ("scale a by 1e30 at layer 1", "at layer 1 scaling by 1e+30 moves a projection of 9.9 raw"),
    ("steer a by 1001 at layers 0-1", "at layer 0 this steer adds 1e+03 pole distances (2e+03 raw)"),
    ("steer a by 3000 raw at layer 2", "at layer 2 this steer adds 1.5e+03 pole distances"),
    ("clamp a <= 5000 at layer 1", "at layer 1 this bound lies 5e+03 pole distances from the poles"),
    ("pin a = -2000 at layer 1", "at layer 1 this bound lies 2e+03 pole distances from the poles"),
    ("clamp a in [0, 3e38] at layer 1", "at layer 1 this bound is 6e+38 raw, beyond the range of float32"),
]


@pytest.mark.parametrize(("statement", "message"), AT_RESOLVE)
def test_an_effect_beyond_1000_pole_distances_is_a_located_error_before_anything_runs(
    work: Path, capsys: pytest.CaptureFixture[str], statement: str, message: str
) -> None:
    spec = write(work, "far.cdsl", HEAD + statement + "\n")
    for verb in (["explain"], ["run", "--prompt", "hi", "--max-new-tokens", "2"]):
        code, out, err = run([*verb, str(spec), "--model", str(work / "tiny")], capsys)
        assert code == 2, err
        assert f"{spec}:{LINE}:1: error: {message}" in err, err
        assert "Traceback" not in err and "constrained:" not in out and "internal error" not in err


def test_amounts_within_the_limits_still_run(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(work, "near.cdsl", HEAD + "steer a by 999 at layer 1 on last\n")
    code, out, err = run(
        ["run", str(spec), "--model", str(work / "tiny"), "--prompt", "hi", "--max-new-tokens", "2"], capsys
    )
    assert code == 0, err
    assert "constrained:" in out
    assert f"{spec}:{LINE}:1: warning:" in err  # legal, but far beyond 3 pole distances


def test_an_edit_that_pushes_activations_out_of_range_stops_the_run_naming_statement_and_layer(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a raw vector has no calibration, so no pole distance limits the amount, and each layer's addition is
    # within float32; the residual stream carries layer 0's on, and layer 1's pushes it past the range
    spec = write(work, "raw.cdsl", HEAD + "steer r by 3e38 raw at layers 0-1\n")
    args = [
        "run",
        str(spec),
        "--model",
        str(work / "tiny"),
        "--prompt",
        "hi there, how are you",
        "--max-new-tokens",
        "3",
    ]
    code, out, err = run(args, capsys)
    assert code == 2, err
    edit = "the edit of `steer r by 3e+38 raw at layers 0-1` at layer 1 (model.layers.1)"
    assert f"{spec}:{LINE}:1: error: {edit}" in err
    assert "inf/NaN" in err and "Traceback" not in err and "constrained:" not in out


def test_the_python_api_raises_the_located_runtime_error_too(work: Path) -> None:
    model = load_model(str(work / "tiny"))
    text = HEAD.replace("r.npy", str(work / "r.npy")) + "steer r by 3e38 raw at layers 0-1\n"
    plan = cdsl.compile(cdsl.parse(text, "api.cdsl"), model, concepts={"a": artifact(seed=1)})
    calls = (
        lambda: plan.generate(["hi there, how are you"], max_new_tokens=2),
        lambda: plan.trace(["hi there, how are you"]),
    )
    for call in calls:
        with pytest.raises(
            NonFiniteActivation, match=r"the edit of `steer r by 3e\+38 raw at layers 0-1` at layer 1"
        ) as info:
            call()
        assert info.value.where == "api.cdsl:4:1" and not info.value.upstream


def test_an_out_of_range_input_after_an_earlier_edit_names_that_edit() -> None:
    model = tiny_nnsight("llama")
    text = 'version 1\nconcept a from pairs "a.yaml"\nsteer a by 1 at layer 0\nclamp a >= 0 at layer 2\n'
    plan = cdsl.compile(cdsl.parse(text, "up.cdsl"), model, concepts={"a": artifact(seed=1)})
    with pytest.raises(NonFiniteActivation) as info, torch.no_grad(), model.trace() as tracer:
        with tracer.invoke("hi there, how are you"):
            runner.apply(model, plan.payload, steps="one")
        with tracer.invoke():  # something else breaks layer 1's output of the last token
            model.model.layers[1].output[:, -1] = math.inf
    assert info.value.upstream and info.value.where == "up.cdsl:3:1"
    assert "activations reaching layer 2 (model.layers.2) were already inf/NaN" in str(info.value)
    assert "after the edit of `steer a by 1 at layer 0` at layer 0" in str(info.value)


def test_a_float16_model_refuses_amounts_beyond_its_range() -> None:
    model = tiny_nnsight("llama")
    model._module.half()
    try:
        spec = cdsl.parse('version 1\nconcept a from pairs "a.yaml"\nsteer a by 70000 raw at layer 1\n', "h.cdsl")
        with pytest.raises(SpecError, match=r"at layer 1 this amount is 7e\+04 raw, beyond the range of float16"):
            cdsl.compile(spec, model, concepts={"a": artifact(seed=1)})
    finally:
        model._module.float()


def test_a_finite_edit_within_range_keeps_every_activation_finite() -> None:
    model = tiny_nnsight("llama")
    spec = cdsl.parse('version 1\nconcept a from pairs "a.yaml"\nsteer a by 900 at layers 0-2\n', "ok.cdsl")
    plan = cdsl.compile(spec, model, concepts={"a": artifact(seed=1)})
    logits = plan.trace(["hi there"]).logits
    assert torch.isfinite(logits).all()
    assert math.isclose(plan.entries[0].lo, 900 * SCALE)


def test_every_shipped_example_is_in_canonical_form(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in (ROOT / "specs" / "examples").iterdir() if p.suffix in (".cdsl", ".yaml"))
    code, out, _ = run(["fmt", "--check", *files], capsys)
    assert (code, out) == (0, "")
