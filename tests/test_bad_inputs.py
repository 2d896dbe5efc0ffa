"""Bad inputs and faults, tried as a new user would: each case gives the right exit code (1 a failed check, 2
invalid input), a located message (``file:line:col``, the file, or the flag), no traceback — and, by hashing
the working folder before and after, loses nothing: no file the user had is changed or removed.

Cases run ``cdsl`` in this process (``constraintdsl.cli.main``) where that is faithful, and in a child process
where the behavior depends on it (signals, devices and FIFOs that could hang a bug).  Cases that need a model
use a tiny one saved to a folder, and most of them must fail before it is loaded: inputs are checked first.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pickle
import re
import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import constraintdsl as cdsl
from constraintdsl.cli.app import main
from constraintdsl.concepts.artifact import _serialize, _tensors, load_artifact
from constraintdsl.models.loading import load_model
from tests.test_compare import write_concepts
from tests.test_compare_cli import AB, CORPUS
from tests.tiny import HIDDEN, tiny_hf, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024

GOOD = """version 1
name "good"
concept a from file "a.safetensors"
concept b from file "b.safetensors"
concept p from pairs "pairs.yaml"
clamp a >= 0.2 at layer 1
steer b by 1 at layers 0-1 on generated
"""

PAIRS = """concept: p
description: a made-up contrast
positive: kind
negative: unkind
pairs:
  - positive: "Thank you very much, this was wonderful and kind."
    negative: "That is a terrible idea and I will not do it."
  - positive: "I am so happy to help you with that question!"
    negative: "Sorry, I can't help with that request."
  - positive: "What a lovely morning, the cat sat on the mat."
    negative: "What a dreary morning, the cat sat on the mat."
  - positive: "Please find attached the kind report you requested."
    negative: "Please find attached the awful report you requested."
    split: test
"""

# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model saved to a folder (outside every working folder), and concept files made for it."""
    root = tmp_path_factory.mktemp("bad-inputs-model")
    folder = root / "tiny"
    tiny_hf("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    write_concepts(load_model(str(folder)), root)
    return folder


def _populate(w: Path, model_dir: Path) -> None:
    for name in ("a.safetensors", "b.safetensors"):
        (w / name).write_bytes((model_dir.parent / name).read_bytes())
    rng = np.random.default_rng(0)
    np.save(w / "raw.npy", rng.standard_normal(HIDDEN).astype(np.float32))
    (w / "pairs.yaml").write_text(PAIRS)
    (w / "good.cdsl").write_text(GOOD)
    (w / "sweep.cdsl").write_text(
        GOOD.replace('name "good"', 'name "sweep"') + "let floor = 0.1 | 0.5\nclamp b >= $floor at layer 2\n"
    )
    (w / "prompts.txt").write_text("hello there\nwhat is the weather like\n")
    (w / "corpus.txt").write_text(CORPUS)
    (w / "ab.yaml").write_text(AB)
    (w / "notes").mkdir()
    (w / "notes" / "todo.md").write_text("the user's own notes: must survive every command\n")
    (w / "examples").mkdir()
    for name in ("one.cdsl", "two.cdsl"):
        (w / "examples" / name).write_text(GOOD)


@dataclass
class Work:
    """A working folder with good inputs, and the model folder (outside it)."""

    path: Path
    model: Path

    def write(self, name: str, data: str | bytes) -> Path:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            target.write_bytes(data)
        else:
            target.write_text(data, encoding="utf-8")
        return target

    def spec(self, body: str, name: str = "spec.cdsl", head: str = GOOD) -> Path:
        return self.write(name, head + body)


@pytest.fixture
def work(tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Work:
    w = tmp_path / "work"
    w.mkdir()
    _populate(w, model_dir)
    monkeypatch.chdir(w)
    # the cache and the run store live outside the working folder (and outside the user's real cache)
    monkeypatch.setenv("CONSTRAINTDSL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CONSTRAINTDSL_STORE", str(tmp_path / "cache" / "runs.sqlite"))
    return Work(w, model_dir)


# -------------------------------------------------------------------------------------- snapshot


def snapshot(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry under ``root``: kind and content hash (files), link target (symlinks), mode (folders)."""
    out: dict[str, tuple[str, str]] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in sorted(dirs + files):
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                digest = hashlib.sha256()
                with path.open("rb") as f:
                    for chunk in iter(lambda f=f: f.read(1 << 22), b""):
                        digest.update(chunk)
                out[rel] = ("file", f"{digest.hexdigest()} {info.st_mode & 0o7777:o}")
            elif stat.S_ISDIR(info.st_mode):
                out[rel] = ("dir", f"{info.st_mode & 0o7777:o}")
            else:
                out[rel] = ("other", f"{stat.S_IFMT(info.st_mode):o}")
    return out


def assert_nothing_lost(
    before: dict[str, tuple[str, str]], after: dict[str, tuple[str, str]], creates: tuple[str, ...]
) -> None:
    lost = {k: v for k, v in before.items() if after.get(k) != v}
    assert not lost, f"changed or removed: {sorted(lost)}"
    new = sorted(set(after) - set(before) - set(creates))
    assert not new, f"left behind: {new}"


# ----------------------------------------------------------------------------------------- running

LOCATED = re.compile(r"^(?P<where>\S.*?): error: ", re.MULTILINE)


@dataclass
class Outcome:
    code: int
    out: str
    err: str


def run_in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> Outcome:
    code = main(args)
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


CHILD_MEMORY = 4 * 1024**3  # address space of a child: a read that does not stop fails instead of eating the machine


def _cap_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))


def run_child(args: list[str], cwd: Path, timeout: float = 120) -> Outcome:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "constraintdsl", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
            preexec_fn=_cap_memory,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`cdsl {' '.join(args)}` still ran after {timeout} s (a hang on a bad input)")
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def assert_outcome(got: Outcome, code: int, where: str, contains: str | None) -> None:
    assert "Traceback" not in got.out + got.err, got.err[-3000:]
    assert "internal error" not in got.err, got.err[-3000:]
    assert got.code == code, f"exit {got.code}, expected {code}; stderr:\n{got.err[-3000:]}"
    if code == 0:
        return
    places = [m.group("where") for m in LOCATED.finditer(got.err)]
    assert any(p == where or p.startswith(where) for p in places), f"no error located at {where!r}: {got.err[-2000:]}"
    if contains is not None:
        assert contains in got.err, f"{contains!r} not in: {got.err[-2000:]}"


# --------------------------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One bad input: ``setup`` writes it into the working folder and returns the command's arguments."""

    name: str
    setup: Callable[[Work], list[str]]
    code: int
    where: str  # the start of an error line: "spec.cdsl:3:9", "--report", "prompts.txt"
    contains: str | None = None
    child: bool = False  # run in a child process
    before_model: bool = True  # must fail before a model is loaded
    creates: tuple[str, ...] = ()  # new entries a successful case may add
    needs: str | None = None  # "immutable": the file system must support chattr +i


CASES: list[Case] = []


def case(
    name: str, code: int, where: str, contains: str | None = None, **kw: Any
) -> Callable[[Callable[[Work], list[str]]], Callable[[Work], list[str]]]:
    def add(setup: Callable[[Work], list[str]]) -> Callable[[Work], list[str]]:
        CASES.append(Case(name, setup, code, where, contains, **kw))
        return setup

    return add


def _artifact_bytes(
    w: Work,
    *,
    directions: Any = None,
    layers: Any = None,
    meta: dict[str, str] | None = None,
    drop: tuple[str, ...] = (),
) -> bytes:
    art = load_artifact(w.path / "a.safetensors")
    tensors = _tensors(art)
    if directions is not None:
        tensors["directions"] = directions
    if layers is not None:
        tensors["layers"] = layers
    metadata = {**art.metadata, **(meta or {})}
    for key in drop:
        metadata.pop(key, None)
    return _serialize(tensors, metadata)


def _file_concept(w: Work, name: str, data: bytes, body: str = "clamp c >= 0.1 raw at layer 1\n") -> list[str]:
    w.write(name, data)
    w.spec(f'concept c from file "{name}"\n' + body)
    return ["check", "spec.cdsl"]


def _pairs_concept(w: Work, data: str | bytes, name: str = "bad.yaml") -> list[str]:
    w.write(name, data)
    w.spec(f'concept q from pairs "{name}"\nablate q at layer 1\n')
    return ["check", "spec.cdsl"]


# -- specs ------------------------------------------------------------------------------------------


@case(
    "a strict clamp bound gets a hint built from the user's own line",
    1,
    "spec.cdsl:8:9",
    "hint: clamp a >= 0.7 at layer 2",
)
def _(w: Work) -> list[str]:
    w.spec("clamp a > 0.7 at layer 2\n")
    return ["check", "spec.cdsl"]


@case("a missing spec file", 2, "nowhere.cdsl", "no such file")
def _(w: Work) -> list[str]:
    return ["check", "nowhere.cdsl"]


@case("a folder given as a spec", 2, "notes", "is a folder")
def _(w: Work) -> list[str]:
    return ["check", "notes"]


@case("/dev/zero given as a spec is refused before reading", 2, "/dev/zero", "is a device", child=True)
def _(w: Work) -> list[str]:
    return ["check", "/dev/zero"]


@case("a FIFO given as a spec is refused without blocking", 2, "pipe.cdsl", "FIFO", child=True)
def _(w: Work) -> list[str]:
    os.mkfifo(w.path / "pipe.cdsl")
    return ["check", "pipe.cdsl"]


@case("an oversized spec file is refused before reading", 2, "big.cdsl", "at most 16 MiB")
def _(w: Work) -> list[str]:
    with (w.path / "big.cdsl").open("wb") as f:
        f.truncate(17 * MIB)
    return ["check", "big.cdsl"]


@case("a spec that is not UTF-8", 1, "spec.cdsl:2:10", "invalid UTF-8")
def _(w: Work) -> list[str]:
    w.write("spec.cdsl", b'version 1\nname "caf\xe9"\n')
    return ["check", "spec.cdsl"]


@case("a spec that is a symlink loop", 2, "loop.cdsl", "symlink loop")
def _(w: Work) -> list[str]:
    os.symlink("loop.cdsl", w.path / "loop.cdsl")
    return ["check", "loop.cdsl"]


@case("an unknown concept", 1, "spec.cdsl:8:8", "unknown concept 'zz'")
def _(w: Work) -> list[str]:
    w.spec("ablate zz at layer 1\n")
    return ["check", "spec.cdsl"]


@case("an empty spec", 1, "empty.cdsl:1:1", "empty spec")
def _(w: Work) -> list[str]:
    w.write("empty.cdsl", "")
    return ["check", "empty.cdsl"]


@case("a YAML python tag is refused and never run", 1, "tag.yaml:2:7", "tag")
def _(w: Work) -> list[str]:
    w.write("tag.yaml", 'version: 1\nname: !!python/object/apply:os.system ["touch ran"]\n')
    return ["check", "tag.yaml"]


@case("a YAML spec with a duplicate key", 1, "dup.yaml:3:1", "duplicate")
def _(w: Work) -> list[str]:
    w.write("dup.yaml", "version: 1\nname: a\nname: b\n")
    return ["check", "dup.yaml"]


@case("an unsupported spec version", 1, "v2.cdsl:1:9", "unsupported spec version")
def _(w: Work) -> list[str]:
    w.write("v2.cdsl", "version 2\n")
    return ["check", "v2.cdsl"]


@case("hash of a spec whose concept file is missing", 2, "spec.cdsl:8:21", "no such file")
def _(w: Work) -> list[str]:
    w.spec('concept c from file "gone.safetensors"\nablate c at layer 1\n')
    return ["hash", "spec.cdsl"]


# -- includes ---------------------------------------------------------------------------------------


def _including(w: Work, target: str) -> list[str]:
    w.write("top.cdsl", f'version 1\ninclude "{target}"\n')
    return ["check", "top.cdsl"]


@case("an include that does not exist", 1, "top.cdsl:2:1", "included file not found")
def _(w: Work) -> list[str]:
    return _including(w, "missing.cdsl")


@case("an include of /dev/zero", 1, "top.cdsl:2:1", "is a device", child=True)
def _(w: Work) -> list[str]:
    return _including(w, "/dev/zero")


@case("an include of a FIFO", 1, "top.cdsl:2:1", "FIFO", child=True)
def _(w: Work) -> list[str]:
    os.mkfifo(w.path / "fifo.cdsl")
    return _including(w, "fifo.cdsl")


@case("an include of a folder", 1, "top.cdsl:2:1", "is a directory")
def _(w: Work) -> list[str]:
    return _including(w, "notes")


@case("an include that is a symlink loop", 1, "top.cdsl:2:1", "symlink loop")
def _(w: Work) -> list[str]:
    os.symlink("loop.cdsl", w.path / "loop.cdsl")
    return _including(w, "loop.cdsl")


@case("an include cycle", 1, "b.cdsl:2:1", "include cycle")
def _(w: Work) -> list[str]:
    w.write("a.cdsl", 'version 1\ninclude "b.cdsl"\n')
    w.write("b.cdsl", 'version 1\ninclude "a.cdsl"\n')
    return ["check", "a.cdsl"]


@case("an included file that is not UTF-8", 1, "inc.cdsl:2:8", "invalid UTF-8")
def _(w: Work) -> list[str]:
    w.write("inc.cdsl", b'version 1\nname "x\xff"\n')
    return _including(w, "inc.cdsl")


@case("an oversized include", 1, "top.cdsl:2:1", "at most 16 MiB")
def _(w: Work) -> list[str]:
    with (w.path / "huge.cdsl").open("wb") as f:
        f.truncate(17 * MIB)
    return _including(w, "huge.cdsl")


# -- concept files --------------------------------------------------------------------------------


@case("a pickle named .safetensors", 1, "spec.cdsl:8:21", "not a safetensors file")
def _(w: Work) -> list[str]:
    return _file_concept(w, "evil.safetensors", pickle.dumps({"directions": [1.0, 2.0]}))


@case("a truncated safetensors file", 1, "spec.cdsl:8:21", "truncated")
def _(w: Work) -> list[str]:
    data = (w.path / "a.safetensors").read_bytes()
    return _file_concept(w, "cut.safetensors", data[: len(data) - 100])


@case("a safetensors direction with NaN", 1, "spec.cdsl:8:21", "NaN")
def _(w: Work) -> list[str]:
    d = load_artifact(w.path / "a.safetensors").directions.copy()
    d[1, 3] = np.nan
    return _file_concept(w, "nan.safetensors", _artifact_bytes(w, directions=d))


@case("a safetensors zero direction", 1, "spec.cdsl:8:21", "zero vector")
def _(w: Work) -> list[str]:
    d = load_artifact(w.path / "a.safetensors").directions.copy()
    d[0] = 0.0
    return _file_concept(w, "zero.safetensors", _artifact_bytes(w, directions=d))


@case("a safetensors direction that is not a unit vector", 1, "spec.cdsl:8:21", "not a unit vector")
def _(w: Work) -> list[str]:
    d = load_artifact(w.path / "a.safetensors").directions.copy() * 3
    return _file_concept(w, "long.safetensors", _artifact_bytes(w, directions=d))


@case("safetensors directions of the wrong shape", 1, "spec.cdsl:8:21", "must have shape [layers, hidden]")
def _(w: Work) -> list[str]:
    d = load_artifact(w.path / "a.safetensors").directions[0].copy()
    return _file_concept(w, "flat.safetensors", _artifact_bytes(w, directions=d))


@case("safetensors metadata that contradicts the tensors", 1, "spec.cdsl:8:21", "hidden size")
def _(w: Work) -> list[str]:
    return _file_concept(w, "meta.safetensors", _artifact_bytes(w, meta={"hidden_size": "999"}))


@case("safetensors without required metadata", 1, "spec.cdsl:8:21", "missing metadata")
def _(w: Work) -> list[str]:
    return _file_concept(w, "bare.safetensors", _artifact_bytes(w, drop=("model_id", "site")))


@case("safetensors layers that repeat", 1, "spec.cdsl:8:21", "distinct")
def _(w: Work) -> list[str]:
    return _file_concept(w, "layers.safetensors", _artifact_bytes(w, layers=np.array([0, 0, 1], dtype=np.int64)))


def _npy(vector: np.ndarray[Any, Any]) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, vector, allow_pickle=True)
    return buf.getvalue()


@case("a .npy vector with NaN", 1, "spec.cdsl:8:21", "NaN")
def _(w: Work) -> list[str]:
    v = np.ones(HIDDEN, dtype=np.float32)
    v[2] = np.nan
    return _file_concept(w, "nan.npy", _npy(v))


@case("a zero .npy vector", 1, "spec.cdsl:8:21", "zero")
def _(w: Work) -> list[str]:
    return _file_concept(w, "zero.npy", _npy(np.zeros(HIDDEN, dtype=np.float32)))


@case("an object-array .npy (a pickle inside)", 1, "spec.cdsl:8:21", ".npy")
def _(w: Work) -> list[str]:
    return _file_concept(w, "obj.npy", _npy(np.array([{"a": 1}, None], dtype=object)))


@case("a .npy matrix where one vector is expected", 1, "spec.cdsl:8:21", "one vector")
def _(w: Work) -> list[str]:
    return _file_concept(w, "matrix.npy", _npy(np.ones((3, HIDDEN), dtype=np.float32)))


@case("an integer .npy vector", 1, "spec.cdsl:8:21", "floating point")
def _(w: Work) -> list[str]:
    return _file_concept(w, "ints.npy", _npy(np.arange(1, HIDDEN + 1, dtype=np.int64)))


@case("a concept file that does not exist", 1, "spec.cdsl:8:21", "no such file")
def _(w: Work) -> list[str]:
    w.spec('concept c from file "gone.safetensors"\nablate c at layer 1\n')
    return ["check", "spec.cdsl"]


@case("a concept file that is a folder", 1, "spec.cdsl:8:21", "is a folder")
def _(w: Work) -> list[str]:
    (w.path / "dir.safetensors").mkdir()
    w.spec('concept c from file "dir.safetensors"\nablate c at layer 1\n')
    return ["check", "spec.cdsl"]


@case("a concept file that is a FIFO", 1, "spec.cdsl:8:21", "FIFO", child=True)
def _(w: Work) -> list[str]:
    os.mkfifo(w.path / "fifo.safetensors")
    w.spec('concept c from file "fifo.safetensors"\nablate c at layer 1\n')
    return ["check", "spec.cdsl"]


@case("a calibrated bound on a raw .npy vector", 1, "spec.cdsl:9:1", "raw vector without calibration")
def _(w: Work) -> list[str]:
    w.spec('concept r from file "raw.npy"\nclamp r >= 0.5 at layer 1\n')
    return ["check", "spec.cdsl"]


@case("a sweep whose let gives a raw vector a percentile", 1, "spec.cdsl:10:1", "raw vector without calibration")
def _(w: Work) -> list[str]:
    w.spec('concept r from file "raw.npy"\nlet lo = 1 raw | p25\nclamp r >= $lo at layer 1\n')
    return ["check", "spec.cdsl"]


@case("a layer the concept file has no direction for", 1, "spec.cdsl:8:1", "no direction at layer 7")
def _(w: Work) -> list[str]:
    w.spec("ablate a at layer 7\n")
    return ["check", "spec.cdsl"]


@case("a statement at a site the concept was not extracted at", 1, "spec.cdsl:8:8", "extracted at site 'resid'")
def _(w: Work) -> list[str]:
    w.spec("ablate a at layer 1 in attn\n")
    return ["check", "spec.cdsl"]


# -- pair sets ------------------------------------------------------------------------------------


@case("a pair without its negative text", 1, "bad.yaml:5:5", "missing 'negative'")
def _(w: Work) -> list[str]:
    return _pairs_concept(w, "concept: q\npositive: a\nnegative: b\npairs:\n  - positive: one two three\n")


@case("a pair whose two texts are identical", 1, "bad.yaml:5:5", "identical")
def _(w: Work) -> list[str]:
    return _pairs_concept(
        w,
        "concept: q\npositive: a\nnegative: b\npairs:\n  - positive: same words here\n    negative: same words here\n",
    )


@case("a pair set whose two poles have one name", 1, "bad.yaml:4:11", "same name")
def _(w: Work) -> list[str]:
    return _pairs_concept(w, PAIRS.replace("negative: unkind", "negative: kind"))


@case("a pair set that is not UTF-8", 1, "bad.yaml:6:53", "not UTF-8")
def _(w: Work) -> list[str]:
    return _pairs_concept(w, PAIRS.encode().replace(b"wonderful", b"wonderf\xffl"))


@case("an empty pair set", 1, "bad.yaml:1:1", "empty")
def _(w: Work) -> list[str]:
    return _pairs_concept(w, "")


@case("a pair set with only test pairs", 1, "bad.yaml:1:1", "no train pairs")
def _(w: Work) -> list[str]:
    return _pairs_concept(
        w,
        "concept: q\npositive: a\nnegative: b\npairs:\n"
        "  - positive: one two\n    negative: three four\n    split: test\n",
    )


@case("a pair set that does not exist", 1, "spec.cdsl:8:22", "no such file")
def _(w: Work) -> list[str]:
    w.spec('concept q from pairs "gone.yaml"\nablate q at layer 1\n')
    return ["check", "spec.cdsl"]


@case("a pair set that is /dev/zero", 1, "spec.cdsl:8:22", "is a device", child=True)
def _(w: Work) -> list[str]:
    os.symlink("/dev/zero", w.path / "zero.yaml")
    w.spec('concept q from pairs "zero.yaml"\nablate q at layer 1\n')
    return ["check", "spec.cdsl"]


@case("an oversized pair set", 1, "spec.cdsl:8:22", "at most 64 MiB")
def _(w: Work) -> list[str]:
    with (w.path / "huge.yaml").open("wb") as f:
        f.truncate(65 * MIB)
    w.spec('concept q from pairs "huge.yaml"\nablate q at layer 1\n')
    return ["check", "spec.cdsl"]


@case("a pair set with a YAML alias bomb", 1, "bad.yaml:", "aliases")
def _(w: Work) -> list[str]:
    return _pairs_concept(w, "concept: &c q\npositive: *c\nnegative: b\npairs: []\n")


@case("a pair set that mixes chat and plain pairs", 1, "bad.yaml:7:5", "chat-shaped")
def _(w: Work) -> list[str]:
    return _pairs_concept(
        w,
        "concept: q\npositive: a\nnegative: b\npairs:\n  - {prompt: hi, positive: one two, negative: three four}\n"
        "  - {prompt: yo, positive: five six, negative: seven eight}\n  - {positive: nine ten, negative: eleven}\n",
    )


@case("a JSONL pair set with a bad line", 1, "bad.jsonl:2:", "invalid JSON")
def _(w: Work) -> list[str]:
    return _pairs_concept(w, '{"positive": "one two", "negative": "three four"}\n{"positive": \n', name="bad.jsonl")


# -- check --model: the model's config, no weights --------------------------------------------------


@case("a layer past the model's depth", 1, "spec.cdsl:8:1", "out of range", before_model=False)
def _(w: Work) -> list[str]:
    w.spec("ablate p at layers 2-5\n")
    return ["check", "spec.cdsl", "--model", str(w.model)]


@case("a concept file made for a model of another width", 1, "spec.cdsl:8:21", "hidden size", before_model=False)
def _(w: Work) -> list[str]:
    rng = np.random.default_rng(1)
    d = rng.standard_normal((3, 48)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    art = load_artifact(w.path / "a.safetensors")
    tensors = {**_tensors(art), "directions": d}
    w.write("wide.safetensors", _serialize(tensors, {**art.metadata, "hidden_size": "48"}))
    w.spec('concept c from file "wide.safetensors"\nablate c at layer 1\n')
    return ["check", "spec.cdsl", "--model", str(w.model)]


@case("a gate that reads after the layer it gates", 1, "spec.cdsl:8:", "after the first layer", before_model=False)
def _(w: Work) -> list[str]:
    w.spec("ablate a at layer 0 when b > 0.5 at layer 2\n")
    return ["check", "spec.cdsl", "--model", str(w.model)]


@case("a pair text longer than the model's context", 1, "long.yaml:6:15", "reads at most", before_model=False)
def _(w: Work) -> list[str]:
    text = "concept: q\npositive: a\nnegative: b\npairs:\n  - positive: one two\n    negative: " + "word " * 400 + "\n"
    return [*_pairs_concept(w, text, name="long.yaml"), "--model", str(w.model)]


@case("check --model with a folder that does not exist", 2, "--model", "no such folder")
def _(w: Work) -> list[str]:
    return ["check", "good.cdsl", "--model", "./models/none"]


@case("check --model with a file instead of a folder", 2, "--model", "not a model folder")
def _(w: Work) -> list[str]:
    return ["check", "good.cdsl", "--model", "prompts.txt"]


# -- prompts ----------------------------------------------------------------------------------------


@case("run with a prompts file that does not exist", 2, "gone.txt", "no such file")
def _(w: Work) -> list[str]:
    return ["run", "good.cdsl", "--model", str(w.model), "--prompts", "gone.txt"]


@case("run with an empty prompts file", 2, "--prompts", "holds no prompts")
def _(w: Work) -> list[str]:
    w.write("empty.txt", "\n# only a comment\n")
    return ["run", "good.cdsl", "--model", str(w.model), "--prompts", "empty.txt"]


@case("run with a JSONL prompts file with a bad line", 2, "p.jsonl:2:", "invalid JSON")
def _(w: Work) -> list[str]:
    w.write("p.jsonl", '{"prompt": "hi"}\n{"prompt": \n')
    return ["run", "good.cdsl", "--model", str(w.model), "--prompts", "p.jsonl"]


@case("run with /dev/zero as the prompts file", 2, "/dev/zero", "is a device", child=True)
def _(w: Work) -> list[str]:
    return ["run", "good.cdsl", "--model", str(w.model), "--prompts", "/dev/zero"]


@case("run with a folder as the prompts file", 2, "notes", "is a folder")
def _(w: Work) -> list[str]:
    return ["run", "good.cdsl", "--model", str(w.model), "--prompts", "notes"]


@case("run with both --prompt and --prompts", 2, "--prompt")
def _(w: Work) -> list[str]:
    return ["run", "good.cdsl", "--prompt", "hi", "--prompts", "prompts.txt"]


# -- corpus and A/B sets (compare) ---------------------------------------------------------------------


def _compare(w: Work, *extra: str) -> list[str]:
    return [
        "compare",
        "good.cdsl",
        "--model",
        str(w.model),
        "--prompts",
        "prompts.txt",
        "--corpus",
        "corpus.txt",
        "--window",
        "8",
        "--max-new-tokens",
        "2",
        *extra,
    ]


def _replace_flag(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    out[out.index(flag) + 1] = value
    return out


@case("compare with a corpus that does not exist", 2, "gone.txt", "no such file")
def _(w: Work) -> list[str]:
    return _replace_flag(_compare(w), "--corpus", "gone.txt")


@case("compare with an empty corpus", 2, "blank.txt", "empty")
def _(w: Work) -> list[str]:
    w.write("blank.txt", "\n---\n\n")
    return _replace_flag(_compare(w), "--corpus", "blank.txt")


@case("compare with a corpus that is not UTF-8", 2, "latin.txt:1:4", "invalid UTF-8")
def _(w: Work) -> list[str]:
    w.write("latin.txt", b"caf\xe9 au lait\n")
    return _replace_flag(_compare(w), "--corpus", "latin.txt")


@case("compare with an A/B set missing a key", 2, "ab2.yaml:3:5", "missing 'match'")
def _(w: Work) -> list[str]:
    w.write("ab2.yaml", 'behavior: a\nitems:\n  - {question: "q?", a: "yes", b: "no"}\n')
    return _compare(w, "--ab", "ab2.yaml")


@case("compare with an A/B item whose answers are identical", 2, "ab2.yaml:3:5", "identical")
def _(w: Work) -> list[str]:
    w.write("ab2.yaml", 'behavior: a\nitems:\n  - {question: "q?", a: "same", b: "same", match: a}\n')
    return _compare(w, "--ab", "ab2.yaml")


@case("compare with an A/B set of another format", 2, "ab.json", "unsupported A/B set format")
def _(w: Work) -> list[str]:
    w.write("ab.json", "{}")
    return _compare(w, "--ab", "ab.json")


@case("compare with fewer corpus tokens than one window", 2, "--corpus-tokens", "no window")
def _(w: Work) -> list[str]:
    return _compare(w, "--corpus-tokens", "4")


@case("compare with an effect axis no spec can produce", 2, "--effect", "no spec constrains")
def _(w: Work) -> list[str]:
    return _compare(w, "--effect", "zz")


@case("compare a spec whose concept file is broken", 2, "spec.cdsl:8:21", "NaN")
def _(w: Work) -> list[str]:
    d = load_artifact(w.path / "a.safetensors").directions.copy()
    d[0, 0] = np.nan
    _file_concept(w, "nan.safetensors", _artifact_bytes(w, directions=d))
    return ["spec.cdsl" if a == "good.cdsl" else a for a in _compare(w)]


# -- stores ------------------------------------------------------------------------------------------


@case("a store path that is a folder", 2, "--store", "is a folder")
def _(w: Work) -> list[str]:
    return _compare(w, "--store", "notes")


@case("a store that is some other file", 2, "notes/todo.md", "not a valid SQLite")
def _(w: Work) -> list[str]:
    return _compare(w, "--store", "notes/todo.md")


@case("a store that is another program's SQLite database", 2, "other.sqlite", "not a constraintdsl run store")
def _(w: Work) -> list[str]:
    with contextlib.closing(sqlite3.connect(w.path / "other.sqlite")) as db:
        db.execute("CREATE TABLE accounts (id INTEGER)")
        db.commit()
    return _compare(w, "--store", "other.sqlite")


@case("a store under a path that is a file", 2, "--store", "is a file")
def _(w: Work) -> list[str]:
    return _compare(w, "--store", "prompts.txt/runs.sqlite")


@case("runs show with an id no run has", 2, "", "no recorded run")
def _(w: Work) -> list[str]:
    return ["runs", "show", "20990101", "--store", str(w.path.parent / "cache" / "none.sqlite")]


# -- report folders --------------------------------------------------------------------------------


@case(
    "a report into a folder of the user's specs keeps every one of them",
    0,
    "",
    before_model=False,
    creates=tuple(
        f"examples/{n}" for n in ("report.md", "comparison.json", "frontier.png", "binding.png", "marginal.png")
    ),
)
def _(w: Work) -> list[str]:
    return _compare(w, "--report", "examples", "--no-store")


@case(
    "a report into the current folder writes only its own files",
    0,
    "",
    before_model=False,
    creates=("report.md", "comparison.json", "frontier.png", "binding.png", "marginal.png"),
)
def _(w: Work) -> list[str]:
    return _compare(w, "--report", ".", "--no-store")


@case("a report path that is a file", 2, "--report", "not a folder")
def _(w: Work) -> list[str]:
    return _compare(w, "--report", "prompts.txt")


@case("a report path under a file", 2, "--report", "is a file")
def _(w: Work) -> list[str]:
    return _compare(w, "--report", "prompts.txt/report")


@case("a report folder where report.md is a folder", 2, "--report", "is a folder")
def _(w: Work) -> list[str]:
    (w.path / "rep" / "report.md").mkdir(parents=True)
    return _compare(w, "--report", "rep")


@case("a report folder that cannot be written", 2, "--report", needs="immutable")
def _(w: Work) -> list[str]:
    (w.path / "locked").mkdir()
    _immutable(w.path / "locked")
    return _compare(w, "--report", "locked", "--no-store")


# -- other writers: fmt, schema -o, concept build -o ---------------------------------------------------


@case("fmt on a file it cannot replace", 2, "spec.cdsl", "cannot write", needs="immutable")
def _(w: Work) -> list[str]:
    w.write("spec.cdsl", "version   1\n")
    _immutable(w.path / "spec.cdsl")
    return ["fmt", "spec.cdsl"]


@case("fmt reports every bad file, not just the first", 2, "b2.cdsl:2:", "b1.cdsl:2:")
def _(w: Work) -> list[str]:
    w.write("b1.cdsl", "version 1\nclamp\n")
    w.write("b2.cdsl", "version 1\nscale\n")
    return ["fmt", "--check", "b1.cdsl", "b2.cdsl", "good.cdsl"]


@case("fmt of /dev/zero", 2, "/dev/zero", "is a device", child=True)
def _(w: Work) -> list[str]:
    return ["fmt", "/dev/zero"]


@case("schema -o a folder", 2, "-o", "is a folder")
def _(w: Work) -> list[str]:
    return ["schema", "-o", "notes"]


@case("schema -o over a file that is not a schema", 2, "-o", "not a file this command wrote")
def _(w: Work) -> list[str]:
    return ["schema", "-o", "notes/todo.md"]


@case("schema -o under a file", 2, "-o", "is a file")
def _(w: Work) -> list[str]:
    return ["schema", "-o", "prompts.txt/schema.json"]


@case("concept build -o over a file that is not a concept", 2, "-o", "not a file this command wrote")
def _(w: Work) -> list[str]:
    w.write("mine.safetensors", "the user's bytes")
    return ["concept", "build", "--pairs", "pairs.yaml", "--model", str(w.model), "-o", "mine.safetensors"]


@case("concept build -o a folder", 2, "-o", "is a folder")
def _(w: Work) -> list[str]:
    (w.path / "out.safetensors").mkdir()
    return ["concept", "build", "--pairs", "pairs.yaml", "--model", str(w.model), "-o", "out.safetensors"]


@case("concept build -o without .safetensors", 2, "-o", "must end in .safetensors")
def _(w: Work) -> list[str]:
    return ["concept", "build", "--pairs", "pairs.yaml", "--model", str(w.model), "-o", "out.bin"]


@case("concept build from a broken pair set", 2, "bad.yaml:5:5", "missing 'negative'")
def _(w: Work) -> list[str]:
    w.write("bad.yaml", "concept: q\npositive: a\nnegative: b\npairs:\n  - positive: one two three\n")
    return ["concept", "build", "--pairs", "bad.yaml", "--model", str(w.model)]


@case("concept show of a pickle", 2, "evil.safetensors", "not a safetensors file")
def _(w: Work) -> list[str]:
    w.write("evil.safetensors", pickle.dumps([1, 2, 3]))
    return ["concept", "show", "evil.safetensors"]


# -- models ------------------------------------------------------------------------------------------


@case("a path-looking model that does not exist", 2, "--model", "no such folder: ./models/tiny")
def _(w: Work) -> list[str]:
    return ["explain", "good.cdsl", "--model", "./models/tiny"]


@case(
    "a hub id that cannot be reached offline fails at once",
    2,
    "--model",
    "cannot be reached",
    before_model=False,
)
def _(w: Work) -> list[str]:
    return ["explain", "good.cdsl", "--model", "nobody/no-such-model"]


@case("a model folder without config.json", 2, "--model", "has no config.json")
def _(w: Work) -> list[str]:
    return ["explain", "good.cdsl", "--model", "notes"]


# -- run and explain ----------------------------------------------------------------------------------


@case("run on a sweep without --variant suggests a real one", 2, "sweep.cdsl:8:5", "--variant floor=0.1")
def _(w: Work) -> list[str]:
    return ["run", "sweep.cdsl", "--model", str(w.model), "--prompt", "hi"]


@case("explain with a variant the sweep lacks", 2, "--variant", "has no value 0.3")
def _(w: Work) -> list[str]:
    return ["explain", "sweep.cdsl", "--model", str(w.model), "--variant", "floor=0.3"]


@case("run with a host that is not a URL", 2, "--host", "not a server URL")
def _(w: Work) -> list[str]:
    return ["run", "good.cdsl", "--model", str(w.model), "--prompt", "hi", "--host", "localhost:8000"]


@case("run --no-wait without a server", 2, "--no-wait", "needs --remote")
def _(w: Work) -> list[str]:
    return ["run", "good.cdsl", "--model", str(w.model), "--prompt", "hi", "--no-wait"]


@case("explain a spec whose pair set is broken", 2, "bad.yaml:5:5", "missing 'negative'")
def _(w: Work) -> list[str]:
    _pairs_concept(w, "concept: q\npositive: a\nnegative: b\npairs:\n  - positive: one two three\n")
    return ["explain", "spec.cdsl", "--model", str(w.model)]


# -- models ---------------------------------------------------------------------------------------------


@case("models with a host that is not a URL", 2, "--host", "'not-a-url' is not a server URL")
def _(w: Work) -> list[str]:
    return ["models", "--host", "not-a-url"]


@case("models with a host whose port is out of range", 2, "--host", "not a server URL")
def _(w: Work) -> list[str]:
    return ["models", "--host", "http://127.0.0.1:99999"]


@case("models without a server says it needs --remote or --host", 2, "--remote", "needs a server")
def _(w: Work) -> list[str]:
    return ["models"]


@case("compare --no-wait without a server", 2, "--no-wait", "needs --remote or --host")
def _(w: Work) -> list[str]:
    return _compare(w, "--no-wait")


@case("compare --no-wait rebuilding from the store", 2, "--no-wait", "--from-store runs nothing")
def _(w: Work) -> list[str]:
    return _compare(w, "--no-wait", "--host", "http://127.0.0.1:9", "--from-store")


@case("job with an id that is no job id", 2, "ID", "is not a job id")
def _(w: Work) -> list[str]:
    return ["job", "../etc/passwd"]


# ------------------------------------------------------------------------------------------ helpers


def _immutable(path: Path) -> None:
    subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)


def _release(root: Path) -> None:
    """Undo ``chattr +i`` under ``root`` (so the test's folder can be removed)."""
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            subprocess.run(["chattr", "-i", str(Path(folder) / name)], capture_output=True, check=False)


@pytest.fixture(scope="module")
def immutable_supported(tmp_path_factory: pytest.TempPathFactory) -> bool:
    probe = tmp_path_factory.mktemp("chattr") / "probe"
    probe.write_text("x")
    try:
        ok = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, check=False).returncode == 0
    except FileNotFoundError:
        return False
    subprocess.run(["chattr", "-i", str(probe)], capture_output=True, check=False)
    return ok


# --------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_a_bad_input_gives_its_exit_code_a_located_error_and_loses_nothing(
    c: Case, work: Work, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    if c.needs == "immutable" and not request.getfixturevalue("immutable_supported"):
        pytest.skip("this file system does not support chattr +i")
    args = c.setup(work)
    before = snapshot(work.path)
    try:
        got = run_child(args, work.path) if c.child else run_in_process(args, capsys)
    finally:
        _release(work.path) if c.needs == "immutable" else None
    assert_outcome(got, c.code, c.where, c.contains)
    if c.before_model and c.code != 0:
        assert "loading model" not in got.err, f"the model was loaded before the input was checked:\n{got.err}"
    assert_nothing_lost(before, snapshot(work.path), c.creates)


def test_there_are_at_least_sixty_bad_input_cases() -> None:
    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES)


def test_the_report_writes_files_the_umask_allows(work: Work, capsys: pytest.CaptureFixture[str]) -> None:
    old = os.umask(0o027)
    try:
        got = run_in_process(_compare(work, "--report", "rep", "--no-store"), capsys)
    finally:
        os.umask(old)
    assert got.code == 0, got.err
    for name in ("report.md", "comparison.json", "frontier.png"):
        assert stat.S_IMODE((work.path / "rep" / name).stat().st_mode) == 0o640, name
    assert stat.S_IMODE((work.path / "rep").stat().st_mode) == 0o750


def test_a_written_concept_artifact_honours_the_umask(work: Work) -> None:
    from constraintdsl.concepts.artifact import save_artifact

    old = os.umask(0o022)
    try:
        save_artifact(load_artifact(work.path / "a.safetensors"), work.path / "new" / "c.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((work.path / "new" / "c.safetensors").stat().st_mode) == 0o644


def test_fmt_keeps_formatting_the_other_files_and_says_which_failed(
    work: Work, capsys: pytest.CaptureFixture[str]
) -> None:
    work.write("b1.cdsl", "version 1\nclamp\n")
    work.write("messy.cdsl", "version   1\n")
    got = run_in_process(["fmt", "b1.cdsl", "messy.cdsl"], capsys)
    assert got.code == 2
    assert "b1.cdsl:2:" in got.err
    assert "reformatted messy.cdsl" in got.out
    assert (work.path / "messy.cdsl").read_text() == "version 1\n"


def test_ctrl_c_prints_one_line_and_exits_130(work: Work) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "constraintdsl", *_compare(work, "--no-store")],
        cwd=work.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # interrupt once the model is being loaded
        seen.append(line)
        if line.startswith("loading model"):
            proc.send_signal(signal.SIGINT)
            break
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("still running two minutes after Ctrl-C")
    err = "".join(seen) + err
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.rstrip().splitlines()[-1] == "cdsl: interrupted"


# --------------------------------------------------------------------------------------- Python API


@dataclass
class ApiCase:
    name: str
    call: Callable[[Work], Any]
    raises: type[BaseException]
    contains: str
    touches: tuple[str, ...] = ()  # files the case itself writes (its bad input)


API_CASES: list[ApiCase] = []


def api_case(
    name: str, raises: type[BaseException], contains: str, touches: tuple[str, ...] = ()
) -> Callable[[Callable[[Work], Any]], Callable[[Work], Any]]:
    def add(call: Callable[[Work], Any]) -> Callable[[Work], Any]:
        API_CASES.append(ApiCase(name, call, raises, contains, touches))
        return call

    return add


@api_case("load of a missing file is a SpecError", cdsl.SpecError, "no such file")
def _(w: Work) -> Any:
    return cdsl.load("missing.cdsl")


@api_case("parse of a number is a TypeError", TypeError, "str")
def _(w: Work) -> Any:
    return cdsl.parse(123)  # type: ignore[arg-type]


@api_case("load of a number is a TypeError", TypeError, "path")
def _(w: Work) -> Any:
    return cdsl.load(3.5)  # type: ignore[arg-type]


@api_case("install of None is a TypeError", TypeError, "Plan")
def _(w: Work) -> Any:
    return cdsl.install(None)  # type: ignore[arg-type]


@api_case("compile for a model name instead of a model is a TypeError", TypeError, "load_model")
def _(w: Work) -> Any:
    return cdsl.compile("good.cdsl", "smollm2")


@api_case("load of an include symlink loop is a SpecError", cdsl.SpecError, "symlink loop", ("loop.cdsl", "top.cdsl"))
def _(w: Work) -> Any:
    os.symlink("loop.cdsl", w.path / "loop.cdsl")
    w.write("top.cdsl", 'version 1\ninclude "loop.cdsl"\n')
    return cdsl.load("top.cdsl")


@api_case("load_model of a missing folder is a SpecError", cdsl.SpecError, "no such folder")
def _(w: Work) -> Any:
    return cdsl.load_model("./no/model")


@api_case("compile with a broken concept file is a SpecError", cdsl.SpecError, "zero vector", ("a.safetensors",))
def _(w: Work) -> Any:
    d = load_artifact(w.path / "a.safetensors").directions.copy()
    d[1] = 0
    w.write("a.safetensors", _artifact_bytes(w, directions=d))
    return cdsl.compile("good.cdsl", load_model(str(w.model)))


@api_case("expand of a path is a TypeError", TypeError, "Spec")
def _(w: Work) -> Any:
    return cdsl.expand("sweep.cdsl")  # type: ignore[arg-type]


@api_case("diff of two paths is a TypeError", TypeError, "Spec")
def _(w: Work) -> Any:
    return cdsl.diff("good.cdsl", "sweep.cdsl")  # type: ignore[arg-type]


@api_case("a plan applied to a model with other layers fails before tracing", cdsl.SpecError, "compiled for")
def _(w: Work) -> Any:
    plan = cdsl.compile("good.cdsl", load_model(str(w.model)))
    other = _other_model(w)
    return plan.generate(["hello"], model=other, max_new_tokens=2)


@api_case("apply of a plan on another model fails before tracing", cdsl.SpecError, "hidden size")
def _(w: Work) -> Any:
    plan = cdsl.compile("good.cdsl", load_model(str(w.model)))
    return cdsl.apply(plan, _other_model(w, hidden=48))


@api_case("read_corpus of a missing file is a SpecError", cdsl.SpecError, "no such file")
def _(w: Work) -> Any:
    from constraintdsl.compare.comparison import read_corpus

    return read_corpus("gone.txt")


def _other_model(w: Work, hidden: int | None = None) -> Any:
    from nnsight import TransformersModel
    from transformers import AutoModelForCausalLM

    from tests.tiny import tiny_config

    config = tiny_config("llama")
    config.num_hidden_layers = 2
    if hidden is not None:
        config.hidden_size, config.head_dim, config.intermediate_size = hidden, hidden // 4, 2 * hidden
    return TransformersModel(AutoModelForCausalLM.from_config(config), tokenizer=tiny_tokenizer())


@pytest.mark.parametrize("c", API_CASES, ids=[c.name for c in API_CASES])
def test_the_python_api_raises_spec_errors_or_type_errors_and_loses_nothing(c: ApiCase, work: Work) -> None:
    before = snapshot(work.path)
    with pytest.raises(c.raises) as info:
        c.call(work)
    text = info.value.render() if isinstance(info.value, cdsl.SpecError) else str(info.value)
    assert c.contains in text, text
    if isinstance(info.value, cdsl.SpecError):
        assert info.value.diagnostics and all(d.span.path for d in info.value.diagnostics)
    after = snapshot(work.path)
    assert_nothing_lost({k: v for k, v in before.items() if k not in c.touches}, after, c.touches)


def test_a_user_error_is_caught_as_a_spec_error_in_python_and_renders_located() -> None:
    with pytest.raises(cdsl.SpecError) as info:
        cdsl.load("/no/such/spec.cdsl")
    (d,) = info.value.diagnostics
    assert (d.span.path, d.span.line) == ("/no/such/spec.cdsl", 0)
    assert info.value.render().startswith("/no/such/spec.cdsl: error: no such file")


def test_piped_output_never_cuts_or_wraps_paths_and_hashes(work: Work) -> None:
    long = work.path / ("a-folder-with-a-long-name-" * 6) / "concept.safetensors"
    long.parent.mkdir()
    long.write_bytes((work.path / "a.safetensors").read_bytes())
    got = run_child(["concept", "show", str(long)], work.path)
    assert got.code == 0, got.err
    digest = "sha256:" + hashlib.sha256(long.read_bytes()).hexdigest()
    lines = got.out.splitlines()
    assert any(str(long) in line for line in lines), got.out
    assert any(digest in line for line in lines), got.out
    assert "…" not in got.out


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "operation not permitted"),
        (errno.EROFS, "read-only"),
        (errno.ENOSPC, "no space left"),
        (errno.EISDIR, "is a folder"),
        (errno.ELOOP, "symlink loop"),
    ],
)
def test_an_os_error_on_a_user_path_names_the_path_and_what_to_do(code: int, words: str) -> None:
    from constraintdsl.files import os_error

    error = os_error(OSError(code, os.strerror(code)), "out/report.md", "write", where="--report")
    rendered = error.render()
    assert rendered.startswith("--report: error: cannot write out/report.md: ")
    assert words in rendered and "\nhint: " in rendered


def test_help_shows_no_type_placeholders_and_version_prints(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["compare", "--help"], ["check", "--help"], ["concept", "build", "--help"], ["--help"]):
        assert main(command) == 0
        out = capsys.readouterr().out
        assert "<bool>" not in out and "<str>" not in out and "<int" not in out, out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"cdsl (constraintdsl) {cdsl.__version__}"
    assert main(["compare", "--help"]) == 0
    assert "0: all" in capsys.readouterr().out  # and 0 is accepted: the range is true
