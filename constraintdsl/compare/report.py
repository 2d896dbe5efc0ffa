"""Render a :class:`~constraintdsl.compare.Comparison`: terminal tables, and a Markdown report folder
with PNG plots (the tax-versus-effect frontier, binding by layer, marginal tax per statement)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from constraintdsl.atomic import write_bytes_atomic
from constraintdsl.errors import UserError, clip
from constraintdsl.files import check_output_dir, os_error
from constraintdsl.tables import UNIT_LABELS, text_table

if TYPE_CHECKING:
    from .comparison import Comparison

__all__ = ["REPORT_FILES", "ab_table", "effect_axis", "load_table", "summary_table", "write_report"]


def _num(x: float | None, fmt: str = "+.4f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, fmt)


def _concepts(comparison: Comparison) -> list[str]:
    names: list[str] = []
    for row in comparison.rows:
        for name in row.effect:
            if name not in names:
                names.append(name)
    return names


def effect_axis(comparison: Comparison, concept: str | None = None) -> tuple[str, list[float]]:
    """The effect plotted against tax: the A/B shift (``concept`` None or ``"ab"``, when an A/B set was
    given), else a concept's readout shift (``concept``, or the first one read).  Returns its label and
    one value per row."""
    names = _concepts(comparison)
    has_ab = comparison.rows[0].ab is not None
    if concept == "ab" and not has_ab:
        raise UserError("--effect", "no A/B set was given, so there is no A/B effect to plot", "add --ab FILE")
    if concept is None and not has_ab and names:
        concept = names[0]
    if concept is not None and concept != "ab":
        if concept not in names:
            raise UserError(
                "--effect", f"no effect was read for concept '{concept}'", f"read: {', '.join(names) or 'none'}"
            )
        return (
            f"{concept} shift (calibrated units)",
            [r.effect.get(concept, {}).get("shift", math.nan) for r in comparison.rows],
        )
    if has_ab:
        behavior = comparison.rows[0].ab["behavior"] if comparison.rows[0].ab else ""
        return f"{behavior} A/B p(match) shift", [r.ab["shift"] if r.ab else math.nan for r in comparison.rows]
    return "no effect measured", [math.nan for _ in comparison.rows]


def summary_table(comparison: Comparison) -> str:
    """One line per spec/variant: tax, degrees of freedom, effects, A/B, and the heaviest load."""
    return text_table(*_summary_rows(comparison))


def _summary_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    names = _concepts(comparison)
    ab = comparison.rows[0].ab is not None
    head = ["spec", "ΔNLL/tok", "KL", "ppl ×", "entropy", "PR"]
    head += [f"{n} shift" for n in names]
    head += ["A/B p(match)"] if ab else []
    head += ["max binding"]
    body = []
    for r in comparison.rows:
        line = [
            r.label,
            _num(r.tax.get("delta_nll")),
            _num(r.tax.get("kl"), ".4f"),
            _num(r.tax.get("ppl_ratio"), ".4f"),
            _num(r.tax.get("entropy"), ".3f"),
            _num(r.dof.get("participation_ratio"), ".2f"),
        ]
        line += [_num(r.effect.get(n, {}).get("shift"), "+.3f") for n in names]
        if ab:
            line.append("-" if r.ab is None else _ab_cell(r.ab))
        loads = [s["binding_fraction"] for s in r.load]
        line.append(f"{100 * max(loads):.0f}%" if loads else "-")
        body.append(line)
    return head, body


def _ab_cell(ab: dict[str, Any]) -> str:
    """``p (shift ± se)``; a run recorded before standard errors were kept shows ``p (shift)``."""
    se = ab.get("se")
    spread = f" ± {se:.3f}" if isinstance(se, (int, float)) and not math.isnan(se) else ""
    return f"{ab['p_match']:.3f} ({ab['shift']:+.3f}{spread})"


def ab_table(comparison: Comparison) -> str:
    """One line per spec/variant: mean p(match), its paired shift from the baseline with standard error and
    95% interval, items moved up/down and items saturated (p < 0.05 or > 0.95)."""
    return text_table(*_ab_rows(comparison))


def _ab_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    first = comparison.rows[0].ab or {}
    score = first.get("score", "sum")
    head = ["spec", f"p(match) [{score}]", "shift", "SE", "95% interval", "up", "down", "saturated"]
    body = []
    for r in comparison.rows:
        ab = r.ab or {}
        ci = ab.get("ci95")
        items = ab.get("items")
        up, down, sat = ab.get("up"), ab.get("down"), ab.get("saturated")
        body.append(
            [
                r.label,
                _num(ab.get("p_match"), ".3f"),
                _num(ab.get("shift"), "+.3f"),
                _num(ab.get("se"), ".3f"),
                "-" if not ci or any(math.isnan(x) for x in ci) else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]",
                "-" if up is None else f"{up}/{items}",
                "-" if down is None else f"{down}/{items}",
                "-" if sat is None else f"{sat}/{items}",
            ]
        )
    return head, body


def _ab_items_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """One line per A/B item: where it is, its question, and p(match) under the baseline and every spec."""
    questions = comparison.inputs.get("ab_questions") or []
    head = ["item", "line", "question", *(r.label for r in comparison.rows)]
    values = [(r.ab or {}).get("p_items") or [] for r in comparison.rows]
    n = max((len(v) for v in values), default=0)
    body = []
    for i in range(n):
        q = questions[i] if i < len(questions) else {}
        body.append(
            [
                str(i + 1),
                str(q.get("line") or "-"),
                _clip(q.get("question", ""), 70),
                *(f"{v[i]:.3f}" if i < len(v) else "-" for v in values),
            ]
        )
    return head, body


def load_table(comparison: Comparison) -> str:
    """One line per statement of every spec/variant: binding, correction, marginal tax."""
    head, body = _load_rows(comparison)
    return text_table(head, body) if body else "(no statements)"


def _load_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    head = ["spec", "statement", "binding", "units", "mean corr", "marginal ΔNLL", "marginal KL"]
    body = []
    for r in comparison.rows[1:]:
        marginal = {(m["statement"], m["line"]): m for m in r.marginal}
        for s in r.load:
            m = marginal.get((s["statement"], s["line"]), {})
            units = str(s.get("units", "calibrated"))
            body.append(
                [
                    r.label,
                    s["statement"],
                    f"{100 * s['binding_fraction']:.0f}%",
                    UNIT_LABELS.get(units, units),
                    f"{s['mean_correction']:.3f}",
                    _num(m.get("delta_nll")),
                    _num(m.get("kl"), ".4f"),
                ]
            )
    return head, body


def _clip(text: str, n: int) -> str:
    return clip(" ".join(text.split()), n)


def generations_markdown(comparison: Comparison, limit: int | None = None) -> str:
    """Side-by-side generations: one table per prompt, one row per spec/variant."""
    parts = []
    for p, prompt in enumerate(comparison.prompts[:limit]):
        parts.append(f"**Prompt {p + 1}.** {_md(prompt)}\n")
        parts.append("| spec | generation |\n|---|---|")
        for r in comparison.rows:
            text = r.generations[p] if p < len(r.generations) else ""
            parts.append(f"| {_md(r.label)} | {_md(_clip(text, 400))} |")
        parts.append("")
    return "\n".join(parts)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_table(head: list[str], body: list[list[str]]) -> str:
    if not body:
        return "(no statements)"
    rows = ["| " + " | ".join(_md(c) for c in row) + " |" for row in [head, *body]]
    return "\n".join([rows[0], "|" + "---|" * len(head), *rows[1:]])


def _frontier(comparison: Comparison, path: IO[bytes], concept: str | None) -> None:
    import matplotlib.pyplot as plt

    label, effect = effect_axis(comparison, concept)
    tax = [r.tax.get("delta_nll", math.nan) for r in comparison.rows]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(comparison.rows):
        groups.setdefault(r.source or "baseline", []).append(i)
    errors = _ab_errors(comparison) if label.endswith("A/B p(match) shift") else None
    for source, idx in groups.items():
        xs, ys = [tax[i] for i in idx], [effect[i] for i in idx]
        style = "o-" if len(idx) > 1 else "o"
        name = "baseline" if source == "baseline" else Path(source).stem
        if errors is not None:
            ax.errorbar(
                xs,
                ys,
                yerr=[[errors[i][0] for i in idx], [errors[i][1] for i in idx]],
                fmt=style,
                label=name,
                markersize=6,
                capsize=3,
            )
        else:
            ax.plot(xs, ys, style, label=name, markersize=6)
        for i in idx:
            r = comparison.rows[i]
            ax.annotate(
                r.variant or r.label, (tax[i], effect[i]), textcoords="offset points", xytext=(5, 4), fontsize=8
            )
    ax.axhline(0, color="0.8", lw=0.8)
    ax.axvline(0, color="0.8", lw=0.8)
    ax.set_xlabel("tax: ΔNLL per token on the reference corpus (nats)")
    ax.set_ylabel("effect: " + label)
    ax.set_title(f"Alignment tax curve — {comparison.model}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _ab_errors(comparison: Comparison) -> list[tuple[float, float]] | None:
    """Per row, the distances from the A/B shift down and up to its 95% interval's ends (0 for the baseline);
    None when a row has no interval (a run recorded before intervals were kept)."""
    out = []
    for r in comparison.rows:
        ci = (r.ab or {}).get("ci95")
        if not ci or any(math.isnan(x) for x in ci):
            if r is comparison.rows[0]:
                out.append((0.0, 0.0))
                continue
            return None
        shift = float((r.ab or {})["shift"])
        out.append((max(0.0, shift - ci[0]), max(0.0, ci[1] - shift)))
    return out


def _binding(comparison: Comparison, path: IO[bytes]) -> bool:
    import matplotlib.pyplot as plt

    lines = [(r, s) for r in comparison.rows[1:] for s in r.load if s["layers"]]
    if not lines:
        return False
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=120)
    for r, s in lines[:20]:
        layers = sorted({x["layer"] for x in s["layers"]})
        frac = [max(x["binding_fraction"] for x in s["layers"] if x["layer"] == layer) for layer in layers]
        ax.plot(layers, [100 * f for f in frac], "o-", markersize=3, label=_clip(f"{r.label}: {s['statement']}", 60))
    ax.set_xlabel("layer")
    ax.set_ylabel("binding (% of selected tokens moved)")
    ax.set_ylim(-2, 102)
    ax.set_title("Binding by layer (generation)")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return True


def _marginal(comparison: Comparison, path: IO[bytes]) -> bool:
    import matplotlib.pyplot as plt

    bars = [(f"{r.label}: {m['statement']}", m["delta_nll"]) for r in comparison.rows[1:] for m in r.marginal]
    if not bars:
        return False
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.32 * len(bars)), dpi=120)
    ax.barh([_clip(b[0], 70) for b in bars], [b[1] for b in bars], color="tab:orange")
    ax.invert_yaxis()
    ax.axvline(0, color="0.5", lw=0.8)
    ax.set_xlabel("ΔNLL per token removed by leaving the statement out")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title("Marginal tax per statement")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return True


REPORT_FILES: tuple[str, ...] = ("report.md", "comparison.json", "frontier.png", "binding.png", "marginal.png")


def write_report(comparison: Comparison, folder: str | Path, *, concept: str | None = None, command: str = "") -> Path:
    """Write ``report.md``, ``comparison.json`` and the PNG plots (:data:`REPORT_FILES`) into ``folder``.

    The folder is created when missing; in an existing folder only those files are written, each
    atomically, and nothing else there is touched (a path that is a file is refused).  Everything is
    rendered in memory first, so a failure writes nothing."""
    import matplotlib

    matplotlib.use("Agg")
    target = check_output_dir(folder, "--report", REPORT_FILES)
    files: dict[str, bytes] = {}
    frontier = io.BytesIO()
    _frontier(comparison, frontier, concept)
    files["frontier.png"] = frontier.getvalue()
    binding, marginal = io.BytesIO(), io.BytesIO()
    has_binding = _binding(comparison, binding)
    has_marginal = _marginal(comparison, marginal)
    if has_binding:
        files["binding.png"] = binding.getvalue()
    if has_marginal:
        files["marginal.png"] = marginal.getvalue()
    files["comparison.json"] = (json.dumps(comparison.to_dict(), indent=2, allow_nan=True) + "\n").encode()
    files["report.md"] = _markdown(comparison, command, has_binding, has_marginal).encode()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, target, "create the report folder", where="--report") from None
    for name in REPORT_FILES:  # report.md last: once it is there, everything it links to is too
        if name in files and name != "report.md":
            write_bytes_atomic(target / name, files[name], where="--report")
    write_bytes_atomic(target / "report.md", files["report.md"], where="--report")
    return target


def _ab_markdown(comparison: Comparison) -> list[str]:
    ab = comparison.rows[0].ab or {}
    score = ab.get("score", "sum")
    rule = (
        "the mean log-probability of its scored tokens"
        if score == "mean"
        else "the summed log-probability of its scored tokens"
    )
    scored = "the letter (A or B) after '('" if ab.get("format") == "letters" else "the whole answer"
    out = [
        "## A/B behavior set",
        "",
        f"Each answer is scored by {rule} ({scored}); p(match) = exp(s_match) / (exp(s_a) + exp(s_b)) per item. "
        "The shift is the mean over items of (p under the spec − p under the baseline); SE is its paired standard "
        "error, the interval a 95% Student-t interval; up/down count items whose p(match) rose/fell; saturated "
        "items have p(match) < 0.05 or > 0.95.",
        "",
        _markdown_table(*_ab_rows(comparison)),
        "",
    ]
    head, body = _ab_items_rows(comparison)
    if body:
        out += ["### p(match) per item", "", _markdown_table(head, body), ""]
    return out


def _markdown(comparison: Comparison, command: str, has_binding: bool, has_marginal: bool) -> str:
    info = comparison.inputs
    out = [f"# Comparison on {comparison.model}", ""]
    if command:
        out += ["```", command, "```", ""]
    out += [
        f"- model: `{comparison.model}` revision `{comparison.revision}`",
        f"- inputs: `{comparison.inputs_hash}` — {info['prompts']} prompts × {info['max_new_tokens']} new tokens; "
        f"corpus {info['corpus_tokens_used']} of {info['corpus_tokens_total']} tokens in windows of "
        f"{info['corpus_window']}; A/B items {info['ab_items']}",
        f"- forward passes: {json.dumps(comparison.passes)}; seconds: "
        + ", ".join(f"{k} {v:.1f}" for k, v in comparison.seconds.items()),
    ]
    if comparison.run_id:
        out.append(f"- run store id: `{comparison.run_id}`")
    for w in comparison.warnings:
        out += ["", f"> **warning** ({w.span}): {_md(w.message)}" + (f" — {_md(w.hint)}" if w.hint else "")]
    out += ["", "## Summary", "", _markdown_table(*_summary_rows(comparison)), ""]
    out += [
        "ΔNLL/tok, KL (baseline ‖ constrained) and entropy are per predicted token of the reference corpus, "
        "teacher-forced; PR is the participation ratio of the final hidden states over the corpus "
        f"(baseline {comparison.rows[0].dof.get('participation_ratio', math.nan):.2f}). "
        "Shifts are read on the generated text at each concept's best layer, in calibrated units.",
        "",
        "![tax versus effect](frontier.png)",
        "",
    ]
    if comparison.rows[0].ab is not None:
        out += _ab_markdown(comparison)
    out += [
        "## Load and marginal tax",
        "",
        _markdown_table(*_load_rows(comparison)),
        "",
    ]
    if has_binding:
        out += ["![binding by layer](binding.png)", ""]
    if has_marginal:
        out += ["![marginal tax](marginal.png)", ""]
    out += ["## Specs", ""]
    for r in comparison.rows[1:]:
        out += [f"### {r.label}", "", f"`{r.key}`", "", "```", r.spec_text.rstrip(), "```", ""]
    out += ["## Generations", "", generations_markdown(comparison)]
    return "\n".join(out) + "\n"
