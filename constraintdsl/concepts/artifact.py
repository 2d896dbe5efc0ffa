"""Concept artifacts: safetensors files holding unit directions, calibration and provenance.

Layout of a ``.safetensors`` concept file (one row per selected layer, in ascending layer order):

========================  ===========  ======================================================
tensor                    shape/dtype  meaning
========================  ===========  ======================================================
``directions``            [L, H] f32   unit direction per layer
``layers``                [L] i64      absolute (0-based) layer index of each row
``pos_mean``/``neg_mean`` [L] f32      mean projection of the positive / negative pole's train tokens
``scale``                 [L] f32      ``pos_mean - neg_mean``: one calibrated unit in raw units
``mean``/``std``          [L] f32      mean and standard deviation of all train token projections
``percentiles``           [L, 9] f32   percentiles (levels in metadata) of the token projections of the
                                       split named by metadata ``calibration_split``: ``test`` (held
                                       out, both poles) or, for a dataset without one, ``train``
``auroc``                 [L] f32      held-out AUROC of per-example mean projections (NaN: no test split)
``norms``                 [L] f32      optional: the norm of the stored vector at each layer, for a direction
                                       imported from another tool (the ``vec`` unit: times that vector)
========================  ===========  ======================================================

String metadata (the safetensors header's ``__metadata__``) records the model id and revision, hidden size,
architecture, site, method, dataset sha256, concept name, token selection, percentile levels, calibration
split and tool version.  An artifact without ``calibration_split`` (written before it existed) has train
percentiles.

A ``.npy`` file holding one raw vector ``[H]`` is accepted too; it carries no calibration, so only raw units
(and ``vec``, times the vector itself) can be used with it.  Nothing else is loaded: a concept file can never
run code (no pickle, no ``torch.load``).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from constraintdsl._version import __version__
from constraintdsl.atomic import write_bytes_atomic
from constraintdsl.errors import Span, SpecError, UserError
from constraintdsl.files import read_bytes

if TYPE_CHECKING:
    from constraintdsl.models.loading import ModelIdentity

__all__ = [
    "CALIBRATION_KEYS",
    "FORMAT_VERSION",
    "PERCENTILE_LEVELS",
    "REQUIRED_METADATA",
    "Calibration",
    "ConceptArtifact",
    "artifact_hash",
    "check_compatible",
    "load_artifact",
    "save_artifact",
    "tool_version",
]

FORMAT_VERSION = "1"
PERCENTILE_LEVELS: tuple[float, ...] = (1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0)
CALIBRATION_KEYS: tuple[str, ...] = ("pos_mean", "neg_mean", "scale", "mean", "std", "percentiles", "auroc")
REQUIRED_METADATA: tuple[str, ...] = (
    "format",
    "concept",
    "model_id",
    "model_revision",
    "architecture",
    "hidden_size",
    "site",
    "method",
    "dataset_sha256",
    "token_selection",
    "percentile_levels",
    "tool_version",
)
_NORM_TOLERANCE = 1e-3
_SUFFIXES_REFUSED = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib")

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


def tool_version() -> str:
    """``constraintdsl.__version__``."""
    return __version__


@dataclass(frozen=True, eq=False)
class Calibration:
    """Per-layer statistics of projections onto the unit direction (raw units), one entry per artifact row."""

    pos_mean: F32
    neg_mean: F32
    scale: F32
    mean: F32
    std: F32
    percentiles: F32  # [L, len(levels)]
    auroc: F32
    levels: tuple[float, ...] = PERCENTILE_LEVELS

    def arrays(self) -> dict[str, F32]:
        """The calibration tensors by their file names."""
        return {k: getattr(self, k) for k in CALIBRATION_KEYS}


@dataclass(frozen=True, eq=False)
class ConceptArtifact:
    """A concept for one model and site: unit directions per layer, calibration (if any) and metadata.

    ``layers`` is None for a raw ``.npy`` vector, which applies at any layer (raw units only).
    """

    directions: F32  # [L, H]
    layers: tuple[int, ...] | None
    calibration: Calibration | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    path: str | None = None
    norms: F32 | None = None  # [L]: the stored vector's norm per row (imported vectors, .npy); None: extracted

    def norm(self, layer: int) -> float | None:
        """The stored vector's norm at ``layer`` (what one ``vec`` is in raw units), or None when the
        concept was extracted here (it stores a unit direction only)."""
        return None if self.norms is None else float(self.norms[self.row(layer)])

    @property
    def hidden_size(self) -> int:
        """Width ``H`` of the directions."""
        return int(self.directions.shape[1])

    @property
    def concept(self) -> str:
        """The concept's name (from the pair dataset), or the file stem."""
        return self.metadata.get("concept") or (Path(self.path).stem if self.path else "concept")

    @property
    def model_id(self) -> str | None:
        """Model id the artifact was extracted from (None for a raw vector)."""
        return self.metadata.get("model_id")

    @property
    def raw_only(self) -> bool:
        """True when there is no calibration: only raw units can be used."""
        return self.calibration is None

    def row(self, layer: int) -> int:
        """Row of ``layer`` in the arrays; a layer the artifact lacks is a ``KeyError``."""
        if self.layers is None:
            return 0
        try:
            return self.layers.index(layer)
        except ValueError:
            raise KeyError(layer) from None

    def direction(self, layer: int) -> F32:
        """The unit direction ``[H]`` at ``layer``."""
        row: F32 = self.directions[self.row(layer)]
        return row

    def to_raw(self, layer: int, value: float) -> float:
        """A calibrated value at ``layer`` in raw units: ``neg_mean + value * scale``."""
        if self.calibration is None:
            raise ValueError(f"concept '{self.concept}' has no calibration: only raw units can be used")
        r = self.row(layer)
        return float(self.calibration.neg_mean[r]) + value * float(self.calibration.scale[r])


# --------------------------------------------------------------------------------------------- errors


def _fail(path: str, message: str, hint: str | None = None, span: Span | None = None) -> UserError:
    if span is not None:
        return SpecError.single(span, f"{path}: {message}", hint)
    return UserError(path, message, hint)


# ----------------------------------------------------------------------------------------------- save


def _tensors(artifact: ConceptArtifact) -> dict[str, np.ndarray[Any, Any]]:
    layers = artifact.layers if artifact.layers is not None else ()
    out: dict[str, np.ndarray[Any, Any]] = {
        "directions": np.ascontiguousarray(artifact.directions, dtype=np.float32),
        "layers": np.asarray(layers, dtype=np.int64),
    }
    if artifact.calibration is not None:
        for key, value in artifact.calibration.arrays().items():
            out[key] = np.ascontiguousarray(value, dtype=np.float32)
    if artifact.norms is not None:
        out["norms"] = np.ascontiguousarray(artifact.norms, dtype=np.float32)
    return out


_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}


def _serialize(tensors: Mapping[str, np.ndarray[Any, Any]], metadata: Mapping[str, str]) -> bytes:
    """safetensors bytes with a deterministic layout (sorted names and metadata keys).

    The ``safetensors`` writer orders metadata through a hash map, so equal artifacts could get different
    bytes (and hashes); this writes the same documented format, byte for byte reproducibly.
    """
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": _DTYPES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


def save_artifact(artifact: ConceptArtifact, path: str | Path, *, where: str | None = None) -> Path:
    """Write ``artifact`` as safetensors at ``path`` atomically (temp file beside it, then ``os.replace``)."""
    target = Path(path)
    if target.suffix != ".safetensors":
        raise UserError(str(target), "concept artifacts are written as .safetensors files")
    if artifact.layers is None:
        raise UserError(str(target), "a raw vector without layers cannot be saved as a concept artifact")
    metadata = {str(k): str(v) for k, v in artifact.metadata.items()}
    data = _serialize(_tensors(artifact), metadata)
    write_bytes_atomic(target, data, parents=True, where=where)
    return target


def artifact_hash(path: str | Path) -> str:
    """``sha256:<hex>`` of the file's bytes (what ``cdsl hash`` folds into a spec's hash)."""
    return "sha256:" + hashlib.sha256(read_bytes(path, "concept")).hexdigest()


# ----------------------------------------------------------------------------------------------- load


def _read(path: str, span: Span | None) -> bytes:
    return read_bytes(path, "concept", at=span)


def _parse_safetensors(path: str, data: bytes, span: Span | None) -> tuple[dict[str, Any], dict[str, str]]:
    """Tensors and metadata of safetensors bytes, after checking the header ourselves (clear errors)."""
    from safetensors.numpy import load

    hint = "expected a .safetensors concept file written by `cdsl concept build`"
    if len(data) < 8:
        raise _fail(path, f"not a safetensors file: only {len(data)} bytes", hint, span)
    header_len = int.from_bytes(data[:8], "little")
    if header_len <= 0 or header_len > len(data) - 8:
        raise _fail(path, "not a safetensors file (bad header length; truncated or another format)", hint, span)
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _fail(path, "not a safetensors file (its header is not JSON)", hint, span) from None
    if not isinstance(header, dict):
        raise _fail(path, "not a safetensors file (its header is not a JSON object)", hint, span)
    raw_meta = header.get("__metadata__") or {}
    if not isinstance(raw_meta, dict) or not all(isinstance(v, str) for v in raw_meta.values()):
        raise _fail(path, "safetensors metadata must map strings to strings", hint, span)
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise _fail(path, f"safetensors header entry '{name}' is malformed", hint, span)
        end = max(end, offsets[1])
    if 8 + header_len + end > len(data):
        raise _fail(
            path,
            f"file is truncated: tensors need {8 + header_len + end} bytes, the file has {len(data)}",
            span=span,
        )
    try:
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own error types (and TypeError on unsupported dtypes)
        raise _fail(path, f"cannot read safetensors tensors: {exc}", hint, span) from None
    return tensors, {str(k): str(v) for k, v in raw_meta.items()}


def _unit_rows(path: str, directions: np.ndarray[Any, Any], span: Span | None) -> F32:
    out = np.array(directions, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        bad = sorted({int(i) for i in np.argwhere(~np.isfinite(out))[:, 0]})
        raise _fail(path, f"direction row(s) {bad} contain NaN or infinite values", span=span)
    norms = np.linalg.norm(out.astype(np.float64), axis=1)
    for i, norm in enumerate(norms):
        if norm < 1e-12:
            raise _fail(path, f"direction row {i} is the zero vector (no direction)", span=span)
        if abs(norm - 1.0) > _NORM_TOLERANCE:
            raise _fail(
                path,
                f"direction row {i} has norm {norm:.6g}, not a unit vector",
                "concept artifacts store unit directions; use a .npy file for a raw vector",
                span,
            )
        if abs(norm - 1.0) > 1e-6:
            out[i] = (out[i].astype(np.float64) / norm).astype(np.float32)
    return out


def _load_safetensors(path: str, span: Span | None) -> ConceptArtifact:
    tensors, meta = _parse_safetensors(path, _read(path, span), span)
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise _fail(path, f"missing metadata: {', '.join(missing)}", "rebuild it with `cdsl concept build`", span)
    if meta["format"] != FORMAT_VERSION:
        raise _fail(path, f"unsupported concept format version {meta['format']!r} (expected {FORMAT_VERSION})")
    known = {"directions", "layers", "norms", *CALIBRATION_KEYS}
    unknown = sorted(set(tensors) - known)
    if unknown:
        raise _fail(path, f"unexpected tensor(s): {', '.join(unknown)}", span=span)
    for key in ("directions", "layers"):
        if key not in tensors:
            raise _fail(path, f"missing tensor '{key}'", span=span)
    directions, layers = tensors["directions"], tensors["layers"]
    if directions.ndim != 2 or directions.shape[0] == 0 or directions.shape[1] == 0:
        raise _fail(path, f"'directions' must have shape [layers, hidden], got {list(directions.shape)}", span=span)
    if not np.issubdtype(directions.dtype, np.floating):
        raise _fail(path, f"'directions' must be floating point, got {directions.dtype}", span=span)
    n, h = directions.shape
    if layers.shape != (n,) or not np.issubdtype(layers.dtype, np.integer):
        raise _fail(path, f"'layers' must be {n} integers, got {layers.dtype} {list(layers.shape)}", span=span)
    layer_list = tuple(int(x) for x in layers)
    if any(x < 0 for x in layer_list) or len(set(layer_list)) != n:
        raise _fail(path, f"'layers' must be distinct non-negative indices, got {list(layer_list)}", span=span)
    try:
        declared = int(meta["hidden_size"])
    except ValueError:
        raise _fail(path, f"metadata hidden_size {meta['hidden_size']!r} is not an integer", span=span) from None
    if declared != h:
        raise _fail(path, f"metadata says hidden size {declared} but the directions have width {h}", span=span)
    try:
        levels = tuple(float(x) for x in json.loads(meta["percentile_levels"]))
    except (ValueError, TypeError):
        raise _fail(path, "metadata percentile_levels is not a JSON list of numbers", span=span) from None
    unit = _unit_rows(path, directions, span)

    present = [k for k in CALIBRATION_KEYS if k in tensors]
    calibration: Calibration | None = None
    if present:
        absent = [k for k in CALIBRATION_KEYS if k not in tensors]
        if absent:
            raise _fail(path, f"incomplete calibration: missing {', '.join(absent)}", span=span)
        arrays: dict[str, F32] = {}
        for key in CALIBRATION_KEYS:
            value = tensors[key]
            want: tuple[int, ...] = (n, len(levels)) if key == "percentiles" else (n,)
            if value.shape != want or not np.issubdtype(value.dtype, np.floating):
                raise _fail(
                    path,
                    f"'{key}' must be float {list(want)}, got {value.dtype} {list(value.shape)}",
                    span=span,
                )
            arr = np.asarray(value, dtype=np.float32)
            finite = np.isfinite(arr) | (np.isnan(arr) if key == "auroc" else False)
            if not np.all(finite):
                raise _fail(path, f"'{key}' contains NaN or infinite values", span=span)
            arrays[key] = arr
        if np.any(arrays["scale"] <= 0):
            bad = [layer_list[i] for i in np.flatnonzero(arrays["scale"] <= 0)]
            raise _fail(path, f"pole distance (scale) is not positive at layer(s) {bad}", span=span)
        if np.any(arrays["std"] < 0):
            raise _fail(path, "'std' has negative values", span=span)
        calibration = Calibration(**arrays, levels=levels)
    norms: F32 | None = None
    if "norms" in tensors:
        norms = np.asarray(tensors["norms"], dtype=np.float32)
        if norms.shape != (n,) or not np.all(np.isfinite(norms)) or np.any(norms <= 0):
            raise _fail(path, f"'norms' must be {n} positive finite numbers", span=span)
    return ConceptArtifact(unit, layer_list, calibration, meta, path, norms)


def _load_npy(path: str, span: Span | None) -> ConceptArtifact:
    data = _read(path, span)
    try:
        vector = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise _fail(path, f"cannot read .npy file: {exc}", "a .npy concept holds one float vector [H]", span) from None
    except Exception as exc:  # malformed headers raise assorted errors (SyntaxError, EOFError, ...)
        raise _fail(path, f"not a valid .npy file: {exc}", span=span) from None
    if not isinstance(vector, np.ndarray) or vector.dtype.hasobject:
        raise _fail(path, "a .npy concept must hold a numeric array", span=span)
    if vector.ndim == 2 and vector.shape[0] == 1:
        vector = vector[0]
    if vector.ndim != 1 or vector.shape[0] == 0:
        raise _fail(path, f"a .npy concept must be one vector [H], got shape {list(vector.shape)}", span=span)
    if not np.issubdtype(vector.dtype, np.floating):
        raise _fail(path, f"a .npy concept must be floating point, got {vector.dtype}", span=span)
    raw = vector.astype(np.float64)
    if not np.all(np.isfinite(raw)):
        raise _fail(path, "the vector contains NaN or infinite values", span=span)
    norm = float(np.linalg.norm(raw))
    if norm < 1e-12:
        raise _fail(path, "the vector is zero (no direction)", span=span)
    unit = (raw / norm).astype(np.float32)[None, :]
    meta = {
        "format": "npy",
        "concept": Path(path).stem,
        "hidden_size": str(unit.shape[1]),
        "raw_norm": repr(norm),
        "units": "raw",
    }
    return ConceptArtifact(unit, None, None, meta, path, np.array([norm], dtype=np.float32))


def load_artifact(path: str | Path, *, span: Span | None = None) -> ConceptArtifact:
    """Load and validate a concept file (``.safetensors``, or ``.npy`` for one raw vector).

    Pickle-based formats (``.pt``, ``.pth``, ``.pkl``, ...) and unknown suffixes are refused; nothing in a
    file is ever executed.  Problems are :class:`UserError` naming the file, or :class:`SpecError` at
    ``span`` (the statement that names the file) when given.
    """
    name = str(path)
    suffix = Path(name).suffix.lower()
    if suffix == ".safetensors":
        return _load_safetensors(name, span)
    if suffix == ".npy":
        return _load_npy(name, span)
    if suffix in _SUFFIXES_REFUSED:
        raise _fail(
            name,
            f"refusing to load '{suffix}' files: they are pickles, and unpickling can run arbitrary code",
            "convert it to .safetensors (or save one vector with numpy.save to .npy)",
            span,
        )
    raise _fail(
        name,
        f"unsupported concept file type '{suffix or Path(name).name}'",
        "concept files are .safetensors (directions + calibration) or .npy (one raw vector)",
        span,
    )


# -------------------------------------------------------------------------------------- compatibility


def check_compatible(artifact: ConceptArtifact, identity: ModelIdentity, span: Span | None = None) -> None:
    """Raise a located error when ``artifact`` was not made for the model described by ``identity``.

    Compares hidden sizes (always), model id and revision (when the artifact records them) and checks
    that every layer of the artifact exists in the model.
    """
    where = artifact.path or artifact.concept
    name = artifact.concept
    if artifact.hidden_size != identity.hidden_size:
        raise _fail(
            where,
            f"concept '{name}' has hidden size {artifact.hidden_size} "
            f"(model {artifact.model_id or 'unknown'}), but model {identity.id} has hidden size "
            f"{identity.hidden_size}",
            "a vector made for another model does not fit this one"
            if artifact.metadata.get("source") in ("gguf", "svec", "sae")
            else "extract the concept again for this model: cdsl concept build --pairs FILE --model MODEL",
            span,
        )
    hint_type = artifact.metadata.get("model_hint")
    if hint_type and hint_type != identity.architecture:
        raise _fail(
            where,
            f"concept '{name}' was made for a '{hint_type}' model, but model {identity.id} is "
            f"'{identity.architecture}'",
            "a vector made for another model does not transfer; use one made for this model",
            span,
        )
    if artifact.model_id is not None and artifact.model_id != identity.id:
        raise _fail(
            where,
            f"concept '{name}' was extracted from model {artifact.model_id}, not {identity.id} "
            f"(hidden size {artifact.hidden_size} vs {identity.hidden_size})",
            "directions do not transfer between models; rebuild it for this model",
            span,
        )
    recorded = artifact.metadata.get("model_revision")
    if artifact.model_id is not None and recorded and identity.revision and recorded != identity.revision:
        raise _fail(
            where,
            f"concept '{name}' was extracted from {artifact.model_id} revision {recorded}, "
            f"but the model is revision {identity.revision}",
            "rebuild it for this revision",
            span,
        )
    if artifact.layers is not None:
        beyond = [x for x in artifact.layers if x >= identity.num_layers]
        if beyond:
            raise _fail(
                where,
                f"concept '{name}' has layer(s) {beyond}, but model {identity.id} has {identity.num_layers} layers "
                f"(0..{identity.num_layers - 1})",
                "a vector made for a deeper model does not fit this one",
                span,
            )
