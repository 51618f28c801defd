"""`PredictedMetric` (``predicted-accuracy``): a saved predictor as a cheap evaluator.

An `AccuracyPredictor` fitted on candidates a costly evaluator scored answers for the rest of a
search at no cost (predictor-guided search); the predictor file carries the space it encodes and
its measured held-out error.
"""
from __future__ import annotations

import os

import numpy as np

from ..spaces.candidate import Candidate
from .base import Evaluator, Metrics


class PredictedMetric(Evaluator):
    """``metric`` of candidates from a saved predictor file (``path``); cheap by default."""

    def __init__(self, path: str | os.PathLike | None = None, metric: str = "accuracy", cheap: bool = True) -> None:
        from ..predictors import load

        if path is None:
            raise ValueError("predicted-accuracy: option 'path' (a saved predictor file) is required")
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"predicted-accuracy.metric: {metric!r} must be a non-empty name")
        self.predictor = load(path)
        if getattr(self.predictor, "space", None) is None:
            raise ValueError(f"predicted-accuracy: predictor {path} stores no space to encode candidates with")
        self.metric, self.metrics, self.cheap = metric, (metric,), bool(cheap)

    def _evaluate(self, candidates: list[Candidate]) -> list[Metrics]:
        space = self.predictor.space
        for c in candidates:
            if c.space != space.name:
                raise ValueError(f"predicted-accuracy: candidate of space {c.space!r}; the predictor encodes {space.name!r}")
        values = np.asarray(self.predictor.predict(candidates), dtype=np.float64)
        return [{self.metric: float(v)} for v in values]
