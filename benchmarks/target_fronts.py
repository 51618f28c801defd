"""The same joint search against two latency targets, and the plans each front picks.

Usage::

    python benchmarks/target_fronts.py [--job search/examples/quickstart.yaml] [--targets ort-cpu,codegen-cpu]
        [--runs runs/target-fronts] [--out docs/results/target_fronts.json]

The job's search (its space, supernet, strategy, budget and seed; ``stages`` dropped, so the
search stage alone) runs once per target with its ``latency`` evaluator pointed at that target;
only the latency differs between the runs. ``ort-cpu`` runs a layer in int8 only when its weights
and inputs are 8-bit and has no sparse kernels; ``codegen-cpu`` has sparse float and sparse int8
kernels for every pattern of the space. Per target: the front (accuracy, measured latency, and
the plan of each layer role), then the share of the front's weight layers by pattern and by
precision (int8 = w <= 8 and a <= 8; weight-only; activation-only; float). Runs resume from
``--runs``. The supernet checkpoint must exist (run the job, or its ``supernet`` stage, first).
"""
from __future__ import annotations

import argparse
import collections
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml


def precision(w_bits: int, a_bits: int) -> str:
    """How a layer's bits are used: int8 (both quantized), weight-only, activation-only or float."""
    if w_bits <= 8 and a_bits <= 8:
        return "int8"
    if w_bits <= 8:
        return "weight-only"
    return "activation-only" if a_bits <= 8 else "float"


def role_plans(candidate) -> dict[str, str]:
    """Role -> "pattern ratio wXaY" of a role-tied candidate (the first slot of each role)."""
    from tritune.spaces.mobilenet.space import SLOTS

    out: dict[str, str] = {}
    for (_, role, _), c in zip(SLOTS, candidate.compression):
        if role not in out:
            ratio = "" if c.pattern == "dense" else f" {c.sparsity:.0%}"
            out[role] = f"{c.pattern}{ratio} w{c.w_bits}a{c.a_bits}"
    return out


def layer_shares(space, candidates) -> tuple[dict[str, float], dict[str, float]]:
    """Share of the weight layers of ``candidates`` by pattern and by precision (IR layers, so a
    role counts as often as the network has layers of it)."""
    patterns: collections.Counter = collections.Counter()
    precisions: collections.Counter = collections.Counter()
    for cand in candidates:
        for L in space.layers(cand):
            if L.has_weights:
                patterns[L.pattern] += 1
                precisions[precision(L.w_bits, L.a_bits)] += 1
    total = sum(patterns.values()) or 1
    return ({k: v / total for k, v in patterns.most_common()}, {k: v / total for k, v in precisions.most_common()})


def run_target(data: dict, target: str, runs: Path) -> dict:
    from tritune.search.job import Job
    from tritune.search.run import run_search

    job_data = json.loads(json.dumps(data))
    for ev in job_data["evaluators"]:
        if ev.get("kind") == "latency":
            ev["target"] = target
    job = Job.from_dict(job_data)
    run_dir = runs / target
    t0 = time.perf_counter()
    result = run_search(job, run_dir=run_dir, resume=(run_dir / "trials.db").exists())
    members = sorted(result.front, key=lambda r: r.metrics["latency"])
    space = job.build_space()
    pattern_share, precision_share = layer_shares(space, [r.candidate for r in members])
    rows = [{"candidate_id": r.candidate.id, "accuracy": r.metrics["accuracy"], "latency_ms": r.metrics["latency"],
             "arch": r.candidate.to_json()["arch"], "plan": role_plans(r.candidate)} for r in members]
    return {"front": rows, "evaluations": job.budget, "wall_s": time.perf_counter() - t0,
            "pattern_share": pattern_share, "precision_share": precision_share}


def print_target(target: str, doc: dict) -> None:
    rows = doc["front"]
    roles = list(rows[0]["plan"]) if rows else []
    print(f"\n## {target}: front of {len(rows)} ({doc['evaluations']} evaluations)\n")
    print("| candidate | accuracy % | latency ms | res | width | " + " | ".join(roles) + " |")
    print("|---" * (5 + len(roles)) + "|")
    for row in rows:
        print(f"| {row['candidate_id']} | {row['accuracy']:.2f} | {row['latency_ms']:.4g} | {row['arch']['resolution']} | "
              f"{row['arch']['width']} | " + " | ".join(row["plan"][k] for k in roles) + " |")
    print("\nweight layers of the front by pattern: " + ", ".join(f"{k} {v:.0%}" for k, v in doc["pattern_share"].items()))
    print("weight layers of the front by precision: " + ", ".join(f"{k} {v:.0%}" for k, v in doc["precision_share"].items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--job", default="search/examples/quickstart.yaml")
    ap.add_argument("--targets", default="ort-cpu,codegen-cpu")
    ap.add_argument("--runs", default="runs/target-fronts")
    ap.add_argument("--out", default="docs/results/target_fronts.json")
    args = ap.parse_args(argv)

    data = yaml.safe_load(Path(args.job).read_text())
    data.pop("stages", None)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    doc: dict = {"benchmark": "target_fronts", "job": args.job, "commit": commit, "machine": platform.processor() or platform.machine(),
                 "targets": {}}
    for target in [t.strip() for t in args.targets.split(",") if t.strip()]:
        doc["targets"][target] = run_target(data, target, Path(args.runs))
        print_target(target, doc["targets"][target])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
