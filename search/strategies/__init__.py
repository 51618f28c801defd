"""Search strategies by name, so jobs and the CLI can pick one (and its options) as text.

Every strategy follows the ask/tell contract of `base.Strategy`; its options are the keyword-only
parameters of its ``__init__`` (see `options`), checked here so a typo in a config file names
the option instead of surfacing as a TypeError.
"""
from __future__ import annotations

from typing import Any

from ...spaces import SearchSpace
from ...evaluators.problem import Problem
from ._common import strategy_options
from .base import Oracle, Outcome, Proposal, Strategy
from .evolution import RegularizedEvolution
from .optuna_samplers import NSGA2Strategy, TPEStrategy
from .predictor_guided import PredictorGuidedEvolution
from .random import RandomSearch

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (RandomSearch, RegularizedEvolution, NSGA2Strategy, TPEStrategy, PredictorGuidedEvolution)
}


def options(name: str) -> dict[str, Any]:
    """Accepted options of a strategy and their defaults."""
    return strategy_options(_lookup(name))


def _lookup(name: str) -> type[Strategy]:
    if name not in STRATEGIES:
        raise ValueError(f"strategy: {name!r} not allowed; allowed: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]


def create_strategy(name: str, space: SearchSpace, problem: Problem, seed: int = 0, oracle: Oracle | None = None, **opts: Any) -> Strategy:
    """Build a strategy by name; unknown names and unknown options raise ValueError naming them."""
    cls = _lookup(name)
    allowed = strategy_options(cls)
    for option in opts:
        if option not in allowed:
            listed = ", ".join(sorted(allowed)) or "(none)"
            raise ValueError(f"strategy {name}: unknown option {option!r}; allowed: {listed}")
    return cls(space, problem, seed=seed, oracle=oracle, **opts)


__all__ = [
    "NSGA2Strategy", "Oracle", "Outcome", "PredictorGuidedEvolution", "Proposal", "RandomSearch", "RegularizedEvolution",
    "STRATEGIES", "Strategy", "TPEStrategy", "create_strategy", "options",
]
