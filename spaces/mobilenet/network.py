"""A standalone PyTorch network for one candidate of the mobilenet space (for export and timing).

`build_subnet(space, candidate)` returns an eval-mode ``torch.nn.Module`` whose layers are exactly
the layer IR of the candidate (`MobileNetSpace.layers`), with the compression plan applied to
its weights:

* Batch-norm is folded: every convolution carries a bias, as a deployed network does.
* Every IR layer that has weights is a module named after the IR layer (``s2.b1.expand`` is
  ``net.s2.b1.expand``, holding ``.conv`` / ``.linear`` and ``.act``). The ONNX exporter keeps
  that path in node names (``/s2/b1/expand/conv/Conv``), which is how a target maps IR layers
  (and their plan slots) to ONNX nodes, e.g. to quantize only some layers.
* ``channel`` pruning is *physical*: the layer has fewer output filters and its consumers fewer
  input channels (the IR already shows the kept widths, see `effective_channels`). Every other sparsity pattern
  is a magnitude mask with the pattern's exact structure and nearest achievable ratio on the random
  weights (`tritune.kernels.patterns.make_mask`): the zeros are real, the shapes stay dense, which
  is what a dense runtime executes anyway.
* Weights are random, seeded and deterministic (same space, candidate and seed -> same tensors).

Channel pruning is decided by the space: `MobileNetSpace.layers` already gives the physical
widths (`tritune.spaces.mobilenet.pruned_channels`), so this module builds exactly the IR.
"""
from __future__ import annotations

import functools
import math
import operator
import zlib
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ...kernels.patterns import make_mask
from ...kernels.quant import LayerQuantization
from ...kernels.timing import torch_threads
from ..candidate import Candidate
from ..compression import FLOAT_BITS, parse_pattern
from ..layers import LayerSpec
from .space import STAGES, MobileNetSpace

#: Kept channel counts are rounded to a multiple of this (see the module docstring).

_ACTIVATIONS = {"relu": nn.ReLU, "hswish": nn.Hardswish, "hsigmoid": nn.Hardsigmoid}


@functools.lru_cache(maxsize=None)
def _parse(pattern: str) -> Any:
    return parse_pattern(pattern)


# ----- channel pruning ------------------------------------------------------------------------
def _check(space: Any, candidate: Candidate) -> tuple[MobileNetSpace, Candidate]:
    if not isinstance(space, MobileNetSpace):
        raise ValueError(f"build_subnet: space {getattr(space, 'name', space)!r} is not a mobilenet space (MobileNetSpace)")
    return space, space.validate(candidate)


def effective_channels(space: MobileNetSpace, candidate: Candidate) -> dict[str, int]:
    """Physical output channels of every slot layer the candidate has, by layer name (read off the
    IR, which already applies `pruned_channels`). A layer's name is its slot's, except for the
    squeeze-excite pair ``<block>.se.reduce`` / ``<block>.se.expand``, which share ``<block>.se``."""
    space, cand = _check(space, candidate)
    return {layer.name: layer.out_channels for layer in space.layers(cand) if layer.slot >= 0}


# ----- modules --------------------------------------------------------------------------------
class ConvAct(nn.Module):
    """One IR ``conv`` / ``dwconv`` layer: convolution (BN folded into its bias) + activation."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: str = "none") -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=True)
        self.act = _ACTIVATIONS[act]() if act != "none" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.act(x) if self.act is not None else x


class LinearAct(nn.Module):
    """One IR ``linear`` layer (+ activation)."""

    def __init__(self, c_in: int, c_out: int, act: str = "none") -> None:
        super().__init__()
        self.linear = nn.Linear(c_in, c_out, bias=True)
        self.act = _ACTIVATIONS[act]() if act != "none" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return self.act(x) if self.act is not None else x


class SqueezeExcite(nn.Module):
    """IR ``se.pool`` (global pool), ``se.reduce`` (1x1 conv + relu), ``se.expand`` (1x1 conv +
    hsigmoid), ``se.scale`` (multiply)."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = ConvAct(channels, reduced, act="relu")
        self.expand = ConvAct(reduced, channels, act="hsigmoid")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.expand(self.reduce(self.pool(x)))


class InvertedResidual(nn.Module):
    """``expand`` (optional: the first block has none), ``dw``, optional ``se``, ``project``, and
    the residual sum when ``residual``."""

    def __init__(self, expand: ConvAct | None, dw: ConvAct, se: SqueezeExcite | None, project: ConvAct, residual: bool) -> None:
        super().__init__()
        self.expand = expand
        self.dw = dw
        self.se = se
        self.project = project
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.dw(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return y + x if self.residual else y


class MobileNetSubnet(nn.Module):
    """``stem``, ``first``, stages ``s0``..``s4`` (blocks ``b0``..), ``final_expand``, ``pool``,
    ``feature_mix``, ``classifier``; ``layers`` holds the IR it was built from."""

    def __init__(self, layers: list[LayerSpec], n_stages: int) -> None:
        super().__init__()
        self.layers = layers
        by_name = {layer.name: layer for layer in layers}

        def conv(name: str) -> ConvAct:
            L = by_name[name]
            return ConvAct(L.in_channels, L.out_channels, L.kernel, L.stride, L.groups, L.act)

        def block(prefix: str, has_expand: bool) -> InvertedResidual:
            se = None
            if f"{prefix}.se.reduce" in by_name:
                red = by_name[f"{prefix}.se.reduce"]
                se = SqueezeExcite(red.in_channels, red.out_channels)
            return InvertedResidual(
                conv(f"{prefix}.expand") if has_expand else None, conv(f"{prefix}.dw"), se,
                conv(f"{prefix}.project"), f"{prefix}.add" in by_name,
            )

        self.stem = conv("stem")
        self.first = block("first", has_expand=False)
        for s in range(n_stages):
            blocks = nn.Sequential()
            b = 0
            while f"s{s}.b{b}.dw" in by_name:
                blocks.add_module(f"b{b}", block(f"s{s}.b{b}", has_expand=True))
                b += 1
            self.add_module(f"s{s}", blocks)
        self.n_stages = n_stages
        self.final_expand = conv("final_expand")
        self.pool = nn.AdaptiveAvgPool2d(1)
        fm, cl = by_name["feature_mix"], by_name["classifier"]
        self.feature_mix = LinearAct(fm.in_channels, fm.out_channels, fm.act)
        self.classifier = LinearAct(cl.in_channels, cl.out_channels, cl.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(self.stem(x))
        for s in range(self.n_stages):
            x = getattr(self, f"s{s}")(x)
        x = self.pool(self.final_expand(x)).flatten(1)
        return self.classifier(self.feature_mix(x))

    # ----- a deployable network (`tritune.spaces.weight_sharing.DeployableNetwork`) -------------
    @property
    def input_size(self) -> int:
        return int(self.layers[0].in_h)

    def _op(self, name: str) -> nn.Module:
        module = self.get_submodule(name)
        return module.conv if isinstance(module, ConvAct) else module.linear

    def deployed_weights(self) -> dict[str, torch.Tensor]:
        """Per weight layer, the float weight it computes with (dequantized codes, masks baked)."""
        out = {}
        for L in self.layers:
            if L.has_weights:
                op = self._op(L.name)
                out[L.name] = op.dequantized_weight() if hasattr(op, "dequantized_weight") else op.weight
        return out

    def pattern_masks(self) -> dict[str, torch.Tensor]:
        masks = {L.name: getattr(self._op(L.name), "weight_mask", None) for L in self.layers if L.has_weights}
        return {name: mask for name, mask in masks.items() if mask is not None}

    def float_network(self) -> "MobileNetSubnet":
        """A plain `MobileNetSubnet` with the deployed float weights and no activation fake-quantizers."""
        net = MobileNetSubnet(list(self.layers), self.n_stages)
        weights = self.deployed_weights()
        with torch.no_grad():
            for name, w in weights.items():
                src, dst = self._op(name), net._op(name)
                dst.weight.copy_(w)
                if src.bias is not None:
                    dst.bias.copy_(src.bias)
                else:
                    dst.bias.zero_()
        return net.eval().requires_grad_(False)

    def quantization(self) -> dict[str, LayerQuantization]:
        """Per layer runtimes run int8 (int8 weights and inputs): its weight scales and, where the
        search fake-quantized its input, that quantizer's calibrated scale and zero point."""
        out: dict[str, LayerQuantization] = {}
        for L in self.layers:
            if L.int_bits >= FLOAT_BITS:
                continue
            op = self._op(L.name)
            scales = op.weight_scales.detach().cpu().numpy().astype(np.float32) if getattr(op, "weight_scales", None) is not None else None
            quant = getattr(op, "input_quant", None)
            out[L.name] = LayerQuantization(scales, float(quant.scale), int(quant.zero_point)) if quant is not None else LayerQuantization(scales)
        return out


def _init_weights(net: MobileNetSubnet, seed: int) -> None:
    """Seeded fan-in scaled normal weights (variance-preserving through relu/hswish, damped on
    residual branches, as trained BN-folded networks are), small random biases."""
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, module in net.named_modules():
            if not isinstance(module, (ConvAct, LinearAct)):
                continue
            op = module.conv if isinstance(module, ConvAct) else module.linear
            fan_in = op.weight[0].numel()
            gain = math.sqrt(2.0) if isinstance(module.act, (nn.ReLU, nn.Hardswish)) else 1.0
            if name.endswith(".project"):
                gain = 0.5
            w = torch.randn(op.weight.shape, generator=gen)
            w[w == 0] = 1e-6  # randn does return exact zeros; a kept weight must not be one, or its pattern would not read back
            op.weight.copy_(w * (gain / math.sqrt(fan_in)))
            op.bias.copy_(torch.randn(op.bias.shape, generator=gen) * 0.05)


def build_subnet(space: MobileNetSpace, candidate: Candidate, seed: int = 0) -> MobileNetSubnet:
    """The candidate's network in eval mode: structure = `space.layers(candidate)`, random seeded weights, sparsity masks applied (see module doc).
    Built with one torch thread (see `torch_threads`)."""
    space, cand = _check(space, candidate)
    with torch_threads(1):
        return _build(space, cand, seed)


def _build(space: MobileNetSpace, cand: Candidate, seed: int) -> MobileNetSubnet:
    layers = space.layers(cand)
    net = MobileNetSubnet(layers, len(STAGES))
    # The seed stream also depends on the candidate, so two candidates differ in their weights
    # even where shapes agree, yet a (candidate, seed) pair always gives the same tensors.
    _init_weights(net, zlib.crc32(cand.dumps().encode()) ^ (int(seed) & 0xFFFFFFFF))
    modules = dict(net.named_modules())
    with torch.no_grad():
        for layer in layers:
            if not layer.has_weights or layer.slot < 0 or layer.sparsity <= 0.0:
                continue
            family = _parse(layer.pattern).family
            if family in ("dense", "channel"):
                continue
            module = modules[layer.name]
            op = module.conv if isinstance(module, ConvAct) else module.linear
            op.weight.mul_(make_mask(op.weight, layer.pattern, layer.sparsity))
    return net.eval().requires_grad_(False)


def input_shape(space: MobileNetSpace, candidate: Candidate, batch: int = 1) -> tuple[int, int, int, int]:
    """``(batch, in_channels, resolution, resolution)`` of the candidate's input."""
    res = int(candidate["resolution"])  # type: ignore[arg-type]
    return (batch, space.in_channels, res, res)


# ----- structure read back from a module (tests, debugging) -------------------------------------
def trace_layers(net: nn.Module, shape: Sequence[int]) -> list[dict[str, Any]]:
    """The executed layers of any network, read from its torch.fx graph in execution order:
    ``{"name", "op", "in_channels", "out_channels", "in_h", "kernel", "stride", "groups", "act"}``
    for convolutions (``dwconv`` when depthwise), linear layers, global pools, adds and
    multiplies; an activation module right after a layer fills that layer's ``act``. Shapes come
    from shape propagation (on fake tensors, without compute, for inputs over 50k values)."""
    from torch.fx import symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

    gm = symbolic_trace(net)
    fake = None
    if math.prod(shape) > 50_000:  # large inputs: fake tensors (shapes only, no compute)
        try:
            from torch._subclasses.fake_tensor import FakeTensorMode

            fake = FakeTensorMode()
        except ImportError:
            fake = None
    with torch.no_grad(), torch_threads(1):
        if fake is not None:
            ShapeProp(gm, fake_mode=fake).propagate(fake.from_tensor(torch.zeros(*shape)))
        else:
            ShapeProp(gm).propagate(torch.zeros(*shape))
    modules = dict(gm.named_modules())
    acts = {nn.ReLU: "relu", nn.Hardswish: "hswish", nn.Hardsigmoid: "hsigmoid"}
    out: list[dict[str, Any]] = []
    producer: dict[str, dict[str, Any]] = {}

    def shape_of(node: Any) -> tuple[int, ...]:
        return tuple(node.meta["tensor_meta"].shape)

    for node in gm.graph.nodes:
        rec: dict[str, Any] | None = None
        if node.op == "call_module":
            m = modules[node.target]
            src = node.args[0]
            ins = shape_of(src)
            if isinstance(m, nn.Conv2d):
                dw = m.groups > 1 and m.groups == m.in_channels == m.out_channels
                rec = {"name": node.target.rsplit(".", 1)[0], "op": "dwconv" if dw else "conv", "in_channels": m.in_channels,
                       "out_channels": m.out_channels, "in_h": ins[2], "kernel": m.kernel_size[0], "stride": m.stride[0],
                       "groups": m.groups, "act": "none", "input_channels_seen": ins[1]}
            elif isinstance(m, nn.Linear):
                rec = {"name": node.target.rsplit(".", 1)[0], "op": "linear", "in_channels": m.in_features,
                       "out_channels": m.out_features, "in_h": 1, "kernel": 1, "stride": 1, "groups": 1, "act": "none",
                       "input_channels_seen": ins[1]}
            elif isinstance(m, nn.AdaptiveAvgPool2d):
                rec = {"name": node.target, "op": "global_pool", "in_channels": ins[1], "out_channels": ins[1], "in_h": ins[2],
                       "kernel": 1, "stride": 1, "groups": 1, "act": "none"}
            elif type(m) in acts and getattr(src, "name", None) in producer:
                producer[src.name]["act"] = acts[type(m)]
                producer[node.name] = producer[src.name]
        elif node.op == "call_function" and node.target in (operator.add, operator.mul, torch.add, torch.mul):
            shp = shape_of(node)
            rec = {"name": node.name, "op": "add" if node.target in (operator.add, torch.add) else "mul", "in_channels": shp[1],
                   "out_channels": shp[1], "in_h": shp[2], "kernel": 1, "stride": 1, "groups": 1, "act": "none"}
        if rec is not None:
            out.append(rec)
            producer[node.name] = rec
    return out
