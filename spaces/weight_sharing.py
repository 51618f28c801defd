"""What a family's weight-sharing supernet provides, so the trainer, the evaluators and the CLI name no family.

A space with a supernet overrides `SearchSpace.supernet(config)` and returns a ``torch.nn.Module``
that also has the members below. `tritune supernet train`, the staged pipeline's supernet stage,
`tritune.evaluators.supernet_training.train_supernet`, the ``supernet-accuracy`` evaluator and
the checkpoint files (`tritune.spaces.checkpoint`) use nothing else. The mobilenet family's
`MobileNetSupernet` is one; `docs/extending.md` builds another for a plug-in space.

A supernet whose candidates can be exported (`tritune export`, the pipeline's front stage) also
has ``extract(candidate, batches)``: the candidate's standalone network with the weights to ship,
a `DeployableNetwork`.

This module imports nothing but the space core (no torch): it states a contract.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ContextManager, Iterable, Iterator, Protocol, runtime_checkable

from .candidate import Candidate

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .compression import CompressionLimit
    from .base import SearchSpace

__all__ = ["ARCHITECTURE", "DIMENSIONS", "LOWER_ENDS", "CandidateSampler", "DeployableNetwork", "Supernet", "check_dimensions"]

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


@runtime_checkable
class DeployableNetwork(Protocol):
    """A candidate's standalone network with the weights to ship: what a supernet's ``extract``
    returns and what an export reads; an ``nn.Module`` with these members.

    ``layers``: its IR, whose names are the module paths of the layers (so a runtime's nodes map
    back to them); ``input_size``: the height and width of its input (images are fitted with
    `tritune.spaces.images.fit_input`). Calling it gives the logits the search scored."""

    layers: list

    @property
    def input_size(self) -> int:
        ...

    def __call__(self, x: Any) -> Any:
        ...

    def float_network(self) -> Any:
        """The same network with its deployed float weights (masks applied, quantized weights
        dequantized) and no fake quantizers: what is exported before a runtime quantizes it."""
        ...

    def deployed_weights(self) -> dict[str, Any]:
        """Per weight layer, the float weight it computes with."""
        ...

    def pattern_masks(self) -> dict[str, Any]:
        """Per layer with a sparsity mask, the mask (layers without one are absent)."""
        ...

    def quantization(self) -> dict[str, Any]:
        """Per layer a runtime runs in int8, the `tritune.kernels.quant.LayerQuantization` to keep
        (the search's own weight scales and input range); layers absent are calibrated by the runtime."""
        ...

