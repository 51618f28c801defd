"""The staged pipeline on a small job: every stage runs, resumes exactly after kill -9, and
refuses a resume with changed settings."""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tritune.cli.main import main as cli_main
from tritune.search.job import Job, JobError
from tritune.search.stages.runner import run_pipeline
from tritune.search.store import TrialStore
from tritune.spaces.mobilenet.supernet.sampling import reference_models


def staged_job(tmp_path: Path, **stages) -> dict:
    data = {
        "name": "staged",
        "space": {"name": "mobilenet", "resolutions": [16], "widths": [0.25, 0.35], "depths": [2, 3], "expands": [3, 4],
                  "kernels": [3], "in_channels": 1, "num_classes": 10},
        "evaluators": [
            {"kind": "supernet-accuracy", "checkpoint": str(tmp_path / "supernet.safetensors"), "dataset": "digits"},
            {"kind": "latency", "target": "ort-cpu"},
        ],
        "objectives": [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency", "direction": "minimize"}],
        "strategy": {"name": "evolution", "population": 4, "sample_size": 2},
        "budget": {"evaluations": 6},
        "batch_size": 3,
        "seed": 0,
        "run_dir": str(tmp_path / "run"),
        "stages": {
            "supernet": {"train": {"steps": 40, "batch_size": 32, "checkpoint_every": 10}},
            "refine": {"finalists": 1, "evaluations": 3, "batch_size": 3, "population": 3},
            "finetune": {"top_k": 2, "epochs": 0.5, "rungs": 2, "batch_size": 32},
            "front": {},
        },
    }
    data["stages"].update(stages)
    return data


def meta(db: Path, key: str) -> str | None:
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
        try:
            row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return None if row is None else row[0]


def stage_items(run_dir: Path) -> dict[str, str]:
    with TrialStore(run_dir / "trials.db", readonly=True) as store:
        rows = store._execute("SELECT key, value FROM meta WHERE key LIKE 'stage:%' OR key LIKE 'item:%'").fetchall()
    return dict(rows)


def rung_front(run_dir: Path, tuned: list[dict]) -> set[str]:
    """The models on the front of the first rung's accuracy against the latency they were picked with."""
    from tritune.search.pareto import pareto_mask

    items = stage_items(run_dir)
    ids = [m["candidate_id"] for m in tuned]
    points = [(json.loads(items[f"item:finetune:{m['candidate_id']}:0"])["accuracy"], m["search_metrics"]["latency"]) for m in tuned]
    return {cid for cid, keep in zip(ids, pareto_mask(np.array(points), ["maximize", "minimize"])) if keep}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One whole pipeline run through the command line, shared by the tests that only read it."""
    tmp_path = tmp_path_factory.mktemp("staged")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(staged_job(tmp_path)))
    assert cli_main(["search", str(path), "--quiet"]) == 0
    return tmp_path


def test_every_stage_runs_and_the_front_is_exported_and_measured(finished):
    run = finished / "run"
    stages = json.loads((run / "stages.json").read_text())["stages"]
    assert [s["name"] for s in stages] == ["supernet", "search", "refine", "finetune", "front"]
    assert stages[0]["summary"]["steps"] == 40
    tuned = stages[3]["summary"]["models"]
    assert len(tuned) == 2 and all(m["masks_exact"] for m in tuned)
    # successive halving keeps 1 of 2 and every model on the front of rung 1's accuracy against latency
    assert {m["candidate_id"] for m in tuned if m["epochs"] == 0.5} == rung_front(run, tuned)
    assert sorted(m["epochs"] for m in tuned)[-1] == 0.5
    final = json.loads((run / "final.json").read_text())
    assert final["front"] and final["knee"] in [m["candidate_id"] for m in final["front"]]
    retimed = json.loads((run / "retimed.json").read_text())  # the pool the picks came from, timed again together
    timed = {t["candidate_id"]: t for t in retimed["timings"]}
    assert retimed["latency"]["target"] == "ort-cpu" and len(timed) >= retimed["pool_size"] == 6
    assert all(len(t["process_latencies_ms"]) == 3 and t["latency_ms"] == min(t["process_latencies_ms"]) for t in timed.values())
    for model in final["models"]:
        manifest = json.loads((Path(model["folder"]) / "manifest.json").read_text())
        assert manifest["candidate_id"] == model["candidate_id"]
        assert manifest["latency_measured_ms"] > 0 and manifest["accuracy"] == model["accuracy"]
        assert manifest["latency_predicted_ms"] == timed[model["candidate_id"]]["latency_ms"] == model["search_metrics"]["latency"]
        assert model["search_metrics"]["latency_search"] > 0 and "timed again" in manifest["latency_predictor"]["how"]
        assert len(manifest["latency_measurement"]["process_latencies_ms"]) == 3
    references = [c.id for c in reference_models(Job.from_dict(staged_job(finished)).build_space()).values()]
    with TrialStore(run / "trials.db", readonly=True) as store:  # the search began with the hand-made references
        searched = [r.candidate.id for r in store.all()]
    assert len(references) >= 3 and searched[:len(references)] == references[:len(searched)]
    assert stages[1]["summary"]["references"] == len(references)
    with TrialStore(run / "refine" / stages[2]["summary"]["finalists"][0] / "trials.db", readonly=True) as store:
        refined = store.all()
    assert sum(r.status == "complete" for r in refined) == 3
    base = refined[0].candidate.to_json()
    for r in refined:  # refinement keeps the architecture and every layer's pattern
        assert r.candidate.to_json()["arch"] == base["arch"]
        assert [c["pattern"] for c in r.candidate.to_json()["compression"]] == [c["pattern"] for c in base["compression"]]


def test_resume_of_a_finished_pipeline_repeats_nothing(finished, tmp_path):
    before = stage_items(finished / "run")
    with TrialStore(finished / "run" / "trials.db", readonly=True) as store:
        trials = [(r.number, r.candidate.id, r.finished) for r in store.all()]
    started = time.perf_counter()
    result = run_pipeline(Job.from_dict(staged_job(finished), validate=False), resume=True, progress=False)
    assert time.perf_counter() - started < 60
    assert stage_items(finished / "run") == before
    with TrialStore(finished / "run" / "trials.db", readonly=True) as store:
        assert [(r.number, r.candidate.id, r.finished) for r in store.all()] == trials
    assert result.final and result.knee is not None


def test_results_show_lists_every_stage(finished, capsys):
    assert cli_main(["results", "show", str(finished / "run")]) == 0
    out = capsys.readouterr().out
    for name in ("supernet", "search", "refine", "finetune", "front"):
        assert name in out
    final = json.loads((finished / "run" / "final.json").read_text())
    assert all(m["candidate_id"] in out for m in final["front"])


def test_export_of_a_staged_run_exports_the_fine_tuned_final_front(finished, tmp_path, capsys):
    run = finished / "run"
    final = json.loads((run / "final.json").read_text())
    out = tmp_path / "codegen"
    assert cli_main(["export", str(run), "--all", "--target", "codegen-cpu", "--out", str(out), "--no-measure", "--quiet"]) == 0
    exported = {p.name: json.loads((p / "manifest.json").read_text()) for p in out.iterdir()}
    assert set(exported) == {m["candidate_id"] for m in final["front"]}
    for model in final["front"]:
        manifest = exported[model["candidate_id"]]
        assert manifest["weights"]["source"].startswith("fine-tuned")
        assert manifest["search_accuracy"] == pytest.approx(model["finetuned_accuracy"])
        assert (out / model["candidate_id"] / "codegen.json").is_file()


def test_export_refuses_fine_tuned_weights_changed_after_the_front_stage(finished, tmp_path, capsys):
    run = finished / "run"
    cid = json.loads((run / "final.json").read_text())["knee"]
    state = run / "finetune" / cid / "state.safetensors"
    original = state.read_bytes()
    try:
        state.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        assert cli_main(["export", str(run), "--out", str(tmp_path / "x"), "--no-measure", "--quiet"]) == 2
        assert "changed since the front stage" in capsys.readouterr().err
    finally:
        state.write_bytes(original)


def test_search_max_drop_samples_only_choices_the_sensitivity_table_allows(tmp_path):
    from tritune.evaluators.sensitivity import load_sensitivity

    data = staged_job(tmp_path, search={"max_drop": 2.0}, refine=False, finetune=False, front=False)
    data["space"]["compression"] = {"tie": "role"}  # few enough probes for the table to be measured after training
    data["stages"]["supernet"]["train"]["sensitivity_images"] = 128
    data["evaluators"], data["objectives"] = data["evaluators"][:1], data["objectives"][:1]  # no latency to measure
    data["budget"] = {"evaluations": 9}
    job = Job.from_dict(data)
    run_pipeline(job, progress=False)
    space = job.build_space()
    table = load_sensitivity(tmp_path / "supernet.safetensors")
    default = space.menu.default()
    too_costly = {g.name[5:]: {c.token for c in g.choices if table.drop(g.name[5:], c, default) > 2.0}
                  for g in space.genes() if g.name.startswith("comp:")}
    assert any(too_costly.values())  # the screen takes something off the menu
    with TrialStore(tmp_path / "run" / "trials.db", readonly=True) as store:
        records = store.all()
    assert len(records) >= 9
    for record in records:
        genome = space.to_genome(record.candidate)
        for gene, costly in too_costly.items():
            assert genome[f"comp:{gene}"].token not in costly


def test_search_and_refinement_draw_only_choices_the_latency_target_runs_faster(finished):
    from tritune.targets.ort_cpu import OrtCpuTarget

    run = finished / "run"
    stages = json.loads((run / "stages.json").read_text())["stages"]
    assert stages[1]["summary"]["target_menu"] == "ort-cpu"
    runs_as = OrtCpuTarget().runs_as
    stores = [run / "trials.db", *sorted(run.glob("refine/*/trials.db"))]
    assert len(stores) == 2
    for db in stores:
        with TrialStore(db, readonly=True) as store:
            for record in store.all():
                assert all(runs_as(c) == c for c in record.candidate.compression), record.candidate.id


def test_other_cost_metrics_or_target_menu_false_keep_the_whole_menu(finished, tmp_path):
    from tritune.search.stages.runner import _cost_target

    data = staged_job(finished, search={"target_menu": False}, refine=False, finetune=False, front=False)
    data["budget"] = {"evaluations": 4}
    data["run_dir"] = str(tmp_path / "run")  # the finished run's supernet, loaded
    run_pipeline(Job.from_dict(data), progress=False)
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())["stages"]
    assert stages[0]["summary"]["how"] == "loaded" and stages[1]["summary"]["target_menu"] is None
    data = staged_job(finished)
    data["evaluators"].append({"kind": "latency", "target": "ort-cpu", "metric": "latency_2t", "threads": 2})
    data["constraints"] = [{"metric": "latency_2t", "max": 100.0}]
    job = Job.from_dict(data)
    space, problem = job.build_space(), job.problem()
    assert _cost_target(job.build_pipeline(space, problem), problem) is None  # two targets time the job
    del data["constraints"]
    job = Job.from_dict(data)
    assert _cost_target(job.build_pipeline(space, job.problem()), job.problem()).name == "ort-cpu"


def test_search_max_drop_without_a_sensitivity_table_is_a_clean_error(finished, tmp_path):
    from tritune.evaluators.sensitivity import load_sensitivity

    assert load_sensitivity(finished / "supernet.safetensors") is None  # too many untied probes to measure after training
    data = staged_job(finished, search={"max_drop": 2.0}, refine=False, finetune=False, front=False)
    data["run_dir"] = str(tmp_path / "run")
    with pytest.raises(JobError, match="holds no sensitivity table"):
        run_pipeline(Job.from_dict(data), progress=False)


@pytest.mark.parametrize("section, message", [
    ({"search": False}, "always runs"),
    ({"search": {"max_drop": -1}}, "max_drop"),
    ({"search": {"max_drop": True}}, "max_drop"),
    ({"search": {"max_drop": float("nan")}}, "max_drop"),
    ({"search": {"budget": 3}}, "budget"),
    ({"search": {"references": "yes"}}, "references"),
    ({"search": {"target_menu": 1}}, "target_menu"),
])
def test_bad_search_stage_options_are_refused_by_name(tmp_path, section, message):
    data = staged_job(tmp_path)
    data["stages"].update(section)
    with pytest.raises(JobError, match=message):
        Job.from_dict(data)


def test_a_resume_with_other_stage_settings_is_refused(finished):
    changed = staged_job(finished, finetune={"top_k": 2, "epochs": 1.0, "rungs": 2, "batch_size": 32})
    with pytest.raises(JobError, match="different job"):
        run_pipeline(Job.from_dict(changed, validate=False), resume=True, progress=False)


def _run_until(job_path: Path, ready, timeout: float = 600) -> None:
    """Start the pipeline in a new process and kill -9 it once ``ready()`` holds."""
    args = [sys.executable, "-m", "tritune.cli.main", "search", str(job_path), "--quiet"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while not ready() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _killed_in(stage: str, run: Path, tmp_path: Path):
    db = run / "trials.db"
    if stage == "supernet":
        return lambda: (tmp_path / "supernet.safetensors").exists()
    if stage == "search":
        return lambda: meta(db, "stage:supernet") is not None and db.exists() and TrialStore(db, readonly=True).count("complete") >= 2
    if stage == "refine":
        return lambda: any((run / "refine").glob("*/trials.db"))
    if stage == "finetune":
        return lambda: any((run / "finetune").glob("*/state.safetensors"))
    return lambda: any((run / "export").glob("*/manifest.json"))


@pytest.mark.slow
def test_sigkill_during_finetuning_then_resume_finishes_every_model_once(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(staged_job(tmp_path)))
    run = tmp_path / "run"
    _run_until(path, _killed_in("finetune", run, tmp_path))
    assert meta(run / "trials.db", "stage:finetune") is None
    done_before = {k: v for k, v in stage_items(run).items() if k.startswith("item:finetune")}
    assert cli_main(["search", str(path), "--resume", "--quiet"]) == 0
    after = stage_items(run)
    assert all(after[k] == v for k, v in done_before.items())  # nothing finished was redone
    tuned = json.loads((run / "stages.json").read_text())["stages"][3]["summary"]["models"]
    promoted = rung_front(run, tuned)  # 2 models in rung 1; in rung 2 those on its front
    assert sorted(k for k in after if k.startswith("item:finetune")) == sorted(
        [f"item:finetune:{m['candidate_id']}:0" for m in tuned] + [f"item:finetune:{cid}:1" for cid in promoted])
    assert json.loads((run / "final.json").read_text())["front"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["supernet", "search", "refine", "front"])
def test_sigkill_in_each_stage_then_resume(tmp_path, stage):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(staged_job(tmp_path)))
    run = tmp_path / "run"
    _run_until(path, _killed_in(stage, run, tmp_path))
    assert meta(run / "trials.db", f"stage:{stage}") is None
    with TrialStore(run / "trials.db", readonly=True) as store:
        before = {r.number: (r.candidate.id, r.metrics, r.finished) for r in store.all() if r.status != "running"}
    assert cli_main(["search", str(path), "--resume", "--quiet"]) == 0
    with TrialStore(run / "trials.db", readonly=True) as store:
        after = {r.number: (r.candidate.id, r.metrics, r.finished) for r in store.all()}
    assert all(after[n] == v for n, v in before.items())
    stages = json.loads((run / "stages.json").read_text())["stages"]
    assert [s["name"] for s in stages][-1] == "front"
    assert json.loads((run / "final.json").read_text())["front"]
