"""Weight-sharing supernet of the ``vit`` space (AutoFormer-style), with token pruning and compression.

Every candidate runs on slices of one set of weights, as AutoFormer (Chen et al., ICCV 2021)
shares them: the first ``embed`` channels of every embedding-width tensor, the first ``heads``
heads of ``qkv`` (in its q, k and v parts) and ``proj``, the first hidden units of ``fc1`` /
``fc2``, the first blocks. The patch embedding and position embedding exist once per patch size
(the token grid differs); the class token and the layer norms are sliced like the rest.

Head pruning (``channel`` on ``qkv``) and neuron pruning (``channel`` on ``fc1``) keep the
leading heads and units, as the candidate's IR counts them; the other patterns are magnitude
masks of the active slice (`tritune.kernels.patterns.make_mask`), recomputed while the weights
change and kept under `masks_frozen`. Weights at fewer than 32 bits are fake-quantized per output
channel; inputs at fewer than 32 bits and 8-bit attention operands (q, k, the attention
probabilities, v) per tensor: on the batch's own range while training, on the range
`recalibrate` measured for the candidate in eval mode. Token pruning is `TokenSelect`, as in the
standalone network, so a candidate's supernet forward and its `extract`-ed network agree.

`ViTSupernet` has the members of `tritune.spaces.weight_sharing.Supernet`; `ViTSpace.supernet`
builds one.
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...kernels.patterns import make_mask
from ...kernels.quant import ActFakeQuant, LayerQuantization, max_scales
from ..candidate import Candidate
from ..compression import FLOAT_BITS, CompressionLimit, parse_pattern
from ..layers import LayerSpec
from ..weight_sharing import DIMENSIONS, check_dimensions
from ..images import fit_input
from .network import LinearAct, TokenSelect, ViT, trunc_normal
from .space import ViTSpace, kept_count

#: The training-schedule dimension of each vit gene (by the gene name's last part).
GENE_DIMENSIONS = {"patch": "resolution", "keep": "resolution", "embed": "width", "heads": "width", "depth": "depth",
                   "mlp_ratio": "expand", "attn_bits": "compression"}


def dimension_of(gene: str) -> str:
    """The schedule dimension of a vit gene name (``b3.heads`` -> ``width``)."""
    return "compression" if gene.startswith("comp:") else GENE_DIMENSIONS[gene.rsplit(".", 1)[-1]]


@dataclass(frozen=True)
class ViTSupernetConfig:
    """``seed``: weight initialisation."""

    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ViTSampler:
    """The sandwich rule over the vit space: the largest network at the step's patch size (the
    teacher: with one teacher patch size, the other size's embedding is trained by small
    students only and the supernet ranked the two sizes backwards), the smallest
    architecture (fewest, narrowest blocks, fewest tokens) with a drawn plan, random candidates;
    dimensions outside ``elastic`` stay at the largest network's values and compression choices
    within ``limit``."""

    def __init__(self, space: ViTSpace) -> None:
        self.space = space
        self._largest = space.to_genome(space.largest())

    def largest(self) -> Candidate:
        return self.space.largest()

    def teacher(self, rng: np.random.Generator, elastic: frozenset[str]) -> Candidate:
        """The step's teacher: the largest network at a patch size drawn for the step (while the
        token grid is elastic), so each patch size's embedding is trained by a teacher."""
        if "resolution" not in elastic or len(self.space.patch_sizes) == 1:
            return self.largest()
        genome = dict(self._largest)
        genome["patch"] = self.space.patch_sizes[rng.integers(len(self.space.patch_sizes))]
        return self.space._make(genome)

    def _draw(self, rng: np.random.Generator, elastic: frozenset[str], limit: CompressionLimit | None, smallest: bool,
              dense: bool) -> Candidate:
        space = self.space
        genome = space.to_genome(space.sample(rng))
        default = space.menu.default()
        for gene in space.genes():
            dim = dimension_of(gene.name)
            if dim not in elastic or (dense and dim == "compression"):
                genome[gene.name] = self._largest[gene.name] if dim not in elastic else gene.default
            elif dim == "compression":
                if limit is not None and gene.name.startswith("comp:") and not limit.allows(genome[gene.name]):
                    allowed = [c for c in gene.choices if c == default or limit.allows(c)]
                    genome[gene.name] = allowed[rng.integers(len(allowed))]
            elif smallest:
                genome[gene.name] = max(gene.choices) if gene.name == "patch" else min(gene.choices)
        return space._make(genome)

    def sandwich(self, rng: np.random.Generator, n_random: int, elastic: Iterable[str] = DIMENSIONS,
                 limit: CompressionLimit | None = None, lower_end: str = "sampled", n_dense: int = 0) -> list[Candidate]:
        dims = check_dimensions(elastic)
        out = [self.teacher(rng, dims)]
        if lower_end != "none":
            low = self._draw(rng, dims, limit, smallest=True, dense=False)
            if lower_end == "harshest":
                genome = self.space.to_genome(low)
                for gene in self.space.genes():
                    if gene.name.startswith("comp:") and "compression" in dims:
                        choices = [c for c in gene.choices if limit is None or limit.allows(c)] or [gene.default]
                        genome[gene.name] = min(choices, key=lambda c: (c.w_bits, c.a_bits, -c.sparsity))
                    elif gene.name.endswith(".attn_bits") and "compression" in dims:
                        genome[gene.name] = min(gene.choices)
                low = self.space._make(genome)
            out.append(low)
        out += [self._draw(rng, dims, limit, smallest=False, dense=False) for _ in range(int(n_random))]
        out += [self._draw(rng, dims, limit, smallest=False, dense=True) for _ in range(int(n_dense))]
        return out


def _quantized_inputs(plan: Mapping[str, LayerSpec], candidate: Candidate) -> list[str]:
    """The inputs the candidate fake-quantizes: every weight layer's below 32 bits and, per block
    with 8-bit attention, its operands ``q``, ``k``, ``attn``, ``v`` (names as ``act_quant``'s, dotted)."""
    names = [name for name, spec in plan.items() if spec.has_weights and spec.a_bits < FLOAT_BITS]
    for i, bits in enumerate(candidate["attn_bits"][: int(candidate["depth"])]):  # type: ignore[index, arg-type]
        if int(bits) < FLOAT_BITS:
            names += [f"b{i}.{part}" for part in ("q", "k", "attn", "v")]
    return names


def _fake_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel fake quantization (straight-through gradient)."""
    if bits >= FLOAT_BITS:
        return w
    scales = max_scales(w, bits, 0).to(w.device)
    zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scales, zero, 0, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


class ViTSupernet(nn.Module):
    """Shared weights for every candidate of ``space`` (a `ViTSpace`); ``supernet(x, candidate)``."""

    compatible_fields: tuple[str, ...] = ()

    def __init__(self, space: ViTSpace, config: ViTSupernetConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if not isinstance(space, ViTSpace):
            raise ValueError(f"ViTSupernet: space {getattr(space, 'name', space)!r} is not a vit space (ViTSpace)")
        bad = [b for b in (*space.menu.w_bits, *space.menu.a_bits) if b not in (2, 3, 4, 5, 6, 7, 8, FLOAT_BITS)]
        if bad:
            raise ValueError(f"ViTSupernet: bit-widths {bad} cannot be fake-quantized; allowed: 2-8, 32")
        self.space = space
        self.config = config if isinstance(config, ViTSupernetConfig) else ViTSupernetConfig(**dict(config or {}))
        self.sampler = ViTSampler(space)
        e, hd = max(space.embed_dims), space.head_dim
        w, hidden = max(space.heads) * hd, e * max(space.mlp_ratios)
        self.max_width = w
        self.patch_embed = nn.ModuleDict({str(p): nn.Conv2d(space.in_channels, e, p, p) for p in space.patch_sizes})
        self.pos_embed = nn.ParameterDict({str(p): nn.Parameter(torch.zeros(1, (space.image_size // p) ** 2 + 1, e))
                                           for p in space.patch_sizes})
        self.cls_token = nn.Parameter(torch.zeros(1, 1, e))
        self.blocks = nn.ModuleList()
        for _ in range(space.max_depth):
            block = nn.Module()
            block.norm1, block.norm2 = nn.LayerNorm(e), nn.LayerNorm(e)
            block.qkv, block.proj = nn.Linear(e, 3 * w), nn.Linear(w, e)
            block.fc1, block.fc2 = nn.Linear(e, hidden), nn.Linear(hidden, e)
            self.blocks.append(block)
        self.norm = nn.LayerNorm(e)
        self.head = nn.Linear(e, space.num_classes)
        names = [n for n, _ in space.slots] + [f"b{i}.{part}" for i in range(space.max_depth) for part in ("q", "k", "attn", "v")]
        self.act_quant = nn.ModuleDict({n.replace(".", "_"): ActFakeQuant(8) for n in names})
        self._masks: dict[str, tuple[Any, torch.Tensor]] = {}
        self._frozen = False
        self._observed: dict[str, tuple[float, float]] | None = None
        self.reset_parameters()

    # ----- the Supernet members -----------------------------------------------------------------
    def reset_parameters(self) -> None:
        """Seeded truncated-normal weights (std 0.02), zero biases, unit layer norms."""
        g = torch.Generator().manual_seed(int(self.config.seed))
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    module.weight.copy_(trunc_normal(module.weight.shape, g))
                    module.bias.zero_()
                elif isinstance(module, nn.LayerNorm):
                    module.weight.fill_(1.0)
                    module.bias.zero_()
            for p in [self.cls_token, *self.pos_embed.values()]:
                p.copy_(trunc_normal(p.shape, g))
        self.clear_caches()

    def plan(self, candidate: Candidate) -> dict[str, LayerSpec]:
        if not isinstance(candidate, Candidate):
            raise ValueError(f"supernet: expected a Candidate, got {type(candidate).__name__}")
        return {layer.name: layer for layer in self.space.layers(candidate)}

    def check_data(self, shape: tuple[int, ...], num_classes: int) -> None:
        space = self.space
        if len(shape) != 4 or shape[1] != space.in_channels:
            raise ValueError(f"training data: images {tuple(shape)} do not fit; the space {space.name} expects "
                             f"[N, {space.in_channels}, H, W] (resized to {space.image_size} px)")
        if num_classes > space.num_classes:
            raise ValueError(f"training data: {num_classes} classes, the space {space.name} has num_classes={space.num_classes}")

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                yield module.weight

    @contextlib.contextmanager
    def masks_frozen(self):
        """Keep the masks computed so far (and those computed first inside) while weights change."""
        self._masks.clear()
        self._frozen = True
        try:
            yield self
        finally:
            self._frozen = False
            self._masks.clear()

    def clear_caches(self) -> None:
        self._masks.clear()

    @torch.no_grad()
    def recalibrate(self, candidate: Candidate, batches: Iterable[torch.Tensor]) -> None:
        """Set the activation-quantizer ranges the candidate uses to the min / max of its float
        inputs over ``batches`` (there is no batch norm to re-estimate)."""
        batches = list(batches)
        if not batches:
            raise ValueError("recalibrate: batches is empty; pass at least one batch of images")
        was = self.training
        self.eval()
        self._observed = {}
        try:
            for x in batches:
                self(x, candidate)
            for name, (lo, hi) in self._observed.items():
                self.act_quant[name].set_range(lo, hi)
        finally:
            self._observed = None
            self.train(was)

    # ----- forward --------------------------------------------------------------------------------
    def _act(self, name: str, x: torch.Tensor, bits: int) -> torch.Tensor:
        if bits >= FLOAT_BITS:
            return x
        key = name.replace(".", "_")
        if self._observed is not None:
            lo, hi = self._observed.get(key, (math.inf, -math.inf))
            self._observed[key] = (min(lo, float(x.detach().min())), max(hi, float(x.detach().max())))
            return x
        quant = self.act_quant[key]
        if self.training:
            quant.set_range(float(x.detach().min()), float(x.detach().max()))
        return quant(x)

    def _weight(self, spec: LayerSpec, w: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """``w`` (a slice of the parameter ``source``) masked and rounded to the layer's weight bits.
        A mask is recomputed when ``source`` changed since (unless masks are frozen)."""
        if spec.sparsity > 0 and parse_pattern(spec.pattern).family not in ("dense", "channel"):
            tag = (tuple(w.shape), spec.pattern, spec.sparsity)
            hit = self._masks.get(spec.name)
            if hit is None or hit[0][:3] != tag or (not self._frozen and hit[0][3] != source._version):
                hit = ((*tag, source._version), make_mask(w.detach(), spec.pattern, spec.sparsity))
                self._masks[spec.name] = hit
            w = w * hit[1]
        return _fake_weight(w, spec.w_bits)

    def _linear(self, spec: LayerSpec, x: torch.Tensor, layer: nn.Linear, rows: Any, cols: Any) -> torch.Tensor:
        """The ``rows`` x ``cols`` slice of ``layer`` applied to ``x`` (input and weight compressed as ``spec`` says)."""
        return F.linear(self._act(spec.name, x, spec.a_bits), self._weight(spec, layer.weight[rows][:, cols], layer.weight), layer.bias[rows])

    def _qkv_rows(self, heads: int, device: torch.device) -> torch.Tensor:
        width = heads * self.space.head_dim
        return torch.cat([torch.arange(width, device=device) + part * self.max_width for part in range(3)])

    def forward(self, x: torch.Tensor, candidate: Candidate) -> torch.Tensor:
        space = self.space
        plan = self.plan(candidate)
        if x.dim() != 4 or x.shape[1] != space.in_channels:
            raise ValueError(f"supernet: input shape {tuple(x.shape)} not allowed; allowed: [N, {space.in_channels}, H, W]")
        x = fit_input(x, space.image_size)
        patch, e = int(candidate["patch"]), int(candidate["embed"])  # type: ignore[arg-type]
        pe = self.patch_embed[str(patch)]
        spec = plan["patch_embed"]
        x = F.conv2d(self._act(spec.name, x, spec.a_bits), self._weight(spec, pe.weight[:e], pe.weight), pe.bias[:e], stride=patch)
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token[..., :e].expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed[str(patch)][..., :e]
        attention = None
        hd = space.head_dim
        for i, width in enumerate(space.widths(candidate)):
            p, blk = f"b{i}", self.blocks[i]
            if f"{p}.select" in plan:
                others = x.shape[1] - 1
                x = TokenSelect(kept_count(others, float(candidate["keep"][i])), others)(x, attention)  # type: ignore[index]
            heads, hidden = width["heads"], width["hidden"]
            b, t, _ = x.shape
            h = F.layer_norm(x, (e,), blk.norm1.weight[:e], blk.norm1.bias[:e], blk.norm1.eps)
            rows = self._qkv_rows(heads, x.device)
            qkv = self._linear(plan[f"{p}.qkv"], h, blk.qkv, rows, slice(0, e))
            q, k, v = qkv.reshape(b, t, 3, heads, hd).permute(2, 0, 3, 1, 4)
            bits = int(candidate["attn_bits"][i])  # type: ignore[index]
            q = self._act(f"{p}.q", q * hd ** -0.5, bits)
            k, v = self._act(f"{p}.k", k, bits), self._act(f"{p}.v", v, bits)
            att = self._act(f"{p}.attn", torch.softmax(q @ k.transpose(-2, -1), dim=-1), bits)
            y = (att @ v).transpose(1, 2).reshape(b, t, heads * hd)
            x = x + self._linear(plan[f"{p}.proj"], y, blk.proj, slice(0, e), slice(0, heads * hd))
            h = F.layer_norm(x, (e,), blk.norm2.weight[:e], blk.norm2.bias[:e], blk.norm2.eps)
            h = F.gelu(self._linear(plan[f"{p}.fc1"], h, blk.fc1, slice(0, hidden), slice(0, e)))
            x = x + self._linear(plan[f"{p}.fc2"], h, blk.fc2, slice(0, e), slice(0, hidden))
            attention = att[:, :, 0, 1:].mean(1)
        h = F.layer_norm(x[:, 0], (e,), self.norm.weight[:e], self.norm.bias[:e], self.norm.eps)
        return self._linear(plan["head"], h, self.head, slice(None), slice(0, e))

    # ----- one candidate as a standalone network -------------------------------------------------
    def _weight_slices(self, candidate: Candidate) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """IR layer name -> (weight, bias): the candidate's slices of the shared weights."""
        space = self.space
        patch, e = int(candidate["patch"]), int(candidate["embed"])  # type: ignore[arg-type]
        pe = self.patch_embed[str(patch)]
        out = {"patch_embed": (pe.weight[:e], pe.bias[:e])}
        for i, width in enumerate(space.widths(candidate)):
            blk = self.blocks[i]
            heads, hidden = width["heads"], width["hidden"]
            rows = self._qkv_rows(heads, blk.qkv.weight.device)
            out[f"b{i}.qkv"] = (blk.qkv.weight[rows][:, :e], blk.qkv.bias[rows])
            out[f"b{i}.proj"] = (blk.proj.weight[:e, :heads * space.head_dim], blk.proj.bias[:e])
            out[f"b{i}.fc1"] = (blk.fc1.weight[:hidden, :e], blk.fc1.bias[:hidden])
            out[f"b{i}.fc2"] = (blk.fc2.weight[:e, :hidden], blk.fc2.bias[:e])
        out["head"] = (self.head.weight[:, :e], self.head.bias)
        return out

    def _copy_shared(self, net: ViT, candidate: Candidate) -> None:
        """Copy the candidate's class token, position embedding and layer norms into ``net``."""
        patch, e = int(candidate["patch"]), int(candidate["embed"])  # type: ignore[arg-type]
        net.cls_token.copy_(self.cls_token[..., :e])
        net.pos_embed.copy_(self.pos_embed[str(patch)][..., :e])
        norms = [(net.norm, self.norm)] + [(getattr(getattr(net, f"b{i}"), n), getattr(self.blocks[i], n))
                                           for i in range(net.depth) for n in ("norm1", "norm2")]
        for out, src in norms:
            out.weight.copy_(src.weight[:e])
            out.bias.copy_(src.bias[:e])

    @torch.no_grad()
    def extract(self, candidate: Candidate, batches: Iterable[torch.Tensor] | None = None) -> ViT:
        """The candidate's standalone network (`tritune.spaces.vit.network.ViT`) with its slices
        of the shared weights, masks applied and weights rounded to their bits (the float values
        of their codes), and per int8 layer the weight scales kept for a runtime
        (``kept_quantization``). With ``batches`` the candidate's quantizer ranges are recalibrated
        on them first, each int8 layer also keeps its input range, and the network fake-quantizes
        the activations the supernet does (its logits are the supernet's eval logits); without,
        activations stay float."""
        cand = self.space.validate(candidate)
        if batches is not None:
            self.recalibrate(cand, batches)
        plan = self.plan(cand)
        net = ViT(self.space, cand).to(self.cls_token.device)
        for name, (w, bias) in self._weight_slices(cand).items():
            spec = plan[name]
            if spec.sparsity > 0 and parse_pattern(spec.pattern).family not in ("dense", "channel"):
                mask = make_mask(w, spec.pattern, spec.sparsity)
                net.masks[name] = mask
                w = w * mask
            if spec.int_bits < FLOAT_BITS:
                quant = self.act_quant[name.replace(".", "_")]
                scales = max_scales(w, spec.w_bits, 0).cpu().numpy().astype(np.float32)
                net.kept_quantization[name] = (LayerQuantization(scales, float(quant.scale), int(quant.zero_point)) if batches is not None
                                               else LayerQuantization(scales))  # a range of this candidate's own only
            holder = net.get_submodule(name)
            target = holder.linear if isinstance(holder, LinearAct) else holder
            target.weight.copy_(_fake_weight(w, spec.w_bits))
            target.bias.copy_(bias)
        self._copy_shared(net, cand)
        if batches is not None:
            net.quantize_activations({name: copy.deepcopy(self.act_quant[name.replace(".", "_")])
                                      for name in _quantized_inputs(plan, cand)})
        return net.eval().requires_grad_(False)

    @torch.no_grad()
    def trainable(self, candidate: Candidate) -> Any:
        """The candidate as a `tritune.spaces.vit.trainable.TrainableViT` holding its slices of
        these weights (masked, the unmasked slice kept as ``dense_weight``) and the activation
        ranges of its quantizers (as last recalibrated)."""
        from .trainable import ATTENTION_OPERANDS, TrainableViT

        cand = self.space.validate(candidate)
        net = TrainableViT(self.space, cand).to(self.cls_token.device)
        ops = net.ops()
        plan = self.plan(cand)
        for name, (w, bias) in self._weight_slices(cand).items():
            op, spec = ops[name], plan[name]
            if op.weight_mask is not None:
                mask = make_mask(w, spec.pattern, spec.sparsity)
                op.weight.copy_(w * mask)
                op.weight_mask.copy_(mask)
                op.dense_weight = w.detach().clone()
            else:
                op.weight.copy_(w)
            op.bias.copy_(bias)
            if op.weight_quant is not None:
                op.weight_quant.init_step(op.weight)
        self._copy_shared(net, cand)
        targets = {name: op.input_quant for name, op in ops.items()}
        for i in range(net.depth):
            quant = getattr(net, f"b{i}").attn_quant
            targets.update({f"b{i}.{part}": quant[part] if quant is not None else None for part in ATTENTION_OPERANDS})
        for name, target in targets.items():
            source = self.act_quant[name.replace(".", "_")]
            if target is not None and bool(source.calibrated) and target.bits == source.bits:
                target.load_state_dict(source.state_dict())
                target._sync_flags()
        return net.train(self.training)
