"""Run a whole planned network in one C call: an op chain plus the small element-wise ops it needs.

A network of ~100 ops driven from Python pays a ctypes or numpy call per op (1-5 us each) and
runs its element-wise steps (squeeze-excite pooling and scaling, residual adds, the large final
matrix-vector product) as separate numpy passes. At batch 1 that is a large share of a model that
runs in a few milliseconds. Here every step is a C function with the generated kernels' calling
convention ``void f(void *a, void *b, void *c)`` and `OpChain` calls them in order from C.

The element-wise library (`elementwise`) is compiled once per machine and cached like every
generated kernel (`tritune.kernels.codegen.compiler`). Its functions take their sizes from a
small ``long`` parameter array (the third pointer):

* ``tt_mean(x, y, p)``: ``y[c] = mean(x[c, :])``, ``p = {C, HW}``;
* ``tt_scale(x, s, p)``: ``x[c, :] *= s[c]`` in place, ``p = {C, HW}``;
* ``tt_add(x, r, p)``: ``x += r`` in place, ``p = {N}``;
* ``tt_matvec(x, y, p)``: ``y = act(W x + b)``, ``p = {out, in, &W, &b, act}`` (act 0 none,
  1 relu, 2 hswish, 3 hsigmoid) -- for dense linear layers too large to compile as constants;
* ``tt_quant(x, y, p)``: uint8 codes ``y = clamp(rint(x * inv) + z, 0, qmax)`` of float32 ``x``,
  ``p = {N, z, qmax, &{inv, scale}}`` (the arithmetic of torch's fake-quantize kernel);
* ``tt_fakequant(x, y, p)``: ``y = (codes(x) - z) * scale`` in float32 (a float layer whose input
  is fake-quantized), ``p`` as ``tt_quant``;
* ``tt_scale_quant(x, s, p)``: the uint8 codes of ``x[c, :] * s[c]`` (a squeeze-excite scale
  feeding an integer layer), ``p = {C, HW, z, qmax, &{inv, scale}, &y}``.
"""
from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from . import compiler
from .csource import prelude

ACT_CODES = {"none": 0, "relu": 1, "hswish": 2, "hsigmoid": 3}
_STEP_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)

_SOURCE = r"""
#include <time.h>
#include <math.h>
INL float act_code_s(float v, long a) {
    if (a == 1) return smax(v, 0.0f);
    if (a == 2) return v * smin(smax(v + 3.0f, 0.0f), 6.0f) * (1.0f / 6.0f);
    if (a == 3) return smin(smax(v + 3.0f, 0.0f), 6.0f) * (1.0f / 6.0f);
    return v;
}
INL float hsum(vf v) { float t[VW]; vst(t, v); float s = 0.0f; for (int i = 0; i < VW; i++) s += t[i]; return s; }

void tt_mean(void *xv, void *yv, void *pv) {
    const float *restrict x = xv; float *restrict y = yv; const long *p = pv;
    const long C = p[0], HW = p[1];
    const float inv = 1.0f / (float)HW;
    for (long c = 0; c < C; c++) {
        const float *xc = x + c * HW;
        vf a0 = {0}, a1 = {0};
        long i = 0;
        for (; i + 2 * VW <= HW; i += 2 * VW) { a0 += vld(xc + i); a1 += vld(xc + i + VW); }
        for (; i + VW <= HW; i += VW) a0 += vld(xc + i);
        float s = hsum(a0 + a1);
        for (; i < HW; i++) s += xc[i];
        y[c] = s * inv;
    }
}

void tt_scale(void *xv, void *sv, void *pv) {
    float *restrict x = xv; const float *restrict s = sv; const long *p = pv;
    const long C = p[0], HW = p[1];
    for (long c = 0; c < C; c++) {
        float *xc = x + c * HW;
        const float k = s[c];
        long i = 0;
        for (; i + VW <= HW; i += VW) vst(xc + i, vld(xc + i) * k);
        for (; i < HW; i++) xc[i] *= k;
    }
}

void tt_add(void *xv, void *rv, void *pv) {
    float *restrict x = xv; const float *restrict r = rv; const long n = ((const long *)pv)[0];
    long i = 0;
    for (; i + VW <= n; i += VW) vst(x + i, vld(x + i) + vld(r + i));
    for (; i < n; i++) x[i] += r[i];
}

/* One row at a time: the rows are contiguous, so the weights stream through memory in one
   sequential run, which the hardware prefetcher follows (a classifier's weights are megabytes
   and come from DRAM inside a network; four rows at once, four interleaved runs, took 1.6x as
   long there on a Zen 4). */
void tt_matvec(void *xv, void *yv, void *pv) {
    const float *restrict x = xv; float *restrict y = yv; const long *p = pv;
    const long O = p[0], I = p[1], act = p[4];
    const float *restrict W = (const float *)p[2];
    const float *restrict b = (const float *)p[3];
    for (long o = 0; o < O; o++) {
        const float *w = W + o * I;
        vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        long i = 0;
        for (; i + 4 * VW <= I; i += 4 * VW) {
            a0 += vld(w + i) * vld(x + i); a1 += vld(w + i + VW) * vld(x + i + VW);
            a2 += vld(w + i + 2 * VW) * vld(x + i + 2 * VW); a3 += vld(w + i + 3 * VW) * vld(x + i + 3 * VW);
        }
        for (; i + VW <= I; i += VW) a0 += vld(w + i) * vld(x + i);
        float s = hsum((a0 + a1) + (a2 + a3));
        for (; i < I; i++) s += w[i] * x[i];
        y[o] = act_code_s(s + b[o], act);
    }
}

/* A fused inverted-residual block (tritune.kernels.codegen.fused): expand 1x1 -> depthwise ->
   project 1x1 band after band of output rows, so the expanded tensor lives only in a ring of RB
   rows per channel (and the depthwise output in a one-band buffer) that stays in L2. Each expanded
   row is computed once. p = {expand band fn (0: none, the depthwise reads x: ring = x, RB = H),
   its ws, depthwise band fn, its ws, project band fn (0: none, the depthwise writes y), its ws,
   ring, band buffer, H, W, HO, WO, S, K, R, RB, ring channel stride, band buffer channel stride,
   G, producer kind, residual channels}: expanded rows are computed in multiples of G rows (G * W a
   multiple of the SIMD width, RB a multiple of G), so every run starts on a vector boundary.
   Producer kind 0: the expand entry is a 1x1 band function (rows of x in place); 1: a 3x3 rows
   function (a stem: it reads the whole x and writes output positions qs .. qe), H and W are then
   its output's. Residual channels > 0 (stride 1, producer of the output's channel count): the
   block's residual sum with the produced rows, read from the ring, since with a stem the block
   input never exists in full. */
typedef void (*tt_band1x1)(const float *, float *, float *, long);
typedef void (*tt_rows3x3)(const float *, float *, float *, long, long);
typedef void (*tt_banddw)(const float *, float *, float *, const long *);
void tt_mbconv(void *xv, void *yv, void *pv) {
    const long *p = pv;
    const tt_band1x1 fe = (tt_band1x1)p[0], fp = (tt_band1x1)p[4];
    const tt_banddw fd = (tt_banddw)p[2];
    float *we = (float *)p[1], *wd = (float *)p[3], *wp = (float *)p[5], *ring = (float *)p[6], *band = (float *)p[7];
    const long H = p[8], W = p[9], HO = p[10], WO = p[11], S = p[12], K = p[13], R = p[14], RB = p[15];
    const long ldr = p[16], ldb = p[17], G = p[18], kind = p[19], res = p[20];
    const float *x = xv;
    float *y = yv;
    long done = fe ? 0 : H; /* expanded rows computed so far */
    const float *src = fe ? ring : x;
    for (long yo0 = 0; yo0 < HO; yo0 += R) {
        const long nr = HO - yo0 < R ? HO - yo0 : R;
        long need = ((yo0 + nr - 1) * S - K / 2 + K + G - 1) / G * G;
        if (need > H) need = H;
        while (done < need) { /* new rows, in runs that do not wrap around the ring */
            const long slot = done % RB, n = need - done < RB - slot ? need - done : RB - slot;
            if (kind == 1) ((tt_rows3x3)p[0])(x, ring + slot * W, we, done * W, (done + n) * W);
            else fe(x + done * W, ring + slot * W, we, n * W);
            done += n;
        }
        const long dp[5] = {yo0, nr, RB, ldr, fp ? ldb : HO * WO};
        fd(src, fp ? band : y + yo0 * WO, wd, dp);
        if (fp) fp(band, y + yo0 * WO, wp, nr * WO);
        for (long c = 0; c < res; c++) /* rows yo0 .. yo0 + nr are still in the ring: the band read them */
            for (long j = 0; j < nr; j++) {
                const float *restrict rr = ring + c * ldr + ((yo0 + j) % RB) * W;
                float *restrict yy = y + c * HO * WO + (yo0 + j) * WO;
                for (long i = 0; i < WO; i++) yy[i] += rr[i];
            }
    }
}

typedef void (*tt_step)(void *, void *, void *);
void tt_chain(long n, void *const *fns, void *const *args) {
    for (long i = 0; i < n; i++) ((tt_step)fns[i])(args[3 * i], args[3 * i + 1], args[3 * i + 2]);
}
/* the same, adding each step's wall time (seconds) to seconds[i]: where the time goes inside a
   real inference, caches as the network leaves them (timing ops alone flatters them) */
void tt_chain_timed(long n, void *const *fns, void *const *args, double *seconds) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) {
        ((tt_step)fns[i])(args[3 * i], args[3 * i + 1], args[3 * i + 2]);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        seconds[i] += (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        t0 = t1;
    }
}

#if defined(__AVX512F__) && VW == 16
#include <immintrin.h>
#endif
INL int tt_code(float x, float inv, int z, int qmax) { int q = (int)nearbyintf(x * inv) + z; return q < 0 ? 0 : (q > qmax ? qmax : q); }
/* codes of n floats (times k) into y */
static void tt_quant_run(const float *restrict x, uint8_t *restrict y, long n, float k, float inv, int z, int qmax) {
    long i = 0;
#if defined(__AVX512F__) && VW == 16
    const __m512 vk = _mm512_set1_ps(k), vinv = _mm512_set1_ps(inv);
    const __m512i vz = _mm512_set1_epi32(z), lo = _mm512_setzero_si512(), hi = _mm512_set1_epi32(qmax);
    for (; i + 16 <= n; i += 16) {
        __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), vk), vinv)), vz);
        _mm_storeu_si128((__m128i *)(y + i), _mm512_cvtepi32_epi8(_mm512_min_epi32(_mm512_max_epi32(q, lo), hi)));
    }
#endif
    for (; i < n; i++) y[i] = (uint8_t)tt_code(x[i] * k, inv, z, qmax);
}
void tt_quant(void *xv, void *yv, void *pv) {
    const long *p = pv; const float *f = (const float *)p[3];
    tt_quant_run(xv, yv, p[0], 1.0f, f[0], (int)p[1], (int)p[2]);
}
void tt_fakequant(void *xv, void *yv, void *pv) {
    const float *restrict x = xv; float *restrict y = yv; const long *p = pv; const float *f = (const float *)p[3];
    const int z = (int)p[1], qmax = (int)p[2];
    for (long i = 0; i < p[0]; i++) y[i] = (float)(tt_code(x[i], f[0], z, qmax) - z) * f[1];
}
void tt_scale_quant(void *xv, void *sv, void *pv) {
    const float *x = xv; const float *s = sv; const long *p = pv; const float *f = (const float *)p[4];
    uint8_t *y = (uint8_t *)p[5];
    for (long c = 0; c < p[0]; c++) tt_quant_run(x + c * p[1], y + c * p[1], p[1], s[c], f[0], (int)p[2], (int)p[3]);
}
int tt_abi_version(void) { return 1; }
"""


@dataclass(frozen=True)
class CStep:
    """One step of a chain: a C function address and its three pointer arguments (addresses)."""

    fn: int
    a: int
    b: int
    c: int

    def bound(self) -> Any:
        """A zero-argument callable running this step alone, from Python."""
        f, a, b, c = _STEP_TYPE(self.fn), self.a, self.b, self.c
        return lambda: f(a, b, c)


@functools.lru_cache(maxsize=None)
def elementwise(cc: str | None = None, cache_dir: str | None = None) -> ctypes.CDLL:
    """The compiled element-wise library (built once per machine and compiler, then cached)."""
    source = prelude(compiler.vector_width(cc)) + _SOURCE
    lib = compiler.compile_library(source, cache=cache_dir, cc=cc, name="elementwise")
    cdll = ctypes.CDLL(str(lib.path))
    cdll.tt_chain.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    cdll.tt_chain.restype = None
    cdll.tt_chain_timed.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    cdll.tt_chain_timed.restype = None
    for name in ("tt_mean", "tt_scale", "tt_add", "tt_matvec", "tt_mbconv", "tt_quant", "tt_fakequant", "tt_scale_quant"):
        getattr(cdll, name).argtypes = [ctypes.c_void_p] * 3
        getattr(cdll, name).restype = None
    return cdll


def fn_address(fn: Any) -> int:
    """Address of a loaded C function (what a chain step calls)."""
    return int(ctypes.cast(fn, ctypes.c_void_p).value)


def address(cdll: ctypes.CDLL, name: str) -> int:
    """Address of an exported function of ``cdll``."""
    return fn_address(getattr(cdll, name))


def _params(values: Sequence[int]) -> np.ndarray:
    return np.asarray(list(values), dtype=np.int64)


@dataclass(eq=False)
class ElementwiseStep:
    """An element-wise op as a chain step; keeps its parameter array (and weights) alive."""

    step: CStep
    keep: tuple = field(default=(), repr=False)
    _run: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._run = self.step.bound()

    def __call__(self) -> None:
        """Run this step alone (from Python; a chain calls it from C)."""
        self._run()


def _checked(arr: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or not arr.flags.c_contiguous:
        raise ValueError(f"{what}: expected a C-contiguous float32 numpy array, got {type(arr).__name__} {getattr(arr, 'dtype', '')}")
    return arr


def _per_channel(fn: str, x: np.ndarray, v: np.ndarray, what: str, cc: str | None, cache_dir: str | None) -> ElementwiseStep:
    """A step pairing ``x`` ``[C, ...]`` with one value per channel ``v`` (named ``what``)."""
    x, v = _checked(x, "x"), _checked(v, what)
    if v.size != x.shape[0]:
        raise ValueError(f"{what}: {v.size} values, expected {x.shape[0]} (one per channel of x)")
    lib = elementwise(cc, cache_dir)
    p = _params([x.shape[0], x.size // x.shape[0]])
    return ElementwiseStep(CStep(address(lib, fn), x.ctypes.data, v.ctypes.data, p.ctypes.data), (x, v, p, lib))


def mean_step(x: np.ndarray, out: np.ndarray, cc: str | None = None, cache_dir: str | None = None) -> ElementwiseStep:
    """``out[c] = mean(x[c])`` for ``x`` of shape ``[C, ...]``."""
    return _per_channel("tt_mean", x, out, "out", cc, cache_dir)


def scale_step(x: np.ndarray, s: np.ndarray, cc: str | None = None, cache_dir: str | None = None) -> ElementwiseStep:
    """``x[c] *= s[c]`` in place."""
    return _per_channel("tt_scale", x, s, "s", cc, cache_dir)


def add_step(x: np.ndarray, r: np.ndarray, cc: str | None = None, cache_dir: str | None = None) -> ElementwiseStep:
    """``x += r`` in place (same size)."""
    x, r = _checked(x, "x"), _checked(r, "r")
    if x.size != r.size:
        raise ValueError(f"r: {r.size} values, expected {x.size} (the size of x)")
    lib = elementwise(cc, cache_dir)
    p = _params([x.size])
    return ElementwiseStep(CStep(address(lib, "tt_add"), x.ctypes.data, r.ctypes.data, p.ctypes.data), (x, r, p, lib))


def matvec_step(w: np.ndarray, b: np.ndarray | None, act: str, x: np.ndarray, out: np.ndarray,
                cc: str | None = None, cache_dir: str | None = None) -> ElementwiseStep:
    """``out = act(w @ x + b)`` with the weights passed by pointer (``w``: ``[out, in]``)."""
    if act not in ACT_CODES:
        raise ValueError(f"act: {act!r} not allowed; allowed: {', '.join(ACT_CODES)}")
    w = np.ascontiguousarray(w, dtype=np.float32)
    b = np.zeros(w.shape[0], np.float32) if b is None else np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
    x, out = _checked(x, "x"), _checked(out, "out")
    if w.ndim != 2 or x.size != w.shape[1] or out.size != w.shape[0] or b.size != w.shape[0]:
        raise ValueError(f"w: shape {w.shape} does not match x ({x.size}), out ({out.size}) and b ({b.size})")
    lib = elementwise(cc, cache_dir)
    p = _params([w.shape[0], w.shape[1], w.ctypes.data, b.ctypes.data, ACT_CODES[act]])
    return ElementwiseStep(CStep(address(lib, "tt_matvec"), x.ctypes.data, out.ctypes.data, p.ctypes.data), (w, b, x, out, p, lib))


def _grid(aq: Any) -> tuple[list[int], np.ndarray]:
    """(zero point, qmax) and the float parameters {1 / scale (float32, as torch), scale} of an
    `tritune.kernels.quant.AffineQuant`."""
    return [int(aq.zero_point), int(aq.qmax)], np.array([aq.inv_scale, aq.scale], dtype=np.float32)


def _codes(arr: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or not arr.flags.c_contiguous:
        raise ValueError(f"{what}: expected a C-contiguous uint8 numpy array, got {type(arr).__name__} {getattr(arr, 'dtype', '')}")
    return arr


def quant_step(x: np.ndarray, y: np.ndarray, aq: Any, cc: str | None = None, cache_dir: str | None = None) -> ElementwiseStep:
    """``y`` = uint8 codes of float32 ``x`` on grid ``aq`` (same size)."""
    x, y = _checked(x, "x"), _codes(y, "y")
    if x.size != y.size:
        raise ValueError(f"y: {y.size} values, expected {x.size} (the size of x)")
    ints, floats = _grid(aq)
    lib = elementwise(cc, cache_dir)
    p = _params([x.size, *ints, floats.ctypes.data])
    return ElementwiseStep(CStep(address(lib, "tt_quant"), x.ctypes.data, y.ctypes.data, p.ctypes.data), (x, y, p, floats, lib))


def fakequant_step(x: np.ndarray, y: np.ndarray, aq: Any, cc: str | None = None, cache_dir: str | None = None) -> ElementwiseStep:
    """``y`` = ``x`` fake-quantized on grid ``aq`` (float32, same size; may be ``x`` itself)."""
    x, y = _checked(x, "x"), _checked(y, "y")
    if x.size != y.size:
        raise ValueError(f"y: {y.size} values, expected {x.size} (the size of x)")
    ints, floats = _grid(aq)
    lib = elementwise(cc, cache_dir)
    p = _params([x.size, *ints, floats.ctypes.data])
    return ElementwiseStep(CStep(address(lib, "tt_fakequant"), x.ctypes.data, y.ctypes.data, p.ctypes.data), (x, y, p, floats, lib))


def scale_quant_step(x: np.ndarray, s: np.ndarray, y: np.ndarray, aq: Any, cc: str | None = None,
                     cache_dir: str | None = None) -> ElementwiseStep:
    """``y[c] = codes(x[c] * s[c])`` on grid ``aq`` (``x`` float32 ``[C, ...]``, ``y`` uint8 of its size)."""
    x, s, y = _checked(x, "x"), _checked(s, "s"), _codes(y, "y")
    if s.size != x.shape[0] or y.size != x.size:
        raise ValueError(f"s / y: {s.size} / {y.size} values, expected {x.shape[0]} / {x.size}")
    ints, floats = _grid(aq)
    lib = elementwise(cc, cache_dir)
    p = _params([x.shape[0], x.size // x.shape[0], *ints, floats.ctypes.data, y.ctypes.data])
    return ElementwiseStep(CStep(address(lib, "tt_scale_quant"), x.ctypes.data, s.ctypes.data, p.ctypes.data), (x, s, y, p, floats, lib))


class OpChain:
    """Calls ``steps`` in order with one ctypes call (``keep``: objects owning the memory the
    steps point to, held for the chain's lifetime)."""

    def __init__(self, steps: Sequence[CStep], keep: Sequence[Any] = (), cc: str | None = None, cache_dir: str | None = None) -> None:
        if not steps:
            raise ValueError("steps: empty; allowed: at least one step")
        self._lib = elementwise(cc, cache_dir)
        self.n = len(steps)
        self._fns = (ctypes.c_void_p * self.n)(*[s.fn for s in steps])
        self._args = (ctypes.c_void_p * (3 * self.n))(*[v for s in steps for v in (s.a, s.b, s.c)])
        self._keep = tuple(keep)
        self._call = self._lib.tt_chain

    def __call__(self) -> None:
        self._call(self.n, self._fns, self._args)

    def timed(self, repeats: int = 20, warmup: int = 3) -> np.ndarray:
        """Median seconds of each step inside whole runs of the chain (``repeats`` runs)."""
        for _ in range(warmup):
            self()
        out = np.zeros((repeats, self.n), dtype=np.float64)
        for r in range(repeats):
            self._lib.tt_chain_timed(self.n, self._fns, self._args, out[r].ctypes.data)
        return np.median(out, axis=0)


__all__ = ["ACT_CODES", "CStep", "ElementwiseStep", "OpChain", "add_step", "address", "elementwise", "fakequant_step", "fn_address", "matvec_step",
           "mean_step", "quant_step", "scale_quant_step", "scale_step"]
