"""`Target`: what tritune needs to know about a piece of hardware (or a table standing in for one).

A target answers four questions:

* ``fingerprint()`` -- *which* hardware and software produced the numbers: a JSON-able dict with at
  least ``device``, ``runtime``, ``version`` and ``threads`` (``None`` where they do not apply).
  Results carry it so that numbers from different machines or tables are never mixed unnoticed.
  A table target adds the source file name, the column and a SHA-256 of the column's values.
* ``capabilities()`` -- what it accelerates: the sparsity ``patterns`` and ``bit_widths`` it runs
  faster than dense float, the ``spaces`` it knows, and whether it can ``build`` / ``measure``.
* ``supports(space_name)`` -- whether it can give latencies for candidates of that space.
* ``runs_as(choice)`` (optional; default: itself) -- the compression choice whose speed a layer
  compressed as ``choice`` gets: a target that runs a mask at dense speed runs the masked layer
  *as* dense. A search whose only cost is this target's latency drops a choice when what it runs
  as is also on the menu: same speed, less accuracy.
* ``latency(candidates)`` -- latency in milliseconds, one float per candidate, batched
  (``np.ndarray`` of shape ``(n,)``, float64; NaN where a value is unknown).

Targets that run real code (an ONNX Runtime CPU session, generated C kernels, a GPU) also provide

* ``build(candidate, space=None, **options)`` -- turn a candidate into a deployable artefact, and
* ``measure(artifact, **options)`` -- time that artefact on the device (returns ms statistics);
* optionally ``save_build(artifact, path)`` / ``load_build(path)`` -- hand a built artefact to
  another process as a file (fresh-process timing builds each model once).

The base class implements these two as raising `NotImplementedError` with a message naming the
target, so a caller can always ask and get a clear answer. Nothing in tritune special-cases any
particular target: every part goes through this interface and `capabilities()`.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np

from ..spaces.candidate import Candidate
from ..spaces.compression import LayerCompression

#: Keys every fingerprint carries (extra keys are welcome).
FINGERPRINT_KEYS = ("target", "device", "runtime", "version", "threads")
#: Keys every capabilities dict carries.
CAPABILITY_KEYS = ("spaces", "patterns", "bit_widths", "builds", "measures")
#: The attributes a plug-in must have to be used as a target (subclassing `Target` is optional).
REQUIRED_MEMBERS = ("name", "description", "fingerprint", "capabilities", "supports", "latency")


class Target(ABC):
    """Base class of hardware targets. Subclasses set ``name`` / ``description`` and implement
    `fingerprint`, `capabilities`, `supports` and `latency`; real runtimes also override `build`
    and `measure`."""

    #: Registry name (``tritune.targets.create_target(name)``).
    name: str = ""
    #: One line for people.
    description: str = ""

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """Identity of the numbers: device / runtime / version / threads, plus anything that
        distinguishes two setups (a table: file name, column, sha256 of the column)."""

    @abstractmethod
    def capabilities(self) -> dict[str, Any]:
        """``{"spaces": [...], "patterns": [...], "bit_widths": [...], "builds": bool, "measures": bool}``."""

    @abstractmethod
    def supports(self, space_name: str) -> bool:
        """True when `latency` can answer for candidates of the space named ``space_name``."""

    @abstractmethod
    def latency(self, candidates: Sequence[Candidate], space: Any = None) -> np.ndarray:
        """Latency in ms for each candidate (float64 array of shape ``(len(candidates),)``).
        ``space``: the configured space the candidates come from (None: the space registered
        under the candidates' space name, with its default options)."""

    def runs_as(self, choice: LayerCompression) -> LayerCompression:
        """The choice whose speed this target gives a layer compressed as ``choice`` (by default
        every choice runs as itself)."""
        return choice

    # ----- optional: targets that run models ------------------------------------------------
    def _cannot(self, what: str) -> str:
        return f"target {self.name!r} cannot {what}: it does not implement {what}() ({self.description})"

    def build(self, candidate: Candidate, space: Any = None, **options: Any) -> Any:
        """Build a deployable artefact for ``candidate`` (only targets that run models)."""
        raise NotImplementedError(self._cannot("build"))

    def measure(self, artifact: Any, **options: Any) -> dict[str, float]:
        """Time a built artefact on the device, in ms (only targets that run models)."""
        raise NotImplementedError(self._cannot("measure"))

    def save_build(self, artifact: Any, path: str | os.PathLike) -> bool:
        """Write a built artefact to the file ``path`` for `load_build` in another process, so
        a model timed in several fresh processes is built once; False where this target cannot
        (each process then builds the candidate itself)."""
        return False

    def load_build(self, path: str | os.PathLike) -> Any:
        """The artefact `save_build` wrote to ``path``, ready to time."""
        raise NotImplementedError(self._cannot("load_build"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def check_target(obj: Any, where: str = "target") -> Any:
    """Return ``obj`` if it has every member a target needs, else raise TypeError naming the gaps.

    Plug-ins may subclass `Target` or just provide the members (duck typing)."""
    missing = [m for m in REQUIRED_MEMBERS if not hasattr(obj, m)]
    if missing:
        raise TypeError(f"{where}: {type(obj).__name__} is not a target; missing {', '.join(missing)}")
    return obj
