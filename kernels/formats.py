"""Packed storage of a pruned weight, one format per sparsity pattern.

`pack` turns a masked weight into the arrays a sparse kernel reads; `PackedWeight.unpack` gives
the dense masked weight back exactly (float32), and `PackedWeight.nbytes` is the storage cost a
latency or size model can use. The arrays view the weight as ``W[O, K]`` with
``K = in * kh * kw`` flattened row-major ``(in, kh, kw)`` (see `tritune.kernels.patterns`), and
their names are the contract with code generation:

============== ===========================================================================
pattern        arrays
============== ===========================================================================
dense          ``values`` f32 [O, K]
unstructured   CSR by rows: ``indptr`` i32 [O+1], ``indices`` i32 [nnz] (sorted columns),
               ``values`` f32 [nnz]
nmN:M          ``values`` f32 [O, G*N], ``indices`` u8 [O, G*N] = position inside the group
               of M (``G = ceil(K/M)``, positions ascending within a group). A short tail
               group keeps fewer than N entries: its spare slots hold value 0 and an index
               inside the tail (a duplicate index when the tail is shorter than N), so a
               kernel may read them without bounds checks.
blockRxC       BSR: ``indptr`` i32 [ceil(O/R)+1] per block row, ``indices`` i32 [nblocks]
               block column in units of C (ascending per block row), ``values`` f32
               [nblocks, R, C] (zero padded past the edges of W)
channel        ``rows`` i32 [kept] (ascending), ``values`` f32 [kept, K]
kernel_pattern ``library`` u8 [P, 9] (0/1 tap masks, taps row-major), ``kernel_out`` i32 [nk],
               ``kernel_in`` i32 [nk], ``kernel_pattern`` u8 [nk], ``values`` f32 [nk, taps]
               (in the row-major tap order of the kernel's pattern); sorted by
               (out // share, in, out), so the ``share`` kernels of a group that share one
               pattern are stored together (by (out, in) when share = 1); options: share
gather_scatter CSR as unstructured, with the invariant (checked) that every group of
               ``group`` rows holds the same number of nonzeros per row; options: group
============== ===========================================================================

Values are float32. `QuantizedWeight` is the integer form the int8 kernels read: the same
packed arrays holding integer codes (exact in float32), plus per-output-channel scales and the
bit-width (`quantize_packed`).

`PackedWeight.to_npz_dict` / `PackedWeight.from_npz_dict` (and `save` / `load`) round-trip
through ``np.savez`` without pickle: the pattern, shape, options and schema version travel as a
JSON string array.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from ..spaces.compression import PatternSpec
from .patterns import _as_numpy, _check_kernel_shape, _matrix_shape, _options, _row_groups, _spec, check_mask, kernel_library

#: Version of the array layout above; bumped when a format changes.
FORMAT_VERSION = 1
_META = "__packed_meta__"

#: Array names (and dtypes) every format must carry.
FORMAT_ARRAYS: dict[str, dict[str, type]] = {
    "dense": {"values": np.float32},
    "unstructured": {"indptr": np.int32, "indices": np.int32, "values": np.float32},
    "nm": {"values": np.float32, "indices": np.uint8},
    "block": {"indptr": np.int32, "indices": np.int32, "values": np.float32},
    "channel": {"rows": np.int32, "values": np.float32},
    "kernel_pattern": {
        "library": np.uint8,
        "kernel_out": np.int32,
        "kernel_in": np.int32,
        "kernel_pattern": np.uint8,
        "values": np.float32,
    },
    "gather_scatter": {"indptr": np.int32, "indices": np.int32, "values": np.float32},
}


@dataclass(frozen=True, eq=False)
class PackedWeight:
    """A pruned weight in the packed format of its pattern (see the module docstring)."""

    pattern: str
    shape: tuple[int, ...]
    arrays: dict[str, np.ndarray]
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = _spec(self.pattern)
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        _matrix_shape(self.shape)
        try:
            json.dumps(self.options)
        except TypeError as exc:
            raise ValueError(f"{self.pattern}: options must be JSON-able; got {self.options!r}") from exc
        expected = FORMAT_ARRAYS[spec.family]
        if set(self.arrays) != set(expected):
            raise ValueError(
                f"{self.pattern}: arrays {sorted(self.arrays)} do not match the format; expected {sorted(expected)}"
            )
        for name, dtype in expected.items():
            if not isinstance(self.arrays[name], np.ndarray) or self.arrays[name].dtype != dtype:
                got = getattr(self.arrays[name], "dtype", type(self.arrays[name]).__name__)
                raise ValueError(f"{self.pattern}.{name}: dtype {got}, expected a numpy array of {np.dtype(dtype)}")
        object.__setattr__(self, "options", dict(self.options))
        _options(spec, self.options)
        _check_layout(spec, self.shape, self.arrays, self.options)

    @property
    def family(self) -> str:
        return _spec(self.pattern).family

    @property
    def nbytes(self) -> int:
        """Storage cost: the bytes of all arrays (the kernel-pattern library included)."""
        return int(sum(a.nbytes for a in self.arrays.values()))

    def unpack(self) -> np.ndarray:
        """The dense masked weight, float32, in its original shape (exact round trip of `pack`)."""
        O, K = _matrix_shape(self.shape)
        a = self.arrays
        family = self.family
        W = np.zeros((O, K), dtype=np.float32)
        if family == "dense":
            W[:] = a["values"]
        elif family in ("unstructured", "gather_scatter"):
            rows = np.repeat(np.arange(O), np.diff(a["indptr"]))
            W[rows, a["indices"]] = a["values"]
        elif family == "nm":
            spec = _spec(self.pattern)
            G = -(-K // spec.m)
            cols = (np.arange(G).repeat(spec.n)[None, :] * spec.m + a["indices"].astype(np.int64))
            wide = np.zeros((O, G * spec.m), dtype=np.float32)
            np.add.at(wide, (np.arange(O)[:, None].repeat(cols.shape[1], 1), cols), a["values"])
            W[:] = wide[:, :K]
        elif family == "block":
            spec = _spec(self.pattern)
            r, c = spec.rows, spec.cols
            br, bc = -(-O // r), -(-K // c)
            wide = np.zeros((br, r, bc, c), dtype=np.float32)
            block_rows = np.repeat(np.arange(br), np.diff(a["indptr"]))
            wide[block_rows, :, a["indices"], :] = a["values"]
            W[:] = wide.reshape(br * r, bc * c)[:O, :K]
        elif family == "channel":
            W[a["rows"]] = a["values"]
        else:  # kernel_pattern
            lib = a["library"].astype(bool)
            kernels = W.reshape(O, -1, 9)  # a view of W
            n_taps = int(lib[0].sum())
            tap_index = np.nonzero(lib[a["kernel_pattern"]])[1].reshape(len(a["kernel_pattern"]), n_taps)
            kernels[a["kernel_out"][:, None], a["kernel_in"][:, None], tap_index] = a["values"]
        return W.reshape(self.shape)

    # ----- serialisation --------------------------------------------------------------------------
    def to_npz_dict(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Arrays for ``np.savez`` (no object arrays); ``prefix`` lets many layers share one file."""
        meta = {"schema": FORMAT_VERSION, "pattern": self.pattern, "shape": list(self.shape), "options": self.options}
        out = {prefix + name: arr for name, arr in self.arrays.items()}
        out[prefix + _META] = np.array(json.dumps(meta, sort_keys=True))
        return out

    @classmethod
    def from_npz_dict(cls, data: Mapping[str, np.ndarray], prefix: str = "") -> "PackedWeight":
        """Inverse of `to_npz_dict` (``data`` may be the ``np.load(..., allow_pickle=False)`` result)."""
        key = prefix + _META
        if key not in data:
            raise ValueError(f"packed weight: no {key!r} entry; not written by PackedWeight.to_npz_dict")
        meta = json.loads(str(data[key][()]))
        if meta.get("schema") != FORMAT_VERSION:
            raise ValueError(f"packed weight: schema {meta.get('schema')!r} not supported; allowed: {FORMAT_VERSION}")
        family = _spec(meta["pattern"]).family
        arrays = {}
        for name in FORMAT_ARRAYS[family]:
            if prefix + name not in data:
                raise ValueError(f"packed weight {meta['pattern']}: array {prefix + name!r} missing")
            arrays[name] = np.asarray(data[prefix + name])
        return cls(meta["pattern"], tuple(meta["shape"]), arrays, dict(meta["options"]))

    def save(self, path: str | os.PathLike) -> None:
        """Write an ``.npz`` file (no pickle)."""
        np.savez(path, **self.to_npz_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PackedWeight":
        with np.load(path, allow_pickle=False) as data:
            return cls.from_npz_dict(data)


def _check_layout(spec: PatternSpec, shape: tuple[int, ...], a: dict[str, np.ndarray], options: dict) -> None:
    """Array shapes and index ranges agree with the weight shape (so `unpack` and kernels never read out of bounds)."""
    O, K = _matrix_shape(shape)

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"{spec.name} packed weight of shape {shape}: {what}")

    def csr(indptr: np.ndarray, n_rows: int, n_cols: int, items: int) -> None:
        need(indptr.shape == (n_rows + 1,), f"indptr has shape {indptr.shape}, expected ({n_rows + 1},)")
        need(indptr[0] == 0 and bool((np.diff(indptr) >= 0).all()) and indptr[-1] == items,
             "indptr must start at 0, not decrease and end at the number of stored items")
        need(a["indices"].shape == (items,) and bool(((a["indices"] >= 0) & (a["indices"] < n_cols)).all()),
             f"indices must hold one column in [0, {n_cols}) per stored item")

    family, values = spec.family, a["values"]
    if family == "dense":
        need(values.shape == (O, K), f"values has shape {values.shape}, expected {(O, K)}")
    elif family in ("unstructured", "gather_scatter"):
        need(values.ndim == 1, f"values has shape {values.shape}, expected (nnz,)")
        csr(a["indptr"], O, K, len(values))
        if family == "gather_scatter":
            counts = np.diff(a["indptr"])
            per = {counts[lo:hi].sum() / (hi - lo) for lo, hi in _row_groups(O, int(options.get("group", 1)))}
            need(len(per) <= 1, f"groups of {options.get('group', 1)} rows hold different nonzeros per row: {sorted(per)}")
    elif family == "nm":
        width = -(-K // spec.m) * spec.n
        need(values.shape == a["indices"].shape == (O, width), f"values and indices must have shape {(O, width)}")
        need(bool((a["indices"] < spec.m).all()), f"indices must be positions < {spec.m} inside a group")
    elif family == "block":
        r, c = spec.rows, spec.cols
        need(values.ndim == 3 and values.shape[1:] == (r, c), f"values has shape {values.shape}, expected (nblocks, {r}, {c})")
        csr(a["indptr"], -(-O // r), -(-K // c), len(values))
    elif family == "channel":
        rows = a["rows"]
        need(rows.ndim == 1 and bool((np.diff(rows) > 0).all()) and (not len(rows) or (rows[0] >= 0 and rows[-1] < O)),
             f"rows must be ascending output channels in [0, {O})")
        need(values.shape == (len(rows), K), f"values has shape {values.shape}, expected {(len(rows), K)}")
    else:  # kernel_pattern
        _check_kernel_shape(shape)
        lib = kernel_library(library=a["library"])
        nk = len(a["kernel_out"])
        need(a["kernel_in"].shape == a["kernel_pattern"].shape == (nk,), "kernel_out, kernel_in and kernel_pattern differ in length")
        need(values.shape == (nk, int(lib[0].sum())), f"values has shape {values.shape}, expected ({nk}, taps)")
        need(bool(((a["kernel_out"] >= 0) & (a["kernel_out"] < O)).all() and ((a["kernel_in"] >= 0) & (a["kernel_in"] < shape[1])).all()
                  and (a["kernel_pattern"] < len(lib)).all()), "kernel indices out of range")


# ----- packing ---------------------------------------------------------------------------------------
def _csr(W: np.ndarray, keep: np.ndarray) -> dict[str, np.ndarray]:
    rows, cols = np.nonzero(keep)  # row-major: rows ascending, columns ascending within a row
    indptr = np.zeros(len(W) + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=len(W)), out=indptr[1:])
    return {"indptr": indptr, "indices": cols.astype(np.int32), "values": W[rows, cols].astype(np.float32)}


def _pack_nm(W: np.ndarray, keep: np.ndarray, n: int, m: int) -> dict[str, np.ndarray]:
    if m > 256:
        raise ValueError(f"nm{n}:{m}: M={m} too large for uint8 indices; allowed: M <= 256")
    O, K = W.shape
    G = -(-K // m)
    pos = np.arange(G * m)
    # rank of each slot inside its group: kept first, then unkept positions inside the row, then past K
    kind = np.where(pos[None, :] < K, 1, 2).repeat(O, 0)
    kind[:, :K][keep] = 0
    kind = kind.reshape(O, G, m)
    order = np.argsort(kind, axis=-1, kind="stable")[..., :n]  # N slots per group
    chosen_kind = np.take_along_axis(kind, order, -1)
    order = np.where(chosen_kind == 2, 0, order)  # past K (only if the tail is shorter than N): index 0
    order.sort(axis=-1)
    wide = np.zeros((O, G * m), dtype=np.float32)
    wide[:, :K] = np.where(keep, W, 0.0)
    cols = (np.arange(G)[None, :, None] * m + order).reshape(O, G * n)
    values = np.take_along_axis(wide, cols, 1)
    # a duplicated index 0 (padding) must not repeat a kept value
    dup = np.zeros_like(order, dtype=bool)
    dup[..., 1:] = order[..., 1:] == order[..., :-1]
    values[dup.reshape(O, G * n)] = 0.0
    return {"values": values, "indices": order.reshape(O, G * n).astype(np.uint8)}


def _pack_block(W: np.ndarray, keep: np.ndarray, r: int, c: int) -> dict[str, np.ndarray]:
    O, K = W.shape
    br, bc = -(-O // r), -(-K // c)
    wide = np.zeros((br * r, bc * c), dtype=np.float32)
    wide[:O, :K] = np.where(keep, W, 0.0)
    kept = np.zeros((br * r, bc * c), dtype=bool)
    kept[:O, :K] = keep
    blocks = wide.reshape(br, r, bc, c).transpose(0, 2, 1, 3)  # [br, bc, r, c]
    alive = kept.reshape(br, r, bc, c).any((1, 3))
    brow, bcol = np.nonzero(alive)
    indptr = np.zeros(br + 1, dtype=np.int32)
    np.cumsum(alive.sum(1), out=indptr[1:])
    return {"indptr": indptr, "indices": bcol.astype(np.int32), "values": np.ascontiguousarray(blocks[brow, bcol])}


def _pack_kernel_pattern(W: np.ndarray, keep: np.ndarray, shape: tuple[int, ...], share: int, lib: np.ndarray) -> dict[str, np.ndarray]:
    O, I = shape[0], shape[1]
    kern = keep.reshape(O, I, 9)
    match = (kern[:, :, None, :] == lib.astype(bool)[None, None]).all(-1)  # [O, I, P]
    alive = kern.any(-1)
    out_idx, in_idx = np.nonzero(alive)
    order = np.lexsort((out_idx, in_idx, out_idx // share))  # by (out // share, in, out)
    out_idx, in_idx = out_idx[order], in_idx[order]
    pat = np.argmax(match[out_idx, in_idx], axis=-1)  # first matching library pattern
    taps = int(lib[0].sum())
    tap_index = np.nonzero(lib[pat].astype(bool))[1].reshape(len(pat), taps)
    values = W.reshape(O, I, 9)[out_idx[:, None], in_idx[:, None], tap_index].astype(np.float32)
    return {
        "library": lib.astype(np.uint8),
        "kernel_out": out_idx.astype(np.int32),
        "kernel_in": in_idx.astype(np.int32),
        "kernel_pattern": pat.astype(np.uint8),
        "values": values.reshape(len(pat), taps),
    }


def pack(
    weight: torch.Tensor | np.ndarray,
    pattern: str,
    mask: torch.Tensor | np.ndarray | None = None,
    **options: Any,
) -> PackedWeight:
    """Pack ``weight`` (masked by ``mask``) into the format of ``pattern``.

    ``mask=None`` reads the structure from the weight's nonzeros; either way the structure is
    validated with `check_mask` (a weight with exact zeros inside its kept structure therefore
    needs its mask). Options as for `make_mask` (``share``/``taps``/``library``, ``group``)."""
    spec = _spec(pattern)
    opts = _options(spec, options)
    w = _as_numpy(weight, "weight").astype(np.float32)
    shape = tuple(w.shape)
    O, K = _matrix_shape(shape)
    if mask is None:
        keep = w != 0
    else:
        keep = _as_numpy(mask, "mask")
        if tuple(keep.shape) != shape:
            raise ValueError(f"mask: shape {tuple(keep.shape)} must equal the weight shape {shape}")
        keep = keep.astype(bool)
    check_mask(keep, pattern, **options)
    W, keep = w.reshape(O, K), keep.reshape(O, K)
    family = spec.family
    saved: dict[str, Any] = {}
    if family == "dense":
        arrays = {"values": np.ascontiguousarray(W)}
    elif family == "unstructured":
        arrays = _csr(W, keep)
    elif family == "gather_scatter":
        arrays = _csr(W, keep)
        saved = {"group": opts["group"]}
    elif family == "nm":
        arrays = _pack_nm(W, keep, spec.n, spec.m)
    elif family == "block":
        arrays = _pack_block(W, keep, spec.rows, spec.cols)
    elif family == "channel":
        rows = np.nonzero(keep.any(1))[0]
        arrays = {"rows": rows.astype(np.int32), "values": np.ascontiguousarray(W[rows])}
    else:  # kernel_pattern
        lib = kernel_library(opts["taps"], opts["library"])
        arrays = _pack_kernel_pattern(W, keep, shape, opts["share"], lib)
        saved = {"share": opts["share"]}
    return PackedWeight(spec.name, shape, arrays, saved)


# ----- quantized weights ----------------------------------------------------------------------------
def structure(packed: PackedWeight) -> np.ndarray:
    """Boolean ``[O, K]`` map of the entries the packed format stores (kept weights, zeros inside
    kept blocks and the spare slots of a short N:M tail included): what a kernel iterates over."""
    ones = {name: (np.ones_like(arr) if name == "values" else arr) for name, arr in packed.arrays.items()}
    O, K = _matrix_shape(packed.shape)
    return PackedWeight(packed.pattern, packed.shape, ones, packed.options).unpack().reshape(O, K) != 0


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A pruned weight as integer codes: ``codes`` is the pattern's `PackedWeight` whose values are
    integers in ``[-2^(bits-1), 2^(bits-1) - 1]`` (exact in float32), ``scales`` the float32 step of
    each output channel (symmetric, zero point 0), so the weight is ``codes * scales[o]`` -- the
    arithmetic of `tritune.kernels.quant.WeightFakeQuant`."""

    codes: PackedWeight
    scales: np.ndarray
    bits: int

    def __post_init__(self) -> None:
        if not isinstance(self.codes, PackedWeight):
            raise ValueError(f"quantized weight: codes must be a PackedWeight, got {type(self.codes).__name__}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, (int, np.integer)) or not 2 <= int(self.bits) <= 8:
            raise ValueError(f"quantized weight: bits {self.bits!r} not allowed; allowed: 2..8")
        object.__setattr__(self, "bits", int(self.bits))
        scales = np.ascontiguousarray(np.asarray(self.scales, dtype=np.float32).reshape(-1))
        if scales.shape != (self.codes.shape[0],) or not np.isfinite(scales).all() or (scales <= 0).any():
            raise ValueError(f"quantized weight: scales must be {self.codes.shape[0]} positive finite values (one per output channel)")
        object.__setattr__(self, "scales", scales)
        v = self.codes.arrays["values"]
        lo, hi = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        if v.size and (not np.array_equal(v, np.round(v)) or v.min() < lo or v.max() > hi):
            raise ValueError(f"quantized weight: codes must be integers in [{lo}, {hi}] for {self.bits} bits")

    @property
    def pattern(self) -> str:
        return self.codes.pattern

    @property
    def shape(self) -> tuple[int, ...]:
        return self.codes.shape

    @property
    def nbytes(self) -> int:
        """Storage cost at the bit-width: packed index arrays plus ``bits`` per stored code and the scales."""
        values = self.codes.arrays["values"]
        return int(self.codes.nbytes - values.nbytes + -(-values.size * self.bits // 8) + self.scales.nbytes)

    def int_codes(self) -> np.ndarray:
        """Dense masked codes, int8, in the weight's shape."""
        return self.codes.unpack().astype(np.int8)

    def dequantize(self) -> np.ndarray:
        """``codes * scales`` per output channel, float32, in the weight's shape (what the fake quantizer computes)."""
        w = self.codes.unpack()
        return (w.reshape(w.shape[0], -1) * self.scales[:, None]).reshape(self.shape).astype(np.float32)

    def to_npz_dict(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Arrays for ``np.savez`` (codes as int8 ``values``; no object arrays)."""
        out = self.codes.to_npz_dict(prefix)
        out[prefix + "values"] = self.codes.arrays["values"].astype(np.int8)
        out[prefix + "scales"] = self.scales
        out[prefix + "bits"] = np.array(self.bits, dtype=np.int32)
        return out

    @classmethod
    def from_npz_dict(cls, data: Mapping[str, np.ndarray], prefix: str = "") -> "QuantizedWeight":
        """Inverse of `to_npz_dict`."""
        for name in ("scales", "bits", "values"):
            if prefix + name not in data:
                raise ValueError(f"quantized weight: array {prefix + name!r} missing")
        fixed = dict(data)
        fixed[prefix + "values"] = np.asarray(data[prefix + "values"]).astype(np.float32)
        return cls(PackedWeight.from_npz_dict(fixed, prefix), np.asarray(data[prefix + "scales"]), int(np.asarray(data[prefix + "bits"])))


def quantize_packed(weight: torch.Tensor | np.ndarray, pattern: str, mask: torch.Tensor | np.ndarray | None = None, bits: int = 8,
                    scales: torch.Tensor | np.ndarray | None = None, **options: Any) -> QuantizedWeight:
    """Quantize ``weight`` per output channel (`tritune.kernels.quant.quantize_weight`: symmetric,
    step ``max|w| / (2^(b-1) - 1)`` unless ``scales`` are given) and pack its codes in ``pattern``.

    ``mask`` gives the structure (default: the weight's nonzeros); codes that round to zero inside
    it stay stored, so the structure survives quantization."""
    from .quant import quantize_weight

    w = torch.as_tensor(_as_numpy(weight, "weight").astype(np.float32))
    keep = (w != 0).numpy() if mask is None else _as_numpy(mask, "mask").astype(bool)
    if tuple(keep.shape) != tuple(w.shape):
        raise ValueError(f"mask: shape {tuple(keep.shape)} must equal the weight shape {tuple(w.shape)}")
    given = None if scales is None else torch.as_tensor(np.asarray(scales, dtype=np.float32).reshape(-1))
    codes, steps = quantize_weight(w, bits, 0, given)
    codes = codes.float().numpy() * keep
    return QuantizedWeight(pack(codes, pattern, keep, **options), steps.numpy(), bits)
