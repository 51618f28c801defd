"""Executors move tasks from a `SearchDriver` to where candidates are evaluated.

* `InProcessExecutor` evaluates in the calling process: tests and tiny jobs.
* `RayExecutor` runs every evaluation as a Ray Tune trial; `StrategySearcher` adapts the driver
  (and so any tritune strategy) to Tune's `Searcher` interface. With no address it starts a
  `LocalRay` on loopback with ``num_cpus=workers``; with an address it joins that cluster. A
  trial whose worker process or node dies goes back to the driver (`SearchDriver.retry`) under
  its own number; Tune itself never restarts a trial.

Both produce the same trials for the same seed, strategy and batch size (see `driver`), worker
deaths included.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from ..spaces import Candidate
from .driver import SearchDriver, Task
from .local_ray import LocalRay

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
#: Environment of every Ray worker of a search: Tune must not move a trial into a directory of its
#: own, or the relative paths of a job (a checkpoint, a predictor) would point nowhere.
WORKER_ENV = {"RAY_CHDIR_TO_TRIAL_DIR": "0"}
LOST_WORKER = "the Ray trial ended without a result: its worker process or node was lost"


@lru_cache(maxsize=4)
def _pipeline_for(job_json: str):
    """Build the evaluation pipeline of a job once per Ray worker process."""
    from .job import Job

    return Job.from_dict(json.loads(job_json)).build_pipeline()


def _tune_trainable(config: dict) -> None:
    """One trial: evaluate one candidate and report it. Every Python error becomes a "failed"
    result, so a trial that ends without a result means its process or node died."""
    from ray import tune

    started = time.time()
    try:
        pipeline = _pipeline_for(config["job"])
        candidate = Candidate.loads(config["candidate"])
        if config.get("cheap") is not None:
            # the driver's answer (stored, maybe measured): the worker must not measure it again
            pipeline.persist_cheap({candidate.id: json.loads(config["cheap"])}, None)
        result = pipeline.evaluate(candidate)
        status, metrics, error = result.status, result.metrics, result.error
    except Exception as exc:  # noqa: BLE001 - reported as a failed evaluation, with the reason
        status, metrics, error = "failed", {}, f"worker {_worker_name()}: {type(exc).__name__}: {exc}"
    tune.report(
        {
            "tritune_status": status,
            "tritune_metrics": json.dumps(metrics),
            "tritune_error": error,
            "tritune_started": started,
            "tritune_worker": _worker_name(),
        }
    )


def _trial_dirname(trial: Any) -> str:
    return f"trial{trial.config.get('number', 0):06d}_{trial.trial_id}"


def _searcher_class():
    from ray.tune.search import Searcher

    class StrategySearcher(Searcher):
        """Tune `Searcher` over a tritune `SearchDriver` (and so over any tritune strategy).

        Returns None from `suggest` while the strategy's batch is still out (Tune then waits) and
        FINISHED when the budget is spent. A result is stored as soon as it reaches the driver
        (`on_trial_result`), so a worker that dies afterwards costs nothing; a trial that ends
        without one lost its worker and goes back to the driver (`SearchDriver.retry`). State
        lives in the run's SQLite store, so Tune's own searcher checkpoints are not needed.
        """

        def __init__(self, driver: SearchDriver, job_json: str, known_cheap: Callable[[Candidate], dict | None] | None = None) -> None:
            super().__init__(metric=None, mode=None)
            self.driver, self.job_json, self.known_cheap = driver, job_json, known_cheap
            self._numbers: dict[str, int] = {}
            #: trial numbers whose worker was lost, one entry per loss
            self.lost: list[int] = []
            #: where Tune keeps the error files of lost trials (named in the warning)
            self.logs = ""

        def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
            return True

        def suggest(self, trial_id: str) -> dict | str | None:
            task = self.driver.next_task()
            if task == SearchDriver.FINISHED:
                return Searcher.FINISHED
            if task is None:
                return None
            self._numbers[trial_id] = task.number
            cheap = self.known_cheap(task.candidate) if self.known_cheap is not None else None
            return {"number": task.number, "candidate": task.candidate.dumps(), "job": self.job_json,
                    "cheap": None if cheap is None else json.dumps(cheap)}

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if "tritune_status" in result and trial_id in self._numbers:
                self._complete(self._numbers.pop(trial_id), result)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            number = self._numbers.pop(trial_id, None)
            if number is None:  # already stored from its result
                return
            if not error and result and "tritune_status" in result:
                self._complete(number, result)
                return
            self.lost.append(number)
            where = f" (Ray's account: {self.logs})" if self.logs else ""
            warnings.warn(f"trial {number}: {LOST_WORKER}; it is evaluated again{where}", RuntimeWarning, stacklevel=1)
            self.driver.retry(number, LOST_WORKER)

        def _complete(self, number: int, result: dict) -> None:
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
            state["driver"] = state["known_cheap"] = None
            return state

        def restore_from_dir(self, checkpoint_dir: str) -> None:
            return None

    return StrategySearcher


class RayExecutor:
    """Evaluate a search's trials as Ray Tune trials.

    With no address, a `LocalRay` with ``workers`` CPUs on loopback, removed with everything it
    started when the search ends or dies. With an address, the search joins that cluster (and
    leaves it running). ``storage`` holds Tune's scratch directory (``storage/tune``): cleared
    when a search starts, removed when it ends unless a trial lost its worker (then it keeps
    Tune's error files)."""

    name = "ray"

    def __init__(self, workers: int = 2, address: str | None = None, storage: str | Path | None = None, cpus_per_trial: float = 1.0) -> None:
        if workers <= 0:
            raise ValueError(f"executor.workers: {workers} must be a positive integer")
        self.workers, self.address, self.cpus_per_trial = int(workers), address, float(cpus_per_trial)
        self.storage = Path(storage).resolve() if storage else None
        #: trial numbers whose worker was lost during the last `run`, one entry per loss
        self.lost: list[int] = []

    def _init_ray(self) -> Callable[[], None] | None:
        """Start or join Ray; returns how to leave it (None: Ray was running before)."""
        import ray

        if ray.is_initialized():
            return None
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        if any(os.environ.get(k) != v for k, v in WORKER_ENV.items()):
            # Not when the job's own runtime env sets them (`tritune launch`): a driver runtime
            # env merged into a submitted job's lets Ray delete the job's working directory
            # while the driver still runs in it.
            kwargs["runtime_env"] = {"env_vars": dict(WORKER_ENV)}
        if self.address:
            ray.init(address=self.address, **kwargs)
            return ray.shutdown
        local = LocalRay(self.workers)
        local.start(**kwargs)
        return local.stop

    def run(self, driver: SearchDriver, job_json: str, known_cheap: Callable[[Candidate], dict | None] | None = None) -> None:
        """Evaluate the driver's tasks as Tune trials; ``known_cheap`` gives the cheap metrics
        the driver already holds for a candidate (sent along, so workers do not re-measure)."""
        from ray import tune

        storage = self.storage or Path.cwd() / "ray_results"
        scratch = storage / "tune"
        shutil.rmtree(scratch, ignore_errors=True)  # a previous session's, killed or finished
        leave = self._init_ray()
        searcher = _searcher_class()(driver, job_json, known_cheap)
        searcher.logs = str(scratch)
        # Tune logs a lost trial as an error with Ray's long account; it is not one here (the
        # driver retries it, with a one-line warning), and the account stays in Tune's files.
        tune_log = logging.getLogger("ray.tune")
        level = tune_log.level
        tune_log.setLevel(logging.CRITICAL)
        try:
            tuner = tune.Tuner(
                tune.with_resources(_tune_trainable, {"cpu": self.cpus_per_trial}),
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    # every trial number may be handed out max_attempts times (`SearchDriver.retry`)
                    num_samples=driver.max_trials * driver.max_attempts,
                    max_concurrent_trials=self.workers,
                    reuse_actors=True,  # one process per worker slot, its pipeline built once
                    trial_dirname_creator=_trial_dirname,
                ),
                run_config=tune.RunConfig(
                    storage_path=str(storage), name="tune", verbose=0, log_to_file=False,
                    # a lost trial is the driver's to retry, under its own number; Tune must not
                    # restart it (a second copy of the trial) nor stop the search
                    failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                ),
            )
            tuner.fit()
        finally:
            tune_log.setLevel(level)
            self.lost = list(searcher.lost)
            if leave is not None:
                leave()
            if not self.lost:
                shutil.rmtree(scratch, ignore_errors=True)
