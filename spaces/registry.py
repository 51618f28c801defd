"""Spaces by name, so jobs, the CLI and saved files can refer to them as text.

Built-in spaces register here; the user's own Python adds more with `register_space`, and an
installed package with an entry point in the group ``tritune.spaces`` (see `tritune.spaces.plugins`).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

from .base import SearchSpace
from .mobilenet import MobileNetSpace
from .nb201 import NB201Space
from .vit import ViTSpace
from .plugins import Registry

ENTRY_POINT_GROUP = "tritune.spaces"
SPACES: Registry[Callable[..., SearchSpace]] = Registry("space", ENTRY_POINT_GROUP)


def register_space(name: str, factory: Callable[..., SearchSpace], description: str = "") -> None:
    """Add a space (a class or a function taking keyword config); a name registered again is replaced."""
    SPACES.register(name, factory, description)


def list_spaces() -> dict[str, str]:
    """Registered and plug-in space names -> one-line description (plug-ins are not imported)."""
    return SPACES.describe()


def check_space_options(name: str, config: dict[str, Any], where: str | None = None) -> None:
    """Raise ValueError naming an unknown name, an unknown option or a value of the wrong type."""
    SPACES.check(name, config, where)


def create(name: str, **config: Any) -> SearchSpace:
    """Build a registered space; unknown names and bad options raise ValueError naming them."""
    return SPACES.create(name, **config)


@functools.wraps(MobileNetSpace, assigned=("__doc__",), updated=())
def _mobilenet_small(**config: Any) -> MobileNetSpace:
    defaults = dict(resolutions=(28, 32, 40, 48, 56, 64), widths=(0.5, 0.75, 1.0), stem_stride=1, in_channels=1, num_classes=10)
    defaults.update(config)
    space = MobileNetSpace(**defaults)
    space.name = "mobilenet-small"
    return space


_mobilenet_small.__wrapped__ = MobileNetSpace  # type: ignore[attr-defined]  # its options are MobileNetSpace's


register_space("nb201", NB201Space, "NAS-Bench-201 cell: 6 edges x 5 ops, 15,625 architectures with published tables")
register_space("mobilenet", MobileNetSpace, "OFA MobileNetV3 x per-layer sparsity pattern/ratio x bit-widths, 160-224 px")
register_space("mobilenet-small", _mobilenet_small, "The mobilenet space at 28-64 px (stem stride 1, 1 input channel, 10 classes) for CPU training")
register_space("vit", ViTSpace, "Vision transformers x per-block token pruning x per-layer compression of the linears, 28 px")
