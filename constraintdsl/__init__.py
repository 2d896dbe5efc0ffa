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
from .spec import Ablate, Clamp, Concept, Gate, Include, Pin, Scale, Spec, Steer, Tokens, Unit, Value

__version__ = "0.1.0"

__all__ = [
    "Ablate",
    "Change",
    "Clamp",
    "Concept",
    "Diagnostic",
    "Gate",
    "Include",
    "Pin",
    "Scale",
    "Span",
    "Spec",
    "SpecError",
    "Steer",
    "Tokens",
    "Unit",
    "UserError",
    "Value",
    "__version__",
    "diff",
    "load",
    "parse",
    "parse_file",
    "spec_hash",
]
