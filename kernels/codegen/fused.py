"""Fused inverted-residual blocks: expand 1x1 -> depthwise -> project 1x1, band after band of rows.

Measured on the largest mobilenet at 224 px (benchmarks/codegen_model.py): the first blocks write
and re-read expanded tensors of 2-7 MB, more than this CPU keeps in its caches while a whole
network streams through them, so inside a network their 1x1 and depthwise layers ran 2-4x slower
than alone. Fused, the expanded tensor never exists in full: a ring of ``RB`` expanded rows per
channel (and one band of depthwise output) stays in L2, each expanded row is computed once, and
the block's memory traffic is its input and output (the idea of patch-based inference, MCUNetV2,
Lin et al. 2021, applied to one block at a time).

The kernels are the layer kernels of `tritune.kernels.codegen` compiled for bands: the 1x1 ones
with channel strides (`compile_layer(channel_strides=...)`, entry ``tt_band``), the depthwise
one with a one-band workspace (`compile_depthwise(band=...)`). The network's first block can
take the stride-2 stem as its producer instead of an expand layer (entry ``tt_rows`` of a 3x3
kernel: runs of output rows written into the ring), adding its residual from the ring, so the
stem's output is never written in full either. The driver loop is C
(``tt_mbconv`` of `tritune.kernels.codegen.chain.elementwise`), so a fused block is one step of an
`OpChain`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..formats import PackedWeight
from . import compiler
from .chain import CStep, address, elementwise
from .depthwise import DepthwiseKernel, compile_depthwise
from .generate import Variant
from .runtime import CompiledKernel, aligned_empty, compile_layer

#: Bytes the ring and the band buffer may take together: about the 1 MiB L2 of this CPU less
#: what the streaming weights need. One development run, whole networks at 224 px side by side
#: (k = 3 / k = 7): 384 KiB 1.14x / 0.96x over unfused, 768 KiB 1.14x / 1.08x, 1.5 MiB 1.11x / 1.03x.
BAND_BUDGET = 768 * 1024


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def band_rows(expanded: int, in_hw: tuple[int, int], stride: int, kernel: int, budget: int | None = None, vw: int = 16) -> int:
    """Most output rows per band whose ring and band buffer fit ``budget`` bytes (at least 1),
    preferring a count whose band of output starts on a vector boundary."""
    budget = BAND_BUDGET if budget is None else budget
    h, w = in_hw
    ho, wo = (h + stride - 1) // stride, (w + stride - 1) // stride
    ahead = vw // math.gcd(w, vw) - 1
    fits = [r for r in range(1, ho + 1)
            if 4 * expanded * (_round_up(((r - 1) * stride + kernel + ahead) * w, vw) + _round_up(r * wo, vw)) <= budget]
    aligned = [r for r in fits if (r * wo) % vw == 0]
    return max(aligned or fits or [1])


def new_scratch() -> np.ndarray:
    """A zeroed, aligned buffer of `BAND_BUDGET` bytes for the ring and band buffers of fused blocks."""
    buf = aligned_empty((BAND_BUDGET // 4,))
    buf[:] = 0.0
    return buf


@dataclass(eq=False)
class FusedBlock:
    """A compiled fused block: ``run(x, out)``, or ``step(x, out)`` for an `OpChain`."""

    expand: CompiledKernel | None
    depthwise: DepthwiseKernel
    project: CompiledKernel | None
    rows: int
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    _ring: np.ndarray = field(repr=False)
    _band: np.ndarray = field(repr=False)
    _params: np.ndarray = field(repr=False)
    _lib: Any = field(repr=False)
    #: the 3x3 convolution producing the depthwise input instead of an expand layer (a stem)
    stem: CompiledKernel | None = None

    @property
    def pooled(self) -> np.ndarray | None:
        """Channel means of the last output (``pool=True``), written by every run."""
        return self.depthwise.pooled

    @property
    def compile_s(self) -> float:
        return sum(k.compile_s for k in (self.stem, self.expand, self.depthwise, self.project) if k is not None)

    @property
    def cached(self) -> bool:
        return all(k.cached for k in (self.stem, self.expand, self.depthwise, self.project) if k is not None)

    def _checked(self, x: Any, out: Any) -> tuple[np.ndarray, np.ndarray]:
        for what, arr, shape in (("x", x, self.in_shape), ("out", out, self.out_shape)):
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or tuple(arr.shape) != shape or not arr.flags.c_contiguous:
                raise ValueError(f"{what}: expected a C-contiguous float32 numpy array of shape {shape}, got "
                                 f"{type(arr).__name__} {getattr(arr, 'dtype', '')} {tuple(getattr(arr, 'shape', ()))}")
        if np.may_share_memory(x, out):
            raise ValueError("out: overlaps x; allowed: separate input and output buffers")
        return x, out

    def step(self, x: np.ndarray, out: np.ndarray) -> CStep:
        """This block as one step of an `OpChain` (``x``, ``out`` and this block must stay alive)."""
        x, out = self._checked(x, out)
        return CStep(address(self._lib, "tt_mbconv"), x.ctypes.data, out.ctypes.data, self._params.ctypes.data)

    def run(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = aligned_empty(self.out_shape) if out is None else out
        self.step(x, out).bound()()
        return out


def compile_fused_block(expand: PackedWeight | None, dw_weight: Any, in_hw: tuple[int, int], stride: int = 1,
                        project: PackedWeight | None = None, *, expand_bias: Any = None, expand_act: str = "none",
                        dw_bias: Any = None, dw_act: str = "none", project_bias: Any = None, pool: bool = False, rows: int = 0,
                        expand_tile: Any = None, project_tile: Any = None, scratch: np.ndarray | None = None,
                        stem: PackedWeight | None = None, stem_stride: int = 2, stem_bias: Any = None, stem_act: str = "none",
                        stem_tile: Any = None, residual: bool = False, threads: int = 1, cache_dir: Any = None,
                        cc: str | None = None) -> FusedBlock:
    """Compile expand (packed ``[E, C, 1, 1]``; None: the block starts with the depthwise layer)
    -> depthwise (``[E, 1, k, k]``, stride 1/2, 'same' padding) -> project (packed
    ``[O, E, 1, 1]``, no activation; None: the block ends with the depthwise layer, e.g. before a
    squeeze-excite) for inputs ``[C, *in_hw]``. ``pool`` (without project): also write each
    channel's mean to `FusedBlock.pooled` (the squeeze-excite pool). ``rows``: output
    rows per band (0: the most that fit `BAND_BUDGET`); ``expand_tile`` / ``project_tile``: the
    1x1 kernels' `Variant` (e.g. what `autotune` chose for the layer; default `default_variant`);
    ``scratch``: a float32 buffer (`new_scratch`) the ring and band buffer are carved from when it
    is large enough -- blocks of one network run one after another and can share it, so it stays
    in L2 from block to block.
    ``stem`` (packed ``[E, C, 3, 3]``, instead of ``expand``): a full 3x3 convolution (stride
    ``stem_stride`` = 2, padding 1, ``stem_bias`` / ``stem_act`` fused, single thread) computes the
    depthwise input band by band, so the network's first tensor never exists in full; ``in_hw``
    is then the stem's input size, and its output must be a whole number of SIMD vectors.
    ``residual`` (with a stem, stride 1, as many output channels as the stem): the block adds its
    input, which then never exists in full, to its output band by band, from the ring.
    Every width (input, and output with a
    project) must be at least one SIMD vector."""
    if stem is not None and expand is not None:
        raise ValueError("stem, expand: both given; allowed: one producer of the depthwise input (a 3x3 stem or a 1x1 expand)")
    if stem is not None and (threads != 1 or stem_stride != 2):  # stride 1 stages one shared plane, whose grid is not the output
        raise ValueError(f"stem: threads {threads}, stem_stride {stem_stride!r} not allowed; allowed: threads=1, stem_stride 2")
    x_hw = tuple(int(v) for v in in_hw)
    h, w = x_hw if stem is None else ((x_hw[0] + stem_stride - 1) // stem_stride, (x_hw[1] + stem_stride - 1) // stem_stride)
    vw = compiler.vector_width(cc)
    if stem is not None and (h * w) % vw:
        raise ValueError(f"in_hw: {in_hw!r} not allowed with a stem; allowed: a stem output of a whole number of {vw}-float vectors")
    dw = np.asarray(dw_weight.detach().cpu().numpy() if hasattr(dw_weight, "detach") else dw_weight, dtype=np.float32)
    producer = expand if stem is None else stem
    if producer is None and project is None:
        raise ValueError("expand, project: both None; allowed: at least one 1x1 layer to fuse with the depthwise one")
    if dw.ndim != 4 or (producer is not None and dw.shape[0] != producer.shape[0]):
        raise ValueError(f"dw_weight: shape {dw.shape} not allowed; allowed: [E, 1, k, k], one filter per expanded channel")
    e, k = dw.shape[0], dw.shape[2]
    ho, wo = (h + stride - 1) // stride, (w + stride - 1) // stride
    if (producer is not None and w < vw) or (project is not None and wo < vw):
        raise ValueError(f"in_hw: {in_hw!r} not allowed; allowed: input width >= {vw} and, with a project layer, output width >= {vw} (one SIMD vector)")
    if project is not None and (len(project.shape) != 4 or project.shape[1] != e):
        raise ValueError(f"project: shape {project.shape} not allowed; allowed: [O, {e}, 1, 1]")
    if residual and (stem is None or stride != 1 or project is None or project.shape[0] != e):
        raise ValueError("residual: allowed only with a stem, depthwise stride 1 and a project layer with as many outputs as the stem")
    if pool and project is not None:
        raise ValueError("pool: not allowed with a project layer; allowed: pool=True only when the block ends with the depthwise layer")
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 0:
        raise ValueError(f"rows: {rows!r} not allowed; allowed: an integer >= 0 (0: fit the L2 budget)")
    r = min(int(rows) or band_rows(e, (h, w), stride, k, vw=vw), ho)
    g = vw // math.gcd(w, vw)  # expanded rows per run: runs start on a vector boundary
    # ring rows: what one band reads, plus the rows computed ahead by rounding runs up to g rows;
    # new rows then overwrite only rows older than the band
    rb = _round_up((r - 1) * stride + k + g - 1, g)
    ldr, ldb = _round_up(rb * w, vw), _round_up(r * wo, vw)
    opts = dict(threads=threads, cache_dir=cache_dir, cc=cc)
    # band kernels read their rows in place: a tuned variant that packs tile panels runs unpacked
    expand_tile, project_tile = (None if t is None else replace(Variant.coerce(t), pack=False) for t in (expand_tile, project_tile))
    k_exp = k_stem = None
    if expand is not None:
        k_exp = compile_layer(expand, "conv1x1", (h, w), 1, expand_bias, expand_act, expand_tile, channel_strides=(h * w, ldr), **opts)
    elif stem is not None:
        k_stem = compile_layer(stem, "conv3x3", x_hw, stem_stride, stem_bias, stem_act, stem_tile,
                               channel_strides=(x_hw[0] * x_hw[1], ldr), **opts)
        if not k_stem.rows_fn:
            raise ValueError(f"stem: its kernel has no rows entry ({k_stem.geometry.mode} layout, grid {k_stem.geometry.wp} wide); "
                             "allowed: a 3x3 layer whose grid is its output")
    else:  # the depthwise layer reads the block input in place
        rb, ldr = h, h * w
    k_dw = compile_depthwise(dw, dw_bias, (h, w), stride, dw_act, cache_dir=cache_dir, cc=cc, band=r, pool=bool(pool))
    k_proj = None
    if project is not None:
        k_proj = compile_layer(project, "conv1x1", (ho, wo), 1, project_bias, "none", project_tile, channel_strides=(ldb, ho * wo), **opts)
    for kern, what in ((k_exp, "expand"), (k_proj, "project")):
        if kern is not None and not kern.band_fn:
            raise ValueError(f"{what}: its kernel has no band entry ({kern.geometry.mode} layout); allowed: a 1x1 layer in the direct layout")
    n_ring, n_band = (e * ldr if producer is not None else 0), (e * ldb if k_proj else 0)
    if scratch is not None and scratch.size >= n_ring + n_band:  # blocks run one after another: share it
        ring, band = scratch[:n_ring], scratch[n_ring:n_ring + n_band]
    else:
        ring, band = aligned_empty((n_ring,)), aligned_empty((n_band,))
        ring[:] = 0.0
        band[:] = 0.0

    def entry(kern: Any) -> int:  # a layer's band function (0: no such layer)
        return 0 if kern is None else int(kern.band_fn)

    def ws(kern: Any) -> int:
        return 0 if kern is None else int(kern._ws.ctypes.data)

    first = (int(k_stem.rows_fn), ws(k_stem)) if k_stem is not None else (entry(k_exp), ws(k_exp))
    params = np.array([*first, entry(k_dw), ws(k_dw), entry(k_proj), ws(k_proj), ring.ctypes.data,
                       band.ctypes.data, h, w, ho, wo, stride, k, r, rb, ldr, ldb, g, int(k_stem is not None), e if residual else 0],
                      dtype=np.int64)
    in_c = producer.shape[1] if producer is not None else e
    out_c = project.shape[0] if project is not None else e
    return FusedBlock(k_exp, k_dw, k_proj, r, (in_c, *x_hw), (out_c, ho, wo), ring, band, params, elementwise(cc, cache_dir), k_stem)


__all__ = ["FusedBlock", "BAND_BUDGET", "band_rows", "compile_fused_block", "new_scratch"]
