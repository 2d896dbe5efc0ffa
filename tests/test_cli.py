"""The cdsl command line: exit codes, located errors without tracebacks, atomic formatting."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from constraintdsl.cli.app import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "specs" / "examples"


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def specs(tmp_path: Path) -> Path:
    """A copy of specs/ (examples + data) to edit freely."""
    shutil.copytree(ROOT / "specs", tmp_path / "specs")
    return tmp_path / "specs" / "examples"


def test_check_accepts_every_shipped_example(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in EXAMPLES.iterdir() if p.suffix in (".cdsl", ".yaml"))
    assert len(files) >= 6
    code, out, err = run(["check", *files], capsys)
    assert (code, err) == (0, "")
    assert out.count("ok: ") == len(files)


def test_check_reports_every_error_with_file_line_and_column_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.cdsl"
    bad.write_text('version 1\nconcept a from pairs "a.yaml"\nclamp a > 1 at layer 1\nablate b at layer 2\n')
    code, _, err = run(["check", str(bad)], capsys)
    assert code == 1
    assert f"{bad}:3:9: error: `clamp` bounds are inclusive" in err
    assert f"{bad}:4:8: error: unknown concept 'b'" in err
    assert "Traceback" not in err


def test_check_json_gives_the_same_fields_machine_readably(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.cdsl"
    bad.write_text("version 2\n")
    code, out, _ = run(["check", "--format", "json", str(bad)], capsys)
    report = json.loads(out)
    (diag,) = report["files"][0]["diagnostics"]
    assert code == 1
    assert diag == {
        "path": str(bad),
        "line": 1,
        "column": 9,
        "end_line": 1,
        "end_column": 10,
        "severity": "error",
        "message": "unsupported spec version 2",
        "hint": "this constraintdsl reads `version 1` specs",
    }


def test_a_missing_file_is_invalid_input_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["check", "no/such.cdsl"], capsys)
    assert code == 2
    assert err.startswith("no/such.cdsl: error: no such file")


def test_usage_errors_name_the_flag_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["fmt", "--to", "xml", "x.cdsl"], capsys)
    assert code == 2
    assert "--to" in err


def test_hash_is_equal_for_dsl_and_yaml_twins_and_ignores_comments(
    specs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, dsl_hash, _ = run(["hash", str(specs / "assistant-floor.cdsl")], capsys)
    _, yaml_hash, _ = run(["hash", str(specs / "assistant-floor.yaml")], capsys)
    plain = specs / "plain.cdsl"
    plain.write_text(
        'version 1\nname "assistant-floor"\nmodel "smollm2"\n'
        'concept helpfulness from pairs "../data/helpfulness.yaml"\n'
        "clamp   helpfulness >= 0.3   at layers 10-14\n"
    )
    _, plain_hash, _ = run(["hash", str(plain)], capsys)
    assert dsl_hash.split()[0] == yaml_hash.split()[0] == plain_hash.split()[0]
    assert dsl_hash.startswith("sha256:")


def test_hash_changes_when_a_concept_data_file_changes(specs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = str(specs / "assistant-floor.cdsl")
    _, before, _ = run(["hash", spec], capsys)
    data = specs.parent / "data" / "helpfulness.yaml"
    data.write_text(data.read_text() + "\n# edited\n")
    _, after, _ = run(["hash", spec], capsys)
    assert before != after


def test_fmt_rewrites_to_canonical_form_keeping_comments_and_is_idempotent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "x.cdsl"
    f.write_text(
        "# top\nversion 1\n\n\nconcept   h from pairs 'h.yaml'   # the concept\n"
        "clamp h ≥ 0.30 at layers 12,10-11   # floor\n"
    )
    code, out, _ = run(["fmt", str(f)], capsys)
    assert (code, out) == (0, f"reformatted {f}\n")
    assert f.read_text() == (
        '# top\nversion 1\n\nconcept h from pairs "h.yaml"  # the concept\n\nclamp h >= 0.3 at layers 10-12  # floor\n'
    )
    assert run(["fmt", "--check", str(f)], capsys)[0] == 0
    assert run(["fmt", str(f)], capsys)[1] == ""


def test_fmt_check_reports_without_writing_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "x.cdsl"
    f.write_text("version   1\n")
    code, out, _ = run(["fmt", "--check", str(f)], capsys)
    assert (code, out) == (1, f"would reformat {f}\n")
    assert f.read_text() == "version   1\n"


def test_fmt_refuses_an_invalid_file_and_leaves_it_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "x.cdsl"
    f.write_text("version 1\nclamp\n")
    code, _, err = run(["fmt", str(f)], capsys)
    assert code == 2
    assert f"{f}:2:6: error:" in err
    assert f.read_text() == "version 1\nclamp\n"


def test_fmt_will_not_drop_yaml_comments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "x.yaml"
    text = "version: 1   # keep me\nconstraints: []\n"
    f.write_text(text)
    code, _, err = run(["fmt", str(f)], capsys)
    assert code == 2
    assert f"{f}:1:14: error: fmt would drop this comment" in err
    assert f.read_text() == text


def test_fmt_to_yaml_and_back_gives_the_same_spec(specs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = specs / "gated-floor.cdsl"
    _, yaml_text, _ = run(["fmt", "--to", "yaml", str(src)], capsys)
    twin = specs / "gated-floor.yaml"
    twin.write_text(yaml_text)
    assert run(["diff", str(src), str(twin)], capsys)[0] == 0
    _, dsl_text, _ = run(["fmt", "--to", "dsl", str(twin)], capsys)
    _, canonical, _ = run(["fmt", "--to", "dsl", str(src)], capsys)
    assert dsl_text.strip().splitlines()[-2:] == canonical.strip().splitlines()[-2:]


def test_diff_reports_changed_fields_added_and_removed_statements(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = 'version 1\nconcept h from pairs "h.yaml"\nconcept r from pairs "r.yaml"\n'
    a, b = tmp_path / "a.cdsl", tmp_path / "b.cdsl"
    a.write_text(head + "clamp h >= 0.3 at layers 10-14\nsteer r by 2 at layer 6\n")
    b.write_text(head + "clamp h >= 0.5 at layers 10-14\nablate r at layers 8-20\n")
    code, out, _ = run(["diff", str(a), str(b)], capsys)
    assert code == 1
    assert f"~ clamp h: min 0.3 → 0.5  ({a}:4:1 → {b}:4:1)" in out
    assert f"- steer r by 2 at layer 6  ({a}:5:1)" in out
    assert f"+ ablate r at layers 8-20  ({b}:5:1)" in out
    code, out, _ = run(["diff", "--format", "json", str(a), str(b)], capsys)
    changes = json.loads(out)["changes"]
    assert [c["kind"] for c in changes] == ["changed", "removed", "added"]


def test_schema_is_valid_json_schema_that_accepts_the_yaml_examples(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import jsonschema
    import yaml

    code, out, _ = run(["schema"], capsys)
    schema = json.loads(out)
    assert code == 0
    jsonschema.Draft202012Validator.check_schema(schema)
    for f in EXAMPLES.glob("*.yaml"):
        jsonschema.validate(yaml.safe_load(f.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"version": 1, "constraints": [{"op": "clamp", "concpet": "x"}]}, schema)


def test_python_dash_m_runs_the_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "constraintdsl", "check", str(EXAMPLES / "composed.cdsl")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ok:" in proc.stdout


def test_an_internal_error_is_reported_without_traceback_unless_debug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from constraintdsl.cli import spec_files as commands

    def boom(*args: object, **kwargs: object) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(commands, "schema", boom)
    code, _, err = run(["schema"], capsys)
    assert code == 3
    assert "internal error: RuntimeError: boom" in err and "Traceback" not in err
    with pytest.raises(RuntimeError):
        main(["--debug", "schema"])
