"""Integer kernels: exact int32 sums, every output within one step of torch's fake-quantized layer,
every instruction-set path (AVX-512 VNNI, AVX2, portable C) on random shapes with tails and odd
channel counts, 4-bit weights, fused epilogues, the workspace and argument checks, autotuning."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tritune.kernels.codegen import compiler_available
from tritune.kernels.codegen.compiler import _predefined, find_compiler
from tritune.kernels.codegen.qgenerate import QVariant, tile_plan
from tritune.kernels.codegen.qplan import default_lowering, lower_q, qgeometry
from tritune.kernels.codegen.qruntime import autotune_q, compile_qlayer
from tritune.kernels.formats import QuantizedWeight, quantize_packed
from tritune.kernels.patterns import make_mask
from tritune.kernels.quant import AffineQuant

pytestmark = pytest.mark.skipif(not compiler_available(), reason="no working C compiler")

_ACTS = {"none": lambda t: t, "relu": F.relu, "hswish": F.hardswish, "hsigmoid": F.hardsigmoid}


def _macros() -> frozenset[str]:
    return _predefined(find_compiler().command)


def _isas() -> list[str]:
    m = _macros()
    out = ["scalar"]
    if "__AVX2__" in m and "__FMA__" in m:
        out.append("avx2")
    if {"__AVX512VNNI__", "__AVX512BW__", "__AVX512VL__", "__AVX512VBMI__"} <= m:
        out.append("avx512vnni")
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("qkernels")


def _qweight(pattern, shape, bits, seed, sparsity=0.7, **opts):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    mask = make_mask(w, pattern, sparsity, **opts)
    return quantize_packed(w * mask, pattern, mask, bits, **opts)


def _torch_forward(qw, kind, x_codes, in_q, bias, act, stride):
    """The fake-quantized layer in torch: dequantized input and weight, float conv, activation."""
    x = torch.from_numpy(in_q.dequantize(x_codes)).double()
    w = torch.from_numpy(qw.dequantize()).double()
    b = torch.from_numpy(bias).double()
    y = F.linear(x, w, b) if kind == "linear" else F.conv2d(x[None], w, b, stride, w.shape[-1] // 2)[0]
    return _ACTS[act](y).numpy()


def _check(qw, kind, in_hw, cache, *, stride=1, act="relu", isa="auto", tile=None, seed=0, outputs="q"):
    rng = np.random.default_rng(seed)
    bias = (rng.standard_normal(qw.shape[0]) * 0.3).astype(np.float32)
    in_q, out_q = AffineQuant(0.031, 17), AffineQuant(0.047, 40)
    cfg = {"q": {"out_quant": out_q}, "qfr": {"out_quant": out_q, "out_float": True, "residual": True},
           "pool": {"out_float": True, "pool": True}}[outputs]
    k = compile_qlayer(qw, kind, in_hw, stride, bias, in_quant=in_q, act=act, isa=isa, tile=tile, cache_dir=cache, **cfg)
    x = rng.integers(0, 256, k.in_shape).astype(np.uint8)
    res = rng.standard_normal(k.out_shape).astype(np.float32) if outputs == "qfr" else None
    out = k.run(x, res=res)
    ref = _torch_forward(qw, kind, x, in_q, bias, act, stride)
    if res is not None:
        ref = ref + res
    if "q" in out:
        expect = np.clip(np.rint(ref * np.float32(out_q.inv_scale)) + out_q.zero_point, 0, 255)
        assert np.abs(out["q"].astype(int) - expect.astype(int)).max() <= 1
    if "f" in out:
        np.testing.assert_allclose(out["f"], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    if "pool" in out:
        np.testing.assert_allclose(out["pool"], ref.reshape(len(ref), -1).mean(1), rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    return k


CASES = [  # (kind, shape, in_hw, stride, pattern, opts): tails, odd channel counts, K not a multiple of 4
    ("conv1x1", (40, 36, 1, 1), (7, 9), 1, "block8x1", {}),
    ("conv1x1", (64, 64, 1, 1), (14, 14), 1, "dense", {}),
    ("conv1x1", (33, 30, 1, 1), (5, 7), 1, "unstructured", {}),
    ("conv1x1", (24, 21, 1, 1), (8, 8), 1, "nm2:4", {}),
    ("conv1x1", (40, 23, 1, 1), (6, 6), 1, "block16x1", {}),
    ("conv1x1", (20, 24, 1, 1), (3, 11), 1, "block1x4", {}),
    ("conv1x1", (17, 19, 1, 1), (2, 2), 1, "block4x1", {}),
    ("conv3x3", (16, 3, 3, 3), (23, 19), 2, "dense", {}),
    ("conv3x3", (16, 8, 3, 3), (11, 12), 1, "kernel_pattern", {"share": 4}),
    ("conv3x3", (12, 5, 3, 3), (9, 10), 2, "kernel_pattern", {}),
    ("linear", (50, 37), None, 1, "dense", {}),
    ("linear", (48, 40), None, 1, "block8x1", {}),
    ("linear", (20, 33), None, 1, "unstructured", {}),
]


@pytest.mark.parametrize("kind,shape,in_hw,stride,pattern,opts", CASES)
@pytest.mark.parametrize("bits", [8, 4])
def test_kernel_is_within_one_step_of_torch(cache, kind, shape, in_hw, stride, pattern, opts, bits):
    qw = _qweight(pattern, shape, bits, seed=len(shape) + shape[0], **opts)
    _check(qw, kind, in_hw, cache, stride=stride, act="hswish" if bits == 4 else "relu")


@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("kind,shape,in_hw,stride,pattern,opts", [CASES[0], CASES[2], CASES[3], CASES[7], CASES[11]])
def test_every_instruction_set_path(cache, isa, kind, shape, in_hw, stride, pattern, opts):
    qw = _qweight(pattern, shape, 8, seed=3, **opts)
    k = _check(qw, kind, in_hw, cache, stride=stride, act="hswish", isa=isa, outputs="qfr")
    assert k.isa == {"scalar": 0, "avx2": 2, "avx512vnni": 3}[isa]


NARROW_SPARSE = [  # narrow layers (a linear, or fewer pixels than a vector) whose pattern shares no rows
    ("linear", (37, 45), None, "unstructured"),
    ("linear", (40, 48), None, "gather_scatter"),
    ("linear", (35, 64), None, "nm2:8"),
    ("conv1x1", (21, 30, 1, 1), (3, 3), "block1x4"),
    ("conv1x1", (50, 27, 1, 1), (2, 2), "unstructured"),
]


@pytest.mark.parametrize("kind,shape,in_hw,pattern", NARROW_SPARSE)
@pytest.mark.parametrize("bits", [8, 4])
def test_narrow_sparse_layers_run_vector_rows(cache, kind, shape, in_hw, pattern, bits):
    qw = _qweight(pattern, shape, bits, seed=shape[0])
    geo = qgeometry(kind, tuple(qw.codes.shape), in_hw, 1)
    assert geo.narrow
    assert default_lowering(qw, geo) == ("quad", 16)  # not one row per block: that only the scalar loop runs
    for isa in _isas():
        _check(qw, kind, in_hw, cache, isa=isa, act="hswish" if bits == 4 else "relu")


@pytest.mark.parametrize("isa", _isas())
def test_four_bit_weights_unpack_on_every_path(cache, isa):
    qw = _qweight("block8x1", (24, 40, 1, 1), 4, seed=5)
    assert qw.nbytes < _qweight("block8x1", (24, 40, 1, 1), 8, seed=5).nbytes
    _check(qw, "conv1x1", (5, 9), cache, isa=isa, act="none")


@pytest.mark.parametrize("isa", _isas())
def test_int32_sums_are_exact(cache, isa):
    """Unit scales and integer weights: the float output is the exact integer sum, even with
    codes at the ends of the grid and the AVX2 path's wide-weight split."""
    rng = np.random.default_rng(0)
    codes = rng.integers(-128, 128, (20, 70)).astype(np.float32)
    codes[0, :] = -128
    codes[1, :] = 127
    qw = QuantizedWeight(quantize_packed(codes, "dense", np.ones(codes.shape, bool), 8, scales=np.ones(20)).codes, np.ones(20), 8)
    qw4 = quantize_packed(codes.reshape(20, 70, 1, 1), "dense", np.ones((20, 70, 1, 1), bool), 8, scales=np.ones(20))
    x = rng.integers(0, 256, (70, 3, 7)).astype(np.uint8)
    x[:, 0, 0] = 255
    zq = AffineQuant(1.0, 9)
    k = compile_qlayer(qw4, "conv1x1", (3, 7), in_quant=zq, out_float=True, isa=isa, cache_dir=cache)
    f = k.run(x)["f"]
    exact = np.einsum("ok,kp->op", codes.astype(np.int64), x.reshape(70, -1).astype(np.int64) - 9).reshape(20, 3, 7)
    assert np.array_equal(f, exact.astype(np.float32))
    kl = compile_qlayer(qw, "linear", in_quant=zq, out_float=True, isa=isa, cache_dir=cache)
    v = x[:, 0, 0].copy()
    assert np.array_equal(kl.run(v)["f"], (codes.astype(np.int64) @ (v.astype(np.int64) - 9)).astype(np.float32))


@pytest.mark.parametrize("outputs", ["q", "qfr", "pool"])
@pytest.mark.parametrize("act", ["none", "relu", "hswish", "hsigmoid"])
def test_epilogues(cache, outputs, act):
    qw = _qweight("block8x1", (24, 20, 1, 1), 8, seed=7)
    _check(qw, "conv1x1", (6, 7), cache, act=act, outputs=outputs)


@pytest.mark.parametrize("tile", [QVariant(1), QVariant(3), QVariant(4, "quad", 4), QVariant(2, "gather", 1), QVariant(3, "quad", 8),
                                  QVariant(2, "gather", 8)])
def test_tilings_and_nests_agree(cache, tile):
    qw = _qweight("block8x1", (26, 45, 1, 1), 8, seed=11)
    k = _check(qw, "conv1x1", (9, 13), cache, tile=tile, act="relu")
    assert k.variant.endswith(f"t{tile.nv}")


def test_tile_plan_covers_every_pixel_once():
    for pixels in (1, 15, 16, 17, 49, 196, 784, 3136, 12544):
        for nv in (1, 2, 3, 4):
            for lanes in (8, 16):
                runs = tile_plan(pixels, nv, lanes)
                covered = []
                for start, count, size in runs:
                    assert 0 < size <= nv * lanes
                    covered += [(start + t * size, size) for t in range(count)]
                assert covered[0][0] == 0 and sum(s for _, s in covered) == pixels
                assert all(a + s == b for (a, s), (b, _) in zip(covered, covered[1:]))


def test_lowerings_compute_the_layers_codes():
    qw = _qweight("kernel_pattern", (16, 5, 3, 3), 8, seed=2, share=4)
    geo = qgeometry("conv3x3", qw.shape, (9, 9), 1)
    ref = qw.int_codes().reshape(16, -1)
    for mode in ("quad", "gather"):
        for r in (1, 4, 8):
            low = lower_q(qw, geo, mode, r)
            assert np.array_equal(low.dense_codes(ref.shape[1]), ref)
            assert (low.rowsum == ref.sum(1)).all()
            assert low.cols.max() < geo.k


def test_run_checks_its_buffers(cache):
    qw = _qweight("dense", (8, 8, 1, 1), 8, seed=1)
    k = compile_qlayer(qw, "conv1x1", (4, 4), in_quant=AffineQuant(0.1, 0), out_quant=AffineQuant(0.1, 0), cache_dir=cache)
    with pytest.raises(ValueError, match="dtype float32 not allowed; allowed: uint8"):
        k.run(np.zeros((8, 4, 4), np.float32))
    with pytest.raises(ValueError, match="shape"):
        k.run(np.zeros((8, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="no 'f' output"):
        k.run(np.zeros((8, 4, 4), np.uint8), f=np.zeros((8, 4, 4), np.float32))
    with pytest.raises(ValueError, match="no output"):
        compile_qlayer(qw, "conv1x1", (4, 4), in_quant=AffineQuant(0.1, 0), cache_dir=cache)
    with pytest.raises(ValueError, match="accumulator vectors"):
        compile_qlayer(qw, "conv1x1", (4, 4), in_quant=AffineQuant(0.1, 0), out_float=True, tile=QVariant(4, "gather", 8), cache_dir=cache)
    with pytest.raises(ValueError, match="isa"):
        compile_qlayer(qw, "conv1x1", (4, 4), in_quant=AffineQuant(0.1, 0), out_float=True, isa="neon", cache_dir=cache)


def test_quantized_weight_round_trips_and_checks_codes():
    qw = _qweight("nm2:4", (12, 16), 4, seed=4)
    back = QuantizedWeight.from_npz_dict(qw.to_npz_dict("l/"), "l/")
    assert back.bits == 4 and np.array_equal(back.int_codes(), qw.int_codes()) and np.array_equal(back.scales, qw.scales)
    with pytest.raises(ValueError, match=r"integers in \[-8, 7\]"):
        QuantizedWeight(_qweight("dense", (4, 4), 8, seed=0).codes, np.ones(4), 4)
    with pytest.raises(ValueError, match="positive finite"):
        QuantizedWeight(qw.codes, np.zeros(12), 4)


def test_autotune_picks_a_variant_and_reuses_its_record(cache):
    qw = _qweight("block8x1", (32, 32, 1, 1), 8, seed=9)
    kw = dict(in_quant=AffineQuant(0.02, 3), act="relu", out_quant=AffineQuant(0.03, 0), cache_dir=cache)
    first = autotune_q(qw, "conv1x1", (7, 7), **kw)
    assert first.variant in first.timings_ms and not first.from_record and len(first.timings_ms) >= 2
    again = autotune_q(qw, "conv1x1", (7, 7), **kw)
    assert again.from_record and again.variant == first.variant


@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("channels,in_hw,k,stride", [(5, (9, 11), 3, 1), (7, (14, 14), 3, 2), (4, (7, 7), 5, 1), (3, (20, 17), 7, 2),
                                                     (3, (3, 70), 7, 1), (2, (1, 1), 3, 1)])
def test_depthwise_is_within_one_step_of_torch(cache, isa, channels, in_hw, k, stride):
    from tritune.kernels.codegen.qdepthwise import compile_qdepthwise

    rng = np.random.default_rng(k + stride)
    w = torch.randn(channels, 1, k, k, generator=torch.Generator().manual_seed(k))
    qw = quantize_packed(w, "dense", torch.ones_like(w, dtype=torch.bool), 8)
    bias = (rng.standard_normal(channels) * 0.3).astype(np.float32)
    in_q, out_q = AffineQuant(0.03, 17), AffineQuant(0.05, 40)
    x = rng.integers(0, 256, (channels, *in_hw)).astype(np.uint8)
    ref = F.conv2d(torch.from_numpy(in_q.dequantize(x))[None].double(), torch.from_numpy(qw.dequantize()).double(),
                   torch.from_numpy(bias).double(), stride, k // 2, groups=channels)[0]
    ref = F.hardswish(ref).numpy()
    kq = compile_qdepthwise(qw, bias, in_hw, stride, in_quant=in_q, act="hswish", out_quant=out_q, isa=isa, cache_dir=cache)
    assert np.abs(kq.run(x)["q"].astype(int) - out_q.quantize(ref).astype(int)).max() <= 1
    kf = compile_qdepthwise(qw, bias, in_hw, stride, in_quant=in_q, act="hswish", out_float=True, pool=True, isa=isa, cache_dir=cache)
    out = kf.run(x)
    np.testing.assert_allclose(out["f"], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(out["pool"], ref.reshape(channels, -1).mean(1), rtol=1e-4, atol=1e-5 * np.abs(ref).max())
