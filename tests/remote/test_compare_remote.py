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
