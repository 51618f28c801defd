"""Choices taken off a space's compression menu before a search draws from it.

Two reasons to take a choice off, each a function returning the ``compression.exclude`` option
of the space (tie-group name -> choice tokens):

* it costs too much accuracy alone (`tritune.spaces.sensitivity.SensitivityTable.exclusions`);
* the hardware gives it no speed of its own (`runs_as_exclusions`): a target that runs an N:M mask
  at dense speed, or weight-only int8 in float, makes that choice as slow as a lighter one on the
  same menu, and only less accurate. Compiler-aware pruning (Niu et al., "PatDNN", ASPLOS 2020;
  Li et al., "NPAS", CVPR 2021) draws its space from what the compiler can accelerate for the
  same reason.

`with_exclusions` applies either to a space; its candidates stay candidates of the original space.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

from .base import SearchSpace
from .compression import LayerCompression

RunsAs = Callable[[LayerCompression], LayerCompression]


def runs_as_exclusions(space: SearchSpace, runs_as: RunsAs) -> dict[str, list[str]]:
    """Per compression gene, the choices that run as *another* choice of the same gene's menu
    (``runs_as``: a target's `tritune.targets.base.Target.runs_as`)."""
    out: dict[str, list[str]] = {}
    for gene in space.genes():
        if not gene.name.startswith("comp:"):
            continue
        menu = set(gene.choices)
        slower = sorted(c.token for c in gene.choices if runs_as(c) != c and runs_as(c) in menu)
        if slower:
            out[gene.name[5:]] = slower
    return out


def with_exclusions(space: SearchSpace, exclude: Mapping[str, Iterable[str]]) -> SearchSpace:
    """``space`` with ``exclude`` taken off its compression menu, besides what it already excludes."""
    merged = {group: set(tokens) for group, tokens in space.menu.exclude}
    for group, tokens in exclude.items():
        merged.setdefault(group, set()).update(tokens)
    config = space.config()
    config["compression"] = space.menu.replace(exclude={g: sorted(t) for g, t in merged.items() if t})
    return type(space)(**config)
