"""The Ray Tune executor on a real local Ray with 2 CPUs runs exactly the in-process trials, on
loopback, in at most one reused worker process per slot."""
from __future__ import annotations

import pytest
import ray

from tritune.search.job import Job
from tritune.search.run import run_search

from .test_search_run import job_dict, trial_sequence


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
