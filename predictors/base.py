"""`Predictor`: the estimator contract every tritune predictor follows.

The shape is scikit-learn's -- ``fit(X, y)`` returns the predictor, ``predict(X)`` is batched and
returns a float64 array, ``score(X, y)`` -- with two additions a search engine needs:

* a predictor knows *what* it predicts (``metric``, e.g. ``"latency_ms"``) and *for which
  target* (``target_fingerprint``), and refuses to be loaded for another target;
* a fitted predictor carries ``error_``, its `score_report` on data it was not fitted on, so its
  reliability travels with it (into saved files and into reports).

Saving goes through `tritune.predictors.io` (one signed JSON document, never a pickle).
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Mapping, TypeVar

import numpy as np

from . import io
from .metrics import score_report

PredictorT = TypeVar("PredictorT", bound="Predictor")


class NotFittedError(ValueError):
    """``predict`` (or ``save``) before ``fit``; a ValueError like scikit-learn's."""


class Predictor(ABC):
    """Base of all predictors. Subclasses set ``kind``, implement `fit`, `predict`, `to_state`
    and `from_state`, and register with `tritune.predictors.registry.register_predictor`."""

    #: Registry name, written into saved files.
    kind: ClassVar[str] = ""
    #: What `predict` returns, e.g. ``"latency_ms"`` or ``"energy_mj"``.
    metric: str = ""
    #: Fingerprint of the target the predictor imitates (``Target.fingerprint()``), or None.
    target_fingerprint: dict[str, Any] | None = None
    #: `score_report` on held-out data, set by `fit` (None before).
    error_: dict[str, Any] | None = None
    #: True when the file it was loaded from carried a valid HMAC (`tritune.predictors.io`);
    #: an unauthenticated file's ``error_`` is only what the file claims.
    authenticated_: bool = False

    # ----- estimator API ----------------------------------------------------------------------
    @abstractmethod
    def fit(self: PredictorT, X: Any, y: Any, **fit_params: Any) -> PredictorT:
        """Learn from samples ``X`` with measured values ``y``; sets ``error_``; returns self."""

    @abstractmethod
    def predict(self, X: Any) -> np.ndarray:
        """One float64 prediction per sample of ``X`` (vectorised; shape ``(len(X),)``)."""

    def score(self, X: Any, y: Any) -> dict[str, float]:
        """`score_report` of the predictions for ``X`` against the measured ``y``."""
        return score_report(y, self.predict(X))

    @property
    def fitted(self) -> bool:
        return self.error_ is not None

    def _check_fitted(self, what: str = "predict") -> None:
        if not self.fitted:
            raise NotFittedError(f"{type(self).__name__}: call fit() before {what}()")

    # ----- persistence ------------------------------------------------------------------------
    @abstractmethod
    def to_state(self) -> dict[str, Any]:
        """Everything needed to rebuild the fitted predictor, as JSON-able values."""

    @classmethod
    @abstractmethod
    def from_state(cls: type[PredictorT], params: Mapping[str, Any]) -> PredictorT:
        """Rebuild from `to_state` output (``metric``, fingerprint and error are set by the caller)."""

    def saved_state(self) -> dict[str, Any]:
        """`to_state` of a fitted predictor (what `io.save` writes under ``params``)."""
        self._check_fitted("save")
        return self.to_state()

    @classmethod
    def from_document(cls: type[PredictorT], document: Mapping[str, Any]) -> PredictorT:
        """Rebuild from a validated document (see `tritune.predictors.io`)."""
        obj = cls.from_state(document["params"])
        obj.metric = document["metric"]
        obj.target_fingerprint = document["target_fingerprint"]
        obj.error_ = document["error"]
        return obj

    def save(self, path: str | os.PathLike) -> Path:
        """Write a signed JSON document (see `tritune.predictors.io`); returns the path."""
        return io.save(self, path)

    @classmethod
    def load(cls: type[PredictorT], path: str | os.PathLike, expected_fingerprint: Any = None) -> PredictorT:
        """Read a file saved by this class (ValueError for another kind, see `io.check_document`)."""
        obj = io.load(path, expected_fingerprint)
        if not isinstance(obj, cls):
            raise io.PredictorFileError(f"predictor file {path}: holds a {obj.kind!r} predictor, not a {cls.kind!r} one")
        return obj

    def __repr__(self) -> str:
        state = "fitted" if self.fitted else "not fitted"
        return f"{type(self).__name__}(metric={self.metric!r}, {state})"
