"""resolve(spec, model) → Plan: every check against a concrete model, then pure data.

Resolve loads (or builds) each concept for the sites that use it, turns layer selections into
layer indices, values in any unit into raw projections per layer, gates into readouts, and
groups the bounds at each site into jointly solved sets.  Every problem is reported with its
statement's span, all at once; after resolve nothing can fail for a reason in the spec.
The Plan's ``payload`` is what the torch-only runtime interprets (and what travels to NDIF).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from constraintdsl.concepts.artifact import PERCENTILE_LEVELS, ConceptArtifact, check_compatible
from constraintdsl.concepts.build import build_concept, calibrate_concept
from constraintdsl.concepts.interop import open_concept
from constraintdsl.errors import Diagnostic, Span, SpecError, UserError
from constraintdsl.lang.canonical import format_number, format_value, statement_dsl
from constraintdsl.lang.loading import spec_sources
from constraintdsl.lang.nodes import Ablate, Clamp, Depth, Gate, Layers, Op, Pin, Ref, Scale, Steer, Unit, Value
from constraintdsl.lang.spec import Spec
from constraintdsl.models.loading import ModelIdentity, model_identity
from constraintdsl.models.sites import arch_sites, hf_module
from constraintdsl.runtime import interventions

from . import joint
from .plan import Plan
from .telemetry import Entry

__all__ = ["check_plan_model", "gate_layer", "op_layers", "resolve", "resolve_layers"]

SITE_ORDER = {"attn": 0, "mlp": 1, "resid": 2}
TOKEN_CODES = {
    "all": interventions.ALL,
    "prompt": interventions.PROMPT,
    "generated": interventions.GENERATED,
    "last": interventions.LAST,
    "first": interventions.FIRST,
}


def check_plan_model(compiled_for: ModelIdentity, model: Any) -> None:
    """Refuse to apply a plan compiled for ``compiled_for`` to ``model`` when they differ in identity
    (id, revision), layer count or hidden size; a ``model`` that is no model is a :class:`TypeError`."""
    if hf_module(model) is None:
        raise TypeError(
            f"expected a model (an nnsight TransformersModel or a transformers model), not {type(model).__name__}"
        )
    got = model_identity(model)
    differences = []
    if (got.id, got.revision) != (compiled_for.id, compiled_for.revision):
        differences.append(f"it is {got.id} (revision {got.revision})")
    if got.num_layers != compiled_for.num_layers:
        differences.append(f"{got.num_layers} layers, not {compiled_for.num_layers}")
    if got.hidden_size != compiled_for.hidden_size:
        differences.append(f"hidden size {got.hidden_size}, not {compiled_for.hidden_size}")
    if differences:
        raise UserError(
            "model",
            f"this plan was compiled for {compiled_for.id} (revision {compiled_for.revision}, "
            f"{compiled_for.num_layers} layers, hidden size {compiled_for.hidden_size}), not for the model it "
            f"is applied to: {'; '.join(differences)}",
            "compile the spec for this model: cdsl.compile(spec, model)",
        )


def resolve_layers(where: Layers | Depth, n: int) -> list[int]:
    """Layer indices (ascending, unique) that a selection names in an ``n``-layer model.

    Negative indices count from the end.  ``depth A%-B%`` takes the layers whose relative depth
    ``100·i/(n−1)`` lies in [A, B], or the nearest layer when none does.
    """
    if isinstance(where, Depth):
        denom = max(n - 1, 1)
        picked = [i for i in range(n) if where.start - 1e-9 <= 100.0 * i / denom <= where.stop + 1e-9]
        if not picked:
            picked = [min(n - 1, max(0, round(where.start / 100.0 * denom)))]
        return picked
    out: set[int] = set()
    for r in where.items:
        a = r.start + n if r.start < 0 else r.start
        b = r.stop + n if r.stop < 0 else r.stop
        out.update(range(a, b + 1))
    return sorted(out)


class _Resolver:
    def __init__(
        self,
        spec: Spec,
        model: Any,
        identity: ModelIdentity,
        base: Path,
        given: Mapping[str, ConceptArtifact],
        progress: bool,
        remote: bool | str = False,
    ) -> None:
        self.spec = spec
        self.remote = remote
        self.model = model
        self.identity = identity
        self.base = base
        self.given = given
        self.progress = progress
        self.diags: list[Diagnostic] = []
        self.artifacts: dict[tuple[str, str], ConceptArtifact | None] = {}

    def error(self, span: Span, message: str, hint: str | None = None) -> None:
        self.diags.append(Diagnostic(span, message, hint))

    # -- concepts -----------------------------------------------------------------------
    def artifact(self, name: str, site: str, used_at: Span) -> ConceptArtifact | None:
        key = (name, site)
        if key in self.artifacts:
            return self.artifacts[key]
        art = self._load(name, site, used_at)
        self.artifacts[key] = art
        return art

    def _load(self, name: str, site: str, used_at: Span) -> ConceptArtifact | None:
        concept = self.spec.concept(name)
        if name in self.given:
            art = self.given[name]
        elif concept is None:
            self.error(used_at, f"unknown concept '{name}'")
            return None
        else:
            path = self.base / concept.path
            try:
                if concept.source != "pairs":
                    art = open_concept(concept.source, path, feature=concept.feature, span=concept.path_span)
                    if concept.calibrated is not None:
                        check_compatible(art, self.identity, concept.path_span)
                        art = calibrate_concept(
                            art,
                            self.base / concept.calibrated,
                            self.model,
                            span=concept.calibrated_span,
                            progress=self.progress,
                            remote=self.remote,
                        )
                else:
                    art = build_concept(
                        path,
                        self.model,
                        site=site,
                        method=concept.method,
                        span=concept.path_span,
                        progress=self.progress,
                        remote=self.remote,
                    )
            except SpecError as e:
                self.diags.extend(e.diagnostics)
                return None
            except UserError as e:
                self.error(concept.path_span, e.message, e.hint)
                return None
        span = concept.path_span if concept is not None else used_at
        try:
            check_compatible(art, self.identity, span)
        except SpecError as e:
            self.diags.extend(e.diagnostics)
            return None
        except UserError as e:
            self.error(span, e.message, e.hint)
            return None
        art_site = art.metadata.get("site")
        if art.layers is not None and art_site is not None and art_site != site:
            self.error(
                used_at,
                f"concept '{name}' was extracted at site '{art_site}', but this statement reads site '{site}'",
                f"extract it for '{site}' (cdsl concept build --site {site}) or drop `in {site}`",
            )
            return None
        return art

    def direction(self, art: ConceptArtifact, name: str, layer: int, span: Span) -> torch.Tensor | None:
        try:
            vec = art.direction(layer)
        except KeyError:
            have = _ranges(art.layers or ())
            self.error(span, f"concept '{name}' has no direction at layer {layer} (it has layers {have})")
            return None
        return torch.tensor(np.asarray(vec, dtype=np.float32))

    # -- units --------------------------------------------------------------------------
    def raw(
        self, art: ConceptArtifact, name: str, layer: int, value: Value | Ref, span: Span, *, displacement: bool = False
    ) -> float | None:
        """``value`` at ``layer`` in raw projection units (a displacement for steer)."""
        assert isinstance(value, Value), "resolve() refuses a spec with variables before reading values"
        if value.unit is Unit.raw:
            return value.number
        if value.unit is Unit.vec:
            norm = art.norm(layer)
            if norm is None:
                self.error(
                    span,
                    f"concept '{name}' stores a unit direction only (it was extracted), so "
                    f"'{format_value(value)}' (times the stored vector) has no meaning",
                    "use calibrated units or raw; `vec` is for imported vectors (from gguf, svec, sae, .npy)",
                )
                return None
            return value.number * norm
        cal = art.calibration
        if cal is None:
            imported = art.norms is not None and art.layers is not None
            self.error(
                span,
                f"concept '{name}' is {'an imported' if imported else 'a raw'} vector without calibration, "
                f"so '{format_value(value)}' has no meaning",
                f"use {format_number(value.number)} vec (times the stored vector) or raw units, or calibrate it: "
                f'concept {name} from … calibrated on "pairs.yaml"'
                if imported
                else f"use raw units, e.g. {format_number(value.number)} raw",
            )
            return None
        row = art.row(layer)
        scale = float(cal.scale[row])
        if value.unit is Unit.calibrated:
            if abs(scale) < 1e-12:
                self.error(
                    span, f"concept '{name}' has zero pole distance at layer {layer}; calibrated units are undefined"
                )
                return None
            return value.number * scale if displacement else float(cal.neg_mean[row]) + value.number * scale
        if value.unit is Unit.sd:
            std = float(cal.std[row])
            return value.number * std if displacement else float(cal.mean[row]) + value.number * std
        levels = list(cal.levels or PERCENTILE_LEVELS)
        if not levels[0] <= value.number <= levels[-1]:
            self.error(
                span,
                f"percentile p{format_number(value.number)} is outside the calibrated range "
                f"p{format_number(levels[0])}..p{format_number(levels[-1])}",
                None,
            )
            return None
        return float(np.interp(value.number, levels, np.asarray(cal.percentiles[row], dtype=np.float64)))


def _ranges(layers: Sequence[int]) -> str:
    out: list[str] = []
    for i in sorted(layers):
        if out and out[-1].split("-")[-1] == str(i - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{i}"
        else:
            out.append(str(i))
    return ",".join(out) or "none"


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Can two token selections pick the same token?  Only prompt vs generated cannot."""
    kinds = {a[0], b[0]}
    return kinds != {interventions.PROMPT, interventions.GENERATED}


def resolve(
    spec: Spec,
    model: Any,
    *,
    concepts: Mapping[str, ConceptArtifact] | None = None,
    base_dir: str | Path | None = None,
    progress: bool = True,
    identity: ModelIdentity | None = None,
    remote: bool | str = False,
) -> Plan:
    """Resolve ``spec`` for ``model`` into a :class:`Plan`, or raise :class:`SpecError` with every problem.

    Concepts come from the spec's files (``from file``) or are extracted and cached (``from
    pairs``); ``concepts`` supplies artifacts by name instead (useful in tests and notebooks).
    ``base_dir`` is where relative concept paths start (default: the spec file's folder).
    ``identity`` stands in for the model's own when ``model`` is only its config (no weights: then
    every concept must be given, and the activation dtype is taken to be float32).  ``remote``: concepts that
    need forward passes (``from pairs`` not yet cached, ``calibrated on``) run them on that NDIF server, so a
    model built without weights (:func:`~constraintdsl.models.loading.load_lazy`) never loads them.

    Amounts are judged per statement (:mod:`constraintdsl.amounts`): those no dtype can carry or beyond
    1,000 pole distances are errors; the plan's ``warnings`` hold the legal ones that are likely not
    what the author meant.
    """
    from .amounts import judge, resolved_row

    _refuse_variables(spec)
    identity = identity or model_identity(model)
    arch = arch_sites(model)
    dtype = _activation_dtype(model)
    warnings: list[Diagnostic] = []
    n = identity.num_layers
    base = Path(base_dir) if base_dir is not None else Path(spec.path).parent
    r = _Resolver(spec, model, identity, base, concepts or {}, progress, remote)

    sites: dict[tuple[int, str], dict[str, Any]] = {}
    entries: list[Entry] = []
    gate_ids: dict[tuple[str, int, str, float, str], int] = {}
    gate_reads: dict[tuple[int, str], list[dict[str, Any]]] = {}

    def site_slot(layer: int, site: str) -> dict[str, Any]:
        slot = sites.get((layer, site))
        if slot is None:
            path = f"{arch.layers}.{layer}" + (
                "" if site == "resid" else f".{arch.attn if site == 'attn' else arch.mlp}"
            )
            slot = {"layer": layer, "site": site, "path": path, "actions": [], "members": [], "gate_reads": []}
            sites[(layer, site)] = slot
        return slot

    for index, op in enumerate(spec.constraints):
        layers = _checked_layers(r, op, n)
        if not layers:
            continue
        art = r.artifact(op.concept, op.site, op.concept_span)
        gate_id = _gate(r, op, layers, gate_ids, gate_reads, n) if op.gate is not None else -1
        if art is None or gate_id is None:
            continue
        tokens = (TOKEN_CODES[op.tokens.kind], op.tokens.count or 0)
        label = {"label": statement_dsl(op), "where": str(op.span)}
        rows = []
        for layer in layers:
            u = r.direction(art, op.concept, layer, op.span)
            if u is None:
                continue
            bounds = _bounds(r, art, op, layer)
            if bounds is None:
                continue
            lo, hi = bounds
            cal = art.calibration
            row = art.row(layer)
            entry = Entry(
                statement=index,
                text=statement_dsl(op),
                keyword=op.keyword,
                concept=op.concept,
                layer=layer,
                site=op.site,
                scale=float(cal.scale[row]) if cal is not None else None,
                offset=float(cal.neg_mean[row]) if cal is not None else None,
                lo=lo,
                hi=hi,
                span=op.span,
            )
            slot = site_slot(layer, op.site)
            common = {"tokens": tokens[0], "count": tokens[1], "gate": gate_id, "entry": len(entries), **label}
            if isinstance(op, Steer | Scale):
                kind = interventions.STEER if isinstance(op, Steer) else interventions.SCALE
                slot["actions"].append({"kind": kind, "u": u, "amount": lo, **common})
            else:
                slot["members"].append({"u": u, "lo": lo, "hi": hi, "op": op, **common})
            entries.append(entry)
            rows.append(resolved_row(art, layer, lo, hi))
        errors, advice = judge(op, rows, float(torch.finfo(dtype).max), str(dtype).removeprefix("torch."))
        r.diags.extend(errors)
        warnings.extend(advice)

    for (layer, site), reads in gate_reads.items():
        site_slot(layer, site)["gate_reads"].extend(reads)

    payload_sites = []
    for key in sorted(sites, key=lambda k: (k[0], SITE_ORDER[k[1]])):
        slot = sites[key]
        _group_bounds(r, slot)
        payload_sites.append({k: v for k, v in slot.items() if k != "members"})
    if r.diags:
        raise SpecError(r.diags, spec_sources(spec))
    payload = {"sites": payload_sites, "n_entries": len(entries), "n_gates": len(gate_ids)}
    names = {name: (art.path or "<given>") for (name, _), art in r.artifacts.items() if art is not None}
    warnings.sort(key=lambda d: (d.span.path, d.span.line, d.span.col))
    return Plan(
        spec=spec,
        model=identity,
        payload=payload,
        entries=tuple(entries),
        concepts=names,
        model_ref=model,
        warnings=tuple(warnings),
    )


def _activation_dtype(model: Any) -> torch.dtype:
    """The dtype of the model's activations (its first floating parameter's); float32 when it has no
    weights (a config) or none are floating."""
    module = getattr(model, "__dict__", {}).get("_module", model)
    if isinstance(module, torch.nn.Module):
        for p in module.parameters():
            if p.dtype.is_floating_point:
                return p.dtype
    return torch.float32


def _refuse_variables(spec: Spec) -> None:
    """A spec with ``$name``s left stands for several specs: point at the first and say what to do."""
    from constraintdsl.lang.variants import first_ref

    ref = first_ref(spec)
    if ref is None:
        return
    sizes = ", ".join(f"{let.name}: {len(let.values)} value{'s' * (len(let.values) != 1)}" for let in spec.lets)
    raise SpecError.single(
        ref.span,
        f"this spec has variants ({sizes})" if sizes else f"${ref.name} is not bound to a value",
        "compile one variant (`constraintdsl.expand`) or compare them with `cdsl compare`",
        source=spec_sources(spec).get(ref.span.path),
    )


def _checked_layers(r: _Resolver, op: Op, n: int) -> list[int]:
    layers, problem = op_layers(op, n, r.identity.id)
    if problem is not None:
        r.diags.append(problem)
    return layers


def op_layers(op: Op, n: int, model_id: str) -> tuple[list[int], Diagnostic | None]:
    """The layers ``op`` acts on in an ``n``-layer model, or ``[]`` and the problem (located at ``op``)."""
    if isinstance(op.where, Layers):
        bad = [x for item in op.where.items for x in (item.start, item.stop) if not -n <= x < n]
        if bad:
            return [], Diagnostic(
                op.span,
                f"layer {bad[0]} is out of range for {model_id}, which has {n} layers",
                f"valid layers are 0..{n - 1} (or -{n}..-1 from the end)",
            )
        for item in op.where.items:
            a = item.start + n if item.start < 0 else item.start
            b = item.stop + n if item.stop < 0 else item.stop
            if a > b:
                return [], Diagnostic(op.span, f"layer range {item.start}..{item.stop} is empty for a {n}-layer model")
    return resolve_layers(op.where, n), None


def gate_layer(op: Op, layers: list[int], n: int, model_id: str) -> tuple[int | None, Diagnostic | None]:
    """The layer ``op``'s gate reads (``layers``: those ``op`` acts on), or None and the problem: a layer
    out of range, or one after the first layer the statement acts on."""
    gate = op.gate
    assert isinstance(gate, Gate)
    first = min(layers)
    layer = first if gate.layer is None else (gate.layer + n if gate.layer < 0 else gate.layer)
    if not 0 <= layer < n:
        return None, Diagnostic(gate.span, f"gate layer {gate.layer} is out of range for {model_id} ({n} layers)")
    # the gate reads the residual stream; an attn/mlp edit at the same layer happens before it
    limit = first if op.site == "resid" else first - 1
    if layer > limit:
        return None, Diagnostic(
            gate.span,
            f"the gate reads layer {layer}, after the first layer this statement acts on "
            f"({first}{'' if op.site == 'resid' else ', ' + op.site})",
            f"read at or before the layer it acts on: when … at layer {limit}" if limit >= 0 else "remove the gate",
        )
    return layer, None


def _bounds(r: _Resolver, art: ConceptArtifact, op: Op, layer: int) -> tuple[float, float] | None:
    """Raw (lo, hi) for bounds; (amount, amount) for steer (raw displacement) and scale (factor)."""
    if isinstance(op, Ablate):
        return 0.0, 0.0
    if isinstance(op, Scale):
        assert not isinstance(op.by, Ref), "resolve() refuses a spec with variables before reading values"
        return op.by, op.by
    if isinstance(op, Steer):
        amount = r.raw(art, op.concept, layer, op.by, op.span, displacement=True)
        return None if amount is None else (amount, amount)
    if isinstance(op, Pin):
        v = r.raw(art, op.concept, layer, op.value, op.span)
        return None if v is None else (v, v)
    assert isinstance(op, Clamp)
    lo = -math.inf if op.min is None else r.raw(art, op.concept, layer, op.min, op.span)
    hi = math.inf if op.max is None else r.raw(art, op.concept, layer, op.max, op.span)
    if lo is None or hi is None:
        return None
    if lo > hi:
        r.error(
            op.span,
            f"empty interval at layer {layer}: the lower bound is {lo:.4g} raw, above the upper bound {hi:.4g} raw",
            "the two bounds use different units; check them with `cdsl explain`",
        )
        return None
    return lo, hi


def _gate(
    r: _Resolver,
    op: Op,
    layers: list[int],
    ids: dict[tuple[str, int, str, float, str], int],
    reads: dict[tuple[int, str], list[dict[str, Any]]],
    n: int,
) -> int | None:
    gate = op.gate
    assert isinstance(gate, Gate)
    layer, problem = gate_layer(op, layers, n, r.identity.id)
    if layer is None:
        if problem is not None:
            r.diags.append(problem)
        return None
    art = r.artifact(gate.concept, "resid", gate.span)
    if art is None:
        return None
    u = r.direction(art, gate.concept, layer, gate.span)
    threshold = r.raw(art, gate.concept, layer, gate.value, gate.span)
    if u is None or threshold is None:
        return None
    key = (gate.concept, layer, gate.cmp, threshold, "resid")
    if key not in ids:
        ids[key] = len(ids)
        reads.setdefault((layer, "resid"), []).append(
            {"gate": ids[key], "u": u, "threshold": threshold, "cmp": gate.cmp}
        )
    return ids[key]


def _group_bounds(r: _Resolver, slot: dict[str, Any]) -> None:
    """Distinct directions, members mapped onto them, infeasibility and dependence checks, joint groups."""
    members = slot.pop("members")
    slot["dirs"] = torch.zeros(0, 0)
    slot["bounds"] = []
    slot["groups"] = []
    if not members:
        return
    cols, signs, u = joint.distinct_directions([m["u"] for m in members])
    owners: list[list[dict[str, Any]]] = [[] for _ in range(u.shape[0])]
    bounds: list[dict[str, Any]] = []
    for m, col, sign in zip(members, cols, signs, strict=True):
        lo, hi = (m["lo"], m["hi"]) if sign > 0 else (-m["hi"], -m["lo"])
        op = m["op"]
        member = {
            "dir": col,
            "lo": lo,
            "hi": hi,
            "sign": sign,
            "tokens": m["tokens"],
            "count": m["count"],
            "gate": m["gate"],
            "entry": m["entry"],
            "label": m["label"],
            "where": m["where"],
        }
        for other in owners[col]:
            if _overlap((other["tokens"], 0), (m["tokens"], 0)) and (
                other["lo"] > hi + 1e-6 * (1 + abs(hi)) or lo > other["hi"] + 1e-6 * (1 + abs(lo))
            ):
                a = other["op"]
                r.error(
                    op.span,
                    f"infeasible at layer {slot['layer']}: `{statement_dsl(op)}` contradicts "
                    f"`{statement_dsl(a)}` (line {a.span.line}); no activation satisfies both",
                    "loosen one of the two bounds, or give them disjoint tokens (on prompt / on generated)",
                )
        owners[col].append({**member, "op": op})
        bounds.append(member)
    dep = joint.dependence(u)
    if dep is not None:
        ops = [owners[i][0]["op"] for i in dep.involved]
        names = ", ".join(f"`{statement_dsl(op)}` (line {op.span.line})" for op in ops)
        what = (
            f"nearly parallel (|cos| = {dep.max_cos:.8f})"
            if len(ops) == 2
            else f"linearly dependent to within float precision (smallest Gram eigenvalue {dep.eigenvalue:.2g})"
        )
        r.error(
            ops[-1].span,
            f"at layer {slot['layer']} ({slot['site']}) the directions of {names} are linearly dependent: "
            f"{what}; bounds on them jointly cannot be met exactly (the limit is an eigenvalue of {joint.DEPENDENT:g})",
            "drop one of these statements at this layer, or bound both concepts through one of them",
        )
        return
    groups = []
    for comp in joint.components(u):
        if len(comp) > interventions.MAX_JOINT:
            r.error(
                owners[comp[-1]][0]["op"].span,
                f"{len(comp)} non-orthogonal bounded directions at layer {slot['layer']} ({slot['site']}); "
                f"at most {interventions.MAX_JOINT} are solved jointly at one site",
                "spread the statements over more layers, or drop some",
            )
            continue
        has_lo = [any(math.isfinite(b["lo"]) for b in bounds if b["dir"] == i) for i in comp]
        has_hi = [any(math.isfinite(b["hi"]) for b in bounds if b["dir"] == i) for i in comp]
        groups.append((comp, interventions.prepare_group(u[comp], has_lo, has_hi)))
    slot["dirs"] = u
    slot["bounds"] = bounds
    slot["groups"] = groups
    slot["feasible"] = True  # no two bounds on one direction can contradict on a token (checked above)
