"""A standalone PyTorch network for one candidate of the ``vit`` space (timing, export, training).

`build_vit(space, candidate, seed)` returns an eval-mode ``torch.nn.Module`` whose layers are the
candidate's IR (`ViTSpace.layers`): every IR layer is a module at the path of its name
(``b2.qkv`` is ``net.b2.qkv``; an ONNX node keeps that path, which is how a target finds the
layers to quantize). ``channel`` pruning is physical (fewer heads, fewer hidden units, as the IR
says); every other pattern is a magnitude mask with the pattern's structure
(`tritune.kernels.patterns.make_mask`) on seeded random weights.

Token pruning (`TokenSelect`, EViT-style): the class token's attention to the other tokens in the
block before, averaged over heads, ranks them (the attention probabilities as the block's context
matmul takes them: rounded to 8 bits where the attention is 8-bit, as an int8 runtime ranks them); the top ``keep`` stay in order of rank and the rest
are fused into one package token, their attention-weighted mean. Token counts are fixed per
candidate, so the exported graph has static shapes.

`ViT.train()` makes the same network trainable (the token-pruning benchmark fine-tunes it). Images
of another size than the space's ``image_size`` are resized first (mnist5k-hard's 32 px to 28).
"""
from __future__ import annotations

import copy
import zlib
from typing import Any

import torch
from torch import nn

from ...kernels.patterns import make_mask
from ..candidate import Candidate
from ..compression import parse_pattern
from ..images import fit_input
from .space import ViTSpace, kept_count


def trunc_normal(shape: Any, generator: torch.Generator) -> torch.Tensor:
    """Seeded normal values clipped at two standard deviations, std 0.02 (ViT's initialisation)."""
    return torch.randn(shape, generator=generator).clamp_(-2, 2) * 0.02


class LinearAct(nn.Module):
    """One IR ``linear`` layer (+ GELU); ``input_quant``: the deploy form's fake quantizer of its
    input (None: float)."""

    def __init__(self, c_in: int, c_out: int, act: str = "none") -> None:
        super().__init__()
        self.linear = nn.Linear(c_in, c_out)
        self.act = nn.GELU() if act == "gelu" else None
        self.input_quant: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x if self.input_quant is None else self.input_quant(x))
        return self.act(x) if self.act is not None else x


class MatMul(nn.Module):
    """One IR ``matmul`` layer: a product of two activations (an attention matmul)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


class TokenSelect(nn.Module):
    """Keep the class token and the ``kept`` most attended other tokens; fuse the rest into one."""

    def __init__(self, kept: int, others: int) -> None:
        super().__init__()
        self.kept, self.others = int(kept), int(others)

    def forward(self, x: torch.Tensor, cls_attention: torch.Tensor) -> torch.Tensor:
        cls, rest = x[:, :1], x[:, 1:]
        order = torch.argsort(cls_attention, dim=1, descending=True)
        index = order[:, : self.kept].unsqueeze(-1).expand(-1, -1, x.shape[-1])
        kept = torch.gather(rest, 1, index)
        if self.kept == self.others:
            return torch.cat([cls, kept], dim=1)
        dropped = order[:, self.kept:]
        # fixed weights: 8-bit attention rounds many of them to zero, and a gradient through the
        # normalising sum would then be the fused tokens divided by the clamp
        weights = torch.gather(cls_attention, 1, dropped).unsqueeze(-1).detach()
        tokens = torch.gather(rest, 1, dropped.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        package = (tokens * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp_min(1e-6)
        return torch.cat([cls, kept, package], dim=1)


class Block(nn.Module):
    """Pre-norm transformer block: ``norm1``, ``qkv``, ``scores``, ``softmax``, ``context``,
    ``proj`` (+ residual), ``norm2``, ``fc1`` (GELU), ``fc2`` (+ residual); ``select`` first when
    the block prunes tokens."""

    def __init__(self, embed: int, heads: int, head_dim: int, hidden: int, select: TokenSelect | None) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.select = select
        width = heads * head_dim
        self.norm1 = nn.LayerNorm(embed)
        self.qkv = LinearAct(embed, 3 * width)
        self.scores = MatMul()
        self.softmax = nn.Softmax(dim=-1)
        self.context = MatMul()
        self.proj = LinearAct(width, embed)
        self.norm2 = nn.LayerNorm(embed)
        self.fc1 = LinearAct(embed, hidden, "gelu")
        self.fc2 = LinearAct(hidden, embed)
        #: Fake quantizers of the attention operands ``q``, ``k``, ``attn``, ``v`` (8-bit attention
        #: in the trainable and deploy forms); None: float.
        self.attn_quant: nn.ModuleDict | None = None

    def forward(self, x: torch.Tensor, cls_attention: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.select is not None:
            x = self.select(x, cls_attention)
        b, t, _ = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (self.head_dim ** -0.5), qkv[1], qkv[2]
        quant = self.attn_quant
        if quant is not None:
            q, k, v = quant["q"](q), quant["k"](k), quant["v"](v)
        attention = self.softmax(self.scores(q, k.transpose(-2, -1)))
        probs = attention if quant is None else quant["attn"](attention)
        y = self.context(probs, v).transpose(1, 2).reshape(b, t, self.heads * self.head_dim)
        x = x + self.proj(y)
        x = x + self.fc2(self.fc1(self.norm2(x)))
        return x, probs[:, :, 0, 1:].mean(1)


class ViT(nn.Module):
    """``patch_embed``, ``cls_token``, ``pos_embed``, blocks ``b0``.., ``norm``, ``head``."""

    def __init__(self, space: ViTSpace, candidate: Candidate) -> None:
        super().__init__()
        layers = space.layers(candidate)
        by_name = {layer.name: layer for layer in layers}
        embed, patch = int(candidate["embed"]), int(candidate["patch"])  # type: ignore[arg-type]
        tokens = (space.image_size // patch) ** 2 + 1
        self.image_size = space.image_size
        self.patch_embed = nn.Conv2d(space.in_channels, embed, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, embed))
        blocks = []
        t = tokens
        for i, (t_in, width) in enumerate(zip(space.tokens(candidate), space.widths(candidate))):
            select = None
            if f"b{i}.select" in by_name:
                select = TokenSelect(kept_count(t - 1, float(candidate["keep"][i])), t - 1)  # type: ignore[index]
            blocks.append(Block(embed, width["heads"], space.head_dim, width["hidden"], select))
            t = t_in
        for i, block in enumerate(blocks):
            self.add_module(f"b{i}", block)
        self.depth = len(blocks)
        self.norm = nn.LayerNorm(embed)
        self.head = LinearAct(embed, space.num_classes)
        #: The deploy form's fake quantizer of the patch embedding's input (None: float).
        self.patch_quant: nn.Module | None = None
        self.layers = layers
        #: Set by `ViTSupernet.extract`: the pattern masks baked into the weights, and per int8
        #: layer the search's weight scales and input range (`tritune.kernels.quant.LayerQuantization`).
        self.masks: dict[str, torch.Tensor] = {}
        self.kept_quantization: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = fit_input(x, self.image_size)
        x = self.patch_embed(x if self.patch_quant is None else self.patch_quant(x)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        attention = None
        for i in range(self.depth):
            x, attention = getattr(self, f"b{i}")(x, attention)
        return self.head(self.norm(x[:, 0]))

    # ----- a deployable network (`tritune.spaces.weight_sharing.DeployableNetwork`) -------------
    @property
    def input_size(self) -> int:
        return int(self.image_size)

    def deployed_weights(self) -> dict[str, torch.Tensor]:
        out = {}
        for L in self.layers:
            if L.has_weights:
                module = self.get_submodule(L.name)
                out[L.name] = (module.linear if isinstance(module, LinearAct) else module).weight
        return out

    def pattern_masks(self) -> dict[str, torch.Tensor]:
        return dict(self.masks)

    def float_network(self) -> "ViT":
        """The network with its deployed float weights and no activation fake quantizers (itself
        when it has none)."""
        if not self.activation_quantizers():
            return self
        net = copy.deepcopy(self)
        net.quantize_activations({})
        return net

    def activation_quantizers(self) -> dict[str, nn.Module]:
        """IR layer name (``patch_embed``, ``b0.qkv``, ...) or attention operand (``b0.q``, ``b0.k``,
        ``b0.attn``, ``b0.v``) -> the fake quantizer of that input."""
        out: dict[str, nn.Module] = {}
        if self.patch_quant is not None:
            out["patch_embed"] = self.patch_quant
        for name, module in self.named_modules():
            if isinstance(module, LinearAct) and module.input_quant is not None:
                out[name] = module.input_quant
            elif isinstance(module, Block) and module.attn_quant is not None:
                out.update({f"{name}.{part}": q for part, q in module.attn_quant.items()})
        return out

    def quantize_activations(self, quantizers: dict[str, nn.Module]) -> None:
        """Put the given fake quantizers (names as `activation_quantizers` gives them) on the inputs
        they name and take every other one off: the deploy form's activation arithmetic."""
        self.patch_quant = quantizers.get("patch_embed")
        for name, module in list(self.named_modules()):
            if isinstance(module, LinearAct):
                module.input_quant = quantizers.get(name)
            elif isinstance(module, Block):
                parts = {part: quantizers[f"{name}.{part}"] for part in ("q", "k", "attn", "v") if f"{name}.{part}" in quantizers}
                module.attn_quant = nn.ModuleDict(parts) if parts else None

    def quantization(self) -> dict[str, Any]:
        return dict(self.kept_quantization)


def _init(net: ViT, seed: int) -> None:
    """Seeded truncated-normal weights (std 0.02, as ViT initialises), zero biases, unit norms."""
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                w = trunc_normal(module.weight.shape, gen)
                w[w == 0] = 1e-6  # a kept weight must not be zero, or its pattern would not read back
                module.weight.copy_(w)
                module.bias.zero_()
        net.pos_embed.copy_(trunc_normal(net.pos_embed.shape, gen))
        net.cls_token.copy_(trunc_normal(net.cls_token.shape, gen))


def apply_masks(net: ViT) -> None:
    """Zero the pruned weights of every layer with a mask pattern (``channel`` is in the shapes)."""
    modules = dict(net.named_modules())
    with torch.no_grad():
        for layer in net.layers:
            if not layer.has_weights or layer.slot < 0 or layer.sparsity <= 0.0:
                continue
            if parse_pattern(layer.pattern).family in ("dense", "channel"):
                continue
            module = modules[layer.name]
            op = module.linear if isinstance(module, LinearAct) else module
            op.weight.mul_(make_mask(op.weight, layer.pattern, layer.sparsity))


def build_vit(space: ViTSpace, candidate: Candidate, seed: int = 0) -> ViT:
    """The candidate's network in eval mode: structure = `space.layers(candidate)`, seeded random
    weights, sparsity masks applied."""
    if not isinstance(space, ViTSpace):
        raise ValueError(f"build_vit: space {getattr(space, 'name', space)!r} is not a vit space (ViTSpace)")
    cand = space.validate(candidate)
    net = ViT(space, cand)
    _init(net, zlib.crc32(cand.dumps().encode()) ^ (int(seed) & 0xFFFFFFFF))
    apply_masks(net)
    return net.eval().requires_grad_(False)

