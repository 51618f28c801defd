"""Which layers ONNX Runtime fuses, and into which kernels a layer IR runs (``FusionRules``, ``kernels``).

A layer-wise latency predictor is only as good as its idea of what the runtime executes. The
layer IR (`tritune.spaces.layers.LayerSpec`) lists convolutions, activations folded into them,
residual adds, squeeze-excite pieces and bit-widths; ONNX Runtime (ORT_ENABLE_ALL, CPU EP) runs
something else: fp32 convolutions in the blocked NCHWc layout with activations *and* residual
sums folded in, int8 ones as NHWC ``QLinearConv``, Q/DQ/Transpose/Reorder nodes wherever the
precision changes, float islands around activations that have no int8 kernel, and -- found by
looking, not assumed -- float convolutions sandwiched between int8 neighbours *promoted to
int8* (ORT's weight quantization of a ``DQ -> Conv -> Q`` pattern).

This module finds those rules **by measurement** (`detect_fusion_rules`):

* graph inspection -- tiny ONNX models are optimised by ORT itself, which writes the graph it
  will run (``SessionOptions.optimized_model_filepath``); whether ``Relu`` still exists as a node
  after ``Conv`` is a measurement of what the runtime runs (cheap: no timing);
* micro-benchmarks (optional, ``timing=True``) -- the same tiny models are timed with the
  target's protocol, and an op counts as folded when adding it to a conv costs less than
  ``fold_threshold`` of running it alone.

Both are recorded in `FusionRules` (JSON-able; stored inside every layer-wise predictor file,
with the evidence). `kernels(layers, rules)` then groups an IR into the `Kernel` list the target
runs, including boundary pseudo-kernels (``q_*``: fp32 -> int8, ``dq_*``: int8 -> fp32) and float
activation islands; `KernelBatch` does the same for many networks at once with numpy (what the
predictor uses: tens of thousands of networks per second), from `LayerSpec` lists or, skipping
those objects, from a space's integer code rows (`KernelBatch.from_codes`).

IR conventions relied upon (those of `tritune.spaces.mobilenet` and `tritune.spaces.vit`):
layers are in execution order and form a chain; ``linear``, ``layernorm``, ``matmul``,
``softmax`` and ``token_select`` work on ``in_h`` rows (tokens), an element-wise op on the rows
of its producer, every other op on ``in_h`` x ``in_h`` pixels; a squeeze-excite group is
``global_pool`` -> ``conv`` on a 1x1 input (x2) -> ``mul`` and hangs off the tensor before it; an
``add`` sums the chain with the input of its block, which is the output of the last ``add`` or
activation-free 1x1 ``conv`` (a linear bottleneck) before the block's project conv, else of the
network's first layer.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..spaces.layers import ACTIVATIONS, OPS, LayerSpec

# ----------------------------------------------------------------------------------------------
# Rules
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FusionRules:
    """What the runtime folds and how precision changes are paid for (JSON-able, see `to_json`).

    ``fp32_conv_acts``: activations that run inside an fp32 conv kernel. ``fp32_add_fused``: a
    residual add folds into the fp32 conv producing one of its inputs. ``bn_fused``: batch-norm
    folds into the conv. ``int8_conv_acts``: activations an int8 conv absorbs (into its output
    quantization). ``int8_float_acts``: activations without an int8 kernel (DQ -> act -> Q float
    island). ``int8_add`` / ``int8_pool``: an add / global pool between int8 tensors runs as an
    int8 kernel. ``promote_acts``: a float conv with one of these activations, between an int8
    producer and a sole int8 consumer, is run as int8 by the runtime. Transformer rules:
    ``gelu_fused``: a float GELU folds into the linear before it; ``skip_layernorm``: a residual
    add folds into the layer norm after it; ``attention_fused``: scores, softmax and context run
    as one attention kernel; ``int8_softmax``: a softmax between int8 matmuls runs in int8.
    ``channel_block``: fp32 channel blocking (latency steps). ``evidence``: how each rule was decided (graph nodes seen,
    micro-benchmark microseconds)."""

    source: str = "default"
    runtime: str = ""
    fp32_conv_acts: tuple[str, ...] = ("relu", "relu6", "hswish", "hsigmoid", "sigmoid")
    fp32_add_fused: bool = True
    bn_fused: bool = True
    int8_conv_acts: tuple[str, ...] = ("none", "relu")
    int8_float_acts: tuple[str, ...] = ("hswish", "hsigmoid", "gelu")
    int8_add: bool = True
    int8_pool: bool = True
    mul_fused: bool = False
    promote_acts: tuple[str, ...] = ("none", "relu")
    gelu_fused: bool = False
    skip_layernorm: bool = False
    attention_fused: bool = False
    int8_softmax: bool = True
    fp32_layout: str = "NCHWc"
    int8_layout: str = "NHWC"
    channel_block: int = 16
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        out["evidence"] = json.loads(json.dumps(dict(self.evidence), default=float))
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "FusionRules":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"FusionRules: unknown fields {unknown}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
        return cls(**kw)


#: The rules measured on onnxruntime 1.31 (CPU EP, ORT_ENABLE_ALL, AVX-512 host) by
#: `detect_fusion_rules`; used when a caller gives none.
DEFAULT_RULES = FusionRules(source="onnxruntime 1.31 CPU EP, graph inspection (built in)", runtime="onnxruntime 1.31")

# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------

#: Kernel types, in the order of a predictor's feature blocks. ``*_f32`` / ``*_i8``: precision.
#: stem: full k x k conv; pw: 1x1 conv; dw: depthwise; se: a squeeze-excite group (pool, two
#: tiny convs, scale); fc: linear; pool: global pool; add_fused: residual sum inside an fp32
#: conv; island: float activation after an int8 conv (DQ, act); q_conv / dq_conv: precision
#: change next to an fp32 NCHWc conv (Q/DQ + Transpose + Reorder); q_elt / dq_elt: next to an
#: element-wise op or island (Q/DQ only). Transformers: ln: layer norm (``ln_fused``: with the
#: residual add before it); mm: attention matmul (per head, on activations); softmax; attn: the
#: fused scores + softmax + context; gelu_f32: a GELU after a float linear; gelu_i8: the float
#: island of a GELU after an int8 linear; select: token selection.
KERNEL_TYPES = (
    "stem_f32", "stem_i8", "pw_f32", "pw_i8", "dw_f32", "dw_i8", "se_f32", "se_i8", "fc_f32", "fc_i8",
    "pool_f32", "pool_i8", "add_f32", "add_i8", "add_fused", "mul_f32", "island", "q_conv", "dq_conv", "q_elt", "dq_elt",
    "act_f32", "ln_f32", "ln_fused", "mm_f32", "mm_i8", "softmax_f32", "softmax_i8", "attn_f32", "gelu_f32", "gelu_i8",
    "select_f32",
)
TYPE_INDEX = {t: i for i, t in enumerate(KERNEL_TYPES)}
#: Per-kernel feature columns (`KernelBatch.features`).
KERNEL_FEATURES = ("calls", "macs", "macs_block", "in_elems", "out_elems", "weights", "misaligned_macs", "cin", "cout", "hw_out", "kernel", "stride")

_OPC = {op: i for i, op in enumerate(OPS)}
_ACT = {a: i for i, a in enumerate(ACTIVATIONS)}


@dataclass(frozen=True)
class Kernel:
    """One kernel the target runs: its type, the IR layers it covers and its features."""

    type: str
    layers: tuple[str, ...]
    int8: bool
    cin: int
    cout: int
    hw_out: int
    kernel: int
    stride: int
    macs: float
    weights: float
    elems_in: float
    elems_out: float


@dataclass
class KernelBatch:
    """The kernels of many networks as arrays: one row per kernel (see `KERNEL_FEATURES`)."""

    type: np.ndarray  # (k,) int64 index into KERNEL_TYPES
    owner: np.ndarray  # (k,) int64 network
    anchor: np.ndarray  # (k,) int64 execution order key: 2 x layer index (-1 boundary before it, +1 after)
    features: np.ndarray  # (k, len(KERNEL_FEATURES)) float64, column-major (what `summed` reads)
    n_networks: int
    layer_owner: np.ndarray  # (n_layers,) network of each layer
    layer_start: np.ndarray  # (n_networks,) first layer index of each network
    res: np.ndarray  # (n_networks,) input height of each network's first layer
    #: int8 / boundary layer flags per layer (`eff8`: layer runs int8 after promotion)
    eff8: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    covered: list | None = None  # per kernel, tuple of layer indices (only with names=True)

    @property
    def n_kernels(self) -> int:
        return int(self.type.size)

    def summed(self, columns: Sequence[int] = (0, 1, 2, 3, 4, 5, 6)) -> np.ndarray:
        """``(n_networks, n_types * len(columns))``: per network, per kernel type, the sums of the
        given feature columns (the design matrix of an additive model)."""
        nt, n = len(KERNEL_TYPES), self.n_networks
        cell = self.owner * nt + self.type
        out = np.empty((n, nt, len(columns)))
        for j, c in enumerate(columns):  # each (network, type) cell sums its kernels in kernel order
            out[:, :, j] = np.bincount(cell, weights=self.features[:, c], minlength=n * nt).reshape(n, nt)
        return out.reshape(n, nt * len(columns))

    def counts(self) -> np.ndarray:
        """``(n_networks, n_types)`` number of kernels of each type."""
        nt = len(KERNEL_TYPES)
        return np.bincount(self.owner * nt + self.type, minlength=self.n_networks * nt).reshape(self.n_networks, nt).astype(np.float64)

    @classmethod
    def from_networks(cls, networks: Iterable[Sequence[LayerSpec]], rules: FusionRules | None = None, names: bool = False) -> "KernelBatch":
        return _group(list(networks), rules or DEFAULT_RULES, names)

    @classmethod
    def from_codes(cls, lengths: Any, rows: Any, rules: FusionRules | None = None, names: bool = False) -> "KernelBatch":
        """Like `from_networks`, from code rows instead of `LayerSpec` objects (bit-identical result).

        ``lengths``: layers per network; ``rows``: int ``(sum(lengths), 9)``, one row per layer in
        execution order with the columns `CODE_COLUMNS` (op / act as indices into `OPS` /
        `ACTIVATIONS`) -- what a space's ``layer_codes`` returns without building the IR objects."""
        lens, rows_ = _check_rows(lengths, rows)
        return _group_rows(lens, rows_, rules or DEFAULT_RULES, names)


def _block(c: np.ndarray, b: int) -> np.ndarray:
    return np.ceil(c / b) * b


#: The `LayerSpec` fields a layer's code row holds, in column order (all the grouping reads);
#: ``op`` / ``act`` are indices into `OPS` / `ACTIVATIONS`.
CODE_COLUMNS = ("op", "act", "in_channels", "out_channels", "in_h", "kernel", "stride", "groups", "int_bits")

#: Distinct layer keys seen so far (`_KEY` tuple -> row of `_TABLE`); building arrays from Python
#: objects is the slow step, and a search meets the same few thousand layer shapes again and again.
_KEY = attrgetter(*CODE_COLUMNS)
_CODES: dict[tuple, int] = {}
_ROWS: list[tuple[int, ...]] = []
_TABLE = np.zeros((0, 9), dtype=np.int64)
_CACHE_LIMIT = 2_000_000


def _layer_codes(flat: list) -> tuple[np.ndarray, np.ndarray]:
    """Row of the distinct-layer table per layer, and the table ``(u, 9)``: op, act, cin, cout,
    h, kernel, stride, groups, int_bits (op / act as indices into `OPS` / `ACTIVATIONS`)."""
    global _TABLE
    keys = list(map(_KEY, flat))
    codes = list(map(_CODES.get, keys))
    if None in codes:
        if len(_CODES) > _CACHE_LIMIT:
            _CODES.clear()
            _ROWS.clear()
        for i, c in enumerate(codes):
            if c is None:
                key = keys[i]
                c = _CODES.get(key)
                if c is None:
                    c = _CODES[key] = len(_ROWS)
                    _ROWS.append((_OPC[key[0]], _ACT[key[1]]) + tuple(int(v) for v in key[2:]))
                codes[i] = c
        _TABLE = np.asarray(_ROWS, dtype=np.int64).reshape(-1, 9)
    return np.asarray(codes, dtype=np.int64), _TABLE


def _acts_in(act: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Whether each activation code is one of ``names`` (a table lookup: cheaper than `np.isin`)."""
    return np.array([a in names for a in ACTIVATIONS], dtype=bool)[act]


def _data8_at(ix: np.ndarray, base: np.ndarray, add8: np.ndarray, pool8: np.ndarray) -> np.ndarray:
    """Whether the tensor layer ``ix`` writes holds int8 data (-1: no layer, False)."""
    at = np.maximum(ix, 0)
    return (ix >= 0) & (base[at] | add8[at] | pool8[at])


def _group(nets: list, rules: FusionRules, names: bool) -> KernelBatch:
    """Group lists of `LayerSpec` (one per network): their code rows, then `_group_rows`."""
    lens = np.fromiter(map(len, nets), dtype=np.int64, count=len(nets))
    flat = list(chain.from_iterable(nets))
    if not flat:
        return _group_rows(lens, np.zeros((0, len(CODE_COLUMNS)), dtype=np.int64), rules, names)
    codes, table = _layer_codes(flat)
    return _group_rows(lens, table[codes], rules, names)


def _check_rows(lens: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Code rows as the grouping expects them: int64 ``(sum(lens), 9)``, lengths >= 0."""
    lens = np.asarray(lens)
    rows = np.asarray(rows)
    if lens.ndim != 1 or (lens.size and (lens.dtype.kind not in "iu" or lens.min() < 0)):
        raise ValueError("KernelBatch.from_codes lengths: expected a 1-d array of non-negative layer counts")
    if rows.ndim != 2 or rows.shape[1] != len(CODE_COLUMNS) or (rows.size and rows.dtype.kind not in "iu"):
        raise ValueError(f"KernelBatch.from_codes rows: expected an integer array (n_layers, {len(CODE_COLUMNS)}) "
                         f"with columns {', '.join(CODE_COLUMNS)}; got shape {rows.shape}")
    if int(lens.sum()) != rows.shape[0]:
        raise ValueError(f"KernelBatch.from_codes: lengths sum to {int(lens.sum())} but rows has {rows.shape[0]} layers")
    return lens.astype(np.int64, copy=False), rows.astype(np.int64, copy=False)


def _group_rows(lens: np.ndarray, rows_: np.ndarray, rules: FusionRules, names: bool) -> KernelBatch:
    """The kernels of networks given as code rows (``lens`` layers each, rows in execution order)."""
    n_net = int(lens.size)
    n = int(rows_.shape[0])
    if n == 0:
        z = np.zeros(0, dtype=np.int64)
        return KernelBatch(z, z, z, np.zeros((0, len(KERNEL_FEATURES))), n_net, z, np.zeros(n_net, dtype=np.int64), np.zeros(n_net))
    op, act, cin, cout, h, k, st, groups, wb = np.ascontiguousarray(rows_.T)  # contiguous columns: every op below reads them
    owner = np.repeat(np.arange(n_net), lens)
    start = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    idx = np.arange(n)
    first = np.zeros(n, dtype=bool)
    first[start[lens > 0]] = True

    O = _OPC
    is_conv, is_dw, is_lin = op == O["conv"], op == O["dwconv"], op == O["linear"]
    is_mm, is_ln, is_sm, is_sel = op == O["matmul"], op == O["layernorm"], op == O["softmax"], op == O["token_select"]
    seq = is_lin | is_mm | is_ln | is_sm | is_sel  # rows of tokens: in_h x 1
    W = is_conv | is_dw | is_lin
    nxt_op = np.append(op[1:], -1)
    nxt_h = np.append(h[1:], 0)
    same_next = np.append(owner[1:] == owner[:-1], False)
    se_pool = (op == O["global_pool"]) & same_next & (nxt_op == O["conv"]) & (nxt_h == 1)
    se_conv = is_conv & (h == 1)
    main = ~(se_pool | se_conv)
    h_out = np.where(op == O["global_pool"], 1, np.where(seq, h, (h + st - 1) // st))

    # previous / next main-chain layer in the same network (-1: none)
    mi = np.flatnonzero(main)
    prev = np.full(n, -1, dtype=np.int64)
    nxt = np.full(n, -1, dtype=np.int64)
    if mi.size:
        ok = owner[mi[1:]] == owner[mi[:-1]]
        prev[mi[1:][ok]] = mi[:-1][ok]
        nxt[mi[:-1][ok]] = mi[1:][ok]

    # element-wise ops on token rows (their producer's layout): in_h tokens, not in_h x in_h pixels
    elt = (op == O["add"]) | (op == O["mul"]) | (op == O["act"])
    seq = seq | (elt & (prev >= 0) & seq[np.maximum(prev, 0)])
    area_in = np.where(seq, h, h * h).astype(np.float64)
    area_out = np.where(seq, h_out, h_out * h_out).astype(np.float64)

    # residual source of every add: last block end before its project, else the first layer
    is_add = op == O["add"]
    act_none = act == _ACT["none"]
    end = main & (is_add | (is_conv & act_none & (k == 1))) | first
    last_end = np.maximum.accumulate(np.where(end, idx, -1))
    src = np.full(n, -1, dtype=np.int64)
    adds = np.flatnonzero(is_add & (prev >= 0))
    if adds.size:
        p = prev[adds]
        cand = np.where(p > 0, last_end[np.maximum(p - 1, 0)], -1)
        cand = np.where((cand >= 0) & (owner[np.maximum(cand, 0)] == owner[adds]), cand, start[owner[adds]])
        src[adds] = cand

    # precision: base int8 (int8 weights and inputs), then promotion of float convs sandwiched between int8 layers
    base8 = (W | is_mm) & (wb <= 8)
    absorb = _acts_in(act, rules.int8_conv_acts)
    out8 = base8 & absorb  # output tensor of a weight layer is int8 data
    promote = np.zeros(n, dtype=bool)
    if rules.promote_acts:
        pa = _acts_in(act, rules.promote_acts)
        has_p, has_n = prev >= 0, nxt >= 0
        p_ok = np.where(has_p, out8[np.maximum(prev, 0)], False)
        n_ok = np.where(has_n, base8[np.maximum(nxt, 0)], False)
        promote = main & (is_conv | is_dw) & ~base8 & pa & p_ok & n_ok
    eff8 = base8 | promote
    out8 = eff8 & absorb

    # domains of non-weight main ops (add, final pool): int8 when inputs are int8 data and the
    # consumer is int8; SE scale (mul) is float
    nxt8 = np.where(nxt >= 0, eff8[np.maximum(nxt, 0)], False)
    pool_main = main & (op == O["global_pool"])
    add8 = np.zeros(n, dtype=bool)
    pool8 = np.zeros(n, dtype=bool)
    # only adds / main pools can become int8: the propagation runs on those layers alone
    ia, ip = np.flatnonzero(is_add), np.flatnonzero(pool_main)
    # int8 data exists for a tensor when a Q node sits on it: an int8 conv wrote it, or an int8
    # consumer reads it (the quantizer put Q/DQ on that tensor); adds / pools add theirs below
    data8_base = out8 | (main & nxt8)
    add_can = rules.int8_add & nxt8[ia]
    pool_can = rules.int8_pool & nxt8[ip]
    for _ in range(16):  # adds fed by adds: propagate until stable (a stage has at most a few)
        new_add8 = add_can & _data8_at(prev[ia], data8_base, add8, pool8) & _data8_at(src[ia], data8_base, add8, pool8)
        new_pool8 = pool_can & _data8_at(prev[ip], data8_base, add8, pool8)
        if np.array_equal(new_add8, add8[ia]) and np.array_equal(new_pool8, pool8[ip]):
            break
        add8[ia], pool8[ip] = new_add8, new_pool8
    # int8-ness of the data each main layer consumes / produces
    # a softmax between int8 matmuls runs in int8
    sm8 = is_sm & rules.int8_softmax & np.where(prev >= 0, out8[np.maximum(prev, 0)], False) & nxt8
    dom_in = np.where(W | is_mm, eff8, add8 | pool8 | sm8)
    dom_out = np.where(W | is_mm, out8, add8 | pool8 | sm8)
    # promoted-through adds keep their int8 output for the next layers
    out8 = out8 | add8 | pool8 | sm8

    # fp32 add folded into the fp32 conv before it
    # (the NCHWc Sum fusion needs both inputs in the blocked layout: the residual must come from
    # an fp32 conv or an fp32 add that is itself fused)
    f32conv = W & ~eff8 & ~is_lin
    prev_f32conv = np.where(prev >= 0, f32conv[np.maximum(prev, 0)], False)
    add_fused = np.zeros(n, dtype=bool)
    if rules.fp32_add_fused:  # (on the adds alone, as above)
        fusable = ~add8[ia] & prev_f32conv[ia]
        s_ok, s_at = src[ia] >= 0, np.maximum(src[ia], 0)
        s_conv, s_nxt8 = f32conv[s_at], nxt8[s_at]
        for _ in range(16):
            new_fused = fusable & s_ok & (s_conv | add_fused[s_at]) & ~s_nxt8
            if np.array_equal(new_fused, add_fused[ia]):
                break
            add_fused[ia] = new_fused

    elems_in = cin * area_in
    elems_out = cout * area_out
    cpg = cin // np.maximum(groups, 1)
    dense = (cout * cpg * k * k).astype(np.float64)
    weights = np.where(is_mm, 0.0, dense)  # a matmul's second operand is an activation
    macs = np.where(W | is_mm, dense * area_out, elems_out)
    B = rules.channel_block
    bout = _block(cout, B)
    macs_block = np.where(is_dw, bout * k * k * area_out,
                          np.where(is_conv & (k > 1), bout * cpg * k * k * area_out,
                                   np.where(W | is_mm, _block(cin, B) * bout * k * k * area_out, bout * area_out)))
    misaligned = np.where(((cout | cin) & 3) != 0, macs, 0.0)  # a channel count off the 4-grid

    T = TYPE_INDEX
    ktype = np.full(n, -1, dtype=np.int64)
    p8 = eff8.astype(np.int64)
    ktype = np.where(main & is_conv & (k > 1), T["stem_f32"] + p8, ktype)
    ktype = np.where(main & is_conv & (k == 1), T["pw_f32"] + p8, ktype)
    ktype = np.where(is_dw, T["dw_f32"] + p8, ktype)
    ktype = np.where(is_lin, T["fc_f32"] + p8, ktype)
    ktype = np.where(pool_main, np.where(pool8, T["pool_i8"], T["pool_f32"]), ktype)
    ktype = np.where(is_add, np.where(add8, T["add_i8"], np.where(add_fused, T["add_fused"], T["add_f32"])), ktype)
    ktype = np.where(main & (op == O["mul"]), T["mul_f32"], ktype)
    ktype = np.where(main & (op == O["act"]), T["act_f32"], ktype)
    ktype = np.where(is_mm, T["mm_f32"] + p8, ktype)
    ktype = np.where(is_sm, np.where(sm8, T["softmax_i8"], T["softmax_f32"]), ktype)
    ktype = np.where(is_sel, T["select_f32"], ktype)
    ln_prev = np.where(prev >= 0, prev, 0)
    skip_ln = is_ln & rules.skip_layernorm & (prev >= 0) & is_add[ln_prev] & ~add8[ln_prev] & ~add_fused[ln_prev]
    ktype = np.where(is_ln, np.where(skip_ln, T["ln_fused"], T["ln_f32"]), ktype)
    ktype[ln_prev[skip_ln]] = -1  # the add runs inside the layer norm
    attn = np.zeros(n, dtype=bool)
    if rules.attention_fused:  # float scores -> softmax -> context as one kernel, placed at the softmax
        sm_prev, sm_next = np.maximum(prev, 0), np.maximum(nxt, 0)
        attn = is_sm & ~sm8 & (prev >= 0) & (nxt >= 0) & is_mm[sm_prev] & is_mm[sm_next] & ~eff8[sm_prev] & ~eff8[sm_next]
        ktype[sm_prev[attn]] = -1
        ktype[sm_next[attn]] = -1
        ktype[attn] = -1
    sel = np.flatnonzero(ktype >= 0)
    shape = np.array((cin, cout, h_out, k, st), dtype=np.float64)  # feature columns 7-11 of each layer

    parts_t, parts_o, parts_a, parts_f, parts_c = [], [], [], [], []

    def emit(ix: np.ndarray, types: np.ndarray, cols: tuple, cover: list | None, shift: int = 0) -> None:
        """Kernels at layers ``ix``; ``cols``: their feature columns 1-6 (macs, macs_block, in /
        out elements, weights, misaligned macs); column 0 is 1 and 7-11 the shape of layer ``ix``."""
        parts_t.append(types)
        parts_o.append(owner[ix])
        parts_a.append(2 * ix + shift)
        parts_f.append((ix, cols))
        if names:
            parts_c.extend(cover if cover is not None else [(int(i),) for i in ix])

    emit(sel, ktype[sel], (macs[sel], macs_block[sel], elems_in[sel], elems_out[sel], weights[sel], misaligned[sel]), None)

    # squeeze-excite groups: pool + reduce + expand + mul as one kernel, precision of its convs
    sp = np.flatnonzero(se_pool)
    if sp.size:
        red = sp + 1
        exp_ = sp + 2
        se8 = base8[red]
        c, hh = cin[sp].astype(np.float64), h[sp].astype(np.float64)
        w = weights[red] + weights[exp_]
        elems = c * hh * hh
        f = (elems + w, _block(c, B) * hh * hh + w, elems, elems, w, 0.0)
        emit(sp, np.where(se8, T["se_i8"], T["se_f32"]), f, [(int(i), int(i) + 1, int(i) + 2) for i in sp] if names else None)

    ai_ = np.flatnonzero(attn)
    if ai_.size:
        pa, na = prev[ai_], nxt[ai_]
        m = macs[pa] + macs[na]
        emit(ai_, np.full(ai_.size, T["attn_f32"]), (m, macs_block[pa] + macs_block[na], elems_in[pa], elems_out[na], 0.0, 0.0),
             [(int(p), int(i), int(q)) for p, i, q in zip(pa, ai_, na)] if names else None)

    # float activation islands after int8 convs / linears; a float GELU the linear does not absorb
    is_gelu = act == _ACT["gelu"]
    isl = np.flatnonzero(eff8 & _acts_in(act, rules.int8_float_acts))
    if isl.size:
        e = elems_out[isl]
        emit(isl, np.where(is_gelu[isl], T["gelu_i8"], T["island"]), (e, _block(cout[isl], B) * area_out[isl], e, e, 0.0, 0.0), None, 1)
    fg = np.flatnonzero(W & ~eff8 & is_gelu) if not rules.gelu_fused else np.zeros(0, dtype=np.int64)
    if fg.size:
        e = elems_out[fg]
        emit(fg, np.full(fg.size, T["gelu_f32"]), (e, _block(cout[fg], B) * area_out[fg], e, e, 0.0, 0.0), None, 1)

    # precision boundaries on the chain edges (producer -> consumer), residual edges, input, output

    def boundaries(prod: np.ndarray, cons: np.ndarray, prod_out8: np.ndarray, cons_in8: np.ndarray, elems: np.ndarray, c: np.ndarray, prod_conv: np.ndarray, cons_conv: np.ndarray, shift: int = -1) -> None:
        q = ~prod_out8 & cons_in8
        dq = prod_out8 & ~cons_in8
        for mask, conv_side, t_conv, t_elt in ((q, prod_conv | cons_conv, "q_conv", "q_elt"), (dq, cons_conv | prod_conv, "dq_conv", "dq_elt")):
            ix = np.flatnonzero(mask)
            if ix.size:
                e = elems[ix]
                types = np.where(conv_side[ix], T[t_conv], T[t_elt])
                emit(cons[ix], types, (e, _block(c[ix], B) * e / np.maximum(c[ix], 1), e, e, 0.0, 0.0), None, shift)

    def changes(prod: np.ndarray, cons: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The edges where precision changes (only they emit a boundary), in edge order."""
        po, ci = out8[prod], dom_in[cons]
        keep = po != ci
        return prod[keep], cons[keep], po[keep], ci[keep]

    # chain edges: consumer i with producer prev[i]; the producer's output int8-ness is out8
    ci = np.flatnonzero(main & (prev >= 0))
    pi, ci, po, cn = changes(prev[ci], ci)
    boundaries(pi, ci, po, cn, elems_out[pi], cout[pi], f32conv[pi], f32conv[ci])
    # residual edges
    ai = np.flatnonzero(src >= 0)
    si, ai, po, cn = changes(src[ai], ai)
    boundaries(si, ai, po, cn, elems_out[si], cout[si], f32conv[si], np.zeros(ai.size, dtype=bool))
    # network input (float) -> first layer; last layer -> network output (float)
    fi = start[lens > 0]
    boundaries(fi, fi, np.zeros(fi.size, dtype=bool), dom_in[fi], elems_in[fi], cin[fi], np.zeros(fi.size, dtype=bool), f32conv[fi])
    li = (start + lens - 1)[lens > 0]
    boundaries(li, li, dom_out[li] | out8[li], np.zeros(li.size, dtype=bool), elems_out[li], cout[li], f32conv[li], np.zeros(li.size, dtype=bool), 1)

    types = np.concatenate(parts_t).astype(np.int64)
    kowner = np.concatenate(parts_o).astype(np.int64)
    anchor = np.concatenate(parts_a).astype(np.int64)
    feats = _features(parts_f, shape).T  # (kernels, F), column-major: `summed` reads columns
    res = np.where(lens > 0, h[np.minimum(start, n - 1)], 0).astype(np.float64)
    return KernelBatch(types, kowner, anchor, feats, n_net, owner, start, res, eff8, parts_c if names else None)


def _features(parts: list[tuple[np.ndarray, tuple]], shape: np.ndarray) -> np.ndarray:
    """``(F, kernels)`` features of the emitted parts, written once into one buffer (contiguous rows)."""
    out = np.empty((len(KERNEL_FEATURES), sum(ix.size for ix, _ in parts)))
    out[0] = 1.0
    pos = 0
    for ix, cols in parts:
        part = out[:, pos:pos + ix.size]
        for j, col in enumerate(cols, 1):
            part[j] = col
        part[7:] = np.take(shape, ix, axis=1)  # (`shape[:, ix]` gathers through a slower, transposed path)
        pos += ix.size
    return out


def kernels(layers: Sequence[LayerSpec], rules: FusionRules | None = None) -> list[Kernel]:
    """The kernels the target runs for one network's IR, in execution order (see the module doc)."""
    layers = list(layers)
    batch = _group([layers], rules or DEFAULT_RULES, names=True)
    order = np.lexsort((np.arange(batch.n_kernels), batch.anchor))
    out = []
    for i in order:
        t = KERNEL_TYPES[batch.type[i]]
        f = batch.features[i]
        cover = tuple(layers[j].name for j in batch.covered[i])
        if t.startswith(("q_", "dq_")):
            cover = ()
        int8 = t.endswith("_i8") or t == "island" or (t.startswith("q_"))
        out.append(Kernel(t, cover, bool(int8), int(f[7]), int(f[8]), int(f[9]), int(f[10]), int(f[11]),
                          float(f[1]), float(f[5]), float(f[3]), float(f[4])))
    return out


# ----------------------------------------------------------------------------------------------
# Detection by measurement
# ----------------------------------------------------------------------------------------------


def optimized_graph(model: Any, threads: int = 1) -> list[dict[str, Any]]:
    """The nodes ORT will run for ``model`` (``ModelProto`` or bytes), after ORT_ENABLE_ALL:
    ``{"op", "domain", "name", "activation", "inputs"}`` per node, in graph order."""
    import onnx
    import onnxruntime as ort

    from ..targets.ort_cpu import session_options

    data = model if isinstance(model, (bytes, bytearray)) else model.SerializeToString()
    with tempfile.TemporaryDirectory(prefix="tritune-fusion-") as tmp:
        path = os.path.join(tmp, "opt.onnx")
        so = session_options(threads)
        so.optimized_model_filepath = path
        ort.InferenceSession(bytes(data), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(path)
    out = []
    for node in opt.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        act = attrs.get("activation")
        out.append({"op": node.op_type, "domain": node.domain, "name": node.name,
                    "activation": act.decode() if isinstance(act, bytes) else act, "inputs": len([i for i in node.input if i])})
    return out


def layer_precision(graph: Sequence[Mapping[str, Any]], layer_names: Sequence[str]) -> dict[str, str]:
    """``int8`` / ``fp32`` per IR layer with weights, read off an optimised graph (node names keep
    the module path ``/s0/b1/dw/...``; a layer runs int8 when a QLinearConv / QGemm carries it)."""
    out: dict[str, str] = {}
    wanted = {"/" + name.replace(".", "/") + "/": name for name in layer_names}
    for node in graph:
        if node["op"] not in ("Conv", "QLinearConv", "Gemm", "QGemm", "FusedConv", "FusedGemm", "MatMulIntegerToFloat"):
            continue
        nm = node["name"]
        for prefix, layer in wanted.items():
            if nm.startswith(prefix) and (nm[len(prefix):].startswith(("conv/", "linear/", "act/")) or "/" not in nm[len(prefix):]):
                out[layer] = "int8" if node["op"].startswith("Q") else "fp32"
    return out


def _micro_models() -> dict[str, tuple[Any, tuple[int, ...], list[str]]]:
    """Tiny torch models for fusion probes: name -> (module, input shape, layers to quantize)."""
    from torch import nn

    acts = {"relu": nn.ReLU, "hswish": nn.Hardswish, "hsigmoid": nn.Hardsigmoid}

    class Layer(nn.Module):
        def __init__(self, c: int, k: int, groups: int, bn: bool, act: str | None) -> None:
            super().__init__()
            self.conv = nn.Conv2d(c, c, k, 1, k // 2, groups=groups, bias=not bn)
            self.bn = nn.BatchNorm2d(c) if bn else None
            self.act = acts[act]() if act else None

        def forward(self, x):
            x = self.conv(x)
            if self.bn is not None:
                x = self.bn(x)
            return self.act(x) if self.act is not None else x

    class Net(nn.Module):
        """``pre`` (1x1 conv, so the probe layer's input is a produced tensor) -> ``probe`` (+ add) -> ``post``."""

        def __init__(self, c: int, k: int, groups: int, bn: bool, act: str | None, add: bool, only_act: bool = False, only_add: bool = False) -> None:
            super().__init__()
            self.pre = Layer(c, 1, 1, False, None)
            self.probe = Layer(c, k, groups, bn, act)
            self.post = Layer(c, 1, 1, False, None)  # the probe's output stays inside the graph, as in a network
            self.add, self.only_act, self.only_add = add, only_act, only_add
            self.act = acts[act]() if (only_act and act) else None

        def forward(self, x):
            x = self.pre(x)
            if self.only_act:
                return self.post(self.act(x) if self.act is not None else x)
            if self.only_add:
                return self.post(x + x * 0.5)
            y = self.probe(x)
            return self.post(y + x if self.add else y)

    c, hw = 64, 28
    shape = (1, c, hw, hw)
    out: dict[str, tuple[Any, tuple[int, ...], list[str]]] = {}
    for kind, k, g in (("pw", 1, 1), ("dw", 3, c)):
        out[f"{kind}"] = (Net(c, k, g, False, None, False), shape, [])
        out[f"{kind}+bn"] = (Net(c, k, g, True, None, False), shape, [])
        for a in ("relu", "hswish"):
            out[f"{kind}+bn+{a}"] = (Net(c, k, g, True, a, False), shape, [])
        out[f"{kind}+add"] = (Net(c, k, g, True, None, True), shape, [])
        for a in ("relu", "hswish"):
            out[f"{kind}+{a}:int8"] = (Net(c, k, g, True, a, False), shape, ["pre", "probe", "post"])
        out[f"{kind}+add:int8"] = (Net(c, k, g, True, None, True), shape, ["pre", "probe", "post"])
    out["pre"] = (Net(c, 1, 1, False, None, False, only_act=True), shape, [])
    for a in ("relu", "hswish"):
        out[f"{a}"] = (Net(c, 1, 1, False, a, False, only_act=True), shape, [])
    out["add"] = (Net(c, 1, 1, False, None, False, only_add=True), shape, [])
    # sandwich: int8 -> float dw (relu / hswish) -> int8
    class Sandwich(nn.Module):
        def __init__(self, act: str) -> None:
            super().__init__()
            self.a = Layer(c, 1, 1, False, "relu")
            self.b = Layer(c, 3, c, False, act)
            self.c = Layer(c, 1, 1, False, None)

        def forward(self, x):
            return self.c(self.b(self.a(x)))

    for a in ("relu", "hswish"):
        out[f"sandwich+{a}"] = (Sandwich(a), shape, ["a", "c"])
    return out


def _transformer_probes(target: Any) -> dict[str, Any]:
    """The smallest ``vit`` network built by ``target``, all float and all int8 (linears and attention)."""
    from ..spaces.candidate import Candidate
    from ..spaces.vit import ViTSpace

    space = ViTSpace(patch_sizes=(7,), embed_dims=(48,), depths=(1,), heads=(2,), mlp_ratios=(2,), keep_ratios=(1.0,))
    plain = space.dense(space.largest()).to_json()
    out = {}
    for name, bits in (("vit", 32), ("vit:int8", 8)):
        plan = [{"pattern": "dense", "sparsity": 0.0, "w_bits": bits, "a_bits": bits} for _ in plain["compression"]]
        arch = {**plain["arch"], "attn_bits": [bits] * len(plain["arch"]["attn_bits"])}
        out[name] = target.build(Candidate.from_json({**plain, "arch": arch, "compression": plan}), space)
    return out


def _count(graph: Sequence[Mapping[str, Any]], ops: Sequence[str]) -> int:
    return sum(1 for n in graph if n["op"] in ops)


def detect_fusion_rules(target: Any = None, timing: bool = False, protocol: Any = None, fold_threshold: float = 0.5) -> FusionRules:
    """Probe the target's runtime with tiny models and return the rules it follows.

    Graph inspection decides every rule (which nodes survive ORT's optimiser); with ``timing``
    the probes are also timed (``protocol``: default 3 rounds x 20 runs, 1 thread) and the
    microseconds are stored as evidence, with a timing verdict per fold (an op is folded when
    adding it to a conv costs less than ``fold_threshold`` x running it alone). Timing verdicts
    are recorded next to the graph ones; a disagreement is recorded, not hidden."""
    import onnxruntime as ort

    from ..kernels.timing import Protocol
    from ..targets.ort_cpu import OrtCpuTarget

    target = target or OrtCpuTarget(threads=1)
    models = _micro_models()
    graphs: dict[str, list[dict[str, Any]]] = {}
    runnables = {}
    for name, (module, shape, quant) in models.items():
        r = target.build(module.eval(), input_shape=shape, quantize=quant, name=name)
        graphs[name] = optimized_graph(r.onnx_bytes, threads=target.threads)
        runnables[name] = r
    for name, r in _transformer_probes(target).items():
        graphs[name] = optimized_graph(r.onnx_bytes, threads=target.threads)
        runnables[name] = r
    ev: dict[str, Any] = {"graphs": {name: [n["op"] + (f"[{n['activation']}]" if n["activation"] else "") + (f"/{n['inputs']}in" if n["op"] == "Conv" else "") for n in g]
                                     for name, g in graphs.items()}}

    def standalone(name: str, op: str) -> bool:
        return _count(graphs[name], (op,)) > 0

    fp32_acts = []
    for a, node_op in (("relu", "Relu"), ("hswish", "HardSwish")):
        pw, dw = f"pw+bn+{a}", f"dw+bn+{a}"
        if not standalone(pw, node_op) and not standalone(dw, node_op) and _count(graphs[pw], ("HardSigmoid", "Mul")) == 0:
            fp32_acts.append(a)
    if "hswish" in fp32_acts:
        fp32_acts += ["hsigmoid"]  # same fused-activation mechanism (NCHWc conv activation attribute)
    bn_fused = not any(standalone(f"{k}+bn", "BatchNormalization") for k in ("pw", "dw"))
    add_fused = not standalone("pw+add", "Add") and not standalone("pw+add", "Sum")
    int8_relu = _count(graphs["pw+relu:int8"], ("Relu",)) == 0 and _count(graphs["pw+relu:int8"], ("QLinearConv",)) >= 2
    int8_hs_float = _count(graphs["pw+hswish:int8"], ("HardSigmoid", "HardSwish")) > 0 and _count(graphs["pw+hswish:int8"], ("DequantizeLinear",)) > 0
    int8_add = _count(graphs["pw+add:int8"], ("QLinearAdd",)) > 0
    promote = []
    for a in ("relu", "hswish"):
        if _count(graphs[f"sandwich+{a}"], ("QLinearConv",)) >= 3:
            promote.append(a)
    if "relu" in promote:
        promote = ["none"] + promote
    vit, vit8 = graphs["vit"], graphs["vit:int8"]
    gelu_fused = _count(vit, ("Gelu", "Erf", "FastGelu")) == 0
    skip_ln = _count(vit, ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization")) > 0
    attention = _count(vit, ("Attention", "MultiHeadAttention")) > 0
    int8_softmax = _count(vit8, ("QLinearSoftmax",)) > 0
    int8_gelu_float = _count(vit8, ("Erf", "Gelu")) > 0
    ev["graph_verdicts"] = {"gelu_fused": gelu_fused, "skip_layernorm": skip_ln, "attention_fused": attention,
                            "int8_softmax": int8_softmax, "int8_gelu_float_island": int8_gelu_float,
                            "fp32_conv_acts": fp32_acts, "bn_fused": bn_fused, "fp32_add_fused": add_fused,
                            "int8_relu_absorbed": int8_relu, "int8_hswish_float_island": int8_hs_float, "int8_add": int8_add,
                            "promote_acts": promote}
    if timing:
        from ..kernels.timing import measure_many

        proto = protocol or Protocol(threads=target.threads, warmup=10, rounds=3, runs_per_round=20)
        names = list(runnables)
        ms = measure_many([runnables[n] for n in names], proto)
        us = {n: m.latency_ms * 1e3 for n, m in zip(names, ms)}
        ev["microseconds"] = us
        timing_v: dict[str, Any] = {}
        pre = us["pre"]
        # one unfused element-wise pass over the tensor: the "add" probe runs Mul + Add (+ the
        # reorders around them) outside any conv, so half of its extra time
        elt = max((us["add"] - pre) / 2, 1e-3)
        for kind in ("pw", "dw"):
            inc = us[f"{kind}+bn"] - us[kind]
            timing_v[f"{kind}+bn"] = {"increment_us": inc, "standalone_us": elt, "folded": inc < fold_threshold * elt}
            for a in ("relu", "hswish"):
                inc = us[f"{kind}+bn+{a}"] - us[f"{kind}+bn"]
                timing_v[f"{kind}+{a}"] = {"increment_us": inc, "standalone_us": elt, "folded": inc < fold_threshold * elt}
            inc = us[f"{kind}+add"] - us[f"{kind}+bn"]
            timing_v[f"{kind}+add"] = {"increment_us": inc, "standalone_us": elt, "folded": inc < fold_threshold * elt}
            for a in ("relu", "hswish"):
                timing_v[f"{kind}+{a}:int8"] = {"us": us[f"{kind}+{a}:int8"], "fp32_us": us[f"{kind}+bn+{a}"]}
            timing_v[f"{kind}+add:int8"] = {"us": us[f"{kind}+add:int8"], "fp32_us": us[f"{kind}+add"]}
        for a in ("relu", "hswish"):
            timing_v[f"sandwich+{a}"] = {"us": us[f"sandwich+{a}"]}
        ev["timing_verdicts"] = timing_v
    return FusionRules(
        source="measured: ORT optimised-graph inspection" + (" + micro-benchmarks" if timing else ""),
        runtime=f"onnxruntime {ort.__version__}",
        fp32_conv_acts=tuple(fp32_acts),
        fp32_add_fused=add_fused,
        bn_fused=bn_fused,
        int8_conv_acts=("none", "relu") if int8_relu else ("none",),
        int8_float_acts=(("hswish", "hsigmoid") if int8_hs_float else ()) + (("gelu",) if int8_gelu_float else ()),
        int8_add=int8_add,
        int8_pool=True,
        promote_acts=tuple(promote),
        gelu_fused=gelu_fused,
        skip_layernorm=skip_ln,
        attention_fused=attention,
        int8_softmax=int8_softmax,
        evidence=ev,
    )
