"""Few-shot whole-model latency for a NEW device, learned from other devices' measurements.

The model (a hierarchical Bayesian linear model; the meta-learning is empirical Bayes):

1. *A device is a vector of operation costs.* Latency in ms of cell ``x`` on device ``d`` is
   ``s_d * phi(x) . w_d``: ``phi`` are the structural features of `nb201_features` (counts of
   each operation, on all and on live edges, a disconnected flag, the one-hot cell), ``w_d`` the
   device's costs on a common scale (mean predicted latency over the 15,625 cells = 1) and
   ``s_d`` its overall speed. Latency is additive over operations, so this is linear in *ms*,
   not in log-ms.
2. *Pretraining* fits ``w_d`` by ridge regression for every training device (rows where a
   device has no value are skipped, so partially measured devices still count) and keeps their
   mean ``m`` and covariance ``C``: how devices differ from one another.
3. *Adapting* to a new device from k measured cells is Bayesian linear regression with the prior
   ``w ~ N(m, t C + j I)`` and noise ``s2``: the posterior mean moves from the average device
   only along the directions in which devices were seen to differ (``t C``), plus a little
   everywhere (``j I``) so devices unlike any training device can still be followed as k grows.
   ``s`` is set from the k values; ``t``, ``j`` and ``s2`` maximise the marginal likelihood of the
   k values (type-II maximum likelihood; no tuning on the new device's other cells).
4. `FewShotLatencyPredictor.design` picks *which* k cells to measure, from the prior alone
   (device-independent): greedy I-optimal design -- each next cell is the one that most reduces
   the average predictive variance over all 15,625 cells.

The measured error shipped with an adapted predictor (``error_``) is the leave-one-out error on
its k samples (closed form for this model), so it needs no extra measurements.

Degenerate cells: on HELP's Pixel 3 / Raspberry Pi 4 about 200 disconnected cells read < 0.1 ms
(the runtime folds the dead graph away). Working in ms, such a cell is a small value, not the
-5 log-units outlier it is in log space, and the ``disconnected`` feature lets one measured
disconnected cell teach the model about all of them (the I-optimal design includes one).
Predictions are clipped below at ``floor * s`` (default 1e-3 of the device's mean latency)
because a linear model can extrapolate below zero.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .base import NotFittedError, Predictor
from .io import fingerprint_of
from .metrics import score_report
from .nb201_features import FEATURE_NAMES, NUM_ARCHS, nb201_features, to_indices
from .registry import register_predictor

#: Name of the feature map stored in files (bump when `nb201_features` changes meaning).
FEATURES_ID = "nb201-op-costs/v1"


@dataclass(frozen=True)
class DevicePrior:
    """What the training devices say about devices in general: mean and spread of their costs."""

    mean: np.ndarray  # (p,)
    cov: np.ndarray  # (p, p)
    #: Median residual variance of the training devices' fits (normalised units): the noise the
    #: design assumes.
    noise: float
    devices: tuple[str, ...]
    #: Where the training data came from (file name, sha256), for provenance.
    source: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "cov": self.cov.tolist(), "noise": self.noise, "devices": list(self.devices), "source": self.source}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "DevicePrior":
        return cls(
            np.asarray(data["mean"], dtype=np.float64), np.asarray(data["cov"], dtype=np.float64), float(data["noise"]),
            tuple(data["devices"]), dict(data.get("source") or {}),
        )


@dataclass(frozen=True)
class Adaptation:
    """The fitted state for one device: posterior mean costs and the hyper-parameters chosen."""

    indices: np.ndarray  # (k,) nb201 indices measured
    latencies: np.ndarray  # (k,) ms
    scale: float  # s: ms per normalised unit
    weights: np.ndarray  # (p,) posterior mean of w
    prior_scale: float  # t
    jitter: float  # j
    noise: float  # s2 (normalised units)
    log_evidence: float

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("indices", "latencies", "weights"):
            out[key] = getattr(self, key).tolist()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Adaptation":
        return cls(
            np.asarray(data["indices"], dtype=np.int64), np.asarray(data["latencies"], dtype=np.float64), float(data["scale"]),
            np.asarray(data["weights"], dtype=np.float64), float(data["prior_scale"]), float(data["jitter"]),
            float(data["noise"]), float(data["log_evidence"]),
        )


def fit_device_prior(
    features: np.ndarray, latencies: np.ndarray, devices: Sequence[str], ridge: float = 1e-3, min_rows: int = 20,
    source: Mapping[str, Any] | None = None,
) -> DevicePrior:
    """Fit every training device's costs and summarise them (see the module docstring, step 2).

    ``latencies`` is ``(n_cells, n_devices)`` in ms aligned with ``features`` (NaN = not measured).
    """
    Y = np.asarray(latencies, dtype=np.float64)
    if Y.ndim != 2 or Y.shape[0] != features.shape[0]:
        raise ValueError(f"pretrain: latencies must be ({features.shape[0]}, n_devices), got shape {Y.shape}")
    if Y.shape[1] != len(devices):
        raise ValueError(f"pretrain: {Y.shape[1]} latency columns but {len(devices)} device names")
    if len(devices) < 2:
        raise ValueError("pretrain: need at least 2 training devices to learn how devices differ")
    p = features.shape[1]
    W, noise = [], []
    for d, name in enumerate(devices):
        y = Y[:, d]
        ok = np.isfinite(y)
        if ok.sum() < min_rows:
            raise ValueError(f"pretrain: device {name!r} has {int(ok.sum())} measured cells; at least {min_rows} needed")
        if np.any(y[ok] <= 0):
            raise ValueError(f"pretrain: device {name!r} has non-positive latencies")
        F, t = features[ok], y[ok] / y[ok].mean()
        w = np.linalg.solve(F.T @ F + ridge * ok.sum() * np.eye(p), F.T @ t)
        # Rescale so that the mean prediction over *all* cells is 1: devices measured on a subset
        # (nn-Meter: 2,000 accurate cells) land on the same scale as fully measured ones.
        level = float(np.mean(features @ w))
        W.append(w / level)
        noise.append(float(np.mean((F @ w - t) ** 2)) / level**2)
    W = np.asarray(W)
    return DevicePrior(W.mean(axis=0), np.cov(W.T), float(np.median(noise)), tuple(devices), dict(source or {}))


def _evidence_grid(K_c: np.ndarray, K_i: np.ndarray, r: np.ndarray, scales, jitters, noises):
    """Best (log evidence, t, j, s2) of r ~ N(0, t K_c + j K_i + s2 I) over the grid."""
    k = r.size
    best = (-np.inf, None, None, None)
    for t in scales:
        for j in jitters:
            lam, U = np.linalg.eigh(t * K_c + j * K_i)
            lam = np.clip(lam, 0.0, None)
            proj2 = (U.T @ r) ** 2
            for s2 in noises:
                d = lam + s2
                ll = -0.5 * (np.sum(np.log(d)) + np.sum(proj2 / d) + k * np.log(2 * np.pi))
                if ll > best[0]:
                    best = (float(ll), float(t), float(j), float(s2))
    return best


@register_predictor
class FewShotLatencyPredictor(Predictor):
    """Latency (ms) of NAS-Bench-201 cells on a new device from a handful of measurements.

    Example::

        pred = FewShotLatencyPredictor.pretrain(NB201Table(path), devices=[...])
        cells = pred.design(10)                      # measure these 10 cells on your device
        pred.adapt(cells, measured_ms, target=my_target)
        pred.predict(candidates_or_indices)          # ms, one per cell

    ``prior_scales``, ``jitters`` and ``noises`` are the grids type-II maximum likelihood
    searches; ``floor`` the lower clip of predictions as a share of the device's mean latency.
    """

    kind = "fewshot-latency"

    def __init__(
        self,
        prior_scales: Sequence[float] = tuple(np.logspace(-1, 2, 7)),
        jitters: Sequence[float] = (1e-4, 1e-3, 1e-2),
        noises: Sequence[float] = tuple(np.logspace(-5, -1, 9)),
        floor: float = 1e-3,
        ridge: float = 1e-3,
    ) -> None:
        self.prior_scales = tuple(float(v) for v in prior_scales)
        self.jitters = tuple(float(v) for v in jitters)
        self.noises = tuple(float(v) for v in noises)
        for name, grid in (("prior_scales", self.prior_scales), ("jitters", self.jitters), ("noises", self.noises)):
            if not grid or min(grid) <= 0:
                raise ValueError(f"FewShotLatencyPredictor.{name}: must be a non-empty list of positive numbers")
        if not 0 < floor < 1:
            raise ValueError(f"FewShotLatencyPredictor.floor: {floor} not in (0, 1)")
        self.floor = float(floor)
        self.ridge = float(ridge)
        self.metric = "latency_ms"
        self.target_fingerprint = None
        self.error_ = None
        self.prior_: DevicePrior | None = None
        self.adaptation_: Adaptation | None = None
        self._all: np.ndarray | None = None  # predictions for every nb201 index

    # ----- pretraining -----------------------------------------------------------------------
    @classmethod
    def pretrain(cls, table: Any, devices: Sequence[str], **options: Any) -> "FewShotLatencyPredictor":
        """Learn the device prior from latency columns ``devices`` of an `NB201Table`."""
        devices = list(devices)
        missing = [d for d in devices if d not in getattr(table, "latency_columns", ())]
        if missing:
            raise ValueError(f"pretrain: columns {missing} are not latency columns of {table!r}")
        Y = np.column_stack([table.column(d) for d in devices])
        source = {"file": table.file_name, "sha256": table.file_sha256}
        return cls.pretrain_matrix(Y, devices, source=source, **options)

    @classmethod
    def pretrain_matrix(
        cls, latencies: np.ndarray, devices: Sequence[str], source: Mapping[str, Any] | None = None, **options: Any
    ) -> "FewShotLatencyPredictor":
        """Learn the prior from a ``(15625, n_devices)`` ms matrix in nb201 index order (NaN = missing)."""
        obj = cls(**options)
        obj.prior_ = fit_device_prior(nb201_features(), latencies, list(devices), ridge=obj.ridge, source=source)
        return obj

    def _prior(self) -> DevicePrior:
        if self.prior_ is None:
            raise NotFittedError("FewShotLatencyPredictor: pretrain() first (it learns from other devices)")
        return self.prior_

    # ----- choosing what to measure ----------------------------------------------------------
    def design(self, k: int, jitter: float = 1e-3) -> np.ndarray:
        """k nb201 indices to measure on a new device, most informative first (I-optimal, greedy).

        Depends only on the prior, so the same list serves every device; measuring its first k'
        entries is the design for k' < k."""
        prior = self._prior()
        if not 1 <= int(k) <= NUM_ARCHS:
            raise ValueError(f"design: k={k} not in 1..{NUM_ARCHS}")
        G = nb201_features()
        M = prior.cov + jitter * np.eye(G.shape[1])  # posterior covariance of w so far
        A = G.T @ G / G.shape[0]
        s2 = prior.noise
        chosen: list[int] = []
        taken = np.zeros(G.shape[0], dtype=bool)
        for _ in range(int(k)):
            GM = G @ M
            q = np.einsum("ij,ij->i", GM, G)
            gain = np.einsum("ij,ij->i", GM @ A, GM) / (s2 + q)  # drop of mean predictive variance
            gain[taken] = -np.inf
            i = int(np.argmax(gain))
            chosen.append(i)
            taken[i] = True
            g = M @ G[i]
            M = M - np.outer(g, g) / (s2 + G[i] @ g)
        return np.asarray(chosen, dtype=np.int64)

    # ----- adapting ----------------------------------------------------------------------------
    def fit(self, X: Any, y: Any, target: Any = None) -> "FewShotLatencyPredictor":
        """Adapt to a device from cells ``X`` (nb201 Candidates or indices) measured as ``y`` ms.

        ``target`` (a `Target` or its fingerprint dict) names the device; it is stored and
        checked by ``load(..., expected_fingerprint=...)``."""
        prior = self._prior()
        idx = to_indices(X, "FewShotLatencyPredictor.fit")
        lat = np.asarray(y, dtype=np.float64).reshape(-1)
        if lat.size != idx.size:
            raise ValueError(f"FewShotLatencyPredictor.fit: {idx.size} cells but {lat.size} latencies")
        if idx.size < 3:
            raise ValueError("FewShotLatencyPredictor.fit: need at least 3 measured cells")
        if np.unique(idx).size != idx.size:
            raise ValueError("FewShotLatencyPredictor.fit: a cell is listed twice; average repeated measurements first")
        if not np.all(np.isfinite(lat)) or np.any(lat <= 0):
            raise ValueError("FewShotLatencyPredictor.fit: latencies must be finite and positive (ms)")
        G = nb201_features()
        Gk = G[idx]
        prior_mean_k = Gk @ prior.mean
        scale = float(lat.mean() / prior_mean_k.mean())
        r = lat / scale - prior_mean_k
        K_c, K_i = Gk @ prior.cov @ Gk.T, Gk @ Gk.T
        ll, t, j, s2 = _evidence_grid(K_c, K_i, r, self.prior_scales, self.jitters, self.noises)
        C = t * prior.cov + j * np.eye(G.shape[1])
        A_inv = np.linalg.inv(t * K_c + j * K_i + s2 * np.eye(idx.size))
        alpha = A_inv @ r
        weights = prior.mean + C @ Gk.T @ alpha
        loo = lat / scale - alpha / np.diag(A_inv)  # leave-one-out predictive means
        self.adaptation_ = Adaptation(idx.copy(), lat.copy(), scale, weights, t, j, s2, ll)
        self.target_fingerprint = fingerprint_of(target)
        self._all = self._predict_all()
        loo_ms = np.maximum(loo, self.floor) * scale
        self.error_ = {**score_report(lat, loo_ms), "on": f"leave-one-out over the {idx.size} adaptation cells"}
        return self

    adapt = fit

    def _predict_all(self) -> np.ndarray:
        a = self.adaptation_
        out = np.maximum(nb201_features() @ a.weights, self.floor) * a.scale
        out.flags.writeable = False
        return out

    def predict(self, X: Any) -> np.ndarray:
        """Latency in ms for nb201 Candidates or indices (one float64 per entry)."""
        if self._all is None:
            raise NotFittedError("FewShotLatencyPredictor: adapt() (fit) to a device before predict()")
        return self._all[to_indices(X, "FewShotLatencyPredictor.predict")]

    def predict_all(self) -> np.ndarray:
        """Predictions for all 15,625 cells in index order (read-only)."""
        self.predict(np.zeros(0, dtype=np.int64))
        return self._all  # type: ignore[return-value]

    # ----- persistence ---------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {
            "features": FEATURES_ID,
            "feature_names": list(FEATURE_NAMES),
            "options": {"prior_scales": list(self.prior_scales), "jitters": list(self.jitters), "noises": list(self.noises),
                        "floor": self.floor, "ridge": self.ridge},
            "prior": self._prior().to_json(),
            "adaptation": None if self.adaptation_ is None else self.adaptation_.to_json(),
        }

    @classmethod
    def from_state(cls, params: Mapping[str, Any]) -> "FewShotLatencyPredictor":
        if params.get("features") != FEATURES_ID or list(params.get("feature_names", ())) != list(FEATURE_NAMES):
            raise ValueError(f"FewShotLatencyPredictor: file uses features {params.get('features')!r}; this tritune computes {FEATURES_ID!r}")
        obj = cls(**params["options"])
        obj.prior_ = DevicePrior.from_json(params["prior"])
        if params.get("adaptation") is not None:
            obj.adaptation_ = Adaptation.from_json(params["adaptation"])
            obj._all = obj._predict_all()
        return obj

    def __repr__(self) -> str:
        devices = len(self.prior_.devices) if self.prior_ else 0
        k = self.adaptation_.indices.size if self.adaptation_ is not None else 0
        return f"FewShotLatencyPredictor(prior from {devices} devices, adapted on k={k})"

