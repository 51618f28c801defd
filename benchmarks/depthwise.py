"""Generated depthwise convolutions against ONNX Runtime and PyTorch, single thread, same run.

Usage::

    python benchmarks/depthwise.py [--quick] [--out docs/results/depthwise.json]

Depthwise layers are dense in every tritune model and, once the 1x1 layers are block-sparse, the
largest share of a mobilenet's time on ``codegen-cpu``. Shapes are those of the largest mobilenet
candidate (width 1.2, expand 6) at 224 px: channels x input size x kernel x stride. Per shape, the
contenders are timed interleaved with the protocol of `tritune.kernels.timing`:

* ``torch``: ``nn.Conv2d(groups=C)``, 1 thread;
* ``onnxruntime``: a one-layer model on `tritune.targets.ort_cpu.OrtCpuTarget` (1 thread,
  ORT_ENABLE_ALL: NCHWc blocked depthwise);
* ``generated rRxV``: `tritune.kernels.codegen.depthwise` with R output rows x V output vectors
  per register tile; ``r1x4`` is the previous generator's tiling (one row; the stride-2 copy is
  the new one), the same-run baseline for the row-reuse tilings (the default picks 2 or 4 rows, `default_rows`);
* ``generated packed``: the channel-packed layout, on planes whose output is at most one vector
  wide (where `compile_depthwise` picks it by default, `default_packed`, except k = 3 at stride 2
  on outputs wider than half a vector).

``--narrow`` runs only those narrow shapes.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "docs" / "results" / "depthwise.json"
#: (channels, input size, kernel, stride) of the width-1.2 / expand-6 mobilenet at 224 px
SHAPES = [(24, 112, 3, 1), (144, 112, 3, 2), (192, 56, 3, 1), (192, 56, 3, 2), (288, 28, 3, 1), (576, 14, 3, 1), (816, 14, 3, 2),
          (1152, 7, 3, 1), (144, 112, 7, 2), (192, 56, 7, 1), (288, 28, 7, 1), (816, 14, 7, 1), (816, 14, 7, 2), (1152, 7, 7, 1),
          (192, 56, 5, 1)]
TILINGS = ((1, 4), (2, 4), (4, 4))


def run_shape(c: int, hw: int, k: int, s: int, protocol: Any, seed: int = 0) -> list[dict[str, Any]]:
    import torch

    from tritune.kernels.codegen import aligned_empty
    from tritune.kernels.codegen.depthwise import compile_depthwise
    from tritune.kernels.timing import measure_many

    from dense_baselines import dense_baselines

    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(c, c, k, s, k // 2, groups=c).eval()
    x = aligned_empty((c, hw, hw))
    x[...] = np.random.default_rng(seed).standard_normal(x.shape, dtype=np.float32)
    with torch.no_grad():
        ref = conv(torch.from_numpy(np.array(x))[None])[0].numpy()
    runs, names = dense_baselines(conv, x)
    extra: list[dict[str, Any]] = [{}, {}]
    from tritune.kernels.codegen import vector_width

    variants = [(f"generated r{rows}x{vectors}", dict(rows=rows, vectors=vectors, packed=False)) for rows, vectors in TILINGS]
    if -(-hw // s) <= vector_width():
        variants.append(("generated packed", dict(packed=True)))
    for name, opts in variants:
        kern = compile_depthwise(conv.weight, conv.bias, (hw, hw), s, "none", **opts)
        out = aligned_empty(kern.out_shape)
        run = kern.bind(x, out)
        run()
        err = float(np.abs(out - ref).max() / np.abs(ref).max())
        if err > 1e-4:
            raise AssertionError(f"{name} {c}x{hw} k{k} s{s}: relative error {err:.2e}")
        runs.append(run)
        names.append(name)
        extra.append({"rel_err": err, "compile_s": kern.compile_s})
    with torch.no_grad():
        ms = measure_many(runs, protocol, names)
    base = ms[1].latency_ms
    return [{"channels": c, "hw": hw, "kernel": k, "stride": s, "name": m.name, "latency_ms": m.latency_ms,
             "median_ms": m.median_ms, "spread": m.spread, "vs_onnxruntime": base / m.latency_ms, **e}
            for m, e in zip(ms, extra)]


def table(rows: list[dict[str, Any]]) -> str:
    names = list(dict.fromkeys(r["name"] for r in rows))
    head = "| C x HW, k, s | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    out = []
    for key in dict.fromkeys((r["channels"], r["hw"], r["kernel"], r["stride"]) for r in rows):
        cells = {r["name"]: r for r in rows if (r["channels"], r["hw"], r["kernel"], r["stride"]) == key}
        out.append(f"| {key[0]}x{key[1]}², k{key[2]}, s{key[3]} | "
                   + " | ".join(f"{cells[n]['latency_ms']:.3f} ({cells[n]['vs_onnxruntime']:.2f}x)" if n in cells else "–" for n in names) + " |")
    return head + "\n".join(out) + "\n\nms (speedup over onnxruntime); latency = min of round medians"


def main(argv: list[str] | None = None) -> int:
    from tritune.kernels.timing import Protocol

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="three shapes, fewer rounds")
    ap.add_argument("--narrow", action="store_true", help="only the shapes whose output is at most one vector wide")
    ap.add_argument("--out", type=Path, default=None, help=f"results JSON (default {OUT}; --quick: not written unless given)")
    args = ap.parse_args(argv)
    from tritune.kernels.codegen import vector_width

    shapes = [SHAPES[1], SHAPES[5], SHAPES[8]] if args.quick else SHAPES
    if args.narrow:
        shapes = [sh for sh in shapes if -(-sh[1] // sh[3]) <= vector_width()]
    protocol = Protocol(threads=1, warmup=5, rounds=3 if args.quick else 7, runs_per_round=10 if args.quick else 20)
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda x, **k: x  # noqa: E731
    rows = [r for shape in tqdm(shapes, desc="depthwise shapes") for r in run_shape(*shape, protocol)]
    print(table(rows))
    out = args.out or (None if args.quick or args.narrow else OUT)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"protocol": protocol.to_json(), "machine": platform.processor() or platform.machine(),
                                   "rows": rows}, indent=1))
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
