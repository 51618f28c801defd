"""Fit and ship a latency predictor from a profiling directory: the last step of supporting a device.

    tritune profile --target ort-cpu --space mobilenet --n 720 --out prof/ --fit ort-cpu.json
    # or, for a profile already measured (several: profiles of the same candidates from several
    # sessions, each candidate labelled with the median over them):
    tritune fit prof/ [prof-session2/ ...] --out ort-cpu.json

`fit_from_profile` reads ``metadata.json`` + ``measurements.jsonl`` (`tritune.targets.profiling`),
fits the chosen predictor on every measured candidate (its ``error_`` comes from the predictor's
own held-out split, so the shipped file carries an honest error), stamps it with the profiled
target's fingerprint and, when the profile timed a reference model in every group, learns the
reference-normalised latency (the latency at the profile's median machine state, see
`tritune.targets.profiling.normalized_latency`); given several profiles of the same candidates, the
median over them (`tritune.targets.profiling.pooled_latency`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence


#: ``kind`` -> what it fits.
KINDS = ("layerwise", "whole-model")


def _read(path: Path) -> tuple[dict, list[dict]]:
    from ..targets.profiling import METADATA_FILE, read_measurements

    return json.loads((path / METADATA_FILE).read_text()), [r for r in read_measurements(path) if r.get("latency_ms")]


def fit_from_profile(profile_dir: str | Path | Sequence[str | Path], kind: str = "layerwise", out: str | Path | None = None,
                     seed: int = 0) -> Any:
    """Fit a ``kind`` predictor on a profile, or on several profiles of the same candidates and
    target (median labels; a directory of ``tritune profile --sessions K`` counts as its K
    passes); save it to ``out`` (signed JSON) when given."""
    from ..spaces.candidate import Candidate
    from ..spaces.registry import create
    from ..targets.profiling import pooled_latency, session_dirs
    from .ort_layerwise import LayerwiseLatencyPredictor
    from .whole_model import WholeModelPredictor

    if kind not in KINDS:
        raise ValueError(f"fit.kind: {kind!r} not allowed; allowed: {', '.join(KINDS)}")
    given = [profile_dir] if isinstance(profile_dir, (str, Path)) else list(profile_dir)
    if not given:
        raise ValueError("fit: no profile directory given")
    try:
        paths = [d for p in given for d in session_dirs(p)]
    except ValueError as exc:
        raise ValueError(f"fit: {exc}") from None
    read = [_read(p) for p in paths]
    meta = read[0][0]
    for p, (m, _) in zip(paths[1:], read[1:]):
        for key in ("space", "target"):
            if m.get(key) != meta.get(key):
                raise ValueError(f"fit: {p} profiles another {key} than {paths[0]}; allowed: profiles of one space on one target")
    y, rows = pooled_latency([r for _, r in read])
    if len(rows) < 20:
        raise ValueError(f"fit: {', '.join(map(str, paths))} hold {len(rows)} candidates measured in every profile; at least 20 are needed")
    space = create(meta["space"]["name"], **meta["space"]["config"])
    candidates = [Candidate.from_json(r["candidate"]) for r in rows]
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
