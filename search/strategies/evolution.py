"""`RegularizedEvolution`: aging evolution (Real et al., AAAI 2019) for several objectives.

Aging (the oldest member dies, not the worst) keeps the population moving and resists lucky
noisy evaluations, which is why it stays a strong NAS baseline. For several objectives the
tournament winner is the sample member with the best Pareto rank *within the sample*, ties broken
by the largest crowding distance (NSGA-II's two criteria), so selection pressure pushes towards
the front while keeping it spread.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from ...spaces import Candidate, SearchSpace
from ..pareto import crowding_distance, non_dominated_sort
from ..problem import Problem
from ._common import TrackedStrategy, check_float, check_int
from .base import Oracle, Outcome


class RegularizedEvolution(TrackedStrategy):
    """Random start of ``population`` proposals, then mutate (and optionally cross over) tournament winners.

    Only usable results (evaluated, feasible) join the population; failed or infeasible children
    are simply not added, so they can never become parents.
    """

    name = "evolution"

    def __init__(
        self,
        space: SearchSpace,
        problem: Problem,
        seed: int = 0,
        oracle: Oracle | None = None,
        *,
        population: int = 50,
        sample_size: int = 10,
        crossover_prob: float = 0.0,
    ) -> None:
        population = check_int(self.name, "population", population, 2)
        sample_size = check_int(self.name, "sample_size", sample_size, 1)
        crossover_prob = check_float(self.name, "crossover_prob", crossover_prob, 0.0, 1.0)
        super().__init__(space, problem, seed, oracle, population=population, sample_size=sample_size, crossover_prob=crossover_prob)
        self.population_size, self.sample_size, self.crossover_prob = population, sample_size, crossover_prob
        #: alive members, oldest first: (candidate, minimization vector)
        self.population: deque[tuple[Candidate, np.ndarray]] = deque()
        self._asked = 0

    def _propose(self) -> Candidate:
        self._asked += 1
        if self._asked <= self.population_size or not self.population:
            return self.fresh(self.sample_feasible)
        return self.fresh(self._child)

    def _tournament(self) -> Candidate:
        """Best of ``sample_size`` distinct alive members by (rank within the sample, -crowding)."""
        n = len(self.population)
        picks = self.rng.choice(n, size=min(self.sample_size, n), replace=False)
        values = np.stack([self.population[int(i)][1] for i in picks])
        k = values.shape[1]
        rank = np.empty(len(picks), dtype=np.int64)
        crowd = np.empty(len(picks))
        for r, front in enumerate(non_dominated_sort(values, ["minimize"] * k)):
            rank[front] = r
            crowd[front] = crowding_distance(values[front])
        best = int(np.lexsort((-crowd, rank))[0])  # lexsort is stable: ties go to the earlier pick
        return self.population[int(picks[best])][0]

    def _child(self) -> Candidate:
        parent = self._tournament()
        if self.crossover_prob > 0.0 and self.rng.random() < self.crossover_prob:
            parent = self.space.crossover(parent, self._tournament(), self.rng)
        return self.space.mutate(parent, self.rng)

    def _observe(self, key: int, candidate: Candidate, outcome: Outcome) -> None:
        vec = self.objective_vector(candidate, outcome)
        if vec is None:
            return
        self.population.append((candidate, vec))
        while len(self.population) > self.population_size:
            self.population.popleft()
