"""``cdsl concept build|show``: concept artifacts extracted from pair datasets, and shown (parsing and work)."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from constraintdsl.errors import UserError
from constraintdsl.files import check_output_file

from .common import Dtype

__all__ = ["concept_app", "register"]

concept_app = typer.Typer(
    name="concept",
    help="Extract concept directions from contrastive pairs, and inspect concept files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Method(str, Enum):
    mean = "mean"
    pca = "pca"


class Site(str, Enum):
    resid = "resid"
    attn = "attn"
    mlp = "mlp"


_RANGE = re.compile(r"^(-?\d+)\s*(?:-|–|\.\.)\s*(-?\d+)$")


def _parse_layers(text: str | None) -> list[int] | None:
    """``10-14``, ``10..14``, ``10–14``, ``10,12,14``, ``-4..-1`` or a mix (``1,4-6``); None means all.

    Negative indices count from the end; they are resolved against the model later.
    """
    if text is None or text.strip().lower() == "all":
        return None
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if re.fullmatch(r"-?\d+", part):
            out.append(int(part))
            continue
        match = _RANGE.match(part)
        if match is None:
            raise UserError(
                "--layers",
                f"cannot read layers '{part}'",
                "write a layer (12), a range (10-14 or -4..-1) or a comma list (10,12,14)",
            )
        lo, hi = int(match.group(1)), int(match.group(2))
        if (lo < 0) != (hi < 0) or lo > hi:
            raise UserError(
                "--layers",
                f"range '{part}' must go upwards with both ends on the same side of 0",
                "e.g. 10-14 or -4..-1",
            )
        out.extend(range(lo, hi + 1))
    return out


def _console() -> Console:
    """A console for tables: when the output is not a terminal (a pipe, a file) nothing is cut or wrapped,
    so paths and hashes stay whole on one line."""
    import sys

    if sys.stdout.isatty():
        return Console()
    return Console(width=100_000, soft_wrap=True, no_color=True, highlight=False)


def _is_artifact(path: Path) -> bool:
    """Whether ``path`` is missing or holds a concept artifact (which ``-o`` may replace with a new one)."""
    from constraintdsl.concepts.artifact import load_artifact

    if not path.exists() or path.is_dir():
        return True  # nothing to lose (a folder is refused by the output check)
    try:
        load_artifact(path)
    except UserError:
        return False
    return True


@concept_app.command("build")
def build(
    pairs: Annotated[str, typer.Option("--pairs", help="pair dataset (.yaml or .jsonl)", metavar="FILE")],
    model: Annotated[str, typer.Option("--model", help="model name, HF id or folder")] = "smollm2",
    layers: Annotated[
        str | None, typer.Option("--layers", help="layers: 10-14, 10..14, 10,12,14, -4..-1 (default all)")
    ] = None,
    method: Annotated[Method, typer.Option("--method", help="mean or pca")] = Method.mean,
    site: Annotated[Site, typer.Option("--site", help="resid, attn or mlp")] = Site.resid,
    output: Annotated[
        str | None,
        typer.Option(
            "-o",
            "--output",
            help="also write the artifact here (.safetensors); the cache is filled too",
            metavar="FILE",
        ),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="extract even if a cached artifact exists (and refresh the cache)")
    ] = False,
    dtype: Annotated[Dtype, typer.Option("--dtype", help="model dtype for the forward passes")] = Dtype.float32,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="sequences per forward pass")] = 16,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show a progress bar")] = True,
    remote: Annotated[
        bool,
        typer.Option(
            "--remote", help="extract on NDIF (host: --host, NDIF_HOST or nnsight's config; key: NDIF_API_KEY)"
        ),
    ] = False,
    host: Annotated[str | None, typer.Option("--host", help="NDIF server URL (implies --remote)")] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0.1, help="seconds to wait for each remote request")
    ] = None,
) -> None:
    """Extract and calibrate a concept; print the per-layer table; write the artifact (atomically) to the
    cache, where a spec's `from pairs` finds it, and to -o FILE when given.

    With --remote every forward pass runs on NDIF (one request per batch) and only per-batch sums and
    per-token projections come back; the artifact equals a local build and shares its cache entry.
    """
    from constraintdsl.concepts.artifact import artifact_hash, save_artifact
    from constraintdsl.concepts.build import build_concept, cache_path, concept_cache_key
    from constraintdsl.concepts.extract import layer_table, recommended_layers
    from constraintdsl.concepts.pairs import load_pairs
    from constraintdsl.models.loading import load_lazy, load_model

    chosen = _parse_layers(layers)
    if output is not None:
        if Path(output).suffix != ".safetensors":
            raise UserError("-o", f"'{output}' must end in .safetensors")
        check_output_file(output, "-o", replaceable=_is_artifact(Path(output)))
    if host is not None:
        from constraintdsl.compiler.preflight import check_host

        check_host(host)
    pair_set = load_pairs(pairs)
    # remote: the server holds the weights, so only the model's structure and tokenizer are read here
    loaded = (load_lazy if remote or host else load_model)(model, dtype=dtype.value)
    key, _ = concept_cache_key(pair_set, loaded, layers=chosen, site=site.value, method=method.value)
    cached = not no_cache and cache_path(key).exists()
    artifact = build_concept(
        pairs,
        loaded,
        pairs=pair_set,
        layers=chosen,
        site=site.value,
        method=method.value,
        use_cache=not no_cache,
        write_cache=True,
        batch_size=batch_size,
        progress=progress,
        remote=(host or True) if remote or host else False,
        timeout=timeout,
    )
    where = save_artifact(artifact, output, where="-o") if output is not None else Path(str(artifact.path))
    console = _console()
    console.print(layer_table(artifact))
    best = recommended_layers(artifact)
    console.print(f"recommended layers: {', '.join(map(str, best))} (highest held-out AUROC, then pole distance / std)")
    if output is not None:
        console.print(f"{'reused' if cached else 'wrote'} cache entry {artifact.path}")
    source = "reused from cache" if cached and output is None else "wrote"
    console.print(f"{source} {where}")
    console.print(artifact_hash(where), highlight=False)


@concept_app.command("show")
def show(
    file: Annotated[
        str, typer.Argument(help="concept file (.safetensors, .npy, .gguf, .svec, SAE folder)", metavar="FILE")
    ],
    feature: Annotated[int | None, typer.Option("--feature", min=0, help="an SAE folder: the feature")] = None,
) -> None:
    """Print a concept file's metadata and per-layer calibration table."""
    from rich.table import Table

    from constraintdsl.concepts.artifact import artifact_hash
    from constraintdsl.concepts.extract import layer_table, recommended_layers

    artifact = _open_imported(file, feature)
    console = _console()
    meta = Table(title=file, show_header=False)
    meta.add_column("key")
    meta.add_column("value")
    for key, value in sorted(artifact.metadata.items()):
        meta.add_row(key, value)
    if Path(file).is_file():
        meta.add_row("hash", artifact_hash(file))
    console.print(meta)
    if artifact.calibration is None:
        if artifact.norms is not None and artifact.layers is not None:
            norms = ", ".join(f"{layer}: {artifact.norm(layer):.4g}" for layer in artifact.layers)
            console.print(f"stored vector norm per layer (one `vec`, in raw units): {norms}")
        console.print(
            "a vector without calibration: only raw and vec units can be used with it "
            "(calibrate it: cdsl concept calibrate FILE --pairs PAIRS)"
        )
        return
    console.print(layer_table(artifact))
    console.print(f"recommended layers: {', '.join(map(str, recommended_layers(artifact)))}")


@concept_app.command("calibrate")
def calibrate(
    source: Annotated[
        str, typer.Argument(help="an imported vector: .gguf, .svec, .npy, or an SAE folder", metavar="SOURCE")
    ],
    pairs: Annotated[
        str, typer.Option("--pairs", help="pair dataset to calibrate on (.yaml or .jsonl)", metavar="FILE")
    ],
    feature: Annotated[int | None, typer.Option("--feature", min=0, help="an SAE folder: the feature")] = None,
    model: Annotated[str, typer.Option("--model", help="model name, HF id or folder")] = "smollm2",
    output: Annotated[
        str | None,
        typer.Option("-o", "--output", help="also write the artifact here (.safetensors)", metavar="FILE"),
    ] = None,
    dtype: Annotated[Dtype, typer.Option("--dtype", help="model dtype for the forward passes")] = Dtype.float32,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show a progress bar")] = True,
) -> None:
    """Calibrate an imported direction on a pair set (what `calibrated on` does in a spec) and print its
    per-layer table: pole distance, std, held-out AUROC.  The direction and its stored norms are kept."""
    from constraintdsl.concepts.artifact import artifact_hash, check_compatible, save_artifact
    from constraintdsl.concepts.build import calibrate_concept
    from constraintdsl.concepts.extract import layer_table, recommended_layers
    from constraintdsl.models.loading import load_model, model_identity

    if output is not None and Path(output).suffix != ".safetensors":
        raise UserError("-o", f"'{output}' must end in .safetensors")
    if output is not None and Path(output).exists():
        raise UserError("-o", f"'{output}' exists", "choose another name")
    imported = _open_imported(source, feature)
    loaded = load_model(model, dtype=dtype.value)
    check_compatible(imported, model_identity(loaded))
    artifact = calibrate_concept(imported, pairs, loaded, progress=progress)
    where = save_artifact(artifact, output) if output is not None else Path(str(artifact.path))
    console = _console()
    console.print(layer_table(artifact))
    console.print(f"recommended layers: {', '.join(map(str, recommended_layers(artifact)))}")
    console.print(f"wrote {where}")
    console.print(artifact_hash(where), highlight=False)


def _open_imported(source: str, feature: int | None) -> Any:
    from constraintdsl.concepts.interop import open_concept

    p = Path(source)
    kinds = {".gguf": "gguf", ".svec": "svec", ".npy": "file", ".safetensors": "file"}
    kind = "sae" if p.is_dir() else kinds.get(p.suffix.lower())
    if kind is None:
        raise UserError(
            source, f"cannot read '{p.suffix or p.name}' as a concept", "give a .gguf, .svec, .npy or an SAE folder"
        )
    if kind == "sae" and feature is None:
        raise UserError("--feature", "an SAE folder needs --feature N")
    if kind != "sae" and feature is not None:
        raise UserError("--feature", "--feature is for SAE folders")
    return open_concept(kind, source, feature=feature)


def register(app: typer.Typer) -> None:
    """Add ``concept build|show`` to the ``cdsl`` app."""
    app.add_typer(concept_app, name="concept")
