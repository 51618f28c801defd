"""`ElasticLayer`: one set of max-size weights that serves every width, kernel size and compression.

A layer of any candidate is a *view* of the shared weight, described by the candidate's
`LayerSpec` (the IR already gives the physical widths, channel pruning included):

* **width**: the first ``out`` filters and the first ``in`` input channels (a ``channel``-pruned
  layer, a narrower width multiplier or expand ratio all keep the leading channels);
* **kernel**: the centre ``k x k`` of the largest kernel, passed through a learned ``k^2 x k^2``
  matrix per kernel size (identity at the start), stepping down one size at a time
  (7 -> 5 -> 3), as in Once-for-All (Cai et al., ICLR 2020, "elastic kernel size"): the small
  kernel starts as the centre of the large one but can drift from it;
* **sparsity**: a keep-mask with the pattern's exact structure (`tritune.kernels.patterns.make_mask`)
  on that view, by magnitude. Masks are cached per layer, keyed by (pattern, ratio, view shape)
  *and the version counters of the source tensors*: an optimizer step changes the weights in
  place, which bumps their version, so during training every mask is recomputed once per
  (candidate, step), and in evaluation a mask is computed once and reused until the weights
  change. `freeze_masks` keeps the current masks whatever happens to the weights (fine-tuning);
* **bits**: the input activation goes through the layer's `ActFakeQuant` for its ``a_bits`` (one
  per bit-width, so each keeps its own range), the masked weight through `WeightFakeQuant` for
  its ``w_bits`` (per output channel, straight-through gradients). In training mode the
  activation range is the current batch's min/max -- the supernet's activations differ from one
  candidate to the next, so a range fixed early would clip or waste levels (BatchQuant, Bai et
  al., NeurIPS 2021, makes the same argument); in eval mode it is the calibrated range
  (`MobileNetSupernet.recalibrate` sets it per candidate, like the BN statistics).

Batch-norm uses the first ``out`` entries of its parameters and running statistics (OFA's
"dynamic BN"). In training mode a layer computes conv -> BN with batch statistics. In eval mode it
computes what the deployed layer computes: `deploy` folds BN into the weight (into the
per-channel scales of quantized weights) and the layer runs that single op, so an extracted
subnet (`tritune.spaces.mobilenet.supernet.extract`) reproduces it exactly.
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ....kernels.small_maps import depthwise_conv2d, pointwise_conv2d
from ....kernels.patterns import make_mask
from ....kernels.quant import ALLOWED_BITS as QUANT_BITS
from ....kernels.quant import ActFakeQuant, WeightFakeQuant, dequantize_weight, quantize_weight
from ...compression import FLOAT_BITS, parse_pattern
from ...layers import LayerSpec

_ACTIVATIONS = {"none": None, "relu": F.relu, "hswish": F.hardswish, "hsigmoid": F.hardsigmoid}


@dataclass(frozen=True)
class DeployWeights:
    """What one layer of a candidate deploys with: BN folded, mask baked, quantized.

    ``weight`` is the float tensor the op computes with (for quantized layers exactly
    ``dequantize_weight(codes, scales)``); ``codes`` (int8) and ``scales`` are set when
    ``w_bits < 32``; ``mask`` is the keep-mask of a sparsity pattern (None when dense or
    channel-pruned), kept because quantization can zero more weights than the pattern did."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    codes: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    mask: torch.Tensor | None = None


def effective_kernel(kernel: int, height: int, width: int) -> int:
    """The centre part of a ``kernel`` x ``kernel`` "same"-padded convolution that can touch an
    ``height`` x ``width`` input: a tap farther than ``size - 1`` pixels from the centre only
    ever meets padding zeros. Late MobileNet stages run 7x7 depthwise kernels on 2x2 or 1x1
    maps, so cropping to ``2 * size - 1`` is exact and saves most of their time."""
    return min(kernel, 2 * max(height, width) - 1)


def _lru_get(cache: collections.OrderedDict, key, version):
    hit = cache.get(key)
    if hit is None or (version is not None and hit[0] != version):
        return None
    cache.move_to_end(key)
    return hit[1]


def _lru_put(cache: collections.OrderedDict, key, version, value, limit: int) -> None:
    cache[key] = (version, value)
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


class ElasticLayer(nn.Module):
    """A ``conv``, ``dwconv`` or ``linear`` layer of the supernet at its largest size.

    ``kernels``: the kernel sizes it can run (the largest is stored); ``bn``: batch-norm after
    the op (then no bias); ``bias``: a bias instead; ``act``: activation after BN; ``w_bits`` /
    ``a_bits``: the bit-widths it may be asked for (one quantizer each)."""

    def __init__(self, op: str, max_in: int, max_out: int, *, kernels: Sequence[int] = (1,), bn: bool = False,
                 bias: bool = False, act: str = "none", kernel_transform: bool = True, w_bits: Sequence[int] = (), a_bits: Sequence[int] = (),
                 calibration: str = "minmax", bn_momentum: float = 0.1, bn_eps: float = 1e-5, cache_size: int = 64) -> None:
        super().__init__()
        if op not in ("conv", "dwconv", "linear"):
            raise ValueError(f"ElasticLayer.op: {op!r} not allowed; allowed: conv, dwconv, linear")
        if act not in _ACTIVATIONS:
            raise ValueError(f"ElasticLayer.act: {act!r} not allowed; allowed: {', '.join(_ACTIVATIONS)}")
        self.op, self.max_in, self.max_out, self.act = op, int(max_in), int(max_out), act
        self.kernels = tuple(sorted({int(k) for k in kernels}))
        k = self.kernels[-1]
        if op == "linear":
            shape: tuple[int, ...] = (self.max_out, self.max_in)
        elif op == "dwconv":
            shape = (self.max_out, 1, k, k)
        else:
            shape = (self.max_out, self.max_in, k, k)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.zeros(self.max_out)) if bias and not bn else None
        self.bn = nn.BatchNorm2d(self.max_out, eps=bn_eps, momentum=bn_momentum) if bn else None
        self.transforms = nn.ParameterDict()
        if kernel_transform and op != "linear":
            for size in self.kernels[:-1]:
                self.transforms[str(size)] = nn.Parameter(torch.eye(size * size))
        self.act_quant = nn.ModuleDict({str(b): ActFakeQuant(int(b), calibration=calibration) for b in sorted(set(a_bits)) if b < FLOAT_BITS})
        self._weight_quant = {int(b): WeightFakeQuant(int(b), channel_axis=0) for b in sorted(set(w_bits)) if b < FLOAT_BITS}
        self.cache_size = int(cache_size)
        self.freeze_masks = False
        #: while not None, the input's (min, max) per activation bit-width is recorded here and
        #: the input passes in float (`MobileNetSupernet.recalibrate`'s min-max observation)
        self.observed: dict[int, tuple[float, float]] | None = None
        self._masks: collections.OrderedDict = collections.OrderedDict()
        self._deploy: collections.OrderedDict = collections.OrderedDict()

    def reset_parameters(self, generator: torch.Generator) -> None:
        """MobileNetV3's initialisation (He normal, fan-out, for convolutions; N(0, 0.01) for
        linear layers; BN as identity), drawn from ``generator``."""
        with torch.no_grad():
            if self.op == "linear":
                self.weight.normal_(0.0, 0.01, generator=generator)
            else:
                fan_out = self.weight.shape[0] * self.weight[0, 0].numel() // (self.max_out if self.op == "dwconv" else 1)
                self.weight.normal_(0.0, math.sqrt(2.0 / max(1, fan_out)), generator=generator)
            if self.bias is not None:
                self.bias.zero_()
            for t in self.transforms.values():
                t.copy_(torch.eye(t.shape[0]))
        if self.bn is not None:
            self.bn.reset_parameters()

    # ----- the candidate's view of the weight ------------------------------------------------
    def _check(self, spec: LayerSpec) -> None:
        if spec.out_channels > self.max_out or (self.op != "dwconv" and spec.in_channels > self.max_in):
            raise ValueError(f"supernet layer {spec.name}: {spec.in_channels}->{spec.out_channels} channels exceed the supernet's {self.max_in}->{self.max_out}")
        if self.op != "linear" and spec.kernel not in self.kernels:
            raise ValueError(f"supernet layer {spec.name}: kernel {spec.kernel} not allowed; allowed: {', '.join(map(str, self.kernels))}")
        for bits, what in ((spec.w_bits, "w_bits"), (spec.a_bits, "a_bits")):
            if bits not in QUANT_BITS:
                raise ValueError(f"supernet layer {spec.name}: {what} {bits} not allowed; allowed: {', '.join(map(str, QUANT_BITS))}")
        if spec.a_bits < FLOAT_BITS and str(spec.a_bits) not in self.act_quant:
            raise ValueError(f"supernet layer {spec.name}: a_bits {spec.a_bits} not in the supernet's menu {sorted(self.act_quant)}")
        if spec.w_bits < FLOAT_BITS and spec.w_bits not in self._weight_quant:
            raise ValueError(f"supernet layer {spec.name}: w_bits {spec.w_bits} not in the supernet's menu {sorted(self._weight_quant)}")

    def view(self, spec: LayerSpec) -> torch.Tensor:
        """The leading channels of the shared weight, the kernel cropped and transformed."""
        out = spec.out_channels
        w = self.weight[:out] if self.op == "dwconv" else self.weight[:out, : spec.in_channels]
        if self.op == "linear":
            return w
        size = w.shape[-1]
        for k in reversed(self.kernels):
            if k >= size or k < spec.kernel:
                continue
            start = (size - k) // 2
            w = w[..., start : start + k, start : start + k]
            t = self.transforms[str(k)] if str(k) in self.transforms else None
            if t is not None:
                w = (w.reshape(-1, k * k) @ t).reshape(w.shape)
            size = k
        return w

    def _source_version(self) -> tuple[int, ...]:
        return (self.weight._version, *(t._version for t in self.transforms.values()))

    def mask(self, view: torch.Tensor, spec: LayerSpec) -> torch.Tensor | None:
        """Keep-mask of the layer's pattern on ``view`` (None for dense and channel pruning)."""
        family = parse_pattern(spec.pattern).family
        if family in ("dense", "channel"):
            return None
        key = (spec.pattern, float(spec.sparsity), tuple(view.shape))
        version = None if self.freeze_masks else self._source_version()
        hit = _lru_get(self._masks, key, version)
        if hit is None:
            hit = make_mask(view.detach(), spec.pattern, spec.sparsity)
            _lru_put(self._masks, key, self._source_version(), hit, self.cache_size)
        return hit

    def clear_caches(self) -> None:
        self._masks.clear()
        self._deploy.clear()

    # ----- compute -----------------------------------------------------------------------------
    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, spec: LayerSpec) -> torch.Tensor:
        if self.op == "linear":
            return F.linear(x, w, b)
        k = effective_kernel(spec.kernel, x.shape[-2], x.shape[-1])
        if k < spec.kernel:
            start = (spec.kernel - k) // 2
            w = w[..., start : start + k, start : start + k]
        if self.op == "dwconv":
            return depthwise_conv2d(x, w, b, spec.stride, k // 2)
        if k == 1 and spec.stride == 1:
            return pointwise_conv2d(x, w, b)
        return F.conv2d(x, w, b, spec.stride, k // 2)

    def _batch_norm(self, y: torch.Tensor, out: int) -> torch.Tensor:
        bn = self.bn
        assert bn is not None
        momentum = bn.momentum
        if self.training and bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
            momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        return F.batch_norm(y, bn.running_mean[:out], bn.running_var[:out], bn.weight[:out], bn.bias[:out],
                            self.training or not bn.track_running_stats, momentum or 0.0, bn.eps)

    def forward(self, x: torch.Tensor, spec: LayerSpec) -> torch.Tensor:
        self._check(spec)
        if spec.a_bits < FLOAT_BITS and self.observed is not None:
            lo, hi = (float(v) for v in torch.aminmax(x.detach()))
            seen = self.observed.get(spec.a_bits)
            self.observed[spec.a_bits] = (lo, hi) if seen is None else (min(seen[0], lo), max(seen[1], hi))
        elif spec.a_bits < FLOAT_BITS:
            quant = self.act_quant[str(spec.a_bits)]
            if self.training:
                with torch.no_grad():
                    lo, hi = torch.aminmax(x.detach())
                    quant.set_range(float(lo), float(hi))
            x = quant(x)
        out = spec.out_channels
        if self.training:
            w = self.view(spec)
            m = self.mask(w, spec)
            if m is not None:
                w = w * m
            if spec.w_bits < FLOAT_BITS:
                w = self._weight_quant[spec.w_bits](w)
            y = self._op(x, w, self.bias[:out] if self.bias is not None else None, spec)
            if self.bn is not None:
                y = self._batch_norm(y, out)
        else:
            d = self.deploy(spec)
            y = self._op(x, d.weight, d.bias, spec)
        fn = _ACTIVATIONS[self.act]
        return fn(y) if fn is not None else y

    # ----- deployment ----------------------------------------------------------------------------
    def _deploy_version(self) -> tuple[int, ...]:
        v = self._source_version()
        if self.bias is not None:
            v += (self.bias._version,)
        if self.bn is not None:
            v += (self.bn.weight._version, self.bn.bias._version, self.bn.running_mean._version, self.bn.running_var._version)
        return v + (int(self.freeze_masks),)

    @torch.no_grad()
    def deploy(self, spec: LayerSpec) -> DeployWeights:
        """The layer as deployed for ``spec``: masked view, BN folded (running statistics),
        weights quantized per output channel with the BN scale folded into the scales."""
        self._check(spec)
        key = (spec.out_channels, spec.in_channels, spec.kernel, spec.pattern, float(spec.sparsity), spec.w_bits)
        version = self._deploy_version()
        hit = _lru_get(self._deploy, key, version)
        if hit is not None:
            return hit
        out = spec.out_channels
        w = self.view(spec)
        m = self.mask(w, spec)
        if m is not None:
            w = w * m
        factor, bias = None, (self.bias[:out].clone() if self.bias is not None else None)
        if self.bn is not None:
            bn = self.bn
            factor = bn.weight[:out] / torch.sqrt(bn.running_var[:out] + bn.eps)
            bias = bn.bias[:out] - bn.running_mean[:out] * factor
        shape = (-1,) + (1,) * (w.dim() - 1)
        codes = scales = None
        if spec.w_bits < FLOAT_BITS:
            codes, scales = quantize_weight(w, spec.w_bits, channel_axis=0)
            if factor is not None:
                # fold |factor| into the scales and its sign into the codes (symmetric grid), so the
                # stored scales stay positive and codes * scales is exactly the folded weight
                sign = torch.where(factor < 0, -1, 1).to(codes.dtype)
                codes = codes * sign.reshape(shape)
                scales = scales * factor.abs().reshape(scales.shape)
            weight = dequantize_weight(codes, scales, channel_axis=0)
        else:
            weight = w * factor.reshape(shape) if factor is not None else w
        result = DeployWeights(weight.contiguous(), None if bias is None else bias.contiguous(), codes, scales, m)
        _lru_put(self._deploy, key, version, result, self.cache_size)
        return result

    def extra_repr(self) -> str:
        return f"{self.op}, {self.max_in}->{self.max_out}, kernels={self.kernels}, bn={self.bn is not None}, act={self.act}"
