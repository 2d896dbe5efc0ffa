"""``cdsl compare`` asserts a spec's budgets and targets on what it measured: exit 1 with a located message
when one fails, 0 when all hold, ``--junit`` for CI; and what it cannot measure is refused before the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from constraintdsl.cli.app import main
from tests.test_compare_cli import cdsl, work  # noqa: F401  (the module's tiny-model folder fixture)

HEAD = 'version 1\nconcept a from file "a.safetensors"\nconcept b from file "b.safetensors"\n'
STEER = "steer b by 1 at layers 0-1\n"


def write(work: Path, name: str, body: str) -> str:  # noqa: F811
    path = work / name
    path.write_text(HEAD + f'name "{path.stem}"\n' + body)
    return str(path)


def measure(work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, float]:  # noqa: F811
    """The steer's KL and its readout shift of b, measured by a plain comparison."""
    spec = write(work, "plain.cdsl", STEER)
    assert main([*cdsl(work, spec, "--json", "--no-store", store=tmp_path / "s.sqlite")]) == 0
    row = json.loads(capsys.readouterr().out)["rows"][1]
    return {"kl": row["tax"]["kl"], "shift": row["effect"]["b"]["shift"]}


def test_a_failing_budget_makes_compare_exit_1_naming_its_line_value_and_limit(
    work: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kl = measure(work, tmp_path, capsys)["kl"]
    assert kl > 0
    half = f"{kl / 2:.6g}"
    spec = write(work, "tight.cdsl", STEER + f"budget kl <= {half}\n")
    junit = tmp_path / "checks.xml"
    args = cdsl(work, spec, "--json", "--no-store", "--junit", str(junit), store=tmp_path / "s.sqlite")
    assert main(args) == 1
    captured = capsys.readouterr()
    (check,) = json.loads(captured.out)["checks"]
    assert check["measured"] == pytest.approx(kl) and check["passed"] is False
    assert f"{spec}:6:1: error: `budget kl <= {half}` fails for tight: measured {kl:.4g}, above the limit" in (
        captured.err
    )
    assert "1 of 1 budget/target checks failed" in captured.err and "Traceback" not in captured.err
    xml = junit.read_text()
    assert 'failures="1"' in xml and 'line="6"' in xml and "tight: budget kl" in xml


def test_budgets_and_targets_that_hold_exit_0_and_are_listed(
    work: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    got = measure(work, tmp_path, capsys)
    body = STEER + f"budget kl <= {2 * got['kl']:.6g}\ntarget b >= {got['shift'] - 0.5:.6g}\nbudget ppl <= 10\n"
    spec = write(work, "loose.cdsl", body)
    junit = tmp_path / "ok.xml"
    assert main(cdsl(work, spec, "--no-store", "--junit", str(junit), store=tmp_path / "s.sqlite")) == 0
    out = capsys.readouterr().out
    assert "budgets and targets:" in out and out.count(" ok ") == 3 and "FAIL" not in out
    assert 'tests="3" failures="0"' in junit.read_text()


def test_a_target_the_other_way_fails_when_the_shift_goes_up(
    work: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shift = measure(work, tmp_path, capsys)["shift"]
    spec = write(work, "down.cdsl", STEER + f"target b <= {shift - 0.5:.6g}\n")
    assert main(cdsl(work, spec, "--no-store", store=tmp_path / "s.sqlite")) == 1
    assert "above the limit" in capsys.readouterr().err


def test_compare_refuses_a_continuous_let_at_its_line_before_loading_the_model(
    work: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = write(work, "range.cdsl", "let k = 0 .. 2\nscale a by $k at layers 1-2\n")
    assert main(cdsl(work, spec, "--no-store", store=tmp_path / "s.sqlite")) == 2
    err = capsys.readouterr().err
    assert f"{spec}:5:1: error: let 'k' is a range (0 .. 2), which `cdsl compare` cannot expand" in err
    assert f"cdsl tune {spec}" in err and "let k = 0 | … | 2" in err and "loading model" not in err


def test_a_target_on_ab_without_an_ab_set_is_refused_before_loading_the_model(
    work: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = write(work, "ab-target.cdsl", STEER + "target ab >= 0.1\n")
    assert main(cdsl(work, spec, "--no-store", store=tmp_path / "s.sqlite")) == 2
    err = capsys.readouterr().err
    assert f"{spec}:6:1: error: this target reads the A/B p(match) shift" in err and "--ab FILE" in err
    assert "loading model" not in err


def test_junit_never_replaces_a_file_it_did_not_write(
    work: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mine = tmp_path / "notes.xml"
    mine.write_text("<notes>mine</notes>\n")
    spec = write(work, "plain.cdsl", STEER + "budget kl <= 1\n")
    assert main(cdsl(work, spec, "--no-store", "--junit", str(mine), store=tmp_path / "s.sqlite")) == 2
    assert "--junit" in capsys.readouterr().err
    assert mine.read_text() == "<notes>mine</notes>\n"


def test_explain_lists_budgets_and_targets_and_the_plan_ignores_them(
    work: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import torch

    import constraintdsl as cdsl

    plain = write(work, "plain.cdsl", STEER)
    judged = write(work, "judged.cdsl", STEER + "budget kl <= 0.05\ntarget b >= 0.5\n")
    model = str(work / "tiny")
    assert main(["explain", judged, "--model", model]) == 0
    out = capsys.readouterr().out
    assert "budgets and targets (not interventions" in out
    assert "budget kl <= 0.05" in out and "mean KL(baseline ‖ constrained) per corpus token at most 0.05" in out
    assert "target b >= 0.5" in out and "(line 7)" in out
    loaded = cdsl.load_model(model)
    a, b = (cdsl.resolve(cdsl.load(p), loaded).payload for p in (plain, judged))
    assert len(a["sites"]) == len(b["sites"])
    for sa, sb in zip(a["sites"], b["sites"], strict=True):
        assert sa.keys() == sb.keys()
        for key in sa:
            if isinstance(sa[key], torch.Tensor):
                assert torch.equal(sa[key], sb[key])


def test_the_ab_set_a_spec_names_is_used_without_the_flag_and_two_different_ones_are_refused(
    work: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = write(work, "named-ab.cdsl", STEER + 'data ab "ab.yaml"\ntarget ab >= -1\n')
    args = cdsl(work, spec, "--json", "--no-store", store=tmp_path / "s.sqlite")
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["inputs"]["ab_items"] == 2 and data["inputs"]["sources"]["ab"] == str(work / "ab.yaml")
    assert data["checks"][0]["passed"] is True
    (work / "ab2.yaml").write_text((work / "ab.yaml").read_text())
    other = write(work, "named-ab2.cdsl", STEER + 'data ab "ab2.yaml"\n')
    assert main(cdsl(work, spec, other, "--no-store", store=tmp_path / "s.sqlite")) == 2
    err = capsys.readouterr().err
    assert f"{other}:6:1: error: the specs name different ab files" in err and "pass --ab FILE" in err
    # the flag chooses
    assert main(cdsl(work, spec, other, "--no-store", "--ab", str(work / "ab2.yaml"), store=tmp_path / "s.sqlite")) == 0
    capsys.readouterr()
