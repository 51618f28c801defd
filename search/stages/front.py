"""Stage 5: the final front, from fine-tuned accuracy and latency measured on the target.

Every fine-tuned model is exported (`tritune.search.export.export_model`): the exported files are
run on the test split and timed on this machine, so the front is made of what a device will
actually run, not of the search's estimates. The front and its knee go to ``RUN_DIR/final.json``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ...spaces import Candidate
from ..pareto import knee_point, pareto_mask

FINAL_SCHEMA = 1


@dataclass(frozen=True)
class FinalModel:
    """One exported model: its measured numbers, what the stages before said, and its folder."""

    candidate: Candidate
    accuracy: float
    latency_ms: float
    latency_spread: float
    folder: str
    finetuned_accuracy: float
    search_metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"candidate_id": self.candidate.id, "candidate": self.candidate.to_json(), "accuracy": self.accuracy,
                "latency_ms": self.latency_ms, "latency_spread": self.latency_spread, "folder": self.folder,
                "finetuned_accuracy": self.finetuned_accuracy, "search_metrics": dict(self.search_metrics)}


def final_front(models: Sequence[FinalModel]) -> tuple[list[FinalModel], FinalModel | None]:
    """Pareto front (accuracy up, latency down), sorted by latency, and its knee."""
    usable = [m for m in models if math.isfinite(m.accuracy) and math.isfinite(m.latency_ms)]
    if not usable:
        return [], None
    values = np.array([[m.accuracy, m.latency_ms] for m in usable])
    directions = ["maximize", "minimize"]
    best = [m for m, keep in zip(usable, pareto_mask(values, directions)) if keep]
    best.sort(key=lambda m: m.latency_ms)
    knee = best[knee_point(np.array([[m.accuracy, m.latency_ms] for m in best]), directions)]
    return best, knee


def export_final(models: Sequence[Any], *, subnet_of: Callable[[Any], Any], data: Any, calibration: Sequence[Any], space: Any,
                 target: str, target_options: dict[str, Any], out_dir: Path, latency_source: dict[str, Any] | None = None,
                 progress: bool = True) -> list[FinalModel]:
    """Export each fine-tuned model (``models``: `FinetunedModel` s) and time them all together
    (`tritune.search.export.time_exported`); ``latency_source`` says where the latency the
    stages before reported came from (the manifests' ``latency_predictor``). A folder whose
    manifest already holds an export of the same weights is read back, and when every one is
    timed, nothing is timed again."""
    from tqdm.auto import tqdm

    from ..export import ExportedModel, SearchScores, export_model, read_manifest, time_exported

    exported: list[ExportedModel] = []
    for m in tqdm(models, desc="front: export", unit="model", disable=not progress, leave=False):
        folder = out_dir / m.candidate.id
        if (folder / "manifest.json").is_file():
            found = read_manifest(folder / "manifest.json")
            if found.get("weights", {}).get("sha256") == m.weights_sha256 and found.get("target") == target:
                exported.append(ExportedModel(folder, found))
                continue
        scores = SearchScores(accuracy=m.accuracy, latency_ms=m.search_metrics.get("latency"),
                              latency_source=latency_source,
                              origin={"stage": "finetune", "epochs": m.epochs, "inherited_accuracy": m.inherited_accuracy,
                                      "metrics": dict(m.search_metrics)})
        weights = {"source": f"fine-tuned {m.epochs:g} epochs ({m.method})", "state": str(m.state), "sha256": m.weights_sha256}
        exported.append(export_model(m.candidate, subnet_of(m), data=data, calibration=calibration, out_dir=out_dir, space=space,
                                     target=target, target_options=target_options, scores=scores, weights=weights, measure=False))
    if exported and any(e.manifest.get("latency_measured_ms") is None for e in exported):
        if progress:
            print(f"front: timing {len(exported)} models together on {target}", flush=True)
        exported = time_exported(exported, target, target_options)
    out: list[FinalModel] = []
    for m, e in zip(models, exported):
        manifest = e.manifest
        latency = manifest.get("latency_measured_ms")
        spread = (manifest.get("latency_measurement") or {}).get("spread")
        out.append(FinalModel(m.candidate, float(manifest["accuracy"]), math.nan if latency is None else float(latency),
                              math.nan if spread is None else float(spread), str(e.directory), m.accuracy, dict(m.search_metrics)))
    return out


def write_final(models: Sequence[FinalModel], path: Path, extra: dict[str, Any] | None = None) -> tuple[list[FinalModel], FinalModel | None]:
    best, knee = final_front(models)
    doc = {"schema": FINAL_SCHEMA, "objectives": [{"metric": "accuracy", "direction": "maximize"},
                                                   {"metric": "latency_ms", "direction": "minimize"}],
           "knee": None if knee is None else knee.candidate.id,
           "front": [m.to_json() for m in best], "models": [m.to_json() for m in models], **(extra or {})}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
    tmp.replace(path)
    return best, knee
