"""The shipped example specs are in canonical form (what ``cdsl fmt`` writes) and pass ``cdsl check``, so a
newcomer's first ``cdsl fmt --check specs/examples/*`` and ``cdsl check specs/examples/*`` are clean."""

from __future__ import annotations

from pathlib import Path

import pytest

from constraintdsl.cli.app import main

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "specs" / "examples").glob("*.*"))


def test_there_are_shipped_examples_in_both_forms() -> None:
    assert {p.suffix for p in EXAMPLES} == {".cdsl", ".yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_a_shipped_example_is_in_canonical_form(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["fmt", "--check", str(path)])
    out = capsys.readouterr().out
    assert code == 0, f"{out}run `cdsl fmt {path}` and commit the result"


def test_every_shipped_example_passes_check(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", *map(str, EXAMPLES)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.count("ok: ") == len(EXAMPLES)
