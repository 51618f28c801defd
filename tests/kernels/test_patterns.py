"""Sparsity masks (exact structure, nearest ratio, magnitude order) and packed formats (exact round trip)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tritune.kernels import DEFAULT_KERNEL_PATTERNS, PackedWeight, achieved_sparsity, check_mask, kernel_library, make_mask, pack
from tritune.spaces.compression import KNOWN_PATTERNS, parse_pattern

SHAPES = [(20, 40), (13, 37), (48, 24, 1, 1), (19, 11, 1, 1), (32, 16, 3, 3), (7, 5, 3, 3)]
RATIOS = (0.5, 0.75, 0.9)
PATTERN_OPTIONS = [(p, {}) for p in KNOWN_PATTERNS] + [("kernel_pattern", {"share": 4}), ("gather_scatter", {"group": 3})]


def _weight(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _applies(pattern, shape):
    return parse_pattern(pattern).family != "kernel_pattern" or (len(shape) == 4 and shape[2:] == (3, 3))


def _cases():
    for pattern, opts in PATTERN_OPTIONS:
        for shape in SHAPES:
            if _applies(pattern, shape):
                yield pytest.param(pattern, opts, shape, id=f"{pattern}{opts or ''}-{'x'.join(map(str, shape))}")


def _round(x):
    return math.floor(x + 0.5 + 1e-9)  # half up, robust to 0.1 * 45 = 4.4999...


def _independent_structure(w: np.ndarray, keep: np.ndarray, pattern: str, s: float, opts: dict) -> None:
    """Re-derive every rule from scratch (plain loops on W[O, K]) and check magnitude order."""
    spec = parse_pattern(pattern)
    O = w.shape[0]
    W, M = np.abs(w.reshape(O, -1)), keep.reshape(O, -1)
    K = W.shape[1]
    if spec.family == "dense":
        assert M.all()
    elif spec.family == "unstructured":
        assert (~M).sum() == min(_round(s * W.size), W.size - 1)
        assert W[~M].max() <= W[M].min()  # the top-k by magnitude
    elif spec.family == "nm":
        n, m = spec.n, spec.m
        for o in range(O):
            for start in range(0, K, m):
                grp, g_keep = W[o, start : start + m], M[o, start : start + m]
                assert g_keep.sum() == math.ceil(n * len(grp) / m)
                if (~g_keep).any():
                    assert grp[~g_keep].max() <= grp[g_keep].min()
        assert math.isclose(achieved_sparsity(keep), 1 - n / m, abs_tol=1 / K)  # a short tail keeps < 1 extra per row
    elif spec.family == "block":
        r, c = spec.rows, spec.cols
        kept_scores, pruned_scores = [], []
        for i in range(0, O, r):
            for j in range(0, K, c):
                b, bk = W[i : i + r, j : j + c], M[i : i + r, j : j + c]
                assert bk.all() or not bk.any()
                (kept_scores if bk.all() else pruned_scores).append(b.mean())
        if pruned_scores and len(kept_scores) > 1:
            assert min(kept_scores) >= max(pruned_scores)
        assert abs((~M).sum() - s * W.size) <= r * c / 2 + 1e-6 or len(kept_scores) == 1
    elif spec.family == "channel":
        rows = M.all(1)
        assert (rows | ~M.any(1)).all()
        assert (~rows).sum() == min(_round(s * O), O - 1)
        if (~rows).any():
            assert W[~rows].mean(1).max() <= W[rows].mean(1).min()
    elif spec.family == "gather_scatter":
        k = max(1, _round((1 - s) * K))
        g = opts.get("group", 1)
        for lo in range(0, O, g):
            rows = slice(lo, min(lo + g, O))
            assert M[rows].sum() == k * len(range(O)[rows])
            assert W[rows][~M[rows]].max() <= W[rows][M[rows]].min()
    else:  # kernel_pattern
        share = opts.get("share", 1)
        lib = [set(p) for p in DEFAULT_KERNEL_PATTERNS]
        kern_w, kern_m = W.reshape(O, -1, 9), M.reshape(O, -1, 9)
        n_kept = 0
        kept_best, pruned_best = [], []
        for lo in range(0, O, share):
            group_w = kern_w[lo : lo + share].sum(0)  # [I, 9] summed over the group
            for i in range(kern_w.shape[1]):
                taps = set(np.nonzero(kern_m[lo, i])[0].tolist())
                assert all(set(np.nonzero(kern_m[o, i])[0].tolist()) == taps for o in range(lo, min(lo + share, O)))
                best = max(group_w[i, list(p)].sum() for p in lib)
                if taps:
                    assert taps in lib
                    assert math.isclose(group_w[i, list(taps)].sum(), best, rel_tol=1e-9)  # the best pattern
                    kept_best.append(best / (min(lo + share, O) - lo))
                    n_kept += 1
                else:
                    pruned_best.append(best / (min(lo + share, O) - lo))
        if pruned_best and n_kept > 1:
            assert min(kept_best) >= max(pruned_best) - 1e-9
        if s <= 5 / 9:
            assert math.isclose(achieved_sparsity(keep), 5 / 9)


@pytest.mark.parametrize(("pattern", "opts", "shape"), list(_cases()))
def test_masks_have_the_exact_structure_and_nearest_ratio(pattern, opts, shape):
    w = _weight(shape)
    for s in RATIOS:
        keep = make_mask(w, pattern, s, **opts)
        assert keep.dtype == torch.bool and keep.shape == w.shape
        check_mask(keep, pattern, s, **opts)
        _independent_structure(w.numpy(), keep.numpy(), pattern, s, opts)


@pytest.mark.parametrize("pattern", ["unstructured", "nm2:4", "block4x1", "block1x4", "channel", "kernel_pattern", "gather_scatter"])
def test_importance_replaces_magnitude(pattern):
    w = _weight((16, 8, 3, 3), seed=1)
    importance = torch.rand(w.shape, generator=torch.Generator().manual_seed(2))
    by_importance = make_mask(w, pattern, 0.75, importance=importance)
    assert torch.equal(by_importance, make_mask(importance, pattern, 0.75))  # the score, not |w|
    assert not torch.equal(by_importance, make_mask(w, pattern, 0.75))
    with pytest.raises(ValueError, match="importance"):
        make_mask(w, pattern, 0.75, importance=importance[:3])


def test_kernel_pattern_ratio_and_share():
    w = _weight((16, 8, 3, 3), seed=3)
    assert math.isclose(achieved_sparsity(make_mask(w, "kernel_pattern", 0.3)), 5 / 9)  # the minimum ratio
    shared = make_mask(w, "kernel_pattern", 0.75, share=8)
    check_mask(shared, "kernel_pattern", 0.75, share=8)
    with pytest.raises(ValueError, match="share=8"):  # per-kernel patterns do not share
        check_mask(make_mask(w, "kernel_pattern", 0.75), "kernel_pattern", share=8)
    # a custom library of 2-tap patterns, and taps=5 (every centre pattern of 5 taps)
    lib = [[[0, 0, 0], [1, 1, 0], [0, 0, 0]], [[0, 1, 0], [0, 1, 0], [0, 0, 0]]]
    keep = make_mask(w, "kernel_pattern", 0.9, library=lib)
    check_mask(keep, "kernel_pattern", 0.9, library=lib)
    assert set(keep.reshape(16, 8, 9).sum(-1).unique().tolist()) <= {0, 2}
    assert kernel_library(taps=5).shape == (math.comb(8, 4), 9)
    check_mask(make_mask(w, "kernel_pattern", 0.6, taps=5), "kernel_pattern", 0.6, taps=5)
    with pytest.raises(ValueError, match="taps"):
        make_mask(w, "kernel_pattern", 0.75, library=lib, taps=4)


BROKEN = [
    ("dense", {}, "dense"),
    ("nm2:4", {}, "row 0 group 0 keeps 3 of 4"),
    ("block4x1", {}, "block"),
    ("block1x4", {}, "block"),
    ("channel", {}, "row 0"),
    ("gather_scatter", {}, "row 0"),
    ("gather_scatter", {"group": 2}, "rows 0..1"),
    ("kernel_pattern", {}, "not a pattern of the library"),
]


@pytest.mark.parametrize(("pattern", "opts", "message"), BROKEN)
def test_check_mask_rejects_a_broken_mask(pattern, opts, message):
    w = _weight((8, 4, 3, 3), seed=4)
    keep = make_mask(w, pattern, 0.75, **opts)
    check_mask(keep, pattern, **opts)
    broken = keep.clone().reshape(8, -1)
    col = int(torch.nonzero(~broken[0])[0]) if (~broken[0]).any() else 0
    broken[0, col] = ~broken[0, col]
    with pytest.raises(ValueError, match=message):
        check_mask(broken.reshape(w.shape), pattern, **opts)


def test_check_mask_rejects_a_wrong_ratio():
    w = _weight((20, 40))
    for pattern in ("unstructured", "block4x1", "channel", "gather_scatter"):
        keep = make_mask(w, pattern, 0.5)
        with pytest.raises(ValueError, match=pattern):
            check_mask(keep, pattern, 0.9)
    check_mask(make_mask(w, "nm2:4", 0.9), "nm2:4", 0.9)  # N:M fixes its own ratio


@pytest.mark.parametrize(("pattern", "opts", "shape"), list(_cases()))
def test_pack_unpack_is_exact(pattern, opts, shape):
    w = _weight(shape, seed=5)
    keep = make_mask(w, pattern, 0.75, **opts)
    dense = (w * keep).numpy()
    packed = pack(w, pattern, keep, **opts)
    out = packed.unpack()
    assert out.dtype == np.float32 and out.shape == tuple(shape)
    assert np.array_equal(out, dense)
    assert np.array_equal(pack(dense, pattern, **opts).unpack(), dense)  # structure read off the nonzeros
    assert packed.pattern == pattern and packed.shape == tuple(shape)


def test_packed_arrays_follow_the_documented_layout():
    w = _weight((10, 7), seed=6)  # K = 7: one short N:M tail group of 3
    nm = pack(w, "nm2:4", make_mask(w, "nm2:4", 0.5))
    assert nm.arrays["values"].shape == (10, 4) and nm.arrays["indices"].dtype == np.uint8
    assert (nm.arrays["indices"][:, 2:] < 3).all()  # tail slots point inside the tail
    w8 = _weight((10, 7, 1, 1), seed=6)
    tail1 = pack(w8, "nm2:8", make_mask(w8, "nm2:8", 0.75))  # K = 7 < M: the tail keeps ceil(2*7/8) = 2
    assert tail1.arrays["values"].shape == (10, 2)
    w1 = _weight((4, 9), seed=7)  # K = 9 = 8 + tail of 1: the tail keeps 1 of N = 2 slots
    p = pack(w1, "nm2:8", make_mask(w1, "nm2:8", 0.75))
    assert p.arrays["values"].shape == (4, 4) and (p.arrays["values"][:, 3] == 0).all()
    assert np.array_equal(p.unpack(), (w1 * make_mask(w1, "nm2:8", 0.75)).numpy())
    blk = pack(w, "block4x1", make_mask(w, "block4x1", 0.75))
    assert blk.arrays["indptr"].shape == (4,) and blk.arrays["values"].shape[1:] == (4, 1)
    kp = pack(_weight((6, 3, 3, 3)), "kernel_pattern", make_mask(_weight((6, 3, 3, 3)), "kernel_pattern", 0.75, share=2), share=2)
    assert kp.options == {"share": 2} and kp.arrays["library"].shape == (8, 9)
    order = list(zip(kp.arrays["kernel_out"] // 2, kp.arrays["kernel_in"], kp.arrays["kernel_out"]))
    assert order == sorted(order)


@pytest.mark.parametrize("pattern", [p for p in KNOWN_PATTERNS if p != "dense"])
@pytest.mark.parametrize("shape", [(64, 48), (32, 16, 3, 3)])
def test_sparse_formats_are_smaller_than_dense(pattern, shape):
    w = _weight(shape, seed=8)
    if not _applies(pattern, shape):  # kernel_pattern on a linear weight: refused, not skipped
        with pytest.raises(ValueError, match="kernel_pattern"):
            make_mask(w, pattern, 0.75)
        return
    packed = pack(w, pattern, make_mask(w, pattern, 0.75))
    assert packed.nbytes < w.numel() * 4 == pack(w, "dense").nbytes


def test_pack_validates_the_structure():
    w = _weight((8, 16), seed=9)
    with pytest.raises(ValueError, match="nm2:4"):
        pack(w, "nm2:4")  # a dense weight is not 2:4
    keep = make_mask(w, "gather_scatter", 0.5)
    keep[0, torch.nonzero(keep[0])[0]] = False
    with pytest.raises(ValueError, match="gather_scatter"):
        pack(w, "gather_scatter", keep)  # unequal rows break the load-balance invariant
    with pytest.raises(ValueError, match="mask: shape"):
        pack(w, "unstructured", keep[:4])


def test_npz_round_trip_without_pickle(tmp_path):
    w = _weight((16, 8, 3, 3), seed=10)
    layers = {
        "a.": pack(w, "block8x1", make_mask(w, "block8x1", 0.75)),
        "b.": pack(w, "kernel_pattern", make_mask(w, "kernel_pattern", 0.75, share=4), share=4),
        "c.": pack(w, "gather_scatter", make_mask(w, "gather_scatter", 0.9, group=2), group=2),
    }
    single = tmp_path / "one.npz"
    layers["a."].save(single)
    assert np.array_equal(PackedWeight.load(single).unpack(), layers["a."].unpack())
    archive = tmp_path / "many.npz"
    np.savez(archive, **{k: v for prefix, p in layers.items() for k, v in p.to_npz_dict(prefix).items()})
    with np.load(archive, allow_pickle=False) as data:
        for prefix, packed in layers.items():
            back = PackedWeight.from_npz_dict(data, prefix)
            assert back.pattern == packed.pattern and back.shape == packed.shape and back.options == packed.options
            assert np.array_equal(back.unpack(), packed.unpack())
    bad = layers["a."].to_npz_dict()
    bad["__packed_meta__"] = np.array(str(bad["__packed_meta__"][()]).replace('"schema": 1', '"schema": 99'))
    with pytest.raises(ValueError, match="schema"):
        PackedWeight.from_npz_dict(bad)


def test_clear_errors():
    w = _weight((8, 4, 1, 1))
    with pytest.raises(ValueError, match="pattern: unknown sparsity pattern 'nm4:2'"):
        make_mask(w, "nm4:2", 0.5)
    with pytest.raises(ValueError, match=r"kernel_pattern: weight shape \(8, 4, 1, 1\)"):
        make_mask(w, "kernel_pattern", 0.75)
    for s in (1.0, -0.1, float("nan"), "high"):
        with pytest.raises(ValueError, match="sparsity"):
            make_mask(w, "unstructured", s)
    with pytest.raises(ValueError, match=r"unknown options \['share'\]"):
        make_mask(w, "unstructured", 0.5, share=2)
    with pytest.raises(ValueError, match="group"):
        make_mask(w, "gather_scatter", 0.5, group=0)
    with pytest.raises(ValueError, match="weight: shape"):
        make_mask(torch.ones(5), "unstructured", 0.5)


def test_corrupted_arrays_are_refused():
    w = _weight((8, 16), seed=11)
    packed = pack(w, "unstructured", make_mask(w, "unstructured", 0.75))
    arrays = dict(packed.arrays, indices=packed.arrays["indices"][:-1])
    with pytest.raises(ValueError, match="indices must hold one column"):
        PackedWeight("unstructured", (8, 16), arrays, {})
    arrays = dict(packed.arrays, indptr=packed.arrays["indptr"][::-1].copy())
    with pytest.raises(ValueError, match="indptr must start at 0"):
        PackedWeight("unstructured", (8, 16), arrays, {})
    arrays = dict(packed.arrays, values=packed.arrays["values"].astype(np.float64))
    with pytest.raises(ValueError, match="values: dtype float64"):
        PackedWeight("unstructured", (8, 16), arrays, {})
    nm = pack(w, "nm2:4", make_mask(w, "nm2:4", 0.5))
    with pytest.raises(ValueError, match="positions < 4"):
        PackedWeight("nm2:4", (8, 16), dict(nm.arrays, indices=nm.arrays["indices"] + 4), {})
