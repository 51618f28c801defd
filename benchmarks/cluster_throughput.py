"""Benchmark: search throughput (trials per second) of the Ray executor with 1 and 2 workers.

A training-based evaluator: every trial fine-tunes one candidate of a small mobilenet space
(``supernet-finetune``, one torch thread per trial) from a supernet trained a few steps on the
embedded ``digits`` set. Each configuration runs the same job (random strategy, batch size 4,
twice the largest worker count) as ``tritune search --ray --workers W`` in a fresh process;
configurations alternate within a repetition so that load from other work on the machine hits
them alike. Reported per configuration, median over repetitions with the min..max spread:

* **trial phase** -- trials / (last trial's end - first trial's start), from the stored trial
  times: the search itself, Ray's start and stop excluded;
* **end to end** -- trials / the command's wall time, Ray start and stop included.

The in-process executor (``workers = in-process``) is the baseline without Ray. Before each
repetition and at the end, the *machine ceiling* is measured: how much faster two processes do a
fixed amount of one-thread torch work than one -- the most any executor can get from a second
worker while other work shares the cores (2.0x on two idle cores).

    python benchmarks/cluster_throughput.py                 # 3 repetitions, 12 trials each
    python benchmarks/cluster_throughput.py --reps 2 --trials 8
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SPACE = {"name": "mobilenet", "resolutions": [16], "widths": [0.25, 0.5], "depths": [1, 2], "expands": [3, 4],
         "kernels": [3, 5], "in_channels": 1, "num_classes": 10}


def train_checkpoint(path: Path, steps: int) -> None:
    """The supernet every trial starts from: ``steps`` SGD steps on ``digits``."""
    from tritune.evaluators.data import load_dataset
    from tritune.evaluators.supernet_training import TrainConfig, train_supernet
    from tritune.spaces import create as create_space
    from tritune.spaces.mobilenet.supernet import MobileNetSupernet

    space = create_space("mobilenet", **{k: v for k, v in SPACE.items() if k != "name"})
    train_supernet(MobileNetSupernet(space, {"seed": 0}), load_dataset("digits", seed=0),
                   TrainConfig(steps=steps, batch_size=32, lr=0.05, threads=1), checkpoint=path, progress=False)


def job(checkpoint: Path, trials: int, epochs: float) -> dict:
    return {
        "name": "throughput",
        "space": SPACE,
        "evaluators": [{"kind": "supernet-finetune", "checkpoint": str(checkpoint), "dataset": "digits", "epochs": epochs,
                        "batch_size": 32, "calib_batches": 1, "calib_batch_size": 64, "threads": 1}],
        "objectives": [{"metric": "accuracy", "direction": "maximize"}],
        "strategy": {"name": "random"},
        "budget": {"evaluations": trials},
        "batch_size": 4,
        "seed": 0,
    }


def run_once(job_path: Path, run_dir: Path, workers: int | None) -> dict:
    cmd = [sys.executable, "-m", "tritune.cli.main", "search", str(job_path), "--run-dir", str(run_dir), "--quiet"]
    if workers is not None:
        cmd += ["--ray", "--workers", str(workers)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    con = sqlite3.connect(run_dir / "trials.db")
    rows = con.execute("SELECT candidate_id, status, metrics, started, finished, worker FROM trials ORDER BY number").fetchall()
    con.close()
    complete = [r for r in rows if r[1] == "complete"]
    phase = max(r[4] for r in rows) - min(r[3] for r in rows)
    return {
        "trials": len(rows),
        "complete": len(complete),
        "trial_phase_s": phase,
        "wall_s": wall,
        "trial_phase_tps": len(rows) / phase,
        "end_to_end_tps": len(rows) / wall,
        "mean_trial_s": statistics.fmean(r[4] - r[3] for r in rows),
        "workers_seen": len({r[5] for r in rows}),
        "sequence": [(r[0], r[1], json.loads(r[2])) for r in rows],
    }


def _spin(steps: int) -> float:
    """A fixed amount of one-thread torch work (the trials' kind of work, without tritune)."""
    import torch

    torch.set_num_threads(1)
    x = torch.randn(192, 192)
    for _ in range(steps):
        x = torch.tanh(x @ x * 0.01)
    return float(x[0, 0])


def machine_ceiling(steps: int = 3000) -> float:
    """How much faster 2 processes get the same work done than 1, on this machine, now: the
    best any 2-worker executor can do while other work shares the cores."""
    import multiprocessing as mp

    rates = {}
    for k in (1, 2):
        with mp.get_context("spawn").Pool(k) as pool:
            pool.map(_spin, [10] * k)  # start-up and imports outside the timing
            started = time.perf_counter()
            pool.map(_spin, [steps] * k)
            rates[k] = k * steps / (time.perf_counter() - started)
    return rates[2] / rates[1]


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}..{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=float, default=0.5, help="fine-tuning epochs of digits per trial")
    parser.add_argument("--supernet-steps", type=int, default=30)
    parser.add_argument("--out", default=str(REPO / "docs" / "results" / "cluster_throughput.json"))
    args = parser.parse_args()

    configs: list[tuple[str, int | None]] = [("in-process", None), ("1", 1), ("2", 2)]
    results: dict[str, list[dict]] = {name: [] for name, _ in configs}
    load_before = os.getloadavg()
    from tqdm.auto import tqdm

    with tempfile.TemporaryDirectory(prefix="tritune-tput-") as tmp:
        work = Path(tmp)
        checkpoint = work / "supernet.safetensors"
        train_checkpoint(checkpoint, args.supernet_steps)
        job_path = work / "job.yaml"
        job_path.write_text(yaml.safe_dump(job(checkpoint, args.trials, args.epochs), sort_keys=False))
        bar = tqdm(total=args.reps * len(configs), desc="runs", unit="run")
        ceilings = []
        for rep in range(args.reps):
            order = configs if rep % 2 == 0 else configs[::-1]
            ceilings.append(machine_ceiling())
            for name, workers in order:
                results[name].append(run_once(job_path, work / f"run-{name}-{rep}", workers))
                bar.update(1)
        ceilings.append(machine_ceiling())
        bar.close()
    load_after = os.getloadavg()

    reference = results["in-process"][0]["sequence"]
    same = all(r["sequence"] == reference for runs in results.values() for r in runs)
    rows = []
    for name, _ in configs:
        runs = results[name]
        rows.append({
            "workers": name,
            "trial_phase_tps": [r["trial_phase_tps"] for r in runs],
            "end_to_end_tps": [r["end_to_end_tps"] for r in runs],
            "mean_trial_s": [r["mean_trial_s"] for r in runs],
            "worker_processes": [r["workers_seen"] for r in runs],
        })
    one = statistics.median(rows[1]["trial_phase_tps"])
    two = statistics.median(rows[2]["trial_phase_tps"])
    ratios = [b / a for a, b in zip(rows[1]["trial_phase_tps"], rows[2]["trial_phase_tps"])]
    ratios_e2e = [b / a for a, b in zip(rows[1]["end_to_end_tps"], rows[2]["end_to_end_tps"])]

    print(f"\n{args.trials} fine-tuning trials ({args.epochs} epochs of digits, 1 thread each), {args.reps} repetitions; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (machine shared)")
    print("| workers | trials/s, trial phase | trials/s, end to end | mean trial s | worker processes |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['workers']} | {summary(row['trial_phase_tps'])} | {summary(row['end_to_end_tps'])} "
              f"| {summary(row['mean_trial_s'])} | {sorted(set(row['worker_processes']))} |")
    print(f"| **2 / 1 workers** | **{two / one:.2f}x** (per repetition {', '.join(f'{r:.2f}' for r in ratios)}) "
          f"| {statistics.median(ratios_e2e):.2f}x | | |")
    print(f"| machine ceiling: 2 / 1 processes of plain torch work | {statistics.median(ceilings):.2f}x "
          f"(measured {', '.join(f'{c:.2f}' for c in ceilings)}) | | | |")
    print(f"\ngoal >= 1.7x with 2 workers (trial phase): {'met' if two / one >= 1.7 else 'NOT met'}; "
          f"every run produced the same trials: {same}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "cluster_throughput",
        "command": " ".join(["python", "benchmarks/cluster_throughput.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus (shared with other work)",
        "load_average": {"before": load_before, "after": load_after},
        "trials": args.trials, "epochs": args.epochs, "reps": args.reps, "supernet_steps": args.supernet_steps,
        "rows": rows,
        "ratio_2_over_1_trial_phase": {"median_of_medians": two / one, "per_rep": ratios},
        "ratio_2_over_1_end_to_end": ratios_e2e,
        "machine_ceiling_2_over_1": ceilings,
        "same_trials_in_every_run": same,
    }, indent=1))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
