"""Evaluators backed by tables and targets: benchmark accuracy and target latency."""
from __future__ import annotations

import inspect

import math
import os
import time
from typing import Any

import numpy as np

from ..spaces.candidate import Candidate
from ..targets.base import Target, check_target
from ..targets.tables import DATASETS, NB201Table, accuracy_column, nb201_index
from .base import Evaluator, Metrics


class TabularAccuracy(Evaluator):
    """NAS-Bench-201 test accuracy (%) read from a table: a costly query (it stands in for training).

    ``dataset`` is one of ``cifar10``, ``cifar100``, ``imagenet16_120`` (column
    ``nats_<dataset>_test_acc``); ``path`` a table file (default: the table shipped with tritune);
    ``metric`` the name of the produced metric. A cell without a value raises ValueError.
    ``simulated_cost_s`` makes each query sleep that long, to stand in for training time when
    exercising schedulers, executors and interruption (default 0: no delay).
    """

    cheap = False
    measures_accuracy = True

    def __init__(
        self, dataset: str = "cifar10", path: str | os.PathLike | None = None, metric: str = "accuracy",
        simulated_cost_s: float = 0.0,
    ) -> None:
        if dataset not in DATASETS:
            raise ValueError(f"nb201-accuracy dataset: {dataset!r} not allowed; allowed: {', '.join(DATASETS)}")
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"nb201-accuracy metric: {metric!r} must be a non-empty name")
        try:
            cost = float(simulated_cost_s)
        except (TypeError, ValueError):
            cost = math.nan
        if not (0.0 <= cost <= 60.0):
            raise ValueError(f"nb201-accuracy simulated_cost_s: {simulated_cost_s!r} not allowed; expected seconds from 0 to 60")
        self.simulated_cost_s = cost
        self.dataset, self.metric = dataset, metric
        self.metrics = (metric,)
        self.table = NB201Table(path)
        self.column = accuracy_column(dataset)
        if self.column not in self.table.accuracy_columns:
            raise ValueError(
                f"nb201-accuracy: table {self.table.source} has no column {self.column!r} for dataset {dataset}; "
                f"accuracy columns: {', '.join(self.table.accuracy_columns) or '(none)'}"
            )
        self._values = self.table.column(self.column)

    def _evaluate(self, candidates: list[Candidate]) -> list[Metrics]:
        idx = np.array([nb201_index(c, "nb201-accuracy") for c in candidates], dtype=np.int64)
        acc = self._values[idx]
        missing = np.flatnonzero(np.isnan(acc))
        if missing.size:
            k = int(missing[0])
            raise ValueError(f"nb201-accuracy: no {self.column} value for nb201_index {int(idx[k])} in {self.table.file_name}")
        if self.simulated_cost_s > 0.0:
            time.sleep(self.simulated_cost_s * len(candidates))
        return [{self.metric: float(a)} for a in acc]

    def __repr__(self) -> str:
        return f"TabularAccuracy(dataset={self.dataset!r}, metric={self.metric!r}, source={self.table.source!r})"


class TargetLatency(Evaluator):
    """Latency (ms) from any `Target`; cheap by default (tables and predictors cost nothing).

    A target that runs models on a device may be declared costly with ``cheap=False``.
    """

    def __init__(self, target: Target, metric: str = "latency", cheap: bool = True) -> None:
        check_target(target, "latency evaluator target")
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"latency metric: {metric!r} must be a non-empty name")
        self.target, self.metric, self.cheap = target, metric, bool(cheap)
        self.metrics = (metric,)
        self.space: Any = None

    def bind_space(self, space: Any) -> None:
        # Plug-in targets written against the one-argument `latency` keep working.
        takes_space = "space" in inspect.signature(self.target.latency).parameters
        self.space = space if takes_space else None

    def _evaluate(self, candidates: list[Candidate]) -> list[Metrics]:
        spaces = sorted({c.space for c in candidates if isinstance(c, Candidate)})
        for space in spaces:
            if not self.target.supports(space):
                raise ValueError(f"latency: target {self.target.name!r} does not support space {space!r}")
        extra = {} if self.space is None else {"space": self.space}
        values = np.asarray(self.target.latency(candidates, **extra), dtype=np.float64).reshape(-1)
        if values.shape != (len(candidates),):
            raise RuntimeError(f"latency: target {self.target.name!r} returned {values.size} values for {len(candidates)} candidates")
        return [{self.metric: float(v)} for v in values]

    def fingerprint(self) -> dict[str, Any]:
        return self.target.fingerprint()

    def __repr__(self) -> str:
        return f"TargetLatency(target={self.target!r}, metric={self.metric!r})"
