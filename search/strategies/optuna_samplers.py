"""Optuna's NSGA-II and multivariate TPE behind the tritune ask/tell contract.

Optuna already implements both algorithms well, including constrained domination; this module
only translates: a proposal is an Optuna trial whose parameters come from the space's
define-by-run `suggest`, a result is told back in the objectives' own directions with the
constraint violation attached. Two things are added on top of plain Optuna:

* Oracle screening: a suggestion the oracle already shows to be infeasible is told to Optuna at
  once (oracle values, pessimistic values for the objectives it cannot know, a positive
  violation) and Optuna is asked again, so no evaluation is spent on it and the sampler still
  learns where the infeasible region is.
* No duplicates: a suggestion equal to an evaluated or pending candidate is closed as FAIL (so
  the sampler neither double-counts the old result nor waits for it) and Optuna is asked again.

After `MAX_RETRIES` rejected suggestions a fresh random feasible candidate is enqueued as the
trial's fixed parameters, so the contract holds even when a sampler keeps repeating itself.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from ...spaces import Candidate, SearchSpace
from ..problem import Problem
from ._common import MAX_RETRIES, TrackedStrategy, check_int
from .base import Oracle, Outcome

#: Optuna >= 5 stores constraints on the trial (`Trial.set_constraint`); older versions read them
#: through the sampler's ``constraints_func`` (deprecated in 5.0).
_HAS_SET_CONSTRAINT = hasattr(Trial, "set_constraint")
_CONSTRAINT_ATTR = "constraint"


def _constraints_from_user_attr(trial: FrozenTrial) -> Sequence[float]:
    """``constraints_func`` for Optuna < 5: the violation this module stored before `tell`."""
    return list(trial.user_attrs.get(_CONSTRAINT_ATTR, [0.0]))


class OptunaStrategy(TrackedStrategy):
    """Base of the Optuna-backed strategies: one in-memory study, trials kept per proposal key."""

    def __init__(self, space: SearchSpace, problem: Problem, seed: int = 0, oracle: Oracle | None = None, **options: Any) -> None:
        super().__init__(space, problem, seed, oracle, **options)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            sampler = self._make_sampler(None if _HAS_SET_CONSTRAINT else _constraints_from_user_attr)
            self.study = optuna.create_study(directions=list(problem.directions), sampler=sampler)
        self._trials: dict[int, Trial] = {}
        #: worst finite value seen per objective (own direction), for pessimistic fill-ins
        self._worst: list[float | None] = [None] * len(problem.objectives)

    def _make_sampler(self, constraints_func: Any) -> optuna.samplers.BaseSampler:
        raise NotImplementedError

    # ----- Optuna plumbing ------------------------------------------------------------------
    def _ask_trial(self) -> tuple[Trial, Candidate]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            trial = self.study.ask()
            return trial, self.space.suggest(trial)

    def _tell(self, trial: Trial, values: Sequence[float] | None, violation: float = 0.0) -> None:
        """Close a trial: FAIL when ``values`` is None, else COMPLETE with the violation attached first."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if values is None:
                self.study.tell(trial, state=TrialState.FAIL)
                return
            trial.set_user_attr(_CONSTRAINT_ATTR, [float(violation)])
            if _HAS_SET_CONSTRAINT:
                trial.set_constraint("violation", float(violation))
            self.study.tell(trial, [float(v) for v in values])

    def _values(self, metrics: Mapping[str, float]) -> list[float]:
        """Objective values in their own directions; missing or non-finite ones pessimistic.

        Pessimistic = the worst value observed so far for that objective (0.0 before anything was
        observed). A finite, in-range value keeps Optuna's normalisation (crowding distance, the
        HSSP reference point) sane, unlike inf; both samplers rank infeasible trials by violation
        first, so this value only breaks ties between equally violating trials.
        """
        out = []
        for i, metric in enumerate(self.problem.metrics):
            value = metrics.get(metric)
            try:
                value = float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value):
                worst = self._worst[i]
                value = 0.0 if worst is None else worst
            out.append(value)
        return out

    def _note_worst(self, metrics: Mapping[str, float]) -> None:
        for i, (metric, direction) in enumerate(zip(self.problem.metrics, self.problem.directions)):
            value = metrics.get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                old = self._worst[i]
                if old is None:
                    self._worst[i] = float(value)
                else:
                    self._worst[i] = min(old, float(value)) if direction == "maximize" else max(old, float(value))

    # ----- contract -------------------------------------------------------------------------
    def _propose(self) -> Candidate:
        for _ in range(MAX_RETRIES):
            trial, candidate = self._ask_trial()
            if not self.passes_screen(candidate):
                cheap = self.cheap_metrics(candidate) or {}
                self._tell(trial, self._values(cheap), max(self.known_violation(cheap), 1e-12))
                continue
            if self.is_known(candidate):
                trial.set_user_attr("duplicate", True)
                self._tell(trial, None)
                continue
            self._trials[self._next_key] = trial  # `ask` gives this proposal the key `_next_key`
            return candidate
        # The sampler keeps repeating itself: hand it a fresh random candidate as fixed parameters.
        candidate = self.fresh(self.sample_feasible)
        self.study.enqueue_trial(self.space.params(candidate), skip_if_exists=False)
        trial, suggested = self._ask_trial()
        self._trials[self._next_key] = trial
        return suggested

    def _observe(self, key: int, candidate: Candidate, outcome: Outcome) -> None:
        trial = self._trials.pop(key)
        metrics = self.full_metrics(candidate, outcome)
        if metrics is None:
            self._tell(trial, None)
            return
        self._note_worst(metrics)
        violation = self.known_violation(metrics)
        if not outcome.feasible and violation <= 0.0:
            violation = 1.0  # broken, but not on a metric we can see: "infeasible", degree unknown
        self._tell(trial, self._values(metrics), violation)


class NSGA2Strategy(OptunaStrategy):
    """NSGA-II (Deb et al. 2002) via `optuna.samplers.NSGAIISampler` with constrained domination."""

    name = "nsga2"

    def __init__(
        self,
        space: SearchSpace,
        problem: Problem,
        seed: int = 0,
        oracle: Oracle | None = None,
        *,
        population_size: int = 50,
    ) -> None:
        self.population_size = check_int(self.name, "population_size", population_size, 2)
        super().__init__(space, problem, seed, oracle, population_size=self.population_size)

    def _make_sampler(self, constraints_func: Any) -> optuna.samplers.BaseSampler:
        return optuna.samplers.NSGAIISampler(seed=self.seed, population_size=self.population_size, constraints_func=constraints_func)


class TPEStrategy(OptunaStrategy):
    """Multivariate TPE (Bergstra et al. 2011; Falkner et al. 2018) with constraint-aware splits
    and the constant liar for pending trials, so batches of asks spread out."""

    name = "tpe"

    def __init__(
        self,
        space: SearchSpace,
        problem: Problem,
        seed: int = 0,
        oracle: Oracle | None = None,
        *,
        n_startup_trials: int = 20,
    ) -> None:
        self.n_startup_trials = check_int(self.name, "n_startup_trials", n_startup_trials, 0)
        super().__init__(space, problem, seed, oracle, n_startup_trials=self.n_startup_trials)

    def _make_sampler(self, constraints_func: Any) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(
            seed=self.seed,
            multivariate=True,
            constant_liar=True,
            n_startup_trials=self.n_startup_trials,
            constraints_func=constraints_func,
        )
