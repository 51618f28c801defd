"""Benchmark of the fine-tuning methods: how each pruning method reaches a finalist's masks.

Setting: the space of ``search/examples/mobilenet_mnist.yaml`` on ``mnist5k-hard`` (4,000 train /
1,000 test images), a supernet trained ``--supernet-steps`` steps with the current trainer
(`train_supernet`, sandwich rule; its quality is not the point: every method starts from the same
inherited weights).

Finalists: mixed per-layer plans on architectures of the space's upper end. Weight sharing works
today for the largest architecture only (issue 17: every smaller dense architecture inherits
chance accuracy), so the architectures vary in resolution and kernel sizes and keep the largest
width, depths and expand ratios (`CandidateSampler.sample` with those dimensions elastic). Two
kinds of plan, ``--pool`` candidates each, the ``--finalists / 2`` best of each kind by inherited
accuracy (BN statistics and activation ranges re-estimated, as `SupernetAccuracy` does) go on,
as a search would pass them on:

* ``sampler``: the search's own sampler -- every slot (or tie group, as the job's
  ``compression.tie`` says) picks any pattern, ratio and bit-width on the menu;
* ``moderate``: what a finalist of an accuracy-aware search looks like -- each slot, with
  probability 0.7, a random menu choice of at most 75 % sparsity and at least 8 bits, else dense
  int8.

Each finalist is fine-tuned with every method of `tritune.evaluators.finetune` at the same
budget (``--epochs`` epochs, SGD + Nesterov, cosine learning rate, same batches, one thread). The
methods of a finalist train side by side, taking their steps in turn (who goes first rotates),
so that the load of this shared machine falls on all of them alike; time is the sum of a
method's own steps (BN / range re-estimation included) plus its final check. Reported per run: test
accuracy of the deployed network before (inherited) and after, training wall time and its ratio
to ``oneshot``'s on the same finalist, and mask exactness checked on the deploy form
(`check_mask` on every masked layer, no non-zero weight outside a mask, int codes in range).

    nice -n 10 python benchmarks/finetune_methods.py      # writes docs/results/finetune_methods.json
    python benchmarks/finetune_methods.py --supernet-steps 50 --pool 6 --finalists 2 --epochs 0.5   # quick look
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from tritune.evaluators.data import load_dataset
from tritune.evaluators.finetune import DEFAULT_METHOD, METHODS, FinetuneConfig, Finetuner, mask_report
from tritune.evaluators.supernet_training import TrainConfig, accuracy, calibration_batches, train_supernet
from tritune.kernels.pruning import ReweightedGroupLasso
from tritune.spaces.compression import parse_pattern
from tritune.spaces.registry import create
from tritune.spaces.mobilenet.supernet import MobileNetSupernet, QuantizedConv2d, QuantizedLinear, deploy, trainable_subnet
from tritune.spaces.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "search" / "examples" / "mobilenet_mnist.yaml"
#: Dimensions the finalists' architectures vary in (see the module docstring).
ELASTIC = ("resolution", "kernel", "compression")


def example_space():
    cfg = dict(yaml.safe_load(JOB.read_text())["space"])
    return create(cfg.pop("name"), **cfg)


def supernet_for(space, data, steps: int, path: Path, threads: int) -> tuple[MobileNetSupernet, float]:
    """The benchmark's supernet: loaded from ``path`` when it was trained for this space and
    these steps, else trained (and saved there). Returns it and the training seconds."""
    if path.is_file():
        ckpt = load_checkpoint(path)
        if ckpt.step == steps and ckpt.supernet.space.config() == space.config():
            return ckpt.supernet, float(ckpt.extra.get("seconds", float("nan")))
    sn = MobileNetSupernet(space)
    t = time.perf_counter()
    train_supernet(sn, data, TrainConfig(steps=steps, threads=threads), checkpoint=path, resume=False, progress=True)
    seconds = time.perf_counter() - t
    from tritune.spaces.checkpoint import save_checkpoint

    save_checkpoint(path, sn, step=steps, extra={"data": data.name, "seconds": seconds})
    return sn, seconds


def moderate(space, cand, rng: np.random.Generator):
    """``cand`` with a finalist-like plan (see the module docstring)."""
    genome = space.to_genome(cand)
    for gene in space.genes():
        if not gene.name.startswith("comp:"):
            continue
        mild = [o for o in gene.choices if o.sparsity <= 0.75 and o.w_bits >= 8]
        int8 = next(o for o in gene.choices if o.pattern == "dense" and o.w_bits == 8 and o.a_bits == 8)
        genome[gene.name] = mild[int(rng.integers(len(mild)))] if rng.random() < 0.7 else int8
    return space.from_genome(space.canonical_genome(genome))


def describe(space, cand) -> dict[str, Any]:
    layers = [s for s in space.layers(cand) if s.has_weights]
    families = [parse_pattern(s.pattern).family for s in layers]
    masked = [f for f in families if f not in ("dense", "channel")]
    return {
        "id": cand.id, "resolution": cand["resolution"], "width": cand["width"], "depth": list(cand["depth"]),
        "layers": len(layers), "masked_layers": len(masked), "structured_layers": sum(f in ReweightedGroupLasso.FAMILIES and f != "channel" for f in families),
        "channel_pruned": families.count("channel"),
        "patterns": {f: families.count(f) for f in sorted(set(families))},
        "w4": sum(s.w_bits == 4 for s in layers), "w8": sum(s.w_bits == 8 for s in layers), "a8": sum(s.a_bits == 8 for s in layers),
        "weights_kept": round(sum(s.params for s in layers)),
    }


def deployed_check(net) -> bool:
    """Masks exact on the deploy form and int codes inside their bit-width's range."""
    sub = deploy(net)
    exact, _ = mask_report(sub, net.layers)
    for m in sub.modules():
        if isinstance(m, (QuantizedConv2d, QuantizedLinear)) and m.weight is None:
            q = 2 ** (m.w_bits - 1)
            exact &= -q <= int(m.weight_codes.min()) and int(m.weight_codes.max()) <= q - 1
    return bool(exact)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="mnist5k-hard")
    ap.add_argument("--supernet-steps", type=int, default=300)
    ap.add_argument("--checkpoint", type=Path, default=REPO / "runs" / "finetune-methods-supernet.safetensors")
    ap.add_argument("--pool", type=int, default=6)
    ap.add_argument("--min-masked", type=int, default=8)
    ap.add_argument("--finalists", type=int, default=4)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "finetune_methods.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    data = load_dataset(args.dataset, seed=args.seed)
    space = example_space()
    sn, supernet_seconds = supernet_for(space, data, args.supernet_steps, args.checkpoint, args.threads)
    sn.train()

    # finalists: the best of each kind of plan (see the module docstring)
    calib = calibration_batches(data, 4, 128, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    chosen: list[tuple[float, Any, str]] = []
    pools: dict[str, list[float]] = {}
    for kind in ("sampler", "moderate"):
        pool = []
        while len(pool) < args.pool:
            cand = sn.sampler.sample(rng, ELASTIC)
            if kind == "moderate":
                cand = moderate(space, cand, rng)
            d = describe(space, cand)
            if d["masked_layers"] >= args.min_masked and d["w4"] + d["w8"] > 0:
                pool.append(cand)
        scored = []
        for cand in pool:
            sn.recalibrate(cand, calib)
            scored.append((100.0 * accuracy(sn, cand, data.test), cand))
        scored.sort(key=lambda t: -t[0])
        pools[kind] = [a for a, _ in scored]
        chosen += [(a, c, kind) for a, c in scored[: max(1, args.finalists // 2)]]
        print(f"{kind}: pool of {len(pool)}, inherited accuracy median {statistics.median(pools[kind]):.1f}%, "
              f"best {scored[0][0]:.1f}%", flush=True)
    finalists = [c for _, c, _ in chosen]

    runs = []
    for i, cand in enumerate(finalists):
        info = describe(space, cand)
        print(f"finalist {i} {cand.id} ({chosen[i][2]}, inherited {chosen[i][0]:.1f}%): {info['layers']} layers, {info['masked_layers']} masked ({info['structured_layers']} block/kernel-pattern), "
              f"{info['channel_pruned']} channel-pruned, w4 {info['w4']}, w8 {info['w8']}", flush=True)
        tuners = {}
        for method in args.methods:
            sn.recalibrate(cand, calib)
            config = FinetuneConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, method=method,
                                    seed=args.seed, threads=args.threads)
            tuners[method] = Finetuner(trainable_subnet(sn, cand), data, config)
        # the methods take their steps in turn (rotating who goes first), so load on the machine
        # falls on all of them alike; each keeps its own network, optimizer and schedule
        times: dict[str, list[float]] = {m: [] for m in args.methods}
        total = tuners[args.methods[0]].total_steps
        n = len(args.methods)
        for step in tqdm(range(total), desc=f"finalist {i}", leave=False):
            for method in args.methods[step % n:] + args.methods[: step % n]:
                t = time.perf_counter()
                tuners[method].train_step()
                times[method].append(time.perf_counter() - t)
        for method in args.methods:
            tuner = tuners[method]
            searched = sum(len(m.layers) for m in tuner.methods if m.name != "oneshot")
            r = tuner.run()  # the schedule is done: final masks checked, then scored
            exact = r.masks_exact and deployed_check(tuner.net)
            phase = tuner.phase_end
            row = {"finalist": i, "candidate": cand.id, "method": method, "before": r.accuracy_before, "after": r.accuracy,
                   "seconds": sum(times[method]) + r.seconds, "median_step": statistics.median(times[method]),
                   "median_step_searching": statistics.median(times[method][1:phase]) if method != "oneshot" else None,
                   "median_step_masks_fixed": statistics.median(times[method][phase + 1:]),
                   "eval_seconds": r.eval_seconds, "steps": r.step, "masks_exact": exact, "searched_layers": searched,
                   }
            runs.append(row)
            print(f"  {method:11s} before {r.accuracy_before:5.1f}  after {r.accuracy:5.1f}  {row['seconds']:6.1f} s "
                  f"(median step {row['median_step']:.3f} s)  masks exact {exact}", flush=True)
        base = next(r for r in runs if r["finalist"] == i and r["method"] == "oneshot") if "oneshot" in args.methods else None
        for r in runs:
            if r["finalist"] == i and base is not None:
                r["time_vs_oneshot"] = r["seconds"] / base["seconds"]

    summary = {}
    for method in args.methods:
        rows = [r for r in runs if r["method"] == method]
        summary[method] = {
            "after_mean": statistics.fmean(r["after"] for r in rows),
            "gain_mean": statistics.fmean(r["after"] - r["before"] for r in rows),
            "seconds_median": statistics.median(r["seconds"] for r in rows),
            "time_vs_oneshot_median": statistics.median(r.get("time_vs_oneshot", float("nan")) for r in rows),
            "masks_exact": all(r["masks_exact"] for r in rows),
            "wins": sum(r["after"] >= max(o["after"] for o in runs if o["finalist"] == r["finalist"]) for r in rows),
        }
    best = max(s["after_mean"] for s in summary.values())
    sound = [m for m, s in summary.items() if s["masks_exact"] and s["after_mean"] >= best - 1.0]
    fastest_sound = min(sound, key=lambda m: summary[m]["time_vs_oneshot_median"]) if sound else None
    result = {
        "benchmark": "finetune_methods", "dataset": args.dataset, "space": space.config(), "job": str(JOB.relative_to(REPO)),
        "protocol": {"supernet_steps": args.supernet_steps, "supernet_seconds": supernet_seconds, "pool": args.pool,
                     "min_masked": args.min_masked, "finalists": args.finalists, "epochs": args.epochs, "lr": args.lr,
                     "batch_size": args.batch_size, "threads": args.threads, "seed": args.seed,
                     "sound": "masks exact on every finalist and mean accuracy within 1 point of the best method's",
                     "fastest": "smallest median time ratio to oneshot on the same finalist (steps interleaved)"},
        "finalists": [describe(space, c) | {"kind": kind, "inherited": a} for a, c, kind in chosen],
        "pool_inherited": pools,
        "runs": runs, "summary": summary, "fastest_sound": fastest_sound, "default": DEFAULT_METHOD,
        "seconds": time.perf_counter() - t_all,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print()
    print(markdown(result))
    print(f"\n{time.perf_counter() - t_all:.0f} s; written to {args.out}")
    return result


def markdown(result: dict) -> str:
    methods = list(result["summary"])
    lines = [f"{result['dataset']}, {result['protocol']['epochs']:g} epochs per model, one thread. Cells: accuracy % before -> after "
             f"(training seconds).", "",
             "| finalist | plan | masked (block/kp) / layers, 4-bit | " + " | ".join(methods) + " |", "|---|---|---|" + "---|" * len(methods)]
    by = {(r["finalist"], r["method"]): r for r in result["runs"]}
    for i, f in enumerate(result["finalists"]):
        cells = []
        for m in methods:
            r = by.get((i, m))
            cells.append("--" if r is None else f"{r['before']:.1f} -> {r['after']:.1f} ({r['seconds']:.0f} s)" + ("" if r["masks_exact"] else " NOT EXACT"))
        lines.append(f"| {f['id']} | {f['kind']} | {f['masked_layers']} ({f['structured_layers']}) / {f['layers']}, {f['w4']} | "
                     + " | ".join(cells) + " |")
    lines += ["", "| method | mean after | mean gain | median time | time / oneshot | best on | masks exact |", "|---|---|---|---|---|---|---|"]
    for m, s in result["summary"].items():
        lines.append(f"| {m} | {s['after_mean']:.1f} | {s['gain_mean']:+.1f} | {s['seconds_median']:.0f} s | {s['time_vs_oneshot_median']:.2f} | "
                     f"{s['wins']}/{len(result['finalists'])} | {'yes' if s['masks_exact'] else 'NO'} |")
    lines.append(f"\nFastest sound method: {result['fastest_sound']} (default: {result['default']}).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
