"""Fit and ship a latency predictor from a profiling directory: the last step of supporting a device.

    tritune profile --target ort-cpu --space mobilenet --n 720 --out prof/ --fit ort-cpu.json
    # or, for a profile already measured:
    tritune fit prof/ --out ort-cpu.json

`fit_from_profile` reads ``metadata.json`` + ``measurements.jsonl`` (`tritune.targets.profiling`),
fits the chosen predictor on every measured candidate (its ``error_`` comes from the predictor's
own held-out split, so the shipped file carries an honest error), stamps it with the profiled
target's fingerprint and, when the profile timed a reference model in every group, learns the
reference-normalised latency (the latency at the profile's median machine state, see
`tritune.targets.profiling.normalized_latency`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

#: ``kind`` -> what it fits.
KINDS = ("layerwise", "whole-model")


def fit_from_profile(profile_dir: str | Path, kind: str = "layerwise", out: str | Path | None = None, seed: int = 0) -> Any:
    """Fit a ``kind`` predictor on a profile; save it to ``out`` (signed JSON) when given."""
    from ..spaces.candidate import Candidate
    from ..spaces.registry import create
    from ..targets.profiling import METADATA_FILE, normalized_latency, read_measurements
    from .ort_layerwise import LayerwiseLatencyPredictor
    from .whole_model import WholeModelPredictor

    if kind not in KINDS:
        raise ValueError(f"fit.kind: {kind!r} not allowed; allowed: {', '.join(KINDS)}")
    path = Path(profile_dir)
    meta_path = path / METADATA_FILE
    if not meta_path.is_file():
        raise ValueError(f"fit: {str(path)!r} is not a profile directory (no {METADATA_FILE}); make one with `tritune profile`")
    meta = json.loads(meta_path.read_text())
    rows = [r for r in read_measurements(path) if r.get("latency_ms")]
    if len(rows) < 20:
        raise ValueError(f"fit: {path} holds {len(rows)} measured candidates; at least 20 are needed")
    space = create(meta["space"]["name"], **meta["space"]["config"])
    candidates = [Candidate.from_json(r["candidate"]) for r in rows]
    y = normalized_latency(rows)
    fingerprint = meta["target"]["fingerprint"]
    cls = LayerwiseLatencyPredictor if kind == "layerwise" else WholeModelPredictor
    predictor = cls(space=space, seed=seed).fit(candidates, y, target=fingerprint)
    if out is not None:
        predictor.save(out)
    return predictor


def summary(predictor: Any) -> str:
    """One line: what the shipped error says."""
    e = predictor.error_ or {}
    return (f"{type(predictor).__name__}: held-out MAPE {e.get('mape', float('nan')):.2f} %, within ±10 % "
            f"{100 * e.get('within_10', float('nan')):.1f} %, Spearman {e.get('spearman', float('nan')):.3f} (n={e.get('n', '?')})")


__all__ = ["KINDS", "fit_from_profile", "summary"]
