"""Per-run results store: every trial lands in SQLite the moment it finishes.

One file, ``trials.db``, in the run directory. A trial row is written as ``running`` when it is
dispatched and updated once with its final status, in its own transaction, so a killed job loses
at most the trials that were still running. The job's fingerprint is stored too: resuming a run
with a different job is refused instead of silently mixing results.

The store also keeps every *cheap* metric a strategy or the pipeline obtained (table
``cheap``: candidate id -> metrics). Measured latencies are noisy, and strategies screen
candidates with them, so a resume reads them back instead of measuring again: the replayed
strategy then sees exactly what the original one saw and proposes the same trials.

A file that SQLite cannot read, or whose tables are not tritune's, raises `StoreError` (a
ValueError naming the file), never a raw ``sqlite3`` error.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

from ..spaces import Candidate

STORE_SCHEMA_VERSION = 2
FINAL_STATUSES = ("complete", "infeasible", "failed")
_TRIAL_COLUMNS = ("number", "candidate_id", "candidate", "status", "metrics", "error", "started", "finished", "worker")


class StoreError(ValueError):
    """A ``trials.db`` that cannot be used: damaged, not tritune's, or written by a newer tritune."""


def _number(value: object) -> float:
    """A stored metric as a float (JSON keeps NaN as ``NaN``); anything else is damage."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"metric value {value!r} is not a number")
    return float(value)


@dataclass(frozen=True)
class TrialRecord:
    number: int
    candidate: Candidate
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    started: float = 0.0
    finished: float = 0.0
    worker: str = ""

    @property
    def duration(self) -> float:
        return max(0.0, self.finished - self.started)


class TrialStore:
    """SQLite-backed trial table for one run directory (safe to reopen after a crash).

    ``readonly=True`` views an existing run: nothing is created or written, and a file that
    lacks a run's tables is refused."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = bool(readonly)
        try:
            if self.readonly:
                if not self.path.is_file():
                    raise StoreError(f"trial store {str(self.path)!r}: no such file")
                self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0, isolation_level=None)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"trial store {str(self.path)!r}: cannot open ({exc})") from None
        try:
            self._open_readonly() if self.readonly else self._open()
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"trial store {str(self.path)!r}: not a readable tritune store ({exc}); "
                             "it is damaged or not a trials.db; start a new run_dir") from None
        except StoreError:
            self._db.close()
            raise

    def _open_readonly(self) -> None:
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = sorted({"meta", "trials"} - tables)
        if missing:
            raise StoreError(f"trial store {str(self.path)!r}: lacks the tables {missing}; it is damaged or not a tritune run")
        self._check_schema(write=False)

    def _check_schema(self, write: bool) -> None:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(trials)")}
        missing = sorted(set(_TRIAL_COLUMNS) - columns)
        if missing:
            raise StoreError(f"trial store {str(self.path)!r}: table 'trials' lacks columns {missing}; not a tritune store")
        version = self.get_meta("schema_version")
        if version is None or not version.isdigit():
            if version is not None or not write:
                raise StoreError(f"trial store {str(self.path)!r}: schema_version {version!r} is not a number")
            self.set_meta("schema_version", str(STORE_SCHEMA_VERSION))
        elif int(version) > STORE_SCHEMA_VERSION:
            raise StoreError(f"trial store {str(self.path)!r}: schema {version} is newer than this tritune understands ({STORE_SCHEMA_VERSION})")
        elif int(version) < STORE_SCHEMA_VERSION and write:
            self.set_meta("schema_version", str(STORE_SCHEMA_VERSION))  # version 1 lacked the cheap table, now created

    def _open(self) -> None:
        db = self._db
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" in tables and "trials" not in tables:
            raise StoreError(f"trial store {str(self.path)!r}: has a meta table but no trials table; it is damaged, start a new run_dir")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        check = db.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise StoreError(f"trial store {str(self.path)!r}: damaged (SQLite integrity check: {check and check[0]!r}); start a new run_dir")
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute(
            "CREATE TABLE IF NOT EXISTS trials (number INTEGER PRIMARY KEY, candidate_id TEXT NOT NULL, candidate TEXT NOT NULL,"
            " status TEXT NOT NULL, metrics TEXT NOT NULL DEFAULT '{}', error TEXT NOT NULL DEFAULT '',"
            " started REAL NOT NULL DEFAULT 0, finished REAL NOT NULL DEFAULT 0, worker TEXT NOT NULL DEFAULT '')"
        )
        db.execute("CREATE TABLE IF NOT EXISTS cheap (candidate_id TEXT PRIMARY KEY, metrics TEXT NOT NULL)")
        self._check_schema(write=True)

    def _execute(self, query: str, args: tuple = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(query, args)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"trial store {str(self.path)!r}: {exc}; the file is damaged or not a trials.db") from None

    # ----- metadata ---------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is not None and not isinstance(row[0], str):
            raise StoreError(f"trial store {str(self.path)!r}: meta {key!r} is not text")
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self._execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # ----- cheap metrics ------------------------------------------------------------------------
    def cheap_metrics(self) -> dict[str, dict[str, float]]:
        """Every stored cheap result, by candidate id."""
        out: dict[str, dict[str, float]] = {}
        if self.readonly and self._execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'cheap'").fetchone() is None:
            return out
        for cid, text in self._execute("SELECT candidate_id, metrics FROM cheap").fetchall():
            try:
                values = json.loads(text)
                if not isinstance(values, dict):
                    raise ValueError("not a mapping")
                out[str(cid)] = {str(k): _number(v) for k, v in values.items()}
            except (ValueError, TypeError, RecursionError) as exc:
                raise StoreError(f"trial store {str(self.path)!r}: cheap metrics of {cid!r} are damaged ({exc})") from None
        return out

    def put_cheap(self, candidate_id: str, metrics: Mapping[str, float]) -> None:
        """Keep a candidate's cheap metrics (the first answer wins: a replay must see it again).

        Written without fsync (WAL, synchronous=NORMAL): a committed row survives the process
        being killed, which is what resume needs, at a fraction of a synced write's cost;
        strategies screen thousands of candidates."""
        self._execute("PRAGMA synchronous=NORMAL")
        try:
            self._execute("INSERT OR IGNORE INTO cheap (candidate_id, metrics) VALUES (?, ?)",
                          (candidate_id, json.dumps({k: float(v) for k, v in metrics.items()}, sort_keys=True)))
        finally:
            self._execute("PRAGMA synchronous=FULL")

    # ----- trials -----------------------------------------------------------------------------
    def mark_running(self, number: int, candidate: Candidate, worker: str = "") -> None:
        self._execute(
            "INSERT OR REPLACE INTO trials (number, candidate_id, candidate, status, started, worker) VALUES (?, ?, ?, 'running', ?, ?)",
            (number, candidate.id, candidate.dumps(), time.time(), worker),
        )

    def finish(self, record: TrialRecord) -> None:
        if record.status not in FINAL_STATUSES:
            raise ValueError(f"trial status: {record.status!r} not allowed; allowed: {', '.join(FINAL_STATUSES)}")
        self._execute(
            "INSERT OR REPLACE INTO trials (number, candidate_id, candidate, status, metrics, error, started, finished, worker)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.number, record.candidate.id, record.candidate.dumps(), record.status,
                json.dumps(record.metrics, sort_keys=True), record.error, record.started, record.finished, record.worker,
            ),
        )

    def _rows(self, where: str = "", args: tuple = ()) -> Iterator[TrialRecord]:
        query = "SELECT number, candidate, status, metrics, error, started, finished, worker FROM trials " + where + " ORDER BY number"
        for row in self._execute(query, args).fetchall():
            yield self._record(row)

    def _record(self, row: tuple) -> TrialRecord:
        number, cand, status, metrics, error, started, finished, worker = row
        try:
            if status not in FINAL_STATUSES + ("running",):
                raise ValueError(f"status {status!r}")
            values = json.loads(metrics)
            if not isinstance(values, dict):
                raise ValueError("metrics are not a mapping")
            return TrialRecord(int(number), Candidate.loads(cand), status, {str(k): _number(v) for k, v in values.items()},
                               str(error), float(started), float(finished), str(worker))
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            raise StoreError(f"trial store {str(self.path)!r}: trial {number!r} is damaged ({type(exc).__name__}: {exc})") from None

    def finished(self) -> dict[int, TrialRecord]:
        """Trials with a final status, by number (what a resume replays instead of re-running)."""
        marks = ",".join("?" * len(FINAL_STATUSES))
        return {r.number: r for r in self._rows(f"WHERE status IN ({marks})", FINAL_STATUSES)}

    def all(self) -> list[TrialRecord]:
        return list(self._rows())

    def count(self, status: str) -> int:
        return int(self._execute("SELECT COUNT(*) FROM trials WHERE status = ?", (status,)).fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "TrialStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
