"""`score_report`: the one error summary every predictor is judged (and shipped) with.

Search needs two things from a latency predictor: the *order* of candidates (Pareto fronts and
constraints compare them) and the *size* of its misses (a 10 % error decides whether a constraint
is met). So the report holds rank agreement (Spearman rho, Kendall tau) next to relative error
(MAPE, share of predictions within +-5 % and +-10 %) and the absolute RMSE.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

#: Keys of a report, in the order tables print them.
REPORT_KEYS = ("n", "mape", "rmse", "within_5", "within_10", "spearman", "kendall")
#: Slack on the +-5 % / +-10 % bounds so that 1.1 vs 1.0 counts as within 10 % despite rounding.
_EPS = 1e-12


def _vector(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 2 and 1 in arr.shape:  # a column or row vector
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"score_report: {name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _rank_corr(fn, a: np.ndarray, b: np.ndarray) -> float:
    # Rank correlation is undefined for fewer than two points or a constant vector: say so with NaN.
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    return float(fn(a, b)[0])


def score_report(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Error of ``y_pred`` against ``y_true`` (two equally long 1-D arrays of finite numbers).

    Returns ``n``; ``mape`` (mean absolute percentage error, %); ``rmse`` (units of ``y``);
    ``within_5`` / ``within_10`` (share of predictions whose relative error ``|p - t| / |t|`` is at
    most 5 % / 10 %); ``spearman`` and ``kendall`` (tau-b) rank correlations, NaN where undefined.
    A true value of 0 has infinite relative error (counted as a miss), so report such data in a
    unit where it is not 0.
    """
    t, p = _vector(y_true, "y_true"), _vector(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"score_report: y_true has {t.size} values, y_pred {p.size}")
    if t.size == 0:
        raise ValueError("score_report: no values to score")
    for name, arr in (("y_true", t), ("y_pred", p)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise ValueError(f"score_report: {name} has {bad} non-finite values (NaN or inf); drop them first")
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(p - t) / np.abs(t)
    rel = np.where(np.isnan(rel), np.inf, rel)  # 0/0: a true 0 predicted as 0 is still undefined
    return {
        "n": int(t.size),
        "mape": float(100.0 * np.mean(rel)),
        "rmse": float(np.sqrt(np.mean((p - t) ** 2))),
        "within_5": float(np.mean(rel <= 0.05 + _EPS)),
        "within_10": float(np.mean(rel <= 0.10 + _EPS)),
        "spearman": _rank_corr(stats.spearmanr, t, p),
        "kendall": _rank_corr(stats.kendalltau, t, p),
    }
