"""The A/B pass on a tiny model: per-item p(match) under mean and sum scoring, in the text and the letter form,
equals a direct computation one sequence at a time; passes of any size agree; the paired statistics and the
saturation warning follow from the per-item values."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from constraintdsl import parse
from constraintdsl.compare.ab import ABItem, ABSet, load_ab
from constraintdsl.compare.ab_pass import ab_rows, plan_passes, run_ab, saturation_warning
from constraintdsl.compare.comparison import Inputs, build_arms, compare, corpus_windows
from constraintdsl.runtime import interventions as runtime
from tests.test_compiler import HEAD, artifact
from tests.tiny import tiny_nnsight

GIVEN = {"a": artifact(seed=1), "b": artifact(seed=2)}
TEXT = ["The cat sat on the mat and looked out of the window at the rain."]
ITEMS = (
    ABItem("How was the film?", "It was wonderful and kind.", "That is a terrible idea, I will not do it.", "a"),
    ABItem("Can you help?", "Sorry, I can't help with that.", "I am so happy to help!", "b"),
    ABItem("What is the capital of France?", "Paris.", "The capital of France is Rome, I think.", "a"),
)


def ab_set(fmt: str = "text", items: tuple[ABItem, ...] = ITEMS) -> ABSet:
    return ABSet(behavior="a", items=items, path="set.yaml", sha256="0" * 64, format=fmt)


@pytest.fixture(scope="module")
def model() -> Any:
    torch.manual_seed(0)
    return tiny_nnsight("llama")


def inputs(model: Any, ab: ABSet, score: str = "mean") -> Inputs:
    windows, total = corpus_windows(model.tokenizer, TEXT, window=8)
    return Inputs(("hello",), windows, total, ab=ab, max_new_tokens=2, ab_score=score)


def direct_p(model: Any, plan: Any, ab: ABSet, score: str) -> list[float]:
    """p(match) per item, each reply run alone (no padding, no batching) with nnsight and the runtime, its
    log-probabilities read from the full logits in float64."""
    tok = model.tokenizer
    out = []
    for item in ab.items:
        text = tok.apply_chat_template(
            [{"role": "user", "content": item.user_text(ab.format)}], tokenize=False, add_generation_prompt=True
        )
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        replies = [tok(r, add_special_tokens=False)["input_ids"] for r in item.replies(ab.format)]
        skip = 0
        if ab.format == "letters":  # the letter only: past the replies' common prefix
            while replies[0][skip] == replies[1][skip]:
                skip += 1
        values = []
        for reply in replies:
            ids = torch.tensor([prompt + reply])
            state = runtime.new_state(plan.payload if plan else {}, telemetry=False)
            state["given_prompt_len"] = torch.tensor([len(prompt)])
            with torch.no_grad(), model.trace({"input_ids": ids, "attention_mask": torch.ones_like(ids)}):
                if plan is not None:
                    runtime.intervene(model, plan.payload, state)
                logits = model.output.logits.save()
            lp = torch.log_softmax(logits[0].to(torch.float64), -1)
            token_lp = [float(lp[t - 1, ids[0, t]]) for t in range(len(prompt) + skip, ids.shape[1])]
            values.append(sum(token_lp) / (len(token_lp) if score == "mean" else 1))
        a, b = values
        m = a if item.match == "a" else b
        out.append(math.exp(m - float(np.logaddexp(a, b))))
    return out


@pytest.mark.parametrize("fmt", ["text", "letters"])
@pytest.mark.parametrize("score", ["mean", "sum"])
def test_per_item_ab_values_equal_a_direct_computation(model: Any, fmt: str, score: str) -> None:
    spec = parse(HEAD + "steer a by 4 at layers 0-2\nclamp b >= 0.5 at layer 1\n", "t.cdsl")
    ab = ab_set(fmt)
    result = compare(model, [spec], inputs(model, ab, score), concepts=GIVEN, marginal=False)
    arms, _ = build_arms(model, [spec], marginal=False, concepts=GIVEN)
    base, row = result.rows
    assert base.ab is not None and row.ab is not None
    expected_base = direct_p(model, None, ab, score)
    expected_row = direct_p(model, arms[1].plan, ab, score)
    np.testing.assert_allclose(base.ab["p_items"], expected_base, atol=1e-5)
    np.testing.assert_allclose(row.ab["p_items"], expected_row, atol=1e-5)
    assert max(abs(x - y) for x, y in zip(expected_row, expected_base, strict=True)) > 1e-4  # the spec acts
    assert row.ab["score"] == score and row.ab["format"] == fmt
    assert row.ab["p_match"] == pytest.approx(float(np.mean(expected_row)), abs=1e-5)


def test_mean_and_sum_scoring_differ_when_answers_differ_in_length(model: Any) -> None:
    ab = ab_set()
    mean = compare(model, [], inputs(model, ab, "mean"), marginal=False).rows[0].ab
    total = compare(model, [], inputs(model, ab, "mean"), marginal=False, ab_score="sum").rows[0].ab
    assert mean is not None and total is not None and total["score"] == "sum"
    assert mean["p_items"] != pytest.approx(total["p_items"], abs=1e-3)


def test_the_letter_form_shows_the_choices_and_scores_only_the_letter(model: Any) -> None:
    ab = ab_set("letters")
    assert ITEMS[0].user_text("letters") == (
        "How was the film?\n\n(A) It was wonderful and kind.\n(B) That is a terrible idea, I will not do it."
    )
    rows = ab_rows(model.tokenizer, ab)
    tok = model.tokenizer
    for r, seq in enumerate(rows.seqs):
        scored = tok.decode(list(seq[len(seq) - rows.scored[r] :]))
        assert scored == ("A" if r % 2 == 0 else "B")
        assert tok.decode(list(seq[rows.prompt[r] :])) == ("(A" if r % 2 == 0 else "(B")


def test_passes_of_any_size_give_the_same_values(model: Any) -> None:
    ab = ab_set()
    payloads = [None]
    one, counts, passes, _ = run_ab(model, payloads, ab)
    assert passes == 1
    rows = ab_rows(model.tokenizer, ab)
    assert len(plan_passes(rows, 1, 320, logit_budget=1)) == len(ab.items)  # one item per pass at least
    small, counts2, passes2, _ = run_ab(model, payloads, ab, logit_budget=1)
    assert passes2 == len(ab.items)
    torch.testing.assert_close(small[0], one[0], atol=1e-6, rtol=0)
    assert torch.equal(counts, counts2)
    tokens, _, passes3, _ = run_ab(model, payloads, ab, token_budget=1)
    assert passes3 == len(ab.items)
    torch.testing.assert_close(tokens[0], one[0], atol=1e-6, rtol=0)


def test_a_pass_fills_its_logit_budget_with_whole_items(model: Any) -> None:
    rows = ab_rows(model.tokenizer, ab_set())
    keep = [max(rows.scored[2 * i], rows.scored[2 * i + 1]) + 1 for i in range(len(rows) // 2)]
    budget = 3 * 4 * max(keep[:2]) * 320  # 3 arms, 2 items = 4 rows
    passes = plan_passes(rows, 3, 320, logit_budget=budget, token_budget=10**9)
    assert passes[0] == [0, 1] and [i for p in passes for i in p] == [0, 1, 2]


def test_the_shift_statistics_are_paired_over_items(model: Any) -> None:
    spec = parse(HEAD + "steer a by 3 at layers 0-2\n", "t.cdsl")
    result = compare(model, [spec], inputs(model, ab_set()), concepts=GIVEN, marginal=False)
    base, row = result.rows
    assert base.ab is not None and row.ab is not None
    d = np.asarray(row.ab["p_items"]) - np.asarray(base.ab["p_items"])
    n = len(d)
    from scipy import stats

    se = d.std(ddof=1) / math.sqrt(n)
    half = stats.t.ppf(0.975, n - 1) * se
    assert row.ab["shift"] == pytest.approx(d.mean(), abs=1e-12)
    assert row.ab["se"] == pytest.approx(se, rel=1e-9)
    assert row.ab["ci95"] == pytest.approx([d.mean() - half, d.mean() + half], rel=1e-9)
    assert row.ab["up"] == int((d > 0).sum()) and row.ab["down"] == int((d < 0).sum())
    assert row.ab["up"] + row.ab["down"] == n
    assert base.ab["shift"] == 0.0 and base.ab["se"] == 0.0 and base.ab["up"] == base.ab["down"] == 0


LONG = "I am so happy to help you with that question, thank you very much, this was wonderful and kind."


def test_a_mostly_saturated_baseline_is_a_warning_at_the_ab_file(model: Any) -> None:
    items = tuple(ABItem(f"Question {i}?", "Yes.", LONG, "a" if i % 2 else "b") for i in range(4))
    ab = ab_set(items=items)
    summed = compare(model, [], inputs(model, ab), marginal=False, ab_score="sum")
    assert summed.rows[0].ab is not None and summed.rows[0].ab["saturated"] == 4
    (warning,) = summed.warnings
    assert warning.severity == "warning" and str(warning.span) == "set.yaml:1:1"
    assert "4 of 4 A/B items are saturated" in warning.message and "--ab-score mean" in (warning.hint or "")
    assert summed.to_dict()["diagnostics"][0]["severity"] == "warning"
    mean = compare(model, [], inputs(model, ab), marginal=False)
    assert mean.rows[0].ab is not None and mean.rows[0].ab["saturated"] < 3 and mean.warnings == ()


def test_no_warning_comes_from_a_result_recorded_without_per_item_values() -> None:
    old = {"behavior": "a", "p_match": 0.99, "baseline": 0.99, "shift": 0.0, "items": 36}
    assert saturation_warning(old, "set.yaml") is None
    assert saturation_warning({**old, "saturated": 18}, "set.yaml") is None  # half is not most
    assert saturation_warning({**old, "saturated": 19}, "set.yaml") is not None


def test_an_unknown_scoring_is_refused_before_anything_runs(model: Any) -> None:
    from constraintdsl.errors import UserError

    with pytest.raises(UserError, match="unknown A/B scoring 'median'"):
        compare(model, [], inputs(model, ab_set()), ab_score="median")


def test_the_shipped_letter_form_set_loads_with_its_choices(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    ab = load_ab(root / "specs" / "data" / "ab" / "refusal-letters.yaml")
    assert ab.format == "letters" and len(ab.items) == 50
    assert ab.count("a") == ab.count("b") == 25


def test_the_output_embedding_runs_only_on_the_answer_positions_of_each_pass(model: Any) -> None:
    ab = ab_set()
    rows = ab_rows(model.tokenizer, ab)
    shapes: list[tuple[int, ...]] = []
    handle = model._module.lm_head.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    try:
        run_ab(model, [None, None, None], ab, logit_budget=3 * 4 * 30 * 320)
    finally:
        handle.remove()
    passes = plan_passes(rows, 3, 320, logit_budget=3 * 4 * 30 * 320)
    assert len(shapes) == len(passes) > 1
    for shape, items in zip(shapes, passes, strict=True):
        keep = max(rows.scored[r] for i in items for r in (2 * i, 2 * i + 1)) + 1
        width = max(len(rows.seqs[r]) for i in items for r in (2 * i, 2 * i + 1))
        assert shape == (3 * 2 * len(items), keep, 320) and keep < width


def test_answers_outside_the_kept_positions_are_refused(model: Any) -> None:
    from constraintdsl.compare.passes import score_answers

    ids = torch.randint(5, 100, (2, 8))
    mask = torch.ones_like(ids)
    answer = torch.zeros_like(ids, dtype=torch.bool)
    answer[:, 4:] = True
    plen = torch.tensor([4, 4])
    with pytest.raises(ValueError, match="raise keep"):
        score_answers(model, [None], ids, mask, answer, plen, keep=4)
    with pytest.raises(ValueError, match="keep must be between 2"):
        score_answers(model, [None], ids, mask, answer, plen, keep=9)
    (kept,), _ = score_answers(model, [None], ids, mask, answer, plen, keep=5)
    (full,), _ = score_answers(model, [None], ids, mask, answer, plen)
    torch.testing.assert_close(kept.logprob, full.logprob, atol=1e-6, rtol=0)
