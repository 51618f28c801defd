"""The ``vit`` space: small vision transformers x token pruning x per-layer compression.

Architecture genes, in the spirit of AutoFormer (Chen et al., ICCV 2021) and HAT (Wang et al.,
ACL 2020): the patch size, the embedding width, the depth, and per block its number of heads
(each ``head_dim`` wide, so attention width moves with the heads) and its MLP ratio.

Token pruning, as EViT (Liang et al., ICLR 2022), DynamicViT (Rao et al., NeurIPS 2021) and
HeatViT (Dong et al., HPCA 2023) do it: entering block ``i >= 1`` a share ``b{i}.keep`` of the
patch tokens is kept -- those the class token attended to most in the block before -- and the
rest are fused into one *package token* (their attention-weighted mean), so what they carried is
not thrown away. Token counts are static per candidate, so every shape is known before running:
the IR carries the token count of each layer (``in_h``) and a target sees what pruning saves.

Compression: every linear layer -- the patch embedding, per block ``qkv``, ``proj``, ``fc1`` and
``fc2``, and the classifier ``head`` -- has a slot on the `CompressionMenu`: unstructured, N:M,
block, gather-scatter, and ``channel``, which on ``qkv`` removes whole heads (head pruning) and on
``fc1`` hidden neurons (neuron pruning); ``proj``, ``fc2`` and ``head`` feed a residual sum or
the logits and keep their outputs. ``b{i}.attn_bits`` runs the two attention matmuls of a block
on 8-bit or float operands.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ..base import Gene, Genome, SearchSpace
from ..candidate import Candidate
from ..compression import ALL_SLOTS, FLOAT_BITS, CompressionMenu, LayerCompression
from ..layers import LayerSpec

#: Per-block compression slots and their roles (`tritune.spaces.compression.ROLES`).
BLOCK_SLOTS = (("qkv", "linear"), ("proj", "project"), ("fc1", "linear"), ("fc2", "project"))
#: Bit-widths of a block's attention matmuls (``q @ k^T`` and ``attn @ v``).
ATTN_BITS = (8, FLOAT_BITS)


def slot_names(max_depth: int) -> tuple[tuple[str, str], ...]:
    """``(slot name, role)`` of every compression slot, in plan order."""
    blocks = tuple((f"b{i}.{part}", role) for i in range(max_depth) for part, role in BLOCK_SLOTS)
    return (("patch_embed", "project"), *blocks, ("head", "classifier"))


def kept_count(others: int, keep: float) -> int:
    """How many of ``others`` non-class tokens a block that keeps ``keep`` of them keeps."""
    return max(1, int(round(keep * others)))


def kept_tokens(tokens: int, keep: float) -> int:
    """Tokens entering a block that keeps ``keep`` of the ``tokens - 1`` non-class tokens before
    it: the class token, the kept ones and, when any were pruned, one package token."""
    kept = kept_count(tokens - 1, keep)
    return 1 + kept + (1 if kept < tokens - 1 else 0)


def _check(name: str, values: Sequence, allowed: Any = None) -> tuple:
    values = tuple(sorted(set(values)))
    if not values:
        raise ValueError(f"vit.{name}: must list at least one value")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 or (allowed is not None and not allowed(v)):
            raise ValueError(f"vit.{name}: {v!r} not allowed")
    return values


class ViTSpace(SearchSpace):
    name = "vit"

    def __init__(
        self,
        image_size: int = 28,
        in_channels: int = 1,
        num_classes: int = 10,
        patch_sizes: Sequence[int] = (4, 7),
        embed_dims: Sequence[int] = (48, 64, 96),
        depths: Sequence[int] = (2, 3, 4, 5, 6),
        heads: Sequence[int] = (2, 3, 4),
        head_dim: int = 16,
        mlp_ratios: Sequence[int] = (2, 3, 4),
        keep_ratios: Sequence[float] = (1.0, 0.7, 0.5),
        compression: CompressionMenu | dict | None = None,
    ) -> None:
        self.image_size, self.in_channels, self.num_classes = int(image_size), int(in_channels), int(num_classes)
        if self.image_size < 4 or self.in_channels < 1 or self.num_classes < 2:
            raise ValueError("vit: image_size must be >= 4, in_channels >= 1 and num_classes >= 2")
        self.patch_sizes = _check("patch_sizes", patch_sizes, lambda p: isinstance(p, int) and self.image_size % p == 0)
        self.embed_dims = _check("embed_dims", embed_dims, lambda d: isinstance(d, int) and d % 4 == 0)
        self.depths = _check("depths", depths, lambda d: isinstance(d, int) and d <= 12)
        self.heads = _check("heads", heads, lambda h: isinstance(h, int) and h <= 16)
        self.head_dim = int(head_dim)
        if self.head_dim < 4 or self.head_dim % 4:
            raise ValueError(f"vit.head_dim: {head_dim!r} not allowed; allowed: a multiple of 4, >= 4")
        self.mlp_ratios = _check("mlp_ratios", mlp_ratios, lambda r: isinstance(r, int) and r <= 8)
        self.keep_ratios = tuple(float(k) for k in _check("keep_ratios", keep_ratios, lambda k: k <= 1.0))
        if 1.0 not in self.keep_ratios:
            raise ValueError("vit.keep_ratios: must include 1.0 (a block that prunes nothing)")
        self.max_depth = max(self.depths)
        self.menu = compression if isinstance(compression, CompressionMenu) else CompressionMenu.from_config(compression)
        if self.menu.tie != "none":
            raise ValueError(f"vit.compression.tie: {self.menu.tie!r} not allowed; allowed: none")
        self.tie = "none"
        self.slots = slot_names(self.max_depth)
        self.slot_index = {name: i for i, (name, _) in enumerate(self.slots)}
        for key, _ in self.menu.limits:
            roles = {role for _, role in self.slots}
            if key != ALL_SLOTS and key not in roles and key not in self.slot_index:
                raise ValueError(f"vit.compression.limits: {key!r} not allowed; allowed: '*', a role ({', '.join(sorted(roles))}) or a slot name")
        for key, _ in self.menu.exclude:
            if key not in self.slot_index:
                raise ValueError(f"vit.compression.exclude: {key!r} is not a slot; allowed: {', '.join(self.slot_index)}")
        self._slot_menus = tuple(
            tuple(c for c in self.menu.slot_options(name, role, 1) if c.token not in self.menu.excluded(name))
            for name, role in self.slots)

    def config(self) -> dict:
        return {
            "image_size": self.image_size, "in_channels": self.in_channels, "num_classes": self.num_classes,
            "patch_sizes": list(self.patch_sizes), "embed_dims": list(self.embed_dims), "depths": list(self.depths),
            "heads": list(self.heads), "head_dim": self.head_dim, "mlp_ratios": list(self.mlp_ratios),
            "keep_ratios": list(self.keep_ratios), "compression": self.menu.to_config(),
        }

    def slot_choices(self, slot: int) -> tuple[LayerCompression, ...]:
        """Every value slot ``slot`` can hold (the default first)."""
        return self._slot_menus[slot]

    # ----- genes -----------------------------------------------------------------------------
    def genes(self) -> list[Gene]:
        """Patch size, embedding width, the patch embedding's compression, depth; per block its
        heads, MLP ratio, token keep ratio (from the second block on), attention bits and four
        compression slots; the classifier's compression."""
        default = self.menu.default()

        def comp(slot: str, active: Any = None) -> Gene:
            return Gene(f"comp:{slot}", self._slot_menus[self.slot_index[slot]], default, active=active)

        genes = [Gene("patch", self.patch_sizes), Gene("embed", self.embed_dims), comp("patch_embed"),
                 Gene("depth", self.depths)]
        for i in range(self.max_depth):
            def alive(g: Genome, i: int = i) -> bool:
                return g["depth"] > i

            genes += [Gene(f"b{i}.heads", self.heads, active=alive), Gene(f"b{i}.mlp_ratio", self.mlp_ratios, active=alive)]
            if i > 0:
                genes.append(Gene(f"b{i}.keep", self.keep_ratios, 1.0, active=alive))
            genes.append(Gene(f"b{i}.attn_bits", ATTN_BITS, FLOAT_BITS, active=alive))
            genes += [comp(f"b{i}.{part}", alive) for part, _ in BLOCK_SLOTS]
        genes.append(comp("head"))
        return genes

    def to_genome(self, candidate: Candidate) -> Genome:
        n = self.max_depth
        try:
            genome: Genome = {"patch": candidate["patch"], "embed": candidate["embed"], "depth": candidate["depth"]}
            lists = {key: candidate[key] for key in ("heads", "mlp_ratio", "keep", "attn_bits")}
        except KeyError as exc:
            raise ValueError(f"candidate arch.{exc.args[0]}: missing; required: patch, embed, depth, heads, mlp_ratio, keep, attn_bits") from None
        for key, values in lists.items():
            if not isinstance(values, tuple) or len(values) != n:
                raise ValueError(f"candidate arch.{key}: expected a list of {n} values (one per block of the deepest network)")
        if len(candidate.compression) != len(self.slots):
            raise ValueError(f"candidate compression: expected {len(self.slots)} per-layer entries (one per slot), got {len(candidate.compression)}")
        for i in range(n):
            genome[f"b{i}.heads"], genome[f"b{i}.mlp_ratio"] = lists["heads"][i], lists["mlp_ratio"][i]
            if i > 0:
                genome[f"b{i}.keep"] = lists["keep"][i]
            genome[f"b{i}.attn_bits"] = lists["attn_bits"][i]
        for (slot, _), choice in zip(self.slots, candidate.compression):
            genome[f"comp:{slot}"] = choice
        return genome

    def from_genome(self, genome: Genome) -> Candidate:
        n = self.max_depth
        arch = {
            "patch": genome["patch"], "embed": genome["embed"], "depth": genome["depth"],
            "heads": [genome[f"b{i}.heads"] for i in range(n)],
            "mlp_ratio": [genome[f"b{i}.mlp_ratio"] for i in range(n)],
            "keep": [1.0] + [genome[f"b{i}.keep"] for i in range(1, n)],
            "attn_bits": [genome[f"b{i}.attn_bits"] for i in range(n)],
        }
        return Candidate.make(self.name, arch, [genome[f"comp:{slot}"] for slot, _ in self.slots])

    def size(self) -> int:
        per_block = len(self.heads) * len(self.mlp_ratios) * len(ATTN_BITS) * math.prod(
            len(self._slot_menus[self.slot_index[f"b0.{part}"]]) for part, _ in BLOCK_SLOTS)
        keep = len(self.keep_ratios)
        blocks = sum(per_block ** d * keep ** (d - 1) for d in self.depths)
        fixed = len(self.patch_sizes) * len(self.embed_dims) * len(self._slot_menus[0]) * len(self._slot_menus[-1])
        return fixed * blocks

    # ----- shapes ------------------------------------------------------------------------------
    def tokens(self, candidate: Candidate) -> list[int]:
        """Tokens entering each block of the candidate (class token and package token included)."""
        patch = int(candidate["patch"])  # type: ignore[arg-type]
        t = (self.image_size // patch) ** 2 + 1
        out = []
        for i in range(int(candidate["depth"])):  # type: ignore[arg-type]
            keep = float(candidate["keep"][i])  # type: ignore[index]
            if i > 0 and keep < 1.0:
                t = kept_tokens(t, keep)
            out.append(t)
        return out

    def widths(self, candidate: Candidate) -> list[dict[str, int]]:
        """Per block, the physical widths: heads kept (head pruning on ``qkv``) and MLP hidden
        units kept (neuron pruning on ``fc1``)."""
        plan = candidate.compression
        out = []
        embed = int(candidate["embed"])  # type: ignore[arg-type]
        for i in range(int(candidate["depth"])):  # type: ignore[arg-type]
            heads = int(candidate["heads"][i])  # type: ignore[index]
            hidden = embed * int(candidate["mlp_ratio"][i])  # type: ignore[index]
            qkv, fc1 = plan[self.slot_index[f"b{i}.qkv"]], plan[self.slot_index[f"b{i}.fc1"]]
            if qkv.pattern == "channel":
                heads = max(1, int(round(heads * (1.0 - qkv.sparsity))))
            if fc1.pattern == "channel":
                hidden = max(4, 4 * int(round(hidden * (1.0 - fc1.sparsity) / 4)))
            out.append({"heads": heads, "hidden": hidden})
        return out

    def layers(self, candidate: Candidate) -> list[LayerSpec]:
        """The IR of the physical network. A token-wise layer's ``in_h`` is its token count, so its
        MACs scale with the tokens; a matmul's ``groups`` are its heads."""
        cand = self.validate(candidate)
        plan = cand.compression
        patch, embed = int(cand["patch"]), int(cand["embed"])  # type: ignore[arg-type]
        side = self.image_size // patch
        hd = self.head_dim

        def comp(slot: str) -> dict[str, Any]:
            c = plan[self.slot_index[slot]]
            return {"pattern": c.pattern, "sparsity": c.sparsity, "w_bits": c.w_bits, "a_bits": c.a_bits, "slot": self.slot_index[slot]}

        out = [LayerSpec("patch_embed", "conv", self.in_channels, embed, self.image_size, self.image_size, kernel=patch, stride=patch,
                         **comp("patch_embed"))]
        t = side * side + 1
        for i, (tokens, w) in enumerate(zip(self.tokens(cand), self.widths(cand))):
            p = f"b{i}"
            if tokens != t:
                out.append(LayerSpec(f"{p}.select", "token_select", embed, embed, t, 1))
            t = tokens
            heads, hidden = w["heads"], w["hidden"]
            width = heads * hd
            bits = int(cand["attn_bits"][i])  # type: ignore[index]
            out += [
                LayerSpec(f"{p}.norm1", "layernorm", embed, embed, t, 1),
                LayerSpec(f"{p}.qkv", "linear", embed, 3 * width, t, 1, **comp(f"{p}.qkv")),
                LayerSpec(f"{p}.scores", "matmul", width, heads * t, t, 1, groups=heads, w_bits=bits, a_bits=bits),
                LayerSpec(f"{p}.softmax", "softmax", heads * t, heads * t, t, 1),
                LayerSpec(f"{p}.context", "matmul", heads * t, width, t, 1, groups=heads, w_bits=bits, a_bits=bits),
                LayerSpec(f"{p}.proj", "linear", width, embed, t, 1, **comp(f"{p}.proj")),
                LayerSpec(f"{p}.add1", "add", embed, embed, t, 1),
                LayerSpec(f"{p}.norm2", "layernorm", embed, embed, t, 1),
                LayerSpec(f"{p}.fc1", "linear", embed, hidden, t, 1, act="gelu", **comp(f"{p}.fc1")),
                LayerSpec(f"{p}.fc2", "linear", hidden, embed, t, 1, **comp(f"{p}.fc2")),
                LayerSpec(f"{p}.add2", "add", embed, embed, t, 1),
            ]
        out.append(LayerSpec("norm", "layernorm", embed, embed, 1, 1))
        out.append(LayerSpec("head", "linear", embed, self.num_classes, **comp("head")))
        return out

    # ----- optional parts ------------------------------------------------------------------------
    def network(self, candidate: Candidate, seed: int = 0) -> Any:
        """`tritune.spaces.vit.network.build_vit`: the candidate's standalone network."""
        from .network import build_vit

        return build_vit(self, candidate, seed=seed)

    def input_shape(self, candidate: Candidate, batch: int = 1) -> tuple[int, ...]:
        return (batch, self.in_channels, self.image_size, self.image_size)

    def supernet(self, config: Mapping[str, Any] | None = None) -> Any:
        """`tritune.spaces.vit.supernet.ViTSupernet` over this space (``config``: its `ViTSupernetConfig` fields)."""
        from ..plugins import check_options
        from .supernet import ViTSupernet, ViTSupernetConfig

        check_options(ViTSupernetConfig, dict(config or {}), "supernet config", unknown="unknown fields")
        return ViTSupernet(self, ViTSupernetConfig(**dict(config or {})))

    def trainable_network(self, candidate: Candidate, **options: Any) -> Any:
        """`tritune.spaces.vit.trainable.TrainableViT` of the candidate; ``options``: ``calibration``."""
        from .trainable import TrainableViT

        return TrainableViT(self, candidate, **options)

    def largest(self) -> Candidate:
        """The biggest dense float network, pruning no tokens."""
        genome: Genome = {}
        for gene in self.genes():
            if gene.name.startswith("comp:") or gene.name.endswith(".attn_bits"):
                genome[gene.name] = gene.default
            elif gene.name.endswith(".keep"):
                genome[gene.name] = 1.0
            elif gene.name == "patch":
                genome[gene.name] = min(gene.choices)  # the smallest patches give the most tokens
            else:
                genome[gene.name] = max(gene.choices)
        return self._make(genome)

    def dense(self, candidate: Candidate, keep: Mapping[int, float] | None = None) -> Candidate:
        """``candidate`` with every slot dense float, attention in float, and the token keep
        ratios of ``keep`` (block -> ratio; default: prune nothing)."""
        genome = self.to_genome(candidate)
        default = self.menu.default()
        for name in genome:
            if name.startswith("comp:"):
                genome[name] = default
            elif name.endswith(".attn_bits"):
                genome[name] = FLOAT_BITS
            elif name.endswith(".keep"):
                genome[name] = 1.0
        for i, ratio in (keep or {}).items():
            genome[f"b{i}.keep"] = float(ratio)
        return self._make(genome)
