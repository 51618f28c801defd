"""What each stage of a pipeline run has finished, kept in the run's ``trials.db``.

A stage's record (meta key ``stage:<name>``) is written once, when the stage ends, with its
settings, summary and wall time; a resumed run skips recorded stages and resumes the first
unrecorded one from its own persisted parts (the supernet checkpoint, the trial stores, the
fine-tuned weights). A recorded stage whose settings changed is refused, not silently reused.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..store import StoreError, TrialStore


@dataclass(frozen=True)
class StageRecord:
    """One finished stage: ``settings`` it ran with, ``summary`` of what it produced."""

    name: str
    settings: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "settings": self.settings, "summary": self.summary, "seconds": self.seconds}


class StageLog:
    """Stage records and per-item results of one run (both in its store's meta table)."""

    def __init__(self, store: TrialStore) -> None:
        self.store = store

    def _read(self, key: str) -> Any:
        text = self.store.get_meta(key)
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise StoreError(f"trial store {str(self.store.path)!r}: meta {key!r} is damaged") from None

    def get(self, name: str) -> StageRecord | None:
        data = self._read(f"stage:{name}")
        if data is None:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
            raise StoreError(f"trial store {str(self.store.path)!r}: the record of stage {name!r} is damaged")
        return StageRecord(name, data["settings"], dict(data.get("summary") or {}), float(data.get("seconds") or 0.0))

    def done(self, name: str, settings: dict[str, Any]) -> StageRecord | None:
        """The stage's record when it finished with these settings; raises ValueError when it
        finished with others (a resume must not mix two pipelines)."""
        record = self.get(name)
        if record is not None and json.dumps(record.settings, sort_keys=True) != json.dumps(settings, sort_keys=True):
            changed = sorted(k for k in set(record.settings) | set(settings) if record.settings.get(k) != settings.get(k))
            raise ValueError(f"run directory {str(self.store.path.parent)!r}: stage {name!r} finished with other settings "
                             f"(changed: {', '.join(changed)}); start a new run_dir instead of resuming")
        return record

    def finish(self, record: StageRecord) -> None:
        self.store.set_meta(f"stage:{record.name}", json.dumps(record.to_json(), sort_keys=True))

    def records(self) -> list[StageRecord]:
        from .config import STAGE_NAMES

        return [r for r in (self.get(n) for n in STAGE_NAMES) if r is not None]

    # ----- items of a stage (one fine-tuning rung of one model, ...) ---------------------------
    def item(self, key: str) -> dict[str, Any] | None:
        data = self._read(f"item:{key}")
        if data is not None and not isinstance(data, dict):
            raise StoreError(f"trial store {str(self.store.path)!r}: meta item {key!r} is damaged")
        return data

    def put_item(self, key: str, value: dict[str, Any]) -> None:
        self.store.set_meta(f"item:{key}", json.dumps(value, sort_keys=True))
