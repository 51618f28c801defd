"""kill -9, then resume: nothing lost, nothing evaluated twice, the same trials.

* A search whose latency is *measured* (onnxruntime) and constrained is killed mid-run and
  resumed: replay reads the stored measurements instead of measuring again, so it neither stops
  with `ResumeMismatch` nor goes down another path. Its reference is an uninterrupted run fed
  the same measurements (two real runs measure different latencies).
* A Ray worker process is killed in the middle of a trial: the driver retries that trial under
  its number and the search ends with the trials of an uninterrupted in-process run.

`benchmarks/kill_resume.py` repeats both (and driver kills) at random moments.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import ray
import yaml

from tritune.search.job import Job
from tritune.search.processes import children
from tritune.search.run import run_search

TINY_SPACE = {"name": "mobilenet", "resolutions": [16], "widths": [0.25, 0.5], "depths": [1, 2], "expands": [3, 4],
              "kernels": [3, 5], "in_channels": 1, "num_classes": 10}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """An untrained, seeded supernet of `TINY_SPACE` (scoring it is deterministic)."""
    from tritune.spaces import create as create_space
    from tritune.spaces.mobilenet.supernet import MobileNetSupernet
    from tritune.spaces.checkpoint import save_checkpoint

    options = {k: v for k, v in TINY_SPACE.items() if k != "name"}
    path = tmp_path_factory.mktemp("supernet") / "supernet.safetensors"
    return str(save_checkpoint(path, MobileNetSupernet(create_space("mobilenet", **options), {"seed": 0}), extra={"data": "digits"}))


def _rows(db: Path) -> dict[int, tuple]:
    """Finished trials: number -> (candidate id, status, metrics, started, finished, worker)."""
    if not db.exists():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = con.execute("SELECT number, candidate_id, status, metrics, started, finished, worker FROM trials "
                           "WHERE status != 'running'").fetchall()
    except sqlite3.DatabaseError:
        return {}
    finally:
        con.close()
    return {r[0]: tuple(r[1:]) for r in rows}


def _sequence(rows: dict[int, tuple]) -> list[tuple]:
    return [(n, *r[:3]) for n, r in sorted(rows.items())]


def _kill_after(proc: subprocess.Popen, db: Path, finished: int, timeout: float = 300.0) -> dict[int, tuple]:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and len(_rows(db)) < finished and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the search ended before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return _rows(db)


def _cheap(db: Path) -> dict[str, str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return dict(con.execute("SELECT candidate_id, metrics FROM cheap").fetchall())
    finally:
        con.close()


def _median_latency(protocol: dict, n: int = 8) -> float:
    """The median ort-cpu latency (ms) of ``n`` candidates of the tiny space on this machine: a
    bound about half of the space breaks, whatever the machine's speed."""
    from tritune.spaces import create
    from tritune.targets.registry import create_target

    space = create(TINY_SPACE["name"], **{k: v for k, v in TINY_SPACE.items() if k != "name"})
    rng = np.random.default_rng(0)
    return float(np.median(create_target("ort-cpu", protocol=protocol).latency([space.sample(rng) for _ in range(n)], space)))


def test_measured_latency_search_resumes_exactly_after_kill_9(tmp_path, checkpoint, monkeypatch):
    from tritune.targets.ort_cpu import OrtCpuTarget

    protocol = {"warmup": 1, "rounds": 1, "runs_per_round": 3}
    run_dir = tmp_path / "run"
    data = {
        "name": "ort",
        "space": TINY_SPACE,
        "evaluators": [{"kind": "supernet-accuracy", "checkpoint": checkpoint, "dataset": "digits", "calib_batches": 1,
                        "calib_batch_size": 32},
                       {"kind": "latency", "target": "ort-cpu", "protocol": protocol}],
        "objectives": [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency", "direction": "minimize"}],
        "constraints": [{"metric": "latency", "max": round(_median_latency(protocol), 4)}],  # about half of the space breaks it
        "strategy": {"name": "evolution", "population": 2, "sample_size": 2},
        "budget": {"evaluations": 3},
        "batch_size": 1,
        "seed": 0,
        "run_dir": str(run_dir),
    }
    job_path = tmp_path / "job.yaml"
    job_path.write_text(yaml.safe_dump(data))
    proc = subprocess.Popen([sys.executable, "-m", "tritune.cli.main", "search", str(job_path), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    before = _kill_after(proc, run_dir / "trials.db", finished=1)
    measured_before = _cheap(run_dir / "trials.db")
    assert before and measured_before

    measured_again: list[str] = []
    real_latency = OrtCpuTarget.latency

    def spy(self, candidates, space=None):  # the real measurement, recorded
        measured_again.extend(c.id for c in candidates)
        return real_latency(self, candidates, space)

    monkeypatch.setattr(OrtCpuTarget, "latency", spy)
    resumed = run_search(Job.from_yaml(job_path), resume=True, progress=False)
    after = _rows(run_dir / "trials.db")
    assert resumed.evaluations == 3 and resumed.replayed >= len(before)
    assert not set(measured_again) & set(measured_before), "replay measured a stored latency again"
    assert sorted(after) == list(range(len(after)))
    for number, row in before.items():  # stored before the kill: neither lost nor evaluated again
        assert after[number] == row
    assert all(_cheap(run_dir / "trials.db")[cid] == value for cid, value in measured_before.items())

    # the reference: the same job uninterrupted, fed the measurements the killed run stored
    replay_dir = tmp_path / "replay"
    replay_dir.mkdir()
    source, copy = sqlite3.connect(run_dir / "trials.db"), sqlite3.connect(replay_dir / "trials.db")
    source.backup(copy)
    source.close()
    copy.execute("DELETE FROM trials")
    copy.commit()
    copy.close()
    measured_again.clear()
    replay = run_search(Job.from_yaml(job_path), run_dir=replay_dir, resume=True, progress=False)
    assert replay.replayed == 0 and not measured_again
    assert _sequence(_rows(replay_dir / "trials.db")) == _sequence(after)


def _busy_ray_workers() -> list[int]:
    """This process's Ray trial workers that are running a trial now."""
    tree, out, todo = children(), [], [os.getpid()]
    while todo:
        for child in tree.get(todo.pop(), []):
            todo.append(child)
            try:
                if Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"ray::ImplicitFunc.train"):
                    out.append(child)
            except OSError:
                pass
    return out


def _kill_a_worker_mid_trial(db: Path, trials: int, seen: dict, stop: threading.Event, quiet: float = 0.15) -> None:
    """SIGKILL one Ray worker that is running a trial whose result is not stored yet.

    A worker counts once trials are stored but not all, it stayed busy for `quiet` seconds in
    which no new result was stored, and either no stored trial ran on it (so it is in its first
    trial) or every stored trial but one is in (so it runs the last one)."""
    watched: dict[int, tuple[float, int]] = {}  # busy pid -> (first seen busy, stored rows then)
    while not stop.is_set():
        time.sleep(0.01)
        rows = _rows(db)
        if not rows or len(rows) >= trials:
            watched.clear()
            continue
        stored_on = {row[-1].split(":")[-1].split("@")[0] for row in rows.values()}
        now, busy = time.monotonic(), set(_busy_ray_workers())
        watched = {pid: watched.get(pid, (now, len(rows))) for pid in busy}
        for pid, (since, count) in watched.items():
            if count != len(rows):
                watched[pid] = (now, len(rows))
            elif now - since >= quiet and (str(pid) not in stored_on or len(rows) == trials - 1):
                seen["before"] = rows
                os.kill(pid, signal.SIGKILL)
                return


@pytest.mark.ray
def test_a_killed_ray_worker_costs_only_its_trial(tmp_path, checkpoint):
    data = {
        "name": "ft",
        "space": TINY_SPACE,
        "evaluators": [{"kind": "supernet-finetune", "checkpoint": checkpoint, "dataset": "digits", "epochs": 0.1,
                        "batch_size": 32, "calib_batches": 1, "calib_batch_size": 64, "threads": 1}],
        "objectives": [{"metric": "accuracy", "direction": "maximize"}],
        "strategy": {"name": "random"},
        "budget": {"evaluations": 3},
        "batch_size": 3,
        "seed": 0,
        "run_dir": str(tmp_path / "run"),
    }
    local = run_search(Job.from_dict(data), run_dir=tmp_path / "local", progress=False)
    # A kill can land just after its worker reported (then it costs nothing and nothing warns);
    # `_kill_a_worker_mid_trial` avoids that, and three tries make a late kill no reason to fail.
    for attempt in range(3):
        run_dir = tmp_path / f"ray{attempt}"
        db, seen, stop = run_dir / "trials.db", {}, threading.Event()
        killer = threading.Thread(target=_kill_a_worker_mid_trial, args=(db, 3, seen, stop), daemon=True)
        killer.start()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            remote = run_search(Job.from_dict(data), run_dir=run_dir, executor="ray", workers=2, progress=False)
        stop.set()
        killer.join(timeout=10)
        assert not ray.is_initialized()
        # whether or not the kill cost a trial, the search ends with the uninterrupted run's trials
        assert _sequence(_rows(db)) == _sequence(_rows(tmp_path / "local" / "trials.db"))
        assert [r.metrics for r in remote.records] == [r.metrics for r in local.records]
        retried = [w for w in caught if issubclass(w.category, RuntimeWarning) and "evaluated again" in str(w.message)]
        if seen.get("before") and retried:
            break
    else:
        pytest.fail("no try killed a worker in the middle of a trial and saw it retried")
    after = _rows(db)
    for number, row in seen["before"].items():
        assert after[number] == row
    assert (run_dir / "ray" / "tune").is_dir()  # Tune's error files of the lost trial are kept
