"""constraintdsl: constraint sets over a language model's concept directions, as data.

Write constraint sets as small ``.cdsl`` (or YAML) files, parse them into a typed, immutable
:class:`Spec`, and compare, hash, diff and format them as data.
"""

from __future__ import annotations

from .canonical import spec_hash
from .diff import Change, diff
from .errors import Diagnostic, Span, SpecError, UserError
from .load import load, parse_file
from .parser import parse
from .spec import Ablate, Clamp, Concept, Gate, Include, Let, Pin, Ref, Scale, Spec, Steer, Tokens, Unit, Value
from .variants import Variant, expand

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

    return getattr(importlib.import_module(f".{module}", __name__), name)


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
