"""The Ray Tune executor on a real local Ray with 2 CPUs runs exactly the in-process trials, on
loopback, in at most one reused worker process per slot."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml

from tritune.search.job import Job
from tritune.search.local_ray import MARK, OWNER_FILE, start_ticks, clean_stale, session_root
from tritune.search.run import run_search
from tritune.search.processes import alive, descendants

from .test_search_run import job_dict, trial_sequence


@pytest.mark.ray
@pytest.mark.parametrize("strategy", [{"name": "evolution", "population": 8, "sample_size": 3}, {"name": "nsga2", "population_size": 8}])
def test_ray_tune_runs_the_same_trials_as_in_process(tmp_path, strategy):
    data = job_dict(tmp_path, strategy=strategy, budget={"evaluations": 16}, batch_size=4)
    local = run_search(Job.from_dict(data), run_dir=tmp_path / "local", progress=False)
    remote = run_search(Job.from_dict(data), run_dir=tmp_path / "ray", executor="ray", workers=2, progress=False)
    assert not ray.is_initialized()  # the executor shut down the Ray it started
    assert trial_sequence(remote.records) == trial_sequence(local.records)
    assert [r.metrics for r in remote.records] == [r.metrics for r in local.records]
    workers = {r.worker for r in remote.records}
    assert 1 <= len(workers) <= 2, f"expected at most one reused process per worker slot, got {workers}"
    assert all(w.startswith("127.0.0.1:") for w in workers), f"local Ray must stay on loopback, got {workers}"


def _finished(db: Path) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute("SELECT count(*) FROM trials WHERE status != 'running'").fetchone()[0]
    except sqlite3.DatabaseError:
        return 0
    finally:
        con.close()


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_driver_leaves_no_ray_behind(tmp_path):
    """kill -9 of `tritune search --ray`: its Ray processes and session directory go at once."""
    data = job_dict(tmp_path, budget={"evaluations": 3000}, batch_size=4)
    job_path = tmp_path / "job.yaml"
    job_path.write_text(yaml.safe_dump(data))
    sessions_before = set(session_root().iterdir()) if session_root().is_dir() else set()
    proc = subprocess.Popen([sys.executable, "-m", "tritune.cli.main", "search", str(job_path), "--ray", "--workers", "2", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "run" / "trials.db"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        if _finished(db) >= 5:
            break
    family = descendants(proc.pid)
    sessions = (set(session_root().iterdir()) - sessions_before) if session_root().is_dir() else set()
    assert proc.poll() is None and len(family) >= 5 and sessions, "the search did not get going"
    proc.kill()
    proc.wait()
    killed = time.monotonic()
    while any(alive(p) for p in family) and time.monotonic() - killed < 30:
        time.sleep(0.05)
    lived = time.monotonic() - killed
    assert not [p for p in family if alive(p)], f"Ray processes outlived the search by more than {lived:.0f} s"
    assert lived < 10, f"Ray processes outlived the search by {lived:.1f} s"
    assert not any(s.exists() for s in sessions), "the killed search's Ray session directory is still there"


def test_the_next_search_cleans_up_a_session_whose_owner_died(tmp_path):
    """A session whose owner and reaper both died: its processes and directory go; a live
    owner's session stays."""
    root = tmp_path / "sessions"
    dead = subprocess.Popen(["sleep", "0.2"])
    dead_ticks = start_ticks(dead.pid)
    dead.wait()
    stale, live = root / f"{dead.pid}-aaaaaa", root / f"{os.getpid()}-bbbbbb"
    for path, pid in ((stale, dead.pid), (live, os.getpid())):
        path.mkdir(parents=True)
        (path / OWNER_FILE).write_text(json.dumps({"pid": pid, "ticks": dead_ticks if path is stale else start_ticks(pid)}))
    orphan = subprocess.Popen(["sleep", "60"], env=dict(os.environ, **{MARK: stale.name}))
    bystander = subprocess.Popen(["sleep", "60"], env=dict(os.environ, **{MARK: live.name}))
    try:
        assert clean_stale(root) == [stale.name]
        assert orphan.wait(timeout=10) == -signal.SIGKILL
        assert not stale.exists() and live.exists() and bystander.poll() is None
    finally:
        for p in (orphan, bystander):
            p.kill()
            p.wait()
