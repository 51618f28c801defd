"""The evaluator contract: candidates in, named metrics out.

An evaluator produces a fixed set of metrics (``metrics``) for a batch of candidates. It is
*cheap* when an answer costs nothing worth counting -- a table look-up, a predictor, a latency
model -- and *costly* otherwise: accuracy queries (a benchmark query stands in for a training run)
are the search budget. `EvaluationPipeline` uses the flag to run cheap evaluators first and skip
costly ones for candidates already known to be infeasible, and counts the two kinds separately.

Subclasses implement `_evaluate`; the public `evaluate` counts queries and checks the result.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

from ..spaces.candidate import Candidate

Metrics = dict[str, float]


class Evaluator(ABC):
    """Base of all evaluators.

    * ``metrics``: names of the metrics every result holds.
    * ``cheap``: True for look-ups / predictions, False for queries that spend the search budget.
    * ``queries``: candidates submitted to `evaluate` so far (failed batches included: a failed
      training run still cost its budget).
    * ``measures_accuracy``: every metric is an accuracy, or an estimate of one.
    """

    metrics: tuple[str, ...] = ()
    cheap: bool = False
    queries: int = 0
    #: True when every metric is an accuracy (or an estimate of one), which compressing a layer
    #: never improves; a search may then drop the choices its target gives no speed of their own.
    measures_accuracy: bool = False

    @property
    def label(self) -> str:
        """``ClassName/metric[,metric]``: how query counts name this evaluator."""
        return f"{type(self).__name__}/{','.join(self.metrics)}"

    def bind_space(self, space: Any) -> None:
        """Told the job's configured space before the search starts. Evaluators that build
        networks need it: a candidate names its space, not the options (channels, classes,
        resolutions) the job configured it with."""

    @abstractmethod
    def _evaluate(self, candidates: list[Candidate]) -> list[Metrics]:
        """One metrics dict per candidate, in order."""

    def evaluate(self, candidates: Sequence[Candidate]) -> list[Metrics]:
        """Metrics for each candidate (batched); raises what the evaluator raises."""
        if isinstance(candidates, Candidate):
            raise ValueError(f"{type(self).__name__}.evaluate: expected a sequence of candidates, got one Candidate; pass [candidate]")
        batch = list(candidates)
        self.queries = self.queries + len(batch)
        if not batch:
            return []
        results = self._evaluate(batch)
        if len(results) != len(batch):
            raise RuntimeError(f"{self.label}: returned {len(results)} results for {len(batch)} candidates")
        out: list[Metrics] = []
        for candidate, result in zip(batch, results):
            missing = [m for m in self.metrics if m not in result]
            if missing:
                raise RuntimeError(f"{self.label}: result for candidate {candidate.id} lacks {missing}")
            out.append({str(k): float(v) for k, v in result.items()})
        return out

    def reset_queries(self) -> None:
        self.queries = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(metrics={self.metrics}, cheap={self.cheap})"


