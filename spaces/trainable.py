"""One candidate as a network that trains on its own, compression kept: the contract and its layers.

The fine-tuning stage (`tritune.evaluators.finetune.Finetuner`) trains a family's candidates
through `TrainableNetwork` and names no family. A family that fine-tunes provides:

* ``SearchSpace.trainable_network(candidate, **options)``: the candidate's trainable network,
  seeded default weights (how a saved fine-tuning state is read back);
* ``supernet.trainable(candidate)``: the same network holding the supernet's weights for it.

Its weight layers are `QATConv2d` / `QATLinear`: plain ``nn.Conv2d`` / ``nn.Linear`` modules (so
the pruning methods of `tritune.kernels.pruning` find them) with a `WeightFakeQuant` per output
channel when ``w_bits < 32``, an `ActFakeQuant` on the input when ``a_bits < 32``, and a
``weight_mask`` buffer on every layer whose pattern is a mask (not ``dense``, not physical
``channel`` pruning). ``dense_weight`` (not saved) holds the inherited weight before its mask,
from which the pruning methods that search a mask while training start.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.small_maps import depthwise_conv2d, pointwise_conv2d
from ..kernels.quant import ActFakeQuant, WeightFakeQuant, calibrate
from .candidate import Candidate
from .compression import FLOAT_BITS, parse_pattern
from .layers import LayerSpec

__all__ = ["QATConv2d", "QATLinear", "TrainableNetwork", "TrainableOps", "masked_pattern"]


def masked_pattern(spec: LayerSpec) -> bool:
    """Whether the layer's pattern is a mask on its weight (not dense, not physical channel pruning)."""
    return spec.has_weights and parse_pattern(spec.pattern).family not in ("dense", "channel")


class _QATOp:
    """What `QATConv2d` and `QATLinear` share: the input and weight fake quantizers, the
    ``weight_mask`` buffer, and the batch-range mode used while re-estimating BN statistics."""

    def _setup(self, spec: LayerSpec, calibration: str) -> None:
        self.w_bits, self.a_bits = int(spec.w_bits), int(spec.a_bits)
        self.weight_quant = WeightFakeQuant(self.w_bits, channel_axis=0) if self.w_bits < FLOAT_BITS else None
        self.input_quant = ActFakeQuant(self.a_bits, calibration=calibration) if self.a_bits < FLOAT_BITS else None
        if masked_pattern(spec):
            self.register_buffer("weight_mask", torch.ones(self.weight.shape, dtype=torch.bool))
        else:
            self.weight_mask = None
        self.register_buffer("dense_weight", None, persistent=False)
        #: While batch-norm statistics are re-estimated the input range is each batch's min / max,
        #: as in a supernet's training-mode arithmetic.
        self.batch_ranges = False

    def quantized_weight(self) -> torch.Tensor:
        """The weight the op computes with (fake-quantized when ``w_bits < 32``)."""
        return self.weight_quant(self.weight) if self.weight_quant is not None else self.weight

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        q = self.input_quant
        if q is None:
            return x
        if self.batch_ranges:
            with torch.no_grad():
                lo, hi = torch.aminmax(x.detach())
                q.set_range(float(lo), float(hi))
        return q(x)


class QATConv2d(_QATOp, nn.Conv2d):
    """``nn.Conv2d`` whose input and weight are fake-quantized; "same" padding unless ``padding`` says."""

    def __init__(self, spec: LayerSpec, *, bias: bool, calibration: str, padding: int | None = None) -> None:
        nn.Conv2d.__init__(self, spec.in_channels, spec.out_channels, spec.kernel, spec.stride,
                           spec.kernel // 2 if padding is None else int(padding), groups=spec.groups, bias=bias)
        self._setup(spec, calibration)

    def conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The convolution. A "same"-padded kernel is cropped to the centre part that can touch
        the input: on an ``n`` x ``n`` map a tap more than ``n - 1`` pixels from the centre only
        meets padding, so late stages' large kernels on tiny maps cost what they compute."""
        k = weight.shape[-1]
        if self.padding[0] != k // 2:
            return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        e = min(k, 2 * max(x.shape[-2], x.shape[-1]) - 1)
        if e < k:
            start = (k - e) // 2
            weight = weight[..., start : start + e, start : start + e]
        depthwise = self.groups > 1 and self.groups == self.in_channels == self.out_channels and self.dilation == (1, 1)
        if depthwise and self.stride[0] == self.stride[1]:
            return depthwise_conv2d(x, weight, bias, self.stride[0], e // 2)
        if k == 1 and self.groups == 1 and self.stride == (1, 1) and self.dilation == (1, 1):
            return pointwise_conv2d(x, weight, bias)
        return F.conv2d(x, weight, bias, self.stride, e // 2, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.quantized_input(x), self.quantized_weight(), self.bias)


class QATLinear(_QATOp, nn.Linear):
    """``nn.Linear`` whose input and weight are fake-quantized."""

    def __init__(self, spec: LayerSpec, *, calibration: str) -> None:
        nn.Linear.__init__(self, spec.in_channels, spec.out_channels, bias=True)
        self._setup(spec, calibration)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.bias)


class TrainableOps:
    """The members of a `TrainableNetwork` that follow from its ``layers``, ``ops()``,
    ``module_name()`` and ``calibration`` (a mix-in for an ``nn.Module``)."""

    def weight_layers(self) -> Iterator[LayerSpec]:
        """The IR layers that have weights, in network order."""
        return (spec for spec in self.layers if spec.has_weights)  # type: ignore[attr-defined]

    def pruning_plan(self) -> dict[str, tuple[str, float]]:
        """Module name -> (pattern, sparsity) of every masked layer: the plan
        `tritune.kernels.pruning.resolve_plan` takes. Dense layers and channel pruning (already
        physical) are not in it."""
        return {self.module_name(s.name): (s.pattern, float(s.sparsity))  # type: ignore[attr-defined]
                for s in self.weight_layers() if masked_pattern(s)}

    def masks(self) -> dict[str, torch.Tensor]:
        """IR layer name -> the ``weight_mask`` of every masked layer."""
        return {name: op.weight_mask for name, op in self.ops().items() if op.weight_mask is not None}  # type: ignore[attr-defined]

    def quantizers(self) -> list[ActFakeQuant]:
        """The activation quantizers, in module order."""
        return [m for m in self.modules() if isinstance(m, ActFakeQuant)]  # type: ignore[attr-defined]

    def check_masks_final(self) -> None:
        """ValueError while a pruned weight is not zero (a pruning method still searching its masks)."""
        for name, op in self.ops().items():  # type: ignore[attr-defined]
            if op.weight_mask is not None and bool((op.weight.detach()[~op.weight_mask] != 0).any()):
                raise ValueError(f"deploy: layer {name} has non-zero weights outside its mask; finish pruning (finalize) first")

    def copy(self) -> Any:
        """An independent copy (weights, statistics, ranges, masks, ``dense_weight``; no hooks),
        built as ``type(self)(space, candidate, **options())``."""
        other = type(self)(self.space, self.candidate, **self.options())  # type: ignore[attr-defined]
        other.to(next(self.parameters()).device).load_state_dict(self.state_dict())  # type: ignore[attr-defined]
        mine = self.ops()  # type: ignore[attr-defined]
        for name, op in other.ops().items():
            op.dense_weight = None if mine[name].dense_weight is None else mine[name].dense_weight.clone()
        for module in other.modules():
            if hasattr(module, "_sync_flags"):  # the quantizers' cached "calibrated" flags follow the loaded buffers
                module._sync_flags()
        return other.train(self.training)  # type: ignore[attr-defined]

    @torch.no_grad()
    def calibrate_ranges(self, batches: Iterable[torch.Tensor]) -> None:
        """Set every activation quantizer's range from ``batches`` (eval mode, normalisation
        fixed), with the network's ``calibration`` method."""
        if self.quantizers():
            calibrate(self, list(batches), method=self.calibration)  # type: ignore[attr-defined, arg-type]


@runtime_checkable
class TrainableNetwork(Protocol):
    """A candidate's network with trainable float weights and its compression as fake quantizers
    and masks; an ``nn.Module`` with these members. Training mode trains; eval mode computes what
    the supernet computes for the candidate.

    ``space``, ``candidate``; ``layers``: its IR (`SearchSpace.layers`)."""

    space: Any
    candidate: Candidate
    layers: list

    def ops(self) -> dict[str, "QATConv2d | QATLinear"]:
        """IR layer name -> its `QATConv2d` / `QATLinear`, for every layer with weights."""
        ...

    def module_name(self, layer: str) -> str:
        """The qualified module name of IR layer ``layer``'s conv / linear (what
        `tritune.kernels.pruning.prunable_modules` lists)."""
        ...

    def pruning_plan(self) -> dict[str, tuple[str, float]]:
        """Module name -> (pattern, sparsity) of every masked layer (`masked_pattern`)."""
        ...

    def options(self) -> dict[str, Any]:
        """The JSON settings that, with the space and candidate, rebuild this network
        (``space.trainable_network(candidate, **options)``)."""
        ...

    def calibrate_ranges(self, batches: Iterable[torch.Tensor]) -> None:
        """Set every activation quantizer's range from ``batches`` (eval mode)."""
        ...

    def recalibrate(self, batches: Iterable[torch.Tensor]) -> None:
        """Re-estimate normalisation statistics (where the family has them) and activation ranges."""
        ...

    def copy(self) -> "TrainableNetwork":
        """An independent copy (weights, statistics, ranges, masks, ``dense_weight``; no hooks)."""
        ...

    def deploy(self, batches: Iterable[torch.Tensor] | None = None) -> Any:
        """The network in its supernet's ``extract`` form (a
        `tritune.spaces.weight_sharing.DeployableNetwork`), recalibrated on ``batches`` first
        when given (on a copy); ValueError while a pruned weight is not zero."""
        ...

    def parameters(self) -> Iterator[nn.Parameter]:
        ...
