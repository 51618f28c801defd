"""Data is data: hostile job files, run directories, checkpoints and predictor files run nothing,
exhaust nothing, and end in one line ``tritune: error: ...`` (exit 2) naming the file and field."""
from __future__ import annotations

import json
import shutil
import sqlite3
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
import yaml

from tritune.cli.main import main as cli_main
from tritune.search.job import Job, JobError
from tritune.search.jobfile import MAX_NODES, InputError, loads_yaml
from tritune.spaces import MobileNetSpace
from tritune.spaces.mobilenet.supernet import MobileNetSupernet
from tritune.spaces.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[2]
NB201 = REPO / "search" / "examples" / "nb201.yaml"
MOBILENET = REPO / "search" / "examples" / "mobilenet_mnist.yaml"
TINY = dict(resolutions=[16], widths=[0.25], depths=[1], expands=[3], kernels=[3], stem_stride=2, in_channels=1, num_classes=10)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli_main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("tritune: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def nb201_job(tmp_path: Path, **changes) -> dict:
    data = yaml.safe_load(NB201.read_text())
    data.update(budget={"evaluations": 4}, batch_size=2, strategy="random", run_dir=str(tmp_path / "run"))
    data.update(changes)
    return data


def write(path: Path, data: dict | str | bytes) -> Path:
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


# ------------------------------------------------------------------------------------ no code from data
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    hostile_extra = {"data": {"callable": "os:system", "kwargs": {"command": "touch MARKER"}}}
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return save_checkpoint(path, MobileNetSupernet(MobileNetSpace(**TINY)), extra=hostile_extra)


def hostile_jobs(checkpoint: Path, marker: Path) -> dict[str, dict]:
    command = f"touch {marker}"
    base = {"name": "hostile", "space": {"name": "mobilenet", **TINY},
            "objectives": [{"metric": "accuracy", "direction": "maximize"}], "budget": 2, "batch_size": 1}
    evaluator = {"kind": "supernet-accuracy", "checkpoint": str(checkpoint), "calib_batches": 1, "calib_batch_size": 8}
    return {
        "callable-mapping": {**base, "evaluators": [{**evaluator, "dataset": {"callable": "os:system", "kwargs": {"command": command}}}]},
        "module-function-string": {**base, "evaluators": [{**evaluator, "dataset": "os:system"}]},
        "checkpoint-extra": {**base, "evaluators": [evaluator]},  # the data set named inside the checkpoint
        "registered-name-with-kwargs": {**base, "evaluators": [{**evaluator, "dataset": {"name": "os:system", "kwargs": {"command": command}}}]},
    }


@pytest.mark.parametrize("case", ["callable-mapping", "module-function-string", "checkpoint-extra", "registered-name-with-kwargs"])
def test_a_hostile_job_file_runs_nothing(case, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    job = write(tmp_path / "hostile.yaml", hostile_jobs(tiny_checkpoint, marker)[case] | {"run_dir": str(tmp_path / "run")})
    code, _, err = run_cli(["search", str(job), "--quiet"], capsys)
    assert_clean(code, err, "hostile.yaml", "evaluators[0]")
    assert "never names code" in err or "unknown data set" in err
    with pytest.raises(JobError):
        Job.from_yaml(job)
    assert not marker.exists()
    assert not (tmp_path / "run" / "trials.db").exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("run")
    job = write(tmp / "job.yaml", nb201_job(tmp))
    assert cli_main(["search", str(job), "--quiet"]) == 0
    return tmp / "run"


def test_a_hostile_run_directory_runs_nothing(finished_run, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """A run directory someone sent: its trials.db stores a job whose data set is os:system."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    run = tmp_path / "sent"
    shutil.copytree(finished_run, run)
    for name, job in hostile_jobs(tiny_checkpoint, marker).items():
        with sqlite3.connect(run / "trials.db") as db:
            db.execute("UPDATE meta SET value = ? WHERE key = 'job'", (json.dumps(job | {"run_dir": str(run)}),))
        code, out, err = run_cli(["results", "show", str(run)], capsys)
        assert code == 0 and "hostile" in out, (name, err)  # viewing shows the trials and builds nothing
        with pytest.raises(JobError):  # validating the stored job refuses it, still running nothing
            Job.from_dict(job)
        # resuming it with some job file: the stored job is compared, never built
        mine = write(tmp_path / "mine.yaml", nb201_job(tmp_path, run_dir=str(run)))
        code, _, err = run_cli(["search", str(mine), "--resume", "--quiet"], capsys)
        assert code in (0, 2) and "Traceback" not in err
        assert not marker.exists(), name


@pytest.mark.parametrize("stored, needle", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"name": "x", "name": "y"}', "duplicate key"),
    ('{"space": "nb201", "evaluators": NaN}', "NaN not allowed"),
    ("\"" + "x" * 20_000 + "\"", "a string of 20000 characters"),
    ('"nb201"', "job: expected a mapping"),
    ("not json at all", "not valid JSON"),
], ids=["deep", "duplicate", "nan", "long-string", "not-a-mapping", "not-json"])
def test_a_damaged_stored_job_is_one_line(stored, needle, finished_run, tmp_path, capsys):
    run = tmp_path / "sent"
    shutil.copytree(finished_run, run)
    with sqlite3.connect(run / "trials.db") as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'job'", (stored,))
    code, _, err = run_cli(["results", "show", str(run)], capsys)
    assert_clean(code, err, needle)


def test_codegen_compiler_and_cache_are_not_taken_from_files(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    for option, value in (("cc", f"touch {marker}"), ("cache_dir", str(tmp_path))):
        evaluators = [{"kind": "nb201-accuracy"}, {"kind": "latency", "target": "codegen-cpu", option: value}]
        job = write(tmp_path / "cc.yaml", nb201_job(tmp_path, evaluators=evaluators, constraints=[]))
        code, _, err = run_cli(["search", str(job)], capsys)
        assert_clean(code, err, f"codegen-cpu.{option}: not accepted from a file")
        code, _, err = run_cli(["predict", "--target", "codegen-cpu", "--target-option", f"{option}={value}", "--space", "nb201"], capsys)
        assert_clean(code, err, f"codegen-cpu.{option}")
    assert not marker.exists()


# ------------------------------------------------------------------------------------ bombs and bounds
BILLION_LAUGHS = "\n".join(
    ['lol: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f'l{i}: &{chr(98 + i)} [' + ",".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)]
    + ["space: nb201", "evaluators: *i", "objectives: [{metric: accuracy}]"]
)


def test_an_alias_bomb_fails_fast_and_small(tmp_path, capsys):
    assert len(BILLION_LAUGHS.encode()) < 800  # 9 ** 9 = 387 million strings once expanded
    tracemalloc.start()
    t0 = time.perf_counter()
    code, _, err = run_cli(["search", str(write(tmp_path / "bomb.yaml", BILLION_LAUGHS))], capsys)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert_clean(code, err, "bomb.yaml", "alias")
    assert seconds < 0.5 and peak < 20 << 20, (seconds, peak)
    with pytest.raises(InputError, match="a cycle"):
        loads_yaml("a: &a [1, *a]")
    with pytest.raises(InputError, match=f"more than {MAX_NODES} values"):
        loads_yaml("a: &a [" + ",".join(["x"] * 2000) + "]\nb: [" + ",".join(["*a"] * 60) + "]")  # few aliases, many values


@pytest.mark.parametrize("edit, needles", [
    (lambda t: t.replace("max: 4.0", 'max: "4.0"'), ["job.constraints[0].max: '4.0' not allowed"]),
    (lambda t: t.replace("max: 4.0", "max: .nan"), ["job.constraints[0].max: nan not allowed"]),
    (lambda t: t.replace("max: 4.0", "max: true"), ["job.constraints[0].max: True not allowed"]),
    (lambda t: t.replace("max: 4.0", "max: 2.0, min: 3.0"), ["min 3 > max 2"]),
    (lambda t: t + "executor: {kind: inprocess, workers: true}\n", ["job.executor.workers: True"]),
    (lambda t: t + "executor: {kind: ray, address: 7}\n", ["job.executor.address: 7"]),
    (lambda t: t.replace("seed: 0", "seed:"), ["job.seed: None not allowed"]),
    (lambda t: t.replace("seed: 0", "seed: 4294967296"), ["job.seed: 4294967296 not allowed"]),
    (lambda t: t.replace("name: predictor", "name: predictor\n  seed: 3"), ["'seed' is set by the search", "top-level seed"]),
    (lambda t: t.replace("name: predictor", "name: predictor\n  n_initial: '20'"), ["n_initial", "expected an integer"]),
    (lambda t: t + "seed: 4\n", ["duplicate key 'seed'"]),
    (lambda t: t.replace("space: nb201", "space: " + "[" * 3000 + "]" * 3000), ["nested deeper than"]),
    (lambda t: t.replace("name: nb201-fpga", "name: " + "x" * 5000), ["job.name"]),
    (lambda t: t.replace("name: nb201-fpga", "name: ../../etc"), ["job.name"]),
    (lambda t: t.replace("help_fpga", "help_fpga\n    path: !!python/object/apply:os.system ['true']"), ["tag", "not allowed"]),
    (lambda t: t.replace("evaluations: 100", "evaluations: 100\n  max_trials: 3.5"), ["job.budget.max_trials: 3.5"]),
    (lambda t: t.replace("column: help_fpga", "column: [help_fpga]"), ["column", "expected a string"]),
    (lambda t: t.replace("dataset: cifar10", "dataset: 10"), ["dataset: 10 (int) not allowed"]),
    (lambda t: "\ufeff" + t + "\nobjectives: []\n", ["duplicate key 'objectives'"]),
])
def test_bad_job_fields_are_one_line_naming_the_field(edit, needles, tmp_path, capsys):
    job = write(tmp_path / "job.yaml", edit(NB201.read_text()))
    code, _, err = run_cli(["search", str(job), "--run-dir", str(tmp_path / "run")], capsys)
    assert_clean(code, err, "job.yaml", *needles)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("edit, needle", [
    (lambda t: t.replace("seed: 0", "seed: null"), "job.seed: None"),
    (lambda t: t.replace("target: ort-cpu", "target: 0"), "evaluator latency.target: 0 (int) not allowed; expected a string"),
    (lambda t: t.replace("checkpoint: runs/mobilenet-mnist-supernet.safetensors", "checkpoint: 5"),
     "evaluator supernet-accuracy.checkpoint: 5 (int) not allowed; expected a string | a path | null"),
    (lambda t: t.replace("widths: [0.25, 0.35, 0.5]", "widths: [0.25, '0.35']"), "space mobilenet.widths"),
])
def test_mobilenet_example_type_errors_are_clean(edit, needle, tmp_path, capsys):
    job = write(tmp_path / "mn.yaml", edit(MOBILENET.read_text()))
    code, _, err = run_cli(["search", str(job)], capsys)
    assert_clean(code, err, "mn.yaml", needle)


def test_junk_files_and_paths_are_one_line(tmp_path, capsys):
    junk = write(tmp_path / "junk.yaml", bytes(range(256)) * 4)
    assert_clean(*run_cli(["search", str(junk)], capsys)[::2], "junk.yaml", "not UTF-8")
    nul = write(tmp_path / "nul.yaml", b"space: nb201\x00\n")
    assert_clean(*run_cli(["search", str(nul)], capsys)[::2], "nul.yaml", "NUL")
    assert_clean(*run_cli(["search", str(tmp_path)], capsys)[::2], "is a directory")
    big = write(tmp_path / "big.yaml", "a: " + "x" * (2 << 20))
    assert_clean(*run_cli(["search", str(big)], capsys)[::2], "big.yaml", "larger than")
    job = write(tmp_path / "job.yaml", nb201_job(tmp_path))
    assert_clean(*run_cli(["search", str(job), "--run-dir", "README.md/run"], capsys)[::2], "README.md", "which is a file")
    assert_clean(*run_cli(["search", str(job), "--run-dir", str(NB201)], capsys)[::2], "is a file, not a directory")
    assert_clean(*run_cli(["search", str(job), "--workers", "0"], capsys)[::2], "--workers")
    assert_clean(*run_cli(["results", "show", str(tmp_path)], capsys)[::2], "holds no trials.db")
    (tmp_path / "db" / "trials.db").mkdir(parents=True)
    assert_clean(*run_cli(["results", "show", str(tmp_path / "db")], capsys)[::2], "holds no trials.db")


def test_a_corrupt_trials_db_is_one_line(finished_run, tmp_path, capsys):
    run = tmp_path / "sent"
    shutil.copytree(finished_run, run)
    db = run / "trials.db"
    for wal in run.glob("trials.db-*"):
        wal.unlink()
    data = db.read_bytes()
    db.write_bytes(data[:100] + bytes(b ^ 0x5A for b in data[100:2000]) + data[2000:])
    code, _, err = run_cli(["results", "show", str(run)], capsys)
    assert_clean(code, err)
    db.write_bytes(b"SQLite format 3\x00" + b"\xff" * 600)
    assert_clean(*run_cli(["results", "show", str(run)], capsys)[::2])


# ------------------------------------------------------------------------------------ checkpoints
def _header_and_tensors(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as fh:
        header = json.loads(fh.metadata()["tritune"])
    return header, load_file(str(path))


def _rewrite(path: Path, header: dict, tensors: dict) -> Path:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"tritune": json.dumps(header)})
    return path


@pytest.fixture()
def checkpoint(tmp_path) -> Path:
    net = MobileNetSupernet(MobileNetSpace(**TINY))
    return save_checkpoint(tmp_path / "sn.safetensors", net, step=3, extra={"sensitivity": {"stage1": [0.5, 0.25]}})


def test_a_checkpoint_carries_a_tensor_checksum_and_keeps_extra(checkpoint):
    header, _ = _header_and_tensors(checkpoint)
    assert header["schema"] == 2 and len(header["tensors_sha256"]) == 64
    ck = load_checkpoint(checkpoint)
    assert ck.step == 3 and ck.extra == {"sensitivity": {"stage1": [0.5, 0.25]}}


def test_a_schema_1_checkpoint_without_checksum_still_loads(checkpoint):
    header, tensors = _header_and_tensors(checkpoint)
    del header["tensors_sha256"]
    header["schema"] = 1
    _rewrite(checkpoint, header, tensors)
    assert load_checkpoint(checkpoint).step == 3


def _flip_bit(tensors: dict) -> dict:
    key = next(k for k in sorted(tensors) if k.startswith("model.") and tensors[k].is_floating_point())
    t = tensors[key].clone()
    t.view(torch.int32).view(-1)[0] ^= 1 << 3
    return {**tensors, key: t}


def _set(tensors: dict, value: float) -> dict:
    key = next(k for k in sorted(tensors) if k.startswith("model.") and tensors[k].is_floating_point())
    t = tensors[key].clone()
    t.view(-1)[0] = value
    return {**tensors, key: t}


def _reshape(tensors: dict) -> dict:
    key = next(k for k in sorted(tensors) if k.startswith("model.") and tensors[k].dim() >= 1 and tensors[k].shape[0] > 1)
    return {**tensors, key: tensors[key][:-1].clone()}


@pytest.mark.parametrize("damage, needle", [
    (lambda h, t: ({k: v for k, v in h.items() if k != "space"}, t), "lacks the field 'space'"),
    (lambda h, t: ({**h, "step": "7"}, t), "'step' is str"),
    (lambda h, t: ({**h, "space": {"name": "mobilenet", "config": {**h["space"]["config"], "widths": "wide"}}}, t), "widths"),
    (lambda h, t: ({**h, "supernet": {**h["supernet"], "bn_eps": "tiny"}}, t), "bn_eps"),
    (lambda h, t: ({**h, "tensors_sha256": None}, t), "tensor checksum"),
    (lambda h, t: (h, _flip_bit(t)), "tensor checksum mismatch"),
    (lambda h, t: (h, _reshape(t)), "tensor checksum mismatch"),
    (lambda h, t: (h, {k: v for k, v in t.items() if k != "rng.torch"}), "tensor checksum mismatch"),
])
def test_damaged_checkpoints_are_one_clear_error(damage, needle, checkpoint):
    header, tensors = damage(*_header_and_tensors(checkpoint))
    _rewrite(checkpoint, header, tensors)
    with pytest.raises(CheckpointError, match="supernet checkpoint .*" + needle.replace("(", r"\(")) as info:
        load_checkpoint(checkpoint)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("damage, needle", [
    (lambda t: _set(t, float("nan")), "NaN or infinite"),
    (lambda t: _set(t, float("inf")), "NaN or infinite"),
    (_reshape, "this supernet needs"),
])
def test_resealed_bad_weights_are_refused(damage, needle, checkpoint):
    """A checksum recomputed after the damage (a diverged training run, a hand edit) still leaves
    NaN weights and wrong shapes refused."""
    from tritune.spaces.checkpoint import tensors_checksum

    header, tensors = _header_and_tensors(checkpoint)
    tensors = damage(tensors)
    _rewrite(checkpoint, {**header, "tensors_sha256": tensors_checksum(tensors)}, tensors)
    with pytest.raises(CheckpointError, match=needle):
        load_checkpoint(checkpoint)


def test_truncated_and_garbage_checkpoints_are_one_clear_error(checkpoint, tmp_path):
    data = checkpoint.read_bytes()
    for cut in (4, 12, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="supernet checkpoint"):
            load_checkpoint(bad)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(garbage)
