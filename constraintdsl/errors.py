"""Located diagnostics and the one renderer: ``file:line:col: error: message``.

Every user-facing problem in constraintdsl is a :class:`Diagnostic` pointing at a
:class:`Span` of some source text.  :class:`SpecError` carries one or more of them
together with the source texts needed to show the offending line and a caret.

The two exception types:

- :class:`UserError`: any problem the user can fix (a spec, a data file, a flag, a path, a model,
  a server).  The command line exits 2 for it.  ``where`` names the file, flag or model.
- :class:`SpecError`, its subclass: problems located inside files, every one of them
  (``diagnostics``).  ``cdsl check`` exits 1 for it (the check failed), other verbs 2.

The Python API (every function ``constraintdsl`` exports, and a :class:`~constraintdsl.compiler.Plan`'s
methods) raises only :class:`SpecError` for bad input, so ``except cdsl.SpecError`` catches all of it:
a problem that is not inside a file (a missing file, a model that cannot be loaded) becomes a
SpecError whose one diagnostic is located at the path or argument itself, with line 0
(rendered ``path: error: message``).  Arguments of the wrong type raise :class:`TypeError`.
"""

from __future__ import annotations

import difflib
import functools
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

__all__ = ["Diagnostic", "Span", "SpecError", "UserError", "describe_char", "did_you_mean", "public", "render"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class Span:
    """A region of a source file; lines and columns are 1-based, ``end_col`` exclusive.

    Line 0 stands for the file (or flag, or model) as a whole: rendered as just ``path``.
    """

    path: str
    line: int
    col: int
    end_line: int | None = None
    end_col: int | None = None

    def __str__(self) -> str:
        return self.path if self.line == 0 else f"{self.path}:{self.line}:{self.col}"

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
        super().__init__(message)

    def __str__(self) -> str:
        return self.render()

    @property
    def diagnostics(self) -> list[Diagnostic]:
        """This error as one diagnostic located at ``where`` as a whole (line 0)."""
        return [Diagnostic(Span(self.where, 0, 0), self.message, self.hint)]

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
        self._diagnostics: list[Diagnostic] = sorted(diags, key=lambda d: (d.span.path, d.span.line, d.span.col))
        self.sources: dict[str, str] = dict(sources or {})
        first = self.diagnostics[0]
        Exception.__init__(self, first.message)
        self.where = str(first.span)
        self.message = first.message
        self.hint = first.hint

    @property
    def diagnostics(self) -> list[Diagnostic]:
        """Every problem found, sorted by file, line and column."""
        return self._diagnostics

    def __str__(self) -> str:
        return self.render()

    def render(self) -> str:
        """All diagnostics, rendered with source lines and carets."""
        return render(self.diagnostics, self.sources)

    def to_dict(self) -> dict[str, Any]:
        return {"diagnostics": [d.to_dict() for d in self.diagnostics]}

    @classmethod
    def single(cls, span: Span, message: str, hint: str | None = None, source: str | None = None) -> SpecError:
        """Shorthand for an error with one diagnostic."""
        return cls(Diagnostic(span, message, hint), {span.path: source} if source is not None else None)

    @classmethod
    def of(cls, error: UserError) -> SpecError:
        """``error`` as a SpecError: itself, or one diagnostic at its ``where`` as a whole (line 0)."""
        if isinstance(error, SpecError):
            return error
        made = cls(error.diagnostics)
        made.__cause__ = error
        return made


def public(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Mark a function of the Python API: every :class:`UserError` it raises reaches the caller as a
    :class:`SpecError` (see the module docstring)."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except SpecError:
            raise
        except UserError as e:
            raise SpecError.of(e) from None

    return wrapper


MAX_SHOWN = 50  # diagnostics rendered per error; the rest are counted
WINDOW = 100  # characters of a long source line shown on each side of the caret


def _display(line: str) -> str:
    # Tabs become one space so the caret lines up with the column count.
    return line.replace("\t", " ")


def clip(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis, for echoing user input in messages."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _source_lines(span: Span, col: int, width: int, line: str) -> list[str]:
    src = _display(line)
    start = 0
    if len(src) > 2 * WINDOW:  # show a window around the caret, not a megabyte of line
        start = max(0, col - 1 - WINDOW)
        end = min(len(src), col - 1 + width + WINDOW)
        src = ("…" if start else "") + src[start:end] + ("…" if end < len(line) else "")
        start -= 1 if start else 0
    width = max(1, min(width, len(src) - (col - 1 - start)))
    return [f"    {src}", "    " + " " * (col - 1 - start) + "^" + "~" * (width - 1)]


def render(diagnostics: Iterable[Diagnostic], sources: Mapping[str, str] | None = None) -> str:
    """Render diagnostics as ``path:line:col: severity: message``, source line, caret, hint.

    At most :data:`MAX_SHOWN` are shown; a last line counts the rest.
    """
    out: list[str] = []
    line_cache: dict[str, list[str]] = {}
    diags = list(diagnostics)
    for d in diags[:MAX_SHOWN]:
        s = d.span
        out.append(f"{s}: {d.severity}: {d.message}")
        text = (sources or {}).get(s.path) if s.line > 0 else None
        if text is not None:
            if s.path not in line_cache:
                line_cache[s.path] = text.split("\n")
            lines = line_cache[s.path]
            if 1 <= s.line <= len(lines):
                width = 1
                if s.end_col is not None and (s.end_line is None or s.end_line == s.line):
                    width = max(1, s.end_col - s.col)
                elif s.end_line is not None and s.end_line > s.line:
                    width = max(1, len(lines[s.line - 1]) - s.col + 1)
                out.extend(_source_lines(s, s.col, width, lines[s.line - 1]))
        if d.hint:
            out.append(f"hint: {d.hint}")
    if len(diags) > MAX_SHOWN:
        out.append(f"… and {len(diags) - MAX_SHOWN} more errors")
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
