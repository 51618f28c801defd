"""`SearchSpace`: the operations every space offers, written once over a list of genes.

A space describes itself as an ordered list of categorical `Gene`s, some active only when earlier
genes allow it (a block exists only if the stage is deep enough). From that one description the
base class derives sampling, mutation, crossover, validation, numeric encoding, Optuna's
define-by-run suggestion and enumeration, so every space behaves the same way and a new space is
a gene list plus the two mappings genome <-> candidate and the layer IR.
"""
from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from .candidate import Candidate
from .compression import PATTERN_FAMILIES, LayerCompression, parse_pattern
from .layers import LayerSpec

if TYPE_CHECKING:  # pragma: no cover
    from .weight_sharing import Supernet

Genome = dict[str, Any]


@dataclass(frozen=True)
class Gene:
    """One categorical decision. ``active(genome)`` says whether it matters given earlier genes."""

    name: str
    choices: tuple
    default: Any = None
    active: Callable[[Genome], bool] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.choices:
            raise ValueError(f"gene {self.name}: no choices")
        if self.default is None:
            object.__setattr__(self, "default", self.choices[0])

    @cached_property
    def choice_set(self) -> frozenset:
        """For O(1) membership checks (compression genes have ~100 choices)."""
        return frozenset(self.choices)

    def is_active(self, genome: Genome) -> bool:
        return self.active is None or bool(self.active(genome))

    # Optuna categorical parameters must be plain scalars, so compression choices travel as tokens.
    def to_param(self, value: Any) -> Any:
        return value.token if isinstance(value, LayerCompression) else value

    def from_param(self, param: Any) -> Any:
        return LayerCompression.from_token(param) if isinstance(self.choices[0], LayerCompression) else param

    @property
    def params(self) -> tuple:
        return tuple(self.to_param(c) for c in self.choices)

    # ----- numeric encoding ------------------------------------------------------------------
    @property
    def width(self) -> int:
        first = self.choices[0]
        if isinstance(first, LayerCompression):
            return len(PATTERN_FAMILIES) + 3
        if isinstance(first, str):
            return len(self.choices)
        return 1

    def encode(self, value: Any) -> list[float]:
        """Ordinal genes scale to [0, 1]; categorical ones are one-hot; compression choices become
        (pattern family one-hot, sparsity, weight bits / 32, activation bits / 32)."""
        if isinstance(value, LayerCompression):
            family = parse_pattern(value.pattern).family
            onehot = [1.0 if f == family else 0.0 for f in PATTERN_FAMILIES]
            return onehot + [value.sparsity, value.w_bits / 32.0, value.a_bits / 32.0]
        if isinstance(value, str):
            return [1.0 if c == value else 0.0 for c in self.choices]
        lo, hi = min(self.choices), max(self.choices)
        return [0.0 if hi == lo else (float(value) - lo) / (hi - lo)]


class SearchSpace(ABC):
    """Base of all spaces. Subclasses define `genes`, `to_genome`, `from_genome`, `layers`."""

    #: Registry name, also stored in every candidate of the space.
    name: str = ""

    # ----- what a subclass defines -------------------------------------------------------------
    @abstractmethod
    def genes(self) -> list[Gene]:
        """The ordered decisions; a gene's ``active`` may only read genes listed before it."""

    @abstractmethod
    def to_genome(self, candidate: Candidate) -> Genome:
        """Flatten a candidate to gene name -> value."""

    @abstractmethod
    def from_genome(self, genome: Genome) -> Candidate:
        """Build a candidate from a complete genome (callers canonicalise first)."""

    @abstractmethod
    def layers(self, candidate: Candidate) -> list[LayerSpec]:
        """Expand a candidate to the layer IR."""

    @abstractmethod
    def config(self) -> dict:
        """The arguments that rebuild this space (`tritune.spaces.create(name, **config)`)."""

    # ----- optional: a network builder ---------------------------------------------------------
    def network(self, candidate: Candidate, seed: int = 0) -> Any:
        """The candidate as an eval-mode ``torch.nn.Module`` with seeded random weights and its
        compression applied, whose module paths are its IR layer names (layer ``s0.b1.expand``
        is ``net.s0.b1.expand``, so ONNX node names map back to layers): what targets that run
        real networks build (``ort-cpu``). Spaces without one raise NotImplementedError."""
        raise NotImplementedError(f"space {self.name}: no network builder; define network() and input_shape()")

    def input_shape(self, candidate: Candidate, batch: int = 1) -> tuple[int, ...]:
        """The shape of one input batch of the candidate's network (with `network`)."""
        raise NotImplementedError(f"space {self.name}: no network builder; define network() and input_shape()")

    @property
    def builds_networks(self) -> bool:
        """Whether this space defines `network`."""
        return type(self).network is not SearchSpace.network

    # ----- optional: a weight-sharing supernet -------------------------------------------------
    def supernet(self, config: Mapping[str, Any] | None = None) -> "Supernet":
        """A fresh weight-sharing supernet over this space's candidates, seeded by ``config``
        (the supernet's own settings, as a checkpoint stores them): what `tritune supernet train`,
        the supernet evaluators and checkpoints build (`tritune.spaces.weight_sharing.Supernet`).
        Spaces without one raise ValueError."""
        raise ValueError(f"space {self.name!r} has no weight-sharing supernet; define supernet() (see docs/extending.md)")

    @property
    def builds_supernets(self) -> bool:
        """Whether this space defines `supernet`."""
        return type(self).supernet is not SearchSpace.supernet

    # ----- optional: fine-tuning one candidate alone --------------------------------------------
    def trainable_network(self, candidate: Candidate, **options: Any) -> Any:
        """The candidate's `tritune.spaces.trainable.TrainableNetwork` with seeded default
        weights; ``options``: the network's own ``options()``. A space that defines it also has a
        supernet with ``trainable(candidate)``: the same network holding the supernet's weights.
        Spaces without one raise ValueError."""
        raise ValueError(f"space {self.name!r} cannot fine-tune its candidates; define trainable_network() (see docs/extending.md)")

    @property
    def fine_tunes(self) -> bool:
        """Whether this space defines `trainable_network` (the staged pipeline's fine-tuning stage)."""
        return type(self).trainable_network is not SearchSpace.trainable_network

    # ----- derived operations ------------------------------------------------------------------
    @property
    def _genes(self) -> list[Gene]:
        cached = self.__dict__.get("_gene_cache")
        if cached is None:
            cached = self.genes()
            names = [g.name for g in cached]
            if len(set(names)) != len(names):
                raise ValueError(f"space {self.name}: duplicate gene names")
            self.__dict__["_gene_cache"] = cached
        return cached

    def canonical_genome(self, genome: Genome) -> Genome:
        """Reset inactive genes to their defaults so equal networks have equal genomes."""
        out: Genome = {}
        for gene in self._genes:
            out[gene.name] = genome[gene.name] if gene.is_active(out) else gene.default
        return out

    def _make(self, genome: Genome) -> Candidate:
        return self.from_genome(self.canonical_genome(genome))

    def sample(self, rng: np.random.Generator) -> Candidate:
        """A uniformly random choice for every active gene (in gene order)."""
        genome: Genome = {}
        for gene in self._genes:
            genome[gene.name] = gene.choices[rng.integers(len(gene.choices))] if gene.is_active(genome) else gene.default
        return self.from_genome(genome)

    def mutate(self, candidate: Candidate, rng: np.random.Generator, rate: float | None = None) -> Candidate:
        """Resample each active gene with probability ``rate`` (default 1 / #active genes, at least
        one gene changes). Genes that become active get fresh random values, not stale defaults."""
        old = self.to_genome(candidate)
        active = [g for g in self._genes if g.is_active(old)]
        p = rate if rate is not None else 1.0 / max(1, len(active))
        flips = {g.name for g in active if len(g.choices) > 1 and rng.random() < p}
        mutable = [g for g in active if len(g.choices) > 1]
        if not flips and mutable:
            flips = {mutable[rng.integers(len(mutable))].name}
        new: Genome = {}
        for gene in self._genes:
            if not gene.is_active(new):
                new[gene.name] = gene.default
            elif gene.name in flips:
                others = [c for c in gene.choices if c != old[gene.name]]
                new[gene.name] = others[rng.integers(len(others))]
            elif not gene.is_active(old):
                new[gene.name] = gene.choices[rng.integers(len(gene.choices))]
            else:
                new[gene.name] = old[gene.name]
        return self.from_genome(new)

    def crossover(self, a: Candidate, b: Candidate, rng: np.random.Generator) -> Candidate:
        """Uniform crossover gene by gene; a gene inactive in the chosen parent comes from the other."""
        ga, gb = self.to_genome(a), self.to_genome(b)
        child: Genome = {}
        for gene in self._genes:
            if not gene.is_active(child):
                child[gene.name] = gene.default
                continue
            first, second = (ga, gb) if rng.random() < 0.5 else (gb, ga)
            child[gene.name] = first[gene.name] if gene.is_active(first) else second[gene.name]
        return self.from_genome(child)

    def validate(self, candidate: Candidate) -> Candidate:
        """Check every value against its choices; returns the canonical candidate.

        Raises ValueError naming the field and the allowed values.
        """
        if not isinstance(candidate, Candidate):
            raise ValueError(f"candidate: expected a Candidate, got {type(candidate).__name__}")
        if candidate.space != self.name:
            raise ValueError(f"candidate.space: {candidate.space!r} does not match this space; allowed: {self.name!r}")
        genome = self.to_genome(candidate)
        for gene in self._genes:
            value = genome.get(gene.name)
            if value not in gene.choice_set:
                allowed = ", ".join(str(gene.to_param(c)) for c in gene.choices[:12])
                more = f" (and {len(gene.choices) - 12} more)" if len(gene.choices) > 12 else ""
                shown = gene.to_param(value) if isinstance(value, LayerCompression) else value
                raise ValueError(f"candidate {gene.name}: {shown!r} not allowed; allowed: {allowed}{more}")
        canonical = self.canonical_genome(genome)
        return candidate if canonical == genome else self.from_genome(canonical)

    def suggest(self, trial: Any) -> Candidate:
        """Define-by-run for Optuna: only active genes become trial parameters."""
        genome: Genome = {}
        for gene in self._genes:
            if gene.is_active(genome):
                genome[gene.name] = gene.from_param(trial.suggest_categorical(gene.name, gene.params))
            else:
                genome[gene.name] = gene.default
        return self.from_genome(genome)

    def params(self, candidate: Candidate) -> dict[str, Any]:
        """The Optuna parameters (active genes) that `suggest` would have produced for a candidate."""
        genome = self.to_genome(candidate)
        out: Genome = {}
        for gene in self._genes:
            if gene.is_active(genome):
                out[gene.name] = gene.to_param(genome[gene.name])
        return out

    def distributions(self, candidate: Candidate) -> dict[str, Any]:
        """Optuna distributions of `params(candidate)` (to enqueue or add foreign trials)."""
        from optuna.distributions import CategoricalDistribution

        genome = self.to_genome(candidate)
        return {g.name: CategoricalDistribution(g.params) for g in self._genes if g.is_active(genome)}

    @property
    def encoding_length(self) -> int:
        return sum(g.width for g in self._genes)

    def encode(self, candidate: Candidate) -> np.ndarray:
        """Fixed-length float vector (same length for every candidate of this space)."""
        genome = self.to_genome(candidate)
        out: list[float] = []
        for gene in self._genes:
            out.extend(gene.encode(genome[gene.name]))
        return np.asarray(out, dtype=np.float64)

    def encode_batch(self, candidates: Sequence[Candidate]) -> np.ndarray:
        if not candidates:
            return np.zeros((0, self.encoding_length))
        return np.stack([self.encode(c) for c in candidates])

    # ----- size and enumeration ----------------------------------------------------------------
    def size(self) -> int:
        """Number of distinct candidates. Exact; subclasses with conditional genes override."""
        if any(g.active is not None for g in self._genes):
            raise NotImplementedError(f"space {self.name}: conditional genes need an exact size() override")
        return math.prod(len(g.choices) for g in self._genes)

    def log10_size(self) -> float:
        return math.log10(self.size())

    def enumerate(self, limit: int = 10_000_000) -> Iterator[Candidate]:
        """Every candidate, once each. Refuses spaces larger than ``limit``."""
        total = self.size()
        if total > limit:
            raise ValueError(f"space {self.name}: {total:.3g} candidates exceed the enumeration limit {limit}")
        if any(g.active is not None for g in self._genes):
            yield from self._enumerate_conditional()
            return
        for values in itertools.product(*(g.choices for g in self._genes)):
            yield self.from_genome(dict(zip((g.name for g in self._genes), values)))

    def _enumerate_conditional(self) -> Iterator[Candidate]:
        def walk(i: int, genome: Genome) -> Iterator[Genome]:
            if i == len(self._genes):
                yield dict(genome)
                return
            gene = self._genes[i]
            values = gene.choices if gene.is_active(genome) else (gene.default,)
            for v in values:
                genome[gene.name] = v
                yield from walk(i + 1, genome)
            genome.pop(gene.name, None)

        for genome in walk(0, {}):
            yield self.from_genome(genome)

    def describe(self) -> dict:
        """A summary for people (`tritune spaces show`)."""
        return {
            "name": self.name,
            "config": self.config(),
            "genes": len(self._genes),
            "encoding_length": self.encoding_length,
            "log10_size": round(self.log10_size(), 2),
        }
