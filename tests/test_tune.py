"""``cdsl tune`` and ``cdsl.tune`` on a tiny model whose KL grows with a steer's amount (measured first, on the
same inputs): the largest amount within a KL budget is found to the tolerance, an unreachable target is reported
as such with exit 1 and nothing written, and the chosen spec is written in canonical form."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import constraintdsl as cdsl
from constraintdsl.cli.app import main
from constraintdsl.compare.comparison import Inputs, corpus_windows
from constraintdsl.models.loading import load_model
from tests.test_compare_cli import cdsl as compare_args
from tests.test_compare_cli import work  # noqa: F401  (the module's tiny-model folder fixture)

HEAD = 'version 1\nconcept a from file "a.safetensors"\nconcept b from file "b.safetensors"\n'
STEER = "steer b by $k at layers 0-1\n"
LOW, HIGH = 0.1, 0.12  # the budget is set between the KL of these two amounts
TOL = 0.004


def write(work: Path, name: str, body: str) -> str:  # noqa: F811
    path = work / name
    path.write_text(HEAD + f'name "{path.stem}"\n' + body)
    return str(path)


def kls(work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], *ks: float) -> list[float]:  # noqa: F811
    """The steer's KL at each amount, measured by ``cdsl compare`` on the tune tests' inputs."""
    spec = write(work, "probe.cdsl", "let k = " + " | ".join(f"{k:g}" for k in ks) + "\n" + STEER)
    assert main([*compare_args(work, spec, "--json", "--no-store", store=tmp_path / "s.sqlite")]) == 0
    return [row["tax"]["kl"] for row in json.loads(capsys.readouterr().out)["rows"][1:]]


def spec_checks(path: str) -> tuple[object, ...]:
    return cdsl.load(path).checks


def tune_args(work: Path, spec: str, *extra: str) -> list[str]:  # noqa: F811
    return ["tune", *compare_args(work, spec, *extra, store=work / "tune-runs.sqlite")[1:]]


def test_tune_finds_the_largest_amount_within_a_kl_budget_to_the_tolerance(
    work: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    low, high = kls(work, tmp_path, capsys, LOW, HIGH)
    assert low < high  # the response grows here: the frontier lies between the two amounts
    budget = f"{(low + high) / 2:.8g}"
    spec = write(work, "budget.cdsl", f"let k = 0 .. 0.2\n{STEER}budget kl <= {budget}\n")
    out_file = tmp_path / "tuned.cdsl"
    plot = tmp_path / "frontier.png"
    args = tune_args(work, spec, "--json", "--tolerance", str(TOL), "-o", str(out_file), "--plot", str(plot))
    assert main(args) == 0
    assert plot.read_bytes().startswith(b"\x89PNG") and b"cdsl tune" in plot.read_bytes()[:4096]
    result = json.loads(capsys.readouterr().out)
    assert result["found"] and result["goal"] == "strongest"
    best = result["best"]["values"]["k"]
    assert LOW - TOL <= best <= HIGH + TOL
    # every evaluated point is reported, and the budget splits them at the answer
    points = result["points"]
    assert all(p["meets"] == (p["tax"]["kl"] <= float(budget)) for p in points)
    assert all(p["values"]["k"] <= best for p in points if p["meets"])
    above = [p["values"]["k"] for p in points if not p["meets"]]
    assert above and min(above) - best <= TOL
    # the written spec is the concrete variant in canonical form, and it meets its budget in a fresh compare
    text = out_file.read_text()
    assert text.startswith("# tuned by cdsl tune from ")
    tuned = cdsl.load(out_file)
    assert not tuned.lets and f"steer b by {best:g} at layers 0-1" in text and tuned.checks == spec_checks(spec)
    assert main([*compare_args(work, str(out_file), "--no-store", store=tmp_path / "s.sqlite")]) == 0
    capsys.readouterr()
    # and every point is recorded in the run store, labelled by its value
    assert main(["runs", "list", "--store", str(work / "tune-runs.sqlite"), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    (run,) = [r for r in runs if r["command"] == "tune" and r["results"][0]["spec_path"] == spec]
    assert [r["label"] for r in run["results"]] == [f"k={p['values']['k']:g}" for p in points]


def test_an_unreachable_target_is_reported_and_nothing_is_written(
    work: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = write(work, "unreachable.cdsl", f"let k = 0 .. 0.2\n{STEER}budget kl <= 1\ntarget b >= 50\n")
    out_file = tmp_path / "tuned.cdsl"
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"\x89PNG not from tune")
    assert main(tune_args(work, spec, "--plot", str(mine))) == 2  # never replaces a file it did not write
    assert mine.read_bytes() == b"\x89PNG not from tune" and "--plot" in capsys.readouterr().err
    assert main(tune_args(work, spec, "--max-rounds", "3", "-o", str(out_file))) == 1
    captured = capsys.readouterr()
    assert "no evaluated point meets every budget and target" in captured.err
    assert "target b >= 50" in captured.err and "below the limit 50" in captured.err
    assert "round" in captured.out and "meets" in captured.out  # every point printed
    assert not out_file.exists()


def test_least_tax_reaching_the_targets_is_the_unsteered_end_when_any_amount_reaches_them(
    work: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = load_model(str(work / "tiny"))
    windows, total = corpus_windows(model.tokenizer, [(work / "corpus.txt").read_text()], window=8)
    inputs = Inputs(prompts=("hello there",), corpus=windows, corpus_tokens_total=total, max_new_tokens=3)
    spec = cdsl.load(write(work, "least.cdsl", f"let k = 0 .. 0.2\n{STEER}target b >= -100\n"))
    result = cdsl.tune(model, spec, inputs, goal="tax", tolerance=0.01)
    assert result.found and result.best is not None and result.best.values == (("k", 0.0),)
    assert result.best.tax["kl"] == min(p.tax["kl"] for p in result.points)
    assert result.spec is not None and "steer b by 0 at layers 0-1" in result.spec.to_dsl()


def test_tune_refuses_a_spec_without_a_range_at_its_line(
    work: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = write(work, "listed.cdsl", "let k = 0.1 | 0.2\n" + STEER + "budget kl <= 1\n")
    assert main(tune_args(work, spec)) == 2
    err = capsys.readouterr().err
    assert f"{spec}:5:1: error: let 'k' lists values; tune searches ranges only" in err
    assert "loading model" not in err


def test_two_lets_are_searched_together_and_the_best_point_meets_the_budget(
    work: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (high,) = kls(work, tmp_path, capsys, HIGH)
    body = f"let k = 0 .. 0.2\nlet j = 0 .. 0.2\n{STEER}steer a by $j at layer 1\nbudget kl <= {high:.8g}\n"
    spec = write(work, "two.cdsl", body)
    assert main(tune_args(work, spec, "--json", "--tolerance", "0.02", "--max-rounds", "5")) == 0
    result = json.loads(capsys.readouterr().out)
    best = result["best"]
    assert result["found"] and best["meets"] and best["tax"]["kl"] <= high
    assert {p["round"] for p in result["points"]} == set(range(result["rounds"]))
    assert len([p for p in result["points"] if p["round"] == 0]) == 9  # the 3 × 3 grid first

    def strength(p: dict[str, Any]) -> float:
        return (p["values"]["k"] + p["values"]["j"]) / 0.4

    assert strength(best) == max(strength(p) for p in result["points"] if p["meets"])


def test_a_kept_baseline_is_not_run_again_and_changes_no_result(work: Path) -> None:  # noqa: F811
    from dataclasses import replace

    from constraintdsl.compare.ab import load_ab
    from constraintdsl.compare.comparison import Baseline, compare

    model = load_model(str(work / "tiny"))
    windows, total = corpus_windows(model.tokenizer, [(work / "corpus.txt").read_text()], window=8)
    ab = load_ab(str(work / "ab.yaml"))
    inputs = Inputs(prompts=("hello there",), corpus=windows, corpus_tokens_total=total, ab=ab, max_new_tokens=3)
    spec = cdsl.load(write(work, "kept.cdsl", "let k = 0.1 | 0.2\n" + STEER))
    kept = Baseline()
    first = compare(model, [spec], inputs, marginal=False, baseline=kept)
    assert kept.key is not None and kept.ab is not None
    again = compare(model, [spec], inputs, marginal=False, baseline=kept)
    fresh = compare(model, [spec], inputs, marginal=False)
    for got, want in zip(again.rows, fresh.rows, strict=True):
        assert got.tax == pytest.approx(want.tax, rel=1e-6, abs=1e-9)
        assert got.ab["p_items"] == pytest.approx(want.ab["p_items"], rel=1e-6)
        assert got.dof == pytest.approx(want.dof, rel=1e-6)
    # the baseline's A/B answers were not scored the second time; its corpus windows were (KL needs its logits)
    assert again.sequences["ab"] == first.sequences["ab"] - 2 * len(ab.items) == 2 * 2 * len(ab.items)
    assert again.sequences["corpus"] == first.sequences["corpus"] == 3 * int(windows.shape[0])
    # kept for other inputs, it is scored again (and kept anew)
    other = replace(inputs, max_new_tokens=2)
    third = compare(model, [spec], other, marginal=False, baseline=kept)
    assert third.sequences["ab"] == first.sequences["ab"] and kept.key[2] == other.digest()


def test_the_crossing_estimate_is_exact_for_a_quadratic_margin_and_stays_inside_the_bracket() -> None:
    from constraintdsl.compare.tune import _crossing

    def margin(x: float) -> float:
        return 0.05 - (0.0073 - 0.024 * x + 0.087 * x * x)  # the shape of KL against a floor

    points = [(x, margin(x)) for x in (0.0, 0.75, 1.5, 2.25, 3.0)]
    root = (0.024 + (0.024**2 + 4 * 0.087 * (0.05 - 0.0073)) ** 0.5) / (2 * 0.087)
    guess = _crossing(points, 0.75, 1.5)
    assert guess is not None and abs(guess - root) < 1e-9
    # margins that no parabola fits inside the bracket fall back to a straight line between its ends
    assert _crossing([(0.0, 1.0), (1.0, -1.0)], 0.0, 1.0) == 0.5
    assert _crossing([(0.0, float("-inf")), (1.0, -1.0)], 0.0, 1.0) is None
