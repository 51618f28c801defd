"""``tritune supernet train JOB.yaml``: train the weight-sharing supernet a search job scores with.

The job file is the single description of the work: its ``space`` section defines the supernet
and its ``supernet-accuracy`` / ``supernet-finetune`` evaluator names the checkpoint to write and
the data set to train on. Training writes checkpoints as it goes and resumes from the file.
"""
from __future__ import annotations

import argparse
from typing import Any

SUPERNET_EVALUATORS = ("supernet-accuracy", "supernet-finetune")


def _supernet_evaluator(job: Any) -> dict[str, Any]:
    for spec in job.evaluators:
        if spec.get("kind") in SUPERNET_EVALUATORS:
            if not spec.get("checkpoint"):
                raise ValueError(f"supernet train: evaluator {spec['kind']!r} needs checkpoint: FILE (where the supernet is written)")
            return spec
    raise ValueError(f"supernet train: the job has no evaluator of kind {' or '.join(SUPERNET_EVALUATORS)}; "
                     f"add one with checkpoint: FILE and dataset: NAME")


def _cmd_train(args: argparse.Namespace) -> int:
    from ..evaluators.data import load_dataset
    from ..evaluators.supernet_training import TrainConfig, train_supernet
    from ..search.job import Job
    from ..spaces.mobilenet import MobileNetSpace
    from ..spaces.supernet import MobileNetSupernet

    job = Job.from_yaml(args.job, validate=False)
    space = job.build_space()
    if not isinstance(space, MobileNetSpace):
        raise ValueError(f"supernet train: space {job.space!r} has no supernet; allowed: mobilenet spaces")
    spec = _supernet_evaluator(job)
    dataset = spec.get("dataset", "mnist5k-hard")
    data = load_dataset(dataset, seed=job.seed)
    if data.channels != space.in_channels or data.num_classes != space.num_classes:
        raise ValueError(f"supernet train: dataset {dataset!r} has {data.channels} channels and {data.num_classes} classes, "
                         f"the space expects in_channels={space.in_channels}, num_classes={space.num_classes}")
    config = TrainConfig.from_json({"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "threads": args.threads,
                                    "phases": "progressive" if args.progressive else None})
    supernet = MobileNetSupernet(space, {"seed": job.seed})
    result = train_supernet(supernet, data, config, checkpoint=spec["checkpoint"], resume=not args.restart,
                            device=args.device, progress=not args.quiet)
    print(f"supernet: {result.step} steps, checkpoint {spec['checkpoint']}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("supernet", help="train the weight-sharing supernet of a job")
    p.add_argument("action", choices=("train",))
    p.add_argument("job", help="job YAML file (its space and its supernet-accuracy evaluator)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (fixed for determinism)")
    p.add_argument("--progressive", action="store_true", help="progressive shrinking schedule")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)
