"""Timing the models fine-tuning picks from again, all together, before picking.

The search times each batch of proposals once, in its own process: a slow phase of a shared
machine inflates a whole batch, so models of different batches compare unfairly, and the picks,
successive halving's promotions and the exported manifests' predictions inherit the error. Before
the fine-tune stage picks, the leading Pareto fronts of the search and refinement (at least
`POOL_FACTOR` x ``top_k`` models) are timed again together, in fresh processes
(`tritune.targets.fresh_timing`), and those numbers replace the search's. The search's own number
stays beside it as ``<metric>_search``. The timings go to ``RUN_DIR/retimed.json``, so a
resumed run picks the same models without timing them again.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...evaluators.problem import Problem
from ..pareto import non_dominated_sort
from ..store import TrialRecord
from .select import rankable

#: The pool timed again: the leading fronts, until it holds this many times ``top_k`` models.
POOL_FACTOR = 3
RETIMED_FILE = "retimed.json"
RETIMED_SCHEMA = 1


@dataclass(frozen=True)
class MeasuredLatency:
    """Where a job's latency objective comes from, when it is measured on a target."""

    metric: str
    target: str
    options: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "target": self.target, "options": dict(self.options)}


def measured_latency(job: Any, pipeline: Any, problem: Problem) -> MeasuredLatency | None:
    """The job's latency metric that an objective or constraint names and a target measures by
    building and running candidates (None for predictors, tables, or no such metric)."""
    from ...evaluators.registry import latency_target_options
    from ...evaluators.tabular import TargetLatency

    named = problem.metrics + tuple(c.metric for c in problem.constraints)
    for evaluator in pipeline.evaluators:
        if isinstance(evaluator, TargetLatency) and evaluator.metric in named and callable(getattr(evaluator.target, "build", None)):
            name = evaluator.target.name
            spec = next((e for e in job.evaluators if e.get("kind") == "latency" and e.get("target") == name), {})
            return MeasuredLatency(evaluator.metric, name, latency_target_options(spec))
    return None


def leading_fronts(records: Sequence[TrialRecord], problem: Problem, n: int) -> list[TrialRecord]:
    """Whole Pareto fronts of ``records``, best first, until at least ``n`` are taken."""
    if not records:
        return []
    values = np.stack([problem.values(r.metrics) for r in records])
    taken: list[TrialRecord] = []
    for front in non_dominated_sort(values, problem.directions):
        if len(taken) >= n:
            break
        taken += [records[i] for i in front]
    return taken


def retimed(records: Sequence[TrialRecord], problem: Problem, n: int, *, latency: MeasuredLatency, space: Any,
            run_dir: Path, progress: bool = False) -> list[TrialRecord]:
    """The rankable ``records`` with the leading fronts' latency re-timed together (read from
    ``RUN_DIR/retimed.json`` when it was timed for the same target and pool size)."""
    from ...targets.fresh_timing import time_fresh

    pool = rankable(records, problem)
    path = Path(run_dir) / RETIMED_FILE
    wanted = {"schema": RETIMED_SCHEMA, "latency": latency.to_json(), "pool_size": POOL_FACTOR * n}
    doc = json.loads(path.read_text()) if path.is_file() else None
    if not isinstance(doc, dict) or any(doc.get(k) != v for k, v in wanted.items()):
        chosen = leading_fronts(pool, problem, POOL_FACTOR * n)
        if progress:
            print(f"finetune: timing the {len(chosen)} models of the leading fronts again, together on {latency.target}", flush=True)
        timings = time_fresh([r.candidate for r in chosen], space, latency.target, latency.options)
        doc = {**wanted, "how": "the leading fronts timed together, interleaved, in fresh processes; each model's fastest process",
               "timings": [t.to_json() for t in timings]}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
        tmp.replace(path)
    by_id = {t["candidate_id"]: float(t["latency_ms"]) for t in doc["timings"]}
    metric = latency.metric
    return [replace(r, metrics={**r.metrics, metric: by_id[r.candidate.id], f"{metric}_search": r.metrics[metric]})
            if r.candidate.id in by_id else r for r in pool]
