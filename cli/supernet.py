"""``tritune supernet train|sensitivity JOB.yaml``: the weight-sharing supernet a search job scores with.

The job file is the single description of the work: its ``space`` section defines the supernet
(the space's own sampler, ties and limits included, is what it trains on), its
``supernet-accuracy`` / ``supernet-finetune`` evaluator names the checkpoint to write and the
data set to train on, and ``stages.supernet.train`` (when the job has it) the training settings;
otherwise the defaults of `tritune.evaluators.supernet_training.TrainConfig` apply. Options given
on the command line override both. Training writes checkpoints as it goes, resumes from the file,
and when it finishes measures the per-layer sensitivity table into the checkpoint;
``sensitivity`` measures it again (other images, the full table, another reference).
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


def _job_and_data(path: str) -> tuple[Any, Any, dict[str, Any], Any]:
    from ..evaluators.data import load_dataset
    from ..search.job import Job

    job = Job.from_yaml(path, validate=False)
    space = job.build_space()
    if not space.builds_supernets:
        raise ValueError(f"supernet train: space {space.name!r} has no weight-sharing supernet; allowed: a space that defines supernet()")
    spec = _supernet_evaluator(job)
    dataset = spec.get("dataset", "mnist5k-hard")
    return job, space, spec, load_dataset(dataset, seed=job.seed)


def _checked(supernet: Any, data: Any) -> Any:
    """``supernet``, or a one-line error when the job's data set does not fit it."""
    from ..evaluators.supernet_training import check_data

    try:
        check_data(supernet, data)
    except ValueError as exc:
        raise ValueError(f"supernet: dataset {data.name!r}: {exc}") from None
    return supernet


def train_settings(job: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The job's ``stages.supernet.train`` settings with the command line's options on top."""
    settings = dict(((getattr(job, "stages", None) or {}).get("supernet") or {}).get("train") or {})
    for name in ("steps", "batch_size", "lr", "threads", "phases", "optimizer", "weight_decay"):
        value = getattr(args, name, None)
        if value is not None:
            settings[name] = None if value == "none" else value
    if getattr(args, "no_sensitivity", False):
        settings["sensitivity_images"] = 0
    return settings


def _cmd_train(args: argparse.Namespace) -> int:
    from ..evaluators.supernet_training import TrainConfig, train_supernet

    job, space, spec, data = _job_and_data(args.job)
    config = TrainConfig.from_json(train_settings(job, args))
    supernet = _checked(space.supernet({"seed": job.seed}), data)
    result = train_supernet(supernet, data, config, checkpoint=spec["checkpoint"], resume=not args.restart,
                            device=args.device, progress=not args.quiet)
    per_step = result.seconds / max(1, len(result.losses))
    print(f"supernet: {result.step} steps ({per_step:.2f} s/step, {result.images_per_second:.0f} images/s in this call), "
          f"checkpoint {spec['checkpoint']}")
    return 0


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    from ..evaluators.sensitivity import measure_sensitivity, store_sensitivity
    from ..spaces.checkpoint import load_checkpoint

    job, space, spec, data = _job_and_data(args.job)
    ckpt = load_checkpoint(spec["checkpoint"])
    table = measure_sensitivity(_checked(ckpt.supernet, data), data, images=args.images, factored=False if args.full else None, seed=job.seed,
                                threads=args.threads, progress=not args.quiet)
    store_sensitivity(spec["checkpoint"], table)
    worst = sorted(((max(d.values(), default=0.0), g) for g, d in table.drops.items()), reverse=True)
    print(f"sensitivity: {sum(len(d) for d in table.drops.values())} probes in {table.seconds:.0f} s, reference {table.base:.1f} % "
          f"on {table.images} training images; largest drop per gene: " + ", ".join(f"{g} {v:.1f}" for v, g in worst))
    if args.max_drop is not None:
        import yaml

        print(yaml.safe_dump({"exclude": table.exclusions(space, args.max_drop)}, sort_keys=True).rstrip())
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("supernet", help="train the weight-sharing supernet of a job, or measure its per-layer sensitivity")
    p.add_argument("action", choices=("train", "sensitivity"))
    p.add_argument("job", help="job YAML file (its space and its supernet-accuracy evaluator)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the job's or TrainConfig's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--optimizer", default=None, help="sgd or adamw (transformers: adamw)")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (fixed for determinism)")
    p.add_argument("--phases", default=None, help="schedule: progressive, ofa or none")
    p.add_argument("--no-sensitivity", action="store_true", help="train without measuring the sensitivity table at the end")
    p.add_argument("--images", type=int, default=512, help="sensitivity: training images scoring each probe")
    p.add_argument("--full", action="store_true", help="sensitivity: measure every choice, not the factored table")
    p.add_argument("--max-drop", type=float, default=None, help="sensitivity: print the compression.exclude option for this threshold")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=lambda args: _cmd_sensitivity(args) if args.action == "sensitivity" else _cmd_train(args))
