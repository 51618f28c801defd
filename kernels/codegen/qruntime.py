"""`compile_qlayer`: a quantized layer in, a callable integer kernel out (ctypes, batch 1).

    from tritune.kernels.formats import quantize_packed
    from tritune.kernels.quant import AffineQuant
    from tritune.kernels.codegen.qruntime import compile_qlayer

    qw = quantize_packed(w * mask, "block8x1", mask, bits=8)          # codes + per-channel scales
    k = compile_qlayer(qw, "conv1x1", (28, 28), bias=b, in_quant=AffineQuant(0.02, 10),
                       act="relu", out_quant=AffineQuant(0.01, 0))
    y = k.run(x_codes)["q"]                                         # uint8 [O, 28, 28]

Inputs are uint8 codes ``[C, H, W]`` (linear ``[in]``) on the grid ``in_quant``; outputs are what
the `Epilogue` names: ``q`` uint8 codes on ``out_quant``, ``f`` float32, ``pool`` float32 channel
means; ``res`` (float32, the output's shape) is added after the activation. `QKernel.step`
binds buffers once for an `OpChain`. `autotune_q` times a layer's tilings (one compilation) and
keeps the fastest, recorded like the float autotuner's choices.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..formats import QuantizedWeight
from ..quant import AffineQuant
from ..timing import Protocol, measure_many
from . import compiler
from .chain import CStep, fn_address
from .csource import ABI_VERSION
from .qgenerate import QVariant, accumulator_limit, check_qvariant, generate_q
from .qplan import (
    Epilogue,
    QGeometry,
    QLowered,
    default_lowering,
    epilogue_constants,
    lower_q,
    qgeometry,
)
from .runtime import _check_bias, _check_threads, aligned_empty

_C_VOID_P = ctypes.c_void_p
#: ``tt_io`` fields, in order.
IO_FIELDS = ("q", "f", "res", "pool")


@dataclass
class QBuild:
    """A validated integer layer: geometry, weights, requantization, settings."""

    qw: QuantizedWeight
    geo: QGeometry
    bias: np.ndarray | None
    in_quant: AffineQuant
    epi: Epilogue
    threads: int
    isa: str
    cc: str | None

    def resolve(self, variant: QVariant) -> tuple[str, int, int]:
        mode, rows = default_lowering(self.qw, self.geo)
        mode, rows = variant.mode or mode, variant.rows or rows
        nv = 1 if self.geo.narrow else int(variant.nv)
        check_qvariant(self.geo, mode, rows, nv)
        return mode, rows, nv

    def source(self, variants: Sequence[QVariant]) -> tuple[str, list[str]]:
        resolved = []
        for v in variants:
            key = self.resolve(v)
            if key not in resolved:
                resolved.append(key)
        lowerings: dict[tuple[str, int], QLowered] = {}
        for mode, rows, _ in resolved:
            if (mode, rows) not in lowerings:
                lowerings[(mode, rows)] = lower_q(self.qw, self.geo, mode, rows)
        rowsum = next(iter(lowerings.values())).rowsum
        em, ec = epilogue_constants(self.epi, self.in_quant, self.qw.scales, self.bias, rowsum)
        src = generate_q(self.geo, lowerings, resolved, epi=self.epi, em=em, ec=ec, in_zero=self.in_quant.zero_point,
                         threads=self.threads, isa=self.isa, bits=self.qw.bits)
        return src, [f"{m[0]}{r}t{nv}" for m, r, nv in resolved]


def prepare_q(qw: QuantizedWeight, kind: str, in_hw: tuple[int, int] | None = None, stride: int = 1, bias: Any = None, *,
              in_quant: AffineQuant, act: str = "none", out_quant: AffineQuant | None = None, out_float: bool = False,
              pool: bool = False, residual: bool = False, threads: int = 1, isa: str = "auto", cc: str | None = None) -> QBuild:
    """Validate an integer layer (ValueError naming the bad field)."""
    if not isinstance(qw, QuantizedWeight):
        raise ValueError(f"qw: expected a tritune.kernels.formats.QuantizedWeight, got {type(qw).__name__}")
    if not isinstance(in_quant, AffineQuant):
        raise ValueError(f"in_quant: expected an AffineQuant, got {in_quant!r}")
    lanes = 16 if compiler.vector_width(cc) >= 16 else 8
    geo = qgeometry(kind, qw.shape, in_hw, stride, lanes)
    epi = Epilogue(act, out_quant, bool(out_float), bool(pool), bool(residual))
    return QBuild(qw, geo, _check_bias(bias, geo.cout), in_quant, epi, _check_threads(threads), isa, cc)


@dataclass(eq=False)
class QKernel:
    """A loaded integer kernel: ``run`` (checked, allocates missing outputs) and ``step`` (buffers
    bound once, for an `OpChain`). ``variant``: its tiling's name; ``isa``: the instruction set
    its code took (3 AVX-512 VNNI, 2 AVX2, 0 portable C)."""

    geometry: QGeometry
    epilogue: Epilogue
    pattern: str
    bits: int
    variant: str
    compile_s: float
    source_hash: str
    library: str
    cached: bool
    isa: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    _fn: Any = field(default=None, repr=False)
    _ws: np.ndarray | None = field(default=None, repr=False)
    _cdll: Any = field(default=None, repr=False)
    _keep: list = field(default_factory=list, repr=False)

    @property
    def kind(self) -> str:
        return self.geometry.kind

    @staticmethod
    def _check(x: Any, what: str, shape: tuple[int, ...], dtype: Any, writeable: bool = False) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise ValueError(f"{what}: expected a numpy.ndarray, got {type(x).__name__}")
        if x.dtype != dtype:
            raise ValueError(f"{what}: dtype {x.dtype} not allowed; allowed: {np.dtype(dtype)}")
        if tuple(x.shape) != tuple(shape):
            raise ValueError(f"{what}: shape {tuple(x.shape)} not allowed; allowed: {tuple(shape)}")
        if not x.flags.c_contiguous:
            raise ValueError(f"{what}: not C-contiguous; pass np.ascontiguousarray({what})")
        if writeable and not x.flags.writeable:
            raise ValueError(f"{what}: read-only array; allowed: a writeable buffer")
        return x

    def _io(self, x: np.ndarray, q: Any, f: Any, res: Any, pool: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        epi = self.epilogue
        x = self._check(x, "x", self.in_shape, np.uint8)
        given = {"q": q, "f": f, "res": res, "pool": pool}
        wanted = {"q": epi.out_quant is not None, "f": epi.out_float, "res": epi.residual, "pool": epi.pool}
        shapes = {"q": self.out_shape, "f": self.out_shape, "res": self.out_shape, "pool": (self.out_shape[0],)}
        dtypes = {"q": np.uint8, "f": np.float32, "res": np.float32, "pool": np.float32}
        bufs = {}
        for name in IO_FIELDS:
            if not wanted[name]:
                if given[name] is not None:
                    raise ValueError(f"{name}: this kernel has no {name!r} {'input' if name == 'res' else 'output'}; pass None")
                continue
            arr = given[name]
            if arr is None:
                if name == "res":
                    raise ValueError("res: this kernel adds a residual; pass a float32 array of the output's shape")
                arr = np.empty(shapes[name], dtype=dtypes[name])
            bufs[name] = self._check(arr, name, shapes[name], dtypes[name], writeable=name != "res")
            if np.may_share_memory(x, bufs[name]):
                raise ValueError(f"{name}: overlaps x; allowed: separate buffers")
        return x, bufs

    def _io_record(self, bufs: dict[str, np.ndarray]) -> np.ndarray:
        return np.array([bufs[n].ctypes.data if n in bufs else 0 for n in IO_FIELDS], dtype=np.uint64)

    def run(self, x: np.ndarray, *, q: Any = None, f: Any = None, res: Any = None, pool: Any = None) -> dict[str, np.ndarray]:
        """Compute the layer for one uint8 input; returns the outputs by name (``q``, ``f``, ``pool``)."""
        x, bufs = self._io(x, q, f, res, pool)
        rec = self._io_record(bufs)
        self._fn(x.ctypes.data, rec.ctypes.data, self._ws.ctypes.data)
        return {k: v for k, v in bufs.items() if k != "res"}

    def step(self, x: np.ndarray, *, q: Any = None, f: Any = None, res: Any = None, pool: Any = None) -> CStep:
        """This layer as a step of an `OpChain` (buffers checked once; the caller keeps them and this kernel alive)."""
        x, bufs = self._io(x, q, f, res, pool)
        rec = self._io_record(bufs)
        self._keep.append((rec, bufs))
        return CStep(fn_address(self._fn), x.ctypes.data, rec.ctypes.data, self._ws.ctypes.data)

    def bind(self, x: np.ndarray, **outputs: Any) -> Any:
        """A zero-argument callable running this layer on bound buffers (for timing; it keeps this
        kernel and the buffers alive)."""
        run = self.step(x, **outputs).bound()
        keep = (self, x, outputs)

        def call(run=run, keep=keep) -> None:
            run()

        return call


def _lib_name(build: QBuild) -> str:
    geo = build.geo
    return f"q{build.qw.bits}-{geo.kind}-{build.qw.pattern.replace(':', '_')}-{geo.cout}x{geo.cin}"


def load_q(build: QBuild, lib: compiler.Library, name: str, source: str) -> QKernel:
    """Bind ``tt_run_<name>`` of a compiled integer library of ``build``."""
    cdll = ctypes.CDLL(str(lib.path))
    if cdll.tt_abi_version() != ABI_VERSION:
        raise compiler.CompilerError(f"{lib.path}: ABI version {cdll.tt_abi_version()}, expected {ABI_VERSION}")
    cdll.tt_workspace_bytes.restype = ctypes.c_long
    try:
        fn = getattr(cdll, f"tt_run_{name}")
    except AttributeError:
        raise ValueError(f"tile: variant {name} is not in library {lib.path}") from None
    fn.argtypes = [_C_VOID_P, _C_VOID_P, _C_VOID_P]
    fn.restype = None
    ws = aligned_empty((int(cdll.tt_workspace_bytes()),), np.uint8)
    ws[:] = 0
    geo = build.geo
    if geo.kind == "linear":
        in_shape, out_shape = (geo.cin,), (geo.cout,)
    else:
        in_shape, out_shape = (geo.cin, *geo.in_hw), (geo.cout, *geo.out_hw)
    return QKernel(geometry=geo, epilogue=build.epi, pattern=build.qw.pattern, bits=build.qw.bits, variant=name, compile_s=lib.compile_s,
                   source_hash=hashlib.sha256(source.encode()).hexdigest(), library=str(lib.path), cached=not lib.compiled,
                   isa=int(cdll.tt_isa()), in_shape=in_shape, out_shape=out_shape, _fn=fn, _ws=ws, _cdll=cdll)


def default_qvariant(build: QBuild) -> QVariant:
    """A reasonable tiling without measuring: about 16 accumulator vectors per tile."""
    mode, rows = default_lowering(build.qw, build.geo)
    if build.geo.narrow:
        return QVariant(1)
    lanes = 16 if compiler.vector_width(build.cc) >= 16 else 8
    vectors = -(-build.geo.pixels // lanes)
    nv = max(1, min(4 if rows == 1 else 16 // rows, vectors))
    while nv > 1 and rows * nv > accumulator_limit(mode, nv):
        nv -= 1
    return QVariant(nv)


def compile_qlayer(qw: QuantizedWeight, kind: str, in_hw: tuple[int, int] | None = None, stride: int = 1, bias: Any = None, *,
                   in_quant: AffineQuant, act: str = "none", out_quant: AffineQuant | None = None, out_float: bool = False,
                   pool: bool = False, residual: bool = False, tile: QVariant | dict | None = None, threads: int = 1,
                   isa: str = "auto", cache_dir: str | os.PathLike | None = None, cc: str | None = None) -> QKernel:
    """Generate, compile (or fetch from the cache) and load the integer kernel of one layer.

    ``qw``: codes + scales (`tritune.kernels.formats.quantize_packed`); ``kind``: conv1x1 /
    conv3x3 (padding 1, stride 1 or 2) / linear; ``in_quant``: the input's grid; ``act``: none,
    relu, hswish, hsigmoid; outputs: ``out_quant`` (uint8 codes on that grid), ``out_float``,
    ``pool`` (channel means; threads=1), ``residual`` (a float tensor added after the activation);
    ``tile``: a `QVariant` (default `default_qvariant`); ``isa``: auto, avx512vnni, avx2, scalar."""
    build = prepare_q(qw, kind, in_hw, stride, bias, in_quant=in_quant, act=act, out_quant=out_quant, out_float=out_float, pool=pool,
                      residual=residual, threads=threads, isa=isa, cc=cc)
    variant = default_qvariant(build) if tile is None else QVariant.coerce(tile)
    source, names = build.source([variant])
    lib = compiler.compile_library(source, openmp=build.threads > 1, cache=cache_dir, cc=cc, name=_lib_name(build))
    return load_q(build, lib, names[0], source)


# ----- autotuning --------------------------------------------------------------------------------
TUNE_PROTOCOL = {"warmup": 3, "rounds": 5, "runs_per_round": 5}
RECORD_VERSION = 1


@dataclass
class QTuneResult:
    """The tuned kernel, its variant's name, every variant's latency (ms) and the record's path."""

    kernel: QKernel
    variant: str
    timings_ms: dict[str, float]
    compile_s: float
    tune_s: float
    record: Path
    from_record: bool = False


def candidate_qvariants(build: QBuild) -> list[QVariant]:
    """The tilings worth timing: pixel tiles of 1-6 vectors (fewer when a block row has many
    rows), and where a pattern has one row per block the gather nest and 8-row quads too."""
    if build.geo.narrow:
        return [QVariant(1)]
    mode, rows = default_lowering(build.qw, build.geo)
    lanes = 16 if compiler.vector_width(build.cc) >= 16 else 8
    vectors = -(-build.geo.pixels // lanes)
    out = []
    row_options = [rows] if mode == "gather" or rows == 1 else sorted({rows, 4})
    for r in row_options:
        for nv in (1, 2, 3, 4, 6):
            if r * nv <= accumulator_limit(mode, nv) and nv <= max(1, vectors):
                out.append(QVariant(nv, mode, r))
    if rows == 1:  # one row per block: the gather nest, and quads shared by 8 rows (all a row block touches), are worth timing too
        out += [QVariant(nv, "gather", 1) for nv in (2, 4) if nv <= max(1, vectors)]
        out += [QVariant(nv, "quad", 8) for nv in (2, 3) if nv <= max(1, vectors)]
    return out[:10]


def autotune_q(qw: QuantizedWeight, kind: str, in_hw: tuple[int, int] | None = None, stride: int = 1, bias: Any = None, *,
               in_quant: AffineQuant, act: str = "none", out_quant: AffineQuant | None = None, out_float: bool = False,
               pool: bool = False, residual: bool = False, threads: int = 1, isa: str = "auto",
               variants: Sequence[QVariant | dict] | None = None, protocol: Any = None,
               cache_dir: str | os.PathLike | None = None, cc: str | None = None, retune: bool = False, seed: int = 0) -> QTuneResult:
    """Compile ``variants`` (default `candidate_qvariants`) of one integer layer in one library,
    time them interleaved, return the fastest; the choice is recorded in ``<cache>/tune`` and
    reused (unless ``retune``), as `tritune.kernels.codegen.autotune` does for float layers."""

    t0 = time.perf_counter()
    build = prepare_q(qw, kind, in_hw, stride, bias, in_quant=in_quant, act=act, out_quant=out_quant, out_float=out_float, pool=pool,
                      residual=residual, threads=threads, isa=isa, cc=cc)
    chosen = candidate_qvariants(build) if variants is None else [QVariant.coerce(v) for v in variants]
    if not chosen:
        raise ValueError("variants: at least one variant is required")
    source, names = build.source(chosen)
    cache = compiler.cache_dir(cache_dir)
    lib = compiler.compile_library(source, openmp=build.threads > 1, cache=cache, cc=cc, name="qtune")
    record = cache / "tune" / f"{lib.key[:32]}.json"
    if not retune and record.is_file():
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            data = None
        if data and data.get("version") == RECORD_VERSION and data.get("variant") in names:
            return QTuneResult(load_q(build, lib, data["variant"], source), data["variant"], dict(data["timings_ms"]), lib.compile_s,
                               time.perf_counter() - t0, record, True)
    kernels = [load_q(build, lib, n, source) for n in names]
    rng = np.random.default_rng(seed)
    x = aligned_empty(kernels[0].in_shape, np.uint8)
    x[...] = rng.integers(0, 256, x.shape)
    res = aligned_empty(kernels[0].out_shape) if build.epi.residual else None
    if res is not None:
        res[...] = 0.0
    fns = [k.bind(x, res=res) for k in kernels]
    proto = protocol or Protocol(threads=build.threads, **TUNE_PROTOCOL)
    ms = measure_many(fns, proto, names)
    timings = {m.name: m.latency_ms for m in ms}
    best = int(np.argmin([timings[n] for n in names]))
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"version": RECORD_VERSION, "variant": names[best], "timings_ms": timings, "library": lib.path.name,
                               "layer": {"kind": kind, "pattern": qw.pattern, "shape": list(qw.shape), "bits": qw.bits}}, indent=1))
    os.replace(tmp, record)
    return QTuneResult(kernels[best], names[best], timings, lib.compile_s, time.perf_counter() - t0, record, False)


__all__ = ["IO_FIELDS", "QBuild", "QKernel", "QTuneResult", "autotune_q", "candidate_qvariants", "compile_qlayer", "default_qvariant",
           "load_q", "prepare_q"]
