"""Spaces by name, so jobs, the CLI and saved files can refer to them as text."""
from __future__ import annotations

from typing import Any, Callable

from .base import SearchSpace
from .mobilenet import MobileNetSpace
from .nb201 import NB201Space

_FACTORIES: dict[str, Callable[..., SearchSpace]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_space(name: str, factory: Callable[..., SearchSpace], description: str = "") -> None:
    """Add a space (a class or a function taking keyword config)."""
    _FACTORIES[name] = factory
    _DESCRIPTIONS[name] = description


def list_spaces() -> dict[str, str]:
    return dict(_DESCRIPTIONS)


def create(name: str, **config: Any) -> SearchSpace:
    """Build a registered space; unknown names and bad options raise ValueError naming them."""
    if name not in _FACTORIES:
        raise ValueError(f"space: {name!r} not allowed; allowed: {', '.join(sorted(_FACTORIES))}")
    try:
        return _FACTORIES[name](**config)
    except TypeError as exc:
        raise ValueError(f"space {name}: bad options {sorted(config)} ({exc})") from None


def _mobilenet_small(**config: Any) -> MobileNetSpace:
    defaults = dict(resolutions=(28, 32, 40, 48, 56, 64), widths=(0.5, 0.75, 1.0), stem_stride=1, in_channels=1, num_classes=10)
    defaults.update(config)
    space = MobileNetSpace(**defaults)
    space.name = "mobilenet-small"
    return space


register_space("nb201", NB201Space, "NAS-Bench-201 cell: 6 edges x 5 ops, 15,625 architectures with published tables")
register_space("mobilenet", MobileNetSpace, "OFA MobileNetV3 x per-layer sparsity pattern/ratio x bit-widths, 160-224 px")
register_space("mobilenet-small", _mobilenet_small, "The mobilenet space at 28-64 px (stem stride 1, 1 input channel, 10 classes) for CPU training")
