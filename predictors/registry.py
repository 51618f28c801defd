"""Predictor kinds by name, so a saved file can say which class reads it back.

A kind is the ``kind`` string written into every saved predictor. Classes register themselves
with `register_predictor` when their module is imported; ``tritune.predictors`` imports the
built-in ones, so `tritune.predictors.load` knows them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    from .base import Predictor

P = TypeVar("P", bound="type[Predictor]")

#: kind -> predictor class.
PREDICTORS: dict[str, type["Predictor"]] = {}


def register_predictor(cls: P) -> P:
    """Class decorator: file ``cls`` under ``cls.kind`` (a later class with the same kind replaces it)."""
    kind = getattr(cls, "kind", "")
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"predictor class {cls.__name__}: set a non-empty string `kind` before registering")
    PREDICTORS[kind] = cls
    return cls


def predictor_class(kind: str) -> type["Predictor"]:
    """The class registered under ``kind``; ValueError naming the known kinds otherwise."""
    try:
        return PREDICTORS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"predictor kind {kind!r} unknown; known kinds: {', '.join(sorted(PREDICTORS)) or '(none)'}") from None
