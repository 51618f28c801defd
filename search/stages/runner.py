"""`run_pipeline`: a job with ``stages`` from supernet to exported front, resumable at any point.

1. **supernet** -- train the job's supernet, or load it when its checkpoint matches the job;
2. **search** -- the job's own joint search (architecture x pattern x bits), scored by the
   supernet and the job's latency, exactly as a plain run;
3. **refine** -- per-layer ratios and bits of the best results, architecture and patterns fixed;
4. **finetune** -- the best models trained on with their compression, by successive halving;
5. **front** -- every fine-tuned model exported, verified and timed on the target; the front of
   what a device will run, in ``RUN_DIR/final.json``.

A finished stage is recorded in the store with its summary (`StageLog`); a resumed run skips
what is recorded and continues the rest from its persisted parts. Each stage shows a progress
bar and its wall time goes into ``RUN_DIR/stages.json``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ...spaces.screens import runs_as_exclusions, with_exclusions
from ..job import Job, JobError
from ..lock import RunLock
from ..run import RunResult, open_run, prepare_run, search_stage
from ..store import TrialStore
from .config import StagesConfig
from .front import FinalModel, export_final, write_final
from .state import StageLog, StageRecord

#: Targets whose files `tritune.search.export` writes (the front stage measures on one of them).
EXPORT_TARGETS = ("ort-cpu", "codegen-cpu")


@dataclass
class PipelineResult:
    """What a pipeline run produced: each stage's record, the search's result, the final front."""

    run_dir: Path
    stages: list[StageRecord]
    search: RunResult | None = None
    final: list[FinalModel] = field(default_factory=list)
    knee: FinalModel | None = None


def _latency_target(job: Job, settings_target: str) -> tuple[str, dict[str, Any]]:
    spec = next((e for e in job.evaluators if e.get("kind") == "latency"), None)
    name = settings_target or (spec.get("target") if spec and spec.get("target") in EXPORT_TARGETS else "ort-cpu")
    if name not in EXPORT_TARGETS:
        raise JobError(f"job.stages.front.target: {name!r} not allowed; allowed: {', '.join(EXPORT_TARGETS)}")
    options = {}
    if spec is not None and spec.get("target") == name:
        options = {k: v for k, v in spec.items() if k in ("threads", "protocol")}
    return name, options


class _Stages:
    """One pipeline run: the open store, the stage log, and what the stages hand each other."""

    def __init__(self, job: Job, config: StagesConfig, store: TrialStore, run_dir: Path, progress: bool) -> None:
        self.job, self.config, self.store, self.run_dir, self.progress = job, config, store, run_dir, progress
        self.log = StageLog(store)
        self.records: list[StageRecord] = []

    def stage(self, name: str, settings: dict[str, Any], run: Callable[[], dict[str, Any]], number: int) -> StageRecord:
        done = self.log.done(name, settings)
        if done is not None:
            self.records.append(done)
            return done
        if self.progress:
            print(f"stage {number}/5: {name}", flush=True)
        started = time.perf_counter()
        summary = run()
        record = StageRecord(name, settings, summary, round(time.perf_counter() - started, 2))
        self.log.finish(record)
        self.records.append(record)
        self._write_summary()
        return record

    def _write_summary(self) -> None:
        path = self.run_dir / "stages.json"
        path.write_text(json.dumps({"stages": [r.to_json() for r in self.records]}, indent=2, sort_keys=True))


def run_pipeline(job: Job, run_dir: str | Path | None = None, resume: bool = False, executor: str | None = None,
                 workers: int | None = None, address: str | None = None, progress: bool = True) -> PipelineResult:
    """Run (or resume) every stage of a job with a ``stages`` section."""
    config = job.stages_config()
    if config is None:
        raise JobError("job.stages: this job has no stages section; run it with run_search")
    job, path, db = prepare_run(job, run_dir, resume, executor, workers, address)
    with RunLock(path), TrialStore(db) as store:
        open_run(store, job, path)
        return _run(_Stages(job, config, store, path, progress))


def _run(s: _Stages) -> PipelineResult:
    from .finetune import deployed_subnet, finetune_models
    from .refine import refine_finalist, sensitivity_weights
    from .retime import RETIMED_FILE, measured_latency, retimed
    from .select import spread
    from .supernet import SupernetSpec, ensure_supernet

    job, config = s.job, s.config
    result = PipelineResult(s.run_dir, s.records)
    space = job.build_space()
    if config.finetune is not None and not space.fine_tunes:
        raise JobError(f"job.stages.finetune: space {space.name!r} cannot fine-tune its candidates (it defines no "
                       "trainable_network); set finetune: false and front: false, and export the search's front with "
                       "`tritune export RUN_DIR`")
    if config.supernet is not None:
        s.stage("supernet", {"train": config.supernet.train}, lambda: ensure_supernet(job, config.supernet.train, progress=s.progress), 1)

    problem = job.problem()
    pipeline = job.build_pipeline(space, problem)
    runs_as = _cost_target(pipeline, problem) if config.search.target_menu else None

    def fast(menu: Any) -> Any:  # without the choices the cost target runs as another choice on ``menu``
        return menu if runs_as is None else with_exclusions(menu, runs_as_exclusions(menu, runs_as.runs_as))

    def search() -> dict[str, Any]:
        searched = fast(_screened(job, space, config.search.max_drop))
        references = getattr(searched, "reference_models", None)  # a family's hand-made networks, where it has them
        first = list(references().values()) if config.search.references and callable(references) else []
        found = search_stage(s.store, job, s.run_dir, pipeline, space=searched, first=first, progress=s.progress)
        result.search = found
        excluded = sum(len(v) for _, v in searched.menu.exclude) - sum(len(v) for _, v in space.menu.exclude)
        on_front = {r.candidate.id for r in found.front} & {c.id for c in first}
        return {"evaluations": found.evaluations, "trials": len(found.records), "front": len(found.front),
                "knee": None if found.knee is None else found.knee.candidate.id, "choices_excluded": excluded,
                "target_menu": None if runs_as is None else runs_as.name,
                "references": len(first), "references_on_front": len(on_front)}

    s.stage("search", {"strategy": job.strategy, "budget": job.budget, **vars(config.search)}, search, 2)
    records = [r for r in s.store.all() if r.status != "running"]

    if config.refine is not None:
        refine = config.refine
        finalists = spread(records, problem, refine.finalists)

        def run_refine() -> dict[str, Any]:
            per = {}
            weights = sensitivity_weights(space, SupernetSpec.of(job).checkpoint)
            menu = fast(space)
            for i, final in enumerate(finalists):
                trials = refine_finalist(job, pipeline, final.candidate, i, refine, s.run_dir, space=menu,
                                         sensitivity=weights, progress=s.progress)
                per[final.candidate.id] = sum(t.status == "complete" for t in trials)
            return {"finalists": list(per), "evaluations": per}

        s.stage("refine", vars(refine).copy(), run_refine, 3)
        for final in finalists:
            with TrialStore(s.run_dir / "refine" / final.candidate.id / "trials.db", readonly=True) as sub:
                records += [r for r in sub.all() if r.status != "running"]

    latency = measured_latency(job, pipeline, problem)
    retime = config.finetune is not None and config.finetune.retime and latency is not None
    if config.finetune is not None:
        where = SupernetSpec.of(job)
        data = _data(pipeline)
        tuned: list[Any] = []

        def picks(progress: bool) -> list[Any]:  # the leading fronts re-timed first (read back from RETIMED_FILE on resume)
            ranked = retimed(records, problem, config.finetune.top_k, latency=latency, space=space, run_dir=s.run_dir,
                             progress=progress) if retime else records
            return spread(ranked, problem, config.finetune.top_k)

        def run_finetune() -> dict[str, Any]:
            tuned.extend(finetune_models(picks(s.progress), config.finetune, run_dir=s.run_dir, log=s.log, checkpoint=str(where.checkpoint),
                                         data=data, seed=job.seed, problem=problem, progress=s.progress))
            return {"models": [m.to_json() for m in tuned]}

        s.stage("finetune", vars(config.finetune).copy(), run_finetune, 4)
        if not tuned:
            tuned = finetune_models(picks(False), config.finetune, run_dir=s.run_dir, log=s.log, checkpoint=str(where.checkpoint),
                                    data=data, seed=job.seed, problem=problem, progress=False)

        if config.front is not None:
            target, options = _latency_target(job, config.front.target)
            evaluator = _supernet_evaluator(pipeline)

            source = None
            if latency is not None and latency.target == target:
                how = (f"timed again with the leading fronts, together in fresh processes, before fine-tuning ({RETIMED_FILE})"
                       if retime else "measured by the search on the target's own build of the candidate (random seeded weights)")
                source = {"kind": "target", "name": target, "options": dict(latency.options), "how": how}

            def run_front() -> dict[str, Any]:
                models = export_final(tuned, subnet_of=lambda m: deployed_subnet(m, data), data=data, calibration=list(evaluator.calib),
                                      space=space, target=target, target_options=options, out_dir=s.run_dir / "export",
                                      latency_source=source, progress=s.progress)
                best, knee = write_final(models, s.run_dir / "final.json", {"job": job.name, "target": target})
                return {"target": target, "models": len(models), "front": [m.candidate.id for m in best],
                        "knee": None if knee is None else knee.candidate.id}

            s.stage("front", {**vars(config.front), "target": target}, run_front, 5)
            from ..html_report import write_report

            write_report(s.run_dir)
            final = json.loads((s.run_dir / "final.json").read_text())
            by_id = {m.candidate.id: m for m in tuned}
            result.final = [FinalModel(by_id[f["candidate_id"]].candidate, f["accuracy"], f["latency_ms"], f["latency_spread"],
                                       f["folder"], f["finetuned_accuracy"], f["search_metrics"]) for f in final["front"]]
            result.knee = next((m for m in result.final if m.candidate.id == final["knee"]), None)
    return result


def _cost_target(pipeline: Any, problem: Any) -> Any | None:
    """The target whose latency is the job's only cost: every other metric the objectives and
    constraints name is an accuracy (None when another metric could reward compression, or
    several targets time the job)."""
    from ...evaluators.tabular import TargetLatency

    named = {o.metric for o in problem.objectives} | {c.metric for c in problem.constraints}
    targets = []
    for evaluator in pipeline.evaluators:
        if not named & set(evaluator.metrics):
            continue
        if isinstance(evaluator, TargetLatency):
            targets.append(evaluator.target)
        elif not evaluator.measures_accuracy:
            return None
    return targets[0] if len(targets) == 1 and callable(getattr(targets[0], "runs_as", None)) else None


def _screened(job: Job, space: Any, max_drop: float | None) -> Any:
    """``space`` without the compression choices that alone cost more than ``max_drop`` points
    in the sensitivity table of the job's supernet checkpoint (``space`` itself when None)."""
    if max_drop is None:
        return space
    from ...evaluators.sensitivity import load_sensitivity
    from ...spaces.sensitivity import screened_space
    from .supernet import SupernetSpec

    checkpoint = SupernetSpec.of(job).checkpoint
    table = load_sensitivity(checkpoint)
    if table is None:
        raise JobError(f"job.stages.search.max_drop: supernet checkpoint {str(checkpoint)!r} holds no sensitivity table; "
                       "measure it with `tritune supernet sensitivity JOB`, or remove max_drop")
    try:
        return screened_space(space, table, float(max_drop))
    except ValueError as exc:
        raise JobError(f"job.stages.search.max_drop: {exc}") from None


def _supernet_evaluator(pipeline: Any) -> Any:
    from ...evaluators.supernet_accuracy import SupernetAccuracy

    found = next((e for e in pipeline.evaluators if isinstance(e, SupernetAccuracy)), None)
    if found is None:
        raise JobError("job.stages: the pipeline needs a supernet-accuracy evaluator (its data set and calibration batches)")
    return found


def _data(pipeline: Any) -> Any:
    """The data set the job's supernet evaluator scores with (same split for every stage)."""
    return _supernet_evaluator(pipeline).data
