"""Pruning optimizers: four ways to reach the same pattern masks while training.

Every method drives `tritune.kernels.patterns.make_mask` -- the only place masks are made -- so
whatever the optimizer, the result has the exact structure of the pattern a compiled kernel
exploits (`finalize` checks it with `check_mask`). The methods differ in *how the weights are
prepared* for that mask:

* `OneShotMagnitude`: prune by magnitude at the first step, then train with the mask fixed
  (the classic prune + fine-tune baseline; Han et al. 2015, "Learning both Weights and
  Connections").
* `GradualMagnitude`: the mask is recomputed by magnitude every few steps at a sparsity that
  follows the cubic schedule of Zhu & Gupta 2017 ("To prune, or not to prune"),
  ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3``: fast early, when many weights are
  redundant, slow near the end. A pattern whose smallest achievable ratio is above zero (N:M is
  fixed at 1 - N/M, kernel_pattern keeps at most 4 of 9 taps) is first applied when the
  schedule reaches that ratio.
* `ADMM` (Zhang et al. 2018, "A Systematic DNN Weight Pruning Framework using ADMM"): training
  minimises loss + ``rho/2 ||W - Z + U||^2``; every ``interval`` steps ``Z = Proj_S(W + U)``,
  the Euclidean projection onto the pattern's constraint set S -- for every pattern here that is
  keeping the entries a mask scored by ``(W + U)^2`` keeps, i.e.
  ``make_mask(W + U, importance=(W + U)^2) * (W + U)`` (see `ADMM.project`) -- and the scaled
  dual update ``U += W - Z``. ``rho`` grows by ``rho_growth`` per update (as in Ye et al.
  2018, "Progressive Weight Pruning of DNNs using ADMM"), so W is pulled onto S gradually.
  `finalize` hard-prunes W by the same projection.
* `ReweightedGroupLasso` for structured patterns (block, channel, kernel_pattern): the penalty
  ``strength * sum_g a_g ||w_g||_2`` over the pattern's groups (blocks of ``W[O, K]``, output
  channels, 3x3 kernels or kernel groups -- the units the pattern keeps or drops whole; Wen et
  al. 2016, "Learning Structured Sparsity in Deep Neural Networks"), with weights
  ``a_g = 1 / (||w_g|| + eps)`` refreshed every ``reweight_every`` steps (Candes, Wakin & Boyd
  2008, "Enhancing Sparsity by Reweighted l1 Minimization"): weak groups are pushed to zero
  harder than strong ones, so the final magnitude mask removes groups that hold little.

One interface (the shape of a callback, as in Optuna / Lightning): ``attach(model, plan)``, then
per optimisation step ``before_step``, ``loss + penalty()``, ``optimizer.step()``,
``after_step``; ``finalize()`` applies the hard masks; training on afterwards keeps them (the
gradients of pruned weights are masked and the weights re-zeroed after each step, so momentum
or weight decay cannot revive them). `train_with_pruning` runs that loop on an `ImageData`.

An output channel whose weights are all pruned (``channel`` pattern, or whole rows of blocks) is
a removed filter: its bias is zeroed and kept at zero too, so it emits exactly 0 -- otherwise a
drifting bias behind a batch norm with zero variance would blow up at eval time. A following
batch norm's shift still emits a constant, which is what folding it into the next layer's bias
gives after physical removal.
"""
from __future__ import annotations

import math
import time
from abc import ABC
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..spaces.compression import KNOWN_PATTERNS, LayerCompression, parse_pattern, pattern_allowed
from .batchnorm import batchnorms, cumulative_batchnorm_stats
from .patterns import achieved_sparsity, check_mask, make_mask

if TYPE_CHECKING:  # kernels must not import evaluators at run time (dependency direction)
    from ..evaluators.data import ImageData

__all__ = [
    "ADMM", "GradualMagnitude", "LayerPlan", "OneShotMagnitude", "PRUNING_METHODS", "PruningMethod", "PruningResult",
    "ReweightedGroupLasso", "accuracy", "create_pruning_method", "cubic_sparsity", "fit", "prunable_modules",
    "recalibrate_batchnorm", "resolve_plan", "train_with_pruning",
]


# ----- the plan -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerPlan:
    """What one module is pruned to. ``sparsity`` is the target; ``min_sparsity`` the smallest
    ratio the pattern can reach on this weight (N:M's fixed ratio, kernel_pattern's 1 - taps/9)."""

    name: str
    pattern: str
    sparsity: float
    role: str
    options: Mapping[str, Any] = field(default_factory=dict)
    min_sparsity: float = 0.0

    @property
    def target(self) -> float:
        """The ratio the final mask aims at: the request, raised to what the pattern allows."""
        fixed = parse_pattern(self.pattern).fixed_sparsity
        return fixed if fixed is not None else max(self.sparsity, self.min_sparsity)

    def mask(self, weight: torch.Tensor, sparsity: float | None = None, importance: torch.Tensor | None = None) -> torch.Tensor:
        s = self.sparsity if sparsity is None else sparsity
        return make_mask(weight, self.pattern, s, importance=importance, **self.options)

    def check(self, mask: torch.Tensor) -> None:
        try:
            check_mask(mask, self.pattern, self.sparsity, **self.options)
        except ValueError as exc:
            raise ValueError(f"{self.name}: mask breaks its pattern: {exc}") from exc


def _role(module: nn.Module) -> tuple[str, int]:
    """Structural role (`tritune.spaces.compression.ROLES`) and kernel size of a prunable module."""
    if isinstance(module, nn.Linear):
        return "linear", 1
    ks = module.kernel_size
    kernel = ks[0] if len(set(ks)) == 1 else 0
    if module.groups > 1 and module.groups == module.in_channels:
        return "dwconv", kernel
    return "conv", kernel


def prunable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules a plan may name: every ``nn.Linear`` and ``nn.Conv2d`` (by qualified name)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def resolve_plan(model: nn.Module, plan: Mapping[str, Any]) -> dict[str, LayerPlan]:
    """Validate a plan against a model. Values: ``(pattern, sparsity)``, ``(pattern, sparsity,
    options)`` or a `LayerCompression` (its bit-widths are not this module's business). Layers
    planned ``dense`` are left out."""
    if not isinstance(plan, Mapping):
        raise ValueError(f"plan: expected a mapping module name -> (pattern, sparsity) or LayerCompression, got {type(plan).__name__}")
    modules = prunable_modules(model)
    out: dict[str, LayerPlan] = {}
    for name, value in plan.items():
        where = f"plan[{name!r}]"
        if name not in modules:
            raise ValueError(f"{where}: unknown module {name!r}; allowed (Conv2d / Linear modules): {', '.join(modules) or 'none'}")
        options: dict[str, Any] = {}
        if isinstance(value, LayerCompression):
            pattern, sparsity = value.pattern, value.sparsity
        elif isinstance(value, (tuple, list)) and len(value) in (2, 3):
            pattern, sparsity = value[0], value[1]
            if len(value) == 3:
                if not isinstance(value[2], Mapping):
                    raise ValueError(f"{where}: third item must be a dict of pattern options, got {value[2]!r}")
                options = dict(value[2])
        else:
            raise ValueError(f"{where}: {value!r} not allowed; allowed: (pattern, sparsity), (pattern, sparsity, options) or a LayerCompression")
        if not isinstance(pattern, str):
            raise ValueError(f"{where}.pattern: {pattern!r} not allowed; allowed: {', '.join(KNOWN_PATTERNS)}")
        try:
            parse_pattern(pattern)
        except ValueError as exc:
            raise ValueError(f"{where}.{exc}") from None
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
            raise ValueError(f"{where}.sparsity: {sparsity!r} not allowed; allowed: a number in [0, 1)")
        module = modules[name]
        role, kernel = _role(module)
        if not pattern_allowed(pattern, role, kernel):
            allowed = [p for p in KNOWN_PATTERNS if pattern_allowed(p, role, kernel)]
            raise ValueError(
                f"{where}: pattern {pattern!r} not applicable to {type(module).__name__} {name!r} "
                f"(role {role}, kernel {kernel}); allowed: {', '.join(allowed)}")
        if pattern == "dense":
            continue
        layer = LayerPlan(name, pattern, float(sparsity), role, options)
        try:  # the pattern's own checks (options, shapes), and its smallest achievable ratio
            floor = achieved_sparsity(layer.mask(module.weight, 0.0))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        out[name] = LayerPlan(name, pattern, float(sparsity), role, options, floor)
    return out


# ----- the interface ------------------------------------------------------------------------------
class PruningMethod(ABC):
    """Base of the pruning optimizers (see the module docstring for the call order).

    Subclasses set ``name`` and override the hooks they need; ``masks[name]`` is the keep-mask in
    force for a layer (None while the layer is still dense) and is enforced on gradients and
    weights."""

    name: str = ""

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.layers: dict[str, LayerPlan] = {}
        self.modules: dict[str, nn.Module] = {}
        self.masks: dict[str, torch.Tensor | None] = {}
        self.final: dict[str, bool] = {}
        self._hooks: list[Any] = []

    # -- lifecycle
    def attach(self, model: nn.Module, plan: Mapping[str, Any]) -> "PruningMethod":
        """Bind to ``model`` with ``plan`` (validated by `resolve_plan`); returns self."""
        if self.model is not None:
            raise RuntimeError(f"{type(self).__name__}: already attached; create a new method per model")
        self.layers = resolve_plan(model, plan)
        modules = prunable_modules(model)
        self.model = model
        self.modules = {n: modules[n] for n in self.layers}
        self.masks = {n: None for n in self.layers}
        self.final = {n: False for n in self.layers}
        for n, m in self.modules.items():
            self._hooks.append(m.weight.register_hook(self._grad_hook(n)))
            if m.bias is not None:
                self._hooks.append(m.bias.register_hook(self._grad_hook(n, bias=True)))
        self._on_attach()
        return self

    def _grad_hook(self, name: str, bias: bool = False):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            mask = self.masks[name]
            if mask is None:
                return grad
            return grad * (mask.reshape(len(mask), -1).any(1) if bias else mask)
        return hook

    def _on_attach(self) -> None:
        """Per-method state once layers are known."""

    def before_step(self, step: int, total_steps: int) -> None:
        """Called before the forward pass of optimisation step ``step`` (0-based) of ``total_steps``."""

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after ``optimizer.step()``: re-applies the masks in force."""
        self.apply_masks()

    def penalty(self) -> torch.Tensor:
        """Regularisation term to add to the loss (zero unless the method has one)."""
        return torch.zeros(())

    def finalize(self) -> dict[str, torch.Tensor]:
        """Hard masks with the pattern's exact structure and ratio, applied and kept from now on.

        Layers whose final mask is already in force keep it; the others get a magnitude mask of
        their current weights. Every mask is verified with `check_mask`."""
        self._require_attached()
        with torch.no_grad():
            for n, layer in self.layers.items():
                if not self.final[n] or self.masks[n] is None:
                    w = self.modules[n].weight.detach()
                    self.masks[n] = layer.mask(w, importance=self._final_importance(w))
                    self.final[n] = True
        self._on_finalize()
        self.apply_masks()
        self.verify()
        return dict(self.masks)  # type: ignore[arg-type]

    def verify(self) -> None:
        """Raise ValueError unless every final mask has its pattern's structure and no pruned
        weight is non-zero."""
        for n, layer in self.layers.items():
            mask = self.masks[n]
            if mask is None or not self.final[n]:
                raise ValueError(f"{n}: no final mask yet; call finalize()")
            layer.check(mask)
            if bool((self.modules[n].weight.detach()[~mask] != 0).any()):
                raise ValueError(f"{n}: pruned weights became non-zero")

    def _final_importance(self, weight: torch.Tensor) -> torch.Tensor | None:
        """Scores for the hard mask (None: ``|w|``, the magnitude criterion)."""
        return None

    def _on_finalize(self) -> None:
        """Drop per-method state that must not act after the hard prune (penalties)."""

    def hard_masks(self) -> dict[str, torch.Tensor]:
        """The masks `finalize` would put in force now, computed without changing anything (to
        score the network as it would be pruned, in the middle of a method's search)."""
        self._require_attached()
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for n, layer in self.layers.items():
                mask = self.masks[n]
                if self.final[n] and mask is not None:
                    out[n] = mask
                else:
                    w = self.modules[n].weight.detach()
                    out[n] = layer.mask(w, importance=self._final_importance(w))
        return out

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """What continuing the method needs besides the model: tensors (masks in force and the
        method's own) and JSON values. `load_state_dict` on a method attached to the same plan
        restores it, so a run stopped and continued takes the steps an uninterrupted run takes."""
        self._require_attached()
        tensors = {f"masks.{n}": m.detach().clone() for n, m in self.masks.items() if m is not None}
        return tensors, {"name": self.name, "final": dict(self.final)}

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor], values: Mapping[str, Any]) -> None:
        """Restore what `state_dict` gave (ValueError when it is for another method or plan)."""
        self._require_attached()
        if values.get("name") != self.name:
            raise ValueError(f"pruning state: written by method {values.get('name')!r}, loading into {self.name!r}")
        final = values.get("final")
        if not isinstance(final, Mapping) or set(final) != set(self.layers):
            raise ValueError(f"pruning state: its layers differ from this plan's ({', '.join(sorted(self.layers))})")
        for n in self.layers:
            mask = tensors.get(f"masks.{n}")
            weight = self.modules[n].weight
            if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != tuple(weight.shape)):
                raise ValueError(f"pruning state: mask of {n} is {mask.dtype} {tuple(mask.shape)}; expected bool {tuple(weight.shape)}")
            self.masks[n] = None if mask is None else mask.to(weight.device)
            self.final[n] = bool(final[n])
        self._load_extra(tensors, values)

    def _load_extra(self, tensors: Mapping[str, torch.Tensor], values: Mapping[str, Any]) -> None:
        """Per-method part of `load_state_dict`."""

    def _layer_tensors(self, tensors: Mapping[str, torch.Tensor], prefix: str, like: str = "weight") -> dict[str, torch.Tensor]:
        """``{layer: tensors[prefix.layer]}`` for every planned layer, shapes checked against the weight."""
        out = {}
        for n in self.layers:
            t = tensors.get(f"{prefix}.{n}")
            if t is None:
                raise ValueError(f"pruning state: tensor {prefix}.{n} missing")
            weight = self.modules[n].weight
            if like == "weight" and tuple(t.shape) != tuple(weight.shape):
                raise ValueError(f"pruning state: {prefix}.{n} has shape {tuple(t.shape)}; expected {tuple(weight.shape)}")
            out[n] = t.to(device=weight.device, dtype=weight.dtype)
        return out

    def detach(self) -> None:
        """Remove the gradient hooks (the weights keep their zeros)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    # -- helpers
    def apply_masks(self) -> None:
        """Zero the pruned weights, and the bias of output channels left without weights."""
        with torch.no_grad():
            for n, mask in self.masks.items():
                if mask is not None:
                    module = self.modules[n]
                    module.weight.mul_(mask)
                    if module.bias is not None:
                        module.bias.mul_(mask.reshape(len(mask), -1).any(1))

    def sparsity(self) -> dict[str, float]:
        """Fraction of zero weights per planned layer, now."""
        return {n: float((m.weight == 0).float().mean()) for n, m in self.modules.items()}

    def _require_attached(self) -> None:
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__}: call attach(model, plan) first")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"

    def params(self) -> dict[str, Any]:
        """Hyperparameters (what the constructor took)."""
        return {}


class OneShotMagnitude(PruningMethod):
    """Prune every layer by magnitude at the first step, then train with the masks fixed."""

    name = "oneshot"

    def before_step(self, step: int, total_steps: int) -> None:
        if not all(self.final.values()):
            self.finalize()


def cubic_sparsity(step: int, final: float, *, initial: float = 0.0, start: int = 0, end: int) -> float:
    """Zhu & Gupta (2017) cubic schedule: ``initial`` until ``start``, ``final`` from ``end`` on."""
    if end <= start:
        return final if step >= start else initial
    t = min(max((step - start) / (end - start), 0.0), 1.0)
    return final + (initial - final) * (1.0 - t) ** 3


class GradualMagnitude(PruningMethod):
    """Magnitude masks recomputed every ``frequency`` steps at the cubic-schedule sparsity.

    ``start`` / ``end``: fractions of the run where the ramp begins and reaches the target;
    ``updates``: number of mask updates over the ramp (``frequency`` = ramp length / updates)."""

    name = "gradual"

    def __init__(self, initial: float = 0.0, start: float = 0.0, end: float = 0.75, updates: int = 10) -> None:
        super().__init__()
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"GradualMagnitude: start={start}, end={end} not allowed; allowed: 0 <= start < end <= 1")
        if not 0.0 <= initial < 1.0:
            raise ValueError(f"GradualMagnitude.initial: {initial} not allowed; allowed: [0, 1)")
        if isinstance(updates, bool) or not isinstance(updates, int) or updates < 1:
            raise ValueError(f"GradualMagnitude.updates: {updates!r} not allowed; allowed: an integer >= 1")
        self.initial, self.start, self.end, self.updates = initial, start, end, updates
        self.schedule: list[tuple[int, dict[str, float]]] = []

    def params(self) -> dict[str, Any]:
        return {"initial": self.initial, "start": self.start, "end": self.end, "updates": self.updates}

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, values = super().state_dict()
        values["schedule"] = [[step, dict(applied)] for step, applied in self.schedule]
        return tensors, values

    def _load_extra(self, tensors: Mapping[str, torch.Tensor], values: Mapping[str, Any]) -> None:
        self.schedule = [(int(step), {str(k): float(v) for k, v in applied.items()}) for step, applied in values.get("schedule", [])]

    def steps(self, total_steps: int) -> tuple[int, int, int]:
        """(first step, last step, frequency) of the ramp for a run of ``total_steps``."""
        t0 = int(round(self.start * total_steps))
        t1 = max(t0 + 1, int(round(self.end * total_steps)) - 1)
        return t0, t1, max(1, math.ceil((t1 - t0) / self.updates))

    def before_step(self, step: int, total_steps: int) -> None:
        if all(self.final.values()):
            return
        t0, t1, freq = self.steps(total_steps)
        if step < t0 or ((step - t0) % freq and step < t1):
            return
        applied = {}
        with torch.no_grad():
            for n, layer in self.layers.items():
                if self.final[n]:
                    continue
                s = cubic_sparsity(step, layer.target, initial=self.initial, start=t0, end=t1)
                if s + 1e-12 < layer.min_sparsity and step < t1:
                    continue  # the pattern cannot express this ratio yet
                reached = step >= t1 or s >= layer.target - 1e-12
                self.masks[n] = layer.mask(self.modules[n].weight, layer.sparsity if reached else s)
                self.final[n] = reached
                applied[n] = layer.target if reached else s
        if applied:
            self.schedule.append((step, applied))
            self.apply_masks()


class ADMM(PruningMethod):
    """ADMM pruning: penalty ``rho/2 ||W - Z + U||^2``; Z = projection of W + U onto the pattern's
    set (a `make_mask` of W + U), U += W - Z every ``interval`` steps; ``rho *= rho_growth`` per
    update up to ``rho_max``. ``residuals`` records ``||W - Z|| / ||W||`` (all layers) per update."""

    name = "admm"

    def __init__(self, rho: float = 0.1, interval: int = 20, rho_growth: float = 1.6, rho_max: float = 100.0) -> None:
        super().__init__()
        if not rho > 0 or not rho_growth >= 1.0 or not rho_max >= rho:
            raise ValueError(f"ADMM: rho={rho}, rho_growth={rho_growth}, rho_max={rho_max} not allowed; allowed: rho > 0, rho_growth >= 1, rho_max >= rho")
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"ADMM.interval: {interval!r} not allowed; allowed: an integer >= 1")
        self.rho0, self.rho, self.interval, self.rho_growth, self.rho_max = rho, rho, interval, rho_growth, rho_max
        self.Z: dict[str, torch.Tensor] = {}
        self.U: dict[str, torch.Tensor] = {}
        self.residuals: list[float] = []
        self.active = False

    def params(self) -> dict[str, Any]:
        return {"rho": self.rho0, "interval": self.interval, "rho_growth": self.rho_growth, "rho_max": self.rho_max}

    def _on_attach(self) -> None:
        with torch.no_grad():
            for n, layer in self.layers.items():
                w = self.modules[n].weight.detach()
                self.U[n] = torch.zeros_like(w)
                self.Z[n] = self.project(n, w)
        self.active = True

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, values = super().state_dict()
        for n in self.layers:
            tensors[f"Z.{n}"] = self.Z[n].detach().clone()
            tensors[f"U.{n}"] = self.U[n].detach().clone()
        values.update(rho=self.rho, residuals=list(self.residuals), active=self.active)
        return tensors, values

    def _load_extra(self, tensors: Mapping[str, torch.Tensor], values: Mapping[str, Any]) -> None:
        self.Z = self._layer_tensors(tensors, "Z")
        self.U = self._layer_tensors(tensors, "U")
        self.rho = float(values["rho"])
        self.residuals = [float(r) for r in values.get("residuals", [])]
        self.active = bool(values["active"])

    def project(self, name: str, v: torch.Tensor) -> torch.Tensor:
        """Euclidean projection of ``v`` onto the layer's constraint set: keep the entries a mask
        scored by ``v^2`` keeps. Each pattern's units then compete by the squared norm they hold
        (blocks, rows and kernel groups by mean ``v^2``, which for units of one size is the
        energy kept), so no other member of the set is nearer; the smaller edge blocks of a
        ragged grid are ranked by mean energy, the one approximation."""
        return v * self.layers[name].mask(v, importance=v.pow(2))

    def residual(self) -> float:
        """Primal residual ``||W - Z|| / ||W||`` over all planned layers."""
        num = sum(float((self.modules[n].weight.detach() - self.Z[n]).pow(2).sum()) for n in self.layers)
        den = sum(float(self.modules[n].weight.detach().pow(2).sum()) for n in self.layers)
        return math.sqrt(num / max(den, 1e-30))

    def update(self) -> None:
        """One Z / U update (the projection step and the scaled dual ascent)."""
        with torch.no_grad():
            for n in self.layers:
                w = self.modules[n].weight.detach()
                self.Z[n] = self.project(n, w + self.U[n])
                self.U[n] += w - self.Z[n]
        self.residuals.append(self.residual())
        rho = min(self.rho * self.rho_growth, self.rho_max)
        for n in self.layers:  # the scaled dual U = y / rho follows a change of rho (Boyd et al. 2011, 3.4.1)
            self.U[n] *= self.rho / rho
        self.rho = rho

    def after_step(self, step: int, total_steps: int) -> None:
        super().after_step(step, total_steps)
        if self.active and (step + 1) % self.interval == 0:
            self.update()

    def penalty(self) -> torch.Tensor:
        if not self.active:
            return torch.zeros(())
        return sum((self.modules[n].weight - self.Z[n] + self.U[n]).pow(2).sum() for n in self.layers) * (self.rho / 2)

    def _final_importance(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.pow(2)  # the hard prune is the same Euclidean projection, applied to W

    def _on_finalize(self) -> None:
        self.active = False


class ReweightedGroupLasso(PruningMethod):
    """Reweighted group lasso over the pattern's groups (structured patterns only).

    ``strength``: penalty weight; ``reweight_every``: steps between refreshes of the weights
    ``a_g = 1 / (||w_g|| + eps)``, with ``eps = eps_rel * median group norm`` at attach (so the
    method does not depend on the weights' scale)."""

    name = "group_lasso"
    FAMILIES = ("block", "channel", "kernel_pattern")

    def __init__(self, strength: float = 1e-3, reweight_every: int = 50, eps_rel: float = 0.1) -> None:
        super().__init__()
        if not strength > 0 or not eps_rel > 0:
            raise ValueError(f"ReweightedGroupLasso: strength={strength}, eps_rel={eps_rel} not allowed; allowed: both > 0")
        if isinstance(reweight_every, bool) or not isinstance(reweight_every, int) or reweight_every < 1:
            raise ValueError(f"ReweightedGroupLasso.reweight_every: {reweight_every!r} not allowed; allowed: an integer >= 1")
        self.strength, self.reweight_every, self.eps_rel = strength, reweight_every, eps_rel
        self.alpha: dict[str, torch.Tensor] = {}
        self.eps: dict[str, float] = {}
        self.active = False

    def params(self) -> dict[str, Any]:
        return {"strength": self.strength, "reweight_every": self.reweight_every, "eps_rel": self.eps_rel}

    def _on_attach(self) -> None:
        for n, layer in self.layers.items():
            family = parse_pattern(layer.pattern).family
            if family not in self.FAMILIES:
                raise ValueError(
                    f"plan[{n!r}]: group lasso needs a structured pattern, got {layer.pattern!r}; "
                    f"allowed: blockRxC, channel, kernel_pattern")
        with torch.no_grad():
            for n in self.layers:
                norms = self.group_norms(n)
                self.eps[n] = self.eps_rel * float(norms.median().clamp_min(1e-12))
        self.reweight()
        self.active = True

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, values = super().state_dict()
        for n in self.layers:
            tensors[f"alpha.{n}"] = self.alpha[n].detach().clone()
        values.update(eps=dict(self.eps), active=self.active)
        return tensors, values

    def _load_extra(self, tensors: Mapping[str, torch.Tensor], values: Mapping[str, Any]) -> None:
        alpha = self._layer_tensors(tensors, "alpha", like="groups")
        for n, a in alpha.items():
            if a.numel() != self.group_norms(n).numel():
                raise ValueError(f"pruning state: alpha.{n} has {a.numel()} groups; expected {self.group_norms(n).numel()}")
        self.alpha = alpha
        self.eps = {n: float(values["eps"][n]) for n in self.layers}
        self.active = bool(values["active"])

    def groups(self, name: str, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's weights arranged ``[groups, group size]`` (zero-padded at the edges), the
        units its pattern keeps or drops whole, on the ``W[O, K]`` view of `patterns`."""
        layer = self.layers[name]
        w = self.modules[name].weight if weight is None else weight
        spec = parse_pattern(layer.pattern)
        O = w.shape[0]
        W = w.reshape(O, -1)
        if spec.family == "channel":
            return W
        if spec.family == "block":
            r, c = spec.rows, spec.cols
            br, bc = -(-O // r), -(-W.shape[1] // c)
            P = nn.functional.pad(W, (0, bc * c - W.shape[1], 0, br * r - O))
            return P.reshape(br, r, bc, c).permute(0, 2, 1, 3).reshape(br * bc, r * c)
        # kernel_pattern: (group of `share` output channels, input channel) kernels
        share = int(layer.options.get("share", 1))
        I = w.shape[1]
        g = -(-O // share)
        P = nn.functional.pad(w.reshape(O, I * 9), (0, 0, 0, g * share - O)).reshape(g, share, I, 9)
        return P.permute(0, 2, 1, 3).reshape(g * I, share * 9)

    def group_norms(self, name: str) -> torch.Tensor:
        return self.groups(name).detach().norm(dim=1)

    def reweight(self) -> None:
        """Candes et al.'s update: ``a_g = 1 / (||w_g|| + eps)``."""
        for n in self.layers:
            self.alpha[n] = 1.0 / (self.group_norms(n) + self.eps[n])

    def before_step(self, step: int, total_steps: int) -> None:
        if self.active and step > 0 and step % self.reweight_every == 0:
            self.reweight()

    def penalty(self) -> torch.Tensor:
        if not self.active:
            return torch.zeros(())
        total = torch.zeros(())
        for n in self.layers:
            norms = (self.groups(n).pow(2).sum(1) + 1e-12).sqrt()  # smooth at 0
            total = total + (self.alpha[n] * norms).sum()
        return self.strength * total

    def _on_finalize(self) -> None:
        self.active = False


PRUNING_METHODS: dict[str, type[PruningMethod]] = {
    "oneshot": OneShotMagnitude,
    "gradual": GradualMagnitude,
    "admm": ADMM,
    "group_lasso": ReweightedGroupLasso,
}


def create_pruning_method(name: str, **options: Any) -> PruningMethod:
    """A pruning method by name (``oneshot``, ``gradual``, ``admm``, ``group_lasso``) and options."""
    if name not in PRUNING_METHODS:
        raise ValueError(f"pruning method: {name!r} not allowed; allowed: {', '.join(PRUNING_METHODS)}")
    try:
        return PRUNING_METHODS[name](**options)
    except TypeError as exc:
        raise ValueError(f"pruning method {name!r}: {exc}") from None


# ----- training loop ------------------------------------------------------------------------------
def accuracy(model: nn.Module, dataset: torch.utils.data.TensorDataset, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on a TensorDataset of (x, y)."""
    x, y = dataset.tensors[0], dataset.tensors[1]
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    model.train(was_training)
    return correct / max(len(x), 1)


def recalibrate_batchnorm(model: nn.Module, data: "ImageData", *, batches: int = 20, batch_size: int = 64, seed: int = 0) -> None:
    """Re-estimate every BatchNorm's running statistics on ``batches`` training batches (exact
    averages, no weight changes): a hard prune shifts the activation statistics, and a network
    with stale ones understates what the pruned weights can do (as in supernet evaluation)."""
    if not batchnorms(model):
        return
    was_training = model.training
    x = data.train.tensors[0]
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: batches * batch_size]
    with cumulative_batchnorm_stats(model) as bns:
        states = [bn.training for bn in bns]
        model.eval()
        for bn in bns:
            bn.train()
        with torch.no_grad():
            for i in range(0, len(order), batch_size):
                model(x[order[i:i + batch_size]])
        for bn, training in zip(bns, states):
            bn.train(training)
    model.train(was_training)


def fit(model: nn.Module, data: "ImageData", *, epochs: int, lr: float = 1e-3, seed: int = 0,
        method: PruningMethod | None = None, batch_size: int = 64, weight_decay: float = 0.0,
        progress: bool = True, desc: str = "train") -> None:
    """Train ``model`` on ``data.train`` with Adam for ``epochs`` epochs (CPU, seeded shuffling),
    calling ``method``'s hooks and adding its penalty when given."""
    from tqdm.auto import tqdm

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs: {epochs!r} not allowed; allowed: an integer >= 0")
    if not lr > 0:
        raise ValueError(f"lr: {lr!r} not allowed; allowed: a number > 0")
    if epochs == 0:
        return
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(data.train, batch_size=batch_size, shuffle=True, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * len(loader)
    model.train()
    step = 0
    with tqdm(total=total, desc=desc, disable=not progress, leave=False) as bar:
        for _ in range(epochs):
            for x, y in loader:
                if method is not None:
                    method.before_step(step, total)
                loss = nn.functional.cross_entropy(model(x), y)
                if method is not None:
                    loss = loss + method.penalty()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if method is not None:
                    method.after_step(step, total)
                step += 1
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{float(loss.detach()):.3f}")


@dataclass(frozen=True)
class PruningResult:
    """Outcome of `train_with_pruning`: accuracies (before; right after the hard prune, with
    batch-norm statistics re-estimated; after fine-tuning), achieved sparsity per layer, wall time."""

    method: str
    accuracy_before: float
    accuracy_pruned: float
    accuracy_after: float
    sparsity: dict[str, float]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "accuracy_before": self.accuracy_before, "accuracy_pruned": self.accuracy_pruned,
                "accuracy_after": self.accuracy_after, "sparsity": dict(self.sparsity), "seconds": self.seconds}


def train_with_pruning(model: nn.Module, data: "ImageData", plan: Mapping[str, Any], method: PruningMethod | str,
                       epochs: int, lr: float = 1e-3, seed: int = 0, *, finetune_epochs: int | None = None,
                       finetune_lr: float | None = None, batch_size: int = 64, progress: bool = True) -> PruningResult:
    """Prune ``model`` in place: ``epochs`` epochs with the method active, `finalize` (hard masks),
    then ``finetune_epochs`` (default ``epochs``) with the masks fixed. Returns the accuracies
    before (the model as given), right after the hard prune (batch-norm statistics re-estimated
    by `recalibrate_batchnorm`), and after fine-tuning."""
    if isinstance(method, str):
        method = create_pruning_method(method)
    t = time.perf_counter()
    before = accuracy(model, data.test)
    method.attach(model, plan)
    try:
        fit(model, data, epochs=epochs, lr=lr, seed=seed, method=method, batch_size=batch_size,
            progress=progress, desc=f"{method.name}: prune")
        method.finalize()
        recalibrate_batchnorm(model, data, seed=seed)
        pruned = accuracy(model, data.test)
        fit(model, data, epochs=epochs if finetune_epochs is None else finetune_epochs, lr=finetune_lr or lr,
            seed=seed + 1, method=method, batch_size=batch_size, progress=progress, desc=f"{method.name}: fine-tune")
        method.verify()  # the structure survived fine-tuning
        after = accuracy(model, data.test)
    finally:
        method.detach()
    return PruningResult(method.name, before, pruned, after, method.sparsity(), time.perf_counter() - t)
