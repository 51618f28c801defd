"""What a search optimises: objectives with directions, and constraints on metrics.

Metrics are plain ``name -> float`` dicts produced by evaluators. A `Problem` turns them into an
objective vector and a constraint violation, which is all a strategy needs to know.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

DIRECTIONS = ("minimize", "maximize")


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str = "minimize"

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"objectives.{self.metric}.direction: {self.direction!r} not allowed; allowed: {', '.join(DIRECTIONS)}")


@dataclass(frozen=True)
class Constraint:
    """``metric <= max`` and/or ``metric >= min``."""

    metric: str
    max: float | None = None
    min: float | None = None

    def __post_init__(self) -> None:
        if self.max is None and self.min is None:
            raise ValueError(f"constraints.{self.metric}: give max, min or both")

    def violation(self, value: float) -> float:
        """0 when satisfied, else the relative excess (so different metrics are comparable)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return math.inf
        v = 0.0
        if self.max is not None and value > self.max:
            v += (value - self.max) / max(abs(self.max), 1e-12)
        if self.min is not None and value < self.min:
            v += (self.min - value) / max(abs(self.min), 1e-12)
        return v


@dataclass(frozen=True)
class Problem:
    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.objectives:
            raise ValueError("objectives: at least one objective is required")
        names = [o.metric for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives: duplicated metric in {names}")

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(o.metric for o in self.objectives)

    @property
    def directions(self) -> tuple[str, ...]:
        return tuple(o.direction for o in self.objectives)

    @property
    def constrained_metrics(self) -> tuple[str, ...]:
        return tuple(c.metric for c in self.constraints)

    def values(self, metrics: Mapping[str, float]) -> np.ndarray:
        """Objective vector in the objectives' own directions."""
        try:
            return np.array([float(metrics[m]) for m in self.metrics])
        except KeyError as exc:
            raise ValueError(f"metrics: objective {exc.args[0]!r} missing from {sorted(metrics)}") from None

    def minimization(self, metrics: Mapping[str, float]) -> np.ndarray:
        """Objective vector with maximised objectives negated (every entry: lower is better)."""
        signs = np.array([-1.0 if d == "maximize" else 1.0 for d in self.directions])
        return self.values(metrics) * signs

    def violation(self, metrics: Mapping[str, float]) -> float:
        """Sum of relative constraint excesses; only the constrained metrics need to be present."""
        return float(sum(c.violation(metrics.get(c.metric)) for c in self.constraints))  # type: ignore[arg-type]

    def feasible(self, metrics: Mapping[str, float]) -> bool:
        return self.violation(metrics) == 0.0

    @classmethod
    def from_config(cls, objectives: Sequence[Mapping], constraints: Sequence[Mapping] = ()) -> "Problem":
        objs = []
        for i, o in enumerate(objectives):
            if not isinstance(o, Mapping) or "metric" not in o:
                raise ValueError(f"objectives[{i}]: expected {{metric: NAME, direction: minimize|maximize}}")
            unknown = set(o) - {"metric", "direction"}
            if unknown:
                raise ValueError(f"objectives[{i}]: unknown fields {sorted(unknown)}; allowed: metric, direction")
            objs.append(Objective(str(o["metric"]), str(o.get("direction", "minimize"))))
        cons = []
        for i, c in enumerate(constraints):
            if not isinstance(c, Mapping) or "metric" not in c:
                raise ValueError(f"constraints[{i}]: expected {{metric: NAME, max: X}} or min: X")
            unknown = set(c) - {"metric", "max", "min"}
            if unknown:
                raise ValueError(f"constraints[{i}]: unknown fields {sorted(unknown)}; allowed: metric, max, min")
            cons.append(Constraint(str(c["metric"]), c.get("max"), c.get("min")))
        return cls(tuple(objs), tuple(cons))
