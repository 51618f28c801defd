"""Per-run results store: every trial lands in SQLite the moment it finishes.

One file, ``trials.db``, in the run directory. A trial row is written as ``running`` when it is
dispatched and updated once with its final status, in its own transaction, so a killed job loses
at most the trials that were still running. The job's fingerprint is stored too: resuming a run
with a different job is refused instead of silently mixing results.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..spaces import Candidate

STORE_SCHEMA_VERSION = 1
FINAL_STATUSES = ("complete", "infeasible", "failed")


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
    """SQLite-backed trial table for one run directory (safe to reopen after a crash)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS trials (number INTEGER PRIMARY KEY, candidate_id TEXT NOT NULL, candidate TEXT NOT NULL,"
            " status TEXT NOT NULL, metrics TEXT NOT NULL DEFAULT '{}', error TEXT NOT NULL DEFAULT '',"
            " started REAL NOT NULL DEFAULT 0, finished REAL NOT NULL DEFAULT 0, worker TEXT NOT NULL DEFAULT '')"
        )
        version = self.get_meta("schema_version")
        if version is None:
            self.set_meta("schema_version", str(STORE_SCHEMA_VERSION))
        elif int(version) > STORE_SCHEMA_VERSION:
            raise ValueError(f"{self.path}: store schema {version} is newer than this tritune understands ({STORE_SCHEMA_VERSION})")

    # ----- metadata ---------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # ----- trials -----------------------------------------------------------------------------
    def mark_running(self, number: int, candidate: Candidate, worker: str = "") -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO trials (number, candidate_id, candidate, status, started, worker) VALUES (?, ?, ?, 'running', ?, ?)",
            (number, candidate.id, candidate.dumps(), time.time(), worker),
        )

    def finish(self, record: TrialRecord) -> None:
        if record.status not in FINAL_STATUSES:
            raise ValueError(f"trial status: {record.status!r} not allowed; allowed: {', '.join(FINAL_STATUSES)}")
        self._db.execute(
            "INSERT OR REPLACE INTO trials (number, candidate_id, candidate, status, metrics, error, started, finished, worker)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.number, record.candidate.id, record.candidate.dumps(), record.status,
                json.dumps(record.metrics, sort_keys=True), record.error, record.started, record.finished, record.worker,
            ),
        )

    def _rows(self, where: str = "", args: tuple = ()) -> Iterator[TrialRecord]:
        query = "SELECT number, candidate, status, metrics, error, started, finished, worker FROM trials " + where + " ORDER BY number"
        for number, cand, status, metrics, error, started, finished, worker in self._db.execute(query, args):
            yield TrialRecord(number, Candidate.loads(cand), status, json.loads(metrics), error, started, finished, worker)

    def finished(self) -> dict[int, TrialRecord]:
        """Trials with a final status, by number (what a resume replays instead of re-running)."""
        marks = ",".join("?" * len(FINAL_STATUSES))
        return {r.number: r for r in self._rows(f"WHERE status IN ({marks})", FINAL_STATUSES)}

    def all(self) -> list[TrialRecord]:
        return list(self._rows())

    def count(self, status: str) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM trials WHERE status = ?", (status,)).fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "TrialStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
