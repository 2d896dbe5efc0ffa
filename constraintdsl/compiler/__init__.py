"""Spec + model → Plan: every check against a concrete model, then pure data for the runtime.

``resolve`` (in :mod:`.resolve`) turns a spec into a :class:`~.plan.Plan`; :mod:`.explain` prints one;
:mod:`.telemetry` turns a run's accumulated sums into rows.
"""

from __future__ import annotations

from .plan import Entry, Plan
from .resolve import resolve, resolve_layers

__all__ = ["Entry", "Plan", "resolve", "resolve_layers"]
