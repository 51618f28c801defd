"""`extract`: one candidate of a trained supernet as a standalone network.

The result is a `tritune.spaces.mobilenet.network.MobileNetSubnet` -- the module tree and names of
the candidate's layer IR (``s2.b1.expand.conv`` ...), so it exports to ONNX with the node names
targets map IR layers by -- holding the supernet's weights as deployed (`ElasticLayer.deploy`):

* channels and blocks the candidate lacks are physically absent (the IR's widths and depths);
* kernels are cropped and passed through the learned kernel transforms;
* batch-norm is **folded**: every op carries a bias, as in `build_subnet`;
* sparsity masks are baked in (the zeros are real) and kept as a ``weight_mask`` buffer,
  because quantization may zero more weights than the pattern did and packers
  (`tritune.kernels.formats.pack`) need the pattern's structure;
* a layer with ``w_bits < 32`` stores int8 ``weight_codes`` and per-output-channel
  ``weight_scales`` and dequantizes in its forward; a layer with ``a_bits < 32`` fake-quantizes
  its input with the calibrated range its supernet quantizer had.

The extracted network computes exactly what the supernet computes for that candidate in eval
mode (same deployed tensors, same ops), so call `MobileNetSupernet.recalibrate` first (or pass
``batches``) to give it the candidate's own BN statistics and activation ranges.
"""
from __future__ import annotations

import copy
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ....kernels.quant import dequantize_weight
from ...candidate import Candidate
from ...compression import FLOAT_BITS
from ..space import STAGES
from ..network import ConvAct, LinearAct, MobileNetSubnet
from .elastic import DeployWeights
from .network import MobileNetSupernet


class _QuantizedOp(nn.Module):
    """Shared storage of `QuantizedConv2d` / `QuantizedLinear`: float ``weight`` or int8
    ``weight_codes`` + ``weight_scales``, a ``bias``, an optional ``weight_mask`` and an
    optional ``input_quant`` (activation fake quantizer with a calibrated range)."""

    def _store(self, d: DeployWeights, input_quant: nn.Module | None) -> None:
        if d.codes is not None:
            self.register_buffer("weight_codes", d.codes.to(torch.int8).clone())
            self.register_buffer("weight_scales", d.scales.clone())
            self.weight = None
        else:
            self.weight = nn.Parameter(d.weight.clone(), requires_grad=False)
        self.bias = nn.Parameter(d.bias.clone(), requires_grad=False) if d.bias is not None else None
        if d.mask is not None:
            self.register_buffer("weight_mask", d.mask.clone())
        self.input_quant = input_quant

    def dequantized_weight(self) -> torch.Tensor:
        if self.weight is not None:
            return self.weight
        return dequantize_weight(self.weight_codes, self.weight_scales, channel_axis=0)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_quant(x) if self.input_quant is not None else x


class QuantizedConv2d(_QuantizedOp):
    def __init__(self, d: DeployWeights, stride: int, padding: int, groups: int, input_quant: nn.Module | None, w_bits: int) -> None:
        super().__init__()
        self._store(d, input_quant)
        self.stride, self.padding, self.groups, self.w_bits = stride, padding, groups, int(w_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self._input(x), self.dequantized_weight(), self.bias, self.stride, self.padding, 1, self.groups)


class QuantizedLinear(_QuantizedOp):
    def __init__(self, d: DeployWeights, input_quant: nn.Module | None, w_bits: int) -> None:
        super().__init__()
        self._store(d, input_quant)
        self.w_bits = int(w_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._input(x), self.dequantized_weight(), self.bias)


@torch.no_grad()
def extract(supernet: MobileNetSupernet, candidate: Candidate, batches: Iterable[torch.Tensor] | None = None) -> MobileNetSubnet:
    """The candidate as a standalone eval-mode `MobileNetSubnet` (see the module docstring).
    With ``batches``, the supernet is first recalibrated for the candidate."""
    if not isinstance(supernet, MobileNetSupernet):
        raise ValueError(f"extract: expected a MobileNetSupernet, got {type(supernet).__name__}")
    if batches is not None:
        supernet.recalibrate(candidate, batches)
    was_training = supernet.training
    supernet.eval()
    try:
        plan = supernet.plan(candidate)
        layers = list(plan.values())
        device = next(supernet.parameters()).device
        net = MobileNetSubnet(layers, len(STAGES)).to(device)
        elastic = dict(supernet.named_elastic())
        modules = dict(net.named_modules())
        for spec in layers:
            if not spec.has_weights:
                continue
            supernet_layer = elastic[spec.name]
            d = supernet_layer.deploy(spec)
            target = modules[spec.name]
            quant = copy.deepcopy(supernet_layer.act_quant[str(spec.a_bits)]) if spec.a_bits < FLOAT_BITS else None
            plain = spec.w_bits >= FLOAT_BITS and quant is None
            if isinstance(target, ConvAct):
                if plain:
                    _copy_plain(target.conv, d)
                else:
                    target.conv = QuantizedConv2d(d, spec.stride, spec.kernel // 2, target.conv.groups, quant, spec.w_bits)
            elif isinstance(target, LinearAct):
                if plain:
                    _copy_plain(target.linear, d)
                else:
                    target.linear = QuantizedLinear(d, quant, spec.w_bits)
            else:  # pragma: no cover - the IR and MobileNetSubnet agree on names
                raise RuntimeError(f"extract: layer {spec.name} is a {type(target).__name__}")
    finally:
        supernet.train(was_training)
    return net.eval().requires_grad_(False)


def _copy_plain(op: nn.Conv2d | nn.Linear, d: DeployWeights) -> None:
    if tuple(op.weight.shape) != tuple(d.weight.shape):  # pragma: no cover - shapes come from the same IR
        raise RuntimeError(f"extract: weight shape {tuple(d.weight.shape)} != module {tuple(op.weight.shape)}")
    op.weight.copy_(d.weight)
    if d.bias is not None:
        op.bias.copy_(d.bias)
    else:
        op.bias.zero_()
    if d.mask is not None:
        op.register_buffer("weight_mask", d.mask.clone())
