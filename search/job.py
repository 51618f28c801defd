"""A search job: the YAML a user writes, validated into one value that builds everything else.

Every error names the offending field (``job.strategy.name``) and, where the set is closed, the
allowed values, so a typo costs seconds, not a traceback. A job is data: the file is read with
`tritune.search.jobfile` (bounded, plain values only), every field is type-checked strictly (no
booleans or strings where numbers belong, no NaN), and the options of each part are checked
against its factory's type hints before anything is built. No field names code to import.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..spaces import SearchSpace
from ..spaces import create as create_space
from ..evaluators.problem import Problem
from .jobfile import InputError, check_plain, read_yaml

JOB_SCHEMA_VERSION = 1
EXECUTORS = ("inprocess", "ray")
TOP_LEVEL = ("name", "space", "evaluators", "objectives", "constraints", "strategy", "budget", "batch_size", "seed", "run_dir", "executor",
             "stages")
#: Bounds on what a job may ask for (a name ends up in paths and titles; a seed in 32-bit generators).
MAX_NAME = 100
MAX_PATH = 4096
MAX_EVALUATIONS = 10_000_000
MAX_TRIALS = 1_000_000_000
MAX_BATCH = 100_000
MAX_SEED = 2**32 - 1
MAX_WORKERS = 4096
MAX_PARTS = 64
_NAME = re.compile(r"[^\W_][\w .+@=,-]*", re.UNICODE)


class JobError(ValueError):
    """A job file or dict that cannot run; the message names the field."""


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise JobError(message)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    _expect(isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi,
            f"{where}: {_show(value)} not allowed; expected an integer from {lo} to {hi}")
    return value


def check_name(value: Any, where: str) -> str:
    """A name that also becomes part of paths and titles: 1-100 letters, digits, ``space . + @ = , - _``."""
    _expect(isinstance(value, str) and 0 < len(value) <= MAX_NAME and _NAME.fullmatch(value) is not None and value.strip() == value,
            f"{where}: {_show(value)} not allowed; expected 1 to {MAX_NAME} letters, digits or . + @ = , - _ (starting with a "
            "letter or digit)")
    return value


def check_path(value: Any, where: str) -> str:
    """A path given in a file: a non-empty string of at most 4096 characters, no NUL, encodable."""
    ok = isinstance(value, str) and 0 < len(value) <= MAX_PATH and "\0" not in value
    if ok:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            ok = False
    _expect(ok, f"{where}: {_show(value)} not allowed; expected a path (a string of 1 to {MAX_PATH} characters)")
    return value


def check_run_dir(path: str | Path, where: str = "run_dir") -> Path:
    """Refuse a run directory that cannot be one: an existing file, or a path through a file."""
    p = Path(path)
    check_path(str(path), where)
    if p.exists() and not p.is_dir():
        raise JobError(f"{where}: {str(p)!r} is a file, not a directory")
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise JobError(f"{where}: {str(p)!r} goes through {str(parent)!r}, which is a file, not a directory")
            break
    return p


def _named(value: Any, where: str) -> tuple[str, dict]:
    """Accept ``NAME`` or ``{name: NAME, ...options}``."""
    if isinstance(value, str):
        return check_part_name(value, f"job.{where}"), {}
    _expect(isinstance(value, Mapping) and "name" in value, f"job.{where}: expected a name or {{name: NAME, ...options}}, got {_show(value)}")
    options = {k: v for k, v in value.items() if k != "name"}
    return check_part_name(value["name"], f"job.{where}.name"), options


def check_part_name(value: Any, where: str) -> str:
    _expect(isinstance(value, str) and 0 < len(value) <= MAX_NAME, f"{where}: {_show(value)} not allowed; expected a name (a string of 1 to {MAX_NAME} characters)")
    return value


@dataclass(frozen=True)
class Job:
    name: str
    space: str
    space_options: dict
    evaluators: tuple[dict, ...]
    objectives: tuple[dict, ...]
    constraints: tuple[dict, ...] = ()
    strategy: str = "random"
    strategy_options: dict = field(default_factory=dict)
    budget: int = 100
    max_trials: int | None = None
    batch_size: int = 4
    seed: int = 0
    run_dir: str = ""
    executor: str = "inprocess"
    workers: int = 1
    address: str | None = None
    #: The staged pipeline's settings (`tritune.search.stages.StagesConfig`); None: a plain search.
    stages: dict | None = None

    # ----- loading --------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path, validate: bool = True) -> "Job":
        """Read a job file; ``validate=False`` skips building its parts (a tool that prepares
        an input of the job, such as its supernet checkpoint, reads the job before it exists).
        Errors name the file and the field."""
        path = Path(path)
        try:
            data = read_yaml(path, "job file", "job")
        except InputError as exc:
            raise JobError(str(exc)) from None
        _expect(isinstance(data, Mapping), f"job file {str(path)!r}: expected a mapping of fields {', '.join(TOP_LEVEL)}")
        data = dict(data)
        if "name" not in data:
            _expect(_NAME.fullmatch(path.stem) is not None and len(path.stem) <= MAX_NAME,
                    f"job file {str(path)!r}: the file name does not make a job name; add name: NAME")
            data["name"] = path.stem
        try:
            return cls.from_dict(data, validate=validate)
        except JobError as exc:
            raise JobError(f"job file {str(path)!r}: {exc}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], validate: bool = True) -> "Job":
        """Check every field's type and bounds and each part's options against its factory's type
        hints (building nothing); with ``validate``, also build each part once."""
        _expect(isinstance(data, Mapping), f"job: expected a mapping of fields {', '.join(TOP_LEVEL)}, got {type(data).__name__}")
        try:
            check_plain(data, "job")
        except InputError as exc:
            raise JobError(str(exc)) from None
        unknown = sorted(set(data) - set(TOP_LEVEL))
        _expect(not unknown, f"job: unknown fields {unknown}; allowed: {', '.join(TOP_LEVEL)}")
        for required in ("space", "evaluators", "objectives"):
            _expect(required in data, f"job.{required}: required")
        name = check_name(data.get("name", "search"), "job.name")
        space, space_options = _named(data["space"], "space")

        evaluators = data["evaluators"]
        _expect(isinstance(evaluators, (list, tuple)) and 0 < len(evaluators) <= MAX_PARTS,
                f"job.evaluators: expected a non-empty list (at most {MAX_PARTS}) of {{kind: KIND, ...options}}")
        for i, ev in enumerate(evaluators):
            _expect(isinstance(ev, Mapping) and "kind" in ev, f"job.evaluators[{i}]: expected {{kind: KIND, ...options}}, got {_show(ev)}")
            check_part_name(ev["kind"], f"job.evaluators[{i}].kind")
        objectives = data["objectives"]
        _expect(isinstance(objectives, (list, tuple)) and 0 < len(objectives) <= MAX_PARTS,
                "job.objectives: expected a non-empty list of {metric: NAME, direction: minimize|maximize}")
        constraints = data.get("constraints", [])
        _expect(isinstance(constraints, (list, tuple)) and len(constraints) <= MAX_PARTS,
                "job.constraints: expected a list of {metric: NAME, max: X} / {metric: NAME, min: X}")
        try:
            Problem.from_config(objectives, constraints)
        except ValueError as exc:
            raise JobError(f"job.{exc}") from None

        strategy, strategy_options = _named(data.get("strategy", "random"), "strategy")
        budget = data.get("budget", 100)
        max_trials = None
        if isinstance(budget, Mapping):
            unknown = sorted(set(budget) - {"evaluations", "max_trials"})
            _expect(not unknown, f"job.budget: unknown fields {unknown}; allowed: evaluations, max_trials")
            max_trials = budget.get("max_trials")
            budget = budget.get("evaluations", 100)
        _expect(isinstance(budget, int) and not isinstance(budget, bool) and budget > 0, f"job.budget.evaluations: {_show(budget)} must be a positive integer")
        _int(budget, "job.budget.evaluations", 1, MAX_EVALUATIONS)
        if max_trials is not None:
            _int(max_trials, "job.budget.max_trials", budget, MAX_TRIALS)
        batch_size = _int(data.get("batch_size", 4), "job.batch_size", 1, MAX_BATCH)
        seed = _int(data.get("seed", 0), "job.seed", 0, MAX_SEED)
        run_dir = check_path(data["run_dir"], "job.run_dir") if "run_dir" in data else f"runs/{name}"

        executor = data.get("executor", {})
        if isinstance(executor, str):
            executor = {"kind": executor}
        _expect(isinstance(executor, Mapping), "job.executor: expected {kind: inprocess|ray, workers: N, address: ADDR}")
        unknown = sorted(set(executor) - {"kind", "workers", "address"})
        _expect(not unknown, f"job.executor: unknown fields {unknown}; allowed: kind, workers, address")
        kind = executor.get("kind", "inprocess")
        _expect(isinstance(kind, str) and kind in EXECUTORS, f"job.executor.kind: {_show(kind)} not allowed; allowed: {', '.join(EXECUTORS)}")
        workers = _int(executor.get("workers", 2 if kind == "ray" else 1), "job.executor.workers", 1, MAX_WORKERS)
        address = executor.get("address")
        _expect(address is None or (isinstance(address, str) and 0 < len(address) <= 1000 and "\0" not in address),
                f"job.executor.address: {_show(address)} not allowed; expected a Ray address such as 'ray://host:10001' or 'auto'")

        stages = data.get("stages")
        if stages is not None:
            from .stages.config import StagesConfig

            try:
                StagesConfig.from_dict(stages)
            except ValueError as exc:
                raise JobError(str(exc)) from None
            stages = dict(stages)

        job = cls(
            name=name, space=space, space_options=dict(space_options), evaluators=tuple(dict(e) for e in evaluators),
            objectives=tuple(dict(o) for o in objectives), constraints=tuple(dict(c) for c in constraints),
            strategy=strategy, strategy_options=dict(strategy_options), budget=budget, max_trials=max_trials,
            batch_size=batch_size, seed=seed, run_dir=run_dir, executor=kind, workers=workers, address=address, stages=stages,
        )
        job.check_options()
        if validate:
            job.validate()
        return job

    def check_options(self) -> None:
        """Check each part's name and options against its factory's signature and type hints,
        building nothing (an unknown option or a wrong type is one line naming the field)."""
        from ..evaluators.registry import check_evaluator_options
        from ..spaces.registry import check_space_options
        from .strategies import check_strategy_options

        try:
            check_space_options(self.space, self.space_options)
        except ValueError as exc:
            raise JobError(f"job.space: {exc}") from None
        for i, spec in enumerate(self.evaluators):
            try:
                check_evaluator_options(spec["kind"], {k: v for k, v in spec.items() if k != "kind"})
            except ValueError as exc:
                raise JobError(f"job.evaluators[{i}]: {exc}") from None
        try:
            check_strategy_options(self.strategy, self.strategy_options)
        except ValueError as exc:
            raise JobError(f"job.strategy: {exc}") from None

    def validate(self) -> None:
        """Build each part once (its options were checked by `from_dict`) so that bad options and
        unreadable files fail before any trial runs."""
        try:
            space = self.build_space()
            problem = self.problem()
            config = self.stages_config()
            if config is not None and config.supernet is not None:
                # the supernet its evaluators read is stage 1's output: build what exists now
                self.build_strategy(space, problem, None)
                return
            pipeline = self.build_pipeline(space, problem)
            self.build_strategy(space, problem, pipeline.oracle)
        except JobError:
            raise
        except (ValueError, OSError) as exc:  # OSError: a file a part names cannot be read
            raise JobError(f"job: {' '.join(str(exc).split())}") from None

    # ----- building -------------------------------------------------------------------------------
    def stages_config(self):
        """The parsed ``stages`` section (`tritune.search.stages.StagesConfig`), or None."""
        if self.stages is None:
            return None
        from .stages.config import StagesConfig

        return StagesConfig.from_dict(self.stages)

    def problem(self) -> Problem:
        return Problem.from_config(self.objectives, self.constraints)

    def build_space(self) -> SearchSpace:
        return create_space(self.space, **self.space_options)

    def build_pipeline(self, space: SearchSpace | None = None, problem: Problem | None = None):
        from ..evaluators import EvaluationPipeline, create_evaluator

        space = space if space is not None else self.build_space()
        evaluators = []
        for i, spec in enumerate(self.evaluators):
            options = {k: v for k, v in spec.items() if k != "kind"}
            try:
                evaluators.append(create_evaluator(spec["kind"], **options))
            except ValueError as exc:
                raise JobError(f"job.evaluators[{i}]: {exc}") from None
            evaluators[-1].bind_space(space)
        return EvaluationPipeline(evaluators, problem or self.problem())

    def build_strategy(self, space: SearchSpace, problem: Problem, oracle=None):
        from .strategies import create_strategy

        try:
            return create_strategy(self.strategy, space, problem, seed=self.seed, oracle=oracle, **self.strategy_options)
        except ValueError as exc:
            raise JobError(f"job.strategy: {exc}") from None

    # ----- identity -------------------------------------------------------------------------------
    def to_config(self) -> dict:
        """The job as YAML fields again (`from_dict(to_config())` gives an equal job)."""
        budget: dict[str, Any] = {"evaluations": self.budget}
        if self.max_trials is not None:
            budget["max_trials"] = self.max_trials
        executor: dict[str, Any] = {"kind": self.executor, "workers": self.workers}
        if self.address:
            executor["address"] = self.address
        config = {
            "name": self.name,
            "space": {"name": self.space, **self.space_options},
            "evaluators": [dict(e) for e in self.evaluators],
            "objectives": [dict(o) for o in self.objectives],
            "constraints": [dict(c) for c in self.constraints],
            "strategy": {"name": self.strategy, **self.strategy_options},
            "budget": budget,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "run_dir": self.run_dir,
            "executor": executor,
        }
        if self.stages is not None:
            config["stages"] = dict(self.stages)
        return config

    def to_json(self) -> str:
        return json.dumps(self.to_config(), sort_keys=True)

    def fingerprint(self) -> str:
        """What decides the results (the trial sequence and, with stages, every later stage);
        executor settings and paths may change on resume."""
        keep = {k: v for k, v in self.to_config().items() if k not in ("run_dir", "executor", "name")}
        if self.stages is not None:  # the settings as they resolve, defaults included
            keep["stages"] = self.stages_config().to_dict()
        keep["schema"] = JOB_SCHEMA_VERSION
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()
