"""The file format of a saved predictor: one self-checking JSON document, never a pickle.

::

    {"format": "tritune-predictor", "schema": 1, "kind": "fewshot-latency",
     "target_fingerprint": {...}, "metric": "latency_ms", "params": {...},
     "error": {"n": ..., "mape": ..., ...}, "sha256": "..."}

* ``kind`` names the class that reads ``params`` back (see `registry`).
* ``target_fingerprint`` is the fingerprint of the target whose numbers the predictor imitates,
  so a predictor made for one device is not used for another unnoticed (``expected_fingerprint``).
* ``error`` is the predictor's `score_report` on data it was not fitted on: every predictor ships
  with its measured error.
* ``sha256`` is the SHA-256 of the canonical JSON (sorted keys, no spaces, UTF-8) of every other
  field; a file edited by hand or damaged on the way is refused.

JSON keeps float64 values exact (Python writes the shortest text that reads back to the same
number), so a loaded predictor predicts bit for bit what the saved one did. Models from
libraries (XGBoost) are embedded as their own JSON text (``Booster.save_raw("json")``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from .registry import predictor_class

if TYPE_CHECKING:  # pragma: no cover
    from .base import Predictor

FORMAT = "tritune-predictor"
#: The newest schema this version reads and the one it writes.
SCHEMA = 1
FIELDS = ("format", "schema", "kind", "target_fingerprint", "metric", "params", "error", "sha256")


class PredictorFileError(ValueError):
    """A predictor file that cannot be used; the message names the file and the problem."""


def to_jsonable(value: Any) -> Any:
    """Plain JSON values from numpy scalars / arrays, tuples and non-finite floats (-> ``None``)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"predictor file: {type(value).__name__} is not JSON-able")


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, no NaN: the text the checksum is taken of."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def digest(document: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of every field but ``sha256``."""
    body = {k: v for k, v in document.items() if k != "sha256"}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def fingerprint_of(target: Any) -> dict[str, Any] | None:
    """A fingerprint dict from a dict, a `Target` (anything with ``fingerprint()``) or ``None``."""
    if target is None:
        return None
    if isinstance(target, Mapping):
        return to_jsonable(dict(target))
    if callable(getattr(target, "fingerprint", None)):
        return to_jsonable(dict(target.fingerprint()))
    raise ValueError(f"target fingerprint: expected a dict or a target with fingerprint(), got {type(target).__name__}")


def make_document(predictor: "Predictor") -> dict[str, Any]:
    """The signed document of a fitted predictor (refuses one without a measured error)."""
    if predictor.error_ is None:
        raise ValueError(
            f"{type(predictor).__name__}: no measured error to ship; fit it (fit measures the held-out error) "
            "or set error_ to a score_report on data it was not fitted on"
        )
    document = {
        "format": FORMAT,
        "schema": SCHEMA,
        "kind": predictor.kind,
        "target_fingerprint": fingerprint_of(predictor.target_fingerprint),
        "metric": predictor.metric,
        "params": to_jsonable(predictor.saved_state()),
        "error": to_jsonable(predictor.error_),
    }
    document["sha256"] = digest(document)
    return document


def save(predictor: "Predictor", path: str | os.PathLike) -> Path:
    """Write the document to ``path`` atomically (a temporary file renamed into place)."""
    p = Path(path).expanduser()
    text = json.dumps(make_document(predictor), sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def _mismatched_keys(expected: Mapping[str, Any], stored: Mapping[str, Any] | None) -> list[str]:
    stored = stored or {}
    return sorted(k for k in expected if canonical_json(expected[k]) != canonical_json(stored.get(k)))


def check_document(document: Any, source: str, expected_fingerprint: Any = None) -> dict[str, Any]:
    """Validate a parsed document; raise `PredictorFileError` naming the first problem found.

    Checked in this order: the format tag, the schema version (a newer one is refused before its
    checksum is read, since a newer format may sign differently), the checksum, the kind, and the
    target fingerprint when ``expected_fingerprint`` (a dict or a target) is given.
    """
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise PredictorFileError(f"predictor file {source}: not a tritune predictor (expected \"format\": \"{FORMAT}\")")
    schema = document.get("schema")
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise PredictorFileError(f"predictor file {source}: schema {schema!r} is not a positive integer")
    if schema > SCHEMA:
        raise PredictorFileError(
            f"predictor file {source}: schema {schema} is newer than this tritune supports ({SCHEMA}); upgrade tritune to read it"
        )
    missing = [f for f in FIELDS if f not in document]
    if missing:
        raise PredictorFileError(f"predictor file {source}: missing fields {missing}")
    unknown = sorted(set(document) - set(FIELDS))
    if unknown:
        raise PredictorFileError(f"predictor file {source}: unknown fields {unknown}")
    try:
        actual = digest(document)
    except ValueError as exc:  # NaN / inf smuggled in by hand
        raise PredictorFileError(f"predictor file {source}: not canonical JSON ({exc})") from None
    if document["sha256"] != actual:
        raise PredictorFileError(
            f"predictor file {source}: checksum mismatch (stored sha256 {str(document['sha256'])[:12]}..., "
            f"contents hash to {actual[:12]}...): the file was modified or damaged; refit or restore it"
        )
    try:
        predictor_class(document["kind"])
    except ValueError as exc:
        raise PredictorFileError(f"predictor file {source}: {exc}") from None
    if expected_fingerprint is not None:
        expected = fingerprint_of(expected_fingerprint)
        bad = _mismatched_keys(expected, document["target_fingerprint"])
        if bad:
            stored = document["target_fingerprint"] or {}
            detail = "; ".join(f"{k}: file {stored.get(k)!r}, expected {expected[k]!r}" for k in bad[:4])
            raise PredictorFileError(
                f"predictor file {source}: made for another target (target fingerprint differs in {', '.join(bad)}: {detail})"
            )
    return document


def read_document(path: str | os.PathLike, expected_fingerprint: Any = None) -> dict[str, Any]:
    """Read and validate a predictor file (see `check_document`)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"predictor file not found: {p}")
    try:
        document = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PredictorFileError(f"predictor file {p}: not valid JSON ({exc})") from None
    return check_document(document, str(p), expected_fingerprint)


def load(path: str | os.PathLike, expected_fingerprint: Any = None) -> "Predictor":
    """Read a saved predictor of any registered kind, checked as in `check_document`."""
    document = read_document(path, expected_fingerprint)
    return predictor_class(document["kind"]).from_document(document)
