"""Directions made by other tools, read as concepts; and steers written back as llama.cpp control vectors.

Three formats come in (each checked against its source; the conventions are in docs/interop.md):

- ``gguf``: a llama.cpp control vector (written by repeng's ``ControlVector.export_gguf``, llama.cpp's
  ``cvector-generator``, …): ``general.architecture = "controlvector"``, ``controlvector.model_hint`` (the
  model type), ``controlvector.layer_count``, and one float32 1-D tensor ``direction.N`` per layer.  llama.cpp
  adds ``direction.N`` (times each file's scale) to the output of 0-based block N, so row N here is this
  product's ``at layer N in resid``.  Like llama.cpp, ``direction.0`` is refused and repeated names are summed.
- ``svec``: an IBM activation-steering ``SteeringVector`` (JSON: ``model_type``, ``directions`` ``{layer:
  [floats]}``, ``explained_variances``).  Its ``MalleableModel.steer`` adds ``directions[k]`` to the *input*
  of block k, i.e. the output of block k−1: key k is layer k−1 here, and key 0 (the embedding output) is refused.
- ``sae``: a sae-lens folder (``cfg.json`` + ``sae_weights.safetensors``); feature i's direction is row i of
  ``W_dec`` ``[d_sae, d_in]``, at the site and layer its hook names (``blocks.L.hook_resid_post`` → layer L,
  ``blocks.L.hook_resid_pre`` → layer L−1, ``hook_mlp_out`` / ``hook_attn_out`` → ``in mlp`` / ``in attn``;
  Hugging Face module names such as ``model.layers.L`` too).  Only that row is read from the weights file.

Every imported direction keeps its stored norm per layer (:attr:`ConceptArtifact.norms`): the unit ``vec``
means "times the stored vector", so ``steer c by s vec`` adds exactly what llama.cpp's
``--control-vector-scaled FILE:s`` adds.  Problems are located errors (at the statement naming the file, when
``span`` is given) and nothing runs: a malformed or truncated file, NaN, a wrong layer index, a bad feature.
Checks against a model (hidden size, model type, layer count) are in :func:`artifact.check_compatible`.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from constraintdsl.errors import Span, SpecError, UserError

from .artifact import F32, ConceptArtifact, load_artifact, tool_version

__all__ = [
    "GGUF_ARCH",
    "MAX_SVEC_BYTES",
    "SAE_CONFIG",
    "SAE_WEIGHTS",
    "control_vector_layers",
    "open_concept",
    "read_gguf",
    "read_sae",
    "read_svec",
    "sae_hook_site",
    "write_control_vector",
]

GGUF_ARCH = "controlvector"
SAE_CONFIG = "cfg.json"
SAE_WEIGHTS = "sae_weights.safetensors"
MAX_SVEC_BYTES = 256 * 1024 * 1024
MAX_JSON_BYTES = 1024 * 1024  # an SAE cfg.json, a safetensors header
_DIRECTION = re.compile(r"direction\.(\d+)")
_SAFETENSORS_DTYPES: dict[str, str | None] = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "BF16": None}


def _fail(path: str, message: str, hint: str | None = None, span: Span | None = None) -> UserError:
    if span is not None:
        return SpecError.single(span, f"{path}: {message}", hint)
    return UserError(path, message, hint)


def _imported(
    path: str,
    vectors: Mapping[int, np.ndarray[Any, Any]],
    metadata: dict[str, str],
    span: Span | None,
) -> ConceptArtifact:
    """An artifact from raw per-layer vectors: unit directions plus each vector's norm (the ``vec`` unit).

    A layer whose vector is all zeros has no direction; it is left out (and named in ``zero_layers``).
    """
    layers: list[int] = []
    rows: list[np.ndarray[Any, Any]] = []
    norms: list[float] = []
    zero: list[int] = []
    width: int | None = None
    for layer in sorted(vectors):
        v = np.asarray(vectors[layer], dtype=np.float64)
        if width is None:
            width = int(v.shape[0])
        if not np.all(np.isfinite(v)):
            bad = int(np.flatnonzero(~np.isfinite(v))[0])
            raise _fail(path, f"the vector for layer {layer} has a NaN or infinite value (element {bad})", None, span)
        norm = float(np.linalg.norm(v))
        if norm == 0.0:
            zero.append(layer)
            continue
        layers.append(layer)
        rows.append(v / norm)
        norms.append(norm)
    if not layers:
        raise _fail(path, "every vector in the file is zero: there is no direction", None, span)
    meta = {
        "format": "import",
        "concept": Path(path.rstrip("/")).stem,
        "hidden_size": str(width),
        "layers": json.dumps(layers),
        "units": "vec (times the stored vector), raw",
        "tool_version": tool_version(),
        **metadata,
    }
    if zero:
        meta["zero_layers"] = json.dumps(zero)
    directions: F32 = np.stack(rows).astype(np.float32)
    return ConceptArtifact(directions, tuple(layers), None, meta, path, np.asarray(norms, dtype=np.float32))


# ------------------------------------------------------------------------------------------------- gguf


def _field_text(reader: Any, key: str) -> str | None:
    field = reader.get_field(key)
    if field is None or not len(field.parts) or not field.data:
        return None
    try:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _field_int(reader: Any, key: str) -> int | None:
    field = reader.get_field(key)
    if field is None or not field.data:
        return None
    try:
        return int(field.parts[field.data[0]][0])
    except (TypeError, ValueError, IndexError):
        return None


def read_gguf(path: str | Path, *, span: Span | None = None) -> ConceptArtifact:
    """A llama.cpp control vector (``.gguf``) as a concept: ``direction.N`` at layer N, norms kept.

    Refused like llama.cpp refuses them: a tensor not named ``direction.N``, ``direction.0``, a tensor that is
    not float32 or not one-dimensional, tensors of different lengths.  Also refused: a GGUF whose
    ``general.architecture`` is not ``controlvector`` (a model file, say), a file without directions,
    NaN or infinite values, a truncated or unreadable file.
    """
    from gguf import GGMLQuantizationType, GGUFReader

    name = str(path)
    p = Path(name)
    hint = "expected a llama.cpp control vector, as written by repeng's export_gguf or `cdsl export --to gguf`"
    if not p.is_file():
        raise _fail(name, "control vector file not found" if not p.exists() else "not a file", None, span)
    try:
        reader = GGUFReader(name)
    except Exception as exc:  # the reader raises ValueError, IndexError, struct errors … on bad or short files
        raise _fail(
            name, f"not a readable GGUF file: truncated or corrupt ({type(exc).__name__}: {exc})", hint, span
        ) from None
    arch = _field_text(reader, "general.architecture")
    if arch is not None and arch != GGUF_ARCH:
        raise _fail(
            name,
            f"this GGUF's general.architecture is '{arch}', not '{GGUF_ARCH}': it is not a control vector",
            "a model file cannot be a concept; pass a control vector exported by repeng or llama.cpp",
            span,
        )
    vectors: dict[int, np.ndarray[Any, Any]] = {}
    width: int | None = None
    for tensor in reader.tensors:
        match = _DIRECTION.fullmatch(tensor.name)
        if match is None:
            raise _fail(
                name,
                f"tensor '{tensor.name}' is not named direction.N (llama.cpp refuses such a file)",
                hint,
                span,
            )
        layer = int(match.group(1))
        if layer == 0:
            raise _fail(
                name,
                "direction.0: llama.cpp never adds a vector at layer 0 and refuses a file that has one",
                "control vectors start at layer 1",
                span,
            )
        if tensor.tensor_type != GGMLQuantizationType.F32:
            raise _fail(
                name,
                f"{tensor.name} is {tensor.tensor_type.name}, not F32 (llama.cpp refuses other types)",
                None,
                span,
            )
        dims = [int(d) for d in tensor.shape]
        if any(d != 1 for d in dims[1:]):
            raise _fail(name, f"{tensor.name} has shape {dims}; a direction is one-dimensional", None, span)
        if width is not None and dims[0] != width:
            raise _fail(name, f"{tensor.name} has {dims[0]} values, but earlier directions have {width}", None, span)
        width = dims[0]
        try:
            data = np.array(tensor.data, dtype=np.float64).reshape(-1)
        except Exception as exc:
            raise _fail(name, f"cannot read {tensor.name} (truncated file?): {exc}", None, span) from None
        if data.shape[0] != width:
            raise _fail(name, f"{tensor.name} is truncated: {data.shape[0]} of {width} values", None, span)
        vectors[layer] = vectors[layer] + data if layer in vectors else data  # llama.cpp sums repeats
    if not vectors:
        raise _fail(name, "the file holds no direction.N tensors", hint, span)
    meta = {"source": "gguf", "site": "resid"}
    hint_text = _field_text(reader, f"{GGUF_ARCH}.model_hint")
    if hint_text:
        meta["model_hint"] = hint_text
    count = _field_int(reader, f"{GGUF_ARCH}.layer_count")
    if count is not None:
        meta["gguf_layer_count"] = str(count)
    return _imported(name, vectors, meta, span)


def control_vector_layers(n_layers: int) -> range:
    """The layers llama.cpp can add a control vector at in an ``n_layers``-block model: 1 … n_layers − 1."""
    return range(1, n_layers)


def write_control_vector(
    path: str | Path,
    vectors: Mapping[int, np.ndarray[Any, Any]],
    *,
    model_hint: str,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``{layer: vector}`` as a llama.cpp control vector (``.gguf``), atomically.

    The layout is repeng's ``export_gguf``: ``general.architecture = controlvector``,
    ``controlvector.model_hint``, ``controlvector.layer_count`` (the number of directions) and one float32
    tensor ``direction.N`` per layer (N ≥ 1).  ``metadata`` adds string keys (provenance).
    """
    from gguf import GGUFWriter

    target = Path(path)
    if any(layer < 1 for layer in vectors):
        raise UserError(str(target), "llama.cpp control vectors have no layer 0 (direction.0 is refused)")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or Path("."))
    os.close(fd)
    try:
        writer = GGUFWriter(tmp, GGUF_ARCH)
        writer.add_string(f"{GGUF_ARCH}.model_hint", model_hint)
        writer.add_uint32(f"{GGUF_ARCH}.layer_count", len(vectors))
        for key, value in sorted((metadata or {}).items()):
            writer.add_string(key, value)
        for layer in sorted(vectors):
            writer.add_tensor(f"direction.{layer}", np.ascontiguousarray(vectors[layer], dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


# ------------------------------------------------------------------------------------------------- svec


def _json_error(exc: json.JSONDecodeError) -> str:
    return f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)


def read_svec(path: str | Path, *, span: Span | None = None) -> ConceptArtifact:
    """An IBM activation-steering vector (``.svec``, JSON) as a concept: key k at layer k − 1, norms kept.

    ``MalleableModel.steer`` adds ``directions[k]`` to the input of decoder block k, which is the output of
    block k − 1 (this product's layer k − 1); key 0 would be the embedding output, which is refused.
    """
    name = str(path)
    hint = "expected a .svec file saved by activation_steering.SteeringVector.save"
    p = Path(name)
    try:
        size = p.stat().st_size
        if size > MAX_SVEC_BYTES:
            raise _fail(name, f"{size:,} bytes; a .svec file is read only up to {MAX_SVEC_BYTES:,}", None, span)
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise _fail(name, "steering vector file not found", None, span) from None
    except UnicodeDecodeError:
        raise _fail(name, "not a .svec file: it is not UTF-8 JSON", hint, span) from None
    except OSError as exc:
        raise _fail(name, f"cannot read the file: {exc.strerror or exc}", None, span) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(name, _json_error(exc) + " (truncated?)", hint, span) from None
    except RecursionError:
        raise _fail(name, "JSON nesting is too deep", hint, span) from None
    if not isinstance(data, dict) or not isinstance(data.get("directions"), dict):
        raise _fail(name, "not a .svec file: no `directions` mapping", hint, span)
    model_type = data.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise _fail(name, "missing `model_type` (the model's config.model_type, e.g. llama)", hint, span)
    vectors: dict[int, np.ndarray[Any, Any]] = {}
    width: int | None = None
    for key, values in data["directions"].items():
        if not re.fullmatch(r"\d+", str(key)):
            raise _fail(name, f"direction key '{key}' is not a layer index", hint, span)
        k = int(key)
        if k == 0:
            raise _fail(
                name,
                "direction for layer 0: activation-steering adds it to the input of block 0 (the embedding "
                "output), which no site of this product reaches",
                "drop layer 0 from the vector; layer k is applied at this product's layer k-1",
                span,
            )
        if not _numbers(values) or not values:
            raise _fail(name, f"direction {key} is not a list of numbers", hint, span)
        if width is not None and len(values) != width:
            raise _fail(name, f"direction {key} has {len(values)} values, but earlier ones have {width}", None, span)
        width = len(values)
        if any(not math.isfinite(x) for x in values):
            raise _fail(name, f"direction {key} has a NaN or infinite value", None, span)
        vectors[k - 1] = np.asarray(values, dtype=np.float64)
    if not vectors:
        raise _fail(name, "the file holds no directions", hint, span)
    variances = data.get("explained_variances")
    meta = {"source": "svec", "site": "resid", "model_hint": model_type, "svec_layers": "key k → layer k-1"}
    if isinstance(variances, dict):
        meta["explained_variances"] = json.dumps(variances, sort_keys=True)
    return _imported(name, vectors, meta, span)


# -------------------------------------------------------------------------------------------------- sae

_TL_HOOK = re.compile(r"blocks\.(\d+)\.(hook_resid_post|hook_resid_pre|hook_mlp_out|hook_attn_out)")
_HF_HOOK = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]*\.)*(?:layers|h|blocks)\.(\d+)(?:\.(mlp|self_attn|attn))?")


def sae_hook_site(hook: str) -> tuple[str, int] | str:
    """``(site, layer)`` this product uses for an SAE trained on ``hook``, or why it cannot reach it."""
    tl = _TL_HOOK.fullmatch(hook)
    if tl is not None:
        layer, kind = int(tl.group(1)), tl.group(2)
        if kind == "hook_resid_pre":
            if layer == 0:
                return "blocks.0.hook_resid_pre is the embedding output, which no site of this product reaches"
            return "resid", layer - 1
        return {"hook_resid_post": "resid", "hook_mlp_out": "mlp", "hook_attn_out": "attn"}[kind], layer
    hf = _HF_HOOK.fullmatch(hook)
    if hf is not None and "hook_" not in hook:
        part = hf.group(2)
        return ("resid" if part is None else "mlp" if part == "mlp" else "attn"), int(hf.group(1))
    return (
        f"hook '{hook}' is not a site this product can steer: supported are blocks.L.hook_resid_post, "
        "blocks.L.hook_resid_pre (L ≥ 1), blocks.L.hook_mlp_out, blocks.L.hook_attn_out and module names "
        "like model.layers.L(.mlp|.self_attn)"
    )


def _read_json(path: Path, what: str, span: Span | None) -> Any:
    name = str(path)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise _fail(name, f"{what} is larger than {MAX_JSON_BYTES:,} bytes", None, span)
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise _fail(
            name, f"{what} not found", "a sae-lens folder holds cfg.json and sae_weights.safetensors", span
        ) from None
    except UnicodeDecodeError:
        raise _fail(name, f"{what} is not UTF-8 JSON", None, span) from None
    except json.JSONDecodeError as exc:
        raise _fail(name, f"{what}: " + _json_error(exc), None, span) from None
    except OSError as exc:
        raise _fail(name, f"cannot read {what}: {exc.strerror or exc}", None, span) from None


def _int_field(cfg: Mapping[str, Any], key: str, where: str, span: Span | None) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise _fail(where, f"cfg.json needs `{key}` as a positive whole number, got {value!r}", None, span)
    return value


def _decoder_row(weights: Path, feature: int, d_sae: int, d_in: int, span: Span | None) -> np.ndarray[Any, Any]:
    """Row ``feature`` of ``W_dec`` from a safetensors file, reading its header and that row only."""
    name = str(weights)
    hint = "sae-lens writes the decoder as W_dec [d_sae, d_in] in sae_weights.safetensors"
    try:
        size = weights.stat().st_size
        with weights.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise _fail(name, f"not a safetensors file: only {len(head)} bytes", hint, span)
            header_len = int.from_bytes(head, "little")
            if header_len <= 0 or header_len > min(MAX_JSON_BYTES * 100, size - 8):
                raise _fail(name, "not a safetensors file (bad header length; truncated or another format)", hint, span)
            try:
                header = json.loads(fh.read(header_len).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise _fail(name, "not a safetensors file (its header is not JSON)", hint, span) from None
            info = header.get("W_dec") if isinstance(header, dict) else None
            if not isinstance(info, dict):
                raise _fail(name, "no W_dec tensor", hint, span)
            dtype_name, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
            if dtype_name not in _SAFETENSORS_DTYPES:
                raise _fail(name, f"W_dec has dtype {dtype_name!r}; expected F32, F16, BF16 or F64", None, span)
            if shape != [d_sae, d_in]:
                raise _fail(
                    name, f"W_dec has shape {shape}, but cfg.json says [d_sae, d_in] = [{d_sae}, {d_in}]", hint, span
                )
            itemsize = 2 if dtype_name in ("F16", "BF16") else 4 if dtype_name == "F32" else 8
            if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
                raise _fail(name, "W_dec's data offsets are malformed", None, span)
            start, end = offsets
            if end - start != d_sae * d_in * itemsize:
                raise _fail(name, "W_dec's byte size does not match its shape", None, span)
            ends = [e.get("data_offsets") for e in header.values() if isinstance(e, dict)]
            last = max([end, *(x[1] for x in ends if isinstance(x, list) and len(x) == 2 and isinstance(x[1], int))])
            if 8 + header_len + last > size:
                raise _fail(
                    name,
                    f"file is truncated: its tensors need {8 + header_len + last} bytes, the file has {size}",
                    None,
                    span,
                )
            fh.seek(8 + header_len + start + feature * d_in * itemsize)
            raw = fh.read(d_in * itemsize)
    except FileNotFoundError:
        raise _fail(
            name, "sae_weights.safetensors not found", "a sae-lens folder holds cfg.json and it", span
        ) from None
    except OSError as exc:
        raise _fail(name, f"cannot read the weights: {exc.strerror or exc}", None, span) from None
    if dtype_name == "BF16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).astype(np.float64)
    dtype = _SAFETENSORS_DTYPES[dtype_name]
    assert dtype is not None
    row: np.ndarray[Any, Any] = np.frombuffer(raw, dtype=dtype).astype(np.float64)
    return row


def read_sae(folder: str | Path, feature: int, *, span: Span | None = None) -> ConceptArtifact:
    """Feature ``feature`` of a sae-lens SAE folder as a concept: row ``feature`` of ``W_dec``, norm kept,
    at the site and layer of the SAE's hook (see :func:`sae_hook_site`).

    Reads ``cfg.json`` in the current layout (``metadata.hook_name``, sae-lens ≥ 6) and the older ones
    (top-level ``hook_name``/``hook_layer``, or ``hook_point``/``hook_point_layer``).  A transcoder (with
    ``hook_name_out``) writes its decoder to that hook, so that hook places the feature.
    """
    name = str(folder)
    root = Path(name)
    if not root.is_dir():
        what = "not found" if not root.exists() else "not a folder"
        raise _fail(name, f"SAE folder {what}", "`from sae` names a sae-lens folder (cfg.json + weights)", span)
    cfg = _read_json(root / SAE_CONFIG, "cfg.json", span)
    if not isinstance(cfg, dict):
        raise _fail(name, "cfg.json is not a JSON object", None, span)
    meta_cfg: dict[str, Any] = cfg["metadata"] if isinstance(cfg.get("metadata"), dict) else {}
    where = str(root / SAE_CONFIG)

    def pick(*keys: str) -> Any:
        for key in keys:
            for source in (meta_cfg, cfg):
                if source.get(key) is not None:
                    return source[key]
        return None

    d_in = _int_field(cfg, "d_in", where, span)
    d_sae = _int_field(cfg, "d_sae", where, span)
    hook = pick("hook_name_out") or pick("hook_name", "hook_point")
    if not isinstance(hook, str) or not hook:
        raise _fail(where, "cfg.json names no hook (metadata.hook_name, hook_name or hook_point)", None, span)
    if pick("hook_head_index", "hook_point_head_index") is not None:
        raise _fail(where, f"the SAE reads one attention head of {hook}; a head's space is not a site here", None, span)
    placed = sae_hook_site(hook)
    if isinstance(placed, str):
        raise _fail(where, placed, None, span)
    site, layer = placed
    declared = pick("hook_layer", "hook_point_layer")
    number = re.search(r"\.(\d+)", hook)
    if (
        not pick("hook_name_out")
        and isinstance(declared, int)
        and number is not None
        and declared != int(number.group(1))
    ):
        raise _fail(where, f"hook_layer {declared} contradicts hook {hook}", None, span)
    if feature >= d_sae:
        raise _fail(
            name,
            f"feature {feature} is out of range: the SAE has {d_sae:,} features (0..{d_sae - 1})",
            None,
            span,
        )
    row = _decoder_row(root / SAE_WEIGHTS, feature, d_sae, d_in, span)
    meta = {
        "source": "sae",
        "site": site,
        "sae_hook": hook,
        "sae_feature": str(feature),
        "sae_d_sae": str(d_sae),
        "concept": f"{root.name}#{feature}",
    }
    for key in ("model_name", "architecture", "normalize_activations"):
        value = pick(key)
        if isinstance(value, str):
            meta[f"sae_{key}"] = value
    if not np.all(np.isfinite(row)):
        raise _fail(name, f"feature {feature}'s decoder row has a NaN or infinite value", None, span)
    if not np.any(row):
        raise _fail(name, f"feature {feature}'s decoder row is zero: it has no direction", None, span)
    return _imported(name, {layer: row}, meta, span)


# ---------------------------------------------------------------------------------------------- dispatch


def open_concept(
    source: str, path: str | Path, *, feature: int | None = None, span: Span | None = None
) -> ConceptArtifact:
    """Open and validate the concept file a ``concept … from SOURCE "PATH"`` statement names, without a model.

    ``file`` → :func:`artifact.load_artifact`; ``gguf``, ``svec``, ``sae`` → the readers here.  Problems are
    located at ``span`` (a :class:`SpecError`) or name the file (a :class:`UserError`); ``pairs`` is not a
    concept file (see :func:`constraintdsl.concepts.pairs.load_pairs`).
    """
    if source == "file":
        return load_artifact(path, span=span)
    if source == "gguf":
        return read_gguf(path, span=span)
    if source == "svec":
        return read_svec(path, span=span)
    if source == "sae":
        if feature is None:
            raise _fail(str(path), "`from sae` needs a feature index", None, span)
        return read_sae(path, feature, span=span)
    raise ValueError(f"not a concept file source: {source!r}")
