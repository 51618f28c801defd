"""Fine-tuning one candidate with its compression kept: masks exact, bits kept, resumable.

`Finetuner` trains a `tritune.spaces.trainable.TrainableNetwork` (the candidate's own network,
built from a supernet by its ``trainable(candidate)``; any family that defines
``SearchSpace.trainable_network``) on an `ImageData`:

* **masks** come from a pruning method of `tritune.kernels.pruning`, chosen by name
  (`METHODS`). Every method starts from the inherited *dense* weights of the masked layers
  (the supernet's view before its mask) and reaches the candidate's pattern and ratio its own
  way: ``oneshot`` prunes by magnitude at the first step -- on the inherited weights that is
  exactly the candidate's mask in the supernet -- and trains with it; ``gradual`` raises the
  sparsity along Zhu & Gupta's cubic schedule; ``admm`` pulls the weights onto the pattern's
  set and hard-prunes; ``group_lasso`` pushes the groups of block / kernel-pattern layers
  towards zero and hard-prunes (its other masked layers are pruned by magnitude at the first
  step). The searching methods finish their masks after ``prune_fraction`` of the schedule; the
  rest of it trains with the masks fixed. Every mask is checked with `check_mask` when it
  becomes final and at the end of every call, and pruned weights stay exactly zero.
* **bits**: quantization-aware training -- the layers' weight and activation fake quantizers
  stay in the forward; activation ranges are re-estimated at the start of every epoch (and BN
  statistics with them at the first step and after a hard prune).
* **schedule**: SGD with Nesterov momentum (or AdamW, as transformers train), cosine learning rate over the *total* steps of the
  model; batches of step ``t`` are fixed by ``(seed, epoch)`` (`batch_indices`). `run` may
  stop at any epoch count and continue later -- in another process through `save_state` /
  `Finetuner.load_state` -- and takes exactly the steps an uninterrupted run takes (same thread
  count), which is what successive halving needs.
* **accuracy** is that of the network as it deploys: its ``deploy`` form (the supernet's
  ``extract`` form: for mobilenet BN folded, int8 codes, calibrated input ranges) after
  re-estimating BN statistics and ranges on fixed training batches, as `SupernetAccuracy`
  scores inherited weights; in the middle of a method's search
  the masks it would apply now are applied to a copy first.

State files are one safetensors file (tensors plus a JSON header, checksummed; no pickle):
the network, the optimizer, the pruning methods, the step, the torch RNG state, the candidate
and the configuration.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from ..kernels.patterns import achieved_sparsity, check_mask
from ..kernels.pruning import ADMM, GradualMagnitude, OneShotMagnitude, PruningMethod, ReweightedGroupLasso
from ..spaces.candidate import Candidate
from ..spaces.compression import parse_pattern
from ..kernels.timing import torch_threads
from ..spaces.checkpoint import tensors_checksum
from ..spaces.images import fit_input
from ..spaces.trainable import TrainableNetwork, masked_pattern
from .data import ImageData
from .supernet_training import OPTIMIZERS, batch_indices, calibration_batches

__all__ = ["DEFAULT_METHOD", "METHODS", "FinetuneConfig", "FinetuneResult", "FinetuneStateError", "Finetuner", "finetune"]

#: The ways a finalist's masks are reached (see the module docstring).
METHODS = ("oneshot", "gradual", "admm", "group_lasso")
#: The default: the most accurate at the same budget and no slower -- every method's step is the
#: network's forward and backward (`benchmarks/finetune_methods.py`).
DEFAULT_METHOD = "oneshot"
FORMAT = "tritune-finetune"
SCHEMA = 1


class FinetuneStateError(ValueError):
    """A fine-tuning state file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one model's fine-tuning.

    ``epochs``: the model's whole schedule (learning rate and pruning schedule span it; a call
    may stop earlier); ``method`` / ``method_options``: the pruning method and its constructor
    options (`tritune.kernels.pruning`); ``optimizer``: ``sgd`` (Nesterov, ``momentum``) or
    ``adamw`` (``momentum`` is its beta1); ``prune_fraction``: share of the schedule in which
    gradual / admm / group_lasso search the masks; ``calib_batches`` x ``calib_batch_size``
    training images re-estimate BN statistics and activation ranges; ``threads``: torch
    intra-op threads (fixed: results are reproducible for a given count)."""

    epochs: float = 2.0
    lr: float = 0.01
    batch_size: int = 64
    method: str = DEFAULT_METHOD
    method_options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    optimizer: str = "sgd"
    prune_fraction: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 4e-5
    grad_clip: float = 5.0
    calib_batches: int = 4
    calib_batch_size: int = 128
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        where = "finetune"
        if self.method not in METHODS:
            raise ValueError(f"{where}.method: {self.method!r} not allowed; allowed: {', '.join(METHODS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"{where}.optimizer: {self.optimizer!r} not allowed; allowed: {', '.join(OPTIMIZERS)}")
        if not isinstance(self.method_options, Mapping):
            raise ValueError(f"{where}.method_options: expected a mapping of option -> value, got {type(self.method_options).__name__}")
        object.__setattr__(self, "method_options", dict(self.method_options))
        for name in ("epochs", "lr", "grad_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                raise ValueError(f"{where}.{name}: {value!r} not allowed; allowed: a positive number")
        for name in ("batch_size", "calib_batches", "calib_batch_size", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}.{name}: {value!r} not allowed; allowed: an integer >= 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"{where}.seed: {self.seed!r} not allowed; allowed: an integer")
        if not 0.0 < float(self.prune_fraction) <= 1.0:
            raise ValueError(f"{where}.prune_fraction: {self.prune_fraction!r} not allowed; allowed: a number in (0, 1]")
        if not 0.0 <= float(self.momentum) < 1.0 or not float(self.weight_decay) >= 0.0:
            raise ValueError(f"{where}: momentum {self.momentum!r} / weight_decay {self.weight_decay!r} not allowed; allowed: [0, 1) / >= 0")
        build_methods(self, {}, total_steps=1)  # the method options are checked now, not after an epoch

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["method_options"] = dict(self.method_options)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "FinetuneConfig":
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"finetune: unknown fields {unknown}; allowed: {', '.join(sorted(allowed))}")
        return cls(**dict(data))


def build_methods(config: FinetuneConfig, plan: Mapping[str, tuple[str, float]], total_steps: int) -> list[tuple[PruningMethod, dict]]:
    """The pruning method(s) of ``config`` with the part of ``plan`` each takes. Interval-like
    options default to a share of the search phase, so a short fine-tune still updates them
    about ten (ADMM) or five (group lasso reweighting) times."""
    options = dict(config.method_options)
    phase = max(1, int(round(config.prune_fraction * total_steps)))
    try:
        if config.method == "oneshot":
            return [(OneShotMagnitude(**options), dict(plan))]
        if config.method == "gradual":
            options = {"start": 0.0, "end": float(config.prune_fraction), **options}
            return [(GradualMagnitude(**options), dict(plan))]
        if config.method == "admm":
            options = {"interval": max(1, phase // 10), **options}
            return [(ADMM(**options), dict(plan))]
        options = {"reweight_every": max(1, phase // 5), **options}
        grouped = {k: v for k, v in plan.items() if parse_pattern(v[0]).family in ReweightedGroupLasso.FAMILIES}
        rest = {k: v for k, v in plan.items() if k not in grouped}
        return [(ReweightedGroupLasso(**options), grouped), (OneShotMagnitude(), rest)]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"finetune.method_options: {' '.join(str(exc).split())}") from None


@dataclass(frozen=True)
class FinetuneResult:
    """Where one model stands after a `Finetuner.run` call.

    Accuracies are top-1 test accuracy in % of the deployed form (``accuracy_before``: the
    inherited network the fine-tuning started from). ``epochs`` / ``step``: done so far of
    ``total_epochs`` / ``total_steps``; ``seconds``: training wall time of this call,
    ``eval_seconds``: scoring; ``masks_exact``: every masked layer's mask has its pattern's
    exact structure and ratio (`check_mask`) and no pruned weight is non-zero, checked on the
    deployed network; ``sparsity``: zeros per masked layer (IR name) as deployed."""

    candidate: str
    method: str
    accuracy_before: float
    accuracy: float
    epochs: float
    total_epochs: float
    step: int
    total_steps: int
    done: bool
    seconds: float
    eval_seconds: float
    loss: float
    masks_exact: bool
    sparsity: dict[str, float]
    net: TrainableNetwork | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "net"}
        out["sparsity"] = dict(self.sparsity)
        return out


def _check_data(net: TrainableNetwork, data: Any) -> ImageData:
    if not isinstance(data, ImageData):
        raise ValueError(f"finetune.data: expected an ImageData (tritune.evaluators.data.load_dataset), got {type(data).__name__}")
    space = net.space
    if data.channels != space.in_channels or data.num_classes > space.num_classes:
        raise ValueError(f"finetune.data: {data.name} has {data.channels} channels and {data.num_classes} classes; the space expects "
                         f"in_channels={space.in_channels} and at most num_classes={space.num_classes}")
    return data


def data_fingerprint(data: ImageData) -> dict[str, Any]:
    """Name, split sizes and a SHA-256 of the training split: a state continues on the same data only."""
    import hashlib

    h = hashlib.sha256()
    for t in data.train.tensors[:2]:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return {"name": data.name, "train": len(data.train), "test": len(data.test), "train_sha256": h.hexdigest()}


def _accuracy(model: torch.nn.Module, data: ImageData, batch_size: int = 500) -> float:
    """Top-1 test accuracy (%) of a deployable network (inputs fitted to its ``input_size``)."""
    x_all, y_all = data.test.tensors[0], data.test.tensors[1]
    device = next(model.parameters()).device
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x_all), batch_size):
            x = fit_input(x_all[i:i + batch_size].to(device), model.input_size)
            correct += int((model(x).argmax(1) == y_all[i:i + batch_size].to(device)).sum())
    return 100.0 * correct / max(1, len(x_all))


def mask_report(model: Any, layers: list) -> tuple[bool, dict[str, float]]:
    """(every mask of the masked layers passes `check_mask` and the weights are zero outside it,
    zeros per layer) for a deployed network (`tritune.spaces.weight_sharing.DeployableNetwork`)."""
    exact, sparsity = True, {}
    masks, weights = model.pattern_masks(), model.deployed_weights()
    for spec in layers:
        if not masked_pattern(spec):
            continue
        mask = masks.get(spec.name)
        if mask is None:
            exact = False
            continue
        w = weights[spec.name].detach()
        try:
            check_mask(mask, spec.pattern, spec.sparsity)
        except ValueError:
            exact = False
        if bool((w[~mask] != 0).any()):
            exact = False
        sparsity[spec.name] = achieved_sparsity(mask)
    return exact, sparsity


class Finetuner:
    """Fine-tunes one `TrainableNetwork` on ``data`` with ``config`` (see the module docstring).

    Construction scores the inherited network, puts the masked layers' inherited dense weights
    back and attaches the pruning method; `run` trains (until an epoch count, or to the end);
    `save_state` / `load_state` carry a run over to another call or process."""

    def __init__(self, net: TrainableNetwork, data: ImageData, config: FinetuneConfig | None = None, *, _fresh: bool = True) -> None:
        if not isinstance(net, torch.nn.Module) or not isinstance(net, TrainableNetwork):
            raise ValueError(f"Finetuner: expected a trainable network (a supernet's trainable(candidate)), got {type(net).__name__}")
        self.net = net
        self.data = _check_data(net, data)
        self.config = config or FinetuneConfig()
        self.steps_per_epoch = max(1, len(data.train) // self.config.batch_size)
        self.total_steps = max(1, int(round(float(self.config.epochs) * self.steps_per_epoch)))
        self.phase_end = min(self.total_steps, max(1, int(round(self.config.prune_fraction * self.total_steps))))
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.accuracy_before = float("nan")
        self.calib = calibration_batches(data, self.config.calib_batches, self.config.calib_batch_size, seed=self.config.seed,
                                         device=next(net.parameters()).device)
        self._plan = net.pruning_plan()
        self._module_to_layer = {net.module_name(s.name): s.name for s in net.weight_layers()}
        if _fresh:
            with torch_threads(self.config.threads):
                self.accuracy_before = self.evaluate()[0]
            self._restore_dense()
        self.optimizer = self._make_optimizer()
        pairs = build_methods(self.config, self._plan, self.total_steps)
        self.methods: list[PruningMethod] = [m for m, _ in pairs]
        for method, part in pairs:
            method.attach(net, part)

    # ----- setup ------------------------------------------------------------------------------------
    @torch.no_grad()
    def _restore_dense(self) -> None:
        """Put the inherited dense weights back into the masked layers (every method starts there)."""
        for op in self.net.ops().values():
            if op.dense_weight is not None:
                op.weight.copy_(op.dense_weight)
                op.dense_weight = None

    def _make_optimizer(self) -> torch.optim.Optimizer:
        weights = [op.weight for op in self.net.ops().values()]
        ids = {id(p) for p in weights}
        rest = [p for p in self.net.parameters() if id(p) not in ids]
        groups = [{"params": weights, "weight_decay": float(self.config.weight_decay)}, {"params": rest, "weight_decay": 0.0}]
        momentum = float(self.config.momentum)
        if self.config.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=float(self.config.lr), betas=(momentum, 0.999))
        return torch.optim.SGD(groups, lr=float(self.config.lr), momentum=momentum, nesterov=momentum > 0)

    @property
    def epochs_done(self) -> float:
        return self.step / self.steps_per_epoch

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def lr_at(self, step: int) -> float:
        return 0.5 * float(self.config.lr) * (1.0 + math.cos(math.pi * step / self.total_steps))

    # ----- masks ------------------------------------------------------------------------------------
    def _final(self) -> bool:
        return all(all(m.final.values()) for m in getattr(self, "methods", []))

    def _finalize(self) -> None:
        for m in self.methods:
            m.finalize()  # applies and verifies (check_mask, zeros)
        self._sync_masks()

    @torch.no_grad()
    def _sync_masks(self) -> None:
        """Copy every final mask into its layer's ``weight_mask`` buffer."""
        for m in self.methods:
            for name, mask in m.masks.items():
                if mask is not None and m.final[name]:
                    self.net.get_submodule(name).weight_mask.copy_(mask)

    def check_masks(self) -> None:
        """Raise ValueError unless every final mask has its pattern's exact structure and ratio,
        its pruned weights are zero and the layer's ``weight_mask`` holds it."""
        for m in self.methods:
            for name, layer in m.layers.items():
                mask = m.masks[name]
                if mask is None or not m.final[name]:
                    continue
                layer.check(mask)
                op = self.net.get_submodule(name)
                if bool((op.weight.detach()[~mask] != 0).any()):
                    raise ValueError(f"{name}: pruned weights became non-zero")
                if not torch.equal(op.weight_mask, mask):
                    raise ValueError(f"{name}: the layer's weight_mask is not the mask in force")

    # ----- scoring ----------------------------------------------------------------------------------
    @torch.no_grad()
    def deployable(self) -> "torch.nn.Module":
        """The network as it deploys now (`deploy` after recalibration; the masks a method
        would apply now are applied to a copy first). ``self.net`` is not changed."""
        net = self.net
        if not self._final():
            net = net.copy()
            for m in self.methods:
                for name, mask in m.hard_masks().items():
                    op = net.get_submodule(name)
                    op.weight.mul_(mask)
                    op.weight_mask.copy_(mask)
        return net.deploy(self.calib)

    def evaluate(self) -> tuple[float, bool, dict[str, float]]:
        """(test accuracy in % of `deployable`, masks exact, zeros per masked layer)."""
        sub = self.deployable()
        exact, sparsity = mask_report(sub, self.net.layers)
        return _accuracy(sub, self.data), exact, sparsity

    # ----- training ---------------------------------------------------------------------------------
    def train_step(self) -> float:
        """One optimisation step of the schedule (masks and ranges updated as the schedule says);
        returns the step's cross-entropy. `run` calls it under the configured thread count."""
        if self.done:
            raise RuntimeError(f"finetune: {self.net.candidate.id} has finished its {self.total_steps} steps")
        cfg = self.config
        x_all, y_all = self.data.train.tensors[0], self.data.train.tensors[1]
        device = next(self.net.parameters()).device
        step = self.step
        recalibrate = step == 0
        if step == self.phase_end and not self._final():
            self._finalize()
            recalibrate = True
        for m in self.methods:
            m.before_step(step, self.total_steps)
        self._sync_masks()
        if recalibrate:
            self.net.recalibrate(self.calib)
        elif step % self.steps_per_epoch == 0:
            self.net.calibrate_ranges(self.calib)
        self.net.train()
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_at(step)
        idx = torch.from_numpy(batch_indices(len(x_all), cfg.batch_size, cfg.seed, step))
        x, y = x_all[idx].to(device), y_all[idx].to(device)
        loss = F.cross_entropy(self.net(x), y)
        penalty = sum((m.penalty() for m in self.methods), torch.zeros((), device=device))
        self.optimizer.zero_grad(set_to_none=True)
        (loss + penalty).backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.net.parameters() if p.requires_grad], float(cfg.grad_clip))
        self.optimizer.step()
        for m in self.methods:
            m.after_step(step, self.total_steps)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"finetune: the loss of {self.net.candidate.id} is {value} at step {step}; lower finetune.lr")
        self.step += 1
        return value

    def run(self, until_epochs: float | None = None, *, progress: bool = False, save_to: str | os.PathLike | None = None,
            save_every: int = 0) -> FinetuneResult:
        """Train until ``until_epochs`` epochs of the schedule are done (default: all of it),
        then score. With ``save_to``, the state is written there at the end (and every
        ``save_every`` steps), so a killed run loses at most that many steps."""
        end = self.total_steps
        if until_epochs is not None:
            if isinstance(until_epochs, bool) or not isinstance(until_epochs, (int, float)) or not until_epochs >= 0:
                raise ValueError(f"finetune.until_epochs: {until_epochs!r} not allowed; allowed: a number >= 0")
            end = min(self.total_steps, int(round(float(until_epochs) * self.steps_per_epoch)))
        from tqdm.auto import tqdm

        cfg = self.config
        losses: list[float] = []
        t0 = time.perf_counter()
        with torch_threads(cfg.threads), tqdm(total=self.total_steps, initial=self.step, disable=not progress, leave=False,
                                         desc=f"finetune {self.net.candidate.id} ({cfg.method})") as bar:
            while self.step < end:
                value = self.train_step()
                losses.append(value)
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}")
                if save_to is not None and save_every and self.step % save_every == 0 and self.step < end:
                    self.save_state(save_to)
            if self.done and not self._final():
                self._finalize()
                self.net.recalibrate(self.calib)
            self.check_masks()
            seconds = time.perf_counter() - t0
            t1 = time.perf_counter()
            accuracy, exact, sparsity = self.evaluate()
            eval_seconds = time.perf_counter() - t1
        if self.done:
            for m in self.methods:
                m.detach()
        result = FinetuneResult(
            candidate=self.net.candidate.id, method=cfg.method, accuracy_before=self.accuracy_before, accuracy=accuracy,
            epochs=self.epochs_done, total_epochs=float(cfg.epochs), step=self.step, total_steps=self.total_steps, done=self.done,
            seconds=seconds, eval_seconds=eval_seconds, loss=float(sum(losses) / len(losses)) if losses else float("nan"),
            masks_exact=exact, sparsity=sparsity, net=self.net)
        self.history.append(result.to_json())
        if save_to is not None:
            self.save_state(save_to)
        return result

    # ----- state ------------------------------------------------------------------------------------
    def save_state(self, path: str | os.PathLike) -> Path:
        """Write everything `load_state` needs to continue exactly (atomically)."""
        from safetensors.torch import save_file

        tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in self.net.state_dict().items()}
        sd = self.optimizer.state_dict()
        values: dict[str, Any] = {}
        for idx, state in sd["state"].items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous().clone()
                else:
                    values[f"{idx}.{key}"] = value
        methods = []
        for i, m in enumerate(self.methods):
            m_tensors, m_values = m.state_dict()
            for key, value in m_tensors.items():
                tensors[f"method.{i}.{key}"] = value.detach().cpu().contiguous().clone()
            methods.append(m_values)
        tensors["rng.torch"] = torch.get_rng_state()
        net = self.net
        header = {
            "format": FORMAT, "schema": SCHEMA,
            "space": {"name": net.space.name, "config": net.space.config()},
            "candidate": net.candidate.to_json(),
            "net": net.options(),
            "config": self.config.to_json(),
            "data": data_fingerprint(self.data),
            "step": self.step, "accuracy_before": self.accuracy_before, "history": self.history,
            "optimizer": {"type": type(self.optimizer).__name__, "param_groups": sd["param_groups"], "values": values},
            "methods": methods,
            "tensors_sha256": tensors_checksum(tensors),
        }
        p = Path(path).expanduser()
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"tritune": json.dumps(header, sort_keys=True)})
            os.replace(tmp, p)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return p

    @classmethod
    def load_state(cls, path: str | os.PathLike, data: ImageData, *, device: str | torch.device = "cpu") -> "Finetuner":
        """The `Finetuner` a `save_state` file describes, ready to `run` on (same ``data``).
        Never unpickles; refuses damaged or foreign files with `FinetuneStateError`."""
        p = Path(path).expanduser()
        where = f"fine-tuning state {str(p)!r}"
        header = read_state_header(p)
        try:
            from ..spaces.registry import create

            space = create(header["space"]["name"], **header["space"]["config"])
            candidate = Candidate.from_json(header["candidate"])
            net = space.trainable_network(candidate, **header["net"])
            config = FinetuneConfig.from_json(header["config"])
        except (ValueError, TypeError, KeyError) as exc:
            raise FinetuneStateError(f"{where}: cannot rebuild its network: {' '.join(str(exc).split())}") from None
        if not isinstance(data, ImageData) or data_fingerprint(data) != header["data"]:
            theirs = {k: v for k, v in header["data"].items() if k != "train_sha256"}
            raise FinetuneStateError(f"{where}: written for data {theirs} (training split checksum in the header); "
                                     f"given other data ({getattr(data, 'name', type(data).__name__)!r})")
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(p), device="cpu")
        except Exception as exc:  # safetensors' own error types for damaged data
            raise FinetuneStateError(f"{where}: tensors cannot be read ({' '.join(str(exc).split())}); the file is damaged") from None
        if tensors_checksum(tensors) != header["tensors_sha256"]:
            raise FinetuneStateError(f"{where}: tensor checksum mismatch; the file was damaged or changed")
        for key, value in tensors.items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise FinetuneStateError(f"{where}: tensor {key!r} holds NaN or infinite values")
        model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        expected = net.state_dict()
        if set(model) != set(expected):
            raise FinetuneStateError(f"{where}: tensors do not fit the candidate's network")
        for key, value in expected.items():
            if tuple(model[key].shape) != tuple(value.shape) or model[key].dtype != value.dtype:
                raise FinetuneStateError(f"{where}: tensor {key!r} is {model[key].dtype} {tuple(model[key].shape)}; "
                                         f"expected {value.dtype} {tuple(value.shape)}")
        net.load_state_dict(model, strict=True)
        net.to(device)
        try:
            tuner = cls(net, data, config, _fresh=False)
        except ValueError as exc:
            raise FinetuneStateError(f"{where}: {' '.join(str(exc).split())}") from None
        tuner.step = int(header["step"])
        if tuner.step > tuner.total_steps:
            raise FinetuneStateError(f"{where}: step {tuner.step} is beyond the schedule's {tuner.total_steps}")
        tuner.accuracy_before = float(header["accuracy_before"])
        tuner.history = list(header["history"])
        try:
            if len(header["methods"]) != len(tuner.methods):
                raise ValueError(f"{len(header['methods'])} pruning methods saved, {len(tuner.methods)} expected")
            for i, (m, values) in enumerate(zip(tuner.methods, header["methods"])):
                prefix = f"method.{i}."
                m.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, values)
            opt = header["optimizer"]
            if opt["type"] != type(tuner.optimizer).__name__:
                raise ValueError(f"optimizer {opt['type']!r} saved, resuming with {type(tuner.optimizer).__name__!r}")
            state: dict[int, dict[str, Any]] = {}
            for key, value in tensors.items():
                if key.startswith("optim."):
                    _, idx, name = key.split(".", 2)
                    state.setdefault(int(idx), {})[name] = value.to(device)
            for key, value in opt["values"].items():
                idx, name = key.split(".", 1)
                state.setdefault(int(idx), {})[name] = value
            tuner.optimizer.load_state_dict({"state": state, "param_groups": opt["param_groups"]})
            rng = tensors["rng.torch"]
            torch.set_rng_state(rng)
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise FinetuneStateError(f"{where}: {' '.join(str(exc).split())}") from None
        if tuner.done:
            for m in tuner.methods:
                m.detach()
        return tuner


_HEADER_FIELDS: dict[str, tuple[type, ...]] = {
    "format": (str,), "schema": (int,), "space": (dict,), "candidate": (dict,), "net": (dict,), "config": (dict,), "data": (dict,),
    "step": (int,), "accuracy_before": (float, int), "history": (list,), "optimizer": (dict,), "methods": (list,),
    "tensors_sha256": (str,),
}


def read_state_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a fine-tuning state file, its format, schema and field types checked."""
    from safetensors import safe_open

    p = Path(path).expanduser()
    where = f"fine-tuning state {str(p)!r}"
    if not p.is_file():
        raise FinetuneStateError(f"{where}: no such file")
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
        header = json.loads(meta["tritune"])
    except (KeyError, TypeError, ValueError, RecursionError):
        raise FinetuneStateError(f"{where}: no tritune header; not a fine-tuning state") from None
    except Exception as exc:  # safetensors' own error types
        raise FinetuneStateError(f"{where}: not a safetensors file ({' '.join(str(exc).split())})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise FinetuneStateError(f"{where}: format {header.get('format') if isinstance(header, dict) else None!r}; allowed: {FORMAT!r}")
    if header.get("schema") != SCHEMA:
        raise FinetuneStateError(f"{where}: schema {header.get('schema')!r} not supported; allowed: {SCHEMA}")
    for name, types in _HEADER_FIELDS.items():
        if not isinstance(header.get(name), types) or isinstance(header.get(name), bool):
            raise FinetuneStateError(f"{where}: header field {name!r} missing or of the wrong type")
    return header


def finetune(net: TrainableNetwork | None, candidate: Candidate, data: ImageData, *, epochs: float, lr: float = 0.01,
             batch_size: int = 64, method: str = DEFAULT_METHOD, seed: int = 0, threads: int = 1,
             stop_after_epochs: float | None = None, state: str | os.PathLike | None = None, save_every: int = 0,
             progress: bool = False, **options: Any) -> FinetuneResult:
    """Fine-tune ``candidate``'s network ``net`` (a supernet's ``trainable(candidate)``) on ``data`` for
    ``epochs`` -- the model's whole schedule -- with its compression kept; stop early after
    ``stop_after_epochs`` (a rung of successive halving). ``options``: the other fields of
    `FinetuneConfig` (``method_options``, ``prune_fraction``, ``momentum``, ...).

    With ``state`` (a file path): when the file exists the run continues from it (``net`` may be
    None; the settings must equal the saved ones), and the state is written there at the end,
    so the next rung continues exactly where this one stopped, in this process or another;
    ``save_every`` steps it is written on the way too (a killed run loses at most that many)."""
    config = FinetuneConfig(epochs=epochs, lr=lr, batch_size=batch_size, method=method, seed=seed, threads=threads, **options)
    if state is not None and Path(state).expanduser().is_file():
        tuner = Finetuner.load_state(state, data, device=next(net.parameters()).device if net is not None else "cpu")
        if tuner.config != config:
            diff = sorted(k for k, v in config.to_json().items() if tuner.config.to_json()[k] != v)
            raise FinetuneStateError(f"fine-tuning state {str(state)!r}: saved with other settings (fields {diff} differ)")
    else:
        if net is None:
            raise ValueError("finetune: net is None and there is no state file to continue from")
        tuner = Finetuner(net, data, config)
    if tuner.net.candidate != tuner.net.space.validate(candidate):
        raise ValueError(f"finetune: the network is candidate {tuner.net.candidate.id}, not {candidate.id}")
    return tuner.run(stop_after_epochs, progress=progress, save_to=state, save_every=save_every if state is not None else 0)
