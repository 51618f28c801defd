"""Layer-wise latency / energy of networks on an accelerator with a per-layer table (BitFusion).

Accelerators like BitFusion run one layer at a time, so a network's cost is the sum of its
layers' costs (APQ, Wang et al. CVPR 2020, predicts BitFusion latency and energy this way). A
layer's cost comes from the published table where its key exists, and otherwise from an XGBoost
regressor trained on the table in log space (costs span three decades; relative error is what
matters). One `LayerwiseTablePredictor` predicts one metric; make one per metric.

Mapping tritune's layer IR (`LayerSpec`) to the table's key
``(cin, cout, input_size, kernel, stride, pad, groups)-W{w}A{a}``:

* ``conv`` / ``dwconv``: channels, input height (square inputs), kernel, stride, groups as they
  are; ``pad`` is the IR's 'same' padding, ``kernel // 2``, which is also the table's.
* ``linear``: a 1x1 convolution on a 1x1 input.
* Layers without weights (pooling, sums, activations, SE scaling) cost nothing: the table has no
  entries for them and APQ's predictor ignores them too (they are fused or negligible on
  BitFusion). The table's fixed ``head`` / ``tail`` entries belong to APQ's own network, not to
  tritune's spaces, and are not added.
* Bit-widths outside the table's range are clipped to it: float layers (32 bits) run at the
  widest precision BitFusion has (8 bits); 2-3 bit layers are costed as the narrowest (4 bits),
  an upper bound. Sparsity is ignored: BitFusion is a dense array.

For speed, layers travel as a `LayerBatch`: the distinct layer keys of many networks, and for
each layer its key and its network. Building the IR (``space.layers``) is the slow step (Python);
predicting a batch is a few numpy operations plus one XGBoost call on the distinct keys the table
lacks, whose answers are remembered (``memo_limit``) because a search meets the same layers again.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import xgboost as xgb

from ..spaces.candidate import Candidate
from ..spaces.layers import LayerSpec
from .base import NotFittedError, Predictor
from .io import booster_from_json, booster_to_json, fingerprint_of
from .metrics import score_report
from .registry import register_predictor

#: Columns of a layer key array, in order.
KEY_FIELDS = ("cin", "cout", "input_size", "kernel", "stride", "groups", "w_bits", "a_bits")
#: Metric name -> position in a BitFusion entry ``(latency, energy)``. Units follow APQ (ms, mJ).
METRICS = {"latency_ms": 0, "energy_mj": 1}
FEATURES_ID = "bitfusion-layer/v1"
FEATURE_NAMES = KEY_FIELDS + (
    "out_size", "depthwise", "log_macs", "log_weight_bits", "log_in_act_bits", "log_out_act_bits",
    "log_bit_ops", "log_brick_ops",
)
# Bit budget of a packed key (63 bits): three channel fields of 13, input 10, kernel 4, stride 2,
# two bit-widths of 4 (after clipping to the table's range).
_WIDTHS = (13, 13, 10, 4, 2, 13, 4, 4)


def bitfusion_key(layer: LayerSpec) -> tuple[int, ...] | None:
    """The table key of a layer as ``KEY_FIELDS`` (``None`` for layers without weights)."""
    if layer.op in ("conv", "dwconv"):
        return (layer.in_channels, layer.out_channels, layer.in_h, layer.kernel, layer.stride, layer.groups, layer.w_bits, layer.a_bits)
    if layer.op == "linear":
        return (layer.in_channels, layer.out_channels, 1, 1, 1, 1, layer.w_bits, layer.a_bits)
    return None


def bitfusion_fingerprint(table: Any) -> dict[str, Any]:
    """Target fingerprint of a `BitFusionTable` (file name and SHA-256 of its bytes)."""
    return {
        "target": "bitfusion-table",
        "kind": "table",
        "device": "BitFusion accelerator (APQ look-up table, batch 1)",
        "runtime": "published measurements",
        "version": None,
        "threads": None,
        "source": table.path.name,
        "file_sha256": hashlib.sha256(table.path.read_bytes()).hexdigest(),
    }


def table_arrays(table: Any, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """``(keys, values)`` of a `BitFusionTable` for ``metric``: keys ``(n, 8)`` int64 as `KEY_FIELDS`.

    Entries whose pad is not ``kernel // 2`` would not match the IR's 'same' padding; the published
    table has none, and any such entry is left out."""
    if metric not in METRICS:
        raise ValueError(f"metric: {metric!r} not allowed; allowed: {', '.join(METRICS)}")
    col = METRICS[metric]
    rows, vals = [], []
    for layer, cost in table.entries.items():
        if layer.pad != layer.kernel // 2:
            continue
        rows.append((layer.cin, layer.cout, layer.input_size, layer.kernel, layer.stride, layer.groups, layer.w_bits, layer.a_bits))
        vals.append(cost[col])
    return np.asarray(rows, dtype=np.int64).reshape(-1, len(KEY_FIELDS)), np.asarray(vals, dtype=np.float64)


def key_features(keys: np.ndarray) -> np.ndarray:
    """Regressor features of layer keys ``(n, 8)``: the key plus the costs it implies, in logs."""
    k = np.asarray(keys, dtype=np.float64)
    cin, cout, size, kernel, stride, groups, wb, ab = k.T
    out = np.ceil(size / stride)
    weights = cout * (cin / groups) * kernel * kernel
    macs = weights * out * out
    return np.column_stack([
        k, out, (groups > 1).astype(np.float64), np.log(macs), np.log(weights * wb), np.log(cin * size * size * ab),
        np.log(cout * out * out * ab), np.log(macs * wb * ab), np.log(macs * np.ceil(wb / 2) * np.ceil(ab / 2)),
    ])


def _pack(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One int64 per key where every field fits its bit budget; ``(codes, fits)``."""
    codes = np.zeros(keys.shape[0], dtype=np.int64)
    fits = np.ones(keys.shape[0], dtype=bool)
    for col, width in enumerate(_WIDTHS):
        v = keys[:, col]
        fits &= (v >= 0) & (v < (1 << width))
        codes = (codes << width) | (v & ((1 << width) - 1))
    return codes, fits


@dataclass(frozen=True)
class LayerBatch:
    """The weight layers of many networks: distinct keys, and per layer its key and network."""

    keys: np.ndarray  # (u, 8) int64, distinct layer keys (`KEY_FIELDS`)
    key_index: np.ndarray  # (n_layers,) int64 row of `keys` of each layer
    owner: np.ndarray  # (n_layers,) int64 network of each layer
    n_networks: int

    @classmethod
    def from_networks(cls, networks: Iterable[Sequence[LayerSpec]]) -> "LayerBatch":
        """Pack lists of `LayerSpec` (one list per network); layers without weights are dropped."""
        ids: dict[tuple[int, ...], int] = {}
        key_index: list[int] = []
        owner: list[int] = []
        n = 0
        for n, layers in enumerate(networks, start=1):
            for layer in layers:
                key = bitfusion_key(layer)
                if key is not None:
                    key_index.append(ids.setdefault(key, len(ids)))
                    owner.append(n - 1)
        keys = np.asarray(list(ids), dtype=np.int64).reshape(-1, len(KEY_FIELDS))
        return cls(keys, np.asarray(key_index, dtype=np.int64), np.asarray(owner, dtype=np.int64), n)

    @classmethod
    def from_candidates(cls, space: Any, candidates: Iterable[Candidate]) -> "LayerBatch":
        """Expand candidates to the IR with ``space.layers`` (the slow step), then pack."""
        return cls.from_networks(space.layers(c) for c in candidates)

    @property
    def n_layers(self) -> int:
        return int(self.owner.size)


@register_predictor
class LayerwiseTablePredictor(Predictor):
    """Per-network latency or energy as the sum of per-layer table look-ups (regressor where missing).

    Example::

        lat = LayerwiseTablePredictor.from_bitfusion(BitFusionTable(path), "latency_ms")
        lat.predict(LayerBatch.from_candidates(space, candidates))      # one value per network
        lat.predict(keys)                                               # (n, 8) keys -> per layer

    XGBoost options follow its names; ``holdout`` is the share of table entries kept out of the
    regressor to measure ``error_`` (by ``holdout_by`` = ``"entry"`` or ``"shape"``: all bit-widths
    of a layer shape together, the harder test of layers the table has never seen); with
    ``refit`` the final regressor is then trained on every entry.
    """

    kind = "layerwise-table"
    #: Most regressor answers remembered (by layer key) between calls; a search asks about the
    #: same few thousand layer shapes over and over.
    memo_limit: int = 1_000_000

    def __init__(
        self,
        metric: str = "latency_ms",
        n_estimators: int = 600,
        max_depth: int = 6,
        learning_rate: float = 0.1,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        holdout: float = 0.2,
        holdout_by: str = "entry",
        refit: bool = True,
        seed: int = 0,
        nthread: int = 1,
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"LayerwiseTablePredictor.metric: {metric!r} not allowed; allowed: {', '.join(METRICS)}")
        if not 0 < holdout < 1:
            raise ValueError(f"LayerwiseTablePredictor.holdout: {holdout} not in (0, 1)")
        if holdout_by not in ("entry", "shape"):
            raise ValueError(f"LayerwiseTablePredictor.holdout_by: {holdout_by!r} not allowed; allowed: entry, shape")
        self.metric = metric
        self.n_estimators, self.max_depth, self.learning_rate = int(n_estimators), int(max_depth), float(learning_rate)
        self.subsample, self.colsample_bytree = float(subsample), float(colsample_bytree)
        self.holdout, self.holdout_by, self.refit, self.seed, self.nthread = float(holdout), holdout_by, bool(refit), int(seed), int(nthread)
        self.target_fingerprint = None
        self.error_ = None
        self.booster_: xgb.Booster | None = None
        self._lut_keys: np.ndarray | None = None  # (n, 8) as given
        self._lut_codes: np.ndarray | None = None  # sorted packed codes
        self._lut_values: np.ndarray | None = None  # values in code order
        self.bits_range: tuple[int, int] = (1, 8)
        self.clear_cache()

    # ----- fitting -----------------------------------------------------------------------------
    @classmethod
    def from_bitfusion(cls, table: Any, metric: str = "latency_ms", **options: Any) -> "LayerwiseTablePredictor":
        """Fit on a `BitFusionTable` (its fingerprint becomes the target fingerprint)."""
        keys, values = table_arrays(table, metric)
        return cls(metric=metric, **options).fit(keys, values, target=bitfusion_fingerprint(table))

    def _params(self) -> dict[str, Any]:
        return {
            "objective": "reg:squarederror", "max_depth": self.max_depth, "eta": self.learning_rate,
            "subsample": self.subsample, "colsample_bytree": self.colsample_bytree, "nthread": self.nthread, "seed": self.seed,
        }

    def _train(self, keys: np.ndarray, values: np.ndarray) -> xgb.Booster:
        data = xgb.DMatrix(key_features(keys), label=np.log(values), nthread=self.nthread)
        return xgb.train(self._params(), data, num_boost_round=self.n_estimators)

    def _split(self, keys: np.ndarray) -> np.ndarray:
        """Boolean mask of held-out rows."""
        rng = np.random.default_rng(self.seed)
        if self.holdout_by == "entry":
            test = np.zeros(len(keys), dtype=bool)
            test[rng.permutation(len(keys))[: int(round(self.holdout * len(keys)))]] = True
            return test
        shapes, group = np.unique(keys[:, :6], axis=0, return_inverse=True)
        chosen = rng.permutation(len(shapes))[: int(round(self.holdout * len(shapes)))]
        return np.isin(group.reshape(-1), chosen)

    def fit(self, X: Any, y: Any, target: Any = None) -> "LayerwiseTablePredictor":
        """Learn from table entries: ``X`` keys ``(n, 8)`` (`KEY_FIELDS`), ``y`` positive per-layer values."""
        keys = np.asarray(X, dtype=np.int64)
        values = np.asarray(y, dtype=np.float64).reshape(-1)
        if keys.ndim != 2 or keys.shape[1] != len(KEY_FIELDS) or keys.shape[0] != values.size:
            raise ValueError(f"LayerwiseTablePredictor.fit: X must be (n, {len(KEY_FIELDS)}) keys {KEY_FIELDS} and y n values; got {keys.shape} and {values.shape}")
        if keys.shape[0] < 10:
            raise ValueError("LayerwiseTablePredictor.fit: need at least 10 table entries")
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise ValueError("LayerwiseTablePredictor.fit: values must be finite and positive (the regressor works in logs)")
        if np.any(keys[:, :6] <= 0) or np.any(keys[:, 6:] <= 0):
            raise ValueError("LayerwiseTablePredictor.fit: every key field must be a positive integer")
        codes, fits = _pack(keys)
        if not fits.all():
            bad = keys[np.flatnonzero(~fits)[0]]
            raise ValueError(f"LayerwiseTablePredictor.fit: key {bad.tolist()} exceeds the packed key ranges {dict(zip(KEY_FIELDS, _WIDTHS))} (bits)")
        order = np.argsort(codes, kind="stable")
        if np.any(np.diff(codes[order]) == 0):
            raise ValueError("LayerwiseTablePredictor.fit: a layer key is given twice")
        self.bits_range = (int(keys[:, 6:].min()), int(keys[:, 6:].max()))
        test = self._split(keys)
        booster = self._train(keys[~test], values[~test])
        held = np.exp(booster.inplace_predict(key_features(keys[test])))
        self.error_ = {**score_report(values[test], held), "on": f"{int(test.sum())} held-out table entries ({self.holdout:.0%} by {self.holdout_by}), per layer"}
        self.booster_ = self._train(keys, values) if self.refit else booster
        self._lut_keys, self._lut_codes, self._lut_values = keys.copy(), codes[order], values[order]
        self.target_fingerprint = fingerprint_of(target)
        self.clear_cache()
        return self

    # ----- predicting --------------------------------------------------------------------------
    def _check(self) -> None:
        if self.booster_ is None or self._lut_codes is None:
            raise NotFittedError("LayerwiseTablePredictor: fit() (or from_bitfusion()) before predict()")

    def clear_cache(self) -> None:
        """Forget remembered regressor answers (they are recomputed identically on demand)."""
        self._memo_codes = np.zeros(0, dtype=np.int64)
        self._memo_values = np.zeros(0, dtype=np.float64)

    def _regress(self, keys: np.ndarray) -> np.ndarray:
        """Regressor values of keys missing from the table, through the memo where keys pack."""
        codes, fits = _pack(keys)
        out = np.empty(len(keys), dtype=np.float64)
        pos = np.minimum(np.searchsorted(self._memo_codes, codes), max(self._memo_codes.size - 1, 0))
        known = fits & (self._memo_codes.size > 0)
        if self._memo_codes.size:
            known &= self._memo_codes[pos] == codes
            out[known] = self._memo_values[pos[known]]
        todo = ~known
        if todo.any():
            out[todo] = np.exp(self.booster_.inplace_predict(key_features(keys[todo])))
            new = todo & fits
            if new.any():
                new_codes, first = np.unique(codes[new], return_index=True)
                merged = np.concatenate([self._memo_codes, new_codes])
                order = np.argsort(merged, kind="stable")
                if merged.size > self.memo_limit:
                    self.clear_cache()
                else:
                    self._memo_codes = merged[order]
                    self._memo_values = np.concatenate([self._memo_values, out[new][first]])[order]
        return out

    def clip_bits(self, keys: np.ndarray) -> np.ndarray:
        """Keys with bit-widths clipped to the table's range (float layers -> the widest)."""
        out = np.array(keys, dtype=np.int64, copy=True)
        out[:, 6:] = np.clip(out[:, 6:], *self.bits_range)
        return out

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact table values of (clipped) keys and a mask of the keys found (NaN elsewhere)."""
        self._check()
        codes, fits = _pack(keys)
        pos = np.searchsorted(self._lut_codes, codes)
        pos = np.minimum(pos, self._lut_codes.size - 1)
        found = fits & (self._lut_codes[pos] == codes)
        return np.where(found, self._lut_values[pos], np.nan), found

    def predict_layers(self, keys: Any) -> np.ndarray:
        """Per-layer values for keys ``(n, 8)``: table value where the key exists, regressor otherwise."""
        self._check()
        k = np.asarray(keys, dtype=np.int64)
        if k.ndim != 2 or k.shape[1] != len(KEY_FIELDS):
            raise ValueError(f"LayerwiseTablePredictor: layer keys must be (n, {len(KEY_FIELDS)}) as {KEY_FIELDS}, got {k.shape}")
        if k.shape[0] == 0:
            return np.zeros(0)
        if np.any(k[:, :6] <= 0):
            raise ValueError("LayerwiseTablePredictor: layer key fields must be positive integers")
        k = self.clip_bits(k)
        values, found = self.lookup(k)
        if not found.all():
            miss = ~found
            values[miss] = self._regress(k[miss])
        return values

    def predict(self, X: Any) -> np.ndarray:
        """Per-network sums for a `LayerBatch` or a list of networks (lists of `LayerSpec`);
        per-layer values for an ``(n, 8)`` integer key array."""
        self._check()
        if isinstance(X, np.ndarray) and X.ndim == 2:
            return self.predict_layers(X)
        batch = X if isinstance(X, LayerBatch) else LayerBatch.from_networks(X)
        per_key = self.predict_layers(batch.keys)
        return np.bincount(batch.owner, weights=per_key[batch.key_index], minlength=batch.n_networks).astype(np.float64)

    def coverage(self, X: Any) -> float:
        """Share of the layers of ``X`` (a `LayerBatch` or networks) answered by exact look-up."""
        batch = X if isinstance(X, LayerBatch) else LayerBatch.from_networks(X)
        if batch.n_layers == 0:
            return math.nan
        _, found = self.lookup(self.clip_bits(batch.keys))
        return float(np.mean(found[batch.key_index]))

    # ----- persistence ---------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        self._check()
        order = np.argsort(_pack(self._lut_keys)[0], kind="stable")
        return {
            "features": FEATURES_ID,
            "options": {
                "n_estimators": self.n_estimators, "max_depth": self.max_depth, "learning_rate": self.learning_rate,
                "subsample": self.subsample, "colsample_bytree": self.colsample_bytree, "holdout": self.holdout,
                "holdout_by": self.holdout_by, "refit": self.refit, "seed": self.seed, "nthread": self.nthread,
            },
            "bits_range": list(self.bits_range),
            "table": {"fields": list(KEY_FIELDS), "keys": self._lut_keys[order].tolist(), "values": self._lut_values.tolist()},
            "booster": booster_to_json(self.booster_),
        }

    @classmethod
    def from_state(cls, params: Mapping[str, Any]) -> "LayerwiseTablePredictor":
        if params.get("features") != FEATURES_ID:
            raise ValueError(f"LayerwiseTablePredictor: file uses features {params.get('features')!r}; this tritune computes {FEATURES_ID!r}")
        obj = cls(**params["options"])
        table = params["table"]
        if list(table["fields"]) != list(KEY_FIELDS):
            raise ValueError(f"LayerwiseTablePredictor: table fields {table['fields']} differ from {list(KEY_FIELDS)}")
        keys = np.asarray(table["keys"], dtype=np.int64).reshape(-1, len(KEY_FIELDS))
        values = np.asarray(table["values"], dtype=np.float64)
        codes, _ = _pack(keys)
        if keys.shape[0] != values.size or np.any(np.diff(codes) <= 0):
            raise ValueError("LayerwiseTablePredictor: stored table keys are not distinct and sorted, or do not match the values")
        obj._lut_keys, obj._lut_codes, obj._lut_values = keys, codes, values
        obj.bits_range = (int(params["bits_range"][0]), int(params["bits_range"][1]))
        booster = booster_from_json(params["booster"], obj.nthread)
        obj.booster_ = booster
        obj.clear_cache()
        return obj

    def __repr__(self) -> str:
        n = 0 if self._lut_codes is None else self._lut_codes.size
        return f"LayerwiseTablePredictor(metric={self.metric!r}, table entries={n}, {'fitted' if self.fitted else 'not fitted'})"
