"""What a job's ``stages:`` section asks of the staged pipeline, validated as data.

::

    stages:
      supernet: {steps: 1500}                 # train the job's supernet (or load a matching one)
      search: {max_drop: 5}                    # the joint search, off the choices that alone cost > 5 points
                                               # and those the latency target runs no faster
      refine: {finalists: 3, evaluations: 12}  # ratios and bits of the best joint-search results
      finetune: {top_k: 4, epochs: 2}          # the best refined models, compression kept
      front: {}                                # fine-tuned accuracy x measured latency, exported

Every section is optional. A missing section means the defaults below; ``false`` skips the
stage (``refine: false``), except the joint search (stage 2, the job's own strategy and
budget), which always runs.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from ...spaces.plugins import check_options

STAGE_NAMES = ("supernet", "search", "refine", "finetune", "front")


def _positive(value: float, where: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{where}: {value!r} not allowed; expected a positive number")


@dataclass(frozen=True)
class SupernetStage:
    """Train the supernet the job's ``supernet-accuracy`` evaluator names, or load it when the
    checkpoint there was trained for this job's space and these settings. ``train``: the fields
    of `tritune.evaluators.supernet_training.TrainConfig`."""

    train: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SearchStage:
    """The joint search (the job's own strategy and budget). ``max_drop``: take off the menu the
    strategies sample from every compression choice that alone costs more than this many
    accuracy points in the supernet's sensitivity table (measured in stage 1), so proposals
    with a crushed layer group are not drawn at all (None: the whole menu). ``references``:
    evaluate first the networks an engineer would try by hand, for a space that names them
    (``space.reference_models()``; mobilenet: the smallest, middle and largest architecture, each
    dense, int8 and channel-50 % + int8), so the front starts from them and the search has to beat
    them; they count towards the budget. ``target_menu``: when the job's only cost is the latency
    of one target, take off the menu (here and in refinement) every choice that target runs *as*
    another choice on the menu (`tritune.targets.base.Target.runs_as`; on ``ort-cpu``: masks other
    than channel pruning, weight-only or activation-only quantization, bits below 8): such a
    choice is as slow as the lighter one and less accurate."""

    max_drop: float | None = None
    references: bool = True
    target_menu: bool = True

    def __post_init__(self) -> None:
        for name in ("references", "target_menu"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"job.stages.search.{name}: {getattr(self, name)!r} not allowed; expected true or false")
        if self.max_drop is not None:
            if isinstance(self.max_drop, bool) or not isinstance(self.max_drop, (int, float)) or not (math.isfinite(self.max_drop) and self.max_drop >= 0):
                raise ValueError(f"job.stages.search.max_drop: {self.max_drop!r} not allowed; expected a number of points >= 0, or null")


@dataclass(frozen=True)
class RefineStage:
    """For each of the ``finalists`` best joint-search results (spread along the front), an
    evolution over its per-layer ratios and bits, ``evaluations`` costly evaluations each."""

    finalists: int = 3
    evaluations: int = 12
    batch_size: int = 4
    population: int = 6

    def __post_init__(self) -> None:
        for name in ("finalists", "evaluations", "batch_size", "population"):
            if getattr(self, name) < 1:
                raise ValueError(f"job.stages.refine.{name}: {getattr(self, name)!r} not allowed; expected an integer >= 1")


@dataclass(frozen=True)
class FinetuneStage:
    """Fine-tune the ``top_k`` best models of the joint and refined searches from their
    inherited weights, masks kept exact and bits kept by quantization-aware training.

    Successive halving: every model trains ``epochs / eta ** (rungs - 1)`` epochs; every model on
    the front of accuracy so far against the other objectives goes on, and at least ``1 / eta``
    of them, until the last rung's survivors have trained ``epochs`` in all.
    ``method``: how each model reaches its masks (`tritune.evaluators.finetune.METHODS`);
    ``oneshot`` keeps the inherited masks and was the most accurate at equal cost.
    ``optimizer``: ``sgd`` (Nesterov momentum) or ``adamw`` (what transformers train with), with
    ``weight_decay`` on the weights. ``retime``: before picking, time the leading fronts again,
    together in fresh processes, when the job measures latency on a target
    (`tritune.search.stages.retime`)."""

    top_k: int = 4
    epochs: float = 2.0
    rungs: int = 2
    eta: int = 2
    lr: float = 0.05
    batch_size: int = 64
    method: str = "oneshot"
    optimizer: str = "sgd"
    weight_decay: float = 4e-5
    retime: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.retime, bool):
            raise ValueError(f"job.stages.finetune.retime: {self.retime!r} not allowed; allowed: true, false")
        for name in ("top_k", "rungs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"job.stages.finetune.{name}: {getattr(self, name)!r} not allowed; expected an integer >= 1")
        if self.eta < 2:
            raise ValueError(f"job.stages.finetune.eta: {self.eta!r} not allowed; expected an integer >= 2")
        _positive(float(self.epochs), "job.stages.finetune.epochs")
        _positive(float(self.lr), "job.stages.finetune.lr")
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, (int, float)) or not 0.0 <= self.weight_decay < 1.0:
            raise ValueError(f"job.stages.finetune.weight_decay: {self.weight_decay!r} not allowed; allowed: a number in [0, 1)")
        from ...evaluators.finetune import METHODS
        from ...evaluators.supernet_training import OPTIMIZERS

        if self.method not in METHODS:
            raise ValueError(f"job.stages.finetune.method: {self.method!r} not allowed; allowed: {', '.join(METHODS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"job.stages.finetune.optimizer: {self.optimizer!r} not allowed; allowed: {', '.join(OPTIMIZERS)}")

    def rung_epochs(self) -> list[float]:
        """Cumulative epochs at the end of each rung."""
        return [float(self.epochs) / self.eta ** (self.rungs - 1 - r) for r in range(self.rungs)]


@dataclass(frozen=True)
class FrontStage:
    """Measure the fine-tuned models on ``target`` (default: the target of the job's latency
    evaluator), keep the Pareto front of fine-tuned accuracy x measured latency, export it."""

    target: str = ""
    export: bool = True


_SECTIONS: dict[str, type] = {"supernet": SupernetStage, "search": SearchStage, "refine": RefineStage, "finetune": FinetuneStage, "front": FrontStage}


@dataclass(frozen=True)
class StagesConfig:
    """The parsed ``stages:`` section; a stage set to None is skipped."""

    supernet: SupernetStage | None = field(default_factory=SupernetStage)
    search: SearchStage = field(default_factory=SearchStage)
    refine: RefineStage | None = field(default_factory=RefineStage)
    finetune: FinetuneStage | None = field(default_factory=FinetuneStage)
    front: FrontStage | None = field(default_factory=FrontStage)

    @classmethod
    def from_dict(cls, data: Any, where: str = "job.stages") -> "StagesConfig":
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a mapping with any of {', '.join(_SECTIONS)}, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_SECTIONS))
        if unknown:
            raise ValueError(f"{where}: unknown stages {unknown}; allowed: {', '.join(_SECTIONS)}")
        parsed: dict[str, Any] = {}
        for name, section in _SECTIONS.items():
            value = data.get(name, {})
            if value is False:
                if name == "search":
                    raise ValueError(f"{where}.search: false not allowed; the joint search always runs (give its options, or leave it out)")
                parsed[name] = None
                continue
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ValueError(f"{where}.{name}: expected a mapping of options or false, got {type(value).__name__}")
            check_options(section, value, f"{where}.{name}")
            parsed[name] = section(**value)
        return cls(**parsed)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (False if getattr(self, f.name) is None else asdict(getattr(self, f.name))) for f in fields(self)}
