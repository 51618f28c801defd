"""Pareto utilities for multi-objective search: dominance, sorting, hypervolume, knees.

Every public function takes objectives as an ``(n, k)`` float array plus one
direction per column (``"minimize"`` or ``"maximize"``).  Internally all work is
done on an all-minimize copy (maximized columns negated) so the algorithms only
ever need one comparison direction.  Everything is pure numpy and stateless.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

import numpy as np

__all__ = [
    "DIRECTIONS",
    "to_minimization",
    "dominates",
    "non_dominated_sort",
    "pareto_mask",
    "hypervolume",
    "hypervolume_rows",
    "knee_point",
    "crowding_distance",
    "spread_rows",
]

DIRECTIONS: tuple[str, str] = ("minimize", "maximize")

# Pairwise comparisons are done in tiles of about this many elements so memory
# stays bounded (a few MB) no matter how many points are sorted.
_TILE_ELEMENTS = 1 << 21
_BLOCK = 512


# --------------------------------------------------------------------------- #
# validation / conversion
# --------------------------------------------------------------------------- #
def _as_values(values: object, name: str = "values") -> np.ndarray:
    """Coerce to a float (n, k) array, rejecting shapes and NaNs early so errors name the argument."""
    try:
        arr = np.array(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array of shape (n, k); {exc}") from None
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (n, k), got shape {arr.shape}")
    if arr.shape[1] < 1:
        raise ValueError(f"{name} must have at least one objective column (k >= 1), got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{name} must not contain NaN")
    return arr


def _check_directions(directions: Sequence[str], k: int) -> list[str]:
    """Validate one direction per objective column."""
    if isinstance(directions, (str, bytes)):
        raise ValueError(
            f"directions must be a sequence with one of {DIRECTIONS} per column, got the single string {directions!r}"
        )
    try:
        dirs = list(directions)
    except TypeError:
        raise ValueError(f"directions must be a sequence of {DIRECTIONS}, got {directions!r}") from None
    if len(dirs) != k:
        raise ValueError(f"directions must have length k={k} (one per column of values), got {len(dirs)}")
    for i, d in enumerate(dirs):
        if d not in DIRECTIONS:
            raise ValueError(f"directions[{i}] must be 'minimize' or 'maximize', got {d!r}")
    return dirs


def to_minimization(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Return a validated all-minimize copy of ``values`` (maximized columns negated).

    One canonical direction keeps every algorithm below a single ``<=`` test.
    """
    arr = _as_values(values)
    dirs = _check_directions(directions, arr.shape[1])
    flip = np.array([d == "maximize" for d in dirs], dtype=bool)
    arr[:, flip] = -arr[:, flip]
    # Adding 0.0 turns -0.0 into 0.0 so negated zeros never look like distinct points.
    return arr + 0.0


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """True if minimization vector ``a`` Pareto-dominates ``b`` (<= everywhere, < somewhere)."""
    av = np.asarray(a, dtype=float)
    bv = np.asarray(b, dtype=float)
    if av.ndim != 1 or bv.ndim != 1 or av.shape != bv.shape:
        raise ValueError(f"a and b must be 1-D vectors of equal length, got shapes {av.shape} and {bv.shape}")
    if np.isnan(av).any() or np.isnan(bv).any():
        raise ValueError("a and b must not contain NaN")
    return bool(np.all(av <= bv) and np.any(av < bv))


# --------------------------------------------------------------------------- #
# internal helpers (all take minimization arrays)
# --------------------------------------------------------------------------- #
def _unique_lex(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lexicographically sorted unique rows and the row -> unique index map.

    After this, an earlier unique row dominates a later one iff it is <= in every
    column (equality is impossible), and no later row can dominate an earlier one.
    """
    n = v.shape[0]
    order = np.lexsort(v.T[::-1])
    s = v[order]
    new = np.ones(n, dtype=bool)
    if n > 1:
        new[1:] = np.any(s[1:] != s[:-1], axis=1)
    group = np.cumsum(new) - 1
    inverse = np.empty(n, dtype=np.intp)
    inverse[order] = group
    return s[new], inverse


def _leq_all(prev: np.ndarray, blk: np.ndarray) -> np.ndarray:
    """Boolean matrix ``out[q, p] = all(prev[q] <= blk[p])`` (True when there are no columns)."""
    out = np.ones((prev.shape[0], blk.shape[0]), dtype=bool)
    for j in range(prev.shape[1]):
        out &= prev[:, j, None] <= blk[None, :, j]
    return out


def _ranks_2d(v: np.ndarray) -> np.ndarray:
    """Front index of every row for 2 objectives in O(n log n).

    Rows are visited in (f0, f1) order; each front is summarised by its last
    member, which has the front's smallest (f1, f0).  A front dominates the new
    row iff that key is lexicographically smaller than the row's key (equal keys
    are duplicates), and the keys stay sorted across fronts, so the row's front
    is found by binary search (patience sorting).
    """
    n = v.shape[0]
    order2 = np.lexsort((v[:, 0], v[:, 1]))
    s2 = v[order2]
    new = np.ones(n, dtype=bool)
    if n > 1:
        new[1:] = np.any(s2[1:] != s2[:-1], axis=1)
    key = np.empty(n, dtype=np.int64)
    key[order2] = np.cumsum(new)
    order = np.lexsort((v[:, 1], v[:, 0]))
    ranks = np.empty(n, dtype=np.int64)
    lasts: list[int] = []
    for p, kp in zip(order.tolist(), key[order].tolist()):
        i = bisect_left(lasts, kp)
        if i == len(lasts):
            lasts.append(kp)
        else:
            lasts[i] = kp
        ranks[p] = i
    return ranks


def _ranks_general(v: np.ndarray) -> np.ndarray:
    """Front index of every row for any k, O(k n^2) in bounded-memory tiles.

    Unique rows are processed in lexicographic order, block by block.  A row's
    front is 1 + the highest front among its dominators, all of which come
    earlier; earlier blocks are handled with vectorised tiles, the current block
    with a short loop over its own (small) dominance matrix.
    """
    uniq, inverse = _unique_lex(v)
    m = uniq.shape[0]
    if v.shape[1] == 1:
        return inverse.astype(np.int64)
    rest = np.ascontiguousarray(uniq[:, 1:])  # column 0 is already sorted
    rank = np.empty(m, dtype=np.int32)
    for s in range(0, m, _BLOCK):
        e = min(s + _BLOCK, m)
        blk = rest[s:e]
        best = np.full(e - s, -1, dtype=np.int32)
        chunk = max(1, _TILE_ELEMENTS // (e - s))
        for c0 in range(0, s, chunk):
            c1 = min(c0 + chunk, s)
            dom = _leq_all(rest[c0:c1], blk)
            cand = np.where(dom, rank[c0:c1, None], np.int32(-1)).max(axis=0)
            np.maximum(best, cand, out=best)
        inner = np.triu(_leq_all(blk, blk), k=1)
        for i in range(e - s):
            dominators = np.flatnonzero(inner[:i, i])
            r = int(best[i])
            if dominators.size:
                r = max(r, int(rank[s + dominators].max()))
            rank[s + i] = r + 1
    return rank[inverse].astype(np.int64)


def _mask_2d(v: np.ndarray) -> np.ndarray:
    """First front for 2 objectives in O(n log n).

    Sorted by (f0, f1), a row is dominated iff some row before its duplicate
    group has f1 <= its f1; the prefix minimum of f1 *excluding the group*
    answers that, so duplicates of a non-dominated row all stay non-dominated.
    """
    n = v.shape[0]
    order = np.lexsort((v[:, 1], v[:, 0]))
    s = v[order]
    new = np.ones(n, dtype=bool)
    if n > 1:
        new[1:] = np.any(s[1:] != s[:-1], axis=1)
    group_start = np.maximum.accumulate(np.where(new, np.arange(n), 0))
    prefix_min = np.empty(n + 1)
    prefix_min[0] = np.inf
    np.minimum.accumulate(s[:, 1], out=prefix_min[1:])
    before_group = prefix_min[group_start]  # min f1 over rows strictly before the group
    keep_sorted = (group_start == 0) | (before_group > s[:, 1])  # explicit first group: f1 may be +inf
    mask = np.empty(n, dtype=bool)
    mask[order] = keep_sorted
    return mask


def _mask_general(v: np.ndarray) -> np.ndarray:
    """First front for any k: compare each block only against the front found so far.

    A dominated row's dominator chain ends in a non-dominated row that precedes
    it lexicographically, so testing against the running front is sufficient.
    """
    uniq, inverse = _unique_lex(v)
    m = uniq.shape[0]
    rest = np.ascontiguousarray(uniq[:, 1:])
    nd = np.zeros(m, dtype=bool)
    front = rest[:0]
    for s in range(0, m, _BLOCK):
        e = min(s + _BLOCK, m)
        blk = rest[s:e]
        alive = ~np.triu(_leq_all(blk, blk), k=1).any(axis=0)
        chunk = max(1, _TILE_ELEMENTS // (e - s))
        for c0 in range(0, front.shape[0], chunk):
            if not alive.any():
                break
            alive &= ~_leq_all(front[c0 : c0 + chunk], blk).any(axis=0)
        nd[s:e] = alive
        front = np.concatenate([front, blk[alive]])
    return nd[inverse]


def _first_front_mask(v: np.ndarray) -> np.ndarray:
    """Dispatch to the fastest first-front routine for the column count."""
    if v.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    if v.shape[1] == 2:
        return _mask_2d(v)
    return _mask_general(v)


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #
def non_dominated_sort(values: np.ndarray, directions: Sequence[str]) -> list[np.ndarray]:
    """Split rows into Pareto fronts (front 0 first) as ascending arrays of row indices.

    Needed for NSGA-style ranking; duplicated points always share a front.
    2 objectives use an O(n log n) sweep, more use tiled O(k n^2) numpy.
    """
    v = to_minimization(values, directions)
    n = v.shape[0]
    if n == 0:
        return []
    ranks = _ranks_2d(v) if v.shape[1] == 2 else _ranks_general(v)
    order = np.argsort(ranks, kind="stable")
    counts = np.bincount(ranks)
    return [np.asarray(f, dtype=np.intp) for f in np.split(order, np.cumsum(counts)[:-1])]


def pareto_mask(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows (first front only).

    Cheaper than a full sort when only the Pareto set is reported; duplicates of
    a non-dominated point are all marked non-dominated.
    """
    return _first_front_mask(to_minimization(values, directions))


def _hv2d_sorted(f0: np.ndarray, f1: np.ndarray, r0: float, r1: float) -> float:
    """2-D hypervolume of points already sorted by f0 (ties in any order) and inside the reference box."""
    if f0.size == 0:
        return 0.0
    widths = np.diff(np.append(f0, r0))
    heights = r1 - np.minimum.accumulate(f1)
    return float(np.dot(widths, heights))


def hypervolume(values: np.ndarray, directions: Sequence[str], reference: Sequence[float]) -> float:
    """Exact hypervolume dominated by the rows and bounded by ``reference``.

    The standard quality indicator for comparing search runs.  ``reference``
    is given in the original directions (a low accuracy for a maximized
    accuracy column).  Rows not strictly better than the reference in every
    objective are dropped.  2 objectives: sort + sweep, O(n log n).
    3 objectives: sweep over the third objective summing 2-D slice areas,
    O(n^2) after an O(n log n) sort.
    """
    v = _as_values(values)
    k = v.shape[1]
    dirs = _check_directions(directions, k)
    if k not in (2, 3):
        raise ValueError(f"values must have 2 or 3 objective columns for hypervolume, got k={k}")
    try:
        ref = np.array(reference, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"reference must be a numeric vector of length k={k}, got {reference!r}") from None
    if ref.shape != (k,):
        raise ValueError(f"reference must have shape ({k},) matching the columns of values, got {ref.shape}")
    if not np.all(np.isfinite(ref)):
        raise ValueError("reference must be finite (no NaN or inf)")
    flip = np.array([d == "maximize" for d in dirs], dtype=bool)
    v = np.where(flip, -v, v) + 0.0
    ref = np.where(flip, -ref, ref) + 0.0

    v = v[np.all(v < ref, axis=1)]
    if v.shape[0] == 0:
        return 0.0
    if np.isinf(v).any():  # only -inf can survive the filter: unbounded volume
        return float("inf")
    if k == 2:
        order = np.lexsort((v[:, 1], v[:, 0]))
        return _hv2d_sorted(v[order, 0], v[order, 1], ref[0], ref[1])

    v = _unique_lex(v[_first_front_mask(v)])[0]  # sorted by f0, then f1, then f2
    levels = np.unique(v[:, 2])
    tops = np.append(levels[1:], ref[2])
    total = 0.0
    for z, z_next in zip(levels.tolist(), tops.tolist()):
        inside = v[:, 2] <= z
        total += _hv2d_sorted(v[inside, 0], v[inside, 1], ref[0], ref[1]) * (z_next - z)
    return float(total)


def knee_point(values: np.ndarray, directions: Sequence[str]) -> int:
    """Row index of the knee of the first front: the best-balanced trade-off.

    Method: take the first front and normalise each objective to [0, 1] with
    its min/max over the front (constant objectives become 0).  The extreme
    point of objective j is the front point with the smallest normalised value
    of j (ties broken by the smallest sum of the others).  The hyperplane
    through the k extreme points (for 2-D the line between the two ends; a
    least-squares fit if they do not span a unique hyperplane) is written
    ``w . x = 1``, and the knee is the point with the largest signed
    perpendicular distance ``(1 - w . x) / |w|`` towards the ideal point
    (origin), i.e. the point that bulges furthest out of the straight
    trade-off.  Ties, and fronts with only 1 or 2 distinct points, go to the
    point with the smallest normalised sum (closest to the ideal point), then
    to the lowest row index.
    """
    v = to_minimization(values, directions)
    if v.shape[0] == 0:
        raise ValueError("values must contain at least one row to have a knee point")
    idx = np.flatnonzero(_first_front_mask(v))
    f = v[idx]
    if not np.all(np.isfinite(f)):
        raise ValueError("values on the first front must be finite to normalise them for knee_point")
    lo = f.min(axis=0)
    span = f.max(axis=0) - lo
    z = np.divide(f - lo, span, out=np.zeros_like(f), where=span > 0)
    total = z.sum(axis=1)

    k = z.shape[1]
    n_distinct = np.unique(z, axis=0).shape[0]
    if n_distinct <= 2 or k == 1:
        return int(idx[np.argmin(total)])  # argmin: first, i.e. lowest row, among ties

    extremes = np.empty((k, k))
    for j in range(k):
        e = np.lexsort((total - z[:, j], z[:, j]))[0]
        extremes[j] = z[e]
    w = np.linalg.lstsq(extremes, np.ones(k), rcond=None)[0]
    norm = float(np.linalg.norm(w))
    if not np.isfinite(norm) or norm == 0.0:  # pragma: no cover - degenerate numerics
        w, norm = np.ones(k), float(np.sqrt(k))
    dist = (1.0 - z @ w) / norm
    dist = np.round(dist, 12)  # let floating-point noise tie so the documented tie-break applies
    best = np.lexsort((idx, total, -dist))[0]
    return int(idx[best])


def crowding_distance(values: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each row of ONE front of minimization values.

    Per objective, a point's distance adds the normalised gap between its two
    sorted neighbours; the first and last point of each sort get ``inf`` so the
    boundary of the front is always preserved.  Constant objectives add 0.
    """
    v = _as_values(values)
    if not np.all(np.isfinite(v)):
        raise ValueError("values must be finite for crowding_distance")
    m, k = v.shape
    dist = np.zeros(m)
    if m <= 2:
        dist[:] = np.inf
        return dist
    for j in range(k):
        order = np.argsort(v[:, j], kind="stable")
        col = v[order, j]
        span = col[-1] - col[0]
        dist[order[0]] = np.inf
        dist[order[-1]] = np.inf
        if span > 0:
            dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    return dist


def _even_along(v: np.ndarray, n: int) -> list[int]:
    """``n`` positions in one front of minimization values ``v``, sorted by its first column,
    evenly spaced by arc length in the front's own normalised units (both ends first)."""
    span = v.max(axis=0) - v.min(axis=0)
    z = np.divide(v - v.min(axis=0), span, out=np.zeros_like(v), where=span > 0)
    walked = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(z, axis=0), axis=1))])
    targets = np.linspace(0.0, walked[-1], n)
    order = [0, n - 1] + list(range(1, n - 1)) if n > 1 else [0]
    picks: list[int] = []
    for t in order:
        free = [i for i in range(len(v)) if i not in picks]
        picks.append(min(free, key=lambda i: (abs(walked[i] - targets[t]), i)))
    return picks


def spread_rows(values: np.ndarray, directions: Sequence[str], n: int, knee: bool = True) -> list[int]:
    """Row indices of up to ``n`` rows, front by front (non-dominated order, each front in order
    of its first objective): whole fronts while they fit, then the next front thinned to rows
    evenly spaced along it (arc length, each objective scaled to the front's range): both its
    ends, then, with ``knee``, its knee (`knee_point`) in place of the nearest pick between
    them. A single pick is the knee.

    This is the promotion rule of multi-objective successive halving (Schmucker et al.,
    "Multi-objective asynchronous successive halving", 2021), with an even spread as the
    tie-break so that what is kept covers the whole trade-off, not one end of it."""
    v = to_minimization(values, directions)
    chosen: list[int] = []
    for members in non_dominated_sort(v, ["minimize"] * v.shape[1]):
        room = n - len(chosen)
        if room <= 0:
            break
        members = members[np.lexsort(v[members].T[::-1])]
        if len(members) <= room:
            chosen += members.tolist()
            continue
        picks = _even_along(v[members], room)
        if knee and room != 2 and np.all(np.isfinite(v[members])):
            at = knee_point(v[members], ["minimize"] * v.shape[1])
            if at not in picks:
                inner = range(2, room) if room > 2 else range(room)
                nearest = min(inner, key=lambda i: (abs(picks[i] - at), i))
                picks[nearest] = at
        chosen += [int(members[i]) for i in sorted(picks)]
    return chosen


def hypervolume_rows(values: np.ndarray, directions: Sequence[str], n: int, margin: float = 0.1) -> list[int]:
    """Row indices of up to ``n`` rows chosen greedily by hypervolume contribution: each step
    adds the row that grows the chosen set's hypervolume most (ties: the lower index), against a
    reference ``margin`` x each objective's range beyond its worst finite value, so that both ends
    of a front can count. The row that alone bounds the most volume comes first: a front's knee
    rather than an end of it. Rows that add nothing (dominated by the chosen ones, or with a
    non-finite objective) follow in `spread_rows` order. The selection rule of SMS-EMOA (Beume,
    Naujoks and Emmerich, "SMS-EMOA: multiobjective selection based on dominated hypervolume",
    2007); more than 3 objectives fall back to `spread_rows`."""
    v = to_minimization(_as_values(values), directions)
    k = v.shape[1]
    if k not in (2, 3):
        return spread_rows(values, directions, n)
    finite = np.all(np.isfinite(v), axis=1)
    chosen: list[int] = []
    if finite.any():
        low, high = v[finite].min(axis=0), v[finite].max(axis=0)
        span = np.where(high > low, high - low, np.maximum(np.abs(high), 1.0))
        reference = high + margin * span
        minimize = ["minimize"] * k
        volume = 0.0
        while len(chosen) < n:
            gains = [(hypervolume(v[chosen + [i]], minimize, reference) - volume, -i) for i in np.flatnonzero(finite) if i not in chosen]
            if not gains or max(gains)[0] <= 0.0:
                break
            gain, i = max(gains)
            chosen.append(-i)
            volume += gain
    rest = [i for i in range(len(v)) if i not in chosen]
    if len(chosen) < n and rest:
        chosen += [rest[j] for j in spread_rows(np.asarray(values, dtype=float)[rest], directions, n - len(chosen))]
    return sorted(int(i) for i in chosen)

