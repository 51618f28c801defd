"""Generated depthwise convolutions (k = 3/5/7, stride 1/2, 'same' padding k // 2, fused bias + activation).

Depthwise layers have no reduction to exploit and are memory bound, so they run dense; what pays
here is specialisation: every shape and the weights are compile-time constants, so the tap loops
unroll and each output vector keeps its accumulator in a register across all ``k*k`` taps.

Layout: per channel, the input plane is copied into a zero-bordered workspace split by column
phase (``plane[a][r, u] = padded[r, stride*u + a]``), so tap ``(dy, dx)`` of output ``(y, x)`` is
``plane[dx % stride][stride*y + dy, x + dx // stride]`` -- a contiguous vector load for stride 1
and 2 alike. Borders are never written, so the workspace is zeroed once when the kernel loads.
Built and cached by `tritune.kernels.codegen.compiler` like every other generated kernel.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import compiler
from .chain import CStep, fn_address
from .csource import PARTIAL_VECTORS, activation, float_array, prelude
from .plan import ACTIVATIONS
from .runtime import aligned_empty

KERNELS = (3, 5, 7)
STRIDES = (1, 2)
#: Output vectors per row and output rows computed together (accumulators held in registers
#: across the taps; an input vector loaded once feeds every output row it is a tap of).
TILE_VECTORS = 4
#: 0: pick by `default_rows` (measured, benchmarks/depthwise.py: k = 3 and small planes gain
#: most from 2 rows, k = 5 / 7 on large planes from 4, k = 3 on planes of 8 rows or less from 1)
ROWS_PER_TILE = 0


def default_rows(kernel: int, out_h: int) -> int:
    """Output rows per register tile where the caller names none (k = 3 on planes of 8 rows or
    less: 1, measured 1.2-1.4x over 2 rows on 7x7 outputs, benchmarks/depthwise.py --narrow)."""
    if kernel == 3 and out_h <= 8:
        return 1
    return 2 if kernel == 3 or out_h <= 14 else 4


def default_packed(kernel: int, stride: int, out_w: int, vw: int) -> bool:
    """Whether the channel-packed layout is the default: outputs at most one vector wide, except
    k = 3 at stride 2 on outputs wider than half a vector (measured single thread, AVX-512,
    against the planar tiling: 7x7 outputs k 3 / 5 / 7 3.8x / 1.0x / 1.0x at stride 1, k 3 2.0x
    at stride 2; 14x14 outputs k 3 / 5 / 7 1.05x / 1.5x / 1.6x at stride 1, k 3 0.76x at stride 2)."""
    return out_w <= vw and (kernel > 3 or stride == 1 or out_w <= vw // 2)


@dataclass(eq=False)
class DepthwiseKernel:
    """A loaded depthwise kernel: ``run(x, out)`` / ``bind(x, out)`` as `CompiledKernel`."""

    channels: int
    kernel: int
    stride: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    act: str
    compile_s: float
    source_hash: str
    library: str
    cached: bool
    _fn: Any = field(default=None, repr=False)
    _ws: np.ndarray | None = field(default=None, repr=False)
    _cdll: Any = field(default=None, repr=False)
    #: channel means of the last output (``pool=True`` only): written by every run
    pooled: np.ndarray | None = field(default=None, repr=False)
    #: output rows per band (0: whole-plane workspace)
    band: int = 0
    #: address of ``tt_band(x, y, ws, p)``: one band of output rows from a ring of input rows
    band_fn: int = field(default=0, repr=False)
    #: channel-packed layout (narrow planes, `_packed_source`)
    packed: bool = False

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.in_hw)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.out_hw)

    def _check(self, x: Any, what: str, shape: tuple[int, ...]) -> np.ndarray:
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or tuple(x.shape) != shape or not x.flags.c_contiguous:
            raise ValueError(f"{what}: expected a C-contiguous float32 numpy array of shape {shape}, got "
                             f"{type(x).__name__} {getattr(x, 'dtype', '')} {tuple(getattr(x, 'shape', ()))}")
        return x

    def _args(self, x: Any, out: Any) -> tuple[np.ndarray, np.ndarray]:
        x, out = self._check(x, "x", self.in_shape), self._check(out, "out", self.out_shape)
        if np.may_share_memory(x, out):
            raise ValueError("out: overlaps x; allowed: separate input and output buffers")
        return x, out

    def bind(self, x: np.ndarray, out: np.ndarray) -> Callable[[], None]:
        """A zero-argument callable computing ``out`` from ``x`` (checked once; keep both alive)."""
        x, out = self._args(x, out)
        fn, args, keep = self._fn, (x.ctypes.data, out.ctypes.data, self._ws.ctypes.data), (x, out, self._ws, self._cdll)

        def call(fn=fn, args=args, keep=keep) -> None:
            fn(*args)

        return call

    def step(self, x: np.ndarray, out: np.ndarray) -> Any:
        """This layer as a step of an `OpChain` (``x``, ``out`` and this kernel must stay alive)."""
        x, out = self._args(x, out)
        return CStep(fn_address(self._fn), x.ctypes.data, out.ctypes.data, self._ws.ctypes.data)

    def run(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = np.empty(self.out_shape, dtype=np.float32) if out is None else out
        self.bind(x, out)()
        return out


def _source(weight: np.ndarray, bias: np.ndarray, in_hw: tuple[int, int], stride: int, act: str, vw: int,
            rows: int = ROWS_PER_TILE, vectors: int = TILE_VECTORS, pool: bool = False, band: int = 0) -> str:
    C, _, k, _ = weight.shape
    H, W = in_hw
    p = k // 2
    ho, wo = (H + stride - 1) // stride, (W + stride - 1) // stride
    nvec = -(-wo // vw)
    # plane width: every vector load of the last tile (x up to nvec*vw, tap shift up to (k-1)//stride) stays inside
    wq = max(-(-(W + 2 * p) // stride), nvec * vw + (k - 1) // stride)
    # workspace rows: the padded plane, or one band of `band` output rows (its input rows and halo)
    hp = (min(band, ho) - 1) * stride + k if band else H + 2 * p
    nv = min(vectors, nvec)
    nr = min(rows or default_rows(k, ho), ho, band or ho)
    return "#include <immintrin.h>\n" + prelude(vw) + activation(act) + float_array("WT", weight.reshape(-1)) + float_array("BS", bias) + f"""
#define C {C}
#define H {H}
#define W {W}
#define K {k}
#define S {stride}
#define P {p}
#define HO {ho}
#define WO {wo}
#define WQ {wq}
#define HP {hp}
#define PLANE (HP * WQ)
#define NVEC {nvec}
#define NV {nv}
#define NR {nr}
#define POOL {int(pool)}
#define BAND {min(band, ho)}
#define POOL_OFF (((long)S * PLANE + 15) / 16 * 16)
long tt_workspace_floats(void) {{ return POOL ? POOL_OFF + C : (long)S * PLANE; }}
long tt_pool_offset(void) {{ return POOL ? POOL_OFF : -1; }}
int tt_abi_version(void) {{ return 1; }}

/* NR output rows x NV output vectors; each loaded input vector feeds every output row it is a tap of.
   Taps and rows are unrolled (accumulators stay in registers); input rows too for k = 3 only: fully
   unrolled k = 5 / 7 tiles outgrow what the compiler keeps in registers. */
INL void tile(const float *restrict ws, const float *restrict w, float b, float *restrict out, int yo, int v0, int nv, int nr, vf *csum) {{
    vf acc[NR][NV];
    for (int r = 0; r < NR; r++) for (int t = 0; t < NV; t++) acc[r][t] = (vf){{0}} + b;
    #pragma GCC unroll {16 if k == 3 else 1}
    for (int j = 0; j < S * (NR - 1) + K; j++) {{
        if (j > S * (nr - 1) + K - 1) break;
        #pragma GCC unroll 8
        for (int dx = 0; dx < K; dx++) {{
            const float *src = ws + (dx % S) * PLANE + (S * yo + j) * WQ + dx / S + v0 * VW;
            vf v[NV];
            for (int t = 0; t < NV; t++) if (t < nv) v[t] = vld(src + t * VW);
            #pragma GCC unroll 8
            for (int r = 0; r < NR; r++) {{
                const int dy = j - S * r;
                if (r < nr && dy >= 0 && dy < K) {{
                    const float wv = w[dy * K + dx];
                    for (int t = 0; t < NV; t++) if (t < nv) acc[r][t] += wv * v[t];
                }}
            }}
        }}
    }}
    for (int r = 0; r < NR; r++) {{
        if (r >= nr) break;
        float *o = out + (yo + r) * WO;
        for (int t = 0; t < NV; t++) {{
            if (t >= nv) break;
            int x0 = (v0 + t) * VW;
            vf res = act_v(acc[r][t]);
            if (x0 + VW <= WO) {{ vst(o + x0, res); if (POOL) *csum += res; }}
            else {{ /* the row's last, partial vector: a masked store where the CPU has one (1.2-1.5x on
                      14- and 56-wide rows); band kernels keep the scalar stores, because the fused
                      project kernel reads the band right away and ran 10 % slower after masked stores */
#if defined(__AVX512F__) && VW == 16 && !BAND
                const __mmask16 m = (__mmask16)((1u << (WO - x0)) - 1u);
                _mm512_mask_storeu_ps(o + x0, m, (__m512)res);
                if (POOL) *csum += (vf)_mm512_maskz_mov_ps(m, (__m512)res);
#else
                float tmp[VW], part[VW] = {{0}};
                vst(tmp, res);
                for (int i = 0; x0 + i < WO; i++) {{ o[x0 + i] = tmp[i]; part[i] = tmp[i]; }}
                if (POOL) *csum += vld(part);
#endif
            }}
        }}
    }}
}}

/* stride 2: the last REM (< 2 VW) input columns of a row, de-interleaved; masked vector loads and
   stores where the CPU has them (the masks are constants: REM is fixed by the layer's width) */
#define REM (W % (2 * VW))
INL void tail_copy(const float *restrict src, float *restrict ev, float *restrict od) {{
#if defined(__AVX512F__) && VW == 16
    const __mmask16 lo = (__mmask16)((1u << (REM < 16 ? REM : 16)) - 1u), hi = (__mmask16)((1u << (REM > 16 ? REM - 16 : 0)) - 1u);
    vf a = (vf)_mm512_maskz_loadu_ps(lo, src), c = (vf)_mm512_maskz_loadu_ps(hi, src + VW);
    _mm512_mask_storeu_ps(ev, (__mmask16)((1u << ((REM + 1) / 2)) - 1u), (__m512)__builtin_shuffle(a, c, EVEN));
    _mm512_mask_storeu_ps(od, (__mmask16)((1u << (REM / 2)) - 1u), (__m512)__builtin_shuffle(a, c, ODD));
#else
    for (int j = 0; j < REM; j++) {{ if (j % 2 == 0) ev[j / 2] = src[j]; else od[j / 2] = src[j]; }}
#endif
}}

/* one input row into workspace row j (zero-bordered), split by column phase for stride 2 */
INL void copy_row(const float *restrict row, float *restrict ws, long j) {{
    if (S == 1) {{ memcpy(ws + j * WQ + P, row, W * sizeof(float)); return; }}
    /* even input columns land in phase P % 2 from index P / 2, odd ones in phase (P + 1) % 2 from (P + 1) / 2 */
    float *ev = ws + (P % 2) * PLANE + j * WQ + P / 2;
    float *od = ws + ((P + 1) % 2) * PLANE + j * WQ + (P + 1) / 2;
    int m = 0;
    for (; 2 * (m + VW) <= W; m += VW) {{
        vf a = vld(row + 2 * m), c = vld(row + 2 * m + VW);
        vst(ev + m, __builtin_shuffle(a, c, EVEN));
        vst(od + m, __builtin_shuffle(a, c, ODD));
    }}
    if (2 * m < W) tail_copy(row + 2 * m, ev + m, od + m);
}}

/* the channel's plane into the zero-bordered workspace */
INL void copy_in(const float *restrict xc, float *restrict ws) {{
    for (int r = 0; r < H; r++) copy_row(xc + r * W, ws, r + P);
}}

INL void tiles(const float *restrict ws, const float *restrict w, float b, float *restrict yc, int nrows, vf *csum) {{
    int yo = 0;
    for (; yo + NR <= nrows; yo += NR) {{
        int v0 = 0;
        for (; v0 + NV <= NVEC; v0 += NV) tile(ws, w, b, yc, yo, v0, NV, NR, csum);
        if (v0 < NVEC) tile(ws, w, b, yc, yo, v0, NVEC - v0, NR, csum);
    }}
    for (; yo < nrows; yo++) {{
        int v0 = 0;
        for (; v0 + NV <= NVEC; v0 += NV) tile(ws, w, b, yc, yo, v0, NV, 1, csum);
        if (v0 < NVEC) tile(ws, w, b, yc, yo, v0, NVEC - v0, 1, csum);
    }}
}}

/* One band of a fused block: output rows yo0 .. yo0 + nr of every channel, from input rows kept in
   a ring of RB rows per channel (input row r of channel c at x + c * ldx + (r % RB) * W);
   p = {{yo0, nr, RB, ldx, ldy}}, y points at the band's first output row, ldy floats per channel. */
void tt_band(const float *restrict x, float *restrict y, float *restrict ws, const long *restrict p) {{
    const long yo0 = p[0], nr = p[1], rb = p[2], ldx = p[3], ldy = p[4];
    const long r0 = yo0 * S - P, nin = (nr - 1) * S + K;
    for (int c = 0; c < C; c++) {{
        const float *xc = x + c * ldx;
        for (long j = 0; j < nin; j++) {{
            const long r = r0 + j;
            if (r >= 0 && r < H) copy_row(xc + (r % rb) * W, ws, j);
            else for (int a = 0; a < S; a++) memset(ws + a * PLANE + j * WQ, 0, WQ * sizeof(float));
        }}
        vf csum = {{0}};
        tiles(ws, WT + c * K * K, BS[c], y + c * ldy, (int)nr, &csum);
        if (POOL) {{ /* channel sums over the bands; the mean once the last band is done */
            float t[VW], sum = 0.0f;
            vst(t, csum);
            for (int i = 0; i < VW; i++) sum += t[i];
            ws[POOL_OFF + c] = (yo0 == 0 ? 0.0f : ws[POOL_OFF + c]) + sum;
            if (yo0 + nr == HO) ws[POOL_OFF + c] *= 1.0f / (HO * WO);
        }}
    }}
}}

#if BAND
/* a band kernel run on a whole plane: band after band (the workspace holds one band) */
void tt_run(const float *restrict x, float *restrict y, float *restrict ws) {{
    for (long yo0 = 0; yo0 < HO; yo0 += BAND) {{
        const long p[5] = {{yo0, HO - yo0 < BAND ? HO - yo0 : BAND, H, (long)H * W, (long)HO * WO}};
        tt_band(x, y + yo0 * WO, ws, p);
    }}
}}
#else
void tt_run(const float *restrict x, float *restrict y, float *restrict ws) {{
    for (int c = 0; c < C; c++) {{
        copy_in(x + (long)c * H * W, ws);
        const float *w = WT + c * K * K;
        const float b = BS[c];
        float *yc = y + (long)c * HO * WO;
        vf csum = {{0}};
        tiles(ws, w, b, yc, HO, &csum);
        if (POOL) {{
            float t[VW], sum = 0.0f;
            vst(t, csum);
            for (int i = 0; i < VW; i++) sum += t[i];
            ws[POOL_OFF + c] = sum * (1.0f / (HO * WO));
        }}
    }}
}}
#endif
""".replace("EVEN", _shuffle_mask(vw, 0)).replace("ODD", _shuffle_mask(vw, 1))


def _transpose_source(vw: int) -> str:
    """``transpose(r)``: the ``vw x vw`` matrix held in ``r[0..vw)`` (one row per vector) transposed
    in registers. Each stage swaps the off-diagonal ``d x d`` blocks (d = vw/2, ..., 1) with two
    two-source shuffles per pair of rows (``vpermt2ps`` on AVX-512): ``log2(vw) * vw`` shuffles
    instead of ``vw * vw`` scalar moves."""
    lines, d = [], vw // 2
    while d >= 1:
        lo = ",".join(str(j if not j & d else vw + j - d) for j in range(vw))
        hi = ",".join(str(j + d if not j & d else vw + j) for j in range(vw))
        for i in (i for i in range(vw) if not i & d):
            lines.append(f"    {{ const vf a = r[{i}], b = r[{i + d}]; r[{i}] = __builtin_shuffle(a, b, (vi){{{lo}}}); "
                         f"r[{i + d}] = __builtin_shuffle(a, b, (vi){{{hi}}}); }}")
        d //= 2
    return "INL void transpose(vf *restrict r) {\n" + "\n".join(lines) + "\n}\n"


def _packed_source(weight: np.ndarray, bias: np.ndarray, in_hw: tuple[int, int], stride: int, act: str, vw: int,
                   pool: bool = False) -> str:
    """Channel-packed layout for narrow planes: one vector holds one pixel of ``vw`` channels.

    With an output narrower than half a vector, the planar kernel fills a fraction of each vector
    (7 of 16 lanes on 7x7 planes); here every lane does useful work. Each group of ``vw`` channels
    is transposed, ``vw`` pixels at a time in registers (`_transpose_source`), into a zero-bordered
    workspace of pixel vectors; every output pixel of a row keeps its accumulator in a register
    across the ``k*k`` taps; the output pixel vectors are staged and transposed back the same way."""
    C, _, k, _ = weight.shape
    H, W = in_hw
    p = k // 2
    ho, wo = (H + stride - 1) // stride, (W + stride - 1) // stride
    groups = -(-C // vw)
    wt = np.zeros((groups * vw, k * k), dtype=np.float32)
    wt[:C] = weight.reshape(C, k * k)
    wt = wt.reshape(groups, vw, k * k).transpose(0, 2, 1)  # [group][tap][lane]
    bs = np.zeros(groups * vw, dtype=np.float32)
    bs[:C] = bias
    return (prelude(vw) + PARTIAL_VECTORS + activation(act) + float_array("WT", wt.reshape(-1)) + float_array("BS", bs)
            + _transpose_source(vw)) + f"""
#define C {C}
#define G {groups}
#define H {H}
#define W {W}
#define K {k}
#define S {stride}
#define P {p}
#define HO {ho}
#define WO {wo}
#define WPD (W + 2 * P)
#define PIX ((H + 2 * P) * WPD)
#define OUT_OFF ((long)PIX * VW)
#define POOL {int(pool)}
#define POOL_OFF (OUT_OFF + (long)HO * WO * VW)
long tt_workspace_floats(void) {{ return POOL_OFF + (POOL ? G * VW : 0); }}
long tt_pool_offset(void) {{ return POOL ? POOL_OFF : -1; }}
int tt_abi_version(void) {{ return 1; }}

void tt_run(const float *restrict x, float *restrict y, float *restrict ws) {{
    float *restrict outb = ws + OUT_OFF; /* the group's output pixel vectors, [HO * WO][VW] */
    for (int g = 0; g < G; g++) {{
        const int c0 = g * VW, nc = C - c0 < VW ? C - c0 : VW;
        /* the group's planes, VW pixels at a time: pixel (r, q) of channel c0 + c into lane c of
           workspace pixel (r + P, q + P); borders stay zero, lanes past the last channel are zero
           (their weights are zero too) */
        for (int i0 = 0; i0 < H * W; i0 += VW) {{
            const int n = H * W - i0 < VW ? H * W - i0 : VW;
            vf r[VW];
            for (int c = 0; c < VW; c++) r[c] = c < nc ? load_part(x + (long)(c0 + c) * H * W + i0, n) : (vf){{0}};
            transpose(r);
            for (int i = 0; i < n; i++) {{
                const int pix = i0 + i, row = pix / W, col = pix - row * W;
                vst(ws + ((row + P) * WPD + col + P) * VW, r[i]);
            }}
        }}
        const float *wg = WT + (long)g * K * K * VW;
        const vf b = vld(BS + g * VW);
        vf csum = {{0}};
        for (int yo = 0; yo < HO; yo++) {{
            vf acc[WO];
            #pragma GCC unroll 16
            for (int q = 0; q < WO; q++) acc[q] = b;
            for (int dy = 0; dy < K; dy++) {{
                const float *row = ws + (long)(S * yo + dy) * WPD * VW;
                #pragma GCC unroll 7
                for (int dx = 0; dx < K; dx++) {{
                    const vf wv = vld(wg + (dy * K + dx) * VW);
                    #pragma GCC unroll 16
                    for (int q = 0; q < WO; q++) acc[q] += wv * vld(row + (S * q + dx) * VW);
                }}
            }}
            #pragma GCC unroll 16
            for (int q = 0; q < WO; q++) {{
                const vf v = act_v(acc[q]);
                if (POOL) csum += v;
                vst(outb + (long)(yo * WO + q) * VW, v);
            }}
        }}
        /* back to planar, VW pixels at a time */
        for (int i0 = 0; i0 < HO * WO; i0 += VW) {{
            const int n = HO * WO - i0 < VW ? HO * WO - i0 : VW;
            vf r[VW];
            for (int i = 0; i < VW; i++) r[i] = i < n ? vld(outb + (long)(i0 + i) * VW) : (vf){{0}};
            transpose(r);
            for (int c = 0; c < nc; c++) store_part(y + (long)(c0 + c) * HO * WO + i0, r[c], n);
        }}
        if (POOL) {{
            float t[VW];
            vst(t, csum);
            for (int c = 0; c < nc; c++) ws[POOL_OFF + c0 + c] = t[c] * (1.0f / (HO * WO));
        }}
    }}
}}
"""


def _shuffle_mask(vw: int, phase: int) -> str:
    return "(vi){" + ",".join(str(2 * i + phase) for i in range(vw)) + "}"


def compile_depthwise(weight: Any, bias: Any, in_hw: tuple[int, int], stride: int = 1, act: str = "none", *,
                      cache_dir: str | os.PathLike | None = None, cc: str | None = None,
                      rows: int = ROWS_PER_TILE, vectors: int = TILE_VECTORS, pool: bool = False, band: int = 0,
                      packed: bool | None = None) -> DepthwiseKernel:
    """Generate, compile (or fetch from the cache) and load one depthwise convolution.

    ``weight``: ``[C, 1, k, k]`` (torch layout, k in 3/5/7); ``bias``: ``[C]`` or None;
    ``in_hw``: input (H, W); ``stride``: 1 or 2; ``act``: none / relu / hswish / hsigmoid;
    ``rows`` x ``vectors``: output rows x output vectors per register tile (1-8 each; rows 0:
    `default_rows`);
    ``pool``: also write each output channel's mean (a squeeze-excite pool fused into the pass
    that produces the values) to `DepthwiseKernel.pooled`, a view of the kernel's workspace;
    ``band``: output rows per band (0: the whole plane): the workspace holds one band and
    `DepthwiseKernel.band_fn` computes one band from a ring of input rows (a fused block,
    `tritune.kernels.codegen.fused`); ``run`` goes band by band;
    ``packed``: the channel-packed layout (`_packed_source`; None: `default_packed`, never with a
    band; ``rows`` / ``vectors`` do not apply)."""
    w = weight.detach().cpu().numpy() if hasattr(weight, "detach") else np.asarray(weight)
    w = np.ascontiguousarray(w, dtype=np.float32)
    if w.ndim != 4 or w.shape[1] != 1 or w.shape[2] != w.shape[3] or w.shape[2] not in KERNELS:
        raise ValueError(f"weight: shape {w.shape} not allowed; allowed: [C, 1, k, k] with k in {KERNELS}")
    C, k = w.shape[0], w.shape[2]
    if stride not in STRIDES:
        raise ValueError(f"stride: {stride!r} not allowed; allowed: {', '.join(map(str, STRIDES))}")
    if act not in ACTIVATIONS:
        raise ValueError(f"act: {act!r} not allowed; allowed: {', '.join(ACTIVATIONS)}")
    in_hw = tuple(int(v) for v in in_hw)  # type: ignore[assignment]
    if len(in_hw) != 2 or min(in_hw) < 1:
        raise ValueError(f"in_hw: {in_hw!r} not allowed; allowed: (H, W) with H, W >= 1")
    if bias is None:
        b = np.zeros(C, dtype=np.float32)
    else:
        b = np.ascontiguousarray(bias.detach().cpu().numpy() if hasattr(bias, "detach") else bias, dtype=np.float32)
        if b.shape != (C,):
            raise ValueError(f"bias: shape {b.shape} not allowed; allowed: ({C},)")
    for name, v in (("rows", rows), ("vectors", vectors)):
        if not isinstance(v, int) or not (0 if name == "rows" else 1) <= v <= 8:
            raise ValueError(f"{name}: {v!r} not allowed; allowed: an integer 1-8" + (" or 0 (default)" if name == "rows" else ""))
    if isinstance(band, bool) or not isinstance(band, (int, np.integer)) or band < 0:
        raise ValueError(f"band: {band!r} not allowed; allowed: an integer >= 0 (0: the whole plane)")
    vw = compiler.vector_width(cc)
    out_hw = ((in_hw[0] + stride - 1) // stride, (in_hw[1] + stride - 1) // stride)
    if packed is None:
        packed = not band and default_packed(k, stride, out_hw[1], vw)
    if packed and band:
        raise ValueError("packed: not allowed with band > 0; allowed: packed=False (or None) for a band kernel")
    if packed:
        source = _packed_source(w, b, in_hw, stride, act, vw, bool(pool))
    else:
        source = _source(w, b, in_hw, stride, act, vw, rows, vectors, bool(pool), int(band))
    lib = compiler.compile_library(source, cache=cache_dir, cc=cc, name=f"dw{k}s{stride}{'p' if packed else ''}-{C}x{in_hw[0]}x{in_hw[1]}")
    cdll = ctypes.CDLL(str(lib.path))
    cdll.tt_workspace_floats.restype = ctypes.c_long
    cdll.tt_pool_offset.restype = ctypes.c_long
    fn = cdll.tt_run
    fn.argtypes = [ctypes.c_void_p] * 3
    fn.restype = None
    band_fn = 0 if packed else fn_address(cdll.tt_band)
    ws = aligned_empty((int(cdll.tt_workspace_floats()),))
    ws[:] = 0.0
    off = int(cdll.tt_pool_offset())
    pooled = ws[off:off + C] if pool else None
    return DepthwiseKernel(C, k, stride, in_hw, out_hw, act, lib.compile_s, hashlib.sha256(source.encode()).hexdigest(),
                           str(lib.path), not lib.compiled, fn, ws, cdll, pooled, int(band), band_fn, bool(packed))


__all__ = ["DepthwiseKernel", "compile_depthwise", "default_packed"]
