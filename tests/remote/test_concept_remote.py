"""Concept extraction against a real NDIF server: the artifact built remotely equals the local one, every
batch is one request, only reduced results come back, and the CLI's remote build fills the same cache entry
as a local build.  Skipped without a server (see conftest.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from constraintdsl.cli.app import main
from constraintdsl.concepts.artifact import load_artifact
from constraintdsl.concepts.extract import encode_pairs, extract
from constraintdsl.concepts.pairs import PairSet, load_pairs
from tests.remote.test_remote_ndif import Requests
from tests.test_concepts import PLAIN

PAIRS = PLAIN  # the tiny pair set the local extraction tests use
BATCH = 4


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    path = tmp_path / "tone.yaml"
    path.write_text(PAIRS)
    return path


def _same(far: Any, near: Any) -> None:
    np.testing.assert_allclose(far.directions, near.directions, atol=1e-5, rtol=0)
    assert far.layers == near.layers
    arrays = near.calibration.arrays()
    assert arrays
    for key, value in arrays.items():
        np.testing.assert_allclose(far.calibration.arrays()[key], value, atol=1e-5, rtol=0, err_msg=key)
    assert far.metadata == near.metadata


@pytest.mark.parametrize("method", ["mean", "pca"])
def test_a_remote_extraction_equals_the_local_one_with_one_request_per_batch(
    tiny_model: Any, ndif_host: str, pairs_file: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    pairs: PairSet = load_pairs(pairs_file)
    local = extract(tiny_model, pairs, method=method, batch_size=BATCH, progress=False)
    sent = Requests(monkeypatch)
    far = extract(tiny_model, pairs, method=method, batch_size=BATCH, progress=False, remote=ndif_host, timeout=120)
    _same(far, local)
    items = encode_pairs(tiny_model.tokenizer, pairs)
    train = [it for it in items if it.split == "train"]
    test = [it for it in items if it.split == "test"]
    # remote, the train tokens' spread comes from a projection pass of its own, not from H x H sums per batch
    n_train, n_test = math.ceil(len(train) / BATCH), math.ceil(len(test) / BATCH)
    assert sent.posted == 2 * n_train + n_test == len(sent.backends)
    # the held-out and spread requests bring back one float64 per counted token and layer, far less than the
    # activations
    hidden = int(tiny_model.config.hidden_size)
    layers = len(local.layers or ())
    for backend in sent.backends[n_train:]:
        assert backend.stats.statuses[-1] == "COMPLETED"
        tokens = sum(len(it.ids) - it.start for it in test + train)
        assert 0 < backend.stats.response_bytes < tokens * hidden * 4 * layers / 4
    if method == "mean":  # no H x H sums travel back at all
        biggest = max(backend.stats.response_bytes for backend in sent.backends)
        assert biggest < hidden * hidden * 8 * layers


def test_a_remote_extraction_without_a_test_split_equals_the_local_one(
    tiny_model: Any, ndif_host: str, tmp_path: Path
) -> None:
    path = tmp_path / "train-only.yaml"
    path.write_text(PAIRS.replace("    split: test\n", ""))
    pairs = load_pairs(path)
    local = extract(tiny_model, pairs, layers=[0, 2], method="pca", batch_size=BATCH, progress=False)
    far = extract(tiny_model, pairs, layers=[0, 2], method="pca", batch_size=BATCH, progress=False, remote=ndif_host)
    assert far.metadata["calibration_split"] == "train"
    _same(far, local)


def test_the_cli_builds_remotely_into_the_same_cache_entry_a_local_build_reuses(
    tiny_model: Any,
    tiny_folder: Path,
    ndif_host: str,
    pairs_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CONSTRAINTDSL_CACHE", str(tmp_path / "cache"))
    args = ["concept", "build", "--pairs", str(pairs_file), "--model", str(tiny_folder), "--no-progress"]
    sent = Requests(monkeypatch)
    assert main([*args, "--host", ndif_host, "--timeout", "120"]) == 0
    out = capsys.readouterr().out
    assert sent.posted > 0 and "wrote" in out
    (entry,) = (tmp_path / "cache" / "concepts").glob("*.safetensors")
    _same(load_artifact(entry), extract(tiny_model, load_pairs(pairs_file), batch_size=16, progress=False))
    posted = sent.posted
    assert main(args) == 0  # the local build finds the remote one under the same content key
    assert "reused from cache" in capsys.readouterr().out and sent.posted == posted


def test_a_spec_compiled_for_a_model_without_weights_extracts_its_pairs_on_the_server(
    tiny_model: Any,
    tiny_folder: Path,
    ndif_host: str,
    pairs_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import constraintdsl as cdsl
    from constraintdsl.models.loading import is_lazy

    monkeypatch.setenv("CONSTRAINTDSL_CACHE", str(tmp_path / "cache"))  # nothing cached: the concept is built
    spec = pairs_file.parent / "s.cdsl"
    spec.write_text(f'version 1\nconcept tone from pairs "{pairs_file.name}"\nclamp tone >= 0.3 at layers 1-2\n')
    lazy = cdsl.load_lazy(str(tiny_folder))
    sent = Requests(monkeypatch)
    far = cdsl.compile(str(spec), lazy, remote=ndif_host, progress=False)
    assert sent.posted >= 2 and is_lazy(lazy)  # extracted by requests; no weights here
    monkeypatch.setenv("CONSTRAINTDSL_CACHE", str(tmp_path / "local-cache"))
    near = cdsl.compile(str(spec), tiny_model, progress=False)
    # the same cache key and the same raw bounds per layer: the same concept
    assert far.explain() == near.explain().replace(str(tmp_path / "local-cache"), str(tmp_path / "cache"))
