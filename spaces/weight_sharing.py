"""What a family's weight-sharing supernet provides, so the trainer, the evaluators and the CLI name no family.

A space with a supernet overrides `SearchSpace.supernet(config)` and returns a ``torch.nn.Module``
that also has the members below. `tritune supernet train`, the staged pipeline's supernet stage,
`tritune.evaluators.supernet_training.train_supernet`, the ``supernet-accuracy`` evaluator and
the checkpoint files (`tritune.spaces.checkpoint`) use nothing else. The mobilenet family's
`MobileNetSupernet` is one; `docs/extending.md` builds another for a plug-in space.

This module imports nothing but the space core (no torch): it states a contract.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ContextManager, Iterable, Iterator, Protocol, runtime_checkable

from .candidate import Candidate

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .compression import CompressionLimit
    from .base import SearchSpace

__all__ = ["ARCHITECTURE", "DIMENSIONS", "LOWER_ENDS", "CandidateSampler", "Supernet", "check_dimensions"]

#: The dimensions a training schedule's phase may free (`tritune.evaluators.supernet_training.Phase`):
#: each family maps its genes onto them; a family without some of them simply has nothing there.
DIMENSIONS = ("resolution", "width", "depth", "kernel", "expand", "compression")
#: Every dimension but compression: dense float networks of every architecture.
ARCHITECTURE = tuple(d for d in DIMENSIONS if d != "compression")
#: How the lower end of the sandwich is chosen: the smallest architecture with a sampled plan,
#: with every slot at its harshest choice, or no lower end.
LOWER_ENDS = ("sampled", "harshest", "none")


def check_dimensions(elastic: Iterable[str], where: str = "elastic") -> frozenset[str]:
    """``elastic`` as a set; ValueError naming any name outside `DIMENSIONS`."""
    dims = frozenset(elastic)
    bad = sorted(dims - set(DIMENSIONS))
    if bad:
        raise ValueError(f"{where}: unknown dimensions {bad}; allowed: {', '.join(DIMENSIONS)}")
    return dims


@runtime_checkable
class CandidateSampler(Protocol):
    """Which candidates a training step runs (the sandwich rule of once-for-all / BigNAS)."""

    def largest(self) -> Candidate:
        """The biggest network, dense and float: the distillation teacher."""
        ...

    def sandwich(self, rng: "np.random.Generator", n_random: int, elastic: Iterable[str] = DIMENSIONS,
                 limit: "CompressionLimit | None" = None, lower_end: str = "sampled", n_dense: int = 0) -> list[Candidate]:
        """One step's candidates: the teacher first (the largest network, which the others distil
        from; a family may vary it per step, as vit does its patch size), then the lower end
        (`LOWER_ENDS`), ``n_random`` random candidates and ``n_dense`` dense float ones.

        ``elastic``: the dimensions free to vary in this phase of the schedule (the others stay at
        the largest network's values); ``limit``: the harshest compression allowed in this phase."""
        ...


@runtime_checkable
class Supernet(Protocol):
    """Shared weights for every candidate of ``space``; an ``nn.Module`` with these members.

    ``config``: the supernet's own settings (the sizes come from the space), with ``to_json()``;
    checkpoints store it. ``compatible_fields``: the settings a checkpoint must agree on to load
    into this supernet (they change what the tensors mean; a seed or a cache size does not)."""

    space: "SearchSpace"
    config: Any
    compatible_fields: tuple[str, ...]
    sampler: CandidateSampler

    def __call__(self, x: Any, candidate: Candidate) -> Any:
        """Logits of ``candidate`` for the batch ``x``."""
        ...

    def plan(self, candidate: Candidate) -> Any:
        """Validate ``candidate`` for this supernet (ValueError naming the problem)."""
        ...

    def check_data(self, shape: tuple[int, ...], num_classes: int) -> None:
        """ValueError naming the problem when inputs of ``shape`` (batch first) with
        ``num_classes`` labels do not fit this supernet."""
        ...

    def weight_parameters(self) -> Iterator[Any]:
        """The weights that take weight decay (biases and normalisation do not)."""
        ...

    def masks_frozen(self) -> ContextManager[Any]:
        """Keep the current pruning masks while the weights change (fine-tuning a candidate)."""
        ...

    def recalibrate(self, candidate: Candidate, batches: Iterable[Any]) -> None:
        """Set ``candidate``'s normalisation statistics and quantizer ranges from ``batches``."""
        ...

    def clear_caches(self) -> None:
        """Forget anything derived from the weights (after they were replaced, as by a load)."""
        ...
