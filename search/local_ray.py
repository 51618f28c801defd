"""A local Ray that belongs to one search and leaves nothing behind, even after kill -9.

`LocalRay` starts Ray on loopback in a directory of its own, ``<tmp>/tritune-ray/<token>``, and
marks every Ray process it starts with the environment variable ``TRITUNE_RAY_SESSION=<token>``
(Ray's processes inherit the environment of the process that starts them). Beside it runs a
*reaper*: this module as a script, in a session of its own, reading a pipe from the search. When
the pipe closes -- the search ended, crashed or was killed -- the reaper kills every process
that carries the mark and deletes the directory. Without it, Ray's agents outlive a killed
search by about a minute (they report the raylet's death to a GCS that is gone, with a 60 s
timeout) and its session directory stays forever.

A session whose owner and reaper both died (its whole process group was killed) is cleaned up
by the next `LocalRay` on this machine. Nothing here touches a Ray it did not start: the mark
and the directory name identify a session's processes and files exactly.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .processes import is_zombie, start_ticks

MARK = "TRITUNE_RAY_SESSION"
OWNER_FILE = "owner.json"
#: Unix socket paths live under a session directory and must stay below ~107 bytes.
_MAX_ROOT_LEN = 40
#: A directory without an owner file older than this is debris of a start that failed early.
_ORPHAN_AGE_S = 600.0


def session_root() -> Path:
    """Where local sessions live: ``<tmp>/tritune-ray`` (``/tmp/tritune-ray`` when TMPDIR is long)."""
    root = Path(tempfile.gettempdir()) / "tritune-ray"
    return root if len(str(root)) <= _MAX_ROOT_LEN else Path("/tmp/tritune-ray")


def marked_pids(token: str, directory: Path | None = None, spare: int | None = None) -> list[int]:
    """Live processes whose environment carries ``TRITUNE_RAY_SESSION=<token>``, or that hold a
    file open under ``directory`` (Ray's agents overwrite their environment with their process
    title, but keep their log files in the session directory open). This process and
    ``spare`` (a search that is stopping its own session) are never listed."""
    needle = f"{MARK}={token}".encode()
    prefix = None if directory is None else str(directory) + os.sep
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in (os.getpid(), spare):
            continue
        try:
            if needle in Path(entry.path, "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
                continue
            if prefix is not None and any(os.readlink(fd.path).startswith(prefix) for fd in os.scandir(Path(entry.path, "fd"))):
                found.append(int(entry.name))
        except OSError:  # gone, or another user's
            continue
    return found


def kill_marked(token: str, directory: Path | None = None, spare: int | None = None, timeout: float = 10.0) -> int:
    """SIGKILL every process of session ``token`` (see `marked_pids`) until none is left;
    returns how many."""
    if not Path("/proc").is_dir():
        return 0
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for p in marked_pids(token, directory, spare) if start_ticks(p) is not None and not is_zombie(p)]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return len(killed)


def _owner_alive(owner: dict[str, Any]) -> bool:
    pid, ticks = owner.get("pid"), owner.get("ticks")
    return isinstance(pid, int) and start_ticks(pid) is not None and (ticks is None or start_ticks(pid) == ticks)


def clean_stale(root: Path | None = None) -> list[str]:
    """Kill the processes and delete the directories of sessions whose owner is gone; returns
    their tokens. Live sessions (another search running now) are left alone."""
    root = root or session_root()
    cleaned: list[str] = []
    if not root.is_dir() or not Path("/proc").is_dir():  # no way to tell a live owner from a dead one
        return cleaned
    for path in sorted(root.iterdir()):
        if not path.is_dir():
            continue
        try:
            owner = json.loads((path / OWNER_FILE).read_text())
        except (OSError, ValueError):
            owner = None
        if owner is None:
            try:
                stale = time.time() - path.stat().st_mtime > _ORPHAN_AGE_S
            except OSError:
                continue
        else:
            stale = not (isinstance(owner, dict) and _owner_alive(owner))
        if stale:
            kill_marked(path.name, path)
            shutil.rmtree(path, ignore_errors=True)
            cleaned.append(path.name)
    return cleaned


class LocalRay:
    """Start (`start`) and stop (`stop`) a single-node Ray on 127.0.0.1 with ``num_cpus``."""

    def __init__(self, num_cpus: int, root: Path | None = None) -> None:
        self.num_cpus = int(num_cpus)
        self.root = root or session_root()
        self.token = f"{os.getpid()}-{secrets.token_hex(3)}"
        self.dir = self.root / self.token
        self._reaper: subprocess.Popen | None = None

    def start(self, **init_kwargs: Any) -> None:
        import ray

        clean_stale(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.dir.mkdir()
        (self.dir / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "ticks": start_ticks(os.getpid()), "started": time.time()}))
        if Path("/proc").is_dir():
            self._reaper = subprocess.Popen(
                [sys.executable, "-m", "tritune.search.local_ray", str(self.dir), str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
        _loopback_only()
        saved = os.environ.get(MARK)
        os.environ[MARK] = self.token
        try:
            # "local" starts a fresh Ray even when `ray start` left a cluster on this machine.
            ray.init(address="local", num_cpus=self.num_cpus, _temp_dir=str(self.dir), **init_kwargs)
        except BaseException:
            self.stop()
            raise
        finally:
            if saved is None:
                os.environ.pop(MARK, None)
            else:
                os.environ[MARK] = saved

    def stop(self) -> None:
        """Shut Ray down, then let the reaper remove what is left (it also does so if we die)."""
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if self._reaper is not None:
            self._reaper.stdin.close()  # type: ignore[union-attr]
            try:
                self._reaper.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            self._reaper = None
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def _loopback_only() -> None:
    """Keep a local Ray on 127.0.0.1. Ray binds a single-node cluster to the machine's outward
    address unless clusters are switched off (its own switch for laptops); a local search has
    no business listening on the network. Processes Ray starts inherit the environment."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants  # read at import time; ray may be imported already

    ray_constants.ENABLE_RAY_CLUSTER = False


def _reap(session_dir: str, owner: int) -> None:
    """The reaper: wait until the search's pipe closes, then remove its Ray session (the search
    itself, if it still runs, is spared: it closed the pipe after shutting Ray down)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the search is the search's to handle
    try:
        while sys.stdin.buffer.read(65536):
            pass
    except OSError:
        pass
    path = Path(session_dir)
    kill_marked(path.name, path, spare=owner)
    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    _reap(sys.argv[1], int(sys.argv[2]))
