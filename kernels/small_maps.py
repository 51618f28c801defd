"""Convolutions for training on small feature maps, as matrix products.

oneDNN trains the depthwise and 1x1 convolutions of a network's late stages (maps of 1x1 to
12x12 pixels) slowly: it computes a depthwise weight gradient as one small GEMM per channel,
10-30x the cost of the forward pass, and a 1x1 convolution's gradients through its convolution
machinery rather than one GEMM each. On such maps:

* a depthwise convolution is, per channel, a dense ``(H_out W_out) x (H W)`` matrix (Toeplitz
  form) whose entries are the kernel's taps, so the layer is one batched matrix product over the
  channels, and so are both of its gradients (`depthwise_conv2d`);
* a 1x1 convolution is one matrix product over the ``N H W`` pixels (`pointwise_conv2d`).

Each takes its matrix form only while gradients are being recorded on a small map (`MAP_PER_TAP`,
`POINTWISE_MAP`) and calls ``F.conv2d`` otherwise; both forms compute the same convolution up to
the order of float summation. ``benchmarks/supernet_step.py`` times a training step both ways.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = ["MAP_PER_TAP", "POINTWISE_MAP", "depthwise_conv2d", "pointwise_conv2d"]

#: Depthwise layers train through the matrix form on input maps of at most this many pixels per
#: kernel tap (``H W <= MAP_PER_TAP k^2``); on larger maps its ``H W`` multiply-adds per output
#: pixel cost more than oneDNN's direct kernels.
MAP_PER_TAP = 4
#: 1x1 layers train as one matrix product on maps of at most this many pixels (12 x 12); on larger
#: maps oneDNN's convolution is the faster.
POINTWISE_MAP = 144


def _recording(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)


@lru_cache(maxsize=256)
def _tap_index(height: int, width: int, kernel: int, stride: int, padding: int) -> tuple[torch.Tensor, int, int]:
    """For each (output pixel, input pixel) pair, the kernel tap that links them (``kernel**2``:
    none), and the output's height and width."""
    out_h = (height + 2 * padding - kernel) // stride + 1
    out_w = (width + 2 * padding - kernel) // stride + 1
    oh = torch.arange(out_h).view(-1, 1, 1, 1)
    ow = torch.arange(out_w).view(1, -1, 1, 1)
    ih = torch.arange(height).view(1, 1, -1, 1)
    iw = torch.arange(width).view(1, 1, 1, -1)
    ti = ih - oh * stride + padding
    tj = iw - ow * stride + padding
    inside = (ti >= 0) & (ti < kernel) & (tj >= 0) & (tj < kernel)
    index = torch.where(inside, ti * kernel + tj, torch.tensor(kernel * kernel))
    return index.reshape(out_h * out_w, height * width), out_h, out_w


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride: int = 1, padding: int = 0) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, groups=channels)`` for a depthwise
    ``weight`` of shape ``(C, 1, k, k)``, with fast gradients on small maps (`MAP_PER_TAP`)."""
    n, c, h, w = x.shape
    k = int(weight.shape[-1])
    if not _recording(x, weight) or h * w > MAP_PER_TAP * k * k or weight.shape[-2] != k:  # read per call: a benchmark sets it to 0
        return F.conv2d(x, weight, bias, stride, padding, 1, c)
    index, out_h, out_w = _tap_index(h, w, k, int(stride), int(padding))
    taps = torch.cat([weight.reshape(c, k * k), weight.new_zeros(c, 1)], dim=1)
    matrix = taps[:, index.to(weight.device)]  # (C, H_out W_out, H W)
    y = torch.bmm(x.reshape(n, c, h * w).transpose(0, 1), matrix.transpose(1, 2))  # (C, N, H_out W_out)
    y = y.transpose(0, 1).reshape(n, c, out_h, out_w)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def pointwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` for a 1x1 ``weight`` of shape ``(O, C, 1, 1)`` (stride 1,
    no padding), with fast gradients on small maps (`POINTWISE_MAP`)."""
    n, c, h, w = x.shape
    if not _recording(x, weight) or h * w > POINTWISE_MAP:  # read per call: a benchmark sets it to 0
        return F.conv2d(x, weight, bias)
    flat = x.permute(0, 2, 3, 1).reshape(n * h * w, c)
    matrix = weight.reshape(weight.shape[0], c).t()
    y = flat @ matrix if bias is None else torch.addmm(bias, flat, matrix)
    return y.view(n, h, w, -1).permute(0, 3, 1, 2)
