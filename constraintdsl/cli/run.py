"""``cdsl explain``, ``run`` and ``job``: a spec resolved for a model, run beside the baseline, or fetched from NDIF.

Each verb's work is a function that returns an exit code (progress to ``err``, results to ``out``);
:func:`register` adds their command-line parsing to the ``cdsl`` app.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from constraintdsl.errors import SpecError, UserError
from constraintdsl.lang.loading import load
from constraintdsl.tables import UNIT_LABELS, text_table

from .common import (
    EXIT_FAILED,
    EXIT_OK,
    Dtype,
    DtypeOpt,
    ModelOpt,
    OutputFormat,
    StrictOpt,
    VariantOpt,
    read_job,
    read_prompts,
    save_job,
)

if TYPE_CHECKING:
    from constraintdsl.compiler.plan import Plan
    from constraintdsl.compiler.telemetry import TelemetryRow
    from constraintdsl.lang.spec import Spec
    from constraintdsl.run.readout import Effect

__all__ = ["explain_spec", "fetch_job", "read_prompts", "register", "run_spec"]


def load_spec_model(spec: Spec, name: str | None, dtype: str, err: TextIO, *, lazy: bool = False) -> Any:
    """The model a command runs ``spec`` on (``name``, else the spec's ``model``, else the embedded one);
    ``lazy``: its structure and tokenizer only, no weights (remote runs and ``explain``)."""
    from constraintdsl.models.loading import DEFAULT_MODEL, check_model_name, load_lazy, load_model

    chosen = name or spec.model or DEFAULT_MODEL
    check_model_name(chosen)
    if lazy:
        err.write(f"reading model {chosen} ({dtype}) without its weights…\n")
        err.flush()
        return load_lazy(chosen, dtype=dtype)
    err.write(f"loading model {chosen} ({dtype})…\n")
    err.flush()
    return load_model(chosen, dtype=dtype)


def _compile(
    path: str,
    model_name: str | None,
    dtype: str,
    err: TextIO,
    progress: bool = True,
    variant: str | None = None,
    *,
    lazy: bool = False,
    remote: bool | str = False,
) -> tuple[Plan, Any, str]:
    from constraintdsl.compiler.resolve import resolve
    from constraintdsl.lang.canonical import spec_hash

    spec = load(path)
    if variant is not None:
        from constraintdsl.lang.variants import select

        spec = select(spec, variant).spec
    elif spec.lets:
        from constraintdsl.lang.loading import spec_sources
        from constraintdsl.lang.variants import expand

        variants = expand(spec)
        let = spec.lets[0]
        raise SpecError.single(
            let.name_span,
            f"this spec is a sweep of {len(variants)} variants ({', '.join(x.name for x in spec.lets)}), "
            "and this command runs one",
            f"choose one with --variant {variants[0].name} (or compare them all: cdsl compare {path})",
            source=spec_sources(spec).get(let.name_span.path),
        )
    from constraintdsl.compiler.preflight import check_files

    digest = spec_hash(spec, check_files(spec).hashes)  # every concept file and pair set, before the model
    model = load_spec_model(spec, model_name, dtype, err, lazy=lazy)
    return resolve(spec, model, progress=progress, remote=remote), model, digest


def _warn(plan: Plan, err: TextIO, strict: bool) -> int:
    """The plan's warnings on ``err``; EXIT_FAILED when ``strict`` made them errors."""
    from constraintdsl.lang.loading import spec_sources

    from .common import emit_warnings

    return emit_warnings(plan.warnings, spec_sources(plan.spec), err=err, strict=strict)


def explain_spec(
    path: str,
    *,
    model_name: str | None,
    dtype: str,
    fmt: str,
    out: TextIO,
    err: TextIO,
    variant: str | None = None,
    strict: bool = False,
    remote: bool = False,
    host: str | None = None,
) -> int:
    """``cdsl explain``: the resolved plan for a model, without running it (one ``variant`` of a sweep);
    its warnings go to ``err`` (``strict``: they are errors, exit 1).

    The model is read without its weights.  A ``from pairs`` concept that is not cached yet (or a
    ``calibrated on`` one) needs forward passes: on NDIF with ``remote``/``host``, else here, loading the
    weights for it."""
    from constraintdsl.compiler.explain import plan_summary

    target: bool | str = (host or True) if remote or host else False
    if host is not None:
        from constraintdsl.compiler.preflight import check_host

        check_host(host)
    plan, _, digest = _compile(path, model_name, dtype, err, variant=variant, lazy=True, remote=target)
    if _warn(plan, err, strict) != EXIT_OK:
        return EXIT_FAILED
    if fmt == "json":
        summary = {"hash": digest, **plan_summary(plan), "diagnostics": [d.to_dict() for d in plan.warnings]}
        out.write(json.dumps(summary, indent=2, default=_finite) + "\n")
    else:
        out.write(plan.explain() + "\n")
    return EXIT_OK


def _finite(x: Any) -> Any:
    return None if isinstance(x, float) else str(x)


def telemetry_table(rows: list[TelemetryRow]) -> str:
    """A plain-text table of telemetry rows (one per statement × layer × site)."""
    head = [
        "statement",
        "layer",
        "site",
        "tokens",
        "bound",
        "units",
        "mean corr",
        "max corr",
        "‖Δh‖/‖h‖",
        "before → after",
    ]
    body = []
    for r in rows:
        body.append(
            [
                r.statement,
                str(r.layer),
                r.site,
                str(r.selected),
                f"{100 * r.binding_fraction:.0f}%",
                UNIT_LABELS.get(r.units, r.units),
                "-" if r.mean_correction is None else f"{r.mean_correction:.3f}",
                "-" if r.max_correction is None else f"{r.max_correction:.3f}",
                "-" if r.mean_relative is None else f"{r.mean_relative:.4f}",
                "-" if r.before is None or r.after is None else f"{r.before:+.2f} → {r.after:+.2f}",
            ]
        )
    return text_table(head, body)


def _effects(plan: Plan, model: Any, base: Any, done: Any, remote: bool | str = False) -> list[Effect]:
    """Readout shift of every calibrated concept the spec constrains, baseline → constrained (one pass,
    on NDIF with ``remote``)."""
    import math

    import torch

    from constraintdsl.run.readout import Effect, calibrated_readouts, concept_reads

    reads = concept_reads([plan])
    if not reads:
        return []
    ids = torch.cat([base.ids, done.ids])
    mask = torch.cat([base.attention_mask, done.attention_mask])
    values = calibrated_readouts(
        model, [(art, layer) for _, art, layer in reads], ids, mask, base.prompt_width, remote=remote
    )
    rows = int(base.ids.shape[0])
    out: list[Effect] = []
    for (name, art, layer), both in zip(reads, values, strict=True):
        b, c = both[:rows], both[rows:]
        ok = ~(b.isnan() | c.isnan())
        bm, cm = float(b[ok].mean()), float(c[ok].mean())
        assert art.calibration is not None
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
    return text_table(head, body)


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
    remote: bool = False,
    host: str | None = None,
    timeout: float | None = None,
    wait: bool = True,
    variant: str | None = None,
    strict: bool = False,
) -> int:
    """``cdsl run``: baseline and constrained generations side by side, plus telemetry (for one
    ``variant`` of a spec with ``let`` lines).

    Baseline and constrained run as two variants of one generation (one request on NDIF with
    ``remote``; ``host`` overrides the configured server).  With ``wait=False`` the request is only
    submitted: its id goes to ``out`` and ``cdsl job ID`` fetches the result later."""
    from constraintdsl.run import runner

    target: bool | str = (host or True) if remote or host else False
    if not wait and not target:
        raise UserError("--no-wait", "--no-wait needs --remote (only a server can hold a job)", None)
    if host is not None:
        from constraintdsl.compiler.preflight import check_host

        check_host(host)
    plan, model, digest = _compile(path, model_name, dtype, err, variant=variant, lazy=bool(target), remote=target)
    if _warn(plan, err, strict) != EXIT_OK:
        return EXIT_FAILED
    payloads = [None, plan.payload] if baseline else [plan.payload]
    progress = _progress(err) if target else None
    where = f" on NDIF ({host or 'configured host'})" if target else ""
    err.write(f"generating {max_new_tokens} tokens for {len(prompts)} prompt(s){where}…\n")
    if not wait:
        job = runner.submit(model, payloads, prompts, remote=target, max_new_tokens=max_new_tokens, progress=progress)
        save_job(
            job.job_id,
            {
                "kind": "run",
                "job": job.to_dict(),
                "spec": str(Path(path).resolve()),
                "model": model_name,
                "dtype": dtype,
                "prompts": prompts,
                "baseline": baseline,
                "max_new_tokens": max_new_tokens,
                "variant": variant,
                "remote": target,
            },
        )
        out.write(job.job_id + "\n")
        err.write(f"submitted; fetch the result with: cdsl job {job.job_id}\n")
        return EXIT_OK
    try:
        results = runner.generate_variants(
            model, payloads, prompts, max_new_tokens=max_new_tokens, remote=target, timeout=timeout, progress=progress
        )
    except UserError as e:
        raise _with_statement(plan, e) from None
    _report(path, plan, model, digest, prompts, max_new_tokens, results, baseline, fmt, out, remote=target)
    return EXIT_OK


def _report(
    path: str,
    plan: Plan,
    model: Any,
    digest: str,
    prompts: list[str],
    max_new_tokens: int,
    results: list[Any],
    baseline: bool,
    fmt: str,
    out: TextIO,
    *,
    remote: bool | str = False,
) -> None:
    from constraintdsl.compiler.telemetry import summarize

    base = results[0] if baseline else None
    done = results[-1]
    assert done.telemetry is not None
    rows = summarize(plan.entries, done.telemetry)
    effects = _effects(plan, model, base, done, remote) if base is not None else []
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
            "diagnostics": [d.to_dict() for d in plan.warnings],
        }
        out.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        return
    out.write(f"spec {path}  {digest}\nmodel {plan.model.id} (revision {plan.model.revision})\n")
    for i, p in enumerate(prompts):
        out.write(f"\n── prompt {i + 1}: {p}\n")
        if base is not None:
            out.write(f"baseline:    {base.texts[i].strip()}\n")
        out.write(f"constrained: {done.texts[i].strip()}\n")
    if effects:
        out.write("\neffect on generated text (mean readout at the concept's best layer, calibrated units):\n")
        out.write(effect_table(effects) + "\n")
    out.write("\nwhich constraints bound (corrections and projections in each row's units: cal = calibrated, raw):\n")
    out.write(telemetry_table(rows) + "\n")


def _progress(err: TextIO) -> Callable[[str], None]:
    def write(line: str) -> None:
        err.write(line + "\n")
        err.flush()

    return write


def _with_statement(plan: Plan, error: UserError) -> UserError:
    """A remote failure raised at a site names the statement(s) acting there, where it can."""
    from constraintdsl.models.ndif import RemoteFailure

    if not isinstance(error, RemoteFailure) or error.kind != "server":
        return error
    for site in plan.payload.get("sites", ()):
        if str(site["path"]) in error.detail:
            entries = [e for e in plan.entries if e.layer == site["layer"] and e.site == site["site"]]
            if entries:
                first = entries[0]
                return RemoteFailure(
                    error.kind,
                    str(first.span),
                    f"{error.message} (at {site['path']}, statement: {first.text})",
                    error.hint,
                    request_id=error.request_id,
                    detail=error.detail,
                )
    return error


def fetch_job(job_id: str, *, wait: float, fmt: str, out: TextIO, err: TextIO) -> int:
    """``cdsl job ID``: the result of a ``cdsl run --no-wait`` or ``cdsl compare --no-wait`` (a comparison is
    reported, and recorded, as ``cdsl compare`` does); exit 1 while it is still running."""
    from constraintdsl.run import runner

    record = read_job(job_id)
    if record.get("kind") == "compare":
        from .compare import collect_command

        return collect_command(record, wait=wait, fmt=fmt, out=out, err=err)
    job = runner.RemoteJob.from_dict(record["job"])
    target: bool | str = record.get("remote", True)  # jobs recorded before the host was kept: the configured one
    plan, model, digest = _compile(
        record["spec"], record["model"], record["dtype"], err, variant=record.get("variant"), lazy=True, remote=target
    )
    try:
        results = runner.fetch(model, job, wait=wait, progress=_progress(err))
    except UserError as e:
        raise _with_statement(plan, e) from None
    if results is None:
        err.write(f"job {job_id} is still running; try again later (or --wait SECONDS)\n")
        return EXIT_FAILED
    _report(
        record["spec"],
        plan,
        model,
        digest,
        record["prompts"],
        record["max_new_tokens"],
        results,
        record["baseline"],
        fmt,
        out,
        remote=target,
    )
    return EXIT_OK


# -- the command line ------------------------------------------------------------------------

FormatOpt = Annotated[OutputFormat, typer.Option("--format", help="text or json")]


def _explain_cmd(
    spec: Annotated[str, typer.Argument(help="spec file", metavar="SPEC")],
    model: ModelOpt = None,
    dtype: DtypeOpt = Dtype.float32,
    format: FormatOpt = OutputFormat.text,
    variant: VariantOpt = None,
    strict: StrictOpt = False,
    remote: Annotated[
        bool,
        typer.Option("--remote", help="extract concepts that need it on NDIF (the model's weights are never read)"),
    ] = False,
    host: Annotated[str | None, typer.Option("--host", help="NDIF server URL (implies --remote)")] = None,
) -> None:
    """Print the resolved plan (layers, raw and calibrated values per layer, positions, gates) and its
    warnings, without running the model (read without its weights)."""
    raise typer.Exit(
        explain_spec(
            spec,
            model_name=model,
            dtype=dtype.value,
            fmt=format.value,
            out=sys.stdout,
            err=sys.stderr,
            variant=variant,
            strict=strict,
            remote=remote,
            host=host,
        )
    )


def _run_cmd(
    spec: Annotated[str, typer.Argument(help="spec file", metavar="SPEC")],
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="a prompt (repeatable)")] = None,
    prompts: Annotated[str | None, typer.Option("--prompts", help="file: one prompt per line, or .jsonl")] = None,
    model: ModelOpt = None,
    dtype: DtypeOpt = Dtype.float32,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, max=4096)] = 32,
    no_baseline: Annotated[bool, typer.Option("--no-baseline", help="skip the unconstrained generation")] = False,
    format: FormatOpt = OutputFormat.text,
    remote: Annotated[
        bool,
        typer.Option("--remote", help="run on NDIF (host: --host, NDIF_HOST or nnsight's config; key: NDIF_API_KEY)"),
    ] = False,
    host: Annotated[str | None, typer.Option("--host", help="NDIF server URL (implies --remote)")] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0.1, help="seconds to wait for a remote run")
    ] = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="submit the remote run, print its job id and exit (see `cdsl job`)")
    ] = False,
    variant: VariantOpt = None,
    strict: StrictOpt = False,
) -> None:
    """Generate with the spec applied, beside the unconstrained baseline, and show which constraints bound."""
    if (prompt is None) == (prompts is None):
        raise UserError("--prompt", "give prompts with --prompt TEXT (repeatable) or --prompts FILE", None)
    texts = list(prompt) if prompt else read_prompts(str(prompts))
    raise typer.Exit(
        run_spec(
            spec,
            prompts=texts,
            model_name=model,
            dtype=dtype.value,
            max_new_tokens=max_new_tokens,
            baseline=not no_baseline,
            fmt=format.value,
            out=sys.stdout,
            err=sys.stderr,
            remote=remote,
            host=host,
            timeout=timeout,
            wait=not no_wait,
            variant=variant,
            strict=strict,
        )
    )


def _job_cmd(
    job_id: Annotated[
        str, typer.Argument(help="the id `cdsl run --no-wait` or `cdsl compare --no-wait` printed", metavar="ID")
    ],
    wait: Annotated[float, typer.Option("--wait", min=0, help="seconds to keep polling before giving up")] = 0.0,
    format: FormatOpt = OutputFormat.text,
) -> None:
    """Fetch the result of a remote run or comparison submitted with --no-wait (exit 1 while it runs); a
    comparison is reported, recorded and asserted as `cdsl compare` does."""
    raise typer.Exit(fetch_job(job_id, wait=wait, fmt=format.value, out=sys.stdout, err=sys.stderr))


def register(app: typer.Typer) -> None:
    """Add ``explain``, ``run`` and ``job`` to the ``cdsl`` app."""
    app.command("explain")(_explain_cmd)
    app.command("run")(_run_cmd)
    app.command("job")(_job_cmd)
