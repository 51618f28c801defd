"""Targets by name, so jobs, the CLI and saved files can refer to them as text.

Built-in targets register here. Other packages add targets without touching tritune by declaring
an entry point in the group ``tritune.targets`` whose object is a factory (a `Target` subclass or
a function taking keyword options)::

    [project.entry-points."tritune.targets"]
    my-board = "my_package.targets:MyBoardTarget"

Entry points are discovered the first time the registry is asked about a name it does not know
(or for a listing) and each is imported only when that target is created. Options are checked
against the factory's signature and type hints (`tritune.spaces.plugins.Registry`); options
that would let a job file run code (``codegen-cpu``'s compiler command) are refused from files.
"""
from __future__ import annotations

from typing import Any, Callable

from ..spaces.plugins import Registry
from .base import Target, check_target
from .codegen_cpu import CodegenCpuTarget
from .ort_cpu import OrtCpuTarget
from .tables import NB201TableTarget

ENTRY_POINT_GROUP = "tritune.targets"
TARGETS: Registry[Callable[..., Target]] = Registry("target", ENTRY_POINT_GROUP)


def register_target(name: str, factory: Callable[..., Target], description: str = "", *,
                    python_only: dict[str, str] | None = None) -> None:
    """Add a target under ``name`` (a class or a function taking keyword options).

    Registering an existing name replaces it (so a plug-in or a test can override a target).
    ``python_only``: options that would let a job file run code (a compiler command), each with
    the way to set it instead; `create_target` refuses them unless ``trusted=True``."""
    TARGETS.register(name, factory, description, python_only=python_only)


def refresh_plugins() -> None:
    """Forget discovered entry points (after installing a plug-in in a running process)."""
    TARGETS.plugins.refresh()


def list_targets() -> dict[str, str]:
    """Registered and plug-in target names -> one-line description (plug-ins are not imported)."""
    return TARGETS.describe()


def check_target_options(name: str, options: dict[str, Any], *, trusted: bool = False) -> None:
    """Raise ValueError naming an unknown target, an unknown option or a value of the wrong type."""
    if not isinstance(name, str):
        raise ValueError(f"target: expected a name, got {type(name).__name__}; allowed: {', '.join(list_targets())}")
    TARGETS.check(name, options, trusted=trusted)


def create_target(name: str, *, trusted: bool = False, **options: Any) -> Target:
    """Build a target by name; unknown names and bad options raise ValueError naming them.

    ``trusted=True`` (Python callers only) also accepts the options a job file may not set."""
    check_target_options(name, options, trusted=trusted)
    return check_target(TARGETS.get(name)(**options), f"target {name}")


register_target(
    "nb201-table",
    NB201TableTarget,
    "Published NAS-Bench-201 latencies (HELP / HW-NAS-Bench / nn-Meter) looked up by index; choose a column",
)
register_target(
    "ort-cpu",
    OrtCpuTarget,
    "ONNX Runtime on this CPU (fp32 + int8 QDQ): builds and times mobilenet candidates for real (slow; profile, then predict)",
)
register_target(
    "codegen-cpu",
    CodegenCpuTarget,
    "Generated sparse C kernels on this CPU (float32): block / unstructured / N:M / kernel-pattern sparsity runs faster",
    python_only={"cc": "it names a program to run; set $CC instead",
                 "cache_dir": "compiled libraries found there are loaded; set $TRITUNE_KERNEL_CACHE instead"},
)
