"""C source for one lowered layer (see `tritune.kernels.codegen.plan`), one function per variant.

Every exported function has the signature ``void tt_run_<variant>(const float *x, float *y,
float *ws)``: ``x`` the input ``[C, H, W]``, ``y`` the output ``[O, Ho, Wo]`` (both contiguous
float32, not overlapping), ``ws`` a zero-initialised, 64-byte aligned workspace of
``tt_workspace_floats()`` floats owned by the caller (the staged input, whose zero border is
never written, and K-tile partial sums; it must not be shared by two calls running at once).

Design choices, after a feasibility probe on an AVX-512 CPU (issue 4):

* accumulators live in registers for a whole tile of ``nv`` SIMD vectors of pixels and a whole
  block row (``r`` output channels): each activation vector load feeds ``r`` FMAs, each
  weight broadcast ``nv`` FMAs; the register code is unrolled here in Python, not left to the
  compiler;
* pixel tiles are the outer loop, so the input tile (``K x nv`` vectors) stays in L1/L2 while all
  block rows stream their weights; with ``k_tile`` the reduction is split into tiles of columns
  (partial sums of the pixel tile go through a workspace buffer, per thread), which keeps larger
  pixel tiles in L1 (the probe saw 1.2-2.2x for CSR);
* ``unroll`` independent accumulator sets break the FMA latency chain when a tile has few
  accumulators (CSR with small tiles, N:M, kernel patterns without sharing);
* weights and indices are ``static const`` arrays (bit patterns, smallest integer type), loops
  are not unrolled over the weights: fully unrolled code with weights as immediates was about
  2x slower in the probe (instruction cache);
* the pixel grid is cut into tiles as even as possible (no narrow tail tile, no vector past the
  grid); a part vector at the end of a row of pixels belongs to the last tile, not to a pass of
  its own, and on AVX-512 it is a half vector when at most half of it is pixels (`HALF`): 14x14
  images are 12.25 vectors, 7x7 ones 3.06;
* ``pack`` variants (1x1) first copy each tile's input columns into one contiguous panel, as
  dense GEMM libraries pack their panels: kernels with one load per FMA then read a few
  contiguous pages instead of one strided row per input channel (TLB, prefetch, alignment);
* bias and the activation are applied when a tile of an output row is stored;
* the 3x3 kernel-pattern loop runs over the units of one library pattern at a time, so the tap
  shifts are constants and no per-kernel branch is taken.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .csource import ABI_VERSION, PARTIAL_VECTORS, activation, float_array, int_array, prelude
from .plan import Bsr, Geometry, KernelPattern, Lowered, Nm

#: Most accumulator vectors one tile may hold (AVX-512 has 32 vector registers; the rest hold
#: the loaded activations and broadcasts).
MAX_ACCUMULATORS = 28
#: Input plus output bytes from which 1x1 tiles prefetch the next tile (`_Writer.prefetch_lines`):
#: well past a core's L2, where lines come from L3 or DRAM.
PREFETCH_BYTES = 4 * 1024 * 1024
#: Floats of a half vector: an AVX-512 grid's last vector when at most half of it is pixels
#: (`_Writer.tail_vector`).
HALF = 8
#: Bytes of input tile K tiling aims for (L1 data cache of current x86 cores: 32-48 KiB).
L1_TARGET = 32 * 1024


@dataclass(frozen=True)
class Variant:
    """Tiling of one generated kernel: ``nv`` SIMD vectors of pixels per tile, ``unroll``
    independent accumulator sets, ``k_tile`` reduction columns per K tile (kernel_pattern: input
    channels; 0: no K tiling; not for narrow layers); ``pack``: copy each tile's input columns
    into one contiguous ``K x tile`` panel first (1x1 layers; see `_Writer.pack_lines`)."""

    nv: int = 2
    unroll: int = 1
    k_tile: int = 0
    pack: bool = False

    def __post_init__(self) -> None:
        for name, lo in (("nv", 1), ("unroll", 1), ("k_tile", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
                raise ValueError(f"variant.{name}: {value!r} not allowed; allowed: an integer >= {lo}")
        if self.nv > 16 or self.unroll > 8:
            raise ValueError(f"variant: nv={self.nv}, unroll={self.unroll} not allowed; allowed: nv <= 16, unroll <= 8")
        if not isinstance(self.pack, (bool, np.bool_)):
            raise ValueError(f"variant.pack: {self.pack!r} not allowed; allowed: True, False")

    @property
    def name(self) -> str:
        return f"t{self.nv}u{self.unroll}k{self.k_tile}" + ("p" if self.pack else "")

    def to_json(self) -> dict:
        return {"nv": int(self.nv), "unroll": int(self.unroll), "k_tile": int(self.k_tile), "pack": bool(self.pack)}

    @classmethod
    def coerce(cls, value: "Variant | dict | None") -> "Variant":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"nv", "unroll", "k_tile", "pack"}
            if unknown:
                raise ValueError(f"tile: unknown fields {sorted(unknown)}; allowed: nv, unroll, k_tile, pack")
            return cls(**value)
        raise ValueError(f"tile: {value!r} not allowed; allowed: a Variant, a dict(nv=, unroll=, k_tile=, pack=) or None")


def rows_per_tile(low: Lowered) -> int:
    """Output rows sharing a tile's accumulators (the block height, the pattern share)."""
    if isinstance(low, Bsr):
        return low.r
    if isinstance(low, KernelPattern):
        return low.share
    return 1


def check_variant(geo: Geometry, low: Lowered, var: Variant) -> None:
    """Reject a variant the layer cannot run (too many accumulators, K tiling where unsupported)."""
    rows = rows_per_tile(low)
    if geo.mode != "narrow" and rows * var.nv * var.unroll > MAX_ACCUMULATORS:
        raise ValueError(
            f"tile: nv={var.nv} x unroll={var.unroll} x {rows} rows per tile = {rows * var.nv * var.unroll} "
            f"accumulator vectors; allowed: at most {MAX_ACCUMULATORS}"
        )
    if var.k_tile and geo.mode in ("narrow", "masked"):
        what = "a narrow (few pixels) layer" if geo.mode == "narrow" else "a 3x3 layer read in place (masked layout)"
        raise ValueError(f"tile.k_tile: {var.k_tile} not allowed for {what}; allowed: 0")
    if var.pack and (geo.kind != "conv1x1" or geo.mode == "narrow"):
        raise ValueError(f"tile.pack: True not allowed for a {geo.kind} layer in the {geo.mode} layout; "
                         f"allowed: False (packing is for 1x1 layers of at least a quarter vector of pixels)")


def l1_k_tile(geo: Geometry, low: Lowered, tile_floats: int) -> int:
    """Reduction columns per K tile so the input tile is about `L1_TARGET` bytes (0: not needed)."""
    if isinstance(low, KernelPattern):
        per_channel = tile_floats * 4 * 3  # three row shifts of one channel's plane
        channels = max(4, L1_TARGET // max(1, per_channel))
        return channels if channels < geo.cin else 0
    cols = max(16, (L1_TARGET // (tile_floats * 4)) // 16 * 16)
    if isinstance(low, Nm):
        cols = max(low.m, cols // low.m * low.m)
    return cols if cols < geo.k else 0


class _Writer:
    """Emits the source; one instance per `generate` call."""

    def __init__(self, geo: Geometry, low: Lowered, variants: list[Variant], bias: np.ndarray | None, act: str,
                 threads: int, vw: int, channel_strides: tuple[int, int] | None = None) -> None:
        self.geo, self.low, self.variants, self.bias, self.act, self.threads, self.vw = geo, low, variants, bias, act, threads, vw
        self.channel_strides = channel_strides
        self.ldx, self.ldy = channel_strides or (geo.hw, geo.out_pixels)
        self.out: list[str] = []
        self.emitted: set[str] = set()  # tile functions already in the source
        self.packed_tile = 0  # while a packed variant's block function is emitted: its tile width
        self.vecs: list[tuple[int, bool]] | None = None  # while a tail tile is emitted: (offset from q0, half) per vector
        self.tail = self.tail_vector()

    # ----- helpers ------------------------------------------------------------------------------
    def emit(self, *lines: str) -> None:
        self.out.extend(lines)

    def par(self) -> str:
        return f"#pragma omp parallel for num_threads({self.threads}) schedule(static)" if self.threads > 1 else ""

    def bias_of(self, row: str) -> str:
        return f"BIAS[{row}]" if self.bias is not None else "0.0f"

    def tile(self, var: Variant) -> int:
        return var.nv * self.vw

    def tail_vector(self) -> tuple[int, int, bool] | None:
        """How the last tile ends: (vectors of the grid, position of the last one, whether it is a
        half vector), or None where every tile is plain. A 1x1 layer whose pixels are not a whole
        number of vectors (direct layout) ends in a vector that overlaps the one before, inside
        the last tile rather than in a pass of its own; a grid (staged but not one-plane, masked)
        whose last vector holds at most `HALF` pixels ends in a half vector. On AVX-512 a half
        vector is one ymm register: half the loads, and on cores that split 512-bit FMAs in two
        (AMD Zen 4) half the FMAs (side by side, old -> new: block 3x3 128x128 at 14x14
        +2-4.5 %, kernel_pattern share 8 there +2-3 %, block 1x1 at 14x14 +1.5-2.5 %, at 7x7
        +9-13 %; unstructured 1x1 at 14x14, bound by its loads, within +-2 %)."""
        geo, vw = self.geo, self.vw
        if geo.mode == "direct":
            part = geo.hw % vw
            half = vw == 16 and 0 < part <= HALF
            return (geo.hw // vw + 1, geo.hw - (HALF if half else vw), half) if part else None
        if not geo.grid or geo.one_plane or vw != 16:
            return None
        n = -(-geo.q // vw)
        last = (n - 1) * vw
        # pixels in the grid's last vector: up to the grid's end, or, past a row's padding columns, to the row's end
        pixels = geo.q - last if geo.wp == geo.out_width else max(0, geo.out_width - last % geo.wp)
        return (n, last, True) if 0 < pixels <= HALF else None

    def vec(self, v: int) -> tuple[int, bool]:
        """(offset from the tile's first pixel, half) of vector ``v`` of the tile being emitted."""
        return self.vecs[v] if self.vecs else (v * self.vw, False)

    def vt(self, v: int) -> str:
        return "vh" if self.vec(v)[1] else "vf"

    def vload(self, base: str, v: int, mask: str | None = None) -> str:
        """Load of vector ``v`` from ``base`` (the tile's first pixel; a packed panel holds vector
        ``v`` at ``v * VW``), under lane mask ``mask`` if given."""
        off, half = self.vec(v)
        if self.packed_tile:
            off = v * self.vw
        h = "h" if half else ""
        return f"vldm{h}({base} + {off}, {mask})" if mask else f"vld{h}({base} + {off})"

    @staticmethod
    def acc(u: int, r: int, v: int) -> str:
        return f"a{u}_{r}_{v}"

    def declare(self, sets: int, rows: int, nv: int) -> list[str]:
        lines = []
        for t in ("vf", "vh"):
            names = [self.acc(u, r, v) for u in range(sets) for r in range(rows) for v in range(nv) if self.vt(v) == t]
            lines += [f"{t} {', '.join(names[i:i + 8])};" for i in range(0, len(names), 8)]
        if any(self.vec(v)[1] for v in range(nv)):
            lines.append("const vh zh_ = {0};")
        return lines

    def zero(self, sets: int, rows: int, nv: int, first_set: int = 0) -> list[str]:
        return [f"{self.acc(u, r, v)} = {'zh_' if self.vec(v)[1] else 'z_'};"
                for u in range(first_set, sets) for r in range(rows) for v in range(nv)]

    def reduce(self, sets: int, rows: int, nv: int) -> list[str]:
        lines = []
        for u in range(1, sets):
            lines += [f"{self.acc(0, r, v)} += {self.acc(u, r, v)};" for r in range(rows) for v in range(nv)]
        return lines

    @property
    def rows_per_tile(self) -> int:
        return rows_per_tile(self.low)

    def block_rows(self) -> tuple[int, int]:
        """(full block rows, rows of the last partial block row or 0)."""
        low, R = self.low, self.rows_per_tile
        n = low.n_rows if isinstance(low, Bsr) else self.geo.cout
        return n // R, n % R

    def n_ktiles(self, var: Variant) -> int:
        if not var.k_tile:
            return 1
        low, geo = self.low, self.geo
        if isinstance(low, Bsr):
            cols = -(-geo.k // low.c)
            return max(1, -(-cols // -(-var.k_tile // low.c)))
        if isinstance(low, KernelPattern):
            return -(-geo.cin // var.k_tile)
        groups = -(-geo.k // low.m)
        return max(1, -(-groups // max(1, var.k_tile // low.m)))

    def planes_floats(self) -> int:
        geo = self.geo
        longest = max(-(-geo.q // self.tile(v)) * self.tile(v) for v in self.variants)
        need = (geo.cin - 1) * geo.ps + geo.max_tap_offset + longest + self.vw
        return -(-max(need, geo.planes * geo.cin * geo.ps) // 16) * 16

    def partial_floats(self) -> int:
        """K tiling: partial sums of one pixel tile for every output row, per thread."""
        tiled = [v for v in self.variants if self.n_ktiles(v) > 1]
        if not tiled:
            return 0
        return self.threads * self.geo.cout * max(self.tile(v) for v in tiled)

    def pack_floats(self) -> int:
        """Packed variants: one ``K x tile`` input panel per thread."""
        packed = [v for v in self.variants if v.pack]
        return self.threads * self.geo.k * max(self.tile(v) for v in packed) if packed else 0

    def pk_offset(self) -> int:
        return self.pt_offset() + self.partial_floats()

    def workspace_floats(self) -> int:
        return self.pk_offset() + self.pack_floats() + 16

    def pt_offset(self) -> int:
        return self.planes_floats() if self.geo.mode == "staged" else 0

    # ----- arrays and constants ---------------------------------------------------------------------
    def arrays(self) -> None:
        geo, low = self.geo, self.low
        if self.bias is not None:
            self.emit(float_array("BIAS", self.bias))
        if geo.kind == "conv3x3" and not isinstance(low, KernelPattern) and not self.entry_offsets:
            self.emit(int_array("OFFK", geo.column_offsets(), "int32_t"))
        if isinstance(low, Bsr):
            if geo.mode == "masked":  # blocks in tap-group order, with their own pointers
                self.masked_arrays()
            else:
                if self.entry_offsets:  # one load less per entry than IDX -> OFFK
                    self.emit(int_array("XOFF", geo.column_offsets()[low.cols.astype(np.int64)], "int32_t"))
                else:
                    self.emit(int_array("IDX", low.cols))
                self.emit(int_array("IP", low.indptr, "int32_t"), float_array("WV", low.values))
            if low.rows is not None:
                self.emit(int_array("ROWMAP", low.rows))
                unmapped = np.setdiff1d(np.arange(geo.cout), low.rows)
                if len(unmapped):
                    self.emit(int_array("EMPTY", unmapped))
            for var in self.variants:
                if self.n_ktiles(var) > 1:
                    self.emit(int_array(f"KP_{var.name}", self.bsr_kpointers(var), "int32_t"))
        elif isinstance(low, Nm):
            self.emit(float_array("NMV", low.values), int_array("NMI", low.indices, "uint8_t"))
        else:
            self.emit(int_array("UPTR", low.uptr, "int32_t"), int_array("UOFF", low.uin.astype(np.int64) * geo.ps, "int32_t"),
                      float_array("UW", low.values))
            for var in self.variants:
                if self.n_ktiles(var) > 1:
                    self.emit(int_array(f"KP_{var.name}", self.kpat_kpointers(var), "int32_t"))

    def masked_arrays(self) -> None:
        """Masked layout: the blocks of each block row sorted by tap group ``g = dx * 3 + dy``, then
        input channel (``TP[b * 10 + g]``: the first block of group ``g``); each block's input offset
        (``XOFF``, negative for taps above or left of the first pixel) and the lane masks
        ``MK[g * NVEC + v]`` of tap group ``g`` on output vector ``v``."""
        geo, low = self.geo, self.low
        cin, (h, w) = geo.cin, geo.in_hw
        counts = np.diff(low.indptr.astype(np.int64))
        block_row = np.repeat(np.arange(low.n_block_rows), counts)
        cols = low.cols.astype(np.int64)
        dy, dx = divmod(cols % 9, 3)
        key = (block_row * 9 + dx * 3 + dy) * cin + cols // 9
        order = np.argsort(key, kind="stable")
        starts = (np.arange(low.n_block_rows)[:, None] * 9 + np.arange(10)[None, :]) * cin
        nvec = -(-geo.hw // self.vw)
        p = np.arange(nvec * self.vw)
        y, x = p // w, p % w
        masks = np.empty((9, nvec), dtype=np.int64)
        for g in range(9):
            gx, gy = divmod(g, 3)
            ok = (p < geo.hw) & (y + gy - 1 >= 0) & (y + gy - 1 < h) & (x + gx - 1 >= 0) & (x + gx - 1 < w)
            masks[g] = ok.reshape(nvec, self.vw).astype(np.int64) @ (1 << np.arange(self.vw))
        self.emit(f"#define NVEC {nvec}",
                  int_array("XOFF", geo.column_offsets()[cols[order]], "int32_t"),
                  int_array("TP", np.searchsorted(key[order], starts.reshape(-1)), "int32_t"),
                  int_array("MK", masks, "uint16_t"), float_array("WV", low.values[order]))

    def kpat_kpointers(self, var: Variant) -> np.ndarray:
        """Unit ranges per (group, pattern, K tile of input channels): [g, p, kt .. kt + 1]."""
        low = self.low
        bounds = np.arange(self.n_ktiles(var) + 1) * var.k_tile
        out = np.empty((len(low.uptr) - 1, len(bounds)), dtype=np.int64)
        for gp in range(len(low.uptr) - 1):
            lo, hi = int(low.uptr[gp]), int(low.uptr[gp + 1])
            out[gp] = lo + np.searchsorted(low.uin[lo:hi], bounds, side="left")
        return out.reshape(-1)

    def bsr_kpointers(self, var: Variant) -> np.ndarray:
        low = self.low
        per_tile = -(-var.k_tile // low.c)
        bounds = np.arange(self.n_ktiles(var) + 1) * per_tile
        out = np.empty((low.n_block_rows, len(bounds)), dtype=np.int64)
        for b in range(low.n_block_rows):
            lo, hi = int(low.indptr[b]), int(low.indptr[b + 1])
            out[b] = lo + np.searchsorted(low.cols[lo:hi], bounds, side="left")
        return out.reshape(-1)

    def constants(self) -> None:
        geo = self.geo
        self.emit(f"#define K {geo.k}", f"#define CI {geo.cin}", f"#define CO {geo.cout}", f"#define HW {geo.hw}",
                  f"#define HWO {geo.out_pixels}", f"#define WS_FLOATS {self.workspace_floats()}",
                  f"#define LDX {self.ldx}", f"#define LDY {self.ldy}")
        if geo.grid:
            h, w = geo.in_hw
            self.emit(f"#define H {h}", f"#define W {w}", f"#define WP {geo.wp}", f"#define HQ {geo.hq}",
                      f"#define PS {geo.ps}", f"#define WO {geo.out_width}", f"#define Q {geo.q}",
                      )
        self.emit(f"#define PT_OFF {self.pt_offset()}", f"#define PK_OFF {self.pk_offset()}")
        if self.threads > 1:
            self.emit("#include <omp.h>")

    # ----- staging and stores ----------------------------------------------------------------------
    def stage(self) -> None:
        """Copy the input into the aligned, zero-bordered planes (see `Geometry`); borders stay zero."""
        geo = self.geo
        self.emit("static void stage(const float *restrict x, float *restrict xs) {", self.par(),
                  "for (int i = 0; i < CI; ++i) {")
        if geo.kind != "conv3x3":
            self.emit("memcpy(xs + (size_t)i * PS, x + (size_t)i * HW, HW * sizeof(float));")
        elif geo.one_plane:  # input row r at padded row r + 1, after the shared zero column
            self.emit("for (int r = 0; r < H; ++r) memcpy(xs + (size_t)i * PS + (size_t)(r + 1) * WP + 1, "
                      "x + ((size_t)i * H + r) * W, W * sizeof(float));")
        else:
            s = geo.stride
            w, wo = geo.in_hw[1], geo.out_width
            for a in range(s):
                for dx in range(3):
                    plane = a * 3 + dx
                    self.emit("{", f"float *pl = xs + ((size_t){plane} * CI + i) * PS;",
                              "for (int u = 0; u < HQ; ++u) {", f"const int r = {s} * u + {a - 1};",
                              "if (r < 0 || r >= H) continue;", "const float *xr = x + ((size_t)i * H + r) * W;")
                    if s == 1:
                        lo, hi = max(0, 1 - dx), min(wo, w + 1 - dx)
                        self.emit(f"memcpy(pl + u * WP + {lo}, xr + {lo + dx - 1}, {hi - lo} * sizeof(float));")
                    else:
                        lo, hi = (1 if dx == 0 else 0), min(wo, (w - dx) // 2 + 1)
                        self.emit(f"for (int v = {lo}; v < {hi}; ++v) pl[u * WP + v] = xr[2 * v + {dx - 1}];")
                    self.emit("}", "}")
        self.emit("}", "}")

    def store_helper(self) -> None:
        """Staged: store one output vector at grid position q (skip past the grid, clip past WO)."""
        if self.geo.one_plane:
            self.one_plane_store()
            return
        self.emit(PARTIAL_VECTORS)  # store_part: a row's last, partial vector in one masked store
        self.emit("INL vf load_upto(const float *p, long n) { const vf z = {0}; return n >= VW ? vld(p) : n > 0 ? load_part(p, (int)n) : z; }")
        if self.geo.wp == self.geo.out_width:  # no padding columns: the grid is the output
            self.emit(
                "INL void store_q(float *restrict yrow, const int q, const vf v) {",
                "if (q + VW <= Q) { vst(yrow + q, v); return; }",
                "if (q >= Q) return;",
                "store_part(yrow + q, v, Q - q);",
                "}",
            )
            return
        self.emit(  # padding columns (load-bound kernels): on rows narrower than WP every vector ends in a partial store
            "INL void store_q(float *restrict yrow, const int q, const vf v) {",
            "if (q >= Q) return;",
            "const int yy = q / WP, xx = q - yy * WP;",
            "float *d = yrow + yy * WO + xx;",
            "if (xx + VW <= WO) { vst(d, v); return; }",
            "store_part(d, v, WO - xx);",
            "}",
        )

    def half_helpers(self) -> None:
        """The half vector type ``vh`` (one ymm register) of a tail tile (`tail_vector`): loads,
        stores, the activation (on the zero-extended full vector) and, for the masked layout, the
        masked load and the store of the grid's last pixels."""
        self.emit("#include <immintrin.h>", "typedef float vh __attribute__((vector_size(32)));",
                  "INL vh vldh(const float *p) { vh v; memcpy(&v, p, sizeof v); return v; }",
                  "INL void vsth(float *p, vh v) { memcpy(p, &v, sizeof v); }",
                  "INL vh act_h(vh v) { return (vh)_mm512_castps512_ps256((__m512)act_v((vf)_mm512_zextps256_ps512((__m256)v))); }")
        geo = self.geo
        if geo.mode == "masked":
            self.emit("INL vh vldmh(const float *p, __mmask16 m) { return (vh)_mm256_maskz_loadu_ps((__mmask8)m, p); }")
        if not geo.grid:
            return
        self.emit("INL void store_qh(float *restrict yrow, const int q, const vh v) {", "if (q >= Q) return;")
        if geo.wp == geo.out_width:  # the grid is the output
            self.emit("float *d = yrow + q; const int n = Q - q;")
        else:  # past a row's padding columns
            self.emit("const int yy = q / WP, xx = q - yy * WP;", "float *d = yrow + yy * WO + xx; const int n = WO - xx;",
                      "if (n <= 0) return;")
        self.emit(f"if (n >= {HALF}) vsth(d, v);", "else _mm256_mask_storeu_ps(d, (__mmask8)((1u << n) - 1u), (__m256)v);", "}")

    def one_plane_store(self) -> None:
        """One-plane grid (rows W + 1 wide): output index = q - row, and the lane on the zero
        column (``g``, at most one per vector as W + 1 >= VW) is dropped: AVX-512 compresses it
        out in one masked store; other ISAs copy lane by lane."""
        self.emit(
            "#if defined(__AVX512F__) && VW == 16",
            "#include <immintrin.h>",
            "INL void store_gap(float *restrict d, const vf v, const int g, const int n) {",
            "const unsigned keep = g < 16 ? (0xffffu & ~(1u << g)) : 0xffffu;",
            "const int all = __builtin_popcount(keep), cnt = all < n ? all : n;",
            "_mm512_mask_storeu_ps(d, (__mmask16)((1u << cnt) - 1u), _mm512_maskz_compress_ps((__mmask16)keep, (__m512)v));",
            "}",
            "#else",
            "INL void store_gap(float *restrict d, const vf v, const int g, const int n) {",
            "float t_[VW]; vst(t_, v);",
            "for (int i = 0, o = 0; i < VW && o < n; ++i) if (i != g) d[o++] = t_[i];",
            "}",
            "#endif",
            "INL void store_q(float *restrict yrow, const int q, const vf v) {",
            "if (q >= Q) return;",
            "const int yy = q / WP, o = q - yy, g = W - (q - yy * WP), n = HWO - o;",
            "if (g >= VW && n >= VW) { vst(yrow + o, v); return; }",
            "store_gap(yrow + o, v, g, n);",
            "}",
        )

    def fill_empty_rows(self, pixels: str = "HWO") -> list[str]:
        """Channel pruning: rows without weights are act(bias) everywhere (``pixels`` per row)."""
        low = self.low
        if not isinstance(low, Bsr) or low.rows is None or len(low.rows) == self.geo.cout:
            return []
        n = self.geo.cout - len(low.rows)
        ld = "LDY" if self.geo.mode == "direct" else "HWO"
        return [f"for (int e = 0; e < {n}; ++e) {{ const float v_ = act_s({self.bias_of('EMPTY[e]')});",
                f"for (long t = 0; t < {pixels}; ++t) y[(size_t)EMPTY[e] * {ld} + t] = v_; }}"]

    # ----- the accumulation loops of each family -----------------------------------------------------
    def xaddr(self, k: str) -> str:
        if self.packed_tile:  # the tile's own panel: column k at k * tile
            return f"xs + (size_t)({k}) * {self.packed_tile}"
        if self.geo.kind == "conv3x3":
            return f"xs + OFFK[{k}] + q0"
        return f"xs + (size_t)({k}) * {'LDX' if self.geo.mode == 'direct' else 'PS'} + q0"

    def col_expr(self, c: int) -> str:
        C, K = self.low.c, self.geo.k
        if c == 0:
            return "kb_"
        if K % C:
            return f"(kb_ + {c} < {K} ? kb_ + {c} : {K - 1})"
        return f"kb_ + {c}"

    @property
    def entry_offsets(self) -> bool:
        """3x3 single-column blocks store each block's workspace offset instead of its column."""
        return self.geo.kind == "conv3x3" and isinstance(self.low, Bsr) and self.low.c == 1

    @property
    def weight_quads(self) -> bool:
        """Single-weight entries (CSR, N:M) on AVX / AVX-512 take their weights four at a time.

        Such a kernel makes one vector load per FMA, so its load ports are its limit, and a
        broadcast load per weight on top takes a port slot per entry: 13 % of an unstructured
        1x1 kernel's time with its input in L1 (512x512 at 28x28, two vectors per tile, measured
        by dropping the broadcasts). One 16-byte load per four entries and an in-lane shuffle per
        entry take that work off the load ports. Side by side at 90 %: the fastest variant of each
        kernels-benchmark 1x1 shape +2-10 %, single variants -2 % to +31 %; N:M 2:4 variants
        -4 % to +13 %, the fastest of three shapes -1 % to +8 %. Kernels that share
        loads between rows (blocks, kernel patterns: several weights per loaded vector) gained
        nothing that way (-9 % to +3 %), so they keep their broadcasts."""
        single = isinstance(self.low, Nm) or (isinstance(self.low, Bsr) and self.low.r * self.low.c == 1)
        return single and self.vw in (8, 16) and self.geo.mode != "narrow"

    @property
    def qt(self) -> str:
        """The C type of a quad register (`quad_helpers`)."""
        return "__m512" if self.vw == 16 else "__m256"

    def quad_loads(self, base: str, count: int) -> list[str]:
        """Quad registers ``wq0_ ..``: weights ``base .. base + 4 * count`` (`quad_helpers`)."""
        return [f"const {self.qt} wq{i}_ = wq_load({base} + {4 * i});" for i in range(count)]

    def wq(self, q: str, i: int, v: int) -> str:
        """Weight ``i`` of quad register ``q``, as the type of vector ``v`` of the tile."""
        return f"WQH({q}, {i})" if self.vec(v)[1] else f"WQ({q}, {i})"

    def quad_helpers(self) -> None:
        """``wq_load``: four weights repeated in every 128-bit lane; ``WQ(q, i)`` / ``WQH``:
        weight ``i`` of them in every lane of a full / half vector (`_Writer.entry_loop`)."""
        if self.vw == 16:
            self.emit("#include <immintrin.h>",
                      f"INL {self.qt} wq_load(const float *p) {{ return _mm512_broadcast_f32x4(_mm_loadu_ps(p)); }}",
                      "#define WQ(q, i) ((vf)_mm512_permute_ps((q), 0x55 * (i)))",
                      "#define WQH(q, i) ((vh)_mm512_castps512_ps256(_mm512_permute_ps((q), 0x55 * (i))))")
        else:
            self.emit("#include <immintrin.h>",
                      f"INL {self.qt} wq_load(const float *p) {{ return _mm256_broadcast_ps((const __m128 *)p); }}",
                      "#define WQ(q, i) ((vf)_mm256_permute_ps((q), 0x55 * (i)))")

    def bsr_entry(self, j: str, u: int, rp: int, nv: int, masks: list[str] | None = None,
                  quad: tuple[str, int] | None = None) -> list[str]:
        """One block: its ``C`` input vectors of the tile (``masks``: masked layout, one lane mask
        per vector) times its ``rp x C`` weights into accumulator set ``u``; ``quad``: (register,
        lane) of a single weight loaded by `quad_helpers`' ``wq_load`` (CSR)."""
        R, C = self.low.r, self.low.c
        if quad is not None:
            lines = ["{"]
        else:
            lines = ["{", f"const float *w_ = WV + (size_t)({j}) * {R * C};"]
        if self.entry_offsets:
            lines.append(f"const float *x0_ = xs + XOFF[{j}] + q0;")
        else:
            lines.append(f"const int kb_ = (int)IDX[{j}]{f' * {C}' if C > 1 else ''};")
        for c in range(C):
            if not self.entry_offsets:
                lines.append(f"const float *x{c}_ = {self.xaddr(self.col_expr(c))};")
            lines += [f"const {self.vt(v)} xv{c}_{v} = {self.vload(f'x{c}_', v, masks[v] if masks else None)};" for v in range(nv)]
        for c in range(C):
            for r in range(rp):
                if quad is not None:
                    lines += [f"{self.acc(u, r, v)} += {self.wq(*quad, v)} * xv{c}_{v};" for v in range(nv)]
                else:
                    lines += [f"{self.acc(u, r, v)} += w_[{r * C + c}] * xv{c}_{v};" for v in range(nv)]
        return lines + ["}"]

    def entry_loop(self, var: Variant, rp: int, nv: int, jb: str, je: str, masks: list[str] | None = None) -> list[str]:
        """Blocks ``jb .. je`` of the block row, ``var.unroll`` at a time into independent accumulator sets."""
        sets = var.unroll
        lines = [f"int j = {jb}; const int je_ = {je};"]
        if self.weight_quads:  # a multiple of four entries at a time: entry i into set i % sets
            step = math.lcm(sets, 4)
            lines.append(f"for (; j + {step} <= je_; j += {step}) {{")
            lines += self.quad_loads("WV + j", step // 4)
            for i in range(step):
                lines += self.bsr_entry(f"j + {i}", i % sets, rp, nv, masks, (f"wq{i // 4}_", i % 4))
            lines.append("}")
        elif sets > 1:
            lines.append(f"for (; j + {sets} <= je_; j += {sets}) {{")
            for u in range(sets):
                lines += self.bsr_entry(f"j + {u}", u, rp, nv, masks)
            lines.append("}")
        lines.append("for (; j < je_; ++j)")
        return lines + self.bsr_entry("j", 0, rp, nv, masks)

    def masked_loop(self, var: Variant, rp: int, nv: int) -> list[str]:
        """Masked layout: the block row's tap groups, each with its lane masks loaded once. Tiles
        clear of the first and last image row need only the column masks: three groups (dx), the
        middle one unmasked; the others run all nine (dy, dx) groups."""
        def group(first: int, last: int, mask: int | None) -> list[str]:  # blocks of groups first .. last, masks of group `mask`
            masks = None if mask is None else [f"m{v}_" for v in range(nv)]
            loads = [] if mask is None else [f"const __mmask16 m{v}_ = (__mmask16)MK[{mask} * NVEC + v0_ + {v}];" for v in range(nv)]
            return ["{", *loads, *self.entry_loop(var, rp, nv, f"TP[b * 10 + {first}]", f"TP[b * 10 + {last}]", masks), "}"]

        lines = ["const int v0_ = q0 / VW;", f"if (q0 >= W && q0 + {nv * self.vw} <= (H - 1) * W) {{"]
        for dx in range(3):
            lines += group(dx * 3, dx * 3 + 3, None if dx == 1 else dx * 3 + 1)
        lines.append("} else {")
        for g in range(9):
            lines += group(g, g + 1, g)
        return lines + ["}"]

    def bsr_loop(self, var: Variant, rp: int, nv: int) -> list[str]:
        if self.geo.mode == "masked":
            return self.masked_loop(var, rp, nv)
        uniform = self.low.uniform
        if self.n_ktiles(var) > 1:
            n = self.n_ktiles(var) + 1
            jb, je = f"KP_{var.name}[b * {n} + kt]", f"KP_{var.name}[b * {n} + kt + 1]"
        elif uniform is not None:
            jb, je = f"b * {uniform}", f"b * {uniform} + {uniform}"
        else:
            jb, je = "IP[b]", "IP[b + 1]"
        return self.entry_loop(var, rp, nv, jb, je)

    def nm_entries(self, g: str, sets: int, nv: int, gi: int = 0, quads: bool = False) -> list[str]:
        """Group ``g``'s ``N`` entries, entry ``i`` of the iteration into set ``i % sets``
        (``quads``: weight ``i`` from quad register ``wq<i // 4>_``, `quad_helpers`)."""
        N, M = self.low.n, self.low.m
        lines = []
        for n in range(N):
            i = gi * N + n
            e = f"({g}) * {N} + {n}"
            lines += ["{", f"const float *x_ = {self.xaddr(f'({g}) * {M} + ix_[{e}]')};"]
            if quads:
                lines += [f"{self.acc(i % sets, 0, v)} += {self.wq(f'wq{i // 4}_', i % 4, v)} * {self.vload('x_', v)};" for v in range(nv)]
            else:
                lines.append(f"const float w_ = wv_[{e}];")
                lines += [f"{self.acc(i % sets, 0, v)} += w_ * {self.vload('x_', v)};" for v in range(nv)]
            lines.append("}")
        return lines

    def nm_loop(self, var: Variant, nv: int) -> list[str]:
        N, M = self.low.n, self.low.m
        groups = -(-self.geo.k // M)
        per = max(1, var.k_tile // M) if self.n_ktiles(var) > 1 else groups
        gn = self.low.values.shape[1]
        sets = var.unroll
        gu = max(1, sets // N, 4 // N)  # at least four entries per iteration
        quads = self.weight_quads
        while quads and gu * N % 4:  # whole quads of weights per iteration
            gu += 1
        lines = [f"const float *wv_ = NMV + (size_t)b * {gn}; const uint8_t *ix_ = NMI + (size_t)b * {gn};",
                 f"int g = kt * {per}; const int ge_ = kt * {per} + {per} < {groups} ? kt * {per} + {per} : {groups};"]
        if gu > 1:
            lines.append(f"for (; g + {gu} <= ge_; g += {gu}) {{")
            lines += self.quad_loads(f"wv_ + (size_t)g * {N}", gu * N // 4) if quads else []
            for gi in range(gu):
                lines += self.nm_entries(f"g + {gi}", sets, nv, gi, quads)
            lines.append("}")
        lines.append("for (; g < ge_; ++g) {")
        return lines + self.nm_entries("g", sets, nv) + ["}"]

    def kpat_loop(self, var: Variant, rp: int, nv: int) -> list[str]:
        low, geo = self.low, self.geo
        S, P, sets = low.share, len(low.library), var.unroll
        n_taps = low.values.shape[2]
        taps = low.taps
        n_kt = self.n_ktiles(var)
        lines = []
        for p in low.used_patterns:
            if n_kt > 1:
                at = f"(b * {P} + {p}) * {n_kt + 1} + kt"
                lo, hi = f"KP_{var.name}[{at}]", f"KP_{var.name}[{at} + 1]"
            else:
                lo, hi = f"UPTR[b * {P} + {p}]", f"UPTR[b * {P} + {p + 1}]"
            lines += [f"for (int u = {lo}; u < {hi}; ++u) {{",
                      "const float *xb_ = xs + UOFF[u] + q0;",
                      f"const float *w_ = UW + (size_t)u * {S * n_taps};"]
            for ti, t in enumerate(taps[p]):
                u_set = ti % sets
                off = geo.tap_offset(t)
                lines += ["{", *[f"const {self.vt(v)} xv{v} = {self.vload(f'xb_ + {off}', v)};" for v in range(nv)]]
                for s in range(rp):
                    lines += [f"{self.acc(u_set, s, v)} += w_[{s * n_taps + ti}] * xv{v};" for v in range(nv)]
                lines.append("}")
            lines.append("}")
        return lines

    # ----- one tile of one block row -------------------------------------------------------------
    def row_of(self, r: int) -> str:
        R = self.rows_per_tile
        if isinstance(self.low, Bsr) and self.low.rows is not None:
            return f"(int)ROWMAP[b * {R} + {r}]"
        return f"(b * {R} + {r})"

    def block_fn(self, var: Variant, nv: int, rp: int, rows: bool = False) -> str:
        """``blk_<variant>_<nv>_<rp>(xs, y, pt, q0, b, kt)``: rows ``b*R .. b*R+rp`` at positions
        ``q0 .. q0 + nv*VW`` for K tile ``kt``; partial sums go to ``y`` (direct) or ``pt``.
        ``rows``: the row-band version (`rows_entry`), one more argument ``qs``: position ``q``
        is stored at ``q - qs`` of each output channel (``LDY`` floats apart), unclipped."""
        vw, sets, geo = self.vw, var.unroll, self.geo
        n_kt = self.n_ktiles(var)
        T = self.tile(var)
        name = f"blk_{var.name}_{nv}_{rp}" + ("_r" if rows else "") + ("_t" if self.vecs else "")
        self.packed_tile = T if var.pack else 0
        self.emit(f"INL void {name}(const float *restrict xs, float *restrict y, float *restrict pt, const int q0, "
                  f"const int b, const int kt{', const long qs' if rows else ''}) {{",
                  "const vf z_ = {0}; (void)kt; (void)pt;", *self.declare(sets, rp, nv),
                  *[f"const int row{r}_ = {self.row_of(r)};" for r in range(rp)])

        def partial(r: int, v: int) -> str:
            return f"pt + (size_t)row{r}_ * {T} + {v * vw}"

        def h(v: int) -> str:
            return "h" if self.vec(v)[1] else ""

        if n_kt > 1:
            self.emit("if (kt == 0) {", *self.zero(1, rp, nv), "} else {",
                      *[f"{self.acc(0, r, v)} = vld{h(v)}({partial(r, v)});" for r in range(rp) for v in range(nv)],
                      "}", *self.zero(sets, rp, nv, first_set=1))
        else:
            self.emit(*self.zero(sets, rp, nv))
        if isinstance(self.low, Bsr):
            self.emit(*self.bsr_loop(var, rp, nv))
        elif isinstance(self.low, Nm):
            self.emit(*self.nm_loop(var, nv))
        else:
            self.emit(*self.kpat_loop(var, rp, nv))
        self.emit(*self.reduce(sets, rp, nv))
        if n_kt > 1:
            self.emit(f"if (kt < {n_kt - 1}) {{",
                      *[f"vst{h(v)}({partial(r, v)}, {self.acc(0, r, v)});" for r in range(rp) for v in range(nv)], "return;", "}")
        for r in range(rp):
            bias = self.bias_of(f"row{r}_")
            for v in range(nv):
                off = self.vec(v)[0]
                val = f"act_{'h' if h(v) else 'v'}({self.acc(0, r, v)} + {bias})"
                if geo.mode == "direct":
                    self.emit(f"vst{h(v)}(y + (size_t)row{r}_ * LDY + q0 + {off}, {val});")
                elif rows:
                    self.emit(f"vst(y + (size_t)row{r}_ * LDY + (q0 - qs) + {off}, {val});")
                else:
                    self.emit(f"store_q{h(v)}(y + (size_t)row{r}_ * HWO, q0 + {off}, {val});")
        self.emit("}")
        self.packed_tile = 0
        return name

    def tile_fn(self, var: Variant, nv: int, rows: bool = False, tail: int | None = None) -> str:
        """``tile_<variant>_<nv>(xs, y, pt, q0)``: every row at positions ``q0 .. q0 + nv*VW``
        (``rows``: the row-band version, `block_fn`; ``tail``: the grid's last tile, whose last
        vector is `tail_vector`'s, ``tail`` floats from ``q0``); emitted once per variant, width
        and kind."""
        name = f"tile_{var.name}_{nv}" + ("_r" if rows else "") + ("_t" if tail is not None else "")
        if name in self.emitted:
            return name
        self.emitted.add(name)
        if tail is not None:
            self.vecs = [(v * self.vw, False) for v in range(nv - 1)] + [(tail, self.tail[2])]
        full, last = self.block_rows()
        R = self.rows_per_tile
        fns = [(self.block_fn(var, nv, R, rows), f"for (int b = 0; b < {full}; ++b)", "b")] if full else []
        if last:
            fns.append((self.block_fn(var, nv, last, rows), "", str(full)))
        qs = ", const long qs" if rows else ""
        pk = ", float *restrict pk" if var.pack else ""
        self.emit(f"static void {name}(const float *restrict xs, float *restrict y, float *restrict pt, const int q0{qs}{pk}) {{",
                  *self.pack_lines(var, nv), f"for (int kt = 0; kt < {self.n_ktiles(var)}; ++kt) {{")
        src = "pk" if var.pack else "xs"
        ahead = self.prefetch_lines(var, nv, full) if full and not rows and tail is None else []
        for fn, loop, b in fns:
            call = f"{fn}({src}, y, pt, q0, {b}, kt{', qs' if rows else ''});"
            self.emit(*([f"{loop} {{", *ahead, call, "}"] if ahead and b == "b" else [f"{loop} {call}"]))
        self.emit("}", "}")
        self.vecs = None
        return name

    def prefetch_lines(self, var: Variant, nv: int, full: int) -> list[str]:
        """1x1 tiles: before block row ``b`` runs, prefetch its share of the next tile's input
        columns (unpacked, untiled K: packed tiles prefetch while they copy) and, in the last K
        tile, the next tile's lines of its own output rows. Layers whose input and output do not
        fit the caches otherwise wait on one DRAM line per input channel and output row in turn
        (side by side, 512x512 at 56x56 and 90 %: block4x1 0.62 -> 1.11 of ideal at four
        vectors, unstructured packed 0.48 -> 0.68; layers in L2 within +-2 %). Only layers of at
        least `PREFETCH_BYTES` of input and output, and not band kernels (their rows are in L2)."""
        geo = self.geo
        if geo.mode != "direct" or self.channel_strides or (geo.k + geo.cout) * geo.hw * 4 < PREFETCH_BYTES:
            return []
        T, R, n_kt = nv * self.vw, self.rows_per_tile, self.n_ktiles(var)
        lines_at = range(T, 2 * T, 64 // 4)  # the next tile's 64-byte lines, in floats from q0
        lines = []
        if not var.pack and n_kt == 1:
            per = -(-geo.k // full)
            lines += [f"for (int k_ = b * {per}; k_ < b * {per} + {per} && k_ < K; ++k_) {{",
                      *[f"__builtin_prefetch(xs + (size_t)k_ * LDX + q0 + {o}, 0, 2);" for o in lines_at], "}"]
        out = [f"__builtin_prefetch(y + (size_t)({self.row_of(r)}) * LDY + q0 + {o}, 1, 2);" for r in range(R) for o in lines_at]
        return lines + (out if n_kt == 1 else [f"if (kt == {n_kt - 1}) {{", *out, "}"])

    def pack_lines(self, var: Variant, nv: int) -> list[str]:
        """Packed variants: copy the tile's ``nv`` vectors of every input channel into the panel
        ``pk`` (``K x tile``, contiguous). The entry loop then reads a few contiguous pages instead of
        one strided row per channel: fewer TLB misses, prefetchable, aligned even where rows are
        not (unstructured 512x512 at 90 %, best variant each, side by side: 0.60 -> 0.70 of the
        ideal speedup on 28x28 pixels, 0.55 -> 0.61 on 14x14; packing included). The staged layout
        packs from the caller's rows directly (its last vector zero-filled) and skips staging."""
        if not var.pack:
            return []
        T, vw = self.tile(var), self.vw
        staged = self.geo.mode == "staged"
        lines = ["for (int k = 0; k < K; ++k) {",
                 f"const float *s_ = xs + (size_t)k * {'HW' if staged else 'LDX'} + q0; float *d_ = pk + (size_t)k * {T};"]
        for v in range(nv):
            off, half = self.vec(v)
            if staged:
                load = f"load_upto(s_ + {off}, (long)HW - q0 - {off})"
                load = f"(vh)_mm512_castps512_ps256((__m512){load})" if half else load
            else:
                load = f"vld{'h' if half else ''}(s_ + {off})"
            lines.append(f"vst{'h' if half else ''}(d_ + {v * vw}, {load});")
        # the next tile's columns, toward L2 while this tile computes (large inputs live in DRAM)
        lines += [f"__builtin_prefetch(s_ + {T + o}, 0, 2);" for o in range(0, nv * vw, 64 // 4)]
        return lines + ["}"]

    # ----- entry points -----------------------------------------------------------------------------
    def scratch(self, var: Variant, per_thread: bool = True) -> tuple[str, str]:
        """A tile call's scratch arguments: the K-tile partial sums (``0``: not K-tiled) and, for
        packed variants, ``, <input panel>`` (after ``q0``). ``per_thread``: the calling OpenMP
        thread's (inside a parallel loop); otherwise the first thread's."""
        T = self.tile(var)
        thread = "omp_get_thread_num()" if per_thread and self.threads > 1 else ""
        pt = ("ws + PT_OFF" + (f" + (size_t){thread} * CO * {T}" if thread else "")) if self.n_ktiles(var) > 1 else "0"
        pk = (", ws + PK_OFF" + (f" + (size_t){thread} * K * {T}" if thread else "")) if var.pack else ""
        return pt, pk

    def tile_loops(self, var: Variant, n_vectors: int, xs: str) -> list[str]:
        """Loops computing output vectors ``0 .. n_vectors`` in tiles of at most ``var.nv`` vectors,
        as even as possible (49 vectors at nv=8: 7 x 7, not 6 x 8 + 1; 13 at nv=4: 4 + 3 x 3):
        a narrow last tile runs its entry loop for few FMAs (unstructured 256x256 at 14x14 spent
        ~15 % of its time on a one-vector tail)."""
        vw = self.vw
        tiles = -(-n_vectors // var.nv)
        base, extra = divmod(n_vectors, tiles)
        runs = [[base + 1, extra], [base, tiles - extra]]
        last = base if tiles > extra else base + 1
        if self.tail:  # the last tile is the tail tile (`tail_vector`)
            runs[1 if tiles > extra else 0][1] -= 1
        lines, start = [], 0
        for size, count in runs:
            if count:
                fn = self.tile_fn(var, size)
                if count > 1:
                    pt, pk = self.scratch(var)
                    lines += [self.par(), f"for (int t = 0; t < {count}; ++t) {fn}({xs}, y, {pt}, {start * vw} + t * {size * vw}{pk});"]
                else:
                    pt, pk = self.scratch(var, per_thread=False)
                    lines.append(f"{fn}({xs}, y, {pt}, {start * vw}{pk});")
                start += size * count
        if self.tail:
            fn = self.tile_fn(var, last, tail=self.tail[1] - start * vw)
            pt, pk = self.scratch(var, per_thread=False)
            lines.append(f"{fn}({xs}, y, {pt}, {start * vw}{pk});")
        return lines

    def direct(self, var: Variant) -> None:
        vw, T = self.vw, self.tile(var)
        hw = self.geo.hw
        self.emit(f"void tt_run_{var.name}(const float *restrict x, float *restrict y, float *restrict ws) {{",
                  "(void)ws;", *self.fill_empty_rows(), *self.tile_loops(var, self.tail[0] if self.tail else hw // vw, "x"), "}")
        if var.pack:  # no band entry: bands read their rows in place
            return
        # the same over the first npix (>= VW) pixels of each row: one band of rows of a fused block
        big, one, (pt, _) = self.tile_fn(var, var.nv), self.tile_fn(var, 1), self.scratch(var)
        pt0, _ = self.scratch(var, per_thread=False)
        self.emit(f"void tt_band_{var.name}(const float *restrict x, float *restrict y, float *restrict ws, long npix) {{",
                  "(void)ws;", *self.fill_empty_rows("npix"), f"const long nt_ = npix / {T};", self.par(),
                  f"for (long t = 0; t < nt_; ++t) {big}(x, y, {pt}, (int)(t * {T}));",
                  f"long q_ = nt_ * {T};",
                  f"for (; q_ + VW <= npix; q_ += VW) {one}(x, y, {pt0}, (int)q_);",
                  f"if (q_ < npix) {one}(x, y, {pt0}, (int)(npix - VW));", "}")

    def staged(self, var: Variant) -> None:
        # no vector past the grid is computed (3x3 128x128 at 14x14, block4x1: 5 + 4 + 4 vectors, not 3 x 5)
        in_place = var.pack or self.geo.mode == "masked"
        self.emit(f"void tt_run_{var.name}(const float *restrict x, float *restrict y, float *restrict ws) {{",
                  *self.fill_empty_rows(), "" if in_place else "stage(x, ws);",
                  *self.tile_loops(var, -(-self.geo.q // self.vw), "x" if in_place else "ws"), "}")
        if self.channel_strides:
            self.rows_entry(var)

    def rows_entry(self, var: Variant) -> None:
        """``tt_rows_<variant>(x, y, ws, qs, qe)``: output positions ``qs .. qe`` (whole rows, both
        multiples of VW) of every channel into ``y`` (``LDY`` floats apart, position ``qs`` first),
        staging the input when ``qs == 0``: the producer of a fused block (a stem), called for
        successive runs of rows from the first."""
        T = self.tile(var)
        pt, _ = self.scratch(var, per_thread=False)  # single thread
        big, one = self.tile_fn(var, var.nv, rows=True), self.tile_fn(var, 1, rows=True)
        self.emit(f"void tt_rows_{var.name}(const float *restrict x, float *restrict y, float *restrict ws, long qs, long qe) {{",
                  "if (qs == 0) stage(x, ws);", "long q = qs;",
                  f"for (; q + {T} <= qe; q += {T}) {big}(ws, y, {pt}, (int)q, qs);",
                  f"for (; q < qe; q += VW) {one}(ws, y, {pt}, (int)q, qs);", "}")

    # ----- narrow (a few pixels): scalar loops the compiler vectorises over rows ----------------------
    def narrow_bsr(self, var: Variant) -> None:
        low, geo = self.low, self.geo
        R, C, sets = low.r, low.c, var.unroll
        full, last = self.block_rows()
        nbr = full + (1 if last else 0)
        clamp = f" if (k >= {geo.k}) k = {geo.k - 1};" if geo.k % C else ""
        row = "(int)ROWMAP[b * R_ + r]" if low.rows is not None else "b * R_ + r"
        self.emit(f"void tt_run_{var.name}(const float *restrict x, float *restrict y, float *restrict ws) {{",
                  "(void)ws;", *self.fill_empty_rows(), f"enum {{ R_ = {R}, C_ = {C}, U_ = {sets} }};", self.par(),
                  f"for (int b = 0; b < {nbr}; ++b) {{",
                  f"const int rp = b < {full} ? R_ : {last or R};",
                  "float acc[U_][R_][HW];", "memset(acc, 0, sizeof acc);",
                  "for (int j = IP[b]; j < IP[b + 1]; ++j) {",
                  "const int u = (j - IP[b]) % U_;",
                  "const float *w = WV + (size_t)j * R_ * C_;",
                  "for (int c = 0; c < C_; ++c) {",
                  f"int k = (int)IDX[j] * C_ + c;{clamp}",
                  "const float *xr = x + (size_t)k * HW;",
                  "for (int r = 0; r < R_; ++r) for (int t = 0; t < HW; ++t) acc[u][r][t] += w[r * C_ + c] * xr[t];",
                  "}", "}",
                  "for (int r = 0; r < rp; ++r) {",
                  f"const int o = {row};",
                  "for (int t = 0; t < HW; ++t) {",
                  "float s = 0.0f; for (int u = 0; u < U_; ++u) s += acc[u][r][t];",
                  f"y[(size_t)o * HW + t] = act_s(s + {self.bias_of('o')});",
                  "}", "}", "}", "}")

    def narrow_nm(self, var: Variant) -> None:
        low = self.low
        N, M, sets = low.n, low.m, var.unroll
        groups = -(-self.geo.k // M)
        gn = low.values.shape[1]
        self.emit(f"void tt_run_{var.name}(const float *restrict x, float *restrict y, float *restrict ws) {{",
                  "(void)ws;", self.par(), "for (int o = 0; o < CO; ++o) {",
                  f"const float *wv_ = NMV + (size_t)o * {gn}; const uint8_t *ix_ = NMI + (size_t)o * {gn};",
                  f"float acc[{sets}][HW];", "memset(acc, 0, sizeof acc);",
                  f"for (int e = 0; e < {groups * N}; ++e) {{",
                  f"const float *xr = x + (size_t)((e / {N}) * {M} + ix_[e]) * HW;",
                  f"for (int t = 0; t < HW; ++t) acc[e % {sets}][t] += wv_[e] * xr[t];",
                  "}",
                  "for (int t = 0; t < HW; ++t) {",
                  f"float s = 0.0f; for (int u = 0; u < {sets}; ++u) s += acc[u][t];",
                  f"y[(size_t)o * HW + t] = act_s(s + {self.bias_of('o')});",
                  "}", "}", "}")

    def source(self) -> str:
        geo = self.geo
        self.emit(prelude(self.vw), activation(self.act))
        self.constants()
        self.arrays()
        if geo.mode == "staged":
            self.stage()
        if geo.mode == "masked":
            self.emit("#if !defined(__AVX512F__) || VW != 16", "#error the masked layout needs AVX-512", "#endif",
                      "#include <immintrin.h>",
                      "INL vf vldm(const float *p, __mmask16 m) { return (vf)_mm512_maskz_loadu_ps(m, p); }")
        if geo.grid:
            self.store_helper()
        if self.tail and self.tail[2]:
            self.half_helpers()
        if self.weight_quads:
            self.quad_helpers()
        for var in self.variants:
            if geo.mode == "direct":
                self.direct(var)
            elif geo.grid:
                self.staged(var)
            elif isinstance(self.low, Bsr):
                self.narrow_bsr(var)
            else:
                self.narrow_nm(var)
        self.emit(f"int tt_abi_version(void) {{ return {ABI_VERSION}; }}",
                  "long tt_workspace_floats(void) { return WS_FLOATS; }",
                  "int tt_vector_width(void) { return VW; }")
        return "\n".join(line for line in self.out if line) + "\n"


def generate(geo: Geometry, low: Lowered, variants: list[Variant], *, bias: np.ndarray | None = None, act: str = "none",
             threads: int = 1, vector_width: int = 16, channel_strides: tuple[int, int] | None = None) -> str:
    """The C source of a layer with one ``tt_run_<variant.name>`` per variant (names must differ).

    ``channel_strides``: (input, output) floats between channels (default: the pixel counts).
    With them a direct kernel (1x1) reads and writes a band of rows inside larger tensors:
    ``tt_band_<variant>(x, y, ws, npix)`` computes the first ``npix`` (>= VW) pixels; a staged
    3x3 kernel whose grid is its output (single thread; input stride H*W) writes runs of its
    output rows: ``tt_rows_<variant>(x, y, ws, qs, qe)`` (`_Writer.rows_entry`)."""
    if not variants:
        raise ValueError("variants: at least one variant is required")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variants: duplicate variants {names}")
    if isinstance(low, KernelPattern) and geo.mode != "staged":
        raise ValueError("kernel_pattern: only 3x3 (staged) layers")
    for var in variants:
        check_variant(geo, low, var)
    if channel_strides is not None:
        ldx, ldy = (int(v) for v in channel_strides)
        if ldx < 1 or ldy < 1:
            raise ValueError(f"channel_strides: {channel_strides!r} not allowed; allowed: two positive integers")
        rows_ok = geo.kind == "conv3x3" and geo.mode == "staged" and geo.wp == geo.out_width and ldx == geo.hw and threads == 1
        if geo.mode != "direct" and not rows_ok:
            raise ValueError(f"channel_strides: only for the direct layout (1x1 layers) and, as (H*W, output stride), for single-thread "
                             f"3x3 layers whose grid is their output; this layer is {geo.mode}")
        if any(v.pack for v in variants):
            raise ValueError("tile.pack: True not allowed with channel_strides (band kernels read their rows in place); allowed: False")
        channel_strides = (ldx, ldy)
    return _Writer(geo, low, list(variants), bias, act, threads, vector_width, channel_strides).source()
