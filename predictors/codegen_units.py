"""What `codegen-cpu` runs for a network, as units a latency model costs, with their features.

A *unit* is one step of the target's plan (`tritune.targets.codegen_cpu`): a conv / depthwise /
linear layer with what its step also does -- the conversions of its output into the forms its
readers need, a residual sum or a pool computed in its epilogue -- or a group of layers run as
one fused step (an inverted-residual block of a float network, `tritune.kernels.codegen.fused`),
or a float element-wise step (residual sum, pool, squeeze-excite scale). The rules follow the
planner: a network with any integer layer (``w_bits <= 8`` and ``a_bits <= 8``) is planned by
`CodegenCpuTarget._plan_mixed` (no fused blocks; pools after integer or depthwise layers and sums
after integer project layers folded into them), a float network by `CodegenCpuTarget._plan`
(blocks fused where the expanded tensor reaches ``fuse_min_bytes``).

Layers travel as `LayerRows` (one row per IR layer, many networks at once), built either from
`LayerSpec` lists (`rows_from_layers`, with names: what a profile's measured steps are matched
to) or straight from candidates of a mobilenet space (`rows_from_candidates`: the space's
vectorised ``layer_codes`` plus each row's plan slot, found from the depth genes, so no
`LayerSpec` is built -- what makes predicting tens of thousands of candidates a second possible).
`units` groups rows into units: per unit its type, its work (`WORK`, what its time is linear
in), context flags and a 64-bit key of its configuration.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..spaces.compression import parse_pattern
from ..spaces.layers import ACTIVATIONS, OPS

FAMILIES = ("dense", "unstructured", "nm", "block", "kernel_pattern", "gather_scatter")
UNIT_TYPES = ("conv1x1_f32", "conv1x1_i8", "conv3x3_f32", "conv3x3_i8", "dw_f32", "dw_i8", "linear_f32", "linear_i8", "matvec_f32",
              "fused_f32", "add", "pool", "scale")
FUSE_MIN_BYTES = 1 << 20
BLAS_LINEAR_WEIGHTS = 1 << 18

_OP = {op: i for i, op in enumerate(OPS)}
_ACT = {a: i for i, a in enumerate(ACTIVATIONS)}
CONV, DW, LINEAR, POOL, ADD, MUL = (_OP[o] for o in ("conv", "dwconv", "linear", "global_pool", "add", "mul"))


@dataclass
class LayerRows:
    """One row per IR layer of ``n_networks`` networks, in each network's layer order."""

    net: np.ndarray
    op: np.ndarray
    act: np.ndarray
    cin: np.ndarray
    cout: np.ndarray
    in_h: np.ndarray
    kernel: np.ndarray
    stride: np.ndarray
    groups: np.ndarray
    w_bits: np.ndarray
    a_bits: np.ndarray
    family: np.ndarray
    sparsity: np.ndarray
    br: np.ndarray
    bc: np.ndarray
    nn: np.ndarray
    nm: np.ndarray
    se: np.ndarray  # a squeeze-excite reduce / expand layer
    res: np.ndarray  # per network: input resolution
    n_networks: int
    names: list[str] | None = None

    @property
    def n(self) -> int:
        return int(self.net.size)


def _compression_code(pattern: str, sparsity: float) -> tuple[int, float, int, int, int, int]:
    """(family, effective sparsity, block rows, block cols, n, m): channel pruning and dense are dense."""
    spec = parse_pattern(pattern)
    family = spec.family
    if family == "channel" or family == "dense" or sparsity <= 0.0:
        return 0, 0.0, 0, 0, 0, 0
    if family == "nm":
        return FAMILIES.index("nm"), float(sparsity), 0, 0, int(spec.n), int(spec.m)
    if family == "block":
        return FAMILIES.index("block"), float(sparsity), int(spec.rows), int(spec.cols), 0, 0
    return FAMILIES.index(family), float(sparsity), 0, 0, 0, 0


def rows_from_layers(networks: Sequence[Sequence[Any]], res: Sequence[int] | None = None) -> LayerRows:
    """`LayerRows` (with names) from lists of `LayerSpec` (``res``: input resolutions, default the stem's input)."""
    cols: dict[str, list] = {k: [] for k in ("net", "op", "act", "cin", "cout", "in_h", "kernel", "stride", "groups", "w_bits", "a_bits",
                                            "family", "sparsity", "br", "bc", "nn", "nm", "se")}
    names: list[str] = []
    resolutions = []
    for i, layers in enumerate(networks):
        resolutions.append(int(layers[0].in_h) if res is None else int(res[i]))
        for L in layers:
            code = _compression_code(L.pattern, float(L.sparsity)) if L.has_weights else (0, 0.0, 0, 0, 0, 0)
            values = (i, _OP[L.op], _ACT[L.act], L.in_channels, L.out_channels, L.in_h, L.kernel, L.stride, L.groups, L.w_bits, L.a_bits,
                      *code, ".se." in L.name and L.has_weights)
            for key, v in zip(cols, values):
                cols[key].append(v)
            names.append(L.name)
    arr = {k: np.asarray(v, dtype=np.float64 if k == "sparsity" else (bool if k == "se" else np.int64)) for k, v in cols.items()}
    return LayerRows(**arr, res=np.asarray(resolutions, dtype=np.int64), n_networks=len(networks), names=names)


class _CompressionCodes:
    """Compression objects -> rows of (family, sparsity, block rows, block cols, n, m, w_bits,
    a_bits): by identity first (sampled candidates share their genes' objects; remembered ones are
    kept alive, so an id is never reused), then by value."""

    def __init__(self, memo: int = 50_000) -> None:
        self.by_id: dict[int, int] = {}
        self.by_value: dict[tuple, int] = {}
        self.keep: list[Any] = []
        self.table: list[tuple] = []
        self.memo = memo
        self._array = np.zeros((0, 8))

    def _by_value(self, c: Any) -> int:
        f = (c.pattern, c.sparsity, c.w_bits, c.a_bits)
        code = self.by_value.get(f)
        if code is None:
            self.table.append((*_compression_code(f[0], float(f[1])), int(f[2]), int(f[3])))
            code = self.by_value[f] = len(self.table) - 1
        if len(self.by_id) < self.memo:
            self.by_id[id(c)] = code
            self.keep.append(c)
        return code

    def codes(self, comps: list) -> np.ndarray:
        try:
            return np.fromiter(map(self.by_id.__getitem__, map(id, comps)), dtype=np.int64, count=len(comps))
        except KeyError:
            get = self.by_id.get
            return np.array([self._by_value(c) if (k := get(id(c))) is None else k for c in comps], dtype=np.int64)

    def arrays(self) -> np.ndarray:
        if len(self._array) != len(self.table):
            self._array = np.asarray(self.table, dtype=np.float64).reshape(-1, 8)
        return self._array


_CODES = _CompressionCodes()


def rows_from_candidates(space: Any, candidates: Sequence[Any]) -> LayerRows:
    """`LayerRows` of candidates of a mobilenet space without building `LayerSpec` objects: shapes
    from ``space.layer_codes``, each weight layer's plan slot from the depth genes (the IR lists
    the layers of the blocks that exist in slot order; squeeze-excite pairs take their block's SE
    slot), its compression from the candidate's plan."""
    from ..spaces.mobilenet.space import MAX_DEPTH, SLOT_INDEX, SLOTS, STAGES

    cands = list(candidates)
    lens, codes = space.layer_codes(cands)
    n = len(cands)
    net = np.repeat(np.arange(n), lens)
    op, act, cin, cout, in_h, kernel, stride, groups = (codes[:, j] for j in range(8))
    # squeeze-excite weight layers: the two convolutions between a pool and a scale
    prev1, prev2 = np.roll(op, 1), np.roll(op, 2)
    next1, next2 = np.roll(op, -1), np.roll(op, -2)
    se = (op == CONV) & (((prev1 == POOL) & (next2 == MUL)) | ((prev2 == POOL) & (next1 == MUL)))
    weighted = np.isin(op, (CONV, DW, LINEAR))
    depth = np.array([c["depth"] for c in cands], dtype=np.int64).reshape(n, len(STAGES))
    present = (np.arange(MAX_DEPTH)[None, None, :] < depth[:, :, None]).reshape(n, -1)  # [n, blocks] stage-major
    n_plain = SLOT_INDEX["classifier"] + 1
    plain = np.zeros((n, n_plain), dtype=bool)
    plain[:, [SLOT_INDEX["stem"], SLOT_INDEX["first.dw"], SLOT_INDEX["first.project"], SLOT_INDEX["final_expand"],
              SLOT_INDEX["feature_mix"], SLOT_INDEX["classifier"]]] = True
    first_block = SLOT_INDEX["s0.b0.expand"]
    plain[:, first_block:first_block + 3 * present.shape[1]] = np.repeat(present, 3, axis=1)
    se_blocks = [s * MAX_DEPTH + b for s, (*_, has) in enumerate(STAGES) if has for b in range(MAX_DEPTH)]
    se_slots = np.array([SLOT_INDEX[f"s{j // MAX_DEPTH}.b{j % MAX_DEPTH}.se"] for j in se_blocks], dtype=np.int64)
    slot = np.full(op.size, -1, dtype=np.int64)
    plain_rows = weighted & ~se
    nets_p, slots_p = np.nonzero(plain)
    se_net, se_idx = np.nonzero(present[:, se_blocks])
    if plain_rows.sum() != slots_p.size or se.sum() != 2 * se_idx.size:  # pragma: no cover - the IR and this mapping agree
        raise ValueError("codegen predictor: layer rows do not match the plan slots (a space whose IR differs from mobilenet's)")
    slot[plain_rows] = slots_p
    slot[se] = np.repeat(se_slots[se_idx], 2)
    comps = [comp for c in cands for comp in c.compression]
    if len(comps) != n * len(SLOTS):
        raise ValueError(f"codegen predictor: candidates must carry {len(SLOTS)} compression slots")
    code = _CODES.codes(comps).reshape(n, len(SLOTS))
    table = _CODES.arrays()
    rowcode = np.where(weighted, code[net, np.maximum(slot, 0)], -1)
    vals = np.where(weighted[:, None], table[np.maximum(rowcode, 0)], 0.0)
    res = np.array([c["resolution"] for c in cands], dtype=np.int64)
    return LayerRows(net=net, op=op, act=act, cin=cin, cout=cout, in_h=in_h, kernel=kernel, stride=stride, groups=groups,
                     w_bits=np.where(weighted, vals[:, 6], 32).astype(np.int64), a_bits=np.where(weighted, vals[:, 7], 32).astype(np.int64),
                     family=vals[:, 0].astype(np.int64), sparsity=vals[:, 1], br=vals[:, 2].astype(np.int64), bc=vals[:, 3].astype(np.int64),
                     nn=vals[:, 4].astype(np.int64), nm=vals[:, 5].astype(np.int64), se=se, res=res, n_networks=n)


# ----- units --------------------------------------------------------------------------------------
#: Work of a unit (summed over its layers): what its time is linear in, per unit type.
WORK = ("calls", *[f"kept_mmacs_{f}" for f in FAMILIES], *[f"dense_mmacs_{f}" for f in FAMILIES], "padded_mmacs", "out_melems",
        "in_melems", "weight_mbytes", "w4_mmacs", "gather_mmacs", "conversion_melems", "fq_melems")
CONTEXT = ("net_int8", "next_int8", "next_add", "prev_int8", "merged_pool", "merged_add", "fused_stem", "fused_se")
_KEY_COLUMNS = ("op", "act", "cin", "cout", "in_h", "kernel", "stride", "groups", "w_bits", "a_bits", "family", "br", "bc", "nn", "nm", "se")


@dataclass
class UnitBatch:
    """The units of ``n_networks`` networks: each unit's network, type, `WORK` row, `CONTEXT`
    flags and 64-bit key (equal keys: equal steps); ``res``: each network's input resolution;
    ``names`` / ``members`` (from named rows): the plan step each unit is and its IR layers."""

    net: np.ndarray
    type: np.ndarray
    W: np.ndarray
    context: np.ndarray
    key: np.ndarray
    res: np.ndarray
    n_networks: int
    names: list[str] | None = None
    members: list[list[str]] | None = None


def segment_sums(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Column sums of the row runs of ``values`` that begin at ``starts`` (sorted, first 0; each
    run ends where the next begins): one sparse product, several times faster than a
    `np.bincount` per column or `np.add.reduceat` along rows."""
    from scipy.sparse import csr_matrix

    n = values.shape[0]
    if starts.size == 0:
        return np.zeros((0, values.shape[1]))
    runs = csr_matrix((np.ones(n), np.arange(n), np.r_[starts, n]), shape=(starts.size, n))
    return np.asarray(runs @ values)


def _mix(h: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(33))
        h = h * np.uint64(0xFF51AFD7ED558CCD)
        return h ^ (h >> np.uint64(29))


def _row_keys(r: LayerRows) -> np.ndarray:
    """A 64-bit hash of each row's configuration (`_KEY_COLUMNS` and its sparsity)."""
    h = np.zeros(r.n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i, name in enumerate(_KEY_COLUMNS):
            h = _mix(h + np.asarray(getattr(r, name), dtype=np.int64).astype(np.uint64) * np.uint64(2 * i + 0x9E3779B97F4A7C15))
        h = _mix(h + np.round(r.sparsity * 1e6).astype(np.int64).astype(np.uint64))
    return h


def _row_work(r: LayerRows, int8: np.ndarray, lanes: int) -> np.ndarray:
    """`WORK` of each row (``calls`` and ``conversion_melems`` are set per unit)."""
    dwr = r.op == DW
    convr = r.op == CONV
    lin = (r.op == LINEAR) | r.se
    out_h = np.where(lin, 1, -(-r.in_h // np.maximum(r.stride, 1)))
    in_h = np.where(lin, 1, r.in_h)
    taps = r.kernel * r.kernel
    pixels = out_h * out_h
    macs = np.where(dwr, r.cout * taps * pixels, np.where(convr & ~r.se, r.cin * r.cout * taps * pixels, np.where(lin, r.cin * r.cout, 0)))
    macs = macs.astype(np.float64) / 1e6
    kept = macs * (1.0 - r.sparsity)
    weighted = np.isin(r.op, (CONV, DW, LINEAR))
    W = np.zeros((len(WORK), r.n)).T  # column-major: every assignment below fills one column
    rows = np.flatnonzero(weighted)
    W[rows, 1 + r.family[rows]] = kept[rows]
    W[rows, 1 + len(FAMILIES) + r.family[rows]] = macs[rows]
    pad = np.where(dwr, np.ceil(out_h / lanes) * lanes / np.maximum(out_h, 1),
                   np.where(lin, 1.0, np.ceil(pixels / lanes) * lanes / np.maximum(pixels, 1)))
    W[:, 13] = kept * pad
    W[:, 14] = (r.cout * pixels) / 1e6
    W[:, 15] = (r.cin * in_h * in_h) / 1e6
    w4 = int8 & (r.w_bits <= 4)
    W[:, 16] = np.where(pixels > 0, kept / np.maximum(pixels, 1), kept) * np.where(int8, np.where(w4, 0.5, 1.0), 4.0)
    W[:, 17] = kept * w4
    W[:, 18] = np.where((r.family == FAMILIES.index("block")) & (r.bc == 1) & (r.br >= 4), kept / np.maximum(r.br, 1), 0.0)
    W[:, 20] = W[:, 15] * (weighted & ~int8 & (r.a_bits <= 8))
    return W


def units(r: LayerRows, vector_width: int = 16, threads: int = 1, fuse_min_bytes: int | None = FUSE_MIN_BYTES) -> UnitBatch:
    """Group layer rows into the target's plan steps (see the module docstring)."""
    n = r.n
    weighted = np.isin(r.op, (CONV, DW, LINEAR))
    int8 = weighted & (r.w_bits <= 8) & (r.a_bits <= 8)
    net_int8 = np.bincount(r.net, weights=int8, minlength=r.n_networks) > 0
    row_int8net = net_int8[r.net]
    linear_like = (r.op == LINEAR) | r.se
    dense_big = (r.family == 0) & (r.cin * r.cout > BLAS_LINEAR_WEIGHTS)
    matvec = weighted & ~int8 & linear_like & dense_big & ((r.op == LINEAR) | row_int8net)
    idx = np.arange(n)
    same_next = np.zeros(n, dtype=bool)
    same_next[:-1] = r.net[1:] == r.net[:-1]
    same_prev = np.zeros(n, dtype=bool)
    same_prev[1:] = same_next[:-1]
    nxt = np.minimum(idx + 1, n - 1)
    prv = np.maximum(idx - 1, 0)
    op_prev = np.where(same_prev, r.op[prv], -1)
    one_by_one = (r.op == CONV) & (r.kernel == 1) & (r.groups == 1) & ~r.se
    group = idx.copy()
    fused = np.zeros(n, dtype=bool)  # the depthwise row of a fused group
    fused_stem = np.zeros(n, dtype=bool)
    fused_se = np.zeros(n, dtype=bool)
    if fuse_min_bytes is not None:
        dw = (r.op == DW) & ~row_int8net & same_next & (4 * r.cin * r.in_h * r.in_h >= fuse_min_bytes)
        nxt_1x1 = one_by_one[nxt] & same_next
        prv_1x1 = one_by_one[prv] & same_prev
        wide = r.in_h >= vector_width
        stem_case = dw & same_prev & (r.op[prv] == CONV) & (r.kernel[prv] == 3) & (r.groups[prv] == 1) & (r.stride[prv] == 2) \
            & (threads == 1) & (r.stride == 1) & nxt_1x1 & wide & ((r.in_h * r.in_h) % vector_width == 0) & (idx - _first_row(r) == 1)
        expand = prv_1x1 & wide
        with_project = nxt_1x1 & (-(-r.in_h // r.stride) >= vector_width)
        full = dw & ~stem_case & with_project
        se_only = dw & ~stem_case & ~with_project & expand
        for rows, lo, hi in ((stem_case, -1, 1), (full & expand, -1, 1), (full & ~expand, 0, 1), (se_only, -1, 0)):
            at = np.flatnonzero(rows)
            for d in range(lo, hi + 1):
                group[at + d] = at + lo
        at = np.flatnonzero(stem_case)  # the stem group also sums the residual after the project
        nxt2 = np.minimum(at + 2, n - 1)
        ok = (at + 2 < n) & (r.net[nxt2] == r.net[at]) & (r.op[nxt2] == ADD)
        group[at[ok] + 2] = at[ok] - 1
        fused, fused_stem, fused_se = stem_case | full | se_only, stem_case, se_only
    # pools summed by their producer: squeeze-excite pools after a depthwise layer (any precision),
    # and in integer networks any pool after an integer layer (one thread)
    pool = (r.op == POOL) & same_prev
    pool_fused = pool & ((op_prev == DW) | (row_int8net & int8[prv] & (threads == 1)))
    group[pool_fused] = group[prv][pool_fused]
    merged_pool = np.zeros(n, dtype=bool)
    merged_pool[group[pool_fused]] = True
    # integer project layers sum the residual in their epilogue
    add_fused = (r.op == ADD) & same_prev & row_int8net & int8[prv] & (op_prev == CONV) & ~r.se[prv]
    group[add_fused] = group[prv][add_fused]
    merged_add = np.zeros(n, dtype=bool)
    merged_add[group[add_fused]] = True
    is_head = group == idx
    heads = np.flatnonzero(is_head)
    n_units = heads.size
    uid = np.cumsum(is_head) - 1  # groups are contiguous runs of rows starting at their head
    # types
    kind = np.full(n, UNIT_TYPES.index("add"))
    kind[r.op == POOL] = UNIT_TYPES.index("pool")
    kind[r.op == MUL] = UNIT_TYPES.index("scale")
    conv1 = (r.op == CONV) & (r.kernel == 1) & ~r.se
    conv3 = (r.op == CONV) & (r.kernel == 3)
    for mask, name in ((conv1, "conv1x1"), (conv3, "conv3x3"), (r.op == DW, "dw"), (linear_like, "linear")):
        kind[mask & ~int8] = UNIT_TYPES.index(f"{name}_f32")
        kind[mask & int8] = UNIT_TYPES.index(f"{name}_i8")
    kind[matvec] = UNIT_TYPES.index("matvec_f32")
    main = heads.copy()
    unit_kind = kind[heads]
    f_rows = np.flatnonzero(fused)
    main[uid[f_rows]] = f_rows
    unit_kind[uid[f_rows]] = UNIT_TYPES.index("fused_f32")
    # work: summed over a unit's rows
    Wr = _row_work(r, int8, vector_width)
    W = segment_sums(Wr, heads)
    W[:, 0] = 1.0
    last = np.r_[heads[1:], n] - 1
    after = np.minimum(last + 1, n - 1)
    after_ok = (last + 1 < n) & (r.net[after] == r.net[heads])
    before_ok = (heads - 1 >= 0) & (r.net[np.maximum(heads - 1, 0)] == r.net[heads])
    ctx = np.column_stack([net_int8[r.net[heads]], after_ok & int8[after], after_ok & (r.op[after] == ADD),
                           before_ok & int8[np.maximum(heads - 1, 0)], merged_pool[heads], merged_add[heads], fused_stem[main], fused_se[main]])
    main_int8 = int8[main]
    out_el = Wr[np.where(fused[main], np.minimum(main + 1, n - 1), main), 14]  # a fused group's output is its project's
    # a float producer feeding an integer reader runs a quantize step; an integer producer read as float writes float too
    W[:, 19] = out_el * ((~main_int8 & ctx[:, 1]) | (main_int8 & (ctx[:, 2] | ~ctx[:, 1])))
    # keys: the rows' configurations, in order, and the context
    rk = _row_keys(r)
    pos = (idx - heads[uid]).astype(np.uint64)
    with np.errstate(over="ignore"):
        mixed = _mix(rk + pos * np.uint64(0xC2B2AE3D27D4EB4F))
        key = np.add.reduceat(mixed, heads) if n_units else np.zeros(0, dtype=np.uint64)
        flags = (ctx.astype(np.uint64) << np.arange(ctx.shape[1], dtype=np.uint64)).sum(1, dtype=np.uint64)
        key = _mix(key ^ (flags * np.uint64(0x165667B19E3779F9)) ^ np.uint64(vector_width))
    names = members = None
    if r.names is not None:
        names, members = [], [[] for _ in range(n_units)]
        for j, u in enumerate(uid.tolist()):
            members[u].append(r.names[j])
        names = [r.names[main[u]].rsplit(".", 1)[0] if fused[main[u]] else r.names[h] for u, h in enumerate(heads.tolist())]
    return UnitBatch(net=r.net[heads], type=unit_kind, W=W, context=ctx, key=key, res=r.res.astype(np.float64), n_networks=r.n_networks,
                     names=names, members=members)


def _first_row(r: LayerRows) -> np.ndarray:
    """Index of the first row of each row's network."""
    idx = np.arange(r.n)
    start = np.ones(r.n, dtype=bool)
    start[1:] = r.net[1:] != r.net[:-1]
    return np.maximum.accumulate(np.where(start, idx, 0)) if r.n else idx


__all__ = ["CONTEXT", "FAMILIES", "LayerRows", "UNIT_TYPES", "UnitBatch", "WORK", "rows_from_candidates", "rows_from_layers", "segment_sums", "units"]
