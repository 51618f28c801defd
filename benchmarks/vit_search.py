"""Benchmark: does a joint search of the vit space beat dense ViTs at the same ort-cpu latency?

The search is run as a user runs it: a job over the default `vit` space (architecture, token keep
ratios, per-linear pattern / ratio / bits, 8-bit or float attention) with two objectives,
accuracy from the weight-sharing supernet (`supernet-accuracy`: inherited weights, recalibrated
quantizer ranges) and latency from the ort-cpu layer-wise predictor fitted on a `tritune profile`
of the space (`predicted-accuracy` with ``metric: latency``), on mnist5k-hard.

The hand-made alternatives are dense float ViTs of the same space, small to large, with patch 7
and patch 4. Every model (the dense ones and, per budget, the ``--finalists`` front members with
the best inherited accuracy whose predicted latency fits) is then

* trained alone from a fresh initialisation for ``--alone-steps`` steps, one recipe for all,
  compression active (accuracy, as `benchmarks/vit_ranking.py` measures it);
* built and timed on ort-cpu side by side, single thread, two passes keeping each model's faster.

The best dense and the best found model of each budget are then trained alone again for
``--confirm-steps`` steps, to see whether the verdict survives longer training.

The two budgets are the measured latencies of the 2nd and 4th fastest dense models (finalists
are picked against a first timing of the dense models; the verdicts read the final one). Goal (issue
20): at both budgets, the best found model that fits (measured) is more accurate than every dense
model that fits.

    python benchmarks/predictors_ort.py PROFILE --save runs/vit_search/latency.json   # the latency predictor
    python benchmarks/vit_search.py --predictor runs/vit_search/latency.json
    python benchmarks/vit_search.py --steps 40 --alone-steps 20 --evaluations 16 --cache /tmp/vs ...  # smoke run
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


REPO = Path(__file__).resolve().parents[1]
#: Dense hand-made ViTs: (patch, embedding, depth, heads), MLP ratio 4.
DENSE = ((7, 48, 2, 3), (7, 64, 4, 4), (7, 96, 6, 4), (4, 48, 2, 3), (4, 64, 4, 4), (4, 96, 6, 4))


def _ranking():
    """`benchmarks/vit_ranking.py` (same data, supernet recipe and alone-training recipe); imported
    by name, so that worker processes find its functions."""
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    import vit_ranking

    return vit_ranking


def dense_vit(space: Any, patch: int, embed: int, depth: int, heads: int) -> Any:
    genome = space.to_genome(space.dense(space.largest()))
    genome.update(patch=patch, embed=embed, depth=depth)
    for i in range(space.max_depth):
        genome[f"b{i}.heads"], genome[f"b{i}.mlp_ratio"] = heads, 4
    return space.from_genome(genome)


def job(checkpoint: str, predictor: str, evaluations: int, seed: int, run_dir: str) -> dict[str, Any]:
    return {
        "name": "vit-search",
        "space": {"name": "vit"},
        "evaluators": [
            {"kind": "supernet-accuracy", "checkpoint": checkpoint, "dataset": "mnist5k-hard"},
            {"kind": "predicted-accuracy", "path": predictor, "metric": "latency"},
        ],
        "objectives": [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency", "direction": "minimize"}],
        "strategy": {"name": "evolution"},
        "budget": {"evaluations": evaluations},
        "batch_size": 8,
        "seed": seed,
        "run_dir": run_dir,
    }


def search(job_data: dict[str, Any]) -> dict[str, Any]:
    from tritune.search.job import Job
    from tritune.search.run import run_search

    run_dir = Path(job_data["run_dir"])
    t0 = time.perf_counter()
    result = run_search(Job.from_dict(job_data), run_dir=run_dir, resume=(run_dir / "trials.db").exists(), progress=False)
    return {"wall_s": time.perf_counter() - t0, "evaluations": result.evaluations,
            "records": [{"candidate": r.candidate.to_json(), "id": r.candidate.id, **r.metrics} for r in result.records if "accuracy" in r.metrics],
            "front": [r.candidate.id for r in result.front]}


def measure(docs: list[dict], passes: int = 2) -> list[dict[str, float]]:
    """ort-cpu latency of every candidate, built once and timed interleaved in one group per pass."""
    import torch

    from tritune.spaces import Candidate, create
    from tritune.targets.ort_cpu import OrtCpuTarget

    torch.set_num_threads(1)
    space = create("vit")
    target = OrtCpuTarget(threads=1)
    built = [target.build(Candidate.from_json(d), space=space) for d in docs]
    best = [None] * len(docs)
    for _ in range(passes):
        for i, m in enumerate(target.measure(built)):
            if best[i] is None or m.latency_ms < best[i]["latency_ms"]:
                best[i] = {"latency_ms": m.latency_ms, "spread": m.spread}
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--predictor", default=str(REPO / "runs" / "vit_search" / "latency.json"),
                    help="ort-cpu latency predictor of the vit space (benchmarks/predictors_ort.py --save)")
    ap.add_argument("--steps", type=int, default=1500, help="supernet training steps")
    ap.add_argument("--alone-steps", type=int, default=800, help="steps of each model trained alone")
    ap.add_argument("--evaluations", type=int, default=160, help="search budget (supernet-accuracy queries)")
    ap.add_argument("--finalists", type=int, default=3, help="front members trained alone per budget")
    ap.add_argument("--confirm-steps", type=int, default=3000,
                    help="train the best dense and the best found model of each budget again this long (0: skip)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=str(REPO / "runs" / "vit_search"))
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "vit_search.json"))
    args = ap.parse_args(argv)
    from tqdm.auto import tqdm

    from tritune.predictors import load
    from tritune.spaces import Candidate, create

    vr = _ranking()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    space = create("vit")
    predictor = load(args.predictor)
    dense = [dense_vit(space, *d) for d in DENSE]
    ckpt = str(cache / f"supernet-{args.steps}.safetensors")
    ctx = multiprocessing.get_context("spawn")
    t0 = time.perf_counter()
    alone: dict[str, dict] = {}

    def alone_job(pool, cand):
        return pool.submit(vr._cached, cache / f"alone-{cand.id}-{args.alone_steps}.json", vr.train_alone, cand.to_json(),
                           args.alone_steps, args.seed)

    with cf.ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
        supernet_job = pool.submit(vr.train_supernet, args.steps, args.seed, ckpt)
        jobs = {alone_job(pool, c): c.id for c in dense}
        for j in tqdm(cf.as_completed([supernet_job, *jobs]), total=1 + len(jobs), desc="supernet + dense alone"):
            if j is not supernet_job:
                alone[jobs[j]] = j.result()
        supernet_s = supernet_job.result()["seconds"]
        found = pool.submit(search, job(ckpt, args.predictor, args.evaluations, args.seed, str(cache / "run"))).result()
        dense_ms = pool.submit(measure, [c.to_json() for c in dense]).result()
        budgets = sorted(m["latency_ms"] for m in dense_ms)[1:4:2]
        front = [r for r in found["records"] if r["id"] in set(found["front"])]
        picks: dict[str, Candidate] = {}
        for budget in budgets:
            fits = sorted((r for r in front if r["latency"] <= budget), key=lambda r: -r["accuracy"])[:args.finalists]
            picks.update({r["id"]: Candidate.from_json(r["candidate"]) for r in fits})
        jobs = {alone_job(pool, c): c.id for c in picks.values()}
        for j in tqdm(cf.as_completed(jobs), total=len(jobs), desc="found alone"):
            alone[jobs[j]] = j.result()
        models = dense + list(picks.values())
        timed = pool.submit(measure, [c.to_json() for c in models]).result()
    inherited = {r["id"]: r["accuracy"] for r in found["records"]}
    rows = []
    for c, t in zip(models, timed):
        rows.append({"candidate": c.id, "kind": "dense" if c in dense else "found", "tokens": space.tokens(c),
                     "macs": float(sum(L.macs for L in space.layers(c))), "latency_ms": t["latency_ms"], "spread": t["spread"],
                     "predicted_ms": float(predictor.predict([c], space=space)[0]), "inherited": inherited.get(c.id),
                     "alone": alone[c.id]["accuracy"], "arch": c.to_json()["arch"]})
    verdicts = []
    # the budgets again, from the final side-by-side timing (the one every verdict reads)
    budgets = sorted(r["latency_ms"] for r in rows if r["kind"] == "dense")[1:4:2]
    for budget in budgets:
        fit = [r for r in rows if r["latency_ms"] <= budget]
        best_dense = max((r for r in fit if r["kind"] == "dense"), key=lambda r: r["alone"], default=None)
        best_found = max((r for r in fit if r["kind"] == "found"), key=lambda r: r["alone"], default=None)
        verdicts.append({"budget_ms": budget, "dense": best_dense and best_dense["candidate"], "found": best_found and best_found["candidate"],
                         "dense_alone": best_dense and best_dense["alone"], "found_alone": best_found and best_found["alone"],
                         "met": bool(best_found and best_dense and best_found["alone"] > best_dense["alone"])})
    if args.confirm_steps:
        by_id = {c.id: c for c in models}
        ids = sorted({v[k] for v in verdicts for k in ("dense", "found") if v[k]})
        with cf.ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
            jobs = {pool.submit(vr._cached, cache / f"alone-{i}-{args.confirm_steps}.json", vr.train_alone, by_id[i].to_json(),
                                args.confirm_steps, args.seed): i for i in ids}
            longer = {jobs[j]: j.result()["accuracy"] for j in tqdm(cf.as_completed(jobs), total=len(jobs), desc="confirm")}
        for v in verdicts:
            v.update(dense_confirm=longer.get(v["dense"]), found_confirm=longer.get(v["found"]),
                     met_confirm=bool(v["dense"] and v["found"] and longer[v["found"]] > longer[v["dense"]]))

    print(f"vit search: supernet {args.steps} steps ({supernet_s:.0f} s), {found['evaluations']} evaluations ({found['wall_s']:.0f} s), "
          f"front of {len(found['front'])}; every model below trained alone {args.alone_steps} steps and timed side by side on ort-cpu")
    print("| model | kind | tokens per block | MACs (M) | ort-cpu ms (spread) | predicted ms | inherited % | alone % |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r["latency_ms"]):
        inh = "—" if r["inherited"] is None else f"{r['inherited']:.1f}"
        print(f"| {r['candidate']} | {r['kind']} | {' '.join(map(str, r['tokens']))} | {r['macs'] / 1e6:.2f} | {r['latency_ms']:.3f} "
              f"({100 * r['spread']:.0f} %) | {r['predicted_ms']:.3f} | {inh} | {r['alone']:.1f} |")
    longer = f" | {args.confirm_steps} steps: dense / found % | goal met" if args.confirm_steps else ""
    print(f"\n| budget ms | best dense (alone %) | best found (alone %) | goal met{longer} |\n|---|---|---|---|" + ("---|---|" if longer else ""))

    def pct(value: float | None) -> str:
        return "—" if value is None else f"{value:.1f}"

    for v in verdicts:
        extra = (f" | {pct(v['dense_confirm'])} / {pct(v['found_confirm'])} | {'yes' if v['met_confirm'] else 'no'}" if longer else "")
        print(f"| {v['budget_ms']:.3f} | {v['dense']} ({pct(v['dense_alone'])}) | {v['found']} ({pct(v['found_alone'])}) | "
              f"{'yes' if v['met'] else 'no'}{extra} |")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    doc = {"benchmark": "vit_search", "commit": commit, "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
           "settings": {"steps": args.steps, "alone_steps": args.alone_steps, "evaluations": args.evaluations, "finalists": args.finalists,
                        "seed": args.seed, "predictor": args.predictor, "confirm_steps": args.confirm_steps, "train": vr.TRAIN, "dataset": vr.DATASET},
           "supernet_s": supernet_s, "search_s": found["wall_s"], "front": found["front"], "rows": rows, "budgets": verdicts,
           "wall_s": time.perf_counter() - t0}
    vr.write_doc(args.out, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
