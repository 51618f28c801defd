"""Fused inverted-residual blocks (`tritune.kernels.codegen.fused`) equal torch, band by band."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tritune.kernels.codegen import aligned_empty, compile_layer, compiler_available, vector_width
from tritune.kernels.codegen.depthwise import compile_depthwise
from tritune.kernels.codegen.fused import band_rows, compile_fused_block
from tritune.kernels.codegen.generate import Variant
from tritune.kernels.formats import pack
from tritune.kernels.patterns import make_mask
from tritune.spaces import LayerCompression, create
from tritune.spaces.mobilenet.space import SLOTS, MobileNetSpace
from tritune.spaces.mobilenet.network import build_subnet, input_shape
from tritune.targets.codegen_cpu import CodegenCpuTarget

pytestmark = pytest.mark.skipif(not compiler_available(), reason="no working C compiler")


def _packed(pattern, shape, sparsity, seed):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    if pattern == "dense":
        return pack(w.numpy(), "dense", np.ones(shape, dtype=bool))
    mask = make_mask(w, pattern, sparsity)
    return pack((w * mask).numpy(), pattern, mask.numpy().astype(bool))


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _reference(x, expand, be, dw, bd, stride, project, bp):
    t = torch.from_numpy(x)[None].double()
    if expand is not None:
        t = F.relu(F.conv2d(t, torch.from_numpy(expand.unpack()).double(), torch.from_numpy(be).double()))
    k = dw.shape[2]
    t = F.hardswish(F.conv2d(t, torch.from_numpy(dw).double(), torch.from_numpy(bd).double(), stride, k // 2, groups=dw.shape[0]))
    if project is not None:
        t = F.conv2d(t, torch.from_numpy(project.unpack()).double(), torch.from_numpy(bp).double())
    return t[0].numpy()


CASES = [  # (C, E, O, H, W, k, stride, pattern, rows)  O None: no project
    (8, 24, 16, 23, 37, 3, 1, "block8x1", 0),
    (8, 24, 16, 33, 40, 3, 2, "block8x1", 3),
    (6, 20, 12, 30, 35, 5, 1, "unstructured", 2),
    (16, 32, 16, 40, 48, 7, 2, "block4x1", 1),
    (16, 32, None, 20, 18, 7, 1, "nm2:4", 0),
    (24, 48, 32, 36, 36, 3, 1, "dense", 5),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[7]}-k{c[5]}s{c[6]}-{c[3]}x{c[4]}-r{c[8]}")
def test_fused_block_equals_torch(case):
    c, e, o, h, w, k, s, pattern, rows = case
    if w < vector_width() or (o is not None and -(-w // s) < vector_width()):
        pytest.skip("widths below this CPU's vector width are not fused")
    rng = np.random.default_rng(0)
    expand = _packed(pattern, (e, c, 1, 1), 0.5, 1)
    project = None if o is None else _packed(pattern, (o, e, 1, 1), 0.5, 2)
    dw = rng.standard_normal((e, 1, k, k)).astype(np.float32)
    be, bd = rng.standard_normal(e).astype(np.float32), rng.standard_normal(e).astype(np.float32)
    bp = None if o is None else rng.standard_normal(o).astype(np.float32)
    blk = compile_fused_block(expand, dw, (h, w), s, project, expand_bias=be, expand_act="relu", dw_bias=bd, dw_act="hswish",
                              project_bias=bp, pool=o is None, rows=rows)
    assert rows == 0 or blk.rows == rows
    x = aligned_empty((c, h, w))
    x[:] = rng.standard_normal((c, h, w))
    ref = _reference(x, expand, be, dw, bd, s, project, bp)
    out = blk.run(x)
    assert out.shape == ref.shape and _rel(out, ref) <= 1e-4
    if o is None:  # the squeeze-excite pool, summed over the bands
        assert np.allclose(blk.pooled, ref.reshape(e, -1).mean(axis=1), rtol=1e-4, atol=1e-5)
    assert _rel(blk.run(x), ref) <= 1e-4  # a second run starts from a clean ring


def test_fused_block_runs_a_packed_tile_unpacked():
    """A variant tuned for the layer alone may pack tile panels; band kernels read their rows in
    place, so the block runs it unpacked (same tiles) instead of refusing it."""
    if 24 < vector_width():
        pytest.skip("widths below this CPU's vector width are not fused")
    rng = np.random.default_rng(3)
    expand, project = _packed("unstructured", (24, 8, 1, 1), 0.5, 1), _packed("unstructured", (16, 24, 1, 1), 0.5, 2)
    dw = rng.standard_normal((24, 1, 3, 3)).astype(np.float32)
    be, bd, bp = (rng.standard_normal(n).astype(np.float32) for n in (24, 24, 16))
    tile = Variant(2, 2, 0, True)
    blk = compile_fused_block(expand, dw, (20, 24), 1, project, expand_bias=be, expand_act="relu", dw_bias=bd, dw_act="hswish",
                              project_bias=bp, expand_tile=tile, project_tile=tile)
    x = aligned_empty((8, 20, 24))
    x[:] = rng.standard_normal((8, 20, 24))
    assert _rel(blk.run(x), _reference(x, expand, be, dw, bd, 1, project, bp)) <= 1e-4


def test_fused_block_without_expand():
    rng = np.random.default_rng(1)
    e, o, h, w = 24, 24, 40, 40
    project = _packed("block8x1", (o, e, 1, 1), 0.75, 3)
    dw, bd, bp = rng.standard_normal((e, 1, 3, 3)).astype(np.float32), rng.standard_normal(e).astype(np.float32), rng.standard_normal(o).astype(np.float32)
    blk = compile_fused_block(None, dw, (h, w), 1, project, dw_bias=bd, dw_act="hswish", project_bias=bp, rows=4)
    x = aligned_empty((e, h, w))
    x[:] = rng.standard_normal((e, h, w))
    assert _rel(blk.run(x), _reference(x, None, None, dw, bd, 1, project, bp)) <= 1e-4


@pytest.mark.parametrize("k, stride, band", [(3, 1, 4), (5, 2, 3), (7, 1, 1), (7, 2, 5)])
def test_band_depthwise_kernel_equals_torch(k, stride, band):
    """A band kernel run on a whole plane goes band by band through its one-band workspace."""
    rng = np.random.default_rng(2)
    c, h, w = 6, 29, 33
    wt, b = rng.standard_normal((c, 1, k, k)).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    x = rng.standard_normal((c, h, w)).astype(np.float32)
    kern = compile_depthwise(wt, b, (h, w), stride, "relu", band=band, pool=True)
    ref = F.relu(F.conv2d(torch.from_numpy(x)[None], torch.from_numpy(wt), torch.from_numpy(b), stride, k // 2, groups=c))[0].numpy()
    assert _rel(kern.run(x), ref) <= 1e-5
    assert np.allclose(kern.pooled, ref.reshape(c, -1).mean(axis=1), rtol=1e-4, atol=1e-5)


def test_strided_1x1_kernel_reads_and_writes_inside_larger_tensors():
    packed = _packed("unstructured", (16, 8, 1, 1), 0.75, 4)
    kern = compile_layer(packed, "conv1x1", (4, 24), channel_strides=(200, 130))
    assert kern.band_fn
    x = aligned_empty((8, 200))
    x[:] = np.random.default_rng(3).standard_normal((8, 200))
    y = aligned_empty((16, 130))
    y[:] = 7.0
    import ctypes
    ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long)(kern.band_fn)(
        x.ctypes.data, y.ctypes.data, kern._ws.ctypes.data, 50)
    ref = packed.unpack().reshape(16, 8) @ x[:, :50]
    assert np.allclose(y[:, :50], ref, rtol=1e-4, atol=1e-5)
    assert (y[:, 50:] == 7.0).all()  # nothing written past npix


def test_bad_arguments_name_the_field():
    dw = np.zeros((24, 1, 3, 3), np.float32)
    expand, project = _packed("dense", (24, 8, 1, 1), 0, 5), _packed("dense", (8, 24, 1, 1), 0, 6)
    with pytest.raises(ValueError, match="in_hw"):
        compile_fused_block(expand, dw, (20, 4), 1, project)
    with pytest.raises(ValueError, match="pool"):
        compile_fused_block(expand, dw, (20, 40), 1, project, pool=True)
    with pytest.raises(ValueError, match="rows"):
        compile_fused_block(expand, dw, (20, 40), 1, project, rows=-1)
    with pytest.raises(ValueError, match="dw_weight"):
        compile_fused_block(expand, np.zeros((12, 1, 3, 3), np.float32), (20, 40), 1, project)
    with pytest.raises(ValueError, match="expand, project"):
        compile_fused_block(None, dw, (20, 40), 1, None)
    with pytest.raises(ValueError, match="fuse_min_bytes"):
        CodegenCpuTarget(fuse_min_bytes=-1)
    assert band_rows(192, (56, 56), 1, 3, budget=1) == 1


@pytest.mark.parametrize("pattern", ["block8x1", "unstructured"])
def test_candidate_with_fused_blocks_equals_torch(pattern):
    """Fusing every eligible block (SE blocks: expand -> depthwise + pool) changes nothing but speed."""
    space = create("mobilenet-small")
    base = space.smallest().replace(arch={"resolution": 64})
    plan = [LayerCompression(pattern, 0.75) if role in ("conv", "project") and k == 1 else c
            for (_, role, k), c in zip(SLOTS, base.compression)]
    cand = space.validate(base.replace(compression=plan))
    x = torch.randn(input_shape(space, cand), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = build_subnet(space, cand)(x).numpy()
    fused = CodegenCpuTarget(fuse_min_bytes=0).build(cand)
    plain = CodegenCpuTarget(fuse_min_bytes=None).build(cand)
    kinds = [op["kind"] for op in fused.plan]
    assert "fused_block" in kinds and "fused_block" not in [op["kind"] for op in plain.plan]
    if vector_width() <= 16:  # 16-pixel rows are wide enough: the first blocks fuse, an SE block too
        variants = [op["variant"] for op in fused.plan if op["kind"] == "fused_block"]
        assert any(v.startswith("edw") and "p r" in v for v in variants) and any("+pool" in v for v in variants)
    assert _rel(fused.run(x), ref) <= 1e-4 and _rel(plain.run(x), ref) <= 1e-4
    assert _rel(fused.run(x), ref) <= 1e-4


@pytest.mark.parametrize("autotune", [False, True])
def test_candidate_with_a_fused_stem_equals_torch(autotune):
    """With a stride-2 stem, the first block runs fused with it (its residual sum included) and
    the network still computes what torch computes."""
    space = MobileNetSpace(resolutions=(64,), widths=(1.0,), depths=(1,), expands=(3,), kernels=(3,))
    cand = space.smallest()
    plan = [LayerCompression("block8x1", 0.75) if role in ("conv", "project", "se") and k == 1 else c
            for (_, role, k), c in zip(SLOTS, cand.compression)]
    cand = space.validate(cand.replace(compression=plan))
    x = torch.randn(input_shape(space, cand), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = build_subnet(space, cand)(x).numpy()
    fused = CodegenCpuTarget(fuse_min_bytes=0, autotune=autotune).build(cand, space=space)
    first = [op for op in fused.plan if op["name"] == "first"]
    assert len(first) == 1 and first[0]["variant"].startswith("sdw3s1p+res")
    assert not any(op["name"] in ("stem", "first.add") for op in fused.plan)
    for _ in range(2):
        assert _rel(fused.run(x), ref) <= 1e-4
    if autotune:
        assert " s:t" in first[0]["variant"]  # the stem's measured tile is recorded


def test_autotuned_fused_blocks_use_the_measured_tiles():
    space = create("mobilenet-small")
    base = space.smallest().replace(arch={"resolution": 64})
    plan = [LayerCompression("block8x1", 0.75) if role in ("conv", "project") and k == 1 else c
            for (_, role, k), c in zip(SLOTS, base.compression)]
    cand = space.validate(base.replace(compression=plan))
    x = torch.randn(input_shape(space, cand), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = build_subnet(space, cand)(x).numpy()
    runnable = CodegenCpuTarget(fuse_min_bytes=0, autotune=True).build(cand)
    fused = [op for op in runnable.plan if op["kind"] == "fused_block"]
    assert fused and all(" e:t" in op["variant"] or " p:t" in op["variant"] for op in fused)  # the tile is recorded
    assert _rel(runnable.run(x), ref) <= 1e-4


def test_blocks_sharing_a_scratch_buffer_stay_correct():
    """Rows are always written before they are read, so blocks run in turn may share ring and band buffers."""
    from tritune.kernels.codegen.fused import new_scratch

    rng = np.random.default_rng(6)
    scratch = new_scratch()
    blocks, refs, xs = [], [], []
    for c, e, o, h, w, k, s in [(8, 32, 16, 40, 48, 3, 1), (16, 48, 16, 34, 40, 5, 2)]:
        expand, project = _packed("block8x1", (e, c, 1, 1), 0.75, 7), _packed("block8x1", (o, e, 1, 1), 0.75, 8)
        dw = rng.standard_normal((e, 1, k, k)).astype(np.float32)
        be, bd, bp = (rng.standard_normal(n).astype(np.float32) for n in (e, e, o))
        blk = compile_fused_block(expand, dw, (h, w), s, project, expand_bias=be, expand_act="relu", dw_bias=bd, dw_act="hswish",
                                  project_bias=bp, scratch=scratch)
        x = aligned_empty((c, h, w))
        x[:] = rng.standard_normal((c, h, w))
        blocks.append(blk)
        xs.append(x)
        refs.append(_reference(x, expand, be, dw, bd, s, project, bp))
    assert np.shares_memory(blocks[0]._ring, scratch) and np.shares_memory(blocks[1]._ring, scratch)
    for _ in range(2):
        for blk, x, ref in zip(blocks, xs, refs):
            assert _rel(blk.run(x), ref) <= 1e-4


@pytest.mark.parametrize("c,e,o,hw,s,pattern,rows", [(3, 16, 24, (64, 64), 2, "dense", 0), (3, 24, 16, (96, 80), 2, "kernel_pattern", 3),
                                                     (5, 16, 16, (34, 32), 2, "block4x1", 1), (3, 16, 16, (66, 64), 2, "dense", 2)])
def test_fused_block_with_a_stem_equals_torch(c, e, o, hw, s, pattern, rows):
    """A 3x3 stem produces the depthwise input band by band (the network's first tensor never
    exists): stem -> depthwise -> project (+ the residual sum with the stem output, read from the
    ring, when the widths agree) equals torch, twice (the stem restages its input on the first
    band of every run); bad shapes are refused with the field named."""
    ho, wo = -(-hw[0] // s), -(-hw[1] // s)
    if wo < vector_width() or (ho * wo) % vector_width():
        pytest.skip("this CPU's vector width does not divide the stem output")
    rng = np.random.default_rng(3)
    stem = _packed(pattern, (e, c, 3, 3), 0.75, 4)
    project = _packed("block8x1", (o, e, 1, 1), 0.5, 5)
    dw = rng.standard_normal((e, 1, 3, 3)).astype(np.float32)
    bs, bd, bp = (rng.standard_normal(n).astype(np.float32) for n in (e, e, o))
    residual = o == e
    blk = compile_fused_block(None, dw, hw, 1, project, stem=stem, stem_stride=s, stem_bias=bs, stem_act="hswish", dw_bias=bd,
                              dw_act="hswish", project_bias=bp, rows=rows, residual=residual)
    assert blk.stem is not None and blk.expand is None and blk.in_shape == (c, *hw)
    x = aligned_empty((c, *hw))
    x[:] = rng.standard_normal((c, *hw))
    t = torch.from_numpy(x)[None].double()
    t0 = F.hardswish(F.conv2d(t, torch.from_numpy(stem.unpack()).double(), torch.from_numpy(bs).double(), s, 1))
    t = F.hardswish(F.conv2d(t0, torch.from_numpy(dw).double(), torch.from_numpy(bd).double(), 1, 1, groups=e))
    ref = F.conv2d(t, torch.from_numpy(project.unpack()).double(), torch.from_numpy(bp).double())
    ref = (ref + t0 if residual else ref)[0].numpy()
    for _ in range(2):
        out = np.full(blk.out_shape, np.nan, dtype=np.float32)
        assert _rel(blk.run(x, out), ref) <= 1e-4
    with pytest.raises(ValueError, match="stem, expand: both given"):
        compile_fused_block(project, dw, hw, 1, project, stem=stem)
    with pytest.raises(ValueError, match="in_hw: .* whole number"):
        compile_fused_block(None, dw, (34, 34), 1, project, stem=stem, stem_stride=2)
    with pytest.raises(ValueError, match="stem_stride 1 not allowed; allowed: threads=1, stem_stride 2"):
        compile_fused_block(None, dw, hw, 1, project, stem=stem, stem_stride=1)
    with pytest.raises(ValueError, match="residual: allowed only"):  # the output has other channels than the stem
        compile_fused_block(None, dw, hw, 1, _packed("dense", (e + 8, e, 1, 1), 0.0, 6), stem=stem, residual=True)
