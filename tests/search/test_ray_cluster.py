"""A real two-node Ray cluster on loopback (a head and a worker node, each started by `ray start`):

* ``--address``: a search joins it and runs exactly the in-process trials;
* a search with trials on both nodes loses the worker node (kill -9 of its raylet) mid-trial:
  the trial is retried on the head, the search completes, and no finished trial is lost or
  evaluated again;
* ``tritune launch`` submits a search through the head's dashboard (Ray Jobs API) and streams
  its logs, with a job file whose name and job name would run shell commands if the entrypoint
  were not quoted; ``tritune jobs list|status|logs|stop`` manage it.

The cluster's processes carry a mark of their own (`tritune.search.local_ray.kill_marked`), so
teardown ends exactly them, never another Ray on this machine (no `ray stop`).
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import ray
import yaml

from tritune.search.job import Job
from tritune.search.local_ray import MARK, kill_marked
from tritune.search.run import run_search
from tritune.search.processes import cmdline, descendants, start_ticks

from .test_search_run import job_dict, trial_sequence

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY_SPACE = {"name": "mobilenet", "resolutions": [16], "widths": [0.25, 0.5], "depths": [1, 2], "expands": [3, 4],
              "kernels": [3, 5], "in_channels": 1, "num_classes": 10}


def _ray_cli() -> list[str]:
    beside = Path(sys.executable).with_name("ray")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("ray")
    if not found:
        pytest.fail("the `ray` command of the installed ray[default] is not on PATH")
    return [found]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: `ray start` for a worker node that keeps 127.0.0.1 as the head's address: Ray replaces a
#: loopback address by the machine's outward one (meant for real multi-node clusters), and its
#: switch against that (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) refuses to start a worker node.
_WORKER_START = (
    "import sys, ray._private.services as s, ray.scripts.scripts as cli; "
    "s.resolve_ip_for_localhost = lambda host: host; "
    "sys.argv = ['ray', *sys.argv[1:]]; cli.main()"
)


class LoopbackCluster:
    """A head node (GCS, optional dashboard) and one worker node, 1 CPU each, all on 127.0.0.1.

    Every node has a temp dir of its own (a worker node sharing the head's would unpack a job's
    working directory over the one the job's driver runs in). The worker node runs under
    ``ray start --block``, so its processes are known (`worker_pids`) and it can be killed
    alone (`kill_worker_node`). `close` stops exactly this cluster's processes."""

    def __init__(self, dashboard: bool) -> None:
        self.token = f"cluster-{secrets.token_hex(4)}"
        self.head_dir = Path(tempfile.mkdtemp(prefix="trh-", dir="/tmp"))
        self.node_dir = Path(tempfile.mkdtemp(prefix="trw-", dir="/tmp"))
        self.env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", **{MARK: self.token},
                        # a dead node is declared dead within seconds, not tens of seconds
                        RAY_health_check_period_ms="500", RAY_health_check_timeout_ms="500",
                        RAY_health_check_failure_threshold="3", RAY_health_check_initial_delay_ms="500")
        self.env.pop("RAY_ADDRESS", None)
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard_port = _free_port() if dashboard else None
        common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
        head = [*_ray_cli(), "start", "--head", "--port", str(self.port), "--temp-dir", str(self.head_dir), *common]
        if dashboard:
            head += ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port)]
        else:
            head += ["--include-dashboard", "false"]
        self.known: dict[int, int | None] = {}
        head_env = dict(self.env, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")  # the head's processes keep 127.0.0.1
        subprocess.run(head, env=head_env, check=True, capture_output=True, timeout=180)
        node_env = dict(self.env)
        node_env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        self.worker = subprocess.Popen([sys.executable, "-c", _WORKER_START, "start", "--address", self.address, "--block",
                                        "--temp-dir", str(self.node_dir), *common],
                                       env=node_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_for_nodes(2)
        self.family()

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _wait_for_nodes(self, n: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run([*_ray_cli(), "status", "--address", self.address], env=dict(self.env, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"),
                                 capture_output=True, text=True, timeout=60)
            if out.returncode == 0 and len(re.findall(r"^\s*1 node_", out.stdout, re.M)) >= n:
                return
            time.sleep(1.0)
        raise AssertionError(f"the cluster did not reach {n} nodes: {out.stdout[-2000:]} {out.stderr[-2000:]}")

    def _roots(self) -> list[int]:
        """The cluster's GCS and raylets (their command lines name the nodes' temp dirs)."""
        dirs = (str(self.head_dir), str(self.node_dir))
        return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and any(d in cmdline(int(e.name)) for d in dirs)]

    def family(self) -> set[int]:
        """Every live process of this cluster seen so far (Ray's agents rewrite their command
        line and environment, so they are found as children of the raylets)."""
        for pid in [*self._roots(), self.worker.pid]:
            for member in (pid, *descendants(pid)):
                self.known.setdefault(member, start_ticks(member))
        return {p for p, ticks in self.known.items() if ticks is not None and start_ticks(p) == ticks}

    def worker_pids(self) -> set[int]:
        return set(descendants(self.worker.pid))

    def kill_worker_node(self) -> None:
        self.family()
        raylet = [p for p in descendants(self.worker.pid) if "/raylet/raylet" in cmdline(p).split(" ", 1)[0]]
        assert raylet, "the worker node has no raylet"
        for pid in raylet:
            os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        """SIGTERM (Ray's graceful stop: its agents exit at once), then SIGKILL what is left."""
        members = self.family() - {os.getpid()}
        for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
            for pid in members:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and (members := self.family() - {os.getpid()}):
                time.sleep(0.1)
            if not members:
                break
        kill_marked(self.token)
        self.worker.wait(timeout=60)
        shutil.rmtree(self.head_dir, ignore_errors=True)
        shutil.rmtree(self.node_dir, ignore_errors=True)


@pytest.fixture
def cluster(request, monkeypatch):
    # this process joins on 127.0.0.1 too (see `_WORKER_START`)
    monkeypatch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
    made = LoopbackCluster(dashboard=getattr(request, "param", False))
    try:
        yield made
    finally:
        made.close()


def tiny_checkpoint(path: Path) -> Path:
    from tritune.spaces import create as create_space
    from tritune.spaces.mobilenet.supernet import MobileNetSupernet
    from tritune.spaces.checkpoint import save_checkpoint

    options = {k: v for k, v in TINY_SPACE.items() if k != "name"}
    return save_checkpoint(path, MobileNetSupernet(create_space("mobilenet", **options), {"seed": 0}), extra={"data": "digits"})


def finetune_job(checkpoint: str, run_dir: str, evaluations: int = 8, name: str = "ft") -> dict:
    """Fine-tuning trials of a few seconds each on ``digits`` (threads=1: the same numbers anywhere)."""
    return {
        "name": name,
        "space": TINY_SPACE,
        "evaluators": [{"kind": "supernet-finetune", "checkpoint": checkpoint, "dataset": "digits", "epochs": 0.2,
                        "batch_size": 32, "calib_batches": 1, "calib_batch_size": 64, "threads": 1}],
        "objectives": [{"metric": "accuracy", "direction": "maximize"}],
        "strategy": {"name": "random"},
        "budget": {"evaluations": evaluations},
        "batch_size": 4,
        "seed": 0,
        "run_dir": run_dir,
    }


def _pid(worker: str) -> int:
    return int(worker.split(":")[1].split("@")[0])


def test_search_on_an_existing_two_node_cluster(tmp_path, cluster, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    data = job_dict(tmp_path, strategy={"name": "evolution", "population": 6, "sample_size": 3}, budget={"evaluations": 10}, batch_size=2)
    local = run_search(Job.from_dict(data), run_dir=tmp_path / "local", progress=False)
    remote = run_search(Job.from_dict(data), run_dir=tmp_path / "cluster", address=cluster.address, workers=2, progress=False)
    assert not ray.is_initialized()
    assert trial_sequence(remote.records) == trial_sequence(local.records)
    assert [r.metrics for r in remote.records] == [r.metrics for r in local.records]
    assert all(r.worker.startswith("127.0.0.1:") for r in remote.records), [r.worker for r in remote.records]


def test_a_dead_worker_node_costs_only_its_trial_in_flight(tmp_path, cluster, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    checkpoint = str(tiny_checkpoint(tmp_path / "supernet.safetensors"))
    data = finetune_job(checkpoint, str(tmp_path / "run"))
    local = run_search(Job.from_dict(data), run_dir=tmp_path / "local", progress=False)

    db = tmp_path / "cluster" / "trials.db"
    seen: dict = {}

    def kill_when_a_trial_runs_there() -> None:
        """Once a trial finished on the worker node and another one runs there: kill the node."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            time.sleep(0.05)
            pids = cluster.worker_pids()
            try:
                con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
                rows = con.execute("SELECT number, started, finished, worker FROM trials WHERE status != 'running'").fetchall()
                con.close()
            except sqlite3.DatabaseError:
                continue
            done_there = [r for r in rows if _pid(r[3]) in pids]
            busy = [p for p in pids if cmdline(p).startswith("ray::ImplicitFunc.train")]
            if done_there and busy:
                seen["before"] = {r[0]: r for r in rows}
                seen["there"] = [r[0] for r in done_there]
                cluster.kill_worker_node()
                return

    killer = threading.Thread(target=kill_when_a_trial_runs_there, daemon=True)
    killer.start()
    with pytest.warns(RuntimeWarning, match="evaluated again"):
        remote = run_search(Job.from_dict(data), run_dir=tmp_path / "cluster", address=cluster.address, workers=2, progress=False)
    killer.join(timeout=10)
    assert "before" in seen, "the worker node never ran a trial"
    assert trial_sequence(remote.records) == trial_sequence(local.records)
    assert [r.metrics for r in remote.records] == [r.metrics for r in local.records]
    final = {r.number: r for r in remote.records}
    for number, (_, started, finished, worker) in seen["before"].items():  # stored before the death: untouched
        assert (final[number].started, final[number].finished, final[number].worker) == (started, finished, worker)
    nodes = {r.worker.rsplit("@", 1)[1] for r in remote.records}
    assert len(nodes) == 2, f"expected trials on both nodes, got workers {sorted(r.worker for r in remote.records)}"


@pytest.mark.parametrize("cluster", [True], indirect=True)
def test_launch_streams_a_search_through_the_jobs_api(tmp_path, cluster):
    from tritune.cli.main import main as cli_main

    work = tmp_path / "work"
    work.mkdir()
    tiny_checkpoint(work / "supernet.safetensors")
    # a file name and a run directory that run commands if the entrypoint were not quoted
    job_file = work / "job; touch INJECTED_FILE #.yaml"
    job_file.write_text(yaml.safe_dump(finetune_job("supernet.safetensors", "runs/ignored", evaluations=4)))
    run_dir = tmp_path / "results $(touch INJECTED_RUN)`touch INJECTED_TICK`"
    env = dict(cluster.env)
    env.pop(MARK)
    cmd = [sys.executable, "-m", "tritune.cli.main", "launch", job_file.name, "--address", cluster.dashboard,
           "--run-dir", str(run_dir), "--workers", "2", "--python", sys.executable]
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    job_id = re.search(r"^job id: (\S+)$", done.stdout, re.M).group(1)
    assert "Pareto front" in done.stdout and done.stdout.rstrip().endswith(f"job {job_id}: SUCCEEDED"), done.stdout[-3000:]
    assert not [p for p in tmp_path.rglob("INJECTED*") if p != run_dir] and not list(Path.cwd().glob("INJECTED*"))
    assert (run_dir / "trials.db").is_file() and (run_dir / "pareto.json").is_file()

    # resuming the finished run through a second submission replays it from the store
    again = subprocess.run([*cmd, "--resume"], cwd=work, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "(4 replayed from the store)" in again.stdout, again.stdout[-3000:]

    def jobs(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "tritune.cli.main", "jobs", *args, "--address", cluster.dashboard],
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert re.search(rf"^{job_id}\s+SUCCEEDED", jobs("list"), re.M)
    assert re.search(r"^status:\s+SUCCEEDED", jobs("status", job_id), re.M)
    assert "Pareto front" in jobs("logs", job_id)

    # a second submission, detached, then stopped
    slow = work / "slow.yaml"
    slow.write_text(yaml.safe_dump(finetune_job("supernet.safetensors", "runs/ignored", evaluations=200, name="slow")))
    out = subprocess.run([sys.executable, "-m", "tritune.cli.main", "launch", slow.name, "--address", cluster.dashboard,
                          "--run-dir", str(tmp_path / "slow"), "--python", sys.executable, "--detach"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    slow_id = re.search(r"^job id: (\S+)$", out.stdout, re.M).group(1)
    assert "stop requested" in jobs("stop", slow_id)
    deadline = time.monotonic() + 120
    while "STOPPED" not in jobs("status", slow_id) and time.monotonic() < deadline:
        time.sleep(1.0)
    assert re.search(r"^status:\s+STOPPED", jobs("status", slow_id), re.M)
    assert cli_main(["jobs", "status", "raysubmit_nosuchjob", "--address", cluster.dashboard]) == 2
