"""Benchmark: generated kernels of narrow layers (linear layers, and 1x1 convolutions on maps of
fewer pixels than a vector) whose pattern shares no rows: unstructured, gather-scatter, N:M,
block 1x4 -- the late stages, squeeze-excite layers and heads of a MobileNet.

A narrow kernel vectorises over output rows. These patterns used to lower to one row per block:
the integer kernel then ran the portable scalar loop, the float one a scalar multiply-add per
kept weight. Now both run blocks of rows over the columns any of them keeps
(`tritune.kernels.codegen.qplan.default_lowering`: 16 rows, int8;
`tritune.kernels.codegen.plan.lower`: 8 rows, float32, for N:M and for one-pixel layers). Per layer the previous lowering
("before", rebuilt here), the current one ("now") and the dense kernel of the same shape and
precision are timed side by side in the same interleaved rounds (two passes, each keeping its
faster); every output is checked against torch (int8: within one step of the fake-quantized
layer; float: relative error). Single thread.

    python benchmarks/narrow_kernels.py          # table to stdout, JSON to docs/results/narrow_kernels.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

#: (kind, in channels, out channels, map side); float narrow maps are at most a quarter vector (2x2).
SHAPES = (("linear", 480, 160, 1), ("linear", 240, 64, 1), ("conv1x1", 120, 360, 2), ("conv1x1", 640, 160, 3))
PATTERNS = (("unstructured", 0.75), ("unstructured", 0.9), ("gather_scatter", 0.9), ("nm2:8", 0.75), ("nm2:4", 0.5),
            ("block1x4", 0.75))
PRECISIONS = ("fp32", "int8", "int4")


def _weight(kind: str, cin: int, cout: int, seed: int) -> Any:
    import torch

    shape = (cout, cin) if kind == "linear" else (cout, cin, 1, 1)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) / cin ** 0.5


def _int_case(kind: str, cin: int, cout: int, hw: int, pattern: str, ratio: float, bits: int, seed: int, cache: Path) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from tritune.kernels.codegen import aligned_empty
    from tritune.kernels.codegen.qplan import default_lowering, qgeometry
    from tritune.kernels.codegen.qruntime import compile_qlayer
    from tritune.kernels.formats import quantize_packed
    from tritune.kernels.patterns import make_mask
    from tritune.kernels.quant import AffineQuant

    weight = _weight(kind, cin, cout, seed)
    bias = (torch.randn(cout, generator=torch.Generator().manual_seed(seed + 1)) * 0.1).numpy().astype(np.float32)
    in_q, out_q = AffineQuant(0.02, 0), AffineQuant(0.03, 0)
    in_hw = None if kind == "linear" else (hw, hw)
    xq = aligned_empty((cin,) if kind == "linear" else (cin, hw, hw), np.uint8)
    xq[...] = np.random.default_rng(seed).integers(0, 256, xq.shape)
    x = torch.from_numpy(in_q.dequantize(xq)).double()
    out: dict[str, Any] = {"runs": [], "checks": {}}
    spec_nm = pattern.startswith("nm") and int(pattern.split(":")[1]) <= 4
    before_rows = 16 if spec_nm else 1  # the previous default: N:M with m <= 4 already ran 16-row blocks
    for label, pat, r, rows in (("before", pattern, ratio, before_rows), ("now", pattern, ratio, 0), ("dense", "dense", 0.0, 0)):
        mask = make_mask(weight, pat, r) if r > 0 else torch.ones_like(weight, dtype=torch.bool)
        qw = quantize_packed(weight * mask, pat, mask, bits)
        geo = qgeometry(kind, tuple(qw.codes.shape), in_hw, 1)
        mode, n = default_lowering(qw, geo) if rows == 0 else ("quad", rows)
        k = compile_qlayer(qw, kind, in_hw, 1, bias, in_quant=in_q, act="relu", out_quant=out_q, tile={"nv": 1, "mode": mode, "rows": n},
                           cache_dir=cache)
        y = aligned_empty(k.out_shape, np.uint8)
        run = k.bind(xq, q=y)
        run()
        w = torch.from_numpy(qw.dequantize().reshape(weight.shape)).double()
        b = torch.from_numpy(bias).double()
        ref = F.relu(F.linear(x, w, b) if kind == "linear" else F.conv2d(x[None], w, b)[0]).numpy()
        out["checks"][label] = {"lowering": f"{mode} x{n}", "error": int(np.abs(y.astype(int) - out_q.quantize(ref).astype(int)).max())}
        out["runs"].append(run)
    return out


def _float_case(kind: str, cin: int, cout: int, hw: int, pattern: str, ratio: float, seed: int, cache: Path) -> dict[str, Any] | None:
    import torch
    import torch.nn.functional as F

    from tritune.kernels import pack
    from tritune.kernels.codegen import aligned_empty, compiler
    from tritune.kernels.codegen.plan import Bsr, Nm, _csr_to_bsr
    from tritune.kernels.codegen.runtime import default_variant, load, prepare
    from tritune.kernels.patterns import _spec, make_mask

    weight = _weight(kind, cin, cout, seed)
    bias = (torch.randn(cout, generator=torch.Generator().manual_seed(seed + 1)) * 0.1).numpy().astype(np.float32)
    in_hw = None if kind == "linear" else (hw, hw)
    xf = aligned_empty((cin,) if kind == "linear" else (cin, hw, hw))
    xf[...] = np.random.default_rng(seed).standard_normal(xf.shape, dtype=np.float32)
    out: dict[str, Any] = {"runs": [], "checks": {}}
    for label, pat, r in (("before", pattern, ratio), ("now", pattern, ratio), ("dense", "dense", 0.0)):
        mask = make_mask(weight, pat, r) if r > 0 else torch.ones_like(weight, dtype=torch.bool)
        packed = pack(weight * mask, pat, mask)
        build = prepare(packed, kind, in_hw, 1, bias, "relu")
        if build.geo.mode != "narrow":
            return None
        if label == "before":  # the previous lowering: one row per block
            a, spec = packed.arrays, _spec(pat)
            low = (Nm(spec.n, spec.m, a["values"], a["indices"]) if spec.family == "nm"
                   else _csr_to_bsr(a["indptr"], a["indices"], a["values"], cout) if spec.family in ("unstructured", "gather_scatter")
                   else Bsr(spec.rows, spec.cols, a["indptr"].astype(np.int32), a["indices"], a["values"], cout))
            build = replace(build, low=low)
        variant = default_variant(build.geo, build.low, build.vector_width)
        source = build.source([variant])
        k = load(build, compiler.compile_library(source, cache=cache, name=f"narrow-{label}"), variant, source)
        y = aligned_empty(k.out_shape)
        run = k.bind(xf, y)
        run()
        w = torch.from_numpy(packed.unpack().reshape(weight.shape))
        xt = torch.from_numpy(np.array(xf))
        ref = F.relu(F.linear(xt, w, torch.from_numpy(bias)) if kind == "linear" else F.conv2d(xt[None], w, torch.from_numpy(bias))[0]).numpy()
        out["checks"][label] = {"lowering": f"{type(build.low).__name__.lower()} r{getattr(build.low, 'r', 1)}",
                                "error": float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-9))}
        out["runs"].append(run)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--out", default="docs/results/narrow_kernels.json")
    args = ap.parse_args(argv)

    import torch
    from tqdm.auto import tqdm

    from tritune.kernels.timing import Protocol, measure_passes

    torch.set_num_threads(1)
    cache = Path(tempfile.mkdtemp(prefix="tritune-narrow-"))
    cases, prepared = [], []
    for shape in SHAPES:
        for pattern, ratio in PATTERNS:
            for precision in PRECISIONS:
                cases.append((shape, pattern, ratio, precision))
    kept = []
    for shape, pattern, ratio, precision in tqdm(cases, desc="compile", leave=False):
        case = (_float_case(*shape, pattern, ratio, args.seed, cache) if precision == "fp32"
                else _int_case(*shape, pattern, ratio, 8 if precision == "int8" else 4, args.seed, cache))
        if case is not None:
            kept.append((shape, pattern, ratio, precision))
            prepared.append(case)
    best = measure_passes([c["runs"] for c in prepared], Protocol(threads=1), args.passes,
                          [["before", "now", "dense"] for _ in prepared])
    rows = []
    for (shape, pattern, ratio, precision), case, ms in zip(kept, prepared, best):
        before, now, dense = (m.latency_ms for m in ms)
        rows.append({"kind": shape[0], "cin": shape[1], "cout": shape[2], "hw": shape[3], "pattern": pattern, "sparsity": ratio,
                     "precision": precision, "before_ms": before, "now_ms": now, "dense_ms": dense, "speedup": before / now,
                     "now_vs_dense": dense / now, "spread": max(m.spread for m in ms), "checks": case["checks"]})
    print("| layer | pattern | precision | lowering before → now | before ms | now ms | speedup | dense ms | now vs dense | error (int: steps) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        name = f"{r['kind']} {r['cin']}→{r['cout']}" + ("" if r["kind"] == "linear" else f" @{r['hw']}²")
        err = max(c["error"] for c in r["checks"].values())
        print(f"| {name} | {r['pattern']}@{r['sparsity']:g} | {r['precision']} | {r['checks']['before']['lowering']} → "
              f"{r['checks']['now']['lowering']} | {r['before_ms']:.4f} | {r['now_ms']:.4f} | {r['speedup']:.1f}x | {r['dense_ms']:.4f} | "
              f"{r['now_vs_dense']:.2f}x | {err:.2g} |")
    for precision in PRECISIONS:
        s = np.array([r["speedup"] for r in rows if r["precision"] == precision])
        v = np.array([r["now_vs_dense"] for r in rows if r["precision"] == precision])
        print(f"{precision}: speedup median {np.median(s):.1f}x (min {s.min():.1f}x, max {s.max():.1f}x); "
              f"now vs dense median {np.median(v):.2f}x (min {v.min():.2f}x)")
    doc = {"benchmark": "narrow_kernels", "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
           "protocol": {"threads": 1, "passes": args.passes}, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1, sort_keys=True, default=float) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
