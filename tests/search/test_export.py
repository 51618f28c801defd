"""`tritune export`: front members of a real (tiny) search as verified files.

A supernet trained for a few steps on the embedded ``digits`` set, a search of three
evaluations with onnxruntime latency, then exports checked with onnx.checker, onnxruntime, the
compiled codegen-cpu kernels and the files' own checksums. The supernet is barely trained, so
accuracies sit near chance: tests compare exported files with the torch network they came from,
not with a goal (``benchmarks/export_fidelity.py`` does that on a trained supernet)."""
from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tritune.cli.main import main
from tritune.search.export import (
    ExportError,
    SupernetWeights,
    export_model,
    export_run,
    load_run,
    read_manifest,
    without_timings,
)
from tritune.search.export.timing import PROCESSES
from tritune.spaces.compression import LayerCompression
from tritune.spaces.images import fit_input

pytestmark = pytest.mark.timeout(600)

#: Fields the issue asks every manifest to hold.
MANIFEST_FIELDS = ("schema", "candidate", "candidate_id", "space", "dataset", "accuracy", "search_accuracy", "latency_predicted_ms",
                   "latency_predictor", "latency_measured_ms", "latency_measurement", "target", "target_fingerprint", "size_bytes",
                   "layers", "tritune_version")


def tiny_job(root: Path) -> dict:
    return {
        "name": "tiny-export",
        "space": {"name": "mobilenet", "resolutions": [16], "widths": [0.25], "depths": [1], "expands": [3], "kernels": [3],
                  "in_channels": 1, "num_classes": 10},
        "evaluators": [
            {"kind": "supernet-accuracy", "checkpoint": str(root / "supernet.safetensors"), "dataset": "digits",
             "calib_batches": 1, "calib_batch_size": 64},
            {"kind": "latency", "target": "ort-cpu"},
        ],
        "objectives": [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency", "direction": "minimize"}],
        "strategy": {"name": "random"},
        "budget": {"evaluations": 3},
        "batch_size": 3,
        "seed": 0,
        "run_dir": str(root / "run"),
    }


def make_tiny_run(root: Path, steps: int = 4) -> Path:
    """Train a tiny supernet on digits and search it (three evaluations); the run directory."""
    from tritune.evaluators.data import load_dataset
    from tritune.evaluators.supernet_training import train_supernet
    from tritune.search.job import Job
    from tritune.search.run import run_search
    from tritune.spaces.mobilenet.supernet import MobileNetSupernet

    job = Job.from_dict(tiny_job(root), validate=False)
    supernet = MobileNetSupernet(job.build_space(), {"seed": 0})
    train_supernet(supernet, load_dataset("digits", seed=0), {"steps": steps, "batch_size": 16}, checkpoint=root / "supernet.safetensors",
                   progress=False)
    run_search(Job.from_dict(tiny_job(root)), progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("export-run"))


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported")
    return export_run(run_dir, select="all", out=out), out


@pytest.fixture(scope="module")
def weights(run_dir) -> SupernetWeights:
    return SupernetWeights(load_run(run_dir))


def _session(path: Path) -> ort.InferenceSession:
    """The file as README deploys it."""
    from tritune.targets.ort_cpu import session_options

    return ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])


def _onnx_accuracy(path: Path, weights: SupernetWeights, res: int) -> tuple[float, np.ndarray]:
    session = _session(path)
    x = fit_input(weights.data.test.tensors[0], res).numpy()
    logits = np.concatenate([session.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    return 100.0 * float(np.mean(logits.argmax(1) == weights.data.test.tensors[1].numpy())), logits


def test_manifest_fields_and_files(run_dir, exported, weights):
    results, out = exported
    run = load_run(run_dir)
    assert {r.candidate_id for r in results} == {r.candidate.id for r in run.front}
    for r in results:
        m = read_manifest(r.directory / "manifest.json")
        assert m == r.manifest
        missing = [f for f in MANIFEST_FIELDS if f not in m]
        assert not missing, missing
        assert r.directory == out / m["candidate_id"]
        assert m["target"] == "ort-cpu" and m["latency_predictor"]["name"] == "ort-cpu"
        trial = next(t for t in run.front if t.candidate.id == m["candidate_id"])
        assert m["search_accuracy"] == pytest.approx(trial.metrics["accuracy"])
        assert m["latency_predicted_ms"] == pytest.approx(trial.metrics["latency"])
        # the torch network export starts from is the one the search scored
        assert m["torch_accuracy"] == pytest.approx(m["search_accuracy"], abs=1e-9)
        assert m["latency_measured_ms"] > 0 and m["latency_measurement"]["protocol"]["rounds"] >= 1
        timing = m["latency_measurement"]
        assert timing["process"] == "fresh"  # timed in processes of its own (tritune.search.export.timing)
        assert len(timing["process_latencies_ms"]) == timing["processes"] == PROCESSES > 1
        assert m["latency_measured_ms"] == min(timing["process_latencies_ms"])
        assert timing["reference_build_ms"] == min(timing["reference_build_process_latencies_ms"])
        assert m["target_fingerprint"]["target"] == "ort-cpu"
        assert m["size_bytes"] == (r.directory / "model.onnx").stat().st_size
        for name, info in m["files"].items():
            assert (r.directory / name).stat().st_size == info["bytes"]
        layer_names = [L.name for L in weights.subnet(trial.candidate).layers]
        assert [L["name"] for L in m["layers"]] == layer_names
        for L in m["layers"]:
            if "weights" in L:
                assert {"pattern", "realised_sparsity", "w_bits", "a_bits", "weight_shape", "runs_as"} <= set(L)
                assert 0.0 <= L["realised_sparsity"] <= 1.0
                assert isinstance(L["latency_ms"], float)


def test_onnx_passes_checker_and_its_accuracy_is_what_the_manifest_says(exported, weights):
    for r in exported[0]:
        m = r.manifest
        path = r.directory / "model.onnx"
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        acc, _ = _onnx_accuracy(path, weights, int(m["candidate"]["arch"]["resolution"]))
        assert acc == pytest.approx(m["accuracy"], abs=1e-9)
        v = m["verification"]["model.onnx"]
        assert v["images"] == len(weights.data.test)
        assert 0.0 <= v["top1_agreement"] <= 1.0 and v["max_abs_diff"] >= 0.0


def _candidate(weights: SupernetWeights, comp: LayerCompression, seed: int = 3):
    space = weights.evaluator.supernet.space
    c = space.sample(np.random.default_rng(seed))
    return space.validate(c.replace(compression=[comp] * len(c.compression)))


def _export(weights, tmp_path, comp: LayerCompression):
    """Export a candidate with ``comp`` on every slot (not timed); the candidate's subnet with it."""
    cand = _candidate(weights, comp)
    subnet = weights.subnet(cand)
    return export_model(cand, subnet, data=weights.data, calibration=weights.calibration, out_dir=tmp_path,
                        space=weights.evaluator.supernet.space, measure=False), subnet


def _assert_exact(res) -> None:
    """model.onnx computes what the torch subnet computes (same accuracy)."""
    v = res.manifest["verification"]["model.onnx"]
    assert v["max_abs_diff"] < 1e-4 and v["top1_agreement"] == 1.0
    assert res.manifest["accuracy"] == pytest.approx(res.manifest["torch_accuracy"])


def test_a_float_candidate_exports_exactly(weights, tmp_path):
    res, _ = _export(weights, tmp_path, LayerCompression("unstructured", 0.5, 32, 32))
    _assert_exact(res)
    assert res.manifest["latency_measured_ms"] is None and res.manifest["search_accuracy"] is None
    rows = [L for L in res.manifest["layers"] if "weights" in L and L["op"] == "conv" and L["name"] != "stem"]
    assert all(L["realised_sparsity"] >= 0.45 for L in rows), [(L["name"], L["realised_sparsity"]) for L in rows]


@pytest.mark.parametrize("bits", [8, 4])
def test_weight_only_layers_run_in_float_and_compute_what_the_search_scored(weights, tmp_path, bits):
    """w8a32 / w4a32: onnxruntime has no weight-only int8 kernel, so model.onnx runs the dequantized
    codes in float on float inputs (no input is quantized), which is what the supernet scored."""
    res, _ = _export(weights, tmp_path, LayerCompression("dense", 0.0, bits, 32))
    _assert_exact(res)
    model = onnx.load(str(res.directory / "model.onnx"))
    assert not {n.op_type for n in model.graph.node} & {"QuantizeLinear", "DequantizeLinear"}
    rows = [L for L in res.manifest["layers"] if "weights" in L]
    assert rows and all(L["runs_as"].startswith("float32") for L in rows)


@pytest.mark.parametrize("bits", [8, 4])
def test_int8_layers_hold_the_subnets_codes_and_run_as_qlinear_ops(weights, tmp_path, bits):
    res, subnet = _export(weights, tmp_path, LayerCompression("dense", 0.0, bits, 8))
    model = onnx.load(str(res.directory / "model.onnx"))
    int8 = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    modules = dict(subnet.named_modules())
    for L in subnet.layers:
        if not L.has_weights:
            continue
        op = modules[L.name].conv if hasattr(modules[L.name], "conv") else modules[L.name].linear
        codes = op.weight_codes.numpy()
        assert any(t.shape == codes.shape and np.array_equal(t, codes) for t in int8), L.name
        row = next(r for r in res.manifest["layers"] if r["name"] == L.name)
        assert row["runs_as"] == "int8 (QDQ)"
        if bits < 8:
            assert f"{bits}-bit codes" in row["weight_storage"]
            assert codes.min() >= -(2 ** (bits - 1)) and codes.max() <= 2 ** (bits - 1) - 1
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(res.directory / "model.onnx"), so, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert "QLinearConv" in ops, sorted(ops)


def test_export_again_gives_the_same_files(run_dir, tmp_path):
    a = export_run(run_dir, select=0, out=tmp_path / "a", measure=False)[0]
    b = export_run(run_dir, select=0, out=tmp_path / "b", measure=False)[0]
    assert (a.directory / "model.onnx").read_bytes() == (b.directory / "model.onnx").read_bytes()
    assert (a.directory / "manifest.json").read_bytes() == (b.directory / "manifest.json").read_bytes()
    c = export_run(run_dir, select=0, out=tmp_path / "a", measure=False)[0]  # again into the same folder: replaced whole
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [a.candidate_id]
    assert without_timings(c.manifest) == without_timings(a.manifest)


def test_selection(run_dir, tmp_path):
    run = load_run(run_dir)
    assert [m.rank for m in run.select("all")] == list(range(len(run.front)))
    knee = run.select("knee")
    assert len(knee) == 1 and knee[0].knee
    with pytest.raises(ExportError, match=r"--rank: 99 not allowed; allowed: 0\.\."):
        run.select(99)


def _copy_run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the run (and its checkpoint) whose store records the copied checkpoint."""
    root = tmp_path / "copy"
    shutil.copytree(run_dir.parent, root)
    db = sqlite3.connect(root / "run" / "trials.db")
    old = str(run_dir.parent / "supernet.safetensors")
    new = str(root / "supernet.safetensors")
    for key in ("job", "inputs"):
        (text,) = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        db.execute("UPDATE meta SET value = ? WHERE key = ?", (text.replace(old, new), key))
    db.commit()
    db.close()
    return root


def test_changed_or_missing_checkpoint_is_a_clear_error(run_dir, tmp_path, capsys):
    root = _copy_run(run_dir, tmp_path)
    ckpt = root / "supernet.safetensors"
    with open(ckpt, "r+b") as fh:  # same size, one byte different
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    with pytest.raises(ExportError, match="changed since the search"):
        export_run(root / "run", measure=False)
    assert main(["export", str(root / "run"), "--no-measure", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "changed since the search" in err and str(ckpt) in err
    ckpt.unlink()
    with pytest.raises(ExportError, match="supernet checkpoint .*: missing"):
        export_run(root / "run", measure=False)


def test_a_run_directory_never_names_code_to_run(run_dir, tmp_path):
    root = _copy_run(run_dir, tmp_path)
    db = sqlite3.connect(root / "run" / "trials.db")
    (text,) = db.execute("SELECT value FROM meta WHERE key = 'job'").fetchone()
    job = json.loads(text)
    job["evaluators"][0]["dataset"] = "tritune_never_imported_module:load"
    db.execute("UPDATE meta SET value = ? WHERE key = 'job'", (json.dumps(job),))
    db.commit()
    db.close()
    with pytest.raises(ExportError, match="never names code to run"):
        export_run(root / "run", measure=False)
    assert "tritune_never_imported_module" not in sys.modules


def test_cli_export(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "--rank", "0", "--out", str(tmp_path), "--no-measure", "--quiet"]) == 0
    out = capsys.readouterr().out
    first = load_run(run_dir).front[0].candidate.id
    assert first in out and (tmp_path / first / "manifest.json").is_file()
    assert main(["export", str(run_dir), "--rank", "7", "--out", str(tmp_path), "--quiet"]) == 2
    assert "--rank: 7 not allowed" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--target", "nb201-table", "--quiet"]) == 2
    assert main(["export", str(tmp_path / "nowhere"), "--quiet"]) == 2


@pytest.mark.slow  # compiles a whole network's kernels on a fresh machine (~30 s on 2 busy cores)
def test_codegen_export_loads_and_runs_without_compiling(run_dir, weights, tmp_path):
    from tritune.kernels.codegen import compiler
    from tritune.targets.codegen_cpu import CodegenCpuTarget, ExportedModelError, load_exported

    res = export_run(run_dir, select=0, target="codegen-cpu", out=tmp_path, measure=False)[0]
    d = res.directory
    assert (d / "codegen.json").is_file() and list((d / "kernels").glob("*.so"))
    with np.load(d / "weights.npz", allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)
    before = compiler.stats()["compiles"]
    runnable = load_exported(d)
    assert compiler.stats()["compiles"] == before
    cand = load_run(run_dir).front[0].candidate
    res_px = int(cand["resolution"])
    x = fit_input(weights.data.test.tensors[0][:40], res_px)
    # the loaded files compute what a fresh build of the same weights computes (integer layers included)
    fresh = CodegenCpuTarget().build(weights.subnet(cand), input_shape=tuple(x[:1].shape))
    want = np.concatenate([fresh.run(x[i:i + 1].numpy()) for i in range(len(x))])
    got = np.concatenate([runnable.run(x[i:i + 1].numpy()) for i in range(len(x))])
    assert np.abs(got - want).max() < 1e-5
    if not any(op.bits == 8 for op in runnable.ops):  # all float: also the float torch forward
        with torch.no_grad():
            assert np.abs(got - weights.subnet(cand).float_network()(x).numpy()).max() < 1e-3
    assert res.manifest["accuracy_of"] == "codegen" and res.manifest["verification"]["codegen"]["images"] == len(weights.data.test)
    again = export_run(run_dir, select=0, target="codegen-cpu", out=tmp_path / "again", measure=False)[0].directory
    for name in ("weights.npz", "codegen.json", "model.onnx", "manifest.json", *(f"kernels/{p.name}" for p in (d / "kernels").iterdir())):
        assert (d / name).read_bytes() == (again / name).read_bytes(), name
    lib = next((d / "kernels").glob("*.so"))
    changed = lib.with_name(lib.name + ".changed")
    changed.write_bytes(lib.read_bytes() + b"\0")
    changed.replace(lib)  # a new file in its place: rewriting the mapped one in place would crash this process at exit
    with pytest.raises(ExportedModelError, match="changed since export"):
        load_exported(d)


def test_a_relative_checkpoint_is_found_where_the_search_read_it(run_dir, tmp_path, monkeypatch):
    from tritune.search.export.runs import recorded_input

    run = load_run(run_dir)
    (recorded,) = run.inputs
    monkeypatch.chdir(tmp_path)  # another working directory than the search's
    relative = str(Path(recorded).relative_to(Path(recorded).parents[1]))
    path, record = recorded_input(run, relative)
    assert str(path) == recorded and record == run.inputs[recorded]
    path, record = recorded_input(run, "elsewhere/other.safetensors")
    assert record is None and path == tmp_path / "elsewhere" / "other.safetensors"


def test_timing_a_folder_that_is_not_an_export_is_a_clean_error(tmp_path):
    from tritune.search.export.timing import measure_folders

    with pytest.raises(ValueError, match="processes: 0 not allowed"):
        measure_folders([tmp_path], "ort-cpu", processes=0)
    assert measure_folders([], "ort-cpu") == []

    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ExportError, match=r"timing on ort-cpu failed: KeyError") as err:
        measure_folders([tmp_path], "ort-cpu")
    assert "\n" not in str(err.value)
