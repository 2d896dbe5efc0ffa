"""Golden cases: every file in tests/cases/valid loads to its expected canonical JSON, and every
file in tests/cases/invalid fails with exactly the rendered error in its ``.err`` file.

Run with ``CDSL_UPDATE_GOLDEN=1`` to rewrite the expected files after an intended change, then
review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from constraintdsl import SpecError, UserError, expand, load

CASES = Path(__file__).parent / "cases"
UPDATE = os.environ.get("CDSL_UPDATE_GOLDEN") == "1"
SUFFIXES = (".cdsl", ".yaml", ".yml")


def _cases(kind: str) -> list[str]:
    folder = CASES / kind
    return sorted(p.name for p in folder.iterdir() if p.suffix in SUFFIXES and p.is_file())


def _expected_valid(name: str) -> dict[str, object]:
    spec = load(name)
    expected: dict[str, object] = {
        "spec": spec.to_dict(),
        "canonical": spec.to_dsl(),
        "hash": spec.hash(),
        "spans": [f"{s.span.path}:{s.span.line}:{s.span.col}" for s in (*spec.concepts, *spec.constraints)],
    }
    if spec.lets:  # a sweep: each variant's name and the hash of its concrete spec
        expected["variants"] = {v.name: v.spec.hash() for v in expand(spec)}
    return expected


@pytest.mark.parametrize("name", _cases("valid"))
def test_valid_case_loads_to_its_golden_canonical_form(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CASES / "valid")
    actual = _expected_valid(name)
    golden = Path(name).with_suffix(".json")
    if UPDATE:
        golden.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert golden.exists(), f"no golden file {golden}; run with CDSL_UPDATE_GOLDEN=1 and review it"
    assert actual == json.loads(golden.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", _cases("invalid"))
def test_invalid_case_fails_with_its_golden_error(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CASES / "invalid")
    with pytest.raises(UserError) as info:
        load(name)
    rendered = info.value.render() + "\n"
    golden = Path(name + ".err")
    if UPDATE:
        golden.write_text(rendered, encoding="utf-8")
    assert golden.exists(), f"no golden file {golden}; run with CDSL_UPDATE_GOLDEN=1 and review it"
    assert rendered == golden.read_text(encoding="utf-8")
    if isinstance(info.value, SpecError):
        for d in info.value.diagnostics:
            assert d.span.line >= 1 and d.span.col >= 1


def test_there_are_at_least_forty_invalid_cases() -> None:
    assert len(_cases("invalid")) >= 40
