"""Models and where they run: loading (the embedded SmolLM2, hub ids, local folders), the site table
per architecture (:mod:`.sites`), and the execution backend, local or NDIF (:mod:`.backend`, :mod:`.ndif`)."""

from __future__ import annotations

from .loading import DEFAULT_MODEL, ModelIdentity, cache_dir, load_model, model_identity

__all__ = ["DEFAULT_MODEL", "ModelIdentity", "cache_dir", "load_model", "model_identity"]
