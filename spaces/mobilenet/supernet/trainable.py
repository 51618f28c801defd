"""`TrainableSubnet`: one candidate of a supernet as an ordinary network that trains on its own.

`extract` gives the deploy form (BN folded, int8 codes, eval only). Fine-tuning needs the other
form: the candidate's layers as plain ``nn.Conv2d`` / ``nn.Linear`` weights with batch-norm
kept apart, fake quantizers in the forward and the sparsity masks as data, so any optimizer --
and the pruning methods of `tritune.kernels.pruning`, which look for ``nn.Conv2d`` /
``nn.Linear`` modules -- can train it. `trainable_subnet` builds it from a supernet:

* structure: exactly the candidate's layer IR (`MobileNetSpace.layers`): physical widths and
  depths, kernels, squeeze-excite, residual sums; module names as in
  `tritune.spaces.mobilenet.network.MobileNetSubnet` (``s2.b1.expand.conv``, ``.bn``, ``.act``);
* weights: the supernet's view of each layer (`ElasticLayer.view`: leading channels, the kernel
  centre passed through the learned kernel transforms -- applied once, here), times the
  candidate's mask (`ElasticLayer.mask`), so the zeros are real; the unmasked view is kept as
  the non-persistent buffer ``dense_weight``, from which the pruning methods that reach a mask
  while training start;
* batch-norm: the candidate's slice of the affine parameters and running statistics;
* bits: a `WeightFakeQuant` (per output channel) for ``w_bits < 32`` and an `ActFakeQuant` on
  the input for ``a_bits < 32`` (its range copied from the supernet's quantizer of that
  bit-width);
* masks: ``weight_mask`` buffers (bool, the weight's shape) on every layer whose pattern is
  not ``dense`` or ``channel`` (channel pruning is physical: the IR already lacks the channels).

Training mode runs conv -> BN (batch statistics) with fake-quantized weights and inputs. Eval
mode runs the deployed arithmetic, as the supernet's eval mode does: BN folded into the weight
(into the per-channel scales of quantized weights), so it computes what ``supernet(x,
candidate)`` and the deploy form compute. `TrainableSubnet.recalibrate` re-estimates
BN statistics and activation ranges exactly as `MobileNetSupernet.recalibrate` does, and
`deploy` turns the network into the deploy form `extract` returns, so the exporter takes a
fine-tuned network unchanged.

It is the mobilenet family's `tritune.spaces.trainable.TrainableNetwork`; its conv and linear
ops are that module's `QATConv2d` / `QATLinear`.
"""
from __future__ import annotations

import copy
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ....kernels.batchnorm import cumulative_batchnorm_stats
from ....kernels.quant import dequantize_weight, quantize_weight
from ...candidate import Candidate
from ...compression import FLOAT_BITS
from ...layers import LayerSpec
from ...trainable import QATConv2d, QATLinear, TrainableOps
from ..space import STAGES, MobileNetSpace
from ..network import ConvAct, LinearAct, MobileNetSubnet
from .elastic import DeployWeights
from .extract import QuantizedConv2d, QuantizedLinear, _copy_plain
from ...images import fit_input
from .network import MobileNetSupernet

__all__ = ["TrainableSubnet", "deploy", "trainable_subnet"]

_ACTIVATIONS = {"relu": nn.ReLU, "hswish": nn.Hardswish, "hsigmoid": nn.Hardsigmoid}


class ConvBNAct(nn.Module):
    """One IR ``conv`` / ``dwconv`` layer: ``conv`` (a `QATConv2d`), ``bn`` (or None: then the
    conv has a bias) and ``act``."""

    def __init__(self, spec: LayerSpec, calibration: str, bn_momentum: float, bn_eps: float) -> None:
        super().__init__()
        self.conv = QATConv2d(spec, bias=not spec.bn, calibration=calibration)
        self.bn = nn.BatchNorm2d(spec.out_channels, eps=bn_eps, momentum=bn_momentum) if spec.bn else None
        self.act = _ACTIVATIONS[spec.act]() if spec.act != "none" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            x = self.conv(x)
            if self.bn is not None:
                x = self.bn(x)
        else:  # the deployed arithmetic (BN folded, weights as codes x scales), as the supernet's eval mode
            c = self.conv
            d = fold(c, self.bn)
            x = c.conv(c.quantized_input(x), d.weight, d.bias)
        return self.act(x) if self.act is not None else x


class LinearActQAT(nn.Module):
    """One IR ``linear`` layer: ``linear`` (a `QATLinear`) and ``act``."""

    def __init__(self, spec: LayerSpec, calibration: str) -> None:
        super().__init__()
        self.linear = QATLinear(spec, calibration=calibration)
        self.act = _ACTIVATIONS[spec.act]() if spec.act != "none" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            x = self.linear(x)
        else:
            d = fold(self.linear, None)
            x = F.linear(self.linear.quantized_input(x), d.weight, d.bias)
        return self.act(x) if self.act is not None else x


class _SqueezeExcite(nn.Module):
    def __init__(self, reduce: ConvBNAct, expand: ConvBNAct) -> None:
        super().__init__()
        self.reduce, self.expand = reduce, expand

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.expand(self.reduce(F.adaptive_avg_pool2d(x, 1)))


class _Block(nn.Module):
    def __init__(self, expand: ConvBNAct | None, dw: ConvBNAct, se: _SqueezeExcite | None, project: ConvBNAct, residual: bool) -> None:
        super().__init__()
        self.expand, self.dw, self.se, self.project, self.residual = expand, dw, se, project, residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.dw(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return y + x if self.residual else y


class TrainableSubnet(TrainableOps, nn.Module):
    """The candidate's network with trainable float weights, unfolded BN and fake quantizers.

    Built empty (seeded default initialisation) from the space and the candidate -- which is
    how a saved fine-tuning state is read back -- or filled from a supernet by
    `trainable_subnet`. Inputs of another size are resized to the candidate's resolution, as
    the supernet does. ``calibration``: how activation ranges are set (`tritune.kernels.quant`)."""

    def __init__(self, space: MobileNetSpace, candidate: Candidate, *, calibration: str = "minmax",
                 bn_momentum: float = 0.1, bn_eps: float = 1e-5) -> None:
        super().__init__()
        if not isinstance(space, MobileNetSpace):
            raise ValueError(f"TrainableSubnet: space {getattr(space, 'name', space)!r} is not a mobilenet space (MobileNetSpace)")
        self.space = space
        self.candidate = space.validate(candidate)
        self.calibration = calibration
        self.bn_momentum, self.bn_eps = float(bn_momentum), float(bn_eps)
        self.layers: list[LayerSpec] = space.layers(self.candidate)
        self.resolution = int(self.candidate["resolution"])  # type: ignore[arg-type]
        by_name = {spec.name: spec for spec in self.layers}

        def conv(name: str) -> ConvBNAct:
            return ConvBNAct(by_name[name], calibration, bn_momentum, bn_eps)

        def block(prefix: str, has_expand: bool) -> _Block:
            se = None
            if f"{prefix}.se.reduce" in by_name:
                se = _SqueezeExcite(conv(f"{prefix}.se.reduce"), conv(f"{prefix}.se.expand"))
            return _Block(conv(f"{prefix}.expand") if has_expand else None, conv(f"{prefix}.dw"), se,
                          conv(f"{prefix}.project"), f"{prefix}.add" in by_name)

        self.stem = conv("stem")
        self.first = block("first", has_expand=False)
        self.n_stages = len(STAGES)
        for s in range(self.n_stages):
            blocks = nn.Sequential()
            b = 0
            while f"s{s}.b{b}.dw" in by_name:
                blocks.add_module(f"b{b}", block(f"s{s}.b{b}", has_expand=True))
                b += 1
            self.add_module(f"s{s}", blocks)
        self.final_expand = conv("final_expand")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_mix = LinearActQAT(by_name["feature_mix"], calibration)
        self.classifier = LinearActQAT(by_name["classifier"], calibration)
        for op in self.ops().values():
            if op.weight_quant is not None:
                op.weight_quant.init_step(op.weight)  # the lazily shaped scale buffer gets its shape

    # ----- structure ------------------------------------------------------------------------------
    def ops(self) -> dict[str, QATConv2d | QATLinear]:
        """IR layer name -> its `QATConv2d` / `QATLinear`."""
        out = {}
        for spec in self.weight_layers():
            holder = self.get_submodule(spec.name)
            out[spec.name] = holder.linear if isinstance(holder, LinearActQAT) else holder.conv
        return out

    def module_name(self, layer: str) -> str:
        """The qualified name of the conv / linear module of IR layer ``layer`` (what
        `tritune.kernels.pruning.prunable_modules` lists)."""
        spec = next((s for s in self.weight_layers() if s.name == layer), None)
        if spec is None:
            raise ValueError(f"TrainableSubnet: no weight layer {layer!r}")
        return f"{layer}.linear" if spec.op == "linear" else f"{layer}.conv"

    def options(self) -> dict[str, float | str]:
        """What rebuilds this network with the space and candidate (`MobileNetSpace.trainable_network`)."""
        return {"calibration": self.calibration, "bn_momentum": self.bn_momentum, "bn_eps": self.bn_eps}

    # ----- compute --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.space.in_channels:
            raise ValueError(f"TrainableSubnet: input shape {tuple(x.shape)} not allowed; allowed: [N, {self.space.in_channels}, H, W]")
        x = fit_input(x, self.resolution)
        x = self.first(self.stem(x))
        for s in range(self.n_stages):
            x = getattr(self, f"s{s}")(x)
        x = self.pool(self.final_expand(x)).flatten(1)
        return self.classifier(self.feature_mix(x))

    @torch.no_grad()
    def recalibrate(self, batches: Iterable[torch.Tensor]) -> None:
        """Re-estimate BN statistics and activation ranges from ``batches`` (images), touching
        nothing else -- the arithmetic of `MobileNetSupernet.recalibrate`: BN statistics are the
        exact average over the batches run in training mode with each batch's own activation
        range; then, BN fixed, the activation ranges are calibrated on the same batches."""
        batches = list(batches)
        if not batches:
            raise ValueError("recalibrate: batches is empty; pass at least one batch of images")
        was_training = self.training
        ops = list(self.ops().values())
        try:
            with cumulative_batchnorm_stats(self):
                self.train()
                for op in ops:
                    op.batch_ranges = True
                for x in batches:
                    self(x)
        finally:
            for op in ops:
                op.batch_ranges = False
            self.train(was_training)
        self.eval()
        try:
            self.calibrate_ranges(batches)
        finally:
            self.train(was_training)

    def deploy(self, batches: Iterable[torch.Tensor] | None = None) -> MobileNetSubnet:
        """`deploy` of this network (recalibrated on ``batches`` first, on a copy)."""
        return deploy(self, None, batches)


def _copy_bn(target: nn.BatchNorm2d, source: nn.BatchNorm2d, out: int) -> None:
    target.weight.copy_(source.weight[:out])
    target.bias.copy_(source.bias[:out])
    target.running_mean.copy_(source.running_mean[:out])
    target.running_var.copy_(source.running_var[:out])
    target.num_batches_tracked.copy_(source.num_batches_tracked)
    target.eps, target.momentum = source.eps, source.momentum


@torch.no_grad()
def trainable_subnet(supernet: MobileNetSupernet, candidate: Candidate) -> TrainableSubnet:
    """``candidate`` as a `TrainableSubnet` holding the supernet's current weights, BN
    statistics and activation ranges for it (see the module docstring). Recalibrate the
    supernet for the candidate first (`MobileNetSupernet.recalibrate`) to inherit its own
    statistics, or recalibrate the result."""
    if not isinstance(supernet, MobileNetSupernet):
        raise ValueError(f"trainable_subnet: expected a MobileNetSupernet, got {type(supernet).__name__}")
    plan = supernet.plan(candidate)
    net = TrainableSubnet(supernet.space, candidate, calibration=supernet.config.calibration,
                          bn_momentum=supernet.config.bn_momentum, bn_eps=supernet.config.bn_eps)
    net.to(next(supernet.parameters()).device)
    elastic = dict(supernet.named_elastic())
    ops = net.ops()
    for spec in plan.values():
        if not spec.has_weights:
            continue
        layer, op = elastic[spec.name], ops[spec.name]
        view = layer.view(spec).detach()
        mask = layer.mask(view, spec)
        if (mask is None) != (op.weight_mask is None):  # pragma: no cover - both follow the pattern family
            raise RuntimeError(f"trainable_subnet: layer {spec.name} mask presence disagrees with its pattern {spec.pattern}")
        op.weight.copy_(view * mask if mask is not None else view)
        if mask is not None:
            op.weight_mask.copy_(mask)
            op.dense_weight = view.clone()
        if op.bias is not None:
            op.bias.copy_(layer.bias[: spec.out_channels])
        holder = net.get_submodule(spec.name)
        if isinstance(holder, ConvBNAct) and holder.bn is not None:
            _copy_bn(holder.bn, layer.bn, spec.out_channels)
        if op.input_quant is not None:
            op.input_quant.load_state_dict(layer.act_quant[str(spec.a_bits)].state_dict())
        if op.weight_quant is not None:
            op.weight_quant.init_step(op.weight)
    return net.train(supernet.training)


# ----- deploy form --------------------------------------------------------------------------------
def fold(op: QATConv2d | QATLinear, bn: nn.BatchNorm2d | None) -> DeployWeights:
    """The layer as deployed: BN folded with its running statistics, the weight quantized per
    output channel with the BN scale folded into the scales (its sign into the codes), the mask
    kept -- the arithmetic of `ElasticLayer.deploy`."""
    w = op.weight.detach()
    mask = op.weight_mask
    factor, bias = None, (op.bias.detach().clone() if op.bias is not None else None)
    if bn is not None:
        factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * factor
    shape = (-1,) + (1,) * (w.dim() - 1)
    codes = scales = None
    if op.w_bits < FLOAT_BITS:
        codes, scales = quantize_weight(w, op.w_bits, channel_axis=0)
        if factor is not None:
            sign = torch.where(factor < 0, -1, 1).to(codes.dtype)
            codes = codes * sign.reshape(shape)
            scales = scales * factor.abs().reshape(scales.shape)
        weight = dequantize_weight(codes, scales, channel_axis=0)
    else:
        weight = w * factor.reshape(shape) if factor is not None else w.clone()
    return DeployWeights(weight.contiguous(), None if bias is None else bias.detach().contiguous(), codes, scales,
                         None if mask is None else mask.clone())


@torch.no_grad()
def deploy(net: TrainableSubnet, candidate: Candidate | None = None,
           calibration_batches: Iterable[torch.Tensor] | None = None) -> MobileNetSubnet:
    """``net`` in the deploy form `extract` returns: an eval-mode `MobileNetSubnet` with BN
    folded, int8 codes + per-channel scales for ``w_bits < 32``, calibrated input fake
    quantizers for ``a_bits < 32`` and ``weight_mask`` buffers. With ``calibration_batches``, BN
    statistics and activation ranges are first re-estimated (on a copy: ``net`` is not changed).

    Refuses (ValueError) a network whose pruned weights are not zero -- one still in the middle
    of a pruning method's search for its masks."""
    if not isinstance(net, TrainableSubnet):
        raise ValueError(f"deploy: expected a TrainableSubnet, got {type(net).__name__}")
    if candidate is not None and net.space.validate(candidate) != net.candidate:
        raise ValueError(f"deploy: the network is candidate {net.candidate.id}, not {candidate.id}")
    net.check_masks_final()
    src = net
    if calibration_batches is not None:
        src = net.copy()
        src.recalibrate(calibration_batches)
    sub = MobileNetSubnet(list(net.layers), len(STAGES)).to(next(net.parameters()).device)
    modules = dict(sub.named_modules())
    ops = src.ops()
    for spec in src.weight_layers():
        op = ops[spec.name]
        holder = src.get_submodule(spec.name)
        d = fold(op, holder.bn if isinstance(holder, ConvBNAct) else None)
        quant = copy.deepcopy(op.input_quant) if op.input_quant is not None else None
        target = modules[spec.name]
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
            raise RuntimeError(f"deploy: layer {spec.name} is a {type(target).__name__}")
    return sub.eval().requires_grad_(False)
