"""Lowering: a packed layer plus its shapes become the geometry and loop nest a kernel is generated from.

Every generated kernel computes ``Y[O, pixels] = W[O, K] X[K, pixels]`` (+ bias, activation)
for one image (batch 1, the deployment case), activations laid out ``[C, H, W]`` float32. Three
loop nests cover the patterns (formats in `tritune.kernels.formats`):

* `Bsr` -- blocks of ``r`` output rows x ``c`` reduction columns sharing one input index, so each
  activation vector load feeds ``r`` FMAs (block patterns; CSR is ``r = c = 1``, used for
  unstructured and gather-scatter; dense and channel are full ``8x1`` blocks, channel over the
  kept rows only, through a row map);
* `Nm` -- N:M, a fixed count of ``n`` entries per group of ``m`` columns: no row pointers, and a
  one-byte index per entry;
* `KernelPattern` -- 3x3 kernel patterns (PatDNN, Niu et al., ASPLOS 2020): units of
  (output group, pattern, input channel) whose taps are compile-time constants of the pattern;
  with ``share > 1`` the ``share`` output channels of a group use one pattern per input channel, so
  one input load feeds ``share`` FMAs.

`Geometry` says where reduction column ``k`` lives in memory:

* ``direct`` (1x1 with pixels a multiple of the SIMD width, or any 1x1 whose kernel shares
  loads between rows): column ``k`` is row ``k`` of the caller's input, read in place (64-byte
  aligned buffers, see `aligned_empty`, keep every vector load inside one cache line); a pixel
  tail is computed by an overlapping last vector of the last tile;
* ``staged`` (3x3, and the 1x1 layers of load-bound kernels whose pixel count is not a multiple
  of the SIMD width): the input is copied once per run into a zero-bordered workspace. A 3x3
  input gets one plane per (row phase ``a`` < stride, column tap ``dx``):
  ``plane[a, dx][i, u, x] = padded_x[i, stride*u + a, stride*x + dx]``, so tap ``(dy, dx)`` of
  output ``(y, x)`` is ``plane[dy % stride, dx][i, y + dy // stride, x]``: one constant shift of
  the flattened output position. Rows are ``wp`` wide: for load-bound kernels (see `load_bound`)
  the output width rounded up to a vector, so every load is aligned (loads that straddle cache
  lines cost up to 1.5x there) and the padding columns are computed but not stored; for the
  others exactly the output width, so nothing is wasted and the grid *is* the output. Kernels
  that share loads between rows, stride 1, rows at least ``vw - 1`` wide, use **one plane**
  instead of three: rows ``w + 1`` wide whose single zero column is the right border of one row
  and the left border of the next, so tap ``(dy, dx)`` is the shift ``dy * (w + 1) + dx``; the
  copy moves a third of the bytes, one grid column in ``w + 1`` is computed and dropped when
  stored (the copy was 13-21 % of a 90 %-sparse 3x3 block kernel's time);
* ``masked`` (stride-1 3x3 block kernels with one column per block, on AVX-512): no copy at all.
  Tap ``(dy, dx)`` of output pixel ``p`` reads the caller's input at ``p + (dy - 1) * w + dx - 1``
  with a lane mask that zeroes the reads past the image border (a row's first or last column, the
  first or last row, pixels past ``h * w``); masked-out lanes never touch memory. The kernel runs
  its blocks grouped by tap, so each group's masks are loaded once per tile, not per block
  (per-block masks competed with the FMAs: 0.74-0.88 of ideal at 90 %, against 0.84-0.88 staged);
* ``narrow`` (1x1 / linear with at most a quarter vector of pixels, e.g. a linear layer): scalar
  loops the compiler vectorises over block rows. N:M layers, and on one pixel (linear) every
  pattern whose rows share no blocks (unstructured, gather-scatter, ``block1xC``), are lowered
  there to blocks of 8 rows over the columns any of them keeps, so they vectorise too; on 2-4
  pixels the loop over pixels already vectorises one row's multiply-adds, and sparse rows stay.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..formats import PackedWeight, structure
from ..patterns import _spec

KINDS = ("conv1x1", "conv3x3", "linear")
ACTIVATIONS = ("none", "relu", "hswish", "hsigmoid")
#: Block rows used when a dense (or channel-pruned) layer runs through the block kernel.
DENSE_ROWS = 8


@dataclass(frozen=True)
class Geometry:
    """Shapes and memory layout of one layer (see the module docstring for ``mode``)."""

    kind: str
    cin: int
    cout: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    stride: int
    mode: str
    #: staged layout: planes, rows per plane, row pitch (a multiple of the vector width), floats
    #: per (plane, channel)
    planes: int = 1
    hq: int = 1
    wp: int = 0
    ps: int = 0

    @property
    def hw(self) -> int:
        return self.in_hw[0] * self.in_hw[1]

    @property
    def out_pixels(self) -> int:
        return self.out_hw[0] * self.out_hw[1]

    @property
    def k(self) -> int:
        return self.cin * (9 if self.kind == "conv3x3" else 1)

    @property
    def out_rows(self) -> int:
        """Rows of the staged output grid (1x1: the image is one row of pixels)."""
        return self.out_hw[0] if self.kind == "conv3x3" else 1

    @property
    def out_width(self) -> int:
        return self.out_hw[1] if self.kind == "conv3x3" else self.out_pixels

    @property
    def q(self) -> int:
        """Positions computed per output channel: pixels (direct, masked), ``rows * wp`` (staged)."""
        return self.out_rows * self.wp if self.mode == "staged" else self.hw

    @property
    def grid(self) -> bool:
        """The kernel computes a grid of ``out_rows x wp`` positions (staged, masked) rather than a pixel run."""
        return self.mode in ("staged", "masked")

    @property
    def one_plane(self) -> bool:
        """3x3 staged in one plane with a shared zero column (see the module docstring)."""
        return self.kind == "conv3x3" and self.mode == "staged" and self.planes == 1

    def tap_offset(self, tap: int) -> int:
        """Staged: offset of 3x3 tap ``tap`` (row-major 0..8) from the output position, plane included."""
        if self.kind != "conv3x3":
            return 0
        dy, dx = divmod(tap, 3)
        if self.mode == "masked":
            return (dy - 1) * self.wp + dx - 1
        if self.one_plane:
            return dy * self.wp + dx
        plane = (dy % self.stride) * 3 + dx
        return plane * self.cin * self.ps + (dy // self.stride) * self.wp

    def column_offsets(self) -> np.ndarray:
        """Staged: offset of reduction column ``k`` (``(in, tap)`` row-major) in the workspace."""
        taps = np.array([self.tap_offset(t) for t in range(9 if self.kind == "conv3x3" else 1)], dtype=np.int64)
        return (np.arange(self.cin, dtype=np.int64)[:, None] * self.ps + taps[None, :]).reshape(-1).astype(np.int32)

    @property
    def max_tap_offset(self) -> int:
        return max(self.tap_offset(t) for t in range(9)) if self.kind == "conv3x3" else 0


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def load_bound(packed: PackedWeight) -> bool:
    """Whether the pattern's kernel does one activation load per FMA (CSR, N:M, 1-row blocks,
    kernel patterns without sharing): those need aligned loads; kernels that share each load
    between several rows prefer no padding columns (measured on 3x3 layers: aligned layout
    1.15-1.3x faster for unshared kernel patterns, exact width 1.1-1.2x faster for blocks)."""
    spec = _spec(packed.pattern)
    if spec.family in ("unstructured", "gather_scatter", "nm"):
        return True
    if spec.family == "block":
        return spec.rows == 1
    if spec.family == "kernel_pattern":
        return int(packed.options.get("share", 1)) == 1
    return False


def reads_in_place(packed: PackedWeight) -> bool:
    """Whether a stride-1 3x3 layer of this pattern runs in the ``masked`` layout: kernels whose
    blocks are one column wide and several rows tall (block Rx1, dense, channel), so each masked load
    feeds several FMAs."""
    spec = _spec(packed.pattern)
    if spec.family == "block":
        return spec.rows > 1 and spec.cols == 1
    return spec.family in ("dense", "channel")


def geometry(kind: str, shape: tuple[int, ...], in_hw: tuple[int, int] | None, stride: int, vector_width: int,
             aligned: bool = True, in_place: bool = False) -> Geometry:
    """Validate the layer's kind / shapes / stride and choose its memory layout (``aligned``: see
    `load_bound`; ``in_place``: see `reads_in_place`, taken for stride-1 3x3 layers when the vector
    width is AVX-512's)."""
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} not allowed; allowed: {', '.join(KINDS)}")
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)):
        raise ValueError(f"stride: {stride!r} not allowed; allowed: 1 or 2")
    cout, vw = int(shape[0]), vector_width
    if kind == "linear":
        if len(shape) != 2:
            raise ValueError(f"linear: weight shape {shape} not allowed; allowed: [out, in]")
        if in_hw not in (None, (1, 1), [1, 1]):
            raise ValueError(f"in_hw: {in_hw!r} not allowed for a linear layer; allowed: None or (1, 1)")
        if stride != 1:
            raise ValueError(f"stride: {stride!r} not allowed for a linear layer; allowed: 1")
        return Geometry(kind, int(shape[1]), cout, (1, 1), (1, 1), 1, "narrow")
    want = (1, 1) if kind == "conv1x1" else (3, 3)
    if len(shape) != 4 or tuple(shape[2:]) != want:
        raise ValueError(f"{kind}: weight shape {shape} not allowed; allowed: [out, in, {want[0]}, {want[1]}] (groups=1)")
    try:
        h, w = (int(v) for v in in_hw)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"in_hw: {in_hw!r} not allowed; allowed: (height, width) with both >= 1") from None
    if h < 1 or w < 1:
        raise ValueError(f"in_hw: {in_hw!r} not allowed; allowed: (height, width) with both >= 1")
    cin = int(shape[1])
    if kind == "conv1x1":
        if stride != 1:
            raise ValueError(f"stride: {stride!r} not allowed for conv1x1; allowed: 1")
        hw = h * w
        if hw % vw == 0 or (not aligned and hw >= vw):
            return Geometry(kind, cin, cout, (h, w), (h, w), 1, "direct")
        if 4 * hw <= vw:
            return Geometry(kind, cin, cout, (h, w), (h, w), 1, "narrow")
        wp = _round_up(hw, vw)
        return Geometry(kind, cin, cout, (h, w), (h, w), 1, "staged", 1, 1, wp, wp)
    if stride not in (1, 2):
        raise ValueError(f"stride: {stride!r} not allowed for conv3x3; allowed: 1, 2")
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    if stride == 1 and in_place and vw == 16:
        if cin * h * w >= 2**31:
            raise ValueError(f"in_hw: {in_hw!r} with {cin} input channels has 2**31 floats or more; allowed: smaller layers")
        return Geometry(kind, cin, cout, (h, w), (h, w), 1, "masked", 1, h, w, h * w)
    if stride == 1 and not aligned and w + 1 >= vw:  # one plane, rows share their zero column
        planes, hq, wp = 1, h + 2, w + 1
        ps = _round_up(hq * wp + 1, vw)
    else:
        planes, hq = 3 * stride, (h + 2 if stride == 1 else (h + 3) // 2)
        wp = _round_up(wo, vw) if aligned else wo
        ps = _round_up(hq * wp, vw)
    if planes * cin * ps + 2 * ps >= 2**31:
        raise ValueError(f"in_hw: {in_hw!r} with {cin} input channels needs a workspace beyond 2**31 floats; allowed: smaller layers")
    return Geometry(kind, cin, cout, (h, w), (ho, wo), int(stride), "staged", planes, hq, wp, ps)


# ----- lowered weights ---------------------------------------------------------------------------
@dataclass
class Bsr:
    """Block-sparse rows: ``r x c`` blocks; ``rows`` maps lowered rows to output rows (None: identity)."""

    r: int
    c: int
    indptr: np.ndarray  # int32 [n_block_rows + 1]
    cols: np.ndarray  # int [nblocks], block column in units of c
    values: np.ndarray  # float32 [nblocks, r, c]
    n_rows: int  # lowered rows (O, or the kept rows of a channel-pruned layer)
    rows: np.ndarray | None = None

    family = "bsr"

    @property
    def n_block_rows(self) -> int:
        return len(self.indptr) - 1

    @property
    def uniform(self) -> int | None:
        """Blocks per block row when every full block row holds the same number (else None)."""
        counts = np.diff(self.indptr)
        full = self.n_rows // self.r
        if full == 0 or (counts[:full] != counts[0]).any() or (len(counts) > full and counts[full] != counts[0]):
            return None
        return int(counts[0])


@dataclass
class Nm:
    """N:M: ``values`` / ``indices`` [O, G*n], index = position inside the group of ``m``."""

    n: int
    m: int
    values: np.ndarray
    indices: np.ndarray

    family = "nm"


@dataclass
class KernelPattern:
    """3x3 kernel patterns grouped for code generation.

    A unit is (output group ``g`` of ``share`` channels, library pattern ``p``, input channel);
    units are sorted by (g, p, in) and ``uptr[g * P + p]`` is the first unit of (g, p), so the
    generated loop over the units of one pattern has that pattern's taps as constants.
    ``values`` [units, share, taps] (zero where a channel of the group lacks the kernel)."""

    share: int
    library: np.ndarray  # uint8 [P, 9]
    uptr: np.ndarray  # int32 [G * P + 1]
    uin: np.ndarray  # int32 [units] input channel
    values: np.ndarray  # float32 [units, share, taps]

    family = "kernel_pattern"

    @property
    def taps(self) -> list[list[int]]:
        return [np.nonzero(row)[0].tolist() for row in self.library]

    @property
    def used_patterns(self) -> list[int]:
        counts = np.diff(self.uptr).reshape(-1, len(self.library)).sum(0)
        return [int(p) for p in np.nonzero(counts)[0]]


Lowered = Bsr | Nm | KernelPattern


def _csr_to_bsr(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, n_rows: int) -> Bsr:
    return Bsr(1, 1, indptr.astype(np.int32), indices, values.astype(np.float32).reshape(-1, 1, 1), n_rows)


def _dense_rows(values: np.ndarray, rows: np.ndarray | None, r: int = DENSE_ROWS) -> Bsr:
    n, k = values.shape
    nbr = -(-n // r)
    padded = np.zeros((nbr * r, k), dtype=np.float32)
    padded[:n] = values
    blocks = padded.reshape(nbr, r, k).transpose(0, 2, 1).reshape(nbr * k, r, 1)
    indptr = (np.arange(nbr + 1) * k).astype(np.int32)
    cols = np.tile(np.arange(k), nbr)
    return Bsr(r, 1, indptr, cols, np.ascontiguousarray(blocks), n, rows)


def _union_rows(packed: PackedWeight, geo: Geometry, r: int = DENSE_ROWS) -> Bsr:
    """Blocks of ``r`` rows over the columns any of them keeps (the others' zeros stored): how a
    narrow layer whose pattern shares no rows runs, so its loop is vectorised over rows like a
    dense one instead of taking one scalar multiply-add per kept weight."""
    O, K = geo.cout, geo.k
    nbr = -(-O // r)
    w = np.zeros((nbr * r, K), dtype=np.float32)
    w[:O] = packed.unpack().reshape(O, K)
    keep = np.zeros((nbr * r, K), dtype=bool)
    keep[:O] = structure(packed)
    touched = keep.reshape(nbr, r, K).any(axis=1)
    block, col = np.nonzero(touched)
    indptr = np.zeros(nbr + 1, dtype=np.int32)
    np.cumsum(touched.sum(axis=1), out=indptr[1:])
    values = w.reshape(nbr, r, K)[block, :, col]  # [blocks, r]
    return Bsr(r, 1, indptr, col.astype(np.int32), np.ascontiguousarray(values[:, :, None]), O)


def _kernel_pattern(packed: PackedWeight) -> KernelPattern:
    a = packed.arrays
    share = int(packed.options.get("share", 1))
    lib = a["library"]
    n_pat = len(lib)
    out, cin, pat = a["kernel_out"].astype(np.int64), a["kernel_in"].astype(np.int64), a["kernel_pattern"].astype(np.int64)
    n_in = packed.shape[1]
    n_groups = -(-packed.shape[0] // share)
    g = out // share
    key = (g * n_pat + pat) * n_in + cin
    ukeys, unit = np.unique(key, return_inverse=True)
    values = np.zeros((len(ukeys), share, a["values"].shape[1]), dtype=np.float32)
    values[unit, out % share] = a["values"]
    counts = np.bincount(ukeys // n_in, minlength=n_groups * n_pat)
    uptr = np.zeros(n_groups * n_pat + 1, dtype=np.int32)
    np.cumsum(counts, out=uptr[1:])
    return KernelPattern(share, lib.astype(np.uint8), uptr, (ukeys % n_in).astype(np.int32), values)


def lower(packed: PackedWeight, geo: Geometry) -> Lowered:
    """The loop nest and arrays the generator emits for ``packed`` (see the module docstring)."""
    if not isinstance(packed, PackedWeight):
        raise ValueError(f"packed: expected a tritune.kernels.PackedWeight, got {type(packed).__name__}")
    spec = _spec(packed.pattern)
    a = packed.arrays
    family = spec.family
    if family == "kernel_pattern":
        if geo.kind != "conv3x3":
            raise ValueError(f"pattern: kernel_pattern not allowed for kind {geo.kind!r}; allowed: conv3x3")
        return _kernel_pattern(packed)
    if geo.mode == "narrow" and (family == "nm" or (geo.hw == 1 and (family in ("unstructured", "gather_scatter")
                                                                        or (family == "block" and spec.rows == 1)))):
        return _union_rows(packed, geo)
    if family in ("unstructured", "gather_scatter"):
        return _csr_to_bsr(a["indptr"], a["indices"], a["values"], geo.cout)
    if family == "block":
        return Bsr(spec.rows, spec.cols, a["indptr"].astype(np.int32), a["indices"], a["values"], geo.cout)
    if family == "nm":
        return Nm(spec.n, spec.m, a["values"], a["indices"])
    if family == "dense":
        return _dense_rows(a["values"], None)
    if family == "channel":
        return _dense_rows(a["values"], a["rows"].astype(np.int32))
    raise ValueError(f"pattern: {packed.pattern!r} has no kernel")  # pragma: no cover - all families handled
