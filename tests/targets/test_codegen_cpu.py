"""`codegen-cpu`: whole mobilenet candidates on generated kernels equal torch; clear errors without a compiler."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tritune.kernels.codegen import CompilerError, aligned_empty, compiler_available, vector_width
from tritune.kernels.codegen.depthwise import compile_depthwise, default_packed
from tritune.spaces import LayerCompression, create
from tritune.spaces.mobilenet.space import SLOTS
from tritune.spaces.mobilenet.network import build_subnet, input_shape
from tritune.targets import create_target, list_targets
from tritune.targets.codegen_cpu import CodegenCpuTarget
from tritune.kernels.timing import Protocol

needs_cc = pytest.mark.skipif(not compiler_available(), reason="no working C compiler")


@pytest.fixture(scope="module")
def space():
    return create("mobilenet-small")


def _small(space, fn, resolution=32):
    base = space.smallest().replace(arch={"resolution": resolution})
    plan = [fn(role, k, c) for (_, role, k), c in zip(SLOTS, base.compression)]
    return space.validate(base.replace(compression=plan))


PLANS = {
    "dense": lambda r, k, c: c,
    "block8x1": lambda r, k, c: LayerCompression("block8x1", 0.75) if r in ("conv", "project", "se") and k == 1 else c,
    "unstructured": lambda r, k, c: LayerCompression("unstructured", 0.75) if r in ("conv", "project", "linear", "se") else c,
    "nm2:4": lambda r, k, c: LayerCompression("nm2:4", 0.5) if r in ("conv", "project") else c,
    "kernel_pattern": lambda r, k, c: LayerCompression("kernel_pattern", 0.75) if r == "stem" else c,
    "channel": lambda r, k, c: LayerCompression("channel", 0.5) if r in ("conv", "linear") else c,
}


def _rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(np.asarray(b)).max(), 1e-12))


@needs_cc
@pytest.mark.parametrize("plan", list(PLANS))
def test_candidate_equals_torch(space, plan):
    cand = _small(space, PLANS[plan])
    runnable = CodegenCpuTarget().build(cand)
    net = build_subnet(space, cand)
    x = torch.randn(input_shape(space, cand), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net(x).numpy()
    assert _rel(runnable.run(x), ref) <= 1e-4
    # the planned kernels follow the IR's patterns
    families = {op["name"]: op["family"] for op in runnable.plan}
    if plan == "block8x1":
        assert families["s0.b0.expand"] == "block" and families["s0.b0.dw"] == "dense"
        assert families["s1.b0.se.reduce"] == families["s1.b0.se.expand"] == "block"  # the squeeze-excite slot
    if plan == "unstructured":
        assert families["s1.b0.se.reduce"] == "unstructured"
    if plan == "kernel_pattern":
        assert families["stem"] == "kernel_pattern"
    if plan == "channel":
        assert families["s0.b0.expand"] == "dense"  # physically narrower, dense kernel
    # repeated runs reuse the planned buffers and give the same answer
    assert _rel(runnable.run(x), ref) <= 1e-4


@needs_cc
def test_module_build_larger_resolution(space):
    """A built MobileNetSubnet (as extraction returns) at another resolution, with SE blocks and residuals."""
    big = space.largest()  # width 1, kernel 7; shallow and narrow enough to compile in a few seconds
    cand = space.validate(big.replace(arch={"resolution": 40, "depth": (2,) * 5, "expand": (3,) * len(big["expand"])}))
    net = build_subnet(space, cand, seed=3)
    runnable = CodegenCpuTarget().build(net, input_shape=(1, 1, 40, 40))
    x = torch.randn(1, 1, 40, 40)
    with torch.no_grad():
        assert _rel(runnable.run(x), net(x).numpy()) <= 1e-4
    kinds = {op["kind"] for op in runnable.plan}
    assert {"conv1x1", "conv3x3", "dwconv", "linear", "global_pool", "mul", "add"} <= kinds
    with pytest.raises(ValueError, match="input_shape"):
        CodegenCpuTarget().build(net)
    with pytest.raises(ValueError, match="x: shape"):
        runnable.run(torch.randn(1, 1, 32, 32))


@needs_cc
@pytest.mark.parametrize("k,stride,hw,act", [(3, 1, (7, 9), "relu"), (5, 2, (13, 11), "hswish"), (7, 1, (5, 5), "none"),
                                             (7, 2, (17, 33), "hsigmoid"), (3, 2, (1, 1), "relu"),
                                             (3, 2, (112, 112), "relu"), (5, 1, (30, 45), "hswish"), (7, 2, (57, 70), "none")])
def test_depthwise_kernel(k, stride, hw, act):
    g = torch.Generator().manual_seed(k * 10 + stride)
    C = 6
    w, b = torch.randn(C, 1, k, k, generator=g), torch.randn(C, generator=g)
    x = aligned_empty((C, *hw))
    x[...] = torch.randn(C, *hw, generator=g).numpy()
    kernel = compile_depthwise(w, b, hw, stride, act)
    y = kernel.run(x)
    ref = F.conv2d(torch.from_numpy(x)[None], w, b, stride, k // 2, groups=C)
    ref = {"relu": F.relu, "hswish": F.hardswish, "hsigmoid": F.hardsigmoid, "none": lambda v: v}[act](ref)[0].numpy()
    assert y.shape == ref.shape and _rel(y, ref) <= 1e-5
    fused = compile_depthwise(w, b, hw, stride, act, pool=True, rows=2, vectors=1)  # + the squeeze-excite pool
    y2 = fused.run(x)
    assert _rel(y2, ref) <= 1e-5 and _rel(fused.pooled, ref.mean(axis=(1, 2))) <= 1e-5
    with pytest.raises(ValueError, match="rows: 9 not allowed"):
        compile_depthwise(w, b, hw, stride, act, rows=9)
    with pytest.raises(ValueError, match="stride"):
        compile_depthwise(w, b, hw, 3)
    with pytest.raises(ValueError, match="weight"):
        compile_depthwise(torch.randn(C, 1, 4, 4), b, hw)


@needs_cc
@pytest.mark.parametrize("c,hw,k,stride", [(6, (5, 5), 7, 1), (20, (7, 7), 3, 1), (33, (14, 13), 5, 2), (17, (3, 8), 7, 2), (16, (1, 1), 3, 1),
                                            (40, (14, 14), 3, 1), (35, (16, 17), 7, 1), (24, (9, 11), 3, 2)])
def test_packed_depthwise_kernel_equals_planar_and_torch(c, hw, k, stride):
    """The channel-packed layout (narrow planes): every channel group, a partial last group, planes
    that are not a whole number of vectors (the in-register transposes), the pool; every output
    element is written (NaN-filled outputs)."""
    g = torch.Generator().manual_seed(c + k)
    w, b = torch.randn(c, 1, k, k, generator=g), torch.randn(c, generator=g)
    x = aligned_empty((c, *hw))
    x[...] = torch.randn(c, *hw, generator=g).numpy()
    ref = F.hardswish(F.conv2d(torch.from_numpy(x)[None], w, b, stride, k // 2, groups=c))[0].numpy()
    packed = compile_depthwise(w, b, hw, stride, "hswish", packed=True, pool=True)
    planar = compile_depthwise(w, b, hw, stride, "hswish", packed=False)
    assert packed.packed and not planar.packed and not packed.band_fn
    for kernel in (packed, planar):
        out = np.full(kernel.out_shape, np.nan, dtype=np.float32)
        assert _rel(kernel.run(x, out), ref) <= 1e-5
    assert _rel(packed.pooled, ref.mean(axis=(1, 2))) <= 1e-5
    with pytest.raises(ValueError, match="packed"):
        compile_depthwise(w, b, hw, stride, packed=True, band=2)
    vw = vector_width()
    assert compile_depthwise(w, b, (7, 7), 1).packed == default_packed(k, 1, 7, vw)  # the default on narrow planes
    assert default_packed(3, 1, 7, 16) and default_packed(3, 2, 7, 16) and default_packed(7, 1, 14, 16)
    assert not default_packed(3, 2, 14, 16) and not default_packed(3, 1, 28, 16)


def test_registry_fingerprint_capabilities():
    assert "codegen-cpu" in list_targets()
    target = create_target("codegen-cpu", threads=1)
    assert isinstance(target, CodegenCpuTarget)
    fp = target.fingerprint()
    for key in ("target", "device", "runtime", "version", "threads", "compiler_version", "flags"):
        assert key in fp
    caps = target.capabilities()
    assert caps["bit_widths"] == [4, 8, 32] and "block" in caps["sparse_kernels"]["conv1x1"]
    assert "kernel_pattern" in caps["sparse_kernels"]["conv3x3"]
    assert target.supports("mobilenet-small") and not target.supports("nb201")
    with pytest.raises(ValueError, match="threads"):
        create_target("codegen-cpu", threads=0)


def test_missing_compiler_is_reported_not_crashing(space, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/tritune-cc")
    target = CodegenCpuTarget()
    assert target.available() is False
    assert "not found" in (target.unavailable_reason() or "")
    assert target.capabilities()["available"] is False
    assert "unavailable" in target.fingerprint()["compiler_version"]
    with pytest.raises(CompilerError, match="codegen-cpu: target unavailable.*tritune-cc"):
        target.build(_small(space, PLANS["dense"]))


@needs_cc
def test_measure_record(space):
    target = CodegenCpuTarget(protocol=Protocol(threads=1, warmup=1, rounds=2, runs_per_round=3))
    runnable = target.build(_small(space, PLANS["block8x1"]))
    m = target.measure(runnable)
    assert m.runs == 6 and m.threads == 1 and 0 < m.latency_ms < 1000 and m.spread >= 0
    assert m.latency_ms <= max(m.round_medians_ms)
    prof = runnable.profile(repeats=2)
    assert len(prof) == len(runnable.plan) and all(p["ms"] >= 0 for p in prof)
    with pytest.raises(ValueError, match="threads"):
        target.measure(runnable, protocol=Protocol(threads=2))


QPLANS = {  # integer (and mixed) plans: (pattern, sparsity, w_bits, a_bits) by role
    "w8a8 dense": lambda r, k, c: LayerCompression("dense", 0.0, 8, 8),
    "w8a8 block8x1": lambda r, k, c: LayerCompression("block8x1", 0.75, 8, 8) if r in ("conv", "project", "se") and k == 1
    else LayerCompression("dense", 0.0, 8, 8),
    "w4a8 unstructured": lambda r, k, c: LayerCompression("unstructured", 0.75, 4, 8) if r in ("conv", "project", "linear", "se")
    else LayerCompression("dense", 0.0, 8, 8),
    "nm2:4 + kernel-pattern stem": lambda r, k, c: LayerCompression("nm2:4", 0.5, 8, 8) if r in ("conv", "project")
    else (LayerCompression("kernel_pattern", 0.75, 8, 8) if r == "stem" else c),
    "mixed int8 / w32a8 / w8a32": lambda r, k, c: LayerCompression("block8x1", 0.75, 8, 8) if r == "conv"
    else (LayerCompression("dense", 0.0, 32, 8) if r == "project" else (LayerCompression("dense", 0.0, 8, 32) if r == "dwconv" else c)),
}


@needs_cc
@pytest.mark.parametrize("plan", list(QPLANS))
def test_int8_candidate_equals_its_fake_quantized_torch_forward(space, plan):
    cand = _small(space, QPLANS[plan])
    runnable = CodegenCpuTarget().build(cand)
    float_net = build_subnet(space, cand)
    for seed in range(2):
        x = torch.from_numpy(runnable.example_input(seed))
        with torch.no_grad():
            ref, plain = runnable.net(x).numpy(), float_net(x).numpy()
        assert _rel(runnable.run(x), ref) <= 1e-2  # a rounding flip moves the logits a little
        assert _rel(plain, ref) > 1e-3  # the reference is quantized: float weights compute something else
    by_name = {op["name"]: op for op in runnable.plan}
    for L in runnable.net.layers:
        if L.op in ("conv", "dwconv", "linear"):
            assert by_name[L.name]["bits"] == (8 if L.w_bits <= 8 and L.a_bits <= 8 else 32), L.name
    if plan == "w8a8 block8x1":
        assert by_name["s0.b0.expand"]["pattern"] == "block8x1" and by_name["s0.b0.expand"]["variant"].startswith("int8 g8")
        assert "+res" in by_name["first.project"]["variant"] or "first.add" in by_name  # the residual sum in the epilogue
    if plan == "w4a8 unstructured":
        assert by_name["s0.b0.expand"]["variant"].startswith("int4")


@needs_cc
def test_int8_calibration_batches_set_the_ranges(space):
    cand = _small(space, QPLANS["w8a8 dense"])
    target = CodegenCpuTarget()
    seeded = target.build(cand)
    scaled = target.build(cand, calibration=[torch.randn(4, *seeded.input_shape[1:], generator=torch.Generator().manual_seed(5)) * 3])
    grid = lambda r: r.net.s0.b0.expand.conv.input_quant.scale.item()  # noqa: E731
    assert grid(scaled) > 1.5 * grid(seeded)
    x = seeded.example_input(3)
    with torch.no_grad():
        assert _rel(scaled.run(x), scaled.net(torch.from_numpy(x)).numpy()) <= 1e-2
