"""`run_search`: one job from YAML to a Pareto front on disk, resumable.

A run directory has one writer at a time (`RunLock`). Its store keeps every trial and every
cheap metric the search obtained, and the checksums of the files the job's evaluators read
(``inputs``), so a resume replays exactly and refuses inputs that changed under it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from ..spaces import Candidate
from .driver import NoFeasibleCandidates, SearchDriver
from .executors import InProcessExecutor, RayExecutor
from .job import Job, JobError
from .lock import RunLock
from .report import format_front, front, knee, plot_pareto, write_pareto_json, write_trials_csv
from .store import StoreError, TrialRecord, TrialStore

#: Evaluator options that name an input file whose contents decide the results.
INPUT_FILE_OPTIONS = ("checkpoint", "path", "predictor")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_files(job: Job) -> dict[str, dict[str, Any]]:
    """``{absolute path: {"sha256", "size"}}`` of every existing file an evaluator option names."""
    files: dict[str, dict[str, Any]] = {}
    for spec in job.evaluators:
        for key in INPUT_FILE_OPTIONS:
            value = spec.get(key)
            if isinstance(value, str) and value and Path(value).expanduser().is_file():
                path = Path(value).expanduser().resolve()
                files[str(path)] = {"sha256": file_sha256(path), "size": path.stat().st_size}
    return files


def recorded_input(inputs: dict[str, dict[str, Any]] | None, option: str) -> tuple[Path, dict[str, Any] | None]:
    """The file an evaluator option names now, and what the run recorded for it (None: not
    recorded). A relative option is matched to the recorded absolute path it ends with when it
    resolves elsewhere now: the run is resumed (or exported) from another working directory,
    as a cluster job is after its working directory was uploaded again."""
    given = Path(option).expanduser()
    resolved = given.resolve()
    if inputs:
        if str(resolved) in inputs:
            return resolved, inputs[str(resolved)]
        if not given.is_absolute():
            tail = "/" + given.as_posix().lstrip("./")
            hits = [p for p in inputs if p.endswith(tail)]
            if len(hits) == 1:
                return (resolved if resolved.is_file() else Path(hits[0])), inputs[hits[0]]
    return resolved, None


def check_inputs(job: Job, recorded: dict[str, dict[str, Any]], where: str) -> None:
    """Raise JobError when a file the job's evaluators read is gone or differs from the one
    recorded when the run started (compared by content, wherever the run is resumed from)."""
    for spec in job.evaluators:
        for key in INPUT_FILE_OPTIONS:
            value = spec.get(key)
            if not isinstance(value, str) or not value:
                continue
            path, info = recorded_input(recorded, value)
            if info is None:
                continue
            if not path.is_file():
                raise JobError(f"{where}: input file {str(path)!r} is missing (the run used it; sha256 {str(info.get('sha256'))[:12]})")
            if file_sha256(path) != info.get("sha256"):
                raise JobError(f"{where}: input file {str(path)!r} changed since the run started; results would mix two inputs")


def _infeasible_message(job: Job, seen_metrics: list[dict[str, float]], exc: NoFeasibleCandidates) -> str:
    """Which constraints failed and what the search saw, so a wrong bound is obvious."""
    parts = []
    for c in job.problem().constraints:
        seen = [m[c.metric] for m in seen_metrics if c.metric in m and not math.isnan(m[c.metric])]
        bound = " and ".join(f"{k} {v:g}" for k, v in (("min", c.min), ("max", c.max)) if v is not None)
        span = f"seen {min(seen):.4g}..{max(seen):.4g}" if seen else "never measured"
        parts.append(f"{c.metric} ({bound}; {span})")
    return f"job {job.name!r}: {exc}; constraints: {', '.join(parts) or '(none)'}; check their bounds and units"


@dataclass
class RunResult:
    run_dir: Path
    records: list[TrialRecord]
    front: list[TrialRecord]
    knee: TrialRecord | None
    evaluations: int
    replayed: int
    queries: dict[str, int] = field(default_factory=dict)
    #: Candidates this call sent to cheap evaluators (measured, predicted or looked up); what the
    #: store already held was read back instead.
    fresh_cheap: int = 0

    def table(self, problem) -> str:
        return format_front(self.front, problem, None if self.knee is None else self.knee.number)


def run_search(
    job: Job,
    run_dir: str | Path | None = None,
    resume: bool = False,
    executor: str | None = None,
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
) -> RunResult:
    """Run (or resume) a search job; every finished trial is in ``RUN_DIR/trials.db`` at once.

    Executor settings may differ between a run and its resume; anything that changes the trial
    sequence (space, evaluators, objectives, strategy, seed, budget, batch size) may not.
    """
    job, run_dir, db = prepare_run(job, run_dir, resume, executor, workers, address)
    with RunLock(run_dir), TrialStore(db) as store:
        open_run(store, job, run_dir)
        return search_stage(store, job, run_dir, progress=progress)


def prepare_run(job: Job, run_dir: str | Path | None, resume: bool, executor: str | None = None, workers: int | None = None,
                address: str | None = None) -> tuple[Job, Path, Path]:
    """The job with the command line's executor settings, and its checked run directory and store path."""
    if address and executor in (None, "ray"):
        executor = "ray"
    job = replace(job, executor=executor or job.executor, workers=workers or job.workers, address=address or job.address)
    path = Path(run_dir or job.run_dir).expanduser()
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            raise JobError(f"run directory {str(path)!r}: {str(parent)!r} is a file, not a directory")
    path = path.resolve()
    db = path / "trials.db"
    if db.exists() and not resume:
        raise JobError(f"run directory {str(path)!r} already holds a run; pass --resume to continue it or choose another run_dir")
    if resume and not db.exists():
        raise JobError(f"run directory {str(path)!r} holds no run to resume (no trials.db)")
    path.mkdir(parents=True, exist_ok=True)
    return job, path, db


def open_run(store: TrialStore, job: Job, run_dir: Path) -> None:
    """Record the job in a new store, or check that a resumed one was started by the same job."""
    stored = store.get_meta("job_fingerprint")
    if stored is None and (store.count("complete") or store.count("infeasible") or store.count("failed") or store.count("running")):
        raise StoreError(f"trial store {str(store.path)!r}: holds trials but no job fingerprint; it is damaged, start a new run_dir")
    if stored is None:
        store.set_meta("job_fingerprint", job.fingerprint())
        store.set_meta("job", job.to_json())
    elif stored != job.fingerprint():
        raise JobError(
            f"run directory {str(run_dir)!r} was started by a different job (space, evaluators, objectives, strategy, "
            "seed, budget, batch size or stages changed); start a new run_dir instead of resuming"
        )
    (run_dir / "job.json").write_text(json.dumps(job.to_config(), indent=2, sort_keys=True))


def search_stage(store: TrialStore, job: Job, run_dir: Path, pipeline: Any = None, *, space: Any = None,
                 first: Sequence[Candidate] = (), progress: bool = True) -> RunResult:
    """The job's own search in an open store (the whole of a plain run; stage 2 of a staged one).

    ``space``: what the strategy samples from (default: the job's space; stage 2 may pass a
    screened one, whose candidates are candidates of the job's space); ``first``: candidates the
    strategy proposes before its own (`Strategy.enqueue`). The files the evaluators
    read are checksummed when the search first starts and checked on every resume; every cheap
    metric obtained is kept in the store and read back on resume."""
    recorded = store.get_meta("inputs")
    if recorded is None:
        store.set_meta("inputs", json.dumps({"files": input_files(job)}, sort_keys=True))
    else:
        check_inputs(job, json.loads(recorded).get("files", {}), f"run directory {str(run_dir)!r}")
    problem = job.problem()
    space = space if space is not None else job.build_space()
    pipeline = pipeline if pipeline is not None else job.build_pipeline(space, problem)
    pipeline.persist_cheap(store.cheap_metrics(), store.put_cheap)
    strategy = job.build_strategy(space, problem, pipeline.oracle)
    strategy.enqueue(first)

    bar = tqdm(total=job.budget, desc=f"{job.name} [{job.strategy}]", unit="eval", disable=not progress, leave=True)

    def on_record(record: TrialRecord, replayed: bool) -> None:
        pipeline.learn_cheap(record.candidate.id, record.metrics)
        if record.status == "complete":
            bar.update(1)
        bar.set_postfix(trials=record.number + 1, replayed=driver.replayed, refresh=False)

    driver = SearchDriver(strategy, store, job.budget, job.batch_size, job.max_trials, on_record)
    try:
        run_driver(driver, job, run_dir, pipeline)
    except NoFeasibleCandidates as exc:
        seen = [r.metrics for r in store.all()] + list(store.cheap_metrics().values())
        raise JobError(_infeasible_message(job, seen, exc)) from None
    finally:
        bar.close()
        records = store.all()
        finished = [r for r in records if r.status != "running"]
        best = front(finished, problem)
        k = knee(best, problem)
        queries = {
            "costly": sum(r.status in ("complete", "failed") for r in finished),
            "cheap": len(finished),
        }
        write_trials_csv(finished, run_dir / "trials.csv")
        write_pareto_json(best, problem, run_dir / "pareto.json", {"job": job.name, "strategy": job.strategy, "queries": queries})
        if finished:
            plot_pareto(finished, problem, run_dir / "pareto.png", title=f"{job.name}: {job.strategy}, {driver.evaluations} evaluations")
    return RunResult(run_dir, finished, best, k, driver.evaluations, driver.replayed, queries, pipeline.cheap_queries)


def run_driver(driver: SearchDriver, job: Job, run_dir: Path, pipeline: Any) -> None:
    """Evaluate a driver's tasks on the job's executor."""
    if job.executor == "ray":
        RayExecutor(job.workers, job.address, storage=run_dir / "ray").run(driver, job.to_json(), pipeline.known_cheap)
    else:
        InProcessExecutor().run(driver, pipeline.evaluate)
