"""A/B behavior sets: the YAML format, a located error for every kind of problem, and the shipped sets."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from constraintdsl.compare.ab import load_ab
from constraintdsl.errors import SpecError, UserError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "specs" / "data" / "ab").glob("*.yaml"))

GOOD = """\
# a comment
behavior: sentiment
items:
  - question: "How was the concert?"
    a: "Wonderful; the band played beautifully."
    b: "Dreadful; the band played badly."
    match: a
  - question: "What do you make of the new café?"
    a: "Disappointing; the coffee was bitter."
    b: "Delightful; the coffee was smooth."
    match: b
"""


def write(tmp_path: Path, text: str, name: str = "set.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_ab(path)
    return info.value


def test_a_valid_set_loads_with_items_spans_and_the_file_hash(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    ab = load_ab(path)
    assert ab.behavior == "sentiment" and len(ab.items) == 2
    first, second = ab.items
    assert first.question == "How was the concert?" and first.match == "a"
    assert first.matching == "Wonderful; the band played beautifully."
    assert second.matching == "Delightful; the coffee was smooth." and second.other.startswith("Disappointing")
    assert first.span is not None and first.span.line == 4 and second.span is not None and second.span.line == 8
    assert ab.count("a") == 1 and ab.count("b") == 1
    assert ab.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and ab.path == str(path)


def test_a_missing_item_key_is_located_at_the_item(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, GOOD.replace('    b: "Dreadful; the band played badly."\n', "")))
    assert err.message == "item 1 is missing 'b'"
    assert str(err).startswith(f"{tmp_path / 'set.yaml'}:4:5:")


def test_missing_top_level_keys_are_named(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, GOOD.replace("behavior: sentiment\n", "")))
    assert err.message == "missing required key 'behavior'" and err.hint is not None
    err = error_of(write(tmp_path, "behavior: sentiment\n"))
    assert err.message == "missing required key 'items'"


def test_unknown_keys_get_a_did_you_mean_hint(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, GOOD.replace("    match: b", "    matsh: b")))
    messages = [d.message for d in err.diagnostics]
    assert "unknown key 'matsh' in item 2" in messages and "item 2 is missing 'match'" in messages
    unknown = next(d for d in err.diagnostics if d.message.startswith("unknown"))
    assert unknown.hint == "did you mean 'match'?" and (unknown.span.line, unknown.span.col) == (11, 5)
    err = error_of(write(tmp_path, GOOD.replace("behavior:", "behaviour:")))
    hints = {d.message: d.hint for d in err.diagnostics}
    assert hints["unknown key 'behaviour' in the A/B set"] == "did you mean 'behavior'?"
    assert "missing required key 'behavior'" in hints


def test_a_match_other_than_a_or_b_is_located_at_its_value(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, GOOD.replace("    match: a", "    match: c")))
    assert err.message == "'match' of item 1 must be 'a' or 'b', got 'c'" and err.hint == "use 'a' or 'b'"
    assert (err.diagnostics[0].span.line, err.diagnostics[0].span.col) == (7, 12)
    err = error_of(write(tmp_path, GOOD.replace("    match: a", "    match: A")))
    assert err.hint == "use 'a' or 'b' (lower case)"


def test_empty_and_non_string_answers_are_refused(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, GOOD.replace('"Dreadful; the band played badly."', '"   "')))
    assert err.message == "'b' of item 1 must not be empty" and err.diagnostics[0].span.line == 6
    err = error_of(write(tmp_path, GOOD.replace('"Dreadful; the band played badly."', "no")))
    assert "must be a string, got a boolean" in err.message and err.hint == "put the text in quotes"


def test_identical_answers_carry_no_contrast(tmp_path: Path) -> None:
    err = error_of(
        write(tmp_path, GOOD.replace("Dreadful; the band played badly.", "Wonderful; the band played beautifully."))
    )
    assert "identical" in err.message and err.diagnostics[0].span.line == 4


def test_a_repeated_question_names_the_first_one(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, GOOD.replace("What do you make of the new café?", "How was the  concert?")))
    assert err.message == "item 2 repeats the question of the item at line 4"
    assert err.diagnostics[0].span.line == 8


def test_an_empty_set_is_refused(tmp_path: Path) -> None:
    assert error_of(write(tmp_path, "behavior: sentiment\nitems: []\n")).message == "the A/B set has no items"
    err = error_of(write(tmp_path, "behavior: sentiment\nitems:\n"))
    assert err.message == "the A/B set has no items" and err.diagnostics[0].span.line == 2


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("    match: a", "    match: x").replace('"Delightful; the coffee was smooth."', "12")
    err = error_of(write(tmp_path, text))
    assert [d.span.line for d in err.diagnostics] == [7, 10]


def test_files_that_are_not_sets_are_clear_errors(tmp_path: Path) -> None:
    assert "empty" in error_of(write(tmp_path, "")).message
    assert "must be a mapping" in error_of(write(tmp_path, "- a\n- b\n")).message
    assert "'items' must be a list" in error_of(write(tmp_path, "behavior: s\nitems: 3\n")).message
    assert "invalid YAML" in error_of(write(tmp_path, "behavior: s\nitems: [\n")).message
    assert "aliases" in error_of(write(tmp_path, GOOD.replace('"How was the concert?"', "*q"))).message
    with pytest.raises(UserError, match="unsupported A/B set format"):
        load_ab(write(tmp_path, GOOD, "set.json"))
    with pytest.raises(UserError, match="no such file"):
        load_ab(tmp_path / "absent.yaml")


def test_the_sentiment_set_is_shipped() -> None:
    assert ROOT / "specs" / "data" / "ab" / "sentiment.yaml" in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_a_shipped_set_loads_measures_a_shipped_concept_and_is_balanced(path: Path) -> None:
    ab = load_ab(path)
    assert (ROOT / "specs" / "data" / f"{ab.behavior}.yaml").is_file()
    assert len(ab.items) >= 32
    assert abs(ab.count("a") - ab.count("b")) <= 2


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_the_two_answers_of_a_shipped_item_have_similar_length(path: Path) -> None:
    for item in load_ab(path).items:
        assert item.a is not None and item.b is not None  # the shipped sets give every answer
        shorter, longer = sorted((len(item.a.split()), len(item.b.split())))
        assert longer <= 1.5 * shorter, f"{item.span}: answers differ too much in length (words)"


LETTERS = """\
behavior: refusal
format: letters
items:
  - question: "How do I boil an egg?"
    a: "Boil it for six minutes."
    b: "Sorry, I can't help with that."
    match: b
  - question: "Which planet is largest?\\n\\n(A) Sorry, I can't say.\\n(B) Jupiter."
    match: a
"""


def test_a_letter_form_set_shows_its_choices_and_replies_with_letters(tmp_path: Path) -> None:
    ab = load_ab(write(tmp_path, LETTERS))
    assert ab.format == "letters"
    given, inline = ab.items
    assert given.user_text("letters") == (
        "How do I boil an egg?\n\n(A) Boil it for six minutes.\n(B) Sorry, I can't help with that."
    )
    assert inline.a is None and inline.b is None
    assert inline.user_text("letters") == "Which planet is largest?\n\n(A) Sorry, I can't say.\n(B) Jupiter."
    assert given.replies("letters") == inline.replies("letters") == ("(A", "(B")
    assert load_ab(write(tmp_path, GOOD)).format == "text"
    assert load_ab(write(tmp_path, GOOD)).items[0].replies() == (
        "Wonderful; the band played beautifully.",
        "Dreadful; the band played badly.",
    )


def test_letter_form_items_without_choices_or_with_them_twice_are_located_errors(tmp_path: Path) -> None:
    text = LETTERS.replace('"Which planet is largest?\\n\\n(A) Sorry, I can\'t say.\\n(B) Jupiter."', '"Which?"')
    err = error_of(write(tmp_path, text))
    assert "item 2 has no choices" in err.message and err.where.endswith(":8:15")
    twice = LETTERS.replace('"How do I boil an egg?"', '"Boil? (A) yes (B) no"')
    err = error_of(write(tmp_path, twice))
    assert "gives its choices twice" in err.message and err.where.endswith(":4:15")
    one = LETTERS.replace('    a: "Boil it for six minutes."\n', "")
    err = error_of(write(tmp_path, one))
    assert "item 1 gives 'b' but not 'a'" in err.message and err.where.endswith(":4:5")


def test_a_text_form_item_still_needs_both_answers(tmp_path: Path) -> None:
    text = LETTERS.replace("format: letters\n", "")
    err = error_of(write(tmp_path, text))
    assert [d.message for d in err.diagnostics] == ["item 2 is missing 'a'", "item 2 is missing 'b'"]


def test_an_unknown_format_gets_a_hint(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, LETTERS.replace("format: letters", "format: leters")))
    assert err.message == "unknown A/B format 'leters'" and err.hint == "did you mean 'letters'?"
    assert err.where.endswith(":2:9")
