"""Whole-model benchmark: a block-sparse mobilenet on `codegen-cpu` against its dense version on ONNX Runtime.

The largest architecture of the mobilenet space (width 1.2, depth 4, expand 6; depthwise kernel 7,
and the same with kernel 3) with
75% ``block8x1`` sparsity on every 1x1 convolution (squeeze-excite pairs included), at 224, 192 and 160 px, single thread. Timed in
one interleaved group (`tritune.kernels.timing`): the dense candidate on ``ort-cpu`` (the
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

``--int8``: the same largest architecture (depthwise kernel 3), w8a8 on every layer and 75 %
``block8x1`` on every 1x1 convolution, on the integer kernels (`tritune.targets.codegen_int8`),
at 224 and 160 px, timed in one interleaved group per resolution with: the dense fp32 candidate on
ORT, the dense w8a8 candidate on ORT (QDQ -> QLinearConv, `tritune.targets.ort_cpu`) and the
same sparse candidate in fp32 on ``codegen-cpu``. Goals (issue 21): >= 5x ORT fp32 dense and
>= 2.5x ORT int8 dense. Then the accuracy check: the largest architecture of the example job's
space (``search/examples/mobilenet_mnist.yaml``: 32 px, 1 channel, 10 classes) with the same
plan, its float weights trained on the example data set (``mnist5k-hard``, masks kept) for
``--train-steps``, quantized and calibrated on 256 training images; its fake-quantized torch
forward and the compiled integer network score the 1,000 test images. Goal: within 0.5 points.
Writes docs/results/codegen_model_int8.json.

    python benchmarks/codegen_model.py --int8 [--resolutions 224 160] [--train-steps 800]
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
from tritune.spaces.mobilenet.space import SLOTS, MobileNetSpace
from tritune.targets.codegen_cpu import CodegenCpuTarget
from tritune.kernels.timing import Protocol, measure_passes
from tritune.targets.ort_cpu import OrtCpuTarget

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results" / "codegen_model.json"
RESULTS_INT8 = RESULTS.with_name("codegen_model_int8.json")


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
        from tritune.spaces.mobilenet.network import build_subnet
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


def int8_plan(candidate, pattern: str, sparsity: float, bits: int = 8):
    """w{bits}a8 on every layer; ``pattern`` at ``sparsity`` on every 1x1 convolution (as `sparse_plan`)."""
    plan = [LayerCompression(pattern, sparsity, bits, 8) if role in ("conv", "project", "linear", "se") and k == 1
            else LayerCompression("dense", 0.0, bits, 8) for (name, role, k) in SLOTS]
    return candidate.replace(compression=plan)


def build_int8(resolution: int, pattern: str, sparsity: float) -> dict:
    """One resolution's four runnables (ORT fp32 dense first), the int8 one checked against its
    fake-quantized torch forward."""
    space = MobileNetSpace(resolutions=(resolution,), kernels=(3,))
    base = space.largest()
    ort, cg = OrtCpuTarget(threads=1), CodegenCpuTarget(threads=1, autotune=True)
    r_ortf = ort.build(dense_plan(base), space=space, name="ORT fp32 dense")
    r_orti = ort.build(int8_plan(base, "dense", 0.0), space=space, name="ORT int8 dense (QDQ)")
    r_cgf = cg.build(sparse_plan(base, pattern, sparsity), space=space, name=f"codegen fp32 {pattern}@{sparsity:g}")
    r_cgi = cg.build(int8_plan(base, pattern, sparsity), space=space, name=f"codegen w8a8 {pattern}@{sparsity:g}")
    x = r_cgi.example_input(1)
    with torch.no_grad():
        ref = r_cgi.net(torch.from_numpy(x)).numpy()
    err = float(np.abs(r_cgi.run(x) - ref).max() / np.abs(ref).max())
    return {"resolution": resolution, "runnables": [r_ortf, r_orti, r_cgf, r_cgi], "err": err, "int8": r_cgi}


def finish_int8(cfg: dict, ms: list) -> dict:
    ortf, orti = ms[0].latency_ms, ms[1].latency_ms
    rows = [{"model": m.name, "latency_ms": m.latency_ms, "median_ms": m.median_ms, "spread": m.spread, "cpu_share": m.cpu_share,
             "vs_ort_fp32": ortf / m.latency_ms, "vs_ort_int8": orti / m.latency_ms} for m in ms]
    prof = cfg["int8"].profile(repeats=10)
    by_kind: dict[str, float] = defaultdict(float)
    for p in prof:
        by_kind[f"{p['kind']} {'int8' if p['bits'] == 8 else 'fp32'}"] += p["ms"]
    return {"resolution": cfg["resolution"], "rel_error_vs_fake_quantized_torch": cfg["err"], "rows": rows,
            "breakdown_ms": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])), "top_ops": sorted(prof, key=lambda p: -p["ms"])[:10],
            "build_s": {m.name: r.build_s for m, r in zip(ms, cfg["runnables"]) if hasattr(r, "build_s")}}


def int8_accuracy(steps: int, pattern: str, sparsity: float, seed: int = 0) -> dict:
    """The example job's largest architecture with the int8 plan: float training on the example
    data (masks kept), post-training quantization, then top-1 of the fake-quantized torch forward
    and of the compiled integer network on the test split."""
    import time

    from tritune.evaluators.data import load_dataset
    from tritune.search.job import Job
    from tritune.spaces.mobilenet.network import build_subnet

    job = Job.from_yaml(Path(__file__).resolve().parent.parent / "search" / "examples" / "mobilenet_mnist.yaml", validate=False)
    space = job.build_space()
    data = load_dataset(next(e["dataset"] for e in job.evaluators if "dataset" in e))
    cand = space.validate(int8_plan(space.largest(), pattern, sparsity))
    res = int(cand["resolution"])
    torch.manual_seed(seed)
    net = build_subnet(space, cand, seed=seed).train()
    masks = {n: (p != 0) for n, p in net.named_parameters() if p.dim() > 1}
    for p in net.parameters():
        p.requires_grad_(True)
    xs, ys = data.train.tensors
    xs = torch.nn.functional.interpolate(xs, size=(res, res), mode="bilinear", align_corners=False) if xs.shape[-1] != res else xs
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(xs), (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(net(xs[idx]), ys[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for n, p in net.named_parameters():
                if n in masks:
                    p.mul_(masks[n])
    train_s = time.perf_counter() - t0
    net = net.eval().requires_grad_(False)
    xt, yt = data.test.tensors
    xt = torch.nn.functional.interpolate(xt, size=(res, res), mode="bilinear", align_corners=False) if xt.shape[-1] != res else xt
    runnable = CodegenCpuTarget(threads=1).build(net, input_shape=(1, *xt.shape[1:]), calibration=[xs[:256]], name="int8 example")
    with torch.no_grad():
        acc_float = float((net(xt).argmax(1) == yt).float().mean())
        fq = runnable.net(xt)
    compiled = np.concatenate([runnable.run(xt[i:i + 1].numpy()) for i in range(len(xt))])
    acc_fq = float((fq.argmax(1) == yt).float().mean())
    acc_c = float((torch.from_numpy(compiled).argmax(1) == yt).float().mean())
    agree = float((torch.from_numpy(compiled).argmax(1) == fq.argmax(1)).float().mean())
    return {"space": space.name, "candidate": cand.to_json(), "train_steps": steps, "train_s": train_s, "test_images": int(len(yt)),
            "accuracy_float": acc_float, "accuracy_fake_quantized_torch": acc_fq, "accuracy_compiled_int8": acc_c,
            "difference_points": 100 * (acc_c - acc_fq), "top1_agreement": agree,
            "max_rel_logit_error": float(np.abs(compiled - fq.numpy()).max() / np.abs(fq.numpy()).max()),
            "int8_ops": sum(op["bits"] == 8 for op in runnable.plan), "ops": len(runnable.plan)}


def main_int8(args) -> None:
    import os

    protocol = Protocol(threads=1)
    configs = [build_int8(r, args.pattern, args.sparsity) for r in args.resolutions]
    best = measure_passes([cfg["runnables"] for cfg in configs], protocol, args.passes)
    results = [finish_int8(cfg, ms) for cfg, ms in zip(configs, best)]
    load = os.getloadavg()
    print("| res | model | ms | spread | cpu share | vs ORT fp32 dense | vs ORT int8 dense |")
    print("|---|---|---|---|---|---|---|")
    for res in results:
        for row in res["rows"]:
            print(f"| {res['resolution']} | {row['model']} | {row['latency_ms']:.2f} | {row['spread']:.1%} | {row['cpu_share']:.2f} | "
                  f"{row['vs_ort_fp32']:.2f}x | {row['vs_ort_int8']:.2f}x |")
    print(f"\nload average (1, 5, 15 min) after timing: {', '.join(f'{v:.2f}' for v in load)}")
    for res in results:
        total = sum(res["breakdown_ms"].values())
        print(f"\nint8 model at {res['resolution']} px, inside whole inferences ({total:.2f} ms; rel. error vs its fake-quantized torch "
              f"forward {res['rel_error_vs_fake_quantized_torch']:.1e}): " + ", ".join(f"{k} {v:.2f} ms ({v / total:.0%})" for k, v in res["breakdown_ms"].items()))
    goals = {f"{r['resolution']} px >= 5x ORT fp32 dense": r["rows"][3]["vs_ort_fp32"] >= 5.0 for r in results}
    goals.update({f"{r['resolution']} px >= 2.5x ORT int8 dense": r["rows"][3]["vs_ort_int8"] >= 2.5 for r in results})
    accuracy = None
    if args.train_steps > 0:
        accuracy = int8_accuracy(args.train_steps, args.pattern, args.sparsity)
        goals["compiled int8 accuracy within 0.5 points of the fake-quantized torch forward"] = abs(accuracy["difference_points"]) <= 0.5
        print(f"\naccuracy on {accuracy['test_images']} test images after {accuracy['train_steps']} training steps: float "
              f"{100 * accuracy['accuracy_float']:.1f} %, fake-quantized torch {100 * accuracy['accuracy_fake_quantized_torch']:.1f} %, "
              f"compiled int8 {100 * accuracy['accuracy_compiled_int8']:.1f} % ({accuracy['difference_points']:+.1f} points; top-1 "
              f"agreement {100 * accuracy['top1_agreement']:.1f} %)")
    for goal, ok in goals.items():
        print(f"* {goal}: {'met' if ok else 'NOT met'}")
    out = Path(args.out) if args.out else RESULTS_INT8
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as fh:
        json.dump({"protocol": protocol.to_json(), "passes": args.passes, "load_avg": load, "results": results, "accuracy": accuracy,
                   "goals": goals}, fh, indent=1, default=str)
    print(f"\nwrote {os.path.relpath(out)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[224, 192, 160])
    parser.add_argument("--kernels", type=int, nargs="+", default=[7, 3], help="depthwise kernel of every block")
    parser.add_argument("--pattern", default="block8x1")
    parser.add_argument("--sparsity", type=float, default=0.75)
    parser.add_argument("--out", default=None, help=f"results JSON (default {RESULTS.name}; --int8: {RESULTS_INT8.name})")
    parser.add_argument("--int8", action="store_true", help="the w8a8 sparse model on the integer kernels (see the module docstring)")
    parser.add_argument("--train-steps", type=int, default=800, help="--int8: training steps of the accuracy check (0: skip it)")
    parser.add_argument("--passes", type=int, default=2, help="timing passes over all configurations; per model the fastest pass counts")
    args = parser.parse_args(argv)
    if args.passes < 1:
        parser.error(f"--passes: {args.passes} not allowed; allowed: an integer >= 1")
    if args.int8:
        if args.resolutions == [224, 192, 160]:
            args.resolutions = [224, 160]
        main_int8(args)
        return
    args.out = args.out or str(RESULTS)
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
