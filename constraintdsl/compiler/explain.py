"""A resolved Plan as text or data: which layers, raw bounds per layer, positions, gates, groups."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch

from constraintdsl.lang.canonical import describe_check, format_check
from constraintdsl.lang.spec import Spec
from constraintdsl.models.loading import ModelIdentity
from constraintdsl.runtime import interventions

from .telemetry import Entry

__all__ = ["TOKEN_RULE", "PlanLike", "explain", "plan_summary"]


class PlanLike(Protocol):
    """What explaining reads of a plan; :class:`constraintdsl.compiler.plan.Plan` is one (its
    ``explain()`` method calls down to this module, so this module names the plan's shape)."""

    @property
    def spec(self) -> Spec: ...
    @property
    def model(self) -> ModelIdentity: ...
    @property
    def payload(self) -> dict[str, Any]: ...
    @property
    def entries(self) -> Sequence[Entry]: ...
    @property
    def concepts(self) -> Mapping[str, str]: ...


_TOKEN_NAMES = {
    interventions.ALL: "all",
    interventions.PROMPT: "prompt",
    interventions.GENERATED: "generated",
    interventions.LAST: "last",
    interventions.FIRST: "first",
}


# The one token rule, as `cdsl explain` states it (README "Which tokens").
TOKEN_RULE = (
    "every selection leaves out each sequence's first real token (the attention sink: after left padding; "
    "the first token of every corpus window), so `first N` counts from the token after it"
)


def _tokens(code: int, count: int) -> str:
    name = _TOKEN_NAMES[code]
    return f"{name} {count}" if code in (interventions.LAST, interventions.FIRST) else name


def _raw(x: float) -> str:
    return "-inf" if x == -math.inf else "+inf" if x == math.inf else f"{x:.4g}"


def _bound_text(e: Entry) -> str:
    if e.keyword == "steer":
        return f"add {_raw(e.lo)} raw"
    if e.keyword == "scale":
        return f"× {_raw(e.lo)}"
    if e.lo == e.hi:
        return f"= {_raw(e.lo)} raw"
    if e.hi == math.inf:
        return f"≥ {_raw(e.lo)} raw"
    if e.lo == -math.inf:
        return f"≤ {_raw(e.hi)} raw"
    return f"in [{_raw(e.lo)}, {_raw(e.hi)}] raw"


def _cal(e: Entry, raw: float) -> float | None:
    """``raw`` in calibrated units at the entry's layer (None when uncalibrated or unbounded)."""
    if e.scale is None or e.offset is None or not e.scale or not math.isfinite(raw):
        return None
    return (raw - e.offset) / e.scale


def _c(x: float | None) -> str:
    return "-inf" if x is None else f"{x:.3g}"


def _cal_text(e: Entry, so_far: float | None) -> str:
    """The calibrated meaning of an entry's raw value(s): ``0.3 cal``; a steer in pole distances (and, over
    several layers, the total added so far); nothing for a factor or an uncalibrated concept."""
    if e.scale is None or not e.scale or e.keyword == "scale":
        return ""
    if e.keyword == "steer":
        text = f"{e.lo / e.scale:.3g} pole dist."
        return text if so_far is None else f"{text}, {so_far:.3g} so far"
    lo, hi = _cal(e, e.lo), _cal(e, e.hi)
    if e.lo == e.hi or e.hi == math.inf:
        return f"{_c(lo)} cal"
    if e.lo == -math.inf:
        return f"{_c(hi)} cal"
    return f"[{_c(lo)}, {_c(hi)}] cal"


def plan_summary(plan: PlanLike) -> dict[str, Any]:
    """The plan as JSON-ready data (no tensors): model, concepts, gates and per-site statements, each
    with its raw values and their calibrated meaning at that layer."""
    gates = []
    for site in plan.payload["sites"]:
        for g in site["gate_reads"]:
            gates.append({"gate": g["gate"], "layer": site["layer"], "cmp": g["cmp"], "threshold_raw": g["threshold"]})
    # a steer adds at every layer it names, and the residual stream keeps each addition
    so_far: dict[int, float] = {}
    steered: dict[int, int] = {}
    for e in plan.entries:
        if e.keyword == "steer":
            steered[e.statement] = steered.get(e.statement, 0) + 1
    sites = []
    for site in plan.payload["sites"]:
        ops = []
        for op in [*site["actions"], *site["bounds"]]:
            e = plan.entries[op["entry"]]
            total = None
            if e.keyword == "steer" and e.scale:
                # in pole distances of this layer: the raw total so far over this layer's pole distance
                so_far[e.statement] = so_far.get(e.statement, 0.0) + e.lo
                total = so_far[e.statement] / e.scale
            lo_cal, hi_cal = _cal(e, e.lo), _cal(e, e.hi)
            ops.append(
                {
                    "statement": e.text,
                    "line": e.span.line,
                    "path": e.span.path,
                    "raw": _bound_text(e),
                    "calibrated": _cal_text(e, total if steered.get(e.statement, 0) > 1 else None),
                    "lo_raw": e.lo if math.isfinite(e.lo) else None,
                    "hi_raw": e.hi if math.isfinite(e.hi) else None,
                    "lo_cal": None if e.keyword in ("steer", "scale") else lo_cal,
                    "hi_cal": None if e.keyword in ("steer", "scale") else hi_cal,
                    "pole_distances": e.lo / e.scale if e.keyword == "steer" and e.scale else None,
                    "pole_distances_so_far": total,
                    "tokens": _tokens(op["tokens"], op["count"]),
                    "gate": op["gate"] if op["gate"] >= 0 else None,
                }
            )
        groups = []
        for members, group in site["groups"]:
            dirs = site["dirs"][members].double()
            gram = dirs @ dirs.T
            cos = gram.abs() - torch.eye(len(members), dtype=gram.dtype)
            groups.append(
                {
                    "directions": len(members),
                    "max_abs_cos": round(float(cos.max()), 4) if len(members) > 1 else 0.0,
                    "min_gram_eigenvalue": float(f"{float(torch.linalg.eigvalsh(gram).min()):.3g}"),
                    "solve": group.get("method", "faces"),
                }
            )
        sites.append(
            {"layer": site["layer"], "site": site["site"], "module": site["path"], "ops": ops, "joint": groups}
        )
    return {
        "spec": plan.spec.path,
        "model": {
            "id": plan.model.id,
            "revision": plan.model.revision,
            "layers": plan.model.num_layers,
            "hidden_size": plan.model.hidden_size,
        },
        "concepts": dict(plan.concepts),
        "tokens": TOKEN_RULE,
        "gates": gates,
        "sites": sites,
        "feasible": True,
        "checks": [
            {
                "statement": format_check(c),
                "keyword": c.keyword,
                "measure": c.measure,
                "meaning": describe_check(c),
                "line": c.span.line,
                "path": c.span.path,
            }
            for c in plan.spec.checks
        ],
    }


_SOLVES = {"faces": "face enumeration", "active": "active-set method in float64", "one": "closed form"}


def explain(plan: PlanLike) -> str:
    """Readable resolved plan: every site in forward order with raw bounds, tokens and gates."""
    s = plan_summary(plan)
    m = s["model"]
    out = [
        f"plan: {s['spec']} on {m['id']} (revision {m['revision']}, {m['layers']} layers, hidden {m['hidden_size']})",
        "concepts:",
    ]
    out += [f"  {name}: {path}" for name, path in sorted(s["concepts"].items())]
    out.append(f"tokens: {TOKEN_RULE}")
    out.append(
        "values: raw (dot product with the unit direction), then what it means at that layer: `cal` "
        "(0 the negative pole, 1 the positive), or a steer in pole distances"
    )
    if s["gates"]:
        out.append(
            "gates (per sequence: mean raw projection over the prompt, first token left out; "
            "a one-token prompt passes none):"
        )
        out += [
            f"  g{g['gate']}: reads layer {g['layer']}, passes if {g['cmp']} {_raw(g['threshold_raw'])} raw"
            for g in s["gates"]
        ]
    for site in s["sites"]:
        out.append(f"layer {site['layer']} {site['site']} ({site['module']})")
        width = max(len(op["statement"]) for op in site["ops"]) if site["ops"] else 0
        for op in site["ops"]:
            gate = f"  gate g{op['gate']}" if op["gate"] is not None else ""
            value = op["raw"] + (f" ({op['calibrated']})" if op["calibrated"] else "")
            out.append(f"  {op['statement']:<{width}}  {value:<34} on {op['tokens']}{gate}  (line {op['line']})")
        for g in site["joint"]:
            if g["directions"] > 1:
                out.append(
                    f"  joint: {g['directions']} directions solved together, exactly (max |cos| {g['max_abs_cos']}, "
                    f"smallest Gram eigenvalue {g['min_gram_eigenvalue']:g}; {_SOLVES[g['solve']]})"
                )
    out.append("feasible: yes (every site's bounds can hold together)")
    if s["checks"]:
        out.append("budgets and targets (not interventions: `cdsl compare` asserts them on what it measures):")
        width = max(len(c["statement"]) for c in s["checks"])
        out += [f"  {c['statement']:<{width}}  {c['meaning']}  (line {c['line']})" for c in s["checks"]]
    return "\n".join(out)
