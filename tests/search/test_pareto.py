"""Tests for tritune.search.pareto against brute-force references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tritune.search.pareto import (
    crowding_distance,
    dominates,
    hypervolume,
    knee_point,
    non_dominated_sort,
    pareto_mask,
    to_minimization,
)

MIN, MAX = "minimize", "maximize"


# --------------------------------------------------------------------------- #
# brute-force references (pure python)
# --------------------------------------------------------------------------- #
def brute_dominates(a, b) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def brute_min(values, directions):
    return [[(-x if d == MAX else x) for x, d in zip(row, directions)] for row in np.asarray(values).tolist()]


def brute_mask(values, directions):
    pts = brute_min(values, directions)
    return [not any(brute_dominates(q, p) for q in pts) for p in pts]


def brute_fronts(values, directions):
    pts = brute_min(values, directions)
    remaining = set(range(len(pts)))
    fronts = []
    while remaining:
        front = sorted(i for i in remaining if not any(brute_dominates(pts[j], pts[i]) for j in remaining))
        fronts.append(front)
        remaining -= set(front)
    return fronts


def grid_hypervolume(points_min, ref_min):
    """Count the integer unit cells dominated by integer points (== exact hypervolume)."""
    k = len(ref_min)
    lo = int(min(np.min(points_min), 0))
    count = 0
    for cell in itertools.product(*(range(lo, int(r)) for r in ref_min)):
        if any(all(p[j] <= cell[j] for j in range(k)) for p in points_min):
            count += 1
    return float(count)


def inclusion_exclusion_hypervolume(points_min, ref_min):
    pts = [p for p in points_min if all(x < r for x, r in zip(p, ref_min))]
    total = 0.0
    for size in range(1, len(pts) + 1):
        for subset in itertools.combinations(pts, size):
            corner = np.max(np.array(subset), axis=0)
            total += (-1) ** (size + 1) * float(np.prod(np.asarray(ref_min) - corner))
    return total


def random_directions(rng, k):
    return [MIN if b else MAX for b in rng.integers(0, 2, size=k)]


# --------------------------------------------------------------------------- #
# dominance / sorting / mask
# --------------------------------------------------------------------------- #
def test_dominates_basic():
    assert dominates(np.array([1.0, 2.0]), np.array([1.0, 3.0]))
    assert not dominates(np.array([1.0, 3.0]), np.array([1.0, 2.0]))
    assert not dominates(np.array([1.0, 2.0]), np.array([1.0, 2.0]))  # equal points
    assert not dominates(np.array([0.0, 5.0]), np.array([1.0, 2.0]))  # incomparable


def test_to_minimization_negates_maximized_columns():
    v = np.array([[1.0, 2.0, 3.0]])
    out = to_minimization(v, [MIN, MAX, MIN])
    np.testing.assert_array_equal(out, [[1.0, -2.0, 3.0]])
    np.testing.assert_array_equal(v, [[1.0, 2.0, 3.0]])  # input untouched


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", range(6))
def test_sort_and_mask_match_brute_force(k, seed):
    rng = np.random.default_rng(1000 * k + seed)
    n = int(rng.integers(1, 70))
    values = rng.integers(0, 6, size=(n, k)).astype(float)  # small range -> ties
    dup = rng.integers(0, n, size=n // 4)
    values = np.vstack([values, values[dup]])  # exact duplicates
    values = values[rng.permutation(len(values))]
    directions = random_directions(rng, k)

    fronts = non_dominated_sort(values, directions)
    assert [f.tolist() for f in fronts] == brute_fronts(values, directions)
    assert all(f.dtype.kind == "i" for f in fronts)

    mask = pareto_mask(values, directions)
    assert mask.dtype == bool
    assert mask.tolist() == brute_mask(values, directions)
    assert np.flatnonzero(mask).tolist() == fronts[0].tolist()


@pytest.mark.parametrize("k", [2, 3])
def test_duplicates_share_a_front(k):
    rng = np.random.default_rng(7)
    base = rng.random((30, k))
    values = np.vstack([base, base, base[:5]])
    fronts = non_dominated_sort(values, [MIN] * k)
    rank = np.empty(len(values), dtype=int)
    for i, f in enumerate(fronts):
        rank[f] = i
    np.testing.assert_array_equal(rank[:30], rank[30:60])
    np.testing.assert_array_equal(rank[:5], rank[60:])
    mask = pareto_mask(values, [MIN] * k)
    np.testing.assert_array_equal(mask[:30], mask[30:60])


@pytest.mark.parametrize("k", [2, 3, 5])
def test_sort_properties_medium_random(k):
    """Larger continuous data: fronts are internally non-dominated and each is covered by the previous one."""
    rng = np.random.default_rng(42 + k)
    values = rng.random((1500, k))
    fronts = non_dominated_sort(values, [MIN] * k)
    assert sorted(np.concatenate(fronts).tolist()) == list(range(len(values)))

    def dom_matrix(a, b):  # out[i, j]: a[i] dominates b[j]
        le = np.all(a[:, None, :] <= b[None, :, :], axis=2)
        lt = np.any(a[:, None, :] < b[None, :, :], axis=2)
        return le & lt

    for i, f in enumerate(fronts):
        assert not dom_matrix(values[f], values[f]).any()
        if i > 0:
            assert dom_matrix(values[fronts[i - 1]], values[f]).any(axis=0).all()
    np.testing.assert_array_equal(np.flatnonzero(pareto_mask(values, [MIN] * k)), fronts[0])


def test_empty_input():
    empty = np.zeros((0, 2))
    assert non_dominated_sort(empty, [MIN, MIN]) == []
    assert pareto_mask(empty, [MIN, MIN]).shape == (0,)
    assert hypervolume(empty, [MIN, MIN], [1.0, 1.0]) == 0.0


# --------------------------------------------------------------------------- #
# hypervolume
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("seed", range(5))
def test_hypervolume_matches_grid_count(k, seed):
    rng = np.random.default_rng(500 + 10 * k + seed)
    n = int(rng.integers(1, 12))
    pts_min = rng.integers(0, 11, size=(n, k)).astype(float)  # some lie on/over the reference
    ref_min = rng.integers(6, 11, size=k).astype(float)
    directions = random_directions(rng, k)
    flip = np.array([d == MAX for d in directions])
    values = np.where(flip, -pts_min, pts_min)
    reference = np.where(flip, -ref_min, ref_min)

    expected = grid_hypervolume(pts_min.tolist(), ref_min.tolist())
    assert hypervolume(values, directions, reference) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_hypervolume_matches_inclusion_exclusion(k, seed):
    rng = np.random.default_rng(900 + 10 * k + seed)
    pts = rng.random((7, k))
    ref = np.full(k, 1.05)
    expected = inclusion_exclusion_hypervolume(pts.tolist(), ref.tolist())
    assert hypervolume(pts, [MIN] * k, ref) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_hypervolume_simple_values():
    assert hypervolume([[1.0, 1.0]], [MIN, MIN], [3.0, 3.0]) == pytest.approx(4.0)
    assert hypervolume([[1.0, 2.0], [2.0, 1.0]], [MIN, MIN], [3.0, 3.0]) == pytest.approx(3.0)
    assert hypervolume([[0.0, 0.0, 0.0]], [MIN] * 3, [1.0, 2.0, 3.0]) == pytest.approx(6.0)
    # accuracy maximised, latency minimised: reference is a low accuracy and a high latency
    assert hypervolume([[0.9, 10.0]], [MAX, MIN], [0.5, 30.0]) == pytest.approx(0.4 * 20.0)


@pytest.mark.parametrize("k", [2, 3])
def test_hypervolume_invariances(k):
    rng = np.random.default_rng(31 + k)
    pts = rng.random((40, k))
    ref = np.full(k, 1.2)
    base = hypervolume(pts, [MIN] * k, ref)
    assert base > 0

    # a dominated point (and a duplicate) changes nothing
    dominated = pts[np.argmin(pts.sum(axis=1))] + 0.01
    assert hypervolume(np.vstack([pts, dominated, pts[:3]]), [MIN] * k, ref) == pytest.approx(base, rel=1e-12)

    # points outside or on the reference box contribute nothing
    outside = np.vstack([np.full(k, 0.0), np.full(k, 0.0)])
    outside[0, 0] = 1.5  # beyond the reference in one objective
    outside[1, -1] = 1.2  # exactly on the reference
    assert hypervolume(np.vstack([pts, outside]), [MIN] * k, ref) == pytest.approx(base, rel=1e-12)

    # maximising a column equals minimising its negation (reference negated too)
    directions = [MIN] * k
    directions[1] = MAX
    flipped = pts.copy()
    flipped[:, 1] *= -1
    ref_flipped = ref.copy()
    ref_flipped[1] *= -1
    assert hypervolume(flipped, directions, ref_flipped) == pytest.approx(base, rel=1e-12)

    # order of rows does not matter
    assert hypervolume(pts[rng.permutation(len(pts))], [MIN] * k, ref) == pytest.approx(base, rel=1e-12)


def test_hypervolume_nothing_inside_reference():
    assert hypervolume([[5.0, 5.0], [1.0, 9.0]], [MIN, MIN], [4.0, 4.0]) == 0.0


# --------------------------------------------------------------------------- #
# knee point
# --------------------------------------------------------------------------- #
def test_knee_point_convex_front_2d():
    front = np.array([[0.0, 10.0], [1.0, 4.0], [2.0, 2.0], [4.0, 1.0], [10.0, 0.0]])
    dominated = np.array([[5.0, 5.0], [3.0, 3.0], [10.0, 10.0]])
    values = np.vstack([dominated, front])
    perm = np.random.default_rng(3).permutation(len(values))
    values = values[perm]
    knee = knee_point(values, [MIN, MIN])
    np.testing.assert_array_equal(values[knee], [2.0, 2.0])


def test_knee_point_respects_directions():
    # accuracy (maximise) vs latency (minimise): elbow at accuracy 0.8, latency 2
    values = np.array([[0.0, 0.0], [0.6, 1.0], [0.8, 2.0], [0.9, 4.0], [1.0, 10.0], [0.5, 5.0]])
    assert knee_point(values, [MAX, MIN]) == 2


def test_knee_point_3d():
    # extremes at the unit axes of a simplex plus one point bulging towards the ideal
    values = np.array(
        [
            [0.0, 1.0, 1.0],
            [1.0, 0.0, 1.0],
            [1.0, 1.0, 0.0],
            [0.6, 0.6, 0.5],
            [0.2, 0.2, 0.2],
            [0.5, 0.7, 0.5],
        ]
    )
    assert knee_point(values, [MIN] * 3) == 4


def test_knee_point_small_fronts():
    assert knee_point([[1.0, 1.0], [2.0, 2.0]], [MIN, MIN]) == 0  # single front point
    # two front points: closest to ideal after normalisation -> tie -> lowest index
    assert knee_point([[0.0, 1.0], [1.0, 0.0]], [MIN, MIN]) == 0
    assert knee_point([[3.0, 3.0], [0.0, 1.0], [1.0, 0.0]], [MIN, MIN]) == 1


# --------------------------------------------------------------------------- #
# crowding distance
# --------------------------------------------------------------------------- #
def test_crowding_distance_hand_computed():
    front = np.array([[0.0, 4.0], [1.0, 2.0], [3.0, 1.0], [4.0, 0.0]])
    cd = crowding_distance(front)
    assert np.isinf(cd[0]) and np.isinf(cd[3])
    assert cd[1] == pytest.approx((3 - 0) / 4 + (4 - 1) / 4)
    assert cd[2] == pytest.approx((4 - 1) / 4 + (2 - 0) / 4)


def test_crowding_distance_small_and_constant():
    assert np.all(np.isinf(crowding_distance([[1.0, 2.0], [2.0, 1.0]])))
    cd = crowding_distance([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])
    assert cd[1] == pytest.approx(1.0)  # constant objective adds nothing


# --------------------------------------------------------------------------- #
# bad inputs
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: pareto_mask(np.array([1.0, 2.0]), [MIN]), "values"),
        (lambda: pareto_mask(np.zeros((3, 2, 1)), [MIN, MIN]), "values"),
        (lambda: pareto_mask(np.array([[1.0, np.nan]]), [MIN, MIN]), "values.*NaN"),
        (lambda: pareto_mask(np.zeros((3, 2)), [MIN, "max"]), r"directions\[1\].*'minimize' or 'maximize'"),
        (lambda: pareto_mask(np.zeros((3, 2)), [MIN]), "directions.*length"),
        (lambda: pareto_mask(np.zeros((3, 2)), "minimize"), "directions"),
        (lambda: non_dominated_sort(np.zeros((3, 2)), [MIN, "up"]), r"directions\[1\]"),
        (lambda: non_dominated_sort(np.array([[np.nan, 1.0]]), [MIN, MIN]), "NaN"),
        (lambda: hypervolume(np.zeros((3, 4)), [MIN] * 4, [1.0] * 4), "values.*2 or 3"),
        (lambda: hypervolume(np.zeros((3, 1)), [MIN], [1.0]), "values.*2 or 3"),
        (lambda: hypervolume(np.zeros((3, 2)), [MIN, MIN], [1.0, 1.0, 1.0]), "reference"),
        (lambda: hypervolume(np.zeros((3, 2)), [MIN, MIN], [1.0, np.nan]), "reference"),
        (lambda: hypervolume(np.zeros((3, 2)), [MIN, "best"], [1.0, 1.0]), r"directions\[1\]"),
        (lambda: knee_point(np.zeros((0, 2)), [MIN, MIN]), "values"),
        (lambda: knee_point(np.zeros((2, 2)), [MAX, "min"]), r"directions\[1\]"),
        (lambda: crowding_distance(np.array([[1.0, np.nan]])), "values"),
        (lambda: dominates(np.array([1.0, 2.0]), np.array([1.0])), "a and b"),
    ],
)
def test_bad_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
