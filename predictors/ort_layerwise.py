"""Layer-wise latency of whole networks on ONNX Runtime CPU, fitted end to end (``ort-layerwise-latency``).

Summing isolated layer or block latencies misleads on this target (single layers overcount
14-50 % through per-call costs and layout conversions, isolated blocks undercount 6-10 % because
a whole network streams its weights from memory), so nothing here is measured per layer. Instead:

1. the IR is grouped into the kernels the runtime really runs (`tritune.predictors.fusion`:
   fused conv+BN+activation(+residual sum), int8 vs fp32 after ORT's own promotion, Q/DQ and
   layout-change boundaries, float activation islands, squeeze-excite groups);
2. **additive stage**: each kernel type ``t`` costs ``theta_t . phi(kernel)`` with ``phi`` = (1 call,
   MACs, MACs on the 16-channel staircase, input / output elements, weights, MACs of layers whose
   channels are off the 4-grid); a network costs the sum over its kernels plus a constant. The
   ``theta`` are learned from whole-network latencies by non-negative least squares on relative
   error (one linear solve: exactly additive, never a negative cost, fast to predict);
3. **per-model correction**: XGBoost on network-level features (resolution, totals of MACs,
   weight bytes per precision, kernel counts per type, boundary traffic, the additive estimate)
   predicts ``log(measured / additive)``; trained on *out-of-fold* additive estimates so it learns
   the additive model's real errors, not its training residuals.

``fit`` holds out ``holdout`` of the networks (stratified by input resolution) to measure
``error_``, then (``refit``) fits again on everything. Input: candidates with ``space=`` (or a
space given to the constructor), lists of `LayerSpec` (one per network), or a `KernelBatch`.
Candidates of a space with ``layer_codes`` (mobilenet) never become `LayerSpec` objects: their
code rows go straight into the grouping (`KernelBatch.from_codes`, same kernels, ~20x faster).
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import xgboost as xgb
from scipy.optimize import nnls

from ..spaces.candidate import Candidate
from .base import NotFittedError, Predictor
from .fusion import DEFAULT_RULES, KERNEL_FEATURES, KERNEL_TYPES, TYPE_INDEX, FusionRules, KernelBatch
from .io import booster_from_json, booster_to_json, fingerprint_of
from .metrics import score_report
from .registry import register_predictor

FEATURES_ID = "ort-kernels/v2"
#: Kernel feature columns of the additive stage (indices into `KERNEL_FEATURES`).
ADDITIVE_COLUMNS = (0, 1, 2, 3, 4, 5, 6)
_BOUNDARY = [TYPE_INDEX[t] for t in ("q_conv", "dq_conv", "q_elt", "dq_elt")]
_I8 = [i for i, t in enumerate(KERNEL_TYPES) if t.endswith("_i8")]
_F32 = [i for i, t in enumerate(KERNEL_TYPES) if t.endswith("_f32") or t == "add_fused"]
#: Networks grouped per step when predicting (see `batches`).
PREDICT_CHUNK = 1024


def networks_of(X: Any, space: Any = None) -> list:
    """Lists of `LayerSpec` from candidates (needs ``space``) or from lists of layers."""
    X = list(X)
    if X and isinstance(X[0], Candidate):
        if space is None:
            raise ValueError("candidates given without a space: pass space= (or give the predictor one) to expand them to layers")
        return [space.layers(c) for c in X]
    if X and isinstance(X[0], Mapping):
        if space is None:
            raise ValueError("candidate JSON given without a space")
        return [space.layers(Candidate.from_json(c)) for c in X]
    return X


def as_batch(X: Any, rules: FusionRules, space: Any = None) -> KernelBatch:
    """The kernels of ``X``; candidates of a space with ``layer_codes`` skip the `LayerSpec` objects
    (same batch, about 30x cheaper to build)."""
    if isinstance(X, KernelBatch):
        return X
    X = list(X)
    fast = bool(X) and space is not None and callable(getattr(space, "layer_codes", None))
    if fast and isinstance(X[0], Candidate):
        return KernelBatch.from_codes(*space.layer_codes(X), rules)
    if fast and isinstance(X[0], Mapping):
        return KernelBatch.from_codes(*space.layer_codes([Candidate.from_json(c) for c in X]), rules)
    return KernelBatch.from_networks(networks_of(X, space), rules)


def batches(X: Any, rules: FusionRules, space: Any = None, chunk: int | None = None) -> Iterator[KernelBatch]:
    """`as_batch` over ``chunk`` (default `PREDICT_CHUNK`) networks at a time (a `KernelBatch` as it
    is): grouping is memory bound, and small batches keep its arrays in cache (2x faster than one
    batch of 20,000)."""
    if isinstance(X, KernelBatch):
        yield X
        return
    X = list(X)
    chunk = chunk or PREDICT_CHUNK
    for lo in range(0, len(X), chunk):
        yield as_batch(X[lo:lo + chunk], rules, space)


def model_features(batch: KernelBatch, additive: np.ndarray) -> np.ndarray:
    """Network-level features of the correction stage (one row per network)."""
    nt = len(KERNEL_TYPES)
    S = batch.summed((1, 5, 4))  # macs, weights, out elems per type
    macs = S[:, 0::3]
    weights = S[:, 1::3]
    elems = S[:, 2::3]
    counts = batch.counts()
    total_macs = macs[:, :].sum(1)
    i8_macs = macs[:, _I8].sum(1)
    w_bytes = weights[:, _F32].sum(1) * 4 + weights[:, _I8].sum(1)
    boundary_elems = elems[:, _BOUNDARY].sum(1)
    return np.column_stack([
        batch.res, np.log(total_macs + 1), i8_macs / np.maximum(total_macs, 1), np.log(w_bytes + 1),
        weights[:, _I8].sum(1) / 1e6, weights[:, _F32].sum(1) / 1e6, boundary_elems / 1e6, counts[:, _BOUNDARY].sum(1),
        counts.sum(1), np.log(np.maximum(additive, 1e-6)), counts, macs / 1e6,
    ]).astype(np.float64) if nt else None


def stratified_split(strata: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out rows: ``share`` of every stratum (at least one where it has two)."""
    rng = np.random.default_rng(seed)
    test = np.zeros(strata.size, dtype=bool)
    for value in np.unique(strata):
        rows = np.flatnonzero(strata == value)
        k = int(round(share * rows.size))
        if rows.size >= 2:
            k = min(max(k, 1), rows.size - 1)
        test[rng.permutation(rows)[:k]] = True
    return test


@register_predictor
class LayerwiseLatencyPredictor(Predictor):
    """Whole-network latency (ms) on ONNX Runtime CPU as a sum of fused-kernel costs, corrected per model.

    Example::

        pred = LayerwiseLatencyPredictor(space=space).fit(candidates, latency_ms, target=OrtCpuTarget())
        pred.predict(more_candidates)           # or lists of LayerSpec, or a KernelBatch

    ``correction``: the XGBoost per-model stage (``False``: additive only). ``ridge``: a small
    relative ridge on the additive coefficients (0: plain non-negative least squares).
    """

    kind = "ort-layerwise-latency"

    def __init__(self, space: Any = None, rules: FusionRules | Mapping | None = None, correction: bool = True,
                 n_estimators: int = 300, max_depth: int = 3, learning_rate: float = 0.05, subsample: float = 0.8,
                 colsample_bytree: float = 0.8, min_child_weight: float = 3.0, folds: int = 5, ridge: float = 0.0,
                 holdout: float = 0.2, refit: bool = True, seed: int = 0, nthread: int = 1) -> None:
        self.space = space
        self.rules = FusionRules.from_json(rules) if isinstance(rules, Mapping) else (rules or DEFAULT_RULES)
        self.correction = bool(correction)
        self.n_estimators, self.max_depth, self.learning_rate = int(n_estimators), int(max_depth), float(learning_rate)
        self.subsample, self.colsample_bytree, self.min_child_weight = float(subsample), float(colsample_bytree), float(min_child_weight)
        self.folds, self.ridge = int(folds), float(ridge)
        if not 0 < holdout < 1:
            raise ValueError(f"LayerwiseLatencyPredictor.holdout: {holdout} not in (0, 1)")
        self.holdout, self.refit, self.seed, self.nthread = float(holdout), bool(refit), int(seed), int(nthread)
        self.metric = "latency_ms"
        self.target_fingerprint = None
        self.error_ = None
        self.theta_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self.booster_: xgb.Booster | None = None

    # ----- additive stage ------------------------------------------------------------------------
    @staticmethod
    def design(batch: KernelBatch) -> np.ndarray:
        """Additive design matrix: a constant, then per kernel type the summed `ADDITIVE_COLUMNS`."""
        return np.column_stack([np.ones(batch.n_networks), batch.summed(ADDITIVE_COLUMNS)])

    def _solve(self, A: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scale = np.abs(A).max(0)
        scale[scale == 0] = 1.0
        M = A / scale / y[:, None]
        b = np.ones(y.size)
        if self.ridge > 0:
            M = np.vstack([M, math.sqrt(self.ridge) * np.eye(M.shape[1])])
            b = np.concatenate([b, np.zeros(M.shape[1])])
        theta, _ = nnls(M, b, maxiter=50 * M.shape[1])
        return theta, scale

    @staticmethod
    def _additive(A: np.ndarray, theta: np.ndarray, scale: np.ndarray) -> np.ndarray:
        return (A / scale) @ theta

    # ----- correction stage ----------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        return {"objective": "reg:squarederror", "max_depth": self.max_depth, "eta": self.learning_rate, "subsample": self.subsample,
                "colsample_bytree": self.colsample_bytree, "min_child_weight": self.min_child_weight, "nthread": self.nthread,
                "seed": self.seed}

    def _fit_all(self, batch: KernelBatch, y: np.ndarray, groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, xgb.Booster | None]:
        A = self.design(batch)
        theta, scale = self._solve(A, y)
        if groups is not None:
            # measurement groups (models timed together, interleaved) share the machine's state:
            # estimate one level factor per group and learn the kernel costs from level-corrected
            # latencies (factors normalised to a median of 1 over the rows)
            gid = np.unique(groups, return_inverse=True)[1].reshape(-1)
            for _ in range(4):
                lr = np.log(y / np.maximum(self._additive(A, theta, scale), 1e-6))
                level = np.array([np.median(lr[gid == g]) for g in range(gid.max() + 1)])
                level = level - np.median(level[gid])
                y = y / np.exp(level[gid])
                theta, scale = self._solve(A, y)
        booster = None
        if self.correction:
            rng = np.random.default_rng(self.seed + 1)
            fold = rng.permutation(y.size) % max(2, self.folds)
            oof = np.empty(y.size)
            for f in range(max(2, self.folds)):
                te = fold == f
                th, sc = self._solve(A[~te], y[~te])
                oof[te] = self._additive(A[te], th, sc)
            oof = np.maximum(oof, 1e-6)
            F = model_features(batch, oof)
            data = xgb.DMatrix(F, label=np.log(y / oof), nthread=self.nthread)
            booster = xgb.train(self._params(), data, num_boost_round=self.n_estimators)
        return theta, scale, booster

    def _predict_batch(self, batch: KernelBatch, theta: np.ndarray, scale: np.ndarray, booster: xgb.Booster | None) -> np.ndarray:
        add = np.maximum(self._additive(self.design(batch), theta, scale), 1e-6)
        if booster is None:
            return add
        return add * np.exp(booster.inplace_predict(model_features(batch, add)))

    # ----- estimator API -------------------------------------------------------------------------
    def fit(self, X: Any, y: Any, space: Any = None, target: Any = None, strata: Any = None, groups: Any = None) -> "LayerwiseLatencyPredictor":
        """Learn from networks ``X`` (candidates, lists of layers or a `KernelBatch`) and their
        measured latencies ``y`` (ms). ``strata``: labels for the held-out split (default: input
        resolution). ``groups``: measurement-group labels (profiling rows' ``group``); when given,
        the kernel costs are learned from latencies corrected for each group's level (machine
        state drifts between groups on a shared machine); ``error_`` is still measured against
        the raw held-out latencies."""
        space = space if space is not None else self.space
        batch = as_batch(X, self.rules, space)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if y.size != batch.n_networks:
            raise ValueError(f"LayerwiseLatencyPredictor.fit: {batch.n_networks} networks but {y.size} latencies")
        if y.size < 20:
            raise ValueError("LayerwiseLatencyPredictor.fit: need at least 20 measured networks")
        if not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise ValueError("LayerwiseLatencyPredictor.fit: latencies must be finite and positive")
        strata = batch.res if strata is None else np.asarray(strata)
        test = stratified_split(strata, self.holdout, self.seed)
        sub = _subset(batch, ~test)
        groups = None if groups is None else np.asarray(groups).reshape(-1)
        if groups is not None and groups.size != y.size:
            raise ValueError(f"LayerwiseLatencyPredictor.fit: {groups.size} group labels for {y.size} networks")
        theta, scale, booster = self._fit_all(sub, y[~test], None if groups is None else groups[~test])
        held = self._predict_batch(_subset(batch, test), theta, scale, booster)
        self.error_ = {**score_report(y[test], held), "on": f"{int(test.sum())} held-out networks ({self.holdout:.0%}, stratified by resolution), whole-network latency"}
        if self.refit:
            theta, scale, booster = self._fit_all(batch, y, groups)
        self.theta_, self.scale_, self.booster_ = theta, scale, booster
        self.target_fingerprint = fingerprint_of(target)
        if space is not None:
            self.space = space
        return self

    def _check(self) -> None:
        if self.theta_ is None:
            raise NotFittedError("LayerwiseLatencyPredictor: call fit() before predict()")

    def predict(self, X: Any, space: Any = None) -> np.ndarray:
        """Latency (ms) per network of ``X`` (candidates, lists of `LayerSpec`, or a `KernelBatch`)."""
        self._check()
        space = space if space is not None else self.space
        out = [self._predict_batch(b, self.theta_, self.scale_, self.booster_) for b in batches(X, self.rules, space) if b.n_networks]
        return np.concatenate(out) if out else np.zeros(0)

    def predict_additive(self, X: Any, space: Any = None) -> np.ndarray:
        """The additive stage alone (sum of kernel costs), ms per network."""
        self._check()
        space = space if space is not None else self.space
        out = [np.maximum(self._additive(self.design(b), self.theta_, self.scale_), 1e-6) for b in batches(X, self.rules, space)]
        return np.concatenate(out) if out else np.zeros(0)

    def kernel_costs(self, layers: Sequence[Any]) -> list[tuple[str, float]]:
        """``(kernel type, additive cost in ms)`` of each kernel of one network, in execution order."""
        self._check()
        batch = KernelBatch.from_networks([layers], self.rules)
        cols = np.asarray(ADDITIVE_COLUMNS)
        nc = cols.size
        out = []
        for i in np.argsort(batch.anchor, kind="stable"):
            t = int(batch.type[i])
            j = 1 + t * nc + np.arange(nc)
            out.append((KERNEL_TYPES[t], float((batch.features[i, cols] / self.scale_[j]) @ self.theta_[j])))
        return out

    # ----- persistence ---------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        self._check()
        return {
            "features": FEATURES_ID,
            "kernel_types": list(KERNEL_TYPES),
            "kernel_features": [KERNEL_FEATURES[i] for i in ADDITIVE_COLUMNS],
            "rules": self.rules.to_json(),
            "options": {
                "correction": self.correction, "n_estimators": self.n_estimators, "max_depth": self.max_depth,
                "learning_rate": self.learning_rate, "subsample": self.subsample, "colsample_bytree": self.colsample_bytree,
                "min_child_weight": self.min_child_weight, "folds": self.folds, "ridge": self.ridge, "holdout": self.holdout,
                "refit": self.refit, "seed": self.seed, "nthread": self.nthread,
            },
            "space": None if self.space is None else {"name": self.space.name, "config": self.space.config()},
            "theta": self.theta_.tolist(),
            "scale": self.scale_.tolist(),
            "booster": None if self.booster_ is None else booster_to_json(self.booster_),
        }

    @classmethod
    def from_state(cls, params: Mapping[str, Any]) -> "LayerwiseLatencyPredictor":
        if params.get("features") != FEATURES_ID or list(params.get("kernel_types", [])) != list(KERNEL_TYPES):
            raise ValueError(f"LayerwiseLatencyPredictor: file uses features {params.get('features')!r} / other kernel types; this tritune computes {FEATURES_ID!r}")
        obj = cls(rules=params["rules"], **params["options"])
        if params.get("space"):
            from ..spaces.registry import create

            obj.space = create(params["space"]["name"], **params["space"]["config"])
        obj.theta_ = np.asarray(params["theta"], dtype=np.float64)
        obj.scale_ = np.asarray(params["scale"], dtype=np.float64)
        if params.get("booster"):
            booster = booster_from_json(params["booster"], obj.nthread)
            obj.booster_ = booster
        return obj

    def __repr__(self) -> str:
        return f"LayerwiseLatencyPredictor(correction={self.correction}, {'fitted' if self.fitted else 'not fitted'})"


def _subset(batch: KernelBatch, mask: np.ndarray) -> KernelBatch:
    """The networks of ``batch`` where ``mask`` is true (renumbered)."""
    keep = np.flatnonzero(mask)
    new_id = np.full(batch.n_networks, -1, dtype=np.int64)
    new_id[keep] = np.arange(keep.size)
    rows = mask[batch.owner]
    return KernelBatch(batch.type[rows], new_id[batch.owner[rows]], batch.anchor[rows], batch.features[rows], int(keep.size),
                       np.zeros(0, dtype=np.int64), np.zeros(keep.size, dtype=np.int64), batch.res[keep])
