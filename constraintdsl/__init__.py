"""constraintdsl: constraint sets over a language model's concept directions, as data.

Write constraint sets as small ``.cdsl`` (or YAML) files, parse them into a typed, immutable
:class:`Spec`, and compare, hash, diff and format them as data.

Every function exported here raises :class:`SpecError` for bad input (``.diagnostics``, ``.render()``),
missing files included, and :class:`TypeError` for an argument of the wrong type; see
:mod:`constraintdsl.errors`.
"""

from __future__ import annotations

from . import canonical as _canonical
from . import diff as _diff
from . import load as _load
from . import parser as _parser
from . import variants as _variants
from .diff import Change
from .errors import Diagnostic, Span, SpecError, UserError, public
from .spec import Ablate, Clamp, Concept, Gate, Include, Let, Pin, Ref, Scale, Spec, Steer, Tokens, Unit, Value
from .variants import Variant

# The public functions raise SpecError for every bad input (a UserError, e.g. a missing file, is turned
# into one); the modules' own functions, which the command line uses, keep the two apart.
load = public(_load.load)
parse_file = public(_load.parse_file)
parse = public(_parser.parse)
diff = public(_diff.diff)
expand = public(_variants.expand)
spec_hash = public(_canonical.spec_hash)

__version__ = "0.1.0"

# Names that need torch/nnsight load on first use, so `import constraintdsl` stays light.
_LAZY = {
    "compile": "api",
    "apply": "api",
    "install": "api",
    "uninstall": "api",
    "Plan": "compiler",
    "resolve": "compiler",
    "load_model": "models",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'constraintdsl' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    return public(value) if name in ("load_model", "resolve") else value


__all__ = [
    "Ablate",
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
    "Tokens",
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
    "load_model",
    "parse",
    "parse_file",
    "resolve",
    "spec_hash",
    "uninstall",
]
