"""Integer depthwise convolutions (k = 3/5/7, stride 1/2, 'same' padding k // 2), requantization fused.

A depthwise layer reduces over the ``k x k`` taps of one channel, so the four bytes of a VNNI dot
product are four taps of one kernel row: for a vector of 16 output pixels, one 64-byte load of
the input row (masked at the borders, the masked-out bytes set to the input's zero point, which
is the code of the padding value 0) and one byte permute (``vpermb``) per four taps put, in
lane ``i``, the bytes ``x[s * i + t]`` of taps ``t`` (stride ``s`` included), and one
``vpdpbusd`` adds them times the row's weights. A 3x3 kernel is three loads, three permutes and
three dot products per 16 outputs; rows above and below the image are the zero-point vector.
Padding as the zero point makes the zero-point correction the same for every pixel, so it folds
into the bias as for the other integer kernels (`tritune.kernels.codegen.qplan`).

Without AVX-512 VBMI + VNNI the kernel is portable C (the compiler vectorises what it can).
Outputs as `tritune.kernels.codegen.qplan.Epilogue`: uint8 codes, float32 values, channel means
(a squeeze-excite pool computed as the outputs are stored).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..formats import QuantizedWeight
from ..quant import AffineQuant
from . import compiler
from .csource import ABI_VERSION, float_array
from .qgenerate import EPILOGUE, epilogue_defines, epilogue_floats
from .qplan import Epilogue, QGeometry, epilogue_constants
from .qruntime import QBuild, QKernel, load_q
from .qsource import AVX2, PRELUDE, VNNI, activation_v, isa_define
from .runtime import _check_bias

KERNELS = (3, 5, 7)
STRIDES = (1, 2)

_BODY = r"""
#if TT_ISA == 3
/* RT output rows at a time: each input row is loaded and permuted once for all the rows it is a tap of */
void tt_run_dw(const void *xv, void *iov, void *wsv) {
    const tt_io *io = (const tt_io *)iov; const uint8_t *x = (const uint8_t *)xv; (void)wsv;
    const __m512i zxv = _mm512_set1_epi8((char)ZX);
    __m512i idx[G_];
    for (int g = 0; g < G_; ++g) idx[g] = _mm512_load_si512((const void *)(IDX + 64 * g));
    for (int c = 0; c < C_; ++c) {
        const uint8_t *xc = x + (size_t)c * HIN * WIN;
        const int32_t *wc = (const int32_t *)WQ + (size_t)c * KS * G_;
#if TT_POOL
        vfl ps = fzero();
#endif
        for (int oy0 = 0; oy0 < HO; oy0 += RT) {
            const int nr = HO - oy0 < RT ? HO - oy0 : RT;
            for (int ox0 = 0; ox0 < WO; ox0 += 16) {
                const int n = WO - ox0 < 16 ? WO - ox0 : 16;
                const int start = ox0 * S_ - PAD;
                const int lo = start < 0 ? -start : 0, hi = WIN - start < 64 ? WIN - start : 64;
                const __mmask64 m = (hi >= 64 ? ~0ull : ((1ull << hi) - 1)) & ~((1ull << lo) - 1);
                av_t acc[RT];
#pragma GCC unroll 8
                for (int r = 0; r < RT; ++r) acc[r] = azero();
#pragma GCC unroll 16
                for (int t = 0; t < (RT - 1) * S_ + KS; ++t) {
                    const int iy = oy0 * S_ - PAD + t;
                    const __m512i row = (iy >= 0 && iy < HIN) ? _mm512_mask_loadu_epi8(zxv, m, xc + (long)iy * WIN + start) : zxv;
                    __m512i pr[G_];
#pragma GCC unroll 2
                    for (int g = 0; g < G_; ++g) pr[g] = _mm512_permutexvar_epi8(idx[g], row);
#pragma GCC unroll 8
                    for (int r = 0; r < RT; ++r) {
                        const int dy = t - r * S_;
                        if (dy >= 0 && dy < KS) {
#pragma GCC unroll 2
                            for (int g = 0; g < G_; ++g) acc[r] = _mm512_dpbusd_epi32(acc[r], pr[g], _mm512_set1_epi32(wc[dy * G_ + g]));
                        }
                    }
                }
#pragma GCC unroll 8
                for (int r = 0; r < RT; ++r) {
                    if (r < nr) {
#if TT_POOL
                        ps = fadd(ps, fkeep(epi(acc[r], c, (long)(oy0 + r) * WO + ox0, io, n), n));
#else
                        epi(acc[r], c, (long)(oy0 + r) * WO + ox0, io, n);
#endif
                    }
                }
            }
        }
#if TT_POOL
        io->pool[c] = fsum(ps) * (1.0f / (float)P_);
#endif
    }
}
#else
void tt_run_dw(const void *xv, void *iov, void *wsv) {
    const tt_io *io = (const tt_io *)iov; const uint8_t *x = (const uint8_t *)xv; (void)wsv;
    const int8_t *w8 = (const int8_t *)WQ;
    for (int c = 0; c < C_; ++c) {
#if TT_POOL
        io->pool[c] = 0.0f;
#endif
        const uint8_t *xc = x + (size_t)c * HIN * WIN;
        for (int oy = 0; oy < HO; ++oy)
            for (int ox = 0; ox < WO; ++ox) {
                int32_t acc = 0;
                for (int dy = 0; dy < KS; ++dy) {
                    const int iy = oy * S_ + dy - PAD;
                    for (int dx = 0; dx < KS; ++dx) {
                        const int ix = ox * S_ + dx - PAD;
                        const int32_t v = (iy >= 0 && iy < HIN && ix >= 0 && ix < WIN) ? xc[(long)iy * WIN + ix] : ZX;
                        acc += (int32_t)w8[((size_t)c * KS + dy) * G_ * 4 + dx] * v;
                    }
                }
                epi_s(acc, c, (long)oy * WO + ox, io);
            }
#if TT_POOL
        io->pool[c] *= 1.0f / (float)P_;
#endif
    }
}
#endif
"""


def default_rows(kernel: int, stride: int, out_h: int) -> int:
    """Output rows per tile (VNNI path): enough that most input rows are loaded and permuted once
    for several output rows, few enough that the accumulators and permuted rows stay in registers."""
    return max(1, min(4 if stride == 1 else 2, out_h))


def _source(qw: QuantizedWeight, em: np.ndarray, ec: np.ndarray, in_hw: tuple[int, int], out_hw: tuple[int, int], stride: int,
            epi: Epilogue, zx: int, isa: str, rows: int) -> str:
    C, k = qw.shape[0], qw.shape[-1]
    G = -(-k // 4)
    codes = qw.int_codes().reshape(C, k, k)
    wq = np.zeros((C, k, G * 4), dtype=np.int8)
    wq[:, :, :k] = codes
    idx = np.zeros((G, 16, 4), dtype=np.int64)
    for g in range(G):
        for j in range(4):
            idx[g, :, j] = np.arange(16) * stride + (4 * g + j if 4 * g + j < k else 0)
    words = wq.reshape(-1).view(np.uint8).view(np.uint32)
    defs = {"C_": C, "KS": k, "G_": G, "RT": rows, "S_": stride, "PAD": k // 2, "HIN": in_hw[0], "WIN": in_hw[1], "HO": out_hw[0], "WO": out_hw[1],
            "P_": out_hw[0] * out_hw[1], "ZX": zx, **epilogue_defines(epi), "TT_W4": 0, "TT_WSMALL": int(np.abs(codes).max(initial=0) <= 64)}
    out = [PRELUDE % {"force": isa_define(isa)}, *[f"#define {n} {v}" for n, v in defs.items()], *epilogue_floats(epi), VNNI, AVX2,
           float_array("EM", em), float_array("EC", ec),
           f"static const uint32_t WQ[{len(words)}] __attribute__((aligned(64))) = {{"
           + ",".join(f"0x{w:08x}" for w in words.tolist()) + "};",
           f"static const uint8_t IDX[{idx.size}] __attribute__((aligned(64))) = {{" + ",".join(str(int(v)) for v in idx.reshape(-1)) + "};",
           activation_v(epi.act), EPILOGUE, _BODY,
           f"int tt_abi_version(void) {{ return {ABI_VERSION}; }}", "long tt_workspace_bytes(void) { return 64; }",
           "int tt_isa(void) { return TT_ISA; }"]
    return "\n".join(out) + "\n"


def compile_qdepthwise(qw: QuantizedWeight, bias: Any, in_hw: tuple[int, int], stride: int = 1, *, in_quant: AffineQuant,
                       act: str = "none", out_quant: AffineQuant | None = None, out_float: bool = False, pool: bool = False,
                       isa: str = "auto", rows: int | None = None, cache_dir: str | os.PathLike | None = None,
                       cc: str | None = None) -> QKernel:
    """Generate, compile (cached) and load an integer depthwise kernel; ``qw``: codes of shape
    ``[C, 1, k, k]`` (pattern dense) with per-channel scales; outputs as `compile_qlayer`'s
    (no residual); ``rows``: output rows per tile (default `default_rows`)."""
    if not isinstance(qw, QuantizedWeight) or len(qw.shape) != 4 or qw.shape[1] != 1 or qw.shape[2] != qw.shape[3]:
        raise ValueError(f"depthwise weight: expected a QuantizedWeight of shape [C, 1, k, k], got {getattr(qw, 'shape', qw)!r}")
    if qw.shape[-1] not in KERNELS:
        raise ValueError(f"kernel: {qw.shape[-1]} not allowed; allowed: {', '.join(map(str, KERNELS))}")
    if stride not in STRIDES or isinstance(stride, bool):
        raise ValueError(f"stride: {stride!r} not allowed; allowed: 1, 2")
    if qw.bits > 8 or qw.pattern != "dense":
        raise ValueError(f"depthwise weight: pattern {qw.pattern!r}; allowed: dense")
    if not isinstance(in_quant, AffineQuant):
        raise ValueError(f"in_quant: expected an AffineQuant, got {in_quant!r}")
    try:
        h, w = (int(v) for v in in_hw)
    except (TypeError, ValueError):
        raise ValueError(f"in_hw: {in_hw!r} not allowed; allowed: (height, width) with both >= 1") from None
    if h < 1 or w < 1:
        raise ValueError(f"in_hw: {in_hw!r} not allowed; allowed: (height, width) with both >= 1")
    C = qw.shape[0]
    out_hw = ((h - 1) // stride + 1, (w - 1) // stride + 1)
    epi = Epilogue(act, out_quant, bool(out_float), bool(pool), False)
    b = _check_bias(bias, C)
    rowsum = qw.int_codes().reshape(C, -1).astype(np.int64).sum(1)
    em, ec = epilogue_constants(epi, in_quant, qw.scales, b, rowsum)
    rows = default_rows(qw.shape[-1], int(stride), out_hw[0]) if rows is None else rows
    if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= 8:
        raise ValueError(f"rows: {rows!r} not allowed; allowed: an integer in 1..8 (output rows per tile)")
    source = _source(qw, em, ec, (h, w), out_hw, int(stride), epi, in_quant.zero_point, isa, rows)
    geo = QGeometry("dwconv", C, C, (h, w), out_hw, int(stride), False)
    lib = compiler.compile_library(source, cache=cache_dir, cc=cc, name=f"qdw-k{qw.shape[-1]}s{stride}-{C}x{h}x{w}")
    build = QBuild(qw, geo, b, in_quant, epi, 1, isa, cc)
    return load_q(build, lib, "dw", source)


__all__ = ["KERNELS", "STRIDES", "compile_qdepthwise", "default_rows"]
