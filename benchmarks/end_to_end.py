"""End-to-end benchmark of the staged pipeline against hand-made baselines, measured side by side.

The pipeline runs the job (default: the example ``search/examples/mobilenet_mnist.yaml``) from
supernet to exported front. Then, in the same run and on the same machine, the obvious models a
person would build by hand from the same supernet get the *same* fine-tuning budget (the
pipeline's full schedule: ``stages.finetune.epochs`` with its lr, batch size and method) and are
exported the same way (`tritune.search.export.export_model`), and every file, baselines and found
models alike, is timed together (`time_exported`: one interleaved group, beside the target's own
builds, in fresh processes):

* the dense smallest, middle and largest architectures (float);
* each of them with uniform int8 (w8a8);
* each of them with uniform 50 % channel pruning + int8;
* on ``codegen-cpu`` only, each of them with uniform 75 % ``block8x1`` (float).

Goals (issue 17): at latency budgets of 25 / 50 / 75 % of the dense largest model's measured
latency, the found model is at least as accurate as every baseline that fits the budget and
>= 1 point better than the best of them at two of the three; the found front's hypervolume
(accuracy x measured latency, reference = the worst baseline) >= 1.2x the baselines'; the whole
pipeline within 30 minutes on this 2-core machine (time per stage reported).

    python benchmarks/end_to_end.py [--job JOB.yaml] [--run-dir DIR] [--targets ort-cpu,codegen-cpu]
        [--latency-target T]

``--latency-target`` points the job's ``latency`` evaluator at another target, so that the whole
pipeline (search, refinement and the front's timing) runs against it, as a user targeting that
device would write the job.

Writes docs/results/end_to_end.json. Resumes: the pipeline from its run directory, baselines and
codegen-cpu exports from their folders under it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from tritune.search.export import ExportedModel, SearchScores, export_model, read_manifest, time_exported
from tritune.search.job import Job
from tritune.search.pareto import hypervolume
from tritune.search.stages.runner import run_pipeline
from tritune.spaces.mobilenet.supernet import trainable_subnet
from tritune.spaces.checkpoint import load_checkpoint
from tritune.spaces.mobilenet.supernet.sampling import REFERENCE_PLANS, reference_models

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results" / "end_to_end.json"
BUDGETS = (0.25, 0.5, 0.75)


def baselines(space, targets: list[str]) -> dict[str, object]:
    """The search stage's own hand-made references, plus 75 % ``block8x1`` (float) on ``codegen-cpu``."""
    plans = REFERENCE_PLANS + ((("block8x1-75", "block8x1", 0.75, 32, 32),) if "codegen-cpu" in targets else ())
    return reference_models(space, plans)


def finetuned(candidate, supernet_path: str, data, stage, state: Path):
    from tritune.evaluators.finetune import Finetuner, finetune

    if not (state.is_file() and Finetuner.load_state(state, data).done):
        net = None if state.is_file() else trainable_subnet(load_checkpoint(supernet_path).supernet, candidate)
        state.parent.mkdir(parents=True, exist_ok=True)
        finetune(net, candidate, data, epochs=float(stage.epochs), lr=float(stage.lr), batch_size=int(stage.batch_size),
                 method=stage.method, seed=0, threads=1, state=state, save_every=50)
    return Finetuner.load_state(state, data)


def exported(candidate, tuner, *, out_dir: Path, target: str, data, calibration, space, accuracy: float) -> ExportedModel:
    """The candidate's export (read back when its folder exists), not yet timed."""
    folder = out_dir / candidate.id
    if (folder / "manifest.json").is_file():
        return ExportedModel(folder, read_manifest(folder / "manifest.json"))
    return export_model(candidate, tuner.deployable(), data=data, calibration=calibration, out_dir=out_dir, space=space,
                        target=target, scores=SearchScores(accuracy=accuracy), weights={"source": "benchmark fine-tune"},
                        measure=False)


def best_within(points: list[tuple[float, float]], budget: float) -> float:
    fits = [acc for acc, ms in points if ms <= budget]
    return max(fits) if fits else math.nan


def front_hv(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    usable = np.array([p for p in points if p[0] > reference[0] and p[1] < reference[1]])
    if not len(usable):
        return 0.0
    return hypervolume(usable, ["maximize", "minimize"], list(reference))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--job", default=str(REPO / "search" / "examples" / "mobilenet_mnist.yaml"))
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--targets", default="ort-cpu,codegen-cpu")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--latency-target", default=None, help="the target the job's latency evaluator measures")
    args = parser.parse_args()
    torch.set_num_threads(1)
    targets = [t for t in args.targets.split(",") if t]

    job = Job.from_yaml(args.job, validate=False)
    if args.latency_target:
        config = job.to_config()
        for ev in config["evaluators"]:
            if ev.get("kind") == "latency":
                ev["target"] = args.latency_target
        job = Job.from_dict(config, validate=False)
    run_dir = Path(args.run_dir or job.run_dir)
    started = time.perf_counter()
    result = run_pipeline(job, run_dir=run_dir, resume=(run_dir / "trials.db").exists(), progress=True)
    pipeline_s = time.perf_counter() - started
    stages = {r.name: r.seconds for r in result.stages}
    stage = job.stages_config().finetune
    final = json.loads((run_dir / "final.json").read_text())
    space = job.build_space()
    spec = next(e for e in job.evaluators if e["kind"] == "supernet-accuracy")
    from tritune.evaluators.supernet_accuracy import SupernetAccuracy

    scorer = SupernetAccuracy(spec["checkpoint"], dataset=spec.get("dataset"), threads=1)
    data, calibration = scorer.data, list(scorer.calib)
    from tritune.evaluators.finetune import Finetuner

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    report: dict = {"job": job.to_config(), "commit": commit, "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                    "pipeline_seconds": round(pipeline_s, 1), "stage_seconds": stages, "targets": {}}
    t_base = time.perf_counter()
    bases = baselines(space, targets)
    tuners = {}
    for name, cand in bases.items():
        tuners[name] = finetuned(cand, spec["checkpoint"], data, stage, run_dir / "baselines" / cand.id / "state.safetensors")
        print(f"baseline {name:26s} {cand.id}: fine-tuned accuracy {tuners[name].history[-1]['accuracy'] if tuners[name].history else float('nan'):.2f} %", flush=True)
    for target in targets:
        models: dict[str, ExportedModel] = {}
        for name, cand in bases.items():
            if "block8x1" in name and target != "codegen-cpu":
                continue
            models[name] = exported(cand, tuners[name], out_dir=run_dir / "benchmark" / target, target=target, data=data,
                                    calibration=calibration, space=space, accuracy=math.nan)
        for model in final["models"]:
            # exported again beside the baselines, into a folder of their own: a found model may be a baseline's
            # architecture and plan with the pipeline's weights (a reference the search kept, fine-tuned by its schedule)
            state = run_dir / "finetune" / model["candidate_id"] / "state.safetensors"
            tuner = Finetuner.load_state(state, data)
            models[model["candidate_id"]] = exported(tuner.net.candidate, tuner, out_dir=run_dir / "benchmark" / target / "found", target=target,
                                                     data=data, calibration=calibration, space=space,
                                                     accuracy=model["finetuned_accuracy"])
        # every file timed in the same fresh processes, interleaved, so that no slow phase favours a row
        print(f"timing {len(models)} models together on {target}", flush=True)
        timed = dict(zip(models, time_exported(list(models.values()), target)))
        rows = {name: {"candidate_id": timed[name].candidate_id, "accuracy": timed[name].manifest["accuracy"],
                       "latency_ms": timed[name].manifest["latency_measured_ms"]} for name in bases if name in timed}
        found = {cid: {"accuracy": timed[cid].manifest["accuracy"], "latency_ms": timed[cid].manifest["latency_measured_ms"]}
                 for cid in (m["candidate_id"] for m in final["models"])}
        ref_ms = rows["largest dense"]["latency_ms"]
        base_pts = [(r["accuracy"], r["latency_ms"]) for r in rows.values()]
        found_pts = [(r["accuracy"], r["latency_ms"]) for r in found.values()]
        budgets = []
        for frac in BUDGETS:
            limit = frac * ref_ms
            b, f = best_within(base_pts, limit), best_within(found_pts, limit)
            budgets.append({"fraction": frac, "latency_ms": limit, "best_baseline": b, "found": f,
                            "margin": f - b if math.isfinite(f) and math.isfinite(b) else (math.inf if math.isfinite(f) else math.nan)})
        reference = (min(p[0] for p in base_pts), max(p[1] for p in base_pts))
        hv_b, hv_f = front_hv(base_pts, reference), front_hv(found_pts + base_pts, reference)
        hv_found_only = front_hv(found_pts, reference)
        report["targets"][target] = {"baselines": rows, "found": found, "budgets": budgets, "reference": reference,
                                     "hypervolume": {"baselines": hv_b, "found": hv_found_only, "found_and_baselines": hv_f,
                                                     "ratio": hv_found_only / hv_b if hv_b > 0 else math.inf}}
    report["baseline_seconds"] = round(time.perf_counter() - t_base, 1)

    for target, t in report["targets"].items():
        print(f"\n## {target}: models (accuracy of the exported file %, latency measured ms)")
        print("| model | candidate | accuracy % | latency ms |\n|---|---|---|---|")
        for name, r in t["baselines"].items():
            print(f"| {name} | {r['candidate_id']} | {r['accuracy']:.2f} | {r['latency_ms']:.4g} |")
        for cid, r in t["found"].items():
            print(f"| found | {cid} | {r['accuracy']:.2f} | {r['latency_ms']:.4g} |")
        print("\n| budget | latency ms | best baseline % | found % | margin (points) |\n|---|---|---|---|---|")
        for b in t["budgets"]:
            found = f"{b['found']:.2f}" if math.isfinite(b["found"]) else "none fits"
            margin = f"{b['margin']:+.2f}" if math.isfinite(b["margin"]) else "—"
            print(f"| {b['fraction']:.0%} of dense largest | {b['latency_ms']:.4g} | {b['best_baseline']:.2f} | {found} | {margin} |")
        hv = t["hypervolume"]
        print(f"\nhypervolume (reference: worst baseline {t['reference'][0]:.2f} %, {t['reference'][1]:.4g} ms): "
              f"found {hv['found']:.4g}, baselines {hv['baselines']:.4g}, ratio {hv['ratio']:.2f}x")
    print(f"\npipeline {sum(stages.values()):.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in stages.items())}); "
          f"baselines {report['baseline_seconds']:.0f} s")
    Path(args.out).write_text(json.dumps(report, indent=2, sort_keys=True, default=float))


if __name__ == "__main__":
    main()
