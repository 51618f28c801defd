"""Predictor kinds by name, so a saved file can say which class reads it back.

A kind is the ``kind`` string written into every saved predictor. Classes register themselves
with `register_predictor` when their module is imported; ``tritune.predictors`` imports the
built-in ones, so `tritune.predictors.load` knows them. An installed package adds a kind with an
entry point in the group ``tritune.predictors`` (looked up, and imported, only when a file names
that kind). A file's ``kind`` is only ever looked up here, never imported as a path.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from ..spaces.plugins import Registry

if TYPE_CHECKING:  # pragma: no cover
    from .base import Predictor

P = TypeVar("P", bound="type[Predictor]")

ENTRY_POINT_GROUP = "tritune.predictors"


def _accept(obj: Any, where: str) -> None:
    if not (isinstance(obj, type) and callable(getattr(obj, "from_document", None))):
        raise ValueError(f"{where}: plug-in {obj!r} is not a Predictor class")


#: kind -> predictor class.
PREDICTORS: Registry[type["Predictor"]] = Registry("predictor kind", ENTRY_POINT_GROUP, accept=_accept)


def register_predictor(cls: P) -> P:
    """Class decorator: file ``cls`` under ``cls.kind`` (a later class with the same kind replaces it)."""
    kind = getattr(cls, "kind", "")
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"predictor class {cls.__name__}: set a non-empty string `kind` before registering")
    PREDICTORS.register(kind, cls)
    return cls


def _builtin(module: str, kind: str) -> Callable[[], type["Predictor"]]:
    """A loader for a built-in kind whose module `tritune.predictors` does not import up front
    (``module`` is a fixed name here, never one read from a file)."""
    def load() -> type["Predictor"]:
        importlib.import_module(f"{__package__}.{module}")  # its decorator registers the class
        return PREDICTORS.get(kind)

    return load


PREDICTORS.register("codegen-layerwise-latency", loader=_builtin("codegen_layerwise", "codegen-layerwise-latency"),
                    description="per-layer compiled-kernel table of codegen-cpu plus a learned correction")


def predictor_class(kind: str) -> type["Predictor"]:
    """The class registered under ``kind``; ValueError naming the known kinds otherwise."""
    return PREDICTORS.get(kind)
