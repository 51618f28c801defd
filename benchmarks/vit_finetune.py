"""Benchmark: how should a vit finalist be fine-tuned from its inherited weights?

Candidates drawn by the ``vit`` example job's own sampler (``search/examples/vit_mnist.yaml``,
mnist5k-hard) are fine-tuned from the job's supernet checkpoint with their compression kept
(`tritune.evaluators.finetune.Finetuner`, ``oneshot`` masks), once per optimizer setting, for the
same number of epochs. The baseline is each candidate's inherited accuracy, measured by the same
deploy form. Accuracy is on the 1,000 test images; one thread.

    python benchmarks/vit_finetune.py                       # 3 candidates x 3 settings, 4 and 8 epochs
    python benchmarks/vit_finetune.py --candidates 2 --epochs 4
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: (optimizer, learning rate, weight decay): the stage's default SGD and AdamW as the supernet trains.
SETTINGS = [("sgd", 0.05, 4e-5), ("adamw", 2e-3, 0.05), ("adamw", 4e-3, 0.05)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default=str(REPO / "search/examples/vit_mnist.yaml"))
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--epochs", default="4,8", help="comma-separated epoch counts")
    parser.add_argument("--seed", type=int, default=7, help="the sampler's seed")
    parser.add_argument("--out", default=str(REPO / "docs/results/vit_finetune.json"))
    args = parser.parse_args()

    from tqdm.auto import tqdm

    from tritune.evaluators.data import load_dataset
    from tritune.evaluators.finetune import FinetuneConfig, Finetuner
    from tritune.kernels.timing import torch_threads
    from tritune.search.job import Job
    from tritune.spaces.checkpoint import load_checkpoint

    job = Job.from_yaml(args.job)
    spec = next(e for e in job.evaluators if e.get("kind") == "supernet-accuracy")
    supernet = load_checkpoint(spec["checkpoint"]).supernet
    data = load_dataset(spec.get("dataset", "mnist5k-hard"), seed=job.seed)
    rng = np.random.default_rng(args.seed)
    candidates = [supernet.space.sample(rng) for _ in range(args.candidates)]
    epochs = [float(e) for e in args.epochs.split(",")]
    rows = []
    todo = [(c, e, s) for c in candidates for e in epochs for s in SETTINGS]
    with torch_threads(1):
        for cand, ep, (opt, lr, wd) in tqdm(todo, desc="fine-tune", unit="run"):
            t0 = time.perf_counter()
            config = FinetuneConfig(epochs=ep, lr=lr, optimizer=opt, weight_decay=wd)
            r = Finetuner(supernet.trainable(cand), data, config).run()
            rows.append({"candidate": cand.id, "epochs": ep, "optimizer": opt, "lr": lr, "weight_decay": wd,
                         "inherited": r.accuracy_before, "accuracy": r.accuracy, "masks_exact": r.masks_exact,
                         "seconds": round(time.perf_counter() - t0, 1)})
    names = [f"{o} {lr:g}" for o, lr, _ in SETTINGS]
    print("| candidate | epochs | inherited % | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for cand in candidates:
        for ep in epochs:
            got = [r for r in rows if r["candidate"] == cand.id and r["epochs"] == ep]
            cells = [f"{r['accuracy']:.1f}" for r in got]
            print(f"| {cand.id} | {ep:g} | {got[0]['inherited']:.1f} | " + " | ".join(cells) + " |")
    for ep in epochs:
        gains = {n: float(np.mean([r["accuracy"] - r["inherited"] for r in rows if r["epochs"] == ep and f"{r['optimizer']} {r['lr']:g}" == n]))
                 for n in names}
        print(f"mean gain at {ep:g} epochs: " + ", ".join(f"{n} {g:+.1f}" for n, g in gains.items()))
    Path(args.out).write_text(json.dumps({"machine": platform.processor() or platform.machine(), "job": args.job,
                                          "settings": SETTINGS, "rows": rows}, indent=1))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
