"""The ``cdsl`` command line: one module per verb group, each with its argument parsing and its work.

``app`` is the Typer application and ``main`` runs it, returning the exit code.
"""

from __future__ import annotations

from .app import app, main

__all__ = ["app", "main"]
