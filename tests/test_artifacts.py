"""Concept artifacts: bit-exact round trips, compatibility checks, hostile files, the content-keyed cache."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from constraintdsl.concepts import build as artifacts
from constraintdsl.concepts.artifact import (
    PERCENTILE_LEVELS,
    REQUIRED_METADATA,
    Calibration,
    ConceptArtifact,
    artifact_hash,
    check_compatible,
    load_artifact,
    save_artifact,
)
from constraintdsl.concepts.build import build_concept, cache_key, cache_path
from constraintdsl.concepts.pairs import load_pairs
from constraintdsl.errors import Span, SpecError, UserError
from constraintdsl.models.loading import ModelIdentity, model_identity
from tests.tiny import tiny_nnsight

H = 8


def make_artifact(layers: tuple[int, ...] = (3, 5, 7), seed: int = 0) -> ConceptArtifact:
    rng = np.random.default_rng(seed)
    n = len(layers)
    d = rng.normal(size=(n, H))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    neg = rng.normal(size=n).astype(np.float32)
    scale = rng.uniform(1, 3, size=n).astype(np.float32)
    cal = Calibration(
        pos_mean=(neg + scale).astype(np.float32),
        neg_mean=neg,
        scale=scale,
        mean=rng.normal(size=n).astype(np.float32),
        std=rng.uniform(0.5, 2, size=n).astype(np.float32),
        percentiles=np.sort(rng.normal(size=(n, 9)), axis=1).astype(np.float32),
        auroc=np.array([0.9, np.nan, 1.0][:n], dtype=np.float32),
    )
    meta = {
        "format": "1",
        "concept": "tone",
        "model_id": "smollm2",
        "model_revision": "rev-a",
        "architecture": "llama",
        "hidden_size": str(H),
        "site": "resid",
        "method": "mean",
        "dataset_sha256": "0" * 64,
        "token_selection": "plain",
        "percentile_levels": json.dumps(list(PERCENTILE_LEVELS)),
        "tool_version": "0.1.0",
    }
    return ConceptArtifact(d.astype(np.float32), layers, cal, meta)


def identity(**overrides: Any) -> ModelIdentity:
    base = {"id": "smollm2", "revision": "rev-a", "architecture": "llama", "hidden_size": H, "num_layers": 30}
    return ModelIdentity(**{**base, **overrides})


def rewrite(path: Path, **changes: Any) -> Path:
    """Re-save ``path`` with some tensors (or metadata, key ``meta``) replaced; None deletes a tensor."""
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as fh:
        meta = dict(fh.metadata())
    meta.update(changes.pop("meta", {}))
    for key, value in changes.items():
        if value is None:
            tensors.pop(key)
        else:
            tensors[key] = value
    out = path.with_name("edited.safetensors")
    save_file(tensors, str(out), metadata=meta)
    return out


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return save_artifact(make_artifact(), tmp_path / "tone.safetensors")


def fails(path: Path, match: str) -> UserError:
    with pytest.raises(UserError, match=match) as info:
        load_artifact(path)
    assert not isinstance(info.value, SpecError)
    assert info.value.where == str(path)
    return info.value


# -------------------------------------------------------------------------------------------- round trip


def test_artifacts_round_trip_bit_exactly(tmp_path: Path, saved: Path) -> None:
    original = make_artifact()
    loaded = load_artifact(saved)
    assert loaded.layers == original.layers and dict(loaded.metadata) == dict(original.metadata)
    assert loaded.directions.tobytes() == original.directions.tobytes()
    assert loaded.calibration is not None and original.calibration is not None
    for key, value in original.calibration.arrays().items():
        assert loaded.calibration.arrays()[key].tobytes() == value.tobytes(), key
    again = save_artifact(loaded, tmp_path / "again.safetensors")
    assert again.read_bytes() == saved.read_bytes()
    assert artifact_hash(again) == artifact_hash(saved)
    assert artifact_hash(saved).startswith("sha256:") and len(artifact_hash(saved)) == 7 + 64


def test_saving_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "c.safetensors"
    save_artifact(make_artifact(), target)
    save_artifact(make_artifact(seed=1), target)
    assert os.listdir(target.parent) == ["c.safetensors"]
    assert load_artifact(target).directions.tobytes() == make_artifact(seed=1).directions.tobytes()


def test_calibrated_values_convert_to_raw_units() -> None:
    art = make_artifact()
    cal = art.calibration
    assert cal is not None
    assert art.to_raw(5, 0.0) == pytest.approx(float(cal.neg_mean[1]))
    assert art.to_raw(5, 1.0) == pytest.approx(float(cal.pos_mean[1]), rel=1e-6)
    with pytest.raises(KeyError):
        art.direction(4)


# -------------------------------------------------------------------------------------- compatibility


def test_a_matching_model_is_compatible() -> None:
    check_compatible(make_artifact(), identity())


def test_a_hidden_size_mismatch_names_both_sizes_and_points_at_the_statement(saved: Path) -> None:
    art = load_artifact(saved)
    span = Span("spec.cdsl", 4, 1, 4, 20)
    with pytest.raises(SpecError) as info:
        check_compatible(art, identity(id="gpt2", hidden_size=768), span=span)
    text = str(info.value)
    assert text.startswith("spec.cdsl:4:1:") and "hidden size 8" in text and "hidden size 768" in text
    assert "smollm2" in text and "gpt2" in text


def test_a_model_id_or_revision_mismatch_is_an_error_naming_both(saved: Path) -> None:
    art = load_artifact(saved)
    with pytest.raises(UserError, match="extracted from model smollm2, not other/model"):
        check_compatible(art, identity(id="other/model"))
    with pytest.raises(UserError, match=r"revision rev-a.*revision rev-b"):
        check_compatible(art, identity(revision="rev-b"))
    with pytest.raises(UserError, match=r"layer\(s\) \[7\].*6 layers"):
        check_compatible(art, identity(num_layers=6))


# ------------------------------------------------------------------------------------------ hostile files


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth", ".pkl", ".bin"])
def test_a_pickle_payload_is_refused_and_never_runs(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / f"concept{suffix}"
    path.write_bytes(pickle.dumps({"directions": Payload(marker)}))
    # The payload is live: unpickling it would create the marker.
    with pytest.raises(UserError) as info:
        load_artifact(path)
    assert not marker.exists()
    message = str(info.value)
    assert ("not a safetensors file" in message) if suffix == ".safetensors" else ("pickle" in message)
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_a_pickle_inside_a_torch_zip_renamed_safetensors_is_refused(tmp_path: Path) -> None:
    import torch

    marker = tmp_path / "PWNED"
    path = tmp_path / "model.safetensors"
    torch.save({"x": Payload(marker)}, path)
    fails(path, "not a safetensors file")
    assert not marker.exists()


def test_a_npy_file_with_a_pickled_object_array_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "v.npy"
    np.save(path, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    fails(path, "cannot read .npy")
    assert not marker.exists()


def test_truncated_files_are_clear_errors(tmp_path: Path, saved: Path) -> None:
    data = saved.read_bytes()
    for cut, match in [(4, "only 4 bytes"), (40, "bad header length"), (len(data) - 10, "truncated")]:
        path = tmp_path / "cut.safetensors"
        path.write_bytes(data[:cut])
        fails(path, match)
    npy = tmp_path / "v.npy"
    np.save(npy, np.ones(H, dtype=np.float32))
    npy.write_bytes(npy.read_bytes()[:-8])
    fails(npy, ".npy")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_vectors_are_refused(saved: Path, bad: float) -> None:
    d = load_file(str(saved))["directions"]
    d[1, 2] = bad
    fails(rewrite(saved, directions=d), r"row\(s\) \[1\] contain NaN or infinite")
    std = load_file(str(saved))["std"]
    std[0] = bad
    fails(rewrite(saved, std=std), "'std' contains NaN or infinite")


def test_zero_and_non_unit_directions_are_refused_and_near_unit_ones_renormalized(saved: Path) -> None:
    d = load_file(str(saved))["directions"]
    zero = d.copy()
    zero[2] = 0
    fails(rewrite(saved, directions=zero), "row 2 is the zero vector")
    fails(rewrite(saved, directions=d * 3), "norm 3, not a unit vector")
    near = d * np.float32(1.0004)
    loaded = load_artifact(rewrite(saved, directions=near))
    np.testing.assert_allclose(np.linalg.norm(loaded.directions, axis=1), 1.0, atol=1e-6)


def test_wrong_shapes_and_dtypes_are_refused(saved: Path) -> None:
    d = load_file(str(saved))["directions"]
    fails(rewrite(saved, directions=d[:2]), "'layers' must be 2 integers")
    fails(rewrite(saved, directions=d.reshape(-1)), r"shape \[layers, hidden\]")
    fails(
        rewrite(saved, directions=np.ones((3, 4), np.float32) / 2),
        "hidden size 8 but the directions have width 4",
    )
    fails(rewrite(saved, layers=np.array([1.0, 2.0, 3.0])), "'layers' must be 3 integers")
    fails(rewrite(saved, layers=np.array([1, 1, 2])), "distinct")
    fails(rewrite(saved, scale=np.ones(2, np.float32)), r"'scale' must be float \[3\]")
    fails(rewrite(saved, percentiles=np.ones((3, 5), np.float32)), r"'percentiles' must be float \[3, 9\]")
    fails(rewrite(saved, scale=-np.ones(3, np.float32)), "not positive")
    fails(rewrite(saved, auroc=None), "incomplete calibration: missing auroc")
    fails(rewrite(saved, extra=np.ones(3, np.float32)), "unexpected tensor")


def test_missing_metadata_is_refused(tmp_path: Path, saved: Path) -> None:
    tensors = load_file(str(saved))
    path = tmp_path / "nometa.safetensors"
    save_file(tensors, str(path), metadata={"format": "1"})
    err = fails(path, "missing metadata")
    for key in REQUIRED_METADATA[1:]:
        assert key in err.message


def test_unsupported_suffixes_and_missing_files_are_clear_errors(tmp_path: Path, saved: Path) -> None:
    other = tmp_path / "c.json"
    other.write_text("{}")
    fails(other, "unsupported concept file type '.json'")
    fails(tmp_path / "missing.safetensors", "no such file")
    with pytest.raises(SpecError) as info:
        load_artifact(tmp_path / "missing.safetensors", span=Span("s.cdsl", 2, 9))
    assert str(info.value).startswith("s.cdsl:2:9:")


def test_a_npy_raw_vector_loads_as_a_raw_units_only_concept(tmp_path: Path) -> None:
    path = tmp_path / "steer.npy"
    vec = np.arange(1, H + 1, dtype=np.float32)
    np.save(path, vec)
    art = load_artifact(path)
    assert art.raw_only and art.layers is None and art.hidden_size == H
    np.testing.assert_allclose(art.direction(12), vec / np.linalg.norm(vec), rtol=1e-6)
    check_compatible(art, identity(id="any/model"))
    with pytest.raises(UserError, match="hidden size 8"):
        check_compatible(art, identity(hidden_size=16))
    with pytest.raises(ValueError, match="only raw units"):
        art.to_raw(0, 1.0)
    for bad, match in [
        (np.zeros(H), "zero"),
        (np.ones((2, H)), "one vector"),
        (np.arange(H), "floating point"),
    ]:
        np.save(path, bad)
        fails(path, match)
    np.save(path, np.full(H, np.nan))
    fails(path, "NaN")


# ---------------------------------------------------------------------------------------------- cache


PAIRS = """\
concept: tone
positive: warm
negative: cold
pairs:
  - positive: "I am so happy to help you with that question!"
    negative: "That is a terrible idea and I will not do it."
  - positive: "Thank you very much, this was wonderful and kind."
    negative: "Sorry, I can't help."
  - positive: "I love it."
    negative: "I hate it, it is terrible."
    split: test
"""


def test_a_second_build_reuses_the_cache_without_running_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSTRAINTDSL_CACHE", str(tmp_path / "cache"))
    pairs = tmp_path / "tone.yaml"
    pairs.write_text(PAIRS)
    model = tiny_nnsight("llama")
    calls = []
    model._module.model.embed_tokens.register_forward_hook(lambda *_: calls.append(1))

    first = build_concept(pairs, model, progress=False)
    ran = len(calls)
    assert ran > 0 and first.path is not None and Path(first.path).parent == tmp_path / "cache" / "concepts"
    second = build_concept(pairs, model, progress=False)
    assert len(calls) == ran  # not one forward pass
    assert second.path == first.path and second.directions.tobytes() == first.directions.tobytes()

    # Another method, layer set or dataset is another key.
    third = build_concept(pairs, model, layers=[0, 1], progress=False)
    assert third.path != first.path and third.layers == (0, 1)
    pairs.write_text(PAIRS.replace("I love it.", "I adore it."))
    fourth = build_concept(pairs, model, progress=False)
    assert fourth.path not in (first.path, third.path)


def test_which_tokens_are_read_is_part_of_the_cache_key_and_the_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSTRAINTDSL_CACHE", str(tmp_path / "cache"))
    model = tiny_nnsight("llama")
    ident = model_identity(model)
    key = {"dataset_sha256": "0" * 64, "layers": [0], "site": "resid", "method": "mean", "dtype": "float32"}
    # entries built before `read` existed read every token and keep their key
    assert cache_key(ident, **key) == cache_key(ident, **key, read="all")
    assert len({cache_key(ident, **key, read=r) for r in ("all", "first", "last")}) == 3
    built = {}
    for read in ("all", "last"):
        pairs = load_pairs(_write(tmp_path / f"{read}.yaml", PAIRS.replace("pairs:\n", f"read: {read}\npairs:\n")))
        # the same file bytes under another read would still be another key
        built[read] = build_concept(pairs.path, model, progress=False, pairs=replace(pairs, sha256="1" * 64))
        assert built[read].metadata["read"] == read
    assert built["all"].path != built["last"].path
    assert not np.allclose(built["all"].directions, built["last"].directions)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_an_entry_cached_under_an_older_extraction_revision_is_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSTRAINTDSL_CACHE", str(tmp_path / "cache"))
    pairs = tmp_path / "tone.yaml"
    pairs.write_text(PAIRS)
    model = tiny_nnsight("llama")
    calls = []
    model._module.model.embed_tokens.register_forward_hook(lambda *_: calls.append(1))
    current = artifacts.EXTRACTION_REVISION
    with monkeypatch.context() as patch:
        patch.setattr(artifacts, "EXTRACTION_REVISION", "1")
        stale = build_concept(pairs, model, progress=False)
    ran = len(calls)
    fresh = build_concept(pairs, model, progress=False)
    assert current != "1" and len(calls) > ran  # extracted again, not loaded
    assert fresh.path != stale.path


def test_a_corrupt_cache_entry_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSTRAINTDSL_CACHE", str(tmp_path / "cache"))
    pairs = tmp_path / "tone.yaml"
    pairs.write_text(PAIRS)
    model = tiny_nnsight("llama")
    first = build_concept(pairs, model, progress=False)
    assert first.path is not None
    Path(first.path).write_bytes(b"garbage")
    again = build_concept(pairs, model, progress=False)
    assert again.directions.tobytes() == first.directions.tobytes()
    assert load_artifact(Path(first.path)).layers == (0, 1, 2)
    assert cache_path(Path(first.path).stem) == Path(first.path)


def test_an_extracted_artifact_round_trips_and_checks_against_its_model(tmp_path: Path) -> None:
    from constraintdsl.concepts.extract import extract
    from constraintdsl.concepts.pairs import load_pairs
    from constraintdsl.models.loading import model_identity

    pairs = tmp_path / "tone.yaml"
    pairs.write_text(PAIRS)
    model = tiny_nnsight("llama")
    art = extract(model, load_pairs(pairs), progress=False)
    path = save_artifact(art, tmp_path / "tone.safetensors")
    loaded = load_artifact(path)
    assert loaded.directions.tobytes() == art.directions.tobytes()
    check_compatible(loaded, model_identity(model))
    with pytest.raises(UserError, match="hidden size 32"):
        check_compatible(loaded, identity(id=model_identity(model).id, hidden_size=64))


# ------------------------------------------------------------------------------------------------ CLI


def test_concept_build_and_show_print_the_layer_table_and_write_the_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import constraintdsl.models.loading
    from constraintdsl.cli.concept import concept_app

    monkeypatch.setenv("CONSTRAINTDSL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constraintdsl.models.loading, "load_model", lambda name, dtype="float32": tiny_nnsight("llama"))
    monkeypatch.setenv("COLUMNS", "200")
    pairs = tmp_path / "tone.yaml"
    pairs.write_text(PAIRS)
    runner = CliRunner()
    out = tmp_path / "tone.safetensors"
    args = ["build", "--pairs", str(pairs), "--layers", "0..1", "-o", str(out), "--no-progress"]
    result = runner.invoke(concept_app, args)
    assert result.exit_code == 0, result.output
    assert "pole distance" in result.output and "AUROC" in result.output and "recommended layers" in result.output
    assert f"wrote {out}" in result.output.replace("\n", "") and artifact_hash(out) in result.output
    assert load_artifact(out).layers == (0, 1)

    result = runner.invoke(concept_app, ["build", "--pairs", str(pairs), "--no-progress"])
    assert result.exit_code == 0 and "wrote" in result.output
    result = runner.invoke(concept_app, ["build", "--pairs", str(pairs), "--no-progress"])
    assert result.exit_code == 0 and "reused from cache" in result.output

    result = runner.invoke(concept_app, ["show", str(out)])
    assert result.exit_code == 0, result.output
    assert "dataset_sha256" in result.output and "AUROC" in result.output

    result = runner.invoke(concept_app, ["build", "--pairs", str(pairs), "--layers", "1-x"])
    assert isinstance(result.exception, UserError) and result.exception.where == "--layers"


def test_the_layers_flag_accepts_ranges_lists_and_negative_indices() -> None:
    from constraintdsl.cli.concept import _parse_layers

    assert _parse_layers("10-14") == [10, 11, 12, 13, 14]
    assert _parse_layers("10..12") == _parse_layers("10–12") == [10, 11, 12]
    assert _parse_layers("10,12, 14") == [10, 12, 14]
    assert _parse_layers("-3..-1") == [-3, -2, -1]
    assert _parse_layers("1,4-5") == [1, 4, 5]
    assert _parse_layers(None) is None and _parse_layers("all") is None
    for bad in ["5-3", "-2..3", "x", "1,,2", "1.5"]:
        with pytest.raises(UserError) as info:
            _parse_layers(bad)
        assert info.value.where == "--layers"
