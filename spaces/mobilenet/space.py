"""OFA-style MobileNetV3 space with a per-layer compression plan.

Architecture (Cai et al., "Once-for-All", ICLR 2020): a stem, one fixed depthwise block, five
searchable stages of inverted-residual blocks (depth 2-4, expand ratio 3/4/6, kernel 3/5/7 per
block), a final 1x1 expansion, global pooling, a feature-mixing layer and the classifier; a width
multiplier and the input resolution are searched too. Every convolution and linear layer is a
*slot* of the compression plan, so the same candidate says how each layer is pruned and quantized.

`stem_stride=1` with resolutions 28-64 gives networks that train on a CPU in minutes; the
defaults reproduce the 224-px ImageNet space.

The compression menu may *tie* slots (``compression: {tie: role}``, `tie_groups`): a group of
slots then shares one gene, so sampling, mutation, crossover, encoding, Optuna's ``suggest`` and
``size`` all see 7 decisions instead of 78; a slot that cannot carry the group's pattern carries
dense at the group's bits (`MobileNetSpace.project`). ``limits`` bound the menu of slots by name,
role or ``"*"`` and ``exclude`` removes choices from a group (what the sensitivity table of a
trained supernet suggests). Candidates of a tied or limited space are candidates of the untied
one, so a supernet, a latency predictor or a stored run serves both.
"""
from __future__ import annotations

import math
from itertools import chain
from operator import attrgetter
from typing import Any, Mapping, Sequence

import numpy as np

from ..base import Gene, Genome, SearchSpace
from ..candidate import Candidate
from ..compression import ALL_SLOTS, FLOAT_BITS, ROLES, TIE_MODES, CompressionMenu, LayerCompression, integer_bits
from ..layers import ACTIVATIONS, OPS, LayerSpec

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
    # The squeeze-excite pair of each block of a stage that has one (both 1x1 convolutions), after
    # the classifier: slots added later than the others, so every earlier slot keeps its index.
    slots += [(f"s{s}.b{b}.se", "se", 1) for s, (*_, se) in enumerate(STAGES) if se for b in range(MAX_DEPTH)]
    return slots


SLOTS = tuple(_slots())
SLOT_INDEX = {name: i for i, (name, _, _) in enumerate(SLOTS)}
#: Slots of a plan written before squeeze-excite layers had their own (their SE layers were dense
#: and took the bit-widths of the block's depthwise slot; `with_se_slots` says so explicitly).
PRE_SE_SLOTS = sum(role != "se" for _, role, _ in SLOTS)


def with_se_slots(candidate: Candidate) -> Candidate:
    """``candidate`` with a full plan: one written before squeeze-excite slots existed (its plan
    has `PRE_SE_SLOTS` entries) gets the SE entries it meant -- dense, with the bit-widths of the
    block's depthwise slot -- so it builds exactly the network it always did. Others unchanged."""
    if not isinstance(candidate, Candidate) or len(candidate.compression) != PRE_SE_SLOTS:
        return candidate
    plan = candidate.compression
    extra = []
    for name, _, _ in SLOTS[PRE_SE_SLOTS:]:
        dw = plan[SLOT_INDEX[name.removesuffix(".se") + ".dw"]]
        extra.append(LayerCompression(w_bits=dw.w_bits, a_bits=dw.a_bits) if isinstance(dw, LayerCompression) else dw)
    return candidate.replace(compression=(*plan, *extra))


#: Slots of the fixed parts before and after the searchable stages.
HEAD_SLOTS = ("stem", "first.dw", "first.project")
TAIL_SLOTS = ("final_expand", "feature_mix", "classifier")


def slot_block(slot: int) -> tuple[int, int] | None:
    """``(stage, block)`` of a slot inside an inverted-residual block (it exists only when the
    stage is that deep), None for the fixed head and tail slots."""
    name = SLOTS[slot][0]
    if not name.startswith("s") or "." not in name:
        return None
    stage, block = name.split(".")[:2]
    return int(stage[1:]), int(block[1:])


def tie_groups(tie: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The slots that share one compression choice under ``tie``, as ``(group, slot indices)``:

    * ``none``: every slot alone (the group is named by the slot);
    * ``block``: ``head`` (stem and the first block), one group per inverted-residual block
      (``s1.b2``: expand, depthwise, squeeze-excite, project), ``tail`` (final expansion,
      feature mix, classifier);
    * ``stage``: ``head``, one group per stage ``s0`` .. ``s4``, ``tail``;
    * ``role``: one group per layer role (`tritune.spaces.compression.ROLES`);
    * ``all``: one group, a uniform plan."""
    if tie not in TIE_MODES:
        raise ValueError(f"compression.tie: {tie!r} not allowed; allowed: {', '.join(TIE_MODES)}")
    n = len(SLOTS)
    if tie == "none":
        return tuple((SLOTS[i][0], (i,)) for i in range(n))
    if tie == "all":
        return (("all", tuple(range(n))),)
    if tie == "role":
        return tuple((role, tuple(i for i in range(n) if SLOTS[i][1] == role)) for role in ROLES
                     if any(r == role for _, r, _ in SLOTS))

    def key(i: int) -> str:
        blk = slot_block(i)
        if blk is None:
            return "head" if SLOTS[i][0] in HEAD_SLOTS else "tail"
        return f"s{blk[0]}" if tie == "stage" else f"s{blk[0]}.b{blk[1]}"

    groups: dict[str, list[int]] = {"head": []}
    for s in range(len(STAGES)):
        for b in range(MAX_DEPTH if tie == "block" else 1):
            groups[f"s{s}.b{b}" if tie == "block" else f"s{s}"] = []
    groups["tail"] = []
    for i in range(n):
        groups[key(i)].append(i)
    return tuple((name, tuple(members)) for name, members in groups.items())


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
        self._build_menus()

    def _build_menus(self) -> None:
        """Each slot's menu (its role's options within its limits), the tie groups, and each
        group's menu: every choice one of its slots can carry that all of them can realise
        (`project`), less the excluded ones."""
        menu = self.menu
        names = {name for name, _, _ in SLOTS}
        for key, _ in menu.limits:
            if key != ALL_SLOTS and key not in ROLES and key not in names:
                raise ValueError(f"mobilenet.compression.limits: {key!r} not allowed; allowed: '*', a role ({', '.join(ROLES)}) or a slot name")
        self.tie = menu.tie
        self.groups = tie_groups(self.tie)
        self.group_of = {i: g for g, (_, members) in enumerate(self.groups) for i in members}
        self.slot_blocks = tuple(slot_block(i) for i in range(len(SLOTS)))
        self._slot_menus = tuple(menu.slot_options(name, role, kernel) for name, role, kernel in SLOTS)
        self._slot_sets = tuple({c: c for c in m} for m in self._slot_menus)
        self._default = menu.default()
        group_names = {name for name, _ in self.groups}
        for key, tokens in menu.exclude:
            if key not in group_names:
                raise ValueError(f"mobilenet.compression.exclude: {key!r} is not a group of tie={self.tie}; allowed: {', '.join(n for n, _ in self.groups)}")
        menus = []
        for name, members in self.groups:
            union = list(dict.fromkeys(c for m in members for c in menu.options(SLOTS[m][1], SLOTS[m][2])))
            known = {c.token for c in union}
            excluded = menu.excluded(name)
            for token in sorted(excluded - known):
                raise ValueError(f"mobilenet.compression.exclude.{name}: {token!r} is not a choice of that group")
            union = [c for c in union if any(c in self._slot_sets[m] for m in members)]
            menus.append(tuple(c for c in union if c.token not in excluded and all(self.project(c, m) is not None for m in members)))
        self.group_menus = tuple(menus)
        self._slot_choices = tuple(tuple(dict.fromkeys(self.project(c, i) for c in self.group_menus[self.group_of[i]]))
                                   for i in range(len(SLOTS)))

    def project(self, choice: LayerCompression, slot: int) -> LayerCompression | None:
        """What slot ``slot`` carries when its tie group takes ``choice``: the choice itself, or
        dense at the same bit-widths where the slot cannot carry the pattern (a depthwise layer
        and N:M, ...); None when it can carry neither."""
        own = self._slot_sets[slot]  # the slot's menu objects (shared by every candidate: cheap to look up)
        hit = own.get(choice)
        return hit if hit is not None else own.get(LayerCompression("dense", 0.0, choice.w_bits, choice.a_bits))

    def slot_choices(self, slot: int) -> tuple[LayerCompression, ...]:
        """Every value slot ``slot`` can hold in a candidate of this space (ties and limits
        applied; the default first)."""
        return self._slot_choices[slot]

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
        """Resolution, width, then per stage its depth and per block its kernel and expand
        ratio; one compression gene ``comp:<group>`` per tie group -- with ``tie: none`` one per
        slot, beside its layer's architecture genes, otherwise after all of them."""
        default = self.menu.default()
        tied = self.tie != "none"

        def comp(group: int) -> Gene:
            name, members = self.groups[group]
            blocks = [self.slot_blocks[m] for m in members]
            if any(b is None or b[1] == 0 for b in blocks):  # the head, the tail and first blocks always exist
                return Gene(f"comp:{name}", self.group_menus[group], default)

            def alive(g: Genome, blocks: tuple = tuple(sorted(set(blocks)))) -> bool:
                return any(g[f"s{s}.depth"] > b for s, b in blocks)

            return Gene(f"comp:{name}", self.group_menus[group], default, active=alive)

        genes = [Gene("resolution", self.resolutions), Gene("width", self.widths)]
        if not tied:
            genes += [comp(self.group_of[SLOT_INDEX[n]]) for n in HEAD_SLOTS]
        for s in range(len(STAGES)):
            genes.append(Gene(f"s{s}.depth", self.depths))
            for b in range(MAX_DEPTH):
                def alive(g: Genome, s: int = s, b: int = b) -> bool:
                    return g[f"s{s}.depth"] > b

                genes.append(Gene(f"s{s}.b{b}.kernel", self.kernels, active=alive))
                genes.append(Gene(f"s{s}.b{b}.ratio", self.expands, active=alive))
                if tied:
                    continue
                for part in ("expand", "dw", "se", "project"):
                    slot = SLOT_INDEX.get(f"s{s}.b{b}.{part}")
                    if slot is not None:  # "se": only in stages with squeeze-excite
                        genes.append(Gene(f"comp:{SLOTS[slot][0]}", self.group_menus[self.group_of[slot]], default, active=alive))
        if tied:
            genes += [comp(g) for g in range(len(self.groups))]
        else:
            genes += [comp(self.group_of[SLOT_INDEX[n]]) for n in TAIL_SLOTS]
        return genes

    def validate(self, candidate: Candidate) -> Candidate:
        """`SearchSpace.validate` of the candidate with a full plan (`with_se_slots`; `to_genome`
        reads older plans the same way). With tied slots the canonical candidate also has the
        default in every slot of a block it lacks."""
        out = super().validate(with_se_slots(candidate))
        if self.tie == "none":
            return out
        canonical = self.from_genome(self.to_genome(out))
        return out if canonical == out else canonical

    def to_genome(self, candidate: Candidate) -> Genome:
        candidate = with_se_slots(candidate)
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
            raise ValueError(f"candidate compression: expected {len(SLOTS)} per-layer entries (one per slot; or {PRE_SE_SLOTS}: a plan "
                             f"written before squeeze-excite slots), got {len(candidate.compression)}")
        for s in range(len(STAGES)):
            genome[f"s{s}.depth"] = depth[s]
            for b in range(MAX_DEPTH):
                genome[f"s{s}.b{b}.kernel"] = kernel[s * MAX_DEPTH + b]
                genome[f"s{s}.b{b}.ratio"] = expand[s * MAX_DEPTH + b]
        if self.tie == "none":
            for (slot_name, _, _), comp in zip(SLOTS, candidate.compression):
                genome[f"comp:{slot_name}"] = comp
            return genome
        for g, (name, members) in enumerate(self.groups):
            genome[f"comp:{name}"] = self._group_value(candidate.compression, members, depth, name)
        return genome

    def _group_value(self, plan: tuple, members: tuple[int, ...], depth: tuple, group: str) -> Any:
        """The one choice of a tie group that gives ``plan`` in every slot of it that exists
        (a pattern the slot cannot carry shows as dense at the same bits, `project`)."""
        alive = [m for m in members if self.slot_blocks[m] is None or depth[self.slot_blocks[m][0]] > self.slot_blocks[m][1]]
        values = [plan[m] for m in alive]
        if not values:  # a block the candidate lacks: the gene is inactive
            return self._default
        if not all(type(v) is LayerCompression for v in values):
            return next(v for v in values if type(v) is not LayerCompression)  # `validate` names it
        shaped = [v for v in values if v.pattern != "dense"]
        choice = shaped[0] if shaped else values[0]
        if any(self.project(choice, m) != plan[m] for m in alive):
            shown = ", ".join(sorted({v.token for v in values}))
            raise ValueError(f"candidate comp:{group}: its slots must share one choice under compression.tie={self.tie!r}; got {shown}")
        return choice

    def from_genome(self, genome: Genome) -> Candidate:
        n = range(len(STAGES))
        arch = {
            "resolution": genome["resolution"],
            "width": genome["width"],
            "depth": tuple(genome[f"s{s}.depth"] for s in n),
            "kernel": tuple(genome[f"s{s}.b{b}.kernel"] for s in n for b in range(MAX_DEPTH)),
            "expand": tuple(genome[f"s{s}.b{b}.ratio"] for s in n for b in range(MAX_DEPTH)),
        }
        if self.tie == "none":
            plan = tuple(genome[f"comp:{name}"] for name, _, _ in SLOTS)
        else:
            depth = arch["depth"]
            values = [genome[f"comp:{name}"] for name, _ in self.groups]
            plan = tuple(self._default if blk is not None and depth[blk[0]] <= blk[1] else (self.project(values[self.group_of[i]], i) or values[self.group_of[i]])
                         for i, blk in enumerate(self.slot_blocks))
        return Candidate.make(self.name, arch, plan)

    def size(self) -> int:
        """Exact number of distinct candidates: the compression genes of a block count only
        where the block exists (depth), the others always."""
        per_block = len(self.kernels) * len(self.expands)
        fixed = len(self.resolutions) * len(self.widths)
        scoped: dict[tuple[int, int], int] = {}
        for gene in self._genes:
            if not gene.name.startswith("comp:"):
                continue
            if gene.active is None:
                fixed *= len(gene.choices)
                continue
            members = self.groups[[n for n, _ in self.groups].index(gene.name[5:])][1]
            blocks = {self.slot_blocks[m] for m in members}
            if len(blocks) != 1:
                raise NotImplementedError(f"space {self.name}: compression gene {gene.name} spans several optional blocks")
            (blk,) = blocks
            scoped[blk] = scoped.get(blk, 1) * len(gene.choices)
        stages = 1
        for s in range(len(STAGES)):
            stages *= sum(math.prod(per_block * scoped.get((s, b), 1) for b in range(d)) for d in self.depths)
        return fixed * stages

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

    def network(self, candidate: Candidate, seed: int = 0) -> Any:
        """`tritune.spaces.mobilenet.network.build_subnet`: the candidate's standalone network."""
        from .network import build_subnet

        return build_subnet(self, candidate, seed=seed)

    def input_shape(self, candidate: Candidate, batch: int = 1) -> tuple[int, ...]:
        return (batch, self.in_channels, int(candidate["resolution"]), int(candidate["resolution"]))

    def supernet(self, config: Mapping[str, Any] | None = None) -> Any:
        """`tritune.spaces.mobilenet.supernet.MobileNetSupernet` over this space; ``config``: the
        fields of its `SupernetConfig`, checked by name and type."""
        from ..plugins import check_options
        from .supernet.network import MobileNetSupernet, SupernetConfig

        check_options(SupernetConfig, dict(config or {}), "supernet config", unknown="unknown fields")
        return MobileNetSupernet(self, SupernetConfig.from_json(config))

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
                    se_comp = comp(f"{p}.se")
                    out += [
                        LayerSpec(f"{p}.se.pool", "global_pool", mid, mid, hw_out, hw_out),
                        LayerSpec(f"{p}.se.reduce", "conv", mid, red, 1, 1, act="relu", **se_comp),
                        LayerSpec(f"{p}.se.expand", "conv", red, mid, 1, 1, act="hsigmoid", **se_comp),
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

    def layer_codes(self, candidates: Sequence[Candidate]) -> tuple[np.ndarray, np.ndarray]:
        """``(lengths, rows)``: the layer count of each candidate's `layers` and one int64 row per
        layer (`CODE_COLUMNS`, in `layers` order), computed with numpy and *without* building
        `LayerSpec` objects, which costs more than everything a latency predictor does after it.

        Candidates that are not plainly valid go through `validate` (which raises ValueError
        naming the field) and, if they pass, through `layers` itself; so does everything when a
        subclass redefines `layers` (the vectorised rows follow this class's IR only)."""
        cands = list(candidates)
        if type(self).layers is not MobileNetSpace.layers:
            parts = [_slow_codes(self, c) for c in cands]
            rows = np.concatenate(parts) if parts else np.zeros((0, len(CODE_COLUMNS)), dtype=np.int64)
            return np.array([p.shape[0] for p in parts], dtype=np.int64), rows
        tables = self._code_tables()
        lens: list[np.ndarray] = []
        rows: list[np.ndarray] = []
        for lo in range(0, len(cands), _CODE_CHUNK):
            n, r = self._chunk_codes(cands[lo:lo + _CODE_CHUNK], tables)
            lens.append(n)
            rows.append(r)
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, len(CODE_COLUMNS)), dtype=np.int64)
        return np.concatenate(lens), np.concatenate([r.T for r in rows], axis=1).T  # column-major, as `_CodeTables.rows`

    def __getstate__(self) -> dict[str, Any]:
        """Pickles and copies leave the layer-code tables out: they key objects by ``id``, which
        means nothing in another process or for copied objects (a copy builds its own)."""
        state = dict(self.__dict__)
        state.pop("_code_table_cache", None)
        return state

    def _code_tables(self) -> "_CodeTables":
        cached = self.__dict__.get("_code_table_cache")
        if cached is None:
            cached = self.__dict__["_code_table_cache"] = _CodeTables(self)
        return cached

    def _chunk_codes(self, cands: list, t: "_CodeTables") -> tuple[np.ndarray, np.ndarray]:
        """`layer_codes` of one chunk: the plain candidates vectorised, the others one by one."""
        genes = t.gather(cands, self.name)
        if genes is None:  # odd values somewhere: find the candidates that carry them
            parts = [self._one_codes(c, t) for c in cands]
            return np.array([p.shape[0] for p in parts], dtype=np.int64), np.concatenate(parts)
        good, fast = genes
        lens, rows = t.rows(*fast)
        if good.all():
            return lens, rows
        parts = np.split(rows, np.cumsum(lens)[:-1]) if lens.size else []
        it = iter(parts)
        out = [next(it) if good[i] else _slow_codes(self, c) for i, c in enumerate(cands)]
        return np.array([p.shape[0] for p in out], dtype=np.int64), np.concatenate(out)

    def _one_codes(self, cand: Any, t: "_CodeTables") -> np.ndarray:
        genes = t.gather([cand], self.name)
        if genes is None or not genes[0].all():
            return _slow_codes(self, cand)
        return t.rows(*genes[1])[1]

    def trainable_network(self, candidate: Candidate, **options: Any) -> Any:
        """`tritune.spaces.mobilenet.supernet.TrainableSubnet` of the candidate; ``options``:
        ``calibration``, ``bn_momentum``, ``bn_eps``."""
        from .supernet.trainable import TrainableSubnet

        return TrainableSubnet(self, candidate, **options)

    # ----- convenience -----------------------------------------------------------------------

    def reference_models(self) -> dict[str, Candidate]:
        """The networks an engineer would try by hand, by name (the staged search evaluates them
        first): `tritune.spaces.mobilenet.supernet.sampling.reference_models`."""
        from .supernet.sampling import reference_models

        return reference_models(self)

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


# ----------------------------------------------------------------------------------------------
# Layer codes without LayerSpec objects (`MobileNetSpace.layer_codes`)
# ----------------------------------------------------------------------------------------------

#: The `LayerSpec` fields of a layer's code row, in column order (``op`` / ``act`` as indices into
#: `OPS` / `ACTIVATIONS`): what a kernel grouping (`tritune.predictors.fusion`) reads of a layer.
CODE_COLUMNS = ("op", "act", "in_channels", "out_channels", "in_h", "kernel", "stride", "groups", "int_bits")
_OP = {op: i for i, op in enumerate(OPS)}
_ACT = {a: i for i, a in enumerate(ACTIVATIONS)}
#: `Candidate.arch` keeps its keys sorted, so a mobilenet candidate's arch is these, in this order.
_ARCH_KEYS = ("depth", "expand", "kernel", "resolution", "width")
#: Candidates per vectorised step: the per-step arrays (6-12 kB a candidate) stay in cache.
_CODE_CHUNK = 1024
_N_STAGES, _N_BLOCKS = len(STAGES), len(STAGES) * MAX_DEPTH
#: The fields that make two `LayerCompression` equal (and their hash), as one C-level getter.
_FIELDS = attrgetter("pattern", "sparsity", "w_bits", "a_bits")
#: Template rows (`_CodeTables.rows`) before the blocks, and per block.
_HEAD, _BLOCK_ROWS = 4, 8
#: Most compression objects remembered by identity (kept alive: a few hundred bytes each, so at
#: most ~10 MB; candidates unpickled together share their objects and hit it again and again).
_ID_MEMO = 50_000


def code_row(layer: LayerSpec) -> tuple[int, ...]:
    """The code row of one `LayerSpec` (the definition the vectorised rows must match)."""
    return (_OP[layer.op], _ACT[layer.act], *(int(getattr(layer, f)) for f in CODE_COLUMNS[2:]))


def _slow_codes(space: MobileNetSpace, cand: Any) -> np.ndarray:
    """Code rows through `validate` and `layers` (for candidates the fast path does not take)."""
    layers = space.layers(space.validate(cand))
    return np.array([code_row(layer) for layer in layers], dtype=np.int64).reshape(-1, len(CODE_COLUMNS))


def _index(values: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each value in the sorted ``allowed`` and whether it is there (``==``, as a set
    lookup would decide for numbers)."""
    pos = np.minimum(np.searchsorted(allowed, values), allowed.size - 1)
    return pos, allowed[pos] == values


class _CodeTables:
    """What `layer_codes` looks up, computed once per space with the functions `layers` uses
    (`channels`, `make_divisible`, `pruned_channels`), so the rows cannot drift from the IR."""

    def __init__(self, space: MobileNetSpace) -> None:
        self.res = np.asarray(space.resolutions, dtype=np.float64)
        self.widths = np.asarray(space.widths, dtype=np.float64)
        self.depths = np.asarray(space.depths, dtype=np.float64)
        self.kernels = np.asarray(space.kernels, dtype=np.float64)
        self.expands = np.asarray(space.expands, dtype=np.float64)
        self._compression(space)
        self._shapes(space)
        self._template(space)
        #: every value a row can hold comes from these tables: int32 when they fit (half the traffic)
        tables = (self.template, self.res_px, self.hw1, self.hw_in, self.fixed, self.fixed_kept, self.mid, self.red, self.cin,
                  self.cout, self.int_bits, self.kernels)
        self.dtype = np.int32 if max(float(np.max(t)) for t in tables) < 2**31 else np.int64

    # ----- compression: every choice object -> a value code -------------------------------------
    def _compression(self, space: MobileNetSpace) -> None:
        slot_choices = [space.slot_choices(i) for i in range(len(SLOTS))]
        default = space.menu.default()
        values: dict[LayerCompression, int] = {}
        objects: list[LayerCompression] = []
        for choices in slot_choices:
            for c in (*choices, default):
                values.setdefault(c, len(values))
                objects.append(c)
        # the genes' own objects too (a tie group's choice is the object its slots carry)
        objects += [c for g in space._genes if g.name.startswith("comp:") for c in g.choices]
        #: ``id`` -> code of compression objects seen (the genes' own first: sampled candidates
        #: share them; unpickled ones share a few per batch); ``keep`` holds every one of them, so
        #: no other live object can have one of these ids. Grows up to `_ID_MEMO` entries, then
        #: stops growing (nothing is ever dropped, so a concurrent reader never sees a reused id).
        self.keep = list(objects)
        self.by_id = {id(c): values[c] for c in objects}
        self.by_fields = {_FIELDS(c): code for c, code in values.items()}
        codes = list(values)
        self.allowed = np.array([[c in set(choices) for c in codes] for choices in slot_choices], dtype=bool)
        self.int_bits = np.array([integer_bits(c.w_bits, c.a_bits) for c in codes], dtype=np.int64)
        #: pruning class of each code: 0 keeps every channel, i > 0 is channel pruning at ``pruned[i]``
        self.pruned = [None, *sorted({c.sparsity for c in codes if c.pattern == "channel"})]
        self.prune_class = np.array([self.pruned.index(c.sparsity) if c.pattern == "channel" else 0 for c in codes], dtype=np.int64)
        self.slot_rows = np.arange(len(SLOTS))

    def codes_of(self, comps: list) -> np.ndarray:
        """Value code of each compression object (-1: not one of the choices of any slot)."""
        try:
            return np.fromiter(map(self.by_id.__getitem__, map(id, comps)), dtype=np.int64, count=len(comps))
        except KeyError:  # objects seen for the first time: by value (then by identity)
            codes = list(map(self.by_id.get, map(id, comps)))
            return np.array([self._code_by_value(comps[i]) if c is None else c for i, c in enumerate(codes)], dtype=np.int64)

    def _code_by_value(self, comp: Any) -> int:
        """Equality lookup (what ``comp in gene.choice_set`` decides), remembered by ``id``."""
        if type(comp) is not LayerCompression:
            return -1
        try:
            code = self.by_fields.get(_FIELDS(comp), -1)
        except TypeError:  # an unhashable field value
            return -1
        if code >= 0 and len(self.by_id) < _ID_MEMO:
            self.keep.append(comp)
            self.by_id[id(comp)] = code
        return code

    # ----- shapes per resolution and per width ----------------------------------------------------
    def _shapes(self, space: MobileNetSpace) -> None:
        ss = space.stem_stride
        strides = [stride if b == 0 else 1 for _, stride, _, _ in STAGES for b in range(MAX_DEPTH)]
        hw1, hw_in, hw_out = [], [], []
        for r in space.resolutions:
            hw = (int(r) + ss - 1) // ss
            hw1.append(hw)
            ins, outs = [], []
            for st in strides:
                ins.append(hw)
                hw = (hw + st - 1) // st
                outs.append(hw)
            hw_in.append(ins)
            hw_out.append(outs)
        self.hw1, self.hw_in, self.hw_out = (np.asarray(a, dtype=np.int64) for a in (hw1, hw_in, hw_out))
        self.res_px = np.asarray([int(r) for r in space.resolutions], dtype=np.int64)
        self.stride = np.asarray(strides, dtype=np.int64)
        fixed, cin, cout, mid, red = [], [], [], [], []
        for w in space.widths:
            ch = space.channels(float(w))
            fixed.append([ch["stem"], ch["first"], ch["final_expand"], ch["feature_mix"], ch[f"s{len(STAGES) - 1}"]])
            c, ci, co, mi, re = ch["first"], [], [], [], []
            for s in range(len(STAGES)):
                for b in range(MAX_DEPTH):
                    c_in = c if b == 0 else ch[f"s{s}"]
                    ci.append(c_in)
                    co.append(ch[f"s{s}"])
                    mi.append([make_divisible(c_in * int(e)) for e in space.expands])
                    re.append([make_divisible(make_divisible(c_in * int(e)) // 4) for e in space.expands])
                c = ch[f"s{s}"]
            cin.append(ci)
            cout.append(co)
            mid.append(mi)
            red.append(re)
        self.fixed, self.cin, self.cout, self.red = (np.asarray(a, dtype=np.int64) for a in (fixed, cin, cout, red))
        #: channels kept by [width, block, expand, pruning class] and by [width, stem/final/mix, class]
        self.mid = self._kept(mid)
        self.fixed_kept = self._kept(self.fixed[:, [0, 2, 3]])
        self.block_stage = np.repeat(np.arange(len(STAGES)), MAX_DEPTH)
        self.block_index = np.tile(np.arange(MAX_DEPTH), len(STAGES))
        #: [expand, dw, project, se] slot of every block (se: the dw slot where a stage has none;
        #: those rows are masked out)
        self.block_slots = np.array([[SLOT_INDEX[f"s{s}.b{b}.{p}"] for p in ("expand", "dw", "project")]
                                     + [SLOT_INDEX.get(f"s{s}.b{b}.se", SLOT_INDEX[f"s{s}.b{b}.dw"])]
                                     for s in range(len(STAGES)) for b in range(MAX_DEPTH)], dtype=np.int64)

    def _kept(self, nominal: Any) -> np.ndarray:
        """``nominal`` channel counts (any shape) -> ``(..., pruning class)`` counts kept."""
        nominal = np.asarray(nominal, dtype=np.int64)
        return np.stack([nominal if s is None else np.vectorize(lambda c, s=s: pruned_channels(int(c), s), otypes=[np.int64])(nominal)
                         for s in self.pruned], axis=-1)

    # ----- candidates -> gene arrays ---------------------------------------------------------------
    def gather(self, cands: list, name: str) -> tuple[np.ndarray, tuple] | None:
        """``(plain, arrays)``: which candidates are plainly valid, and the gene arrays of those.

        None when a value is not even a number (the caller then looks at candidates one by one)."""
        n_slots = len(SLOTS)
        plain = np.zeros(len(cands), dtype=bool)
        arch: list[tuple] = []
        comps: list[tuple] = []
        for i, c in enumerate(cands):
            try:
                if not isinstance(c, Candidate) or c.space != name or len(c.compression) != n_slots:
                    continue
                (kd, d), (ke, e), (kk, k), (kr, r), (kw, w) = c.arch
                if (kd, ke, kk, kr, kw) != _ARCH_KEYS or len(d) != _N_STAGES or len(k) != _N_BLOCKS or len(e) != _N_BLOCKS:
                    continue
            except (TypeError, ValueError):
                continue
            plain[i] = True
            arch.append((d, k, e, r, w))
            comps.append(c.compression)
        if not arch:
            return plain, self._empty()
        d, k, e, r, w = zip(*arch)
        try:
            D, K, E, R, W = (np.array(v) for v in (d, k, e, r, w))
        except ValueError:
            return None
        if any(a.dtype.kind not in "iuf" for a in (D, K, E, R, W)) or D.ndim != 2 or K.ndim != 2 or E.ndim != 2 or R.ndim != 1 or W.ndim != 1:
            return None
        C = self.codes_of(list(chain.from_iterable(comps))).reshape(len(comps), n_slots)
        r_i, ok = _index(R, self.res)
        w_i, ok_w = _index(W, self.widths)
        _, ok_d = _index(D, self.depths)
        _, ok_k = _index(K, self.kernels)
        e_i, ok_e = _index(E, self.expands)
        ok_c = (C >= 0) & self.allowed[self.slot_rows, np.maximum(C, 0)]
        ok &= ok_w & ok_d.all(1) & ok_k.all(1) & ok_e.all(1) & ok_c.all(1)
        rows = np.flatnonzero(plain)
        plain[rows[~ok]] = False
        if not ok.all():
            r_i, w_i, D, K, e_i, C = r_i[ok], w_i[ok], D[ok], K[ok], e_i[ok], C[ok]
        return plain, (r_i, w_i, D.astype(np.int64), K.astype(np.int64), e_i, C)

    @staticmethod
    def _empty() -> tuple:
        """The gene arrays of no candidate."""
        z = np.zeros(0, dtype=np.int64)
        return z, z, *(np.zeros((0, width), dtype=np.int64) for width in (_N_STAGES, _N_BLOCKS, _N_BLOCKS, len(SLOTS)))

    # ----- gene arrays -> code rows ------------------------------------------------------------------
    def rows(self, r_i: np.ndarray, w_i: np.ndarray, D: np.ndarray, K: np.ndarray, e_i: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lengths and code rows of valid candidates, in `MobileNetSpace.layers` order.

        Every network is first written as the same template -- 4 head rows, 8 rows per block
        (expand, dw, SE pool / reduce / expand / scale, project, add) and 4 tail rows -- with a
        mask of the rows it really has; one assignment fills a row kind for all blocks at once.
        Columns come first, ``V[column, network, row]``, and so do they in the result: ``rows`` is
        the transpose of a C-ordered ``(9, n_layers)``, which is how the grouping reads them."""
        n = r_i.size
        if n == 0:
            return np.zeros(0, dtype=np.int64), np.zeros((0, len(CODE_COLUMNS)), dtype=np.int64)
        n_rows = self.template.shape[0]
        V = np.empty((len(CODE_COLUMNS), n, n_rows), dtype=self.dtype)
        V[:] = self.template.T[:, None, :]
        M = np.empty((n, n_rows), dtype=bool)
        wb = self.int_bits[C]
        fixed = self.fixed[w_i]
        pc = self.prune_class[C]
        stem = self.fixed_kept[w_i, 0, pc[:, SLOT_INDEX["stem"]]]
        self._head(V[:, :, :_HEAD], M[:, :_HEAD], stem, fixed[:, 1], self.res_px[r_i], self.hw1[r_i], wb)
        body = slice(_HEAD, _HEAD + _N_BLOCKS * _BLOCK_ROWS)
        self._blocks(V[:, :, body].reshape(-1, n, _N_BLOCKS, _BLOCK_ROWS), M[:, body].reshape(n, _N_BLOCKS, _BLOCK_ROWS), r_i, w_i, D, K, e_i, C, wb)
        final = self.fixed_kept[w_i, 1, pc[:, SLOT_INDEX["final_expand"]]]
        mix = self.fixed_kept[w_i, 2, pc[:, SLOT_INDEX["feature_mix"]]]
        tail, h_last = V[:, :, body.stop:], self.hw_out[r_i, -1]
        M[:, body.stop:] = True
        _put(tail[..., 0], fixed[:, 4], final, h_last, wb=wb[:, SLOT_INDEX["final_expand"]])
        _put(tail[..., 1], final, final, h_last)
        _put(tail[..., 2], final, mix, wb=wb[:, SLOT_INDEX["feature_mix"]])
        _put(tail[..., 3], mix, wb=wb[:, SLOT_INDEX["classifier"]])
        rows = np.take(V.reshape(len(CODE_COLUMNS), -1), np.flatnonzero(M), axis=1)  # (`V[:, M]` is 3x slower)
        return M.sum(1), rows.astype(np.int64).T

    def _head(self, V: np.ndarray, M: np.ndarray, stem: np.ndarray, first: np.ndarray, res: np.ndarray, hw1: np.ndarray, wb: np.ndarray) -> None:
        """stem, first.dw, first.project, first.add (only when the stem keeps ``first`` channels)."""
        M[:] = True
        M[:, 3] = stem == first
        _put(V[..., 0], cout=stem, h=res, wb=wb[:, 0])
        _put(V[..., 1], stem, stem, hw1, g=stem, wb=wb[:, 1])
        _put(V[..., 2], stem, first, hw1, wb=wb[:, 2])
        _put(V[..., 3], stem, stem, hw1)

    def _blocks(self, V: np.ndarray, M: np.ndarray, r_i: np.ndarray, w_i: np.ndarray, D: np.ndarray, K: np.ndarray, e_i: np.ndarray,
                C: np.ndarray, wb: np.ndarray) -> None:
        """The 8 row kinds of all inverted-residual blocks; ``V``: (columns, n, blocks, 8)."""
        blk = np.arange(_N_BLOCKS)
        slots = self.block_slots
        mid = self.mid[w_i[:, None], blk, e_i, self.prune_class[C[:, slots[:, 0]]]]
        red = self.red[w_i[:, None], blk, e_i]
        cin, cout = self.cin[w_i], self.cout[w_i]
        h, h_out = self.hw_in[r_i], self.hw_out[r_i]
        w_exp, w_dw, w_pr, w_se = wb[:, slots[:, 0]], wb[:, slots[:, 1]], wb[:, slots[:, 2]], wb[:, slots[:, 3]]
        M[:] = (D[:, self.block_stage] > self.block_index)[:, :, None] & self.block_rows
        M[:, :, 7] &= cin == cout
        _put(V[..., 0], cin, mid, h, wb=w_exp)  # expand
        _put(V[..., 1], mid, mid, h, k=K, g=mid, wb=w_dw)  # dw
        _put(V[..., 2], mid, mid, h_out)  # se.pool
        _put(V[..., 3], mid, red, wb=w_se)  # se.reduce
        _put(V[..., 4], red, mid, wb=w_se)  # se.expand
        _put(V[..., 5], mid, mid, h_out)  # se.scale
        _put(V[..., 6], mid, cout, h_out, wb=w_pr)  # project
        _put(V[..., 7], cout, cout, h_out)  # add

    def _template(self, space: MobileNetSpace) -> None:
        """The scalar columns of every template row, and which block rows a stage can have."""
        o, a, F = _OP, _ACT, FLOAT_BITS
        head = [(o["conv"], a["hswish"], space.in_channels, 0, 0, 3, space.stem_stride, 1, 0), (o["dwconv"], a["relu"], 0, 0, 0, 3, 1, 0, 0),
                (o["conv"], a["none"], 0, 0, 0, 1, 1, 1, 0), (o["add"], a["none"], 0, 0, 0, 1, 1, 1, F)]
        body, allowed = [], []
        for j in range(_N_BLOCKS):
            _, _, act_name, se = STAGES[int(self.block_stage[j])]
            act, st = a[act_name], int(self.stride[j])
            body += [(o["conv"], act, 0, 0, 0, 1, 1, 1, 0), (o["dwconv"], act, 0, 0, 0, 0, st, 0, 0),
                     (o["global_pool"], a["none"], 0, 0, 0, 1, 1, 1, F), (o["conv"], a["relu"], 0, 0, 1, 1, 1, 1, 0),
                     (o["conv"], a["hsigmoid"], 0, 0, 1, 1, 1, 1, 0), (o["mul"], a["none"], 0, 0, 0, 1, 1, 1, F),
                     (o["conv"], a["none"], 0, 0, 0, 1, 1, 1, 0), (o["add"], a["none"], 0, 0, 0, 1, 1, 1, F)]
            allowed.append([True, True, se, se, se, se, True, st == 1])
        tail = [(o["conv"], a["hswish"], 0, 0, 0, 1, 1, 1, 0), (o["global_pool"], a["none"], 0, 0, 0, 1, 1, 1, F),
                (o["linear"], a["hswish"], 0, 0, 1, 1, 1, 1, 0), (o["linear"], a["none"], 0, space.num_classes, 1, 1, 1, 1, 0)]
        self.template = np.array(head + body + tail, dtype=np.int64)
        self.block_rows = np.array(allowed, dtype=bool)


def _put(row: np.ndarray, cin: Any = None, cout: Any = None, h: Any = None, k: Any = None, g: Any = None, wb: Any = None) -> None:
    """Write the per-network columns of one template row kind, ``row[column, network, ...]``
    (None: keep the template's value)."""
    for col, value in ((2, cin), (3, cout), (4, h), (5, k), (7, g), (8, wb)):
        if value is not None:
            row[col] = value
