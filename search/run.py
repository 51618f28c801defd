"""`run_search`: one job from YAML to a Pareto front on disk, resumable."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from .driver import SearchDriver
from .executors import InProcessExecutor, RayExecutor
from .job import Job, JobError
from .report import format_front, front, knee, plot_pareto, write_pareto_json, write_trials_csv
from .store import TrialRecord, TrialStore


@dataclass
class RunResult:
    run_dir: Path
    records: list[TrialRecord]
    front: list[TrialRecord]
    knee: TrialRecord | None
    evaluations: int
    replayed: int
    queries: dict[str, int] = field(default_factory=dict)

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
    if address and executor in (None, "ray"):
        executor = "ray"
    job = replace(job, executor=executor or job.executor, workers=workers or job.workers, address=address or job.address)
    run_dir = Path(run_dir or job.run_dir).resolve()
    db = run_dir / "trials.db"
    if db.exists() and not resume:
        raise JobError(f"run directory {str(run_dir)!r} already holds a run; pass --resume to continue it or choose another run_dir")
    if resume and not db.exists():
        raise JobError(f"run directory {str(run_dir)!r} holds no run to resume (no trials.db)")
    run_dir.mkdir(parents=True, exist_ok=True)

    problem = job.problem()
    space = job.build_space()
    pipeline = job.build_pipeline(space, problem)
    strategy = job.build_strategy(space, problem, pipeline.oracle)

    with TrialStore(db) as store:
        stored = store.get_meta("job_fingerprint")
        if stored is None:
            store.set_meta("job_fingerprint", job.fingerprint())
            store.set_meta("job", job.to_json())
        elif stored != job.fingerprint():
            raise JobError(
                f"run directory {str(run_dir)!r} was started by a different job (space, evaluators, objectives, strategy, "
                "seed, budget or batch size changed); start a new run_dir instead of resuming"
            )
        (run_dir / "job.json").write_text(json.dumps(job.to_config(), indent=2, sort_keys=True))

        bar = tqdm(total=job.budget, desc=f"{job.name} [{job.strategy}]", unit="eval", disable=not progress, leave=True)

        def on_record(record: TrialRecord, replayed: bool) -> None:
            if record.status == "complete":
                bar.update(1)
            bar.set_postfix(trials=record.number + 1, replayed=driver.replayed, refresh=False)

        driver = SearchDriver(strategy, store, job.budget, job.batch_size, job.max_trials, on_record)
        try:
            if job.executor == "ray":
                RayExecutor(job.workers, job.address, storage=run_dir / "ray").run(driver, job.to_json())
            else:
                InProcessExecutor().run(driver, pipeline.evaluate)
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
    return RunResult(run_dir, finished, best, k, driver.evaluations, driver.replayed, queries)
