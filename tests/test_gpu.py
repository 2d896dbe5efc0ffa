"""On a CUDA device (skipped without one): the runner, the runtime and ``compare`` give the CPU's results
for a model whose weights live on the GPU, with inputs given on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from constraintdsl.compare.comparison import Inputs, compare, corpus_windows
from constraintdsl.run import runner
from tests.readback import projections_after
from tests.test_compare import TEXT, spec, write_concepts
from tests.test_compiler import compile_
from tests.tiny import tiny_nnsight

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
PROMPTS = ["hello there", "a longer prompt about the weather today"]
BODY = "clamp a >= 0.5 at layers 1-2\nablate b at layer 1 on generated\nsteer a by 1.5 at layer 0 on prompt\n"


@pytest.fixture(scope="module")
def model() -> Any:
    torch.manual_seed(0)
    return tiny_nnsight("llama")


@pytest.fixture(scope="module")
def concept_dir(model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_concepts(model, tmp_path_factory.mktemp("concepts"))


@pytest.fixture(scope="module")
def gpu_model() -> Any:
    torch.manual_seed(0)
    m = tiny_nnsight("llama")
    m._module.to("cuda")
    return m


def test_generation_on_the_gpu_equals_the_cpu_run(model: Any, gpu_model: Any) -> None:
    cpu = runner.generate_variants(model, [None, compile_(model, BODY).payload], PROMPTS, max_new_tokens=6)
    gpu = runner.generate_variants(gpu_model, [None, compile_(gpu_model, BODY).payload], PROMPTS, max_new_tokens=6)
    for c, g in zip(cpu, gpu, strict=True):
        assert torch.equal(c.ids, g.ids) and g.ids.device.type == "cpu"
    assert gpu[1].telemetry is not None and cpu[1].telemetry is not None
    torch.testing.assert_close(gpu[1].telemetry, cpu[1].telemetry, rtol=1e-4, atol=1e-4)


def test_a_clamp_holds_on_every_selected_token_on_the_gpu(gpu_model: Any) -> None:
    plan = compile_(gpu_model, "clamp a >= 0.5 at layer 1\n")
    (site,) = plan.payload["sites"]
    floor, u = site["bounds"][0]["lo"], site["dirs"][0]
    after, real = projections_after(gpu_model, plan.payload, PROMPTS, [1], {1: u})
    before, _ = projections_after(gpu_model, None, PROMPTS, [1], {1: u})
    assert bool((before[1][real] < floor).any())  # the clamp had work to do
    assert bool((after[1][real] >= floor - 1e-4).all())  # and every selected token holds it


def test_compare_on_the_gpu_equals_the_cpu_comparison(model: Any, gpu_model: Any, concept_dir: Path) -> None:
    s = spec(concept_dir, "clamp a >= 0.5 at layers 1-2\nsteer b by 1 at layer 1 on generated")
    windows, total = corpus_windows(model.tokenizer, TEXT, window=12)
    inputs = Inputs(tuple(PROMPTS), windows, total, max_new_tokens=4, prompt_tokens=3)
    cpu = compare(model, [s], inputs)
    gpu = compare(gpu_model, [s], inputs)
    for c, g in zip(cpu.rows, gpu.rows, strict=True):
        assert g.generations == c.generations
        for key in ("delta_nll", "kl", "entropy"):
            assert g.tax[key] == pytest.approx(c.tax[key], abs=1e-4)
        assert g.dof["participation_ratio"] == pytest.approx(c.dof["participation_ratio"], rel=1e-4)
        for name, e in c.effect.items():
            assert g.effect[name]["value"] == pytest.approx(e["value"], abs=1e-4)
