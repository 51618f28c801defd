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
from .csource import activation, float_array, prelude
from .plan import ACTIVATIONS
from .runtime import aligned_empty

KERNELS = (3, 5, 7)
STRIDES = (1, 2)
#: Output vectors computed together (accumulators held in registers across the taps).
TILE_VECTORS = 4


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

    def bind(self, x: np.ndarray, out: np.ndarray) -> Callable[[], None]:
        """A zero-argument callable computing ``out`` from ``x`` (checked once; keep both alive)."""
        x, out = self._check(x, "x", self.in_shape), self._check(out, "out", self.out_shape)
        if np.may_share_memory(x, out):
            raise ValueError("out: overlaps x; allowed: separate input and output buffers")
        fn, args, keep = self._fn, (x.ctypes.data, out.ctypes.data, self._ws.ctypes.data), (x, out, self._ws, self._cdll)

        def call(fn=fn, args=args, keep=keep) -> None:
            fn(*args)

        return call

    def run(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = np.empty(self.out_shape, dtype=np.float32) if out is None else out
        self.bind(x, out)()
        return out


def _source(weight: np.ndarray, bias: np.ndarray, in_hw: tuple[int, int], stride: int, act: str, vw: int) -> str:
    C, _, k, _ = weight.shape
    H, W = in_hw
    p = k // 2
    ho, wo = (H + stride - 1) // stride, (W + stride - 1) // stride
    nvec = -(-wo // vw)
    # plane width: every vector load of the last tile (x up to nvec*vw, tap shift up to (k-1)//stride) stays inside
    wq = max(-(-(W + 2 * p) // stride), nvec * vw + (k - 1) // stride)
    hp = H + 2 * p
    nv = min(TILE_VECTORS, nvec)
    return prelude(vw) + activation(act) + float_array("WT", weight.reshape(-1)) + float_array("BS", bias) + f"""
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
long tt_workspace_floats(void) {{ return (long)S * PLANE; }}
int tt_abi_version(void) {{ return 1; }}

INL void tile(const float *restrict ws, const float *restrict w, float b, float *restrict out, int yo, int v0, int nv) {{
    vf acc[NV];
    for (int t = 0; t < NV; t++) acc[t] = (vf){{0}} + b;
    for (int dy = 0; dy < K; dy++) {{
        for (int dx = 0; dx < K; dx++) {{
            const float wv = w[dy * K + dx];
            const float *src = ws + (dx % S) * PLANE + (S * yo + dy) * WQ + dx / S + v0 * VW;
            for (int t = 0; t < NV; t++) if (t < nv) acc[t] += wv * vld(src + t * VW);
        }}
    }}
    for (int t = 0; t < NV; t++) {{
        if (t >= nv) break;
        int x0 = (v0 + t) * VW;
        vf r = act_v(acc[t]);
        if (x0 + VW <= WO) vst(out + x0, r);
        else {{ float tmp[VW]; vst(tmp, r); for (int i = 0; x0 + i < WO; i++) out[x0 + i] = tmp[i]; }}
    }}
}}

void tt_run(const float *restrict x, float *restrict y, float *restrict ws) {{
    for (int c = 0; c < C; c++) {{
        const float *xc = x + (long)c * H * W;
        for (int r = 0; r < H; r++) {{
            const float *row = xc + r * W;
            if (S == 1) memcpy(ws + (r + P) * WQ + P, row, W * sizeof(float));
            else for (int j = 0; j < W; j++) {{ int col = j + P; ws[(col % S) * PLANE + (r + P) * WQ + col / S] = row[j]; }}
        }}
        const float *w = WT + c * K * K;
        const float b = BS[c];
        float *yc = y + (long)c * HO * WO;
        for (int yo = 0; yo < HO; yo++) {{
            int v0 = 0;
            for (; v0 + NV <= NVEC; v0 += NV) tile(ws, w, b, yc + yo * WO, yo, v0, NV);
            if (v0 < NVEC) tile(ws, w, b, yc + yo * WO, yo, v0, NVEC - v0);
        }}
    }}
}}
"""


def compile_depthwise(weight: Any, bias: Any, in_hw: tuple[int, int], stride: int = 1, act: str = "none", *,
                      cache_dir: str | os.PathLike | None = None, cc: str | None = None) -> DepthwiseKernel:
    """Generate, compile (or fetch from the cache) and load one depthwise convolution.

    ``weight``: ``[C, 1, k, k]`` (torch layout, k in 3/5/7); ``bias``: ``[C]`` or None;
    ``in_hw``: input (H, W); ``stride``: 1 or 2; ``act``: none / relu / hswish / hsigmoid."""
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
    vw = compiler.vector_width(cc)
    source = _source(w, b, in_hw, stride, act, vw)
    lib = compiler.compile_library(source, cache=cache_dir, cc=cc, name=f"dw{k}s{stride}-{C}x{in_hw[0]}x{in_hw[1]}")
    cdll = ctypes.CDLL(str(lib.path))
    cdll.tt_workspace_floats.restype = ctypes.c_long
    fn = cdll.tt_run
    fn.argtypes = [ctypes.c_void_p] * 3
    fn.restype = None
    ws = aligned_empty((int(cdll.tt_workspace_floats()),))
    ws[:] = 0.0
    out_hw = ((in_hw[0] + stride - 1) // stride, (in_hw[1] + stride - 1) // stride)
    return DepthwiseKernel(C, k, stride, in_hw, out_hw, act, lib.compile_s, hashlib.sha256(source.encode()).hexdigest(),
                           str(lib.path), not lib.compiled, fn, ws, cdll)


__all__ = ["DepthwiseKernel", "compile_depthwise"]
