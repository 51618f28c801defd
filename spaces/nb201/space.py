"""The NAS-Bench-201 cell space: 6 edges of a 4-node cell, each one of 5 operations.

The architecture string and the index order are those of NAS-Bench-201 / NATS-Bench-TSS, which
the published accuracy and latency tables are keyed by (Dong & Yang, ICLR 2020). The index order
is not a simple product order, so it ships as a small data file (``data/nb201_index.txt.gz``).
"""
from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources

import numpy as np

from ..base import Gene, Genome, SearchSpace
from ..candidate import Candidate
from ..layers import LayerSpec

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: Edges in architecture-string order: (to_node, from_node).
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
NUM_ARCHS = len(OPS) ** len(EDGES)


@lru_cache(maxsize=1)
def _index_table() -> tuple[tuple[tuple[str, ...], ...], dict[tuple[str, ...], int]]:
    raw = resources.files(__package__).joinpath("data/nb201_index.txt.gz").read_bytes()
    rows = [line for line in gzip.decompress(raw).decode().splitlines() if line and not line.startswith("#")]
    archs = tuple(tuple(OPS[int(d)] for d in row) for row in rows)
    if len(archs) != NUM_ARCHS:
        raise RuntimeError(f"nb201 index table holds {len(archs)} rows, expected {NUM_ARCHS}")
    return archs, {ops: i for i, ops in enumerate(archs)}


def arch_str(ops: tuple[str, ...]) -> str:
    """``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` as used by NAS-Bench-201."""
    nodes, k = [], 0
    for node in (1, 2, 3):
        parts = []
        for src in range(node):
            parts.append(f"{ops[k]}~{src}")
            k += 1
        nodes.append("|" + "|".join(parts) + "|")
    return "+".join(nodes)


def parse_arch_str(text: str) -> tuple[str, ...]:
    try:
        nodes = text.strip().strip("|").split("|+|")
        ops: list[str] = []
        for node, part in enumerate(nodes, start=1):
            edges = part.strip("|").split("|")
            if len(edges) != node:
                raise ValueError
            for src, edge in enumerate(edges):
                op, idx = edge.split("~")
                if int(idx) != src or op not in OPS:
                    raise ValueError
                ops.append(op)
        if len(ops) != 6:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"arch_str: {text!r} is not a NAS-Bench-201 cell string like "
            f"'|nor_conv_3x3~0|+|skip_connect~0|none~1|+|...~0|...~1|...~2|' with ops in {OPS}"
        ) from None
    return tuple(ops)


class NB201Space(SearchSpace):
    """NAS-Bench-201: stem, 3 stages of ``cells`` cells (C, 2C, 4C), residual reductions between."""

    name = "nb201"

    def __init__(self, channels: int = 16, cells: int = 5, resolution: int = 32, num_classes: int = 10) -> None:
        for field_name, value in (("channels", channels), ("cells", cells), ("resolution", resolution), ("num_classes", num_classes)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"nb201.{field_name}: {value!r} must be a positive integer")
        self.channels, self.cells, self.resolution, self.num_classes = channels, cells, resolution, num_classes

    def config(self) -> dict:
        return {"channels": self.channels, "cells": self.cells, "resolution": self.resolution, "num_classes": self.num_classes}

    def genes(self) -> list[Gene]:
        return [Gene(f"edge{dst}<-{src}", OPS) for dst, src in EDGES]

    def to_genome(self, candidate: Candidate) -> Genome:
        ops = candidate.get("ops", ())
        if not isinstance(ops, tuple) or len(ops) != len(EDGES):
            raise ValueError(f"candidate arch.ops: expected a list of {len(EDGES)} ops from {OPS}, got {ops!r}")
        return {f"edge{dst}<-{src}": op for (dst, src), op in zip(EDGES, ops)}

    def from_genome(self, genome: Genome) -> Candidate:
        return Candidate.make(self.name, {"ops": tuple(genome[f"edge{d}<-{s}"] for d, s in EDGES)})

    # ----- numeric encoding -----------------------------------------------------------------
    #: The four input->output paths of the cell, as indices into the edge list.
    PATHS = ((3,), (0, 4), (1, 5), (0, 2, 5))
    _PATH_OPS = ("skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")

    @property
    def encoding_length(self) -> int:
        return 6 * len(OPS) + len(self.PATHS) * (1 + len(self._PATH_OPS)) + 3

    def encode(self, candidate: Candidate) -> np.ndarray:
        """One-hot ops (30) plus path features (after BANANAS' path encoding, White et al. 2021):
        for each input->output path whether it is alive (no ``none`` edge) and its op counts, then
        the alive-path count, the convolutions on alive paths and the deepest alive conv chain.
        Accuracy depends on what reaches the output, which the one-hot alone hides."""
        ops = candidate["ops"]
        onehot = [1.0 if op == choice else 0.0 for op in ops for choice in OPS]  # type: ignore[union-attr]
        paths: list[float] = []
        alive_paths, convs_alive, deepest = 0, 0, 0
        for path in self.PATHS:
            path_ops = [ops[e] for e in path]  # type: ignore[index]
            alive = "none" not in path_ops
            paths.append(1.0 if alive else 0.0)
            paths.extend(float(alive) * path_ops.count(op) for op in self._PATH_OPS)
            if alive:
                convs = sum(op.startswith("nor_conv") for op in path_ops)
                alive_paths += 1
                convs_alive += convs
                deepest = max(deepest, convs)
        return np.asarray(onehot + paths + [alive_paths / 4.0, convs_alive / 7.0, deepest / 3.0])

    # ----- benchmark identities ------------------------------------------------------------
    def arch_str(self, candidate: Candidate) -> str:
        return arch_str(candidate["ops"])  # type: ignore[arg-type]

    def from_arch_str(self, text: str) -> Candidate:
        return Candidate.make(self.name, {"ops": parse_arch_str(text)})

    def index(self, candidate: Candidate) -> int:
        """The NAS-Bench-201 index (0..15624) the published tables use."""
        return _index_table()[1][tuple(candidate["ops"])]  # type: ignore[arg-type]

    def from_index(self, index: int) -> Candidate:
        if not 0 <= int(index) < NUM_ARCHS:
            raise ValueError(f"nb201 index: {index} not in 0..{NUM_ARCHS - 1}")
        return Candidate.make(self.name, {"ops": _index_table()[0][int(index)]})

    def enumerate(self, limit: int = 10_000_000):
        """All 15,625 cells in NAS-Bench-201 index order."""
        for ops in _index_table()[0]:
            yield Candidate.make(self.name, {"ops": ops})

    # ----- layer IR ------------------------------------------------------------------------
    def _cell(self, ops: tuple[str, ...], prefix: str, c: int, hw: int) -> list[LayerSpec]:
        layers: list[LayerSpec] = []
        relu_done: set[int] = set()
        for node in (1, 2, 3):
            inputs = 0
            for (dst, src), op in zip(EDGES, ops):
                if dst != node or op == "none":
                    continue
                inputs += 1
                if op.startswith("nor_conv"):
                    if src not in relu_done:
                        layers.append(LayerSpec(f"{prefix}.node{src}.relu", "act", c, c, hw, hw, act="relu"))
                        relu_done.add(src)
                    k = 3 if op.endswith("3x3") else 1
                    layers.append(LayerSpec(f"{prefix}.e{dst}{src}.conv", "conv", c, c, hw, hw, kernel=k, bn=True))
                elif op == "avg_pool_3x3":
                    layers.append(LayerSpec(f"{prefix}.e{dst}{src}.pool", "avgpool", c, c, hw, hw, kernel=3))
            for j in range(inputs - 1):
                layers.append(LayerSpec(f"{prefix}.node{node}.add{j}", "add", c, c, hw, hw))
        return layers

    def layers(self, candidate: Candidate) -> list[LayerSpec]:
        ops = tuple(self.validate(candidate)["ops"])  # type: ignore[arg-type]
        c, hw = self.channels, self.resolution
        out = [LayerSpec("stem", "conv", 3, c, hw, hw, kernel=3, bn=True)]
        for stage in range(3):
            if stage > 0:
                p = f"reduce{stage}"
                out += [
                    LayerSpec(f"{p}.relu", "act", c, c, hw, hw, act="relu"),
                    LayerSpec(f"{p}.conv_a", "conv", c, 2 * c, hw, hw, kernel=3, stride=2, bn=True, act="relu"),
                    LayerSpec(f"{p}.conv_b", "conv", 2 * c, 2 * c, hw // 2, hw // 2, kernel=3, bn=True),
                    LayerSpec(f"{p}.shortcut_pool", "avgpool", c, c, hw, hw, kernel=2, stride=2),
                    LayerSpec(f"{p}.shortcut_conv", "conv", c, 2 * c, hw // 2, hw // 2, kernel=1),
                    LayerSpec(f"{p}.add", "add", 2 * c, 2 * c, hw // 2, hw // 2),
                ]
                c, hw = 2 * c, hw // 2
            for cell in range(self.cells):
                out += self._cell(ops, f"stage{stage}.cell{cell}", c, hw)
        out += [
            LayerSpec("last.relu", "act", c, c, hw, hw, act="relu"),
            LayerSpec("pool", "global_pool", c, c, hw, hw),
            LayerSpec("classifier", "linear", c, self.num_classes),
        ]
        return out
