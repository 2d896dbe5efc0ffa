"""Plain-text tables for terminal output, reports and README excerpts."""

from __future__ import annotations

__all__ = ["UNIT_LABELS", "text_table"]

# The units column of telemetry tables: corrections and projections of each row are in its concept's
# calibrated units (0 the negative pole, 1 the positive) or, for an uncalibrated concept, raw.
UNIT_LABELS = {"calibrated": "cal", "raw": "raw"}


def text_table(head: list[str], body: list[list[str]]) -> str:
    """Left-aligned columns under a dashed rule: plain text that pastes into a README or an issue."""
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
