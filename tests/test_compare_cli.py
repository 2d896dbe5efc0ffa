"""``cdsl compare`` and ``cdsl runs`` end to end on a tiny model saved to a folder: tables, JSON, the report
folder, the run store and ``--from-store``, and located errors for bad inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from constraintdsl.cli.app import main
from constraintdsl.models.loading import load_model
from tests.test_compare import write_concepts
from tests.tiny import tiny_hf, tiny_tokenizer

CORPUS = """The cat sat on the mat and looked out of the window at the rain.
The capital of France is Paris. The capital of Italy is Rome.
---
Please find attached the report you requested. 0 1 2 3 4 5 6 7 8 9.
Thank you very much, this was wonderful and kind.
"""

AB = """behavior: a
items:
  - question: "How was the film?"
    a: "Thank you very much, this was wonderful and kind."
    b: "That is a terrible idea and I will not do it."
    match: a
  - question: "Can you help me?"
    a: "Sorry, I can't help with that request."
    b: "I am so happy to help you with that question!"
    match: b
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a saved tiny model, two concept files for it, specs, prompts, corpus and A/B set."""
    root = tmp_path_factory.mktemp("compare-cli")
    folder = root / "tiny"
    tiny_hf("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    write_concepts(load_model(str(folder)), root)
    head = 'version 1\nconcept a from file "a.safetensors"\nconcept b from file "b.safetensors"\n'
    (root / "sweep.cdsl").write_text(
        head + 'name "sweep"\nlet k = 0.5 | 2\nscale a by $k at layers 1-2\nclamp b >= 0.2 at layer 1\n'
    )
    (root / "steer.cdsl").write_text(head + 'name "steer"\nsteer b by 1 at layers 0-1 on generated\n')
    (root / "prompts.txt").write_text("hello there\nwhat is the weather like\n")
    (root / "corpus.txt").write_text(CORPUS)
    (root / "ab.yaml").write_text(AB)
    return root


def cdsl(work: Path, *args: str, store: Path) -> list[str]:
    return [
        "compare",
        *args,
        "--model",
        str(work / "tiny"),
        "--prompts",
        str(work / "prompts.txt"),
        "--corpus",
        str(work / "corpus.txt"),
        "--window",
        "8",
        "--max-new-tokens",
        "3",
        "--store",
        str(store),
    ]


def test_compare_prints_tables_records_the_run_and_rebuilds_it_from_the_store(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "runs.sqlite"
    specs = [str(work / "sweep.cdsl"), str(work / "steer.cdsl")]
    args = cdsl(work, *specs, "--ab", str(work / "ab.yaml"), "--report", str(tmp_path / "rep"), store=store)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "sweep[k=0.5]" in out and "sweep[k=2]" in out and "steer" in out and "marginal ΔNLL" in out
    assert (tmp_path / "rep" / "frontier.png").is_file() and (tmp_path / "rep" / "report.md").is_file()

    assert main(["runs", "list", "--store", str(store), "--json"]) == 0
    (run,) = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in run["results"]] == ["baseline", "sweep[k=0.5]", "sweep[k=2]", "steer"]

    assert main(["runs", "show", run["id"][:15], "--store", str(store)]) == 0
    assert "sweep[k=2]" in capsys.readouterr().out

    first = json.loads((tmp_path / "rep" / "comparison.json").read_text())
    assert main([*cdsl(work, *specs, "--ab", str(work / "ab.yaml"), "--json", "--from-store", store=store)]) == 0
    rebuilt = json.loads(capsys.readouterr().out)
    assert rebuilt["rows"] == first["rows"]
    assert rebuilt["run_id"] == run["id"]


def test_from_store_without_a_recorded_run_names_what_is_missing(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = cdsl(work, str(work / "steer.cdsl"), "--from-store", store=tmp_path / "empty.sqlite")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--from-store" in err and "no recorded result for baseline, steer" in err


def test_a_bad_ab_file_is_a_located_error_and_nothing_is_recorded(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text('behavior: a\nitems:\n  - question: "q"\n    a: "x"\n    b: "y"\n    match: c\n')
    store = tmp_path / "runs.sqlite"
    assert main(cdsl(work, str(work / "steer.cdsl"), "--ab", str(bad), store=store)) == 2
    err = capsys.readouterr().err
    assert f"{bad}:6:" in err and "Traceback" not in err
    assert not store.exists()


def test_an_empty_corpus_is_an_error_naming_the_file(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("---\n\n---\n")
    args = [*cdsl(work, str(work / "steer.cdsl"), store=tmp_path / "s.sqlite"), "--corpus", str(empty)]
    assert main(args) == 2
    assert f"{empty}: error: the corpus is empty" in capsys.readouterr().err


def test_tokens_beyond_the_corpus_limit_are_not_used(work: Path, tmp_path: Path, capsys: Any) -> None:
    args = [*cdsl(work, str(work / "steer.cdsl"), "--json", "--no-store", store=tmp_path / "s.sqlite")]
    assert main([*args, "--corpus-tokens", "16"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["inputs"]["corpus_tokens_used"] == 16 and data["inputs"]["corpus_windows"] == 2
    assert not (tmp_path / "s.sqlite").exists()


def test_explain_runs_one_variant_and_asks_for_one_when_a_spec_has_lets(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, model = str(work / "sweep.cdsl"), str(work / "tiny")
    assert main(["explain", spec, "--model", model, "--variant", "k=2"]) == 0
    assert "scale a by 2" in capsys.readouterr().out
    assert main(["explain", spec, "--model", model]) == 2
    err = capsys.readouterr().err
    assert "sweep.cdsl:" in err and "variants" in err
    assert main(["explain", spec, "--model", model, "--variant", "k=3"]) == 2
    err = capsys.readouterr().err
    assert "--variant: error: let 'k' has no value 3" in err and "0.5 | 2" in err


def test_an_effect_axis_no_spec_can_produce_is_refused_before_anything_runs(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "runs.sqlite"
    assert main([*cdsl(work, str(work / "steer.cdsl"), store=store), "--effect", "bb"]) == 2
    err = capsys.readouterr().err
    assert "--effect: error: no spec constrains a concept named 'bb'" in err and "did you mean 'b'" in err
    assert main([*cdsl(work, str(work / "steer.cdsl"), store=store), "--effect", "ab"]) == 2
    assert "--effect ab needs an A/B set" in capsys.readouterr().err
    assert not store.exists()


LONG = "I am so happy to help you with that question, thank you very much, this was wonderful and kind."
SATURATING = "behavior: a\nitems:\n" + "".join(
    f'  - question: "Question {i}?"\n    a: "Yes."\n    b: "{LONG}"\n    match: {"ab"[i % 2]}\n' for i in range(4)
)


def test_ab_scoring_per_item_values_and_the_saturation_warning_reach_the_cli(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sat = tmp_path / "sat.yaml"
    sat.write_text(SATURATING)
    base = cdsl(work, str(work / "steer.cdsl"), "--ab", str(sat), "--no-store", store=tmp_path / "s.sqlite")
    assert main([*base, "--ab-score", "sum", "--json"]) == 0
    captured = capsys.readouterr()
    assert f"{sat}:1:1: warning: 4 of 4 A/B items are saturated at baseline" in captured.err
    assert "hint: score answers by their mean log-probability per token" in captured.err
    data = json.loads(captured.out)
    (diag,) = data["diagnostics"]
    assert diag["severity"] == "warning" and diag["line"] == 1 and diag["path"] == str(sat)
    base_ab, steer_ab = (row["ab"] for row in data["rows"])
    assert len(base_ab["p_items"]) == len(steer_ab["p_items"]) == 4 and steer_ab["score"] == "sum"
    assert {"se", "ci95", "up", "down", "saturated"} <= set(steer_ab)
    assert data["inputs"]["ab_score"] == "sum" and data["inputs"]["ab_questions"][0]["line"] == 3

    assert main(base) == 0  # mean scoring, the default: not saturated, no warning
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    assert "p(match) [mean]" in captured.out and "95% interval" in captured.out


def test_an_unknown_ab_scoring_is_a_usage_error(work: Path, tmp_path: Path, capsys: Any) -> None:
    args = cdsl(work, str(work / "steer.cdsl"), "--ab", str(work / "ab.yaml"), store=tmp_path / "s.sqlite")
    assert main([*args, "--ab-score", "median"]) == 2
    assert "--ab-score" in capsys.readouterr().err


def test_a_run_recorded_before_per_item_values_still_shows_and_rebuilds(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    store = tmp_path / "runs.sqlite"
    args = cdsl(work, str(work / "steer.cdsl"), "--ab", str(work / "ab.yaml"), store=store)
    assert main([*args, "--ab-score", "sum"]) == 0
    capsys.readouterr()
    with sqlite3.connect(store) as db:  # make it look like a run recorded by an earlier version
        for rowid, metrics in db.execute("SELECT rowid, metrics FROM results").fetchall():
            m = json.loads(metrics)
            m["ab"] = {k: m["ab"][k] for k in ("behavior", "p_match", "baseline", "shift", "items")}
            db.execute("UPDATE results SET metrics = ? WHERE rowid = ?", (json.dumps(m), rowid))
    assert main(["runs", "list", "--store", str(store), "--json"]) == 0
    (run,) = json.loads(capsys.readouterr().out)
    assert main(["runs", "show", run["id"], "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "A/B p(match)" in out and "±" not in out
    assert main([*args, "--ab-score", "sum", "--from-store"]) == 0  # earlier runs were summed: same inputs
    assert "steer" in capsys.readouterr().out
    assert main([*args, "--from-store"]) == 2  # mean scoring was never recorded for these inputs
    assert "no recorded result for baseline, steer" in capsys.readouterr().err
