"""The two-step user flow of the mobilenet example: `tritune supernet train JOB` writes the
checkpoint the job's supernet-accuracy evaluator names, then `tritune search JOB` scores
candidates of the job's *configured* space (1 channel, 10 classes) with it and measures their
latency with onnxruntime on the same configured space."""
from __future__ import annotations

import csv
import json

import yaml

from tritune.cli.main import main


def _job(tmp_path) -> dict:
    return {
        "name": "tiny-mnist",
        "space": {"name": "mobilenet", "resolutions": [16], "widths": [0.25], "depths": [1, 2], "expands": [3],
                  "kernels": [3, 5], "in_channels": 1, "num_classes": 10},
        "evaluators": [
            {"kind": "supernet-accuracy", "checkpoint": str(tmp_path / "supernet.safetensors"), "dataset": "mnist5k",
             "calib_batches": 1, "calib_batch_size": 64, "eval_batch_size": 500},
            {"kind": "latency", "target": "ort-cpu"},
        ],
        "objectives": [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency", "direction": "minimize"}],
        "strategy": {"name": "random"},
        "budget": {"evaluations": 3},
        "batch_size": 3,
        "seed": 0,
        "run_dir": str(tmp_path / "run"),
    }


def test_train_then_search_on_the_configured_space(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(_job(tmp_path)))
    assert main(["supernet", "train", str(path), "--steps", "3", "--batch-size", "16", "--quiet"]) == 0
    assert (tmp_path / "supernet.safetensors").is_file()
    assert main(["search", str(path), "--quiet"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "run" / "trials.csv")))
    assert [r["status"] for r in rows] == ["complete"] * 3, rows
    for row in rows:
        assert 0.0 <= float(row["accuracy"]) <= 100.0 and float(row["latency"]) > 0.0
        assert json.loads(row["candidate"])["arch"]["resolution"] == 16  # only valid in the configured space


def test_supernet_train_needs_a_supernet_evaluator(tmp_path, capsys):
    data = _job(tmp_path)
    data["evaluators"] = data["evaluators"][1:]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["supernet", "train", str(path), "--steps", "1", "--quiet"]) == 2
    assert "supernet-accuracy" in capsys.readouterr().err
