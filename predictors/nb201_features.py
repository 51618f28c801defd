"""Structural features of NAS-Bench-201 cells for latency models.

Latency of a NAS-Bench-201 network is, on most devices, close to *additive* over its operations:
a fixed part (stem, reductions, classifier) plus a cost per convolution, pooling, skip and sum in
each of the 15 cells. So a device is described well by a few per-operation costs, and the
features are counts:

* ``1`` (intercept: the fixed part);
* per operation (skip, conv 1x1, conv 3x3, avg-pool 3x3) how many edges carry it;
* the same counts over *live* edges only -- edges on a path from the cell input to its output.
  Runtimes that prune dead graph branches (TFLite on phones, HW-NAS-Bench's Pixel 3 and Raspberry
  Pi 4) pay only for those;
* ``disconnected``: 1 when no path joins the cell input to its output. Such networks are a
  constant function of the stem; some runtimes fold them away (HELP's Pixel 3 / Raspberry Pi 4
  report < 0.1 ms for about 200 of these 341 cells), others run them in full;
* the one-hot cell (6 edges in `EDGES` order x the 5 `OPS`) for what counts miss (where in the
  cell an operation sits). It is computed here, not taken from `NB201Space.encode`, so that saved
  predictors keep their meaning when the space's search encoding changes.

`nb201_features()` is the float64 matrix for all 15,625 cells in index order (computed once).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from ..spaces.candidate import Candidate
from ..spaces.compression import FLOAT_BITS
from ..spaces.nb201.space import EDGES, NUM_ARCHS, OPS, NB201Space, _index_table

#: Operations whose edges are counted (``none`` is what is left).
COUNTED_OPS = ("skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
FEATURE_NAMES = (
    ("intercept",)
    + tuple(f"n_{op}" for op in COUNTED_OPS)
    + tuple(f"live_{op}" for op in COUNTED_OPS)
    + ("disconnected",)
    + tuple(f"edge{dst}<-{src}={op}" for dst, src in EDGES for op in OPS)
)
NUM_FEATURES = len(FEATURE_NAMES)
_SPACE = NB201Space()


def _features(op_codes: np.ndarray) -> np.ndarray:
    """Features of cells given as an int array (n, 6) of indices into `OPS`, edges in `EDGES` order."""
    n = op_codes.shape[0]
    present = op_codes != OPS.index("none")
    # reach[node]: node is reachable from node 0; back[node]: node 3 is reachable from it.
    reach = {0: np.ones(n, dtype=bool)}
    for node in (1, 2, 3):
        reach[node] = np.zeros(n, dtype=bool)
        for e, (dst, src) in enumerate(EDGES):
            if dst == node:
                reach[node] |= present[:, e] & reach[src]
    back = {3: np.ones(n, dtype=bool)}
    for node in (2, 1, 0):
        back[node] = np.zeros(n, dtype=bool)
        for e, (dst, src) in enumerate(EDGES):
            if src == node:
                back[node] |= present[:, e] & back[dst]
    live = np.stack([present[:, e] & reach[src] & back[dst] for e, (dst, src) in enumerate(EDGES)], axis=1)
    counts = [(op_codes == OPS.index(op)).sum(axis=1) for op in COUNTED_OPS]
    live_counts = [((op_codes == OPS.index(op)) & live).sum(axis=1) for op in COUNTED_OPS]
    onehot = np.eye(len(OPS))[op_codes].reshape(n, -1)
    return np.column_stack([np.ones(n), *counts, *live_counts, ~reach[3], onehot]).astype(np.float64)


@lru_cache(maxsize=1)
def nb201_features() -> np.ndarray:
    """Read-only float64 matrix ``(15625, NUM_FEATURES)``: row i is the cell with nb201_index i."""
    codes = np.array([[OPS.index(op) for op in ops] for ops in _index_table()[0]], dtype=np.int64)
    out = _features(codes)
    out.flags.writeable = False
    return out


def to_indices(X: Any, who: str = "nb201 predictor") -> np.ndarray:
    """NAS-Bench-201 indices from an int array / sequence of ints or a sequence of nb201 Candidates.

    Candidates must be dense float cells of the ``nb201`` space (what the latency tables measure);
    anything else raises ValueError naming the offending entry.
    """
    if isinstance(X, Candidate):
        raise ValueError(f"{who}: expected a sequence of candidates or indices, got one Candidate; pass [candidate]")
    if isinstance(X, np.ndarray) and X.dtype.kind in "iu":
        idx = X.astype(np.int64, copy=False).reshape(-1)
    else:
        seq: Sequence[Any] = X if isinstance(X, (list, tuple, np.ndarray)) else list(X)
        if len(seq) and isinstance(seq[0], Candidate):
            table = _index_table()[1]
            idx = np.empty(len(seq), dtype=np.int64)
            for i, c in enumerate(seq):
                if not isinstance(c, Candidate) or c.space != _SPACE.name:
                    raise ValueError(f"{who}: entry {i} is not an nb201 Candidate ({c!r})")
                for comp in c.compression:
                    if comp.pattern != "dense" or comp.sparsity or comp.w_bits != FLOAT_BITS or comp.a_bits != FLOAT_BITS:
                        raise ValueError(f"{who}: candidate {c.id} is compressed ({comp.token}); the data hold dense float cells only")
                try:
                    idx[i] = table[c.arch[0][1]] if len(c.arch) == 1 else _SPACE.index(c)
                except (KeyError, TypeError, IndexError):
                    raise ValueError(f"{who}: candidate {c.id} ops {c.get('ops')!r} are not a NAS-Bench-201 cell") from None
        else:
            arr = np.asarray(seq)
            if arr.size == 0:
                return np.zeros(0, dtype=np.int64)
            if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
                arr = arr.astype(np.int64)
            if arr.dtype.kind not in "iu":
                raise ValueError(f"{who}: expected nb201 Candidates or integer indices, got {arr.dtype} values")
            idx = arr.astype(np.int64).reshape(-1)
    bad = idx[(idx < 0) | (idx >= NUM_ARCHS)]
    if bad.size:
        raise ValueError(f"{who}: index {int(bad[0])} not in 0..{NUM_ARCHS - 1}")
    return idx
