"""Whole-model latency from the candidate encoding (``whole-model-latency``): XGBoost on ``space.encode``.

The simplest learned predictor: no IR, no kernels, just the space's fixed-length encoding of a
candidate (ordinal genes scaled to [0, 1], categorical one-hot, per-slot compression as pattern
family one-hot + sparsity + bit-widths) and one gradient-boosted regressor of ``log(latency)``.
It knows nothing about which genes are inactive or which layers fuse, so it needs more data than
`LayerwiseLatencyPredictor`; it is the baseline that a structured predictor has to beat.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import numpy as np
import xgboost as xgb

from ..spaces.candidate import Candidate
from .base import NotFittedError, Predictor
from .io import booster_from_json, booster_to_json, fingerprint_of
from .metrics import score_report
from .ort_layerwise import stratified_split
from .registry import register_predictor


def encode(space: Any, X: Any) -> np.ndarray:
    """Encodings ``(n, space.encoding_length)`` of candidates (or candidate JSON), or an array as is."""
    if isinstance(X, np.ndarray):
        return np.asarray(X, dtype=np.float64)
    cands = [c if isinstance(c, Candidate) else Candidate.from_json(c) for c in X]
    if space is None:
        raise ValueError("WholeModelPredictor: a space is needed to encode candidates (pass space=)")
    return space.encode_batch(cands) if cands else np.zeros((0, space.encoding_length))


@register_predictor
class WholeModelPredictor(Predictor):
    """``latency_ms`` of a candidate as ``exp(XGBoost(space.encode(candidate)))``.

    ``holdout`` of the data (stratified by ``strata``, default the encoding's resolution column
    when there is one, else random) measures ``error_``; with ``refit`` the final model then
    learns from every row."""

    kind = "whole-model-latency"
    #: Regress ``log(y)`` (latency spans decades and is positive); subclasses for bounded
    #: metrics such as accuracy regress ``y`` itself.
    log_target: ClassVar[bool] = True

    def __init__(self, space: Any = None, n_estimators: int = 600, max_depth: int = 4, learning_rate: float = 0.05,
                 subsample: float = 0.8, colsample_bytree: float = 0.5, min_child_weight: float = 2.0,
                 holdout: float = 0.2, refit: bool = True, seed: int = 0, nthread: int = 1, metric: str = "latency_ms") -> None:
        if not 0 < holdout < 1:
            raise ValueError(f"WholeModelPredictor.holdout: {holdout} not in (0, 1)")
        self.space = space
        self.n_estimators, self.max_depth, self.learning_rate = int(n_estimators), int(max_depth), float(learning_rate)
        self.subsample, self.colsample_bytree, self.min_child_weight = float(subsample), float(colsample_bytree), float(min_child_weight)
        self.holdout, self.refit, self.seed, self.nthread = float(holdout), bool(refit), int(seed), int(nthread)
        self.metric = metric
        self.target_fingerprint = None
        self.error_ = None
        self.booster_: xgb.Booster | None = None
        self.n_features_: int | None = None

    def _params(self) -> dict[str, Any]:
        return {"objective": "reg:squarederror", "max_depth": self.max_depth, "eta": self.learning_rate, "subsample": self.subsample,
                "colsample_bytree": self.colsample_bytree, "min_child_weight": self.min_child_weight, "nthread": self.nthread,
                "seed": self.seed}

    def _train(self, E: np.ndarray, y: np.ndarray) -> xgb.Booster:
        label = np.log(y) if self.log_target else y
        return xgb.train(self._params(), xgb.DMatrix(E, label=label, nthread=self.nthread), num_boost_round=self.n_estimators)

    def _output(self, raw: np.ndarray) -> np.ndarray:
        return np.exp(raw) if self.log_target else raw

    def fit(self, X: Any, y: Any, space: Any = None, target: Any = None, strata: Any = None) -> "WholeModelPredictor":
        """Learn from candidates ``X`` (or their encodings) and measured values ``y`` (> 0)."""
        space = space if space is not None else self.space
        E = encode(space, X)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if E.shape[0] != y.size:
            raise ValueError(f"WholeModelPredictor.fit: {E.shape[0]} candidates but {y.size} values")
        if y.size < 20:
            raise ValueError("WholeModelPredictor.fit: need at least 20 measured candidates")
        if not np.all(np.isfinite(y)) or (self.log_target and np.any(y <= 0)):
            raise ValueError(f"{type(self).__name__}.fit: values must be finite" + (" and positive (the regressor works in logs)" if self.log_target else ""))
        if strata is None:
            strata = E[:, 0] if E.shape[1] else np.zeros(y.size)  # the first gene of mobilenet / ordinal spaces: resolution
        test = stratified_split(np.asarray(strata), self.holdout, self.seed)
        booster = self._train(E[~test], y[~test])
        held = self._output(booster.inplace_predict(E[test]))
        self.error_ = {**score_report(y[test], held), "on": f"{int(test.sum())} held-out candidates ({self.holdout:.0%})"}
        self.booster_ = self._train(E, y) if self.refit else booster
        self.n_features_ = int(E.shape[1])
        self.target_fingerprint = fingerprint_of(target)
        if space is not None:
            self.space = space
        return self

    def predict(self, X: Any, space: Any = None) -> np.ndarray:
        if self.booster_ is None:
            raise NotFittedError("WholeModelPredictor: call fit() before predict()")
        E = encode(space if space is not None else self.space, X)
        if E.shape[0] == 0:
            return np.zeros(0)
        if E.shape[1] != self.n_features_:
            raise ValueError(f"WholeModelPredictor: encodings have {E.shape[1]} columns, the model was fitted on {self.n_features_}")
        return self._output(self.booster_.inplace_predict(E)).astype(np.float64)

    def to_state(self) -> dict[str, Any]:
        if self.booster_ is None:
            raise NotFittedError("WholeModelPredictor: call fit() before saving")
        return {
            "features": "space.encode",
            "n_features": self.n_features_,
            "options": {"n_estimators": self.n_estimators, "max_depth": self.max_depth, "learning_rate": self.learning_rate,
                        "subsample": self.subsample, "colsample_bytree": self.colsample_bytree, "min_child_weight": self.min_child_weight,
                        "holdout": self.holdout, "refit": self.refit, "seed": self.seed, "nthread": self.nthread},
            "space": None if self.space is None else {"name": self.space.name, "config": self.space.config()},
            "booster": booster_to_json(self.booster_),
        }

    @classmethod
    def from_state(cls, params: Mapping[str, Any]) -> "WholeModelPredictor":
        obj = cls(**params["options"])
        if params.get("space"):
            from ..spaces.registry import create

            obj.space = create(params["space"]["name"], **params["space"]["config"])
            if obj.space.encoding_length != params["n_features"]:
                raise ValueError(f"WholeModelPredictor: the stored space encodes {obj.space.encoding_length} features, the model expects {params['n_features']}")
        obj.n_features_ = int(params["n_features"])
        booster = booster_from_json(params["booster"], obj.nthread)
        obj.booster_ = booster
        return obj
