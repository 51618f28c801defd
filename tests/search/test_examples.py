"""The example jobs README points at read and validate as shipped, and the main job runs the
whole flow (slow: minutes)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tritune.cli.main import main as cli_main
from tritune.search.job import Job

EXAMPLES = Path(__file__).resolve().parents[2] / "search" / "examples"


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_example_job_validates(name):
    job = Job.from_yaml(EXAMPLES / name)
    assert job.name and job.objectives


@pytest.mark.parametrize("name", ["quickstart.yaml", "mobilenet_mnist.yaml"])
def test_supernet_examples_run_every_stage(name):
    config = Job.from_yaml(EXAMPLES / name).stages_config()
    assert config is not None
    assert all(getattr(config, stage) is not None for stage in ("supernet", "refine", "finetune", "front"))


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the whole main job: under 10 minutes on a 2-core machine
def test_main_job_runs_supernet_search_export_and_report(tmp_path, capsys):
    data = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    for spec in data["evaluators"]:
        if "checkpoint" in spec:
            spec["checkpoint"] = str(tmp_path / "supernet.safetensors")
    data["run_dir"] = str(tmp_path / "run")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli_main(["search", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["models"]
    for model in final["models"]:
        folder = tmp_path / "run" / "export" / model["candidate_id"]
        assert (folder / "model.onnx").is_file() and (folder / "manifest.json").is_file()
        assert model["candidate_id"] in out
        assert model["accuracy"] > 50.0  # far above chance (10 %) on digits
    assert (tmp_path / "run" / "report.html").is_file()
    assert "report.html" in out
