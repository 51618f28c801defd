"""A tiny autotuner: compile a few tilings of one layer into one library, time them, keep the fastest.

All candidate variants of a layer go into *one* C source (they share the weight arrays), so tuning
costs one compilation. Each variant is timed with the interleaved protocol of
`tritune.kernels.timing` (warm-up, rounds over the variants, minimum of round medians) on a
seeded input in 64-byte aligned buffers, and the choice is recorded as JSON in
``<cache>/tune/<library key>.json``. The key is the SHA-256 of the source, compiler, flags and CPU,
so the same layer on the same machine reuses the record (and the cached library): a re-run
neither compiles nor times.

Which variants are tried (`candidate_variants`): pixel tiles of about 16-24 accumulator vectors
for block rows, larger tiles plus K tiling (input tile about 32 KiB, the L1 of current x86
cores) for CSR / N:M / kernel patterns, whose loads are not shared between rows.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..formats import PackedWeight
from ..timing import Protocol, measure_many
from . import compiler
from .generate import MAX_ACCUMULATORS, Variant, check_variant, l1_k_tile, rows_per_tile
from .plan import Geometry, KernelPattern, Lowered
from .runtime import CompiledKernel, aligned_empty, load, prepare

#: Timing protocol of the autotuner (layers run 10 us - 15 ms; compiling included, 0.2-6 s per layer in the kernels benchmark).
TUNE_PROTOCOL = {"warmup": 3, "rounds": 5, "runs_per_round": 5}
RECORD_VERSION = 1


@dataclass
class TuneResult:
    """The tuned kernel, the chosen variant, every variant's latency (ms, min of round medians,
    over every tuning the record has seen), seconds spent compiling / timing, and where the
    record is (``measurements``: the latest timing's statistics)."""

    kernel: CompiledKernel
    variant: Variant
    timings_ms: dict[str, float]
    compile_s: float
    tune_s: float
    record: Path
    from_record: bool = False
    measurements: list[dict] = field(default_factory=list)


def candidate_variants(geo: Geometry, low: Lowered, vector_width: int) -> list[Variant]:
    """The tilings worth timing for this layer (at most ten; packed input panels for 1x1 layers)."""
    if geo.mode == "narrow":
        return [Variant(1, 1), Variant(1, 4)] if rows_per_tile(low) < 4 else [Variant(1, 1), Variant(1, 2)]
    rows = rows_per_tile(low)
    positions = geo.q
    vectors = max(1, -(-positions // vector_width))

    def balanced(nv: int) -> int:
        """The widest tile the generator makes of at most ``nv`` vectors (it cuts the grid into
        tiles as even as possible, `generate._Writer.tile_loops`): variants that would run the
        same tiles get one name."""
        nv = max(1, min(nv, vectors))
        return -(-vectors // -(-vectors // nv))

    # (nv, unroll, K tiles: "both" = with and without an L1-sized K tile / "l1" / "none", pack)
    if rows >= 2:
        # one vector too: the narrowest input tile stays in L1 (block8x1 on 512x512 at 56x56: 3.4 ms
        # at three vectors, 1.6 ms at one; kernels benchmark)
        nvs = sorted({1} | {max(1, min(n, MAX_ACCUMULATORS // rows)) for n in (8 // rows or 1, 16 // rows or 1, 24 // rows or 1)})
        shapes = [(nv, 1, "both", False) for nv in nvs]
        if isinstance(low, KernelPattern) and rows * nvs[0] * 2 <= MAX_ACCUMULATORS:
            shapes.append((nvs[0], 2, "both", False))
        # packed panels pay on wide inputs (block4x1 on 512x512 at 56x56, 75 %: 0.86 of ideal at best
        # unpacked, 1.03 packed at two vectors) and lose a little on small ones (128x128: 1.07 -> 1.06)
        shapes += [(nv, 1, "none", True) for nv in sorted({2, 16 // rows or 1})]
        limit = 10
    else:  # one load per FMA: packed panels win on wide layers (kernels benchmark), not on 128-channel ones;
        # three-vector panels won 8 of the 18 unstructured cells at 75 / 90 %, eight-vector ones
        # with K tiles none (0.75-0.98 of the best, 0.88 on average)
        shapes = [(8, 1, "both", False), (4, 2, "both", False), (4, 1, "both", False),
                  (2, 4, "none", True), (3, 2, "none", True), (4, 2, "none", True), (4, 1, "l1", True)]
        limit = 10
    out: list[Variant] = []
    for nv, unroll, k_tiles, pack in shapes:
        nv = balanced(nv)
        kt = l1_k_tile(geo, low, nv * vector_width)
        options = {"both": (kt, 0), "l1": (kt,), "none": (0,)}[k_tiles] if kt else (0,)
        for k_tile in options:
            var = Variant(nv, unroll, k_tile, pack)
            try:
                check_variant(geo, low, var)
            except ValueError:
                continue
            if var not in out:
                out.append(var)
    return out[:limit]


def _record_path(cache: Path, key: str) -> Path:
    return cache / "tune" / f"{key[:32]}.json"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _read_record(path: Path, names: set[str]) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("version") != RECORD_VERSION or data.get("variant", {}).get("name") not in names:
        return None
    return data


def autotune(packed: PackedWeight, kind: str, in_hw: tuple[int, int] | None = None, stride: int = 1, bias: Any = None,
             act: str = "none", threads: int = 1, *, variants: Sequence[Variant | dict] | None = None,
             protocol: Any = None, cache_dir: str | os.PathLike | None = None, cc: str | None = None,
             retune: bool = False, seed: int = 0) -> TuneResult:
    """Compile ``variants`` (default `candidate_variants`) of one layer, time them, return the fastest.

    Arguments as `tritune.kernels.codegen.compile_layer`; ``protocol``: a
    `tritune.kernels.timing.Protocol` (default `TUNE_PROTOCOL` with ``threads``). A recorded
    choice for the same layer, machine and compiler is reused unless ``retune``: then the variants
    are timed again, and each variant's time is the lower of this timing and the record's, so the
    record gathers evidence. On a shared machine a slow phase can cover a whole tuning and slow
    the variants unequally (kernels benchmark: every variant of a layer 20-30 % slower and the
    usual winner, 0.61-0.65 ms in three runs, ranked below one of 0.73 ms); timing again at
    another moment outvotes it."""

    t0 = time.perf_counter()
    build = prepare(packed, kind, in_hw, stride, bias, act, threads, cc)
    if variants is None:
        chosen_variants = candidate_variants(build.geo, build.low, build.vector_width)
    else:
        chosen_variants = [Variant.coerce(v) for v in variants]
        if not chosen_variants:
            raise ValueError("variants: at least one variant is required")
    source = build.source(chosen_variants)
    cache = compiler.cache_dir(cache_dir)
    lib = compiler.compile_library(source, openmp=build.threads > 1, cache=cache, cc=cc, name="tune")
    record = _record_path(cache, lib.key)
    by_name = {v.name: v for v in chosen_variants}
    data = _read_record(record, set(by_name))
    if not retune:
        if data is not None:
            variant = by_name[data["variant"]["name"]]
            return TuneResult(load(build, lib, variant, source), variant, dict(data["timings_ms"]), lib.compile_s,
                              time.perf_counter() - t0, record, True, data.get("measurements", []))
    kernels = [load(build, lib, v, source) for v in chosen_variants]
    rng = np.random.default_rng(seed)
    x = aligned_empty(kernels[0].in_shape)
    x[...] = rng.standard_normal(x.shape, dtype=np.float32)
    outs = [aligned_empty(k.out_shape) for k in kernels]
    fns = [k.bind(x, o) for k, o in zip(kernels, outs)]
    proto = protocol or Protocol(threads=build.threads, **TUNE_PROTOCOL)
    ms = measure_many(fns, proto, [v.name for v in chosen_variants])
    timings = {m.name: m.latency_ms for m in ms}
    tunings = 1
    if data is not None and set(data["timings_ms"]) == set(timings):  # retune: keep the record's evidence
        timings = {n: min(t, float(data["timings_ms"][n])) for n, t in timings.items()}
        tunings = int(data.get("tunings", 1)) + 1
    best = int(np.argmin([timings[v.name] for v in chosen_variants]))
    variant = chosen_variants[best]
    measurements = [m.to_json() for m in ms]
    geo = build.geo
    _write_json(record, {
        "version": RECORD_VERSION,
        "layer": {"kind": geo.kind, "pattern": packed.pattern, "shape": list(packed.shape), "in_hw": list(geo.in_hw),
                  "stride": geo.stride, "act": act, "bias": build.bias is not None, "threads": build.threads,
                  "mode": geo.mode},
        "library": lib.path.name,
        "variant": {"name": variant.name, **variant.to_json()},
        "timings_ms": timings,
        "tunings": tunings,
        "protocol": proto.to_json(),
        "measurements": measurements,
    })
    return TuneResult(kernels[best], variant, timings, lib.compile_s, time.perf_counter() - t0, record, False, measurements)
