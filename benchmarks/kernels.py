"""Generated sparse kernels against the best dense library, single thread, measured in the same run.

Usage::

    python benchmarks/kernels.py [--quick] [--out docs/results/kernels.json] [--cache DIR]

Layers (batch 1, bias fused, no activation), as in issue 4:

* 1x1 convolutions Cout x Cin = 128x128, 256x256, 512x512 at 14x14, 28x28, 56x56 pixels (HW 196 /
  784 / 3136): block4x1, block8x1, block16x1, unstructured at 50 / 75 / 90 % sparsity, nm2:4 (50 %);
* 3x3 convolutions (stride 1, padding 1) 64->64 at 28x28 and 56x56, 128->128 at 14x14:
  kernel_pattern (4-tap patterns; 55.6 % = patterns only, 77.8 % = plus 50 % connectivity, 90 %),
  the same with ``share=8`` (8 output channels share a pattern per input channel), block4x1 and
  block8x1 at 50 / 75 / 90 %;
* per shape, a dense kernel generated the same way (full 8x1 blocks), to show how much of a
  fraction of ideal is the generator's dense efficiency.

Every sparse layer is autotuned (`tritune.kernels.codegen.autotune`, a fresh cache unless
``--cache``: compile times are real), in ``--tunings`` passes over all layers (default 2): the
second times each layer's variants again with ``retune=True``, and each variant's lower time of
the two counts (a slow phase of the shared host during one tuning once ranked a layer's variants
wrongly; ``variant_by_tuning`` in the JSON shows each pass's pick). Then, per shape, the dense baselines -- PyTorch
(``torch.set_num_threads(1)``, ``nn.Conv2d``) and ONNX Runtime (1 intra-op thread,
ORT_ENABLE_ALL, a one-layer ONNX model built by `tritune.targets.ort_cpu.OrtCpuTarget`) -- and
all kernels of that shape are timed *interleaved* (`tritune.kernels.timing.measure_many`:
warm-up, rounds over all of them, so a slow phase of a shared machine hits every contender),
in ``--passes`` passes (default 2) over all shapes, one after the other: a slow phase of the
machine that lasts a whole shape's timing (seen: one shape's kernels 1.4x and its baseline 1.1x
slower for all of its rounds) is unlikely to cover the same shape in both passes. Per contender
the pass with the lower latency counts -- the protocol's own statistic over the rounds of both
passes -- for the baselines exactly as for the kernels.
Reported per kernel: its time (the protocol's latency: minimum over rounds of the round median,
which ignores rounds a busy shared machine slowed down), the median and p10-p90 over all timed
runs of that pass, the speedup over the faster dense baseline (same statistic; ``speedup_median`` in the JSON
uses medians), the ideal speedup 1/(1-s) for the sparsity actually reached, the fraction of ideal,
compile time and the chosen tiling.

Goals (issue 4): block patterns >= 0.9 of ideal from 50 %; unstructured >= 0.6 of ideal at
75-90 %; 3x3 kernel-pattern + 50 % connectivity >= 2x.

``--int8``: the integer kernels instead (`tritune.kernels.codegen.qruntime`), on the 1x1 shapes,
each layer with a fused ReLU writing uint8 codes (as an expand layer inside a network). Per
shape, timed interleaved with the same protocol and passes: ONNX Runtime fp32 (``Conv``), ONNX
Runtime int8 (``QLinearConv``, uint8 in / out, built by ``int8_baselines.py``), the generated fp32
kernels (dense, block8x1 at 75 %) and the generated integer kernels (dense w8, block8x1 / block4x1
/ block16x1 at 50-90 %, unstructured, N:M 2:4, 4-bit block8x1), every kernel autotuned and checked
against its reference (fp32: torch within 1e-4; int8: every code within one step of the
fake-quantized torch layer). Goals (issue 21): dense int8 >= 1.0x ORT int8; int8 block8x1 at 75 %
>= 3x ORT int8 dense and >= 1.7x the fp32 block8x1 kernel at 75 %. Writes
``docs/results/kernels_int8.json``.

    python benchmarks/kernels.py --int8 [--quick]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "docs" / "results" / "kernels.json"
OUT_INT8 = OUT.with_name("kernels_int8.json")
#: Integer cases of a 1x1 shape: (pattern, sparsity, weight bits).
INT8_CASES = [("dense", 0.0, 8), ("block8x1", 0.5, 8), ("block8x1", 0.75, 8), ("block8x1", 0.9, 8), ("block4x1", 0.75, 8),
              ("block16x1", 0.75, 8), ("unstructured", 0.75, 8), ("unstructured", 0.9, 8), ("nm2:4", 0.5, 8), ("block8x1", 0.75, 4)]
RATIOS = (0.5, 0.75, 0.9)
#: kernel_pattern ratios: 4 of 9 taps (5/9), + 50 % connectivity (1 - 0.5 * 4/9), ~90 %
KP_RATIOS = (5 / 9, 1 - 0.5 * 4 / 9, 0.9)


def shapes(quick: bool) -> list[dict[str, Any]]:
    if quick:
        return [{"kind": "conv1x1", "c": 256, "hw": 28}, {"kind": "conv3x3", "c": 64, "hw": 28}]
    out = [{"kind": "conv1x1", "c": c, "hw": hw} for c in (128, 256, 512) for hw in (14, 28, 56)]
    out += [{"kind": "conv3x3", "c": 64, "hw": 28}, {"kind": "conv3x3", "c": 64, "hw": 56}, {"kind": "conv3x3", "c": 128, "hw": 14}]
    return out


def cases(shape: dict[str, Any], quick: bool) -> list[tuple[str, dict, float]]:
    """(pattern, options, target sparsity) of one shape."""
    ratios = (0.75,) if quick else RATIOS
    if shape["kind"] == "conv1x1":
        out = [(p, {}, s) for s in ratios for p in ("block4x1", "block8x1", "block16x1", "unstructured")]
        out.append(("nm2:4", {}, 0.5))
    else:
        kp = (KP_RATIOS[1],) if quick else KP_RATIOS
        out = [("kernel_pattern", {}, s) for s in kp] + [("kernel_pattern", {"share": 8}, s) for s in kp]
        out += [(p, {}, s) for s in ratios for p in ("block4x1", "block8x1")]
    out.append(("dense", {}, 0.0))
    return out


def label(pattern: str, opts: dict) -> str:
    return pattern + "".join(f"+{k}{v}" for k, v in opts.items())


def prepare_shape(shape: dict[str, Any], quick: bool, cache: Path, seed: int) -> tuple[list, list[str], list[dict[str, Any]], list]:
    """Autotune every case of a shape and check it against torch: (bound runs -- the two dense
    baselines first --, their names, one row per case, one ``tune(retune)`` per case that tunes
    it again and returns its new run and row fields)."""
    import torch

    from tritune.kernels import pack
    from tritune.kernels.codegen import aligned_empty, autotune
    from tritune.kernels.patterns import achieved_sparsity, make_mask
    from dense_baselines import dense_baselines

    kind, c, hw = shape["kind"], shape["c"], shape["hw"]
    k = 1 if kind == "conv1x1" else 3
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(c, c, k, padding=k // 2).eval()
    weight, bias = conv.weight.detach(), conv.bias.detach()
    x = aligned_empty((c, hw, hw))
    x[...] = np.random.default_rng(seed).standard_normal(x.shape, dtype=np.float32)
    xt = torch.from_numpy(np.array(x))[None]
    runs, names = dense_baselines(conv, x)
    rows: list[dict[str, Any]] = []
    tuners = []
    for pattern, opts, ratio in cases(shape, quick):
        mask = make_mask(weight, pattern, ratio, **opts)
        packed = pack(weight * mask, pattern, mask, **opts)
        ref = torch.nn.functional.conv2d(xt, torch.from_numpy(packed.unpack()), bias, padding=k // 2)[0].numpy()

        def tune(retune: bool, packed: Any = packed, ref: np.ndarray = ref) -> tuple[Any, dict[str, Any]]:
            tuned = autotune(packed, kind, (hw, hw), 1, bias, "none", cache_dir=cache, retune=retune)
            out = aligned_empty(tuned.kernel.out_shape)
            run = tuned.kernel.bind(x, out)
            run()
            err = float(np.abs(out - ref).max() / np.abs(ref).max())
            return run, {"variant": tuned.variant.name, "compile_s": tuned.compile_s, "tune_s": tuned.tune_s,
                         "variant_timings_ms": tuned.timings_ms, "rel_err": err}

        run, fields = tune(False)
        runs.append(run)
        names.append(f"{label(pattern, opts)}@{ratio:.3f}")
        rows.append({"pattern": pattern, "options": opts, "target_sparsity": ratio, "sparsity": achieved_sparsity(mask),
                     **fields, "nbytes": packed.nbytes})
        tuners.append(tune)
    return runs, names, rows, tuners


def finish_shape(shape: dict[str, Any], rows: list[dict[str, Any]], ms: list[Any]) -> list[dict[str, Any]]:
    """Fill a shape's rows from its measurements (``ms``: baselines first, then one per row)."""
    kind, c, hw = shape["kind"], shape["c"], shape["hw"]
    dense = {m.name: m for m in ms[:2]}
    best_name = min(dense, key=lambda n: dense[n].latency_ms)
    best = dense[best_name].latency_ms
    best_median = min(d.median_ms for d in dense.values())
    for row, m in zip(rows, ms[2:]):
        ideal = 1.0 / (1.0 - row["sparsity"])
        speedup = best / m.latency_ms
        row.update({"kind": kind, "channels": c, "hw": hw, "latency_ms": m.latency_ms, "median_ms": m.median_ms,
                    "p10_ms": m.p10_ms, "p90_ms": m.p90_ms, "spread": m.spread, "cpu_share": m.cpu_share,
                    "speedup": speedup, "speedup_median": best_median / m.median_ms, "ideal": ideal,
                    "fraction_of_ideal": speedup / ideal})
    baselines = {n: {"median_ms": d.median_ms, "p10_ms": d.p10_ms, "p90_ms": d.p90_ms, "latency_ms": d.latency_ms,
                     "cpu_share": d.cpu_share} for n, d in dense.items()}
    for row in rows:
        row["baselines"] = baselines
        row["best_dense"] = best_name
    return rows


def goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The three goals of issue 4, evaluated on the rows."""
    block = [r for r in rows if r["pattern"].startswith("block") and r["target_sparsity"] >= 0.5]
    unstructured = [r for r in rows if r["pattern"] == "unstructured" and r["target_sparsity"] >= 0.75]
    kp = [r for r in rows if r["pattern"] == "kernel_pattern" and abs(r["target_sparsity"] - KP_RATIOS[1]) < 1e-6]

    def share(items: list[dict], ok) -> str:
        return f"{sum(bool(ok(r)) for r in items)}/{len(items)}"

    return {
        "block >= 0.9 of ideal (s >= 50%)": share(block, lambda r: r["fraction_of_ideal"] >= 0.9),
        "block 1x1 >= 0.9 of ideal": share([r for r in block if r["kind"] == "conv1x1"], lambda r: r["fraction_of_ideal"] >= 0.9),
        "block 3x3 >= 0.9 of ideal": share([r for r in block if r["kind"] == "conv3x3"], lambda r: r["fraction_of_ideal"] >= 0.9),
        "unstructured >= 0.6 of ideal (s 75-90%)": share(unstructured, lambda r: r["fraction_of_ideal"] >= 0.6),
        "kernel_pattern + 50% connectivity >= 2x (share=1)": share([r for r in kp if not r["options"]], lambda r: r["speedup"] >= 2),
        "kernel_pattern + 50% connectivity >= 2x (share=8)": share([r for r in kp if r["options"]], lambda r: r["speedup"] >= 2),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| layer | pattern | sparsity | ms | median [p10-p90] | torch ms | ORT ms | speedup | ideal | of ideal "
             "| compile s | variant |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        layer = f"{r['kind']} {r['channels']}x{r['channels']} @{r['hw']}x{r['hw']}"
        b = r["baselines"]
        lines.append(
            f"| {layer} | {label(r['pattern'], r['options'])} | {r['sparsity']:.3f} | {r['latency_ms']:.3f} | {r['median_ms']:.3f} "
            f"[{r['p10_ms']:.3f}-{r['p90_ms']:.3f}] | {b['torch']['latency_ms']:.3f} | {b['onnxruntime']['latency_ms']:.3f} | "
            f"{r['speedup']:.2f}x | {r['ideal']:.2f}x | {r['fraction_of_ideal']:.2f} | {r['compile_s']:.2f} | {r['variant']} |"
        )
    return "\n".join(lines)


def matrix(rows: list[dict[str, Any]], kind: str) -> str:
    """One line per shape, one column per (pattern, sparsity): speedup over the best dense
    baseline (fraction of ideal), the compact form of `table` used in docs/benchmarks.md."""
    picked = [r for r in rows if r["kind"] == kind and r["pattern"] != "dense"]
    columns = list(dict.fromkeys(f"{label(r['pattern'], r['options'])}@{100 * r['target_sparsity']:.0f}" for r in picked))
    by_shape: dict[tuple, dict[str, dict]] = {}
    for r in picked:
        key = (r["channels"], r["hw"])
        by_shape.setdefault(key, {})[f"{label(r['pattern'], r['options'])}@{100 * r['target_sparsity']:.0f}"] = r
    lines = ["| shape | best dense ms | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for (c, hw), cells in by_shape.items():
        best = min(v["latency_ms"] for v in next(iter(cells.values()))["baselines"].values())
        values = [f"{cells[col]['speedup']:.2f} ({cells[col]['fraction_of_ideal']:.2f})" if col in cells else "" for col in columns]
        lines.append(f"| {c}² @{hw}² | {best:.3f} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def prepare_int8_shape(shape: dict[str, Any], quick: bool, cache: Path, seed: int) -> tuple[list, list[str], list[dict[str, Any]]]:
    """Autotune and check one 1x1 shape's integer and float cases: (runs -- ORT fp32, ORT int8,
    codegen fp32 dense, codegen fp32 block8x1 at 75 %, then the integer cases --, names, rows)."""
    import torch
    import torch.nn.functional as F

    from tritune.kernels import pack
    from tritune.kernels.codegen import aligned_empty, autotune
    from tritune.kernels.codegen.qruntime import autotune_q
    from tritune.kernels.formats import quantize_packed
    from tritune.kernels.patterns import achieved_sparsity, make_mask
    from tritune.kernels.quant import AffineQuant
    from int8_baselines import ort_conv, ort_qlinearconv

    c, hw = shape["c"], shape["hw"]
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(c, c, 1, 1, generator=gen) / c ** 0.5
    bias = (torch.randn(c, generator=gen) * 0.1).numpy().astype(np.float32)
    in_q, out_q = AffineQuant(0.02, 0), AffineQuant(0.03, 0)  # post-ReLU tensors: zero point 0
    rng = np.random.default_rng(seed)
    xf = aligned_empty((c, hw, hw))
    xf[...] = rng.standard_normal(xf.shape, dtype=np.float32)
    xq = aligned_empty((c, hw, hw), np.uint8)
    xq[...] = rng.integers(0, 256, xq.shape)
    dense_q = quantize_packed(weight, "dense", torch.ones_like(weight, dtype=torch.bool), 8)
    runs = [ort_conv(weight.numpy(), bias, (hw, hw)), ort_qlinearconv(dense_q, bias, in_q, out_q, (hw, hw))]
    names = ["ORT fp32", "ORT int8"]
    rows: list[dict[str, Any]] = []
    for pattern in ("dense", "block8x1"):  # the float kernels the integer ones are compared with
        ratio = 0.0 if pattern == "dense" else 0.75
        mask = make_mask(weight, pattern, ratio)
        packed = pack(weight * mask, pattern, mask)
        tuned = autotune(packed, "conv1x1", (hw, hw), 1, bias, "relu", cache_dir=cache)
        out = aligned_empty(tuned.kernel.out_shape)
        run = tuned.kernel.bind(xf, out)
        run()
        ref = F.relu(F.conv2d(torch.from_numpy(np.array(xf))[None], torch.from_numpy(packed.unpack()), torch.from_numpy(bias)))[0].numpy()
        runs.append(run)
        names.append(f"fp32 {pattern}@{ratio:g}")
        rows.append({"precision": "fp32", "pattern": pattern, "target_sparsity": ratio, "bits": 32, "sparsity": achieved_sparsity(mask),
                     "variant": tuned.variant.name, "rel_err": float(np.abs(out - ref).max() / np.abs(ref).max())})
    cases = [case for case in INT8_CASES if not quick or case[1] in (0.0, 0.75)]
    for pattern, ratio, bits in cases:
        mask = make_mask(weight, pattern, ratio)
        qw = quantize_packed(weight * mask, pattern, mask, bits)
        tuned = autotune_q(qw, "conv1x1", (hw, hw), 1, bias, in_quant=in_q, act="relu", out_quant=out_q, cache_dir=cache)
        out = aligned_empty(tuned.kernel.out_shape, np.uint8)
        run = tuned.kernel.bind(xq, q=out)
        run()
        ref = F.relu(F.conv2d(torch.from_numpy(in_q.dequantize(xq))[None].double(), torch.from_numpy(qw.dequantize()).double(),
                              torch.from_numpy(bias).double()))[0].numpy()
        steps = int(np.abs(out.astype(int) - out_q.quantize(ref).astype(int)).max())
        runs.append(run)
        names.append(f"int{bits} {pattern}@{ratio:g}")
        rows.append({"precision": "int8", "pattern": pattern, "target_sparsity": ratio, "bits": bits, "sparsity": achieved_sparsity(mask),
                     "variant": tuned.variant, "variant_timings_ms": tuned.timings_ms, "max_step_error": steps,
                     "compile_s": tuned.compile_s, "nbytes": qw.nbytes})
    return runs, names, rows


def finish_int8_shape(shape: dict[str, Any], rows: list[dict[str, Any]], ms: list[Any]) -> list[dict[str, Any]]:
    """Each row's latency and its ratios to ORT fp32 / ORT int8 / the fp32 kernel of the same pattern."""
    ort_f, ort_i = ms[0].latency_ms, ms[1].latency_ms
    fp32 = {(r["pattern"], r["target_sparsity"]): m.latency_ms for r, m in zip(rows, ms[2:]) if r["precision"] == "fp32"}
    for row, m in zip(rows, ms[2:]):
        row.update({"channels": shape["c"], "hw": shape["hw"], "latency_ms": m.latency_ms, "median_ms": m.median_ms, "spread": m.spread,
                    "cpu_share": m.cpu_share, "ort_fp32_ms": ort_f, "ort_int8_ms": ort_i, "vs_ort_fp32": ort_f / m.latency_ms,
                    "vs_ort_int8": ort_i / m.latency_ms})
        same = fp32.get((row["pattern"], row["target_sparsity"]))
        if row["precision"] == "int8" and same is not None:
            row["vs_fp32_kernel"] = same / m.latency_ms
    return rows


def int8_goals(rows: list[dict[str, Any]]) -> dict[str, str]:
    dense = [r for r in rows if r["precision"] == "int8" and r["pattern"] == "dense"]
    b8 = [r for r in rows if r["precision"] == "int8" and r["pattern"] == "block8x1" and r["target_sparsity"] == 0.75 and r["bits"] == 8]
    share = lambda items, ok: f"{sum(bool(ok(r)) for r in items)}/{len(items)}"  # noqa: E731
    return {"dense int8 >= 1.0x ORT int8": share(dense, lambda r: r["vs_ort_int8"] >= 1.0),
            "int8 block8x1@75 >= 3x ORT int8 dense": share(b8, lambda r: r["vs_ort_int8"] >= 3.0),
            "int8 block8x1@75 >= 1.7x fp32 block8x1@75": share(b8, lambda r: r.get("vs_fp32_kernel", 0) >= 1.7),
            "every int8 output within one step of torch": share([r for r in rows if r["precision"] == "int8"], lambda r: r["max_step_error"] <= 1)}


def int8_table(rows: list[dict[str, Any]]) -> str:
    """One line per shape: ORT baselines, the fp32 kernels, and each integer case's ms (x vs ORT int8)."""
    cases = list(dict.fromkeys(f"int{r['bits']} {r['pattern']}@{100 * r['target_sparsity']:.0f}" for r in rows if r["precision"] == "int8"))
    head = ["shape", "ORT fp32 ms", "ORT int8 ms", "fp32 dense ms", "fp32 block8x1@75 ms"] + cases
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    by_shape: dict[tuple, list] = {}
    for r in rows:
        by_shape.setdefault((r["channels"], r["hw"]), []).append(r)
    for (c, hw), items in by_shape.items():
        f = {r["pattern"]: r for r in items if r["precision"] == "fp32"}
        q = {f"int{r['bits']} {r['pattern']}@{100 * r['target_sparsity']:.0f}": r for r in items if r["precision"] == "int8"}
        cells = [f"{c}² @{hw}²", f"{items[0]['ort_fp32_ms']:.3f}", f"{items[0]['ort_int8_ms']:.3f}", f"{f['dense']['latency_ms']:.3f}",
                 f"{f['block8x1']['latency_ms']:.3f}"]
        cells += [f"{q[k]['latency_ms']:.3f} ({q[k]['vs_ort_int8']:.2f}x)" if k in q else "" for k in cases]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main_int8(args: argparse.Namespace, protocol: Any, cache: Path) -> dict[str, Any]:
    from tritune.kernels.timing import measure_passes

    prepared = []
    for shape in [s for s in shapes(args.quick) if s["kind"] == "conv1x1"]:
        t = time.perf_counter()
        prepared.append((shape, *prepare_int8_shape(shape, args.quick, cache, args.seed)))
        print(f"conv1x1 {shape['c']}x{shape['c']} @{shape['hw']}x{shape['hw']}: tuned in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    best = measure_passes([runs for _, runs, _, _ in prepared], protocol, args.passes, [names for _, _, names, _ in prepared])
    rows = []
    for (shape, _, _, shape_rows), ms in zip(prepared, best):
        rows += finish_int8_shape(shape, shape_rows, ms)
    return {"benchmark": "kernels_int8", "goals": int8_goals(rows), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="two shapes, 75 %% only, fewer timing rounds")
    ap.add_argument("--out", type=Path, default=None, help=f"results JSON (default {OUT}; --quick: not written unless given)")
    ap.add_argument("--cache", type=Path, default=None, help="kernel cache directory (default: a fresh temporary one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--passes", type=int, default=2, help="timing passes over all shapes; per contender the fastest pass counts")
    ap.add_argument("--tunings", type=int, default=2, help="autotuning passes over all layers; per variant the fastest tuning counts")
    ap.add_argument("--int8", action="store_true", help="the integer kernels against ONNX Runtime int8 and the fp32 kernels (1x1 shapes)")
    args = ap.parse_args(argv)
    for name in ("passes", "tunings"):
        if getattr(args, name) < 1:
            ap.error(f"--{name}: {getattr(args, name)} not allowed; allowed: an integer >= 1")

    import onnxruntime
    import torch

    from tritune.kernels.codegen import compiler_available, find_compiler, vector_width
    from tritune.kernels.timing import Protocol, measure_passes
    from tritune.targets.ort_cpu import cpu_fingerprint

    if not compiler_available():
        print("no working C compiler: nothing to benchmark", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    if args.quick:
        protocol = Protocol(threads=1, warmup=3, rounds=3, runs_per_round=5)
    else:
        protocol = Protocol(threads=1, warmup=10, rounds=7, runs_per_round=10)
    tmp = None
    if args.cache is None:
        tmp = tempfile.TemporaryDirectory(prefix="tritune-kernels-")
        cache = Path(tmp.name)
    else:
        cache = args.cache
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    if args.int8:
        import os

        try:
            result = main_int8(args, protocol, cache)
        finally:
            if tmp is not None:
                tmp.cleanup()
        comp = find_compiler()
        result.update({"quick": args.quick, "load_avg": os.getloadavg(), "seconds": time.perf_counter() - t0, "passes": args.passes,
                       "protocol": protocol.to_json(),
                       "machine": {"cpu": cpu_fingerprint(), "python": platform.python_version(), "torch": torch.__version__,
                                   "onnxruntime": onnxruntime.__version__, "compiler": comp.version, "vector_width": vector_width()}})
        print(int8_table(result["rows"]))
        print(f"\nload average (1, 5, 15 min) at the end: {', '.join(f'{v:.2f}' for v in result['load_avg'])}")
        for goal, value in result["goals"].items():
            print(f"* {goal}: {value}")
        out = args.out if args.out is not None else (None if args.quick else OUT_INT8)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1, default=float) + "\n")
            print(f"\nwrote {out}", file=sys.stderr)
        return 0
    try:
        prepared = []
        for shape in shapes(args.quick):
            t = time.perf_counter()
            prepared.append((shape, *prepare_shape(shape, args.quick, cache, args.seed)))
            print(f"{shape['kind']} {shape['c']}x{shape['c']} @{shape['hw']}x{shape['hw']}: tuned in {time.perf_counter() - t:.1f} s",
                  file=sys.stderr, flush=True)
        for n in range(1, args.tunings):  # tune every layer again, now that time has passed: each variant's lower time counts
            t = time.perf_counter()
            for _, runs, _, shape_rows, tuners in prepared:
                for i, (row, tune) in enumerate(zip(shape_rows, tuners)):
                    runs[2 + i], fields = tune(True)
                    row.setdefault("variant_by_tuning", [row["variant"]]).append(fields["variant"])
                    row["tune_s"] += fields.pop("tune_s")
                    fields.pop("compile_s")  # the library is cached: the first tuning compiled it
                    row.update(fields)
            print(f"tuning {n + 1}/{args.tunings}: {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
        t = time.perf_counter()
        best = measure_passes([runs for _, runs, _, _, _ in prepared], protocol, args.passes, [names for _, _, names, _, _ in prepared])
        print(f"timing, {args.passes} passes: {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
        for (shape, _, _, shape_rows, _), ms in zip(prepared, best):
            rows += finish_shape(shape, shape_rows, ms)
    finally:
        if tmp is not None:
            tmp.cleanup()
    comp = find_compiler()
    result = {
        "benchmark": "kernels",
        "quick": args.quick,
        "machine": {"cpu": cpu_fingerprint(), "python": platform.python_version(), "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__, "compiler": comp.version, "vector_width": vector_width()},
        "protocol": protocol.to_json(),
        "passes": args.passes,
        "tunings": args.tunings,
        "seconds": time.perf_counter() - t0,
        "goals": goals(rows),
        "rows": rows,
    }
    print(table(rows))
    for kind in ("conv1x1", "conv3x3"):
        print(f"\n**{kind}** -- speedup over the best dense baseline (fraction of ideal 1/(1-s)):\n")
        print(matrix(rows, kind))
    print()
    for goal, value in result["goals"].items():
        print(f"* {goal}: {value}")
    out = args.out if args.out is not None else (None if args.quick else OUT)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
