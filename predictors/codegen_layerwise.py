"""Latency of networks on `codegen-cpu` from a table of measured plan steps (``codegen-layerwise-latency``).

The generated kernels are per layer, so a network's time is close to the sum of its steps' times
(`tritune.predictors.codegen_units`: a layer with the conversions, residual sum or pool its step
also does, a fused block, an element-wise step). A profile (``tritune profile --target
codegen-cpu``) times every step of every profiled network *inside* whole inferences (C timestamps
between the chain's steps, caches as the rest of the network leaves them) and times the
networks as wholes; this predictor learns from both:

1. **step costs**: per step type (13: conv1x1 / conv3x3 / depthwise / linear in fp32 and int8,
   large dense matrix-vector products, fused float blocks, sums, pools, SE scales), a linear model
   over the step's work (`WORK`: kept and dense multiply-adds per sparsity family, vector-padded
   work, elements read and written, weight bytes, 4-bit widening, gather overhead, conversions),
   fitted by non-negative least squares on the measured steps (each step weighted by its time,
   relative error inside: a few large steps dominate a network, the many tiny ones must not be
   badly wrong either). Steps of exactly a measured configuration are looked up in the table of
   measured medians instead (``table=True``);
2. **correction for fusion and chaining**: a network is not exactly the sum of its steps (the
   first steps meet cold caches, a fused block hides part of its layers' traffic, timing
   overhead), so XGBoost on network-level features (resolution, the additive estimate, its
   split over step types, step counts, integer share) predicts ``log(measured / additive)``,
   trained on out-of-fold additive estimates so it learns the additive model's real errors. It
   is kept only when, on the same folds, it lowers the mean absolute log error of networks it
   was not trained on (``correction_cv_``); otherwise the predictor is the additive sum.

Predicting goes straight from candidates (`rows_from_candidates`), one vectorised pass per chunk:
no layer objects, no compiler.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import xgboost as xgb
from scipy.optimize import nnls

from ..spaces.candidate import Candidate
from .base import NotFittedError, Predictor
from .codegen_units import UNIT_TYPES, WORK, LayerRows, UnitBatch, rows_from_candidates, rows_from_layers, segment_sums, units
from .io import booster_from_json, booster_to_json, fingerprint_of
from .metrics import score_report
from .registry import register_predictor

FEATURES_ID = "codegen-steps/v1"
#: Networks per vectorised step when predicting.
PREDICT_CHUNK = 2048
_NT = len(UNIT_TYPES)


def _per_network(b: UnitBatch, values: np.ndarray) -> np.ndarray:
    """Column sums of ``values`` (one row per unit) per network (units come network by network)."""
    starts = np.flatnonzero(np.r_[True, b.net[1:] != b.net[:-1]]) if b.net.size else np.zeros(0, dtype=np.int64)
    if starts.size == b.n_networks and (b.net.size == 0 or b.net[0] == 0) and bool(np.all(np.diff(b.net) >= 0)):
        return segment_sums(values, starts)
    return np.column_stack([np.bincount(b.net, weights=values[:, j], minlength=b.n_networks) for j in range(values.shape[1])])


def network_features(b: UnitBatch, unit_pred: np.ndarray, additive: np.ndarray) -> np.ndarray:
    """Per network: resolution, log additive estimate, the share of each step type in it, step
    counts per type, integer network, log totals of kept work, elements and weight bytes."""
    n = b.n_networks
    flat = b.net * _NT + b.type
    share = np.bincount(flat, weights=unit_pred, minlength=n * _NT).reshape(n, _NT) / np.maximum(additive, 1e-9)[:, None]
    counts = np.bincount(flat, minlength=n * _NT).reshape(n, _NT)
    tot = _per_network(b, b.W[:, [1, 2, 3, 4, 5, 6, 14, 15, 16]])
    net_int8 = np.bincount(b.net, weights=b.context[:, 0], minlength=n) > 0
    return np.column_stack([b.res, np.log(np.maximum(additive, 1e-9)), share, counts, net_int8, np.log1p(tot[:, :6].sum(1)),
                            np.log1p(tot[:, 6]), np.log1p(tot[:, 7]), np.log1p(tot[:, 8])])


def step_times(b: UnitBatch, steps: Sequence[Mapping[str, float]]) -> np.ndarray:
    """Measured ms of each unit of a named batch (NaN where no step matched): a network's steps
    are summed per unit (``X.quant`` / ``X.fakequant`` conversions into unit ``X``, ``input.*``
    into the network's first unit)."""
    out = np.full(b.net.size, np.nan)
    first: dict[int, int] = {}
    index: dict[tuple[int, str], int] = {}
    for u, (net, name) in enumerate(zip(b.net.tolist(), b.names)):
        for member in (b.members[u] if b.members is not None else []):  # a pool or sum folded into the step: its conversions too
            index[(net, member)] = u
        index[(net, name)] = u
        first.setdefault(net, u)
    for net, measured in enumerate(steps):
        for name, ms in measured.items():
            base = name
            if name.startswith("input."):
                u = first.get(net)
            else:
                if name.endswith(".quant") or name.endswith(".fakequant"):
                    base = name.rsplit(".", 1)[0]
                u = index.get((net, base))
            if u is None:
                continue
            out[u] = ms if np.isnan(out[u]) else out[u] + ms
    return out


@register_predictor
class CodegenLatencyPredictor(Predictor):
    """codegen-cpu latency = table / linear step costs summed + a per-network XGBoost correction.

        pred = CodegenLatencyPredictor(space=space).fit(candidates, latency_ms, steps=step_ms, target=CodegenCpuTarget())

    ``steps``: per candidate a mapping step name -> ms inside whole inferences (the profile's
    ``steps``). ``vector_width``, ``threads``, ``fuse_min_bytes``: the target's settings (which
    steps its planner makes)."""

    kind = "codegen-layerwise-latency"

    def __init__(self, space: Any = None, vector_width: int = 16, threads: int = 1, fuse_min_bytes: int | None = 1 << 20,
                 correction: bool = True, table: bool = True, holdout: float = 0.2, refit: bool = True, n_estimators: int = 300,
                 max_depth: int = 4, learning_rate: float = 0.05, folds: int = 5, seed: int = 0, nthread: int = 1) -> None:
        self.space = space
        self.vector_width, self.threads, self.fuse_min_bytes = int(vector_width), int(threads), fuse_min_bytes
        self.correction, self.table, self.holdout, self.refit = bool(correction), bool(table), float(holdout), bool(refit)
        self.n_estimators, self.max_depth, self.learning_rate = int(n_estimators), int(max_depth), float(learning_rate)
        self.folds, self.seed, self.nthread = int(folds), int(seed), int(nthread)
        self.metric = "latency_ms"
        self.theta_: np.ndarray | None = None  # [types, WORK]
        self.table_keys_: np.ndarray | None = None
        self.table_ms_: np.ndarray | None = None
        self.booster_: xgb.Booster | None = None
        #: mean |log error| out of fold, additive vs corrected, when a correction was tried
        self.correction_cv_: dict[str, float] | None = None

    # ----- units ------------------------------------------------------------------------------------
    def _rows(self, X: Any, space: Any = None) -> LayerRows:
        space = space if space is not None else self.space
        X = list(X)
        if X and isinstance(X[0], Mapping):
            X = [Candidate.from_json(c) for c in X]
        if X and isinstance(X[0], Candidate):
            if space is None:
                raise ValueError("candidates given without a space: pass space= (or give the predictor one)")
            return rows_from_candidates(space, X)
        return rows_from_layers(X)

    def unit_batch(self, X: Any, space: Any = None, named: bool = False) -> UnitBatch:
        """The units of networks ``X`` (candidates or lists of `LayerSpec`); ``named``: with step names (slow path)."""
        space = space if space is not None else self.space
        if named:
            X = list(X)
            nets = [space.layers(c) if isinstance(c, Candidate) else c for c in X]
            res = [int(c["resolution"]) if isinstance(c, Candidate) else int(c[0].in_h) for c in X]
            return units(rows_from_layers(nets, res), self.vector_width, self.threads, self.fuse_min_bytes)
        return units(self._rows(X, space), self.vector_width, self.threads, self.fuse_min_bytes)

    # ----- fitting ----------------------------------------------------------------------------------
    def _fit_theta(self, W: np.ndarray, types: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per step type, non-negative least squares of the step times on their work, each step's
        relative error weighted by the square root of its time."""
        theta = np.zeros((_NT, W.shape[1]))
        for t in range(_NT):
            m = (types == t) & np.isfinite(y) & (y > 0)
            if not m.any():
                continue
            A, b = W[m], y[m]
            scale = np.maximum(A.max(axis=0), 1e-12)
            w = 1.0 / np.sqrt(b * max(float(np.median(b)), 1e-9))
            coef, _ = nnls((A / scale) * w[:, None], b * w, maxiter=50 * A.shape[1])
            theta[t] = coef / scale
        return theta

    @staticmethod
    def _unit_pred(b: UnitBatch, theta: np.ndarray, table_keys: np.ndarray | None = None, table_ms: np.ndarray | None = None) -> np.ndarray:
        pred = np.maximum(np.einsum("ij,ij->i", b.W, theta[b.type]), 1e-6)
        if table_keys is not None and table_keys.size:
            pos = np.minimum(np.searchsorted(table_keys, b.key), table_keys.size - 1)
            hit = table_keys[pos] == b.key
            pred = np.where(hit, table_ms[pos], pred)
        return pred

    @staticmethod
    def _table(keys: np.ndarray, ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ok = np.isfinite(ms) & (ms > 0)
        keys, ms = keys[ok], ms[ok]
        order = np.argsort(keys, kind="stable")
        keys, ms = keys[order], ms[order]
        uniq, start = np.unique(keys, return_index=True)
        med = np.array([np.median(ms[a:b]) for a, b in zip(start, np.r_[start[1:], keys.size])]) if uniq.size else np.zeros(0)
        return uniq, med

    @staticmethod
    def _networks(b: UnitBatch, pred: np.ndarray) -> np.ndarray:
        return np.bincount(b.net, weights=pred, minlength=b.n_networks)

    def _fit_all(self, b: UnitBatch, ms: np.ndarray, y: np.ndarray):
        theta = self._fit_theta(b.W, b.type, ms)
        tk, tm = self._table(b.key, ms) if self.table else (None, None)
        booster = None
        if self.correction and b.n_networks >= 2 * self.folds:
            # out-of-fold additive estimates: the correction learns the errors of networks the steps were not fitted on
            rng = np.random.default_rng(self.seed)
            fold = rng.permutation(b.n_networks) % self.folds
            oof = np.zeros(b.n_networks)
            unit_oof = np.zeros(b.net.size)
            for k in range(self.folds):
                train_net = fold != k
                tu = train_net[b.net]
                th = self._fit_theta(b.W[tu], b.type[tu], ms[tu])
                ftk, ftm = self._table(b.key[tu], ms[tu]) if self.table else (None, None)
                pred = self._unit_pred(b, th, ftk, ftm)
                unit_oof[~tu] = pred[~tu]
                oof[~train_net] = self._networks(b, pred)[~train_net]
            F = network_features(b, unit_oof, oof)
            label = np.log(y / np.maximum(oof, 1e-9))
            # kept only where it helps: the same folds, each network corrected by a booster that never saw it
            cv = np.zeros(b.n_networks)
            for k in range(self.folds):
                held = fold == k
                fold_booster = xgb.train(self._params(), xgb.DMatrix(F[~held], label=label[~held]), num_boost_round=self.n_estimators)
                cv[held] = fold_booster.inplace_predict(F[held])
            self.correction_cv_ = {"additive": float(np.mean(np.abs(label))), "corrected": float(np.mean(np.abs(label - cv)))}
            if self.correction_cv_["corrected"] < self.correction_cv_["additive"]:
                booster = xgb.train(self._params(), xgb.DMatrix(F, label=label), num_boost_round=self.n_estimators)
        return theta, tk, tm, booster

    def _params(self) -> dict[str, Any]:
        return {"max_depth": self.max_depth, "eta": self.learning_rate, "subsample": 0.8, "colsample_bytree": 0.8, "min_child_weight": 2,
                "objective": "reg:squarederror", "nthread": self.nthread, "seed": self.seed, "tree_method": "hist"}

    def _predict_batch(self, b: UnitBatch, theta, tk, tm, booster) -> np.ndarray:
        pred = self._unit_pred(b, theta, tk, tm)
        add = np.maximum(self._networks(b, pred), 1e-6)
        if booster is None:
            return add
        return add * np.exp(booster.inplace_predict(network_features(b, pred, add)))

    def fit(self, X: Any, y: Any, steps: Sequence[Mapping[str, float]] | None = None, space: Any = None, target: Any = None,
            strata: Any = None) -> "CodegenLatencyPredictor":
        """Fit on networks ``X`` (candidates or lists of `LayerSpec`) with whole-network latencies
        ``y`` and, per network, the measured ms of its steps (``steps``, required). Holds out
        ``holdout`` of the networks (stratified by ``strata``, default the input resolution) to
        measure ``error_``, then fits again on everything (``refit``)."""
        from .ort_layerwise import stratified_split

        space = space if space is not None else self.space
        X = [Candidate.from_json(c) if isinstance(c, Mapping) else c for c in X]
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if steps is None or len(steps) != len(X) or len(y) != len(X):
            raise ValueError("fit: X, y and steps (measured step times per network) must have one entry per network")
        if len(X) < 10:
            raise ValueError(f"fit: {len(X)} networks; at least 10 are needed")
        b = self.unit_batch(X, space, named=True)
        ms = step_times(b, steps)
        self.matched_ = float(np.isfinite(ms).mean())
        strata = b.res if strata is None else np.asarray(strata)
        test = stratified_split(strata, self.holdout, self.seed) if self.holdout > 0 else np.zeros(len(X), dtype=bool)
        tu = ~test[b.net]
        theta, tk, tm, booster = self._fit_all(_subset(b, tu), ms[tu], y[~test])
        if test.any():
            self.error_ = score_report(y[test], self._predict_batch(_subset(b, ~tu), theta, tk, tm, booster))
        else:
            self.error_ = score_report(y, self._predict_batch(b, theta, tk, tm, booster))
        if self.refit or not test.any():
            theta, tk, tm, booster = self._fit_all(b, ms, y)
        self.theta_, self.table_keys_, self.table_ms_, self.booster_ = theta, tk, tm, booster
        self.target_fingerprint = fingerprint_of(target) if target is not None else None
        if space is not None:
            self.space = space
        return self

    def _check(self) -> None:
        if self.theta_ is None:
            raise NotFittedError(f"{type(self).__name__}: call fit() before predict()")

    def predict(self, X: Any, space: Any = None) -> np.ndarray:
        """Latency (ms) of networks ``X``: candidates (vectorised, no layer objects) or lists of `LayerSpec`."""
        self._check()
        X = list(X)
        out = []
        for lo in range(0, len(X), PREDICT_CHUNK):
            chunk = X[lo:lo + PREDICT_CHUNK]
            b = units(self._rows(chunk, space), self.vector_width, self.threads, self.fuse_min_bytes)
            out.append(self._predict_batch(b, self.theta_, self.table_keys_, self.table_ms_, self.booster_))
        return np.concatenate(out) if out else np.zeros(0)

    def step_costs(self, candidate: Any, space: Any = None) -> list[tuple[str, float]]:
        """(step, predicted ms) of one network, before the correction: where its time goes."""
        self._check()
        b = self.unit_batch([candidate], space, named=True)
        return list(zip(b.names, self._unit_pred(b, self.theta_, self.table_keys_, self.table_ms_).tolist()))

    # ----- persistence -----------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        self._check()
        return {
            "features": FEATURES_ID, "work": list(WORK), "unit_types": list(UNIT_TYPES),
            "vector_width": self.vector_width, "threads": self.threads, "fuse_min_bytes": self.fuse_min_bytes,
            "correction": self.correction, "table": self.table, "holdout": self.holdout, "refit": self.refit,
            "n_estimators": self.n_estimators, "max_depth": self.max_depth, "learning_rate": self.learning_rate, "folds": self.folds,
            "seed": self.seed, "nthread": self.nthread,
            "space": None if self.space is None else {"name": self.space.name, "config": self.space.config()},
            "theta": self.theta_.tolist(),
            "table_keys": None if self.table_keys_ is None else [int(k) for k in self.table_keys_.tolist()],
            "table_ms": None if self.table_ms_ is None else self.table_ms_.tolist(),
            "booster": None if self.booster_ is None else booster_to_json(self.booster_),
        }

    @classmethod
    def from_state(cls, params: Mapping[str, Any]) -> "CodegenLatencyPredictor":
        if params.get("features") != FEATURES_ID or list(params.get("work", [])) != list(WORK) or list(params.get("unit_types", [])) != list(UNIT_TYPES):
            raise ValueError(f"codegen predictor: features {params.get('features')!r}; this version reads {FEATURES_ID!r}")
        keys = ("vector_width", "threads", "fuse_min_bytes", "correction", "table", "holdout", "refit", "n_estimators", "max_depth",
                "learning_rate", "folds", "seed", "nthread")
        obj = cls(**{k: params[k] for k in keys})
        if params.get("space"):
            from ..spaces.registry import create

            obj.space = create(params["space"]["name"], **params["space"]["config"])
        theta = np.asarray(params["theta"], dtype=np.float64)
        if theta.shape != (_NT, len(WORK)) or not np.isfinite(theta).all():
            raise ValueError(f"codegen predictor: theta has shape {theta.shape}; expected {(_NT, len(WORK))} finite values")
        obj.theta_ = theta
        if params.get("table_keys") is not None:
            obj.table_keys_ = np.asarray(params["table_keys"], dtype=np.uint64)
            obj.table_ms_ = np.asarray(params["table_ms"], dtype=np.float64)
            if obj.table_keys_.shape != obj.table_ms_.shape:
                raise ValueError("codegen predictor: table_keys and table_ms differ in length")
        if params.get("booster"):
            booster = booster_from_json(params["booster"], obj.nthread)
            obj.booster_ = booster
        return obj

    def __repr__(self) -> str:
        state = "fitted" if self.theta_ is not None else "not fitted"
        return f"{type(self).__name__}(metric={self.metric!r}, {state})"


def _subset(b: UnitBatch, keep: np.ndarray) -> UnitBatch:
    """The units of the networks some units belong to (``keep`` per unit, whole networks), renumbered."""
    nets = np.unique(b.net[keep])
    new = np.full(b.n_networks, -1)
    new[nets] = np.arange(nets.size)
    names = [n for n, k in zip(b.names, keep) if k] if b.names is not None else None
    members = [m for m, k in zip(b.members, keep) if k] if b.members is not None else None
    return UnitBatch(net=new[b.net[keep]], type=b.type[keep], W=b.W[keep], context=b.context[keep], key=b.key[keep], res=b.res[nets],
                     n_networks=int(nets.size), names=names, members=members)


def fit_codegen_profile(paths: Sequence[Any], out: Any = None, seed: int = 0) -> CodegenLatencyPredictor:
    """Fit a `CodegenLatencyPredictor` on codegen-cpu profile directories (`tritune.targets.profiling`):
    each candidate's label is its (reference-normalised, or pooled over sessions) latency, its
    steps those the profile recorded. Saves to ``out`` when given."""
    import json
    from pathlib import Path

    from ..spaces.registry import create
    from ..targets.profiling import METADATA_FILE, pooled_latency, read_measurements, session_dirs

    dirs = [d for p in paths for d in session_dirs(p)]
    metas = [json.loads((Path(d) / METADATA_FILE).read_text()) for d in dirs]
    meta = metas[0]
    for d, m in zip(dirs[1:], metas[1:]):
        if m.get("space") != meta.get("space") or m.get("target") != meta.get("target"):
            raise ValueError(f"fit: {d} profiles another space or target than {dirs[0]}; allowed: profiles of one space on one target")
    rows = [[r for r in read_measurements(d) if r.get("latency_ms")] for d in dirs]
    y, keep = pooled_latency(rows)
    keep_steps = [r for r in keep if r.get("steps")]
    if len(keep_steps) != len(keep):
        raise ValueError(f"fit: {dirs[0]}: {len(keep) - len(keep_steps)} rows carry no step times; profile with a "
                         "target that records them (codegen-cpu)")
    if len(keep) < 20:
        raise ValueError(f"fit: {', '.join(map(str, dirs))} hold {len(keep)} measured candidates; at least 20 are needed")
    space = create(meta["space"]["name"], **meta["space"]["config"])
    fp = meta["target"]["fingerprint"]
    cands = [Candidate.from_json(r["candidate"]) for r in keep]
    steps = [{s["name"]: s["ms"] for s in r["steps"]} for r in keep]
    pred = CodegenLatencyPredictor(space=space, vector_width=int(fp.get("vector_width") or 16), threads=int(fp.get("threads") or 1),
                                   fuse_min_bytes=fp.get("fuse_min_bytes", 1 << 20), seed=seed)
    pred.fit(cands, y, steps=steps, target=fp)
    if out is not None:
        pred.save(out)
    return pred


__all__ = ["CodegenLatencyPredictor", "FEATURES_ID", "fit_codegen_profile", "network_features", "step_times"]
