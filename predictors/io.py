"""The file format of a saved predictor: one self-checking JSON document, never a pickle.

::

    {"format": "tritune-predictor", "schema": 2, "kind": "fewshot-latency",
     "target_fingerprint": {...}, "metric": "latency_ms", "params": {...},
     "error": {"n": ..., "mape": ..., ...}, "checksum": "sha256:...", "hmac": "hmac-sha256:..."}

* ``kind`` names the class that reads ``params`` back (see `registry`); it is looked up among
  registered classes and plug-ins, never imported as a path.
* ``target_fingerprint`` is the fingerprint of the target whose numbers the predictor imitates,
  so a predictor made for one device is not used for another unnoticed (``expected_fingerprint``).
* ``error`` is the predictor's `score_report` on data it was not fitted on: every predictor ships
  with its measured error.
* ``checksum`` is the SHA-256 of the canonical JSON (sorted keys, no spaces, UTF-8) of every field
  but ``checksum`` and ``hmac``. It catches accidents (a damaged copy, a hand edit), nothing
  more: anyone can recompute it after changing the file.
* ``hmac`` (optional) is the HMAC-SHA256 of the same text under a secret key taken from the
  environment variable ``TRITUNE_PREDICTOR_KEY`` when the file was saved. With the key set,
  files are saved with an HMAC and a file without a valid one is refused. Without the key, files
  load as *unauthenticated* (``predictor.authenticated_`` is False): their ``error`` is what the
  file claims, not something tritune can vouch for.

Schema 1 files (a ``sha256`` field, the same checksum, no HMAC) still load, unauthenticated.

JSON keeps float64 values exact (Python writes the shortest text that reads back to the same
number), so a loaded predictor predicts bit for bit what the saved one did. Models from
libraries (XGBoost) are embedded as their own JSON text (``Booster.save_raw("json")``).
"""
from __future__ import annotations

import hashlib
import hmac as hmac_lib
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
SCHEMA = 2
#: Fields of each schema (``hmac`` is optional in schema 2).
SCHEMA_FIELDS = {
    1: ("format", "schema", "kind", "target_fingerprint", "metric", "params", "error", "sha256"),
    2: ("format", "schema", "kind", "target_fingerprint", "metric", "params", "error", "checksum"),
}
FIELDS = SCHEMA_FIELDS[SCHEMA]
OPTIONAL_FIELDS = ("hmac",)
#: Environment variable holding the HMAC key (text, at least `MIN_KEY_BYTES` bytes in UTF-8).
KEY_ENV = "TRITUNE_PREDICTOR_KEY"
MIN_KEY_BYTES = 16
#: Largest predictor file read.
MAX_FILE_BYTES = 256 << 20
_SEALS = ("sha256", "checksum", "hmac")


class PredictorFileError(ValueError):
    """A predictor file that cannot be used; the message names the file and the problem."""


def hmac_key() -> bytes | None:
    """The key from ``TRITUNE_PREDICTOR_KEY`` (None when unset or empty)."""
    text = os.environ.get(KEY_ENV, "")
    if not text:
        return None
    key = text.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise PredictorFileError(f"{KEY_ENV}: the key has {len(key)} bytes; use at least {MIN_KEY_BYTES} (a random string)")
    return key


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


def _body(document: Mapping[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in document.items() if k not in _SEALS}).encode("utf-8")


def digest(document: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of every field but the checksum and HMAC fields."""
    return hashlib.sha256(_body(document)).hexdigest()


def checksum(document: Mapping[str, Any]) -> str:
    """The ``checksum`` field of a schema-2 document: ``"sha256:" + digest``."""
    return "sha256:" + digest(document)


def sign(document: Mapping[str, Any], key: bytes) -> str:
    """The ``hmac`` field: ``"hmac-sha256:" + HMAC-SHA256(key, canonical JSON of the body)``."""
    return "hmac-sha256:" + hmac_lib.new(key, _body(document), hashlib.sha256).hexdigest()


def seal(document: dict[str, Any], key: bytes | None = None) -> dict[str, Any]:
    """Set ``checksum`` (and ``hmac`` when a key is given) of a schema-2 document, in place."""
    for name in _SEALS:
        document.pop(name, None)
    document["checksum"] = checksum(document)
    if key is not None:
        document["hmac"] = sign(document, key)
    return document


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
    """The sealed document of a fitted predictor: a checksum, and an HMAC when ``TRITUNE_PREDICTOR_KEY``
    is set (refuses a predictor without a measured error)."""
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
    return seal(document, hmac_key())


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


def _types(document: Mapping[str, Any], source: str) -> None:
    expect = {"kind": (str,), "metric": (str, type(None)), "params": (dict,), "error": (dict, type(None)),
              "target_fingerprint": (dict, type(None))}
    for name, types in expect.items():
        if not isinstance(document[name], types):
            allowed = " or ".join("null" if t is type(None) else {"str": "a string", "dict": "an object"}[t.__name__] for t in types)
            raise PredictorFileError(f"predictor file {source}: field {name!r} is {type(document[name]).__name__}; expected {allowed}")


def check_document(document: Any, source: str, expected_fingerprint: Any = None) -> dict[str, Any]:
    """Validate a parsed document; raise `PredictorFileError` naming the first problem found.

    Checked in this order: the format tag, the schema version (a newer one is refused before its
    checksum is read, since a newer format may seal differently), the fields and their types, the
    checksum, the HMAC (`authenticated`), the kind, and the target fingerprint when
    ``expected_fingerprint`` (a dict or a target) is given.
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
    fields = SCHEMA_FIELDS[schema]
    missing = [f for f in fields if f not in document]
    if missing:
        raise PredictorFileError(f"predictor file {source}: missing fields {missing}")
    unknown = sorted(set(document) - set(fields) - (set(OPTIONAL_FIELDS) if schema >= 2 else set()))
    if unknown:
        raise PredictorFileError(f"predictor file {source}: unknown fields {unknown}")
    _types(document, source)
    try:
        actual = digest(document)
    except ValueError as exc:  # NaN / inf smuggled in by hand
        raise PredictorFileError(f"predictor file {source}: not canonical JSON ({exc})") from None
    stored = document["sha256"] if schema == 1 else document["checksum"]
    expected = actual if schema == 1 else "sha256:" + actual
    if not isinstance(stored, str) or not hmac_lib.compare_digest(stored, expected):
        raise PredictorFileError(
            f"predictor file {source}: checksum mismatch (stored {str(stored)[:19]}..., contents hash to {expected[:19]}...): "
            "the file was modified or damaged; refit or restore it"
        )
    authenticated(document, source)
    try:
        predictor_class(document["kind"])
    except ValueError as exc:
        raise PredictorFileError(f"predictor file {source}: {exc}") from None
    if expected_fingerprint is not None:
        expected_fp = fingerprint_of(expected_fingerprint)
        bad = _mismatched_keys(expected_fp, document["target_fingerprint"])
        if bad:
            stored_fp = document["target_fingerprint"] or {}
            detail = "; ".join(f"{k}: file {stored_fp.get(k)!r}, expected {expected_fp[k]!r}" for k in bad[:4])
            raise PredictorFileError(
                f"predictor file {source}: made for another target (target fingerprint differs in {', '.join(bad)}: {detail})"
            )
    return document


def authenticated(document: Mapping[str, Any], source: str = "") -> bool:
    """Whether the document's HMAC verifies under ``TRITUNE_PREDICTOR_KEY``.

    With the key set, a document without a valid HMAC raises `PredictorFileError` (it may have
    been made or changed by anyone); without the key every document is unauthenticated (False)."""
    try:
        key = hmac_key()
    except PredictorFileError as exc:
        raise PredictorFileError(f"predictor file {source}: {exc}") from None
    if key is None:
        return False
    stored = document.get("hmac")
    if stored is None:
        raise PredictorFileError(
            f"predictor file {source}: carries no HMAC, and {KEY_ENV} is set: refused as unauthenticated "
            f"(re-save it with the key, or unset {KEY_ENV} to load it unverified)"
        )
    if not isinstance(stored, str) or not hmac_lib.compare_digest(stored, sign(document, key)):
        raise PredictorFileError(
            f"predictor file {source}: HMAC mismatch: not saved with the key in {KEY_ENV}, or changed since; refused"
        )
    return True


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise PredictorFileError(f"duplicate key {key!r}")
        out[key] = value
    return out


def read_document(path: str | os.PathLike, expected_fingerprint: Any = None) -> dict[str, Any]:
    """Read and validate a predictor file (see `check_document`)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"predictor file not found: {p}")
    try:
        with open(p, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PredictorFileError(f"predictor file {p}: cannot read ({exc.strerror or exc})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise PredictorFileError(f"predictor file {p}: larger than {MAX_FILE_BYTES} bytes; not a predictor file")
    try:
        document = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except PredictorFileError as exc:
        raise PredictorFileError(f"predictor file {p}: not valid JSON ({exc})") from None
    except RecursionError:
        raise PredictorFileError(f"predictor file {p}: not valid JSON (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PredictorFileError(f"predictor file {p}: not valid JSON ({' '.join(str(exc).split())})") from None
    return check_document(document, str(p), expected_fingerprint)


#: What a damaged ``params`` object raises while a predictor class reads it back.
_READ_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError)


def load(path: str | os.PathLike, expected_fingerprint: Any = None) -> "Predictor":
    """Read a saved predictor of any registered kind, checked as in `check_document`.

    The predictor's ``authenticated_`` says whether its HMAC verified (see `authenticated`)."""
    document = read_document(path, expected_fingerprint)
    try:
        predictor = predictor_class(document["kind"]).from_document(document)
    except PredictorFileError:
        raise
    except _READ_ERRORS as exc:
        raise PredictorFileError(
            f"predictor file {path}: params do not make a {document['kind']!r} predictor ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]})"
        ) from None
    predictor.authenticated_ = authenticated(document, str(path))
    return predictor


def booster_to_json(booster: Any) -> str:
    """An XGBoost booster as its own JSON text (how predictor files embed it: no pickle)."""
    return bytes(booster.save_raw("json")).decode("utf-8")


def booster_from_json(text: str, nthread: int) -> Any:
    """The booster `booster_to_json` wrote, predicting with ``nthread`` threads."""
    import xgboost as xgb

    booster = xgb.Booster(params={"nthread": nthread})
    booster.load_model(bytearray(text.encode("utf-8")))
    return booster
