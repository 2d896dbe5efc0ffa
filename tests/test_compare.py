"""``compare`` on a tiny model: its numbers equal direct computations, leave-one-out and batching are exact,
and the report, the JSON and the run store carry them."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import nnsight
import numpy as np
import pytest
import torch

import constraintdsl as cdsl
from constraintdsl.compare.comparison import Inputs, build_arms, compare, corpus_windows
from constraintdsl.compare.report import load_table, summary_table, write_report
from constraintdsl.concepts.artifact import PERCENTILE_LEVELS, save_artifact
from constraintdsl.models.loading import model_identity
from constraintdsl.run import runner
from tests.test_compiler import artifact
from tests.tiny import tiny_nnsight

PROMPTS = ("hello there", "a longer prompt about the weather today")
TEXT = [
    "The cat sat on the mat and looked out of the window at the rain.",
    "Thank you very much, this was wonderful and kind. The capital of France is Paris.",
    "Please find attached the report you requested. 0 1 2 3 4 5 6 7 8 9.",
]


@pytest.fixture(scope="module")
def model() -> Any:
    torch.manual_seed(0)
    return tiny_nnsight("llama")


@pytest.fixture(scope="module")
def concept_dir(model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_concepts(model, tmp_path_factory.mktemp("concepts"))


def write_concepts(model: Any, folder: Path) -> Path:
    """Two calibrated concept files ``a`` and ``b`` for ``model``, with the metadata a built artifact carries."""
    ident = model_identity(model)
    for name, seed in (("a", 1), ("b", 2)):
        art = artifact(seed=seed)
        meta = {
            "format": "1",
            "concept": name,
            "model_id": ident.id,
            "model_revision": ident.revision,
            "architecture": ident.architecture,
            "hidden_size": str(ident.hidden_size),
            "site": "resid",
            "method": "mean",
            "dataset_sha256": "0" * 64,
            "token_selection": "plain",
            "percentile_levels": json.dumps(list(PERCENTILE_LEVELS)),
            "tool_version": "0.1.0",
        }
        save_artifact(replace(art, metadata=meta), folder / f"{name}.safetensors")
    return folder


def spec(folder: Path, body: str, name: str = "s") -> cdsl.Spec:
    text = (
        f'version 1\nname "{name}"\nconcept a from file "a.safetensors"\nconcept b from file "b.safetensors"\n{body}\n'
    )
    path = folder / f"{name}.cdsl"
    path.write_text(text)
    return cdsl.load(path)


@pytest.fixture(scope="module")
def inputs(model: Any) -> Inputs:
    windows, total = corpus_windows(model.tokenizer, TEXT, window=12)
    return Inputs(prompts=PROMPTS, corpus=windows, corpus_tokens_total=total, max_new_tokens=4, prompt_tokens=3)


def direct_logits(model: Any, plan: Any, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and final hidden states of one plain run of ``plan`` (None: baseline) over ``ids``, with the
    first 3 tokens as the prompt — computed with nnsight directly, one spec at a time."""
    from constraintdsl.runtime import interventions as runtime

    state = runtime.new_state(plan.payload if plan else {}, telemetry=False)
    state["given_prompt_len"] = torch.full((ids.shape[0],), 3)
    with torch.no_grad(), model.trace({"input_ids": ids, "attention_mask": torch.ones_like(ids)}):
        if plan is not None:
            runtime.intervene(model, plan.payload, state)
        hidden = nnsight.save(model.lm_head.input)
        logits = nnsight.save(model.output.logits)
    return logits.to(torch.float64), hidden.to(torch.float64)


def test_tax_and_participation_ratio_equal_a_direct_computation(model: Any, concept_dir: Path, inputs: Inputs) -> None:
    s = spec(concept_dir, "clamp a >= 0.5 at layers 1-2\nsteer b by 1.5 at layer 1 on generated")
    result = compare(model, [s], inputs, marginal=False)
    base, row = result.rows
    arms, _ = build_arms(model, [s], marginal=False)
    lb, hb = direct_logits(model, None, inputs.corpus)
    lc, hc = direct_logits(model, arms[1].plan, inputs.corpus)
    target = inputs.corpus[:, 1:]
    lpb = torch.log_softmax(lb[:, :-1], -1)
    lpc = torch.log_softmax(lc[:, :-1], -1)
    nll_b = -lpb.gather(-1, target[..., None]).mean()
    nll_c = -lpc.gather(-1, target[..., None]).mean()
    kl = (lpb.exp() * (lpb - lpc)).sum(-1).mean()
    entropy = -(lpc.exp() * lpc).sum(-1).mean()
    assert row.tax["delta_nll"] == pytest.approx(float(nll_c - nll_b), abs=1e-5)
    assert row.tax["kl"] == pytest.approx(float(kl), abs=1e-5)
    assert row.tax["kl"] > 1e-4  # the spec does change the distribution
    assert row.tax["ppl_ratio"] == pytest.approx(math.exp(float(nll_c - nll_b)), rel=1e-5)
    assert row.tax["entropy"] == pytest.approx(float(entropy), abs=1e-5)
    assert base.tax["delta_nll"] == 0.0 and base.tax["kl"] == 0.0
    for r, h in ((base, hb), (row, hc)):
        x = h.reshape(-1, h.shape[-1]).numpy()
        eig = np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True))
        assert r.dof["participation_ratio"] == pytest.approx(eig.sum() ** 2 / (eig**2).sum(), rel=1e-5)


def test_a_statement_that_never_binds_has_zero_marginal_tax(model: Any, concept_dir: Path, inputs: Inputs) -> None:
    s = spec(concept_dir, "clamp a >= -1000 raw at layers 0-2\nsteer b by 2 at layer 1")
    (_, row) = compare(model, [s], inputs).rows
    loose, steer = row.marginal
    assert loose["statement"].startswith("clamp a >= -1000 raw")
    assert row.load[0]["binding_fraction"] == 0.0
    assert loose["delta_nll"] == 0.0 and loose["kl"] == 0.0
    # the steer carries the whole tax: leaving it out leaves only the clamp, which changes nothing
    assert steer["delta_nll"] == pytest.approx(row.tax["delta_nll"], abs=1e-12)
    assert row.tax["kl"] > 0


def test_marginal_tax_of_a_single_statement_is_its_whole_tax(model: Any, concept_dir: Path, inputs: Inputs) -> None:
    s = spec(concept_dir, "steer a by 2 at layers 0-1")
    (_, row) = compare(model, [s], inputs).rows
    assert row.marginal[0]["delta_nll"] == row.tax["delta_nll"]
    assert row.marginal[0]["kl"] == row.tax["kl"]


def test_a_batched_comparison_equals_running_each_spec_alone(model: Any, concept_dir: Path, inputs: Inputs) -> None:
    one = spec(concept_dir, "clamp a >= 0.5 at layers 1-2\nablate b at layer 1 on generated", "one")
    two = spec(concept_dir, "steer b by -1 at layer 0\nscale a by 0.5 at layers 1-2", "two")
    both = compare(model, [one, two], inputs)
    alone = [compare(model, [s], inputs).rows[1] for s in (one, two)]
    for batched, single in zip(both.rows[1:], alone, strict=True):
        assert batched.generations == single.generations
        for key in ("delta_nll", "kl", "entropy"):
            assert batched.tax[key] == pytest.approx(single.tax[key], abs=1e-5)
        assert batched.dof["participation_ratio"] == pytest.approx(single.dof["participation_ratio"], rel=1e-5)
        for m, n in zip(batched.marginal, single.marginal, strict=True):
            assert m["delta_nll"] == pytest.approx(n["delta_nll"], abs=1e-5)
        for name, e in batched.effect.items():
            assert e["shift"] == pytest.approx(single.effect[name]["shift"], abs=1e-5)
        assert [s["binding_fraction"] for s in batched.load] == [s["binding_fraction"] for s in single.load]
    assert both.passes["corpus"] == 1  # every arm, leave-one-outs included, in one forward pass


def test_generations_and_load_match_a_plain_generate_run(model: Any, concept_dir: Path, inputs: Inputs) -> None:
    s = spec(concept_dir, "clamp a >= 0.5 at layers 1-2")
    (base, row) = compare(model, [s], inputs, marginal=False).rows
    arms, _ = build_arms(model, [s], marginal=False)
    plain = runner.generate(model, arms[1].plan.payload, list(PROMPTS), max_new_tokens=4)
    assert row.generations == plain.texts
    assert base.generations == runner.generate(model, None, list(PROMPTS), max_new_tokens=4).texts
    rows = arms[1].plan.telemetry(plain.telemetry)
    binding = sum(r.binding for r in rows) / sum(r.selected for r in rows)
    assert row.load[0]["binding_fraction"] == pytest.approx(binding)


def test_effects_are_readout_shifts_from_the_baseline(model: Any, concept_dir: Path, inputs: Inputs) -> None:
    s = spec(concept_dir, "steer a by 3 at layers 0-2")
    base, row = compare(model, [s], inputs, marginal=False).rows
    assert set(row.effect) == {"a"}
    e = row.effect["a"]
    assert e["shift"] == pytest.approx(e["value"] - base.effect["a"]["value"])
    assert base.effect["a"]["shift"] == 0.0


def test_variants_expand_into_one_row_each(model: Any, concept_dir: Path, inputs: Inputs) -> None:
    s = spec(concept_dir, "let k = 0.5 | 2\nscale a by $k at layers 1-2", "sweep")
    result = compare(model, [s], inputs, marginal=False)
    assert [r.label for r in result.rows] == ["baseline", "sweep[k=0.5]", "sweep[k=2]"]
    assert result.rows[1].key != result.rows[2].key


def test_the_report_folder_has_markdown_json_and_plots(
    model: Any, concept_dir: Path, inputs: Inputs, tmp_path: Path
) -> None:
    s = spec(concept_dir, "clamp a >= 0.5 at layers 1-2\nsteer b by 1 at layer 1")
    result = compare(model, [s], inputs)
    folder = write_report(result, tmp_path / "report")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["binding.png", "comparison.json", "frontier.png", "marginal.png", "report.md"]
    for png in ("binding.png", "frontier.png", "marginal.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((folder / "comparison.json").read_text())
    assert data["rows"][1]["tax"]["kl"] == pytest.approx(result.rows[1].tax["kl"])
    text = (folder / "report.md").read_text()
    assert "![tax versus effect](frontier.png)" in text and "clamp a >= 0.5 at layers 1-2" in text
    # rewriting replaces the folder whole; no temporary folder is left beside it
    write_report(result, tmp_path / "report")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    assert "ΔNLL/tok" in summary_table(result) and "marginal ΔNLL" in load_table(result)
