"""Fake quantizers: grids, STE / LSQ gradients, calibration, state, and the ONNX QDQ export."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tritune.kernels.quant import (
    ActFakeQuant, WeightFakeQuant, calibrate, dequantize_weight, max_scales, quantize_weight, select_range,
)

BITS = range(2, 9)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _outlier_data(n: int = 100_000, outlier: float = 100.0) -> torch.Tensor:
    x = torch.randn(n, generator=_gen(1))
    x[n // 2] = outlier
    return x


def _quant_mse(q: ActFakeQuant, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((q(x) - x).square().mean())


# ----- grids -------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", BITS)
def test_weight_values_on_symmetric_grid(bits):
    scale = torch.tensor([0.01, 1.0, 30.0])[:, None]
    w = (torch.rand(3, 20_000, generator=_gen()) * 2 - 1) * scale
    q = WeightFakeQuant(bits)
    y = q(w)
    s = max_scales(w, bits)
    assert torch.allclose(s, w.abs().amax(dim=1) / (2 ** (bits - 1) - 1))
    codes = y / s[:, None]
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    codes = codes.round()
    qp = 2 ** (bits - 1) - 1
    assert int(codes.min()) == -qp and int(codes.max()) == qp
    for row in codes:  # max-initialised step: the 2^b - 1 levels -qp..qp, each used
        assert row.unique().numel() == 2 ** bits - 1
    assert torch.equal(q.scale, s)  # the step in use is kept as state
    # a learned step that shrank reaches the extra negative level: 2^b levels in all
    ql = WeightFakeQuant(bits, learn_step=True)
    ql.init_step(w)
    with torch.no_grad():
        ql.step.mul_(0.5)
        codes = (ql(w) / ql.step[:, None]).round()
    assert int(codes.min()) == -(2 ** (bits - 1)) and int(codes.max()) == qp
    assert all(row.unique().numel() == 2 ** bits for row in codes)


def test_weight_scales_are_per_channel():
    w = torch.randn(4, 64, 3, 3, generator=_gen())
    w[0] *= 1e-3
    w[3] *= 50.0
    y = WeightFakeQuant(4)(w)
    for c in range(4):  # every channel keeps its own relative precision
        rel = float((y[c] - w[c]).abs().max() / w[c].abs().max())
        assert rel <= 0.5 / 7 + 1e-6
    # conv-transpose layout: output channels on axis 1
    wt = w.transpose(0, 1).contiguous()
    yt = WeightFakeQuant(4, channel_axis=1)(wt)
    assert torch.equal(yt, y.transpose(0, 1))


@pytest.mark.parametrize("bits", BITS)
def test_activation_values_on_asymmetric_grid(bits):
    q = ActFakeQuant(bits)
    q.set_range(-1.0, 3.0)
    scale, zp = float(q.scale), int(q.zero_point)
    assert scale == pytest.approx(4.0 / (2 ** bits - 1)) and 0 <= zp <= 2 ** bits - 1
    x = torch.linspace(-2.0, 4.0, 50_001)
    with torch.no_grad():
        y = q(x)
    k = y / scale + zp
    assert torch.allclose(k, k.round(), atol=1e-3)
    k = k.round()
    assert int(k.min()) == 0 and int(k.max()) == 2 ** bits - 1
    assert k.unique().numel() == 2 ** bits
    assert float(q(torch.zeros(3)).abs().max()) == 0.0  # zero is exact


# ----- gradients ---------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [4, 8])
def test_activation_ste_passes_inside_and_blocks_outside(bits):
    q = ActFakeQuant(bits)
    q.set_range(-1.0, 1.0)
    x = torch.tensor([-3.0, -1.5, -0.7, -0.2, 0.0, 0.3, 0.9, 1.5, 4.0], requires_grad=True)
    q(x).sum().backward()
    inside = (x.detach() >= -1.0) & (x.detach() <= 1.0)
    assert torch.equal(x.grad, inside.float())


def test_weight_ste_with_learned_step_clips():
    w = torch.tensor([[-2.0, -0.4, 0.1, 0.5, 2.0]], requires_grad=True)
    q = WeightFakeQuant(3, learn_step=True)
    q.init_step(w)
    with torch.no_grad():
        q.step.fill_(0.2)  # grid -0.8 .. 0.6
    q(w).sum().backward()
    assert torch.equal(w.grad, torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]]))


def test_lsq_step_gradient_matches_the_paper():
    w = torch.randn(3, 40, generator=_gen())
    bits = 3
    qn, qp = 4, 3
    q = WeightFakeQuant(bits, learn_step=True)
    q.init_step(w)
    with torch.no_grad():
        q.step.mul_(0.6)
    up = torch.randn(3, 40, generator=_gen(2))
    (q(w) * up).sum().backward()
    s = q.step.detach()[:, None]
    v = w / s
    d = torch.where(v <= -qn, torch.tensor(-float(qn)), torch.where(v >= qp, torch.tensor(float(qp)), v.round() - v))
    g = 1.0 / math.sqrt(40 * qp)  # values sharing one step: the 40 weights of a channel
    assert torch.allclose(q.step.grad, (d * up).sum(dim=1) * g, atol=1e-5)

    a = ActFakeQuant(4, learn_step=True)
    a.set_range(-1.0, 2.0)
    a(torch.randn(8, 16, generator=_gen(3)) * 2).sum().backward()
    assert a.step.grad is not None and float(a.step.grad.abs()) > 0


def test_lsq_training_reduces_quantization_error():
    w = torch.randn(8, 64, generator=_gen())
    x = torch.randn(256, 64, generator=_gen(1))
    target = x @ w.T
    q = WeightFakeQuant(3, learn_step=True)
    q(w)  # initialise the step before building the optimizer
    opt = torch.optim.SGD(q.parameters(), lr=1.0)
    err0 = float((q(w) - w).detach().square().mean())
    for _ in range(20):
        opt.zero_grad()
        F.mse_loss(x @ q(w).T, target).backward()
        opt.step()
    err1 = float((q(w) - w).detach().square().mean())
    assert err1 < 0.8 * err0, (err0, err1)


def test_8bit_learned_step_kernel_and_ste_paths_agree():
    w = torch.randn(16, 8, 3, 3, generator=_gen())
    q = WeightFakeQuant(8, learn_step=True)
    q.init_step(w)
    with torch.no_grad():
        q.step.mul_(0.7)
    y_train = q(w)  # STE expression (the step needs its gradient)
    with torch.no_grad():
        y_eval = q(w)  # torch.fake_quantize_per_channel_affine
    assert y_train.requires_grad and torch.equal(y_train, y_eval)
    a = ActFakeQuant(8, learn_step=True)
    a.set_range(-1.3, 2.1)
    x = torch.randn(4, 1000, generator=_gen(1)) * 2
    y_train = a(x)
    with torch.no_grad():
        y_eval = a(x)
    assert torch.equal(y_train, y_eval)


# ----- calibration -------------------------------------------------------------------------
def test_percentile_clips_an_outlier_that_minmax_keeps():
    data = _outlier_data()
    batches = list(data.reshape(10, -1))
    mm, pc = nn.Sequential(ActFakeQuant(8)), nn.Sequential(ActFakeQuant(8, calibration="percentile", percentile=99.99))
    calibrate(mm, batches)
    calibrate(pc, batches)
    assert float(mm[0].range_max) == 100.0 and float(mm[0].range_min) == float(data.min())
    assert 3.0 < float(pc[0].range_max) < 5.0 and -5.0 < float(pc[0].range_min) < -3.0
    assert float(pc[0].scale) < float(mm[0].scale) / 10
    # a different method for the same quantizer, chosen at calibration time
    calibrate(mm, batches, method="percentile")
    assert float(mm[0].range_max) == pytest.approx(float(pc[0].range_max))


def test_mse_calibration_beats_minmax_with_an_outlier():
    data = _outlier_data()
    for bits, ratio in ((4, 0.5), (8, 1.0)):
        mm, ms = nn.Sequential(ActFakeQuant(bits)), nn.Sequential(ActFakeQuant(bits, calibration="mse"))
        calibrate(mm, [data])
        calibrate(ms, [data])
        e_mm, e_ms = _quant_mse(mm, data), _quant_mse(ms, data)
        assert e_ms <= ratio * e_mm, (bits, e_mm, e_ms)
    lo, hi = select_range(data, 4, "mse")
    assert hi < 50.0  # the outlier is clipped at 4 bits


def test_calibrate_uses_eval_mode_freezes_and_restores_modes():
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), ActFakeQuant(8), nn.ReLU(), ActFakeQuant(6))
    model.train()
    before = model[1].running_mean.clone()
    calibrate(model, [torch.randn(32, 8, generator=_gen(i)) for i in range(3)])
    assert model.training and model[2].training  # modes restored
    assert torch.equal(model[1].running_mean, before)  # BN statistics untouched (eval mode)
    assert bool(model[2].calibrated) and bool(model[4].calibrated)
    assert float(model[4].range_min) == 0.0  # post-ReLU: the range starts at 0, zero point 0
    assert int(model[4].zero_point) == 0
    scale = model[2].scale.clone()
    model(torch.randn(32, 8) * 100)  # frozen: a training forward does not move the range
    assert torch.equal(model[2].scale, scale)


def test_calibration_keeps_exact_extremes_beyond_the_sample():
    q = nn.Sequential(ActFakeQuant(8))
    batches = [torch.randn(100_000, generator=_gen(i)) for i in range(3)]
    calibrate(q, batches)
    assert float(q[0].range_max) == max(float(b.max()) for b in batches)
    assert float(q[0].range_min) == min(float(b.min()) for b in batches)


def test_uncalibrated_activation_quantizer():
    q = ActFakeQuant(8).eval()
    with pytest.raises(RuntimeError, match="calibrate"):
        q(torch.randn(4))
    q.train()  # in training, the first batch calibrates (LSQ-style initialisation from data)
    x = torch.randn(1000, generator=_gen())
    q(x)
    assert bool(q.calibrated) and float(q.range_max) == float(x.max())
    with pytest.raises(ValueError, match="no batches"):
        calibrate(nn.Sequential(ActFakeQuant(8)), [])


# ----- float, validation, state ------------------------------------------------------------
def test_32_bits_is_identity():
    x = torch.randn(4, 5, generator=_gen())
    for q in (WeightFakeQuant(32, learn_step=True), ActFakeQuant(32, learn_step=True)):
        assert q(x) is x and not list(q.parameters())
    a = nn.Sequential(ActFakeQuant(32))
    calibrate(a, [x])
    assert a.eval()(x) is x


def test_bad_bits_and_methods_name_the_allowed_values():
    for bad in (1, 9, 16, 0, "8", 8.0, True):
        for make in (WeightFakeQuant, ActFakeQuant):
            with pytest.raises(ValueError, match=r"bits.*allowed: 2, 3, 4, 5, 6, 7, 8, 32 \(32 = float\)"):
                make(bad)
    with pytest.raises(ValueError, match=r"bits.*allowed: 2, 3, 4, 5, 6, 7, 8$"):
        quantize_weight(torch.randn(2, 2), 32)
    with pytest.raises(ValueError, match="calibration method 'kl'.*allowed: minmax, percentile, mse"):
        ActFakeQuant(8, calibration="kl")
    with pytest.raises(ValueError, match="allowed: minmax, percentile, mse"):
        calibrate(nn.Sequential(ActFakeQuant(8)), [torch.randn(3)], method="entropy")
    with pytest.raises(ValueError, match="percentile"):
        ActFakeQuant(8, calibration="percentile", percentile=101)
    with pytest.raises(ValueError, match="channel_axis"):
        WeightFakeQuant(8, channel_axis=2)(torch.randn(4, 4))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("axis", [0, 1])
def test_quantize_dequantize_round_trip_equals_fake_quant(bits, axis):
    w = torch.randn(6, 5, 3, 3, generator=_gen(bits))
    codes, scales = quantize_weight(w, bits, channel_axis=axis)
    assert codes.dtype == torch.int8 and scales.shape == (w.shape[axis],)
    assert int(codes.min()) >= -(2 ** (bits - 1)) and int(codes.max()) <= 2 ** (bits - 1) - 1
    assert torch.equal(dequantize_weight(codes, scales, channel_axis=axis), WeightFakeQuant(bits, axis)(w))
    q = WeightFakeQuant(bits, axis, learn_step=True)
    q.init_step(w)
    with torch.no_grad():
        q.step.mul_(0.8)
        assert torch.equal(dequantize_weight(*q.quantize(w), channel_axis=axis), q(w))


def test_state_dict_round_trip():
    w = torch.randn(8, 4, 3, 3, generator=_gen())
    x = torch.randn(2, 100, generator=_gen(1)) * 3
    wq = WeightFakeQuant(4, learn_step=True)
    wq(w)
    with torch.no_grad():
        wq.step.mul_(0.9)
        wq(w)
    aq = ActFakeQuant(5, learn_step=True, calibration="mse")
    calibrate(nn.Sequential(aq), [x])
    sd_w, sd_a = wq.state_dict(), aq.state_dict()
    assert torch.equal(sd_w["scale"], wq.step.detach()) and torch.equal(sd_a["scale"], aq.step.detach())
    assert {"step", "scale", "initialized"} <= set(sd_w) and {"step", "scale", "zero_point", "calibrated"} <= set(sd_a)
    wq2, aq2 = WeightFakeQuant(4, learn_step=True), ActFakeQuant(5, learn_step=True, calibration="mse")
    wq2.load_state_dict(sd_w)
    aq2.load_state_dict(sd_a)
    aq.eval(), aq2.eval()
    with torch.no_grad():
        assert torch.equal(wq2(w), wq(w)) and torch.equal(aq2(x), aq(x))
    plain = WeightFakeQuant(8)
    plain(w)
    fresh = WeightFakeQuant(8)
    fresh.load_state_dict(plain.state_dict())
    assert torch.equal(fresh.scale, max_scales(w, 8))


# ----- ONNX QDQ ----------------------------------------------------------------------------
class _QConvNet(nn.Module):
    def __init__(self, learn_step: bool = False) -> None:
        super().__init__()
        self.inq = ActFakeQuant(8, learn_step=learn_step)
        self.conv1, self.w1 = nn.Conv2d(3, 8, 3, padding=1), WeightFakeQuant(8, learn_step=learn_step)
        self.act1 = ActFakeQuant(8, learn_step=learn_step)
        self.conv2, self.w2 = nn.Conv2d(8, 4, 3), WeightFakeQuant(8, learn_step=learn_step)
        self.out = ActFakeQuant(8, learn_step=learn_step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inq(x)
        x = self.act1(F.relu(F.conv2d(x, self.w1(self.conv1.weight), self.conv1.bias, padding=1)))
        return self.out(F.conv2d(x, self.w2(self.conv2.weight), self.conv2.bias))


@pytest.mark.parametrize("learn_step", [False, True])
def test_onnx_export_is_a_qdq_model_matching_torch(learn_step, tmp_path):
    import onnx
    import onnxruntime as ort

    from tritune.targets.ort_cpu import OrtCpuTarget

    torch.manual_seed(0)
    net = _QConvNet(learn_step)
    calibrate(net, [torch.randn(4, 3, 16, 16, generator=_gen(i)) for i in range(3)])
    if learn_step:  # a few LSQ steps, so the exported steps are learned values
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        for i in range(3):
            opt.zero_grad()
            net(torch.randn(4, 3, 16, 16, generator=_gen(10 + i))).square().mean().backward()
            opt.step()
    net.eval()
    target = OrtCpuTarget(threads=1)
    runnable = target.build(net, input_shape=(2, 3, 16, 16))  # TorchScript export, opset 17, no quantize_static
    model = onnx.load_from_string(runnable.onnx_bytes)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 5 and ops.count("DequantizeLinear") == 5

    x = torch.randn(2, 3, 16, 16, generator=_gen(99)) * 1.5
    with torch.no_grad():
        expected = net(x).numpy()
    step = float((net.out.step if learn_step else net.out.scale).detach())
    got = runnable.run(x)  # ORT_ENABLE_ALL: integer QLinearConv kernels
    diff = np.abs(got - expected)
    assert diff.max() <= step * 1.001, (diff.max(), step)
    assert (diff > 1e-6).mean() < 0.05  # off-by-one-step roundings only on a few outputs

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    plain = ort.InferenceSession(runnable.onnx_bytes, so, providers=["CPUExecutionProvider"])
    assert np.abs(plain.run(None, {"input": x.numpy()})[0] - expected).max() <= 1e-5  # QDQ as written: exact

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.log_severity_level = 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ort.InferenceSession(runnable.onnx_bytes, so, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert fused.count("QLinearConv") == 2  # ONNX Runtime runs both convolutions in int8
