"""What an export reads from a run directory: the job, the front, and the weights the search scored.

Everything here is data. The job comes back from the store's ``job`` meta entry as JSON and is
never validated by building it (that would load files and plug-ins); evaluator kinds are matched
against a fixed list; a data set named in the run must be an embedded one, an ``.npz`` file or an
image folder -- a ``module:function`` or callable data set is refused, because reading a run
directory must never import or run what it names. Checkpoints load through safetensors.

The files the search read are checked against the checksums the run recorded at its start
(store meta ``inputs``); a missing or changed checkpoint is an `ExportError`, since the exported
accuracy would no longer be the one the search measured.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ...spaces.candidate import Candidate
from ..job import Job
from ..report import front, knee
from ..store import TrialRecord, TrialStore
from ..run import file_sha256

#: Accuracy evaluators whose scores an export can reproduce (inherited supernet weights).
SUPERNET_KINDS = ("supernet-accuracy",)
#: Options of `SupernetAccuracy` an export passes on (how the search recalibrated and scored).
SCORING_OPTIONS = ("calib_batches", "calib_batch_size", "eval_batch_size", "seed", "metric")


class ExportError(ValueError):
    """A run directory, selection or input file that cannot be exported; the message names it."""


@dataclass(frozen=True)
class FrontMember:
    """One candidate to export: its trial, its place on the front (``rank``, 0 = best by the
    first objective, as ``tritune results show`` numbers them) and whether it is the knee."""

    record: TrialRecord
    rank: int
    knee: bool

    @property
    def candidate(self) -> Candidate:
        return self.record.candidate


@dataclass
class RunData:
    """A run directory read back: job, finished trials, front (best first), knee, recorded inputs."""

    run_dir: Path
    job: Job
    records: list[TrialRecord]
    front: list[TrialRecord]
    knee: TrialRecord | None
    inputs: dict[str, dict[str, Any]] | None = None
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def problem(self) -> Any:
        return self.job.problem()

    def members(self) -> list[FrontMember]:
        knee_number = None if self.knee is None else self.knee.number
        return [FrontMember(r, i, r.number == knee_number) for i, r in enumerate(self.front)]

    def select(self, which: str | int = "knee") -> list[FrontMember]:
        """``"knee"``, ``"all"`` or a rank on the front (0 = best by the first objective)."""
        members = self.members()
        if not members:
            raise ExportError(f"run directory {str(self.run_dir)!r}: its Pareto front is empty (no complete, feasible trial)")
        if which == "all":
            return members
        if which == "knee":
            return [m for m in members if m.knee] or members[:1]
        if isinstance(which, bool) or not isinstance(which, int) or not 0 <= which < len(members):
            raise ExportError(f"export --rank: {which!r} not allowed; allowed: 0..{len(members) - 1} (the front has {len(members)} members)")
        return [members[which]]

    def evaluator(self, kinds: tuple[str, ...]) -> dict[str, Any] | None:
        return next((dict(e) for e in self.job.evaluators if e.get("kind") in kinds), None)

    def latency_evaluator(self) -> dict[str, Any] | None:
        return self.evaluator(("latency",))


def load_run(run_dir: str | os.PathLike) -> RunData:
    """Read ``RUN_DIR/trials.db`` read-only (the store is SQLite; nothing in it runs)."""
    run = Path(run_dir).expanduser().resolve()
    db = run / "trials.db"
    if not db.is_file():
        raise ExportError(f"run directory {str(run)!r}: no trials.db (is it a run directory?)")
    with TrialStore(db, readonly=True) as store:
        text = store.get_meta("job")
        inputs_text = store.get_meta("inputs")
        records = [r for r in store.all() if r.status != "running"]
    if not text:
        raise ExportError(f"run directory {str(run)!r}: trials.db holds no job (meta 'job')")
    try:
        job = Job.from_dict(json.loads(text), validate=False)
    except (ValueError, TypeError) as exc:
        raise ExportError(f"run directory {str(run)!r}: the stored job is not readable ({exc})") from None
    inputs = None
    if inputs_text:
        try:
            files = json.loads(inputs_text).get("files", {})
            inputs = {str(k): dict(v) for k, v in files.items()}
        except (ValueError, AttributeError, TypeError) as exc:
            raise ExportError(f"run directory {str(run)!r}: meta 'inputs' is damaged ({exc})") from None
    problem = job.problem()
    best = front(records, problem)
    return RunData(run, job, records, best, knee(best, problem), inputs)


def recorded_input(run: RunData, option: str) -> tuple[Path, dict[str, Any] | None]:
    """The file an evaluator option named, as the run recorded it: (path, ``{"sha256", "size"}``
    or None when the run predates input records); see `tritune.search.run.recorded_input`."""
    from ..run import recorded_input as match

    return match(run.inputs, option)


def check_input(path: Path, record: dict[str, Any] | None, what: str) -> str:
    """SHA-256 of ``path``; `ExportError` when it is missing or differs from the run's record."""
    if not path.is_file():
        seen = f" (the search used it: sha256 {str(record.get('sha256'))[:12]})" if record else ""
        raise ExportError(f"{what} {str(path)!r}: missing{seen}; restore it to export this run")
    digest = file_sha256(path)
    if record is not None and digest != record.get("sha256"):
        raise ExportError(f"{what} {str(path)!r}: changed since the search (sha256 {digest[:12]}, the search used "
                          f"{str(record.get('sha256'))[:12]}); exported models would not be the searched ones; "
                          "restore the file or search again")
    return digest


def safe_dataset(value: Any, where: str) -> Any:
    """A data set spec that names data only: an embedded name, ``{name}``, ``{npz}``, ``{folder}``
    or a directory. Callables and ``module:function`` strings are refused (never imported)."""
    from ...evaluators.data import available_datasets

    allowed = f"an embedded name ({', '.join(available_datasets())}), {{npz: FILE}}, {{folder: DIR}} or a directory"
    if isinstance(value, str):
        if value in available_datasets() or (":" not in value and Path(value).expanduser().is_dir()):
            return value
    elif isinstance(value, Mapping) and len(value) == 1:
        key, item = next(iter(value.items()))
        if key == "name" and item in available_datasets():
            return dict(value)
        if key in ("npz", "folder") and isinstance(item, str):
            return dict(value)
    raise ExportError(f"{where}: {value!r} not allowed; allowed: {allowed} (a run directory never names code to run)")
