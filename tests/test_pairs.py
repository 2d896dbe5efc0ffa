"""Pair dataset loading: the YAML / JSONL format, and a located error for every kind of problem."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from constraintdsl.concepts.pairs import load_pairs
from constraintdsl.errors import SpecError, UserError

GOOD = """\
concept: sentiment
description: Positive versus negative tone.
positive: positive
negative: negative
pairs:
  - positive: "What a lovely day."
    negative: "What an awful day."
  - positive: "I love it."
    negative: "I hate it."
    split: test
"""


def write(tmp_path: Path, text: str, name: str = "data.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_pairs(path)
    return info.value


def test_a_valid_yaml_dataset_loads_with_splits_spans_and_the_file_hash(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    pairs = load_pairs(path)
    assert pairs.concept == "sentiment"
    assert pairs.positive_label == "positive" and pairs.negative_label == "negative"
    assert len(pairs.train) == 1 and len(pairs.test) == 1
    assert pairs.pairs[0].positive == "What a lovely day."
    assert pairs.pairs[0].span is not None and pairs.pairs[0].span.line == 6
    assert pairs.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not pairs.is_chat


def test_chat_shaped_pairs_keep_their_prompt(tmp_path: Path) -> None:
    text = GOOD.replace('  - positive: "What', '  - prompt: "How was it?"\n    positive: "What').replace(
        '  - positive: "I love', '  - prompt: "And?"\n    positive: "I love'
    )
    pairs = load_pairs(write(tmp_path, text))
    assert pairs.is_chat and pairs.pairs[0].prompt == "How was it?"


def test_a_jsonl_dataset_takes_its_concept_name_from_the_file_stem(tmp_path: Path) -> None:
    lines = [
        {"positive": "Good show.", "negative": "Bad show."},
        {"positive": "Nice.", "negative": "Awful.", "split": "test"},
    ]
    path = write(tmp_path, "\n".join(json.dumps(x) for x in lines) + "\n\n", "tone.jsonl")
    pairs = load_pairs(path)
    assert pairs.concept == "tone" and len(pairs.pairs) == 2 and pairs.pairs[1].split == "test"


def test_a_missing_file_names_the_path_or_the_pointing_statement(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        load_pairs(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value) and "no such file" in str(info.value)
    from constraintdsl.errors import Span

    with pytest.raises(SpecError) as located:
        load_pairs(tmp_path / "nope.yaml", span=Span("spec.cdsl", 3, 9))
    assert str(located.value).startswith("spec.cdsl:3:9:")


def test_bad_yaml_is_located(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, "concept: x\npairs: [\n  - a: b\n"))
    assert err.diagnostics[0].span.line >= 2 and "invalid YAML" in err.message


def test_duplicate_keys_are_refused_at_the_second_occurrence(tmp_path: Path) -> None:
    text = GOOD.replace('    negative: "What an awful day."', '    negative: "x"\n    negative: "What an awful day."')
    err = error_of(write(tmp_path, text))
    assert "duplicate key 'negative'" in err.message and err.diagnostics[0].span.line == 8


def test_unknown_keys_get_a_did_you_mean_hint(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, GOOD.replace("    split: test", "    splitt: test")))
    assert "unknown key 'splitt'" in err.message and err.hint == "did you mean 'split'?"
    assert str(err).startswith(f"{tmp_path / 'data.yaml'}:10:5:")
    err = error_of(write(tmp_path, GOOD.replace("description:", "descripton:")))
    assert err.hint == "did you mean 'description'?"


def test_wrong_types_and_empty_strings_are_located(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, GOOD.replace('"I hate it."', "yes")))
    assert "must be a string, got a boolean" in err.message and err.hint == "put the text in quotes"
    assert err.diagnostics[0].span.line == 9
    err = error_of(write(tmp_path, GOOD.replace('"I hate it."', '"  "')))
    assert "must not be empty" in err.message
    err = error_of(write(tmp_path, GOOD.replace("pairs:\n", "pairs: 3\n", 1).split("  - ")[0]))
    assert "'pairs' must be a list" in err.message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("    split: test", "    split: tset").replace('"I hate it."', "12")
    err = error_of(write(tmp_path, text))
    messages = [d.message for d in err.diagnostics]
    assert any("unknown split 'tset'" in m for m in messages)
    assert any("got an integer" in m for m in messages)


def test_aliases_and_python_tags_are_refused_without_constructing_anything(tmp_path: Path) -> None:
    text = GOOD.replace('"What a lovely day."', '&a "What a lovely day."').replace('"I love it."', "*a")
    err = error_of(write(tmp_path, text))
    assert "aliases" in err.message
    tagged = GOOD.replace('"I love it."', '!!python/object/apply:os.system ["touch pwned"]')
    err = error_of(write(tmp_path, tagged))
    assert "must be a string" in err.message
    assert not (tmp_path / "pwned").exists()


def test_a_dataset_without_train_pairs_is_refused(tmp_path: Path) -> None:
    text = GOOD.replace('    negative: "What an awful day."', '    negative: "What an awful day."\n    split: test')
    err = error_of(write(tmp_path, text))
    assert "no train pairs" in err.message


def test_mixing_chat_and_plain_pairs_is_refused(tmp_path: Path) -> None:
    text = GOOD.replace('  - positive: "I love', '  - prompt: "And?"\n    positive: "I love')
    err = error_of(write(tmp_path, text))
    assert "all chat-shaped" in err.message and err.diagnostics[0].span.line == 8


def test_identical_poles_and_missing_keys_are_refused(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, GOOD.replace('"I hate it."', '"I love it."')))
    assert "identical" in err.message
    err = error_of(write(tmp_path, GOOD.replace('    negative: "I hate it."\n', "")))
    assert "missing 'negative'" in err.message
    err = error_of(write(tmp_path, GOOD.replace("negative: negative\n", "")))
    assert "missing required key 'negative'" in err.message


def test_jsonl_problems_are_located_by_line_and_column(tmp_path: Path) -> None:
    text = '{"positive": "a b", "negative": "c d"}\n{"positive": "a", "negativ": "x"}\n{"positive": \n'
    err = error_of(write(tmp_path, text, "c.jsonl"))
    spans = [(d.span.line, d.message) for d in err.diagnostics]
    assert (2, "unknown key 'negativ' in pair 2") in spans
    assert any(line == 3 and "invalid JSON" in m for line, m in spans)
    dup = '{"positive": "a b", "negative": "c d", "positive": "e"}\n'
    assert "duplicate key 'positive'" in error_of(write(tmp_path, dup, "d.jsonl")).message
    typed = '{"positive": 3, "negative": "c d"}\n'
    assert "must be a string, got int" in error_of(write(tmp_path, typed, "e.jsonl")).message


def test_non_utf8_and_unsupported_suffixes_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"concept: x\n\xff\xfe")
    err = error_of(path)
    assert "not UTF-8" in err.message and err.diagnostics[0].span.line == 2
    with pytest.raises(UserError, match="unsupported pair dataset format"):
        load_pairs(write(tmp_path, GOOD, "data.txt"))


def test_an_empty_file_is_a_located_error(tmp_path: Path) -> None:
    assert "empty" in error_of(write(tmp_path, "")).message
    assert "must be a mapping" in error_of(write(tmp_path, "- a\n- b\n")).message


def test_a_dataset_says_which_completion_tokens_are_read_all_by_default(tmp_path: Path) -> None:
    assert load_pairs(write(tmp_path, GOOD)).read == "all"
    for read in ("all", "first", "last"):
        text = GOOD.replace("pairs:\n", f"read: {read}\npairs:\n")
        assert load_pairs(write(tmp_path, text)).read == read
    line = json.dumps({"positive": "Good show.", "negative": "Bad show."})
    assert load_pairs(write(tmp_path, line + "\n", "tone.jsonl")).read == "all"


def test_an_unknown_read_is_located_with_a_hint(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, GOOD.replace("pairs:\n", "read: lst\npairs:\n")))
    assert err.message == "unknown read 'lst': which completion tokens to read"
    assert err.hint == "did you mean 'last'?" and err.where.endswith(":5:7")
    err = error_of(write(tmp_path, GOOD.replace("pairs:\n", "read: 3\npairs:\n")))
    assert "'read' must be a string" in err.message
