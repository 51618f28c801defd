"""A search job: the YAML a user writes, validated into one value that builds everything else.

Every error names the offending field (``job.strategy.name``) and, where the set is closed, the
allowed values, so a typo costs seconds, not a traceback.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..spaces import SearchSpace
from ..spaces import create as create_space
from ..evaluators.problem import Problem

JOB_SCHEMA_VERSION = 1
EXECUTORS = ("inprocess", "ray")
TOP_LEVEL = ("name", "space", "evaluators", "objectives", "constraints", "strategy", "budget", "batch_size", "seed", "run_dir", "executor")


class JobError(ValueError):
    """A job file or dict that cannot run; the message names the field."""


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise JobError(message)


def _named(value: Any, where: str) -> tuple[str, dict]:
    """Accept ``NAME`` or ``{name: NAME, ...options}``."""
    if isinstance(value, str):
        return value, {}
    _expect(isinstance(value, Mapping) and isinstance(value.get("name"), str), f"job.{where}: expected a name or {{name: NAME, ...options}}, got {value!r}")
    options = {k: v for k, v in value.items() if k != "name"}
    return value["name"], options


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

    # ----- loading --------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path, validate: bool = True) -> "Job":
        """Read a job file; ``validate=False`` skips building its parts (a tool that prepares
        an input of the job, such as its supernet checkpoint, reads the job before it exists)."""
        path = Path(path)
        if not path.is_file():
            raise JobError(f"job file {str(path)!r}: not found")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise JobError(f"job file {str(path)!r}: not valid YAML ({exc})".replace("\n", " ")) from None
        _expect(isinstance(data, Mapping), f"job file {str(path)!r}: expected a mapping of fields {', '.join(TOP_LEVEL)}")
        data = dict(data)
        data.setdefault("name", path.stem)
        return cls.from_dict(data, validate=validate)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], validate: bool = True) -> "Job":
        unknown = sorted(set(data) - set(TOP_LEVEL))
        _expect(not unknown, f"job: unknown fields {unknown}; allowed: {', '.join(TOP_LEVEL)}")
        for required in ("space", "evaluators", "objectives"):
            _expect(required in data, f"job.{required}: required")
        name = str(data.get("name", "search"))
        space, space_options = _named(data["space"], "space")

        evaluators = data["evaluators"]
        _expect(isinstance(evaluators, list) and evaluators, "job.evaluators: expected a non-empty list of {kind: KIND, ...options}")
        for i, ev in enumerate(evaluators):
            _expect(isinstance(ev, Mapping) and isinstance(ev.get("kind"), str), f"job.evaluators[{i}]: expected {{kind: KIND, ...options}}, got {ev!r}")
        objectives = data["objectives"]
        _expect(isinstance(objectives, list) and objectives, "job.objectives: expected a non-empty list of {metric: NAME, direction: minimize|maximize}")
        constraints = data.get("constraints") or []
        _expect(isinstance(constraints, list), "job.constraints: expected a list of {metric: NAME, max: X} / {metric: NAME, min: X}")

        strategy, strategy_options = _named(data.get("strategy", "random"), "strategy")
        budget = data.get("budget", 100)
        max_trials = None
        if isinstance(budget, Mapping):
            unknown = sorted(set(budget) - {"evaluations", "max_trials"})
            _expect(not unknown, f"job.budget: unknown fields {unknown}; allowed: evaluations, max_trials")
            max_trials = budget.get("max_trials")
            budget = budget.get("evaluations", 100)
        _expect(isinstance(budget, int) and not isinstance(budget, bool) and budget > 0, f"job.budget.evaluations: {budget!r} must be a positive integer")
        _expect(max_trials is None or (isinstance(max_trials, int) and max_trials >= budget), f"job.budget.max_trials: {max_trials!r} must be an integer >= evaluations")
        batch_size = data.get("batch_size", 4)
        _expect(isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0, f"job.batch_size: {batch_size!r} must be a positive integer")
        seed = data.get("seed", 0)
        _expect(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0, f"job.seed: {seed!r} must be a non-negative integer")

        executor = data.get("executor", {}) or {}
        if isinstance(executor, str):
            executor = {"kind": executor}
        _expect(isinstance(executor, Mapping), "job.executor: expected {kind: inprocess|ray, workers: N, address: ADDR}")
        unknown = sorted(set(executor) - {"kind", "workers", "address"})
        _expect(not unknown, f"job.executor: unknown fields {unknown}; allowed: kind, workers, address")
        kind = executor.get("kind", "inprocess")
        _expect(kind in EXECUTORS, f"job.executor.kind: {kind!r} not allowed; allowed: {', '.join(EXECUTORS)}")
        workers = executor.get("workers", 2 if kind == "ray" else 1)
        _expect(isinstance(workers, int) and workers > 0, f"job.executor.workers: {workers!r} must be a positive integer")

        job = cls(
            name=name, space=space, space_options=dict(space_options), evaluators=tuple(dict(e) for e in evaluators),
            objectives=tuple(dict(o) if isinstance(o, Mapping) else o for o in objectives),
            constraints=tuple(dict(c) if isinstance(c, Mapping) else c for c in constraints),
            strategy=strategy, strategy_options=dict(strategy_options), budget=budget, max_trials=max_trials,
            batch_size=batch_size, seed=seed, run_dir=str(data.get("run_dir") or f"runs/{name}"),
            executor=kind, workers=workers, address=executor.get("address"),
        )
        if validate:
            job.validate()
        return job

    def validate(self) -> None:
        """Build every part once so that bad options fail before any trial runs."""
        try:
            space = self.build_space()
            problem = self.problem()
            pipeline = self.build_pipeline(space, problem)
            self.build_strategy(space, problem, pipeline.oracle)
        except JobError:
            raise
        except ValueError as exc:
            raise JobError(f"job: {exc}") from None

    # ----- building -------------------------------------------------------------------------------
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
        return {
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

    def to_json(self) -> str:
        return json.dumps(self.to_config(), sort_keys=True)

    def fingerprint(self) -> str:
        """What decides the trial sequence; executor settings and paths may change on resume."""
        keep = {k: v for k, v in self.to_config().items() if k not in ("run_dir", "executor", "name")}
        keep["schema"] = JOB_SCHEMA_VERSION
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()
