"""OFA-style MobileNetV3 space with a per-layer compression plan.

Architecture (Cai et al., "Once-for-All", ICLR 2020): a stem, one fixed depthwise block, five
searchable stages of inverted-residual blocks (depth 2-4, expand ratio 3/4/6, kernel 3/5/7 per
block), a final 1x1 expansion, global pooling, a feature-mixing layer and the classifier; a width
multiplier and the input resolution are searched too. Every convolution and linear layer is a
*slot* of the compression plan, so the same candidate says how each layer is pruned and quantized.

`stem_stride=1` with resolutions 28-64 gives networks that train on a CPU in minutes; the
defaults reproduce the 224-px ImageNet space.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from .base import Gene, Genome, SearchSpace
from .candidate import Candidate
from .compression import CompressionMenu, LayerCompression
from .layers import LayerSpec

#: (base width, first stride, activation, squeeze-excite) of the five searchable stages.
STAGES = ((24, 2, "relu", False), (40, 2, "relu", True), (80, 2, "hswish", False), (112, 1, "hswish", True), (160, 2, "hswish", True))
MAX_DEPTH = 4
STEM_WIDTH, FIRST_BLOCK_WIDTH, FINAL_EXPAND, FEATURE_MIX = 16, 16, 960, 1280


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10% (MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


#: Channel pruning keeps multiples of this many filters (vector width of every CPU kernel tritune
#: targets; a depthwise convolution with a channel count off this grid falls to a much slower path).
CHANNEL_MULTIPLE = 4


def pruned_channels(channels: int, sparsity: float, multiple: int = CHANNEL_MULTIPLE) -> int:
    """Filters kept when ``channel`` pruning at ``sparsity`` removes ``round(s * C)`` of ``C``.

    The kept count is rounded to the nearest multiple of ``multiple`` (ties keep more) and clamped
    to ``[multiple, channels]``; layers narrower than ``multiple`` keep the exact count (>= 1)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"channel pruning: sparsity {sparsity} not in [0, 1)")
    kept = channels - int(math.floor(sparsity * channels + 0.5))
    if channels >= multiple and multiple > 1:
        kept = min(channels, max(multiple, int(math.floor(kept / multiple + 0.5)) * multiple))
    return max(1, kept)


def _slots() -> list[tuple[str, str, int]]:
    """(slot name, role, kernel-for-rules) in plan order."""
    slots = [("stem", "stem", 3), ("first.dw", "dwconv", 0), ("first.project", "project", 1)]
    for s in range(len(STAGES)):
        for b in range(MAX_DEPTH):
            slots += [(f"s{s}.b{b}.expand", "conv", 1), (f"s{s}.b{b}.dw", "dwconv", 0), (f"s{s}.b{b}.project", "project", 1)]
    slots += [("final_expand", "conv", 1), ("feature_mix", "linear", 1), ("classifier", "classifier", 1)]
    return slots


SLOTS = tuple(_slots())
SLOT_INDEX = {name: i for i, (name, _, _) in enumerate(SLOTS)}


class MobileNetSpace(SearchSpace):
    name = "mobilenet"

    def __init__(
        self,
        resolutions: Sequence[int] = (160, 176, 192, 208, 224),
        widths: Sequence[float] = (1.0, 1.2),
        depths: Sequence[int] = (2, 3, 4),
        expands: Sequence[int] = (3, 4, 6),
        kernels: Sequence[int] = (3, 5, 7),
        stem_stride: int = 2,
        in_channels: int = 3,
        num_classes: int = 1000,
        compression: CompressionMenu | dict | None = None,
    ) -> None:
        def check(field_name: str, values: Sequence, allowed: set | None = None, positive: bool = True) -> tuple:
            values = tuple(values)
            if not values:
                raise ValueError(f"mobilenet.{field_name}: must list at least one value")
            for v in values:
                if allowed is not None and v not in allowed:
                    raise ValueError(f"mobilenet.{field_name}: {v!r} not allowed; allowed: {sorted(allowed)}")
                if positive and not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0):
                    raise ValueError(f"mobilenet.{field_name}: {v!r} must be a positive number")
            return tuple(sorted(set(values)))

        self.resolutions = check("resolutions", resolutions)
        if min(self.resolutions) < 16:
            raise ValueError(f"mobilenet.resolutions: {min(self.resolutions)} too small; allowed: >= 16")
        self.widths = tuple(float(w) for w in check("widths", widths))
        self.depths = check("depths", depths, {1, 2, 3, 4})
        self.expands = check("expands", expands, {1, 2, 3, 4, 5, 6, 8})
        self.kernels = check("kernels", kernels, {1, 3, 5, 7, 9})
        if stem_stride not in (1, 2):
            raise ValueError(f"mobilenet.stem_stride: {stem_stride!r} not allowed; allowed: 1, 2")
        self.stem_stride, self.in_channels, self.num_classes = stem_stride, int(in_channels), int(num_classes)
        if self.in_channels <= 0 or self.num_classes <= 1:
            raise ValueError("mobilenet.in_channels must be >= 1 and mobilenet.num_classes >= 2")
        self.menu = compression if isinstance(compression, CompressionMenu) else CompressionMenu.from_config(compression)

    def config(self) -> dict:
        return {
            "resolutions": list(self.resolutions),
            "widths": list(self.widths),
            "depths": list(self.depths),
            "expands": list(self.expands),
            "kernels": list(self.kernels),
            "stem_stride": self.stem_stride,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "compression": self.menu.to_config(),
        }

    # ----- genes -----------------------------------------------------------------------------
    def genes(self) -> list[Gene]:
        def opts(slot: int) -> tuple[LayerCompression, ...]:
            _, role, kernel = SLOTS[slot]
            return self.menu.options(role, kernel)

        default = self.menu.default()
        genes = [Gene("resolution", self.resolutions), Gene("width", self.widths)]
        for slot in range(3):
            genes.append(Gene(f"comp:{SLOTS[slot][0]}", opts(slot), default))
        for s in range(len(STAGES)):
            genes.append(Gene(f"s{s}.depth", self.depths))
            for b in range(MAX_DEPTH):
                def alive(g: Genome, s: int = s, b: int = b) -> bool:
                    return g[f"s{s}.depth"] > b

                genes.append(Gene(f"s{s}.b{b}.kernel", self.kernels, active=alive))
                genes.append(Gene(f"s{s}.b{b}.ratio", self.expands, active=alive))
                for part in ("expand", "dw", "project"):
                    slot = SLOT_INDEX[f"s{s}.b{b}.{part}"]
                    genes.append(Gene(f"comp:{SLOTS[slot][0]}", opts(slot), default, active=alive))
        for slot in range(len(SLOTS) - 3, len(SLOTS)):
            genes.append(Gene(f"comp:{SLOTS[slot][0]}", opts(slot), default))
        return genes

    def to_genome(self, candidate: Candidate) -> Genome:
        try:
            depth, kernel, expand = candidate["depth"], candidate["kernel"], candidate["expand"]
            genome: Genome = {"resolution": candidate["resolution"], "width": candidate["width"]}
        except KeyError as exc:
            raise ValueError(f"candidate arch.{exc.args[0]}: missing; required: resolution, width, depth, kernel, expand") from None
        n_blocks = len(STAGES) * MAX_DEPTH
        for field_name, values, length in (("depth", depth, len(STAGES)), ("kernel", kernel, n_blocks), ("expand", expand, n_blocks)):
            if not isinstance(values, tuple) or len(values) != length:
                raise ValueError(f"candidate arch.{field_name}: expected a list of {length} values")
        if len(candidate.compression) != len(SLOTS):
            raise ValueError(f"candidate compression: expected {len(SLOTS)} per-layer entries (one per slot), got {len(candidate.compression)}")
        for s in range(len(STAGES)):
            genome[f"s{s}.depth"] = depth[s]
            for b in range(MAX_DEPTH):
                genome[f"s{s}.b{b}.kernel"] = kernel[s * MAX_DEPTH + b]
                genome[f"s{s}.b{b}.ratio"] = expand[s * MAX_DEPTH + b]
        for (slot_name, _, _), comp in zip(SLOTS, candidate.compression):
            genome[f"comp:{slot_name}"] = comp
        return genome

    def from_genome(self, genome: Genome) -> Candidate:
        n = range(len(STAGES))
        arch = {
            "resolution": genome["resolution"],
            "width": genome["width"],
            "depth": tuple(genome[f"s{s}.depth"] for s in n),
            "kernel": tuple(genome[f"s{s}.b{b}.kernel"] for s in n for b in range(MAX_DEPTH)),
            "expand": tuple(genome[f"s{s}.b{b}.ratio"] for s in n for b in range(MAX_DEPTH)),
        }
        plan = tuple(genome[f"comp:{name}"] for name, _, _ in SLOTS)
        return Candidate.make(self.name, arch, plan)

    def size(self) -> int:
        def n_opts(slot_name: str) -> int:
            _, role, kernel = SLOTS[SLOT_INDEX[slot_name]]
            return len(self.menu.options(role, kernel))

        fixed = math.prod(n_opts(n) for n in ("stem", "first.dw", "first.project", "final_expand", "feature_mix", "classifier"))
        per_block = len(self.kernels) * len(self.expands) * n_opts("s0.b0.expand") * n_opts("s0.b0.dw") * n_opts("s0.b0.project")
        stages = math.prod(sum(per_block**d for d in self.depths) for _ in STAGES)
        return len(self.resolutions) * len(self.widths) * fixed * stages

    # ----- layer IR --------------------------------------------------------------------------
    def channels(self, width: float) -> dict[str, int]:
        """Channel counts of the fixed parts for a width multiplier."""
        return {
            "stem": make_divisible(STEM_WIDTH * width),
            "first": make_divisible(FIRST_BLOCK_WIDTH * width),
            **{f"s{s}": make_divisible(c * width) for s, (c, _, _, _) in enumerate(STAGES)},
            "final_expand": make_divisible(FINAL_EXPAND * width),
            "feature_mix": make_divisible(FEATURE_MIX * max(1.0, width)),
        }

    def layers(self, candidate: Candidate) -> list[LayerSpec]:
        """The IR of the *physical* network: ``channel``-pruned layers already have their kept
        width (`pruned_channels`) and their consumers follow, so shapes are what a runtime runs."""
        cand = self.validate(candidate)
        plan = cand.compression
        width, hw = float(cand["width"]), int(cand["resolution"])  # type: ignore[arg-type]
        ch = self.channels(width)

        def comp(slot_name: str) -> dict[str, Any]:
            c = plan[SLOT_INDEX[slot_name]]
            return {"pattern": c.pattern, "sparsity": c.sparsity, "w_bits": c.w_bits, "a_bits": c.a_bits, "slot": SLOT_INDEX[slot_name]}

        def kept(slot_name: str, nominal: int) -> int:
            c = plan[SLOT_INDEX[slot_name]]
            return pruned_channels(nominal, c.sparsity) if c.pattern == "channel" else nominal

        out: list[LayerSpec] = []
        stem = kept("stem", ch["stem"])
        out.append(LayerSpec("stem", "conv", self.in_channels, stem, hw, hw, kernel=3, stride=self.stem_stride, bn=True, act="hswish", **comp("stem")))
        hw = (hw + self.stem_stride - 1) // self.stem_stride
        out.append(LayerSpec("first.dw", "dwconv", stem, stem, hw, hw, kernel=3, groups=stem, bn=True, act="relu", **comp("first.dw")))
        out.append(LayerSpec("first.project", "conv", stem, ch["first"], hw, hw, bn=True, **comp("first.project")))
        if stem == ch["first"]:
            out.append(LayerSpec("first.add", "add", stem, stem, hw, hw))
        c = ch["first"]
        for s, (_, stride, act, se) in enumerate(STAGES):
            c_out = ch[f"s{s}"]
            for b in range(int(cand["depth"][s])):  # type: ignore[index]
                idx = s * MAX_DEPTH + b
                k, e = int(cand["kernel"][idx]), int(cand["expand"][idx])  # type: ignore[index]
                st = stride if b == 0 else 1
                p = f"s{s}.b{b}"
                nominal_mid = make_divisible(c * e)
                mid = kept(f"{p}.expand", nominal_mid)
                out.append(LayerSpec(f"{p}.expand", "conv", c, mid, hw, hw, bn=True, act=act, **comp(f"{p}.expand")))
                dw = comp(f"{p}.dw")
                out.append(LayerSpec(f"{p}.dw", "dwconv", mid, mid, hw, hw, kernel=k, stride=st, groups=mid, bn=True, act=act, **dw))
                hw_out = (hw + st - 1) // st
                if se:
                    red = make_divisible(nominal_mid // 4)
                    bits = {"w_bits": dw["w_bits"], "a_bits": dw["a_bits"]}
                    out += [
                        LayerSpec(f"{p}.se.pool", "global_pool", mid, mid, hw_out, hw_out),
                        LayerSpec(f"{p}.se.reduce", "conv", mid, red, 1, 1, act="relu", **bits),
                        LayerSpec(f"{p}.se.expand", "conv", red, mid, 1, 1, act="hsigmoid", **bits),
                        LayerSpec(f"{p}.se.scale", "mul", mid, mid, hw_out, hw_out),
                    ]
                out.append(LayerSpec(f"{p}.project", "conv", mid, c_out, hw_out, hw_out, bn=True, **comp(f"{p}.project")))
                if st == 1 and c == c_out:
                    out.append(LayerSpec(f"{p}.add", "add", c_out, c_out, hw_out, hw_out))
                c, hw = c_out, hw_out
        final = kept("final_expand", ch["final_expand"])
        out.append(LayerSpec("final_expand", "conv", c, final, hw, hw, bn=True, act="hswish", **comp("final_expand")))
        out.append(LayerSpec("pool", "global_pool", final, final, hw, hw))
        mix = kept("feature_mix", ch["feature_mix"])
        out.append(LayerSpec("feature_mix", "linear", final, mix, act="hswish", **comp("feature_mix")))
        out.append(LayerSpec("classifier", "linear", mix, self.num_classes, **comp("classifier")))
        return out

    # ----- convenience -----------------------------------------------------------------------
    def largest(self) -> Candidate:
        """The biggest dense architecture (used as the supernet's teacher)."""
        return self._extreme(max)

    def smallest(self) -> Candidate:
        return self._extreme(min)

    def _extreme(self, pick) -> Candidate:
        genome: Genome = {}
        for gene in self._genes:
            if gene.name.startswith("comp:"):
                genome[gene.name] = gene.default
            else:
                genome[gene.name] = pick(gene.choices)
        return self._make(genome)
