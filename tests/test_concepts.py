"""Concept extraction and calibration: exact agreement with a direct computation, batching, early stop."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nnsight
import numpy as np
import pytest
import torch

from constraintdsl.concepts.artifact import PERCENTILE_LEVELS, ConceptArtifact
from constraintdsl.concepts.extract import auroc, encode_pairs, extract, recommended_layers, resolve_layers
from constraintdsl.concepts.pairs import PairSet, load_pairs
from constraintdsl.errors import SpecError, UserError
from constraintdsl.models.sites import as_bth, site_module
from tests.tiny import tiny_nnsight

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "specs" / "data"

PLAIN = """\
concept: tone
positive: warm
negative: cold
pairs:
  - positive: "I am so happy to help you with that question!"
    negative: "That is a terrible idea and I will not do it."
  - positive: "Thank you very much, this was wonderful and kind."
    negative: "Sorry, I can't help."
  - positive: "hey whats up, lol that was awesome"
    negative: "The cat sat on the mat and looked out of the window, bored."
  - positive: "Wonderful!"
    negative: "No."
  - positive: "Please find attached the report you requested, sir, with thanks."
    negative: "The capital of France is Paris."
  - positive: "I love it."
    negative: "I hate it, it is terrible."
    split: test
  - positive: "So kind of you."
    negative: "Go away."
    split: test
  - positive: "happy happy"
    negative: "sad sad sad sad"
    split: test
"""

CHAT = """\
concept: helpful
positive: helpful
negative: dismissive
pairs:
  - prompt: "How do I bake bread?"
    positive: "Mix flour, water, salt and yeast, then knead."
    negative: "Figure it out."
  - prompt: "What is the capital of France?"
    positive: "The capital of France is Paris."
    negative: "No idea."
  - prompt: "Can you help me?"
    positive: "Of course, I am happy to help with that question!"
    negative: "Sorry, I can't help with that request."
  - prompt: "Thanks!"
    positive: "You are very welcome, that was wonderful."
    negative: "Whatever."
    split: test
  - prompt: "Hi"
    positive: "Hello, how can I help?"
    negative: "What."
    split: test
"""


@pytest.fixture
def plain(tmp_path: Path) -> PairSet:
    path = tmp_path / "tone.yaml"
    path.write_text(PLAIN)
    return load_pairs(path)


@pytest.fixture
def chat(tmp_path: Path) -> PairSet:
    path = tmp_path / "helpful.yaml"
    path.write_text(CHAT)
    return load_pairs(path)


# ----------------------------------------------------------------------------------------- reference


def raw_activations(model: Any, ids: list[int], layers: list[int], site: str) -> dict[int, np.ndarray]:
    """One unpadded sequence through the raw HF module, read with plain torch forward hooks."""
    hf = model._module
    got: dict[int, np.ndarray] = {}
    handles = []
    for layer in layers:
        module = site_module(hf, layer, site)

        def hook(_m: Any, _i: Any, out: Any, layer: int = layer) -> None:
            got[layer] = as_bth(out)[0].detach().double().numpy()

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            hf(torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
    return got


def reference(model: Any, pairs: PairSet, layers: list[int], site: str, method: str) -> dict[str, np.ndarray]:
    """Directions and calibration computed directly in numpy from every counted token's activation.

    Pole means, mean and std are over the train split's tokens; percentiles over the test split's tokens (both
    poles), or over the train split's when there is no test split; AUROC over test examples' mean projections.
    """
    items = encode_pairs(model.tokenizer, pairs)
    calibration_split = "test" if any(it.split == "test" for it in items) else "train"
    acts = [raw_activations(model, list(it.ids), layers, site) for it in items]
    out: dict[str, list[Any]] = {k: [] for k in ("dir", "pos", "neg", "mean", "std", "pct", "auc")}
    for layer in layers:
        tok = {(it.split, it.pole, it.pair): a[layer][it.start : it.stop] for it, a in zip(items, acts, strict=True)}
        pos = np.concatenate([v for (s, p, _), v in tok.items() if s == "train" and p == 1])
        neg = np.concatenate([v for (s, p, _), v in tok.items() if s == "train" and p == -1])
        diff = pos.mean(0) - neg.mean(0)
        if method == "mean":
            u = diff / np.linalg.norm(diff)
        else:
            train_pairs = sorted({k for (s, _, k) in tok if s == "train"})
            d = np.stack([tok[("train", 1, k)].mean(0) - tok[("train", -1, k)].mean(0) for k in train_pairs])
            u = np.linalg.svd(d, full_matrices=False)[2][0]
            u = u if u @ diff >= 0 else -u
        both = np.concatenate([pos @ u, neg @ u])
        out["dir"].append(u)
        out["pos"].append((pos @ u).mean())
        out["neg"].append((neg @ u).mean())
        out["mean"].append(both.mean())
        out["std"].append(both.std())
        held = np.concatenate([v @ u for (s, _, _), v in tok.items() if s == calibration_split])
        out["pct"].append(np.percentile(held, PERCENTILE_LEVELS))
        test_pos = [(v @ u).mean() for (s, p, _), v in tok.items() if s == "test" and p == 1]
        test_neg = [(v @ u).mean() for (s, p, _), v in tok.items() if s == "test" and p == -1]
        wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(test_pos, test_neg)]
        out["auc"].append(np.mean(wins) if wins else np.nan)
    return {k: np.asarray(v) for k, v in out.items()}


@contextlib.contextmanager
def counting_forwards(model: Any) -> Iterator[Counter[tuple[int, ...]]]:
    """How many times the torch module runs on each sequence (padding stripped with the attention mask)."""
    seen: Counter[tuple[int, ...]] = Counter()

    def hook(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        for row, keep in zip(ids.tolist(), kwargs["attention_mask"].bool().tolist(), strict=True):
            seen[tuple(i for i, k in zip(row, keep, strict=True) if k)] += 1

    handle = model._module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def assert_matches(art: ConceptArtifact, ref: dict[str, np.ndarray], tol: float = 1e-5) -> None:
    cal = art.calibration
    assert cal is not None
    np.testing.assert_allclose(art.directions, ref["dir"], atol=tol, rtol=0)
    for got, key in ((cal.pos_mean, "pos"), (cal.neg_mean, "neg"), (cal.mean, "mean"), (cal.std, "std")):
        np.testing.assert_allclose(got, ref[key], atol=tol, rtol=1e-5)
    np.testing.assert_allclose(cal.scale, ref["pos"] - ref["neg"], atol=tol, rtol=1e-5)
    np.testing.assert_allclose(cal.percentiles, ref["pct"], atol=tol, rtol=1e-5)
    np.testing.assert_array_equal(cal.auroc, ref["auc"].astype(np.float32))


# ------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("method", ["mean", "pca"])
@pytest.mark.parametrize("site", ["resid", "attn", "mlp"])
def test_extraction_equals_a_direct_numpy_computation_from_raw_activations(
    plain: PairSet, method: str, site: str
) -> None:
    model = tiny_nnsight("llama")
    art = extract(model, plain, site=site, method=method, batch_size=5, progress=False)
    assert art.layers == (0, 1, 2)
    assert_matches(art, reference(model, plain, [0, 1, 2], site, method))


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "qwen3"])
def test_extraction_matches_the_reference_on_other_architectures(plain: PairSet, arch: str) -> None:
    model = tiny_nnsight(arch)
    art = extract(model, plain, layers=[-1, 0], method="pca", batch_size=4, progress=False)
    assert art.layers == (0, 2)
    assert_matches(art, reference(model, plain, [0, 2], "resid", "pca"))


@pytest.mark.parametrize("method", ["mean", "pca"])
def test_chat_pairs_count_only_the_assistant_reply_tokens(chat: PairSet, method: str) -> None:
    model = tiny_nnsight("llama")
    items = encode_pairs(model.tokenizer, chat)
    for item in items:
        pair = chat.pairs[item.pair]
        reply = pair.positive if item.pole == 1 else pair.negative
        assert model.tokenizer.decode(list(item.ids[item.start :])) == reply
        prompt = model.tokenizer.decode(list(item.ids[: item.start]))
        assert prompt.endswith("<|im_start|>assistant\n") and pair.prompt in prompt
    art = extract(model, chat, method=method, batch_size=3, progress=False)
    assert_matches(art, reference(model, chat, [0, 1, 2], "resid", method))


@pytest.mark.parametrize("method", ["mean", "pca"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_padded_batch_gives_the_same_direction_and_calibration_as_one_row_at_a_time(
    plain: PairSet, method: str, arch: str
) -> None:
    model = tiny_nnsight(arch)
    lengths = {len(it.ids) for it in encode_pairs(model.tokenizer, plain)}
    assert len(lengths) > 3  # rows of many lengths, so the batch is padded
    one = extract(model, plain, method=method, batch_size=1, progress=False)
    batched = extract(model, plain, method=method, batch_size=16, progress=False)
    assert one.calibration is not None and batched.calibration is not None
    np.testing.assert_allclose(batched.directions, one.directions, atol=1e-5, rtol=0)
    for key, value in one.calibration.arrays().items():
        np.testing.assert_allclose(batched.calibration.arrays()[key], value, atol=1e-5, rtol=1e-5, err_msg=key)


def test_the_first_token_is_never_counted(plain: PairSet) -> None:
    model = tiny_nnsight("llama")
    items = encode_pairs(model.tokenizer, plain)
    assert all(it.start == 1 for it in items)
    base = extract(model, plain, layers=[1], batch_size=16, progress=False)
    # Blow up the first position's residual: nothing changes when it is never counted.
    hf = model._module

    def hook(_m: Any, _i: Any, out: Any) -> Any:
        h = as_bth(out).clone()
        h[:, 0] += 1e4
        return h if isinstance(out, torch.Tensor) else (h, *out[1:])

    handle = site_module(hf, 1, "resid").register_forward_hook(hook)
    try:
        spiked = extract(model, plain, layers=[1], batch_size=16, progress=False)
    finally:
        handle.remove()
    np.testing.assert_allclose(spiked.directions, base.directions, atol=1e-6)


def test_the_forward_stops_after_the_deepest_layer_needed(plain: PairSet) -> None:
    model = tiny_nnsight("llama")
    hf = model._module
    calls = {"layer2": 0, "norm": 0, "head": 0}

    def counter(name: str) -> Any:
        return lambda *_: calls.__setitem__(name, calls[name] + 1)

    handles = [
        hf.model.layers[2].input_layernorm.register_forward_hook(counter("layer2")),
        hf.model.norm.register_forward_hook(counter("norm")),
        hf.lm_head.register_forward_hook(counter("head")),
    ]
    try:
        extract(model, plain, layers=[0, 1], batch_size=4, progress=False)
        assert calls == {"layer2": 0, "norm": 0, "head": 0}
        extract(model, plain, layers=[2], batch_size=4, progress=False)
        assert calls["layer2"] > 0 and calls["norm"] == 0 and calls["head"] == 0
    finally:
        for handle in handles:
            handle.remove()


def test_auroc_uses_the_rank_formula_with_ties_counted_as_half() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        pos = rng.integers(0, 5, size=rng.integers(1, 9)).astype(float)
        neg = rng.integers(0, 5, size=rng.integers(1, 9)).astype(float)
        brute = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg])
        assert auroc(pos, neg) == pytest.approx(brute)
    assert np.isnan(auroc(np.array([]), np.array([1.0])))


@pytest.mark.parametrize("method", ["mean", "pca"])
def test_with_a_test_split_every_sequence_is_forwarded_exactly_once(plain: PairSet, method: str) -> None:
    model = tiny_nnsight("llama")
    items = encode_pairs(model.tokenizer, plain)
    assert len({it.ids for it in items}) == len(items) == 16
    with counting_forwards(model) as seen:
        art = extract(model, plain, method=method, batch_size=3, progress=False)
    assert seen == Counter(it.ids for it in items)
    assert art.metadata["calibration_split"] == "test"


@pytest.mark.parametrize("method", ["mean", "pca"])
def test_without_a_test_split_a_second_train_pass_gives_the_percentiles(tmp_path: Path, method: str) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(PLAIN.replace("    split: test\n", ""))
    pairs = load_pairs(path)
    model = tiny_nnsight("llama")
    items = encode_pairs(model.tokenizer, pairs)
    assert not pairs.test and all(it.split == "train" for it in items)
    with counting_forwards(model) as seen:
        art = extract(model, pairs, method=method, batch_size=4, progress=False)
    assert seen == Counter({it.ids: 2 for it in items})
    assert art.metadata["calibration_split"] == "train"
    assert_matches(art, reference(model, pairs, [0, 1, 2], "resid", method))


def test_without_a_test_split_auroc_is_nan_and_layers_rank_by_separation(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(PLAIN.replace("    split: test\n", ""))
    art = extract(tiny_nnsight("llama"), load_pairs(path), progress=False)
    assert art.calibration is not None and np.isnan(art.calibration.auroc).all()
    assert sorted(recommended_layers(art)) == [0, 1, 2]


def test_recommended_layers_prefer_auroc_then_pole_distance_over_std(plain: PairSet) -> None:
    art = extract(tiny_nnsight("llama"), plain, progress=False)
    cal = art.calibration
    assert cal is not None
    best = recommended_layers(art, top=1)[0]
    row = art.layers.index(best) if art.layers else 0
    assert cal.auroc[row] == np.nanmax(cal.auroc)
    ties = [i for i in range(3) if cal.auroc[i] == cal.auroc[row]]
    assert all(cal.scale[row] / cal.std[row] >= cal.scale[i] / cal.std[i] for i in ties)


def test_bad_arguments_are_user_errors(plain: PairSet) -> None:
    model = tiny_nnsight("llama")
    with pytest.raises(UserError, match="out of range"):
        resolve_layers(model, [3])
    with pytest.raises(UserError, match="unknown method"):
        extract(model, plain, method="svd", progress=False)
    with pytest.raises(UserError, match="unknown site"):
        extract(model, plain, site="resid_post", progress=False)
    assert resolve_layers(model, [-1, 0, 2]) == [0, 2]


def test_a_plain_text_of_one_token_is_a_located_error(tmp_path: Path) -> None:
    path = tmp_path / "short.yaml"
    path.write_text(PLAIN.replace('"No."', '"a"'))
    with pytest.raises(SpecError, match="no tokens to count") as info:
        extract(tiny_nnsight("llama"), load_pairs(path), progress=False)
    assert info.value.diagnostics[0].span.line == 12
    assert info.value.diagnostics[0].span.col == 15


# ------------------------------------------------------------------------------------------- remote


def test_the_in_trace_extraction_module_imports_only_what_travels_to_a_server() -> None:
    import ast

    from constraintdsl.models import ndif as remote
    from constraintdsl.runtime import extraction

    tree = ast.parse(Path(extraction.__file__ or "").read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "extraction must not import from this package"
            assert node.module != "__future__", "a __future__ import would have to be importable on the server"
            imported.add((node.module or "").split(".")[0])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in ("__import__", "exec", "eval"), f"dynamic import or exec: {node.func.id}"
    assert imported, "no imports found: the check is looking at the wrong file"
    assert imported <= remote.ALLOWED_IMPORTS, f"not allowed on NDIF: {sorted(imported - remote.ALLOWED_IMPORTS)}"


def test_the_extraction_module_travels_by_value_once_the_runtime_is_registered() -> None:
    import cloudpickle

    from constraintdsl.models import ndif as remote
    from constraintdsl.runtime import extraction

    remote.register_runtime()
    assert cloudpickle.cloudpickle._is_registered_pickle_by_value(extraction)


def test_a_remote_build_with_no_server_listening_is_a_clear_error_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    from constraintdsl.cli.app import main
    from tests.tiny import tiny_hf, tiny_tokenizer

    folder = tmp_path / "tiny"
    tiny_hf("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    (tmp_path / "tone.yaml").write_text(PLAIN)
    with socket.socket() as probe:  # a port nothing listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("CONSTRAINTDSL_CACHE", str(tmp_path / "cache"))
    args = ["concept", "build", "--pairs", str(tmp_path / "tone.yaml"), "--model", str(folder), "--no-progress"]
    assert main([*args, "--host", f"http://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert f"could not connect to NDIF at http://127.0.0.1:{port}: connection refused" in err
    assert "is the server running?" in err and "Traceback" not in err
    assert not (tmp_path / "cache" / "concepts").exists() or not any((tmp_path / "cache" / "concepts").iterdir())
    assert main([*args, "--host", "127.0.0.1:1"]) == 2  # not a URL: named by its flag
    assert "--host" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ real SmolLM2

SHIPPED = {"helpfulness": 0.90, "refusal": 0.90, "sentiment": 0.95, "formality": 0.90}


@pytest.fixture(scope="module")
def smollm2() -> Iterator[Any]:
    from constraintdsl.models.loading import load_model

    yield load_model("smollm2")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_concept_separates_held_out_pairs_on_smollm2(smollm2: Any, name: str) -> None:
    pairs = load_pairs(DATA / f"{name}.yaml")
    assert len(pairs.pairs) >= 48 and pairs.test
    art = extract(smollm2, pairs, batch_size=16, progress=False)
    assert art.calibration is not None
    best = recommended_layers(art, top=1)[0]
    row = art.row(best)
    score = float(art.calibration.auroc[row])
    assert score >= SHIPPED[name], f"{name}: best layer {best} AUROC {score:.3f} < {SHIPPED[name]}"
    assert (art.calibration.scale > 0).all()


# ------------------------------------------------------------------------------------------- read


def with_read(tmp_path: Path, text: str, read: str, name: str) -> PairSet:
    path = tmp_path / f"{name}-{read}.yaml"
    path.write_text(text.replace("pairs:\n", f"read: {read}\npairs:\n", 1))
    return load_pairs(path)


def nnsight_token(model: Any, ids: list[int], index: int, layers: list[int]) -> dict[int, np.ndarray]:
    """The residual stream at ``index`` of one unpadded sequence, read with nnsight."""
    saved = None
    with torch.no_grad(), model.trace(torch.tensor([ids])):
        saved = nnsight.save([])
        for layer in layers:
            saved.append(model.model.layers[layer].output[0, index])
    assert saved is not None
    return {layer: s.detach().double().numpy() for layer, s in zip(layers, saved, strict=True)}


@pytest.mark.parametrize("read", ["first", "last"])
@pytest.mark.parametrize("kind", ["chat", "plain"])
def test_read_first_or_last_extracts_exactly_that_completion_token(tmp_path: Path, read: str, kind: str) -> None:
    model = tiny_nnsight("llama")
    tok = model.tokenizer
    pairs = with_read(tmp_path, CHAT if kind == "chat" else PLAIN, read, kind)
    assert pairs.read == read
    art = extract(model, pairs, method="mean", batch_size=3, progress=False)
    assert art.metadata["read"] == read and f"read: {read}" in art.metadata["token_selection"]
    layers = [0, 1, 2]
    pos: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    neg: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    for pair in pairs.train:
        for pole, text in ((pos, pair.positive), (neg, pair.negative)):
            if kind == "chat":
                chat = [{"role": "user", "content": pair.prompt}]
                prefix = tok(tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))["input_ids"]
                body = tok(text, add_special_tokens=False)["input_ids"]
                ids, first = prefix + body, len(prefix)
                expected = body[0] if read == "first" else body[-1]
            else:
                ids, first = tok(text)["input_ids"], 1  # the first token (the sink) is never read
                expected = ids[1] if read == "first" else ids[-1]
            index = first if read == "first" else len(ids) - 1
            assert ids[index] == expected
            for layer, h in nnsight_token(model, ids, index, layers).items():
                pole[layer].append(h)
    for row, layer in enumerate(layers):
        mp, mn = np.mean(pos[layer], axis=0), np.mean(neg[layer], axis=0)
        u = (mp - mn) / np.linalg.norm(mp - mn)
        np.testing.assert_allclose(art.directions[row], u, atol=1e-5)
        assert art.calibration is not None
        assert art.calibration.pos_mean[row] == pytest.approx(float(mp @ u), abs=1e-4, rel=1e-5)
        assert art.calibration.neg_mean[row] == pytest.approx(float(mn @ u), abs=1e-4, rel=1e-5)


def test_read_last_counts_one_token_per_completion_and_never_the_sink(tmp_path: Path) -> None:
    model = tiny_nnsight("llama")
    for read in ("first", "last"):
        items = encode_pairs(model.tokenizer, with_read(tmp_path, PLAIN, read, "plain"))
        assert all(it.counted == 1 and it.start >= 1 for it in items)
    items = encode_pairs(model.tokenizer, with_read(tmp_path, PLAIN, "all", "plain"))
    assert all(it.start == 1 and it.stop == len(it.ids) for it in items)
    art = extract(model, with_read(tmp_path, PLAIN, "last", "plain"), progress=False)
    tokens = json.loads(art.metadata["train_tokens"])
    assert tokens == {"positive": 5, "negative": 5}  # one token per train completion
