"""Sparsity masks with the exact structure of each pattern, and a checker for that structure.

Every weight is seen as a matrix ``W[O, K]``: ``O`` output channels (rows) and
``K = in * kh * kw`` reduction entries, flattened row-major ``(in, kh, kw)`` -- what
``weight.reshape(O, -1)`` and ``torch.nn.functional.unfold`` (im2col) give. The structure of a
pattern is defined on that view, the same view the packed formats (`tritune.kernels.formats`)
and the generated kernels use, so a mask, its packed form and a kernel never disagree.

Patterns (names from `tritune.spaces.compression`):

* ``dense``: everything kept (the requested ratio is ignored).
* ``unstructured``: the ``round(s * numel)`` weakest weights of the layer are zeroed.
* ``nmN:M``: every run of ``M`` consecutive entries of a row of ``W[O, K]`` (group ``g`` covers
  columns ``[g*M, (g+1)*M)``) keeps its ``N`` strongest. For a 1x1 convolution or a linear
  layer the groups run along input channels; for a kxk convolution they run along the flattened
  ``(in, kh, kw)`` axis, i.e. the im2col reduction axis a sparse GEMM walks (one definition for
  every layer, matching the packed format; a channels-last kernel that wants groups along input
  channels per tap would need its own pattern name). The ratio is fixed
  at ``1 - N/M``; a requested ratio is ignored. When ``K`` is not a multiple of ``M`` the last,
  short group of ``L`` entries keeps ``ceil(N * L / M)``.
* ``blockRxC``: blocks of ``R`` rows x ``C`` columns of ``W[O, K]`` (``block8x1``: 8 output
  channels x 1 reduction entry; ``block1x4``: 4 consecutive reduction entries of one row) are
  kept or pruned whole, weakest first by mean ``|w|`` (block L1 norm over its size, so the
  smaller blocks at the edges, where ``O`` or ``K`` is not a multiple, compete fairly).
* ``channel``: whole rows (output filters), weakest mean ``|w|`` first.
* ``kernel_pattern``: 3x3 convolutions ``[O, I, 3, 3]`` only. Following PatDNN (Niu et al.,
  "PatDNN", ASPLOS 2020), every 3x3 kernel keeps the taps of one pattern from a small library
  (default: 8 four-tap patterns that all contain the centre tap), the pattern that keeps most of
  its importance; then *connectivity pruning* removes whole kernels, weakest first, until the
  ratio is met: ``s = 1 - (1 - c) * taps / 9`` for a fraction ``c`` of removed kernels, so the
  smallest ratio is ``1 - taps/9`` (5/9 for 4 taps) and a smaller request gives exactly that.
  Options: ``share`` (default 1) -- groups of ``share`` consecutive output channels use ONE
  pattern per input channel (the pattern maximising the group's summed importance), and
  connectivity pruning removes such ``(group, in)`` kernel groups as a unit, which lets a
  compiled kernel specialise its code per group; ``taps`` (default 4) and ``library`` (a list of
  3x3 0/1 arrays with ``taps`` ones each). Without a library, ``taps != 4`` uses every pattern of
  ``taps`` taps that contains the centre.
* ``gather_scatter``: load-balanced rows: each row keeps exactly ``k = round((1 - s) * K)``
  entries (at least 1). Option ``group`` (default 1): with ``group > 1`` the rows of each group
  of ``group`` consecutive rows keep ``k * rows`` entries together (the strongest within the
  group), so every group of rows has the same work, not every row.

Ratios are rounded to the pattern's granularity: the units (weights, blocks, rows, kernels) are
pruned weakest first, and the number pruned is the one whose ratio is nearest the target (ties
round up, as ``round`` half-up does). At least one unit is always kept, so no layer is all zeros.
`achieved_sparsity` gives the ratio a mask reached.

Scores are ``|weight|`` unless ``importance`` (same shape, higher = keep) is given, e.g. a
Taylor or activation-aware score; it is used as given. Ties keep the earlier entry (and pick the
earlier library pattern), so masks are deterministic.
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import numpy as np
import torch

from ..spaces.compression import PatternSpec, parse_pattern

#: Default kernel-pattern library: four-tap 3x3 patterns containing the centre tap (PatDNN-style;
#: taps numbered row-major 0..8, centre = 4). Four "T" shapes (centre + three of its four
#: neighbours) and the four 2x2 squares that contain the centre.
DEFAULT_KERNEL_PATTERNS: tuple[tuple[int, ...], ...] = (
    (1, 3, 4, 5),
    (1, 4, 5, 7),
    (3, 4, 5, 7),
    (1, 3, 4, 7),
    (0, 1, 3, 4),
    (1, 2, 4, 5),
    (3, 4, 6, 7),
    (4, 5, 7, 8),
)

#: Options each pattern family accepts (and their defaults).
PATTERN_OPTIONS: dict[str, dict[str, Any]] = {
    "kernel_pattern": {"share": 1, "taps": None, "library": None},
    "gather_scatter": {"group": 1},
}

_TIE = 1e-9  # relative tolerance when comparing float ratios with unit counts


# ----- validation helpers -----------------------------------------------------------------------
def _spec(pattern: str) -> PatternSpec:
    if not isinstance(pattern, str):
        raise ValueError(f"pattern: expected a pattern name (str), got {pattern!r}")
    return parse_pattern(pattern)


def _options(spec: PatternSpec, options: dict[str, Any]) -> dict[str, Any]:
    allowed = PATTERN_OPTIONS.get(spec.family, {})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        names = ", ".join(allowed) if allowed else "none"
        raise ValueError(f"{spec.name}: unknown options {unknown}; allowed: {names}")
    out = {**allowed, **options}
    for key in ("share", "group"):
        if key in out:
            value = out[key]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{spec.name}.{key}: {value!r} not allowed; allowed: an integer >= 1")
            out[key] = int(value)
    return out


def _sparsity(sparsity: float | None) -> float | None:
    if sparsity is None:
        return None
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(f"sparsity: {sparsity!r} is not a number; allowed: a float in [0, 1)") from None
    if not 0.0 <= s < 1.0:  # also rejects NaN
        raise ValueError(f"sparsity: {sparsity!r} not allowed; allowed: a float in [0, 1)")
    return s


def _matrix_shape(shape: tuple[int, ...], what: str = "weight") -> tuple[int, int]:
    if len(shape) < 2 or any(d < 1 for d in shape):
        raise ValueError(
            f"{what}: shape {tuple(shape)} not allowed; allowed: linear [out, in] or conv [out, in, kh, kw] "
            f"with every dimension >= 1"
        )
    return int(shape[0]), int(math.prod(shape[1:]))


def _as_numpy(x: torch.Tensor | np.ndarray, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()  # numpy has no bfloat16
    if isinstance(x, np.ndarray):
        return x
    raise ValueError(f"{what}: expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


@functools.lru_cache(maxsize=None)
def _centre_library(taps: int) -> tuple[tuple[int, ...], ...]:
    if taps == 4:
        return DEFAULT_KERNEL_PATTERNS
    return tuple(tuple(sorted((4,) + c)) for c in itertools.combinations((0, 1, 2, 3, 5, 6, 7, 8), taps - 1))


def kernel_library(taps: int | None = None, library: Any = None) -> np.ndarray:
    """The kernel-pattern library as a uint8 ``[P, 9]`` array of 0/1 tap masks (row-major taps).

    ``library`` (a list of 3x3 0/1 arrays) wins; otherwise the default library for ``taps``."""
    if library is None:
        taps = 4 if taps is None else taps
        if isinstance(taps, bool) or not isinstance(taps, (int, np.integer)) or not 1 <= taps <= 9:
            raise ValueError(f"kernel_pattern.taps: {taps!r} not allowed; allowed: an integer in 1..9")
        lib = np.zeros((len(_centre_library(int(taps))), 9), dtype=np.uint8)
        for row, pat in enumerate(_centre_library(int(taps))):
            lib[row, list(pat)] = 1
        return lib
    try:
        arr = np.asarray(library, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("kernel_pattern.library: expected a list of 3x3 arrays of 0/1") from None
    if arr.ndim == 2 and arr.shape[1] == 9:
        arr = arr.reshape(-1, 3, 3)
    if arr.ndim != 3 or arr.shape[1:] != (3, 3) or not 1 <= len(arr) <= 256 or not np.isin(arr, (0, 1)).all():
        raise ValueError(
            f"kernel_pattern.library: got shape {arr.shape}; allowed: 1 to 256 arrays of shape 3x3 holding 0/1"
        )
    lib = arr.reshape(-1, 9).astype(np.uint8)
    counts = set(lib.sum(1).tolist())
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"kernel_pattern.library: every pattern must keep the same number (>= 1) of taps; got {sorted(counts)}")
    if taps is not None and counts != {taps}:
        raise ValueError(f"kernel_pattern.taps: {taps} does not match the library's {counts.pop()} taps per pattern")
    return lib


def _check_kernel_shape(shape: tuple[int, ...]) -> None:
    if len(shape) != 4 or tuple(shape[2:]) != (3, 3):
        raise ValueError(
            f"kernel_pattern: weight shape {tuple(shape)} not allowed; allowed: 3x3 convolution weights [out, in, 3, 3]"
        )


# ----- counting -----------------------------------------------------------------------------------
def _n_pruned(sizes: np.ndarray, target: float) -> int:
    """How many units to prune, in the given order, for the zero count nearest ``target``.

    ``sizes`` are the zeros each unit adds (in pruning order); ties round up; at least one unit
    stays."""
    n = len(sizes)
    if n <= 1 or target <= 0:
        return 0
    if (sizes == sizes[0]).all():  # uniform units: plain half-up rounding
        j = int(math.floor(target / float(sizes[0]) + 0.5 + _TIE))
        return min(max(j, 0), n - 1)
    cum = np.concatenate([[0.0], np.cumsum(sizes, dtype=np.float64)])[:n]
    dist = np.abs(cum - target)
    return int(np.nonzero(dist <= dist.min() + _TIE * max(1.0, target))[0][-1])


def _prune_order(scores: np.ndarray) -> np.ndarray:
    """Unit indices weakest first; equal scores prune the later unit first (earlier ones stay)."""
    flat = scores.reshape(-1)
    return (len(flat) - 1 - np.argsort(flat[::-1], kind="stable"))


def _gs_keep(k_total: int, sparsity: float) -> int:
    return min(k_total, max(1, int(math.floor((1.0 - sparsity) * k_total + 0.5 + _TIE))))


# ----- mask builders on W[O, K] ---------------------------------------------------------------------
def _top_per_row(scores: np.ndarray, keep: int | np.ndarray) -> np.ndarray:
    """Boolean mask keeping the ``keep`` highest entries of every row (ties: earlier entry)."""
    order = np.argsort(-scores, axis=-1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[-1])[None, :].repeat(len(scores), 0), axis=-1)
    return ranks < np.asarray(keep).reshape(-1, 1)


def _mask_unstructured(score: np.ndarray, s: float) -> np.ndarray:
    n = score.size
    zeros = _n_pruned(np.ones(n), s * n)
    keep = np.ones(n, dtype=bool)
    keep[_prune_order(score)[:zeros]] = False
    return keep.reshape(score.shape)


def _nm_groups(k_total: int, n: int, m: int) -> tuple[int, int, int]:
    """(full groups, tail length, entries kept in the tail) of a row of length K."""
    full, tail = divmod(k_total, m)
    return full, tail, -(-n * tail // m)


def _mask_nm(score: np.ndarray, n: int, m: int) -> np.ndarray:
    O, K = score.shape
    full, tail, tail_keep = _nm_groups(K, n, m)
    keep = np.zeros((O, K), dtype=bool)
    if full:
        groups = score[:, : full * m].reshape(O * full, m)
        keep[:, : full * m] = _top_per_row(groups, n).reshape(O, full * m)
    if tail:
        keep[:, full * m :] = _top_per_row(score[:, full * m :], tail_keep)
    return keep


def _block_grid(O: int, K: int, r: int, c: int) -> tuple[int, int]:
    return -(-O // r), -(-K // c)


def _mask_block(score: np.ndarray, s: float, r: int, c: int) -> np.ndarray:
    O, K = score.shape
    br, bc = _block_grid(O, K, r, c)
    padded = np.zeros((br * r, bc * c))
    padded[:O, :K] = score
    ones = np.zeros_like(padded)
    ones[:O, :K] = 1.0
    sums = padded.reshape(br, r, bc, c).sum((1, 3)).reshape(-1)
    sizes = ones.reshape(br, r, bc, c).sum((1, 3)).reshape(-1)
    order = _prune_order(sums / sizes)
    drop = np.zeros(br * bc, dtype=bool)
    drop[order[: _n_pruned(sizes[order], s * O * K)]] = True
    full = np.repeat(np.repeat(~drop.reshape(br, bc), r, 0), c, 1)
    return full[:O, :K]


def _mask_channel(score: np.ndarray, s: float) -> np.ndarray:
    O, K = score.shape
    order = _prune_order(score.mean(1))
    drop = order[: _n_pruned(np.full(O, float(K)), s * O * K)]
    keep = np.ones((O, K), dtype=bool)
    keep[drop] = False
    return keep


def _row_groups(O: int, group: int) -> list[tuple[int, int]]:
    return [(start, min(start + group, O)) for start in range(0, O, group)]


def _mask_gather_scatter(score: np.ndarray, s: float, group: int) -> np.ndarray:
    O, K = score.shape
    k = _gs_keep(K, s)
    if group == 1:
        return _top_per_row(score, k)
    keep = np.zeros((O, K), dtype=bool)
    full = O // group
    if full:
        block = score[: full * group].reshape(full, group * K)
        keep[: full * group] = _top_per_row(block, k * group).reshape(full * group, K)
    if O % group:
        rows = O - full * group
        keep[full * group :] = _top_per_row(score[full * group :].reshape(1, -1), k * rows).reshape(rows, K)
    return keep


def _mask_kernel_pattern(score: np.ndarray, shape: tuple[int, ...], s: float, share: int, lib: np.ndarray) -> np.ndarray:
    O, I = shape[0], shape[1]
    taps = int(lib[0].sum())
    S = score.reshape(O, I, 9)
    n_groups = -(-O // share)
    padded = np.zeros((n_groups * share, I, 9))
    padded[:O] = S
    group_scores = padded.reshape(n_groups, share, I, 9).sum(1)  # [G, I, 9]
    choice = np.argmax(group_scores @ lib.T.astype(np.float64), axis=-1)  # [G, I], first best
    chosen = lib[choice].astype(bool)  # [G, I, 9]
    group_size = np.array([hi - lo for lo, hi in _row_groups(O, share)], dtype=np.float64)  # kernels per group
    kept_score = (group_scores * chosen).sum(-1) / (group_size[:, None] * taps)  # [G, I], mean kept score
    unit_sizes = np.repeat(group_size * taps, I)  # zeros added by removing a (group, in) unit
    base = O * I * (9 - taps)
    order = _prune_order(kept_score)
    drop = np.zeros(n_groups * I, dtype=bool)
    drop[order[: _n_pruned(unit_sizes[order], s * O * I * 9 - base)]] = True
    chosen &= ~drop.reshape(n_groups, I, 1)
    return np.repeat(chosen, share, axis=0)[:O].reshape(shape)


# ----- public API -----------------------------------------------------------------------------------
def make_mask(
    weight: torch.Tensor,
    pattern: str,
    sparsity: float,
    *,
    importance: torch.Tensor | None = None,
    **options: Any,
) -> torch.Tensor:
    """Boolean keep-mask (same shape as ``weight``) with the exact structure of ``pattern``.

    Units are scored by ``|weight|`` (or ``importance``, higher = keep) and pruned weakest first;
    the achieved ratio is the pattern's nearest achievable one (see the module docstring, which
    also lists the options: ``share``/``taps``/``library`` for kernel_pattern, ``group`` for
    gather_scatter)."""
    spec = _spec(pattern)
    opts = _options(spec, options)
    s = _sparsity(sparsity)
    w = _as_numpy(weight, "weight")
    shape = tuple(w.shape)
    O, K = _matrix_shape(shape)
    if importance is None:
        score = np.abs(w.astype(np.float64))
    else:
        score = _as_numpy(importance, "importance").astype(np.float64)
        if tuple(score.shape) != shape:
            raise ValueError(f"importance: shape {tuple(score.shape)} must equal the weight shape {shape}")
    if np.isnan(score).any():
        raise ValueError("importance: contains NaN; allowed: finite scores (higher = keep)")
    score = score.reshape(O, K)
    family = spec.family
    if family == "dense":
        keep = np.ones((O, K), dtype=bool)
    elif family == "unstructured":
        keep = _mask_unstructured(score, s)
    elif family == "nm":
        keep = _mask_nm(score, spec.n, spec.m)
    elif family == "block":
        keep = _mask_block(score, s, spec.rows, spec.cols)
    elif family == "channel":
        keep = _mask_channel(score, s)
    elif family == "gather_scatter":
        keep = _mask_gather_scatter(score, s, opts["group"])
    else:  # kernel_pattern
        _check_kernel_shape(shape)
        lib = kernel_library(opts["taps"], opts["library"])
        keep = _mask_kernel_pattern(score, shape, s, opts["share"], lib)
    out = torch.from_numpy(np.ascontiguousarray(keep.reshape(shape)))
    return out.to(weight.device) if isinstance(weight, torch.Tensor) else out


def achieved_sparsity(mask: torch.Tensor | np.ndarray) -> float:
    """Fraction of zeros (pruned entries) of a keep-mask."""
    m = _as_numpy(mask, "mask")
    return 1.0 - float(np.count_nonzero(m)) / m.size


def _fail(pattern: str, message: str) -> None:
    raise ValueError(f"{pattern}: {message}")


def _check_ratio(name: str, zeros: int, target: float, unit: float, kept_units: int) -> None:
    """The zero count must be within half a unit of the target (a single kept unit is the floor)."""
    if kept_units == 1 and zeros < target:  # never prunes the last unit
        return
    if abs(zeros - target) > unit / 2 + _TIE * max(1.0, target):
        _fail(name, f"{zeros} zeros, but the nearest achievable count to the target {target:g} is within {unit / 2:g} of it")


def check_mask(mask: torch.Tensor | np.ndarray, pattern: str, sparsity: float | None = None, **options: Any) -> None:
    """Raise ValueError naming the violated rule unless ``mask`` has the exact structure of
    ``pattern`` (and, given ``sparsity``, the nearest achievable ratio of it).

    The ratio is checked for the patterns that take one (not ``dense`` and ``nmN:M``, whose ratio
    is fixed), to within half of the pattern's unit (a weight, block, row or kernel)."""
    spec = _spec(pattern)
    opts = _options(spec, options)
    s = _sparsity(sparsity)
    m = _as_numpy(mask, "mask")
    if m.dtype != np.bool_:
        if not np.isin(m, (0, 1)).all():
            raise ValueError("mask: expected a boolean keep-mask (or 0/1 values)")
        m = m.astype(bool)
    shape = tuple(m.shape)
    O, K = _matrix_shape(shape, "mask")
    W = m.reshape(O, K)
    zeros = int(W.size - np.count_nonzero(W))
    name, family = spec.name, spec.family
    if family == "dense":
        if zeros:
            _fail(name, f"{zeros} entries pruned, a dense layer keeps every entry")
        return
    if family == "unstructured":
        if s is not None:
            _check_ratio(name, zeros, s * W.size, 1, int(np.count_nonzero(W)))
        return
    if family == "nm":
        n, mm = spec.n, spec.m
        full, tail, tail_keep = _nm_groups(K, n, mm)
        if full:
            counts = W[:, : full * mm].reshape(O, full, mm).sum(-1)
            bad = np.argwhere(counts != n)
            if len(bad):
                o, g = bad[0]
                _fail(name, f"row {o} group {g} keeps {counts[o, g]} of {mm}; every group of {mm} keeps exactly {n}")
        if tail:
            counts = W[:, full * mm :].sum(-1)
            bad = np.nonzero(counts != tail_keep)[0]
            if len(bad):
                _fail(name, f"row {bad[0]} tail group ({tail} entries) keeps {counts[bad[0]]}; it keeps exactly ceil({n}*{tail}/{mm}) = {tail_keep}")
        return
    if family == "block":
        r, c = spec.rows, spec.cols
        br, bc = _block_grid(O, K, r, c)
        padded = np.zeros((br * r, bc * c), dtype=np.int64)
        padded[:O, :K] = W
        ones = np.zeros_like(padded)
        ones[:O, :K] = 1
        kept = padded.reshape(br, r, bc, c).sum((1, 3))
        size = ones.reshape(br, r, bc, c).sum((1, 3))
        bad = np.argwhere((kept != 0) & (kept != size))
        if len(bad):
            i, j = bad[0]
            _fail(name, f"block (row {i}, col {j}) of {r}x{c} keeps {kept[i, j]} of {size[i, j]}; blocks are kept or pruned whole")
        if s is not None:
            _check_ratio(name, zeros, s * W.size, r * c, int(np.count_nonzero(kept)))
        return
    if family == "channel":
        counts = W.sum(1)
        bad = np.nonzero((counts != 0) & (counts != K))[0]
        if len(bad):
            _fail(name, f"row {bad[0]} keeps {counts[bad[0]]} of {K}; output channels are kept or pruned whole")
        if s is not None:
            _check_ratio(name, zeros, s * W.size, K, int(np.count_nonzero(counts)))
        return
    if family == "gather_scatter":
        group = opts["group"]
        counts = W.sum(1)
        groups = _row_groups(O, group)
        if s is not None:
            per_row: float = _gs_keep(K, s)
        else:  # the count most groups have, so the message names the odd group out
            rates, freq = np.unique([counts[lo:hi].sum() / (hi - lo) for lo, hi in groups], return_counts=True)
            per_row = float(rates[np.argmax(freq)])
        for lo, hi in groups:
            got = int(counts[lo:hi].sum())
            if got != per_row * (hi - lo):
                where = f"row {lo}" if group == 1 else f"rows {lo}..{hi - 1}"
                _fail(name, f"{where} keep {got}; every group of {group} row(s) keeps {per_row:g} per row ({per_row * (hi - lo):g})")
        return
    # kernel_pattern
    _check_kernel_shape(shape)
    lib = kernel_library(opts["taps"], opts["library"]).astype(bool)
    share = opts["share"]
    taps = int(lib[0].sum())
    kern = W.reshape(O, shape[1], 9)
    empty = ~kern.any(-1)
    matches = (kern[:, :, None, :] == lib[None, None]).all(-1).any(-1)
    bad = np.argwhere(~(empty | matches))
    if len(bad):
        o, i = bad[0]
        taps_kept = np.nonzero(kern[o, i])[0].tolist()
        _fail(name, f"kernel (out {o}, in {i}) keeps taps {taps_kept}, which is not a pattern of the library")
    for lo, hi in _row_groups(O, share):
        differs = (kern[lo:hi] != kern[lo][None]).any(-1).any(0)
        if differs.any():
            _fail(name, f"output channels {lo}..{hi - 1}, in {int(np.argmax(differs))}: kernels differ; share={share} kernels use one pattern")
    if s is not None:
        base = O * shape[1] * (9 - taps)
        kept_units = int(np.count_nonzero(~empty[::share]))
        _check_ratio(name, zeros, max(s * W.size, base), min(share, O) * taps, kept_units)
