"""Golden cases: every file in tests/cases/valid loads to its expected canonical JSON, and every
file in tests/cases/invalid fails with exactly the rendered error in its ``.err`` file.

Run with ``CDSL_UPDATE_GOLDEN=1`` to rewrite the expected files after an intended change, then
review the diff.  In that mode a case whose golden file changed (or was missing) fails after writing
it, so an update run never passes by comparing a file with itself; rerun without the variable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from constraintdsl import SpecError, UserError, expand, load
from constraintdsl.lang.variants import continuous

CASES = Path(__file__).parent / "cases"
UPDATE = os.environ.get("CDSL_UPDATE_GOLDEN") == "1"
SUFFIXES = (".cdsl", ".yaml", ".yml")


def _update(golden: Path, text: str) -> None:
    """With CDSL_UPDATE_GOLDEN=1: write ``text`` to ``golden`` when it differs, and fail so the change is
    reviewed (the comparison after it would only compare the new file with itself)."""
    if not UPDATE:
        return
    old = golden.read_text(encoding="utf-8") if golden.exists() else None
    if old == text:
        return
    golden.write_text(text, encoding="utf-8")
    pytest.fail(
        f"{'updated' if old is not None else 'created'} {golden}: "
        "review the diff, then rerun without CDSL_UPDATE_GOLDEN"
    )


def _cases(kind: str) -> list[str]:
    folder = CASES / kind
    return sorted(p.name for p in folder.iterdir() if p.suffix in SUFFIXES and p.is_file())


def _expected_valid(name: str) -> dict[str, object]:
    spec = load(name)
    expected: dict[str, object] = {
        "spec": spec.to_dict(),
        "canonical": spec.to_dsl(),
        "hash": spec.hash(),
        "spans": [
            f"{s.span.path}:{s.span.line}:{s.span.col}" for s in (*spec.concepts, *spec.constraints, *spec.checks)
        ],
    }
    if spec.lets and not continuous(spec):  # a sweep: each variant's name and the hash of its concrete spec
        expected["variants"] = {v.name: v.spec.hash() for v in expand(spec)}
    return expected


@pytest.mark.parametrize("name", _cases("valid"))
def test_valid_case_loads_to_its_golden_canonical_form(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CASES / "valid")
    actual = _expected_valid(name)
    golden = Path(name).with_suffix(".json")
    _update(golden, json.dumps(actual, indent=2, ensure_ascii=False) + "\n")
    assert golden.exists(), f"no golden file {golden}; run with CDSL_UPDATE_GOLDEN=1 and review it"
    assert actual == json.loads(golden.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", _cases("invalid"))
def test_invalid_case_fails_with_its_golden_error(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CASES / "invalid")
    with pytest.raises(UserError) as info:
        load(name)
    rendered = info.value.render() + "\n"
    golden = Path(name + ".err")
    _update(golden, rendered)
    assert golden.exists(), f"no golden file {golden}; run with CDSL_UPDATE_GOLDEN=1 and review it"
    assert rendered == golden.read_text(encoding="utf-8")
    if isinstance(info.value, SpecError):
        for d in info.value.diagnostics:
            assert d.span.line >= 1 and d.span.col >= 1


def test_there_are_at_least_forty_invalid_cases() -> None:
    assert len(_cases("invalid")) >= 40
