"""Fuzz the CLI with generated bad input: job files, run directories (trials.db), checkpoints, predictor files.

Every case goes through the real entry point, ``tritune.cli.main.main(argv)``, in-process with a
time limit, and is classified:

* ``clean error``: exit 2, one line ``tritune: error: ...`` naming the file (or its field);
* ``correctly accepted`` / ``wrongly accepted``: the CLI went on with an input the generator
  knows to be valid / invalid (some mutations, like a bit flip in unused space of a database, may
  be either: those only need to end cleanly);
* ``wrongly refused``: a clean error for an input the generator knows to be valid;
* ``traceback``, ``hang``, ``unclear error`` (exit 2 but not one line naming the file), and
  ``code ran`` (a hostile input's command created its marker file).

The goal is zero of everything but clean errors and correct acceptances; the counts table is
printed (``pytest -s``). Valid job files stop right after validation through a cheap real path
(``--resume`` on an empty run directory: the CLI validates the whole job, builds every part,
then refuses to resume nothing); a fixed sample of them runs a whole search (budget 2).
"""
from __future__ import annotations

import collections
import contextlib
import io
import json
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from tritune.cli.main import main as cli_main

TIME_LIMIT_S = 20.0
ACCEPT_CHEAP = "holds no run to resume"
NAME = re.compile(r"[^\W_][\w .+@=,-]*")
DATASETS = ("cifar10", "cifar100", "imagenet16_120")
COLUMNS = ("help_fpga", "help_eyeriss", "help_gold_6226", "help_pixel3", "help_raspi4", "help_titanxp_1", "help_gold_6240",
           "help_1080ti_1", "nnmeter_cortexA76cpu_tflite21_ms")
STRATEGIES = ("random", "evolution", "nsga2", "tpe", "predictor")
TINY = dict(resolutions=[16], widths=[0.25], depths=[1], expands=[3], kernels=[3], stem_stride=2, in_channels=1, num_classes=10)
OUTCOMES = ("clean error", "correctly accepted", "wrongly accepted", "wrongly refused", "traceback", "hang", "unclear error", "code ran")


@dataclass
class Case:
    family: str
    kind: str
    expect: str  # "valid" | "invalid" | "either"
    argv: list[str]
    names: tuple[str, ...]  # a clean error must contain one of these
    accept: str | None = None  # stderr text that means "accepted" (the cheap path); else exit 0
    write: Callable[[], None] | None = None
    cwd: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    check_out: Callable[[str], bool] | None = None  # extra condition on stdout of an accepted case


@dataclass
class Result:
    case: Case
    outcome: str
    detail: str


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def run_case(case: Case, marker: Path) -> Result:
    if case.write is not None:
        case.write()
    out, err = io.StringIO(), io.StringIO()
    old_cwd = os.getcwd()
    old_env = {k: os.environ.get(k) for k in case.env}
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT_S)
    rc, failure = None, ""
    try:
        if case.cwd is not None:
            case.cwd.mkdir(parents=True, exist_ok=True)
            os.chdir(case.cwd)
        os.environ.update(case.env)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli_main(case.argv)
    except _Hang:
        failure = "hang"
    except BaseException:  # noqa: BLE001 -- the point is to see everything that escapes
        failure = traceback.format_exc(limit=-3)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        os.chdir(old_cwd)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    stderr, stdout = err.getvalue(), out.getvalue()
    if marker.exists():
        marker.unlink()
        return Result(case, "code ran", stderr)
    if failure == "hang":
        return Result(case, "hang", "")
    if failure:
        return Result(case, "traceback", failure)
    accepted = (rc == 0) if case.accept is None else (rc == 2 and case.accept in stderr)
    if accepted:
        if case.expect == "invalid":
            return Result(case, "wrongly accepted", stderr or stdout[-300:])
        if case.check_out is not None and not case.check_out(stdout):
            return Result(case, "unclear error", "accepted, but the output fails its check: " + stdout[-300:])
        return Result(case, "correctly accepted", "")
    one_line = rc == 2 and stderr.startswith("tritune: error: ") and stderr.count("\n") == 1
    if one_line and any(n in stderr for n in case.names):
        return Result(case, "wrongly refused" if case.expect == "valid" else "clean error", stderr)
    return Result(case, "unclear error", f"rc={rc} {stderr[-400:]}")


# ================================================================================= job files
def base_job(run_dir: str) -> dict:
    return {
        "name": "fuzz",
        "space": "nb201",
        "evaluators": [{"kind": "nb201-accuracy", "dataset": "cifar10"},
                       {"kind": "latency", "target": "nb201-table", "column": "help_fpga"}],
        "objectives": [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency", "direction": "minimize"}],
        "constraints": [{"metric": "latency", "max": 4.0}],
        "strategy": {"name": "random"},
        "budget": {"evaluations": 2},
        "batch_size": 1,
        "seed": 0,
        "run_dir": run_dir,
        "executor": {"kind": "inprocess", "workers": 1},
    }


def _int(v: Any, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v <= hi


def _num(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _str_in(v: Any, allowed) -> bool:
    return type(v) is str and v in allowed


def _path_ok(v: Any) -> bool:
    if type(v) is not str or not 0 < len(v) <= 4096 or "\0" in v:
        return False
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: leaf path -> (is the value valid?, does a change here make a full run slow or infeasible?)
LEAVES: dict[tuple, tuple[Callable[[Any], bool], bool]] = {
    ("name",): (lambda v: type(v) is str and 0 < len(v) <= 100 and NAME.fullmatch(v) is not None and v.strip() == v, False),
    ("space",): (lambda v: _str_in(v, ("nb201",)), False),
    ("evaluators", 0, "kind"): (lambda v: _str_in(v, ("nb201-accuracy",)), False),
    ("evaluators", 0, "dataset"): (lambda v: _str_in(v, DATASETS), False),
    ("evaluators", 1, "kind"): (lambda v: _str_in(v, ("latency",)), False),
    ("evaluators", 1, "target"): (lambda v: _str_in(v, ("nb201-table",)), False),
    ("evaluators", 1, "column"): (lambda v: _str_in(v, COLUMNS), True),
    ("objectives", 0, "metric"): (lambda v: _str_in(v, ("accuracy",)), False),
    ("objectives", 0, "direction"): (lambda v: _str_in(v, ("minimize", "maximize")), False),
    ("objectives", 1, "metric"): (lambda v: _str_in(v, ("latency",)), False),
    ("objectives", 1, "direction"): (lambda v: _str_in(v, ("minimize", "maximize")), False),
    ("constraints", 0, "metric"): (lambda v: _str_in(v, ("latency", "accuracy")), True),
    ("constraints", 0, "max"): (_num, True),
    ("strategy", "name"): (lambda v: _str_in(v, STRATEGIES), False),
    ("budget", "evaluations"): (lambda v: _int(v, 1, 10_000_000), True),
    ("batch_size",): (lambda v: _int(v, 1, 100_000), True),
    ("seed",): (lambda v: _int(v, 0, 2**32 - 1), False),
    ("run_dir",): (_path_ok, True),
    ("executor", "kind"): (lambda v: _str_in(v, ("inprocess", "ray")), True),
    ("executor", "workers"): (lambda v: _int(v, 1, 4096), True),
}

GENERIC = [0, -1, 2, 1.5, True, None, "", "x", "4.0", [], {"a": 1}, ["cifar10"], float("nan"), float("inf"), 10**20, 2**32,
           "🙂", "a" * 101, "é", "random", "latency", "help_pixel3", "cifar100", "maximize"]


def _set(data: dict, path: tuple, value: Any) -> dict:
    data = json.loads(json.dumps(data))
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def _delete(data: dict, path: tuple) -> dict:
    data = json.loads(json.dumps(data))
    node = data
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return data


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True, width=10**9)


def alias_bomb(width: int, depth: int, where: str = "evaluators") -> str:
    lines = [f"l0: &a0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, depth):
        lines.append(f"l{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    lines.append(f"{where}: *a{depth - 1}")
    return "\n".join(lines) + "\n"


class JobCases:
    """Generates job-file cases; each knows whether it must be refused."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root, self.rng, self.cases, self.valid_full = root, rng, [], []
        root.mkdir(parents=True, exist_ok=True)
        self.file = root / "a-file.txt"
        self.file.write_text("not a directory")

    def add(self, kind: str, expect: str, text: str | bytes | Callable[[Path], str | bytes], slow: bool = False) -> None:
        n = len(self.cases)
        case_dir = self.root / f"job{n:04d}"
        path = case_dir / f"case{n:04d}.yaml"
        run_dir = case_dir / "run"

        def write() -> None:
            case_dir.mkdir(parents=True, exist_ok=True)
            content = text(run_dir) if callable(text) else text
            if isinstance(content, str):
                content = content.encode("utf-8", "surrogatepass")
            path.write_bytes(content)

        case = Case("job files", kind, expect, ["search", str(path), "--quiet", "--resume"], (path.name,), ACCEPT_CHEAP,
                    write, case_dir)
        self.cases.append(case)
        if expect == "valid" and not slow:
            self.valid_full.append(case)

    def data(self, kind: str, expect: str, edit: Callable[[dict], dict], slow: bool = False) -> None:
        self.add(kind, expect, lambda run_dir: dump(edit(base_job(str(run_dir)))), slow)

    def text(self, kind: str, expect: str, edit: Callable[[str], str | bytes], slow: bool = False) -> None:
        self.add(kind, expect, lambda run_dir: edit(dump(base_job(str(run_dir)))), slow)

    # ------------------------------------------------------------------------------------------
    def generate(self) -> list[Case]:
        for path, (ok, slow) in LEAVES.items():  # type changes and values, every leaf
            for value in GENERIC:
                if path == ("run_dir",) and type(value) is str and value:
                    value = value  # relative to the case's own directory: a fresh run directory
                self.data("type/value change", "valid" if ok(value) else "invalid", lambda d, p=path, v=value: _set(d, p, v),
                          slow or path == ("run_dir",))
        self.valid_values()
        self.missing_and_unknown()
        self.forms()
        self.yaml_level()
        self.bombs()
        self.junk()
        self.unicode()
        self.combined()
        return self.cases

    def valid_values(self) -> None:
        for name in DATASETS:
            self.data("valid value", "valid", lambda d, n=name: _set(d, ("evaluators", 0, "dataset"), n))
        for name in STRATEGIES:
            self.data("valid value", "valid", lambda d, n=name: _set(d, ("strategy",), n))
        for seed in (1, 7, 2**32 - 1):
            self.data("valid value", "valid", lambda d, s=seed: _set(d, ("seed",), s))
        for name in ("nb201 fpga", "Ümlaut-1", "run.v2", "a" * 100, "日本語", "x_y", "1"):
            self.data("valid value", "valid", lambda d, n=name: _set(d, ("name",), n))
        for bound in (4, 4.5, 100, 1e6):
            self.data("valid value", "valid", lambda d, b=bound: _set(d, ("constraints", 0, "max"), b))
        self.data("valid value", "valid", lambda d: _set(d, ("constraints", 0, "min"), 0.5))
        self.data("valid value", "valid", lambda d: _set(d, ("constraints",), []))
        self.data("valid value", "valid", lambda d: _set(d, ("budget",), {"evaluations": 2, "max_trials": 40}))
        self.data("valid value", "valid", lambda d: _set(d, ("budget",), 2))
        self.data("valid value", "valid", lambda d: _set(d, ("executor",), "inprocess"))
        self.data("valid value", "valid", lambda d: _set(d, ("executor",), {"kind": "inprocess", "address": "auto"}))
        self.data("valid value", "valid", lambda d: _set(d, ("space",), {"name": "nb201", "channels": 16}))
        self.data("valid value", "valid", lambda d: _set(d, ("evaluators", 0, "simulated_cost_s"), 0))
        self.data("valid value", "valid", lambda d: _set(d, ("evaluators", 1, "target_options"), {"missing": "nan"}), True)
        self.data("valid value", "valid", lambda d: _set(d, ("strategy",), {"name": "evolution", "population": 10, "sample_size": 3}))
        self.data("valid value", "valid", lambda d: _set(d, ("strategy",), {"name": "predictor", "n_initial": 2, "model": "gp"}))

    def missing_and_unknown(self) -> None:
        optional = {("name",), ("constraints",), ("strategy",), ("budget",), ("batch_size",), ("seed",), ("run_dir",), ("executor",),
                    ("evaluators", 0, "dataset"), ("evaluators", 1, "column"), ("objectives", 0, "direction"),
                    ("objectives", 1, "direction"), ("budget", "evaluations"), ("executor", "kind"), ("executor", "workers")}
        required = [("space",), ("evaluators",), ("objectives",), ("evaluators", 0, "kind"), ("evaluators", 1, "kind"),
                    ("evaluators", 1, "target"), ("objectives", 0, "metric"), ("objectives", 1, "metric"),
                    ("constraints", 0, "metric"), ("constraints", 0, "max"), ("strategy", "name")]
        for path in sorted(optional, key=str):
            slow = path in {("budget",), ("budget", "evaluations"), ("run_dir",)}
            self.data("missing field", "valid", lambda d, p=path: _delete(d, p), slow)
        for path in required:
            self.data("missing field", "invalid", lambda d, p=path: _delete(d, p))
        levels = [(), ("evaluators", 0), ("evaluators", 1), ("objectives", 0), ("constraints", 0), ("strategy",), ("budget",),
                  ("executor",)]
        for level in levels:
            for key in ("colour", "Seed", "seeds", "name " if level else "Name", "évaluateurs", "__class__"):
                if key == "name " and level == ():
                    continue
                self.data("unknown field", "invalid", lambda d, lv=level, k=key: _set(d, lv + (k,), 1))

    def forms(self) -> None:
        bad = {
            ("space",): [{"name": "nb202"}, {"channels": 16}, {"name": "nb201", "channels": "16"}, {"name": "nb201", "channels": True},
                         {"name": "nb201", "chanels": 16}, {"name": "nb201", "channels": 1.5}, {"name": "nb201", "channels": 0},
                         {"name": 7}, ["nb201"]],
            ("strategy",): [{"name": "evolution", "population": "10"}, {"name": "evolution", "population": 1},
                            {"name": "random", "seed": 1}, {"name": "evolution", "populaton": 10}, {"population": 10},
                            {"name": "tpe", "n_startup_trials": 1.5}, {"name": "evolution", "crossover_prob": 2.0},
                            {"name": "predictor", "model": "svm"}, {"name": "predictor", "acquisition": 3},
                            {"name": "random", "space": "nb201"}, {"name": "random", "oracle": "os:system"}, "annealing"],
            ("budget",): [0, -1, "2", 2.0, True, None, {"evaluations": 0}, {"evaluations": 2, "max_trials": 1},
                          {"evaluations": 2, "max_trials": 2.5}, {"evals": 2}, 10**8, 10**30, {"evaluations": 2, "max_trials": 10**10}],
            ("executor",): ["slurm", 5, None, {"kind": "ray", "workers": 0}, {"kind": "inprocess", "workers": True},
                            {"kind": "ray", "address": 7}, {"kind": "ray", "address": ""}, {"kind": "inprocess", "colour": 1},
                            {"workers": 2.5}, ["inprocess"]],
            ("constraints",): [None, "latency", {"metric": "latency", "max": 4}, [{"metric": "latency"}],
                               [{"metric": "latency", "max": 2.0, "min": 3.0}], [{"metric": "energy", "max": 4}], [4.0],
                               [{"metric": "latency", "max": None, "min": None}]],
            ("objectives",): [[], None, "accuracy", [{"metric": "accuracy"}, {"metric": "accuracy"}], [{"direction": "maximize"}],
                              [{"metric": "energy"}], {"metric": "accuracy"}],
            ("evaluators",): [[], None, "nb201-accuracy", [{}], [5], {"kind": "nb201-accuracy"},
                              [{"kind": "nb201-accuracy"}, {"kind": "latency"}], [{"kind": "nb201-accuracy", "dataset": "cifar10"}]],
            ("evaluators", 0): [{"kind": "nb201-accuracy", "path": 5}, {"kind": "nb201-accuracy", "path": "/no/such/table.json.gz"},
                                {"kind": "nb201-accuracy", "simulated_cost_s": -1}, {"kind": "nb201-accuracy", "simulated_cost_s": "0"},
                                {"kind": "nb201-accuracy", "metric": ""}, {"kind": "nb201-accuracy", "metric": 5},
                                {"kind": "nb201-accuracy", "dataset": {"callable": "os:system", "kwargs": {"command": "touch MARKER"}}}],
            ("evaluators", 1): [{"kind": "latency", "target": "nb201-table", "column": "help_fpga", "cheap": "yes"},
                                {"kind": "latency", "target": "nb201-table", "target_options": "column=help_fpga"},
                                {"kind": "latency", "target": "nb201-table", "target_options": {"column": "help_fpga"}, "column": "help_fpga"},
                                {"kind": "latency", "target": "nb201-table", "missing": "guess"},
                                {"kind": "latency", "target": "nb201-table", "path": self.file.as_posix()},
                                {"kind": "latency", "target": "codegen-cpu", "cc": "touch MARKER"},
                                {"kind": "latency", "target": "codegen-cpu", "cache_dir": "."},
                                {"kind": "latency", "target": "ort-cpu", "threads": 0}],
            ("run_dir",): [self.file.as_posix(), self.file.as_posix() + "/run", "x\0y", "\ud800", "a" * 5000],
        }
        for path, values in bad.items():
            for value in values:
                self.data("semantic form", "invalid", lambda d, p=path, v=value: _set(d, p, v))

    def yaml_level(self) -> None:
        def rep(old: str, new: str) -> Callable[[str], str]:
            def edit(t: str) -> str:
                assert old in t, old
                return t.replace(old, new, 1)
            return edit

        invalid = [
            rep("seed: 0", "seed: 0\nseed: 1"), rep("batch_size: 1", "batch_size: 1\nbatch_size: 1"),
            rep("name: fuzz", "name: fuzz\nname: fuzz"), rep("{kind: nb201-accuracy,", "{kind: nb201-accuracy, kind: nb201-accuracy,"),
            rep("{metric: accuracy,", "{metric: accuracy, metric: accuracy,"), rep("{metric: latency, max:", "{metric: latency, metric: latency, max:"),
            rep("{name: random}", "{name: random, name: random}"), rep("{evaluations: 2}", "{evaluations: 2, evaluations: 2}"),
            rep("{kind: inprocess,", "{kind: inprocess, kind: inprocess,"), rep("column: help_fpga", "column: help_fpga, column: help_fpga"),
            rep("seed: 0", "seed: !!python/object/apply:os.system ['touch MARKER']"),
            rep("seed: 0", "seed: !!python/name:os.system"), rep("seed: 0", "seed: !!binary aGVsbG8="),
            rep("seed: 0", "seed: !!set {a, b}"), rep("seed: 0", "seed: !!timestamp 2020-01-01"), rep("seed: 0", "seed: !custom 0"),
            rep("seed: 0", "seed: !!str 0"), rep("seed: 0", "seed: !!omap [a: 1]"), rep("name: fuzz", "name: !!python/str fuzz"),
            rep("seed: 0", "seed: yes"), rep("seed: 0", "seed: on"), rep("seed: 0", "seed: ~"), rep("seed: 0", "seed: 0.0"),
            rep("seed: 0", "seed: 1e3"), rep("seed: 0", "seed: .NaN"), rep("seed: 0", "seed: " + "9" * 5000),
            rep("seed: 0", "seed: " + "9" * 400), rep("batch_size: 1", "batch_size: 0b0"),
            rep("name: fuzz", "name: no"), rep("name: fuzz", "on: fuzz"), rep("name: fuzz", "1: fuzz"), rep("name: fuzz", "? [a]\n: fuzz"),
            rep("seed: 0", "<<: {seed: 0}"), rep("seed: 0", "seed: 0\n---\nseed: 1"), rep("seed: 0", "seed: 0\n..."),
            rep("name: fuzz", '"name": "fuzz\\u0000"'), rep("name: fuzz", '"name": "\\ud800"'),
            rep("max: 4.0", "max: !!float .inf"), rep("max: 4.0", "max: 4.0.0"), rep("max: 4.0", "max: '4'"),
            rep("max: 4.0", "max: 1e1"), rep("seed: 0", "seed: 0o17"), rep("dataset: cifar10", "dataset: &d cifar10\n  extra: *d"),
            lambda t: t + "\t\n", lambda t: "%YAML 1.1\n%TAG ! tag:evil.com,2000:\n---\n" + t.replace("seed: 0", "seed: !x 0"),
            lambda t: "---\n...\n", lambda t: "", lambda t: "# only a comment\n", lambda t: "- " + t.replace("\n", "\n  "),
            lambda t: "just a string", lambda t: "42", lambda t: "[" + t, lambda t: t[: t.index("objectives")],
        ]
        valid = [
            rep("seed: 0", "seed: !!int '3'"), rep("seed: 0", "seed: 0x10"), rep("seed: 0", "seed: 017"), rep("seed: 0", "seed: 1_000"),
            rep("seed: 0", "seed: 1:30"), rep("seed: 0", "seed: +5"), rep("max: 4.0", "max: !!float '4'"), rep("max: 4.0", "max: 4"),
            rep("max: 4.0", "max: 4.0e+0"), rep("name: fuzz", "name: 'fuzz'"), rep("name: fuzz", '"name": "fu\\x7az"'),
            rep("seed: 0", "seed: &s 2"), rep("max: 4.0", "max: 1_000.0_0_"), rep("name: fuzz", "name: 2020-01-01"),
            rep("batch_size: 1", "batch_size: &one 1") , lambda t: t.replace("seed: 0", "seed: 3  # a comment"),
            lambda t: "\ufeff" + t, lambda t: t.replace("\n", "\r\n"), lambda t: "%YAML 1.1\n---\n" + t, lambda t: "---\n" + t + "...\n",
            lambda t: t + "\n\n\n", lambda t: "# comment\n" + t,
        ]
        for edit in invalid:
            self.text("yaml syntax/tags/duplicates", "invalid", edit)
        for edit in valid:
            self.text("yaml syntax/tags/duplicates", "valid", edit)
        self.text("yaml alias (valid)", "valid",
                  lambda t: t.replace("{evaluations: 2}", "{evaluations: &two 2}").replace("batch_size: 1", "batch_size: *two"))
        self.text("yaml alias (valid)", "valid",
                  lambda t: t.replace("objectives:", "objectives: &objs").replace("constraints:", "x: 0\nconstraints:").replace("x: 0\n", ""))

    def bombs(self) -> None:
        for width in (3, 5, 9, 10):
            for depth in (2, 3, 5, 7, 9):
                for where in ("evaluators", "lol", "name"):
                    # the bomb's alias takes the place of a field (the base's own field is renamed away)
                    self.text("alias bomb", "invalid",
                              lambda t, w=width, d=depth, wh=where: alias_bomb(w, d, wh) + re.sub(rf"^{wh}:", f"x_{wh}:", t, count=1, flags=re.M))
        for text in ("a: &a [*a]", "a: &a {b: *a}", "a: &a [1, [2, *a]]", "evaluators: &e [*e]", "name: *undefined"):
            self.text("recursive/undefined alias", "invalid", lambda t, x=text: x + "\n" + t)
        for depth in (5, 39, 41, 1000, 100_000):
            for where in ("seed", "evaluators", "name"):
                self.text("deep nesting", "invalid", lambda t, d=depth, w=where: re.sub(rf"^{w}:.*$", f"{w}: " + "[" * d + "]" * d, t, count=1, flags=re.M))
            self.text("deep nesting", "invalid", lambda t, d=depth: t.replace("name: fuzz", "name: " + "{a: " * d + "1" + "}" * d))
        for n in (101, 1_000, 10_001, 100_000, 900_000, 2_000_000):
            self.text("name/string bomb", "invalid", lambda t, n=n: t.replace("name: fuzz", "name: " + "x" * n))
            self.text("name/string bomb", "invalid", lambda t, n=n: t.replace("dataset: cifar10", "dataset: " + "c" * n))
        self.text("name/string bomb", "valid", lambda t: t.replace("name: fuzz", "name: " + "x" * 100))
        self.text("name/string bomb", "invalid", lambda t: t.replace("name: fuzz", "name: " + "x/" * 40))
        self.text("name/string bomb", "invalid", lambda t: t + "evaluators2: [" + ", ".join(["{kind: latency}"] * 70) + "]\n")
        self.data("name/string bomb", "invalid", lambda d: _set(d, ("evaluators",), d["evaluators"] * 40))

    def junk(self) -> None:
        rng = self.rng
        bad_bytes = [bytes([b]) for b in (*range(0, 9), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F)] + [b"\x80", b"\xc3", b"\xff", b"\xfe\xff",
                                                                                                  b"\xed\xa0\x80"]
        for i in range(60):
            size = rng.choice([1, 7, 64, 767, 4096, 50_000])
            self.add("junk bytes", "invalid", bytes(rng.getrandbits(8) for _ in range(size)) if size < 5000 else os.urandom(size))
        for i in range(90):
            junk = rng.choice(bad_bytes)

            def insert(run_dir: Path, junk=junk, frac=rng.random()) -> bytes:
                raw = dump(base_job(str(run_dir))).encode()
                at = int(frac * len(raw))
                return raw[:at] + junk + raw[at:]

            self.add("junk inserted", "invalid", insert)
        for i in range(60):
            def cut(run_dir: Path, frac=rng.random()) -> bytes:
                raw = dump(base_job(str(run_dir))).encode()
                end = raw.index(b"objectives")
                return raw[: int(frac * end)]

            self.add("truncated", "invalid", cut)
        self.add("encoding", "invalid", lambda run_dir: dump(base_job(str(run_dir))).encode("utf-16"))
        self.add("encoding", "invalid", lambda run_dir: dump(base_job(str(run_dir))).encode("utf-32"))
        self.add("encoding", "invalid", lambda run_dir: dump(base_job(str(run_dir))).replace("fuzz", "fü").encode("latin-1"))
        self.add("encoding", "invalid", lambda run_dir: b"\x1f\x8b\x08\x00" + os.urandom(200))  # a gzip header
        self.add("encoding", "invalid", lambda run_dir: b"\x7fELF" + os.urandom(300))
        self.add("encoding", "invalid", lambda run_dir: b"SQLite format 3\x00" + os.urandom(300))

    def unicode(self) -> None:
        names_valid = ["Ωmega", "naïve-run", "数据", "x١٢", "ﬁ", "Ａ"]
        names_invalid = ["\u202eevil", "🙂", "a\u0000b", "\u200b", "a\u2028b", "tab\tname", "new\nline", "-x", ".hidden", "_x", "x ",
                         " x", "a/b", "a\\b", "..", "\U0001F4A9" * 30]
        for n in names_valid:
            self.data("unicode", "valid", lambda d, n=n: _set(d, ("name",), n))
        for n in names_invalid:
            self.data("unicode", "invalid", lambda d, n=n: _set(d, ("name",), n))
        for value in ["cifar10\u200b", "ｃｉｆａｒ10", "CIFAR10", "cifar1０", "🙂"]:
            self.data("unicode", "invalid", lambda d, v=value: _set(d, ("evaluators", 0, "dataset"), v))
        for value in ["latency\u0301", "lаtency", "Latency"]:  # a combining mark, a Cyrillic 'а', case
            self.data("unicode", "invalid", lambda d, v=value: _set(d, ("objectives", 1, "metric"), v))
        for value in ["runs/数据", "runs/🙂", "runs/ä b"]:
            self.data("unicode", "valid", lambda d, v=value: _set(d, ("run_dir",), v), True)

    def combined(self) -> None:
        invalid_edits = [
            lambda d: _set(d, ("seed",), "1"), lambda d: _set(d, ("batch_size",), True), lambda d: _set(d, ("constraints", 0, "max"), "4"),
            lambda d: _set(d, ("objectives", 0, "direction"), "up"), lambda d: _set(d, ("evaluators", 0, "dataset"), 10),
            lambda d: _set(d, ("strategy",), {"name": "random", "seed": 2}), lambda d: _set(d, ("budget",), {"evaluations": "2"}),
            lambda d: _delete(d, ("space",)), lambda d: _set(d, ("colour",), "red"), lambda d: _set(d, ("name",), ""),
        ]
        for i in range(60):
            a, b = self.rng.sample(invalid_edits, 2)
            self.data("combined", "invalid", lambda d, a=a, b=b: b(a(d)))


# ================================================================================= stores
def store_cases(root: Path, base_run: Path, job_file: Path, rng: random.Random, marker: Path) -> list[Case]:
    cases: list[Case] = []
    data = (base_run / "trials.db").read_bytes()

    def case(kind: str, expect: str, make: Callable[[Path], None], resume: bool = False) -> None:
        run = root / f"store{len(cases):04d}"

        def write() -> None:
            shutil.copytree(base_run, run)
            for extra in run.glob("trials.db-*"):
                extra.unlink()
            make(run / "trials.db")

        argv = ["search", str(job_file), "--quiet", "--resume", "--run-dir", str(run)] if resume else ["results", "show", str(run)]
        cases.append(Case("stores (trials.db)", kind, expect, argv, ("trials.db", str(run), "trial store", "run directory"), None, write))

    def raw(content: bytes) -> Callable[[Path], None]:
        return lambda db: db.write_bytes(content)

    def sql(*statements: str, args: tuple = ()) -> Callable[[Path], None]:
        def make(db: Path) -> None:
            with contextlib.closing(sqlite3.connect(db)) as con:
                for s in statements:
                    con.execute(s, args if "?" in s else ())
                con.commit()
        return make

    for cut in sorted(rng.sample(range(1, len(data)), 30)) + [0, 16, 99, 100, 512]:
        case("truncated", "invalid" if cut < 512 else "either", raw(data[:cut]))
    for _ in range(45):
        pos, bit = rng.randrange(len(data)), rng.randrange(8)
        flipped = bytearray(data)
        flipped[pos] ^= 1 << bit
        case("bit flip", "either", raw(bytes(flipped)))
    for _ in range(8):
        case("bit flips (many)", "either", raw(bytes(b ^ (1 << rng.randrange(8)) if rng.random() < 0.01 else b for b in data)))
    for size in (1, 100, 4096, 20_000):
        case("garbage", "invalid", raw(os.urandom(size)))
        case("garbage", "invalid", raw(b"SQLite format 3\x00" + os.urandom(size)))
    case("garbage", "invalid", raw(b"{\"not\": \"a database\"}"))
    schema_breaks = [
        ("DROP TABLE trials",), ("DROP TABLE meta",), ("ALTER TABLE trials RENAME TO t2",), ("ALTER TABLE meta RENAME TO m2",),
        ("ALTER TABLE trials DROP COLUMN metrics",), ("ALTER TABLE trials DROP COLUMN candidate",),
        ("UPDATE meta SET value = '99' WHERE key = 'schema_version'",), ("UPDATE meta SET value = 'x' WHERE key = 'schema_version'",),
        ("DELETE FROM meta WHERE key = 'job'",), ("UPDATE meta SET value = X'00FF' WHERE key = 'job'",),
        ("CREATE TABLE evil (x)", "DROP TABLE trials", "ALTER TABLE evil RENAME TO trials"),
    ]
    for statements in schema_breaks:
        case("wrong schema", "invalid", sql(*statements))
    row_damage = [
        "UPDATE trials SET candidate = '{bad'", "UPDATE trials SET candidate = '[]'", "UPDATE trials SET metrics = '[1]'",
        "UPDATE trials SET metrics = '{\"accuracy\": \"x\"}'", "UPDATE trials SET metrics = 'NaN'", "UPDATE trials SET status = 'weird'",
        "UPDATE trials SET started = 'yesterday'", "UPDATE trials SET number = number + 1000",
        "UPDATE trials SET metrics = '" + "[" * 50_000 + "]" * 50_000 + "'",
        "UPDATE trials SET candidate = '{\"schema\": 1, \"space\": \"nb201\", \"arch\": {\"edge1<-0\": [[[1]]]}, \"compression\": []}'",
        "INSERT INTO trials (number, candidate_id, candidate, status) VALUES (999, 'x', '{}', 'complete')",
    ]
    for statement in row_damage:
        case("damaged rows", "either", sql(statement))
    hostile_jobs = [
        {"callable": "os:system", "kwargs": {"command": f"touch {marker}"}}, "os:system", "builtins:exec",
        {"name": "os:system", "kwargs": {"command": f"touch {marker}"}},
    ]
    stored = json.loads(json.dumps(base_job(str(base_run))))
    for dataset in hostile_jobs:
        job = _set(stored, ("evaluators", 0, "dataset"), dataset)
        case("hostile stored job", "either", sql("UPDATE meta SET value = ? WHERE key = 'job'", args=(json.dumps(job),)))
        job = {"name": "hostile", "space": {"name": "mobilenet", **TINY}, "objectives": stored["objectives"], "evaluators": [
            {"kind": "supernet-accuracy", "checkpoint": str(root / "no.safetensors"), "dataset": dataset}, stored["evaluators"][1]]}
        case("hostile stored job", "either", sql("UPDATE meta SET value = ? WHERE key = 'job'", args=(json.dumps(job),)))
    stored_invalid = [
        "[" * 100_000 + "]" * 100_000, '{"name": "x", "name": "y"}', '{"space": NaN}', "null", "[]", "\"nb201\"", "{bad json",
        json.dumps(_set(stored, ("seed",), "1")), json.dumps(_set(stored, ("constraints", 0, "max"), "4.0")),
        json.dumps(_set(stored, ("name",), "x" * 5000)), json.dumps(_set(stored, ("colour",), 1)), json.dumps(_delete(stored, ("space",))),
        json.dumps(_set(stored, ("strategy",), {"name": "random", "seed": 1})),
        json.dumps(_set(stored, ("executor",), {"kind": "ray", "address": 7})),
    ]
    for text in stored_invalid:
        case("damaged stored job", "invalid", sql("UPDATE meta SET value = ? WHERE key = 'job'", args=(text,)))
    for _ in range(12):  # the resume path reads the store too
        pos, bit = rng.randrange(len(data)), rng.randrange(8)
        flipped = bytearray(data)
        flipped[pos] ^= 1 << bit
        case("bit flip (resume)", "either", raw(bytes(flipped)), resume=True)
    case("truncated (resume)", "invalid", raw(data[:200]), resume=True)
    case("garbage (resume)", "invalid", raw(os.urandom(3000)), resume=True)
    # A store that lost its trials table, or its job fingerprint, is resumed as a new run today
    # (TrialStore recreates what is missing; search/store.py): these must at least end cleanly.
    case("wrong schema (resume)", "either", sql("DROP TABLE trials"), resume=True)
    case("wrong schema (resume)", "either", sql("DELETE FROM meta"), resume=True)
    case("untouched", "valid", lambda db: None)
    case("untouched (resume)", "valid", lambda db: None, resume=True)
    return cases


# ================================================================================= checkpoints
def checkpoint_cases(root: Path, rng: random.Random, marker: Path) -> list[Case]:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from tritune.spaces import MobileNetSpace
    from tritune.spaces.mobilenet.supernet import MobileNetSupernet
    from tritune.spaces.checkpoint import save_checkpoint
    from tritune.spaces.checkpoint import tensors_checksum

    base = save_checkpoint(root / "base.safetensors", MobileNetSupernet(MobileNetSpace(**TINY)), step=5,
                           extra={"data": {"callable": "os:system", "kwargs": {"command": f"touch {marker}"}}})
    data = base.read_bytes()
    with safe_open(str(base), framework="pt") as fh:
        header = json.loads(fh.metadata()["tritune"])
    tensors = load_file(str(base))
    (header_len,) = __import__("struct").unpack("<Q", data[:8])
    cases: list[Case] = []

    def case(kind: str, expect: str, make: Callable[[Path], None]) -> None:
        n = len(cases)
        path = root / f"ck{n:04d}.safetensors"
        job_path = root / f"ckjob{n:04d}.yaml"
        job = {"name": f"ck{n}", "space": {"name": "mobilenet", **TINY}, "objectives": [{"metric": "accuracy", "direction": "maximize"}],
               "evaluators": [{"kind": "supernet-accuracy", "checkpoint": str(path), "dataset": "digits", "calib_batches": 1,
                               "calib_batch_size": 8, "eval_batch_size": 64}],
               "budget": 1, "batch_size": 1, "run_dir": str(root / f"ckrun{n:04d}")}

        def write() -> None:
            make(path)
            job_path.write_text(dump(job))

        cases.append(Case("checkpoints", kind, expect, ["search", str(job_path), "--quiet", "--resume"], (path.name,), ACCEPT_CHEAP, write))

    def raw(content: bytes) -> Callable[[Path], None]:
        return lambda p: p.write_bytes(content)

    def rewrite(h: dict, t: dict, reseal: bool = False) -> Callable[[Path], None]:
        def make(p: Path) -> None:
            hh = dict(h)
            if reseal:
                hh["tensors_sha256"] = tensors_checksum(t)
            save_file(t, str(p), metadata={"tritune": json.dumps(hh)})
        return make

    def first(pred) -> str:
        return next(k for k in sorted(tensors) if pred(k, tensors[k]))

    for cut in sorted(rng.sample(range(1, len(data)), 20)) + [0, 8, 9, 8 + header_len]:
        case("truncated", "invalid", raw(data[:cut]))
    for _ in range(12):  # flips in the tensor bytes: the checksum refuses them
        pos, bit = rng.randrange(8 + header_len, len(data)), rng.randrange(8)
        flipped = bytearray(data)
        flipped[pos] ^= 1 << bit
        case("bit flip (tensors)", "invalid", raw(bytes(flipped)))
    for _ in range(8):  # flips in the header: anything may happen, but cleanly
        pos, bit = rng.randrange(0, 8 + header_len), rng.randrange(8)
        flipped = bytearray(data)
        flipped[pos] ^= 1 << bit
        case("bit flip (header)", "either", raw(bytes(flipped)))
    case("garbage", "invalid", raw(os.urandom(4096)))
    case("garbage", "invalid", raw(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}       "))
    case("garbage", "invalid", raw((10**12).to_bytes(8, "little") + b"{}"))
    for name in ("format", "schema", "space", "supernet", "step", "optimizer", "extra", "tensors_sha256"):
        case("header field missing", "invalid", rewrite({k: v for k, v in header.items() if k != name}, tensors))
    wrong_types = {"schema": "2", "space": "mobilenet", "supernet": [], "step": -1, "optimizer": 5, "extra": [], "format": "x",
                   "tensors_sha256": 5}
    for name, value in wrong_types.items():
        case("header field type", "invalid", rewrite({**header, name: value}, tensors))
    case("header field type", "invalid", rewrite({**header, "schema": 99}, tensors))
    case("header field type", "invalid", rewrite({**header, "space": {"name": "nb201", "config": {}}}, tensors))
    case("header field type", "invalid", rewrite({**header, "space": {"name": "mobilenet", "config": {**header["space"]["config"], "widths": "x"}}}, tensors))
    case("header field type", "invalid", rewrite({**header, "supernet": {**header["supernet"], "bn_eps": "x"}}, tensors))
    case("header field type", "invalid", rewrite({**header, "supernet": {**header["supernet"], "evil": 1}}, tensors))
    case("header field type", "invalid", rewrite({**header, "space": {"name": "os:system", "config": {"command": "touch MARKER"}}}, tensors))
    key = first(lambda k, v: k.startswith("model.") and v.is_floating_point() and v.numel() > 1)
    nan = {**tensors, key: torch.full_like(tensors[key], float("nan"))}
    inf = {**tensors, key: torch.full_like(tensors[key], float("inf"))}
    shape_key = first(lambda k, v: k.startswith("model.") and v.dim() >= 1 and v.shape[0] > 1)
    short = {**tensors, shape_key: tensors[shape_key][:-1].clone()}
    cast = {**tensors, key: tensors[key].double()}
    missing = {k: v for k, v in tensors.items() if k != key}
    extra = {**tensors, "model.evil": torch.zeros(3)}
    for kind, t in (("NaN weights", nan), ("inf weights", inf), ("tensor shape", short), ("tensor dtype", cast),
                    ("tensor missing", missing), ("tensor extra", extra)):
        case(kind, "invalid", rewrite(header, t))
        case(kind + " (checksum recomputed)", "invalid", rewrite(header, t, reseal=True))
    case("rng state", "valid", rewrite(header, {**tensors, "rng.torch": torch.zeros(3, dtype=torch.uint8)}, reseal=True))
    case("schema 1 without checksum", "valid", rewrite({**{k: v for k, v in header.items() if k != "tensors_sha256"}, "schema": 1}, tensors))
    case("extra names hostile data (the job's dataset wins)", "valid", raw(data))
    case("untouched", "valid", raw(data))
    return cases


# ================================================================================= predictor files
def predictor_cases(root: Path, rng: random.Random) -> list[Case]:
    from tritune.predictors import FewShotLatencyPredictor
    from tritune.predictors.io import KEY_ENV, seal
    from tritune.targets import NB201Table, NB201TableTarget

    table = NB201Table()
    os.environ.pop(KEY_ENV, None)
    predictor = FewShotLatencyPredictor.pretrain(table, [c for c in table.latency_columns if c != "help_pixel3"])
    design = predictor.design(12)
    predictor.fit(design, table.column("help_pixel3")[design], target=NB201TableTarget("help_pixel3"))
    base = predictor.save(root / "base.json")
    text = base.read_text()
    doc = json.loads(text)
    os.environ[KEY_ENV] = "fuzz key of enough bytes"
    signed_text = predictor.save(root / "signed.json").read_text()
    os.environ.pop(KEY_ENV)
    cases: list[Case] = []

    def unverified(out: str) -> bool:
        return "unverified" in out and "measured error" not in out

    def case(kind: str, expect: str, content: str | bytes, env: dict | None = None, check=unverified) -> None:
        path = root / f"pred{len(cases):04d}.json"

        def write() -> None:
            path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))

        argv = ["predict", "--target", "nb201-table", "--target-option", "column=help_pixel3", "--space", "nb201", "--sample", "2",
                "--predictor", str(path)]
        cases.append(Case("predictor files", kind, expect, argv, (path.name,), None, write, None, dict(env or {}), check))

    def edited(edit: Callable[[dict], None], reseal: bool = True) -> str:
        d = json.loads(text)
        edit(d)
        if reseal:
            seal(d)
        return json.dumps(d)

    for cut in sorted(rng.sample(range(0, len(text)), 15)):
        case("truncated", "invalid", text[:cut])
    for _ in range(25):
        raw = bytearray(text.encode())
        pos, bit = rng.randrange(len(raw)), rng.randrange(8)
        raw[pos] ^= 1 << bit
        try:
            same = json.loads(bytes(raw).decode()) == doc
        except (ValueError, UnicodeDecodeError):
            same = False
        case("bit flip", "valid" if same else "invalid", bytes(raw))
    case("garbage", "invalid", os.urandom(500))
    case("garbage", "invalid", "[" * 100_000 + "]" * 100_000)
    case("garbage", "invalid", text.replace('"format"', '"format": 1, "format"', 1))
    case("garbage", "invalid", text.replace('"schema": 2', '"schema": NaN', 1))
    case("garbage", "invalid", text.replace('"schema": 2', '"schema": 1e400', 1))
    case("re-sealed forgery (no key: loads, error shown as unverified)", "valid", edited(lambda d: d["error"].update(mape=0.5, within_10=0.99)))
    case("re-sealed forgery (no key: loads, error shown as unverified)", "valid", edited(lambda d: d["error"].update(mape="0.5")))
    case("re-sealed forgery", "invalid", edited(lambda d: d.update(error=[1])))
    for name in ("format", "schema", "kind", "target_fingerprint", "metric", "params", "error"):
        case("field missing (re-sealed)", "invalid", edited(lambda d, n=name: d.pop(n)))
    case("field missing", "invalid", edited(lambda d: d.pop("checksum"), reseal=False))
    for name, value in (("kind", 5), ("kind", "crystal-ball"), ("kind", "os:system"), ("metric", 5), ("params", []),
                        ("target_fingerprint", "x"), ("schema", 3), ("schema", "2"), ("schema", True), ("format", "pickle")):
        case("field type (re-sealed)", "invalid", edited(lambda d, n=name, v=value: d.update({n: v})))
    case("another target (re-sealed)", "invalid", edited(lambda d: d["target_fingerprint"].update(column="help_fpga")))
    for key in list(doc["params"])[:12]:
        case("params damaged (re-sealed)", "either", edited(lambda d, k=key: d["params"].pop(k)))
        case("params damaged (re-sealed)", "either", edited(lambda d, k=key: d["params"].update({k: "x"})))
    case("unknown field (re-sealed)", "invalid", edited(lambda d: d.update(colour=1)))
    case("schema 1 file", "valid", edited(lambda d: (d.pop("checksum"), d.update(schema=1), d.update(sha256=__import__(
        "tritune.predictors.io", fromlist=["digest"]).digest(d))), reseal=False))
    case("untouched", "valid", text)
    key_env = {"TRITUNE_PREDICTOR_KEY": "fuzz key of enough bytes"}

    def authenticated(out: str) -> bool:
        return "authenticated file" in out and "unverified" not in out

    case("key set, file signed with it", "valid", signed_text, key_env, authenticated)
    case("key set, file without HMAC", "invalid", text, key_env)
    signed = json.loads(signed_text)
    signed["error"]["mape"] = 0.5
    signed["checksum"] = seal({k: v for k, v in signed.items()})["checksum"]
    case("key set, signed file edited and re-checksummed", "invalid", json.dumps(signed), key_env)
    case("key set, another key", "invalid", signed_text, {"TRITUNE_PREDICTOR_KEY": "another key of enough bytes"})
    case("key too short", "invalid", signed_text, {"TRITUNE_PREDICTOR_KEY": "short"})
    return cases


# ================================================================================= the test
def _table(results: list[Result]) -> str:
    """The counts per input family as a markdown table."""
    families = list(dict.fromkeys(r.case.family for r in results))
    rows = [(f, collections.Counter(r.outcome for r in results if r.case.family == f)) for f in families]
    rows.append(("all", collections.Counter(r.outcome for r in results)))
    head = ["input", "cases", *OUTCOMES]
    widths = [max(len(head[0]), *(len(f) for f, _ in rows)), *(max(5, len(h)) for h in head[1:])]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"  # noqa: E731
    out = [line(head), "|" + "|".join(("-" * (w + 1) + ":") if i else "-" * (w + 2) for i, w in enumerate(widths)) + "|"]
    out += [line([name, sum(c.values()), *(c.get(o, 0) for o in OUTCOMES)]) for name, c in rows]
    return "\n".join(out)


def test_fuzzed_inputs_end_cleanly(tmp_path_factory):
    rng = random.Random(19)
    root = tmp_path_factory.mktemp("fuzz")
    marker = root / "MARKER"
    os.environ.pop("TRITUNE_PREDICTOR_KEY", None)

    jobs = JobCases(root / "jobs", rng)
    job_cases = jobs.generate()
    full = rng.sample(jobs.valid_full, min(12, len(jobs.valid_full)))
    for c in full:  # these run a whole search (budget 2) instead of stopping after validation
        c.argv, c.accept, c.kind = [a for a in c.argv if a != "--resume"], None, c.kind + " (full run)"

    base_dir = root / "base"
    base_dir.mkdir()
    base_job_file = base_dir / "job.yaml"
    base_job_file.write_text(dump(base_job(str(base_dir / "run")) | {"budget": {"evaluations": 4}, "batch_size": 2}))
    assert cli_main(["search", str(base_job_file), "--quiet"]) == 0

    (root / "stores").mkdir()
    (root / "checkpoints").mkdir()
    (root / "predictors").mkdir()
    cases = (job_cases + store_cases(root / "stores", base_dir / "run", base_job_file, rng, marker)
             + checkpoint_cases(root / "checkpoints", rng, marker) + predictor_cases(root / "predictors", rng))
    # every hostile command in a generated input touches the marker; make them all point at it
    for c in cases:
        c.argv = [a.replace("touch MARKER", f"touch {marker}") for a in c.argv]

    results = [run_case(c, marker) for c in cases]
    table = _table(results)
    print("\n" + table)
    n_jobs = sum(r.case.family == "job files" for r in results)
    n_other = len(results) - n_jobs
    bad = [r for r in results if r.outcome not in ("clean error", "correctly accepted")]
    detail = "\n".join(f"[{r.outcome}] {r.case.family} / {r.case.kind} / {r.case.argv[1:3]}: {r.detail[-600:]}" for r in bad[:40])
    assert n_jobs >= 1000 and n_other >= 200, (n_jobs, n_other)
    assert not bad, f"{len(bad)} cases did not end cleanly:\n{detail}\n{table}"
    assert not marker.exists()
    per_kind = collections.Counter((r.case.family, r.outcome) for r in results)
    assert per_kind[("job files", "correctly accepted")] >= 100 and per_kind[("job files", "clean error")] >= 800
