"""Lowering for integer kernels: a quantized layer becomes its geometry, an int8 loop nest and the
constants of its requantization.

An integer kernel computes, for one image, ``acc[o, p] = sum_k codes[o, k] * (x[k, p] - z_x)``
exactly in int32 (``x`` uint8 activations with zero point ``z_x``, ``codes`` int8 weights), then
``f = act(acc * s_x * s_w[o] + b[o])`` in float32 and writes ``f`` (float32), its uint8 codes on
the consumer's grid ``(s_y, z_y)``, or both -- the arithmetic of a fake-quantized torch layer
(`tritune.kernels.quant`), so the integer result is within one step of its grid of torch's.

The dot product instruction (AVX-512 VNNI ``vpdpbusd``; AVX2 ``vpmaddubsw`` + ``vpmaddwd``) sums
four uint8 x int8 products into each int32 lane: lanes are pixels, the four bytes of a lane four
reduction columns of one pixel. Activations are stored planar (``[C, H * W]`` uint8), so the
four columns of a lane are *interleaved* in registers per pixel tile. Two loop nests (`QLowered`):

* ``quad`` -- columns in quads ``4q .. 4q + 3``: each tile of pixels is first interleaved for all
  columns into a panel (``[K / 4][vectors][4 * lanes]``, in L1/L2), then every block row of ``r``
  output channels walks the quads it touches (all of them when dense), one panel vector load per
  ``r`` dot products. Dense, channel, N:M, ``block1x4`` and (by default) unstructured layers.
* ``gather`` -- a block row's kept columns taken four at a time, whatever their positions: the
  four input rows are loaded and interleaved per tile for that block row (one two-source byte
  permute, ``vpermt2b``, per vector), then feed ``r`` dot products. Block ``Rx1`` patterns, whose
  ``R`` rows share their kept columns (``R`` a multiple of 4 keeps the permutes a small share).

Either way the weights of an entry are ``r x 4`` int8 (a broadcast 32-bit word per row); a block
row's kept columns are padded to a multiple of 4 with zero weights. 3x3 convolutions are lowered
over im2col columns ``(in, tap)`` (the ``W[O, K]`` view of `tritune.kernels.patterns`): the
kernel first writes the columns (padding = ``z_x``, the code of a real 0), so a kernel pattern
with ``share`` channels is a block ``share x 1`` over them. ``narrow`` layers (linear, or fewer
pixels than a vector) put output rows in the lanes instead: one broadcast 4-column word of the
input times a vector of ``r`` rows' weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..formats import QuantizedWeight, structure
from ..patterns import _spec
from ..quant import AffineQuant

KINDS = ("conv1x1", "conv3x3", "linear")
ACTIVATIONS = ("none", "relu", "hswish", "hsigmoid")
MODES = ("quad", "gather")
#: Block rows of a dense (or channel-pruned) layer in the quad nest, when the variant names none.
DENSE_ROWS = 8
#: Rows of a narrow block row: lanes of an int32 vector (xmm / ymm / zmm on AVX-512).
NARROW_ROWS = (1, 4, 8, 16)


@dataclass(frozen=True)
class QGeometry:
    """Shapes of one integer layer: ``k`` reduction columns (``cin * 9`` for 3x3), ``kq`` = ``k``
    rounded up to a multiple of 4, ``pixels`` output positions (1 for linear); ``narrow``: output
    rows in the lanes (linear layers and maps of fewer pixels than ``lanes``)."""

    kind: str
    cin: int
    cout: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    stride: int
    narrow: bool

    @property
    def taps(self) -> int:
        return 9 if self.kind == "conv3x3" else 1

    @property
    def k(self) -> int:
        return self.cin * self.taps

    @property
    def kq(self) -> int:
        return -(-self.k // 4) * 4

    @property
    def pixels(self) -> int:
        return self.out_hw[0] * self.out_hw[1]

    @property
    def in_pixels(self) -> int:
        return self.in_hw[0] * self.in_hw[1]


def qgeometry(kind: str, shape: tuple[int, ...], in_hw: tuple[int, int] | None, stride: int, lanes: int = 16) -> QGeometry:
    """Validate kind / weight shape / input size / stride (ValueError naming the field)."""
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} not allowed; allowed: {', '.join(KINDS)}")
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)):
        raise ValueError(f"stride: {stride!r} not allowed; allowed: 1 or 2")
    cout = int(shape[0])
    if kind == "linear":
        if len(shape) != 2:
            raise ValueError(f"linear: weight shape {shape} not allowed; allowed: [out, in]")
        if in_hw not in (None, (1, 1), [1, 1]):
            raise ValueError(f"in_hw: {in_hw!r} not allowed for a linear layer; allowed: None or (1, 1)")
        if stride != 1:
            raise ValueError(f"stride: {stride!r} not allowed for a linear layer; allowed: 1")
        return QGeometry(kind, int(shape[1]), cout, (1, 1), (1, 1), 1, True)
    want = (1, 1) if kind == "conv1x1" else (3, 3)
    if len(shape) != 4 or tuple(shape[2:]) != want:
        raise ValueError(f"{kind}: weight shape {shape} not allowed; allowed: [out, in, {want[0]}, {want[1]}] (groups=1)")
    try:
        h, w = (int(v) for v in in_hw)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"in_hw: {in_hw!r} not allowed; allowed: (height, width) with both >= 1") from None
    if h < 1 or w < 1:
        raise ValueError(f"in_hw: {in_hw!r} not allowed; allowed: (height, width) with both >= 1")
    if kind == "conv1x1" and stride != 1:
        raise ValueError(f"stride: {stride!r} not allowed for conv1x1; allowed: 1")
    if stride not in (1, 2):
        raise ValueError(f"stride: {stride!r} not allowed for conv3x3; allowed: 1, 2")
    out = ((h - 1) // stride + 1, (w - 1) // stride + 1) if kind == "conv3x3" else (h, w)
    if int(shape[1]) * 9 * out[0] * out[1] >= 2**31 or cout * out[0] * out[1] >= 2**31:
        raise ValueError(f"in_hw: {in_hw!r} gives a layer of 2**31 values or more; allowed: smaller layers")
    return QGeometry(kind, int(shape[1]), cout, (h, w), out, int(stride), out[0] * out[1] < lanes)


@dataclass
class QLowered:
    """An integer loop nest: block rows of ``r`` output channels; entry ``j`` of block row ``b``
    (``indptr[b] <= j < indptr[b + 1]``) reads the four columns ``cols[j]`` (``quad``: ``4 q ..
    4 q + 3``) with weights ``values[j]`` (``[r, 4]`` int8, zero for padding). ``rowsum``: each
    output row's sum of codes (the zero-point correction)."""

    mode: str
    r: int
    indptr: np.ndarray  # int32 [n_block_rows + 1]
    cols: np.ndarray  # int32 [n, 4] column of each of the entry's four slots
    values: np.ndarray  # int8 [n, r, 4]
    n_rows: int
    rowsum: np.ndarray  # int64 [n_rows]
    bits: int

    @property
    def n_block_rows(self) -> int:
        return len(self.indptr) - 1

    @property
    def entries(self) -> int:
        return len(self.values)

    @property
    def quads(self) -> np.ndarray:
        """Quad index of each entry (``quad`` nest)."""
        return self.cols[:, 0] // 4

    @property
    def max_row_entries(self) -> int:
        return int(np.diff(self.indptr).max()) if self.n_block_rows else 0

    def dense_codes(self, k: int) -> np.ndarray:
        """The ``[n_rows, k]`` codes this nest computes with (for checks)."""
        out = np.zeros((self.n_block_rows * self.r, k), dtype=np.int64)
        rows = np.repeat(np.arange(self.n_block_rows), np.diff(self.indptr))
        for t in range(4):
            for i in range(self.r):
                np.add.at(out, (rows * self.r + i, self.cols[:, t]), self.values[:, i, t].astype(np.int64))
        return out[:self.n_rows]


def default_lowering(qw: QuantizedWeight, geo: QGeometry) -> tuple[str, int]:
    """(mode, rows per block) the pattern suits (see the module docstring). A narrow layer whose
    pattern has no vector of rows in common (unstructured, gather-scatter, N:M with ``m > 4``,
    ``block1x4`` ...) runs the quad nest on blocks of 16 rows, the quads any of them touches:
    a block of ``r`` rows never touches more quads than its parts together, so 16 rows take the
    fewest dot products, where one row per block could only run the portable scalar loop."""
    spec = _spec(qw.pattern)
    narrow = geo.narrow
    if spec.family in ("dense", "channel"):
        return "quad", 16 if narrow else DENSE_ROWS
    if spec.family == "block":
        if spec.cols == 1 and spec.rows >= 4:
            return "gather", min(spec.rows, 16)
        return "quad", spec.rows if spec.rows in NARROW_ROWS[1:] or not narrow else 16
    if spec.family == "kernel_pattern":
        share = int(qw.codes.options.get("share", 1))
        if share >= 4 and share in NARROW_ROWS:
            return "gather", share
        return "quad", 16 if narrow else 1
    if spec.family == "nm" and spec.m <= 4:  # every row touches every quad: the dense nest's rows share its loads
        return "quad", 16 if narrow else DENSE_ROWS
    return "quad", 16 if narrow else 1  # unstructured, gather_scatter, other N:M


def check_lowering(geo: QGeometry, mode: str, r: int) -> None:
    if mode not in MODES:
        raise ValueError(f"tile.mode: {mode!r} not allowed; allowed: {', '.join(MODES)}")
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 1 <= r <= 16:
        raise ValueError(f"tile.rows: {r!r} not allowed; allowed: 1..16")
    if geo.narrow and r not in NARROW_ROWS:
        raise ValueError(f"tile.rows: {r} not allowed for a narrow layer; allowed: {', '.join(map(str, NARROW_ROWS))}")


def lower_q(qw: QuantizedWeight, geo: QGeometry, mode: str, r: int) -> QLowered:
    """The loop nest of ``qw`` in ``mode`` with ``r`` rows per block (see `QLowered`)."""
    check_lowering(geo, mode, r)
    O, K = geo.cout, geo.k
    codes = qw.int_codes().reshape(O, K).astype(np.int64)
    kept = structure(qw.codes)
    nbr = -(-O // r)
    pad_rows = nbr * r - O
    C = np.pad(codes, ((0, pad_rows), (0, geo.kq - K)))
    S = np.pad(kept, ((0, pad_rows), (0, geo.kq - K)))
    blocks_c = C.reshape(nbr, r, geo.kq)
    blocks_s = S.reshape(nbr, r, geo.kq).any(axis=1)  # [nbr, kq] columns kept by some row of the block
    indptr = np.zeros(nbr + 1, dtype=np.int32)
    cols_list, vals_list = [], []
    if mode == "quad":
        touched = blocks_s.reshape(nbr, geo.kq // 4, 4).any(axis=2)  # [nbr, quads]
        brow, quad = np.nonzero(touched)
        np.cumsum(touched.sum(axis=1), out=indptr[1:])
        cols = quad[:, None] * 4 + np.arange(4)[None, :]
        cols = np.minimum(cols, K - 1)  # padding columns read the last real row (weights 0)
        vals = blocks_c[brow[:, None, None], np.arange(r)[None, :, None], (quad[:, None] * 4 + np.arange(4)[None, :])[:, None, :]]
        cols_list, vals_list = [cols], [vals]
    else:
        counts = []
        for b in range(nbr):
            kc = np.nonzero(blocks_s[b, :K])[0]
            n = -(-len(kc) // 4) * 4
            counts.append(n // 4)
            if not n:
                continue
            pad = n - len(kc)
            slot = np.concatenate([kc, np.full(pad, kc[-1])]).reshape(-1, 4)
            vals = blocks_c[b][:, slot].transpose(1, 0, 2).copy()  # [n/4, r, 4]
            if pad:
                vals[-1, :, 4 - pad:] = 0
            cols_list.append(slot)
            vals_list.append(vals)
        np.cumsum(counts, out=indptr[1:])
    cols = np.concatenate(cols_list).astype(np.int32) if cols_list and sum(len(c) for c in cols_list) else np.zeros((0, 4), np.int32)
    vals = np.concatenate(vals_list) if vals_list and sum(len(v) for v in vals_list) else np.zeros((0, r, 4), np.int64)
    lo, hi = -(2 ** (qw.bits - 1)), 2 ** (qw.bits - 1) - 1
    if vals.size and (vals.min() < lo or vals.max() > hi):  # pragma: no cover - QuantizedWeight checks the range
        raise ValueError("quantized weight: codes out of range")
    return QLowered(mode, int(r), indptr, cols.reshape(-1, 4), vals.astype(np.int8).reshape(-1, r, 4), O, codes.sum(axis=1), qw.bits)


# ----- requantization -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Epilogue:
    """What a kernel does with each int32 sum: ``act`` (fused activation); outputs ``q`` (uint8
    codes on grid ``out_quant``), ``f`` (float32), ``pool`` (per-channel mean of the float value,
    written instead of or beside the tensor); ``residual``: a float32 tensor added after the
    activation, before the outputs are written (a block's skip connection)."""

    act: str = "none"
    out_quant: AffineQuant | None = None
    out_float: bool = False
    pool: bool = False
    residual: bool = False

    def __post_init__(self) -> None:
        if self.act not in ACTIVATIONS:
            raise ValueError(f"act: {self.act!r} not allowed; allowed: {', '.join(ACTIVATIONS)}")
        if self.out_quant is not None and not isinstance(self.out_quant, AffineQuant):
            raise ValueError(f"out_quant: expected an AffineQuant, got {type(self.out_quant).__name__}")
        if self.out_quant is None and not self.out_float and not self.pool:
            raise ValueError("epilogue: no output; allowed: out_quant, out_float and/or pool")

    @property
    def folded(self) -> bool:
        """uint8 output only, activation none or relu: scale, bias, zero point and the clamp fold
        into one multiply-add and one max per vector."""
        return self.out_quant is not None and not (self.out_float or self.pool or self.residual) and self.act in ("none", "relu")


def epilogue_constants(epi: Epilogue, in_quant: AffineQuant, scales: np.ndarray, bias: np.ndarray | None,
                       rowsum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per output row (multiplier, offset) with ``f = acc * m + c``: ``m = s_x s_w``, ``c = b - z_x
    rowsum m``; folded epilogues divide both by the output step and add its zero point."""
    m = in_quant.scale * scales.astype(np.float64)
    b = np.zeros(len(m)) if bias is None else bias.astype(np.float64)
    c = b - in_quant.zero_point * rowsum.astype(np.float64) * m
    if epi.folded:
        inv = epi.out_quant.inv_scale
        m, c = m * inv, c * inv + epi.out_quant.zero_point
    return m.astype(np.float32), c.astype(np.float32)


__all__ = ["ACTIVATIONS", "DENSE_ROWS", "Epilogue", "KINDS", "MODES", "QGeometry", "QLowered", "check_lowering", "default_lowering",
           "epilogue_constants", "lower_q", "qgeometry"]
