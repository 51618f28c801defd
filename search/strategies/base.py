"""The strategy contract: Optuna-style ask/tell over candidates of one space.

A strategy proposes candidates (`ask`) and learns from results (`tell`). It never evaluates
anything itself, so one implementation runs in-process, under Ray Tune, or replayed from a store
on resume. Determinism rule: given the seed and the same sequence of ask/tell calls, a strategy
proposes the same candidates (use only ``self.rng`` and seeded libraries).

Cheap metrics: where an ``oracle`` is given (a function returning metrics that cost nothing, such
as predicted or tabulated latency), a strategy uses it to respect constraints *before* proposing
(no evaluation is spent on a candidate that breaks a latency budget) and may use it to rank
proposals.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ...spaces import Candidate, SearchSpace
from ...evaluators.problem import Problem

Oracle = Callable[[Candidate], Mapping[str, float]]

#: Screening gives up when no candidate has passed yet and this many distinct candidates (or
#: twenty times as many screenings, repeats included) were rejected.
MAX_REJECTED = 1000


class NoFeasibleCandidates(ValueError):
    """No candidate met the constraints after a bounded number of tries: the constraints are
    likely impossible (a bound in the wrong unit, say)."""


@dataclass(frozen=True)
class Proposal:
    """A candidate a strategy asked for; ``key`` links the later `tell` to it."""

    key: int
    candidate: Candidate


@dataclass(frozen=True)
class Outcome:
    """What a strategy is told. ``metrics`` is None when the evaluation failed."""

    metrics: Mapping[str, float] | None
    feasible: bool = True


class Strategy(ABC):
    """Base of all strategies. Subclasses implement `_propose` and `_observe`."""

    name: str = ""

    def __init__(self, space: SearchSpace, problem: Problem, seed: int = 0, oracle: Oracle | None = None, **options: Any) -> None:
        self.space, self.problem, self.seed, self.oracle = space, problem, int(seed), oracle
        self.rng = np.random.default_rng(self.seed)
        self.options = options
        self._next_key = 0
        self._pending: dict[int, Candidate] = {}
        #: every (candidate, outcome) told so far, in tell order
        self.history: list[tuple[Candidate, Outcome]] = []
        self._rejected: set[str] = set()
        self._screenings = 0
        self._passed_screen = False
        #: candidates to propose before the strategy's own (`enqueue`)
        self._queued: list[Candidate] = []
        self._asked_ids: set[str] = set()

    def ask(self) -> Proposal:
        candidate = self._next_queued()
        if candidate is None:
            candidate = self._propose()
        proposal = Proposal(self._next_key, candidate)
        self._pending[proposal.key] = candidate
        self._asked_ids.add(candidate.id)
        self._next_key += 1
        return proposal

    def enqueue(self, candidates: Iterable[Candidate]) -> None:
        """Propose these first, in order (like Optuna's ``enqueue_trial``): reference points such
        as hand-made networks, so the search starts from what an engineer would try anyway. One
        already asked for, or broken per the cheap metrics, is skipped."""
        self._queued.extend(candidates)

    def _next_queued(self) -> Candidate | None:
        while self._queued:
            candidate = self._queued.pop(0)
            if candidate.id not in self._asked_ids and self.passes_screen(candidate):
                return self._adopt(candidate)
        return None

    def _adopt(self, candidate: Candidate) -> Candidate:
        """Hook for strategies that keep their own trial records (Optuna): register a queued
        candidate as the next proposal; returns the candidate to propose."""
        return candidate

    def tell(self, key: int, outcome: Outcome) -> None:
        if key not in self._pending:
            raise ValueError(f"tell: unknown proposal key {key}; pending: {sorted(self._pending)}")
        candidate = self._pending.pop(key)
        self.history.append((candidate, outcome))
        self._observe(key, candidate, outcome)

    # ----- helpers for subclasses ----------------------------------------------------------
    def cheap_metrics(self, candidate: Candidate) -> Mapping[str, float] | None:
        return None if self.oracle is None else self.oracle(candidate)

    def passes_screen(self, candidate: Candidate) -> bool:
        """True unless the oracle shows the candidate breaks a constraint on a cheap metric."""
        if self.oracle is None or not self.problem.constraints:
            return True
        metrics = self.oracle(candidate)
        known = [c for c in self.problem.constraints if c.metric in metrics]
        return self.screened(candidate, all(c.violation(metrics[c.metric]) == 0.0 for c in known))

    def screen_many(self, candidates: list[Candidate]) -> list[bool]:
        """`passes_screen` for a batch, where one passing candidate anywhere in it counts (the
        order of a batch says nothing about feasibility)."""
        if self.oracle is None or not self.problem.constraints:
            return [True] * len(candidates)
        passed = self._passed_screen
        self._passed_screen = True  # judge the batch as a whole below
        try:
            flags = [self.passes_screen(c) for c in candidates]
        finally:
            self._passed_screen = passed
        if any(flags):
            self._passed_screen = True
        for c, ok in zip(candidates, flags):
            if not ok:
                self.screened(c, False)
        return flags

    def screened(self, candidate: Candidate, passed: bool) -> bool:
        """Count a screening; raise `NoFeasibleCandidates` once the bound is reached with no
        candidate ever passing. Returns ``passed``."""
        if passed:
            self._passed_screen = True
        elif not self._passed_screen:
            self._rejected.add(candidate.id)
            self._screenings += 1
            if len(self._rejected) >= MAX_REJECTED or self._screenings >= 20 * MAX_REJECTED:
                raise NoFeasibleCandidates(
                    f"none of {len(self._rejected)} distinct candidates screened met the constraints")
        return passed

    def sample_feasible(self, max_tries: int = 1000) -> Candidate:
        """A random candidate that passes the screen (falls back to the last sample)."""
        candidate = self.space.sample(self.rng)
        for _ in range(max_tries - 1):
            if self.passes_screen(candidate):
                return candidate
            candidate = self.space.sample(self.rng)
        return candidate

    @abstractmethod
    def _propose(self) -> Candidate: ...

    def _observe(self, key: int, candidate: Candidate, outcome: Outcome) -> None:
        """Default: nothing beyond `history`."""
