"""Search strategies by name, so jobs and the CLI can pick one (and its options) as text.

Every strategy follows the ask/tell contract of `base.Strategy`; its options are the keyword-only
parameters of its ``__init__`` (see `options`), checked here against their type hints so a typo
or a wrong type in a config file names the option instead of surfacing as a TypeError. The
search fills ``space``, ``problem``, ``seed`` and ``oracle`` itself. More strategies come from
`register_strategy` in the user's own Python or an installed package's entry point in the group
``tritune.strategies``.
"""
from __future__ import annotations

from typing import Any

from ...spaces import SearchSpace
from ...spaces.plugins import Registry
from ...evaluators.problem import Problem
from ._common import strategy_options
from .base import Oracle, Outcome, Proposal, Strategy
from .evolution import RegularizedEvolution
from .optuna_samplers import NSGA2Strategy, TPEStrategy
from .predictor_guided import PredictorGuidedEvolution
from .random import RandomSearch

ENTRY_POINT_GROUP = "tritune.strategies"
#: Arguments the search passes itself; a job sets ``seed`` at its top level.
FILLED_BY_SEARCH = ("space", "problem", "seed", "oracle")

STRATEGIES: Registry[type[Strategy]] = Registry("strategy", ENTRY_POINT_GROUP)


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """File a `Strategy` subclass under its ``name`` (usable as a class decorator)."""
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name:
        raise ValueError(f"strategy class {getattr(cls, '__name__', cls)!r}: set a non-empty string `name` before registering")
    STRATEGIES.register(name, cls)
    return cls


for _builtin in (RandomSearch, RegularizedEvolution, NSGA2Strategy, TPEStrategy, PredictorGuidedEvolution):
    register_strategy(_builtin)


def options(name: str) -> dict[str, Any]:
    """Accepted options of a strategy and their defaults."""
    return strategy_options(STRATEGIES.get(name))


def check_strategy_options(name: str, opts: dict[str, Any]) -> None:
    """Raise ValueError naming an unknown strategy, an option it does not take (``seed`` and the
    other arguments the search fills included) or a value of the wrong type."""
    cls = STRATEGIES.get(name)
    for key in FILLED_BY_SEARCH:
        if key in opts:
            hint = "; set the job's top-level seed" if key == "seed" else ""
            raise ValueError(f"strategy {name}: {key!r} is set by the search, not a strategy option{hint}")
    allowed = strategy_options(cls)
    for option in opts:
        if option not in allowed:
            listed = ", ".join(sorted(allowed)) or "(none)"
            raise ValueError(f"strategy {name}: unknown option {option!r}; allowed: {listed}")
    STRATEGIES.check(name, opts, reserved=FILLED_BY_SEARCH)


def create_strategy(name: str, space: SearchSpace, problem: Problem, seed: int = 0, oracle: Oracle | None = None, **opts: Any) -> Strategy:
    """Build a strategy by name; unknown names and unknown options raise ValueError naming them."""
    check_strategy_options(name, opts)
    return STRATEGIES.get(name)(space, problem, seed=seed, oracle=oracle, **opts)


__all__ = [
    "NSGA2Strategy", "Oracle", "Outcome", "PredictorGuidedEvolution", "Proposal", "RandomSearch", "RegularizedEvolution",
    "STRATEGIES", "Strategy", "TPEStrategy", "check_strategy_options", "create_strategy", "options", "register_strategy",
]
