"""Reads of the Linux process table (``/proc``): start times, states, command lines and process
trees. Used to clean up after a killed local Ray (`tritune.search.local_ray`) and by the tests
and benchmarks that kill searches and watch what they leave behind."""
from __future__ import annotations

import os
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (None: no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()


def start_ticks(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (None: no such process); with the pid
    it names one process even after pid reuse."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def is_zombie(pid: int) -> bool:
    """True for a process that has exited (or is gone) but was not reaped yet."""
    fields = _stat_fields(pid)
    return fields is None or fields[0] == "Z"


def alive(pid: int) -> bool:
    """True while the process runs (a zombie does not)."""
    return not is_zombie(pid)


def cmdline(pid: int) -> str:
    """The process's command line, arguments joined by spaces ("" when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def children() -> dict[int, list[int]]:
    """Parent pid -> its child pids, for every process now."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` in the process tree now."""
    tree, out, todo = children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
