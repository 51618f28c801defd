"""Benchmark: does the supernet serve the candidates the search draws?

Setting: the space, data set and supernet of ``search/examples/mobilenet_mnist.yaml`` (MNIST-5k-hard:
4,000 training / 1,000 test images; the space with its compression ties), the supernet trained
with the default `TrainConfig` (``--steps``) as ``tritune supernet train`` does, sensitivity
table included.

Candidate sets (fixed seeds, the same for every supernet below):

* ``mixed``: ``--candidates`` candidates of the space's own sampler (`SearchSpace.sample`: what
  the strategies' random proposals are -- mixed per-group plans, not uniform ones);
* ``screened``: the job's stage-2 sampler (the space without the choices that alone cost more
  than ``stages.search.max_drop`` in the default supernet's sensitivity table), keeping the
  candidates that pass the job's constraint on the free ``sensitivity`` metric: the proposals a
  search of the job actually sends to the costly query;
* ``dense``: ``--dense`` random architectures of the same sampler, every layer dense float.

For each candidate of ``mixed`` and ``screened``, ``inherited`` is the search's costly metric
(`SupernetAccuracy`: inherited weights, BN statistics and activation ranges re-estimated on 4 x 128
training images, test accuracy) and ``alone`` the test accuracy after training that candidate by
itself from a fresh initialisation for ``--alone-steps`` steps (same batches, optimizer and
learning-rate schedule as the supernet, its compression active: masks following the weights,
fake quantization on), then the same recalibration.

Goals (default supernet): Kendall tau(inherited, alone) >= 0.7; median inherited accuracy of the
sampled candidates >= 80 % of the dense largest network's; median inherited accuracy of the
dense architectures >= 90 % of it.

Ablation (``--ablation``): supernets trained with one choice of the default recipe changed, same
steps and seed, scored on the same candidate sets (the ``alone`` column does not depend on the
supernet, so every variant gets its tau).

Timing: seconds per training step (wall and CPU) of the default recipe at 1 and 2 threads,
measured side by side in this run, and the whole default training (steps + sensitivity).

Work runs in ``--workers`` processes of one thread each; every finished piece (checkpoint,
candidate result) is kept under ``--cache``, so a rerun continues where it stopped.

    nice -n 10 python benchmarks/supernet_ranking.py --ablation all    # hours on 2 shared cores
    python benchmarks/supernet_ranking.py --steps 40 --candidates 4 --dense 4 --alone-steps 20 --cache /tmp/snr   # smoke run
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "search" / "examples" / "mobilenet_mnist.yaml"

#: One choice of the default recipe changed at a time (train-config fields, or the space's tie).
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "no-schedule": {"phases": None},
    "harshest-end": {"lower_end": "harshest"},
    "kd-only": {"kd_alpha": 1.0},
    "clip-total": {"clip_mode": "total"},
    "untied-training": {"tie": "none"},
    "batch-32": {"batch_size": 32, "steps_factor": 2},
    "dense-1": {"n_dense": 1},
    "issue-recipe": {"phases": None, "lower_end": "harshest", "kd_alpha": 1.0, "tie": "none"},
}
VARIANT_NOTES = {
    "default": "the default recipe",
    "no-schedule": "every dimension and the whole menu from step 0",
    "harshest-end": "lower end = smallest architecture at its harshest plan",
    "kd-only": "students learn from the largest's soft labels only (no label loss)",
    "clip-total": "candidates' gradients summed, then the sum clipped",
    "untied-training": "trained on the untied space (78 slots) with the same menu",
    "batch-32": "batch 32, twice the steps (same images)",
    "dense-1": "one random dense float architecture per step besides the sandwich (n_dense 1)",
    "issue-recipe": "the trainer's former defaults: no schedule, harshest end, KD only, untied",
}


# ----- helpers run in worker processes ---------------------------------------------------------------
def _setup(threads: int = 1) -> None:
    import torch

    torch.set_num_threads(int(threads))


def _job():
    from tritune.search.job import Job

    return Job.from_yaml(str(JOB), validate=False)


def _space(tie: str | None = None):
    space = _job().build_space()
    if tie is None:
        return space
    config = space.config()
    config["compression"] = space.menu.replace(tie=tie, exclude=())
    return type(space)(**config)


def _data():
    from tritune.evaluators.data import load_dataset

    job = _job()
    spec = next(e for e in job.evaluators if e["kind"] == "supernet-accuracy")
    return load_dataset(spec.get("dataset", "mnist5k-hard"), seed=job.seed)


def _train_config(variant: str, steps: int, seed: int):
    from tritune.evaluators.supernet_training import TrainConfig

    over = {k: v for k, v in VARIANTS[variant].items() if k not in ("tie", "steps_factor")}
    factor = int(VARIANTS[variant].get("steps_factor", 1))
    return TrainConfig(**{"steps": steps * factor, "seed": seed, "threads": 1, "checkpoint_every": 50, **over})


def train_variant(variant: str, steps: int, seed: int, path: str) -> dict[str, Any]:
    """Train (or resume) one supernet; returns its timing."""
    _setup(1)
    from tritune.evaluators.supernet_training import train_supernet
    from tritune.spaces.mobilenet.supernet import MobileNetSupernet
    from tritune.spaces.checkpoint import load_checkpoint

    config = _train_config(variant, steps, seed)
    space = _space(VARIANTS[variant].get("tie"))
    if Path(path).is_file():
        ckpt = load_checkpoint(path)
        if ckpt.step >= config.steps and ("sensitivity" in ckpt.extra or not config.sensitivity_images):
            return dict(ckpt.extra.get("timing") or {})
    supernet = MobileNetSupernet(space, {"seed": seed})
    c0, t0 = time.process_time(), time.perf_counter()
    result = train_supernet(supernet, _data(), config, checkpoint=path, progress=False)
    timing = {"steps": config.steps, "batch_size": config.batch_size, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
              "train_wall_s": result.seconds, "steps_this_call": len(result.losses)}
    _store_extra(path, {"timing": timing})
    return timing


def _store_extra(path: str, more: dict[str, Any]) -> None:
    from tritune.evaluators.supernet_training import TrainConfig, make_optimizer
    from tritune.spaces.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(path)
    optimizer = make_optimizer(ckpt.supernet, TrainConfig.from_json(ckpt.extra.get("train") or {}))
    ckpt = load_checkpoint(path, ckpt.supernet, optimizer=optimizer)
    save_checkpoint(path, ckpt.supernet, optimizer=optimizer, step=ckpt.step, extra={**ckpt.extra, **more})


def evaluate_variant(path: str, sets: dict[str, list[dict]], seed: int) -> dict[str, Any]:
    """Inherited accuracy (the search's `SupernetAccuracy`) of every candidate set on one supernet."""
    _setup(1)
    from tritune.evaluators.supernet_accuracy import SupernetAccuracy
    from tritune.spaces import Candidate
    from tritune.spaces.checkpoint import load_checkpoint

    supernet = load_checkpoint(path).supernet
    evaluator = SupernetAccuracy(supernet=supernet, dataset=_data(), calib_batches=4, calib_batch_size=128, seed=seed)
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    for name, cands in sets.items():
        out[name] = [r["accuracy"] for r in evaluator.evaluate([Candidate.from_json(c) for c in cands])]
    out["largest"] = evaluator.evaluate([supernet.sampler.largest()])[0]["accuracy"]
    out["seconds_per_candidate"] = (time.perf_counter() - t0) / max(1, 1 + sum(len(c) for c in sets.values()))
    return out


def train_alone(candidate: dict, steps: int, seed: int) -> dict[str, Any]:
    """A candidate trained by itself from a fresh initialisation (compression active)."""
    _setup(1)
    from tritune.evaluators.supernet_training import TrainConfig, accuracy, calibration_batches, train_candidate
    from tritune.spaces import Candidate
    from tritune.spaces.mobilenet.supernet import MobileNetSupernet

    cand = Candidate.from_json(candidate)
    data = _data()
    net = MobileNetSupernet(_space(), {"seed": seed})
    config = TrainConfig(steps=steps, seed=seed, threads=1, n_random=0, sensitivity_images=0)
    result = train_candidate(net, cand, data, config)
    net.recalibrate(cand, calibration_batches(data, 4, 128, seed=seed))
    return {"accuracy": 100.0 * accuracy(net, cand, data.test), "seconds": result.seconds}


def step_timing(steps: int, seed: int) -> dict[str, Any]:
    """Seconds per default training step at 1 and 2 threads, interleaved (same process, same load)."""
    import torch

    from tritune.evaluators.supernet_training import TrainConfig, train_supernet
    from tritune.spaces.mobilenet.supernet import MobileNetSupernet

    space, data = _space(), _data()
    out: dict[str, list[float]] = {"1": [], "2": [], "cpu1": [], "cpu2": []}
    for rep in range(2):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            # steps from the compressed part of the schedule (the costlier candidates)
            config = TrainConfig(steps=steps, seed=seed, threads=threads, phases=None, sensitivity_images=0)
            supernet = MobileNetSupernet(space, {"seed": seed})
            train_supernet(supernet, data, {**config.to_json(), "steps": 2}, progress=False)  # warm-up
            c0 = time.process_time()
            result = train_supernet(supernet, data, config, progress=False)
            out[str(threads)].append(result.seconds / steps)
            out[f"cpu{threads}"].append((time.process_time() - c0) / steps)
    return {k: statistics.median(v) for k, v in out.items()} | {"runs": out}


# ----- the benchmark -------------------------------------------------------------------------------------
def candidate_sets(space, n_mixed: int, n_dense: int, seed: int) -> dict[str, list]:
    dense_plan = space.menu.default()
    mixed = [space.sample(np.random.default_rng([seed, 1, i])) for i in range(n_mixed)]
    dense = []
    for i in range(n_dense):
        c = space.sample(np.random.default_rng([seed, 2, i]))
        dense.append(c.replace(compression=tuple(dense_plan for _ in c.compression)))
    return {"mixed": mixed, "dense": [space.validate(c) for c in dense]}


def screened_set(space, table, max_drop: float | None, menu_drop: float | None, n: int, seed: int) -> tuple[list, int]:
    """What the job's search sends to the costly query: the first ``n`` draws of its stage-2
    sampler (the space without the choices that alone cost more than ``menu_drop``:
    ``stages.search.max_drop``) whose estimated drop passes the job's constraint ``max_drop``,
    and how many draws it took."""
    from tritune.spaces.sensitivity import screened_space

    sampler = space if menu_drop is None else screened_space(space, table, menu_drop)
    out, i = [], 0
    while len(out) < n and i < 200 * n:
        c = sampler.sample(np.random.default_rng([seed, 3, i]))
        i += 1
        if max_drop is None or table.estimate(space, c) <= max_drop:
            out.append(space.validate(c))
    return out, i


def _max_drop() -> float | None:
    for c in _job().constraints:
        if c.get("metric") == "accuracy_drop" and c.get("max") is not None:
            return float(c["max"])
    return None


def _menu_drop() -> float | None:
    config = _job().stages_config()
    return None if config is None else config.search.max_drop


def _kendall(a: list[float], b: list[float]) -> tuple[float, float]:
    from scipy.stats import kendalltau

    t = kendalltau(a, b)
    return float(t.statistic), float(t.pvalue)


def _ratio(values: list[float], largest: float) -> float:
    return statistics.median(values) / largest if values and largest > 0 else float("nan")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from tritune.evaluators.supernet_training import TrainConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=TrainConfig().steps, help="supernet training steps (default: TrainConfig's)")
    ap.add_argument("--candidates", type=int, default=30)
    ap.add_argument("--dense", type=int, default=30)
    ap.add_argument("--alone-steps", type=int, default=None, help="steps of each candidate trained alone (default: --steps)")
    ap.add_argument("--ablation", default="none", help="'all', 'none' or a comma list of " + ", ".join(v for v in VARIANTS if v != "default"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timing-steps", type=int, default=10, help="steps per side of the 1 vs 2 thread timing (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=str(REPO / "runs" / "supernet_ranking"))
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "supernet_ranking.json"))
    args = ap.parse_args(argv)
    alone_steps = args.alone_steps or args.steps
    variants = ["default"] + ([v for v in VARIANTS if v != "default"] if args.ablation == "all" else
                              [v for v in args.ablation.split(",") if v and v != "none"])
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        ap.error(f"--ablation: unknown variants {unknown}; allowed: {', '.join(VARIANTS)}")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    _setup(1)
    space = _space()
    sets = candidate_sets(space, args.candidates, args.dense, args.seed)
    done_path = cache / "alone.json"
    alone: dict[str, dict] = json.loads(done_path.read_text()) if done_path.is_file() else {}
    key = lambda c: f"{c.id}-{alone_steps}-{args.seed}"  # noqa: E731

    ckpts = {v: str(cache / f"{v}-{args.steps}-{args.seed}.safetensors") for v in variants}
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
        trainings = {v: pool.submit(train_variant, v, args.steps, args.seed, ckpts[v]) for v in variants}
        jobs: dict[str, cf.Future] = {}

        def submit_alone(cands: list) -> None:
            for c in cands:
                if key(c) not in alone and key(c) not in jobs:
                    jobs[key(c)] = pool.submit(train_alone, c.to_json(), alone_steps, args.seed)

        submit_alone(sets["mixed"])
        timing = trainings["default"].result()
        print(f"default supernet: {timing}", flush=True)
        from tritune.evaluators.sensitivity import load_sensitivity

        table = load_sensitivity(ckpts["default"])
        max_drop, menu_drop = _max_drop(), _menu_drop()
        n_draws = 0
        if table is not None and (max_drop is not None or menu_drop is not None):
            sets["screened"], n_draws = screened_set(space, table, max_drop, menu_drop, args.candidates, args.seed)
            submit_alone(sets["screened"])
        plain = {name: [c.to_json() for c in cands] for name, cands in sets.items()}
        evals = {v: pool.submit(evaluate_variant, ckpts[v], plain, args.seed) for v in ["default"]}
        for v in variants[1:]:
            trainings[v].result()
            evals[v] = pool.submit(evaluate_variant, ckpts[v], plain, args.seed)
        for k, fut in jobs.items():
            alone[k] = fut.result()
            done_path.write_text(json.dumps(alone))
        scores = {v: f.result() for v, f in evals.items()}
        timings = {v: trainings[v].result() for v in variants}
    step_t = step_timing(args.timing_steps, args.seed) if args.timing_steps else {}

    # ----- tables ----------------------------------------------------------------------------------------
    named = [s for s in ("mixed", "screened") if s in sets]
    alone_acc = {s: [alone[key(c)]["accuracy"] for c in sets[s]] for s in named}
    summary: dict[str, Any] = {}
    for v in variants:
        sc = scores[v]
        row = {"largest": sc["largest"], "dense_median": statistics.median(sc["dense"]), "dense_ratio": _ratio(sc["dense"], sc["largest"]),
               "seconds_per_candidate": sc["seconds_per_candidate"], **{f"timing_{k}": val for k, val in timings[v].items()}}
        for s in named:
            tau, p = _kendall(sc[s], alone_acc[s])
            row.update({f"{s}_median": statistics.median(sc[s]), f"{s}_ratio": _ratio(sc[s], sc["largest"]), f"{s}_tau": tau, f"{s}_tau_p": p})
        summary[v] = row
    d = summary["default"]
    goals = [("Kendall tau, mixed (>= 0.7)", d["mixed_tau"], d["mixed_tau"] >= 0.7),
             ("median mixed / dense largest (>= 0.80)", d["mixed_ratio"], d["mixed_ratio"] >= 0.8),
             ("median dense archs / dense largest (>= 0.90)", d["dense_ratio"], d["dense_ratio"] >= 0.9)]
    if "screened" in named:
        goals[1:1] = [("Kendall tau, screened (>= 0.7)", d["screened_tau"], d["screened_tau"] >= 0.7)]
        goals.insert(3, ("median screened / dense largest (>= 0.80)", d["screened_ratio"], d["screened_ratio"] >= 0.8))
    result = {
        "benchmark": "supernet_ranking", "job": str(JOB.relative_to(REPO)), "space": space.config(), "args": vars(args),
        "train_config": _train_config("default", args.steps, args.seed).to_json(), "alone_steps": alone_steps,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "sets": {s: [c.to_json() for c in cands] for s, cands in sets.items()}, "screen": {"max_drop": max_drop, "menu_max_drop": menu_drop, "draws": n_draws},
        "inherited": {v: {k: scores[v][k] for k in scores[v]} for v in variants}, "alone": alone_acc,
        "summary": summary, "goals": [{"goal": g, "value": val, "met": bool(ok)} for g, val, ok in goals], "step_timing": step_t,
        "sensitivity": None if table is None else {"seconds": table.seconds, "probes": table.extra.get("probes"), "base": table.base,
                                                   "images": table.images, "factored": table.factored},
        "total_s": time.perf_counter() - t_start,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    d = s["default"]
    lines = [f"Supernet: {result['train_config']['steps']} steps of {result['train_config']['batch_size']} images; candidates trained "
             f"alone: {result['alone_steps']} steps each. Sets: mixed {len(result['sets']['mixed'])}, "
             f"screened {len(result['sets'].get('screened', []))} (of {result['screen']['draws']} draws of the stage-2 sampler, "
             f"menu max drop {result['screen'].get('menu_max_drop')}, constraint max drop {result['screen']['max_drop']}), "
             f"dense {len(result['sets']['dense'])}.", "",
             "| goal | value | met |", "|---|---:|:---:|"]
    lines += [f"| {g['goal']} | {g['value']:.3f} | {'yes' if g['met'] else 'no'} |" for g in result["goals"]]
    lines += ["", "| default supernet | value |", "|---|---:|",
              f"| dense largest, inherited % | {d['largest']:.1f} |",
              f"| median dense architectures % | {d['dense_median']:.1f} |",
              f"| median mixed % | {d['mixed_median']:.1f} |"]
    if "screened_median" in d:
        lines.append(f"| median screened % | {d['screened_median']:.1f} |")
    lines += [f"| training wall s (this run, {d.get('timing_steps', '?')} steps, 1 thread, shared machine) | {d.get('timing_wall_s', float('nan')):.0f} |",
              f"| training CPU s | {d.get('timing_cpu_s', float('nan')):.0f} |",
              f"| seconds per candidate query (SupernetAccuracy) | {d['seconds_per_candidate']:.2f} |"]
    if result.get("sensitivity"):
        sen = result["sensitivity"]
        lines.append(f"| sensitivity table: probes / seconds | {sen['probes']} / {sen['seconds']:.0f} |")
    t = result.get("step_timing") or {}
    if t:
        lines += [f"| s/step, 1 thread (wall / CPU) | {t['1']:.2f} / {t['cpu1']:.2f} |",
                  f"| s/step, 2 threads (wall / CPU) | {t['2']:.2f} / {t['cpu2']:.2f} |"]
    if len(s) > 1:
        named = [k for k in ("mixed", "screened") if f"{k}_tau" in d]
        head = "| variant | what changes | largest % | dense median / largest | " + " | ".join(f"{k} median / largest | {k} tau" for k in named) + " | train CPU s |"
        lines += ["", head, "|---|---|---:|---:|" + "---:|---:|" * len(named) + "---:|"]
        for v, row in s.items():
            cells = " | ".join(f"{row[f'{k}_ratio']:.2f} | {row[f'{k}_tau']:.2f}" for k in named)
            lines.append(f"| {v} | {VARIANT_NOTES[v]} | {row['largest']:.1f} | {row['dense_ratio']:.2f} | {cells} | {row.get('timing_cpu_s', float('nan')):.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
