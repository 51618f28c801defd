"""Executors move tasks from a `SearchDriver` to where candidates are evaluated.

* `InProcessExecutor` evaluates in the calling process: tests and tiny jobs.
* `RayExecutor` runs every evaluation as a Ray Tune trial; `StrategySearcher` adapts the driver
  (and so any tritune strategy) to Tune's `Searcher` interface. With no address it starts a local
  Ray on loopback with ``num_cpus=workers``; with an address it joins that cluster.

Both produce the same trials for the same seed, strategy and batch size (see `driver`).
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from ..spaces import Candidate
from .driver import SearchDriver, Task

EvaluateFn = Callable[[Candidate], Any]  # returns an object with .status, .metrics, .error


def _worker_name() -> str:
    """``host:pid`` of the evaluating process; inside Ray ``ip:pid@node`` (the Ray node's IP and
    the first 8 hex digits of its node id, which tells apart nodes sharing one IP)."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()[:8]
            return f"{ray.util.get_node_ip_address()}:{os.getpid()}@{node}"
    return f"{socket.gethostname()}:{os.getpid()}"


class InProcessExecutor:
    name = "inprocess"

    def run(self, driver: SearchDriver, evaluate: EvaluateFn) -> None:
        while True:
            task = driver.next_task()
            if task == SearchDriver.FINISHED:
                return
            if not isinstance(task, Task):  # cannot happen with one sequential worker
                raise RuntimeError("in-process executor: driver is waiting on a batch it never handed out")
            started = time.time()
            result = evaluate(task.candidate)
            driver.complete(task.number, result.status, result.metrics, result.error, started, _worker_name())


# ----- Ray Tune -------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _pipeline_for(job_json: str):
    """Build the evaluation pipeline of a job once per Ray worker process."""
    from .job import Job

    return Job.from_dict(json.loads(job_json)).build_pipeline()


def _tune_trainable(config: dict) -> None:
    from ray import tune

    pipeline = _pipeline_for(config["job"])
    started = time.time()
    result = pipeline.evaluate(Candidate.loads(config["candidate"]))
    tune.report(
        {
            "tritune_status": result.status,
            "tritune_metrics": json.dumps(result.metrics),
            "tritune_error": result.error,
            "tritune_started": started,
            "tritune_worker": _worker_name(),
        }
    )


def _searcher_class():
    from ray.tune.search import Searcher

    class StrategySearcher(Searcher):
        """Tune `Searcher` over a tritune `SearchDriver` (and so over any tritune strategy).

        Returns None from `suggest` while the strategy's batch is still out (Tune then waits) and
        FINISHED when the budget is spent. State lives in the run's SQLite store, so Tune's own
        searcher checkpoints are not needed.
        """

        def __init__(self, driver: SearchDriver, job_json: str) -> None:
            super().__init__(metric=None, mode=None)
            self.driver, self.job_json = driver, job_json
            self._numbers: dict[str, int] = {}

        def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
            return True

        def suggest(self, trial_id: str) -> dict | str | None:
            task = self.driver.next_task()
            if task == SearchDriver.FINISHED:
                return Searcher.FINISHED
            if task is None:
                return None
            self._numbers[trial_id] = task.number
            return {"number": task.number, "candidate": task.candidate.dumps(), "job": self.job_json}

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            number = self._numbers.pop(trial_id, None)
            if number is None:
                return
            if error or not result or "tritune_status" not in result:
                self.driver.complete(number, "failed", {}, "the Ray trial raised an error (see the Ray logs in the run directory)")
                return
            self.driver.complete(
                number,
                result["tritune_status"],
                json.loads(result["tritune_metrics"]),
                result.get("tritune_error", ""),
                float(result.get("tritune_started", 0.0)),
                str(result.get("tritune_worker", "")),
            )

        def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
            return None

        def __getstate__(self) -> dict:
            # Tune pickles its configuration for its own restore; tritune resumes from the store,
            # so the live driver (an open SQLite connection) is left out of that copy.
            state = dict(self.__dict__)
            state["driver"] = None
            return state

        def restore_from_dir(self, checkpoint_dir: str) -> None:
            return None

    return StrategySearcher


def _loopback_only() -> None:
    """Keep a local Ray on 127.0.0.1. Ray binds a single-node cluster to the machine's outward
    address unless clusters are switched off (its own switch for laptops); a local search has
    no business listening on the network. Processes Ray starts inherit the environment."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants  # read at import time; ray may be imported already

    ray_constants.ENABLE_RAY_CLUSTER = False


class RayExecutor:
    name = "ray"

    def __init__(self, workers: int = 2, address: str | None = None, storage: str | Path | None = None, cpus_per_trial: float = 1.0) -> None:
        if workers <= 0:
            raise ValueError(f"executor.workers: {workers} must be a positive integer")
        self.workers, self.address, self.cpus_per_trial = int(workers), address, float(cpus_per_trial)
        self.storage = Path(storage).resolve() if storage else None

    def _init_ray(self) -> bool:
        import ray

        if ray.is_initialized():
            return False
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        if self.address:
            ray.init(address=self.address, **kwargs)
        else:
            _loopback_only()
            # "local" starts a fresh Ray even when `ray start` left a cluster on this machine
            # (ray.init() would otherwise join it and refuse num_cpus).
            ray.init(address="local", num_cpus=self.workers, **kwargs)
        return True

    def run(self, driver: SearchDriver, job_json: str) -> None:
        import ray
        from ray import tune

        started_here = self._init_ray()
        try:
            searcher = _searcher_class()(driver, job_json)
            storage = self.storage or Path.cwd() / "ray_results"
            tuner = tune.Tuner(
                tune.with_resources(_tune_trainable, {"cpu": self.cpus_per_trial}),
                tune_config=tune.TuneConfig(search_alg=searcher, num_samples=driver.max_trials, max_concurrent_trials=self.workers),
                run_config=tune.RunConfig(storage_path=str(storage), name="tune", verbose=0, log_to_file=False),
            )
            tuner.fit()
        finally:
            if started_here:
                ray.shutdown()
