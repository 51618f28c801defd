"""`EvaluationPipeline`: run a problem's evaluators in the order that spends the least budget.

For each candidate the pipeline

1. runs the *cheap* evaluators (latency look-ups, predictors) -- memoised per candidate id, so a
   strategy may ask `oracle` as often as it likes;
2. checks the problem's constraints that only need cheap metrics; a violated one ends the
   evaluation as ``"infeasible"`` before any costly evaluator is asked;
3. runs the *costly* evaluators (accuracy queries, training) and returns ``"complete"``;
   an evaluator that raises ends it as ``"failed"`` with the metrics gathered so far and the error.

A cheap metric that the problem uses (an objective or a constraint) and that is NaN -- a table
without a value for this candidate -- makes the candidate ``"infeasible"``: no costly query is
spent on a candidate that could never be ranked. Complete and infeasible results are memoised per candidate id
(``cache=True``), so re-evaluating a candidate spends no further budget; failed ones are retried.
`query_counts` tells how many candidates each evaluator was asked about by this pipeline, so
accuracy queries (the budget) are counted apart from latency queries.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from .problem import Problem
from ..spaces.candidate import Candidate
from .base import Evaluator, Metrics

STATUSES = ("complete", "infeasible", "failed")


@dataclass(frozen=True)
class Evaluation:
    """The outcome for one candidate: ``status`` in `STATUSES`, its ``metrics``, and for
    ``"failed"`` the ``error`` message (which evaluator, exception type and text)."""

    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"evaluation status: {self.status!r} not allowed; allowed: {', '.join(STATUSES)}")

    @property
    def ok(self) -> bool:
        return self.status == "complete"

    def to_json(self) -> dict:
        return {"status": self.status, "metrics": dict(self.metrics), "error": self.error}


def _error(evaluator: Evaluator, exc: BaseException) -> str:
    return f"{evaluator.label}: {type(exc).__name__}: {exc}"


class EvaluationPipeline:
    """Evaluators for one `Problem`, cheap ones first.

    Raises ValueError at construction when an objective or constrained metric is produced by no
    evaluator, or when two evaluators produce the same metric.
    """

    def __init__(self, evaluators: Sequence[Evaluator], problem: Problem, cache: bool = True) -> None:
        evaluators = tuple(evaluators)
        if not evaluators:
            raise ValueError("evaluators: at least one evaluator is required")
        for i, e in enumerate(evaluators):
            if not isinstance(e, Evaluator):
                raise ValueError(f"evaluators[{i}]: {type(e).__name__} is not an Evaluator")
        if not isinstance(problem, Problem):
            raise ValueError(f"problem: expected a Problem, got {type(problem).__name__}")
        producer: dict[str, Evaluator] = {}
        for e in evaluators:
            for m in e.metrics:
                if m in producer:
                    raise ValueError(f"metric {m!r} is produced by both {producer[m].label} and {e.label}; rename one (metric=...)")
                producer[m] = e
        available = ", ".join(sorted(producer)) or "(none)"
        for m in problem.metrics:
            if m not in producer:
                raise ValueError(f"objective metric {m!r} is produced by no evaluator; available metrics: {available}")
        for m in problem.constrained_metrics:
            if m not in producer:
                raise ValueError(f"constrained metric {m!r} is produced by no evaluator; available metrics: {available}")
        self.evaluators = evaluators
        self.problem = problem
        self.cache = bool(cache)
        self.cheap = tuple(e for e in evaluators if e.cheap)
        self.costly = tuple(e for e in evaluators if not e.cheap)
        self._producer = producer
        cheap_metrics = {m for e in self.cheap for m in e.metrics}
        #: Constraints decidable from cheap metrics alone (checked before costly evaluators run).
        self.cheap_constraints = tuple(c for c in problem.constraints if c.metric in cheap_metrics)
        #: Cheap metrics the problem uses; NaN in any of them makes a candidate infeasible.
        self.used_cheap = tuple(m for m in dict.fromkeys(problem.metrics + problem.constrained_metrics) if m in cheap_metrics)
        self._oracle: dict[str, Metrics] = {}
        self._on_cheap: Callable[[str, Metrics], None] | None = None
        self._results: dict[str, Evaluation] = {}
        self._counts: dict[str, int] = {e.label: 0 for e in evaluators}

    @property
    def metrics(self) -> tuple[str, ...]:
        """Every metric the pipeline produces."""
        return tuple(self._producer)

    # ----- cheap metrics ---------------------------------------------------------------------
    def persist_cheap(self, known: Mapping[str, Metrics], save: Callable[[str, Metrics], None] | None) -> None:
        """Answer cheap queries from ``known`` (candidate id -> metrics) and hand every new
        answer to ``save``. A resumed search passes what its store kept, so a noisy measured
        latency is read back, not measured again, and the strategy replays exactly."""
        for cid, metrics in known.items():
            self._oracle.setdefault(cid, dict(metrics))
        self._on_cheap = save

    def known_cheap(self, candidate: Candidate) -> Metrics | None:
        """The cheap metrics already obtained for ``candidate`` (None: not asked yet)."""
        found = self._oracle.get(candidate.id)
        return None if found is None else dict(found)

    def learn_cheap(self, candidate_id: str, metrics: Metrics) -> None:
        """Adopt the cheap metrics of a trial evaluated elsewhere (a Ray worker), unless known."""
        names = {m for e in self.cheap for m in e.metrics}
        if candidate_id not in self._oracle and names and names <= set(metrics):
            self._remember(candidate_id, {m: metrics[m] for m in names})

    def _remember(self, candidate_id: str, metrics: Metrics) -> None:
        self._oracle[candidate_id] = dict(metrics)
        if self._on_cheap is not None:
            self._on_cheap(candidate_id, dict(metrics))

    def _run(self, evaluator: Evaluator, candidates: list[Candidate]) -> list[Metrics]:
        self._counts[evaluator.label] += len(candidates)
        return evaluator.evaluate(candidates)

    def _cheap_batch(self, candidates: list[Candidate]) -> tuple[dict[str, Metrics], dict[str, str]]:
        """Cheap metrics of unique candidates, and the error message of those whose cheap
        evaluation failed (their metrics then hold what earlier cheap evaluators gave)."""
        metrics: dict[str, Metrics] = {}
        errors: dict[str, str] = {}
        todo: list[Candidate] = []
        for c in candidates:
            if c.id in self._oracle:
                metrics[c.id] = dict(self._oracle[c.id])
            elif c.id not in metrics:
                metrics[c.id] = {}
                todo.append(c)
        for evaluator in self.cheap:
            live = [c for c in todo if c.id not in errors]
            if not live:
                break
            try:
                results = self._run(evaluator, live)
            except Exception as exc:  # noqa: BLE001 - reported as a failed evaluation
                for c in live:
                    errors[c.id] = _error(evaluator, exc)
                continue
            for c, r in zip(live, results):
                metrics[c.id].update(r)
        for c in todo:
            if c.id not in errors:
                self._remember(c.id, metrics[c.id])
        return metrics, errors

    def oracle(self, candidate: Candidate) -> Metrics:
        """Merged metrics of the cheap evaluators only (memoised; raises what they raise)."""
        if candidate.id not in self._oracle:
            merged: Metrics = {}
            for evaluator in self.cheap:
                merged.update(self._run(evaluator, [candidate])[0])
            self._remember(candidate.id, merged)
        return dict(self._oracle[candidate.id])

    def missing_cheap(self, metrics: Metrics) -> list[str]:
        """Used cheap metrics that have no value (absent or NaN) for a candidate."""
        return [m for m in self.used_cheap if math.isnan(metrics.get(m, math.nan))]

    def cheap_violation(self, metrics: Metrics) -> float:
        """Total violation of the constraints decidable from cheap metrics (0 = none violated)."""
        return float(sum(c.violation(metrics.get(c.metric)) for c in self.cheap_constraints))  # type: ignore[arg-type]

    # ----- full evaluation -------------------------------------------------------------------
    def evaluate(self, candidate: Candidate) -> Evaluation:
        """Cheap metrics, then (if no cheap constraint is violated) the costly ones."""
        return self.evaluate_batch([candidate])[0]

    def evaluate_batch(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        """`evaluate` for many candidates, calling each evaluator once per batch.

        If a costly evaluator raises on a batch, every candidate of that batch is ``"failed"``."""
        if isinstance(candidates, Candidate):
            raise ValueError("evaluate_batch: expected a sequence of candidates, got one Candidate; use evaluate()")
        batch = list(candidates)
        for i, c in enumerate(batch):
            if not isinstance(c, Candidate):
                raise ValueError(f"candidates[{i}]: expected a Candidate, got {type(c).__name__}")
        done: dict[str, Evaluation] = {c.id: self._results[c.id] for c in batch if c.id in self._results}
        pending = []
        seen = set(done)
        for c in batch:
            if c.id not in seen:
                seen.add(c.id)
                pending.append(c)
        metrics, errors = self._cheap_batch(pending)
        feasible: list[Candidate] = []
        for c in pending:
            if c.id in errors:
                done[c.id] = Evaluation("failed", metrics[c.id], errors[c.id])
            elif self.missing_cheap(metrics[c.id]):
                done[c.id] = Evaluation("infeasible", metrics[c.id], f"no value for {', '.join(self.missing_cheap(metrics[c.id]))}")
            elif self.cheap_violation(metrics[c.id]) > 0.0:
                done[c.id] = Evaluation("infeasible", metrics[c.id])
            else:
                feasible.append(c)
        for evaluator in self.costly:
            if not feasible:
                break
            try:
                results = self._run(evaluator, feasible)
            except Exception as exc:  # noqa: BLE001 - reported as a failed evaluation
                message = _error(evaluator, exc)
                for c in feasible:
                    done[c.id] = Evaluation("failed", metrics[c.id], message)
                feasible = []
                break
            for c, r in zip(feasible, results):
                metrics[c.id].update(r)
        for c in feasible:
            done[c.id] = Evaluation("complete", metrics[c.id])
        if self.cache:
            for c in pending:
                if done[c.id].status != "failed":
                    self._results[c.id] = done[c.id]
        return [Evaluation(done[c.id].status, dict(done[c.id].metrics), done[c.id].error) for c in batch]

    # ----- accounting ------------------------------------------------------------------------
    def query_counts(self) -> dict[str, int]:
        """Candidates each evaluator was asked about through this pipeline, keyed
        ``ClassName/metric`` (e.g. ``TabularAccuracy/accuracy``, ``TargetLatency/latency``)."""
        return dict(self._counts)

    @property
    def costly_queries(self) -> int:
        """Candidates sent to costly evaluators (counted once per candidate, not per evaluator)."""
        return max((self._counts[e.label] for e in self.costly), default=0)

    @property
    def cheap_queries(self) -> int:
        return max((self._counts[e.label] for e in self.cheap), default=0)

    def __repr__(self) -> str:
        return f"EvaluationPipeline(cheap={[e.label for e in self.cheap]}, costly={[e.label for e in self.costly]})"
