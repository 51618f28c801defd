"""Candidates a supernet trains on: the two ends of the sandwich and random ones from a sub-space.

Progressive shrinking (Cai et al., "Once-for-All", ICLR 2020) first trains the largest network,
then lets one dimension after another vary. Here a *dimension* is a family of genes of the
`mobilenet` space -- ``resolution``, ``width``, ``depth``, ``kernel``, ``expand`` and
``compression`` (every per-layer sparsity pattern/ratio and bit-width). A frozen dimension takes
the value of the largest network (compression: dense float).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ..base import Genome
from ..candidate import Candidate
from ..mobilenet import MobileNetSpace

#: The gene families a sampler may vary.
DIMENSIONS = ("resolution", "width", "depth", "kernel", "expand", "compression")


def dimension_of(gene: str) -> str:
    """The dimension of a `mobilenet` gene name (``s1.b2.ratio`` -> ``expand``)."""
    if gene.startswith("comp:"):
        return "compression"
    if gene in ("resolution", "width"):
        return gene
    tail = gene.rsplit(".", 1)[-1]
    return {"depth": "depth", "kernel": "kernel", "ratio": "expand"}[tail]


def check_dimensions(elastic: Iterable[str], where: str = "elastic") -> frozenset[str]:
    dims = frozenset(elastic)
    bad = sorted(dims - set(DIMENSIONS))
    if bad:
        raise ValueError(f"{where}: unknown dimensions {bad}; allowed: {', '.join(DIMENSIONS)}")
    return dims


def most_compressed(slot_options: tuple) -> object:
    """The harshest choice of a slot: fewest weight bits, then fewest activation bits, then the
    highest sparsity (first such option in menu order, i.e. unstructured before structured)."""
    return min(slot_options, key=lambda c: (c.w_bits, c.a_bits, -c.sparsity))


class CandidateSampler:
    """Largest, smallest and random candidates of a space, restricted to ``elastic`` dimensions.

    Random values are drawn for *every* gene (active or not) before the frozen dimensions are
    overwritten and inactive genes reset, so freezing depth still samples the kernels of the
    deepest blocks, and a given ``rng`` state always gives the same candidate."""

    def __init__(self, space: MobileNetSpace) -> None:
        if not isinstance(space, MobileNetSpace):
            raise ValueError(f"CandidateSampler: space {getattr(space, 'name', space)!r} is not a mobilenet space")
        self.space = space
        self.genes = space.genes()
        self._largest = space.to_genome(space.largest())
        self._smallest_arch = space.to_genome(space.smallest())

    def _make(self, genome: Genome) -> Candidate:
        return self.space.from_genome(self.space.canonical_genome(genome))

    def _restrict(self, genome: Genome, elastic: frozenset[str]) -> Genome:
        return {g.name: genome[g.name] if dimension_of(g.name) in elastic else self._largest[g.name] for g in self.genes}

    def largest(self) -> Candidate:
        """The biggest architecture, dense and float (the distillation teacher)."""
        return self._make(self._largest)

    def smallest(self, elastic: Iterable[str] = DIMENSIONS) -> Candidate:
        """The smallest architecture, with every slot at its harshest compression when
        ``compression`` is elastic (the lower end of the sandwich)."""
        dims = check_dimensions(elastic)
        genome = dict(self._smallest_arch)
        for g in self.genes:
            if g.name.startswith("comp:"):
                genome[g.name] = most_compressed(g.choices)
        return self._make(self._restrict(genome, dims))

    def sample(self, rng: np.random.Generator, elastic: Iterable[str] = DIMENSIONS) -> Candidate:
        """A uniformly random candidate of the sub-space where only ``elastic`` dimensions vary."""
        dims = check_dimensions(elastic)
        picks = rng.integers(0, np.iinfo(np.int64).max, size=len(self.genes))
        genome = {g.name: g.choices[int(p) % len(g.choices)] for g, p in zip(self.genes, picks)}
        return self._make(self._restrict(genome, dims))


def with_compression(space: MobileNetSpace, candidate: Candidate, pattern: str, sparsity: float, w_bits: int, a_bits: int) -> Candidate:
    """``candidate`` with every slot compressed the same way where the slot allows it.

    A slot that cannot carry ``pattern`` (depthwise layers and N:M, the classifier and channel
    pruning, ...) keeps the same bit-widths, dense; N:M patterns take their own ratio. Raises
    ValueError when the bit-widths are not on the space's menu."""
    if w_bits not in space.menu.w_bits or a_bits not in space.menu.a_bits:
        raise ValueError(f"with_compression: w{w_bits}a{a_bits} not on the menu; allowed: w_bits {space.menu.w_bits}, a_bits {space.menu.a_bits}")
    genome = space.to_genome(space.validate(candidate))
    for gene in space.genes():
        if not gene.name.startswith("comp:"):
            continue
        bits = [c for c in gene.choices if c.w_bits == w_bits and c.a_bits == a_bits]
        exact = [c for c in bits if c.pattern == pattern and (abs(c.sparsity - sparsity) < 1e-9 or c.pattern.startswith("nm"))]
        dense = [c for c in bits if c.pattern == "dense"]
        genome[gene.name] = (exact or dense)[0]
    return space.from_genome(space.canonical_genome(genome))
