"""Comparing constraint sets as data: arms and the driver (:mod:`.comparison`), measurement passes
(:mod:`.passes`), metrics, A/B sets, the Markdown report and the SQLite run store."""

from __future__ import annotations

from .comparison import Comparison, Inputs, compare, corpus_windows, read_corpus

__all__ = ["Comparison", "Inputs", "compare", "corpus_windows", "read_corpus"]
