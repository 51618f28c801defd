"""The vit family as a user runs it: the shipped example job, its supernet trained briefly, searched,
its finalists fine-tuned and its front exported to ONNX files that onnxruntime runs with the
search's own int8 codes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from tritune.search.export import export_model
from tritune.spaces import LayerCompression
from tritune.spaces.checkpoint import load_checkpoint

EXAMPLE = Path(__file__).resolve().parents[2] / "search" / "examples" / "vit_mnist.yaml"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tritune.cli.main", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The example job with a smaller budget, 40 supernet steps and a short fine-tune, run through
    its stages: supernet, search, fine-tuning by successive halving, the measured front."""
    tmp = tmp_path_factory.mktemp("vit-export")
    data = yaml.safe_load(EXAMPLE.read_text())
    assert {"finetune", "front"} <= set(data["stages"]) and data["stages"]["finetune"] and data["stages"]["front"] is not False
    data["budget"] = {"evaluations": 8}
    data["stages"]["supernet"]["train"]["steps"] = 40
    data["stages"]["refine"] = False
    data["stages"]["finetune"] = {"top_k": 2, "epochs": 0.5, "rungs": 2}
    data["evaluators"][0]["checkpoint"] = str(tmp / "supernet.safetensors")
    data["run_dir"] = str(tmp / "run")
    path = tmp / "vit.yaml"
    path.write_text(yaml.safe_dump(data))
    done = _cli("search", str(path), "--quiet", cwd=tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    return path


@pytest.fixture(scope="module")
def supernet_path(tmp_path_factory):
    """The example job's vit supernet, trained 40 steps (enough for calibrated int8 codes)."""
    from tritune.evaluators.data import load_dataset
    from tritune.evaluators.supernet_training import TrainConfig, train_supernet
    from tritune.spaces import create

    options = dict(yaml.safe_load(EXAMPLE.read_text())["space"])
    space = create(options.pop("name"), **options)
    path = tmp_path_factory.mktemp("vit-supernet") / "supernet.safetensors"
    config = TrainConfig(steps=40, batch_size=64, lr=2e-3, optimizer="adamw", weight_decay=0.05, sensitivity_images=0)
    train_supernet(space.supernet({"seed": 0}), load_dataset("mnist5k-hard", seed=0), config, checkpoint=path, progress=False)
    return path


@pytest.mark.slow
def test_example_job_fine_tunes_and_exports_its_front(job):
    run = job.parent / "run"
    stages = json.loads((run / "stages.json").read_text())["stages"]
    assert [s["name"] for s in stages] == ["supernet", "search", "finetune", "front"]
    tuned = next(s for s in stages if s["name"] == "finetune")["summary"]["models"]
    assert len(tuned) == 2 and all(m["masks_exact"] for m in tuned)
    final = json.loads((run / "final.json").read_text())
    assert final["front"]
    by_id = {m["candidate_id"]: m for m in tuned}
    for model in final["front"]:
        folder = Path(model["folder"])
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["space"]["name"] == "vit" and manifest["target"] == "ort-cpu"
        assert manifest["search_accuracy"] == pytest.approx(by_id[model["candidate_id"]]["accuracy"])  # the fine-tuned network's
        onnx.checker.check_model(onnx.load(folder / "model.onnx"), full_check=True)
        check = manifest["verification"]["model.onnx"]
        assert check["top1_agreement"] >= 0.9, check
        assert manifest["latency_measured_ms"] > 0
        names = [row["name"] for row in manifest["layers"]]
        assert names[0] == "patch_embed" and "b0.qkv" in names and names[-1] == "head"
    again = _cli("export", str(run), "--all", "--quiet", "--out", str(job.parent / "again"), cwd=job.parent)  # the final front, exported again
    assert again.returncode == 0, again.stderr[-2000:]
    assert {p.name for p in (job.parent / "again").iterdir() if p.is_dir()} == {m["candidate_id"] for m in final["front"]}


def test_int8_linears_ship_the_search_codes(supernet_path, tmp_path):
    """Every linear w8a8 or w4a8 with a sparsity pattern, 8-bit attention: the file runs them as int8
    kernels whose weights are the supernet's codes (4-bit layers: at most 15 levels), and agrees
    with the network it came from."""
    from tritune.evaluators.data import load_dataset
    from tritune.evaluators.supernet_training import calibration_batches

    supernet = load_checkpoint(str(supernet_path)).supernet
    space = supernet.space
    base = space.dense(space.largest(), {2: 0.5})
    four = ("qkv", "fc1")  # 4-bit block-sparse; the other linears 8-bit unstructured
    plan = [LayerCompression("block8x1", 0.5, 4, 8) if name.endswith(four) else LayerCompression("unstructured", 0.5, 8, 8)
            for name, _ in space.slots]
    cand = base.replace(compression=plan, arch={"attn_bits": [8] * len(base["attn_bits"])})
    data = load_dataset("mnist5k-hard", seed=0)
    calib = calibration_batches(data, 2, 64, seed=0)
    network = supernet.extract(cand, batches=calib)
    out = export_model(cand, network, data=data, calibration=calib, out_dir=tmp_path, space=space, measure=False)
    check = out.manifest["verification"]["model.onnx"]
    assert check["top1_agreement"] >= 0.85, check
    model = onnx.load(out.directory / "model.onnx")
    graph = [n["op"] for n in _optimized(model)]
    assert graph.count("QLinearMatMul") >= 4 * cand["depth"]  # the block linears and the attention matmuls
    rows = {row["name"]: row for row in out.manifest["layers"]}
    assert rows["b0.qkv"]["runs_as"] == "int8 (QDQ)" and "4-bit codes" in rows["b0.qkv"]["weight_storage"]
    assert rows["b0.proj"]["runs_as"] == "int8 (QDQ)" and rows["b0.proj"]["realised_sparsity"] >= 0.5
    matmul = next(n for n in model.graph.node if n.op_type == "MatMul" and n.name.startswith("/b0/fc1/"))
    dequantize = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == matmul.input[1])
    codes = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == dequantize.input[0]))
    assert codes.dtype == np.int8 and np.abs(codes).max() <= 7  # the 4-bit codes exactly, not a fresh 8-bit rounding


def _optimized(model):
    from tritune.predictors.fusion import optimized_graph

    return optimized_graph(model)
