"""``manifest.json`` of an exported model: what was exported, how it runs, and how it measured.

A manifest is plain JSON with a format name and a schema version. Two exports of the same
candidate from the same inputs write the same manifest except for the timing fields
(`TIMING_FIELDS`): a latency is a measurement of the machine as it is at that moment.
"""
from __future__ import annotations

import json
import math
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np

FORMAT = "tritune-export"
#: Schema of the manifest this version writes (and the newest it reads).
SCHEMA = 1
#: Fields holding measured times; everything else is the same when a model is exported again.
TIMING_FIELDS = ("latency_measured_ms", "latency_measurement", "layer_latency")


class ManifestError(ValueError):
    """A manifest that cannot be read; the message names the file."""


def tritune_version() -> str:
    try:
        return metadata.version("tritune")
    except metadata.PackageNotFoundError:
        return "unknown"


def jsonable(value: Any) -> Any:
    """Plain JSON values (numpy scalars and arrays, tuples, non-finite floats -> None)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def dumps(manifest: Mapping[str, Any]) -> str:
    """The manifest as written: sorted keys, two-space indent, newline at the end."""
    return json.dumps(jsonable(manifest), indent=2, sort_keys=True, allow_nan=False) + "\n"


def without_timings(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest less its timing fields (what must not change when exporting again)."""
    out = {k: v for k, v in manifest.items() if k not in TIMING_FIELDS}
    out["layers"] = [{k: v for k, v in layer.items() if k != "latency_ms"} for layer in manifest.get("layers", [])]
    return out


def read_manifest(path: str | Path) -> dict[str, Any]:
    """A manifest file, checked for format and schema."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ManifestError(f"manifest {str(p)!r}: not readable JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ManifestError(f"manifest {str(p)!r}: format {doc.get('format') if isinstance(doc, dict) else None!r}; allowed: {FORMAT!r}")
    schema = doc.get("schema")
    if not isinstance(schema, int) or not 1 <= schema <= SCHEMA:
        raise ManifestError(f"manifest {str(p)!r}: schema {schema!r}; this tritune reads 1..{SCHEMA}")
    if not isinstance(doc.get("layers"), list) or not isinstance(doc.get("candidate_id"), str):
        raise ManifestError(f"manifest {str(p)!r}: fields 'layers' (a list) and 'candidate_id' (a string) are required")
    return doc


def layer_table(network: Any, notes: Mapping[str, Mapping[str, str]]) -> list[dict[str, Any]]:
    """One entry per IR layer of a `DeployableNetwork`: op, shapes, planned pattern and ratio,
    realised sparsity (exact zeros of the exported weight), bits and how the layer runs."""
    weights, masks = network.deployed_weights(), network.pattern_masks()
    rows = []
    for L in network.layers:
        row: dict[str, Any] = {
            "name": L.name, "op": L.op, "in_channels": L.in_channels, "out_channels": L.out_channels,
            "in_hw": [L.in_h, L.in_w], "out_hw": [L.out_h, L.out_w], "kernel": L.kernel, "stride": L.stride,
            "groups": L.groups, "act": L.act,
        }
        if L.has_weights:
            w = weights[L.name].detach().cpu().numpy()
            mask = masks.get(L.name)
            nonzero = int(np.count_nonzero(w))
            row.update({
                "weight_shape": list(w.shape), "weights": int(w.size), "nonzero_weights": nonzero,
                "pattern": L.pattern, "sparsity": float(L.sparsity),
                "pattern_sparsity": None if mask is None else float(1.0 - mask.float().mean().item()),
                "realised_sparsity": 1.0 - nonzero / max(1, w.size),
                "w_bits": L.w_bits, "a_bits": L.a_bits, **dict(notes.get(L.name, {})),
            })
        rows.append(row)
    return rows
