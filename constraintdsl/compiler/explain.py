"""A resolved Plan as text or data: which layers, raw bounds per layer, positions, gates, groups."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch

from constraintdsl.lang.spec import Spec
from constraintdsl.models.loading import ModelIdentity
from constraintdsl.runtime import interventions

from .telemetry import Entry

__all__ = ["PlanLike", "explain", "plan_summary"]


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


def plan_summary(plan: PlanLike) -> dict[str, Any]:
    """The plan as JSON-ready data (no tensors): model, concepts, gates and per-site statements."""
    gates = []
    for site in plan.payload["sites"]:
        for g in site["gate_reads"]:
            gates.append({"gate": g["gate"], "layer": site["layer"], "cmp": g["cmp"], "threshold_raw": g["threshold"]})
    sites = []
    for site in plan.payload["sites"]:
        ops = []
        for op in [*site["actions"], *site["bounds"]]:
            e = plan.entries[op["entry"]]
            ops.append(
                {
                    "statement": e.text,
                    "line": e.span.line,
                    "path": e.span.path,
                    "raw": _bound_text(e),
                    "lo_raw": e.lo if math.isfinite(e.lo) else None,
                    "hi_raw": e.hi if math.isfinite(e.hi) else None,
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
        "gates": gates,
        "sites": sites,
        "feasible": True,
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
    if s["gates"]:
        out.append("gates (per sequence: mean raw projection over the prompt, first token left out):")
        out += [
            f"  g{g['gate']}: reads layer {g['layer']}, passes if {g['cmp']} {_raw(g['threshold_raw'])} raw"
            for g in s["gates"]
        ]
    for site in s["sites"]:
        out.append(f"layer {site['layer']} {site['site']} ({site['module']})")
        width = max(len(op["statement"]) for op in site["ops"]) if site["ops"] else 0
        for op in site["ops"]:
            gate = f"  gate g{op['gate']}" if op["gate"] is not None else ""
            out.append(f"  {op['statement']:<{width}}  {op['raw']:<24} on {op['tokens']}{gate}  (line {op['line']})")
        for g in site["joint"]:
            if g["directions"] > 1:
                out.append(
                    f"  joint: {g['directions']} directions solved together, exactly (max |cos| {g['max_abs_cos']}, "
                    f"smallest Gram eigenvalue {g['min_gram_eigenvalue']:g}; {_SOLVES[g['solve']]})"
                )
    out.append("feasible: yes (every site's bounds can hold together)")
    return "\n".join(out)
