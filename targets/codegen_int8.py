"""Integer layers on ``codegen-cpu``: which layers run int8, their quantization, and the plan of a
network that mixes integer and float layers.

A layer runs on the integer kernels (`tritune.kernels.codegen.qruntime`,
`tritune.kernels.codegen.qdepthwise`) when its IR says ``w_bits <= 8`` and ``a_bits <= 8``; the
rest run on the float kernels, as the float target does. The arithmetic is that of the network's
fake-quantized torch forward (`tritune.spaces.mobilenet.supernet.extract` form: every quantized layer
fake-quantizes its *input* on its own calibrated grid and computes with ``codes * scales``
weights; activations between layers, residual sums and squeeze-excite products are float):

* a tensor is held in the forms its readers need: float32, and/or uint8 codes on the grid of
  each integer reader. An integer producer writes them from its int32 sums in one epilogue
  (requantized straight onto its reader's grid, `tritune.kernels.codegen.qplan.Epilogue`);
  other forms come from element-wise steps (`tritune.kernels.codegen.chain.quant_step`, ...);
* a residual sum after an integer project layer happens in that layer's epilogue (the skip
  tensor is read as float, as torch adds it); a global pool after an integer layer is summed
  as the outputs are stored;
* a squeeze-excite scale feeding an integer layer multiplies and quantizes in one pass.

`quantize_subnet` gives a float subnet (a candidate's seeded random weights) the form an extracted
one has: weights quantized per output channel, input ranges calibrated (min / max over the
calibration batches, as `tritune.kernels.quant.calibrate` does).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

FLOAT = 32


def runs_int8(L: Any) -> bool:
    """Whether IR layer ``L`` runs on the integer kernels."""
    return L.int_bits < FLOAT


def _op(module: Any) -> Any:
    return module.conv if hasattr(module, "conv") else module.linear


def quantize_subnet(net: Any, batches: Iterable[Any], calibration: str = "minmax", seed: int = 0,
                    fixed_range: tuple[float, float] | None = None) -> Any:
    """``net`` with its layers of ``w_bits < 32`` or ``a_bits < 32`` as `QuantizedConv2d` /
    `QuantizedLinear` (int8 codes + per-channel scales, the pattern's mask, an input fake
    quantizer) -- the form `tritune.spaces.mobilenet.supernet.extract` returns, so its torch forward is the
    fake-quantized network. Layers already in that form (an extracted subnet's) are kept with
    their ranges; only the quantizers added here are calibrated on ``batches`` (the network's
    forward with the others active); with ``fixed_range`` they are set to that range instead (no
    data needed). Returns ``net`` itself when there is nothing to add, else a copy."""
    import torch

    from ..kernels.quant import ActFakeQuant, dequantize_weight, quantize_weight
    from ..spaces.compression import parse_pattern
    from ..spaces.mobilenet.network import ConvAct
    from ..spaces.mobilenet.supernet.elastic import DeployWeights
    from ..spaces.mobilenet.supernet.extract import QuantizedConv2d, QuantizedLinear

    todo = [L.name for L in net.layers if L.has_weights and (L.w_bits < FLOAT or L.a_bits < FLOAT)
            and not hasattr(_op(dict(net.named_modules())[L.name]), "input_quant")]
    if not todo:
        return net
    net = copy.deepcopy(net)
    modules = dict(net.named_modules())
    added: list[Any] = []
    by_name = {L.name: L for L in net.layers}
    with torch.no_grad():
        for name in todo:
            L, module = by_name[name], modules[name]
            op = _op(module)
            w = op.weight.detach().clone()
            masked = parse_pattern(L.pattern).family not in ("dense", "channel") and L.sparsity > 0
            mask = (w != 0) if masked else None
            codes = scales = None
            weight = w
            if L.w_bits < FLOAT:
                codes, scales = quantize_weight(w, L.w_bits, channel_axis=0)
                weight = dequantize_weight(codes, scales, channel_axis=0)
            d = DeployWeights(weight=weight, bias=op.bias.detach().clone(), codes=codes, scales=scales, mask=mask)
            quant = ActFakeQuant(L.a_bits, calibration=calibration) if L.a_bits < FLOAT else None
            if quant is not None:
                added.append(quant)
            if isinstance(module, ConvAct):
                module.conv = QuantizedConv2d(d, op.stride[0], op.padding[0], op.groups, quant, L.w_bits)
            else:
                module.linear = QuantizedLinear(d, quant, L.w_bits)
        net.eval()
        if added and fixed_range is not None:
            for q in added:
                q.set_range(*fixed_range)
        elif added:  # what tritune.kernels.quant.calibrate does, for the added quantizers only
            for i, q in enumerate(added):
                q.start_observing(seed + i)
            n = 0
            for batch in batches:
                net(batch)
                n += 1
            if n == 0:
                raise ValueError("calibration: no batches given")
            for q in added:
                q.finish_observing(calibration)
    return net.requires_grad_(False)


def layer_quantization(module: Any) -> tuple[Any, Any]:
    """(weight codes + scales as an int8 tensor pair or None, input `AffineQuant` or None) of an IR module."""
    from ..kernels.quant import AffineQuant

    op = _op(module)
    q = getattr(op, "input_quant", None)
    grid = AffineQuant.from_module(q) if q is not None else None
    codes = getattr(op, "weight_codes", None)
    return (None if codes is None else (codes, op.weight_scales)), grid


def quantized_weight(L: Any, module: Any, kind: str) -> Any:
    """The `QuantizedWeight` an integer layer runs with: its codes packed in the IR's pattern
    (dense where the IR's layer is dense or channel-pruned), its scales and bits."""
    from ..kernels.formats import QuantizedWeight, pack
    from ..spaces.compression import parse_pattern

    op = _op(module)
    codes = op.weight_codes.detach().cpu().numpy().astype(np.float32)
    scales = op.weight_scales.detach().cpu().numpy().astype(np.float32).reshape(-1)
    pattern = L.pattern
    mask = getattr(op, "weight_mask", None)
    if parse_pattern(pattern).family == "channel" or L.sparsity <= 0 or mask is None or kind == "dw":
        pattern, mask = "dense", np.ones(codes.shape, dtype=bool)  # depthwise: a dense kernel over the masked codes
    else:
        mask = mask.detach().cpu().numpy() != 0
    if kind == "linear":
        codes, mask = codes.reshape(codes.shape[0], -1), mask.reshape(codes.shape[0], -1)
    return QuantizedWeight(pack(codes * mask, pattern, mask), scales, int(L.w_bits))


# ----- the plan of a mixed network -----------------------------------------------------------------
@dataclass(eq=False)
class Value:
    """A tensor of the network and the forms it is held in (buffers set as producers are planned)."""

    shape: tuple[int, ...]
    f: np.ndarray | None = None
    q: dict = field(default_factory=dict)  # AffineQuant -> uint8 buffer
    fq: dict = field(default_factory=dict)  # AffineQuant -> float32 buffer (fake-quantized)
    pooled: "Value | None" = None  # the value a global pool of this one gives
    producer: "Node | None" = None
    need_f: bool = False
    need_q: set = field(default_factory=set)
    need_fq: set = field(default_factory=set)
    last: int = -1  # index of the last node reading this value
    keep: bool = False  # never released (the network's input)


@dataclass(eq=False)
class Node:
    """One step of the plan: ``kind`` conv (conv / linear layers), dw, pool, scale (SE), add."""

    kind: str
    layer: Any
    ins: list[Value]
    out: Value
    int8: bool = False
    residual: Value | None = None  # conv: skip tensor added in the epilogue
    linear: bool = False  # conv layers run as matrix-vector products (linear, SE reduce / expand)


def build_nodes(layers: list, x: Value) -> tuple[list[Node], Value]:
    """The network's dataflow, from the IR in execution order (what `CodegenCpuTarget._plan` walks)."""
    nodes: list[Node] = []
    by_name = {L.name: L for L in layers}
    with_add = {L.name.rsplit(".", 1)[0] for L in layers if L.op == "add"}
    residual: dict[str, Value] = {}
    for L in layers:
        prefix = L.name.rsplit(".", 1)[0].removesuffix(".se")
        if L.name.startswith(f"{prefix}.se.") and L.op != "global_pool":
            continue
        if prefix in with_add and prefix not in residual and L.op in ("conv", "dwconv"):
            residual[prefix] = x
        if L.op in ("conv", "linear", "dwconv"):
            shape = (L.out_channels,) if L.op == "linear" else (L.out_channels, -(-L.in_h // L.stride), -(-L.in_w // L.stride))
            out = Value(shape)
            nodes.append(Node("dw" if L.op == "dwconv" else "conv", L, [x], out, runs_int8(L), linear=L.op == "linear"))
            out.producer = nodes[-1]
            x = out
        elif L.op == "global_pool":
            pooled = Value((x.shape[0],))
            x.pooled = pooled
            nodes.append(Node("pool", L, [x], pooled))
            if L.name.endswith(".se.pool"):
                v = pooled
                for part in ("reduce", "expand"):
                    S = by_name[f"{prefix}.se.{part}"]
                    out = Value((S.out_channels,))
                    nodes.append(Node("conv", S, [v], out, runs_int8(S), linear=True))
                    out.producer = nodes[-1]
                    v = out
                scaled = Value(x.shape)
                nodes.append(Node("scale", by_name[f"{prefix}.se.scale"], [x, v], scaled))
                x = scaled
            else:
                x = pooled
        elif L.op == "add":
            res = residual.pop(prefix)
            last = nodes[-1]
            if last.kind == "conv" and last.int8 and last.out is x and not last.linear:  # the sum in the project's epilogue
                last.residual = res
                continue
            out = Value(x.shape)
            nodes.append(Node("add", L, [x, res], out))
            x = out
        else:
            raise ValueError(f"codegen-cpu: layer {L.name}: op {L.op!r} not allowed; allowed: conv, dwconv, linear, global_pool, add, mul")
    return nodes, x


def pool_fused(value: Value, threads: int) -> bool:
    """Whether the global pool of ``value`` is summed by its producer as it stores its outputs
    (integer layers on one thread, depthwise layers)."""
    prod = value.producer
    return prod is not None and ((prod.int8 and threads == 1) or prod.kind == "dw")


def mark_needs(nodes: list[Node], modules: dict, logits: Value, threads: int = 1) -> None:
    """Which forms each value must be held in (from its readers), and when it is read last."""
    for i, node in enumerate(nodes):
        for v in node.ins + ([node.residual] if node.residual is not None else []):
            v.last = i
        x = node.ins[0]
        if node.kind in ("conv", "dw"):
            _, grid = layer_quantization(modules[node.layer.name])
            if node.int8:
                x.need_q.add(grid)
            elif grid is not None:
                x.need_fq.add(grid)
            else:
                x.need_f = True
        elif node.kind == "pool":
            if not pool_fused(x, threads):  # else summed by the producer
                x.need_f = True
        elif node.kind in ("scale", "add"):
            for v in node.ins:
                v.need_f = True
        if node.residual is not None:
            node.residual.need_f = True
    logits.need_f = True


__all__ = ["Node", "Value", "build_nodes", "layer_quantization", "mark_needs", "pool_fused", "quantize_subnet", "quantized_weight", "runs_int8"]
