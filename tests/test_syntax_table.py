"""The error-by-example table is itself a test: every example fails to parse and is classified
under its own label, every label has a message, and the mission sentence parses."""

from __future__ import annotations

import pytest
from lark.exceptions import UnexpectedInput

from constraintdsl import SpecError, parse
from constraintdsl.lang.parser import _label, _lark
from constraintdsl.lang.syntax_errors import EXAMPLES, MESSAGES

CASES = [(label, example) for label, examples in EXAMPLES.items() for example in examples]


def _classify(text: str) -> str | None:
    try:
        _lark().parse(text, start="start")
    except UnexpectedInput as err:
        return _label(err)
    raise AssertionError(f"example parsed without error: {text!r}")


@pytest.mark.parametrize(("label", "example"), CASES)
def test_each_bad_example_is_classified_under_its_own_label(label: str, example: str) -> None:
    assert _classify(example) == label


def test_every_label_has_a_message_and_examples() -> None:
    assert set(EXAMPLES) == set(MESSAGES)
    assert all(EXAMPLES[label] for label in EXAMPLES)


@pytest.mark.parametrize(("label", "example"), CASES)
def test_a_bad_example_in_a_file_renders_its_labelled_message(label: str, example: str) -> None:
    with pytest.raises(SpecError) as info:
        parse(f"version 1\n{example}\n", "t.cdsl")
    message, _ = MESSAGES[label]
    head = message.split("{found}")[0]
    assert any(d.message.startswith(head) and d.span.line == 2 for d in info.value.diagnostics)


def test_the_mission_sentence_parses_and_equals_its_ascii_spelling() -> None:
    head = 'version 1\nconcept helpfulness from pairs "h.yaml"\n'
    unicode = parse(head + "clamp helpfulness ≥ 0.3 at layers 10–14\n")
    ascii_ = parse(head + "clamp helpfulness >= 0.3 at layers 10-14\n")
    dots = parse(head + "clamp helpfulness >= 0.3 at layers 10..14\n")
    assert unicode == ascii_ == dots
    assert unicode.to_dsl() == ascii_.to_dsl()
