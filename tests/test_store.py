"""The run store: runs read back exactly as recorded (NaN included), a killed writer leaves nothing behind,
readers see a run whole or not at all, and a file that is not a run store is a clear error naming it."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from constraintdsl.compare.store import BASELINE, SCHEMA_VERSION, STORE_ENV, ResultRecord, RunRecord, RunStore
from constraintdsl.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
WRITER = Path(__file__).with_name("store_writer.py")


def results(*hashes: str, metrics: dict[str, Any] | None = None) -> list[ResultRecord]:
    return [ResultRecord.baseline({"nll": 2.5})] + [
        ResultRecord(f"spec {h}", h, f"specs/{h}.cdsl", f"clamp {h} >= 0.5 at layer 3\n", metrics or {"kl": 0.1})
        for h in hashes
    ]


def record(store: RunStore, *hashes: str, model: str = "tiny", inputs: str = "in-1", revision: str = "r1") -> RunRecord:
    return store.record(
        command="cdsl compare a.cdsl",
        model=model,
        revision=revision,
        inputs_hash=inputs,
        settings={"corpus": "neutral.txt", "batch": 8},
        results=results(*hashes),
    )


def same(a: Any, b: Any) -> bool:
    """Equality that counts NaN equal to NaN, through dicts, lists, tuples and records."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (RunRecord, ResultRecord)) and type(a) is type(b):
        return same(vars(a), vars(b))
    return bool(a == b) and type(a) is type(b)


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "runs.sqlite")


def test_a_recorded_run_reads_back_equal_with_nan_and_infinities(store: RunStore) -> None:
    metrics = {"tax": {"kl": math.nan, "ppl_ratio": math.inf, "delta_nll": -math.inf}, "pr": 12.5, "n": [1, 2]}
    run = store.record(
        command="cdsl compare a.cdsl b.cdsl",
        model="smollm2",
        revision="abc123",
        inputs_hash="in-1",
        settings={"z": 1, "a": math.nan, "corpus": "c.txt"},
        results=[ResultRecord.baseline({"nll": 2.5}), ResultRecord("a", "h-a", "a.cdsl", "steer x by 1", metrics)],
    )
    assert math.isnan(run.results[1].metrics["tax"]["kl"])
    assert run.results[1].metrics["tax"]["ppl_ratio"] == math.inf
    assert run.results[0].label == run.results[0].spec_hash == BASELINE
    assert list(run.settings) == ["a", "corpus", "z"]
    assert same(store.get(run.id), run)
    assert [same(r, run) for r in store.list()] == [True]
    latest = store.latest_result("h-a", "smollm2", "in-1")
    assert latest is not None and same(latest[0], run) and same(latest[1], run.results[1])
    stored = sqlite3.connect(store.path).execute("SELECT metrics FROM results WHERE label = 'a'").fetchone()[0]
    assert stored.index('"n"') < stored.index('"pr"') < stored.index('"tax"'), "JSON keys are written sorted"


def test_numpy_and_torch_numbers_are_stored_as_plain_numbers(store: RunStore) -> None:
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    metrics = {"a": np.float32(0.5), "b": np.arange(3), "c": torch.tensor([1.5, 2.5])}
    only = [ResultRecord("x", "h", None, None, metrics)]
    run = store.record(command="c", model="m", revision="r", inputs_hash="i", settings={}, results=only)
    assert store.get(run.id).results[0].metrics == {"a": 0.5, "b": [0, 1, 2], "c": [1.5, 2.5]}


def test_a_result_may_be_given_as_a_mapping_of_its_fields(store: RunStore) -> None:
    given = {"label": "a", "spec_hash": "h-a", "spec_text": "steer x by 1", "metrics": {"kl": 0.5}}
    run = store.record(command="c", model="m", revision="r", inputs_hash="i", settings={}, results=[given])
    assert store.get(run.id).results == (ResultRecord("a", "h-a", None, "steer x by 1", {"kl": 0.5}),)
    with pytest.raises(TypeError, match="unknown result fields: lable"):
        store.record(command="c", model="m", revision="r", inputs_hash="i", settings={}, results=[{"lable": "a"}])
    assert len(store.list()) == 1


def test_runs_are_listed_newest_first_and_filtered_by_model_spec_and_inputs(store: RunStore) -> None:
    first = record(store, "h1", "h2")
    second = record(store, "h2", model="other")
    third = record(store, "h3", inputs="in-2")
    assert [r.id for r in store.list()] == [third.id, second.id, first.id]
    assert [r.id for r in store.list(limit=2)] == [third.id, second.id]
    assert [r.id for r in store.list(model="tiny")] == [third.id, first.id]
    assert [r.id for r in store.list(spec_hash="h2")] == [second.id, first.id]
    assert [r.id for r in store.list(spec_hash=BASELINE)] == [third.id, second.id, first.id]
    assert [r.id for r in store.list(inputs_hash="in-2")] == [third.id]
    assert store.list(model="tiny", spec_hash="h2", inputs_hash="in-2") == []
    assert [r.label for r in store.list(spec_hash="h1")[0].results] == [BASELINE, "spec h1", "spec h2"]


def test_run_ids_sort_by_time_and_are_unique(store: RunStore) -> None:
    ids = [record(store, "h").id for _ in range(5)]
    assert len(set(ids)) == 5
    assert ids == sorted(ids, key=lambda i: i[:15])  # the time part; the tail is random within a second
    assert ids[0][:8] == time.strftime("%Y%m%d", time.gmtime(store.get(ids[0]).created))


def test_a_unique_prefix_names_a_run_and_an_unknown_or_ambiguous_one_is_a_clear_error(store: RunStore) -> None:
    a, b = record(store, "h1"), record(store, "h2")
    assert store.get(a.id).id == a.id
    if not a.id.startswith(b.id[:-1]):  # (1 in 16⁵ when both fall in the same second)
        assert store.get(b.id[:-1]).id == b.id
    shared = next(i for i, (x, y) in enumerate(zip(a.id, b.id, strict=True)) if x != y)
    common = a.id[:shared]
    with pytest.raises(UserError, match="ambiguous") as ambiguous:
        store.get(common)
    assert a.id in str(ambiguous.value) and b.id in str(ambiguous.value)
    assert ambiguous.value.where == str(store.path)
    with pytest.raises(UserError, match="no recorded run has an id starting 'nope'") as unknown:
        store.get("nope")
    assert "cdsl runs list" in str(unknown.value)
    with pytest.raises(UserError, match="empty"):
        store.get("  ")


def test_the_latest_result_is_the_newest_for_that_spec_model_and_inputs(store: RunStore) -> None:
    old = record(store, "h1")
    new = record(store, "h2", "h1")
    record(store, "h1", model="other")
    record(store, "h1", inputs="in-2")
    newer_revision = record(store, "h1", revision="r2")
    found = store.latest_result("h1", "tiny", "in-1", revision="r1")
    assert found is not None
    assert found[0].id == new.id and found[1] == new.results[2]
    found = store.latest_result("h1", "tiny", "in-1")
    assert found is not None and found[0].id == newer_revision.id
    assert store.latest_result("h9", "tiny", "in-1") is None
    assert store.latest_result("h1", "tiny", "in-9") is None
    assert old.id != new.id


def test_reading_a_store_that_does_not_exist_finds_nothing_and_creates_no_file(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "deep" / "runs.sqlite")
    assert store.list() == []
    assert store.latest_result("h", "m", "i") is None
    with pytest.raises(UserError, match="no recorded run"):
        store.get("2026")
    assert not (tmp_path / "deep").exists()
    record(store, "h")
    assert len(store.list()) == 1


def test_the_store_path_is_the_argument_else_the_environment_else_the_cache_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "env.sqlite"))
    monkeypatch.setenv("CONSTRAINTDSL_CACHE", str(tmp_path / "cache"))
    assert RunStore(tmp_path / "arg.sqlite").path == tmp_path / "arg.sqlite"
    assert RunStore().path == tmp_path / "env.sqlite"
    monkeypatch.delenv(STORE_ENV)
    assert RunStore().path == tmp_path / "cache" / "runs.sqlite"


def test_the_store_uses_a_write_ahead_log(store: RunStore) -> None:
    record(store, "h")
    assert sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_failure_while_producing_results_stores_nothing(store: RunStore) -> None:
    record(store, "kept")

    def failing() -> Iterator[ResultRecord]:
        yield ResultRecord.baseline({})
        raise RuntimeError("the model ran out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        store.record(command="c", model="tiny", revision="r", inputs_hash="i", settings={}, results=failing())
    with pytest.raises(ValueError, match="at least one result"):
        store.record(command="c", model="tiny", revision="r", inputs_hash="i", settings={}, results=[])
    with pytest.raises(ValueError, match="two results are labelled 'baseline'"):
        store.record(command="c", model="tiny", revision="r", inputs_hash="i", settings={}, results=results() * 2)
    with pytest.raises(TypeError, match="cannot store a object"):
        store.record(command="c", model="tiny", revision="r", inputs_hash="i", settings={"x": object()}, results=[])
    assert [r.results[1].spec_hash for r in store.list()] == ["kept"]
    count = sqlite3.connect(store.path).execute("SELECT count(*) FROM results").fetchone()[0]
    assert count == 2


class Writer:
    """``store_writer.py`` in a subprocess, paused inside its transaction after inserting result 0."""

    def __init__(self, path: Path, gate: Path, count: int) -> None:
        self.gate = gate
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(path), str(count), str(gate)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line == "inserted 1\n", line + self.proc.stderr.read() if self.proc.stderr else line

    def release(self) -> str:
        (self.gate / "go").touch()
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        return out.split()[-1]


def test_a_writer_killed_in_the_middle_of_a_run_leaves_no_partial_run(store: RunStore, tmp_path: Path) -> None:
    kept = record(store, "kept")
    writer = Writer(store.path, tmp_path, count=4)
    os.kill(writer.proc.pid, signal.SIGKILL)
    writer.proc.communicate(timeout=60)
    assert writer.proc.returncode == -signal.SIGKILL
    assert [r.id for r in store.list()] == [kept.id]
    db = sqlite3.connect(store.path)
    assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM results WHERE spec_hash LIKE 'hash-%'").fetchone()[0] == 0
    db.close()
    after = record(store, "after")
    assert [r.id for r in store.list()] == [after.id, kept.id]


def test_readers_during_a_write_see_either_no_run_or_the_whole_run(store: RunStore, tmp_path: Path) -> None:
    record(store, "first")  # the store exists, so readers do not race its creation
    seen: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        reader = RunStore(store.path)
        while not stop.is_set():
            seen.extend(len(r.results) for r in reader.list(model="tiny", inputs_hash="inputs"))

    writer = Writer(store.path, tmp_path, count=5)
    thread = threading.Thread(target=poll)
    thread.start()
    try:
        assert store.list(inputs_hash="inputs") == []  # results 0 and 1 are inserted but not committed
        with pytest.raises(UserError, match="locked by another process"):
            RunStore(store.path, timeout=0.2).record(
                command="c", model="m", revision="r", inputs_hash="i", settings={}, results=results()
            )
        run_id = writer.release()
        deadline = time.monotonic() + 30
        while 5 not in seen and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
        if writer.proc.poll() is None:
            writer.proc.kill()
    assert set(seen) == {5}, "a reader saw a run with only some of its results"
    assert [r.label for r in store.get(run_id).results] == [f"variant-{i}" for i in range(5)]


def test_a_file_that_is_not_sqlite_is_a_clear_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    path.write_text("these are my notes, not a database\n" * 100)
    for action in (lambda s: s.list(), lambda s: s.get("x"), lambda s: record(s, "h")):
        with pytest.raises(UserError, match="not a valid SQLite database") as caught:
            action(RunStore(path))
        assert caught.value.where == str(path)
        assert caught.value.hint is not None and STORE_ENV in caught.value.hint
    assert path.read_text().startswith("these are my notes"), "the file was left as it was"


def test_a_corrupted_store_is_a_clear_error(store: RunStore) -> None:
    for i in range(40):
        record(store, f"h{i}")
    data = bytearray(store.path.read_bytes())
    page = 4096
    assert len(data) > 3 * page
    data[page : len(data)] = os.urandom(len(data) - page)  # keep the header and the schema page
    store.path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="not a valid SQLite database") as caught:
        store.list()
    assert caught.value.where == str(store.path)


def test_a_directory_in_place_of_the_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot open the run store") as caught:
        RunStore(tmp_path).list()
    assert caught.value.where == str(tmp_path)


def test_an_sqlite_file_of_another_program_is_not_taken_for_a_store(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE songs (title TEXT)")
    db.close()
    with pytest.raises(UserError, match=r"not a constraintdsl run store .* songs"):
        record(RunStore(path), "h")
    assert sqlite3.connect(path).execute("SELECT name FROM sqlite_master").fetchall() == [("songs",)]


def test_a_store_written_by_a_newer_schema_is_refused(store: RunStore) -> None:
    record(store, "h")
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.close()
    for action in (lambda s: s.list(), lambda s: record(s, "h")):
        with pytest.raises(UserError, match=f"newer constraintdsl \\(schema {SCHEMA_VERSION + 1}") as caught:
            action(store)
        assert caught.value.hint is not None and "upgrade" in caught.value.hint
