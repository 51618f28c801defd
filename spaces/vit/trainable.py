"""`TrainableViT`: one ``vit`` candidate as a network that trains on its own, compression kept.

The standalone `ViT` with its weight layers as `tritune.spaces.trainable.QATConv2d` (the patch
embedding) and `QATLinear` (``qkv``, ``proj``, ``fc1``, ``fc2``, ``head``), and 8-bit fake
quantizers on the attention operands of blocks whose ``attn_bits`` is 8: the arithmetic of
`tritune.spaces.vit.supernet.ViTSupernet` for the candidate, in training and eval mode alike
(there is no batch norm to fold). `ViTSupernet.trainable` fills it with the supernet's slices
(masked; the unmasked slice kept as ``dense_weight``) and activation ranges; `TrainableViT.deploy`
gives back the form `ViTSupernet.extract` returns, so the exporter takes a fine-tuned network
unchanged. It is the vit family's `tritune.spaces.trainable.TrainableNetwork`.
"""
from __future__ import annotations

import copy
from typing import Iterable

import numpy as np
import torch
from torch import nn

from ...kernels.quant import ActFakeQuant, LayerQuantization, max_scales
from ..candidate import Candidate
from ..compression import FLOAT_BITS
from ..trainable import QATConv2d, QATLinear, TrainableOps
from .network import LinearAct, ViT
from .space import ViTSpace

__all__ = ["ATTENTION_OPERANDS", "TrainableViT"]

#: The attention operands an 8-bit block quantizes (their names in the supernet: ``b<i>.<operand>``).
ATTENTION_OPERANDS = ("q", "k", "attn", "v")


class TrainableViT(TrainableOps, ViT):
    """The candidate's `ViT` with trainable float weights and fake quantizers (module docstring).

    Built with default weights from the space and the candidate -- how a saved fine-tuning state
    is read back -- or filled from a supernet by `ViTSupernet.trainable`. ``calibration``: how
    activation ranges are set (`tritune.kernels.quant`)."""

    def __init__(self, space: ViTSpace, candidate: Candidate, *, calibration: str = "minmax") -> None:
        if not isinstance(space, ViTSpace):
            raise ValueError(f"TrainableViT: space {getattr(space, 'name', space)!r} is not a vit space (ViTSpace)")
        cand = space.validate(candidate)
        super().__init__(space, cand)
        self.space, self.candidate, self.calibration = space, cand, calibration
        by_name = {spec.name: spec for spec in self.layers}
        self.patch_embed = QATConv2d(by_name["patch_embed"], bias=True, calibration=calibration, padding=0)
        for spec in self.layers:
            if spec.op == "linear":
                self.get_submodule(spec.name).linear = QATLinear(spec, calibration=calibration)
        for i in range(self.depth):
            bits = int(cand["attn_bits"][i])  # type: ignore[index]
            if bits < FLOAT_BITS:
                getattr(self, f"b{i}").attn_quant = nn.ModuleDict(
                    {part: ActFakeQuant(bits, calibration=calibration) for part in ATTENTION_OPERANDS})
        for op in self.ops().values():
            if op.weight_quant is not None:
                op.weight_quant.init_step(op.weight)  # the lazily shaped scale buffer gets its shape

    # ----- structure ------------------------------------------------------------------------------
    def ops(self) -> dict[str, QATConv2d | QATLinear]:
        """IR layer name -> its `QATConv2d` / `QATLinear`."""
        return {spec.name: self.get_submodule(self.module_name(spec.name)) for spec in self.weight_layers()}

    def module_name(self, layer: str) -> str:
        """The qualified name of IR layer ``layer``'s conv / linear module."""
        spec = next((s for s in self.weight_layers() if s.name == layer), None)
        if spec is None:
            raise ValueError(f"TrainableViT: no weight layer {layer!r}")
        return layer if spec.op == "conv" else f"{layer}.linear"

    def options(self) -> dict[str, str]:
        """What rebuilds this network with the space and candidate (`ViTSpace.trainable_network`)."""
        return {"calibration": self.calibration}

    # ----- calibration -----------------------------------------------------------------
    @torch.no_grad()
    def recalibrate(self, batches: Iterable[torch.Tensor]) -> None:
        """Set the activation ranges from ``batches`` (images); there are no BN statistics."""
        batches = list(batches)
        if not batches:
            raise ValueError("recalibrate: batches is empty; pass at least one batch of images")
        self.calibrate_ranges(batches)  # `calibrate` puts every module's training flag back

    # ----- deploy form ----------------------------------------------------------------------------
    @torch.no_grad()
    def deploy(self, batches: Iterable[torch.Tensor] | None = None) -> ViT:
        """The form `ViTSupernet.extract` returns: an eval-mode `ViT` whose weights are the
        masked weights rounded to their bits, its masks in ``masks``, per int8 layer the weight
        scales and input range in ``kept_quantization``, and the calibrated activation fake
        quantizers on the inputs they quantize. With ``batches`` the activation ranges are
        re-estimated first (on a copy). ValueError while a pruned weight is not zero."""
        self.check_masks_final()
        src = self
        if batches is not None:
            src = self.copy()
            src.recalibrate(batches)
        net = ViT(self.space, self.candidate).to(next(self.parameters()).device)
        ops = src.ops()
        for spec in src.weight_layers():
            op = ops[spec.name]
            holder = net.get_submodule(spec.name)
            target = holder.linear if isinstance(holder, LinearAct) else holder
            target.weight.copy_(op.quantized_weight())
            target.bias.copy_(op.bias)
            if op.weight_mask is not None:
                net.masks[spec.name] = op.weight_mask.clone()
            if spec.int_bits < FLOAT_BITS:
                scales = max_scales(op.weight.detach(), spec.w_bits, 0).cpu().numpy().astype(np.float32)
                quant = op.input_quant
                net.kept_quantization[spec.name] = (LayerQuantization(scales, float(quant.scale), int(quant.zero_point))
                                                    if quant is not None and bool(quant.calibrated) else LayerQuantization(scales))
        for name in ("cls_token", "pos_embed"):
            getattr(net, name).copy_(getattr(src, name))
        for name, module in src.named_modules():
            if isinstance(module, nn.LayerNorm):
                target = net.get_submodule(name)
                target.weight.copy_(module.weight)
                target.bias.copy_(module.bias)
        quantizers = {name: op.input_quant for name, op in ops.items() if op.input_quant is not None}
        for i in range(src.depth):
            quantizers.update({f"b{i}.{part}": q for part, q in (getattr(src, f"b{i}").attn_quant or {}).items()})
        net.quantize_activations({name: copy.deepcopy(q) for name, q in quantizers.items() if bool(q.calibrated)})
        return net.eval().requires_grad_(False)

