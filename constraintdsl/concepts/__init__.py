"""Concepts: pair sets (:mod:`.pairs`), extraction and calibration (:mod:`.extract`), artifacts
(:mod:`.artifact`) and the content-keyed build cache (:mod:`.build`)."""

from __future__ import annotations

from .artifact import ConceptArtifact, load_artifact, save_artifact
from .build import build_concept
from .extract import extract
from .pairs import PairSet, load_pairs

__all__ = ["ConceptArtifact", "PairSet", "build_concept", "extract", "load_artifact", "load_pairs", "save_artifact"]
