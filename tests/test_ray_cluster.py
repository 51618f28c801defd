"""`--address`: a search joins an existing two-node Ray cluster (two `ray start` on this machine)
and runs exactly the trials of the in-process executor, spread over both nodes."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from tritune.search.job import Job
from tritune.search.run import run_search

from .test_search_run import job_dict, trial_sequence


def _ray_cli() -> list[str]:
    beside = Path(sys.executable).with_name("ray")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("ray")
    if not found:
        pytest.fail("the `ray` command of the installed ray[tune] is not on PATH")
    return [found]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_node_cluster(tmp_path):
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # a multi-node cluster needs the default
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    ray_cmd = _ray_cli()
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    try:
        subprocess.run([*ray_cmd, "start", "--head", "--port", str(port), "--include-dashboard", "false", *common],
                       env=env, check=True, capture_output=True, timeout=180)
        subprocess.run([*ray_cmd, "start", "--address", address, *common], env=env, check=True, capture_output=True, timeout=180)
        yield address
    finally:
        subprocess.run([*ray_cmd, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_search_on_an_existing_two_node_cluster(tmp_path, two_node_cluster, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    data = job_dict(tmp_path, strategy={"name": "evolution", "population": 6, "sample_size": 3}, budget={"evaluations": 10}, batch_size=2)
    local = run_search(Job.from_dict(data), run_dir=tmp_path / "local", progress=False)
    remote = run_search(Job.from_dict(data), run_dir=tmp_path / "cluster", address=two_node_cluster, workers=2, progress=False)
    assert not ray.is_initialized()
    assert trial_sequence(remote.records) == trial_sequence(local.records)
    assert [r.metrics for r in remote.records] == [r.metrics for r in local.records]
    nodes = {r.worker.rsplit("@", 1)[1] for r in remote.records}
    assert len(nodes) == 2, f"expected trials on both cluster nodes, got workers {sorted(r.worker for r in remote.records)}"
