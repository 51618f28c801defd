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
#: Longest metric name accepted from a file.
MAX_METRIC_NAME = 100


def _metric_name(value: object, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_METRIC_NAME:
        raise ValueError(f"{where}.metric: {value!r} not allowed; expected a metric name (a string of 1 to {MAX_METRIC_NAME} characters)")
    return value


def _bound(value: object, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: {value!r} not allowed; expected a finite number")
    return float(value)


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
        for name in ("max", "min"):
            object.__setattr__(self, name, _bound(getattr(self, name), f"constraints.{self.metric}.{name}"))
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"constraints.{self.metric}: min {self.min:g} > max {self.max:g}; no value can satisfy it")

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
        """Build from job-file values; every wrong type or value is a ValueError naming the field."""
        if not isinstance(objectives, (list, tuple)):
            raise ValueError(f"objectives: {objectives!r} not allowed; expected a list of {{metric: NAME, direction: minimize|maximize}}")
        if not isinstance(constraints, (list, tuple)):
            raise ValueError(f"constraints: {constraints!r} not allowed; expected a list of {{metric: NAME, max: X, min: X}}")
        objs = []
        for i, o in enumerate(objectives):
            if not isinstance(o, Mapping) or "metric" not in o:
                raise ValueError(f"objectives[{i}]: expected {{metric: NAME, direction: minimize|maximize}}")
            unknown = sorted(map(str, set(o) - {"metric", "direction"}))
            if unknown:
                raise ValueError(f"objectives[{i}]: unknown fields {unknown}; allowed: metric, direction")
            metric = _metric_name(o["metric"], f"objectives[{i}]")
            direction = o.get("direction", "minimize")
            if direction not in DIRECTIONS or not isinstance(direction, str):
                raise ValueError(f"objectives[{i}].direction: {direction!r} not allowed; allowed: {', '.join(DIRECTIONS)}")
            objs.append(Objective(metric, direction))
        cons = []
        for i, c in enumerate(constraints):
            if not isinstance(c, Mapping) or "metric" not in c:
                raise ValueError(f"constraints[{i}]: expected {{metric: NAME, max: X}} or min: X")
            unknown = sorted(map(str, set(c) - {"metric", "max", "min"}))
            if unknown:
                raise ValueError(f"constraints[{i}]: unknown fields {unknown}; allowed: metric, max, min")
            metric = _metric_name(c["metric"], f"constraints[{i}]")
            bounds = {k: _bound(c.get(k), f"constraints[{i}].{k}") for k in ("max", "min")}
            if bounds["max"] is None and bounds["min"] is None:
                raise ValueError(f"constraints[{i}] ({metric}): give max, min or both (finite numbers)")
            cons.append(Constraint(metric, bounds["max"], bounds["min"]))
        return cls(tuple(objs), tuple(cons))
