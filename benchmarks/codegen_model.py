"""Whole-model benchmark: a block-sparse mobilenet on `codegen-cpu` against its dense version on ONNX Runtime.

The largest architecture of the mobilenet space (width 1.2, depth 4, expand 6; depthwise kernel 7,
and the same with kernel 3) with
75% ``block8x1`` sparsity on every 1x1 convolution (squeeze-excite pairs included), at 224, 192 and 160 px, single thread. Timed in
one interleaved group (`tritune.targets.measure`): the dense candidate on ``ort-cpu`` (the
fastest dense library here), the dense candidate on ``codegen-cpu`` and the sparse one on
``codegen-cpu`` (with and without fused blocks, `tritune.kernels.codegen.fused`; and with its
squeeze-excite pairs left dense). All configurations are built first, then timed in ``--passes``
passes (default 2) one after the other; per model the faster pass counts (a slow phase of the
shared host that covers one configuration's ~10 s of timing rarely covers it twice), for ONNX
Runtime exactly as for codegen-cpu. Every codegen-cpu build autotunes its layers (``autotune=True``:
each layer's tilings timed, the fastest kept; side by side at 224 px it took the sparse network
from 7.09 to 6.85 ms). Goal (issue 4): sparse on codegen-cpu >= 2.5x faster than dense on ORT.
Also prints where the sparse model's time goes (each op timed inside whole inferences and alone, grouped by kind).

    python benchmarks/codegen_model.py [--resolutions 224 192 160] [--kernels 7 3] [--pattern block8x1] [--passes 2]

Writes docs/results/codegen_model.json.
"""
from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from tritune.spaces import LayerCompression
from tritune.spaces.mobilenet import SLOTS, MobileNetSpace
from tritune.targets.codegen_cpu import CodegenCpuTarget
from tritune.targets.measure import Protocol, measure_passes
from tritune.targets.ort_cpu import OrtCpuTarget

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results" / "codegen_model.json"


def sparse_plan(candidate, pattern: str, sparsity: float):
    """Every 1x1 convolution (expand / project / final_expand, the squeeze-excite pairs, and
    feature_mix: the 1x1 convolution after the pool in MobileNetV3) at ``pattern``; the rest
    dense (the classifier too)."""
    plan = [LayerCompression(pattern, sparsity) if role in ("conv", "project", "linear", "se") and k == 1 else LayerCompression()
            for (name, role, k) in SLOTS]
    return candidate.replace(compression=plan)


def dense_plan(candidate):
    return candidate.replace(compression=[LayerCompression() for _ in SLOTS])


def without_se(candidate):
    """The same plan with the squeeze-excite pairs dense (what the space could express before it
    had slots for them): how much of the speedup the SE pairs bring."""
    return candidate.replace(compression=[LayerCompression() if role == "se" else c for (_, role, _), c in zip(SLOTS, candidate.compression)])


def build(resolution: int, kernel: int, pattern: str, sparsity: float) -> dict:
    """One configuration's five runnables (ORT dense first), checked against torch."""
    space = MobileNetSpace(resolutions=(resolution,), kernels=(kernel,))
    base = space.largest()
    dense, sparse = dense_plan(base), sparse_plan(base, pattern, sparsity)
    ort, cg = OrtCpuTarget(threads=1), CodegenCpuTarget(threads=1, autotune=True)
    r_ort = ort.build(dense, space=space, name="ort dense")
    r_cgd = cg.build(dense, space=space, name="codegen dense")
    r_cgs = cg.build(sparse, space=space, name=f"codegen {pattern}@{sparsity:g}")
    r_cgu = CodegenCpuTarget(threads=1, autotune=True, fuse_min_bytes=None).build(sparse, space=space, name=f"codegen {pattern}@{sparsity:g}, no fused blocks")
    r_cge = cg.build(without_se(sparse), space=space, name=f"codegen {pattern}@{sparsity:g}, SE pairs dense")
    x = np.random.default_rng(0).standard_normal(r_cgs.input_shape, dtype=np.float32)
    with torch.no_grad():  # the sparse runnable must compute what torch computes
        from tritune.spaces.mobilenet_net import build_subnet
        ref = build_subnet(space, sparse).eval()(torch.from_numpy(x)).numpy()
    err = float(np.abs(r_cgs.run(x) - ref).max() / np.abs(ref).max())
    return {"resolution": resolution, "kernel": kernel, "pattern": pattern, "sparsity": sparsity, "sparse": sparse,
            "runnables": [r_ort, r_cgd, r_cge, r_cgu, r_cgs], "err": err, "cg": cg, "ort": ort}


def finish(cfg: dict, ms: list) -> dict:
    """A configuration's result from its measurements (``ms``: one per runnable, in order)."""
    resolution, kernel, pattern, sparsity, sparse = (cfg[k] for k in ("resolution", "kernel", "pattern", "sparsity", "sparse"))
    r_ort, r_cgd, _, _, r_cgs = cfg["runnables"]
    cg, ort, err = cfg["cg"], cfg["ort"], cfg["err"]
    base_ms = ms[0].latency_ms
    rows = [{"model": m.name, "latency_ms": m.latency_ms, "median_ms": m.median_ms, "spread": m.spread,
             "cpu_share": m.cpu_share, "speedup_vs_ort_dense": base_ms / m.latency_ms} for m in ms]
    prof = r_cgs.profile(repeats=10)
    by_kind: dict[str, float] = defaultdict(float)
    alone: dict[str, float] = defaultdict(float)
    for p in prof:
        key = p["kind"] if p["kind"] != "conv1x1" else f"conv1x1 {p['family']}"
        by_kind[key] += p["ms"]
        alone[key] += p["alone_ms"]
    total = sum(by_kind.values())
    return {
        "resolution": resolution, "kernel": kernel, "pattern": pattern, "sparsity": sparsity, "candidate": sparse.to_json(),
        "rel_error_vs_torch": err, "build_s": {"ort": r_ort.build_s, "codegen_dense": r_cgd.build_s, "codegen_sparse": r_cgs.build_s},
        "rows": rows, "breakdown_ms": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])), "breakdown_total_ms": total,
        "breakdown_alone_ms": dict(alone), "breakdown_alone_total_ms": sum(alone.values()),
        "top_ops": sorted(prof, key=lambda p: -p["ms"])[:10],
        "fingerprint": {"codegen": cg.fingerprint(), "ort": ort.fingerprint()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[224, 192, 160])
    parser.add_argument("--kernels", type=int, nargs="+", default=[7, 3], help="depthwise kernel of every block")
    parser.add_argument("--pattern", default="block8x1")
    parser.add_argument("--sparsity", type=float, default=0.75)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--passes", type=int, default=2, help="timing passes over all configurations; per model the fastest pass counts")
    args = parser.parse_args(argv)
    if args.passes < 1:
        parser.error(f"--passes: {args.passes} not allowed; allowed: an integer >= 1")
    protocol = Protocol(threads=1)
    configs = [build(r, k, args.pattern, args.sparsity) for k in args.kernels for r in args.resolutions]
    best = measure_passes([cfg["runnables"] for cfg in configs], protocol, args.passes)
    results = [finish(cfg, ms) for cfg, ms in zip(configs, best)]
    print("| res | dw kernel | model | ms (min of round medians) | spread | cpu share | speedup vs ORT dense |")
    print("|---|---|---|---|---|---|---|")
    for res in results:
        for row in res["rows"]:
            print(f"| {res['resolution']} | {res['kernel']} | {row['model']} | {row['latency_ms']:.2f} | {row['spread']:.1%} | "
                  f"{row['cpu_share']:.2f} | {row['speedup_vs_ort_dense']:.2f}x |")
    for res in results:
        total = res["breakdown_total_ms"]
        print(f"\nwhere the sparse model's time goes at {res['resolution']} px, dw k{res['kernel']} (timed inside whole inferences, "
              f"sum {total:.2f} ms; each op run alone: sum {res['breakdown_alone_total_ms']:.2f} ms; rel. error vs torch {res['rel_error_vs_torch']:.1e}):")
        print("| op kind | ms in the network | share | ms alone |")
        print("|---|---|---|---|")
        for kind, v in res["breakdown_ms"].items():
            print(f"| {kind} | {v:.2f} | {v / total:.0%} | {res['breakdown_alone_ms'][kind]:.2f} |")
        print("top ops: " + ", ".join(f"{p['name']} ({p['kind']}) {p['ms']:.2f} ms" for p in res["top_ops"][:6]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"protocol": protocol.to_json(), "passes": args.passes, "results": results}, fh, indent=1, default=str)
    print(f"\nwrote {os.path.relpath(args.out)}")


if __name__ == "__main__":
    main()
