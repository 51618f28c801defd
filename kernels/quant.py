"""Fake quantizers for quantization-aware training and post-training calibration.

Two modules simulate integer arithmetic in float, so a network can be trained or evaluated at the
bit-widths a `tritune.spaces.compression.LayerCompression` names (``w_bits``, ``a_bits``; 32 =
float):

* `WeightFakeQuant` -- symmetric, per output channel: ``q = clamp(round(w / s), -Qn, Qp)`` with
  ``Qn = 2^(b-1)``, ``Qp = 2^(b-1) - 1`` (the signed symmetric grid of Nagel et al. 2021, eq. 8;
  zero point 0), ``2^b`` levels. The step starts at ``max|w| / Qp`` per channel, so a freshly
  initialised layer uses ``2^b - 1`` of them (``-Qn`` is reached only once a learned step
  shrinks).
* `ActFakeQuant` -- asymmetric, per tensor: ``q = clamp(round(x / s) + z, 0, 2^b - 1)`` with an
  integer zero point ``z`` (the uint8 activations ONNX Runtime expects), range set by `calibrate`.

Rounding passes gradients straight through (STE; Bengio et al. 2013): ``d out / d x = 1`` inside
the clipping range and 0 outside. With ``learn_step=True`` the step is an ``nn.Parameter``
trained by LSQ (Esser et al., "Learned Step Size Quantization", ICLR 2020): its gradient is
``round(x/s) - x/s`` inside the range and the clipped level (``-Qn``, ``Qp``; ``-z``,
``Qmax - z`` for activations) outside, scaled by ``g = 1 / sqrt(N * Qp)`` where ``N`` is the
number of values sharing the step -- per-channel weights: the weights of one output channel
(``numel / channels``; LSQ's per-tensor ``numel`` applied to each step); activations: the
features of one sample. Autograd derives exactly these gradients from the STE expression.

Calibration (Nagel et al. 2021, "A White Paper on Neural Network Quantization", sec. 3.4): `calibrate`
runs batches through the model with every `ActFakeQuant` observing in float, then sets ranges by

* ``minmax``: the observed min and max;
* ``percentile``: the ``(100 - p)``-th and ``p``-th percentiles of the observed *values* (two
  sided, so the negative tail of an asymmetric range is clipped too; for post-ReLU data the low
  end stays 0);
* ``mse``: the clipping range minimising the mean squared quantization error on the observed
  values -- a grid over a common shrink factor of the min-max range, then each end refined alone
  (the grid includes the min-max range, so ``mse`` never does worse than ``minmax`` on the
  observed sample).

Every range is widened to contain 0, so zero (padding, ReLU) is exact. Observation keeps the exact
min/max plus a seeded uniform sample of at most `MAX_SAMPLES` values per quantizer, on which the
percentile and MSE searches run (exact when less data was seen). After `calibrate` the ranges are
frozen (buffers ``scale``, ``zero_point``, ``calibrated``, which survive ``state_dict``).

ONNX: at 8 bits the forward uses ``torch.fake_quantize_per_channel_affine`` /
``torch.fake_quantize_per_tensor_affine``, which the TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``, opset >= 13, as `tritune.targets.ort_cpu` uses) writes
as ``QuantizeLinear -> DequantizeLinear``: an exported model with 8-bit fake quantizers *is* a QDQ
model, and ONNX Runtime fuses ``DQ -> Conv -> Q`` into ``QLinearConv``. The weight scale of a
non-learned quantizer is exported as the subgraph ``Abs -> ReduceMax -> Div`` on the weight
initializer, which ONNX Runtime constant-folds. Where a learned step needs its gradient (training
with grad enabled) the 8-bit forward uses the STE expression instead, which gives the same values;
export always takes the fake-quantize path with the step's current value. Below 8 bits there is
no ONNX mapping: ONNX Runtime's integer kernels are 8-bit, so 2-7 bit quantizers are a training
and accuracy tool only. 16 bits (on `CompressionMenu`'s list) is not a fake-quantization width
here: a caller maps it to 32 (float) or rejects it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

import torch
from torch import nn

from ..spaces.compression import FLOAT_BITS

#: Bit-widths a fake quantizer accepts; 32 (`FLOAT_BITS`) is a float passthrough.
QUANT_BITS = (2, 3, 4, 5, 6, 7, 8)
ALLOWED_BITS = QUANT_BITS + (FLOAT_BITS,)
CALIBRATION_METHODS = ("minmax", "percentile", "mse")
#: Values an `ActFakeQuant` keeps per calibration for the percentile and MSE searches.
MAX_SAMPLES = 1 << 17
@dataclass(frozen=True)
class LayerQuantization:
    """Quantization parameters a real-weight build keeps instead of letting the quantizer choose
    them (`OrtCpuTarget.build` with ``layer_quantization``): ``weight_scales`` per output channel
    (symmetric int8 codes, zero point 0: a weight that is ``codes * scales`` is stored as exactly
    those codes), and the uint8 ``input_scale`` / ``input_zero_point`` of the layer's input
    (None: calibrated like every other tensor)."""

    weight_scales: Sequence[float] | None = None
    input_scale: float | None = None
    input_zero_point: int | None = None


#: Smallest step: an all-zero weight channel or activation still gets a valid (positive) scale.
MIN_STEP = 1e-12
ONNX_BITS = 8
_MSE_GRID = 100


def _check_bits(bits: Any, where: str, allowed: tuple[int, ...] = ALLOWED_BITS) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in allowed:
        names = ", ".join(str(b) for b in allowed) + (" (32 = float)" if FLOAT_BITS in allowed else "")
        raise ValueError(f"{where}.bits: {bits!r} not allowed; allowed: {names}")
    return bits


def _check_method(method: Any, where: str) -> str:
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"{where}: calibration method {method!r} not allowed; allowed: {', '.join(CALIBRATION_METHODS)}")
    return method


def _round_ste(v: torch.Tensor) -> torch.Tensor:
    """``round`` (half to even, as ``nearbyint`` in the fake-quantize kernels) with identity gradient."""
    return v + (torch.round(v) - v).detach()


def _grad_scale(s: torch.Tensor, g: float) -> torch.Tensor:
    """The value of ``s`` (bit for bit) with its gradient multiplied by ``g`` (LSQ's gradient scale)."""
    sg = s * g
    return s.detach() + (sg - sg.detach())


def _fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float, qmin: int, qmax: int) -> torch.Tensor:
    """STE fake quantization ``round(clamp(x / s, qmin - z, qmax - z)) * s``.

    Clamping before rounding gives LSQ's gradients (the clipped level for the step outside the
    range, 0 for ``x``); with integer bounds the values equal the fake-quantize kernels'
    ``(clamp(round(x * (1/s)) + z, qmin, qmax) - z) * s`` bit for bit, so both paths agree.
    (The kernels' own ``x`` gradient also passes in the half step beyond each end.)"""
    v = torch.clamp(x * (1.0 / scale), qmin - zero_point, qmax - zero_point)
    return _round_ste(v) * scale


def _uses_kernel(x: torch.Tensor, bits: int, step: torch.Tensor | None) -> bool:
    """Whether to use torch's fake-quantize kernel (the path that exports to ONNX QDQ): 8 bits,
    float32, and no gradient needed for a learned step."""
    if bits != ONNX_BITS or x.dtype != torch.float32:
        return False
    if torch.onnx.is_in_onnx_export():
        return True
    return step is None or not (torch.is_grad_enabled() and step.requires_grad)


def _weight_grid(bits: int) -> tuple[int, int]:
    """(Qn, Qp) of the signed symmetric grid: codes in [-Qn, Qp]."""
    return 2 ** (bits - 1), 2 ** (bits - 1) - 1


def _channel_view(t: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    """A [C] tensor shaped to broadcast along ``axis`` of an ``ndim``-dimensional tensor."""
    shape = [1] * ndim
    shape[axis] = -1
    return t.reshape(shape)


def _check_axis(w: torch.Tensor, axis: int, where: str) -> int:
    if w.dim() == 0 or not -w.dim() <= axis < w.dim():
        raise ValueError(f"{where}.channel_axis: {axis} out of range for a weight of shape {tuple(w.shape)}")
    return axis % w.dim()


def max_scales(w: torch.Tensor, bits: int, channel_axis: int = 0) -> torch.Tensor:
    """Per-channel step ``max|w| / (2^(b-1) - 1)`` (float32 ``[C]``, at least `MIN_STEP`)."""
    bits = _check_bits(bits, "max_scales", QUANT_BITS)
    axis = _check_axis(w, channel_axis, "max_scales")
    dims = [d for d in range(w.dim()) if d != axis]
    peak = w.detach().abs().amax(dim=dims) if dims else w.detach().abs()
    return (peak.float() / _weight_grid(bits)[1]).clamp_min(MIN_STEP)


def quantize_weight(w: torch.Tensor, bits: int, channel_axis: int = 0,
                    scales: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes (int8, in ``[-2^(b-1), 2^(b-1) - 1]``) and per-channel float32 scales of a
    weight; ``dequantize_weight(codes, scales)`` equals ``WeightFakeQuant(bits)(w)``. ``scales``
    defaults to `max_scales` (pass a learned step to quantize with it)."""
    bits = _check_bits(bits, "quantize_weight", QUANT_BITS)
    axis = _check_axis(w, channel_axis, "quantize_weight")
    if scales is None:
        scales = max_scales(w, bits, axis)
    scales = scales.detach().float().reshape(-1)
    if scales.numel() != w.shape[axis]:
        raise ValueError(f"quantize_weight.scales: {scales.numel()} values for {w.shape[axis]} channels (axis {axis})")
    qn, qp = _weight_grid(bits)
    codes = torch.clamp(torch.round(w.detach().float() * _channel_view(1.0 / scales, w.dim(), axis)), -qn, qp)
    return codes.to(torch.int8), scales


def dequantize_weight(codes: torch.Tensor, scales: torch.Tensor, channel_axis: int = 0) -> torch.Tensor:
    """``codes * scales`` along ``channel_axis`` (float32)."""
    axis = _check_axis(codes, channel_axis, "dequantize_weight")
    scales = scales.reshape(-1).float()
    if scales.numel() != codes.shape[axis]:
        raise ValueError(f"dequantize_weight.scales: {scales.numel()} values for {codes.shape[axis]} channels (axis {axis})")
    return codes.float() * _channel_view(scales, codes.dim(), axis)


class _QuantizerBase(nn.Module):
    """State handling shared by the quantizers: a ``state_dict`` may fill lazily shaped (still
    empty) buffers and parameters, and boolean buffers are mirrored in Python attributes."""

    _lazy: tuple[str, ...] = ()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001 (torch's signature)
        for name in self._lazy:
            incoming = state_dict.get(prefix + name)
            current = getattr(self, name, None)
            if incoming is None or current is None or current.numel() != 0 or current.shape == incoming.shape:
                continue
            if isinstance(current, nn.Parameter):
                current.data = torch.empty_like(incoming, dtype=current.dtype, device=current.device)
            else:
                setattr(self, name, torch.empty_like(incoming, dtype=current.dtype, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._sync_flags()

    def _sync_flags(self) -> None:
        """Mirror the boolean state buffers in Python attributes, so a forward reads them without
        a device sync or a tracer warning."""


class WeightFakeQuant(_QuantizerBase):
    """Symmetric per-output-channel weight fake quantizer, 2..8 bits (32 = identity).

    Apply it to a weight in the layer's forward (``conv2d(x, wq(self.weight), ...)``). Without
    ``learn_step`` the step is ``max|w| / (2^(b-1) - 1)`` of the current weight, recomputed every
    forward. With ``learn_step`` it is the parameter ``step``, initialised that way on the first forward (or by `init_step`), then trained by LSQ. The number
    of channels is only known from the first weight, so call the module once before building the
    optimizer if the step must be in it from the start (the parameter object stays the same; only
    its shape is set). The ``scale`` buffer holds the step of the last forward."""

    _lazy = ("scale", "step")

    def __init__(self, bits: int, channel_axis: int = 0, learn_step: bool = False) -> None:
        super().__init__()
        self.bits = _check_bits(bits, "WeightFakeQuant")
        if isinstance(channel_axis, bool) or not isinstance(channel_axis, int):
            raise ValueError(f"WeightFakeQuant.channel_axis: {channel_axis!r} must be an integer")
        self.channel_axis = channel_axis
        self.learn_step = bool(learn_step) and self.bits != FLOAT_BITS
        self.register_buffer("scale", torch.empty(0))
        self.register_buffer("initialized", torch.tensor(False))
        self.step = nn.Parameter(torch.empty(0)) if self.learn_step else None
        self._initialized = False

    def _sync_flags(self) -> None:
        self._initialized = bool(self.initialized)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, channel_axis={self.channel_axis}, learn_step={self.learn_step}"

    @torch.no_grad()
    def init_step(self, w: torch.Tensor) -> None:
        """Set the step (learned or not) to ``max|w| / (2^(b-1) - 1)`` per channel of ``w``."""
        if self.bits == FLOAT_BITS:
            return
        s = max_scales(w, self.bits, self.channel_axis).to(w.device)
        if self.step is not None:
            self.step.data = s.clone()
        self.scale = s.clone()
        self.initialized.fill_(True)
        self._initialized = True

    def scales(self, w: torch.Tensor) -> torch.Tensor:
        """The per-channel step used for ``w`` now (detached, float32 ``[C]``)."""
        if self.bits == FLOAT_BITS:
            raise ValueError("WeightFakeQuant.scales: a 32-bit (float) quantizer has no scales")
        if self.step is not None:
            if not self._initialized:
                self.init_step(w)
            return self.step.detach()
        return max_scales(w, self.bits, self.channel_axis)

    def quantize(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer codes and scales of ``w`` with this quantizer's step (see `quantize_weight`)."""
        return quantize_weight(w, self.bits, self.channel_axis, self.scales(w))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.bits == FLOAT_BITS:
            return w
        axis = _check_axis(w, self.channel_axis, "WeightFakeQuant")
        exporting = torch.onnx.is_in_onnx_export()
        if self.step is not None:
            if not self._initialized:
                if exporting:
                    raise RuntimeError("WeightFakeQuant: the learned step is not initialised; run a forward before export")
                self.init_step(w)
            if not exporting and self.step.numel() != w.shape[axis]:
                raise ValueError(f"WeightFakeQuant: step has {self.step.numel()} channels, weight has {w.shape[axis]} (axis {axis})")
            s = self.step
        else:
            s = max_scales(w, self.bits, axis)
        if not exporting:  # `scale` holds the step in use (a copy of a learned one)
            with torch.no_grad():
                if self.scale.shape != s.shape or self.scale.device != s.device:
                    self.scale = s.detach().clone()
                else:
                    self.scale.copy_(s)
                if not self._initialized:
                    self.initialized.fill_(True)
                    self._initialized = True
        qn, qp = _weight_grid(self.bits)
        if _uses_kernel(w, self.bits, self.step):
            zero = torch.zeros(w.shape[axis], dtype=torch.int32, device=w.device)
            return torch.fake_quantize_per_channel_affine(w, s.detach(), zero, axis, -qn, qp)
        if self.step is not None:
            s = _grad_scale(s.clamp_min(MIN_STEP), 1.0 / math.sqrt(w.numel() / w.shape[axis] * qp))
        return _fake_quant(w, _channel_view(s, w.dim(), axis).to(w.dtype), 0.0, -qn, qp)


class ActFakeQuant(_QuantizerBase):
    """Asymmetric per-tensor activation fake quantizer, 2..8 bits (32 = identity), with calibration.

    Codes are ``0 .. 2^b - 1`` with an integer zero point. The range comes from `calibrate`
    (``calibration``: minmax, percentile at ``percentile`` %, or mse). An uncalibrated quantizer
    in training mode calibrates itself on its first batch with its own method (LSQ's
    initialisation from data); in eval mode it refuses to run. With ``learn_step`` the step is
    the parameter ``step`` (initialised from the calibrated scale, trained by LSQ); the zero point
    stays as calibrated."""

    def __init__(self, bits: int, learn_step: bool = False, calibration: str = "minmax", percentile: float = 99.99) -> None:
        super().__init__()
        self.bits = _check_bits(bits, "ActFakeQuant")
        self.calibration = _check_method(calibration, "ActFakeQuant.calibration")
        if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 50.0 < percentile <= 100.0:
            raise ValueError(f"ActFakeQuant.percentile: {percentile!r} must be a number in (50, 100]")
        self.percentile = float(percentile)
        self.learn_step = bool(learn_step) and self.bits != FLOAT_BITS
        self.qmax = 2 ** self.bits - 1 if self.bits != FLOAT_BITS else 0
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.register_buffer("calibrated", torch.tensor(False))
        #: The clipping range ``[range_min, range_max]`` the calibration chose (after widening to 0).
        self.register_buffer("range_min", torch.tensor(0.0))
        self.register_buffer("range_max", torch.tensor(0.0))
        self.step = nn.Parameter(torch.tensor(1.0)) if self.learn_step else None
        self._calibrated = False
        self._observing = False
        self._lo = math.inf
        self._hi = -math.inf
        self._sample: torch.Tensor | None = None
        self._keys: torch.Tensor | None = None
        self._generator: torch.Generator | None = None

    def _sync_flags(self) -> None:
        self._calibrated = bool(self.calibrated)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, learn_step={self.learn_step}, calibration={self.calibration!r}, percentile={self.percentile:g}"

    # ----- observation --------------------------------------------------------------------
    def start_observing(self, seed: int = 0) -> None:
        """Forget any range and pass batches through in float while recording them."""
        self._observing = True
        self._lo, self._hi = math.inf, -math.inf
        self._sample = self._keys = None
        self._generator = torch.Generator().manual_seed(seed)
        self.calibrated.fill_(False)
        self._calibrated = False

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        """Track the exact min/max and keep a uniform sample of all values seen (bottom-k of
        random keys: each value gets a seeded uniform key, the `MAX_SAMPLES` smallest stay)."""
        v = x.detach().reshape(-1).float().cpu()
        if v.numel() == 0:
            return
        self._lo = min(self._lo, float(v.min()))
        self._hi = max(self._hi, float(v.max()))
        keys = torch.rand(v.numel(), generator=self._generator)
        if self._sample is not None:
            keys, v = torch.cat([self._keys, keys]), torch.cat([self._sample, v])
        if v.numel() > MAX_SAMPLES:
            keys, idx = torch.topk(keys, MAX_SAMPLES, largest=False, sorted=False)
            v = v[idx]
        self._keys, self._sample = keys, v.clone()

    @torch.no_grad()
    def finish_observing(self, method: str | None = None) -> None:
        """Set the range from what was observed (``method`` overrides ``calibration``) and freeze it."""
        method = _check_method(method or self.calibration, "calibrate.method")
        self._observing = False
        if self.bits == FLOAT_BITS:
            self.set_range(0.0, 0.0)
            return
        if self._sample is None:
            raise ValueError("calibrate: an ActFakeQuant saw no data (is it on the path of the batches?)")
        lo, hi = select_range(self._sample, self.bits, method, self.percentile, self._lo, self._hi)
        self._sample = self._keys = None
        self.set_range(lo, hi)

    @torch.no_grad()
    def set_range(self, lo: float, hi: float) -> None:
        """Freeze the quantizer to the clipping range ``[lo, hi]`` (widened to contain 0)."""
        if self.bits != FLOAT_BITS:
            scale, zp, lo, hi = _affine_params(float(lo), float(hi), self.qmax)
            self.scale.fill_(scale)
            self.zero_point.fill_(zp)
            self.range_min.fill_(lo)
            self.range_max.fill_(hi)
            if self.step is not None:
                self.step.data.fill_(scale)
        self.calibrated.fill_(True)
        self._calibrated = True

    # ----- forward ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits == FLOAT_BITS:
            return x
        if self._observing:
            self._observe(x)
            return x
        if not self._calibrated:
            if not self.training or torch.onnx.is_in_onnx_export():
                raise RuntimeError("ActFakeQuant: not calibrated; run tritune.kernels.quant.calibrate(model, batches) first")
            self.start_observing()
            self._observe(x)
            self.finish_observing()
        s = self.step if self.step is not None else self.scale
        if self.step is not None and not torch.onnx.is_in_onnx_export():
            with torch.no_grad():
                self.scale.copy_(self.step)  # `scale` holds the step in use
        if _uses_kernel(x, self.bits, self.step):
            return torch.fake_quantize_per_tensor_affine(x, s.detach(), self.zero_point, 0, self.qmax)
        if self.step is not None:
            features = x.numel() // x.shape[0] if x.dim() > 1 else x.numel()
            s = _grad_scale(s.clamp_min(MIN_STEP), 1.0 / math.sqrt(max(features, 1) * self.qmax))
        return _fake_quant(x, s.to(x.dtype), self.zero_point.to(x.dtype), 0, self.qmax)


def _affine_params(lo: float, hi: float, qmax: int) -> tuple[float, int, float, float]:
    """(scale, zero point, lo, hi) of the uint grid ``0..qmax`` covering ``[lo, hi]`` widened to 0."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0.0:
        return 1.0, 0, lo, hi  # all zeros: any step represents them; 1.0 as ONNX Runtime uses
    scale = max((hi - lo) / qmax, MIN_STEP)
    zp = int(min(max(round(-lo / scale), 0), qmax))
    return scale, zp, lo, hi


def _mse(v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, qmax: int) -> torch.Tensor:
    """Mean squared fake-quantization error of ``v`` for each candidate range (vectors ``lo``, ``hi``)."""
    scale = ((hi - lo) / qmax).clamp_min(MIN_STEP)
    zp = torch.clamp(torch.round(-lo / scale), 0, qmax)
    out = torch.empty(lo.numel())
    for i in range(0, lo.numel(), 16):
        s, z = scale[i:i + 16, None], zp[i:i + 16, None]
        q = (torch.clamp(torch.round(v[None] * (1.0 / s)) + z, 0, qmax) - z) * s
        out[i:i + 16] = (q - v[None]).square().mean(dim=1)
    return out


def select_range(values: torch.Tensor, bits: int, method: str, percentile: float = 99.99,
                 lo: float | None = None, hi: float | None = None) -> tuple[float, float]:
    """Clipping range ``(lo, hi)`` of observed ``values`` for an asymmetric ``bits`` quantizer.

    ``lo``/``hi`` are the exact observed extremes when ``values`` is a sample (default: its own);
    see the module docstring for the methods."""
    bits = _check_bits(bits, "select_range", QUANT_BITS)
    method = _check_method(method, "select_range")
    v = values.detach().reshape(-1).float().cpu()
    lo = float(v.min()) if lo is None else float(lo)
    hi = float(v.max()) if hi is None else float(hi)
    if method == "minmax":
        return lo, hi
    if method == "percentile":
        p = torch.tensor([1.0 - percentile / 100.0, percentile / 100.0])
        q_lo, q_hi = torch.quantile(v, p).tolist()
        return q_lo, q_hi
    qmax = 2 ** bits - 1
    lo0, hi0 = min(lo, 0.0), max(hi, 0.0)
    grid = torch.linspace(1.0 / _MSE_GRID, 1.0, _MSE_GRID)
    err = _mse(v, lo0 * grid, hi0 * grid, qmax)
    best = int(torch.argmin(err))
    best_lo, best_hi, best_err = lo0 * float(grid[best]), hi0 * float(grid[best]), float(err[best])
    for side in ("lo", "hi"):  # refine each end with the other fixed
        if side == "lo":
            cand_lo, cand_hi = lo0 * grid, torch.full_like(grid, best_hi)
        else:
            cand_lo, cand_hi = torch.full_like(grid, best_lo), hi0 * grid
        err = _mse(v, cand_lo, cand_hi, qmax)
        i = int(torch.argmin(err))
        if float(err[i]) < best_err:
            best_lo, best_hi, best_err = float(cand_lo[i]), float(cand_hi[i]), float(err[i])
    return best_lo, best_hi


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any], method: str | None = None, seed: int = 0) -> None:
    """Run ``batches`` through ``model`` (in eval mode, float activations), then set and freeze
    every `ActFakeQuant`'s range with ``method`` (default: each quantizer's ``calibration``).

    A batch is a tensor (``model(batch)``) or a tuple/list of arguments (``model(*batch)``).
    Recalibrating forgets the previous ranges; a model without `ActFakeQuant` is left as it is.
    ``seed`` fixes the sample kept for the percentile and MSE searches."""
    if method is not None:
        _check_method(method, "calibrate.method")
    quantizers = [m for m in model.modules() if isinstance(m, ActFakeQuant)]
    if not quantizers:
        return
    modes = {m: m.training for m in model.modules()}
    for i, q in enumerate(quantizers):
        q.start_observing(seed + i)
    n = 0
    try:
        model.eval()
        for batch in batches:
            model(*batch) if isinstance(batch, (tuple, list)) else model(batch)
            n += 1
        if n == 0:
            raise ValueError("calibrate.batches: no batches given")
        for q in quantizers:
            q.finish_observing(method)
    finally:
        for q in quantizers:
            q._observing = False
        for m, training in modes.items():
            m.training = training


@dataclass(frozen=True)
class AffineQuant:
    """The integer form of a calibrated `ActFakeQuant`: ``q = clamp(round(x * (1 / scale)) +
    zero_point, 0, 2^bits - 1)`` (uint8 codes), ``x = (q - zero_point) * scale`` -- the arithmetic
    of torch's fake-quantize kernel, with the reciprocal taken in float32 as it does. Integer
    kernels (`tritune.kernels.codegen.qruntime`) read and write activations in this form."""

    scale: float
    zero_point: int
    bits: int = 8

    def __post_init__(self) -> None:
        _check_bits(self.bits, "AffineQuant", QUANT_BITS)
        scale = float(self.scale)
        if not math.isfinite(scale) or scale <= 0.0:
            raise ValueError(f"AffineQuant.scale: {self.scale!r} not allowed; allowed: a positive finite number")
        object.__setattr__(self, "scale", scale)
        zp = int(self.zero_point)
        if zp != self.zero_point or not 0 <= zp <= self.qmax:
            raise ValueError(f"AffineQuant.zero_point: {self.zero_point!r} not allowed; allowed: an integer in [0, {self.qmax}]")
        object.__setattr__(self, "zero_point", zp)

    @property
    def qmax(self) -> int:
        return 2 ** self.bits - 1

    @property
    def inv_scale(self) -> float:
        """``1 / scale`` rounded to float32, as the fake-quantize kernel computes it."""
        return float(np.float32(1.0) / np.float32(self.scale))

    def quantize(self, x: Any) -> np.ndarray:
        """uint8 codes of ``x`` (numpy or torch)."""
        arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        v = np.rint(arr.astype(np.float32) * np.float32(self.inv_scale)) + self.zero_point
        return np.clip(v, 0, self.qmax).astype(np.uint8)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return ((np.asarray(q).astype(np.float32) - self.zero_point) * np.float32(self.scale)).astype(np.float32)

    @classmethod
    def from_range(cls, lo: float, hi: float, bits: int = 8) -> "AffineQuant":
        """The grid `ActFakeQuant.set_range` would choose for ``[lo, hi]`` (widened to contain 0)."""
        bits = _check_bits(bits, "AffineQuant", QUANT_BITS)
        scale, zp, _, _ = _affine_params(float(lo), float(hi), 2 ** bits - 1)
        return cls(scale, zp, bits)

    @classmethod
    def from_module(cls, quantizer: "ActFakeQuant") -> "AffineQuant":
        """The parameters of a calibrated activation fake quantizer (its learned step, if any)."""
        if not isinstance(quantizer, ActFakeQuant) or quantizer.bits == FLOAT_BITS:
            raise ValueError(f"AffineQuant.from_module: expected an ActFakeQuant of 2..8 bits, got {quantizer!r}")
        if not quantizer._calibrated:
            raise ValueError("AffineQuant.from_module: the quantizer is not calibrated; run tritune.kernels.quant.calibrate first")
        step = quantizer.step if quantizer.step is not None else quantizer.scale
        return cls(float(step.detach()), int(quantizer.zero_point), quantizer.bits)
