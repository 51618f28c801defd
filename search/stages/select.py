"""Picking a few models from a search: spread along its front, the knee always among them."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ...evaluators.problem import Problem
from ..pareto import spread_rows
from ..store import TrialRecord


def rankable(records: Sequence[TrialRecord], problem: Problem) -> list[TrialRecord]:
    """The complete trials with a value for every objective, each candidate once."""
    seen: dict[str, TrialRecord] = {}
    for r in records:
        if r.status == "complete" and r.candidate.id not in seen and all(
                isinstance(r.metrics.get(m), float) and not math.isnan(r.metrics[m]) for m in problem.metrics):
            seen[r.candidate.id] = r
    return list(seen.values())


def spread(records: Sequence[TrialRecord], problem: Problem, n: int) -> list[TrialRecord]:
    """Up to ``n`` models, the Pareto front of ``records`` first: a longer front is thinned to
    members evenly spaced along it (both ends included, the knee in place of its nearest pick),
    a shorter one is topped up from the next fronts alike (`tritune.search.pareto.spread_rows`)."""
    pool = rankable(records, problem)
    if not pool:
        return []
    values = np.stack([problem.values(r.metrics) for r in pool])
    return [pool[i] for i in spread_rows(values, problem.directions, n)]

