"""Evaluators by kind, so job files can declare them as data::

    evaluators:
      - {kind: nb201-accuracy, dataset: cifar100, metric: accuracy}
      - {kind: latency, target: nb201-table, column: help_pixel3, metric: latency}

``latency`` takes the evaluator's own options (``metric``, ``cheap``), the target name
(``target``), and passes every other option -- or an explicit ``target_options`` mapping -- to
`tritune.targets.create_target`.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from ..targets.base import Target
from ..targets.registry import create_target, list_targets
from .base import Evaluator
from .tabular import TabularAccuracy, TargetLatency

_FACTORIES: dict[str, Callable[..., Evaluator]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_evaluator(kind: str, factory: Callable[..., Evaluator], description: str = "") -> None:
    """Add an evaluator kind (a class or a function taking keyword options)."""
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"evaluator kind: {kind!r} must be a non-empty string")
    _FACTORIES[kind] = factory
    _DESCRIPTIONS[kind] = description


def list_evaluators() -> dict[str, str]:
    return dict(sorted(_DESCRIPTIONS.items()))


def _check_options(kind: str, factory: Callable[..., Any], options: Mapping[str, Any]) -> None:
    signature = inspect.signature(factory)
    params = [p for p in signature.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
        return
    try:
        signature.bind(**options)
    except TypeError:
        allowed = [p.name for p in params]
        bad = sorted(set(options) - set(allowed))
        detail = f"unknown options {bad}" if bad else f"bad options {sorted(options)}"
        raise ValueError(f"evaluator {kind}: {detail}; allowed: {', '.join(allowed) or '(none)'}") from None


def create_evaluator(kind: str, **options: Any) -> Evaluator:
    """Build an evaluator; unknown kinds and bad options raise ValueError naming them."""
    if kind not in _FACTORIES:
        raise ValueError(f"evaluator kind: {kind!r} not allowed; allowed: {', '.join(sorted(_FACTORIES))}")
    factory = _FACTORIES[kind]
    _check_options(kind, factory, options)
    return factory(**options)


def _latency(target: str | Target | None = None, metric: str = "latency", cheap: bool = True,
             target_options: Mapping[str, Any] | None = None, **more: Any) -> TargetLatency:
    if target is None:
        raise ValueError(f"evaluator latency: option 'target' is required; allowed targets: {', '.join(list_targets())}")
    if target_options is not None and not isinstance(target_options, Mapping):
        raise ValueError(f"evaluator latency: target_options must be a mapping, got {type(target_options).__name__}")
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


def _lazy(module: str, name: str, kind: str) -> Callable[..., Evaluator]:
    """A factory importing its class on first use (torch is only loaded by jobs that need it)."""

    def factory(**options: Any) -> Evaluator:
        import importlib

        cls = getattr(importlib.import_module(f"{__package__}.{module}"), name)
        _check_options(kind, cls, options)
        return cls(**options)

    return factory


register_evaluator("nb201-accuracy", TabularAccuracy, "NAS-Bench-201 test accuracy from the NATS-Bench table (costly query)")
register_evaluator("latency", _latency, "latency (ms) of a hardware target: target: NAME plus the target's options (cheap)")
register_evaluator("supernet-accuracy", _lazy("supernet_accuracy", "SupernetAccuracy", "supernet-accuracy"),
                   "mobilenet accuracy (%) with weights inherited from a supernet checkpoint + BN recalibration (costly)")
register_evaluator("supernet-finetune", _lazy("supernet_accuracy", "FinetuneAccuracy", "supernet-finetune"),
                   "mobilenet accuracy (%) after a short fine-tune from supernet weights, compression kept (costly)")
register_evaluator("predicted-accuracy", _lazy("predicted", "PredictedMetric", "predicted-accuracy"),
                   "accuracy from a saved accuracy predictor file: path: FILE (cheap)")
