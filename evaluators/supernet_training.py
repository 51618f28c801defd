"""Training a `Supernet`: sandwich rule, in-place distillation, progressive shrinking.

Each step takes one batch and, following the sandwich rule and in-place distillation of
Yu & Huang ("Universally Slimmable Networks", ICCV 2019) as used by BigNAS (Yu et al., ECCV
2020), runs the **largest** candidate (cross-entropy on the labels), the **lower end** (by default the
smallest architecture with a plan drawn as the search draws them), ``n_random`` random
candidates and ``n_dense`` random dense float architectures; every candidate
but the largest learns from the largest's soft labels (KL divergence, optionally mixed with
cross-entropy), and the gradients of all of them are summed into one optimizer step. Because the
sampled candidates carry their compression plans, the shared weights are trained *under* masks
and fake quantization.

**Progressive shrinking** (Cai et al., "Once-for-All", ICLR 2020) is an optional list of
`Phase` s: from a fraction of the run on, only the listed dimensions vary
(`tritune.spaces.weight_sharing.DIMENSIONS`); `PROGRESSIVE_SHRINKING` is the OFA order
(kernel, depth, expand/width) with compression last.

**Determinism and resume.** The batch order of epoch ``e`` and the candidates of step ``t`` come
from generators seeded with ``(seed, e)`` and ``(seed, t)``, and the learning rate is a function
of ``t``, so a run restarted from a checkpoint (weights, BN statistics, quantizer ranges,
optimizer state, step, torch RNG state) takes exactly the steps the uninterrupted run would have
taken, given the same thread count (``threads``).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from ..spaces.candidate import Candidate
from ..spaces.compression import CompressionLimit
from ..spaces.checkpoint import load_checkpoint, save_checkpoint
from ..spaces.weight_sharing import ARCHITECTURE, DIMENSIONS, LOWER_ENDS, CandidateSampler, Supernet, check_dimensions


@dataclass(frozen=True)
class Phase:
    """From ``start`` (a fraction of the run's steps) on, only ``elastic`` dimensions vary, and
    compressed candidates stay within ``limit`` (a `CompressionLimit` for every slot; None: the
    space's whole menu)."""

    start: float
    elastic: tuple[str, ...]
    limit: CompressionLimit | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.start) < 1.0:
            raise ValueError(f"phase.start: {self.start!r} not in [0, 1)")
        object.__setattr__(self, "elastic", tuple(sorted(check_dimensions(self.elastic, "phase.elastic"))))
        if self.limit is not None:
            object.__setattr__(self, "limit", CompressionLimit.from_config(self.limit, "phase.limit"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"start": self.start, "elastic": list(self.elastic)}
        if self.limit is not None:
            out["limit"] = self.limit.to_config()
        return out


#: Once-for-All's order (Cai et al., ICLR 2020): the full network first, then elastic kernel,
#: depth, width/expand; compression (sparsity and bits) last, resolution throughout.
OFA_ORDER = (
    Phase(0.0, ("resolution",)),
    Phase(0.15, ("resolution", "kernel")),
    Phase(0.3, ("resolution", "kernel", "depth")),
    Phase(0.45, ("resolution", "kernel", "depth", "expand", "width")),
    Phase(0.6, DIMENSIONS),
)
#: Architecture first, then compression reached gradually: dense float networks of every
#: architecture, then 8-bit and at most half sparse, then at most 75 % sparse at any bits,
#: then the whole menu -- progressive shrinking applied to the compression dimensions, as OQAT
#: (Shen et al., ICCV 2021) lowers bit-widths step by step and APQ (Wang et al., CVPR 2020)
#: trains a quantization-aware supernet from a full-precision one.
PROGRESSIVE_SHRINKING = (
    Phase(0.0, ARCHITECTURE),
    Phase(0.25, DIMENSIONS, CompressionLimit(min_w_bits=8, max_sparsity=0.5)),
    Phase(0.45, DIMENSIONS, CompressionLimit(max_sparsity=0.75)),
    Phase(0.65, DIMENSIONS),
)
#: Named schedules a job file may give as ``phases``.
SCHEDULES = {"progressive": PROGRESSIVE_SHRINKING, "ofa": OFA_ORDER}
#: How the candidates' gradients become one step: each clipped to ``grad_clip`` before they are
#: summed, or summed first and the sum clipped.
CLIP_MODES = ("candidate", "total")
#: Optimizers a training run may use.
OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of supernet (and single-candidate) training.

    ``steps`` optimizer steps of ``batch_size`` images; ``optimizer``: SGD (``lr``, ``momentum``,
    Nesterov) or AdamW (``momentum`` as beta1; transformers train poorly with SGD), with
    ``weight_decay`` on conv/linear weights only with ``warmup_steps`` of linear warm-up and a
    cosine decay to 0; ``grad_clip`` / ``clip_mode`` (`CLIP_MODES`): each candidate's gradient
    is clipped to this norm before the candidates' gradients are summed (``candidate``), or the
    sum is (``total``); ``n_random`` random candidates per step besides the largest and the
    lower end (``lower_end``: `LOWER_ENDS`; ``sampled``: the smallest architecture with a plan
    drawn like the random ones), and ``n_dense`` random architectures dense and float (they keep
    weight sharing across architectures healthy while the plans the search draws are mostly
    compressed); ``kd_alpha`` the weight of the distillation loss for students
    (1 - ``kd_alpha`` on cross-entropy), ``kd_temperature`` its temperature; ``phases``: None
    (every dimension elastic from the start), a name in `SCHEDULES` or a list of `Phase` (or
    ``{"start": .., "elastic": [..], "limit": {..}}``); ``threads``: torch intra-op threads
    (fixed, for determinism); ``checkpoint_every``: steps between checkpoints (0: only at the
    end); ``sensitivity_images``: when a supernet run finishes, its per-layer sensitivity is
    measured on this many training images and stored in the checkpoint (0: not measured;
    `tritune.evaluators.sensitivity`)."""

    steps: int = 600
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 4e-5
    warmup_steps: int = 0
    n_random: int = 2
    n_dense: int = 0
    lower_end: str = "sampled"
    kd_alpha: float = 0.5
    kd_temperature: float = 1.0
    label_smoothing: float = 0.0
    grad_clip: float | None = 5.0
    clip_mode: str = "candidate"
    phases: Any = "progressive"
    seed: int = 0
    threads: int = 1
    checkpoint_every: int = 0
    sensitivity_images: int = 512
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"train.{name}: {getattr(self, name)!r} must be >= 1")
        for name in ("warmup_steps", "n_random", "n_dense", "checkpoint_every", "sensitivity_images"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"train.{name}: {getattr(self, name)!r} must be >= 0")
        if not float(self.lr) > 0:
            raise ValueError(f"train.lr: {self.lr!r} must be > 0")
        if not 0.0 <= float(self.kd_alpha) <= 1.0:
            raise ValueError(f"train.kd_alpha: {self.kd_alpha!r} not in [0, 1]")
        if not float(self.kd_temperature) > 0:
            raise ValueError(f"train.kd_temperature: {self.kd_temperature!r} must be > 0")
        if self.lower_end not in LOWER_ENDS:
            raise ValueError(f"train.lower_end: {self.lower_end!r} not allowed; allowed: {', '.join(LOWER_ENDS)}")
        if self.clip_mode not in CLIP_MODES:
            raise ValueError(f"train.clip_mode: {self.clip_mode!r} not allowed; allowed: {', '.join(CLIP_MODES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer: {self.optimizer!r} not allowed; allowed: {', '.join(OPTIMIZERS)}")
        object.__setattr__(self, "phases", _phases(self.phases))

    def to_json(self) -> dict[str, Any]:
        """Every field; ``optimizer`` only when not SGD, so settings written before it existed
        compare equal to the same settings now."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["phases"] = None if self.phases is None else [p.to_json() for p in self.phases]
        if self.optimizer == "sgd":
            del out["optimizer"]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> "TrainConfig":
        data = dict(data or {})
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"train config: unknown fields {unknown}; allowed: {', '.join(sorted(allowed))}")
        return cls(**data)

    def phase_at(self, step: int) -> Phase:
        """The phase ``step`` belongs to (every dimension, no limit without phases)."""
        if self.phases is None:
            return Phase(0.0, DIMENSIONS)
        frac = step / self.steps
        current = self.phases[0]
        for phase in self.phases:
            if frac >= phase.start:
                current = phase
        return current

    def elastic_at(self, step: int) -> tuple[str, ...]:
        """The dimensions that vary at ``step``."""
        return self.phase_at(step).elastic

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * (step - self.warmup_steps) / span))


def _phases(value: Any) -> tuple[Phase, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) and value in SCHEDULES:
        return SCHEDULES[value]
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"train.phases: {value!r} not allowed; allowed: None, {', '.join(map(repr, SCHEDULES))} or a list of phases")
    out = []
    for i, p in enumerate(value):
        if isinstance(p, Phase):
            out.append(p)
        elif isinstance(p, Mapping) and {"start", "elastic"} <= set(p) <= {"start", "elastic", "limit"}:
            out.append(Phase(float(p["start"]), tuple(p["elastic"]), p.get("limit")))
        else:
            raise ValueError(f"train.phases[{i}]: expected {{start: FRACTION, elastic: [DIMENSIONS], limit: {{..}} (optional)}}, got {p!r}")
    if not out or out[0].start != 0.0:
        raise ValueError("train.phases: the first phase must start at 0")
    if any(b.start <= a.start for a, b in zip(out, out[1:])):
        raise ValueError("train.phases: starts must increase")
    return tuple(out)


@dataclass
class TrainResult:
    """``losses``: mean loss over the step's candidates, one per step run in this call;
    ``images_per_second``: batch images per second of wall time (each image passes through
    every candidate of the step)."""

    step: int
    losses: list[float] = field(default_factory=list)
    #: the first candidate's loss per step (the largest network's cross-entropy in a supernet)
    first_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    images: int = 0
    candidate_passes: int = 0
    #: Candidate gradients dropped because they were not finite.
    skipped: int = 0
    checkpoint: str | None = None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


# ----- batches -----------------------------------------------------------------------------------
def _tensors(data: TensorDataset | Any) -> tuple[torch.Tensor, torch.Tensor]:
    ds = getattr(data, "train", data)
    if not isinstance(ds, TensorDataset) or len(ds.tensors) < 2:
        raise ValueError("training data: expected an ImageData or a TensorDataset of (images, labels)")
    return ds.tensors[0], ds.tensors[1]


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of the batch of ``step``: epoch ``step // (n // batch_size)`` of a permutation
    seeded with ``(seed, epoch)``; the last partial batch of an epoch is dropped."""
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([int(seed), int(epoch), 0x5EED]).permutation(n)
    size = min(batch_size, n)
    return perm[k * size : (k + 1) * size]


def check_data(supernet: Supernet, data: Any) -> None:
    """Clear errors when the data does not fit the supernet's space."""
    x, y = _tensors(data)
    supernet.check_data(tuple(x.shape), getattr(data, "num_classes", None) or int(y.max()) + 1)


def _param_groups(supernet: Supernet, weight_decay: float) -> list[dict[str, Any]]:
    decay = list(supernet.weight_parameters())
    ids = {id(p) for p in decay}
    rest = [p for p in supernet.parameters() if id(p) not in ids]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def make_optimizer(supernet: Supernet, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, or AdamW (``momentum`` is its beta1), weight decay on the weights only."""
    groups = _param_groups(supernet, config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999))
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    """``alpha * T^2 * KL(teacher || student)`` at temperature T plus ``(1 - alpha) * CE``."""
    t = temperature
    kd = F.kl_div(F.log_softmax(student / t, dim=1), F.softmax(teacher / t, dim=1), reduction="batchmean") * (t * t)
    if alpha >= 1.0:
        return kd
    return alpha * kd + (1.0 - alpha) * F.cross_entropy(student, labels)


# ----- the loop ------------------------------------------------------------------------------------
def _run(supernet: Supernet, data: Any, config: TrainConfig, pick: Callable[[int], list[Candidate]], *,
         distill: bool, checkpoint: str | os.PathLike | None, resume: bool, device: str | torch.device,
         progress: bool, stop_after: int | None, extra: dict[str, Any], desc: str,
         finish: Callable[[], dict[str, Any]] | None = None) -> TrainResult:
    check_data(supernet, data)
    x_all, y_all = _tensors(data)
    device = torch.device(device)
    supernet.to(device)
    optimizer = make_optimizer(supernet, config)
    start = 0
    ckpt = Path(checkpoint).expanduser() if checkpoint is not None else None
    threads_before = torch.get_num_threads()
    torch.set_num_threads(int(config.threads))
    try:
        if ckpt is not None and resume and ckpt.is_file():
            start = load_checkpoint(ckpt, supernet, optimizer=optimizer, map_location=device, restore_rng=True).step
        else:
            torch.manual_seed(int(config.seed))
        end = config.steps if stop_after is None else min(config.steps, start + int(stop_after))
        result = TrainResult(step=start)
        meta = {"train": config.to_json(), **extra}
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=start, disable=not progress, desc=desc, leave=False)
        supernet.train()
        params = [p for p in supernet.parameters() if p.requires_grad]
        t0 = time.perf_counter()
        for step in range(start, end):
            lr = config.lr_at(step)
            for g in optimizer.param_groups:
                g["lr"] = lr
            idx = torch.from_numpy(batch_indices(len(x_all), config.batch_size, config.seed, step))
            x = x_all[idx].to(device, non_blocking=True)
            y = y_all[idx].to(device, non_blocking=True)
            teacher = None
            total = first = 0.0
            cands = pick(step)
            summed = [torch.zeros_like(p) for p in params]
            for i, cand in enumerate(cands):
                optimizer.zero_grad(set_to_none=True)
                logits = supernet(x, cand)
                if i == 0 or not distill:
                    loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                    teacher = logits.detach()
                else:
                    loss = distill_loss(logits, teacher, y, config.kd_alpha, config.kd_temperature)
                loss.backward()
                value = float(loss.detach())
                first = value if i == 0 else first
                total += value
                # per candidate: no candidate's gradient may swamp the others'; a non-finite one
                # (overflow in a degenerate candidate) is dropped and counted
                each = config.grad_clip if config.clip_mode == "candidate" and config.grad_clip else float("inf")
                norm = torch.nn.utils.clip_grad_norm_(params, each)
                if not torch.isfinite(norm):
                    result.skipped += 1
                    continue
                for acc, p in zip(summed, params):
                    if p.grad is not None:
                        acc.add_(p.grad)
            if not math.isfinite(first):
                raise FloatingPointError(f"training: the loss of {cands[0].id} is {first} at step {step}; lower train.lr")
            for p, g in zip(params, summed):
                p.grad = g
            if config.clip_mode == "total" and config.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            mean = total / len(cands)
            result.losses.append(mean)
            result.first_losses.append(first)
            result.images += len(idx)
            result.candidate_passes += len(idx) * len(cands)
            result.step = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{mean:.3f}", lr=f"{lr:.3g}")
            if ckpt is not None and config.checkpoint_every and result.step % config.checkpoint_every == 0 and result.step < end:
                save_checkpoint(ckpt, supernet, optimizer=optimizer, step=result.step, extra=meta)
        result.seconds = time.perf_counter() - t0
        bar.close()
        if finish is not None and end > start and result.step == config.steps:
            meta.update(finish())  # measured on the finished weights, stored with them
        if ckpt is not None and end > start:
            save_checkpoint(ckpt, supernet, optimizer=optimizer, step=result.step, extra=meta)
            result.checkpoint = str(ckpt)
        return result
    finally:
        torch.set_num_threads(threads_before)


def step_candidates(sampler: CandidateSampler, config: TrainConfig, step: int) -> list[Candidate]:
    """The candidates of training step ``step``: the largest (the teacher), the lower end and
    ``n_random`` random ones, drawn by the space's own sampler within the step's phase
    (`CandidateSampler.sandwich`) from a generator seeded with ``(seed, step)``."""
    phase = config.phase_at(step)
    rng = np.random.default_rng([int(config.seed), int(step), 0xCA4D])
    return sampler.sandwich(rng, config.n_random, phase.elastic, phase.limit, config.lower_end, config.n_dense)


def train_supernet(supernet: Supernet, data: Any, config: TrainConfig | Mapping[str, Any] | None = None, *,
                   checkpoint: str | os.PathLike | None = None, resume: bool = True, device: str | torch.device = "cpu",
                   progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train ``supernet`` on ``data`` (an `ImageData` or a TensorDataset) with the sandwich rule.

    With ``checkpoint``, the state is written there (every ``checkpoint_every`` steps and at
    the end) and, with ``resume``, an existing file is continued from. ``stop_after`` ends this
    call after that many steps (the run can be resumed later)."""
    config = config if isinstance(config, TrainConfig) else TrainConfig.from_json(config)

    def pick(step: int) -> list[Candidate]:
        return step_candidates(supernet.sampler, config, step)

    def finish() -> dict[str, Any]:
        if not config.sensitivity_images or checkpoint is None:
            return {}
        from ..spaces.sensitivity import EXTRA_KEY
        from .sensitivity import TRAINING_PROBES, measure_sensitivity, planned_probes

        probes = planned_probes(supernet)
        if probes == 0:
            return {}
        if probes > TRAINING_PROBES:
            return {f"{EXTRA_KEY}_skipped": f"{probes} probes > {TRAINING_PROBES}: run `tritune supernet sensitivity JOB` to measure them"}
        table = measure_sensitivity(supernet, data, images=config.sensitivity_images, seed=config.seed, threads=config.threads,
                                    progress=progress)
        return {EXTRA_KEY: table.to_json()}

    extra = {"data": getattr(data, "name", None), "mode": "supernet"}
    return _run(supernet, data, config, pick, distill=True, checkpoint=checkpoint, resume=resume, device=device,
                progress=progress, stop_after=stop_after, extra=extra, desc="supernet", finish=finish)


def train_candidate(supernet: Supernet, candidate: Candidate, data: Any, config: TrainConfig | Mapping[str, Any] | None = None, *,
                    freeze_masks: bool = False, device: str | torch.device = "cpu", progress: bool = False,
                    checkpoint: str | os.PathLike | None = None, resume: bool = True) -> TrainResult:
    """Train one candidate alone (cross-entropy; its masks and fake quantizers active).

    ``freeze_masks`` keeps the masks computed from the weights at the start (fine-tuning with
    the compression fixed); otherwise masks follow the weights (pruning while training, as a
    candidate trained from scratch is). Only the candidate's slices of the weights change."""
    config = config if isinstance(config, TrainConfig) else TrainConfig.from_json(config)
    supernet.plan(candidate)  # validate before any work
    extra = {"data": getattr(data, "name", None), "mode": "candidate", "candidate": candidate.to_json()}

    def pick(step: int) -> list[Candidate]:
        return [candidate]

    def run() -> TrainResult:
        return _run(supernet, data, config, pick, distill=False, checkpoint=checkpoint, resume=resume, device=device,
                    progress=progress, stop_after=None, extra=extra, desc=f"candidate {candidate.id}")

    if not freeze_masks:
        return run()
    with supernet.masks_frozen():
        return run()


@torch.no_grad()
def accuracy(supernet: Supernet, candidate: Candidate, data: TensorDataset | Any, *, batch_size: int = 500,
             device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy (0..1) of ``candidate`` on ``data`` (a TensorDataset; an `ImageData` means
    its test split), in eval mode with the supernet's current BN statistics."""
    ds = getattr(data, "test", data)
    x_all, y_all = ds.tensors[0], ds.tensors[1]
    was = supernet.training
    supernet.eval()
    correct = 0
    try:
        for i in range(0, len(x_all), batch_size):
            x = x_all[i : i + batch_size].to(device)
            y = y_all[i : i + batch_size].to(device)
            correct += int((supernet(x, candidate).argmax(1) == y).sum())
    finally:
        supernet.train(was)
    return correct / max(1, len(x_all))


def calibration_batches(data: Any, n_batches: int, batch_size: int, seed: int = 0, device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """``n_batches`` fixed batches of training images (seeded), for BN recalibration."""
    if int(n_batches) < 1 or int(batch_size) < 1:
        raise ValueError(f"calibration: n_batches ({n_batches!r}) and batch_size ({batch_size!r}) must be >= 1")
    x_all, _ = _tensors(data)
    perm = np.random.default_rng([int(seed), 0xCA1B]).permutation(len(x_all))
    size = min(int(batch_size), len(x_all))
    out = []
    for b in range(int(n_batches)):
        idx = perm[(b * size) % len(x_all) :][:size]
        if len(idx) < size:
            idx = np.concatenate([idx, perm[: size - len(idx)]])
        out.append(x_all[torch.from_numpy(idx)].to(device))
    return out
