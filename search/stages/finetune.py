"""Stage 4: fine-tune the best models, compression kept, by successive halving.

The ``top_k`` models picked along the front of the joint and refined searches each start from
their inherited supernet weights (the supernet's ``trainable(candidate)``) and train with
`tritune.evaluators.finetune.finetune` -- masks reached by the job's pruning method and kept
exact, bits kept by quantization-aware training. Successive halving (Jamieson & Talwalkar,
AISTATS 2016; the synchronous form of ASHA, Li et al., MLSys 2020): every model trains the first
rung's epochs, ``1/eta`` of them go on -- spread over the front of accuracy so far against the
search's other objectives, as multi-objective ASHA promotes -- until the last rung's survivors
have trained the whole schedule. Rungs run to their end before the next starts, so the
survivors -- and so the results -- do not depend on which worker was faster.

Each model's state file (``RUN_DIR/finetune/<candidate id>/state.safetensors``) is written as it
trains and each finished rung is recorded in the store, so a resumed run continues every model
exactly where it stopped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...evaluators.problem import Problem
from ...spaces import Candidate
from ..pareto import hypervolume_rows, pareto_mask
from ..run import file_sha256
from ..store import TrialRecord
from .config import FinetuneStage
from .state import StageLog

#: Training steps between state writes inside a rung (what a kill can cost).
SAVE_EVERY = 50


@dataclass(frozen=True)
class FinetunedModel:
    """One fine-tuned model: accuracy after its last rung, where its weights are, and the
    metrics the search gave it."""

    candidate: Candidate
    accuracy: float
    inherited_accuracy: float
    epochs: float
    rung: int
    state: Path
    method: str
    weights_sha256: str
    masks_exact: bool
    search_metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"candidate_id": self.candidate.id, "accuracy": self.accuracy, "inherited_accuracy": self.inherited_accuracy,
                "epochs": self.epochs, "rung": self.rung, "state": str(self.state), "method": self.method,
                "weights_sha256": self.weights_sha256, "masks_exact": self.masks_exact, "search_metrics": dict(self.search_metrics)}


def train_rung(candidate: Candidate, settings: FinetuneStage, until: float, state: Path, *, checkpoint: str, data: Any,
               seed: int, progress: bool) -> dict[str, Any]:
    """Train one model up to ``until`` epochs of its schedule (from its state file when there
    is one, else from the supernet at ``checkpoint``); returns the rung's record."""
    from ...evaluators.finetune import finetune
    from ...spaces.checkpoint import load_checkpoint

    net = None
    if not state.is_file():
        net = load_checkpoint(checkpoint).supernet.trainable(candidate)
    state.parent.mkdir(parents=True, exist_ok=True)
    result = finetune(net, candidate, data, epochs=float(settings.epochs), lr=float(settings.lr), batch_size=int(settings.batch_size),
                      method=settings.method, optimizer=settings.optimizer,
                      weight_decay=float(settings.weight_decay), seed=int(seed), threads=1, stop_after_epochs=until, state=state,
                      save_every=SAVE_EVERY, progress=progress)
    return {"accuracy": float(result.accuracy), "inherited_accuracy": float(result.accuracy_before), "epochs": float(result.epochs),
            "masks_exact": bool(result.masks_exact), "seconds": round(float(result.seconds), 2), "sha256": file_sha256(state)}


def promoted(alive: Sequence[TrialRecord], accuracy: dict[str, float], problem: Problem, keep: int) -> list[TrialRecord]:
    """The models that go on to the next rung: every model on the front of their accuracy so far
    against the search's other objectives, and at least ``keep``, those that add the most
    hypervolume to it (`tritune.search.pareto.hypervolume_rows`). Successive halving stops the
    poor ones, the dominated: the front stage exports every fine-tuned model, and a front member
    stopped early would reach the final front under-trained. Where fewer than ``keep`` are on the
    front, the knee goes on before the ends, and fast models train as long as accurate ones. A
    missing objective counts as the worst."""
    objectives = [("accuracy", "maximize")] + [(m, d) for m, d in zip(problem.metrics, problem.directions) if m != "accuracy"]

    def value(record: TrialRecord, metric: str, direction: str) -> float:
        v = accuracy[record.candidate.id] if metric == "accuracy" else record.metrics.get(metric)
        if not isinstance(v, (int, float)) or math.isnan(v):
            return -math.inf if direction == "maximize" else math.inf
        return float(v)

    values = np.array([[value(rec, m, d) for m, d in objectives] for rec in alive])
    directions = [d for _, d in objectives]
    finite = np.all(np.isfinite(values), axis=1)
    on_front = int(pareto_mask(values[finite], directions).sum()) if finite.any() else 0
    rows = hypervolume_rows(values, directions, max(keep, on_front))
    return [alive[i] for i in sorted(rows)]


def finetune_models(picks: Sequence[TrialRecord], settings: FinetuneStage, *, run_dir: Path, log: StageLog, checkpoint: str,
                    data: Any, seed: int, problem: Problem, progress: bool = True) -> list[FinetunedModel]:
    """Successive halving over ``picks`` (`promoted` picks who goes on); every pick comes back
    with its last rung's result."""
    from tqdm.auto import tqdm

    folder = run_dir / "finetune"
    last: dict[str, tuple[int, dict[str, Any]]] = {}
    alive = list(picks)
    rungs = settings.rung_epochs()
    for r, until in enumerate(rungs):
        bar = tqdm(alive, desc=f"finetune rung {r + 1}/{len(rungs)} ({until:g} epochs)", unit="model", disable=not progress, leave=False)
        for record in bar:
            cid = record.candidate.id
            key = f"finetune:{cid}:{r}"
            item = log.item(key)
            if item is None:
                bar.set_postfix(model=cid, refresh=True)
                item = train_rung(record.candidate, settings, until, folder / cid / "state.safetensors", checkpoint=checkpoint,
                                  data=data, seed=seed, progress=False)
                log.put_item(key, item)
            last[cid] = (r, item)
        bar.close()
        if r + 1 < len(rungs):
            keep = max(1, math.ceil(len(alive) / settings.eta))
            alive = promoted(alive, {cid: item["accuracy"] for cid, (_, item) in last.items()}, problem, keep)
    out = []
    for record in picks:
        r, item = last[record.candidate.id]
        out.append(FinetunedModel(record.candidate, item["accuracy"], item["inherited_accuracy"], item["epochs"], r,
                                  folder / record.candidate.id / "state.safetensors", settings.method, item["sha256"],
                                  item["masks_exact"], dict(record.metrics)))
    return out


def deployed_subnet(model: FinetunedModel, data: Any) -> Any:
    """The fine-tuned network in deploy form (what `tritune.search.export.export_model` takes)."""
    from ...evaluators.finetune import Finetuner

    return Finetuner.load_state(model.state, data).deployable()
