"""Benchmark: token pruning pays off -- a ViT that keeps part of its tokens after the first blocks,
side by side with the same ViT dense, on ort-cpu and on mnist5k-hard.

A dense `vit` network (patch 4: 49 patch tokens + the class token) is trained from scratch. Each
pruning schedule then fine-tunes a copy of it with tokens pruned (token selection adds no
weights, so the copy starts from the trained ones); the dense network is fine-tuned for the same
steps too, so every accuracy is compared at equal training. Then all networks are exported and
timed on ort-cpu in the same interleaved rounds (single thread, two passes, each keeping its
faster), and the dense multiply-accumulates of their IR are summed.

Schedules: ``b2:0.5`` keeps half the tokens entering the third of six blocks (the first third
prunes nothing); ``b2:0.5,b4:0.5`` halves them again two blocks later, as DynamicViT prunes in
stages.

    python benchmarks/vit_tokens.py                  # table to stdout, JSON to docs/results/vit_tokens.json
    python benchmarks/vit_tokens.py --epochs 2 --finetune-epochs 1   # a quick look
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any


#: The trained architecture: the vit space's largest at embedding 64 (patch 4, 6 blocks of 4 heads, MLP ratio 4).
ARCH = {"embed": 64}
SCHEDULES = {"dense": {}, "b2:0.5": {2: 0.5}, "b2:0.5,b4:0.5": {2: 0.5, 4: 0.5}}


def _train(net: Any, data: Any, epochs: float, lr: float, seed: int, desc: str) -> float:
    """AdamW, cosine schedule with a short warm-up, label smoothing 0.1, batches of 128; seconds spent."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    x_all, y_all = data.train.tensors
    steps_per_epoch = max(1, len(x_all) // 128)
    total = max(1, int(round(epochs * steps_per_epoch)))
    warmup = min(100, total // 10)
    net.train().requires_grad_(True)
    decay = [p for n, p in net.named_parameters() if p.dim() > 1 and "pos_embed" not in n]
    rest = [p for n, p in net.named_parameters() if not (p.dim() > 1 and "pos_embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    step = 0
    with tqdm(total=total, desc=desc, leave=False) as bar:
        while step < total:
            for idx in torch.randperm(len(x_all), generator=gen).split(128):
                if step >= total or len(idx) < 128:
                    break
                scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
                for g in opt.param_groups:
                    g["lr"] = lr * scale
                loss = F.cross_entropy(net(x_all[idx]), y_all[idx], label_smoothing=0.1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    net.eval().requires_grad_(False)
    return time.perf_counter() - t0


def _accuracy(net: Any, data: Any) -> float:
    import torch

    x, y = data.test.tensors
    with torch.no_grad():
        pred = torch.cat([net(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
    return 100.0 * float((pred == y).float().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=float, default=40, help="training epochs of the dense network")
    parser.add_argument("--finetune-epochs", type=float, default=10, help="fine-tuning epochs of every network, dense included")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training (timing is single-threaded)")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/results/vit_tokens.json")
    args = parser.parse_args(argv)

    import torch

    from tritune.evaluators.data import load_dataset
    from tritune.kernels.timing import Protocol, measure_passes
    from tritune.spaces import create
    from tritune.spaces.vit.network import ViT
    from tritune.targets import create_target

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = load_dataset("mnist5k-hard", seed=args.seed)
    space = create("vit")
    genome = space.to_genome(space.largest())
    genome.update(ARCH)
    base = space.dense(space._make(genome))
    trained = ViT(space, base)
    train_s = _train(trained, data, args.epochs, args.lr, args.seed, "train dense")
    trained_accuracy = _accuracy(trained, data)
    nets, rows = {}, []
    for name, keep in SCHEDULES.items():
        cand = space.dense(base, keep=keep)
        net = ViT(space, cand)
        net.load_state_dict(copy.deepcopy(trained.state_dict()))
        seconds = _train(net, data, args.finetune_epochs, args.lr * 0.3, args.seed + 1, f"fine-tune {name}")
        nets[name] = (cand, net)
        rows.append({"schedule": name, "keep": {str(k): v for k, v in keep.items()}, "candidate": cand.id, "tokens": space.tokens(cand),
                     "dense_macs": float(sum(L.dense_macs for L in space.layers(cand))), "accuracy": _accuracy(net, data),
                     "finetune_s": seconds})
    target = create_target("ort-cpu")
    shape = space.input_shape(base)
    runnables = [target.build(net, input_shape=shape, name=name) for name, (_, net) in nets.items()]
    timed = measure_passes([runnables], Protocol(threads=1), args.passes)[0]
    dense = rows[0]
    for row, m in zip(rows, timed):
        row.update(latency_ms=m.latency_ms, spread=m.spread)
    for row in rows:
        row.update(speedup=dense["latency_ms"] / row["latency_ms"], mac_ratio=dense["dense_macs"] / row["dense_macs"],
                   accuracy_loss=dense["accuracy"] - row["accuracy"])
    print(f"dense ViT (patch 4, embed 64, 6 blocks x 4 heads, MLP x4) trained {args.epochs:g} epochs: {trained_accuracy:.2f} % "
          f"({train_s:.0f} s); every network below fine-tuned {args.finetune_epochs:g} more epochs")
    print("| schedule | tokens per block | MACs (M) | MAC ratio | ort-cpu ms (spread) | speedup | accuracy % | loss (points) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['schedule']} | {' '.join(map(str, r['tokens']))} | {r['dense_macs'] / 1e6:.1f} | {r['mac_ratio']:.2f}x | "
              f"{r['latency_ms']:.3f} ({100 * r['spread']:.0f} %) | {r['speedup']:.2f}x | {r['accuracy']:.2f} | {r['accuracy_loss']:+.2f} |")
    doc = {"benchmark": "vit_tokens", "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
           "settings": {"arch": {"patch": 4, "embed": 64, "depth": 6, "heads": 4, "mlp_ratio": 4}, "epochs": args.epochs,
                        "finetune_epochs": args.finetune_epochs, "lr": args.lr, "threads": args.threads, "seed": args.seed,
                        "protocol": {"threads": 1, "passes": args.passes}},
           "trained_accuracy": trained_accuracy, "train_s": train_s, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1, sort_keys=True, default=float) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
