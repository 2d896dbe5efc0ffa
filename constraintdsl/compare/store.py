"""The local run store: every ``cdsl compare`` run and its per-spec results, in one SQLite file.

A run (:class:`RunRecord`) names the command, the model and its revision, a hash of the inputs and the
settings; it holds ordered results (:class:`ResultRecord`), one per spec or variant, the first usually
the unconstrained ``baseline``.  Each run is written in one transaction, so a killed writer leaves
nothing behind and readers see a run whole or not at all (WAL journal: readers never wait for a writer).

The file is ``$CONSTRAINTDSL_STORE`` if set, else ``runs.sqlite`` in the cache folder
(:func:`constraintdsl.models.cache_dir`).  Reading a store that does not exist yet finds no runs; the
first :meth:`RunStore.record` creates it.
"""

from __future__ import annotations

import builtins
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from constraintdsl.errors import UserError

__all__ = ["BASELINE", "SCHEMA_VERSION", "STORE_ENV", "ResultRecord", "RunRecord", "RunStore", "default_store_path"]

BASELINE = "baseline"  # label and spec hash of the unconstrained run
SCHEMA_VERSION = 1
STORE_ENV = "CONSTRAINTDSL_STORE"
_HINT_MOVE = f"move the file aside (a new store is created on the next run) or set {STORE_ENV} to another path"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    command TEXT NOT NULL,
    model TEXT NOT NULL,
    revision TEXT NOT NULL,
    inputs_hash TEXT NOT NULL,
    settings TEXT NOT NULL,
    tool_version TEXT NOT NULL
);
CREATE TABLE results (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    label TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    spec_path TEXT,
    spec_text TEXT,
    metrics TEXT NOT NULL,
    PRIMARY KEY (run_id, position)
);
CREATE INDEX runs_by_time ON runs (created);
CREATE INDEX runs_by_model ON runs (model, inputs_hash);
CREATE INDEX results_by_spec ON results (spec_hash);
"""


@dataclass(frozen=True)
class ResultRecord:
    """One spec's (or variant's, or the baseline's) result within a run."""

    label: str
    spec_hash: str
    spec_path: str | None = None
    spec_text: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def baseline(cls, metrics: Mapping[str, Any]) -> ResultRecord:
        """The unconstrained run's result: label and spec hash ``baseline``, no spec."""
        return cls(BASELINE, BASELINE, None, None, dict(metrics))


@dataclass(frozen=True)
class RunRecord:
    """One recorded run: what ran, on which model and inputs, and its ordered results."""

    id: str
    created: float  # seconds since the epoch
    command: str
    model: str
    revision: str
    inputs_hash: str
    settings: dict[str, Any]
    tool_version: str
    results: tuple[ResultRecord, ...]


def default_store_path() -> Path:
    """``$CONSTRAINTDSL_STORE`` if set, else ``runs.sqlite`` in the cache folder."""
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env).expanduser()
    from constraintdsl.models.loading import cache_dir  # models imports torch; only needed here

    return cache_dir() / "runs.sqlite"


def _tool_version() -> str:
    from constraintdsl._version import __version__

    return __version__


def _plain(value: Any) -> Any:
    # numpy scalars/arrays and tensors, as JSON numbers and lists
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot store a {type(value).__name__} in a run record")


def _dumps(value: Mapping[str, Any]) -> str:
    # NaN and ±inf are written as NaN / Infinity (not strict JSON) so they read back as floats
    return json.dumps(value, sort_keys=True, allow_nan=True, default=_plain, ensure_ascii=False)


def _new_id(created: float) -> str:
    """``YYYYMMDD-HHMMSS-xxxxxx`` (UTC): sorts by time, readable, and a prefix names a day or a minute."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(created)) + "-" + secrets.token_hex(3)


class RunStore:
    """The run store at ``path`` (default :func:`default_store_path`).

    Each method opens its own short-lived connection, so a store object is cheap, needs no closing and
    may be shared by threads and across ``fork``.  Problems with the file raise :class:`UserError`.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, timeout: float = 10.0) -> None:
        """``timeout``: seconds to wait for another process's write to finish before giving up."""
        self.path = Path(path).expanduser() if path is not None else default_store_path()
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"

    def check(self, *, writable: bool = True, flag: str = "--store") -> None:
        """Refuse, before any work, a store that could not be read (or written, with ``writable``): a path
        that is a folder, a FIFO or a device, a file that is not a run store, or one that cannot be
        written (or created).  Nothing is created or changed."""
        from constraintdsl.files import check_output_file, kind_of

        try:
            what = kind_of(self.path)
        except FileNotFoundError:
            what = "missing"
        except OSError as e:
            from constraintdsl.files import os_error

            raise os_error(e, self.path, "open the run store", where=flag) from None
        if what == "missing":
            if writable:
                check_output_file(self.path, flag)
            return
        if what is not None:
            raise UserError(flag, f"{self.path} is {what}, not a run store file", "give the path of a file")
        if not os.access(self.path, os.R_OK | (os.W_OK if writable else 0)):
            raise UserError(
                flag,
                f"cannot {'write' if writable else 'read'} the run store {self.path}: permission denied",
                _HINT_MOVE,
            )
        self.list(limit=1)  # a file that is not a run store (or not SQLite) is refused here

    # ----------------------------------------------------------------- writing

    def record(
        self,
        *,
        command: str,
        model: str,
        revision: str,
        inputs_hash: str,
        settings: Mapping[str, Any],
        results: Iterable[ResultRecord | Mapping[str, Any]],
    ) -> RunRecord:
        """Record one run with its results, in order, in one transaction, and return it as stored.

        Each result is a :class:`ResultRecord` or a mapping with its fields (``label``, ``spec_hash``,
        optional ``spec_path``, ``spec_text``, ``metrics``).  ``results`` is consumed inside the
        transaction: if producing a result fails (or the process dies), nothing of the run is stored.
        A run needs at least one result and unique labels.
        """
        created = time.time()
        run_id = _new_id(created)
        settings_text = _dumps(settings)
        stored: list[ResultRecord] = []
        with self._connect(create=True) as db:
            assert db is not None
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, created, command, model, revision, inputs_hash, settings_text, _tool_version()),
                )
                labels: set[str] = set()
                for position, given in enumerate(results):
                    result = _as_result(given)
                    if result.label in labels:
                        raise ValueError(f"two results are labelled {result.label!r}")
                    labels.add(result.label)
                    metrics_text = _dumps(result.metrics)
                    db.execute(
                        "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            run_id,
                            position,
                            result.label,
                            result.spec_hash,
                            result.spec_path,
                            result.spec_text,
                            metrics_text,
                        ),
                    )
                    stored.append(
                        _result(result.label, result.spec_hash, result.spec_path, result.spec_text, metrics_text)
                    )
                if not stored:
                    raise ValueError("a run needs at least one result")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return RunRecord(
            run_id,
            created,
            command,
            model,
            revision,
            inputs_hash,
            json.loads(settings_text),
            _tool_version(),
            tuple(stored),
        )

    # ----------------------------------------------------------------- reading

    def list(
        self,
        *,
        model: str | None = None,
        spec_hash: str | None = None,
        inputs_hash: str | None = None,
        limit: int = 50,
    ) -> list[RunRecord]:
        """Recorded runs, newest first, at most ``limit``; optionally only those on ``model``, with a result
        for ``spec_hash``, or on inputs ``inputs_hash``."""
        where: list[str] = []
        args: list[Any] = []
        if model is not None:
            where.append("model = ?")
            args.append(model)
        if inputs_hash is not None:
            where.append("inputs_hash = ?")
            args.append(inputs_hash)
        if spec_hash is not None:
            where.append("id IN (SELECT run_id FROM results WHERE spec_hash = ?)")
            args.append(spec_hash)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        with self._connect(create=False) as db:
            if db is None:
                return []
            rows = db.execute(sql + " ORDER BY created DESC, id DESC LIMIT ?", (*args, max(0, limit))).fetchall()
            return self._runs(db, rows)

    def get(self, run_id: str) -> RunRecord:
        """The run whose id is ``run_id`` or starts with it; an unknown or ambiguous prefix is a UserError."""
        prefix = run_id.strip()
        if not prefix:
            raise UserError(str(self.path), "an empty run id names no run", "list run ids with: cdsl runs list")
        with self._connect(create=False) as db:
            rows = []
            if db is not None:
                rows = db.execute(
                    "SELECT * FROM runs WHERE substr(id, 1, ?) = ? ORDER BY created DESC, id DESC LIMIT 6",
                    (len(prefix), prefix),
                ).fetchall()
            if not rows:
                raise UserError(
                    str(self.path),
                    f"no recorded run has an id starting '{prefix}'",
                    "list run ids with: cdsl runs list",
                )
            exact = [r for r in rows if r["id"] == prefix]
            if exact:
                rows = exact
            elif len(rows) > 1:
                shown = ", ".join(r["id"] for r in rows[:5]) + (", …" if len(rows) > 5 else "")
                raise UserError(
                    str(self.path),
                    f"run id prefix '{prefix}' is ambiguous: it matches {shown}",
                    "give more characters of the id",
                )
            assert db is not None
            return self._runs(db, rows[:1])[0]

    def latest_result(
        self, spec_hash: str, model: str, inputs_hash: str, *, revision: str | None = None
    ) -> tuple[RunRecord, ResultRecord] | None:
        """The newest recorded result for ``spec_hash`` on ``model`` (at ``revision``, when given) and inputs
        ``inputs_hash``, with its run; None if there is none."""
        sql = (
            "SELECT runs.id AS id, results.position AS position FROM results JOIN runs ON runs.id = results.run_id"
            " WHERE results.spec_hash = ? AND runs.model = ? AND runs.inputs_hash = ?"
        )
        args: list[Any] = [spec_hash, model, inputs_hash]
        if revision is not None:
            sql += " AND runs.revision = ?"
            args.append(revision)
        with self._connect(create=False) as db:
            if db is None:
                return None
            hit = db.execute(
                sql + " ORDER BY runs.created DESC, runs.id DESC, results.position LIMIT 1", args
            ).fetchone()
            if hit is None:
                return None
            run = self._runs(db, db.execute("SELECT * FROM runs WHERE id = ?", (hit["id"],)).fetchall())[0]
        return run, run.results[hit["position"]]

    # ----------------------------------------------------------------- internals

    def _runs(self, db: sqlite3.Connection, rows: builtins.list[sqlite3.Row]) -> builtins.list[RunRecord]:
        if not rows:
            return []
        # runs are only ever added whole, so results read after their runs are complete
        ids = [r["id"] for r in rows]
        found: dict[str, list[ResultRecord]] = {i: [] for i in ids}
        marks = ",".join("?" * len(ids))
        for r in db.execute(f"SELECT * FROM results WHERE run_id IN ({marks}) ORDER BY run_id, position", ids):
            found[r["run_id"]].append(_result(r["label"], r["spec_hash"], r["spec_path"], r["spec_text"], r["metrics"]))
        return [
            RunRecord(
                r["id"],
                r["created"],
                r["command"],
                r["model"],
                r["revision"],
                r["inputs_hash"],
                json.loads(r["settings"]),
                r["tool_version"],
                tuple(found[r["id"]]),
            )
            for r in rows
        ]

    @contextmanager
    def _connect(self, *, create: bool) -> Iterator[sqlite3.Connection | None]:
        """A connection with the schema checked (and created when ``create``), or None when reading a store
        that does not exist.  sqlite errors become UserErrors naming the file."""
        if not create and not self.path.exists():
            yield None
            return
        db: sqlite3.Connection | None = None
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys = ON")
            if create:
                db.execute("PRAGMA journal_mode = WAL")
            if self._check_schema(db, create=create):
                yield db
            else:
                yield None
        except (sqlite3.OperationalError, sqlite3.DatabaseError) as e:
            if type(e) not in (sqlite3.OperationalError, sqlite3.DatabaseError):
                raise  # IntegrityError and the like are bugs here, not problems with the file
            raise self._user_error(e) from e
        except OSError as e:
            raise UserError(
                str(self.path), f"cannot create the run store: {e.strerror or e}", f"set {STORE_ENV} to a writable path"
            ) from e
        finally:
            if db is not None:
                db.close()

    def _check_schema(self, db: sqlite3.Connection, *, create: bool) -> bool:
        """Whether the store holds our tables (creating them when ``create``); refuses other files."""
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            if tables:
                raise UserError(
                    str(self.path),
                    "this SQLite file is not a constraintdsl run store "
                    f"(it has the tables {', '.join(sorted(tables))})",
                    _HINT_MOVE,
                )
            if not create:
                return False
            db.execute("BEGIN IMMEDIATE")
            try:
                if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():  # lost a race?
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row is not None and str(row[0]).isdigit() else None
        if version is None:
            raise UserError(str(self.path), "the run store has no valid schema version", _HINT_MOVE)
        if version > SCHEMA_VERSION:
            raise UserError(
                str(self.path),
                f"the run store was written by a newer constraintdsl (schema {version}; "
                f"this version reads schema {SCHEMA_VERSION})",
                f"upgrade constraintdsl, or set {STORE_ENV} to another path",
            )
        return True

    def _user_error(self, e: sqlite3.DatabaseError) -> UserError:
        text = str(e)
        if "locked" in text or "busy" in text:
            return UserError(
                str(self.path),
                f"the run store stayed locked by another process for {self.timeout:g} s",
                "wait for the other cdsl command to finish, then try again",
            )
        if "unable to open" in text:
            return UserError(
                str(self.path),
                f"cannot open the run store ({text})",
                f"check that the path is a writable file, or set {STORE_ENV} to another path",
            )
        return UserError(str(self.path), f"the run store is not a valid SQLite database ({text})", _HINT_MOVE)


def _as_result(given: ResultRecord | Mapping[str, Any]) -> ResultRecord:
    if isinstance(given, ResultRecord):
        return given
    if not isinstance(given, Mapping):
        raise TypeError(f"a result must be a ResultRecord or a mapping, not {type(given).__name__}")
    fields = {"label", "spec_hash", "spec_path", "spec_text", "metrics"}
    if unknown := set(given) - fields:
        raise TypeError(f"unknown result fields: {', '.join(sorted(unknown))}")
    if missing := {"label", "spec_hash"} - set(given):
        raise TypeError(f"a result needs the fields: {', '.join(sorted(missing))}")
    return ResultRecord(
        str(given["label"]),
        str(given["spec_hash"]),
        given.get("spec_path"),
        given.get("spec_text"),
        dict(given.get("metrics") or {}),
    )


def _result(label: str, spec_hash: str, spec_path: str | None, spec_text: str | None, metrics: str) -> ResultRecord:
    return ResultRecord(label, spec_hash, spec_path, spec_text, json.loads(metrics))
