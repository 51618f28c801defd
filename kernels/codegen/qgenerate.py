"""C source of one integer layer (see `tritune.kernels.codegen.qplan`), one function per tiling.

Every exported function has the signature ``void tt_run_<variant>(const void *x, void *io,
void *ws)``: ``x`` the uint8 input ``[C, H, W]`` (linear: ``[in]``), ``io`` a `tt_io` record of the
outputs (uint8 codes, float32 values, the float32 residual added, float32 channel means; the ones
the layer was generated for must be set), ``ws`` a 64-byte aligned, zero-initialised workspace of
``tt_workspace_bytes()`` bytes owned by the caller (im2col columns, the tile's interleaved panel,
widened 4-bit weights, a narrow layer's transposed input).

Per tile of ``nv`` vectors of pixels, every block row keeps its ``r x nv`` int32 accumulators in
registers across its entries (the register code is unrolled here, in Python); weights and
indices are ``static const`` arrays (weights four codes to a 32-bit word, two to a byte at 4
bits). Pixel tiles are cut as even as possible; the last vector of the last tile may be partial
(masked loads and stores). The requantization, activation, residual sum, stores and the channel
sums of a pool run on each accumulator vector as the block row finishes
(`tritune.kernels.codegen.qplan.Epilogue`): with a uint8 output only and no or a ReLU
activation, one multiply-add, one max, one conversion and one narrowing store per vector.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .csource import ABI_VERSION, float_array, int_array
from .qplan import Epilogue, QGeometry, QLowered, check_lowering
from .qsource import ACT_CODES, AVX2, PRELUDE, UNPACK4, VNNI, activation_v, isa_define

#: Pixels per vector of each instruction set the source is compiled for (AVX-512, AVX2).
LANES = (16, 8)


@dataclass(frozen=True)
class QVariant:
    """Tiling of one integer kernel: ``nv`` vectors of pixels per tile; ``mode`` (``quad`` /
    ``gather``) and ``rows`` per block row (``None`` / 0: what the pattern suits,
    `tritune.kernels.codegen.qplan.default_lowering`)."""

    nv: int = 2
    mode: str | None = None
    rows: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.nv, bool) or not isinstance(self.nv, (int, np.integer)) or not 1 <= self.nv <= 8:
            raise ValueError(f"tile.nv: {self.nv!r} not allowed; allowed: an integer in 1..8")
        if self.mode is not None and self.mode not in ("quad", "gather"):
            raise ValueError(f"tile.mode: {self.mode!r} not allowed; allowed: quad, gather, None")
        if isinstance(self.rows, bool) or not isinstance(self.rows, (int, np.integer)) or not 0 <= self.rows <= 16:
            raise ValueError(f"tile.rows: {self.rows!r} not allowed; allowed: 0 (the pattern's) or 1..16")

    @property
    def name(self) -> str:
        return f"{(self.mode or 'd')[0]}{self.rows}t{self.nv}"

    def to_json(self) -> dict:
        return {"nv": int(self.nv), "mode": self.mode, "rows": int(self.rows)}

    @classmethod
    def coerce(cls, value: "QVariant | dict | None") -> "QVariant":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"nv", "mode", "rows"}
            if unknown:
                raise ValueError(f"tile: unknown fields {sorted(unknown)}; allowed: nv, mode, rows")
            return cls(**value)
        raise ValueError(f"tile: {value!r} not allowed; allowed: a QVariant, a dict(nv=, mode=, rows=) or None")


def accumulator_limit(mode: str, nv: int) -> int:
    """Most accumulator vectors a tile of ``nv`` vectors may hold: 32 registers less the loaded
    activation vectors and the broadcast weight, and for gathers the two permute indices and two
    staging registers."""
    return 32 - nv - 1 - (4 if mode == "gather" else 0)


def check_qvariant(geo: QGeometry, mode: str, r: int, nv: int) -> None:
    check_lowering(geo, mode, r)
    if not geo.narrow and r * nv > accumulator_limit(mode, nv):
        raise ValueError(f"tile: {r} rows x nv={nv} = {r * nv} accumulator vectors in the {mode} nest; "
                         f"allowed: at most {accumulator_limit(mode, nv)}")


def tile_plan(pixels: int, nv: int, lanes: int) -> list[tuple[int, int, int]]:
    """``(first pixel, tiles, pixels per tile)`` runs covering ``pixels``: tiles of at most ``nv``
    vectors, as even as possible; the last run's last tile may end inside a vector."""
    n_vec = -(-pixels // lanes)
    tiles = -(-n_vec // nv)
    base, extra = divmod(n_vec, tiles)
    runs, start = [], 0
    for size, count in ((base + 1, extra), (base, tiles - extra)):
        if count:
            runs.append([start, count, size * lanes])
            start += count * size * lanes
    last = runs[-1]
    if start != pixels:  # the final tile is partial: a run of its own
        if last[1] > 1:
            last[1] -= 1
            runs.append([last[0] + last[1] * last[2], 1, last[2]])
        runs[-1][2] -= start - pixels
    return [tuple(r) for r in runs]


def _words(values: np.ndarray, bits: int) -> np.ndarray:
    """int8 codes (entry, row, slot order) as uint32 words: four codes per word, or eight at 4 bits
    (code ``2i`` in the low nibble of byte ``i``); 32 bytes of slack for vector unpacking."""
    flat = values.reshape(-1).astype(np.int8)
    if bits <= 4:
        nib = (flat.astype(np.int16) & 15).astype(np.uint8)
        if len(nib) % 2:
            nib = np.concatenate([nib, np.zeros(1, np.uint8)])
        raw = (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8)
    else:
        raw = flat.view(np.uint8)
    raw = np.concatenate([raw, np.zeros((-len(raw)) % 4 + 32, np.uint8)])
    return raw.view(np.uint32)


#: The requantization epilogue: ``epi`` (vector, AVX-512 / AVX2) and ``epi_s`` (scalar) write the
#: outputs of output row ``o`` at pixel ``p`` from an int32 sum, by the ``TT_*`` flags and the
#: ``EM`` / ``EC`` constants (`tritune.kernels.codegen.qplan.epilogue_constants`).
EPILOGUE = r"""
#if TT_ISA
/* one accumulator vector of output row o at pixel p (n valid lanes) -> outputs; returns the float value */
INL vfl epi(av_t acc, int o, long p, const tt_io *io, int n) {
    vfl f = fmadd(cvtf(acc), fset(EM[o]), fset(EC[o]));
#if TT_FOLD
    qstore(io->q + (size_t)o * P_ + p, fmax_(f, fset(QLOW)), n, QMAX);
    return f;
#else
    f = act_v(f);
#if TT_RES
    f = fadd(f, fload(io->res + (size_t)o * P_ + p, n));
#endif
#if TT_OUTF
    fstore(io->f + (size_t)o * P_ + p, f, n);
#endif
#if TT_OUTQ
    qstore(io->q + (size_t)o * P_ + p, fmax_(fmadd(f, fset(QINV), fset(QZP)), fzero()), n, QMAX);
#endif
    return f;
#endif
}
#endif
INL void epi_s(int32_t acc, int o, long p, const tt_io *io) {
    float f = (float)acc * EM[o] + EC[o];
#if TT_FOLD
    f = f > QLOW ? f : QLOW;
    io->q[(size_t)o * P_ + p] = (uint8_t)tt_sat(f, QMAX);
#else
    f = tt_act_s(f, ACT);
#if TT_RES
    f += io->res[(size_t)o * P_ + p];
#endif
#if TT_OUTF
    io->f[(size_t)o * P_ + p] = f;
#endif
#if TT_POOL
    io->pool[o] += f;
#endif
#if TT_OUTQ
    io->q[(size_t)o * P_ + p] = (uint8_t)tt_sat(f * QINV + QZP, QMAX);
#endif
#endif
}
"""


def epilogue_defines(epi: Epilogue) -> dict[str, int]:
    """The ``#define`` flags `EPILOGUE` reads."""
    oq = epi.out_quant
    return {"ACT": ACT_CODES[epi.act], "QMAX": oq.qmax if oq else 255, "TT_FOLD": int(epi.folded), "TT_OUTQ": int(oq is not None),
            "TT_OUTF": int(epi.out_float), "TT_RES": int(epi.residual), "TT_POOL": int(epi.pool)}


def epilogue_floats(epi: Epilogue) -> list[str]:
    """``QINV`` / ``QZP`` / ``QLOW``: the output grid's reciprocal step and zero point, the ReLU floor."""
    oq = epi.out_quant
    qinv = oq.inv_scale if oq else 1.0
    qzp = float(oq.zero_point) if oq else 0.0
    low = float(oq.zero_point) if (oq and epi.act == "relu") else 0.0
    return [f"#define QINV {float(np.float32(qinv))!r}f", f"#define QZP {qzp!r}f", f"#define QLOW {low!r}f"]


class _QWriter:
    """Emits the source; one instance per `generate_q` call."""

    def __init__(self, geo: QGeometry, lowerings: dict[tuple[str, int], QLowered], variants: list[tuple[str, int, int]],
                 epi: Epilogue, em: np.ndarray, ec: np.ndarray, in_zero: int, threads: int, isa: str, bits: int) -> None:
        self.geo, self.lowerings, self.variants, self.epi = geo, lowerings, variants, epi
        self.em, self.ec, self.zx, self.threads, self.isa, self.bits = em, ec, int(in_zero), threads, isa, bits
        self.tags = {key: f"L{i}_" for i, key in enumerate(lowerings)}
        self.out: list[str] = []

    def emit(self, *lines: str) -> None:
        self.out.extend(lines)

    # ----- sizes ----------------------------------------------------------------------------------
    @property
    def xrows(self) -> int:
        """Rows of the kernel core's input: the layer's input channels, or the im2col columns."""
        return self.geo.kq if self.geo.kind == "conv3x3" else self.geo.k

    def im_bytes(self) -> int:
        return self.geo.kq * self.geo.pixels if self.geo.kind == "conv3x3" else 0

    def panel_bytes(self) -> int:
        quad = [nv for (mode, _, nv) in self.variants if mode == "quad"]
        return self.geo.kq * max(quad) * 16 if quad and not self.geo.narrow else 0

    def wb_bytes(self) -> int:
        if self.bits > 4:
            return 0
        return max(low.max_row_entries * low.r * 4 for low in self.lowerings.values()) + 256

    def xt_bytes(self) -> int:
        return self.geo.pixels * self.geo.kq + 64 if self.geo.narrow else 0

    def layout(self) -> dict[str, int]:
        t = self.threads
        parts = [("IMOFF", self.im_bytes()), ("PKOFF", t * self.panel_bytes()), ("WBOFF", t * self.wb_bytes()), ("XTOFF", self.xt_bytes())]
        out, at = {}, 0
        for name, size in parts:
            out[name] = at
            at += -(-size // 64) * 64
        out["WS_BYTES"] = at + 64
        return out

    # ----- constants and arrays -------------------------------------------------------------------
    def constants(self) -> None:
        geo, epi = self.geo, self.epi
        small = all(int(np.abs(low.values.astype(np.int64)).max(initial=0)) <= 64 for low in self.lowerings.values())
        defs = {
            "CO": geo.cout, "K_": geo.k, "KQ_": geo.kq, "XROWS": self.xrows, "P_": geo.pixels, "CIN": geo.cin,
            "HIN": geo.in_hw[0], "WIN": geo.in_hw[1], "HWIN": geo.in_pixels, "HO": geo.out_hw[0], "WO": geo.out_hw[1],
            "S_": geo.stride, "ZX": self.zx, **epilogue_defines(epi),
            "TT_W4": int(self.bits <= 4), "TT_WSMALL": int(small), **self.layout(),
        }
        self.emit(*[f"#define {k} {v}" for k, v in defs.items()], *epilogue_floats(epi))
        self.emit(float_array("EM", self.em), float_array("EC", self.ec))

    def arrays(self) -> None:
        for key, low in self.lowerings.items():
            t = self.tags[key]
            self.emit(int_array(f"{t}IP", low.indptr, "int32_t"))
            if low.mode == "quad":
                self.emit(int_array(f"{t}QO", low.quads, "int32_t"))
            elif self.geo.narrow:
                self.emit(int_array(f"{t}XC", low.cols.reshape(-1), "int32_t"))
            else:
                self.emit(int_array(f"{t}XO", low.cols.reshape(-1).astype(np.int64) * self.geo.pixels, "int32_t"))
            words = _words(low.values, self.bits)
            self.emit(f"static const uint32_t {t}WV[{len(words)}] __attribute__((aligned(64))) = {{\n"
                      + ",\n".join(",".join(f"0x{w:08x}" for w in words[i:i + 12].tolist()) for i in range(0, len(words), 12)) + "\n};")

    def epilogue_fns(self) -> None:
        self.emit(activation_v(self.epi.act), EPILOGUE)

    def im2col(self) -> None:
        if self.geo.kind != "conv3x3":
            return
        self.emit(r"""
/* im2col columns (in, dy, dx) of the padded input (padding: ZX, the code of 0) */
static void im2col(const uint8_t *restrict x, uint8_t *restrict col) {
    for (int c = 0; c < CIN; ++c)
        for (int dy = 0; dy < 3; ++dy)
            for (int dx = 0; dx < 3; ++dx) {
                uint8_t *d = col + (size_t)(c * 9 + dy * 3 + dx) * P_;
                for (int oy = 0; oy < HO; ++oy) {
                    const int iy = oy * S_ + dy - 1;
                    uint8_t *restrict dr = d + (size_t)oy * WO;
                    if (iy < 0 || iy >= HIN) { memset(dr, ZX, WO); continue; }
                    const uint8_t *restrict sr = x + (size_t)c * HWIN + (size_t)iy * WIN;
                    if (S_ == 1) {
                        if (dx == 0) { dr[0] = ZX; memcpy(dr + 1, sr, WIN - 1); }
                        else if (dx == 1) memcpy(dr, sr, WIN);
                        else { memcpy(dr, sr + 1, WIN - 1); dr[WIN - 1] = ZX; }
                    } else {
                        int lo = dx == 0 ? 1 : 0, hi = WO;
                        while (hi > lo && 2 * (hi - 1) + dx - 1 >= WIN) --hi;
                        for (int ox = 0; ox < lo; ++ox) dr[ox] = ZX;
                        for (int ox = lo; ox < hi; ++ox) dr[ox] = sr[2 * ox + dx - 1];
                        for (int ox = hi; ox < WO; ++ox) dr[ox] = ZX;
                    }
                }
            }
    if (KQ_ > K_) memset(col + (size_t)K_ * P_, ZX, (size_t)(KQ_ - K_) * P_);
}
""")

    # ----- tile code (AVX-512 VNNI and AVX2 share it; LN differs) ----------------------------------
    def tile_fn(self, mode: str, r: int, nv: int) -> str:
        """``tile_<mode><r>_<nv>(x, io, pk, wb, p0, n)``: ``n`` (<= nv * LN) pixels from ``p0``; inlined
        into each call, so ``n`` is a constant there."""
        key = (mode, r)
        low, t = self.lowerings[key], self.tags[key]
        name = f"tile_{mode[0]}{r}_{nv}"
        rows_guard = low.n_rows % r != 0
        L = []
        L.append(f"INL void {name}(const uint8_t *restrict x, const tt_io *restrict io, uint8_t *restrict pk, int8_t *restrict wb, long p0, int n) {{")
        L.append("(void)pk; (void)wb;")
        L.append(f"int nv_[{nv}]; for (int v = 0; v < {nv}; ++v) {{ int m = n - v * LN; nv_[v] = m < 0 ? 0 : (m > LN ? LN : m); }}")
        if mode == "quad":
            L.append(f"pack_{nv}(x, pk, p0, n);")
        L.append("for (int b = 0; b < %d; ++b) {" % low.n_block_rows)
        names = [f"a{i}_{v}" for i in range(r) for v in range(nv)]
        for i in range(0, len(names), 8):
            L.append("av_t " + ", ".join(f"{a} = azero()" for a in names[i:i + 8]) + ";")
        L.append(f"const int j0 = {t}IP[b], j1 = {t}IP[b + 1];")
        if self.bits <= 4:
            L.append(f"unpack4((const uint8_t *){t}WV + (size_t)j0 * {r * 2}, wb, (((long)(j1 - j0) * {r * 2} + 31) / 32) * 32);")
            L.append("const int32_t *wr = (const int32_t *)wb;")
            wexpr = f"wr + (size_t)(j - j0) * {r}"
        else:
            wexpr = f"(const int32_t *){t}WV + (size_t)j * {r}"
        L.append("for (int j = j0; j < j1; ++j) {")
        xs = [f"x{v}" for v in range(nv)]
        L.append("xv_t " + ", ".join(xs) + ";")
        if mode == "quad":
            L.append(f"const uint8_t *xp = pk + (size_t){t}QO[j] * ({nv} * 4 * LN);")
            L += [f"x{v} = xload(xp + {v} * 4 * LN);" for v in range(nv)]
        else:
            L.append(f"const int32_t *o_ = {t}XO + 4 * j;")
            L.append("const uint8_t *g0 = x + o_[0] + p0, *g1 = x + o_[1] + p0, *g2 = x + o_[2] + p0, *g3 = x + o_[3] + p0;")
            for v in range(0, nv - 1, 2):
                L.append(f"gather2(g0 + {v} * LN, g1 + {v} * LN, g2 + {v} * LN, g3 + {v} * LN, &x{v}, &x{v + 1}, nv_[{v}] + nv_[{v + 1}]);")
            if nv % 2:
                v = nv - 1
                L.append(f"x{v} = gather1(g0 + {v} * LN, g1 + {v} * LN, g2 + {v} * LN, g3 + {v} * LN, nv_[{v}]);")
        L.append(f"const int32_t *w = {wexpr};")
        for i in range(r):
            L.append(f"{{ const int32_t w_ = w[{i}]; " + " ".join(f"a{i}_{v} = dot(a{i}_{v}, x{v}, w_);" for v in range(nv)) + " }")
        L.append("}")
        # keep the accumulators in registers: without this GCC 12 spills most of them inside the entry
        # loop (it costs the conversions after the loop as free memory operands; 8 x 3 tiles ran 2x slower)
        for i in range(0, len(names), 8):
            L.append("__asm__(\"\" : " + ", ".join(f'"+v"({a})' for a in names[i:i + 8]) + ");")
        for i in range(r):
            body = []
            if self.epi.pool:
                body.append("vfl ps = fzero();")
                body += [f"ps = fadd(ps, fkeep(epi(a{i}_{v}, o, p0 + {v} * LN, io, nv_[{v}]), nv_[{v}]));" for v in range(nv)]
                body.append("io->pool[o] += fsum(ps);")
            else:
                body += [f"epi(a{i}_{v}, o, p0 + {v} * LN, io, nv_[{v}]);" for v in range(nv)]
            guard = "if (o < CO) " if rows_guard else ""
            L.append(f"{{ const int o = b * {r} + {i}; {guard}{{ {' '.join(body)} }} }}")
        L.append("}")
        L.append("}")
        self.emit(*L)
        return name

    def pack_fn(self, nv: int) -> None:
        """``pack_<nv>(x, pk, p0, n)``: the tile's columns interleaved by quads into the panel. Not
        inlined: its permute indices would otherwise stay in registers through the block rows
        and push accumulators to the stack."""
        VB = "(4 * LN)"
        full = self.xrows // 4
        L = [f"static __attribute__((noinline)) void pack_{nv}(const uint8_t *restrict x, uint8_t *restrict pk, long p0, int n) {{",
             f"int nv_[{nv}]; for (int v = 0; v < {nv}; ++v) {{ int m = n - v * LN; nv_[v] = m < 0 ? 0 : (m > LN ? LN : m); }}",
             f"for (int q = 0; q < {full}; ++q) {{",
             "const uint8_t *r0 = x + (size_t)(4 * q) * P_ + p0, *r1 = r0 + P_, *r2 = r1 + P_, *r3 = r2 + P_;"]
        L += self.pack_lines(nv, VB, "q")
        L.append("}")
        if self.xrows % 4:
            last = self.xrows - 1
            rows = [min(4 * full + i, last) for i in range(4)]
            L.append("{")
            L.append("const uint8_t " + ", ".join(f"*r{i} = x + (size_t){rows[i]} * P_ + p0" for i in range(4)) + ";")
            L += self.pack_lines(nv, VB, str(full))
            L.append("}")
        L.append("}")
        self.emit(*L)

    @staticmethod
    def pack_lines(nv: int, VB: str, q: str) -> list[str]:
        lines = ["{ xv_t y0, y1;"]
        for v in range(0, nv - 1, 2):
            lines.append(f"gather2(r0 + {v} * LN, r1 + {v} * LN, r2 + {v} * LN, r3 + {v} * LN, &y0, &y1, nv_[{v}] + nv_[{v + 1}]);")
            lines.append(f"xstore(pk + ((size_t)({q}) * {nv} + {v}) * {VB}, y0); xstore(pk + ((size_t)({q}) * {nv} + {v + 1}) * {VB}, y1);")
        if nv % 2:
            v = nv - 1
            lines.append(f"y0 = gather1(r0 + {v} * LN, r1 + {v} * LN, r2 + {v} * LN, r3 + {v} * LN, nv_[{v}]);")
            lines.append(f"xstore(pk + ((size_t)({q}) * {nv} + {v}) * {VB}, y0);")
        lines.append("(void)y1; }")
        return lines

    def scalar_fn(self, key: tuple[str, int]) -> str:
        """Portable loop nest of one lowering (``TT_ISA 0``; narrow layers of one row per block)."""
        low, t = self.lowerings[key], self.tags[key]
        mode, r = key
        name = f"{t}scalar"
        if self.bits <= 4:
            wget = f"tt_w4((const uint8_t *){t}WV, ((long)j * {r} + i) * 4 + s)"
        else:
            wget = f"(int32_t)((const int8_t *){t}WV)[((size_t)j * {r} + i) * 4 + s]"
        if mode == "quad":
            xget = "x[(size_t)(4 * QO_j + s < XROWS ? 4 * QO_j + s : XROWS - 1) * P_ + p]"
            pre = f"const int QO_j = {t}QO[j];"
        elif self.geo.narrow:
            xget = f"x[(size_t){t}XC[4 * j + s] * P_ + p]"
            pre = ""
        else:
            xget = f"x[(size_t){t}XO[4 * j + s] + p]"
            pre = ""
        self.emit(f"static void {name}(const uint8_t *restrict x, const tt_io *restrict io) {{",
                  "for (long p = 0; p < P_; ++p)",
                  f"for (int b = 0; b < {low.n_block_rows}; ++b) {{",
                  f"int32_t acc[{r}] = {{0}};",
                  f"for (int j = {t}IP[b]; j < {t}IP[b + 1]; ++j) {{ {pre}",
                  "for (int s = 0; s < 4; ++s) {",
                  f"const int32_t xv = {xget};",
                  f"for (int i = 0; i < {r}; ++i) acc[i] += {wget} * xv;",
                  "}", "}",
                  f"for (int i = 0; i < {r}; ++i) {{ const int o = b * {r} + i; if (o < CO) epi_s(acc[i], o, p, io); }}",
                  "}", "}")
        return name

    def narrow_fn(self, key: tuple[str, int]) -> str:
        """Output rows in lanes (linear layers, tiny maps): the input transposed to ``[pixel][column]``
        once, then per block row a broadcast 4-column word times the rows' weight vector."""
        low, t = self.lowerings[key], self.tags[key]
        mode, r = key
        name = f"{t}narrow"
        if mode == "quad":
            x4 = f"uint32_t x4; memcpy(&x4, xp + 4 * {t}QO[j], 4);"
        else:
            x4 = (f"const int32_t *c_ = {t}XC + 4 * j; const uint32_t x4 = (uint32_t)xp[c_[0]] | ((uint32_t)xp[c_[1]] << 8) | "
                  "((uint32_t)xp[c_[2]] << 16) | ((uint32_t)xp[c_[3]] << 24);")
        if self.bits <= 4:
            unpack = [f"unpack4((const uint8_t *){t}WV + (size_t)j0 * {r * 2}, wb, (((long)(j1 - j0) * {r * 2} + 31) / 32) * 32);"]
            wexpr = f"(const int32_t *)wb + (size_t)(j - j0) * {r}"
        else:
            unpack = []
            wexpr = f"(const int32_t *){t}WV + (size_t)j * {r}"
        if r == 16:
            decl = ["#if TT_ISA == 3", "__m512i a = _mm512_setzero_si512(), a2 = _mm512_setzero_si512();", "#else",
                    "__m256i a = _mm256_setzero_si256(), a2 = _mm256_setzero_si256(), b_ = _mm256_setzero_si256(), b2 = _mm256_setzero_si256();",
                    "#endif"]
            step = ["#if TT_ISA == 3", "if ((j - j0) & 1) a2 = rdot16(a2, x4, w); else a = rdot16(a, x4, w);", "#else",
                    "if ((j - j0) & 1) { a2 = rdot8(a2, x4, w); b2 = rdot8(b2, x4, w + 8); } else { a = rdot8(a, x4, w); b_ = rdot8(b_, x4, w + 8); }",
                    "#endif"]
            fin = ["#if TT_ISA == 3", "_mm512_storeu_si512((void *)out, _mm512_add_epi32(a, a2));", "#else",
                   "_mm256_storeu_si256((__m256i *)out, _mm256_add_epi32(a, a2)); _mm256_storeu_si256((__m256i *)(out + 8), _mm256_add_epi32(b_, b2));",
                   "#endif"]
        elif r == 8:
            decl = ["__m256i a = _mm256_setzero_si256(), a2 = _mm256_setzero_si256();"]
            step = ["if ((j - j0) & 1) a2 = rdot8(a2, x4, w); else a = rdot8(a, x4, w);"]
            fin = ["_mm256_storeu_si256((__m256i *)out, _mm256_add_epi32(a, a2));"]
        else:
            decl = ["__m128i a = _mm_setzero_si128(), a2 = _mm_setzero_si128();"]
            step = ["if ((j - j0) & 1) a2 = rdot4(a2, x4, w); else a = rdot4(a, x4, w);"]
            fin = ["_mm_storeu_si128((__m128i *)out, _mm_add_epi32(a, a2));"]
        self.emit("#if TT_ISA",
                  f"static void {name}(const uint8_t *restrict x, const tt_io *restrict io, uint8_t *restrict ws) {{",
                  "uint8_t *restrict xt = ws + XTOFF; int8_t *restrict wb = (int8_t *)(ws + WBOFF); (void)wb;",
                  "for (long p = 0; p < P_; ++p) { for (int k = 0; k < XROWS; ++k) xt[p * KQ_ + k] = x[(size_t)k * P_ + p];",
                  "for (int k = XROWS; k < KQ_; ++k) xt[p * KQ_ + k] = 0; }",
                  "for (long p = 0; p < P_; ++p) {",
                  "const uint8_t *xp = xt + p * KQ_;",
                  f"for (int b = 0; b < {low.n_block_rows}; ++b) {{",
                  f"const int j0 = {t}IP[b], j1 = {t}IP[b + 1];", *unpack, *decl,
                  "for (int j = j0; j < j1; ++j) {", x4, f"const int32_t *w = {wexpr};", *step, "}",
                  f"int32_t out[{r}];", *fin,
                  f"for (int i = 0; i < {r}; ++i) {{ const int o = b * {r} + i; if (o < CO) epi_s(out[i], o, p, io); }}",
                  "}", "}", "}", "#endif")
        return name

    # ----- entry points ----------------------------------------------------------------------------
    def entry(self, mode: str, r: int, nv: int, scalar: str, narrow: str | None) -> None:
        geo = self.geo
        lines = [f"void tt_run_{mode[0]}{r}t{nv}(const void *xv, void *iov, void *wsv) {{",
                 "const tt_io *io = (const tt_io *)iov; uint8_t *ws = (uint8_t *)wsv; const uint8_t *x = (const uint8_t *)xv; (void)ws;",
                 "#if TT_POOL", "for (int o = 0; o < CO; ++o) io->pool[o] = 0.0f;", "#endif"]
        if geo.kind == "conv3x3":
            lines += ["im2col(x, ws + IMOFF);", "x = ws + IMOFF;"]
        if geo.narrow:
            if narrow is not None:
                lines += ["#if TT_ISA", f"{narrow}(x, io, ws);", "#else", f"{scalar}(x, io);", "#endif"]
            else:
                lines.append(f"{scalar}(x, io);")
        else:
            lines += ["#if TT_ISA == 0", f"{scalar}(x, io);"]
            for lanes in LANES:
                lines.append(f"#elif LN == {lanes}")
                for start, count, size in tile_plan(geo.pixels, nv, lanes):
                    call = f"tile_{mode[0]}{r}_{-(-size // lanes)}"
                    if count > 1 and self.threads > 1:
                        lines.append(f"#pragma omp parallel for num_threads({self.threads}) schedule(static)")
                        pk = "ws + PKOFF + (size_t)omp_get_thread_num() * PKOFF_STRIDE"
                        wb = "(int8_t *)(ws + WBOFF) + (size_t)omp_get_thread_num() * WB_STRIDE"
                    else:
                        pk, wb = "ws + PKOFF", "(int8_t *)(ws + WBOFF)"
                    if count > 1:
                        lines.append(f"for (long t_ = 0; t_ < {count}; ++t_) {call}(x, io, {pk}, {wb}, {start} + t_ * {size}, {size});")
                    else:
                        lines.append(f"{call}(x, io, {pk}, {wb}, {start}, {size});")
            lines.append("#endif")
        lines += ["#if TT_POOL", "for (int o = 0; o < CO; ++o) io->pool[o] *= 1.0f / (float)P_;", "#endif", "}"]
        self.emit(*lines)

    def source(self) -> str:
        self.emit(PRELUDE % {"force": isa_define(self.isa)})
        self.constants()
        if self.threads > 1:
            self.emit("#include <omp.h>", f"#define PKOFF_STRIDE {self.panel_bytes()}", f"#define WB_STRIDE {self.wb_bytes()}")
        self.emit(VNNI, AVX2, UNPACK4)
        self.arrays()
        self.epilogue_fns()
        self.im2col()
        scalars, narrows = {}, {}
        for key in self.lowerings:
            scalars[key] = self.scalar_fn(key)
            if self.geo.narrow and key[1] in (4, 8, 16):
                narrows[key] = self.narrow_fn(key)
        if not self.geo.narrow:  # every tile size the entries call, for both vector widths
            sizes = sorted({(mode, r, -(-size // lanes)) for mode, r, nv in self.variants for lanes in LANES
                            for _, _, size in tile_plan(self.geo.pixels, nv, lanes)})
            self.emit("#if TT_ISA")
            for nv in sorted({nv for mode, _, nv in sizes if mode == "quad"}):
                self.pack_fn(nv)
            for mode, r, nv in sizes:
                self.tile_fn(mode, r, nv)
            self.emit("#endif")
        for mode, r, nv in self.variants:
            self.entry(mode, r, nv, scalars[(mode, r)], narrows.get((mode, r)))
        self.emit(f"int tt_abi_version(void) {{ return {ABI_VERSION}; }}", "long tt_workspace_bytes(void) { return WS_BYTES; }",
                  "int tt_isa(void) { return TT_ISA; }", "int tt_lanes(void) {", "#if TT_ISA", "return LN;", "#else", "return 1;", "#endif", "}")
        return "\n".join(self.out) + "\n"


def generate_q(geo: QGeometry, lowerings: dict[tuple[str, int], QLowered], variants: list[tuple[str, int, int]], *, epi: Epilogue,
               em: np.ndarray, ec: np.ndarray, in_zero: int, threads: int = 1, isa: str = "auto", bits: int = 8) -> str:
    """The C source of an integer layer with one ``tt_run_<mode><rows>t<nv>`` per variant
    (``(mode, rows, nv)``, each of whose lowerings is in ``lowerings``)."""
    if not variants:
        raise ValueError("variants: at least one variant is required")
    names = [f"{m[0]}{r}t{nv}" for m, r, nv in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variants: duplicate variants {names}")
    for mode, r, nv in variants:
        check_qvariant(geo, mode, r, nv)
        if (mode, r) not in lowerings:
            raise ValueError(f"variants: no lowering for ({mode}, {r})")
    if epi.pool and threads > 1:
        raise ValueError("pool: a pooled output needs threads=1 (the channel sums are not shared between threads)")
    return _QWriter(geo, lowerings, list(variants), epi, em, ec, in_zero, threads, isa, bits).source()


__all__ = ["LANES", "QVariant", "accumulator_limit", "check_qvariant", "generate_q", "tile_plan"]
