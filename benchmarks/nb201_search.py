"""Benchmark: multi-objective search on NAS-Bench-201 (CIFAR-10 accuracy vs device latency).

Each strategy runs through the real job machinery (driver, SQLite store, in-process executor)
with a budget of accuracy queries; latency look-ups are free. Reported per device and budget,
median over seeds:

* HV  — hypervolume of the found front / hypervolume of the true front, the reference point at
  the true front's nadir (worst accuracy and worst latency among true Pareto-optimal cells);
* recall — share of the true Pareto-optimal cells that were evaluated.

A run with budget B is the first B accuracy queries of the longest run (strategies never see the
budget), so one run per (strategy, device, seed) serves every budget.

    python benchmarks/nb201_search.py                      # 10 seeds, budgets 50/100/300
    python benchmarks/nb201_search.py --seeds 2 --budgets 50 100
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

STRATEGIES = ("random", "evolution", "nsga2", "tpe", "predictor")
DEVICES = ("help_fpga", "help_eyeriss", "help_gold_6226")


def true_front(device: str, data: str | None) -> dict:
    from tritune.search.pareto import hypervolume, pareto_mask
    from tritune.targets import NB201Table

    table = NB201Table(data)
    acc = table.column("nats_cifar10_test_acc")
    lat = table.column(device)
    values = np.stack([acc, lat], axis=1)
    ok = np.isfinite(values).all(axis=1)
    idx = np.flatnonzero(ok)
    mask = pareto_mask(values[ok], ("maximize", "minimize"))
    front_idx = idx[mask]
    ref = [float(acc[front_idx].min()), float(lat[front_idx].max())]
    hv = hypervolume(values[front_idx], ("maximize", "minimize"), ref)
    return {"indices": sorted(int(i) for i in front_idx), "reference": ref, "hv": hv}


def parse_strategy(label: str) -> dict:
    """``predictor`` or ``predictor:acquisition=pnd,n_initial=30`` -> a job's strategy field."""
    name, _, opts = label.partition(":")
    strategy: dict = {"name": name}
    for pair in filter(None, opts.split(",")):
        key, _, value = pair.partition("=")
        try:
            strategy[key] = json.loads(value)
        except json.JSONDecodeError:
            strategy[key] = value
    return strategy


def one_run(args: tuple) -> dict:
    label, device, seed, budget, batch_size, data = args
    strategy = parse_strategy(label)
    from tritune.search.job import Job
    from tritune.search.run import run_search
    from tritune.spaces import create

    acc_ev = {"kind": "nb201-accuracy", "dataset": "cifar10"}
    lat_ev = {"kind": "latency", "target": "nb201-table", "column": device}
    if data:
        acc_ev["path"] = lat_ev["path"] = data
    job = Job.from_dict({
        "name": f"{strategy['name']}-{device}-{seed}", "space": "nb201", "evaluators": [acc_ev, lat_ev],
        "objectives": [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency", "direction": "minimize"}],
        "strategy": strategy, "budget": {"evaluations": budget}, "batch_size": batch_size, "seed": seed,
    })
    space = create("nb201")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = run_search(job, run_dir=Path(tmp) / "run", progress=False)
        wall = time.perf_counter() - t0
    evaluated = [(space.index(r.candidate), r.metrics["accuracy"], r.metrics["latency"]) for r in result.records if r.status == "complete"]
    return {"strategy": label, "device": device, "seed": seed, "evaluated": evaluated, "wall_s": wall}


def score(evaluated: list, truth: dict, budget: int) -> tuple[float, float]:
    from tritune.search.pareto import hypervolume

    first = evaluated[:budget]
    values = np.array([[a, lat] for _, a, lat in first])
    hv = hypervolume(values, ("maximize", "minimize"), truth["reference"]) / truth["hv"]
    found = {i for i, _, _ in first}
    recall = len(found & set(truth["indices"])) / len(truth["indices"])
    return hv, recall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), help="names, optionally with options: predictor:acquisition=pnd")
    parser.add_argument("--devices", nargs="+", default=list(DEVICES))
    parser.add_argument("--budgets", nargs="+", type=int, default=[50, 100, 300])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--data", help="NB201 joint table (default: the embedded copy)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default="docs/results/nb201_search.json")
    args = parser.parse_args()

    from tqdm import tqdm

    truths = {d: true_front(d, args.data) for d in args.devices}
    tasks = [(s, d, seed, max(args.budgets), args.batch_size, args.data) for d in args.devices for s in args.strategies for seed in range(args.seeds)]
    runs = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for run in tqdm(pool.map(one_run, tasks), total=len(tasks), desc="runs"):
            runs.append(run)

    rows = []
    for d in args.devices:
        for b in args.budgets:
            for s in args.strategies:
                scores = [score(r["evaluated"], truths[d], b) for r in runs if r["device"] == d and r["strategy"] == s]
                hvs, recalls = [x[0] for x in scores], [x[1] for x in scores]
                walls = [r["wall_s"] for r in runs if r["device"] == d and r["strategy"] == s]
                rows.append({
                    "device": d, "budget": b, "strategy": s, "hv_median": statistics.median(hvs), "hv_min": min(hvs), "hv_max": max(hvs),
                    "recall_median": statistics.median(recalls), "recall_min": min(recalls), "recall_max": max(recalls),
                    "wall_s_median_full_run": statistics.median(walls),
                })

    print(f"\nNAS-Bench-201, CIFAR-10 accuracy (max) vs latency (min); median over {args.seeds} seeds [min-max]; batch size {args.batch_size}")
    for d in args.devices:
        t = truths[d]
        print(f"\n{d}: true front {len(t['indices'])} cells, reference (acc {t['reference'][0]:.2f}, lat {t['reference'][1]:.4g} ms)")
        print(f"| budget | strategy | HV | recall | s / run ({max(args.budgets)} q) |")
        print("|---:|---|---|---|---:|")
        for r in rows:
            if r["device"] == d:
                print(f"| {r['budget']} | {r['strategy']} | {r['hv_median']:.4f} [{r['hv_min']:.3f}-{r['hv_max']:.3f}] | "
                      f"{r['recall_median']:.2f} [{r['recall_min']:.2f}-{r['recall_max']:.2f}] | {r['wall_s_median_full_run']:.1f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "truth": {d: {k: v for k, v in t.items() if k != "indices"} | {"size": len(t["indices"])} for d, t in truths.items()}, "rows": rows}, indent=2))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
