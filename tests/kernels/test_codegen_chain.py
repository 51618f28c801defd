"""The element-wise C library and the one-call op chain of `tritune.kernels.codegen.chain`."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tritune.kernels.codegen import aligned_empty, compile_layer, compiler_available
from tritune.kernels.codegen.chain import OpChain, add_step, matvec_step, mean_step, scale_step
from tritune.kernels.codegen.depthwise import compile_depthwise
from tritune.kernels.formats import pack

pytestmark = pytest.mark.skipif(not compiler_available(), reason="no C compiler")


def _arr(shape, seed):
    a = aligned_empty(shape)
    a[...] = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    return a


@pytest.mark.parametrize("c,hw", [(1, 1), (7, 13), (16, 49), (96, 3136)])
def test_mean_scale_add_match_numpy(c, hw):
    x = _arr((c, hw), 0)
    v = aligned_empty((c,))
    mean_step(x, v)()
    np.testing.assert_allclose(v, x.mean(axis=1), rtol=1e-5, atol=1e-6)
    s, before = _arr((c,), 1), x.copy()
    scale_step(x, s)()
    np.testing.assert_allclose(x, before * s[:, None], rtol=1e-6)
    r, before = _arr((c, hw), 2), x.copy()
    add_step(x, r)()
    np.testing.assert_allclose(x, before + r, rtol=1e-6)


@pytest.mark.parametrize("act", ["none", "relu", "hswish", "hsigmoid"])
@pytest.mark.parametrize("o,i", [(1, 1), (5, 17), (130, 96)])
def test_matvec_matches_torch(act, o, i):
    w, b, x = _arr((o, i), 3), _arr((o,), 4), _arr((i,), 5)
    y = aligned_empty((o,))
    matvec_step(w, b, act, x, y)()
    ref = torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b))
    ref = {"none": lambda t: t, "relu": torch.relu, "hswish": torch.nn.functional.hardswish,
           "hsigmoid": torch.nn.functional.hardsigmoid}[act](ref)
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-4, atol=1e-5)


def test_chain_runs_generated_kernels_and_elementwise_steps_in_order():
    """conv1x1 -> depthwise -> SE-style pool/scale -> residual add, as one C call, equals torch."""
    rng = np.random.default_rng(0)
    c, h = 16, 9
    w1 = rng.standard_normal((c, c, 1, 1), dtype=np.float32)
    wd = rng.standard_normal((c, 1, 3, 3), dtype=np.float32)
    x, y1, y2 = _arr((c, h, h), 6), aligned_empty((c, h, h)), aligned_empty((c, h, h))
    pooled = aligned_empty((c,))
    k1 = compile_layer(pack(w1, "dense", np.ones_like(w1, dtype=bool)), "conv1x1", (h, h), act="relu")
    kd = compile_depthwise(wd, None, (h, h), 1, "none")
    steps = [k1.step(x, y1), kd.step(y1, y2), mean_step(y2.reshape(c, -1), pooled), scale_step(y2, pooled), add_step(y2, y1)]
    chain = OpChain([s if not hasattr(s, "step") else s.step for s in steps], keep=[k1, kd, steps])
    chain()
    t = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x)[None], torch.from_numpy(w1)))
    d = torch.nn.functional.conv2d(t, torch.from_numpy(wd), padding=1, groups=c)
    ref = d * d.mean(dim=(2, 3), keepdim=True) + t
    np.testing.assert_allclose(y2, ref[0].numpy(), rtol=1e-4, atol=1e-4)


def test_bad_inputs_name_the_field():
    x = aligned_empty((4, 8))
    with pytest.raises(ValueError, match="out: 3 values"):
        mean_step(x, aligned_empty((3,)))
    with pytest.raises(ValueError, match="act: 'gelu' not allowed"):
        matvec_step(np.ones((2, 8), np.float32), None, "gelu", x.reshape(-1)[:8], aligned_empty((2,)))
    with pytest.raises(ValueError, match="x: expected a C-contiguous float32"):
        add_step(x.astype(np.float64), x)
    with pytest.raises(ValueError, match="steps: empty"):
        OpChain([])
