"""``cdsl export``: a spec of residual steers, or a concept, as a llama.cpp control vector (parsing and work).

A spec needs the model (calibrated units resolve to raw per layer); a concept file does not.  What can be
exported and why the rest cannot is in :mod:`constraintdsl.compiler.export` and docs/interop.md.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TextIO

import numpy as np
import typer

from constraintdsl.errors import SpecError, UserError

from .common import EXIT_OK, Dtype, DtypeOpt, ModelOpt, OutputFormat, VariantOpt

__all__ = ["export", "register"]

SPEC_SUFFIXES = (".cdsl", ".yaml", ".yml")
CONCEPT_SUFFIXES = {".safetensors": "file", ".npy": "file", ".gguf": "gguf", ".svec": "svec"}


class Target(str, Enum):
    gguf = "gguf"


class Unit(str, Enum):
    calibrated = "calibrated"
    vec = "vec"
    raw = "raw"


def _check_output(output: str, source: str, force: bool) -> Path:
    """The output path, checked before any model work: a ``.gguf`` in an existing folder, not the input,
    and not an existing file unless ``--force``."""
    out = Path(output)
    if out.suffix.lower() != ".gguf":
        raise UserError("-o", f"'{output}' must end in .gguf (a llama.cpp control vector)")
    if not out.parent.is_dir():
        raise UserError("-o", f"folder '{out.parent}' does not exist", "create it first")
    if out.exists() and out.resolve() == Path(source).resolve():
        raise UserError("-o", "the output would replace the input", "write the control vector elsewhere")
    if out.is_dir():
        raise UserError("-o", f"'{output}' is a folder")
    if out.exists() and not force:
        raise UserError("-o", f"'{output}' exists", "pass --force to replace it, or choose another name")
    return out


def _parse_layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    from .concept import _parse_layers as parse

    return parse(text)


def export(
    source: str,
    *,
    output: str,
    variant: str | None,
    model_name: str | None,
    dtype: str,
    unit: str | None,
    layers: str | None,
    feature: int | None,
    model_hint: str | None,
    force: bool,
    fmt: str,
    out: TextIO,
    err: TextIO,
) -> int:
    """``cdsl export``: write ``source`` (a spec, or a concept) as a llama.cpp control vector at ``output``."""
    from constraintdsl.compiler.export import provenance
    from constraintdsl.concepts.interop import write_control_vector

    target = _check_output(output, source, force)
    p = Path(source)
    if p.suffix.lower() in SPEC_SUFFIXES:
        for flag, given in (("--unit", unit), ("--layers", layers), ("--feature", feature)):
            if given is not None:
                raise UserError(flag, f"{flag} is for exporting a concept; a spec says its own units and layers")
        vectors, hint, meta, note = _from_spec(source, variant, model_name, dtype, err)
    elif p.suffix.lower() in CONCEPT_SUFFIXES or p.is_dir():
        if variant is not None:
            raise UserError("--variant", "--variant is for specs with `let` lines, not concept files")
        vectors, hint, meta, note = _from_concept(source, unit, _parse_layers(layers), feature)
    else:
        raise UserError(
            source,
            f"cannot export '{p.suffix or p.name}'",
            "export a spec (.cdsl, .yaml) or a concept (.safetensors, .npy, .gguf, .svec, or an SAE folder "
            "with --feature)",
        )
    hint = model_hint or hint
    if not hint:
        raise UserError(
            "--model-hint", "the concept does not say which model type it is for", "pass --model-hint llama"
        )
    write_control_vector(target, vectors, model_hint=hint, metadata=provenance(meta))
    layer_list = sorted(vectors)
    norms = {str(k): float(np.linalg.norm(np.asarray(v, dtype=np.float64))) for k, v in vectors.items()}
    summary = {"output": str(target), "model_hint": hint, "layers": layer_list, "norms": norms, "note": note}
    if fmt == "json":
        out.write(json.dumps(summary, indent=2) + "\n")
        return EXIT_OK
    out.write(f"wrote {target}: {len(layer_list)} direction(s), layers {_ranges(layer_list)}, model type {hint}\n")
    for layer in layer_list:
        out.write(f"  direction.{layer}  norm {norms[str(layer)]:.4g}\n")
    out.write(f"{note}\n")
    out.write(f"llama.cpp: llama-cli -m MODEL.gguf --control-vector-scaled {target}:1\n")
    return EXIT_OK


def _ranges(layers: list[int]) -> str:
    parts: list[list[int]] = []
    for layer in layers:
        if parts and parts[-1][1] == layer - 1:
            parts[-1][1] = layer
        else:
            parts.append([layer, layer])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)


def _from_spec(
    path: str, variant: str | None, model_name: str | None, dtype: str, err: TextIO
) -> tuple[dict[int, Any], str, dict[str, str], str]:
    from constraintdsl.compiler.export import export_problems, plan_vectors
    from constraintdsl.compiler.resolve import resolve
    from constraintdsl.lang.canonical import spec_hash
    from constraintdsl.lang.loading import concept_hashes, load, spec_sources
    from constraintdsl.lang.variants import expand, select
    from constraintdsl.models.loading import DEFAULT_MODEL, load_model

    spec = load(path)
    if variant is not None:
        spec = select(spec, variant).spec
    elif spec.lets:
        names = ", ".join(v.name for v in expand(spec)[:6])
        raise UserError(
            "--variant",
            "this spec has variants; a control vector is one of them",
            f"e.g. --variant {names.split(', ')[0]} (of {names}…)",
        )
    problems = export_problems(spec)
    if problems:
        raise SpecError(problems, spec_sources(spec))
    digest = spec_hash(spec, concept_hashes(spec))
    chosen = model_name or spec.model or DEFAULT_MODEL
    err.write(f"loading model {chosen} ({dtype})…\n")
    err.flush()
    model = load_model(chosen, dtype=dtype)
    plan = resolve(spec, model, progress=False)
    vectors = plan_vectors(plan)
    meta = {"spec": spec.name or Path(path).name, "spec_hash": digest, "model_id": plan.model.id}
    if variant is not None:
        meta["variant"] = variant
    note = "at scale 1 llama.cpp adds what the spec's steers add, on every token (docs/interop.md)"
    return vectors, plan.model.architecture, meta, note


def _from_concept(
    path: str, unit: str | None, layers: list[int] | None, feature: int | None
) -> tuple[dict[int, Any], str, dict[str, str], str]:
    from constraintdsl.compiler.export import artifact_vectors
    from constraintdsl.concepts.interop import open_concept

    p = Path(path)
    source = "sae" if p.is_dir() else CONCEPT_SUFFIXES[p.suffix.lower()]
    if source == "sae" and feature is None:
        raise UserError("--feature", "an SAE folder needs --feature N (the decoder row to export)")
    if source != "sae" and feature is not None:
        raise UserError("--feature", "--feature is for SAE folders")
    artifact = open_concept(source, path, feature=feature)
    vectors, used = artifact_vectors(artifact, unit=unit, layers=layers)
    hint = artifact.metadata.get("model_hint") or artifact.metadata.get("architecture") or ""
    meta = {"concept": artifact.concept, "unit": used}
    if artifact.model_id:
        meta["model_id"] = artifact.model_id
    what = {
        "calibrated": "one pole distance (calibrated unit)",
        "vec": "the stored vector",
        "raw": "the unit direction (1 raw)",
    }[used]
    note = f"each direction is {what}; --control-vector-scaled FILE:s steers by s of it at these layers"
    return vectors, hint, meta, note


def _export_cmd(
    source: Annotated[
        str, typer.Argument(help="a spec (.cdsl, .yaml) or a concept file or SAE folder", metavar="SOURCE")
    ],
    to: Annotated[Target, typer.Option("--to", help="output format: gguf (a llama.cpp control vector)")],
    output: Annotated[str, typer.Option("-o", "--output", help="the .gguf file to write", metavar="FILE")],
    variant: VariantOpt = None,
    model: ModelOpt = None,
    dtype: DtypeOpt = Dtype.float32,
    unit: Annotated[
        Unit | None,
        typer.Option("--unit", help="a concept: one calibrated unit (default when calibrated), vec or raw per layer"),
    ] = None,
    layers: Annotated[str | None, typer.Option("--layers", help="a concept: layers to write (default all ≥ 1)")] = None,
    feature: Annotated[int | None, typer.Option("--feature", min=0, help="an SAE folder: the feature to write")] = None,
    model_hint: Annotated[
        str | None, typer.Option("--model-hint", help="the model type to record (default: the concept's/model's)")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing output file")] = False,
    format: Annotated[OutputFormat, typer.Option("--format", help="text or json")] = OutputFormat.text,
) -> None:
    """Write a spec of residual steers, or a concept, as a llama.cpp control vector (GGUF)."""
    del to  # one format so far
    raise typer.Exit(
        export(
            source,
            output=output,
            variant=variant,
            model_name=model,
            dtype=dtype.value,
            unit=None if unit is None else unit.value,
            layers=layers,
            feature=feature,
            model_hint=model_hint,
            force=force,
            fmt=format.value,
            out=sys.stdout,
            err=sys.stderr,
        )
    )


def register(app: typer.Typer) -> None:
    """Add ``export`` to the ``cdsl`` app."""
    app.command("export")(_export_cmd)
