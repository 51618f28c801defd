"""Predictor kinds by name, so a saved file can say which class reads it back.

A kind is the ``kind`` string written into every saved predictor. Classes register themselves
with `register_predictor` when their module is imported; ``tritune.predictors`` imports the
built-in ones, so `tritune.predictors.load` knows them. An installed package adds a kind with an
entry point in the group ``tritune.predictors`` (looked up, and imported, only when a file names
that kind). A file's ``kind`` is only ever looked up here, never imported as a path.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from ..spaces.plugins import PluginGroup

if TYPE_CHECKING:  # pragma: no cover
    from .base import Predictor

P = TypeVar("P", bound="type[Predictor]")

#: kind -> predictor class.
PREDICTORS: dict[str, type["Predictor"]] = {}
ENTRY_POINT_GROUP = "tritune.predictors"
#: Built-in kinds in modules `tritune.predictors` does not import up front: kind -> module (a
#: fixed name here, never one read from a file), imported when a file names the kind.
BUILTIN_MODULES = {"codegen-layerwise-latency": "codegen_layerwise"}
_PLUGINS = PluginGroup(ENTRY_POINT_GROUP)


def register_predictor(cls: P) -> P:
    """Class decorator: file ``cls`` under ``cls.kind`` (a later class with the same kind replaces it)."""
    kind = getattr(cls, "kind", "")
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"predictor class {cls.__name__}: set a non-empty string `kind` before registering")
    PREDICTORS[kind] = cls
    return cls


def predictor_class(kind: str) -> type["Predictor"]:
    """The class registered under ``kind``; ValueError naming the known kinds otherwise."""
    if isinstance(kind, str) and kind in PREDICTORS:
        return PREDICTORS[kind]
    if isinstance(kind, str) and kind in BUILTIN_MODULES:
        import importlib

        importlib.import_module(f"{__package__}.{BUILTIN_MODULES[kind]}")
        if kind in PREDICTORS:
            return PREDICTORS[kind]
    cls = _PLUGINS.load(kind, f"predictor kind {kind}") if isinstance(kind, str) and kind else None
    if cls is None:
        known = sorted(set(PREDICTORS) | set(_PLUGINS.entry_points()))
        raise ValueError(f"predictor kind {kind!r} unknown; known kinds: {', '.join(known) or '(none)'}")
    if not (isinstance(cls, type) and callable(getattr(cls, "from_document", None))):
        raise ValueError(f"predictor kind {kind!r}: plug-in {cls!r} is not a Predictor class")
    PREDICTORS[kind] = cls  # type: ignore[assignment]
    return cls  # type: ignore[return-value]
