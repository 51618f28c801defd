"""Evaluators by kind, so job files can declare them as data::

    evaluators:
      - {kind: nb201-accuracy, dataset: cifar100, metric: accuracy}
      - {kind: latency, target: nb201-table, column: help_pixel3, metric: latency}

``latency`` takes the evaluator's own options (``metric``, ``cheap``), the target name
(``target``), and passes every other option -- or an explicit ``target_options`` mapping -- to
`tritune.targets.create_target`.

More kinds come from `register_evaluator` in the user's own Python or from an installed package's
entry point in the group ``tritune.evaluators``. Options are checked against the factory's
signature and type hints (`tritune.spaces.plugins.check_options`) before anything is built.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from ..spaces.plugins import Registry
from ..targets.base import Target
from ..targets.registry import create_target, list_targets
from .base import Evaluator
from .tabular import TabularAccuracy, TargetLatency

ENTRY_POINT_GROUP = "tritune.evaluators"
EVALUATORS: Registry[Callable[..., Evaluator]] = Registry("evaluator", ENTRY_POINT_GROUP, field="evaluator kind")


def register_evaluator(kind: str, factory: Callable[..., Evaluator] | None = None, description: str = "", *,
                       loader: Callable[[], Callable[..., Evaluator]] | None = None) -> None:
    """Add an evaluator kind: ``factory`` (a class or a function taking keyword options), or a
    ``loader`` returning it on first use (torch is imported only by jobs that need it)."""
    EVALUATORS.register(kind, factory, description, loader=loader)


def list_evaluators() -> dict[str, str]:
    """Registered and plug-in kinds -> one-line description (nothing is imported)."""
    return EVALUATORS.describe()


def check_evaluator_options(kind: str, options: Mapping[str, Any]) -> None:
    """Raise ValueError naming an unknown kind, an unknown option or a value of the wrong type."""
    EVALUATORS.check(kind, options)


def create_evaluator(kind: str, /, **options: Any) -> Evaluator:
    """Build an evaluator; unknown kinds and bad options raise ValueError naming them."""
    return EVALUATORS.create(kind, **options)


def latency_target_options(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The target options of a job's ``latency`` evaluator entry: its ``target_options`` and the
    options given inline beside the evaluator's own (kind, target, metric, cheap)."""
    inline = {k: v for k, v in spec.items() if k not in ("kind", "target", "metric", "cheap", "target_options")}
    return {**dict(spec.get("target_options") or {}), **inline}


def _latency(target: str | Target | None = None, metric: str = "latency", cheap: bool = True,
             target_options: Mapping[str, Any] | None = None, **more: Any) -> TargetLatency:
    if target is None:
        raise ValueError(f"evaluator latency: option 'target' is required; allowed targets: {', '.join(list_targets())}")
    opts = dict(target_options or {})
    clash = sorted(set(opts) & set(more))
    if clash:
        raise ValueError(f"evaluator latency: options {clash} given both inline and in target_options")
    opts.update(more)
    if isinstance(target, str):
        try:
            built = create_target(target, **opts)
        except ValueError as exc:
            raise ValueError(f"evaluator latency: {exc} (the evaluator's own options: target, metric, cheap, target_options)") from None
    else:
        if opts:
            raise ValueError(f"evaluator latency: target options {sorted(opts)} need a target name, not a built target")
        built = target
    return TargetLatency(built, metric=metric, cheap=cheap)


def _supernet_accuracy() -> Callable[..., Evaluator]:
    from .supernet_accuracy import SupernetAccuracy

    return SupernetAccuracy


def _supernet_finetune() -> Callable[..., Evaluator]:
    from .supernet_accuracy import FinetuneAccuracy

    return FinetuneAccuracy


def _predicted_accuracy() -> Callable[..., Evaluator]:
    from .predicted import PredictedMetric

    return PredictedMetric


register_evaluator("nb201-accuracy", TabularAccuracy, "NAS-Bench-201 test accuracy from the NATS-Bench table (costly query)")
register_evaluator("latency", _latency, "latency (ms) of a hardware target: target: NAME plus the target's options (cheap)")
register_evaluator("supernet-accuracy", loader=_supernet_accuracy,
                   description="accuracy (%) with weights inherited from a supernet checkpoint + BN recalibration (costly)")
register_evaluator("supernet-finetune", loader=_supernet_finetune,
                   description="accuracy (%) after a short fine-tune from supernet weights, compression kept (costly)")
register_evaluator("predicted-accuracy", loader=_predicted_accuracy,
                   description="accuracy from a saved accuracy predictor file: path: FILE (cheap)")
register_evaluator("sensitivity", loader=lambda: __import__(f"{__package__}.sensitivity", fromlist=["SensitivityDrop"]).SensitivityDrop,
                   description="estimated accuracy drop (points) of a plan from the supernet checkpoint's sensitivity table (cheap)")
