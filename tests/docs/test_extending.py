"""docs/extending.md is true: its worked example (a space with a network builder and a supernet, an
evaluator, a target and a strategy in one file) runs from the user's own Python, and as an
installed package (a dist-info with the page's entry points on the path) from the command line:
search, ort-cpu latency, supernet training and supernet accuracy, without touching any tritune file."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "extending.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def _files(tmp: Path) -> None:
    module = "\n\n".join(b for b in _blocks("python") if b.startswith("# mlp_digits.py"))
    (tmp / "mlp_digits.py").write_text(module)
    (tmp / "run.py").write_text(next(b for b in _blocks("python") if b.startswith("# run.py")))
    (tmp / "ort.py").write_text(next(b for b in _blocks("python") if b.startswith("# ort.py")))
    for name in ("mlp-digits.yaml", "mlp-supernet.yaml"):
        (tmp / name).write_text(next(b for b in _blocks("yaml") if b.startswith(f"# {name}")))


def _run(args: list[str], cwd: Path, path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(path)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_example_runs_from_the_users_python(tmp_path):
    _files(tmp_path)
    done = _run(["run.py"], tmp_path, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    fronts = [line for line in done.stdout.splitlines() if "accuracy" in line]
    assert fronts and all("latency" in line for line in fronts)
    assert (tmp_path / "runs" / "mlp-digits" / "trials.db").is_file()


def test_ort_cpu_times_a_space_of_ones_own(tmp_path):
    _files(tmp_path)
    done = _run(["ort.py"], tmp_path, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    ms = [float(v) for v in done.stdout.strip().strip("[]").split()]
    assert len(ms) == 3 and all(0.0 < v < 100.0 for v in ms), done.stdout


def _install(tmp_path: Path) -> Path:
    """The page's module as an installed package: a dist-info with its entry points; returns the site folder."""
    _files(tmp_path)
    site = tmp_path / "site"
    info = site / "mlp_digits-0.1.dist-info"
    info.mkdir(parents=True)
    (tmp_path / "mlp_digits.py").rename(site / "mlp_digits.py")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mlp-digits\nVersion: 0.1\n")
    groups: dict[str, dict[str, str]] = {}
    for line in next(b for b in _blocks("toml")).splitlines():  # [project.entry-points."GROUP"] / name = "module:object"
        if line.startswith("[project.entry-points."):
            group = groups.setdefault(line.split('"')[1], {})
        elif "=" in line:
            name, _, value = line.partition("=")
            group[name.strip()] = value.strip().strip('"')
    assert set(groups) == {"tritune.spaces", "tritune.evaluators", "tritune.targets", "tritune.strategies"}
    (info / "entry_points.txt").write_text("".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
                                                   for group, eps in groups.items()))
    return site


def test_example_runs_as_an_installed_plugin_from_the_cli(tmp_path):
    site = _install(tmp_path)
    listed = _run(["-m", "tritune.cli.main", "spaces", "list"], tmp_path, site)
    assert listed.returncode == 0 and "mlp-digits" in listed.stdout, listed.stderr[-2000:]
    searched = _run(["-m", "tritune.cli.main", "search", "mlp-digits.yaml"], tmp_path, site)
    assert searched.returncode == 0, searched.stderr[-2000:]
    shown = _run(["-m", "tritune.cli.main", "results", "show", "runs/mlp-digits"], tmp_path, site)
    assert shown.returncode == 0 and "mlp-digits" in (shown.stdout + shown.stderr), shown.stderr[-2000:]


def test_a_plugin_family_trains_and_searches_with_its_own_supernet(tmp_path):
    site = _install(tmp_path)
    trained = _run(["-m", "tritune.cli.main", "supernet", "train", "mlp-supernet.yaml", "--steps", "300", "--quiet"], tmp_path, site)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (tmp_path / "runs" / "mlp-supernet.safetensors").is_file()
    searched = _run(["-m", "tritune.cli.main", "search", "mlp-supernet.yaml"], tmp_path, site)
    assert searched.returncode == 0, searched.stderr[-2000:]
    with (tmp_path / "runs" / "mlp-supernet" / "trials.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12
    accuracy = [float(r["accuracy"]) for r in rows]
    latency = [float(r["latency"]) for r in rows]
    # inherited weights, not chance (10 %): every candidate of the shared weights classifies digits
    assert min(accuracy) > 60.0, accuracy
    assert all(0.0 < v < 100.0 for v in latency), latency  # measured by ort-cpu on this machine
    # the page's space has no trainable_network: a staged job asking to fine-tune is refused before any work
    staged = tmp_path / "mlp-staged.yaml"
    staged.write_text((tmp_path / "mlp-supernet.yaml").read_text().replace("run_dir: runs/mlp-supernet", "run_dir: runs/mlp-staged")
                      + "stages: {search: {}, refine: false, finetune: {}, front: false}\n")
    refused = _run(["-m", "tritune.cli.main", "search", "mlp-staged.yaml"], tmp_path, site)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert "job.stages.finetune" in refused.stderr and "trainable_network" in refused.stderr
    assert not (tmp_path / "runs" / "mlp-staged" / "trials.csv").exists()
