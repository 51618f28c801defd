"""Accuracy of a candidate from its encoding (``whole-model-accuracy``), for predictor-guided search.

Fitted on candidates an accuracy evaluator has scored (e.g. `tritune.evaluators.SupernetAccuracy`)
and used like a latency predictor: same estimator API, same signed file format, its held-out
error (rank correlation first: a search needs the order) shipped with it. The model is
`WholeModelPredictor`'s -- XGBoost on ``space.encode(candidate)`` -- regressing the accuracy
itself rather than its logarithm, since accuracy is bounded and does not span decades.
"""
from __future__ import annotations

from typing import Any, ClassVar

from .registry import register_predictor
from .whole_model import WholeModelPredictor


@register_predictor
class AccuracyPredictor(WholeModelPredictor):
    """``accuracy`` (whatever unit it was fitted in) of a candidate as ``XGBoost(space.encode(candidate))``.

    Defaults are smaller than the latency model's: accuracy labels cost training or
    supernet evaluations, so a few hundred is typical."""

    kind = "whole-model-accuracy"
    log_target: ClassVar[bool] = False

    def __init__(self, space: Any = None, n_estimators: int = 300, max_depth: int = 3, learning_rate: float = 0.05,
                 subsample: float = 0.8, colsample_bytree: float = 0.5, min_child_weight: float = 2.0,
                 holdout: float = 0.2, refit: bool = True, seed: int = 0, nthread: int = 1, metric: str = "accuracy") -> None:
        super().__init__(space, n_estimators=n_estimators, max_depth=max_depth, learning_rate=learning_rate, subsample=subsample,
                         colsample_bytree=colsample_bytree, min_child_weight=min_child_weight, holdout=holdout, refit=refit,
                         seed=seed, nthread=nthread, metric=metric)
