"""Benchmark: does the supernet rank candidates of the joint space like training them does?

16 candidates of a small `mobilenet` space (1-channel 32-px images, stem stride 2) spread over
the joint space: 4 architectures (smallest, two intermediate, largest) x 4 compression plans
(dense float; N:M 2:4 at w8a8; unstructured 75 % at w4a8; unstructured 90 % at w4a8; every
layer that can carry the pattern carries it, the rest keep the bits dense). For each:

* ``inherited``: accuracy with the weights of one supernet trained with the sandwich rule and
  in-place distillation (`train_supernet`), after BN / activation-range recalibration on 4 x 128
  training images (`SupernetAccuracy`);
* ``scratch``: accuracy after training the candidate alone from a fresh initialisation with the
  same data, optimizer and a fixed budget of ``--scratch-steps`` steps, its compression active
  (masks following the weights, fake quantization on), then the same recalibration.

Reported: Kendall tau (tau-b) and Spearman rho between the two rankings, the spread of both
accuracy columns, and training throughput (batch images per second) of the supernet against
training the largest candidate alone, both measured in this run on the same machine. JSON to
``--out`` (default ``docs/results/supernet_ranking.json``) and a markdown table on stdout.

    nice -n 10 python benchmarks/supernet_ranking.py            # ~24 min on 2 shared CPU cores
    python benchmarks/supernet_ranking.py --supernet-steps 50 --scratch-steps 20   # smoke run
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau, spearmanr

from tritune.evaluators.data import load_dataset
from tritune.evaluators.supernet_accuracy import SupernetAccuracy
from tritune.evaluators.supernet_training import TrainConfig, accuracy, calibration_batches, train_candidate, train_supernet
from tritune.spaces import Candidate, MobileNetSpace
from tritune.spaces.supernet import MobileNetSupernet, with_compression

REPO = Path(__file__).resolve().parents[1]
SPACE = dict(resolutions=(24, 28, 32), widths=(0.25, 0.35, 0.5), depths=(2, 3, 4), expands=(3, 4, 6), kernels=(3, 5, 7),
             stem_stride=2, in_channels=1, num_classes=10)
#: (resolution, width, depth, expand, kernel) of the four architectures, uniform over blocks.
ARCHS = {"xs": (24, 0.25, 2, 3, 3), "s": (28, 0.35, 2, 4, 5), "m": (28, 0.35, 3, 6, 5), "l": (32, 0.5, 4, 6, 7)}
#: (pattern, sparsity, w_bits, a_bits) of the four compression plans.
PLANS = {"dense-fp32": ("dense", 0.0, 32, 32), "nm2:4-w8a8": ("nm2:4", 0.5, 8, 8),
         "unstr75-w4a8": ("unstructured", 0.75, 4, 8), "unstr90-w4a8": ("unstructured", 0.9, 4, 8)}


def candidates(space: MobileNetSpace) -> dict[str, Candidate]:
    out = {}
    for arch_name, (res, width, depth, expand, kernel) in ARCHS.items():
        genome = space.to_genome(space.largest())
        genome.update({"resolution": res, "width": width})
        for name in genome:
            if name.endswith(".depth"):
                genome[name] = depth
            elif name.endswith(".ratio"):
                genome[name] = expand
            elif name.endswith(".kernel"):
                genome[name] = kernel
        arch = space.from_genome(space.canonical_genome(genome))
        for plan_name, plan in PLANS.items():
            out[f"{arch_name}/{plan_name}"] = with_compression(space, arch, *plan)
    return out


def markdown(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = ["| candidate | MMACs (effective) | weight KB | inherited acc % | scratch acc % | rank inherited | rank scratch |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['macs_m']:.2f} | {r['weight_kb']:.1f} | {r['inherited']:.1f} | {r['scratch']:.1f} | "
                     f"{r['rank_inherited']} | {r['rank_scratch']} |")
    s = summary
    lines += ["", "| measure | value |", "|---|---:|",
              f"| Kendall tau (inherited vs scratch) | {s['kendall_tau']:.3f} (p={s['kendall_p']:.3g}) |",
              f"| Spearman rho | {s['spearman_rho']:.3f} |",
              f"| spread inherited (max-min / std) | {s['spread_inherited']:.1f} / {s['std_inherited']:.1f} points |",
              f"| spread scratch (max-min / std) | {s['spread_scratch']:.1f} / {s['std_scratch']:.1f} points |",
              f"| supernet training, images/s ({s['sandwich']} candidates per batch) | {s['supernet_images_per_s']:.1f} |",
              f"| largest candidate alone, images/s | {s['largest_images_per_s']:.1f} |",
              f"| supernet training time / scratch training time (all 16) | {s['supernet_s']:.0f} s / {s['scratch_s']:.0f} s |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="mnist5k-hard")
    ap.add_argument("--supernet-steps", type=int, default=500)
    ap.add_argument("--scratch-steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--n-random", type=int, default=1)
    ap.add_argument("--kd-alpha", type=float, default=0.5)
    ap.add_argument("--phases", default="progressive", choices=("none", "progressive"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None, help="supernet checkpoint file (resumed if present)")
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "supernet_ranking.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    data = load_dataset(args.dataset, seed=args.seed)
    space = MobileNetSpace(**SPACE)
    cands = candidates(space)
    calib = calibration_batches(data, 4, 128, seed=args.seed)

    # --- supernet --------------------------------------------------------------------------
    supernet = MobileNetSupernet(space, {"seed": args.seed})
    cfg = TrainConfig(steps=args.supernet_steps, batch_size=args.batch_size, lr=args.lr, n_random=args.n_random,
                      kd_alpha=args.kd_alpha, phases=None if args.phases == "none" else args.phases, seed=args.seed,
                      threads=args.threads)
    ckpt = args.checkpoint or str(REPO / "runs" / "supernet_ranking" / f"supernet-{args.dataset}-{args.supernet_steps}.safetensors")
    sn_result = train_supernet(supernet, data, cfg, checkpoint=ckpt, progress=True)
    print(f"supernet: {sn_result.step} steps, {sn_result.seconds:.0f} s in this call", flush=True)
    evaluator = SupernetAccuracy(supernet=supernet, dataset=data, calib_batches=4, calib_batch_size=128, threads=args.threads, seed=args.seed)
    inherited = {name: r["accuracy"] for name, r in zip(cands, evaluator.evaluate(list(cands.values())))}

    # --- from scratch --------------------------------------------------------------------------
    scratch: dict[str, float] = {}
    scratch_s: dict[str, float] = {}
    largest_ips = float("nan")
    for i, (name, cand) in enumerate(cands.items()):
        net = MobileNetSupernet(space, {"seed": args.seed + 1 + i})
        sc = TrainConfig(steps=args.scratch_steps, batch_size=args.batch_size, lr=args.lr, n_random=0, seed=args.seed + 1 + i, threads=args.threads)
        res = train_candidate(net, cand, data, sc)
        net.recalibrate(cand, calib)
        scratch[name] = 100.0 * accuracy(net, cand, data.test)
        scratch_s[name] = res.seconds
        if name == "l/dense-fp32":
            largest_ips = res.images_per_second
        print(f"scratch {name}: {scratch[name]:.1f} % in {res.seconds:.0f} s; inherited {inherited[name]:.1f} %", flush=True)

    names = list(cands)
    a = np.array([inherited[n] for n in names])
    b = np.array([scratch[n] for n in names])
    ranks_a = (-a).argsort(kind="stable").argsort() + 1
    ranks_b = (-b).argsort(kind="stable").argsort() + 1
    rows = []
    for k, n in enumerate(names):
        layers = space.layers(cands[n])
        rows.append({"name": n, "candidate_id": cands[n].id, "macs_m": sum(l.macs for l in layers) / 1e6,
                     "weight_kb": sum(l.weight_bytes for l in layers) / 1024, "inherited": float(a[k]), "scratch": float(b[k]),
                     "rank_inherited": int(ranks_a[k]), "rank_scratch": int(ranks_b[k]), "scratch_seconds": scratch_s[n]})
    tau = kendalltau(a, b)
    summary = {
        "kendall_tau": float(tau.statistic), "kendall_p": float(tau.pvalue), "spearman_rho": float(spearmanr(a, b).statistic),
        "spread_inherited": float(a.max() - a.min()), "spread_scratch": float(b.max() - b.min()),
        "std_inherited": float(a.std()), "std_scratch": float(b.std()),
        "supernet_images_per_s": sn_result.images_per_second, "largest_images_per_s": largest_ips,
        "sandwich": 2 + args.n_random, "supernet_s": sn_result.seconds, "scratch_s": float(sum(scratch_s.values())),
        "total_s": time.perf_counter() - t_start,
    }
    result = {"benchmark": "supernet_ranking", "dataset": args.dataset, "space": space.config(), "args": vars(args),
              "train_config": cfg.to_json(), "machine": {"platform": platform.platform(), "torch": torch.__version__,
                                                         "threads": args.threads}, "rows": rows, "summary": summary}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(markdown(rows, summary))
    return result


if __name__ == "__main__":
    main()
