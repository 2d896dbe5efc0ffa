"""Generated edge inputs: huge files, huge lines, YAML bombs, deep nesting, random and mutated bytes.

Every one must end in a parsed spec or a located :class:`SpecError` (a :class:`UserError` for a file
that cannot be read), quickly, and the CLI must never show a traceback for any of them.  Inputs that
could exhaust memory or hang run in a child process with a memory cap and a timeout, so a bug fails
the test instead of taking the machine down (a hang is caught by the child's timeout).  Cost is checked as
the property meant — linear (or constant) growth: an input ten times larger may cost at most
:data:`GROWTH` times the CPU time (``time.process_time``) of the smaller one, measured in the same process.
No bound depends on how fast the machine is.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from constraintdsl import Spec, SpecError, UserError, load, parse, parse_file
from constraintdsl.cli.app import main

CASES = Path(__file__).parent / "cases"
MB = 1_000_000
SMALL = 100_000  # the smaller input of a scaling check (the larger is MB: ten times larger)
GROWTH = 30  # ten times the input may cost at most this many times the CPU time: linear (10) or n log n (12),
# with room for the noise of a shared machine (the smaller input is timed three times, its best kept); a
# quadratic cost would be 100
FLOOR = 0.05  # seconds: below this a measurement is noise, so the smaller input counts at least this much
CHILD_MEMORY = 2 * 1024**3  # bytes of address space for an isolated child process

HEADER = ["version 1", *(f'concept c{i} from pairs "data/c{i}.yaml"' for i in range(50))]
FORMS = [
    "clamp c{i} >= 0.3 at layers 10-14 on generated",
    "clamp c{i} in [-0.5 raw, p90] at layer 12 in attn",
    "ablate c{i} at layers -4..-1 in mlp on last 3",
    "pin c{i} = p50 at depth 40%-60% on first 2",
    "steer c{i} by 1.5 sd at layer 6 on prompt when c{j} > 0.5 at layer 2",
    "scale c{i} by 0.5 at layers 2,4,6-8  # a trailing comment",
]


def big_spec_lines(size: int = MB) -> list[str]:
    """A spec of valid statements of every kind, about ``size`` characters long."""
    lines = list(HEADER)
    total = sum(len(line) + 1 for line in lines)
    k = 0
    while total < size:
        line = FORMS[k % len(FORMS)].format(i=k % 50, j=(k + 1) % 50)
        lines.append(line)
        total += len(line) + 1
        k += 1
    return lines


def billion_laughs(levels: int = 10, width: int = 10) -> str:
    """The classic alias bomb: ``width ** levels`` strings if aliases were expanded."""
    out = ["version: 1", 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for n in range(1, levels):
        refs = ", ".join([f"*l{n - 1}"] * width)
        out.append(f"l{n}: &l{n} [{refs}]")
    return "\n".join(out) + "\n"


def run_isolated(code: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` in a child process capped at CHILD_MEMORY; fail the test if it hangs."""
    prelude = textwrap.dedent(
        f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, ({CHILD_MEMORY}, {CHILD_MEMORY}))
        """
    )
    try:
        return subprocess.run(
            [sys.executable, "-c", prelude + textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {timeout} s (a hang or a quadratic blow-up)")


def outcomes_in_child(
    texts: dict[str, str], suffix: str, tmp_path: Path, timeout: float = 60.0
) -> dict[str, tuple[str, float]]:
    """Write each text to a spec file, parse_file them one by one (rendering any error) in one child process,
    after a warm-up parse.  Returns, per text, ("ok" | "SpecError" | "UserError" | "EXC <type>: <message>",
    CPU seconds the child measured: the best of three for all but the largest text)."""
    paths = {}
    for name, text in texts.items():
        path = tmp_path / f"{re.sub(r'[^a-z0-9]+', '-', name.lower())}{suffix}"
        path.write_text(text, encoding="utf-8")
        paths[name] = str(path)
    warm = tmp_path / f"warm-up{suffix}"
    warm.write_text("version: 1\n" if suffix == ".yaml" else "version 1\n", encoding="utf-8")
    code = f"""
        import json, time
        from constraintdsl import SpecError, UserError, parse_file
        def attempt(path):
            t = time.process_time()
            try:
                parse_file(path)
                kind = "ok"
            except SpecError as e:
                e.render()
                kind = "SpecError"
            except UserError as e:
                e.render()
                kind = "UserError"
            except BaseException as e:
                kind = "EXC " + type(e).__name__ + ": " + str(e)[:200]
            return [kind, time.process_time() - t]
        def best(path, times):
            runs = [attempt(path) for _ in range(times)]
            return [runs[0][0], min(r[1] for r in runs)]
        attempt({str(warm)!r})
        sizes = {{name: len(open(path, "rb").read()) for name, path in {paths!r}.items()}}
        largest = max(sizes.values())
        print(json.dumps({{name: best(path, 1 if sizes[name] == largest else 3) for name, path in {paths!r}.items()}}))
        """
    proc = run_isolated(code, timeout)
    assert proc.returncode == 0, f"child died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    return {name: (str(kind), float(seconds)) for name, (kind, seconds) in found.items()}


def outcome_in_child(text: str, suffix: str, tmp_path: Path, timeout: float = 60.0) -> tuple[str, float]:
    """:func:`outcomes_in_child` for one text."""
    return outcomes_in_child({"input": text}, suffix, tmp_path, timeout)["input"]


def assert_grows_linearly(small: float, big: float, what: str) -> None:
    """``big`` (CPU seconds for ten times the input of ``small``) is at most GROWTH times ``small``."""
    assert big <= GROWTH * max(small, FLOOR), (
        f"{what}: ten times the input cost {big / max(small, 1e-9):.1f} times the CPU time "
        f"({small:.3f} s -> {big:.3f} s): worse than linear"
    )


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- a 1 MB spec -------------------------------------------------------------------------------


# Costs are measured in a fresh child process: in the test process the garbage collector's passes over
# everything pytest holds would grow with the heap, not with the input.


def test_a_one_megabyte_spec_of_valid_statements_parses_in_linear_time(tmp_path: Path) -> None:
    lines = big_spec_lines()
    text = "\n".join(lines) + "\n"
    assert len(text) >= MB
    spec = parse(text, "big.cdsl")
    assert len(spec.constraints) == len(lines) - len(HEADER)
    assert spec.constraints[-1].span.line == len(lines)
    small = "\n".join(big_spec_lines(SMALL)) + "\n"
    got = outcomes_in_child({"small": small, "big": text}, ".cdsl", tmp_path)
    assert got["small"][0] == got["big"][0] == "ok"
    assert_grows_linearly(got["small"][1], got["big"][1], "parsing a 1 MB spec")


def test_a_one_megabyte_spec_file_loads_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "big.cdsl"
    path.write_text("\n".join(big_spec_lines()) + "\n", encoding="utf-8")
    assert isinstance(load(path), Spec)


def _with_bad_line(size: int) -> tuple[list[str], int]:
    lines = big_spec_lines(size)
    bad = len(lines) // 2
    lines[bad] = "clamp c7 > 0.3 at layers 10-14"
    return lines, bad


def test_a_one_megabyte_spec_with_one_bad_line_reports_exactly_that_line(tmp_path: Path) -> None:
    (small_lines, _), (lines, bad) = _with_bad_line(SMALL), _with_bad_line(MB)
    path = tmp_path / "big-bad.cdsl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(SpecError) as info:
        parse_file(path)
    rendered = info.value.render()
    assert [(d.span.line, d.span.col) for d in info.value.diagnostics] == [(bad + 1, 10)]
    assert f"{path}:{bad + 1}:10: error:" in rendered
    assert "clamp c7 > 0.3 at layers 10-14" in rendered
    texts = {"small": "\n".join(small_lines) + "\n", "big": "\n".join(lines) + "\n"}
    got = outcomes_in_child(texts, ".cdsl", tmp_path)
    assert got["small"][0] == got["big"][0] == "SpecError"
    assert_grows_linearly(got["small"][1], got["big"][1], "a 1 MB spec with one bad line")


def test_a_spec_with_twenty_thousand_bad_lines_reports_them_all_in_linear_time(tmp_path: Path) -> None:
    # 20,000 references to an undefined concept: every one is reported, and rendering the report
    # must not re-read the whole file per diagnostic.
    texts = {str(n): "version 1\n" + "clamp nowhere >= 0.3 at layer 1\n" * n for n in (2_000, 20_000)}
    got = outcomes_in_child(texts, ".cdsl", tmp_path)
    assert got["2000"][0] == got["20000"][0] == "SpecError"
    assert_grows_linearly(got["2000"][1], got["20000"][1], "reporting 20,000 errors")


# -- YAML bombs and deep nesting ---------------------------------------------------------------


def test_a_billion_laughs_yaml_is_refused_without_expanding_it(tmp_path: Path) -> None:
    # 10 levels would be 10**10 strings expanded; refusing costs no more than refusing 2 levels (constant)
    got = outcomes_in_child({"2": billion_laughs(levels=2), "10": billion_laughs()}, ".yaml", tmp_path)
    assert got["2"][0] == got["10"][0] == "SpecError"
    assert_grows_linearly(got["2"][1], got["10"][1], "refusing an alias bomb")
    path = tmp_path / "laughs.yaml"
    path.write_text(billion_laughs(), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        parse_file(path)
    diagnostics = info.value.diagnostics
    assert [(d.span.line, d.span.col) for d in diagnostics if "alias" in d.message] == [(3, 10)]
    # The document does start with `version: 1`: no second, spurious error at the top.
    assert not [d.message for d in diagnostics if "version" in d.message]


def test_a_billion_laughs_hidden_inside_a_constraint_is_refused(tmp_path: Path) -> None:
    def bomb(levels: int) -> str:
        return (
            "version: 1\n"
            "concepts:\n"
            "  h: {from: pairs, path: h.yaml}\n"
            "constraints:\n"
            '  - &a {op: ablate, concept: h, layers: "1"}\n'
            + "".join(f"  - &b{i} [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n" for i in range(levels))
        )

    got = outcomes_in_child({"1": bomb(1), "3": bomb(3)}, ".yaml", tmp_path)
    assert got["1"][0] == got["3"][0] == "SpecError"
    assert_grows_linearly(got["1"][1], got["3"][1], "refusing aliases inside constraints")


NESTED: dict[str, Callable[[int], str]] = {
    "flow list": lambda n: "version: 1\nx: " + "[" * n + "]" * n + "\n",
    "flow mapping": lambda n: "version: 1\nx: " + "{a: " * n + "1" + "}" * n + "\n",
    "block sequence": lambda n: "version: 1\nx:\n" + "".join(" " * i + "-\n" for i in range(1, n)),
    "constraints list": lambda n: "version: 1\nconstraints: " + "[" * n + "]" * n + "\n",
}


@pytest.mark.parametrize("shape", sorted(NESTED))
def test_deeply_nested_yaml_is_refused_with_a_spec_error_in_linear_time(shape: str, tmp_path: Path) -> None:
    deep = 3_000 if shape == "block sequence" else 100_000  # a block sequence of depth n is n**2 / 2 bytes
    got = outcomes_in_child({"small": NESTED[shape](deep // 10), "deep": NESTED[shape](deep)}, ".yaml", tmp_path)
    assert got["deep"][0] == "SpecError", f"{shape}: {got['deep'][0]}"
    assert got["small"][0] in ("ok", "SpecError"), f"{shape}: {got['small'][0]}"
    size = 100 if shape == "block sequence" else 10  # the block sequence's text grows with the square
    assert got["deep"][1] <= GROWTH * size / 10 * max(got["small"][1], FLOOR), f"{shape}: {got}"


def test_a_hundred_thousand_deep_flow_list_is_refused_in_process_too(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("version: 1\nx: " + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(SpecError) as info:
        parse_file(path)
    assert "deep" in info.value.diagnostics[0].message


# -- very long single lines ---------------------------------------------------------------------


def _layer_list(size: int) -> str:
    """``0,1,2,…`` about ``size`` characters long (layers past any model's depth are an error, not a hang)."""
    out: list[str] = []
    total = 0
    while total < size:
        out.append(str(len(out)))
        total += len(out[-1]) + 1
    return ",".join(out)


LONG_LINES: dict[str, Callable[[int], str]] = {
    "a layer list": lambda n: "clamp c0 >= 0.3 at layers " + _layer_list(n),
    "a concept name": lambda n: "clamp " + "c" * n + " >= 0.3 at layer 1",
    "a quoted name": lambda n: 'name "' + "a" * n + '"',
    "a comment": lambda n: "ablate c0 at layer 1  # " + "z" * n,
    "junk letters": lambda n: "x" * n,
    "open parentheses": lambda n: "(" * n,
    "spaces before an error": lambda n: " " * n + "clamp c0 > 0.3 at layer 1",
    "an unterminated string": lambda n: 'name "' + "a" * n,
    "a huge number": lambda n: "clamp c0 >= " + "9" * n + " at layer 1",
    "a huge layer number": lambda n: "ablate c0 at layer " + "9" * n,
    "repeated clauses": lambda n: "ablate c0 at layer 1 " + "on last 2 " * (n // 10),
    "repeated units": lambda n: "clamp c0 >= 0.3 " + "raw " * (n // 4) + "at layer 1",
}


@pytest.mark.parametrize("what", sorted(LONG_LINES))
def test_a_one_megabyte_single_line_gives_a_spec_error_or_parses_in_linear_time(what: str, tmp_path: Path) -> None:
    head = 'version 1\nconcept c0 from pairs "c0.yaml"\n'
    texts = {size: head + LONG_LINES[what](n) + "\n" for size, n in (("small", SMALL), ("big", MB))}
    assert len(texts["big"]) > 900_000
    got = outcomes_in_child(texts, ".cdsl", tmp_path)
    assert got["big"][0] in ("ok", "SpecError"), f"{what}: {got['big'][0]}"
    assert got["small"][0] in ("ok", "SpecError"), f"{what}: {got['small'][0]}"
    assert_grows_linearly(got["small"][1], got["big"][1], what)


def test_a_one_megabyte_dsl_line_inside_yaml_gives_a_spec_error_or_parses_in_linear_time(tmp_path: Path) -> None:
    def text(n: int) -> str:
        return (
            "version: 1\nconcepts:\n  c0: {from: pairs, path: c0.yaml}\nconstraints:\n"
            '  - "ablate c0 at layer 1 ' + "on last 2 " * (n // 10) + '"\n'
        )

    got = outcomes_in_child({"small": text(SMALL), "big": text(MB)}, ".yaml", tmp_path)
    assert got["big"][0] in ("ok", "SpecError"), got
    assert_grows_linearly(got["small"][1], got["big"][1], "a 1 MB DSL line in YAML")


def test_a_spec_error_on_a_one_megabyte_line_renders_a_bounded_report() -> None:
    with pytest.raises(SpecError) as info:
        parse('version 1\nconcept c0 from pairs "c0.yaml"\n' + "x" * MB + "\n", "long.cdsl")
    # One error on one line: the report may show the line, but not many copies of a megabyte.
    assert len(info.value.render()) < 4 * MB


def test_a_huge_layer_range_is_not_enumerated_one_layer_at_a_time(tmp_path: Path) -> None:
    # `at layers 0-2000000000` must be kept as a range (or refused), not expanded into a set: it costs
    # what `at layers 0-20` costs.
    texts = {
        hi: f'version 1\nconcept c0 from pairs "c0.yaml"\nablate c0 at layers 0-{hi}\n' for hi in ("20", "2000000000")
    }
    got = outcomes_in_child(texts, ".cdsl", tmp_path)
    assert got["2000000000"][0] in ("ok", "SpecError"), got
    assert_grows_linearly(got["20"][1], got["2000000000"][1], "a huge layer range")


# -- random and mutated bytes --------------------------------------------------------------------

ALPHABET = (
    b"version name model include concept from pairs file method mean pca clamp pin ablate steer"
    b" scale by at layer layers depth in on all prompt generated last first when raw sd p25"
    b" 0123456789.-+,[]%=<>#\"'\t\r\n\n\n :{}&*!|?-"
)


def random_inputs(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    out: list[bytes] = []
    for _ in range(count):
        n = rng.randrange(0, 200)
        if rng.random() < 0.5:
            out.append(bytes(rng.randrange(256) for _ in range(n)))
        else:
            out.append(bytes(rng.choice(ALPHABET) for _ in range(n)))
    return out


def mutated_inputs(seed: int, count: int) -> list[tuple[str, bytes]]:
    """Valid golden files with a few bytes flipped, inserted or deleted."""
    rng = random.Random(seed)
    sources = sorted(p for p in (CASES / "valid").iterdir() if p.suffix in (".cdsl", ".yaml"))
    out: list[tuple[str, bytes]] = []
    for _ in range(count):
        src = rng.choice(sources)
        data = bytearray(src.read_bytes())
        for _ in range(rng.randrange(1, 4)):
            pos = rng.randrange(len(data) + 1)
            action = rng.randrange(3)
            if action == 0 and pos < len(data):
                data[pos] = rng.choice(ALPHABET + bytes([0, 0xFF, 0xE2, 0x80, 0x94]))
            elif action == 1:
                data[pos:pos] = bytes([rng.choice(ALPHABET)])
            elif pos < len(data):
                del data[pos]
        out.append((src.suffix, bytes(data)))
    return out


def assert_only_user_errors(data: bytes, suffix: str, folder: Path) -> None:
    path = folder / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        parse_file(path)
    except SpecError as e:
        for d in e.diagnostics:
            assert d.span.line >= 1 and d.span.col >= 1, (data, d)
        e.render()
    except UserError as e:
        e.render()
    except Exception as e:  # pragma: no cover - a failure path
        shown = repr(data) if len(data) < 300 else repr(data[:300]) + f"... ({len(data)} bytes)"
        pytest.fail(f"{type(e).__name__}: {str(e)[:300]} for {suffix} input {shown}")


@pytest.mark.parametrize("suffix", [".cdsl", ".yaml"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_bytes_given_to_parse_file_only_raise_spec_or_user_errors(
    suffix: str, seed: int, tmp_path: Path
) -> None:
    for data in random_inputs(seed, 300):
        assert_only_user_errors(data, suffix, tmp_path)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_mutated_valid_specs_only_raise_spec_or_user_errors(seed: int, tmp_path: Path) -> None:
    for suffix, data in mutated_inputs(seed, 300):
        assert_only_user_errors(data, suffix, tmp_path)


@pytest.mark.parametrize(
    ("what", "data"),
    [
        ("a NUL byte", b"version 1\x00\n"),
        ("a YAML control character", b"version: 1\nname: a\x07b\n"),
        ("a lone surrogate escape in YAML", b'version: 1\nname: "\\ud800"\n'),
        ("a YAML document stream", b"version: 1\n---\nversion: 1\n"),
        ("a YAML explicit key", b"version: 1\n? [a, b]\n: c\n"),
        ("a YAML set tag", b"version: 1\nname: !!set {a: null}\n"),
        ("a YAML binary tag", b"version: 1\nname: !!binary aGk=\n"),
        ("a YAML timestamp", b"version: 1\nname: 2026-11-26\n"),
        ("a YAML integer key", b"version: 1\n1: x\n"),
        ("a YAML null key", b"version: 1\n~: x\n"),
        ("a huge YAML integer", b"version: 1" + b"0" * 5000 + b"\n"),
        (
            "a YAML float layer",
            b"version: 1\nconcepts: {h: {from: pairs, path: h.yaml}}\n"
            b"constraints:\n  - {op: ablate, concept: h, layers: 1.5}\n",
        ),
        ("a UTF-16 file", "version 1\n".encode("utf-16")),
        ("only a BOM", b"\xef\xbb\xbf"),
        ("only CR line ends", b"version 1\rname x\r"),
    ],
)
def test_odd_inputs_only_raise_spec_or_user_errors(what: str, data: bytes, tmp_path: Path) -> None:
    for suffix in (".cdsl", ".yaml"):
        assert_only_user_errors(data, suffix, tmp_path)


# -- the CLI --------------------------------------------------------------------------------------


def test_cli_check_exits_1_on_an_invalid_spec_and_prints_the_located_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.cdsl"
    path.write_text('version 1\nconcept h from pairs "h.yaml"\nclamp h > 0.3 at layer 1\n', encoding="utf-8")
    code, _, err = run_cli(["check", str(path)], capsys)
    assert code == 1
    assert f"{path}:3:9: error:" in err
    assert "Traceback" not in err


def test_cli_check_exits_2_for_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.cdsl"
    code, _, err = run_cli(["check", str(missing)], capsys)
    assert code == 2
    assert "no such file" in err
    assert "Traceback" not in err


def test_cli_check_exits_2_for_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["check", str(tmp_path)], capsys)
    assert code == 2
    assert "Traceback" not in err


def edge_files(folder: Path) -> dict[str, Path]:
    files: dict[str, bytes] = {
        "laughs.yaml": billion_laughs().encode(),
        "deep.yaml": b"version: 1\nx: " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
        "tag.yaml": b'version: 1\nname: !!python/object/apply:os.system ["echo hi"]\n',
        "not-utf8.cdsl": b'version 1\nname "caf\xe9"\n',
        "empty.cdsl": b"",
        "bad-line.cdsl": ("\n".join(big_spec_lines(200_000)) + "\nclamp c1 > 1 at layer 1\n").encode(),
        "long-line.cdsl": b"version 1\n" + b"x" * MB + b"\n",
        **{f"random-{i}.cdsl": data for i, data in enumerate(random_inputs(7, 10))},
        **{f"random-{i}.yaml": data for i, data in enumerate(random_inputs(8, 10))},
    }
    out: dict[str, Path] = {}
    for name, data in files.items():
        path = folder / name
        path.write_bytes(data)
        out[name] = path
    return out


def test_the_cli_never_prints_a_traceback_for_edge_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, path in edge_files(tmp_path).items():
        for args in (["check", str(path)], ["check", "--format", "json", str(path)], ["hash", str(path)]):
            code, out, err = run_cli(args, capsys)
            assert code in (1, 2), f"{args}: exit {code}: {err[-500:]}"
            assert "Traceback" not in err + out, f"{args}: {err[-2000:]}"
            assert "internal error" not in err, f"{name}: {err[-500:]}"
            if "--format" in args:
                json.loads(out)


def test_the_yaml_python_tag_is_refused_and_never_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "tag.yaml"
    path.write_text(f'version: 1\nname: !!python/object/apply:os.system ["touch {marker}"]\n', encoding="utf-8")
    code, _, err = run_cli(["check", str(path)], capsys)
    assert code == 1
    assert "tag" in err
    assert not marker.exists()


# -- twins in the golden folder ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("mission-unicode.json", "mission-ascii.json"),
        ("assistant-floor.json", "assistant-floor-twin.json"),
        ("yaml-all-fields.json", "yaml-all-fields-twin.json"),
        ("bom-valid.json", "bom-crlf-valid.json"),
    ],
)
def test_twin_goldens_are_equal_apart_from_spans(a: str, b: str) -> None:
    golden_a = json.loads((CASES / "valid" / a).read_text(encoding="utf-8"))
    golden_b = json.loads((CASES / "valid" / b).read_text(encoding="utf-8"))
    for key in ("spec", "canonical", "hash"):
        assert golden_a[key] == golden_b[key], key
    assert golden_a["spans"] != golden_b["spans"]
