"""`RandomSearch`: uniform samples that pass the oracle screen, without repeats.

The baseline every other strategy must beat, and the warm-up most of them start with.
"""
from __future__ import annotations

from ...spaces import Candidate, SearchSpace
from ...evaluators.problem import Problem
from ._common import TrackedStrategy
from .base import Oracle


class RandomSearch(TrackedStrategy):
    """Uniform random candidates; screened by the oracle and deduplicated (bounded retries)."""

    name = "random"

    def __init__(self, space: SearchSpace, problem: Problem, seed: int = 0, oracle: Oracle | None = None) -> None:
        super().__init__(space, problem, seed, oracle)

    def _propose(self) -> Candidate:
        return self.fresh(self.sample_feasible)
