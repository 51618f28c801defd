"""`MobileNetSupernet`: every candidate of a `mobilenet` space as one forward pass of shared weights.

The supernet has the module tree of `tritune.spaces.mobilenet.network.MobileNetSubnet` (``stem``,
``first``, ``s0``..``s4`` with blocks ``b0``..``b3``, ``final_expand``, ``feature_mix``,
``classifier``), each weight layer an `ElasticLayer` at its largest size, and runs a candidate
by walking the candidate's layer IR (`MobileNetSpace.layers`): the IR says which blocks exist
(elastic depth), every layer's physical widths (width multiplier, expand ratio, channel
pruning), kernel size, stride, residual sums, sparsity pattern and bit-widths. So the supernet
and the standalone subnet agree on structure by construction; `extract` builds the latter.

Elastic resolution: an input of another size is resized (bilinear, antialiased when shrinking)
to the candidate's resolution.

Weight sharing across compression follows the joint-space idea of APQ (Wang et al., CVPR 2020)
and once-quantization-aware training (OQA, Shen et al., ICCV 2021): masks and fake quantizers of
the sampled candidate are active in the forward, so the shared weights learn to survive them.

Modes. Training mode uses batch statistics (BN) and batch ranges (activation quantizers) and
passes gradients through masks and fake quantizers. Eval mode runs deployment arithmetic: BN
folded with the running statistics, quantized weights as constants, activation ranges as
calibrated -- call `recalibrate(candidate, batches)` first, which sets both for the candidate.
"""
from __future__ import annotations

import collections
import contextlib
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ....kernels.quant import CALIBRATION_METHODS as CALIBRATIONS
from ....kernels.batchnorm import cumulative_batchnorm_stats
from ....kernels.quant import ActFakeQuant, calibrate
from ...candidate import Candidate
from ...compression import FLOAT_BITS
from ...images import fit_input
from ...layers import LayerSpec
from ..space import STAGES, MobileNetSpace
from .elastic import QUANT_BITS, ElasticLayer
from .sampling import CandidateSampler


@dataclass(frozen=True)
class SupernetConfig:
    """Choices of the supernet itself (the network sizes come from the space).

    ``kernel_transform``: learned OFA kernel transforms (else plain centre crops);
    ``calibration``: how activation quantizers set their ranges (see `tritune.kernels.quant`);
    ``bn_momentum`` / ``bn_eps``: batch-norm; ``seed``: weight initialisation;
    ``cache_size``: masks / deployed weights kept per layer."""

    kernel_transform: bool = True
    calibration: str = "minmax"
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    seed: int = 0
    cache_size: int = 64

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"supernet.calibration: {self.calibration!r} not allowed; allowed: {', '.join(CALIBRATIONS)}")
        if not 0.0 < float(self.bn_momentum) <= 1.0:
            raise ValueError(f"supernet.bn_momentum: {self.bn_momentum!r} not in (0, 1]")
        if not float(self.bn_eps) > 0.0:
            raise ValueError(f"supernet.bn_eps: {self.bn_eps!r} must be > 0")
        if int(self.cache_size) < 1:
            raise ValueError(f"supernet.cache_size: {self.cache_size!r} must be >= 1")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> "SupernetConfig":
        data = dict(data or {})
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"supernet config: unknown fields {unknown}; allowed: {', '.join(sorted(allowed))}")
        return cls(**data)


class _Block(nn.Module):
    """Holder of one inverted-residual block's layers (``expand``, ``dw``, ``se``, ``project``)."""


class _SqueezeExcite(nn.Module):
    def __init__(self, reduce: ElasticLayer, expand: ElasticLayer) -> None:
        super().__init__()
        self.reduce, self.expand = reduce, expand


class MobileNetSupernet(nn.Module):
    """Shared weights for every candidate of ``space`` (a `MobileNetSpace`, any config).

    ``supernet(x, candidate)`` runs one candidate; ``set_active(candidate)`` then
    ``supernet(x)`` does the same (what `tritune.kernels.quant.calibrate` needs)."""

    def __init__(self, space: MobileNetSpace, config: SupernetConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if not isinstance(space, MobileNetSpace):
            raise ValueError(f"MobileNetSupernet: space {getattr(space, 'name', space)!r} is not a mobilenet space (MobileNetSpace)")
        self.space = space
        self.config = config if isinstance(config, SupernetConfig) else SupernetConfig.from_json(config)
        menu = space.menu
        for what, bits in (("w_bits", menu.w_bits), ("a_bits", menu.a_bits)):
            bad = [b for b in bits if b not in QUANT_BITS]
            if bad:
                raise ValueError(f"MobileNetSupernet: space compression.{what} {bad} cannot be fake-quantized; allowed: {', '.join(map(str, QUANT_BITS))}")
        self.sampler = CandidateSampler(space)
        self._plans: collections.OrderedDict[Candidate, dict[str, LayerSpec]] = collections.OrderedDict()
        self._active: Candidate | None = None
        dims = self._max_dims()
        cfg = self.config
        common = dict(kernel_transform=cfg.kernel_transform, w_bits=menu.w_bits, a_bits=menu.a_bits, calibration=cfg.calibration,
                      bn_momentum=cfg.bn_momentum, bn_eps=cfg.bn_eps, cache_size=cfg.cache_size)

        def layer(name: str, op: str, *, kernels: Iterable[int] = (1,), bn: bool = True, bias: bool = False, act: str = "none") -> ElasticLayer:
            c_in, c_out, k = dims[name]
            ks = tuple(kernels) if op == "dwconv" else (k,)
            return ElasticLayer(op, c_in, c_out, kernels=ks, bn=bn, bias=bias, act=act, **common)

        acts = dims["__acts__"]
        self.stem = layer("stem", "conv", act="hswish")
        self.first = _Block()
        self.first.dw = layer("first.dw", "dwconv", kernels=(3,), act="relu")
        self.first.project = layer("first.project", "conv")
        for s, (_, _, act, se) in enumerate(STAGES):
            stage = nn.Module()
            for b in range(max(space.depths)):
                p = f"s{s}.b{b}"
                block = _Block()
                block.expand = layer(f"{p}.expand", "conv", act=act)
                block.dw = layer(f"{p}.dw", "dwconv", kernels=space.kernels, act=act)
                if se:
                    block.se = _SqueezeExcite(layer(f"{p}.se.reduce", "conv", bn=False, bias=True, act="relu"),
                                              layer(f"{p}.se.expand", "conv", bn=False, bias=True, act="hsigmoid"))
                block.project = layer(f"{p}.project", "conv")
                stage.add_module(f"b{b}", block)
            self.add_module(f"s{s}", stage)
        self.final_expand = layer("final_expand", "conv", act="hswish")
        self.feature_mix = layer("feature_mix", "linear", bn=False, bias=True, act=acts["feature_mix"])
        self.classifier = layer("classifier", "linear", bn=False, bias=True, act=acts["classifier"])
        self.reset_parameters()

    # ----- structure -------------------------------------------------------------------------
    def _max_dims(self) -> dict[str, Any]:
        """(max in, max out, kernel) of every weight layer over the space: the largest
        architecture at every width multiplier (widths only grow with depth/expand/kernel)."""
        dims: dict[str, Any] = {}
        acts: dict[str, str] = {}
        largest = self.space.largest()
        for width in self.space.widths:
            for spec in self.space.layers(largest.replace(arch={"width": width})):
                if not spec.has_weights:
                    continue
                c_in, c_out, k = dims.get(spec.name, (0, 0, 0))
                dims[spec.name] = (max(c_in, spec.in_channels), max(c_out, spec.out_channels), max(k, spec.kernel))
                acts[spec.name] = spec.act
        dims["__acts__"] = acts
        return dims

    #: `SupernetConfig` fields a checkpoint must agree on (they change what the tensors mean); the
    #: initialisation seed, BN momentum and cache size do not.
    compatible_fields = ("kernel_transform", "calibration", "bn_eps")

    def reset_parameters(self) -> None:
        """Seeded initialisation (``config.seed``): the same config always gives the same weights."""
        g = torch.Generator().manual_seed(int(self.config.seed))
        for _, module in self.named_elastic():
            module.reset_parameters(g)
            module.clear_caches()

    def named_elastic(self) -> Iterator[tuple[str, ElasticLayer]]:
        """``(IR layer name, ElasticLayer)`` for every weight layer, in module order."""
        for name, module in self.named_modules():
            if isinstance(module, ElasticLayer):
                yield name, module

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        """Every weight layer's weight (what weight decay applies to)."""
        for _, layer in self.named_elastic():
            yield layer.weight

    def clear_caches(self) -> None:
        """Forget cached masks and deployed weights (after the weights were replaced)."""
        for _, layer in self.named_elastic():
            layer.clear_caches()

    def check_data(self, shape: tuple[int, ...], num_classes: int) -> None:
        """ValueError unless inputs are images ``[N, in_channels, H, W]`` and the labels fit."""
        space = self.space
        if len(shape) != 4 or shape[1] != space.in_channels:
            raise ValueError(f"training data: images {tuple(shape)} have {shape[1] if len(shape) == 4 else '?'} channels; "
                             f"the space {space.name} expects in_channels={space.in_channels}")
        if num_classes > space.num_classes:
            raise ValueError(f"training data: {num_classes} classes, the space {space.name} has num_classes={space.num_classes}")

    # ----- candidates -------------------------------------------------------------------------
    def plan(self, candidate: Candidate) -> dict[str, LayerSpec]:
        """The candidate's IR by layer name (validated, cached for the last 256 candidates)."""
        hit = self._plans.get(candidate)
        if hit is not None:
            self._plans.move_to_end(candidate)
            return hit
        if not isinstance(candidate, Candidate):
            raise ValueError(f"supernet: expected a Candidate, got {type(candidate).__name__}")
        layers = self.space.layers(candidate)
        plan = {spec.name: spec for spec in layers}
        self._plans[candidate] = plan
        while len(self._plans) > 256:
            self._plans.popitem(last=False)
        return plan

    def set_active(self, candidate: Candidate | None) -> None:
        """The candidate `forward` runs when none is passed (None clears it)."""
        if candidate is not None:
            self.plan(candidate)
        self._active = candidate

    @property
    def active(self) -> Candidate | None:
        return self._active

    # ----- forward ------------------------------------------------------------------------------
    def _block(self, block: _Block, prefix: str, x: torch.Tensor, plan: dict[str, LayerSpec]) -> torch.Tensor:
        y = block.expand(x, plan[f"{prefix}.expand"]) if f"{prefix}.expand" in plan else x
        y = block.dw(y, plan[f"{prefix}.dw"])
        if f"{prefix}.se.reduce" in plan:
            pooled = F.adaptive_avg_pool2d(y, 1)
            y = y * block.se.expand(block.se.reduce(pooled, plan[f"{prefix}.se.reduce"]), plan[f"{prefix}.se.expand"])
        y = block.project(y, plan[f"{prefix}.project"])
        return y + x if f"{prefix}.add" in plan else y

    def forward(self, x: torch.Tensor, candidate: Candidate | None = None) -> torch.Tensor:
        """Logits of ``candidate`` (default: the active one) for images ``x`` ``[N, C, H, W]``."""
        cand = candidate if candidate is not None else self._active
        if cand is None:
            raise ValueError("supernet: no candidate; call supernet(x, candidate) or set_active(candidate) first")
        plan = self.plan(cand)
        if x.dim() != 4 or x.shape[1] != self.space.in_channels:
            raise ValueError(f"supernet: input shape {tuple(x.shape)} not allowed; allowed: [N, {self.space.in_channels}, H, W]")
        x = fit_input(x, int(cand["resolution"]))  # type: ignore[arg-type]
        x = self.stem(x, plan["stem"])
        x = self._block(self.first, "first", x, plan)
        for s in range(len(STAGES)):
            stage = getattr(self, f"s{s}")
            for b in range(int(cand["depth"][s])):  # type: ignore[index]
                x = self._block(getattr(stage, f"b{b}"), f"s{s}.b{b}", x, plan)
        x = self.final_expand(x, plan["final_expand"])
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        x = self.feature_mix(x, plan["feature_mix"])
        return self.classifier(x, plan["classifier"])

    # ----- statistics -----------------------------------------------------------------------------
    def candidate_quantizers(self, candidate: Candidate) -> list[ActFakeQuant]:
        """The activation quantizers ``candidate`` runs (one per layer with ``a_bits < 32``)."""
        elastic = dict(self.named_elastic())
        return [elastic[s.name].act_quant[str(s.a_bits)] for s in self.plan(candidate).values() if s.has_weights and s.a_bits < FLOAT_BITS]

    @contextlib.contextmanager
    def masks_frozen(self):
        """Keep every layer's current masks while the weights change (fine-tuning with the
        compression fixed); masks of layers not yet run are computed on first use, then kept."""
        layers = [m for _, m in self.named_elastic()]
        for m in layers:
            m._masks.clear()
            m.freeze_masks = True
        try:
            yield self
        finally:
            for m in layers:
                m.freeze_masks = False
                m.clear_caches()

    @torch.no_grad()
    def extract(self, candidate: Candidate, batches: Iterable[torch.Tensor] | None = None) -> Any:
        """The candidate's standalone `MobileNetSubnet` (`tritune.spaces.mobilenet.supernet.extract`);
        with ``batches``, recalibrated for it first."""
        from .extract import extract

        return extract(self, candidate, batches)

    def trainable(self, candidate: Candidate) -> Any:
        """The candidate as a `TrainableSubnet` holding these weights
        (`tritune.spaces.mobilenet.supernet.trainable_subnet`)."""
        from .trainable import trainable_subnet

        return trainable_subnet(self, candidate)

    @torch.no_grad()
    def recalibrate(self, candidate: Candidate, batches: Iterable[torch.Tensor]) -> None:
        """Set the BN running statistics and activation-quantizer ranges for ``candidate``
        from ``batches`` (images only), touching nothing else.

        BN statistics are the exact average over the batches (cumulative averaging, as OFA
        re-estimates them for each subnet; activations quantized with batch ranges, as in
        training); then, with BN fixed, each activation quantizer the candidate uses is
        calibrated on the same batches (`tritune.kernels.quant.calibrate`, ``config.calibration``)."""
        batches = list(batches)
        if not batches:
            raise ValueError("recalibrate: batches is empty; pass at least one batch of images")
        was_training = self.training
        try:
            with cumulative_batchnorm_stats(self):
                self.train()
                for x in batches:
                    self(x, candidate)
            self.eval()
            quantizers = self.candidate_quantizers(candidate)
            if quantizers and self.config.calibration == "minmax":
                self._minmax_ranges(candidate, batches)
            elif quantizers:
                calibrate(_Calibration(self, candidate, quantizers), batches, method=self.config.calibration)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def _minmax_ranges(self, candidate: Candidate, batches: list[torch.Tensor]) -> None:
        """What `calibrate` with ``minmax`` sets -- each quantizer's range is the extremes of its
        float input over the batches -- recording only the extremes (no value sample)."""
        layers = [layer for _, layer in self.named_elastic()]
        for layer in layers:
            layer.observed = {}
        try:
            for x in batches:
                self(x, candidate)
            for layer in layers:
                for bits, (lo, hi) in layer.observed.items():
                    layer.act_quant[str(bits)].set_range(lo, hi)
        finally:
            for layer in layers:
                layer.observed = None


class _Calibration(nn.Module):
    """What `calibrate` sees: only the candidate's quantizers as modules (the rest of the
    supernet's quantizers see no data and must keep their ranges), the candidate's forward."""

    def __init__(self, supernet: MobileNetSupernet, candidate: Candidate, quantizers: list[ActFakeQuant]) -> None:
        super().__init__()
        self.quantizers = nn.ModuleList(quantizers)
        self._run = lambda x: supernet(x, candidate)  # not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)
