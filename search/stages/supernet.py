"""Stage 1: the job's weight-sharing supernet, trained here or loaded when it matches the job.

The checkpoint is the file the job's ``supernet-accuracy`` (or ``supernet-finetune``) evaluator
names. It matches when its header records this job's space, data set and training settings;
then a finished checkpoint is loaded as is and an unfinished one is trained on from where it
stopped (training writes checkpoints as it goes, so a killed run loses little). A checkpoint
trained with other settings is refused rather than overwritten.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..job import Job, JobError

SUPERNET_EVALUATORS = ("supernet-accuracy", "supernet-finetune")
#: Training settings that do not change the result (how often it is saved).
UNCOMPARED = ("checkpoint_every",)
#: Steps between checkpoints when the settings leave it open, so a kill loses little.
DEFAULT_CHECKPOINT_EVERY = 50


@dataclass(frozen=True)
class SupernetSpec:
    """Where the job's supernet lives and what it is trained on (read off its evaluator)."""

    checkpoint: Path
    dataset: Any
    split_seed: int

    @classmethod
    def of(cls, job: Job) -> "SupernetSpec":
        for i, spec in enumerate(job.evaluators):
            if spec.get("kind") in SUPERNET_EVALUATORS:
                checkpoint = spec.get("checkpoint")
                if not isinstance(checkpoint, str) or not checkpoint:
                    raise JobError(f"job.evaluators[{i}].checkpoint: required by the supernet stage (the file it trains or loads)")
                return cls(Path(checkpoint).expanduser(), spec.get("dataset", "mnist5k-hard"), int(spec.get("seed", 0)))
        raise JobError(f"job.stages: the pipeline needs an evaluator of kind {' or '.join(SUPERNET_EVALUATORS)}; "
                       "add one with checkpoint: FILE and dataset: NAME")


def _compared(train: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in train.items() if k not in UNCOMPARED}


def train_config(settings: Mapping[str, Any]):
    """The `TrainConfig` of the stage's ``train`` settings (checkpoints every few steps)."""
    from ...evaluators.supernet_training import TrainConfig

    values = dict(settings)
    values.setdefault("checkpoint_every", DEFAULT_CHECKPOINT_EVERY)
    try:
        return TrainConfig.from_json(values)
    except (TypeError, ValueError) as exc:
        raise JobError(f"job.stages.supernet.train: {exc}") from None


def ensure_supernet(job: Job, settings: Mapping[str, Any], *, progress: bool = True) -> dict[str, Any]:
    """Train or load the job's supernet; returns a summary (checkpoint, steps, seconds, how)."""
    from ...evaluators.data import load_dataset
    from ...evaluators.supernet_training import train_supernet
    from ...spaces.checkpoint import read_header

    where = SupernetSpec.of(job)
    config = train_config(settings)
    space = job.build_space()
    wanted = {"space": {"name": space.name, "config": space.config()}, "train": _compared(config.to_json())}
    step = 0
    if where.checkpoint.is_file():
        header = read_header(where.checkpoint)
        extra = header.get("extra") or {}
        found = {"space": header.get("space"), "train": _compared(extra.get("train") or {})}
        if json.dumps(found, sort_keys=True) != json.dumps(wanted, sort_keys=True):
            diff = sorted(k for k in set(found["train"]) | set(wanted["train"]) if found["train"].get(k) != wanted["train"].get(k))
            what = f"training settings {diff}" if found["space"] == wanted["space"] else "space"
            raise JobError(f"supernet checkpoint {str(where.checkpoint)!r} was trained with another {what}; remove it, "
                           "name another checkpoint in the job, or set job.stages.supernet.train to match")
        step = int(header.get("step", 0))
        if step >= config.steps:
            return {"checkpoint": str(where.checkpoint), "steps": step, "how": "loaded", "seconds": 0.0}
    data = load_dataset(where.dataset, seed=where.split_seed)
    supernet = space.supernet({"seed": job.seed})
    result = train_supernet(supernet, data, config, checkpoint=where.checkpoint, resume=True, progress=progress)
    return {"checkpoint": str(where.checkpoint), "steps": result.step, "how": "resumed" if step else "trained",
            "seconds": round(result.seconds, 2), "images_per_second": round(result.images_per_second, 1)}
