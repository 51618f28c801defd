"""The ``codegen-cpu`` latency predictor, on whole models held out of its profile.

Usage::

    python benchmarks/predictors_codegen.py --profile runs/profile-codegen --space mobilenet-small --n 800 --sessions 2 \
        [--out docs/results/predictors_codegen.json]

``tritune profile --target codegen-cpu --sessions K`` measures first what ``--profile`` does not
hold yet (resumable), and its wall time is reported (goal: the whole profile in 45 minutes on
this machine); each model's label is the median over the K sessions, normalised by the reference
model of its group. The models are split into train and held out (30 %, seeded, stratified by
resolution); on the held-out ones, side by side:

* ``flops``: latency = a * MACs + b, least squares on the train models (the baseline);
* ``additive``: `CodegenLatencyPredictor` without its correction stage (sum of step costs);
* ``codegen-layerwise``: the shipped predictor (step costs + fusion and chaining correction).

Goals (issue 21): >= 95 % of held-out models within +-10 % of their measured latency; >= 10,000
candidates per second, straight from candidates (1 thread, median of 5 repeats). A markdown table
goes to stdout, JSON to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from predictors_ort import flops_baseline, labels, load_profile, report  # the script's folder is on sys.path


def measured(profile: Path) -> int:
    """Models measured in every session so far (0 for a new profile)."""
    from tritune.targets.profiling import read_measurements, session_dirs

    try:
        dirs = session_dirs(profile)
    except ValueError:
        return 0
    ids = [{r["candidate_id"] for r in read_measurements(d) if r.get("latency_ms")} for d in dirs]
    return len(set.intersection(*ids)) if ids else 0


def run_profile(profile: Path, space: str, n: int, sessions: int, seed: int) -> dict:
    """``tritune profile`` for what is missing, timed as a whole command."""
    cmd = [sys.executable, "-m", "tritune.cli.main", "profile", "--target", "codegen-cpu", "--space", space, "--n", str(n),
           "--sessions", str(sessions), "--out", str(profile), "--seed", str(seed)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return {"command": "tritune " + " ".join(cmd[3:]), "seconds": time.perf_counter() - t0}


def throughput(pred, space, n: int = 20000) -> dict:
    rng = np.random.default_rng(12345)
    fresh = [space.sample(rng) for _ in range(n)]
    pred.predict(fresh[:1000])
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        pred.predict(fresh)
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    return {"candidates": n, "per_s": n / med, "spread": float((max(times) - min(times)) / med)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="runs/profile-codegen")
    ap.add_argument("--space", default="mobilenet-small")
    ap.add_argument("--n", type=int, default=800)
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test", type=float, default=0.3, help="held-out share")
    ap.add_argument("--out", default="docs/results/predictors_codegen.json")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from tritune.predictors.codegen_layerwise import CodegenLatencyPredictor
    from tritune.predictors.ort_layerwise import stratified_split
    from tritune.spaces.candidate import Candidate
    from tritune.targets.profiling import session_dirs

    profile = Path(args.profile)
    before = measured(profile)
    timing = None
    if before < args.n:
        timing = run_profile(profile, args.space, args.n, args.sessions, args.seed)
        timing["models_before"] = before
    dirs = session_dirs(profile)
    space, rows, meta = load_profile(dirs[0])
    y, rows = labels(rows, [str(d) for d in dirs[1:]], "normalized")
    cands = [Candidate.from_json(r["candidate"]) for r in rows]
    steps = [{s["name"]: s["ms"] for s in r["steps"]} for r in rows]
    res = np.array([c["resolution"] for c in cands])
    int8 = np.array([r.get("quantized_layers", 0) > 0 or any((s.get("bits") or 32) <= 8 for s in r["steps"]) for r in rows])
    test = stratified_split(res, args.test, args.seed)
    tr, te = np.flatnonzero(~test), np.flatnonzero(test)
    fp = meta["target"]["fingerprint"]
    common = dict(space=space, vector_width=int(fp.get("vector_width") or 16), threads=int(fp.get("threads") or 1),
                  fuse_min_bytes=fp.get("fuse_min_bytes", 1 << 20), holdout=0.0, seed=args.seed)

    preds: dict[str, np.ndarray] = {}
    macs = np.array([sum(L.macs for L in space.layers(c)) for c in cands])
    preds["flops"] = flops_baseline(macs[tr], y[tr])(macs[te])
    fitted = {}
    for name, opts in (("additive", {"correction": False}), ("codegen-layerwise", {})):
        t0 = time.perf_counter()
        fitted[name] = CodegenLatencyPredictor(**common, **opts).fit([cands[i] for i in tr], y[tr], steps=[steps[i] for i in tr])
        print(f"fit {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        preds[name] = np.asarray(fitted[name].predict([cands[i] for i in te]), dtype=float)
    masks = {"fp32-only": ~int8[te], "int8-mix": int8[te]}
    results = {name: report(y[te], p, masks) for name, p in preds.items()}
    speed = throughput(fitted["codegen-layerwise"], space)

    doc = {"benchmark": "predictors_codegen", "profile": str(profile), "space": meta["space"], "models": len(rows),
           "train": int(tr.size), "held_out": int(te.size), "profile_run": timing,
           "sessions": len(dirs),
           "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
           "results": results, "throughput": speed,
           "goals": {"within_10": 0.95, "per_s": 10000, "profile_minutes": 45}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1, sort_keys=True, default=float))

    print(f"\n{len(rows)} models of {args.space} ({tr.size} train / {te.size} held out, "
          f"{int(masks['int8-mix'].sum())} held-out with int8 layers)\n")
    print("| predictor | within ±10 % | within ±5 % | MAPE % | Spearman | Kendall |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        a = r["all"]
        print(f"| {name} | {100 * a['within_10']:.1f} % | {100 * a['within_5']:.1f} % | {a['mape']:.2f} | {a['spearman']:.3f} | {a['kendall']:.3f} |")
    for part in ("fp32-only", "int8-mix"):
        if part in results["codegen-layerwise"]:
            a = results["codegen-layerwise"][part]
            print(f"| codegen-layerwise, {part} (n={a.get('n', '?')}) | {100 * a['within_10']:.1f} % | {100 * a['within_5']:.1f} % | "
                  f"{a['mape']:.2f} | {a['spearman']:.3f} | {a['kendall']:.3f} |")
    print(f"\nthroughput: {speed['per_s']:,.0f} candidates/s from candidates (n={speed['candidates']}, spread {speed['spread']:.2f})")
    if timing is not None:
        print(f"profile: {timing['seconds'] / 60:.1f} min for {len(rows) - timing['models_before']} models x {len(dirs)} sessions "
              f"({timing['command']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
