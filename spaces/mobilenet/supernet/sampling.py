"""Candidates a supernet trains on: the two ends of the sandwich and random ones, drawn the way
the search draws them.

Random candidates come from the space's own sampler (`SearchSpace.sample`), so a supernet
trains on the distribution a search will ask about: mixed per-slot plans, with the ties, limits
and exclusions of the space's compression menu (`tritune.spaces.compression.CompressionMenu`).
Two things narrow it during training, both from progressive shrinking (Cai et al.,
"Once-for-All", ICLR 2020) and its extension to bits (OQAT, Shen et al., ICCV 2021; APQ, Wang
et al., CVPR 2020):

* a *dimension* (`tritune.spaces.weight_sharing.DIMENSIONS`) -- a family of `mobilenet` genes:
  ``resolution``, ``width``, ``depth``, ``kernel``, ``expand`` and ``compression`` (every per-slot
  pattern, ratio and bit-width) -- may be frozen; it then takes the value of the largest network
  (compression: dense float);
* a `CompressionLimit` (fewest bits, highest sparsity, patterns) restricts every slot's menu, so
  low bits and high sparsity can be reached gradually.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ...base import Genome
from ...candidate import Candidate
from ...compression import ALL_SLOTS, CompressionLimit
from ...weight_sharing import DIMENSIONS, LOWER_ENDS, check_dimensions
from ..space import MobileNetSpace

def dimension_of(gene: str) -> str:
    """The dimension of a `mobilenet` gene name (``s1.b2.ratio`` -> ``expand``)."""
    if gene.startswith("comp:"):
        return "compression"
    if gene in ("resolution", "width"):
        return gene
    tail = gene.rsplit(".", 1)[-1]
    return {"depth": "depth", "kernel": "kernel", "ratio": "expand"}[tail]


def most_compressed(slot_options: tuple) -> object:
    """The harshest choice of a slot: fewest weight bits, then fewest activation bits, then the
    highest sparsity (first such option in menu order, i.e. unstructured before structured)."""
    return min(slot_options, key=lambda c: (c.w_bits, c.a_bits, -c.sparsity))


def restrict_space(space: MobileNetSpace, limit: CompressionLimit | dict | None) -> MobileNetSpace:
    """``space`` with ``limit`` added for every slot (its candidates are candidates of ``space``)."""
    if limit is None:
        return space
    limit = CompressionLimit.from_config(limit)
    limits = dict(space.menu.limits)
    limits[ALL_SLOTS] = limits[ALL_SLOTS] & limit if ALL_SLOTS in limits else limit
    config = space.config()
    config["compression"] = space.menu.replace(limits=limits)
    return type(space)(**config)


class CandidateSampler:
    """Largest, smallest and random candidates of a space, restricted to ``elastic`` dimensions
    and, optionally, a compression ``limit``.

    With every dimension elastic and no limit, `sample` *is* ``space.sample``: the same random
    stream gives the same candidate the search's random proposals would be. A frozen dimension
    takes the largest network's values; genes that only become active because of that (the
    kernels of blocks a frozen depth adds) are drawn at random."""

    def __init__(self, space: MobileNetSpace) -> None:
        if not isinstance(space, MobileNetSpace):
            raise ValueError(f"CandidateSampler: space {getattr(space, 'name', space)!r} is not a mobilenet space")
        self.space = space
        self.genes = space.genes()
        self._largest = space.to_genome(space.largest())
        self._smallest_arch = space.to_genome(space.smallest())
        self._restricted: dict[CompressionLimit, MobileNetSpace] = {}

    def _make(self, genome: Genome) -> Candidate:
        return self.space.from_genome(self.space.canonical_genome(genome))

    def _restrict(self, genome: Genome, elastic: frozenset[str]) -> Genome:
        return {g.name: genome[g.name] if dimension_of(g.name) in elastic else self._largest[g.name] for g in self.genes}

    def space_for(self, limit: CompressionLimit | dict | None) -> MobileNetSpace:
        """The space whose sampler a ``limit`` phase draws from (cached per limit)."""
        if limit is None:
            return self.space
        limit = CompressionLimit.from_config(limit)
        if limit not in self._restricted:
            self._restricted[limit] = restrict_space(self.space, limit)
        return self._restricted[limit]

    def largest(self) -> Candidate:
        """The biggest architecture, dense and float (the distillation teacher)."""
        return self._make(self._largest)

    def smallest(self, elastic: Iterable[str] = DIMENSIONS, limit: CompressionLimit | dict | None = None) -> Candidate:
        """The smallest architecture, with every compression gene at its harshest choice (within
        ``limit``) when ``compression`` is elastic."""
        dims = check_dimensions(elastic)
        genome = dict(self._smallest_arch)
        for g in self.space_for(limit).genes():
            if g.name.startswith("comp:"):
                genome[g.name] = most_compressed(g.choices)
        return self._make(self._restrict(genome, dims))

    def sample(self, rng: np.random.Generator, elastic: Iterable[str] = DIMENSIONS,
               limit: CompressionLimit | dict | None = None) -> Candidate:
        """A random candidate as the space's sampler draws it (within ``limit``), frozen
        dimensions at the largest network's values."""
        dims = check_dimensions(elastic)
        drawn = self.space_for(limit).sample(rng)
        if dims == frozenset(DIMENSIONS):
            return drawn
        genome = self.space.to_genome(drawn)
        out: Genome = {}
        for g in self.genes:
            if dimension_of(g.name) not in dims:
                out[g.name] = self._largest[g.name]
            elif g.is_active(genome) or not g.is_active(out):
                out[g.name] = genome[g.name]
            else:  # active only because a frozen dimension grew the network
                out[g.name] = g.choices[rng.integers(len(g.choices))]
        return self._make(out)

    def lower_end(self, rng: np.random.Generator, elastic: Iterable[str] = DIMENSIONS, limit: CompressionLimit | dict | None = None,
                  mode: str = "sampled") -> Candidate | None:
        """The lower end of the sandwich: the smallest architecture with a plan drawn like
        `sample`'s (``sampled``), or at its harshest (``harshest``); None for ``none``."""
        if mode not in LOWER_ENDS:
            raise ValueError(f"lower_end: {mode!r} not allowed; allowed: {', '.join(LOWER_ENDS)}")
        if mode == "none":
            return None
        dims = check_dimensions(elastic)
        if mode == "harshest":
            return self.smallest(dims, limit)
        genome = self.space.to_genome(self.sample(rng, dims, limit))
        for g in self.genes:
            dim = dimension_of(g.name)
            if dim != "compression":
                genome[g.name] = self._smallest_arch[g.name] if dim in dims else self._largest[g.name]
        return self._make(genome)

    def sandwich(self, rng: np.random.Generator, n_random: int, elastic: Iterable[str] = DIMENSIONS,
                 limit: CompressionLimit | dict | None = None, lower_end: str = "sampled", n_dense: int = 0) -> list[Candidate]:
        """One training step's candidates: the largest (teacher), the lower end, ``n_random``
        random ones, then ``n_dense`` random architectures dense and float."""
        low = self.lower_end(rng, elastic, limit, lower_end)
        arch = tuple(d for d in check_dimensions(elastic) if d != "compression")
        return [self.largest(), *([low] if low is not None else []), *(self.sample(rng, elastic, limit) for _ in range(int(n_random))),
                *(self.sample(rng, arch) for _ in range(int(n_dense)))]


def with_compression(space: MobileNetSpace, candidate: Candidate, pattern: str, sparsity: float, w_bits: int, a_bits: int) -> Candidate:
    """``candidate`` with every slot compressed the same way where the slot allows it.

    A slot that cannot carry ``pattern`` (depthwise layers and N:M, the classifier and channel
    pruning, ...) keeps the same bit-widths, dense; N:M patterns take their own ratio. Raises
    ValueError when the bit-widths are not on the space's menu or a slot has no such choice."""
    if w_bits not in space.menu.w_bits or a_bits not in space.menu.a_bits:
        raise ValueError(f"with_compression: w{w_bits}a{a_bits} not on the menu; allowed: w_bits {space.menu.w_bits}, a_bits {space.menu.a_bits}")
    genome = space.to_genome(space.validate(candidate))
    for gene in space.genes():
        if not gene.name.startswith("comp:"):
            continue
        bits = [c for c in gene.choices if c.w_bits == w_bits and c.a_bits == a_bits]
        exact = [c for c in bits if c.pattern == pattern and (abs(c.sparsity - sparsity) < 1e-9 or c.pattern.startswith("nm"))]
        dense = [c for c in bits if c.pattern == "dense"]
        if not (exact or dense):
            raise ValueError(f"with_compression: slot {gene.name!r} offers neither {pattern} nor dense at w{w_bits}a{a_bits}")
        genome[gene.name] = (exact or dense)[0]
    return space.from_genome(space.canonical_genome(genome))


#: The uniform plans a hand-made network would ship with: (name, pattern, sparsity, w_bits, a_bits).
REFERENCE_PLANS = (("dense", "dense", 0.0, 32, 32), ("int8", "dense", 0.0, 8, 8), ("channel50 int8", "channel", 0.5, 8, 8))


def middle(space: MobileNetSpace, candidate: Candidate) -> Candidate:
    """``candidate`` with each architecture gene at the middle of its menu (compression kept)."""
    genome = space.to_genome(space.validate(candidate))
    for gene in space.genes():
        if not gene.name.startswith("comp:") and len(gene.choices) > 1:
            genome[gene.name] = gene.choices[len(gene.choices) // 2]
    return space.from_genome(space.canonical_genome(genome))


def reference_models(space: MobileNetSpace, plans: Iterable[tuple[str, str, float, int, int]] = REFERENCE_PLANS) -> dict[str, Candidate]:
    """What an engineer would try by hand: the smallest, middle and largest architecture, each
    with every one of ``plans`` applied uniformly (`with_compression`), named ``"<arch> <plan>"``.
    A plan the space's menu cannot carry (bits off the menu, no choice left for a slot) is left out."""
    largest = space.largest()
    archs = {"smallest": space.smallest(), "middle": middle(space, largest), "largest": largest}
    out: dict[str, Candidate] = {}
    for arch, base in archs.items():
        for name, pattern, sparsity, w_bits, a_bits in plans:
            try:
                out[f"{arch} {name}"] = with_compression(space, base, pattern, sparsity, w_bits, a_bits)
            except ValueError:
                continue
    return out
