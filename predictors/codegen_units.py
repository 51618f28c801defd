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
`units` groups rows into units and returns one feature row per unit (`UNIT_FEATURES`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..spaces.compression import parse_pattern
from ..spaces.layers import ACTIVATIONS, OPS

FAMILIES = ("dense", "unstructured", "nm", "block", "kernel_pattern", "gather_scatter")
UNIT_TYPES = ("conv1x1_f32", "conv1x1_i8", "conv3x3_f32", "conv3x3_i8", "dw_f32", "dw_i8", "linear_f32", "linear_i8", "matvec_f32",
              "fused_f32", "add", "pool", "scale")
ROW_FEATURES = ("cin", "cout", "in_h", "out_h", "kernel", "stride", "int8", "w4", "fq_input", *[f"family_{f}" for f in FAMILIES],
                "block_rows", "block_cols", "nm_n", "nm_m", "sparsity", "act_none", "act_relu", "act_hswish", "act_hsigmoid",
                "log2_macs", "log2_kept_macs", "log2_in_elems", "log2_out_elems", "kept_mmacs", "in_melems", "out_melems", "matvec")
#: Per unit: the type, its main layer, the expand (or stem) and project layers of a fused group, context.
CONTEXT = ("net_int8", "next_int8", "next_add", "prev_int8", "merged_pool", "merged_add", "fused_stem", "fused_se", "resolution")
UNIT_FEATURES = (*[f"type_{t}" for t in UNIT_TYPES], *[f"main_{f}" for f in ROW_FEATURES], *[f"in_{f}" for f in ROW_FEATURES],
                 *[f"out_{f}" for f in ROW_FEATURES], *CONTEXT)
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
    a_bits), remembered by identity (objects kept alive, so an id is never reused)."""

    def __init__(self) -> None:
        self.by_id: dict[int, int] = {}
        self.keep: list[Any] = []
        self.table: list[tuple] = []

    def codes(self, comps: list) -> np.ndarray:
        get = self.by_id.get
        out = np.fromiter((get(id(c), -1) for c in comps), dtype=np.int64, count=len(comps))
        for i in np.flatnonzero(out < 0):
            c = comps[i]
            key = (*_compression_code(c.pattern, float(c.sparsity)), int(c.w_bits), int(c.a_bits))
            self.table.append(key)
            self.by_id[id(c)] = out[i] = len(self.table) - 1
            self.keep.append(c)
        return out

    def arrays(self) -> np.ndarray:
        return np.asarray(self.table, dtype=np.float64).reshape(-1, 8)


_CODES = _CompressionCodes()


def rows_from_candidates(space: Any, candidates: Sequence[Any]) -> LayerRows:
    """`LayerRows` of candidates of a mobilenet space without building `LayerSpec` objects: shapes
    from ``space.layer_codes``, each weight layer's plan slot from the depth genes (the IR lists
    the layers of the blocks that exist in slot order; squeeze-excite pairs take their block's SE
    slot), its compression from the candidate's plan."""
    from ..spaces.mobilenet import MAX_DEPTH, SLOT_INDEX, SLOTS, STAGES

    cands = list(candidates)
    lens, codes = space.layer_codes(cands)
    n = len(cands)
    net = np.repeat(np.arange(n), lens)
    op, act, cin, cout, in_h, kernel, stride, groups, w_bits = (codes[:, j] for j in range(9))
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
                     w_bits=np.where(weighted, w_bits, 32), a_bits=np.where(weighted, vals[:, 7], 32).astype(np.int64),
                     family=vals[:, 0].astype(np.int64), sparsity=vals[:, 1], br=vals[:, 2].astype(np.int64), bc=vals[:, 3].astype(np.int64),
                     nn=vals[:, 4].astype(np.int64), nm=vals[:, 5].astype(np.int64), se=se, res=res, n_networks=n)


# ----- units --------------------------------------------------------------------------------------
@dataclass
class UnitBatch:
    """The units of ``n_networks`` networks: the network of each, its type and feature row;
    ``names`` (from named rows): the plan step each unit is (an IR layer, or a block's prefix)."""

    net: np.ndarray
    type: np.ndarray
    X: np.ndarray
    n_networks: int
    names: list[str] | None = None
    members: list[list[str]] | None = None


def _row_features(r: LayerRows, int8: np.ndarray, matvec: np.ndarray) -> np.ndarray:
    out_h = np.where(r.op == LINEAR, 1, -(-r.in_h // np.maximum(r.stride, 1)))
    in_h = np.where(r.op == LINEAR, 1, r.in_h)
    taps = r.kernel * r.kernel
    macs = np.where(r.op == DW, r.cout * taps * out_h * out_h,
                    np.where(r.op == CONV, r.cin * r.cout * taps * out_h * out_h, np.where(r.op == LINEAR, r.cin * r.cout, 0)))
    macs = macs.astype(np.float64)
    kept = macs * (1.0 - r.sparsity)
    in_el = (r.cin * in_h * in_h).astype(np.float64)
    out_el = (r.cout * out_h * out_h).astype(np.float64)
    weighted = np.isin(r.op, (CONV, DW, LINEAR))
    fam = np.zeros((r.n, len(FAMILIES)))
    fam[np.arange(r.n), r.family] = weighted
    acts = np.stack([r.act == _ACT[a] for a in ("none", "relu", "hswish", "hsigmoid")], axis=1)
    return np.column_stack([
        r.cin, r.cout, in_h, out_h, r.kernel, r.stride, int8, int8 & (r.w_bits <= 4), weighted & ~int8 & (r.a_bits <= 8), fam,
        r.br, r.bc, r.nn, r.nm, r.sparsity, acts, np.log2(1 + macs), np.log2(1 + kept), np.log2(1 + in_el), np.log2(1 + out_el),
        kept / 1e6, in_el / 1e6, out_el / 1e6, matvec,
    ]).astype(np.float64)


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
    # neighbours within the network (the first / last row of a network has none)
    idx = np.arange(n)
    same_next = np.zeros(n, dtype=bool)
    same_next[:-1] = r.net[1:] == r.net[:-1]
    same_prev = np.zeros(n, dtype=bool)
    same_prev[1:] = same_next[:-1]
    nxt = np.minimum(idx + 1, n - 1)
    prv = np.maximum(idx - 1, 0)
    op_next = np.where(same_next, r.op[nxt], -1)
    op_prev = np.where(same_prev, r.op[prv], -1)
    one_by_one = (r.op == CONV) & (r.kernel == 1) & (r.groups == 1) & ~r.se
    # group id of each row: its own, unless merged into the step before it / fused
    group = idx.copy()
    fused = np.zeros(n, dtype=bool)  # row is the dw of a fused group
    fused_stem = np.zeros(n, dtype=bool)
    fused_se = np.zeros(n, dtype=bool)
    if fuse_min_bytes is not None:
        dw = (r.op == DW) & ~row_int8net & same_next & (4 * r.cin * r.in_h * r.in_h >= fuse_min_bytes)
        nxt_1x1 = one_by_one[nxt] & same_next
        prv_1x1 = one_by_one[prv] & same_prev
        wide = r.in_h >= vector_width
        stem_case = dw & same_prev & (r.op[prv] == CONV) & (r.kernel[prv] == 3) & (r.groups[prv] == 1) & (r.stride[prv] == 2) & (threads == 1) \
            & (r.stride == 1) & nxt_1x1 & wide & ((r.in_h * r.in_h) % vector_width == 0) & (idx - _first_row(r) == 1)
        expand = prv_1x1 & wide
        with_project = nxt_1x1 & (-(-r.in_h // r.stride) >= vector_width)
        full = dw & ~stem_case & with_project
        se_only = dw & ~stem_case & ~with_project & expand
        for rows, lo, hi in ((stem_case, -1, 1), (full & expand, -1, 1), (full & ~expand, 0, 1), (se_only, -1, 0)):
            at = np.flatnonzero(rows)
            for d in range(lo, hi + 1):
                group[at + d] = at + lo
        fused = stem_case | full | se_only
        fused_stem = stem_case
        fused_se = se_only
        # the stem group also sums the residual after the project
        at = np.flatnonzero(stem_case)
        nxt2 = np.minimum(at + 2, n - 1)
        ok = (at + 2 < n) & (r.net[nxt2] == r.net[at]) & (r.op[nxt2] == ADD)
        group[at[ok] + 2] = at[ok] - 1
    # pools summed by their producer: squeeze-excite pools after a depthwise layer (any precision),
    # and in integer networks any pool after an integer layer (one thread)
    pool = (r.op == POOL) & same_prev
    producer = group[prv]
    pool_fused = pool & ((op_prev == DW) | (row_int8net & int8[prv] & (threads == 1)))
    group[pool_fused] = producer[pool_fused]
    merged_pool = np.zeros(n, dtype=bool)
    merged_pool[group[pool_fused]] = True
    # integer project layers sum the residual in their epilogue
    add = (r.op == ADD) & same_prev
    add_fused = add & row_int8net & int8[prv] & (op_prev == CONV) & ~r.se[prv]
    group[add_fused] = group[prv][add_fused]
    merged_add = np.zeros(n, dtype=bool)
    merged_add[group[add_fused]] = True
    # one unit per group head
    heads = np.flatnonzero(group == idx)
    head_of = np.searchsorted(heads, group)
    F = _row_features(r, int8, matvec)
    nf = F.shape[1]
    kind = np.full(n, UNIT_TYPES.index("add"))
    kind[r.op == POOL] = UNIT_TYPES.index("pool")
    kind[r.op == MUL] = UNIT_TYPES.index("scale")
    conv1 = (r.op == CONV) & (r.kernel == 1) & ~r.se
    conv3 = (r.op == CONV) & (r.kernel == 3)
    for mask, name in ((conv1, "conv1x1"), (conv3, "conv3x3"), (r.op == DW, "dw"), (linear_like, "linear")):
        kind[mask & ~int8] = UNIT_TYPES.index(f"{name}_f32")
        kind[mask & int8] = UNIT_TYPES.index(f"{name}_i8")
    kind[matvec] = UNIT_TYPES.index("matvec_f32")
    # a fused group is costed as one step, described by its depthwise (main), expand or stem (in) and project (out) layers
    main = heads.copy()
    unit_kind = kind[heads]
    f_rows = np.flatnonzero(fused)
    f_unit = head_of[f_rows]
    main[f_unit] = f_rows
    unit_kind[f_unit] = UNIT_TYPES.index("fused_f32")
    X = np.zeros((heads.size, len(UNIT_TYPES) + 3 * nf + len(CONTEXT)))
    X[np.arange(heads.size), unit_kind] = 1.0
    X[:, len(UNIT_TYPES):len(UNIT_TYPES) + nf] = F[main]
    has_in = f_rows - 1 >= 0
    has_in &= group[np.maximum(f_rows - 1, 0)] == group[f_rows]
    X[f_unit[has_in], len(UNIT_TYPES) + nf:len(UNIT_TYPES) + 2 * nf] = F[f_rows[has_in] - 1]
    has_out = (f_rows + 1 < n) & (group[np.minimum(f_rows + 1, n - 1)] == group[f_rows]) & (r.op[np.minimum(f_rows + 1, n - 1)] == CONV)
    X[f_unit[has_out], len(UNIT_TYPES) + 2 * nf:len(UNIT_TYPES) + 3 * nf] = F[f_rows[has_out] + 1]
    last = np.r_[heads[1:], n] - 1  # the last row of each unit
    after = np.minimum(last + 1, n - 1)
    after_ok = (last + 1 < n) & (r.net[after] == r.net[heads])
    before_ok = (heads - 1 >= 0) & (r.net[np.maximum(heads - 1, 0)] == r.net[heads])
    ctx = np.column_stack([
        net_int8[r.net[heads]], after_ok & int8[after], after_ok & (r.op[after] == ADD), before_ok & int8[np.maximum(heads - 1, 0)],
        merged_pool[heads], merged_add[heads], fused_stem[main], fused_se[main], r.res[r.net[heads]],
    ])
    X[:, len(UNIT_TYPES) + 3 * nf:] = ctx
    names = members = None
    if r.names is not None:
        names, members = [], []
        by_group: dict[int, list[str]] = {}
        for j, g in enumerate(group.tolist()):
            by_group.setdefault(g, []).append(r.names[j])
        for u, h in enumerate(heads):
            members.append(by_group[int(h)])
            names.append(r.names[main[u]].rsplit(".", 1)[0] if fused[main[u]] else r.names[h])
    return UnitBatch(net=r.net[heads], type=unit_kind, X=X, n_networks=r.n_networks, names=names, members=members)


def _first_row(r: LayerRows) -> np.ndarray:
    """Index of the first row of each row's network."""
    starts = np.r_[0, np.flatnonzero(np.diff(r.net)) + 1]
    return starts[np.searchsorted(starts, np.arange(r.n), side="right") - 1]


__all__ = ["CONTEXT", "FAMILIES", "LayerRows", "ROW_FEATURES", "UNIT_FEATURES", "UNIT_TYPES", "UnitBatch", "rows_from_candidates",
           "rows_from_layers", "units"]
