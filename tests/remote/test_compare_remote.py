"""``compare`` against a real NDIF server: the whole comparison (corpus, A/B, generation and readout passes,
each carrying the baseline and every arm) is ONE request from a client that never loads the weights, or one
request per pass beyond the request budget, and the numbers equal the local comparison's.  Skipped without a
server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from constraintdsl import parse
from constraintdsl.compare.ab import ABItem, ABSet
from constraintdsl.compare.comparison import Inputs, compare, corpus_windows
from tests.remote.test_remote_ndif import Requests
from tests.test_compare import write_concepts

TEXT = [
    "The cat sat on the mat and looked out of the window at the rain.",
    "Thank you very much, this was wonderful and kind. The capital of France is Paris.",
]
AB = ABSet(
    behavior="a",
    items=(
        ABItem("How was the film?", "It was wonderful and kind.", "That is a terrible idea.", "a"),
        ABItem("Can you help?", "Sorry, I can't help with that.", "I am so happy to help!", "b"),
    ),
    path="<ab>",
    sha256="0" * 64,
)


def _same(local: Any, far: Any) -> None:
    assert far.passes == local.passes
    for near, there in zip(local.rows, far.rows, strict=True):
        assert there.generations == near.generations
        for key in ("delta_nll", "kl", "entropy"):
            assert there.tax[key] == pytest.approx(near.tax[key], abs=1e-5)
        assert there.dof["participation_ratio"] == pytest.approx(near.dof["participation_ratio"], rel=1e-5)
        assert (there.ab or {}).get("p_match") == pytest.approx((near.ab or {}).get("p_match"), abs=1e-5)
        assert [m["delta_nll"] for m in there.marginal] == pytest.approx([m["delta_nll"] for m in near.marginal])
        assert there.effect.keys() == near.effect.keys()
        for concept, read in near.effect.items():
            assert there.effect[concept]["value"] == pytest.approx(read["value"], abs=1e-4)
        assert [(x["statement"], x["binding_fraction"]) for x in there.load] == [
            (x["statement"], x["binding_fraction"]) for x in near.load
        ]
        assert [x["mean_correction"] for x in there.load] == pytest.approx(
            [x["mean_correction"] for x in near.load], rel=1e-4, abs=1e-6
        )


def test_a_remote_comparison_from_a_model_without_weights_is_one_request_equal_to_the_local_one(
    tiny_model: Any, tiny_folder: Path, ndif_host: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from constraintdsl.models.loading import is_lazy, load_lazy

    write_concepts(tiny_model, tmp_path)  # concepts from files, so the generated text is read too (readout)
    head = 'version 1\nconcept a from file "a.safetensors"\nconcept b from file "b.safetensors"\n'
    body = "let k = 0.5 | 2\nscale a by $k at layers 1-2\nclamp b >= 0.2 at layer 1\n"
    spec = parse(head + body, str(tmp_path / "t.cdsl"))
    windows, total = corpus_windows(tiny_model.tokenizer, TEXT, window=8)
    inputs = Inputs(("hello there", "a prompt about the sea"), windows, total, ab=AB, max_new_tokens=4)
    local = compare(tiny_model, [spec], inputs)
    lazy = load_lazy(str(tiny_folder))
    requests = Requests(monkeypatch)
    far = compare(lazy, [spec], inputs, remote=ndif_host)
    assert requests.posted == far.requests == 1
    assert is_lazy(lazy)  # nothing was loaded here
    assert far.passes["corpus"] >= 1 and far.passes["ab"] >= 1 and far.passes["readout"] == 1
    _same(local, far)
    assert far.rows[2].tax["kl"] > 0
    # over the request budget, it goes pass by pass, with the same numbers
    requests.posted = 0
    split = compare(lazy, [spec], inputs, remote=ndif_host, request_tokens=1)
    assert requests.posted == split.requests == sum(split.passes.values()) > 1
    _same(local, split)


def _cli_inputs(tiny_model: Any, folder: Path) -> list[str]:
    """A spec with a budget, concept files, prompts and a corpus for the tiny model, as ``cdsl`` options."""
    write_concepts(tiny_model, folder)
    head = 'version 1\nconcept a from file "a.safetensors"\nconcept b from file "b.safetensors"\n'
    (folder / "s.cdsl").write_text(head + 'name "s"\nlet k = 0 .. 2\nsteer b by $k at layers 0-1\nbudget kl <= 0.01\n')
    (folder / "prompts.txt").write_text("hello there\nwhat is the weather like\n")
    (folder / "corpus.txt").write_text("\n---\n".join(TEXT) + "\n")
    return [
        "--prompts",
        str(folder / "prompts.txt"),
        "--corpus",
        str(folder / "corpus.txt"),
        "--window",
        "8",
        "--max-new-tokens",
        "4",
    ]


def test_compare_no_wait_then_job_brings_back_the_comparison_and_records_it(
    tiny_model: Any,
    tiny_folder: Path,
    ndif_host: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    from constraintdsl.cli.app import main

    monkeypatch.setenv("CONSTRAINTDSL_CACHE", str(tmp_path / "cache"))  # the job records, this test's own
    options = _cli_inputs(tiny_model, tmp_path)
    spec = tmp_path / "fixed.cdsl"
    spec.write_text((tmp_path / "s.cdsl").read_text().replace("let k = 0 .. 2\n", "let k = 0.5 | 2\n"))
    store = tmp_path / "runs.sqlite"
    common = ["compare", str(spec), "--model", str(tiny_folder), *options, "--store", str(store)]
    requests = Requests(monkeypatch)
    assert main([*common, "--host", ndif_host, "--no-wait"]) == 0
    job = capsys.readouterr().out.strip()
    assert job and requests.posted == 1
    assert main(["job", job, "--wait", "300", "--format", "json"]) == 1  # k = 2 breaks the budget: exit 1
    far = json.loads(capsys.readouterr().out)
    assert far["requests"] == 1 and requests.posted == 1  # collecting sends nothing
    assert main([*common, "--json", "--no-store"]) == 1
    near = json.loads(capsys.readouterr().out)
    for there, here in zip(far["rows"], near["rows"], strict=True):
        assert there["generations"] == here["generations"]
        assert there["tax"]["kl"] == pytest.approx(here["tax"]["kl"], abs=1e-5)
    assert main(["runs", "list", "--store", str(store), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1  # the collected comparison, recorded once
    # a job id that was never submitted here is a clear error
    assert main(["job", "0123abcd"]) == 2
    assert "no job 0123abcd" in capsys.readouterr().err


def test_tune_remote_sends_one_request_per_round_and_finds_what_it_finds_locally(
    tiny_model: Any,
    tiny_folder: Path,
    ndif_host: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    from constraintdsl.cli.app import main

    options = _cli_inputs(tiny_model, tmp_path)
    common = ["tune", str(tmp_path / "s.cdsl"), "--model", str(tiny_folder), *options, "--no-store", "--json"]
    common += ["--tolerance", "0.2", "--max-rounds", "3"]
    local_code = main(common)
    near = json.loads(capsys.readouterr().out)
    requests = Requests(monkeypatch)
    assert main([*common, "--host", ndif_host]) == local_code
    far = json.loads(capsys.readouterr().out)
    assert requests.posted == far["rounds"] == near["rounds"]
    assert [p["values"] for p in far["points"]] == [p["values"] for p in near["points"]]
    assert [p["tax"]["kl"] for p in far["points"]] == pytest.approx([p["tax"]["kl"] for p in near["points"]], abs=1e-5)
    assert far["best"]["values"] == near["best"]["values"]
