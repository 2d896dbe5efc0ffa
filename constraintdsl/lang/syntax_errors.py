"""Syntax errors chosen by example (lark's ``match_examples``).

Each label maps to known-bad lines that fail in the same parser state; a failing input is
matched against them and gets that label's message and hint.  The table is itself tested:
every example must parse to an error and be classified under its own label.
"""

from __future__ import annotations

__all__ = ["EXAMPLES", "MESSAGES"]

# label -> (message, hint); {found} is what the parser met instead.
MESSAGES: dict[str, tuple[str, str | None]] = {
    "unknown_statement": (
        "unknown statement {found}",
        "statements: version, name, model, include, concept, let, clamp, pin, ablate, steer, scale, "
        "budget, target, data",
    ),
    "version_number": ("`version` takes a whole number, found {found}", "version 1"),
    "quoted_text": ("expected a quoted string, found {found}", 'quote it: name "assistant-floor"'),
    "include_path": ("expected a quoted path, found {found}", 'quote it: include "other.cdsl"'),
    "concept_from": (
        "expected `from` after the concept name, found {found}",
        'concept helpfulness from pairs "data/helpfulness.yaml"',
    ),
    "concept_source": (
        "expected `pairs` or `file` after `from`, found {found}",
        'concept refusal from file "refusal.safetensors"',
    ),
    "concept_path": (
        "expected a quoted path, found {found}",
        'quote the path: from pairs "data/helpfulness.yaml"',
    ),
    "concept_tail": (
        "unexpected {found} after the concept's path",
        "only `method mean` or `method pca` may follow the path",
    ),
    "op_name": (
        "expected a concept name, found {found}",
        "name a concept defined with `concept`: clamp helpfulness >= 0.3 at layers 10-14",
    ),
    "clamp_bound": (
        "`clamp` needs a bound, found {found}",
        "clamp helpfulness >= 0.3, clamp x <= 1.0, or clamp x in [-0.5, 0.5]",
    ),
    "clamp_strict": (
        "`clamp` bounds are inclusive: use >= or <=, not {found}",
        "clamp helpfulness >= 0.3 at layers 10-14",
    ),
    "clamp_equals": (
        "`clamp` does not take '=', found {found}",
        "to hold a value exactly, use pin: pin formality = 1.0",
    ),
    "missing_value": (
        "expected a value, found {found}",
        "values are numbers with an optional unit: 0.3, 12.5 raw, p25, 1.5 sd",
    ),
    "interval": (
        "malformed interval, found {found}",
        "an interval is two values in brackets: in [-0.5, 0.5]",
    ),
    "pin_equals": (
        "`pin` needs `= value`, found {found}",
        "pin formality = 1.0 at layers 10-12; for a bound use clamp",
    ),
    "by_missing": (
        "expected `by` before the amount, found {found}",
        "steer formality by 2.0 at layer 6 / scale sentiment by 0.5 at layers 4-8",
    ),
    "clause": (
        "unexpected {found} after the statement",
        "clauses: at layers …, at depth A%-B%, in resid|attn|mlp, on prompt|generated|last N|first N, when …",
    ),
    "at_what": (
        "expected `layer`, `layers` or `depth` after `at`, found {found}",
        "at layers 10-14, at layer 12, or at depth 40%-60%",
    ),
    "layer_number": (
        "expected a layer number, found {found}",
        "layers are whole numbers: at layers 10-14, at layers 10,12,14, at layers -4..-1",
    ),
    "layer_list": (
        "unexpected {found} in a layer list",
        "ranges use '-', '–' or '..'; lists use ',': at layers 10-12,14",
    ),
    "depth_percent": ("expected a percentage, found {found}", "at depth 40%-60%"),
    "site_name": ("expected a site after `in`, found {found}", "in resid, in attn, or in mlp"),
    "tokens_name": (
        "expected a token selection after `on`, found {found}",
        "on all, on prompt, on generated, on last 3, on first 2",
    ),
    "gate_concept": ("expected a concept after `when`, found {found}", "when harmful > 0.5"),
    "gate_cmp": ("expected a comparison (>=, <=, >, <), found {found}", "when harmful > 0.5"),
    "gate_layer": (
        "a gate reads one layer: expected `at layer N`, found {found}",
        "the gate comes last and reads a single layer: … when harmful > 0.5 at layer 8",
    ),
    "gate_last": ("the gate must come last, found {found} after it", "move `when …` to the end of the statement"),
    "trailing": ("unexpected {found} at the end of the statement", "one statement per line"),
    "let_name": (
        "`let` needs a name and '=', found {found}",
        "let floor = 0.1 | 0.3 | 0.5, then use it as $floor: clamp helpfulness >= $floor at layers 10-14",
    ),
    "check": (
        "a budget or target is a measure, a comparison and a number; found {found}",
        "budget kl <= 0.05 (nll, kl or ppl), target ab >= 0.1 (ab or a concept's name)",
    ),
    "let_values": (
        "expected values separated by '|', or a range lo .. hi, after `let … =`, found {found}",
        "let floor = 0.1 | 0.3 | 0.5, or let floor = 0 .. 3 for `cdsl tune` "
        "(each a value with its unit: 0.3, 12.5 raw, p25, 1.5 sd)",
    ),
    "variable_position": (
        "a variable cannot stand for a layer, depth or token count, found {found}",
        "only values take variables (bounds, pin values, steer/scale amounts, gate thresholds); "
        "write layers as numbers: at layers 10-14",
    ),
}

_HEADS = ("ablate x", "clamp x >= 1", "clamp x in [0, 1]", "pin x = 1", "steer x by 1", "scale x by 1")


def _each_op(*tails: str) -> list[str]:
    """The same bad clause after every kind of operation (each ends in its own parser states)."""
    return [f"{head} {tail}" for head in _HEADS for tail in tails]


EXAMPLES: dict[str, list[str]] = {
    "unknown_statement": ["clmap x >= 1 at layer 1", "limit x", "42", '"x"', "set floor = 0.3"],
    "version_number": ["version", "version x", 'version "1"'],
    "quoted_text": ["name assistant", "model smollm2", "name"],
    "include_path": ["include other.cdsl", "include"],
    "concept_from": ['concept x pairs "a.yaml"', "concept x", 'concept x = "a"'],
    "concept_source": ['concept x from "a.yaml"', "concept x from"],
    "concept_path": ["concept x from pairs a.yaml", "concept x from pairs", "concept x from file 3"],
    "concept_tail": [
        'concept x from pairs "a.yaml" pca',
        'concept x from pairs "a.yaml" method',
        'concept x from pairs "a" "b"',
    ],
    "op_name": ["clamp >= 0.3 at layer 1", "ablate", "pin = 1 at layer 1", 'clamp "x" >= 1'],
    "clamp_bound": ["clamp x 0.3 at layer 1", "clamp x at layer 1", "clamp x", "clamp x between 1 2"],
    "clamp_strict": ["clamp x > 0.3 at layer 1", "clamp x < 0.3 at layer 1"],
    "clamp_equals": ["clamp x = 0.3 at layer 1"],
    "missing_value": [
        "clamp x >= at layer 1",
        "clamp x >=",
        "pin x = at layer 1",
        "steer x by at layer 1",
        "clamp x <= [1]",
    ],
    "interval": [
        "clamp x in 0.1, 0.5 at layer 1",
        "clamp x in [0.1 0.5] at layer 1",
        "clamp x in [0.1, 0.5 at layer 1",
        "clamp x in [0.1] at layer 1",
        "clamp x in (0.1, 0.5)",
    ],
    "pin_equals": ["pin x 1.0 at layer 1", "pin x >= 1.0 at layer 1", "pin x to 1.0"],
    "by_missing": ["steer x 2 at layer 1", "scale x 0.5 at layer 1", "steer x = 2", "scale x"],
    "clause": _each_op("layers 10-14", "at layer 1 for all", "at layer 1 on last 3 4"),
    "at_what": _each_op("at 10-14", "at", "at l 3"),
    "layer_number": _each_op("at layers", "at layer x", "at layers 10-"),
    "layer_list": _each_op("at layers 1 2", "at layers 1.5", "at layers 1-2-3", "at layers 1,"),
    "depth_percent": _each_op("at depth 40", "at depth", "at depth 40%-60"),
    "site_name": _each_op("at layer 1 in", "at layer 1 in 3"),
    "tokens_name": _each_op("at layer 1 on", "at layer 1 on 3"),
    "gate_concept": _each_op("at layer 1 when", "at layer 1 when > 0.5"),
    "gate_cmp": _each_op("at layer 1 when h 0.5", "at layer 1 when h = 0.5", "at layer 1 when h is 0.5"),
    "gate_layer": _each_op("at layer 1 when h > 0.5 at", "at layer 1 when h > 0.5 at depth 50%"),
    "gate_last": _each_op("when h > 0.5 at layer 1 on last", "at layer 1 when h > 0.5 in attn"),
    "trailing": ["version 1 2", 'name "a" "b"', 'include "a" x'],
    "check": ["budget", "budget 0.05", "target >= 0.1", "budget kl", "budget kl 0.05", "target ab = 0.1"],
    "let_name": ["let", "let x", "let x 0.1", "let = 0.1", "let $x = 0.1", "let x == 0.1", 'let "x" = 1'],
    "let_values": [
        "let x =",
        "let x = 0.1 |",
        "let x = 0.1, 0.3",
        "let x = 0.1 | 0.3 0.5",
        "let x = [0.1, 0.3]",
        "let x = 0.1 || 0.3",
        "let x = 0.1 raw sd",
    ],
    "variable_position": _each_op(
        "at layer $x",
        "at layers $x",
        "at layers 1-$x",
        "at layers 1,$x",
        "at layers 1..$x",
        "at depth $x",
        "at depth 10%-$x",
        "at layer 1 on last $x",
        "at layer 1 on $x",
        "at layer 1 when h > 0.5 at layer $x",
        "at layer 1 when h > 0.5 at layers 1-$x",
        "at layer 1 when h > 0.5 at layers $x",
    ),
}
