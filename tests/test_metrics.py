"""Comparison metrics: the torch sums collected in a trace (scoring) and their reductions (metrics) equal a
direct float64 computation, add up across batches, and the scoring module can travel to a server by value."""

from __future__ import annotations

import ast
import io
import math
import pickle
import sys
from pathlib import Path
from typing import Any

import cloudpickle  # type: ignore[import-untyped]
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import constraintdsl.runtime.scoring as scoring_module
from constraintdsl.compare.metrics import ab_probability, paired_shift, participation_ratio, t_quantile, tax
from constraintdsl.runtime.scoring import answer_logprob, corpus_sums, hidden_sums

FEW = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Batch:
    """Random logits (two runs), token ids and a mask: some rows left-padded, some with holes."""

    def __init__(self, seed: int, b: int, t: int, v: int, scale: float, dtype: torch.dtype) -> None:
        g = torch.Generator().manual_seed(seed)
        self.logits = (torch.randn(b, t, v, generator=g) * scale).to(dtype)
        self.other = (torch.randn(b, t, v, generator=g) * scale).to(dtype)
        self.ids = torch.randint(0, v, (b, t), generator=g)
        self.mask = (torch.rand(b, t, generator=g) < 0.8).long()
        pad = torch.randint(0, t + 1, (b,), generator=g)
        left_padding = (torch.arange(t).unsqueeze(0) < pad.unsqueeze(1)) & (torch.arange(b) % 2 == 0).unsqueeze(1)
        self.mask[left_padding] = 0


batches = st.builds(
    Batch,
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 4),
    t=st.integers(1, 9),
    v=st.integers(2, 50),
    scale=st.sampled_from([0.1, 1.0, 4.0, 20.0]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
)


def _log_softmax64(logits: torch.Tensor) -> np.ndarray:
    x = logits.to(torch.float64).numpy()
    top = x.max(axis=-1, keepdims=True)
    out: np.ndarray = x - top - np.log(np.exp(x - top).sum(axis=-1, keepdims=True))
    return out


def with_logits(batch: Batch, logits: torch.Tensor) -> Batch:
    """The same ids and mask with other logits."""
    other = Batch.__new__(Batch)
    other.logits, other.other, other.ids, other.mask = logits, batch.logits, batch.ids, batch.mask
    return other


def reference_sums(batch: Batch, base: torch.Tensor | None) -> np.ndarray:
    """count, NLL, entropy and KL(base ‖ this) summed position by position in float64."""
    lp = _log_softmax64(batch.logits)
    blp = _log_softmax64(base) if base is not None else None
    mask = batch.mask.numpy()
    ids = batch.ids.numpy()
    out = np.zeros(4)
    b, t = mask.shape
    for i in range(b):
        for j in range(t - 1):
            if mask[i, j] and mask[i, j + 1]:
                row = lp[i, j]
                out[0] += 1
                out[1] -= row[ids[i, j + 1]]
                out[2] -= np.sum(np.exp(row) * row)
                if blp is not None:
                    out[3] += np.sum(np.exp(blp[i, j]) * (blp[i, j] - row))
    return out


@FEW
@given(batches)
def test_corpus_sums_equal_a_position_by_position_float64_computation(batch: Batch) -> None:
    base_sums, base_logp = corpus_sums(batch.other, batch.ids, batch.mask)
    sums, logp = corpus_sums(batch.logits, batch.ids, batch.mask, base_logp)
    assert sums.dtype == torch.float64 and logp.dtype == torch.float32
    assert logp.shape == (int(sums[0]), batch.logits.shape[-1])
    np.testing.assert_allclose(sums.numpy(), reference_sums(batch, batch.other), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        base_sums.numpy(), reference_sums(with_logits(batch, batch.other), None), rtol=1e-5, atol=1e-5
    )
    assert float(base_sums[3]) == 0.0


@FEW
@given(batches)
def test_the_kl_of_a_run_against_itself_is_exactly_zero(batch: Batch) -> None:
    _, logp = corpus_sums(batch.logits, batch.ids, batch.mask)
    sums, _ = corpus_sums(batch.logits, batch.ids, batch.mask, logp)
    assert float(sums[3]) == 0.0


@FEW
@given(batches)
def test_a_full_baseline_log_softmax_gives_the_same_kl_as_the_compact_one(batch: Batch) -> None:
    _, compact = corpus_sums(batch.other, batch.ids, batch.mask)
    full = torch.log_softmax(batch.other.float(), dim=-1)
    with_compact, _ = corpus_sums(batch.logits, batch.ids, batch.mask, compact)
    with_full, _ = corpus_sums(batch.logits, batch.ids, batch.mask, full)
    np.testing.assert_allclose(with_full.numpy(), with_compact.numpy(), rtol=1e-6, atol=1e-6)


def test_a_masked_vocabulary_entry_keeps_entropy_and_kl_finite() -> None:
    logits = torch.randn(2, 5, 7)
    logits[..., 3] = -math.inf
    other = torch.randn(2, 5, 7)
    other[..., 3] = -math.inf
    ids = torch.randint(0, 3, (2, 5))
    mask = torch.ones(2, 5)
    _, base = corpus_sums(other, ids, mask)
    sums, _ = corpus_sums(logits, ids, mask, base)
    assert torch.isfinite(sums).all()
    assert float(sums[3]) > 0


def test_a_baseline_from_other_inputs_is_refused() -> None:
    _, base = corpus_sums(torch.randn(1, 4, 5), torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4))
    with pytest.raises(ValueError, match="predictions"):
        corpus_sums(torch.randn(1, 6, 5), torch.zeros(1, 6, dtype=torch.long), torch.ones(1, 6), base)


@FEW
@given(batches, st.integers(1, 3))
def test_sums_over_two_halves_of_a_batch_add_up_to_the_sums_over_the_whole(batch: Batch, cut: int) -> None:
    cut = min(cut, batch.ids.shape[0])
    parts = [slice(0, cut), slice(cut, None)]
    _, whole_base = corpus_sums(batch.other, batch.ids, batch.mask)
    whole, _ = corpus_sums(batch.logits, batch.ids, batch.mask, whole_base)
    halves = torch.zeros(4, dtype=torch.float64)
    for part in parts:
        _, base = corpus_sums(batch.other[part], batch.ids[part], batch.mask[part])
        halves += corpus_sums(batch.logits[part], batch.ids[part], batch.mask[part], base)[0]
    np.testing.assert_allclose(halves.numpy(), whole.numpy(), rtol=1e-6, atol=1e-9)

    h = batch.logits.float()  # any [B, T, H] activations
    n, s, ss = hidden_sums(h, batch.mask)
    split = [hidden_sums(h[part], batch.mask[part]) for part in parts]
    assert float(n) == sum(float(p[0]) for p in split)
    np.testing.assert_allclose(sum(p[1] for p in split).numpy(), s.numpy(), rtol=1e-12, atol=1e-9)  # type: ignore[union-attr]
    np.testing.assert_allclose(sum(p[2] for p in split).numpy(), ss.numpy(), rtol=1e-12, atol=1e-9)  # type: ignore[union-attr]


@FEW
@given(batches)
def test_hidden_sums_equal_moments_of_the_real_tokens(batch: Batch) -> None:
    h = batch.logits
    n, s, ss = hidden_sums(h, batch.mask)
    x = h.to(torch.float64).numpy()[batch.mask.numpy() != 0]
    assert float(n) == x.shape[0]
    np.testing.assert_allclose(s.numpy(), x.sum(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ss.numpy(), x.T @ x, rtol=1e-12, atol=1e-12)


def test_the_participation_ratio_of_isotropic_data_is_close_to_the_dimension() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40_000, 8, generator=g) + 5.0
    pr = participation_ratio(*hidden_sums(x.unsqueeze(0), torch.ones(1, 40_000)))
    assert pr == pytest.approx(8.0, rel=0.01)


@pytest.mark.parametrize("offset", [0.0, 3.0, 1000.0])
def test_the_participation_ratio_of_data_along_one_direction_is_one(offset: float) -> None:
    g = torch.Generator().manual_seed(1)
    direction = torch.randn(16, generator=g, dtype=torch.float64)
    x = torch.randn(500, 1, generator=g, dtype=torch.float64) * direction + offset
    pr = participation_ratio(*hidden_sums(x.unsqueeze(0), torch.ones(1, 500)))
    assert pr == pytest.approx(1.0, abs=1e-5)


@FEW
@given(st.integers(0, 2**31 - 1), st.integers(2, 24), st.integers(2, 12))
def test_the_participation_ratio_equals_the_eigenvalue_formula(seed: int, n: int, dim: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g) @ torch.randn(dim, dim, generator=g) + torch.randn(dim, generator=g)
    lam = np.linalg.eigvalsh(np.cov(x.to(torch.float64).numpy(), rowvar=False, bias=True))
    pr = participation_ratio(*hidden_sums(x.unsqueeze(0), torch.ones(1, n)))
    assert pr == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-5)


def test_the_participation_ratio_of_nothing_or_of_one_point_is_an_error() -> None:
    with pytest.raises(ValueError, match="no vectors"):
        participation_ratio(*hidden_sums(torch.randn(1, 3, 4), torch.zeros(1, 3)))
    with pytest.raises(ValueError, match="no variance"):
        participation_ratio(*hidden_sums(torch.randn(1, 3, 4), torch.tensor([[0, 1, 0]])))


@FEW
@given(batches)
def test_tax_equals_the_direct_per_token_computation(batch: Batch) -> None:
    base_ref = reference_sums(with_logits(batch, batch.other), None)
    ref = reference_sums(batch, batch.other)
    base_sums, base_logp = corpus_sums(batch.other, batch.ids, batch.mask)
    sums, _ = corpus_sums(batch.logits, batch.ids, batch.mask, base_logp)
    if ref[0] == 0:
        with pytest.raises(ValueError, match="no predicted tokens"):
            tax(base_sums, sums)
        return
    got = tax(base_sums, sums)
    n = ref[0]
    expected = {
        "delta_nll": ref[1] / n - base_ref[1] / n,
        "kl": ref[3] / n,
        "ppl_ratio": math.exp(ref[1] / n) / math.exp(base_ref[1] / n),
        "entropy": ref[2] / n,
        "base_entropy": base_ref[2] / n,
        "nll": ref[1] / n,
        "tokens": n,
    }
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-5), key


def test_tax_of_an_empty_corpus_or_of_different_corpora_is_a_clear_error() -> None:
    empty = torch.zeros(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="no predicted tokens"):
        tax(empty, empty)
    with pytest.raises(ValueError, match="not the same corpus"):
        tax(torch.tensor([3.0, 1.0, 1.0, 0.0]), torch.tensor([4.0, 1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="4 entries"):
        tax(torch.ones(3), torch.ones(3))


def test_the_ab_probability_is_the_matching_answers_share_of_the_two() -> None:
    lp_a = torch.tensor([-1.0, -2.0, -0.5, -7.0])
    lp_b = torch.tensor([-2.0, -1.0, -3.0, -7.0])
    match = torch.tensor([True, True, False, False])
    got = ab_probability(lp_a, lp_b, match)
    pa, pb = np.exp(lp_a.double().numpy()), np.exp(lp_b.double().numpy())
    expected = np.where(match.numpy(), pa, pb) / (pa + pb)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    assert got.dtype == torch.float64


def test_the_ab_probability_stays_finite_for_very_unlikely_answers() -> None:
    got = ab_probability([-1000.0, -5000.0], [-1001.0, -4000.0], [True, True])
    np.testing.assert_allclose(got.numpy(), [1 / (1 + math.exp(-1)), 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        ab_probability([-1.0], [-1.0, -2.0], [True])


@FEW
@given(batches)
def test_answer_logprob_sums_the_answer_tokens_predicted_from_the_position_before(batch: Batch) -> None:
    answer = batch.mask.clone()
    answer[:, 0] = 0
    got = answer_logprob(batch.logits, batch.ids, answer)
    lp = _log_softmax64(batch.logits)
    ids = batch.ids.numpy()
    expected = [
        sum(lp[i, j - 1, ids[i, j]] for j in range(1, ids.shape[1]) if answer[i, j]) for i in range(ids.shape[0])
    ]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_answer_logprob_in_chunks_equals_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 9, 11, generator=g)
    ids = torch.randint(0, 11, (4, 9), generator=g)
    answer = torch.rand(4, 9, generator=g) < 0.7
    answer[:, 0] = False
    whole = answer_logprob(logits, ids, answer)
    monkeypatch.setattr(scoring_module, "CHUNK_ROWS", 2)
    torch.testing.assert_close(answer_logprob(logits, ids, answer), whole, atol=1e-12, rtol=0)


@settings(max_examples=60, deadline=None)
@given(st.floats(0.5005, 0.9995), st.floats(0.5, 5000.0))
def test_the_t_quantile_equals_scipys(q: float, df: float) -> None:
    from scipy import stats

    assert t_quantile(q, df) == pytest.approx(stats.t.ppf(q, df), rel=1e-8, abs=1e-9)
    assert t_quantile(1 - q, df) == pytest.approx(-t_quantile(q, df), abs=1e-12)


def test_a_t_quantile_outside_its_domain_is_refused() -> None:
    for q, df in ((0.0, 3.0), (1.0, 3.0), (0.5, 0.0)):
        with pytest.raises(ValueError, match="t_quantile needs"):
            t_quantile(q, df)


@FEW
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=2, max_size=60))
def test_paired_statistics_equal_their_textbook_formulas(pairs: list[tuple[float, float]]) -> None:
    from scipy import stats

    values, base = (np.array(x) for x in zip(*pairs, strict=True))
    got = paired_shift(values, base)
    d = values - base
    n = len(d)
    se = d.std(ddof=1) / math.sqrt(n)
    assert got["shift"] == pytest.approx(d.mean(), abs=1e-12)
    assert got["se"] == pytest.approx(se, abs=1e-12)
    half = stats.t.ppf(0.975, n - 1) * se
    assert got["ci95"] == pytest.approx([d.mean() - half, d.mean() + half], abs=1e-9)
    assert (got["up"], got["down"], got["n"]) == (int((d > 0).sum()), int((d < 0).sum()), n)


def test_paired_statistics_of_one_item_have_no_spread_and_of_none_are_an_error() -> None:
    one = paired_shift([0.7], [0.5])
    assert one["shift"] == pytest.approx(0.2) and math.isnan(one["se"]) and all(map(math.isnan, one["ci95"]))
    with pytest.raises(ValueError, match="no items"):
        paired_shift([], [])
    with pytest.raises(ValueError, match="equal-length"):
        paired_shift([0.1, 0.2], [0.1])


def test_an_answer_at_the_first_position_is_refused() -> None:
    with pytest.raises(ValueError, match="position 0"):
        answer_logprob(torch.randn(1, 3, 5), torch.zeros(1, 3, dtype=torch.long), torch.tensor([[1, 1, 0]]))


ALLOWED = {"torch", "math", "typing", "collections"}


def _top(name: str) -> str:
    return name.split(".")[0]


def test_the_scoring_module_imports_only_what_travels_to_a_server() -> None:
    source = Path(scoring_module.__file__ or "").read_text()
    tree = ast.parse(source)
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(_top(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "scoring must not import from this package"
            assert node.module != "__future__", "a __future__ import would have to be importable on the server"
            imported.add(_top(node.module or ""))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in ("__import__", "exec", "eval"), f"dynamic import or exec: {node.func.id}"
    assert imported, "no imports found: the check is looking at the wrong file"
    assert imported <= ALLOWED, f"not allowed: {sorted(imported - ALLOWED)}"


def test_the_scoring_functions_pickled_by_value_need_no_constraintdsl() -> None:
    cloudpickle.register_pickle_by_value(scoring_module)
    try:
        blob = cloudpickle.dumps((scoring_module.corpus_sums, scoring_module.hidden_sums))
    finally:
        cloudpickle.unregister_pickle_by_value(scoring_module)
    found: set[str] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            found.add(_top(module))
            return super().find_class(module, name)

    rebuilt_sums, _ = Recorder(io.BytesIO(blob)).load()
    assert rebuilt_sums is not scoring_module.corpus_sums
    third_party = {m for m in found if m not in sys.stdlib_module_names and m != "builtins"}
    assert third_party <= ALLOWED | {"cloudpickle"}, sorted(found)
    logits, ids, mask = torch.randn(2, 4, 6), torch.randint(0, 6, (2, 4)), torch.ones(2, 4)
    assert torch.equal(rebuilt_sums(logits, ids, mask)[0], corpus_sums(logits, ids, mask)[0])
