"""Seconds per supernet training step, with and without the matrix forms of small-map convolutions.

Usage::

    python benchmarks/supernet_step.py [--steps 12] [--out docs/results/supernet_step.json]

For the supernets of the main job (``search/examples/quickstart.yaml``, digits) and of the
example job (``search/examples/mobilenet_mnist.yaml``, MNIST-5k-hard), with each job's own
training settings at one thread, this times training steps (the sandwich: largest, lower end,
random and dense candidates, forward and backward, optimizer step) in two modes, alternated
step by step on the same candidates and batches:

* ``conv2d``: every depthwise and 1x1 layer through ``F.conv2d`` (oneDNN);
* ``matrix``: depthwise and 1x1 layers on small maps as matrix products while training
  (`tritune.kernels.small_maps`: what tritune does).

Steps are drawn from the last phase of the schedule (the whole compression menu), after two
warm-up steps per mode. It prints the median seconds per step, the spread (max - min) / median
and the ratio conv2d / matrix.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
JOBS = {"main job (digits)": REPO / "search/examples/quickstart.yaml",
        "example job (mnist5k-hard)": REPO / "search/examples/mobilenet_mnist.yaml"}


def time_steps(job_path: Path, steps: int) -> dict[str, list[float]]:
    from tritune.evaluators import supernet_training as st
    from tritune.evaluators.data import load_dataset
    from tritune.kernels import small_maps
    from tritune.search.job import Job
    from tritune.search.stages.supernet import SupernetSpec, train_config

    job = Job.from_yaml(job_path)
    spec = SupernetSpec.of(job)
    config = train_config((job.stages or {}).get("supernet", {}).get("train", {}))
    data = load_dataset(spec.dataset, seed=spec.split_seed)
    supernet = job.build_space().supernet({"seed": job.seed})
    first = int(config.steps * 0.7)
    limits = {"MAP_PER_TAP": small_maps.MAP_PER_TAP, "POINTWISE_MAP": small_maps.POINTWISE_MAP}
    out: dict[str, list[float]] = {"conv2d": [], "matrix": []}
    for i in range(steps + 2):
        for mode in ("conv2d", "matrix"):
            for name, value in limits.items():
                setattr(small_maps, name, value if mode == "matrix" else 0)
            t = time.perf_counter()
            st._run(supernet, data, config, lambda s, i=i: st.step_candidates(supernet.sampler, config, first + i), distill=True,
                    checkpoint=None, resume=False, device="cpu", progress=False, stop_after=1, extra={}, desc=mode)
            if i >= 2:
                out[mode].append(time.perf_counter() - t)
    for name, value in limits.items():
        setattr(small_maps, name, value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    torch.set_num_threads(1)
    rows = []
    print(f"commit {commit}, {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, {args.steps} steps per mode")
    print("| supernet | conv2d s/step | spread | matrix s/step | spread | conv2d / matrix |")
    print("|---|---|---|---|---|---|")
    for name, path in JOBS.items():
        times = time_steps(path, args.steps)
        med = {m: statistics.median(v) for m, v in times.items()}
        spread = {m: (max(v) - min(v)) / med[m] for m, v in times.items()}
        rows.append({"supernet": name, "seconds": times, "median": med, "spread": spread})
        print(f"| {name} | {med['conv2d']:.3f} | {spread['conv2d']:.0%} | {med['matrix']:.3f} | {spread['matrix']:.0%} | "
              f"{med['conv2d'] / med['matrix']:.2f}x |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"commit": commit, "machine": platform.processor() or platform.machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
