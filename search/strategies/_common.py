"""Shared bookkeeping for the concrete strategies (not part of the public contract).

Every strategy needs the same few things beyond `Strategy`: remember each result by candidate,
tell apart usable results (evaluated, feasible, every objective finite) from the rest, cache the
oracle, and propose something new and screen-passing within a bounded number of tries. Keeping it
here means the strategies differ only in how they pick, and all of them obey the same rules.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Mapping

import numpy as np

from ...spaces import Candidate, SearchSpace
from ...evaluators.problem import Problem
from .base import Oracle, Outcome, Strategy

#: Tries before a strategy gives up avoiding duplicates (and then falls back, see `fresh`).
MAX_RETRIES = 100


def strategy_options(cls: type) -> dict[str, Any]:
    """The options a strategy class accepts: its keyword-only ``__init__`` parameters -> defaults."""
    sig = inspect.signature(cls.__init__)
    return {p.name: p.default for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def check_int(name: str, option: str, value: Any, minimum: int) -> int:
    """Options arrive from config files, so bad values must say which option is wrong."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise ValueError(f"strategy {name}: option {option}={value!r} must be an integer >= {minimum}")
    return int(value)


def check_float(name: str, option: str, value: Any, lo: float, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not lo <= float(value) <= hi:
        raise ValueError(f"strategy {name}: option {option}={value!r} must be a number in [{lo}, {hi}]")
    return float(value)


class TrackedStrategy(Strategy):
    """`Strategy` plus a result table, an oracle cache and duplicate-free proposing."""

    def __init__(self, space: SearchSpace, problem: Problem, seed: int = 0, oracle: Oracle | None = None, **options: Any) -> None:
        super().__init__(space, problem, seed, oracle, **options)
        #: latest outcome per evaluated candidate
        self.results: dict[Candidate, Outcome] = {}
        self._oracle_cache: dict[Candidate, Mapping[str, float]] = {}
        self._signs = np.array([-1.0 if d == "maximize" else 1.0 for d in problem.directions])

    # ----- bookkeeping ----------------------------------------------------------------------
    def tell(self, key: int, outcome: Outcome) -> None:
        candidate = self._pending.get(key)
        if candidate is not None:
            self.results[candidate] = outcome
        super().tell(key, outcome)

    def is_pending(self, candidate: Candidate) -> bool:
        return any(candidate == c for c in self._pending.values())

    def is_known(self, candidate: Candidate) -> bool:
        """Evaluated already, or asked for and not yet told."""
        return candidate in self.results or self.is_pending(candidate)

    # ----- oracle ---------------------------------------------------------------------------
    def cheap_metrics(self, candidate: Candidate) -> Mapping[str, float] | None:
        """The oracle's metrics, computed once per candidate (strategies ask for them repeatedly)."""
        if self.oracle is None:
            return None
        cached = self._oracle_cache.get(candidate)
        if cached is None:
            cached = dict(self.oracle(candidate))
            self._oracle_cache[candidate] = cached
        return cached

    def passes_screen(self, candidate: Candidate) -> bool:
        if self.oracle is None or not self.problem.constraints:
            return True
        return self.screened(candidate, self.known_violation(self.cheap_metrics(candidate) or {}) == 0.0)

    def known_violation(self, metrics: Mapping[str, float]) -> float:
        """Constraint violation over the constrained metrics that are present (absent ones are unknown, not broken)."""
        return float(sum(c.violation(metrics[c.metric]) for c in self.problem.constraints if c.metric in metrics))

    # ----- results --------------------------------------------------------------------------
    def full_metrics(self, candidate: Candidate, outcome: Outcome) -> dict[str, float] | None:
        """Evaluated metrics, with the oracle filling in what the evaluator did not report."""
        if outcome.metrics is None:
            return None
        merged = dict(self.cheap_metrics(candidate) or {})
        merged.update(outcome.metrics)
        return merged

    def objective_vector(self, candidate: Candidate, outcome: Outcome) -> np.ndarray | None:
        """Minimization vector of a *usable* result, else None.

        Usable = evaluated, reported feasible, no known constraint broken, every objective present
        and finite. Only usable results may become parents, fronts or "best".
        """
        metrics = self.full_metrics(candidate, outcome)
        if metrics is None or not outcome.feasible:
            return None
        try:
            values = np.array([float(metrics[m]) for m in self.problem.metrics])
        except (KeyError, TypeError, ValueError):
            return None
        if not np.all(np.isfinite(values)) or self.known_violation(metrics) > 0.0:
            return None
        return values * self._signs + 0.0

    def usable_results(self) -> tuple[list[Candidate], np.ndarray]:
        """All usable results (evaluation order) and their minimization vectors, shape (n, k)."""
        cands: list[Candidate] = []
        rows: list[np.ndarray] = []
        for cand, outcome in self.results.items():
            vec = self.objective_vector(cand, outcome)
            if vec is not None:
                cands.append(cand)
                rows.append(vec)
        k = len(self.problem.objectives)
        return cands, (np.stack(rows) if rows else np.zeros((0, k)))

    # ----- proposing ------------------------------------------------------------------------
    def fresh(self, make: Callable[[], Candidate], tries: int = MAX_RETRIES) -> Candidate:
        """First candidate from ``make`` that passes the screen and is new.

        After ``tries`` attempts, random feasible samples get the same number of tries; if the
        space is exhausted, a screen-passing duplicate is accepted (never a screened-out one when
        any passed).
        """
        fallback: Candidate | None = None
        for source in (make, self.sample_feasible):
            for _ in range(tries):
                candidate = source()
                if not self.passes_screen(candidate):
                    continue
                if not self.is_known(candidate):
                    return candidate
                if fallback is None:
                    fallback = candidate
        return fallback if fallback is not None else self.sample_feasible()


def hv_contributions(front: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Exclusive hypervolume of each row of one front (minimization values, 2 or 3 columns)."""
    from ..pareto import hypervolume

    directions = ["minimize"] * front.shape[1]
    total = hypervolume(front, directions, ref)
    return np.array([total - hypervolume(np.delete(front, j, axis=0), directions, ref) for j in range(len(front))])
