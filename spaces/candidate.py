"""`Candidate`: one point of a joint search space (architecture + per-layer compression plan).

A candidate is a value: immutable, hashable, with one canonical JSON text. Two candidates that
build the same network compare equal, which the spaces guarantee by canonicalising (unused slots
are reset to fixed values) before they hand a candidate out.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from .compression import LayerCompression

SCHEMA_VERSION = 1

ArchValue = int | float | str | tuple


def _freeze(value: Any, where: str) -> ArchValue:
    if isinstance(value, bool):
        raise ValueError(f"{where}: booleans are not architecture values")
    if isinstance(value, (int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v, where) for v in value)
    raise ValueError(f"{where}: {type(value).__name__} is not an int, float, string or list")


def _thaw(value: ArchValue) -> Any:
    return [_thaw(v) for v in value] if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Candidate:
    """Architecture choices (name -> value) plus one `LayerCompression` per compressible slot."""

    space: str
    arch: tuple[tuple[str, ArchValue], ...]
    compression: tuple[LayerCompression, ...] = ()

    @classmethod
    def make(cls, space: str, arch: Mapping[str, Any], compression: tuple[LayerCompression, ...] | list = ()) -> "Candidate":
        items = tuple(sorted((str(k), _freeze(v, f"arch.{k}")) for k, v in arch.items()))
        return cls(space=space, arch=items, compression=tuple(compression))

    # ----- mapping-like access to the architecture ----------------------------------------
    def __getitem__(self, key: str) -> ArchValue:
        for k, v in self.arch:
            if k == key:
                return v
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def arch_dict(self) -> dict[str, ArchValue]:
        return dict(self.arch)

    def keys(self) -> Iterator[str]:
        return (k for k, _ in self.arch)

    def replace(self, arch: Mapping[str, Any] | None = None, compression: tuple | list | None = None) -> "Candidate":
        merged = self.arch_dict()
        merged.update(arch or {})
        return Candidate.make(self.space, merged, self.compression if compression is None else compression)

    # ----- serialisation --------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "schema": SCHEMA_VERSION,
            "space": self.space,
            "arch": {k: _thaw(v) for k, v in self.arch},
            "compression": [c.to_json() for c in self.compression],
        }

    def dumps(self) -> str:
        """Canonical text: sorted keys, no spaces. Equal candidates give equal strings."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: dict) -> "Candidate":
        if not isinstance(data, dict):
            raise ValueError(f"candidate: expected a JSON object, got {type(data).__name__}")
        schema = data.get("schema")
        if schema != SCHEMA_VERSION:
            raise ValueError(f"candidate.schema: {schema!r} not supported; allowed: {SCHEMA_VERSION}")
        unknown = set(data) - {"schema", "space", "arch", "compression"}
        if unknown:
            raise ValueError(f"candidate: unknown fields {sorted(unknown)}; allowed: schema, space, arch, compression")
        if not isinstance(data.get("space"), str):
            raise ValueError("candidate.space: missing or not a string")
        if not isinstance(data.get("arch"), dict):
            raise ValueError("candidate.arch: missing or not an object")
        comp = data.get("compression", [])
        if not isinstance(comp, list):
            raise ValueError("candidate.compression: expected a list of per-layer objects")
        plan = [LayerCompression.from_json(c, f"candidate.compression[{i}]") for i, c in enumerate(comp)]
        return cls.make(data["space"], data["arch"], plan)

    @classmethod
    def loads(cls, text: str) -> "Candidate":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"candidate: not valid JSON ({exc})") from exc
        return cls.from_json(data)

    @property
    def id(self) -> str:
        """Stable short id: the first 12 hex digits of the SHA-256 of the canonical JSON."""
        return hashlib.sha256(self.dumps().encode()).hexdigest()[:12]

    def __repr__(self) -> str:
        return f"Candidate({self.space}:{self.id})"
