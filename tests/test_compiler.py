"""resolve(spec, model) → Plan on a tiny model: units to raw per layer, layers, gates, feasibility,
grouping, and every problem reported at once with its statement's location."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from constraintdsl import SpecError, parse
from constraintdsl.compiler.plan import Plan
from constraintdsl.compiler.resolve import resolve, resolve_layers
from constraintdsl.concepts.artifact import PERCENTILE_LEVELS, Calibration, ConceptArtifact
from constraintdsl.lang.nodes import Depth, LayerRange, Layers
from tests.tiny import tiny_nnsight

H, N = 32, 3
NEG, SCALE, MEAN, STD = 1.0, 2.0, 1.5, 0.5


def artifact(
    vectors: np.ndarray | None = None,
    seed: int = 0,
    *,
    calibrated: bool = True,
    layers: tuple[int, ...] | None = (0, 1, 2),
    site: str = "resid",
    hidden: int = H,
) -> ConceptArtifact:
    rng = np.random.default_rng(seed)
    rows = len(layers) if layers is not None else 1
    d = rng.standard_normal((rows, hidden)) if vectors is None else np.tile(vectors, (rows, 1))
    d = (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
    cal = None
    if calibrated:
        ones = np.ones(rows, dtype=np.float32)
        cal = Calibration(
            pos_mean=ones * (NEG + SCALE),
            neg_mean=ones * NEG,
            scale=ones * SCALE,
            mean=ones * MEAN,
            std=ones * STD,
            percentiles=np.tile(np.asarray(PERCENTILE_LEVELS, dtype=np.float32) / 10, (rows, 1)),
            auroc=ones,
        )
    return ConceptArtifact(directions=d, layers=layers, calibration=cal, metadata={"site": site})


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_nnsight("llama")


HEAD = 'version 1\nconcept a from pairs "a.yaml"\nconcept b from pairs "b.yaml"\n'


def compile_(model: Any, body: str, **concepts: ConceptArtifact) -> Plan:
    given = {"a": artifact(seed=1), "b": artifact(seed=2), **concepts}
    return resolve(parse(HEAD + body, "t.cdsl"), model, concepts=given)


def test_values_in_every_unit_become_raw_projections_per_layer(model: Any) -> None:
    plan = compile_(
        model,
        "clamp a >= 0.3 at layer 0\nclamp a <= 12.5 raw at layer 1\npin b = 1.5 sd at layer 2\n"
        "clamp b >= p25 at layer 0\nsteer a by 2 at layer 1\nscale b by 0.5 at layer 2\n",
    )
    got = [(e.keyword, e.layer, e.lo, e.hi) for e in plan.entries]
    assert got == [
        ("clamp", 0, NEG + 0.3 * SCALE, math.inf),
        ("clamp", 1, -math.inf, 12.5),
        ("pin", 2, MEAN + 1.5 * STD, MEAN + 1.5 * STD),
        ("clamp", 0, pytest.approx(2.5), math.inf),  # p25 of the artifact's percentiles (level / 10)
        ("steer", 1, 2 * SCALE, 2 * SCALE),  # a displacement: α times the pole distance
        ("scale", 2, 0.5, 0.5),
    ]


def test_layer_selections_resolve_ranges_lists_negatives_and_depth() -> None:
    assert resolve_layers(Layers((LayerRange(-2, -1),)), 30) == [28, 29]
    assert resolve_layers(Layers((LayerRange(0, 0), LayerRange(10, 12))), 30) == [0, 10, 11, 12]
    assert resolve_layers(Layers((LayerRange(0, -1),)), 4) == [0, 1, 2, 3]
    assert resolve_layers(Depth(40, 60), 30) == [12, 13, 14, 15, 16, 17]
    assert resolve_layers(Depth(50, 50), 30) == [14]  # no layer sits exactly at 50%: the nearest


def test_every_problem_is_reported_at_once_with_its_location(model: Any) -> None:
    with pytest.raises(SpecError) as info:
        compile_(model, "clamp a >= 0.3 at layers 1-5\nablate b at layer -4\npin a = p0 at layer 1\n")
    diags = info.value.diagnostics
    assert [(d.span.line, d.message.split(" for ")[0]) for d in diags[:2]] == [
        (4, "layer 5 is out of range"),
        (5, "layer -4 is out of range"),
    ]
    assert diags[0].hint == "valid layers are 0..2 (or -3..-1 from the end)"
    assert "percentile p0 is outside the calibrated range p1..p99" in diags[2].message


def test_a_raw_vector_accepts_raw_units_only(model: Any) -> None:
    raw = artifact(calibrated=False, layers=None)
    plan = compile_(model, "clamp a <= 3 raw at layers 0-2\n", a=raw)
    assert [e.layer for e in plan.entries] == [0, 1, 2]
    with pytest.raises(SpecError, match="raw vector without calibration"):
        compile_(model, "clamp a <= 3 at layer 0\n", a=raw)


def test_an_artifact_for_another_hidden_size_is_a_located_error(model: Any) -> None:
    with pytest.raises(SpecError) as info:
        compile_(model, "ablate a at layer 0\n", a=artifact(hidden=64))
    (d,) = info.value.diagnostics
    assert "hidden size 64" in d.message and d.span.line == 2


def test_a_gate_must_read_at_or_before_the_layer_it_acts_on(model: Any) -> None:
    compile_(model, "clamp a >= 0.3 at layers 1-2 when b > 0.5 at layer 1\n")
    with pytest.raises(SpecError, match="the gate reads layer 2, after the first layer"):
        compile_(model, "clamp a >= 0.3 at layers 1-2 when b > 0.5 at layer 2\n")
    with pytest.raises(SpecError, match="after the first layer this statement acts on"):
        compile_(model, "clamp a >= 0.3 at layer 1 in attn when b > 0.5 at layer 1\n", a=artifact(site="attn"))


def test_contradictory_bounds_on_one_direction_are_infeasible_naming_both_statements(model: Any) -> None:
    with pytest.raises(SpecError) as info:
        compile_(model, "clamp a >= 0.8 at layer 1\npin a = 0.2 at layers 0-1\n")
    (d,) = info.value.diagnostics
    assert d.message.startswith(
        "infeasible at layer 1: `pin a = 0.2 at layers 0-1` contradicts `clamp a >= 0.8 at layer 1` (line 4)"
    )
    # disjoint tokens never meet, so the same bounds are fine
    compile_(model, "clamp a >= 0.8 at layer 1 on prompt\npin a = 0.2 at layer 1 on generated\n")


def test_an_opposite_direction_is_merged_and_checked_for_feasibility(model: Any) -> None:
    a = artifact(seed=1)
    minus_a = ConceptArtifact(
        directions=-a.directions, layers=a.layers, calibration=a.calibration, metadata={"site": "resid"}
    )
    plan = compile_(model, "clamp a <= 5 raw at layer 0\nclamp b <= 2 raw at layer 0\n", a=a, b=minus_a)
    (site,) = plan.payload["sites"]
    assert site["dirs"].shape == (1, H)
    assert [(m["lo"], m["hi"], m["sign"]) for m in site["bounds"]] == [(-math.inf, 5.0, 1.0), (-2.0, math.inf, -1.0)]
    with pytest.raises(SpecError, match="infeasible"):
        compile_(model, "clamp a <= -3 raw at layer 0\nclamp b <= 2 raw at layer 0\n", a=a, b=minus_a)


def test_linearly_dependent_directions_are_refused(model: Any) -> None:
    a, b = artifact(seed=1), artifact(seed=2)
    c_vec = (a.directions[0] + b.directions[0]) / np.linalg.norm(a.directions[0] + b.directions[0])
    c = ConceptArtifact(
        directions=np.tile(c_vec, (3, 1)).astype(np.float32),
        layers=(0, 1, 2),
        calibration=a.calibration,
        metadata={"site": "resid"},
    )
    a0 = ConceptArtifact(
        directions=np.tile(a.directions[0], (3, 1)),
        layers=(0, 1, 2),
        calibration=a.calibration,
        metadata={"site": "resid"},
    )
    b0 = ConceptArtifact(
        directions=np.tile(b.directions[0], (3, 1)),
        layers=(0, 1, 2),
        calibration=b.calibration,
        metadata={"site": "resid"},
    )
    spec = parse(
        HEAD
        + 'concept c from pairs "c.yaml"\nclamp a >= 0 at layer 0\nclamp b >= 0 at layer 0\nclamp c <= 1 at layer 0\n',
        "t.cdsl",
    )
    with pytest.raises(SpecError, match="linearly dependent"):
        resolve(spec, model, concepts={"a": a0, "b": b0, "c": c})


def test_orthogonal_directions_are_solved_as_separate_groups(model: Any) -> None:
    e = np.eye(H, dtype=np.float32)
    plan = compile_(model, "clamp a >= 0 at layer 0\nclamp b >= 0 at layer 0\n", a=artifact(e[0]), b=artifact(e[1]))
    (site,) = plan.payload["sites"]
    assert [members for members, _ in site["groups"]] == [[0], [1]]
    joint = compile_(model, "clamp a >= 0 at layer 0\nclamp b >= 0 at layer 0\n")
    assert [members for members, _ in joint.payload["sites"][0]["groups"]] == [[0, 1]]


def test_sites_come_in_forward_order(model: Any) -> None:
    plan = compile_(
        model,
        "ablate a at layer 1\nablate b at layer 1 in mlp\nablate a at layer 0\nclamp b >= 0 raw at layer 1 in attn\n",
        b=ConceptArtifact(directions=artifact(seed=2).directions, layers=(0, 1, 2), calibration=None, metadata={}),
    )
    order = [(s["layer"], s["site"]) for s in plan.payload["sites"]]
    assert order[0] == (0, "resid") and order[-1] == (1, "resid")
    assert plan.payload["sites"][-1]["path"] == "model.layers.1"


def test_a_concept_extracted_for_another_site_is_an_error(model: Any) -> None:
    with pytest.raises(SpecError, match="was extracted at site 'resid', but this statement reads site 'attn'"):
        compile_(model, "ablate a at layer 1 in attn\n")


def test_explain_shows_layers_raw_bounds_tokens_and_gates(model: Any) -> None:
    plan = compile_(model, "clamp a in [0, 1] at layers 1-2 on last 2 when b > 0.5 at layer 0\n")
    text = plan.explain()
    assert "layer 1 resid (model.layers.1)" in text and "layer 2 resid" in text
    assert f"in [{NEG:.4g}, {NEG + SCALE:.4g}] raw" in text
    assert "on last 2  gate g0" in text
    assert "g0: reads layer 0, passes if > 2 raw" in text


def test_the_payload_runs_in_the_runtime_and_holds_the_bounds(model: Any) -> None:
    from constraintdsl.runtime.interventions import apply_site

    plan = compile_(model, "clamp a >= 0.5 at layer 0\nclamp b in [-1, 0] at layer 0\n")
    (site,) = plan.payload["sites"]
    h = torch.randn(2, 5, H) * 4
    pos = torch.arange(5).repeat(2, 1)
    out = apply_site(h, site, pos, torch.tensor([5, 5]), torch.tensor([5, 5]), {})
    pa = out[:, 1:].reshape(-1, H) @ site["dirs"][0]
    pb = out[:, 1:].reshape(-1, H) @ site["dirs"][1]
    assert (pa >= NEG + 0.5 * SCALE - 1e-4).all()
    assert ((pb >= NEG - SCALE - 1e-4) & (pb <= NEG + 1e-4)).all()
    assert torch.equal(out[:, 0], h[:, 0])  # the first token (the attention sink) is never selected


def test_a_clamp_holds_on_every_selected_token_of_a_real_forward_pass(model: Any) -> None:
    from tests.readback import projections_after

    plan = compile_(model, "clamp a >= 0.5 at layer 1\nclamp b in [-1, 0] at layer 1\n")
    (site,) = plan.payload["sites"]
    prompts = ["hello there", "a longer prompt about the weather today"]
    dirs = site["dirs"]
    before, real = projections_after(model, None, prompts, [1], {1: dirs[0]})
    after_a, _ = projections_after(model, plan.payload, prompts, [1], {1: dirs[0]})
    after_b, _ = projections_after(model, plan.payload, prompts, [1], {1: dirs[1]})
    floor = NEG + 0.5 * SCALE
    assert bool((before[1][real] < floor).any())  # the clamp had work to do
    assert bool((after_a[1][real] >= floor - 1e-4).all())
    assert bool(((after_b[1][real] >= NEG - SCALE - 1e-4) & (after_b[1][real] <= NEG + 1e-4)).all())
