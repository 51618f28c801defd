"""Benchmark: does the vit supernet rank the candidates the search draws?

Setting: the `vit` space (defaults: patch 4 or 7, embedding 48-96, 2-6 blocks of 2-4 heads, MLP
ratio 2-4, token keep ratios 1 / 0.7 / 0.5, the full compression menu of the linears) on
mnist5k-hard (4,000 training / 1,000 test images, resized to 28 px). The supernet is trained as
``tritune supernet train JOB --optimizer adamw`` would (sandwich rule with in-place
distillation, the progressive schedule), for ``--steps`` steps.

``--candidates`` candidates come from the space's own sampler (mixed per-slot plans, token
pruning and 8-bit attention included, fixed seeds). For each, ``inherited`` is the search's
costly metric (`SupernetAccuracy`: inherited weights, activation ranges re-estimated on 4 x 128
training images, test accuracy) and ``alone`` the test accuracy after training that candidate by
itself from a fresh initialisation for ``--alone-steps`` steps (same optimizer and schedule, its
compression active), then the same recalibration. Goal (issue 20): Kendall tau >= 0.6.

``--repeat-seed S`` also trains every candidate alone a second time from another seed: the Kendall
tau between the two alone runs is the most any supernet can reach against one of them (the noise
ceiling of the reference).

Work runs in ``--workers`` processes of one thread each; finished pieces are kept under
``--cache``, so a rerun continues where it stopped.

    python benchmarks/vit_ranking.py                     # table to stdout, JSON to docs/results/vit_ranking.json
    python benchmarks/vit_ranking.py --steps 40 --alone-steps 20 --candidates 4 --cache /tmp/vr   # smoke run
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASET = "mnist5k-hard"
TRAIN = {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "batch_size": 64, "n_random": 2, "sensitivity_images": 0,
         "threads": 1}


def _setup() -> None:
    import torch

    torch.set_num_threads(1)


def _data():
    from tritune.evaluators.data import load_dataset

    return load_dataset(DATASET, seed=0)


def _space():
    from tritune.spaces import create

    return create("vit")


def train_supernet(steps: int, seed: int, path: str) -> dict[str, Any]:
    """Train (or resume) the supernet; returns seconds spent in this call."""
    _setup()
    from tritune.evaluators.supernet_training import TrainConfig, train_supernet as train

    config = TrainConfig(steps=steps, seed=seed, checkpoint_every=100, **TRAIN)
    result = train(_space().supernet({"seed": seed}), _data(), config, checkpoint=path, progress=False)
    return {"seconds": result.seconds, "steps": result.step}


def inherited(path: str, candidates: list[dict], seed: int) -> list[float]:
    _setup()
    from tritune.evaluators.supernet_accuracy import SupernetAccuracy
    from tritune.spaces import Candidate

    evaluator = SupernetAccuracy(path, dataset=_data(), calib_batches=4, calib_batch_size=128, seed=seed)
    return [r["accuracy"] for r in evaluator.evaluate([Candidate.from_json(c) for c in candidates])]


def train_alone(candidate: dict, steps: int, seed: int) -> dict[str, Any]:
    """One candidate trained by itself from a fresh initialisation (its compression active)."""
    _setup()
    from tritune.evaluators.supernet_training import TrainConfig, accuracy, calibration_batches, train_candidate
    from tritune.spaces import Candidate

    cand = Candidate.from_json(candidate)
    data = _data()
    net = _space().supernet({"seed": seed})
    config = TrainConfig(steps=steps, seed=seed, **{**TRAIN, "n_random": 0})
    result = train_candidate(net, cand, data, config)
    net.recalibrate(cand, calibration_batches(data, 4, 128, seed=seed))
    return {"accuracy": 100.0 * accuracy(net, cand, data.test), "seconds": result.seconds}


def write_doc(out: str, doc: dict[str, Any]) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"written: {out}")


def _cached(path: Path, fn, *args) -> Any:
    if path.is_file():
        return json.loads(path.read_text())
    out = fn(*args)
    path.write_text(json.dumps(out))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1500, help="supernet training steps")
    ap.add_argument("--alone-steps", type=int, default=800, help="steps of each candidate trained alone")
    ap.add_argument("--candidates", type=int, default=30)
    ap.add_argument("--repeat-seed", type=int, default=None, help="train every candidate alone again from this seed (noise ceiling)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=str(REPO / "runs" / "vit_ranking"))
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "vit_ranking.json"))
    args = ap.parse_args(argv)
    from scipy.stats import kendalltau, spearmanr
    from tqdm.auto import tqdm

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    space = _space()
    cands = [space.sample(np.random.default_rng([args.seed, 1, i])) for i in range(args.candidates)]
    docs = [c.to_json() for c in cands]
    ckpt = str(cache / f"supernet-{args.steps}.safetensors")
    ctx = multiprocessing.get_context("spawn")
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
        supernet_job = pool.submit(train_supernet, args.steps, args.seed, ckpt)
        alone_jobs = {pool.submit(_cached, cache / f"alone-{c.id}-{args.alone_steps}.json", train_alone, d, args.alone_steps, args.seed): c.id
                      for c, d in zip(cands, docs)}
        repeat_jobs = {} if args.repeat_seed is None else {
            pool.submit(_cached, cache / f"alone-{c.id}-{args.alone_steps}-seed{args.repeat_seed}.json", train_alone, d, args.alone_steps,
                        args.repeat_seed): c.id for c, d in zip(cands, docs)}
        alone, repeat = {}, {}
        for job in tqdm(cf.as_completed([supernet_job, *alone_jobs, *repeat_jobs]), total=1 + len(alone_jobs) + len(repeat_jobs), desc="train"):
            if job in alone_jobs:
                alone[alone_jobs[job]] = job.result()
            elif job in repeat_jobs:
                repeat[repeat_jobs[job]] = job.result()
        timing = supernet_job.result()
        scores = pool.submit(inherited, ckpt, docs, args.seed).result()
        largest = pool.submit(inherited, ckpt, [space.largest().to_json()], args.seed).result()[0]
    rows = [{"candidate": c.id, "tokens": space.tokens(c), "macs": float(sum(L.macs for L in space.layers(c))),
             "inherited": s, "alone": alone[c.id]["accuracy"], "alone_repeat": repeat[c.id]["accuracy"] if repeat else None}
            for c, s in zip(cands, scores)]
    a, b = [r["inherited"] for r in rows], [r["alone"] for r in rows]
    tau, spearman = kendalltau(a, b), spearmanr(a, b)
    ceiling = None
    if repeat:
        r2 = [r["alone_repeat"] for r in rows]
        ceiling = {"seed": args.repeat_seed, "kendall_tau": float(kendalltau(b, r2).statistic),
                   "inherited_vs_repeat": float(kendalltau(a, r2).statistic),
                   "inherited_vs_mean": float(kendalltau(a, [(x + y) / 2 for x, y in zip(b, r2)]).statistic)}
    print(f"vit supernet: {args.steps} steps ({timing['seconds']:.0f} s in this call), each candidate alone {args.alone_steps} steps; "
          f"largest dense network inherited {largest:.1f} %")
    print("| candidate | tokens per block | MACs (M) | inherited % | alone % |")
    print("|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -r["alone"]):
        print(f"| {r['candidate']} | {' '.join(map(str, r['tokens']))} | {r['macs'] / 1e6:.2f} | {r['inherited']:.1f} | {r['alone']:.1f} |")
    print(f"Kendall tau {tau.statistic:.3f} (p {tau.pvalue:.2g}), Spearman {spearman.statistic:.3f} over {len(rows)} candidates; "
          f"median inherited {statistics.median(a):.1f} %, median alone {statistics.median(b):.1f} % (goal: tau >= 0.6)")
    if ceiling:
        print(f"noise ceiling: alone (seed {args.seed}) vs alone (seed {ceiling['seed']}) Kendall tau {ceiling['kendall_tau']:.3f}; "
              f"inherited vs the repeat {ceiling['inherited_vs_repeat']:.3f}, vs the mean of both {ceiling['inherited_vs_mean']:.3f}")
    doc = {"benchmark": "vit_ranking", "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
           "settings": {"steps": args.steps, "alone_steps": args.alone_steps, "train": TRAIN, "seed": args.seed, "dataset": DATASET},
           "supernet_s": timing["seconds"], "largest_inherited": largest, "kendall_tau": float(tau.statistic),
           "kendall_p": float(tau.pvalue), "noise_ceiling": ceiling, "spearman": float(spearman.statistic), "wall_s": time.perf_counter() - t0, "rows": rows}
    write_doc(args.out, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
