"""Interop: GGUF control vectors, activation-steering ``.svec`` files and sae-lens SAE folders as concepts;
calibrating an imported direction; exporting steers and concepts as llama.cpp control vectors.

Each fixture is written in its format's own layout: the GGUF with ``gguf.GGUFWriter`` exactly as repeng's
``ControlVector.export_gguf`` writes it, the ``.svec`` as ``json.dump`` of what activation-steering's
``SteeringVector.save`` dumps, the SAE folder as sae-lens' ``save_model`` lays it out (``cfg.json`` from
``SAEConfig.to_dict`` and ``sae_weights.safetensors`` with ``W_dec [d_sae, d_in]``).  Every steer is checked
against a hand computation: the tiny Hugging Face model with a forward hook that adds ``s · v`` where the
format's own tool adds it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

import constraintdsl as cdsl
from constraintdsl import SpecError, UserError
from constraintdsl.cli.app import main
from constraintdsl.compiler.export import artifact_vectors, export_problems, plan_vectors
from constraintdsl.concepts.artifact import load_artifact
from constraintdsl.concepts.build import build_concept
from constraintdsl.concepts.interop import open_concept, read_gguf, read_sae, read_svec, sae_hook_site
from tests.tiny import HIDDEN, tiny_hf, tiny_nnsight, tiny_tokenizer

TEXTS = ["Hello there friend, how are you today?", "The cat sat on the mat."]


# ----------------------------------------------------------------------------------------- fixtures


def write_repeng_gguf(path: Path, directions: dict[int, np.ndarray], model_type: str = "llama") -> Path:
    """What repeng's ``ControlVector.export_gguf`` writes (its code, with our arrays)."""
    arch = "controlvector"
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string(f"{arch}.model_hint", model_type)
    writer.add_uint32(f"{arch}.layer_count", len(directions))
    for layer in directions:
        writer.add_tensor(f"direction.{layer}", directions[layer])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_svec(path: Path, directions: dict[int, np.ndarray], model_type: str = "llama") -> Path:
    """What activation-steering's ``SteeringVector.save`` writes: ``json.dump`` of these three keys."""
    data = {
        "model_type": model_type,
        "directions": {k: v.tolist() for k, v in directions.items()},
        "explained_variances": {k: 0.5 for k in directions},
    }
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def write_sae(
    folder: Path,
    w_dec: np.ndarray,
    hook: str = "blocks.1.hook_resid_post",
    *,
    layout: str = "v6",
    dtype: str = "float32",
) -> Path:
    """A sae-lens folder: ``cfg.json`` (current ``SAEConfig.to_dict`` layout, or the pre-6 flat one) and
    ``sae_weights.safetensors`` with the standard SAE's tensors."""
    folder.mkdir(parents=True, exist_ok=True)
    d_sae, d_in = w_dec.shape
    if layout == "v6":
        cfg: dict[str, Any] = {
            "d_in": d_in,
            "d_sae": d_sae,
            "dtype": dtype,
            "device": "cpu",
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "metadata": {
                "sae_lens_version": "6.5.1",
                "sae_lens_training_version": "6.5.1",
                "model_name": "tiny-llama",
                "hook_name": hook,
                "hook_head_index": None,
                "prepend_bos": True,
            },
            "architecture": "standard",
        }
    else:
        layer = int(hook.split(".")[1])
        cfg = {
            "architecture": "standard",
            "d_in": d_in,
            "d_sae": d_sae,
            "dtype": dtype,
            "model_name": "tiny-llama",
            "hook_name": hook,
            "hook_layer": layer,
            "hook_head_index": None,
            "sae_lens_training_version": "3.13.0",
        }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(1)
    tensors = {
        "W_dec": w_dec.astype(np.float32),
        "W_enc": rng.standard_normal((d_in, d_sae)).astype(np.float32),
        "b_enc": np.zeros(d_sae, dtype=np.float32),
        "b_dec": np.zeros(d_in, dtype=np.float32),
    }
    if dtype == "float16":
        tensors = {k: v.astype(np.float16) for k, v in tensors.items()}
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    return folder


def vectors(layers: tuple[int, ...], seed: int = 0, scale: float = 3.0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {layer: (rng.standard_normal(HIDDEN) * scale).astype(np.float32) for layer in layers}


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_nnsight("llama")


@contextmanager
def hooked(edits: dict[int, Callable[..., Any]], pre: bool = False) -> Iterator[Any]:
    """The same tiny model without nnsight, with forward (pre-)hooks on decoder layers."""
    hf = tiny_hf("llama")
    handles = [
        hf.model.layers[k].register_forward_pre_hook(fn, with_kwargs=True)
        if pre
        else hf.model.layers[k].register_forward_hook(fn)
        for k, fn in edits.items()
    ]
    try:
        yield hf
    finally:
        for h in handles:
            h.remove()


def logits_of(hf: Any) -> torch.Tensor:
    enc = tiny_tokenizer()(TEXTS[:1], return_tensors="pt")
    with torch.no_grad():
        return hf(**enc).logits


def spec_logits(model: Any, spec: str, folder: Path) -> torch.Tensor:
    path = folder / "s.cdsl"
    path.write_text(spec)
    plan = cdsl.compile(path, model, progress=False)
    enc = tiny_tokenizer()(TEXTS[:1], return_tensors="pt")
    return plan.trace(enc).logits


def past_sink(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x + t`` on every token but the first (the attention sink, which no statement selects; llama.cpp and
    the steering libraries add to it too, so the references here leave it out to compare like with like)."""
    delta = t.expand_as(x).clone()
    delta[:, 0] = 0
    return x + delta


def add(v: np.ndarray, s: float) -> Callable[..., Any]:
    t = torch.tensor(v, dtype=torch.float32)
    return lambda mod, inputs, out: past_sink(out, s * t)


# ------------------------------------------------------------------------------------------ round trips


def test_a_repeng_gguf_steers_exactly_as_llama_cpp_adds_it(model: Any, tmp_path: Path) -> None:
    v = vectors((1, 2))
    write_repeng_gguf(tmp_path / "mood.gguf", v)
    got = spec_logits(
        model, 'version 1\nconcept mood from gguf "mood.gguf"\nsteer mood by 1.5 vec at layers 1-2\n', tmp_path
    )
    with hooked({k: add(x, 1.5) for k, x in v.items()}) as hf:
        want = logits_of(hf)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, logits_of(tiny_hf("llama")), atol=1e-3)  # the steer does something


def test_an_imported_vector_keeps_its_norm_per_layer(tmp_path: Path) -> None:
    v = vectors((1, 2))
    art = read_gguf(write_repeng_gguf(tmp_path / "m.gguf", v))
    assert art.layers == (1, 2) and art.norms is not None and art.metadata["model_hint"] == "llama"
    for layer in (1, 2):
        assert art.norm(layer) == pytest.approx(float(np.linalg.norm(v[layer])), rel=1e-6)
        assert np.allclose(art.direction(layer) * art.norm(layer), v[layer], atol=1e-5)


def test_an_svec_direction_is_added_where_activation_steering_adds_it(model: Any, tmp_path: Path) -> None:
    v = vectors((2,), seed=3)
    write_svec(tmp_path / "tone.svec", v)
    # MalleableModel.steer adds directions[2] to the input of block 2 (its LeashLayer edits hidden_states),
    got = spec_logits(
        model, 'version 1\nconcept tone from svec "tone.svec"\nsteer tone by 2 vec at layer 1\n', tmp_path
    )
    t = torch.tensor(v[2])

    def before_block(mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            return (past_sink(args[0], 2 * t), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": past_sink(kwargs["hidden_states"], 2 * t)}

    with hooked({2: before_block}, pre=True) as hf:
        want = logits_of(hf)
    assert torch.allclose(got, want, atol=1e-5)
    # … which is this product's layer 1 (the output of block 1)
    assert read_svec(tmp_path / "tone.svec").layers == (1,)


@pytest.mark.parametrize("layout", ["v6", "pre6"])
def test_a_sae_lens_feature_is_its_decoder_row_at_its_hook(model: Any, tmp_path: Path, layout: str) -> None:
    w_dec = np.random.default_rng(5).standard_normal((8, HIDDEN)).astype(np.float32)
    write_sae(tmp_path / "sae", w_dec, "blocks.1.hook_resid_post", layout=layout)
    spec = 'version 1\nconcept f from sae "sae" feature 3\nsteer f by 4 vec at layer 1\n'
    got = spec_logits(model, spec, tmp_path)
    with hooked({1: add(w_dec[3], 4.0)}) as hf:
        want = logits_of(hf)
    assert torch.allclose(got, want, atol=1e-5)
    art = read_sae(tmp_path / "sae", 3)
    assert art.metadata["sae_hook"] == "blocks.1.hook_resid_post" and art.norm(1) == pytest.approx(
        float(np.linalg.norm(w_dec[3])), rel=1e-6
    )


def test_sae_hooks_map_to_sites_and_layers() -> None:
    assert sae_hook_site("blocks.4.hook_resid_post") == ("resid", 4)
    assert sae_hook_site("blocks.4.hook_resid_pre") == ("resid", 3)
    assert sae_hook_site("blocks.4.hook_mlp_out") == ("mlp", 4)
    assert sae_hook_site("blocks.4.hook_attn_out") == ("attn", 4)
    assert sae_hook_site("model.layers.7") == ("resid", 7)
    assert sae_hook_site("model.layers.7.mlp") == ("mlp", 7)
    assert "embedding" in str(sae_hook_site("blocks.0.hook_resid_pre"))
    for unreachable in ("blocks.4.hook_resid_mid", "blocks.4.attn.hook_z", "blocks.4.ln1.hook_normalized"):
        assert isinstance(sae_hook_site(unreachable), str)


def test_an_mlp_sae_feature_in_half_precision_steers_the_mlp_output(model: Any, tmp_path: Path) -> None:
    w_dec = np.random.default_rng(6).standard_normal((4, HIDDEN)).astype(np.float16)
    write_sae(tmp_path / "mlp_sae", w_dec.astype(np.float32), "blocks.2.hook_mlp_out", dtype="float16")
    got = spec_logits(
        model, 'version 1\nconcept f from sae "mlp_sae" feature 0\nsteer f by 1 vec at layer 2 in mlp\n', tmp_path
    )
    hf = tiny_hf("llama")
    t = torch.tensor(w_dec[0].astype(np.float32))
    hf.model.layers[2].mlp.register_forward_hook(lambda mod, i, out: past_sink(out, t))
    assert torch.allclose(got, logits_of(hf), atol=1e-5)
    with pytest.raises(SpecError, match="site 'mlp'"):
        spec_logits(model, 'version 1\nconcept f from sae "mlp_sae" feature 0\nsteer f by 1 vec at layer 2\n', tmp_path)


# ------------------------------------------------------------------------------------------ malformed


def _gguf_with(path: Path, tensors: dict[str, np.ndarray], arch: str = "controlvector", hint: str = "llama") -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string("controlvector.model_hint", hint)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def malformed(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name → (concept statement, what the error says); every file written here."""
    ok = np.ones(HIDDEN, dtype=np.float32)
    nan = ok.copy()
    nan[5] = np.nan
    _gguf_with(tmp_path / "model.gguf", {"direction.1": ok}, arch="llama")
    _gguf_with(tmp_path / "mistral.gguf", {"direction.1": ok}, hint="mistral")
    _gguf_with(tmp_path / "wide.gguf", {"direction.1": np.ones(HIDDEN + 8, dtype=np.float32)})
    _gguf_with(tmp_path / "zero.gguf", {"direction.0": ok})
    _gguf_with(tmp_path / "deep.gguf", {"direction.1": ok, "direction.40": ok})
    _gguf_with(tmp_path / "half.gguf", {"direction.1": ok.astype(np.float16)})
    _gguf_with(tmp_path / "nan.gguf", {"direction.1": nan})
    _gguf_with(tmp_path / "named.gguf", {"token_embd.weight": ok})
    full = _gguf_with(tmp_path / "full.gguf", {"direction.1": ok, "direction.2": ok}).read_bytes()
    (tmp_path / "cut.gguf").write_bytes(full[: len(full) - 40])
    (tmp_path / "text.gguf").write_text("not a gguf")
    write_svec(tmp_path / "wide.svec", {2: np.ones(HIDDEN + 1)})
    write_svec(tmp_path / "zero.svec", {0: ok})
    write_svec(tmp_path / "other.svec", {2: ok}, model_type="gpt2")
    write_svec(tmp_path / "deep.svec", {9: ok})
    (tmp_path / "nan.svec").write_text('{"model_type": "llama", "directions": {"2": [NaN, 1.0]}}')
    text = (tmp_path / "wide.svec").read_text()
    (tmp_path / "cut.svec").write_text(text[: len(text) // 2])
    w = np.random.default_rng(0).standard_normal((6, HIDDEN)).astype(np.float32)
    write_sae(tmp_path / "sae", w)
    write_sae(tmp_path / "sae_z", w, "blocks.1.attn.hook_z")
    write_sae(tmp_path / "sae_pre0", w, "blocks.0.hook_resid_pre")
    write_sae(tmp_path / "sae_wide", np.ones((6, HIDDEN + 4), dtype=np.float32))
    w_nan = w.copy()
    w_nan[2, 0] = np.nan
    write_sae(tmp_path / "sae_nan", w_nan)
    write_sae(tmp_path / "sae_cut", w)
    weights = tmp_path / "sae_cut" / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    write_sae(tmp_path / "sae_shape", w)
    cfg = json.loads((tmp_path / "sae_shape" / "cfg.json").read_text())
    cfg["d_sae"] = 7
    (tmp_path / "sae_shape" / "cfg.json").write_text(json.dumps(cfg))
    return {
        "gguf model file": ('from gguf "model.gguf"', "not a control vector"),
        "gguf model hint": ('from gguf "mistral.gguf"', "made for a 'mistral' model"),
        "gguf hidden size": ('from gguf "wide.gguf"', "hidden size 40"),
        "gguf layer 0": ('from gguf "zero.gguf"', "direction.0"),
        "gguf layer out of range": ('from gguf "deep.gguf"', "layer(s) [40]"),
        "gguf f16": ('from gguf "half.gguf"', "not F32"),
        "gguf NaN": ('from gguf "nan.gguf"', "NaN"),
        "gguf tensor name": ('from gguf "named.gguf"', "not named direction.N"),
        "gguf truncated": ('from gguf "cut.gguf"', "GGUF"),
        "gguf not gguf": ('from gguf "text.gguf"', "not a readable GGUF"),
        "svec hidden size": ('from svec "wide.svec"', "hidden size 33"),
        "svec layer 0": ('from svec "zero.svec"', "embedding output"),
        "svec model type": ('from svec "other.svec"', "made for a 'gpt2' model"),
        "svec layer out of range": ('from svec "deep.svec"', "layer(s) [8]"),
        "svec NaN": ('from svec "nan.svec"', "NaN"),
        "svec truncated": ('from svec "cut.svec"', "not valid JSON"),
        "sae feature": ('from sae "sae" feature 6', "feature 6 is out of range"),
        "sae hook_z": ('from sae "sae_z" feature 1', "not a site"),
        "sae resid_pre 0": ('from sae "sae_pre0" feature 1', "embedding output"),
        "sae hidden size": ('from sae "sae_wide" feature 1', "hidden size 36"),
        "sae NaN": ('from sae "sae_nan" feature 2', "NaN"),
        "sae truncated": ('from sae "sae_cut" feature 1', "truncated"),
        "sae shape": ('from sae "sae_shape" feature 1', "W_dec has shape"),
        "sae folder": ('from sae "nowhere" feature 1', "SAE folder not found"),
    }


def test_every_malformed_import_is_a_located_error_and_runs_nothing(model: Any, tmp_path: Path) -> None:
    calls: list[int] = []
    handle = model._module.model.embed_tokens.register_forward_hook(lambda *_: calls.append(1))
    try:
        for label, (source, message) in malformed(tmp_path).items():
            spec = tmp_path / "s.cdsl"
            spec.write_text(f"version 1\nconcept c {source}\nsteer c by 1 vec at layer 1\n")
            with pytest.raises(SpecError) as info:
                cdsl.compile(spec, model, progress=False)
            rendered = info.value.render()
            assert message in rendered, (label, rendered)
            span = info.value.diagnostics[0].span
            kind = source.split()[1]
            assert (span.line, span.col) == (2, len(f"concept c from {kind} ") + 1), (label, rendered)
    finally:
        handle.remove()
    assert calls == []  # nothing ran


def test_open_concept_validates_files_without_a_model(tmp_path: Path) -> None:
    cases = malformed(tmp_path)
    model_checks = {"gguf model hint", "gguf hidden size", "gguf layer out of range", "svec hidden size"}
    model_checks |= {"svec model type", "svec layer out of range", "sae hidden size"}
    for label, (source, message) in cases.items():
        kind, rest = source.removeprefix("from ").split(" ", 1)
        path = rest.split('"')[1]
        feature = int(rest.rsplit(" ", 1)[1]) if "feature" in rest else None
        if label in model_checks:
            open_concept(kind, tmp_path / path, feature=feature)  # fine on its own; the model check refuses it
            continue
        with pytest.raises(UserError) as info:
            open_concept(kind, tmp_path / path, feature=feature)
        assert message in info.value.render(), label


# --------------------------------------------------------------------------------------- units, errors


def test_vec_needs_a_stored_vector_and_a_bare_number_needs_calibration(model: Any, tmp_path: Path) -> None:
    write_repeng_gguf(tmp_path / "m.gguf", vectors((1,)))
    with pytest.raises(SpecError, match="calibrated on"):
        spec_logits(model, 'version 1\nconcept m from gguf "m.gguf"\nsteer m by 1 at layer 1\n', tmp_path)
    with pytest.raises(SpecError, match="has no direction at layer 2"):
        spec_logits(model, 'version 1\nconcept m from gguf "m.gguf"\nsteer m by 1 vec at layer 2\n', tmp_path)
    # raw works, and `vec` on a clamp is a position: 0.5 vec = half the stored norm
    art = read_gguf(tmp_path / "m.gguf")
    path = tmp_path / "c.cdsl"
    path.write_text('version 1\nconcept m from gguf "m.gguf"\nclamp m >= 0.5 vec at layer 1\n')
    plan = cdsl.compile(path, model, progress=False)
    assert plan.entries[0].lo == pytest.approx(0.5 * art.norm(1), rel=1e-6)


def test_a_npy_vector_takes_vec_units_too(model: Any, tmp_path: Path) -> None:
    v = vectors((1,))[1]
    np.save(tmp_path / "v.npy", v)
    got = spec_logits(model, 'version 1\nconcept v from file "v.npy"\nsteer v by 2 vec at layer 1\n', tmp_path)
    with hooked({1: add(v, 2.0)}) as hf:
        assert torch.allclose(got, logits_of(hf), atol=1e-5)


# ---------------------------------------------------------------------------------------- calibration

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
  - positive: "What a wonderful day."
    negative: "What a terrible day."
    split: test
"""


def test_an_imported_direction_calibrated_on_pairs_gets_calibrated_units(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSTRAINTDSL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "tone.yaml").write_text(PAIRS)
    extracted = build_concept(tmp_path / "tone.yaml", model, layers=[1, 2], progress=False)
    # an outside tool's vector along the extracted direction, at its own norm
    v = {layer: extracted.direction(layer) * 7.0 for layer in (1, 2)}
    write_repeng_gguf(tmp_path / "tone.gguf", v)
    spec = 'version 1\nconcept t from gguf "tone.gguf" calibrated on "tone.yaml"\nsteer t by 1 at layers 1-2\n'
    (tmp_path / "s.cdsl").write_text(spec)
    plan = cdsl.compile(tmp_path / "s.cdsl", model, progress=False)
    art = next(iter(plan.concepts.values()))
    calibrated = load_artifact(art)
    assert calibrated.calibration is not None and calibrated.norms is not None
    # the same direction calibrated on the same pairs: the same statistics as the extraction's
    for key in ("pos_mean", "neg_mean", "scale", "std", "percentiles", "auroc"):
        assert np.allclose(getattr(calibrated.calibration, key), getattr(extracted.calibration, key), atol=1e-4), key
    assert np.allclose(calibrated.norms, [7.0, 7.0], atol=1e-5)
    assert calibrated.metadata["method"] == "fixed" and calibrated.metadata["source"] == "gguf"
    amounts = [e.lo for e in plan.entries]
    assert amounts == pytest.approx([float(s) for s in extracted.calibration.scale], rel=1e-5)
    # cached: a second compile runs nothing
    calls: list[int] = []
    handle = model._module.model.embed_tokens.register_forward_hook(lambda *_: calls.append(1))
    try:
        cdsl.compile(tmp_path / "s.cdsl", model, progress=False)
    finally:
        handle.remove()
    assert calls == []


def test_calibrating_a_vector_that_points_against_the_pairs_is_refused(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSTRAINTDSL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "tone.yaml").write_text(PAIRS)
    extracted = build_concept(tmp_path / "tone.yaml", model, layers=[1], progress=False)
    write_repeng_gguf(tmp_path / "flip.gguf", {1: -extracted.direction(1)})
    (tmp_path / "s.cdsl").write_text(
        'version 1\nconcept t from gguf "flip.gguf" calibrated on "tone.yaml"\nsteer t by 1 at layer 1\n'
    )
    with pytest.raises(SpecError) as info:
        cdsl.compile(tmp_path / "s.cdsl", model, progress=False)
    assert "does not project above" in info.value.render()
    assert info.value.diagnostics[0].span.col == spec_col('concept t from gguf "flip.gguf" calibrated on ')


def spec_col(prefix: str) -> int:
    return len(prefix) + 1


# --------------------------------------------------------------------------------------------- export


def test_a_spec_of_steers_exports_to_the_vector_it_adds(model: Any, tmp_path: Path) -> None:
    v = vectors((1, 2), seed=9)
    write_repeng_gguf(tmp_path / "m.gguf", v)
    w = vectors((2,), seed=10)
    write_svec(tmp_path / "n.svec", {3: w[2]})  # key 3: layer 2
    (tmp_path / "s.cdsl").write_text(
        'version 1\nconcept m from gguf "m.gguf"\nconcept n from svec "n.svec"\n'
        "steer m by 0.5 vec at layers 1-2\nsteer n by -2 vec at layer 2\nsteer m by 1 raw at layer 1\n"
    )
    spec = cdsl.load(tmp_path / "s.cdsl")
    assert export_problems(spec) == []
    out = plan_vectors(cdsl.compile(spec, model, progress=False))
    unit1 = v[1] / np.linalg.norm(v[1])
    assert np.allclose(out[1], 0.5 * v[1] + unit1, atol=1e-5)
    assert np.allclose(out[2], 0.5 * v[2] - 2 * w[2], atol=1e-5)


def test_what_llama_cpp_cannot_express_is_a_located_error_naming_the_statement(tmp_path: Path) -> None:
    text = (
        'version 1\nconcept m from gguf "m.gguf"\n'
        "clamp m >= 1 vec at layer 1\n"
        "steer m by 1 vec at layer 2 in attn\n"
        "steer m by 1 vec at layer 2 on prompt\n"
        "steer m by 1 vec at layer 2 when m > 0 raw at layer 1\n"
        "steer m by 1 vec at layers 0-2\n"
        "scale m by 2 at layer 1\n"
        "steer m by 1 vec at layer 3\n"
    )
    problems = export_problems(cdsl.parse(text, "s.cdsl"))
    lines = sorted({d.span.line for d in problems})
    assert lines == [3, 4, 5, 6, 7, 8]
    rendered = [d.message for d in problems]
    assert any("clamp m >= 1 vec at layer 1" in m and "only add" in m for m in rendered)
    assert any("in attn" in m for m in rendered) and any("every token" in m for m in rendered)
    assert any("gate" in m for m in rendered) and any("layer 0" in m for m in rendered)


def test_cdsl_export_refuses_a_clamp_before_loading_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_repeng_gguf(tmp_path / "m.gguf", vectors((1,)))
    (tmp_path / "s.cdsl").write_text(
        'version 1\nmodel "no/such-model"\nconcept m from gguf "m.gguf"\nclamp m >= 1 vec at layer 1\n'
    )
    code = main(["export", str(tmp_path / "s.cdsl"), "--to", "gguf", "-o", str(tmp_path / "x.gguf")])
    err = capsys.readouterr().err
    assert code == 2 and "s.cdsl:4:1: error:" in err and "loading model" not in err
    assert not (tmp_path / "x.gguf").exists()
    (tmp_path / "x.gguf").write_bytes(b"mine")
    code = main(["export", str(tmp_path / "m.gguf"), "--to", "gguf", "-o", str(tmp_path / "x.gguf")])
    assert code == 2 and "exists" in capsys.readouterr().err and (tmp_path / "x.gguf").read_bytes() == b"mine"


def test_a_concept_exports_as_one_unit_per_layer_and_reads_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v = vectors((1, 2), seed=4)
    write_repeng_gguf(tmp_path / "m.gguf", v)
    assert main(["export", str(tmp_path / "m.gguf"), "--to", "gguf", "-o", str(tmp_path / "copy.gguf")]) == 0
    back = read_gguf(tmp_path / "copy.gguf")
    assert back.layers == (1, 2) and back.metadata["model_hint"] == "llama"
    for layer in (1, 2):
        assert np.allclose(back.directions[back.row(layer)] * back.norm(layer), v[layer], atol=1e-5)
    art = read_gguf(tmp_path / "m.gguf")
    raw, unit = artifact_vectors(art, unit="raw", layers=[2])
    assert unit == "raw" and list(raw) == [2] and np.linalg.norm(raw[2]) == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(UserError, match="no calibration"):
        artifact_vectors(art, unit="calibrated")
    capsys.readouterr()


# ------------------------------------------------------------------------------------------ language


def test_import_options_diff_field_by_field_and_hash_their_files(tmp_path: Path) -> None:
    a = cdsl.parse('version 1\nconcept c from sae "sae" feature 3\nsteer c by 1 vec at layer 1\n', "a.cdsl")
    b = cdsl.parse(
        'version 1\nconcept c from sae "sae" feature 4 calibrated on "p.yaml"\nsteer c by 1 vec at layer 1\n', "b.cdsl"
    )
    (change,) = cdsl.diff(a, b)
    assert change.subject == "concept c"
    assert set(change.fields) == {("feature", "3", "4"), ("calibrated", "none", "p.yaml")}
    assert a.hash() != b.hash()
    # check/hash fold in the SAE folder's files and the calibration set
    write_sae(tmp_path / "sae", np.ones((6, HIDDEN), dtype=np.float32))
    (tmp_path / "p.yaml").write_text(PAIRS)
    (tmp_path / "s.cdsl").write_text(b.to_dsl())
    from constraintdsl.lang.loading import concept_hashes

    before = concept_hashes(cdsl.load(tmp_path / "s.cdsl"))
    assert set(before) == {"concept:c", "concept:c:calibrated"}
    write_sae(tmp_path / "sae", np.full((6, HIDDEN), 2.0, dtype=np.float32))
    after = concept_hashes(cdsl.load(tmp_path / "s.cdsl"))
    assert after["concept:c"] != before["concept:c"] and after["concept:c:calibrated"] == before["concept:c:calibrated"]


def test_the_yaml_schema_knows_the_import_fields() -> None:
    from constraintdsl.lang.yaml_twin import json_schema

    entry = json_schema()["$defs"]["ConceptEntry"]["properties"]
    assert {"feature", "calibrated"} <= set(entry)
    assert set(entry["from"]["enum"]) == {"pairs", "file", "gguf", "svec", "sae"}


def test_an_included_files_calibration_path_is_relative_to_that_file(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "c.cdsl").write_text('version 1\nconcept c from gguf "m.gguf" calibrated on "p.yaml"\n')
    (tmp_path / "top.cdsl").write_text('version 1\ninclude "lib/c.cdsl"\nsteer c by 1 at layer 1\n')
    (concept,) = cdsl.load(tmp_path / "top.cdsl").concepts
    assert (concept.path, concept.calibrated) == ("lib/m.gguf", "lib/p.yaml")


def test_running_an_uncalibrated_import_reads_no_calibrated_effect(model: Any, tmp_path: Path) -> None:
    from constraintdsl.run.readout import concept_reads

    write_repeng_gguf(tmp_path / "m.gguf", vectors((1,)))
    (tmp_path / "s.cdsl").write_text('version 1\nconcept m from gguf "m.gguf"\nsteer m by 1 vec at layer 1\n')
    plan = cdsl.compile(tmp_path / "s.cdsl", model, progress=False)
    assert concept_reads([plan]) == []
    result = plan.generate(TEXTS[:1], max_new_tokens=3, chat=False)
    assert result.telemetry is not None and float(result.telemetry[0, 0]) > 0


def test_cdsl_concept_calibrate_prints_the_layer_table_of_an_imported_vector(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import constraintdsl.models.loading as loading

    monkeypatch.setenv("CONSTRAINTDSL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loading, "load_model", lambda name, dtype="float32": model)
    (tmp_path / "tone.yaml").write_text(PAIRS)
    w_dec = np.random.default_rng(2).standard_normal((5, HIDDEN)).astype(np.float32)
    write_sae(tmp_path / "sae", w_dec, "blocks.2.hook_resid_pre")  # block 2's input: layer 1 here
    out = tmp_path / "cal.safetensors"
    args = ["concept", "calibrate", str(tmp_path / "sae"), "--feature", "4", "--pairs", str(tmp_path / "tone.yaml")]
    code = main([*args, "-o", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0 and "AUROC" in printed and "wrote" in printed and out.is_file()
    saved = load_artifact(out)
    assert saved.layers == (1,) and saved.calibration is not None
    assert saved.norm(1) == pytest.approx(float(np.linalg.norm(w_dec[4])), rel=1e-6)
    assert main(["concept", "show", str(tmp_path / "sae"), "--feature", "4"]) == 0
    assert "stored vector norm" in capsys.readouterr().out


def test_cdsl_export_writes_a_control_vector_that_reimports_as_the_spec_steer(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import constraintdsl.models.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda name, dtype="float32": model)
    v = vectors((1, 2), seed=11)
    write_repeng_gguf(tmp_path / "m.gguf", v)
    (tmp_path / "s.cdsl").write_text(
        'version 1\nconcept m from gguf "m.gguf"\nlet k = 1 vec | 2 vec\nsteer m by $k at layers 1-2\n'
    )
    out = tmp_path / "out.gguf"
    assert main(["export", str(tmp_path / "s.cdsl"), "--to", "gguf", "-o", str(out)]) == 2  # which variant?
    assert "--variant" in capsys.readouterr().err and not out.exists()
    assert main(["export", str(tmp_path / "s.cdsl"), "--to", "gguf", "-o", str(out), "--variant", "k=2 vec"]) == 0
    back = read_gguf(out)
    assert back.metadata["model_hint"] == "llama" and back.layers == (1, 2)
    for layer in (1, 2):
        assert np.allclose(back.direction(layer) * back.norm(layer), 2 * v[layer], atol=1e-4)
    # the exported file at scale 1 steers exactly like the spec
    (tmp_path / "again.cdsl").write_text('version 1\nconcept e from gguf "out.gguf"\nsteer e by 1 vec at layers 1-2\n')
    a = cdsl.compile(tmp_path / "again.cdsl", model, progress=False).trace(TEXTS[:1], chat=False).logits
    (tmp_path / "k2.cdsl").write_text('version 1\nconcept m from gguf "m.gguf"\nsteer m by 2 vec at layers 1-2\n')
    b = cdsl.compile(tmp_path / "k2.cdsl", model, progress=False).trace(TEXTS[:1], chat=False).logits
    assert torch.allclose(a, b, atol=1e-4)
