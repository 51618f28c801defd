"""Time a pool of candidates together, in fresh processes, as a device would run them.

A search times each batch of proposals once, inside a process that has trained a supernet and
built many models: a slow phase of a shared machine inflates a whole batch, and onnxruntime runs
slower in such a process than in one that only runs models. Numbers taken that way rank the
members of one batch fairly but not members of different batches, and they are not the numbers
an exported file shows. `time_fresh` times every candidate of a pool in one interleaved group
(`tritune.kernels.timing.measure_passes`) inside each of ``processes`` fresh processes
(``python -m tritune.targets.fresh_timing``, fed a JSON document on stdin: only numbers, names,
the candidates' genes and the paths of their builds), and each candidate keeps its fastest
process. Where the target can hand a build over as a file (`Target.save_build`), each candidate
is built once, here, and the processes load it; otherwise each process builds it.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..spaces.candidate import Candidate

#: Fresh processes per pool; each candidate keeps its fastest.
PROCESSES = 3
#: Passes of the interleaved protocol per process; the faster one counts.
PASSES = 2


@dataclass(frozen=True)
class FreshTiming:
    """One candidate's latency from `time_fresh`: its fastest process, and every process's."""

    candidate_id: str
    latency_ms: float
    process_latencies_ms: tuple[float, ...]

    @property
    def process_spread(self) -> float:
        """(slowest - fastest) / fastest over the processes."""
        low = min(self.process_latencies_ms)
        return (max(self.process_latencies_ms) - low) / low if low > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"candidate_id": self.candidate_id, "latency_ms": self.latency_ms,
                "process_latencies_ms": list(self.process_latencies_ms), "process_spread": self.process_spread}


def time_fresh(candidates: Sequence[Candidate], space: Any, target: str, options: Mapping[str, Any] | None = None, *,
               processes: int = PROCESSES, passes: int = PASSES, timeout: float = 1800.0) -> list[FreshTiming]:
    """Latency of each candidate (in order) on ``target`` (a registered name with its
    ``options``): all timed interleaved in each of ``processes`` fresh processes."""
    for name, value in (("processes", processes), ("passes", passes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: {value!r} not allowed; allowed: an integer >= 1")
    if not candidates:
        return []
    from .registry import create_target

    with tempfile.TemporaryDirectory(prefix="tritune-builds-") as tmp:
        builds = prebuild(create_target(target, **dict(options or {})), candidates, space, Path(tmp))
        request = json.dumps({"target": target, "options": dict(options or {}), "passes": passes,
                              "space": {"name": space.name, "config": space.config()},
                              "candidates": [c.to_json() for c in candidates], "builds": builds})
        runs = [_run_child(request, timeout) for _ in range(processes)]
    return [FreshTiming(c.id, min(run[i] for run in runs), tuple(run[i] for run in runs)) for i, c in enumerate(candidates)]


def can_save_builds(target: Any) -> bool:
    """Whether ``target`` hands builds to other processes as files (overrides `Target.save_build`)."""
    from .base import Target

    method = getattr(type(target), "save_build", None)
    return method is not None and method is not Target.save_build


def prebuild(target: Any, candidates: Sequence[Candidate], space: Any, directory: Path) -> list[str | None]:
    """Build each candidate once, in this process, into a file under ``directory`` for fresh
    processes to load (`load_or_build`); all None where the target cannot save builds."""
    if not can_save_builds(target):
        return [None] * len(candidates)
    from ..kernels.timing import torch_threads

    paths: list[str | None] = []
    with torch_threads(1):
        for i, candidate in enumerate(candidates):
            path = directory / f"{i}-{candidate.id}"
            paths.append(str(path) if target.save_build(target.build(candidate, space=space), path) else None)
    return paths


def load_or_build(target: Any, path: str | None, candidate: Candidate, space: Any) -> Any:
    """The artefact `prebuild` saved at ``path``, or the candidate built here when there is none."""
    return target.load_build(path) if path is not None else target.build(candidate, space=space)


class FreshProcessError(RuntimeError):
    """A fresh process failed (``detail``: its last line on stderr, or its exit code) or ran past
    its timeout (``timed_out``)."""

    def __init__(self, detail: str, timed_out: bool = False) -> None:
        super().__init__(detail)
        self.detail, self.timed_out = detail, timed_out


def run_fresh(module: str, args: Sequence[str] = (), request: str | None = None, timeout: float = 1800.0) -> Any:
    """Run ``python -m module args...`` in a fresh process, ``request`` on its stdin, and return
    the last line it prints, read as JSON."""
    cmd = [sys.executable, "-m", module, *args]
    try:
        done = subprocess.run(cmd, input=request, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise FreshProcessError(f"over {timeout:g} s", timed_out=True) from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise FreshProcessError(lines[-1] if lines else f"exit code {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run_child(request: str, timeout: float) -> list[float]:
    try:
        return [float(v) for v in run_fresh("tritune.targets.fresh_timing", request=request, timeout=timeout)]
    except FreshProcessError as exc:
        if exc.timed_out:
            raise RuntimeError(f"fresh-process timing took over {timeout:g} s") from None
        raise RuntimeError(f"fresh-process timing failed: {exc.detail}") from None


def _child(request: Mapping[str, Any]) -> list[float]:
    """What the child computes: every candidate built by the target and timed in one group."""
    from ..kernels.timing import measure_passes, torch_threads
    from ..spaces import create as create_space
    from .registry import create_target

    target = create_target(str(request["target"]), **dict(request["options"]))
    space = create_space(str(request["space"]["name"]), **dict(request["space"]["config"]))
    builds = request.get("builds") or [None] * len(request["candidates"])
    with torch_threads(1):
        runnables = [load_or_build(target, path, Candidate.from_json(c), space) for c, path in zip(request["candidates"], builds)]
    protocol = getattr(target, "protocol", None)
    return [m.latency_ms for m in measure_passes([runnables], protocol, passes=int(request["passes"]))[0]]


def main() -> int:
    print(json.dumps(_child(json.loads(sys.stdin.read()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
