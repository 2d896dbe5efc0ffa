"""What the model-level ``cdsl`` verbs do (``explain``, ``run``), apart from argument parsing.

Each function returns an exit code; progress goes to ``err``, results to ``out``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TextIO

from .commands import EXIT_OK, concept_hashes
from .errors import Span, SpecError, UserError
from .load import load, read_text

if TYPE_CHECKING:
    from .compiler import Plan
    from .readout import Effect
    from .spec import Spec
    from .telemetry import TelemetryRow

__all__ = ["explain_spec", "read_prompts", "run_spec"]


def read_prompts(path: str) -> list[str]:
    """Prompts from a file: ``.txt`` one per line (blank lines and ``#`` comments skipped), or
    ``.jsonl`` with one ``{"prompt": "…"}`` (or a JSON string) per line."""
    text = read_text(path)
    prompts: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or (stripped.startswith("#") and not path.endswith(".jsonl")):
            continue
        if path.endswith(".jsonl"):
            try:
                item = json.loads(stripped)
            except json.JSONDecodeError as e:
                raise SpecError.single(
                    Span(path, lineno, e.colno), f"invalid JSON: {e.msg}", None, source=text
                ) from None
            value = item.get("prompt") if isinstance(item, dict) else item
            if not isinstance(value, str) or not value.strip():
                raise SpecError.single(
                    Span(path, lineno, 1), 'each line must be {"prompt": "…"} or a JSON string', None, source=text
                )
            prompts.append(value)
        else:
            prompts.append(stripped)
    if not prompts:
        raise UserError(
            "--prompts", f"{path} holds no prompts", 'one prompt per line (.txt) or {"prompt": …} per line (.jsonl)'
        )
    return prompts


def _load_model(spec: Spec, name: str | None, dtype: str, err: TextIO) -> Any:
    from .models import DEFAULT_MODEL, load_model

    chosen = name or spec.model or DEFAULT_MODEL
    err.write(f"loading model {chosen} ({dtype})…\n")
    err.flush()
    return load_model(chosen, dtype=dtype)


def _compile(
    path: str, model_name: str | None, dtype: str, err: TextIO, progress: bool = True
) -> tuple[Plan, Any, str]:
    from .canonical import spec_hash
    from .compiler import resolve

    spec = load(path)
    digest = spec_hash(spec, concept_hashes(spec))
    model = _load_model(spec, model_name, dtype, err)
    return resolve(spec, model, progress=progress), model, digest


def explain_spec(path: str, *, model_name: str | None, dtype: str, fmt: str, out: TextIO, err: TextIO) -> int:
    """``cdsl explain``: the resolved plan for a model, without running it."""
    from .explain import plan_summary

    plan, _, digest = _compile(path, model_name, dtype, err)
    if fmt == "json":
        out.write(json.dumps({"hash": digest, **plan_summary(plan)}, indent=2, default=_finite) + "\n")
    else:
        out.write(plan.explain() + "\n")
    return EXIT_OK


def _finite(x: Any) -> Any:
    return None if isinstance(x, float) else str(x)


def telemetry_table(rows: list[TelemetryRow]) -> str:
    """A plain-text table of telemetry rows (one per statement × layer × site)."""
    head = ["statement", "layer", "site", "tokens", "bound", "mean corr", "max corr", "‖Δh‖/‖h‖", "before → after"]
    body = []
    for r in rows:
        unit = "" if r.units == "calibrated" else " raw"
        body.append(
            [
                r.statement,
                str(r.layer),
                r.site,
                str(r.selected),
                f"{100 * r.binding_fraction:.0f}%",
                "-" if r.mean_correction is None else f"{r.mean_correction:.3f}{unit}",
                "-" if r.max_correction is None else f"{r.max_correction:.3f}{unit}",
                "-" if r.mean_relative is None else f"{r.mean_relative:.4f}",
                "-" if r.before is None or r.after is None else f"{r.before:+.2f} → {r.after:+.2f}{unit}",
            ]
        )
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _effects(plan: Plan, model: Any, base: Any, done: Any) -> list[Effect]:
    """Readout shift of every calibrated concept the spec constrains, baseline → constrained."""
    import math

    from .artifacts import load_artifact
    from .concepts import recommended_layers
    from .readout import Effect, readout

    out: list[Effect] = []
    used = {e.concept for e in plan.entries}
    for name in sorted(used):
        path = plan.concepts.get(name)
        if path is None or path == "<given>":
            continue
        art = load_artifact(path)
        best = recommended_layers(art, top=1)
        if art.calibration is None or not best:
            continue
        layer = best[0]
        b = readout(model, art, layer, base.ids, base.attention_mask, base.prompt_width)
        c = readout(model, art, layer, done.ids, done.attention_mask, done.prompt_width)
        ok = ~(b.isnan() | c.isnan())
        bm, cm = float(b[ok].mean()), float(c[ok].mean())
        out.append(
            Effect(
                concept=name,
                layer=layer,
                auroc=float(art.calibration.auroc[art.row(layer)]),
                baseline=bm,
                constrained=cm,
                shift=cm - bm if not (math.isnan(bm) or math.isnan(cm)) else float("nan"),
                moved_up=int((c[ok] > b[ok]).sum()),
                prompts=int(ok.sum()),
            )
        )
    return out


def effect_table(effects: list[Effect]) -> str:
    """Plain-text table of readout effects."""
    head = ["concept", "layer", "AUROC", "baseline", "constrained", "shift", "prompts moved up"]
    body = [
        [
            e.concept,
            str(e.layer),
            f"{e.auroc:.3f}",
            f"{e.baseline:+.3f}",
            f"{e.constrained:+.3f}",
            f"{e.shift:+.3f}",
            f"{e.moved_up}/{e.prompts}",
        ]
        for e in effects
    ]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_spec(
    path: str,
    *,
    prompts: list[str],
    model_name: str | None,
    dtype: str,
    max_new_tokens: int,
    baseline: bool,
    fmt: str,
    out: TextIO,
    err: TextIO,
) -> int:
    """``cdsl run``: baseline and constrained generations side by side, plus telemetry."""
    from . import runner
    from .telemetry import summarize

    plan, model, digest = _compile(path, model_name, dtype, err)
    err.write(f"generating {max_new_tokens} tokens for {len(prompts)} prompt(s)…\n")
    base = runner.generate(model, None, prompts, max_new_tokens=max_new_tokens) if baseline else None
    done = runner.generate(model, plan.payload, prompts, max_new_tokens=max_new_tokens)
    assert done.telemetry is not None
    rows = summarize(plan, done.telemetry)
    effects = _effects(plan, model, base, done) if base is not None else []
    if fmt == "json":
        report = {
            "spec": path,
            "hash": digest,
            "model": {"id": plan.model.id, "revision": plan.model.revision},
            "max_new_tokens": max_new_tokens,
            "generations": [
                {"prompt": p, "baseline": base.texts[i] if base else None, "constrained": done.texts[i]}
                for i, p in enumerate(prompts)
            ],
            "effect": [e.to_dict() for e in effects],
            "telemetry": [r.to_dict() for r in rows],
        }
        out.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        return EXIT_OK
    out.write(f"spec {path}  {digest}\nmodel {plan.model.id} (revision {plan.model.revision})\n")
    for i, p in enumerate(prompts):
        out.write(f"\n── prompt {i + 1}: {p}\n")
        if base is not None:
            out.write(f"baseline:    {base.texts[i].strip()}\n")
        out.write(f"constrained: {done.texts[i].strip()}\n")
    if effects:
        out.write("\neffect on generated text (mean readout at the concept's best layer, calibrated units):\n")
        out.write(effect_table(effects) + "\n")
    out.write("\nwhich constraints bound (corrections in calibrated units of each concept):\n")
    out.write(telemetry_table(rows) + "\n")
    return EXIT_OK
