"""`compile_layer`: a packed layer in, a callable compiled kernel out (ctypes, batch 1).

The kernel computes one image: input ``[C, H, W]`` (linear: ``[in]``), output ``[O, Ho, Wo]``
(linear: ``[out]``), both C-contiguous float32 -- the layout a whole-model runner chains layer to
layer with buffers planned once. `CompiledKernel.run` checks its arguments and never copies;
`CompiledKernel.bind` checks once and returns a zero-argument callable for the hot path. Padding
of 3x3 convolutions is 1 (``same`` for stride 1), groups 1; a batch of N images is N calls.

A kernel owns a zero-initialised workspace (the staged input, K-tile partial sums), so one kernel
must not run on two threads at once; ``threads > 1`` parallelises *inside* a call with OpenMP.
Inputs of 1x1 kernels are read in place: allocate them with `aligned_empty` (64-byte aligned).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from ..formats import PackedWeight
from . import compiler
from .chain import CStep, fn_address
from .csource import ABI_VERSION
from .generate import Variant, generate, l1_k_tile, rows_per_tile
from .plan import ACTIVATIONS, KINDS, Geometry, Lowered, geometry, load_bound, lower, reads_in_place

_C_VOID_P = ctypes.c_void_p
ALIGNMENT = 64


def aligned_empty(shape: int | Sequence[int], dtype: Any = np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary.

    Direct 1x1 kernels read their input in place: with an aligned buffer every SIMD load stays
    inside one cache line (numpy only guarantees 16 bytes; misaligned loads cost up to 1.5x on
    CSR kernels). Plan activation buffers with this."""
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(n + ALIGNMENT, dtype=np.uint8)
    start = (-raw.ctypes.data) % ALIGNMENT
    return raw[start:start + n].view(dtype).reshape(shape)


def default_variant(geo: Geometry, low: Lowered, vector_width: int) -> Variant:
    """A reasonable tiling without measuring: about 16 accumulator vectors per tile when rows
    share loads; otherwise 4 vectors with a K tile that keeps the input tile in L1, from a packed
    panel on 1x1 layers of >= 256 input channels (side by side at 90 %: 1.00-1.15x there, 0.85x
    on 128 channels, where the copy is a larger share)."""
    rows = rows_per_tile(low)
    if geo.mode == "narrow":
        return Variant(nv=1, unroll=1 if rows >= 4 else 4)
    positions = geo.q
    nv = max(1, min(4 if rows == 1 else 16 // rows, positions // vector_width))
    k_tile = l1_k_tile(geo, low, nv * vector_width) if rows == 1 else 0
    return Variant(nv=nv, unroll=1, k_tile=k_tile, pack=rows == 1 and geo.kind == "conv1x1" and geo.k >= 256)


def _check_bias(bias: Any, cout: int) -> np.ndarray | None:
    if bias is None:
        return None
    if hasattr(bias, "detach"):
        bias = bias.detach().cpu().numpy()
    arr = np.asarray(bias, dtype=np.float32)
    if arr.shape != (cout,):
        raise ValueError(f"bias: shape {arr.shape} not allowed; allowed: ({cout},) (one value per output channel)")
    if not np.isfinite(arr).all():
        raise ValueError("bias: contains NaN or infinity; allowed: finite values")
    return np.ascontiguousarray(arr)


def _check_threads(threads: Any) -> int:
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads: {threads!r} not allowed; allowed: an integer >= 1")
    return int(threads)


@dataclass
class Build:
    """Everything `generate` needs for one layer, validated (shared by `compile_layer` and `autotune`)."""

    packed: PackedWeight
    geo: Geometry
    low: Lowered
    bias: np.ndarray | None
    act: str
    threads: int
    vector_width: int
    #: (input, output) floats between channels for a kernel working on row bands (`generate`)
    channel_strides: tuple[int, int] | None = None

    def source(self, variants: Sequence[Variant]) -> str:
        return generate(self.geo, self.low, list(variants), bias=self.bias, act=self.act, threads=self.threads,
                        vector_width=self.vector_width, channel_strides=self.channel_strides)


def prepare(packed: PackedWeight, kind: str, in_hw: tuple[int, int] | None = None, stride: int = 1, bias: Any = None,
            act: str = "none", threads: int = 1, cc: str | None = None) -> Build:
    """Validate a layer and lower it (raises ValueError naming the bad field, CompilerError without a compiler)."""
    if not isinstance(packed, PackedWeight):
        raise ValueError(f"packed: expected a tritune.kernels.PackedWeight, got {type(packed).__name__}")
    if act not in ACTIVATIONS:
        raise ValueError(f"act: {act!r} not allowed; allowed: {', '.join(ACTIVATIONS)}")
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} not allowed; allowed: {', '.join(KINDS)}")
    threads = _check_threads(threads)
    vw = compiler.vector_width(cc)
    geo = geometry(kind, packed.shape, in_hw, stride, vw, aligned=load_bound(packed), in_place=reads_in_place(packed))
    low = lower(packed, geo)
    if threads > 1 and not compiler.openmp_supported(cc):
        warnings.warn(f"compile_layer: the C compiler has no OpenMP support; running {threads} threads as 1", RuntimeWarning,
                      stacklevel=3)
        threads = 1
    return Build(packed, geo, low, _check_bias(bias, geo.cout), act, threads, vw)


@dataclass(eq=False)
class CompiledKernel:
    """A loaded kernel. ``variant``: its tiling; ``compile_s``: seconds spent compiling it (0 when
    the library came from the cache); ``source_hash``: SHA-256 of the C source; ``library``: the
    shared library's path."""

    geometry: Geometry
    pattern: str
    variant: Variant
    compile_s: float
    source_hash: str
    library: str
    threads: int
    act: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    cached: bool = False
    #: address of ``tt_band_<variant>(x, y, ws, npix)`` (direct 1x1 layouts; 0 otherwise): the
    #: entry a fused block calls for each band of rows
    band_fn: int = field(default=0, repr=False)
    #: address of ``tt_rows_<variant>(x, y, ws, qs, qe)`` (3x3 layers compiled with channel
    #: strides; 0 otherwise): runs of output rows, the producer of a fused block
    rows_fn: int = field(default=0, repr=False)
    _fn: Any = field(default=None, repr=False)
    _ws: np.ndarray | None = field(default=None, repr=False)
    _cdll: Any = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return self.geometry.kind

    def _check(self, x: Any, what: str, shape: tuple[int, ...], writeable: bool = False) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise ValueError(f"{what}: expected a numpy.ndarray, got {type(x).__name__}")
        if x.dtype != np.float32:
            raise ValueError(f"{what}: dtype {x.dtype} not allowed; allowed: float32")
        if tuple(x.shape) != shape:
            raise ValueError(f"{what}: shape {tuple(x.shape)} not allowed; allowed: {shape} (batch 1, [C, H, W])")
        if not x.flags.c_contiguous:
            raise ValueError(f"{what}: not C-contiguous; pass np.ascontiguousarray({what})")
        if writeable and not x.flags.writeable:
            raise ValueError(f"{what}: read-only array; allowed: a writeable buffer")
        return x

    def _args(self, x: np.ndarray, out: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        x = self._check(x, "x", self.in_shape)
        if out is None:
            out = np.empty(self.out_shape, dtype=np.float32)
        else:
            out = self._check(out, "out", self.out_shape, writeable=True)
            if np.may_share_memory(x, out):
                raise ValueError("out: overlaps x; allowed: separate input and output buffers")
        return x, out

    def run(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Compute the layer for one input; ``out`` (preallocated, optional) receives the result."""
        x, out = self._args(x, out)
        self._fn(x.ctypes.data, out.ctypes.data, self._ws.ctypes.data)
        return out

    def bind(self, x: np.ndarray, out: np.ndarray) -> Callable[[], None]:
        """A zero-argument callable computing ``out`` from ``x`` (checked once; keep both alive)."""
        x, out = self._args(x, out)
        fn, args = self._fn, (x.ctypes.data, out.ctypes.data, self._ws.ctypes.data)
        keep = (x, out, self._ws, self._cdll)

        def call(fn=fn, args=args, keep=keep) -> None:
            fn(*args)

        return call

    def step(self, x: np.ndarray, out: np.ndarray) -> "CStep":
        """This layer as a step of an `OpChain` (checked once; the caller keeps ``x``, ``out`` and
        this kernel alive while the chain exists)."""
        x, out = self._args(x, out)
        return CStep(fn_address(self._fn), x.ctypes.data, out.ctypes.data, self._ws.ctypes.data)

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return self.run(x, out)


def load(build: Build, lib: compiler.Library, variant: Variant, source: str) -> CompiledKernel:
    """Bind ``tt_run_<variant>`` of a compiled library of ``build``."""
    cdll = ctypes.CDLL(str(lib.path))
    if cdll.tt_abi_version() != ABI_VERSION:
        raise compiler.CompilerError(f"{lib.path}: ABI version {cdll.tt_abi_version()}, expected {ABI_VERSION}")
    cdll.tt_workspace_floats.restype = ctypes.c_long
    try:
        fn = getattr(cdll, f"tt_run_{variant.name}")
    except AttributeError:
        raise ValueError(f"tile: variant {variant.name} is not in library {lib.path}") from None
    fn.argtypes = [_C_VOID_P, _C_VOID_P, _C_VOID_P]
    fn.restype = None
    band = getattr(cdll, f"tt_band_{variant.name}", None)
    band_fn = fn_address(band) if band is not None else 0
    rows = getattr(cdll, f"tt_rows_{variant.name}", None)
    rows_fn = fn_address(rows) if rows is not None else 0
    ws = aligned_empty((int(cdll.tt_workspace_floats()),))
    ws[:] = 0.0
    geo = build.geo
    if geo.kind == "linear":
        in_shape, out_shape = (geo.cin,), (geo.cout,)
    else:
        in_shape, out_shape = (geo.cin, *geo.in_hw), (geo.cout, *geo.out_hw)
    return CompiledKernel(
        geometry=geo, pattern=build.packed.pattern, variant=variant, compile_s=lib.compile_s,
        source_hash=hashlib.sha256(source.encode()).hexdigest(), library=str(lib.path), threads=build.threads,
        act=build.act, in_shape=in_shape, out_shape=out_shape, cached=not lib.compiled, band_fn=band_fn, rows_fn=rows_fn, _fn=fn, _ws=ws,
        _cdll=cdll,
    )


def compile_layer(packed: PackedWeight, kind: str, in_hw: tuple[int, int] | None = None, stride: int = 1, bias: Any = None,
                  act: str = "none", tile: Variant | dict | None = None, threads: int = 1, *,
                  cache_dir: str | os.PathLike | None = None, cc: str | None = None,
                  channel_strides: tuple[int, int] | None = None) -> CompiledKernel:
    """Generate, compile (or fetch from the cache) and load the kernel of one layer.

    ``kind``: ``conv1x1`` / ``conv3x3`` (padding 1, stride 1 or 2) / ``linear``; ``in_hw``: the
    input's (H, W) (not for linear); ``bias`` ([O]) and ``act`` (none, relu, hswish, hsigmoid)
    are fused; ``tile``: a `Variant` (default: `default_variant`; `tritune.kernels.codegen.autotune`
    measures instead); ``threads``: OpenMP threads inside the call. Patterns: every family of
    `tritune.kernels.formats` (dense and channel run through the block kernel with full 8x1
    blocks); kernel_pattern only for conv3x3. ``channel_strides``: (input, output) floats between
    channels, for 1x1 kernels that run on bands of rows inside larger tensors (`band_fn`), and
    (H*W, output stride) for 3x3 layers that produce runs of rows into one (`rows_fn`)."""
    build = prepare(packed, kind, in_hw, stride, bias, act, threads, cc)
    if channel_strides is not None:
        if build.geo.mode == "staged":  # 1x1: bands start anywhere in a row, read in place; 3x3: the grid is the output
            geo = geometry(kind, packed.shape, in_hw, stride, build.vector_width, aligned=False)
            build = replace(build, geo=geo, low=lower(packed, geo))
        build = replace(build, channel_strides=tuple(int(v) for v in channel_strides))
    if tile is None:
        variant = default_variant(build.geo, build.low, build.vector_width)
        if channel_strides is not None:  # band kernels read their rows in place
            variant = replace(variant, pack=False)
    else:
        variant = Variant.coerce(tile)
    source = build.source([variant])
    lib = compiler.compile_library(source, openmp=build.threads > 1, cache=cache_dir, cc=cc, name=_lib_name(build))
    return load(build, lib, variant, source)


def _lib_name(build: Build) -> str:
    geo = build.geo
    return f"{geo.kind}-{build.packed.pattern.replace(':', '_')}-{geo.cout}x{geo.cin}"


__all__ = ["Build", "CompiledKernel", "compile_layer", "default_variant", "load", "prepare"]
