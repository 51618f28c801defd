"""Generated C kernels: every family against dense torch, odd shapes, the compile cache, compiler errors, autotuning."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tritune.kernels import make_mask, pack
from tritune.kernels.codegen import (
    CompilerError,
    Variant,
    aligned_empty,
    autotune,
    compile_layer,
    compiler_available,
    find_compiler,
    openmp_supported,
)
from tritune.kernels.codegen import compiler as cc_mod

pytestmark = pytest.mark.skipif(not compiler_available(), reason="no working C compiler")

REL_TOL = 1e-4
_ACTS = {"none": lambda t: t, "relu": F.relu, "hswish": F.hardswish, "hsigmoid": F.hardsigmoid}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("kernels")


def _layer(pattern, shape, sparsity, seed, **opts):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    mask = make_mask(w, pattern, sparsity, **opts)
    return pack(w * mask, pattern, mask, **opts)


def _reference(packed, kind, x, bias, stride, act):
    w = torch.from_numpy(packed.unpack()).double()
    xt = torch.from_numpy(x).double()
    b = None if bias is None else torch.from_numpy(bias).double()
    if kind == "linear":
        y = F.linear(xt, w, b)
    else:
        y = F.conv2d(xt[None], w, b, stride=stride, padding=w.shape[-1] // 2)[0]
    return _ACTS[act](y).numpy()


def _check(packed, kind, in_hw, cache, stride=1, act="none", bias=True, tile=None, seed=0):
    rng = np.random.default_rng(seed)
    b = rng.standard_normal(packed.shape[0]).astype(np.float32) if bias else None
    kernel = compile_layer(packed, kind, in_hw, stride, b, act, tile=tile, cache_dir=cache)
    x = rng.standard_normal(kernel.in_shape).astype(np.float32)
    y = kernel.run(x)
    ref = _reference(packed, kind, x, b, stride, act)
    assert y.shape == ref.shape == kernel.out_shape
    err = np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-6)
    assert err <= REL_TOL, f"{packed.pattern} {kind} {packed.shape} {in_hw} s{stride} {kernel.variant.name}: rel err {err:.2e}"
    return kernel


def _random_cases():
    """Random shapes per family (seeded), sparsity 50/75/90 in turn, odd sizes on purpose."""
    rng = np.random.default_rng(1234)
    families = [
        ("block4x1", {}), ("block8x1", {}), ("block16x1", {}), ("block1x4", {}), ("unstructured", {}), ("nm2:4", {}),
        ("nm1:4", {}), ("nm2:8", {}), ("gather_scatter", {}), ("gather_scatter", {"group": 3}), ("dense", {}), ("channel", {}),
    ]
    ratios = (0.5, 0.75, 0.9)
    acts = tuple(_ACTS)
    cases = []
    i = 0
    for pattern, opts in families:
        for hw in ((7, 7), (4, 12), (1, 3)):  # staged (49 px), direct (48 px, a tile tail), narrow (3 px)
            o, k = int(rng.integers(3, 70)), int(rng.integers(2, 90))
            cases.append(pytest.param(pattern, opts, (o, k, 1, 1), "conv1x1", hw, 1, ratios[i % 3], acts[i % 4], i % 5 != 4,
                                      id=f"{pattern}{opts or ''}-1x1-{o}x{k}-{hw[0]}x{hw[1]}"))
            i += 1
        o, k = int(rng.integers(3, 70)), int(rng.integers(2, 90))
        cases.append(pytest.param(pattern, opts, (o, k), "linear", None, 1, ratios[i % 3], acts[i % 4], True,
                                  id=f"{pattern}{opts or ''}-linear-{o}x{k}"))
        i += 1
    for pattern, opts in [("kernel_pattern", {}), ("kernel_pattern", {"share": 4}), ("kernel_pattern", {"share": 8}),
                          ("block4x1", {}), ("block8x1", {}), ("unstructured", {}), ("nm2:4", {})]:
        for stride in (1, 2):
            o, c = int(rng.integers(3, 40)), int(rng.integers(1, 20))
            h, w = int(rng.integers(3, 20)), int(rng.integers(3, 20))
            ratio = (0.7, 0.8, 0.9)[i % 3] if pattern == "kernel_pattern" else ratios[i % 3]
            cases.append(pytest.param(pattern, opts, (o, c, 3, 3), "conv3x3", (h, w), stride, ratio, acts[i % 4], True,
                                      id=f"{pattern}{opts or ''}-3x3-{o}x{c}-{h}x{w}-s{stride}"))
            i += 1
    return cases


@pytest.mark.parametrize("pattern,opts,shape,kind,in_hw,stride,ratio,act,bias", _random_cases())
def test_kernel_matches_dense_torch(cache, pattern, opts, shape, kind, in_hw, stride, ratio, act, bias):
    packed = _layer(pattern, shape, ratio, seed=sum(shape), **opts)
    _check(packed, kind, in_hw, cache, stride=stride, act=act, bias=bias)


@pytest.mark.parametrize("pattern,opts,shape,in_hw,tile", [
    ("block2x2", {}, (24, 13, 3, 3), (9, 15), None),  # rows W + 1 = 16 floats: one vector per grid row
    ("block4x2", {}, (19, 7, 3, 3), (6, 17), Variant(3, 1, 0)),  # a partial block row; vectors straddle grid rows
    ("block4x2", {}, (16, 21, 3, 3), (11, 40), Variant(2, 1, 64)),  # K tiles (partial sums in the workspace)
    ("kernel_pattern", {"share": 4}, (32, 5, 3, 3), (5, 31), Variant(1, 1, 0)),
    ("kernel_pattern", {"share": 8}, (20, 9, 3, 3), (7, 23), None),
])
def test_one_plane_3x3_layout_matches_torch_and_writes_every_output(cache, pattern, opts, shape, in_hw, tile):
    """Stride-1 3x3 kernels that share loads (and are not read in place, see the masked layout)
    stage one plane with a shared zero column; the lane on that column is dropped when stored, so
    no output is skipped or shifted."""
    packed = _layer(pattern, shape, 0.78 if pattern == "kernel_pattern" else 0.75, seed=sum(shape), **opts)
    kernel = _check(packed, "conv3x3", in_hw, cache, act="relu", tile=tile)
    assert kernel.geometry.one_plane and kernel.geometry.wp == in_hw[1] + 1
    x = np.random.default_rng(1).standard_normal(kernel.in_shape).astype(np.float32)
    out = np.full(kernel.out_shape, np.nan, dtype=np.float32)
    kernel.run(x, out)
    assert np.isfinite(out).all()
    # narrow rows (a vector would hold two zero columns), stride 2 and load-bound kernels keep three planes
    narrow = (9, cc_mod.vector_width() - 3)
    for other, hw, stride in (("block4x2", narrow, 1), ("block8x1", (9, 15), 2), ("unstructured", (9, 15), 1)):
        k = compile_layer(_layer(other, shape, 0.75, seed=1), "conv3x3", hw, stride, cache_dir=cache)
        assert not k.geometry.one_plane and k.geometry.planes == 3 * stride


def _avx512() -> bool:
    return cc_mod.vector_width() == 16


@pytest.mark.parametrize("pattern,shape,in_hw,tile,threads", [
    ("block8x1", (24, 13, 3, 3), (9, 15), None, 1),  # default tile
    ("block4x1", (19, 7, 3, 3), (6, 17), Variant(3, 1, 0), 1),  # a partial block row
    ("block4x1", (12, 9, 3, 3), (20, 20), Variant(1, 2, 0), 1),  # one-vector tiles: many clear of the border rows; 2 sets
    ("block4x1", (8, 6, 3, 3), (13, 29), Variant(7, 1, 0), 1),  # seven masks at once
    ("block16x1", (32, 5, 3, 3), (5, 31), Variant(1, 1, 0), 1),
    ("block8x1", (16, 11, 3, 3), (1, 37), Variant(2, 1, 0), 1),  # one row: every tap above or below is masked out
    ("block8x1", (16, 11, 3, 3), (37, 1), Variant(2, 1, 0), 1),  # one column: a vector spans 16 rows
    ("block8x1", (9, 4, 3, 3), (1, 1), None, 1),  # one pixel: only the centre tap
    ("block8x1", (16, 10, 3, 3), (3, 5), None, 1),
    ("dense", (13, 6, 3, 3), (11, 12), Variant(2, 1, 0), 1),
    ("channel", (21, 8, 3, 3), (10, 9), Variant(2, 1, 0), 1),  # pruned rows (no blocks) are act(bias)
    ("block8x1", (40, 17, 3, 3), (23, 21), Variant(2, 1, 0), 2),  # two OpenMP threads
])
def test_masked_3x3_layout_matches_torch_and_writes_every_output(cache, pattern, shape, in_hw, tile, threads):
    """Stride-1 3x3 block kernels with one-column blocks read the caller's input in place (no
    staging copy): per-tap lane masks zero the reads past the image border, on images smaller than
    a vector, one row or one column wide, and on tiles clear of the border rows (fewer masks)."""
    if not _avx512():
        pytest.skip("the masked layout is for AVX-512 (vector width 16)")
    packed = _layer(pattern, shape, 0.75, seed=sum(shape))
    rng = np.random.default_rng(3)
    b = rng.standard_normal(shape[0]).astype(np.float32)
    opts = {"threads": threads} if threads > 1 and openmp_supported() else {}
    kernel = compile_layer(packed, "conv3x3", in_hw, 1, b, "hswish", tile=tile, cache_dir=cache, **opts)
    assert kernel.geometry.mode == "masked" and kernel.variant.k_tile == 0
    x = aligned_empty(kernel.in_shape)
    x[...] = rng.standard_normal(kernel.in_shape)
    out = np.full(kernel.out_shape, np.nan, dtype=np.float32)
    kernel.run(x, out)
    ref = _reference(packed, "conv3x3", np.array(x), b, 1, "hswish")
    assert np.isfinite(out).all()
    err = np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-6)
    assert err <= REL_TOL, f"{pattern} {shape} {in_hw} {kernel.variant.name}: rel err {err:.2e}"


@pytest.mark.parametrize("kind,pattern,in_hw,stride,tile,opts", [
    ("conv1x1", "block4x1", (14, 14), 1, Variant(4, 1, 0), {}),  # 12 vectors + 4 pixels: half tail vector (AVX-512)
    ("conv1x1", "block8x1", (7, 7), 1, Variant(2, 1, 0), {}),  # 3 vectors + 1 pixel
    ("conv1x1", "block8x1", (5, 5), 1, Variant(1, 1, 0), {}),  # 1 vector + 9 pixels: a full overlapping tail vector
    ("conv1x1", "block4x1", (6, 6), 1, Variant(3, 1, 0, True), {}),  # packed tail tile
    ("conv1x1", "block4x1", (14, 14), 1, Variant(2, 2, 48), {}),  # K tiles: the tail's partial sums
    ("conv1x1", "block16x1", (3, 11), 1, Variant(1, 1, 0), {}),  # tail tile of one vector only
    ("conv1x1", "dense", (9, 9), 1, Variant(3, 1, 0), {}),
    ("conv1x1", "unstructured", (14, 14), 1, Variant(4, 2, 0), {}),  # staged grid: half tail over the padding
    ("conv1x1", "unstructured", (14, 14), 1, Variant(4, 1, 0, True), {}),  # packed from the caller's rows
    ("conv1x1", "unstructured", (14, 14), 1, Variant(4, 1, 32), {}),
    ("conv1x1", "nm2:4", (7, 7), 1, Variant(2, 1, 0), {}),
    ("conv3x3", "kernel_pattern", (20, 20), 1, Variant(2, 1, 0), {}),  # padded rows: the last one ends 4 pixels in
    ("conv3x3", "kernel_pattern", (14, 14), 1, Variant(3, 1, 0), {"share": 8}),  # the grid is the output
    ("conv3x3", "unstructured", (20, 20), 2, Variant(1, 1, 0), {}),  # stride 2: 10 x 10 outputs
    ("conv3x3", "block4x1", (7, 7), 1, Variant(2, 1, 0), {}),  # masked: 49 pixels
])
def test_tail_tiles_match_torch_and_write_every_output(cache, kind, pattern, in_hw, stride, tile, opts):
    """The grid's last tile ends in the part vector: a 1x1 layer's overlaps the vector before (a
    half vector on AVX-512 when at most half of it is left), a grid's holds its last pixels."""
    k = 1 if kind == "conv1x1" else 3
    shape = (40, 100 if k == 1 else 12, k, k)
    packed = _layer(pattern, shape, 0.75, seed=sum(in_hw), **opts)
    rng = np.random.default_rng(5)
    b = rng.standard_normal(shape[0]).astype(np.float32)
    kernel = compile_layer(packed, kind, in_hw, stride, b, "hswish", tile=tile, cache_dir=cache)
    x = aligned_empty(kernel.in_shape)
    x[...] = rng.standard_normal(kernel.in_shape)
    out = np.full(kernel.out_shape, np.nan, dtype=np.float32)
    kernel.run(x, out)
    ref = _reference(packed, kind, np.array(x), b, stride, "hswish")
    assert np.isfinite(out).all()
    err = np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-6)
    assert err <= REL_TOL, f"{pattern} {in_hw} {kernel.variant.name}: rel err {err:.2e}"


@pytest.mark.parametrize("vw", [8, 4])
@pytest.mark.parametrize("kind,pattern,in_hw,tile", [
    ("conv1x1", "block4x1", (14, 14), Variant(4, 1, 0)),
    ("conv1x1", "block4x1", (6, 6), Variant(3, 1, 0, True)),
    ("conv1x1", "block8x1", (5, 5), Variant(2, 1, 0)),  # a tail at every width
    ("conv1x1", "unstructured", (14, 14), Variant(2, 2, 48)),
    ("conv3x3", "block8x1", (9, 15), Variant(2, 1, 0)),
])
def test_avx_and_sse_widths_tail_tiles_match_torch(cache, monkeypatch, vw, kind, pattern, in_hw, tile):
    """The tilings of narrower SIMD units (AVX: 8 lanes, SSE / NEON: 4), generated and run on
    this machine: tails are full overlapping vectors there, and no masked layout."""
    from tritune.kernels.codegen import runtime

    monkeypatch.setattr(runtime.compiler, "vector_width", lambda cc=None: vw)
    k = 1 if kind == "conv1x1" else 3
    shape = (40, 100 if k == 1 else 12, k, k)
    packed = _layer(pattern, shape, 0.75, seed=7)
    b = np.random.default_rng(6).standard_normal(shape[0]).astype(np.float32)
    kernel = compile_layer(packed, kind, in_hw, 1, b, "hswish", tile=tile, cache_dir=cache)
    assert kernel.geometry.mode != "masked"
    x = aligned_empty(kernel.in_shape)
    x[...] = np.random.default_rng(7).standard_normal(kernel.in_shape)
    out = np.full(kernel.out_shape, np.nan, dtype=np.float32)
    kernel.run(x, out)
    ref = _reference(packed, kind, np.array(x), b, 1, "hswish")
    err = np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-6)
    assert np.isfinite(out).all() and err <= REL_TOL, f"vw {vw} {pattern} {in_hw}: rel err {err:.2e}"


@pytest.mark.parametrize("vw", [None, 8, 4])
@pytest.mark.parametrize("pattern,tile", [
    ("unstructured", Variant(2, 1, 0)),
    ("unstructured", Variant(1, 2, 0, True)),
    ("unstructured", Variant(3, 3, 40)),  # twelve entries per step, K tiles
    ("gather_scatter", Variant(4, 4, 0)),
    ("nm2:4", Variant(2, 1, 0)),
    ("nm2:8", Variant(2, 6, 0)),  # three groups of two entries per step would split a quad: four
    ("nm1:4", Variant(3, 3, 48)),
    ("block4x1", Variant(2, 1, 0)),
])
def test_single_weight_entries_take_weights_four_at_a_time_and_match_torch(cache, monkeypatch, vw, pattern, tile):
    """Single-weight entries (CSR, N:M) on AVX / AVX-512 (this machine's width, or forced to 8)
    are loaded four at a time and shuffled into place (`_Writer.weight_quads`), entry ``i`` of a
    step into accumulator set ``i % unroll``; CSR rows of every length mod 4 end in the
    one-entry loop. Other widths, and kernels with several weights per entry, broadcast each
    weight."""
    from tritune.kernels.codegen import runtime

    if vw is not None:
        monkeypatch.setattr(runtime.compiler, "vector_width", lambda cc=None: vw)
    shape, in_hw = (36, 90, 1, 1), (11, 11)
    packed = _layer(pattern, shape, 0.75, seed=3)
    lengths = np.diff(packed.arrays["indptr"]) if "indptr" in packed.arrays else None
    if pattern == "unstructured":
        assert set(lengths % 4) == {0, 1, 2, 3}
    b = np.random.default_rng(4).standard_normal(shape[0]).astype(np.float32)
    build = runtime.prepare(packed, "conv1x1", in_hw, 1, b, "relu")
    quads = pattern != "block4x1" and build.vector_width in (8, 16)
    assert ("wq_load(" in build.source([tile])) == quads
    kernel = compile_layer(packed, "conv1x1", in_hw, 1, b, "relu", tile=tile, cache_dir=cache)
    x = aligned_empty(kernel.in_shape)
    x[...] = np.random.default_rng(5).standard_normal(kernel.in_shape)
    out = np.full(kernel.out_shape, np.nan, dtype=np.float32)
    kernel.run(x, out)
    ref = _reference(packed, "conv1x1", np.array(x), b, 1, "relu")
    err = np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-6)
    assert np.isfinite(out).all() and err <= REL_TOL, f"vw {build.vector_width} {pattern} {tile.name}: rel err {err:.2e}"


@pytest.mark.parametrize("pattern,tile", [
    ("block8x1", Variant(2, 1, 0)),  # input and output prefetch
    ("unstructured", Variant(4, 1, 64)),  # K tiles: output prefetch in the last one
    ("unstructured", Variant(2, 2, 0, True)),  # packed: output prefetch only
])
def test_large_1x1_layers_prefetch_and_match_torch(cache, pattern, tile):
    """Layers past `PREFETCH_BYTES` of input and output prefetch the next tile (prefetches past
    the last tile must not fault or change anything)."""
    from tritune.kernels.codegen.generate import PREFETCH_BYTES
    shape, in_hw = (256, 260, 1, 1), (48, 48)
    assert (shape[0] + shape[1]) * in_hw[0] * in_hw[1] * 4 >= PREFETCH_BYTES
    kernel = _check(_layer(pattern, shape, 0.9, seed=11), "conv1x1", in_hw, cache, act="relu", tile=tile)
    source = Path(kernel.library).with_suffix(".c").read_text()
    assert "__builtin_prefetch(y + " in source


def test_masked_3x3_layout_refuses_k_tiles(cache):
    if not _avx512():
        pytest.skip("the masked layout is for AVX-512 (vector width 16)")
    packed = _layer("block8x1", (16, 21, 3, 3), 0.75, seed=2)
    with pytest.raises(ValueError, match=r"tile.k_tile: 63 not allowed for a 3x3 layer read in place \(masked layout\); allowed: 0"):
        compile_layer(packed, "conv3x3", (11, 40), 1, tile=Variant(2, 1, 63), cache_dir=cache)


@pytest.mark.parametrize("pattern,shape,kind,in_hw,stride,tile", [
    ("unstructured", (37, 150, 1, 1), "conv1x1", (8, 10), 1, Variant(3, 2, 32)),  # K tiles, 80 px: a 1-vector tail
    ("unstructured", (37, 150, 1, 1), "conv1x1", (9, 9), 1, Variant(2, 1, 48)),  # staged + K tiles (partials in ws)
    ("nm2:4", (21, 150, 1, 1), "conv1x1", (8, 10), 1, Variant(4, 2, 40)),
    ("nm2:8", (21, 147, 1, 1), "conv1x1", (5, 9), 1, Variant(2, 4, 24)),
    ("block8x1", (45, 150, 1, 1), "conv1x1", (16, 6), 1, Variant(3, 1, 50)),
    ("block1x4", (45, 150, 1, 1), "conv1x1", (16, 6), 1, Variant(2, 3, 33)),
    ("block4x1", (30, 20, 3, 3), "conv3x3", (13, 11), 2, Variant(2, 2, 45)),
    ("kernel_pattern", (30, 20, 3, 3), "conv3x3", (13, 11), 1, Variant(2, 2, 7)),
])
def test_tile_variants_match(cache, pattern, shape, kind, in_hw, stride, tile):
    packed = _layer(pattern, shape, 0.75, seed=3)
    kernel = _check(packed, kind, in_hw, cache, stride=stride, act="relu", tile=tile)
    assert kernel.variant == tile


@pytest.mark.parametrize("pattern,shape,kind,in_hw,tile", [
    ("block4x1", (19, 7, 3, 3), "conv3x3", (13, 14), Variant(4, 1, 0)),  # 13 / 25 vectors (16 / 8 lanes) in tiles of 4
    ("block4x2", (16, 21, 3, 3), "conv3x3", (7, 9), Variant(2, 1, 63)),  # 5 / 9 vectors in pairs, K tiles
    ("kernel_pattern", (20, 9, 3, 3), "conv3x3", (5, 5), Variant(3, 1, 0)),  # aligned rows: 5 vectors, 3 + 2
    ("unstructured", (37, 150, 1, 1), "conv1x1", (9, 9), Variant(4, 1, 48)),  # staged 1x1: 6 vectors, 3 + 3
    ("unstructured", (37, 150, 1, 1), "conv1x1", (28, 28), Variant(8, 1, 64)),  # direct: 49 vectors, 7 x 7
    ("block4x1", (30, 70, 1, 1), "conv1x1", (13, 16), Variant(4, 1, 0)),  # direct: 13 vectors, 4 + 3 + 3 + 3
])
def test_grid_splits_into_even_tiles(cache, pattern, shape, kind, in_hw, tile):
    """A grid whose vectors are not a multiple of the tile is cut into tiles as even as possible
    (no vector past the grid, no one-vector tail); every output is still written, and right."""
    packed = _layer(pattern, shape, 0.78 if pattern == "kernel_pattern" else 0.75, seed=7)
    kernel = _check(packed, kind, in_hw, cache, act="relu", tile=tile)
    geo = kernel.geometry
    assert (-(-geo.q // cc_mod.vector_width())) % tile.nv
    x = np.random.default_rng(2).standard_normal(kernel.in_shape).astype(np.float32)
    out = np.full(kernel.out_shape, np.nan, dtype=np.float32)
    kernel.run(x, out)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, kernel.run(x))


@pytest.mark.parametrize("pattern,shape,in_hw,tile", [
    ("unstructured", (37, 150, 1, 1), (16, 16), Variant(2, 4, 0, True)),  # direct: 16 vectors, 2 x 8
    ("unstructured", (37, 150, 1, 1), (12, 12), Variant(4, 1, 48, True)),  # direct, K tiles, 9 vectors: 3 x 3
    ("unstructured", (37, 150, 1, 1), (9, 11), Variant(4, 2, 0, True)),  # staged rows (99 px): last vectors part / past the row
    ("nm2:4", (21, 150, 1, 1), (13, 13), Variant(2, 2, 40, True)),  # staged, K tiles
    ("gather_scatter", (19, 64, 1, 1), (8, 8), Variant(3, 1, 0, True)),
    ("block4x1", (30, 70, 1, 1), (13, 14), Variant(3, 1, 0, True)),  # direct, unaligned: an overlapping last vector
])
def test_packed_tile_panels_match_torch(cache, pattern, shape, in_hw, tile):
    """Packed variants copy each tile's input columns into a contiguous panel first and read only
    the panel (the staged layout packs straight from the caller's rows and skips staging)."""
    packed = _layer(pattern, shape, 0.75, seed=5)
    _check(packed, "conv1x1", in_hw, cache, act="relu", tile=tile)  # with a bias
    kernel = compile_layer(packed, "conv1x1", in_hw, act="relu", tile=tile, cache_dir=cache)
    assert kernel.variant.name.endswith("p")
    x = np.random.default_rng(4).standard_normal(kernel.in_shape).astype(np.float32)
    out = np.full(kernel.out_shape, np.nan, dtype=np.float32)
    kernel.run(x, out)
    np.testing.assert_allclose(out, _reference(packed, "conv1x1", x, None, 1, "relu"), rtol=0, atol=1e-4 * np.abs(out).max())
    x2 = np.random.default_rng(5).standard_normal(kernel.in_shape).astype(np.float32)  # a new input: a new panel
    np.testing.assert_allclose(kernel.run(x2), _reference(packed, "conv1x1", x2, None, 1, "relu"), rtol=0,
                               atol=1e-4 * np.abs(out).max())


def test_packing_is_refused_where_it_does_not_apply(cache):
    with pytest.raises(ValueError, match="variant.pack"):
        Variant(2, 1, 0, "yes")
    with pytest.raises(ValueError, match="tile.pack"):
        compile_layer(_layer("block4x1", (8, 6, 3, 3), 0.5, seed=1), "conv3x3", (8, 8), tile=Variant(2, 1, 0, True), cache_dir=cache)
    with pytest.raises(ValueError, match="tile.pack"):
        compile_layer(_layer("block4x1", (8, 6), 0.5, seed=1), "linear", tile=Variant(1, 1, 0, True), cache_dir=cache)
    with pytest.raises(ValueError, match="channel_strides"):
        compile_layer(_layer("unstructured", (8, 6, 1, 1), 0.5, seed=1), "conv1x1", (4, 8), tile=Variant(2, 1, 0, True),
                      channel_strides=(32, 40), cache_dir=cache)
    assert Variant.coerce({"nv": 2, "pack": True}) == Variant(2, 1, 0, True)
    assert Variant(2, 4, 0, True).name == "t2u4k0p" and Variant(2, 4, 0, True).to_json()["pack"] is True


def test_large_layer_and_aligned_buffers(cache):
    packed = _layer("block8x1", (128, 128, 1, 1), 0.9, seed=5)
    kernel = compile_layer(packed, "conv1x1", (14, 16), cache_dir=cache)
    x, out = aligned_empty(kernel.in_shape), aligned_empty(kernel.out_shape)
    assert x.ctypes.data % 64 == 0 and out.ctypes.data % 64 == 0 and x.flags.c_contiguous
    x[...] = np.random.default_rng(0).standard_normal(x.shape)
    run = kernel.bind(x, out)
    run()
    np.testing.assert_allclose(out, _reference(packed, "conv1x1", x, None, 1, "none"), rtol=0, atol=1e-4 * np.abs(out).max())
    assert kernel.run(x) is not out and np.array_equal(kernel.run(x), out)


def test_second_compile_hits_the_cache(cache):
    packed = _layer("block4x1", (24, 40, 1, 1), 0.75, seed=11)
    first = compile_layer(packed, "conv1x1", (6, 6), act="relu", cache_dir=cache)
    before = cc_mod.stats()
    again = compile_layer(packed, "conv1x1", (6, 6), act="relu", cache_dir=cache)
    after = cc_mod.stats()
    assert after["compiles"] == before["compiles"] and after["hits"] == before["hits"] + 1
    assert again.cached and again.compile_s == 0.0 and again.source_hash == first.source_hash
    assert again.library == first.library
    other = compile_layer(_layer("block4x1", (24, 40, 1, 1), 0.75, seed=12), "conv1x1", (6, 6), act="relu", cache_dir=cache)
    assert other.source_hash != first.source_hash  # the weights are part of the source


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITUNE_KERNEL_CACHE", str(tmp_path / "env-cache"))
    assert cc_mod.cache_dir() == tmp_path / "env-cache"
    assert cc_mod.cache_dir(tmp_path / "arg") == tmp_path / "arg"


def test_broken_source_reports_the_compiler_output(tmp_path):
    with pytest.raises(CompilerError) as info:
        cc_mod.compile_library("int broken( {\n", cache=tmp_path)
    message = str(info.value)
    assert "-march=native" in message and "error" in message.lower()
    assert not list(tmp_path.glob("*.so"))  # nothing half-written left behind


def test_missing_compiler_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert not compiler_available()
    with pytest.raises(CompilerError, match="no-such-cc"):
        find_compiler()
    with pytest.raises(CompilerError, match="no-such-cc"):
        compile_layer(_layer("block4x1", (8, 8, 1, 1), 0.5, seed=0), "conv1x1", (4, 4), cache_dir=tmp_path)
    assert not compiler_available("false")  # exists, but is not a compiler


def test_run_checks_its_buffers(cache):
    kernel = compile_layer(_layer("unstructured", (6, 5, 3, 3), 0.5, seed=2), "conv3x3", (4, 6), cache_dir=cache)
    x = np.zeros((5, 4, 6), np.float32)
    transposed = np.zeros((5, 6, 4), np.float32).transpose(0, 2, 1)
    for bad, match in [(x.astype(np.float64), "dtype"), (x[:, :3], "shape"), (transposed, "contiguous"), (x.tolist(), "numpy")]:
        with pytest.raises(ValueError, match=match):
            kernel.run(bad)
    with pytest.raises(ValueError, match="out: shape"):
        kernel.run(x, np.zeros((6, 4, 5), np.float32))
    buf = np.zeros(6 * 4 * 6 + 5 * 4 * 6, np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        kernel.run(buf[:120].reshape(5, 4, 6), buf[100:244].reshape(6, 4, 6))


def test_bad_layer_arguments(cache):
    packed = _layer("block4x1", (8, 6, 1, 1), 0.5, seed=1)
    for kwargs, match in [
        ({"kind": "conv5x5"}, "kind"), ({"act": "gelu"}, "act"), ({"stride": 2}, "stride"), ({"bias": np.zeros(3)}, "bias"),
        ({"in_hw": (0, 4)}, "in_hw"), ({"tile": {"nv": 0}}, "nv"), ({"tile": {"nv": 16, "unroll": 4}}, "accumulator"),
        ({"threads": 0}, "threads"),
    ]:
        args = {"kind": "conv1x1", "in_hw": (4, 4), **kwargs}
        with pytest.raises(ValueError, match=match):
            compile_layer(packed, cache_dir=cache, **args)
    with pytest.raises(ValueError, match=r"allowed: \[out, in, 1, 1\]"):
        compile_layer(_layer("kernel_pattern", (4, 4, 3, 3), 0.7, seed=0), "conv1x1", (4, 4), cache_dir=cache)
    with pytest.raises(ValueError, match="weight shape"):
        compile_layer(packed, "conv3x3", (4, 4), cache_dir=cache)
    with pytest.raises(ValueError, match="PackedWeight"):
        compile_layer(np.zeros((4, 4)), "linear", cache_dir=cache)


def test_autotune_times_variants_and_reuses_its_record(cache):
    packed = _layer("unstructured", (40, 64, 1, 1), 0.75, seed=21)
    variants = [Variant(1, 2), Variant(2, 1), Variant(2, 1, 32)]
    first = autotune(packed, "conv1x1", (6, 8), act="relu", variants=variants, cache_dir=cache)
    assert not first.from_record and set(first.timings_ms) == {v.name for v in variants}
    assert first.variant.name == min(first.timings_ms, key=first.timings_ms.get)
    assert first.record.exists() and first.kernel.variant == first.variant
    before = cc_mod.stats()
    again = autotune(packed, "conv1x1", (6, 8), act="relu", variants=variants, cache_dir=cache)
    assert again.from_record and again.variant == first.variant and again.timings_ms == first.timings_ms
    assert cc_mod.stats()["compiles"] == before["compiles"]  # neither compiled nor timed again
    x = np.random.default_rng(0).standard_normal((64, 6, 8)).astype(np.float32)
    np.testing.assert_allclose(again.kernel.run(x), _reference(packed, "conv1x1", x, None, 1, "relu"), atol=1e-4 * 64)


def test_autotune_retune_keeps_the_records_evidence(cache):
    """Timing a layer again takes each variant's lower time of the two tunings: a slow phase of
    the machine during one tuning does not decide alone."""
    packed = _layer("unstructured", (40, 64, 1, 1), 0.75, seed=22)
    variants = [Variant(1, 2), Variant(2, 1), Variant(2, 1, 32)]
    first = autotune(packed, "conv1x1", (6, 8), variants=variants, cache_dir=cache)
    record = json.loads(first.record.read_text())
    slowest = max(first.timings_ms, key=first.timings_ms.get)
    record["timings_ms"][slowest] = 1e-6  # the slowest variant once timed fastest
    first.record.write_text(json.dumps(record))
    again = autotune(packed, "conv1x1", (6, 8), variants=variants, cache_dir=cache, retune=True)
    assert not again.from_record and again.variant.name == slowest and again.kernel.variant.name == slowest
    assert all(again.timings_ms[n] <= record["timings_ms"][n] for n in record["timings_ms"])
    assert json.loads(again.record.read_text())["tunings"] == 2


def test_autotune_default_candidates(cache):
    packed = _layer("kernel_pattern", (16, 12, 3, 3), 0.8, seed=4, share=4)
    result = autotune(packed, "conv3x3", (10, 10), stride=2, cache_dir=cache)
    assert len(result.timings_ms) >= 2 and result.variant.name in result.timings_ms
    x = np.random.default_rng(1).standard_normal((12, 10, 10)).astype(np.float32)
    ref = _reference(packed, "conv3x3", x, None, 2, "none")
    assert np.abs(result.kernel.run(x) - ref).max() <= REL_TOL * np.abs(ref).max()


@pytest.mark.skipif(not openmp_supported(), reason="compiler without OpenMP")
def test_threads_give_the_same_result(cache):
    packed = _layer("unstructured", (33, 40, 3, 3), 0.75, seed=8)
    kernel = _check(packed, "conv3x3", (9, 10), cache, stride=1, act="hswish", tile=Variant(2, 1, 72))
    threaded = compile_layer(packed, "conv3x3", (9, 10), 1, None, "hswish", tile=Variant(2, 1, 72), threads=2, cache_dir=cache)
    assert threaded.threads == 2 and threaded.source_hash != kernel.source_hash
    x = np.random.default_rng(2).standard_normal(kernel.in_shape).astype(np.float32)
    ref = _reference(packed, "conv3x3", x, None, 1, "hswish")
    assert np.abs(threaded.run(x) - ref).max() <= REL_TOL * np.abs(ref).max()
    # direct 1x1 with K tiles (per-thread partial sums) and an overlapping pixel tail
    packed = _layer("block4x1", (30, 70, 1, 1), 0.5, seed=9)
    threaded = compile_layer(packed, "conv1x1", (9, 9), tile=Variant(2, 1, 24), threads=2, cache_dir=cache)
    assert threaded.geometry.mode == "direct"
    x = np.random.default_rng(3).standard_normal(threaded.in_shape).astype(np.float32)
    ref = _reference(packed, "conv1x1", x, None, 1, "none")
    assert np.abs(threaded.run(x) - ref).max() <= REL_TOL * np.abs(ref).max()
    # packed panels, one per thread
    packed = _layer("unstructured", (30, 70, 1, 1), 0.75, seed=10)
    threaded = compile_layer(packed, "conv1x1", (12, 16), tile=Variant(2, 2, 32, True), threads=2, cache_dir=cache)
    x = np.random.default_rng(4).standard_normal(threaded.in_shape).astype(np.float32)
    ref = _reference(packed, "conv1x1", x, None, 1, "none")
    assert np.abs(threaded.run(x) - ref).max() <= REL_TOL * np.abs(ref).max()


@pytest.mark.parametrize("pattern,shape,in_hw,lowered_rows", [
    ("unstructured", (37, 45), None, 8),        # one pixel: blocks of rows over the columns any of them keeps
    ("gather_scatter", (40, 33), None, 8),
    ("block1x4", (19, 48), None, 8),
    ("nm2:8", (21, 64), None, 8),
    ("nm1:4", (30, 28, 1, 1), (2, 2), 8),       # N:M on a few pixels too
    ("unstructured", (30, 28, 1, 1), (2, 2), 1),  # a few pixels: one row per block, the pixel loop vectorises
])
def test_narrow_layers_lower_rows_into_vectors_and_match_torch(cache, pattern, shape, in_hw, lowered_rows):
    from tritune.kernels.codegen.plan import geometry, lower

    packed = _layer(pattern, shape, 0.75, seed=len(shape) + shape[0])
    kind = "linear" if len(shape) == 2 else "conv1x1"
    geo = geometry(kind, packed.shape, in_hw, 1, 16)
    assert geo.mode == "narrow"
    low = lower(packed, geo)
    assert getattr(low, "r", 1) == lowered_rows
    if lowered_rows > 1:  # every kept weight is in a block, at its place
        dense = np.zeros((low.indptr.size - 1) * low.r * geo.k, dtype=np.float32).reshape(-1, low.r, geo.k)
        for b in range(low.indptr.size - 1):
            for j in range(low.indptr[b], low.indptr[b + 1]):
                dense[b, :, low.cols[j]] = low.values[j, :, 0]
        np.testing.assert_array_equal(dense.reshape(-1, geo.k)[:geo.cout], packed.unpack().reshape(geo.cout, geo.k))
    _check(packed, kind, in_hw, cache, act="relu")
