"""Picking a few models from a front: spread along it, the knee always among them."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ...evaluators.problem import Problem
from ..report import front, knee
from ..store import TrialRecord


def spread(records: Sequence[TrialRecord], problem: Problem, n: int) -> list[TrialRecord]:
    """Up to ``n`` members of the Pareto front of ``records``, evenly spaced along it (sorted by
    the first objective, both ends included) with the knee replacing its nearest pick. A front of
    fewer than ``n`` is topped up from the next fronts (non-dominated sorting), spread alike."""
    best = front(records, problem)
    if len(best) < n:
        taken = {id(r) for r in best}
        rest = [r for r in records if id(r) not in taken]
        more = spread(rest, problem, n - len(best)) if rest and best else []
        return best + more
    if len(best) == n:
        return best
    picks = [int(round(i)) for i in np.linspace(0, len(best) - 1, n)]
    k = knee(best, problem)
    if k is not None:
        at = best.index(k)
        if at not in picks:
            nearest = min(range(len(picks)), key=lambda i: (abs(picks[i] - at), i))
            picks[nearest] = at
    return [best[i] for i in sorted(set(picks))]
