"""`RunLock`: one writer per run directory.

The lock is an exclusive ``flock`` on ``RUN_DIR/.lock``, held for as long as the run is open. The
kernel drops it when its process ends, kill -9 included, so a lock left by a dead process is
stale by construction and simply taken over. The file names the holder (pid, host, start time),
so a second writer is told who has the run.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".lock"


class RunLocked(ValueError):
    """Another process is writing this run directory."""


class RunLock:
    """Exclusive ownership of a run directory (a context manager)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def holder(self) -> dict:
        """Who wrote the lock file last (empty when unreadable)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            who = self.holder()
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(who["started"])) if isinstance(who.get("started"), (int, float)) else "?"
            raise RunLocked(
                f"run directory {str(self.path.parent)!r} is in use by pid {who.get('pid', '?')} on host {who.get('host', '?')} "
                f"(since {since}); wait for it to finish or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
