"""``compare`` against a real NDIF server: every pass (corpus, A/B, generation) is one request carrying the
baseline and every arm, and the numbers equal the local comparison's.  Skipped without a server."""

from __future__ import annotations

from typing import Any

import pytest

from constraintdsl import parse
from constraintdsl.compare.ab import ABItem, ABSet
from constraintdsl.compare.comparison import Inputs, compare, corpus_windows
from tests.remote.test_remote_ndif import Requests
from tests.test_compiler import HEAD, artifact

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


def test_a_remote_comparison_equals_the_local_one_with_one_request_per_pass(
    tiny_model: Any, ndif_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = parse(HEAD + "let k = 0.5 | 2\nscale a by $k at layers 1-2\nclamp b >= 0.2 at layer 1\n", "t.cdsl")
    windows, total = corpus_windows(tiny_model.tokenizer, TEXT, window=8)
    inputs = Inputs(("hello there", "a prompt about the sea"), windows, total, ab=AB, max_new_tokens=4)
    given = {"a": artifact(seed=1), "b": artifact(seed=2)}
    local = compare(tiny_model, [spec], inputs, concepts=given)
    requests = Requests(monkeypatch)
    far = compare(tiny_model, [spec], inputs, concepts=given, remote=ndif_host)
    assert far.passes == local.passes
    assert requests.posted == far.passes["corpus"] + far.passes["ab"] + far.passes["generate"]
    for near, there in zip(local.rows, far.rows, strict=True):
        assert there.generations == near.generations
        for key in ("delta_nll", "kl", "entropy"):
            assert there.tax[key] == pytest.approx(near.tax[key], abs=1e-5)
        assert there.dof["participation_ratio"] == pytest.approx(near.dof["participation_ratio"], rel=1e-5)
        assert (there.ab or {}).get("p_match") == pytest.approx((near.ab or {}).get("p_match"), abs=1e-5)
        assert [m["delta_nll"] for m in there.marginal] == pytest.approx([m["delta_nll"] for m in near.marginal])
    assert far.rows[2].tax["kl"] > 0
