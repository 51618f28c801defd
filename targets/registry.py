"""Targets by name, so jobs, the CLI and saved files can refer to them as text.

Built-in targets register here. Other packages add targets without touching tritune by declaring
an entry point in the group ``tritune.targets`` whose object is a factory (a `Target` subclass or
a function taking keyword options)::

    [project.entry-points."tritune.targets"]
    my-board = "my_package.targets:MyBoardTarget"

Entry points are discovered the first time the registry is asked about a name it does not know
(or for a listing) and each is imported only when that target is created.
"""
from __future__ import annotations

import inspect
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable

from .base import Target, check_target
from .codegen_cpu import CodegenCpuTarget
from .ort_cpu import OrtCpuTarget
from .tables import NB201TableTarget

ENTRY_POINT_GROUP = "tritune.targets"

_FACTORIES: dict[str, Callable[..., Target]] = {}
_DESCRIPTIONS: dict[str, str] = {}
_PLUGINS: dict[str, EntryPoint] | None = None


def register_target(name: str, factory: Callable[..., Target], description: str = "") -> None:
    """Add a target under ``name`` (a class or a function taking keyword options).

    Registering an existing name replaces it (so a plug-in or a test can override a target)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"target name: {name!r} must be a non-empty string")
    if not callable(factory):
        raise ValueError(f"target {name}: factory {factory!r} is not callable")
    _FACTORIES[name] = factory
    if not description:
        text = getattr(factory, "description", "")
        description = text if isinstance(text, str) else ""
    _DESCRIPTIONS[name] = description


def _plugins() -> dict[str, EntryPoint]:
    global _PLUGINS
    if _PLUGINS is None:
        found: dict[str, EntryPoint] = {}
        try:
            eps = entry_points(group=ENTRY_POINT_GROUP)
        except Exception:  # a broken environment must not break the built-in targets
            eps = ()
        for ep in eps:
            found.setdefault(ep.name, ep)
        _PLUGINS = found
    return _PLUGINS


def refresh_plugins() -> None:
    """Forget discovered entry points (after installing a plug-in in a running process)."""
    global _PLUGINS
    _PLUGINS = None


def list_targets() -> dict[str, str]:
    """Registered and plug-in target names -> one-line description (plug-ins are not imported)."""
    out = dict(_DESCRIPTIONS)
    for name, ep in _plugins().items():
        out.setdefault(name, f"plug-in {ep.value}")
    return dict(sorted(out.items()))


def _factory(name: str) -> Callable[..., Target]:
    if name in _FACTORIES:
        return _FACTORIES[name]
    ep = _plugins().get(name)
    if ep is None:
        raise ValueError(f"target: {name!r} not allowed; allowed: {', '.join(list_targets())}")
    try:
        factory = ep.load()
    except Exception as exc:
        raise ValueError(f"target {name}: plug-in {ep.value!r} (entry point group {ENTRY_POINT_GROUP}) failed to load: {exc}") from exc
    register_target(name, factory)
    return factory


def create_target(name: str, **options: Any) -> Target:
    """Build a target by name; unknown names and bad options raise ValueError naming them."""
    if not isinstance(name, str):
        raise ValueError(f"target: expected a name, got {type(name).__name__}; allowed: {', '.join(list_targets())}")
    factory = _factory(name)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(**options)
        except TypeError:
            allowed = [p.name for p in signature.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            bad = sorted(set(options) - set(allowed)) or sorted(options)
            raise ValueError(f"target {name}: bad options {bad}; allowed: {', '.join(allowed) or '(none)'}") from None
    target = factory(**options)
    return check_target(target, f"target {name}")


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
)
