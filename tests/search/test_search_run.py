"""End-to-end search runs on the embedded NAS-Bench-201 table: store, resume, kill, CLI, job errors."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tritune.cli.main import main as cli_main
from tritune.search.job import Job, JobError
from tritune.search.run import run_search
from tritune.search.store import TrialStore

REPO = Path(__file__).resolve().parents[2]


def job_dict(tmp_path: Path, **overrides) -> dict:
    data = {
        "name": "t",
        "space": "nb201",
        "evaluators": [
            {"kind": "nb201-accuracy", "dataset": "cifar10"},
            {"kind": "latency", "target": "nb201-table", "column": "help_fpga"},
        ],
        "objectives": [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency", "direction": "minimize"}],
        "constraints": [{"metric": "latency", "max": 4.0}],
        "strategy": {"name": "evolution", "population": 10, "sample_size": 4},
        "budget": {"evaluations": 30},
        "batch_size": 3,
        "seed": 7,
        "run_dir": str(tmp_path / "run"),
    }
    data.update(overrides)
    return data


def trial_sequence(records):
    return [(r.number, r.candidate.id, r.status) for r in records]


def test_run_writes_outputs_and_respects_constraint(tmp_path):
    result = run_search(Job.from_dict(job_dict(tmp_path)), progress=False)
    assert result.evaluations == 30
    completed = [r for r in result.records if r.status == "complete"]
    assert len(completed) == 30
    assert all(r.metrics["latency"] <= 4.0 for r in completed)
    assert all(r.status in ("complete", "infeasible") for r in result.records)
    for name in ("trials.csv", "pareto.json", "pareto.png", "trials.db"):
        assert (result.run_dir / name).stat().st_size > 0
    doc = json.loads((result.run_dir / "pareto.json").read_text())
    assert [f["number"] for f in doc["front"]] == [r.number for r in result.front]
    assert doc["knee"] in [r.number for r in result.front]
    # the front really is non-dominated among completed trials
    for f in result.front:
        assert not any(
            o.metrics["accuracy"] >= f.metrics["accuracy"] and o.metrics["latency"] <= f.metrics["latency"]
            and (o.metrics["accuracy"], o.metrics["latency"]) != (f.metrics["accuracy"], f.metrics["latency"])
            for o in completed
        )


def test_same_seed_same_trials_and_refuses_to_overwrite(tmp_path):
    a = run_search(Job.from_dict(job_dict(tmp_path / "a")), progress=False)
    b = run_search(Job.from_dict(job_dict(tmp_path / "b")), progress=False)
    assert trial_sequence(a.records) == trial_sequence(b.records)
    with pytest.raises(JobError, match="--resume"):
        run_search(Job.from_dict(job_dict(tmp_path / "a")), progress=False)


def test_resume_with_changed_job_is_refused(tmp_path):
    run_search(Job.from_dict(job_dict(tmp_path)), progress=False)
    with pytest.raises(JobError, match="different job"):
        run_search(Job.from_dict(job_dict(tmp_path, seed=8)), resume=True, progress=False)


def test_resume_extends_a_finished_run_without_rerunning(tmp_path):
    first = run_search(Job.from_dict(job_dict(tmp_path)), progress=False)
    again = run_search(Job.from_dict(job_dict(tmp_path)), resume=True, progress=False)
    assert again.replayed == len(first.records)
    assert trial_sequence(again.records) == trial_sequence(first.records)
    assert [r.finished for r in again.records] == [r.finished for r in first.records]  # nothing re-ran


def _slow_job(tmp_path: Path) -> Path:
    data = job_dict(tmp_path, budget={"evaluations": 40}, strategy={"name": "evolution", "population": 8, "sample_size": 3})
    data["evaluators"][0]["simulated_cost_s"] = 0.05
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _count_complete(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(str(db), timeout=1.0)
        try:
            return con.execute("SELECT COUNT(*) FROM trials WHERE status = 'complete'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0


def test_sigkill_mid_run_then_resume_loses_and_repeats_nothing(tmp_path):
    job_path = _slow_job(tmp_path)
    db = tmp_path / "run" / "trials.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tritune.cli.main", "search", str(job_path), "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while _count_complete(db) < 12 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, f"the search ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    with TrialStore(db) as store:
        before = {r.number: r for r in store.all() if r.status != "running"}
    assert 12 <= sum(r.status == "complete" for r in before.values()) < 40

    rc = subprocess.run([sys.executable, "-m", "tritune.cli.main", "search", str(job_path), "--resume", "--quiet"], env=env,
                        capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr[-2000:]
    with TrialStore(db) as store:
        after = {r.number: r for r in store.all()}
    for number, record in before.items():  # nothing lost, nothing re-run
        assert after[number].candidate == record.candidate
        assert after[number].metrics == record.metrics
        assert after[number].finished == record.finished
    assert sum(r.status == "complete" for r in after.values()) == 40
    assert sorted(after) == list(range(len(after)))

    # and the resumed run is exactly the run that would have happened without the kill
    reference = run_search(Job.from_dict(yaml.safe_load(job_path.read_text())), run_dir=tmp_path / "ref", progress=False)
    assert [(n, after[n].candidate.id, after[n].status) for n in sorted(after)] == trial_sequence(reference.records)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"strategy": "annealing"}, r"strategy.*'annealing' not allowed; allowed:.*random"),
        ({"space": "nb202"}, r"space: 'nb202' not allowed; allowed:.*nb201"),
        ({"budget": -3}, r"job.budget.evaluations: -3 must be a positive integer"),
        ({"objectives": [{"metric": "accuracy", "direction": "up"}]}, r"direction: 'up' not allowed; allowed: minimize, maximize"),
        ({"objectives": [{"metric": "energy", "direction": "minimize"}]}, r"energy"),
        ({"executor": {"kind": "slurm"}}, r"job.executor.kind: 'slurm' not allowed; allowed: inprocess, ray"),
        ({"colour": "red"}, r"job: unknown fields \['colour'\]"),
        ({"evaluators": [{"kind": "latency", "target": "nb201-table", "column": "help_toaster"}]}, r"help_toaster"),
    ],
)
def test_bad_job_fields_are_named(tmp_path, change, message):
    with pytest.raises(JobError, match=message):
        Job.from_dict(job_dict(tmp_path, **change))


def test_cli_reports_bad_yaml_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("space: nb201\nobjectives: [unclosed\n")
    assert cli_main(["search", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML" in err and "Traceback" not in err
    data = job_dict(tmp_path, strategy={"name": "random", "populaton": 3})
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(data))
    assert cli_main(["search", str(tmp_path / "typo.yaml")]) == 2
    assert "populaton" in capsys.readouterr().err
    assert cli_main(["search", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_search_and_results_show(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_dict(tmp_path, strategy="random")))
    assert cli_main(["search", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out and "knee" in out
    assert cli_main(["results", "show", str(tmp_path / "run")]) == 0
    shown = capsys.readouterr().out
    front = json.loads((tmp_path / "run" / "pareto.json").read_text())["front"]
    assert all(f["candidate_id"] in shown for f in front)
    assert cli_main(["spaces", "list"]) == 0 and "mobilenet" in capsys.readouterr().out
    assert cli_main(["spaces", "sample", "mobilenet", "--n", "2"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(lines) == 2


def test_example_job_is_valid():
    job = Job.from_yaml(REPO / "search" / "examples" / "nb201.yaml")
    assert job.space == "nb201" and job.strategy == "predictor"
