"""Located diagnostics and the one renderer: ``file:line:col: error: message``.

Every user-facing problem in constraintdsl is a :class:`Diagnostic` pointing at a
:class:`Span` of some source text.  :class:`SpecError` carries one or more of them
together with the source texts needed to show the offending line and a caret.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Diagnostic", "Span", "SpecError", "UserError", "describe_char", "did_you_mean", "render"]


@dataclass(frozen=True, slots=True)
class Span:
    """A region of a source file; lines and columns are 1-based, ``end_col`` exclusive."""

    path: str
    line: int
    col: int
    end_line: int | None = None
    end_col: int | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "line": self.line,
            "column": self.col,
            "end_line": self.end_line if self.end_line is not None else self.line,
            "end_column": self.end_col if self.end_col is not None else self.col + 1,
        }


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem: where, what, and at most one hint on how to fix it."""

    span: Span
    message: str
    hint: str | None = None
    severity: str = "error"

    def to_dict(self) -> dict[str, Any]:
        return {**self.span.to_dict(), "severity": self.severity, "message": self.message, "hint": self.hint}


class UserError(Exception):
    """A problem the user can fix that is not located in a spec file (a flag, a missing package, a model).

    ``where`` names what is wrong: a flag (``--model``), a file path, or a model id.
    """

    def __init__(self, where: str, message: str, hint: str | None = None) -> None:
        self.where = where
        self.message = message
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        """``where: error: message`` and at most one hint line."""
        text = f"{self.where}: error: {self.message}"
        return f"{text}\nhint: {self.hint}" if self.hint else text

    def to_dict(self) -> dict[str, Any]:
        return {"diagnostics": [{"where": self.where, "severity": "error", "message": self.message, "hint": self.hint}]}


class SpecError(UserError):
    """Raised for any invalid spec input; holds every diagnostic found, not just the first."""

    def __init__(
        self,
        diagnostics: Diagnostic | Sequence[Diagnostic],
        sources: Mapping[str, str] | None = None,
    ) -> None:
        diags = [diagnostics] if isinstance(diagnostics, Diagnostic) else list(diagnostics)
        if not diags:
            raise ValueError("SpecError needs at least one diagnostic")
        self.diagnostics: list[Diagnostic] = sorted(diags, key=lambda d: (d.span.path, d.span.line, d.span.col))
        self.sources: dict[str, str] = dict(sources or {})
        first = self.diagnostics[0]
        Exception.__init__(self, self.render())
        self.where = str(first.span)
        self.message = first.message
        self.hint = first.hint

    def render(self) -> str:
        """All diagnostics, rendered with source lines and carets."""
        return render(self.diagnostics, self.sources)

    def to_dict(self) -> dict[str, Any]:
        return {"diagnostics": [d.to_dict() for d in self.diagnostics]}

    @classmethod
    def single(cls, span: Span, message: str, hint: str | None = None, source: str | None = None) -> SpecError:
        """Shorthand for an error with one diagnostic."""
        return cls(Diagnostic(span, message, hint), {span.path: source} if source is not None else None)


def _display(line: str) -> str:
    # Tabs become one space so the caret lines up with the column count.
    return line.replace("\t", " ")


def render(diagnostics: Iterable[Diagnostic], sources: Mapping[str, str] | None = None) -> str:
    """Render diagnostics as ``path:line:col: severity: message``, source line, caret, hint."""
    out: list[str] = []
    line_cache: dict[str, list[str]] = {}
    for d in diagnostics:
        s = d.span
        out.append(f"{s.path}:{s.line}:{s.col}: {d.severity}: {d.message}")
        text = (sources or {}).get(s.path)
        if text is not None:
            lines = line_cache.setdefault(s.path, text.split("\n"))
            if 1 <= s.line <= len(lines):
                src = _display(lines[s.line - 1])
                width = 1
                if s.end_col is not None and (s.end_line is None or s.end_line == s.line):
                    width = max(1, s.end_col - s.col)
                elif s.end_line is not None and s.end_line > s.line:
                    width = max(1, len(src) - s.col + 1)
                width = max(1, min(width, len(src) - s.col + 1))
                out.append(f"    {src}")
                out.append("    " + " " * (s.col - 1) + "^" + "~" * (width - 1))
        if d.hint:
            out.append(f"hint: {d.hint}")
    return "\n".join(out)


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A ``did you mean 'x'?`` hint for the closest choice, or None."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'?" if match else None


def describe_char(ch: str) -> str:
    """``'x'`` for printable ASCII, else ``U+XXXX (NAME)`` so invisible characters can be seen."""
    if " " < ch < "\x7f":
        return repr(ch)
    name = unicodedata.name(ch, "unnamed character")
    return f"U+{ord(ch):04X} ({name})"
