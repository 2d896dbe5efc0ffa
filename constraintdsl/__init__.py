"""constraintdsl: constraint sets over a language model's concept directions, as data.

Write constraint sets as small ``.cdsl`` (or YAML) files, parse them into a typed, immutable
:class:`Spec`, and compare, hash, diff and format them as data; compile them for a model and run them
inside nnsight (``compile``, ``apply``, ``install``).

Every function exported here raises :class:`SpecError` for bad input (``.diagnostics``, ``.render()``),
missing files included, and :class:`TypeError` for an argument of the wrong type; see
:mod:`constraintdsl.errors`.

The package is laid out by stage, each importing only the ones before it (docs/architecture.md):
``lang`` (text → Spec) → ``models`` → ``concepts`` → ``compiler`` (Spec + model → Plan) → ``run``
(Plan → nnsight traces, local or NDIF) → ``compare`` → ``cli``; ``runtime`` is the torch-only code
that touches activations (and travels to NDIF).
"""

from __future__ import annotations

import importlib
import warnings

from ._version import __version__
from .errors import Diagnostic, Span, SpecError, UserError, public
from .lang import canonical as _canonical
from .lang import diff as _diff
from .lang import loading as _loading
from .lang import variants as _variants
from .lang.diff import Change
from .lang.nodes import (
    Ablate,
    Budget,
    Clamp,
    Concept,
    Gate,
    Include,
    Let,
    Pin,
    Ref,
    Scale,
    Steer,
    Target,
    Tokens,
    Unit,
    Value,
)
from .lang.spec import Spec
from .lang.variants import Variant

# The public functions raise SpecError for every bad input (a UserError, e.g. a missing file, is turned
# into one); the modules' own functions, which the command line uses, keep the two apart.
load = public(_loading.load)
parse_file = public(_loading.parse_file)
parse = public(_loading.parse)
diff = public(_diff.diff)
expand = public(_variants.expand)
spec_hash = public(_canonical.spec_hash)

# Names that need torch/nnsight, loaded on first use so `import constraintdsl` stays light.
_LAZY = {
    "BoundPlan": "run.api",
    "compile": "run.api",
    "apply": "run.api",
    "install": "run.api",
    "uninstall": "run.api",
    "resolve": "run.api",
    "Plan": "compiler.plan",
    "load_model": "models.loading",
    "load_lazy": "models.loading",
    "tune": "compare.tune",
    "TuneResult": "compare.tune",
}

# Modules of the flat layout before the stage folders, kept importable as attributes
# (`from constraintdsl import runner`) for one release.
_MOVED = {
    "ab": "compare.ab",
    "api": "run.api",
    "artifacts": "concepts.artifact",
    "canonical": "lang.canonical",
    "commands": "cli.spec_files",
    "execute": "cli.run",
    "explain": "compiler.explain",
    "extraction": "runtime.extraction",
    "measure": "compare.passes",
    "metrics": "compare.metrics",
    "pairs": "concepts.pairs",
    "parser": "lang.parser",
    "readout": "run.readout",
    "remote": "models.ndif",
    "report": "compare.report",
    "runner": "run.runner",
    "scoring": "runtime.scoring",
    "sites": "models.sites",
    "store": "compare.store",
    "syntax_errors": "lang.syntax_errors",
    "telemetry": "compiler.telemetry",
    "validate": "lang.validate",
    "variants": "lang.variants",
    "yaml_twin": "lang.yaml_twin",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        return public(value) if name in ("load_model", "load_lazy", "resolve", "tune") else value
    moved = _MOVED.get(name)
    if moved is not None:
        warnings.warn(
            f"constraintdsl.{name} moved to constraintdsl.{moved}; the old name goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(f".{moved}", __name__)
    raise AttributeError(f"module 'constraintdsl' has no attribute {name!r}")


__all__ = [
    "Ablate",
    "BoundPlan",
    "Budget",
    "Change",
    "Clamp",
    "Concept",
    "Diagnostic",
    "Gate",
    "Include",
    "Let",
    "Pin",
    "Plan",
    "Ref",
    "Scale",
    "Span",
    "Spec",
    "SpecError",
    "Steer",
    "Target",
    "Tokens",
    "TuneResult",
    "Unit",
    "UserError",
    "Value",
    "Variant",
    "__version__",
    "apply",
    "compile",
    "diff",
    "expand",
    "install",
    "load",
    "load_lazy",
    "load_model",
    "parse",
    "parse_file",
    "resolve",
    "spec_hash",
    "tune",
    "uninstall",
]
