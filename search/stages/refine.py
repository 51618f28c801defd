"""Stage 3, refinement: per-layer ratios and bits of one finalist, architecture and patterns fixed.

The joint search picks an architecture and a pattern per layer; how much each layer is pruned and
how many bits it keeps is then a smaller, smoother problem around that finalist (the
pruning-ratio search of the compiler-aware NAS line, extended with bits). `RefineStrategy` is an
aging-evolution search whose only moves change the sparsity or bit-widths of compression genes,
keeping each gene's pattern, so every proposal shares the finalist's architecture and patterns.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...evaluators.problem import Problem
from ...spaces import Candidate, SearchSpace
from ...spaces.compression import LayerCompression
from ..strategies._common import check_int
from ..strategies.base import Oracle
from ..strategies.evolution import RegularizedEvolution


class RefineStrategy(RegularizedEvolution):
    """Aging evolution around ``base`` whose moves change only compression ratios and bits.

    The first proposal is ``base`` itself (its score is the yardstick), the rest of the first
    ``population`` are random moves from it, and every later one mutates a tournament winner. A
    move changes one to ``max_changes`` compression genes, each to another choice of the same
    pattern; ``sensitivity`` (gene name -> choice token -> expected accuracy drop, optional)
    makes the choices that cost little accuracy more likely."""

    name = "refine"

    def __init__(self, space: SearchSpace, problem: Problem, seed: int = 0, oracle: Oracle | None = None, *,
                 base: Candidate, population: int = 8, sample_size: int = 3, max_changes: int = 3,
                 sensitivity: dict[str, dict[str, float]] | None = None) -> None:
        super().__init__(space, problem, seed, oracle, population=population, sample_size=sample_size)
        self.base = space.validate(base)
        self.max_changes = check_int(self.name, "max_changes", max_changes, 1)
        self.sensitivity = sensitivity or {}
        genome = space.to_genome(self.base)
        self._moves: dict[str, list[Any]] = {}
        for gene in space.genes():
            value = genome[gene.name]
            if isinstance(value, LayerCompression) and gene.is_active(genome):
                options = [c for c in gene.choices if c.pattern == value.pattern]
                if len(options) > 1:
                    self._moves[gene.name] = options
        if not self._moves:
            raise ValueError(f"refine: candidate {self.base.id} has no compression gene with a choice of ratio or bits")

    @property
    def dimensions(self) -> int:
        """How many compression genes refinement may change."""
        return len(self._moves)

    def _weights(self, gene: str, options: list[LayerCompression]) -> np.ndarray:
        drops = self.sensitivity.get(gene, {})
        w = np.array([1.0 / (1.0 + max(0.0, float(drops.get(c.token, 0.0)))) for c in options])
        return w / w.sum()

    def _move(self, parent: Candidate) -> Candidate:
        genome = self.space.to_genome(parent)
        names = sorted(self._moves)
        k = int(self.rng.integers(1, min(self.max_changes, len(names)) + 1))
        for name in self.rng.choice(names, size=k, replace=False):
            options = self._moves[str(name)]
            genome[str(name)] = options[int(self.rng.choice(len(options), p=self._weights(str(name), options)))]
        return self.space.from_genome(self.space.canonical_genome(genome))

    def _propose(self) -> Candidate:
        if self._asked == 0:
            self._asked += 1
            return self.base
        return super()._propose()

    def _child(self) -> Candidate:
        return self._move(self._tournament())

    def sample_feasible(self, max_tries: int = 1000) -> Candidate:
        """Random moves from the finalist, not random samples of the whole space."""
        candidate = self._move(self.base)
        for _ in range(max_tries - 1):
            if self.passes_screen(candidate):
                return candidate
            candidate = self._move(self.base)
        return candidate


def sensitivity_weights(space: SearchSpace, checkpoint: Any) -> dict[str, dict[str, float]] | None:
    """Gene name -> choice token -> measured accuracy drop, from the sensitivity table in the
    supernet checkpoint (None when it holds none, or one measured on other ties)."""
    from ...evaluators.sensitivity import load_sensitivity

    table = load_sensitivity(checkpoint)
    if table is None:
        return None
    try:
        table.check_space(space)
    except ValueError:
        return None
    default = space.menu.default()
    return {g.name: {c.token: table.drop(g.name[5:], c, default) for c in g.choices}
            for g in space.genes() if g.name.startswith("comp:")}


def refine_finalist(job: Any, pipeline: Any, base: Candidate, index: int, settings: Any, run_dir: Any, *,
                    space: SearchSpace | None = None, sensitivity: dict[str, dict[str, float]] | None = None,
                    progress: bool = True) -> list[Any]:
    """Refine one finalist in its own store ``RUN_DIR/refine/<candidate id>/trials.db``;
    returns its finished trials. Resumable like any search (same seed, same proposals).
    ``space``: the menu the moves draw from (default: the job's space)."""
    from pathlib import Path

    from tqdm.auto import tqdm

    from ..driver import SearchDriver
    from ..run import run_driver
    from ..store import TrialStore

    space, problem = space if space is not None else job.build_space(), job.problem()
    folder = Path(run_dir) / "refine" / base.id
    folder.mkdir(parents=True, exist_ok=True)
    strategy = RefineStrategy(space, problem, seed=job.seed + 1 + index, oracle=pipeline.oracle, base=base,
                              population=settings.population, sample_size=min(3, settings.population), sensitivity=sensitivity)
    bar = tqdm(total=settings.evaluations, desc=f"refine {base.id}", unit="eval", disable=not progress, leave=False)
    with TrialStore(folder / "trials.db") as store:
        if store.get_meta("base") not in (None, base.id):
            raise ValueError(f"{str(folder)!r}: holds the refinement of {store.get_meta('base')}, not {base.id}")
        store.set_meta("base", base.id)

        def on_record(record: Any, replayed: bool) -> None:
            pipeline.learn_cheap(record.candidate.id, record.metrics)
            if record.status == "complete":
                bar.update(1)

        driver = SearchDriver(strategy, store, settings.evaluations, settings.batch_size, on_record=on_record)
        try:
            run_driver(driver, job, folder, pipeline)
        finally:
            bar.close()
        return [r for r in store.all() if r.status != "running"]

