"""Supernet checkpoints of any family: one safetensors file, tensors plus a JSON header, nothing that runs code.

::

    header (safetensors metadata "tritune"):
      {"format": "tritune-supernet", "schema": 2,
       "space": {"name": "mobilenet-small", "config": {...}}, "supernet": {...SupernetConfig...},
       "step": 1200, "optimizer": {"type": "SGD", "param_groups": [...], "values": {...}} | null,
       "extra": {...}, "tensors_sha256": "..."}
    tensors: "model.<state-dict key>", "optim.<param index>.<state key>", "rng.torch"

``tensors_sha256`` is a checksum of every tensor (`tensors_checksum`: names, dtypes, shapes and
bytes in name order): a flipped bit or a swapped tensor is refused at load. Like any checksum it
catches accidents, not forgery. Schema 1 files (no checksum) still load.

A checkpoint is refused (`CheckpointError`, a ValueError naming the file and the problem in one
line) when it is not a tritune supernet file, is truncated or damaged, comes from a newer
schema, lacks a header field or has one of the wrong type, was written for another space or
space config or another supernet structure (the supernet's ``compatible_fields``), holds tensors of the wrong
name, shape or dtype, or weights that are NaN or infinite. Loading never unpickles: safetensors
holds raw tensors only. The supernet is rebuilt through its space (`SearchSpace.supernet`), so
this module names no family.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .weight_sharing import Supernet

FORMAT = "tritune-supernet"
#: The newest header schema this version reads, and the one it writes (2: with ``tensors_sha256``).
SCHEMA = 2
#: Header fields every schema has, and their JSON types.
HEADER_FIELDS: dict[str, tuple[type, ...]] = {
    "format": (str,), "schema": (int,), "space": (dict,), "supernet": (dict,), "step": (int,),
    "optimizer": (dict, type(None)), "extra": (dict,),
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here; the message names the file and the problem."""


def tensors_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor in name order: its name, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns: the supernet (weights loaded), the training step, the
    optimizer (state loaded, when one was passed) and the caller's ``extra`` JSON."""

    supernet: Supernet
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    header: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike, supernet: Supernet, *, optimizer: torch.optim.Optimizer | None = None,
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


def _header_error(where: str, detail: str) -> CheckpointError:
    return CheckpointError(f"{where}: {detail}")


def check_header(header: Any, where: str) -> dict[str, Any]:
    """Format, schema and every field's presence and type; `CheckpointError` naming the first problem."""
    if not isinstance(header, dict):
        raise _header_error(where, "the tritune header is not a JSON object; not a tritune supernet checkpoint")
    if header.get("format") != FORMAT:
        raise _header_error(where, f"format {header.get('format')!r}; allowed: {FORMAT!r}")
    schema = header.get("schema")
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise _header_error(where, f"schema {schema!r} is not a positive integer")
    if schema > SCHEMA:
        raise _header_error(where, f"schema {schema!r} is newer than this tritune reads (up to {SCHEMA}); upgrade tritune")
    for name, types in HEADER_FIELDS.items():
        if name not in header:
            raise _header_error(where, f"header lacks the field {name!r}; damaged or not written by tritune")
        value = header[name]
        if not isinstance(value, types) or isinstance(value, bool):
            allowed = " or ".join({"dict": "an object", "int": "an integer", "str": "a string", "NoneType": "null"}[t.__name__] for t in types)
            raise _header_error(where, f"header field {name!r} is {type(value).__name__}; expected {allowed}")
    if header["step"] < 0:
        raise _header_error(where, f"header field 'step' is {header['step']}; expected an integer >= 0")
    space = header["space"]
    if not isinstance(space.get("name"), str) or not isinstance(space.get("config"), dict):
        raise _header_error(where, "header field 'space' must be {\"name\": NAME, \"config\": {...}}")
    opt = header["optimizer"]
    if opt is not None and not (isinstance(opt.get("type"), str) and isinstance(opt.get("param_groups"), list)
                                and isinstance(opt.get("values"), dict)):
        raise _header_error(where, "header field 'optimizer' must be null or {\"type\": NAME, \"param_groups\": [...], \"values\": {...}}")
    if schema >= 2 and not isinstance(header.get("tensors_sha256"), str):
        raise _header_error(where, "header lacks the tensor checksum 'tensors_sha256'; damaged or not written by tritune")
    return header


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a checkpoint (validated for format, schema and field types)."""
    from safetensors import safe_open

    p = Path(path).expanduser()
    where = f"supernet checkpoint {str(p)!r}"
    if not p.is_file():
        raise CheckpointError(f"{where}: no such file")
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{where}: not a safetensors file ({' '.join(str(exc).split())})") from None
    try:
        header = json.loads(meta["tritune"])
    except (KeyError, TypeError, ValueError, RecursionError):
        raise CheckpointError(f"{where}: no tritune header; not a tritune supernet checkpoint") from None
    return check_header(header, where)


def build_supernet(header: dict[str, Any]) -> Supernet:
    """A fresh supernet for the space and config a checkpoint header names."""
    from .registry import create

    space = create(header["space"]["name"], **header["space"]["config"])
    return space.supernet(header["supernet"])


def _read_tensors(path: str | os.PathLike, header: dict[str, Any], where: str, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of the file, its checksum verified (schema 2) and its floats finite."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(Path(path).expanduser()), device="cpu")
    except Exception as exc:  # safetensors' own error types for truncated or damaged data
        raise CheckpointError(f"{where}: tensors cannot be read ({' '.join(str(exc).split())}); the file is damaged") from None
    if header["schema"] >= 2:
        actual = tensors_checksum(tensors)
        if actual != header["tensors_sha256"]:
            raise CheckpointError(f"{where}: tensor checksum mismatch (header {header['tensors_sha256'][:12]}..., tensors hash to "
                                  f"{actual[:12]}...): the weights were damaged or changed; restore or retrain the checkpoint")
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{where}: tensor {key!r} holds NaN or infinite values; the training diverged or the file is damaged")
    device = str(map_location)
    return tensors if device == "cpu" else {k: v.to(device) for k, v in tensors.items()}


def _check_model_tensors(model: dict[str, torch.Tensor], supernet: Supernet, where: str) -> None:
    expected = supernet.state_dict()
    missing = sorted(set(expected) - set(model))
    unexpected = sorted(set(model) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{where}: tensors do not fit this supernet (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for key, value in expected.items():
        got = model[key]
        if tuple(got.shape) != tuple(value.shape) or got.dtype != value.dtype:
            raise CheckpointError(f"{where}: tensor {key!r} is {got.dtype} {tuple(got.shape)}; this supernet needs "
                                  f"{value.dtype} {tuple(value.shape)}")


def _optimizer_state(tensors: dict[str, torch.Tensor], opt: dict[str, Any], where: str) -> dict[int, dict[str, Any]]:
    state: dict[int, dict[str, Any]] = {}
    try:
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        for key, value in opt["values"].items():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    except ValueError:
        raise CheckpointError(f"{where}: optimizer state names are damaged (expected '<index>.<name>')") from None
    return state


def load_checkpoint(path: str | os.PathLike, supernet: Supernet | None = None, *,
                    optimizer: torch.optim.Optimizer | None = None, map_location: str | torch.device = "cpu",
                    restore_rng: bool = False) -> Checkpoint:
    """Read a checkpoint into ``supernet`` (built from the header when None) and ``optimizer``.

    ``restore_rng`` also sets torch's global RNG state to the saved one (resuming training)."""
    header = read_header(path)
    where = f"supernet checkpoint {str(path)!r}"
    if supernet is None:
        try:
            supernet = build_supernet(header)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{where}: cannot rebuild its supernet: {' '.join(str(exc).split())}") from None
    else:
        mine = {"name": supernet.space.name, "config": supernet.space.config()}
        theirs = header["space"]
        if theirs["name"] != mine["name"]:
            raise CheckpointError(f"{where}: saved for space {theirs['name']!r}, this supernet is for space {mine['name']!r}")
        if json.dumps(theirs["config"], sort_keys=True) != json.dumps(mine["config"], sort_keys=True):
            diff = sorted(k for k in set(theirs["config"]) | set(mine["config"]) if theirs["config"].get(k) != mine["config"].get(k))
            raise CheckpointError(f"{where}: saved for another {mine['name']} config (fields {diff} differ)")
        mine_cfg = supernet.config.to_json()
        diff = sorted(k for k in supernet.compatible_fields if header["supernet"].get(k) != mine_cfg.get(k))
        if diff:
            raise CheckpointError(f"{where}: saved with another supernet config (fields {diff} differ)")
    tensors = _read_tensors(path, header, where, map_location)
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    _check_model_tensors(model, supernet, where)
    supernet.load_state_dict(model, strict=True)
    supernet.clear_caches()
    if optimizer is not None:
        opt = header.get("optimizer")
        if opt is None:
            raise CheckpointError(f"{where}: holds no optimizer state to resume from")
        if opt["type"] != type(optimizer).__name__:
            raise CheckpointError(f"{where}: optimizer {opt['type']!r} saved, resuming with {type(optimizer).__name__!r}")
        state = _optimizer_state(tensors, opt, where)
        try:
            optimizer.load_state_dict({"state": state, "param_groups": opt["param_groups"]})
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{where}: optimizer state does not fit this optimizer ({' '.join(str(exc).split())})") from None
    if restore_rng and "rng.torch" in tensors:
        rng = tensors["rng.torch"].cpu()
        if rng.dtype != torch.uint8 or rng.dim() != 1:
            raise CheckpointError(f"{where}: tensor 'rng.torch' is {rng.dtype} {tuple(rng.shape)}; expected a uint8 vector")
        try:
            torch.set_rng_state(rng)
        except RuntimeError as exc:
            raise CheckpointError(f"{where}: tensor 'rng.torch' is not a torch RNG state ({exc})") from None
    return Checkpoint(supernet=supernet, step=int(header["step"]), extra=dict(header.get("extra") or {}), header=header)
