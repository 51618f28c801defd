"""Run-directory integrity: stored cheap metrics make resume exact, one writer per run, lost
workers are retried, impossible constraints stop early, missing metrics never reach the front."""
from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from tritune.cli.main import main as cli_main
from tritune.search.driver import SearchDriver
from tritune.search.job import Job, JobError
from tritune.search.lock import RunLock, RunLocked
from tritune.search.run import run_search
from tritune.search.store import StoreError, TrialStore

from .test_search_run import job_dict, trial_sequence


def measured_job(tmp_path, **overrides) -> dict:
    """A small mobilenet space whose only metric is latency measured with onnxruntime."""
    data = {
        "name": "measured",
        "space": {"name": "mobilenet", "resolutions": [28], "widths": [0.25, 0.35], "depths": [2, 3], "expands": [3, 4],
                  "kernels": [3], "in_channels": 1, "num_classes": 10},
        "evaluators": [{"kind": "latency", "target": "ort-cpu"}],
        "objectives": [{"metric": "latency", "direction": "minimize"}],
        "strategy": {"name": "evolution", "population": 4, "sample_size": 2},
        "budget": {"evaluations": 4},
        "batch_size": 2,
        "seed": 3,
        "run_dir": str(tmp_path / "run"),
    }
    data.update(overrides)
    return data


def test_resume_reads_measured_latency_back_instead_of_measuring(tmp_path):
    first = run_search(Job.from_dict(measured_job(tmp_path)), progress=False)
    assert first.fresh_cheap >= 4
    with TrialStore(first.run_dir / "trials.db") as store:
        stored = store.cheap_metrics()
    assert {r.candidate.id for r in first.records} <= set(stored)
    again = run_search(Job.from_dict(measured_job(tmp_path)), resume=True, progress=False)
    assert again.fresh_cheap == 0  # nothing measured twice: replay sees exactly what the first run saw
    assert trial_sequence(again.records) == trial_sequence(first.records)
    assert [r.metrics for r in again.records] == [r.metrics for r in first.records]


def test_cheap_metrics_of_every_screened_candidate_are_stored(tmp_path):
    data = job_dict(tmp_path, budget={"evaluations": 8})
    result = run_search(Job.from_dict(data), progress=False)
    with TrialStore(result.run_dir / "trials.db") as store:
        cheap = store.cheap_metrics()
    assert len(cheap) >= len({r.candidate.id for r in result.records})
    for r in result.records:
        assert cheap[r.candidate.id]["latency"] == r.metrics["latency"]


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from tritune.search.lock import RunLock\n"
        f"lock = RunLock({str(run_dir)!r}).acquire(); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
            RunLock(run_dir).acquire()
        data = job_dict(tmp_path)
        with pytest.raises(RunLocked):
            run_search(Job.from_dict(data), progress=False)
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(data))
        assert cli_main(["search", str(path), "--quiet"]) == 2
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the dead holder's lock: the run proceeds
    assert run_search(Job.from_dict(job_dict(tmp_path)), progress=False).evaluations == 30
    assert json.loads((run_dir / ".lock").read_text())["pid"] != holder.pid


def test_lost_worker_is_retried_under_the_same_trial_number(tmp_path):
    """Losing trial 5's worker twice changes nothing but its attempt count."""
    job = Job.from_dict(job_dict(tmp_path, budget={"evaluations": 12}))
    reference = run_search(job, run_dir=tmp_path / "ref", progress=False)

    space = job.build_space()
    problem = job.problem()
    pipeline = job.build_pipeline(space, problem)
    strategy = job.build_strategy(space, problem, pipeline.oracle)
    with TrialStore(tmp_path / "retry.db") as store:
        driver = SearchDriver(strategy, store, job.budget, job.batch_size)
        lost = {5: 2}
        while (task := driver.next_task()) != SearchDriver.FINISHED:
            assert task is not None
            if lost.get(task.number, 0) > 0:
                lost[task.number] -= 1
                driver.retry(task.number, "worker killed")
                continue
            result = pipeline.evaluate(task.candidate)
            driver.complete(task.number, result.status, result.metrics, result.error)
        records = store.all()
    assert trial_sequence(records) == trial_sequence(reference.records)


def test_a_trial_lost_too_often_fails_with_the_reason(tmp_path):
    job = Job.from_dict(job_dict(tmp_path, budget={"evaluations": 3}, batch_size=1))
    space, problem = job.build_space(), job.problem()
    pipeline = job.build_pipeline(space, problem)
    with TrialStore(tmp_path / "t.db") as store:
        driver = SearchDriver(job.build_strategy(space, problem, pipeline.oracle), store, 3, 1, max_attempts=2)
        task = driver.next_task()
        driver.retry(task.number, "node lost")
        assert driver.next_task().number == task.number
        driver.retry(task.number, "node lost")
        (record,) = store.all()
    assert record.status == "failed" and "lost its worker 2 times" in record.error and "node lost" in record.error


def test_impossible_constraint_stops_early_with_the_range_seen(tmp_path, capsys):
    data = job_dict(tmp_path, constraints=[{"metric": "latency", "max": 0.004}], budget={"evaluations": 50})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    started = time.perf_counter()
    assert cli_main(["search", str(path), "--quiet"]) == 2
    assert time.perf_counter() - started < 60
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "met the constraints" in err[0] and "latency (max 0.004; seen" in err[0]
    with TrialStore(tmp_path / "run" / "trials.db") as store:  # nothing computed is lost
        assert len(store.cheap_metrics()) >= 1000
        assert all(r.status == "infeasible" for r in store.all())
    assert (tmp_path / "run" / "trials.csv").exists()


def test_missing_table_latency_is_infeasible_and_costs_no_budget(tmp_path):
    data = job_dict(tmp_path, constraints=[], budget={"evaluations": 20},
                    evaluators=[{"kind": "nb201-accuracy", "dataset": "cifar10"},
                                {"kind": "latency", "target": "nb201-table", "column": "nnmeter_cortexA76cpu_tflite21_ms"}])
    result = run_search(Job.from_dict(data), progress=False)
    missing = [r for r in result.records if math.isnan(r.metrics.get("latency", math.nan))]
    assert missing, "the column has cells without a latency; the search should meet some"
    assert all(r.status == "infeasible" and "accuracy" not in r.metrics for r in missing)
    assert result.evaluations == 20 and result.front
    assert json.loads((result.run_dir / "pareto.json").read_text())["front"]


def test_nan_objective_is_left_out_of_the_front_with_a_warning(tmp_path):
    from tritune.search.report import front
    from tritune.search.store import TrialRecord

    job = Job.from_dict(job_dict(tmp_path))
    space = job.build_space()
    rng = np.random.default_rng(0)
    a, b = space.sample(rng), space.sample(rng)
    records = [TrialRecord(0, a, "complete", {"accuracy": math.nan, "latency": 1.0}),
               TrialRecord(1, b, "complete", {"accuracy": 50.0, "latency": 2.0})]
    with pytest.warns(RuntimeWarning, match=r"trials \[0\]"):
        best = front(records, job.problem())
    assert [r.number for r in best] == [1]


def test_resume_checks_input_files_by_content_wherever_it_runs(tmp_path, monkeypatch):
    from importlib import resources

    embedded = resources.files("tritune.targets").joinpath("data", "nb201_embedded.csv.gz").read_bytes()
    first_home = tmp_path / "a"
    (first_home / "tables").mkdir(parents=True)
    (first_home / "tables" / "t.csv.gz").write_bytes(embedded)
    data = job_dict(tmp_path, budget={"evaluations": 5})
    data["evaluators"][1]["path"] = "tables/t.csv.gz"  # relative, as a job written for a cluster is
    monkeypatch.chdir(first_home)
    first = run_search(Job.from_dict(data), progress=False)
    with TrialStore(first.run_dir / "trials.db") as store:
        assert list(json.loads(store.get_meta("inputs"))["files"]) == [str(first_home / "tables" / "t.csv.gz")]

    # the same file in another working directory (a cluster's fresh upload): the resume goes on
    second_home = tmp_path / "b"
    (second_home / "tables").mkdir(parents=True)
    (second_home / "tables" / "t.csv.gz").write_bytes(embedded)
    (first_home / "tables" / "t.csv.gz").unlink()
    monkeypatch.chdir(second_home)
    assert run_search(Job.from_dict(data), resume=True, progress=False).replayed == len(first.records)

    # the same table, other bytes: refused
    (second_home / "tables" / "t.csv.gz").write_bytes(gzip.compress(gzip.decompress(embedded), compresslevel=1))
    with pytest.raises(JobError, match="changed since the run started"):
        run_search(Job.from_dict(data), resume=True, progress=False)
    (second_home / "tables" / "t.csv.gz").unlink()
    with pytest.raises(JobError, match="is missing"):
        run_search(Job.from_dict(data, validate=False), resume=True, progress=False)


def test_damaged_store_is_a_clean_error(tmp_path, capsys):
    data = job_dict(tmp_path, budget={"evaluations": 5})
    result = run_search(Job.from_dict(data), progress=False)
    db = result.run_dir / "trials.db"
    raw = bytearray(db.read_bytes())
    db.write_bytes(bytes(raw[: len(raw) // 3]))
    for wal in result.run_dir.glob("trials.db-*"):
        wal.unlink()
    with pytest.raises(StoreError):
        with TrialStore(db) as store:
            store.all()
    assert cli_main(["results", "show", str(result.run_dir)]) == 2
    assert "Traceback" not in capsys.readouterr().err
