"""`RegularizedEvolution`: aging evolution (Real et al., AAAI 2019) for several objectives.

Aging (the oldest member dies, not the worst) keeps the population moving and resists lucky
noisy evaluations, which is why it stays a strong NAS baseline. For several objectives each alive
member gets a fitness in the population, NSGA-II style: its Pareto rank, then (ties) its exclusive
hypervolume contribution to its front (crowding distance beyond 3 objectives); the tournament
winner is the sample member with the best fitness. Rank pushes towards the front, the
contribution keeps it spread and favours its knee over degenerate extremes.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from ...spaces import Candidate, SearchSpace
from ..pareto import crowding_distance, non_dominated_sort
from ...evaluators.problem import Problem
from ._common import TrackedStrategy, check_float, check_int, hv_contributions
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
        self._fit: tuple[np.ndarray, np.ndarray] | None = None

    def _propose(self) -> Candidate:
        self._asked += 1
        if self._asked <= self.population_size or not self.population:
            return self.fresh(self.sample_feasible)
        return self.fresh(self._child)

    def _fitness(self) -> tuple[np.ndarray, np.ndarray]:
        """(Pareto rank, tie-break score) of every alive member, both measured in the whole population.

        The tie-break is the member's exclusive hypervolume contribution to its front (reference:
        the population's worst values plus 10% of their range); with more than 3 objectives, the
        crowding distance. Measuring in the population, not the 10-member sample, matters: inside a
        small sample the ends of its front always win on crowding (infinite distance), so parents
        were mostly sample extremes (often degenerate ones, like a tiny network with chance-level
        accuracy) and the children piled up at the ends of the front, doing no better than random
        search at a 100-evaluation budget. Population-level rank with hypervolume contribution
        beat it in both the spread and the knee of the front (see tests/search/test_strategies.py).
        """
        if self._fit is None:
            values = np.stack([v for _, v in self.population])
            k = values.shape[1]
            rank = np.empty(len(values), dtype=np.int64)
            score = np.empty(len(values))
            lo, hi = values.min(axis=0), values.max(axis=0)
            ref = hi + 0.1 * np.where(hi > lo, hi - lo, 1.0)
            for r, front in enumerate(non_dominated_sort(values, ["minimize"] * k)):
                rank[front] = r
                score[front] = hv_contributions(values[front], ref) if k in (2, 3) else crowding_distance(values[front])
            self._fit = (rank, score)
        return self._fit

    def _tournament(self) -> Candidate:
        """Best of ``sample_size`` distinct alive members by (Pareto rank, then largest tie-break score)."""
        n = len(self.population)
        picks = self.rng.choice(n, size=min(self.sample_size, n), replace=False)
        rank, score = self._fitness()
        best = int(np.lexsort((-score[picks], rank[picks]))[0])  # stable: ties go to the earlier pick
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
        self._fit = None
        while len(self.population) > self.population_size:
            self.population.popleft()
