"""Supernet checkpoints: one safetensors file, tensors plus a JSON header, nothing that runs code.

::

    header (safetensors metadata "tritune"):
      {"format": "tritune-supernet", "schema": 1,
       "space": {"name": "mobilenet-small", "config": {...}}, "supernet": {...SupernetConfig...},
       "step": 1200, "optimizer": {"param_groups": [...], "values": {...}} | null, "extra": {...}}
    tensors: "model.<state-dict key>", "optim.<param index>.<state key>", "rng.torch"

A checkpoint is refused (ValueError naming the file and the mismatch) when it was written for
another space or space config, another supernet structure (`COMPATIBLE_FIELDS`), by a newer schema, or is not a
tritune supernet file at all. Loading never unpickles: safetensors holds raw tensors only.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .network import MobileNetSupernet, SupernetConfig

FORMAT = "tritune-supernet"
#: The newest header schema this version reads, and the one it writes.
SCHEMA = 1
#: Supernet config fields a checkpoint must agree on (they change what the tensors mean); the
#: initialisation seed, BN momentum and cache size do not.
COMPATIBLE_FIELDS = ("kernel_transform", "calibration", "bn_eps")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here; the message names the file and the problem."""


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns: the supernet (weights loaded), the training step, the
    optimizer (state loaded, when one was passed) and the caller's ``extra`` JSON."""

    supernet: MobileNetSupernet
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    header: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike, supernet: MobileNetSupernet, *, optimizer: torch.optim.Optimizer | None = None,
                    step: int = 0, extra: dict[str, Any] | None = None) -> Path:
    """Write ``supernet`` (and the optimizer, step, torch RNG state, ``extra``) atomically."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in supernet.state_dict().items()}
    opt_header = None
    if optimizer is not None:
        sd = optimizer.state_dict()
        values: dict[str, Any] = {}
        for idx, state in sd["state"].items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous().clone()
                else:
                    values[f"{idx}.{key}"] = value
        opt_header = {"type": type(optimizer).__name__, "param_groups": sd["param_groups"], "values": values}
    tensors["rng.torch"] = torch.get_rng_state()
    header = {
        "format": FORMAT, "schema": SCHEMA,
        "space": {"name": supernet.space.name, "config": supernet.space.config()},
        "supernet": supernet.config.to_json(), "step": int(step), "optimizer": opt_header, "extra": extra or {},
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


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a checkpoint (validated for format and schema only)."""
    from safetensors import safe_open

    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"supernet checkpoint {str(p)!r}: no such file")
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"supernet checkpoint {str(p)!r}: not a safetensors file ({exc})") from None
    try:
        header = json.loads(meta["tritune"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"supernet checkpoint {str(p)!r}: no tritune header; not a tritune supernet checkpoint") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"supernet checkpoint {str(p)!r}: format {header.get('format')!r}; allowed: {FORMAT!r}")
    schema = header.get("schema")
    if not isinstance(schema, int) or schema > SCHEMA or schema < 1:
        raise CheckpointError(f"supernet checkpoint {str(p)!r}: schema {schema!r} is newer than this tritune reads (up to {SCHEMA}); upgrade tritune")
    return header


def build_supernet(header: dict[str, Any]) -> MobileNetSupernet:
    """A fresh supernet for the space and config a checkpoint header names."""
    from ..registry import create

    space = create(header["space"]["name"], **header["space"]["config"])
    return MobileNetSupernet(space, SupernetConfig.from_json(header["supernet"]))


def load_checkpoint(path: str | os.PathLike, supernet: MobileNetSupernet | None = None, *,
                    optimizer: torch.optim.Optimizer | None = None, map_location: str | torch.device = "cpu",
                    restore_rng: bool = False) -> Checkpoint:
    """Read a checkpoint into ``supernet`` (built from the header when None) and ``optimizer``.

    ``restore_rng`` also sets torch's global RNG state to the saved one (resuming training)."""
    from safetensors.torch import load_file

    header = read_header(path)
    where = f"supernet checkpoint {str(path)!r}"
    if supernet is None:
        try:
            supernet = build_supernet(header)
        except ValueError as exc:
            raise CheckpointError(f"{where}: cannot rebuild its supernet: {exc}") from None
    else:
        mine = {"name": supernet.space.name, "config": supernet.space.config()}
        theirs = header["space"]
        if theirs["name"] != mine["name"]:
            raise CheckpointError(f"{where}: saved for space {theirs['name']!r}, this supernet is for space {mine['name']!r}")
        if json.dumps(theirs["config"], sort_keys=True) != json.dumps(mine["config"], sort_keys=True):
            diff = sorted(k for k in set(theirs["config"]) | set(mine["config"]) if theirs["config"].get(k) != mine["config"].get(k))
            raise CheckpointError(f"{where}: saved for another {mine['name']} config (fields {diff} differ)")
        mine_cfg = supernet.config.to_json()
        diff = sorted(k for k in COMPATIBLE_FIELDS if header["supernet"].get(k) != mine_cfg.get(k))
        if diff:
            raise CheckpointError(f"{where}: saved with another supernet config (fields {diff} differ)")
    tensors = load_file(str(Path(path).expanduser()), device=str(map_location))
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = supernet.load_state_dict(model, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{where}: tensors do not fit this supernet (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for _, layer in supernet.named_elastic():
        layer.clear_caches()
    if optimizer is not None:
        opt = header.get("optimizer")
        if opt is None:
            raise CheckpointError(f"{where}: holds no optimizer state to resume from")
        if opt["type"] != type(optimizer).__name__:
            raise CheckpointError(f"{where}: optimizer {opt['type']!r} saved, resuming with {type(optimizer).__name__!r}")
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        for key, value in opt["values"].items():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": opt["param_groups"]})
    if restore_rng and "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"].cpu())
    return Checkpoint(supernet=supernet, step=int(header["step"]), extra=dict(header.get("extra") or {}), header=header)
