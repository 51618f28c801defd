"""Benchmark: are exported models as accurate and as fast as the search said?

For every member of the Pareto front of an example run (``search/examples/mobilenet_mnist.yaml``:
supernet-accuracy with inherited weights, latency measured on ``ort-cpu``), export it
(`tritune.search.export.export_run`, ``--all``) and compare:

* **accuracy**: the exported file's top-1 accuracy on the test split (``model.onnx`` in
  onnxruntime for ``ort-cpu``; the compiled kernels for ``codegen-cpu``) against the accuracy the
  search reported. Goal: within 0.5 points.
* **latency**: the exported file timed now (the target's protocol) against the search's number.
  Goal: within +-10 %. The baseline timed in the same run, in the same interleaved rounds, is the
  target's own build of the candidate (random seeded weights) -- what the search timed -- so a
  miss can be told apart from a machine that is faster or slower now than during the search.
  ``codegen-cpu`` has no search number when the search timed ``ort-cpu``; its row compares with
  that same-run baseline instead (marked). Both are timed in two passes, each keeping its faster
  one; the same ratio on thread CPU time is printed beside it, since time a shared machine spends
  on other processes inflates wall-clock numbers but not CPU time (CPU share well below 1 says
  the machine was shared while timing).

Beside each model, its **rounding sensitivity**: the torch network's accuracy and top-1 agreement
with itself when, in each of five seeded draws, 0.1 % of every layer's outputs move by one 8-bit
step of that tensor's range -- the size of the rounding differences two runtimes make. A model
whose predictions move under that cannot be reproduced closer than its spread by any runtime.

The missing steps are done first: the supernet is trained when the job's checkpoint does not exist
(``--steps``), the search run when its run directory holds no ``trials.db``. A markdown table
goes to stdout, JSON to ``--out`` (default ``docs/results/export_fidelity.json``).

The ``digits-mild`` preset is a second run where accuracy is far from chance even with a short
supernet training: the embedded ``digits`` set, a small space with mild compression (dense,
unstructured, N:M 2:4 or block 4x1 at 50 %; 8 or 32 bits), 600 training steps.

    python benchmarks/export_fidelity.py                                   # example job as it is
    python benchmarks/export_fidelity.py --run-dir runs/mobilenet-mnist    # an existing run
    python benchmarks/export_fidelity.py --targets ort-cpu,codegen-cpu
    python benchmarks/export_fidelity.py --preset digits-mild --steps 600 --targets ort-cpu,codegen-cpu \
        --out docs/results/export_fidelity_digits.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from tritune.search.export import export_run, load_run
from tritune.search.job import Job

REPO = Path(__file__).resolve().parents[1]
#: Jobs besides the job files: ``digits-mild`` (see the module docstring).
PRESETS = {
    "digits-mild": {
        "name": "digits-mild",
        "space": {"name": "mobilenet", "resolutions": [16, 20], "widths": [0.25, 0.35], "depths": [1, 2], "expands": [3, 4],
                  "kernels": [3, 5], "in_channels": 1, "num_classes": 10,
                  "compression": {"patterns": ["dense", "unstructured", "nm2:4", "block4x1"], "sparsities": [0.5],
                                  "w_bits": [8, 32], "a_bits": [8, 32]}},
        "evaluators": [{"kind": "supernet-accuracy", "checkpoint": "runs/export-fidelity-digits-supernet.safetensors", "dataset": "digits"},
                       {"kind": "latency", "target": "ort-cpu"}],
        "objectives": [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency", "direction": "minimize"}],
        "strategy": {"name": "evolution"}, "budget": {"evaluations": 24}, "batch_size": 4, "seed": 0,
        "run_dir": "runs/export-fidelity-digits",
    },
}
ACCURACY_GOAL_POINTS = 0.5
LATENCY_GOAL = 0.10


def _prepare(args: argparse.Namespace) -> Path:
    """The run directory to export from: trained and searched first when missing."""
    if args.run_dir and (Path(args.run_dir) / "trials.db").is_file():
        return Path(args.run_dir)
    job = Job.from_dict(PRESETS[args.preset], validate=False) if args.preset else Job.from_yaml(args.job, validate=False)
    evaluators = [dict(e) for e in job.evaluators]
    spec = next(e for e in evaluators if e.get("kind") == "supernet-accuracy")
    if args.checkpoint:
        spec["checkpoint"] = args.checkpoint
    job = replace(job, evaluators=tuple(evaluators), run_dir=args.run_dir or job.run_dir, budget=args.budget or job.budget)
    checkpoint = Path(spec["checkpoint"])
    if not checkpoint.is_file():
        from tritune.evaluators.data import load_dataset
        from tritune.evaluators.supernet_training import train_supernet
        from tritune.spaces.mobilenet.supernet import MobileNetSupernet

        print(f"training the supernet ({args.steps} steps) -> {checkpoint}")
        supernet = MobileNetSupernet(job.build_space(), {"seed": job.seed})
        train_supernet(supernet, load_dataset(spec.get("dataset", "mnist5k-hard"), seed=job.seed), {"steps": args.steps},
                       checkpoint=checkpoint)
    from tritune.search.run import run_search

    job = Job.from_dict(job.to_config())
    print(f"searching ({job.budget} evaluations) -> {job.run_dir}")
    run_search(job, run_dir=job.run_dir)
    return Path(job.run_dir)


def _row(m: dict[str, Any]) -> dict[str, Any]:
    meas = m.get("latency_measurement") or {}
    predicted = m.get("latency_predicted_ms")
    reference = meas.get("reference_build_ms")
    baseline, against = (predicted, "search") if predicted is not None else (reference, "same-run build")
    measured = m.get("latency_measured_ms")
    search_acc = m.get("search_accuracy")
    d_acc = None if search_acc is None else m["accuracy"] - search_acc
    ratio = None if not baseline or measured is None else measured / baseline
    ver = m["verification"]["codegen" if m["target"] == "codegen-cpu" else "model.onnx"]
    return {
        "candidate_id": m["candidate_id"], "target": m["target"], "rank": m["origin"].get("rank"), "knee": m["origin"].get("knee"),
        "search_accuracy": search_acc, "torch_accuracy": m["torch_accuracy"], "exported_accuracy": m["accuracy"], "accuracy_delta": d_acc,
        "top1_agreement": ver["top1_agreement"], "max_abs_diff": ver["max_abs_diff"],
        "latency_predicted_ms": predicted, "latency_measured_ms": measured, "reference_build_ms": reference,
        "latency_baseline": against, "latency_ratio": ratio, "measured_vs_reference": None if not reference or measured is None else measured / reference,
        "cpu_ms": meas.get("cpu_latency_ms"), "reference_build_cpu_ms": meas.get("reference_build_cpu_ms"),
        "cpu_vs_reference": None if not meas.get("reference_build_cpu_ms") or meas.get("cpu_latency_ms") is None
        else meas["cpu_latency_ms"] / meas["reference_build_cpu_ms"],
        "spread": meas.get("spread"), "cpu_share": meas.get("cpu_share"),
        "accuracy_goal_met": None if d_acc is None else abs(d_acc) <= ACCURACY_GOAL_POINTS,
        "latency_goal_met": None if ratio is None else abs(ratio - 1.0) <= LATENCY_GOAL,
        "int8_layers": sum(1 for L in m["layers"] if L.get("runs_as") == "int8 (QDQ)"),
        "weight_layers": sum(1 for L in m["layers"] if "weights" in L),
    }


#: Rounding sensitivity: draws, share of each layer's outputs moved, step (of the tensor's max |value|).
SENSITIVITY_DRAWS, SENSITIVITY_SHARE, SENSITIVITY_LEVELS = 5, 0.001, 255


def _deployed(run_dir: Path, candidate_id: str, weights: Any, candidate: Any) -> torch.nn.Module:
    """The torch network a row was exported from (fine-tuned state, else the supernet's)."""
    from tritune.evaluators.finetune import Finetuner

    state = run_dir / "finetune" / candidate_id / "state.safetensors"
    return Finetuner.load_state(state, weights.data).deployable() if state.is_file() else weights.subnet(candidate)


@torch.no_grad()
def rounding_sensitivity(net: torch.nn.Module, x: torch.Tensor, labels: Any) -> dict[str, Any]:
    """Accuracy (%) and top-1 agreement with the unperturbed network over `SENSITIVITY_DRAWS` draws
    that move `SENSITIVITY_SHARE` of every weight layer's outputs by one step (see the module doc)."""
    import numpy as np

    def logits() -> Any:
        return torch.cat([net(x[i:i + 250]) for i in range(0, len(x), 250)]).numpy()

    ref = logits()
    modules = dict(net.named_modules())
    weighted = [L for L in net.layers if L.has_weights]
    accs, agree = [], []
    for seed in range(SENSITIVITY_DRAWS):
        gen = torch.Generator().manual_seed(seed)

        def nudge(_mod: Any, _inp: Any, out: torch.Tensor) -> torch.Tensor:
            step = out.abs().max() / SENSITIVITY_LEVELS
            moved = torch.rand(out.shape, generator=gen) < SENSITIVITY_SHARE
            sign = torch.where(torch.rand(out.shape, generator=gen) < 0.5, -1.0, 1.0)
            return out + moved * sign * step

        hooks = [modules[L.name].register_forward_hook(nudge) for L in weighted[:-1]]  # every layer but the logits
        try:
            out = logits()
        finally:
            for h in hooks:
                h.remove()
        accs.append(100.0 * float(np.mean(out.argmax(1) == labels)))
        agree.append(float(np.mean(out.argmax(1) == ref.argmax(1))))
    return {"accuracy": 100.0 * float(np.mean(ref.argmax(1) == labels)), "perturbed_accuracy": accs,
            "perturbed_agreement": agree, "draws": SENSITIVITY_DRAWS, "share": SENSITIVITY_SHARE, "levels": SENSITIVITY_LEVELS}


def _fmt(v: Any, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def _span(row: dict[str, Any], key: str, spec: str) -> str:
    values = (row.get("rounding_sensitivity") or {}).get(key)
    return "–" if not values else f"{format(min(values), spec)}–{format(max(values), spec)}"


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| candidate | target | rank | search acc | exported acc | Δ acc (pts) | top-1 agree | predicted ms | measured ms | "
            "ratio | same-run build ms | measured / build | same, CPU time | CPU share | 1-step nudges: acc | agree | goals (acc, lat) |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        goals = ", ".join("–" if g is None else ("yes" if g else "NO") for g in (r["accuracy_goal_met"], r["latency_goal_met"]))
        ratio = _fmt(r["latency_ratio"], ".3f") + ("" if r["latency_baseline"] == "search" else " (vs build)")
        lines.append(f"| {r['candidate_id']}{' (knee)' if r['knee'] else ''} | {r['target']} | {r['rank']} | {_fmt(r['search_accuracy'], '.2f')} | "
                     f"{_fmt(r['exported_accuracy'], '.2f')} | {_fmt(r['accuracy_delta'], '+.2f')} | {_fmt(r['top1_agreement'], '.4f')} | "
                     f"{_fmt(r['latency_predicted_ms'], '.4f')} | {_fmt(r['latency_measured_ms'], '.4f')} | {ratio} | "
                     f"{_fmt(r['reference_build_ms'], '.4f')} | {_fmt(r['measured_vs_reference'], '.3f')} | {_fmt(r['cpu_vs_reference'], '.3f')} | "
                     f"{_fmt(r['cpu_share'], '.2f')} | {_span(r, 'perturbed_accuracy', '.1f')} | {_span(r, 'perturbed_agreement', '.3f')} | {goals} |")
    return "\n".join(lines)


def _sensitivities(run_dir: Path, run: Any, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    from tritune.search.export.exporter import SupernetWeights
    from tritune.spaces import Candidate
    from tritune.spaces.images import fit_input

    weights = SupernetWeights(run)
    labels = weights.data.test.tensors[1].numpy()
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        cid = r["candidate_id"]
        if cid in out:
            continue
        manifest = json.loads((run_dir / "export" / r["target"] / cid / "manifest.json").read_text())
        candidate = Candidate.from_json(manifest["candidate"])
        net = _deployed(run_dir, cid, weights, candidate)
        x = fit_input(weights.data.test.tensors[0], int(net.input_size))
        out[cid] = rounding_sensitivity(net, x, labels)
        print(f"  {cid}: rounding sensitivity {_span({'rounding_sensitivity': out[cid]}, 'perturbed_accuracy', '.1f')} %", flush=True)
    return out


def front_stage_rows(run_dir: Path) -> list[dict[str, Any]]:
    """A staged run's own front-stage manifests: the latency the stages before predicted (what
    fine-tuning picked with) and the search's first timing, against the front stage's measurement."""
    final = run_dir / "final.json"
    if not final.is_file():
        return []
    rows = []
    for model in json.loads(final.read_text())["models"]:
        m = json.loads((Path(model["folder"]) / "manifest.json").read_text())
        predicted, measured = m.get("latency_predicted_ms"), m.get("latency_measured_ms")
        first = model["search_metrics"].get("latency_search", model["search_metrics"].get("latency"))
        ratio = None if not predicted or measured is None else measured / predicted
        rows.append({"candidate_id": m["candidate_id"], "epochs": m["origin"].get("epochs"), "search_first_ms": first,
                     "predicted_ms": predicted, "predictor": (m.get("latency_predictor") or {}).get("how"),
                     "measured_ms": measured, "ratio": ratio, "ratio_to_search_first": None if not first or measured is None else measured / first,
                     "latency_goal_met": None if ratio is None else abs(ratio - 1.0) <= LATENCY_GOAL})
    return rows


def front_stage_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| candidate | epochs | search's first timing ms | predicted ms | front stage ms | measured / predicted | measured / first | goal |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        goal = "–" if r["latency_goal_met"] is None else ("yes" if r["latency_goal_met"] else "NO")
        lines.append(f"| {r['candidate_id']} | {_fmt(r['epochs'], 'g')} | {_fmt(r['search_first_ms'], '.4f')} | {_fmt(r['predicted_ms'], '.4f')} | "
                     f"{_fmt(r['measured_ms'], '.4f')} | {_fmt(r['ratio'], '.3f')} | {_fmt(r['ratio_to_search_first'], '.3f')} | {goal} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--job", default=str(REPO / "search/examples/mobilenet_mnist.yaml"))
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a built-in job instead of --job")
    parser.add_argument("--run-dir", help="run directory (default: the job's); searched first when it holds no trials.db")
    parser.add_argument("--checkpoint", help="supernet checkpoint (default: the job's); trained first when missing")
    parser.add_argument("--steps", type=int, default=1000, help="supernet training steps when the checkpoint is missing")
    parser.add_argument("--budget", type=int, help="search evaluations when the run is missing (default: the job's)")
    parser.add_argument("--targets", default="ort-cpu", help="comma-separated: ort-cpu, codegen-cpu")
    parser.add_argument("--out", default=str(REPO / "docs/results/export_fidelity.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    run_dir = _prepare(args)
    run = load_run(run_dir)
    rows, timings = [], {}
    for target in [t.strip() for t in args.targets.split(",") if t.strip()]:
        t0 = time.perf_counter()
        exported = export_run(run_dir, select="all", target=target, out=run_dir / "export" / target,
                              progress=lambda msg: print(f"  {msg}", flush=True))
        timings[target] = time.perf_counter() - t0
        rows.extend(_row(e.manifest) for e in exported)
    sensitivity = _sensitivities(run_dir, run, rows)
    for r in rows:
        r["rounding_sensitivity"] = sensitivity.get(r["candidate_id"])
    print()
    print(table(rows))
    acc = [r for r in rows if r["accuracy_goal_met"] is not None]
    lat = [r for r in rows if r["latency_goal_met"] is not None]
    print(f"\naccuracy within {ACCURACY_GOAL_POINTS} points: {sum(r['accuracy_goal_met'] for r in acc)}/{len(acc)}; "
          f"latency within ±{LATENCY_GOAL:.0%}: {sum(r['latency_goal_met'] for r in lat)}/{len(lat)}")
    front_rows = front_stage_rows(run_dir)
    if front_rows:
        print("\nthe front stage's own manifests: measured against the prediction the stages before made\n")
        print(front_stage_table(front_rows))
    doc = {
        "front_stage": front_rows,
        "benchmark": "export_fidelity", "run_dir": str(run_dir), "job": run.job.name, "front_size": len(run.front),
        "goals": {"accuracy_points": ACCURACY_GOAL_POINTS, "latency_relative": LATENCY_GOAL},
        "export_seconds": timings, "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
