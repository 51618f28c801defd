"""`tritune launch` checks everything before a byte leaves the machine, and what it submits is a
fixed command of quoted, checked values (no cluster needed here; tests/search/test_ray_cluster.py
submits to a real one)."""
from __future__ import annotations

import shlex
import sys

import pytest
import yaml

from tritune.cli.main import main as cli_main
from tritune.search.job import JobError
from tritune.search.launch import LaunchError, check_address, not_uploaded, prepare

from .test_search_run import job_dict

TINY_SPACE = {"name": "mobilenet", "resolutions": [16], "widths": [0.25], "depths": [1], "expands": [3], "kernels": [3],
              "in_channels": 1, "num_classes": 10}


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", raising=False)
    return tmp_path


def _write(path, data) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _checkpoint_job(work, checkpoint: str) -> dict:
    from tritune.spaces import create as create_space
    from tritune.spaces.mobilenet.supernet import MobileNetSupernet
    from tritune.spaces.checkpoint import save_checkpoint

    save_checkpoint(work / checkpoint, MobileNetSupernet(create_space("mobilenet", **{k: v for k, v in TINY_SPACE.items() if k != "name"})),
                    extra={"data": "digits"})
    return {"name": "ck", "space": TINY_SPACE,
            "evaluators": [{"kind": "supernet-accuracy", "checkpoint": checkpoint, "dataset": "digits", "calib_batches": 1}],
            "objectives": [{"metric": "accuracy", "direction": "maximize"}], "budget": {"evaluations": 2}}


def test_the_entrypoint_is_a_fixed_command_of_quoted_values(work):
    hostile = work / "jobs" / "a b; touch PWNED $(id) `id` '\".yaml"
    _write(hostile, job_dict(work, name="nice"))
    launch = prepare(hostile, run_dir="/data/runs/x; rm -rf ~", workers=3, resume=True, env=["OMP_NUM_THREADS=1"])
    assert shlex.split(launch.entrypoint) == [
        "python", "-m", "tritune.cli.main", "search", "jobs/a b; touch PWNED $(id) `id` '\".yaml",
        "--address", "auto", "--run-dir", "/data/runs/x; rm -rf ~", "--quiet", "--workers", "3", "--resume",
    ]
    assert launch.runtime_env == {"working_dir": str(work), "env_vars": {"OMP_NUM_THREADS": "1", "RAY_CHDIR_TO_TRIAL_DIR": "0"}}
    assert launch.metadata == {"tritune_job": "nice", "tritune_run_dir": "/data/runs/x; rm -rf ~"}
    assert prepare(hostile).run_dir == "~/tritune-runs/nice"  # on the head, expanded there by tritune


def test_bad_submissions_are_refused_before_anything_is_sent(work, monkeypatch):
    job = _write(work / "job.yaml", job_dict(work))
    outside = _write(work.parent / f"{work.name}-outside.yaml", job_dict(work))
    for kwargs, message in [
        ({"run_dir": "runs/x"}, "must be absolute"),
        ({"workers": 0}, "positive integer"),
        ({"workers": True}, "positive integer"),
        ({"env": ["1BAD=x"]}, "NAME=VALUE"),
        ({"env": ["NOVALUE"]}, "NAME=VALUE"),
        ({"env": ["RAY_CHDIR_TO_TRIAL_DIR=1"]}, "set by tritune"),
        ({"env": ["A=b\nc"]}, "control characters"),
        ({"python": "python; id"}, "--python"),
        ({"submission_id": "x y"}, "job id"),
        ({"working_dir": str(work / "nope")}, "not a directory"),
    ]:
        with pytest.raises(LaunchError, match=message):
            prepare(job, **kwargs)
    with pytest.raises(LaunchError, match="not inside the working directory"):
        prepare(outside)
    with pytest.raises(JobError, match="budget"):
        prepare(_write(work / "bad.yaml", job_dict(work, budget={"evaluations": 0})))
    for address in ("127.0.0.1:8265", "http://h:8265/api; id", "ray://h:10001", ""):
        with pytest.raises(LaunchError, match="--address"):
            check_address(address)
    assert check_address("http://127.0.0.1:8265/") == "http://127.0.0.1:8265"


def test_input_files_must_reach_the_cluster(work, monkeypatch):
    (work / ".gitignore").write_text("runs/\n")
    job = _write(work / "job.yaml", _checkpoint_job(work, "runs/sn.safetensors"))
    assert not_uploaded(work, "runs/sn.safetensors") and not not_uploaded(work, "job.yaml")
    with pytest.raises(LaunchError, match=r"evaluators\[0\].checkpoint 'runs/sn.safetensors' matches a .gitignore"):
        prepare(job)
    monkeypatch.setenv("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "1")  # Ray then uploads git-ignored files
    assert prepare(job).job_path == "job.yaml"
    with pytest.raises(LaunchError, match="--exclude"):
        prepare(job, excludes=["*.safetensors"])
    sub = _write(work / "sub" / "job.yaml", _checkpoint_job(work, "runs/sn.safetensors"))  # valid here, not under sub/
    with pytest.raises(LaunchError, match="not found in the working directory"):
        prepare(sub, working_dir=work / "sub")


def test_cli_errors_are_one_line(work, capsys, monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    job = _write(work / "job.yaml", job_dict(work))
    assert cli_main(["launch", job]) == 2
    assert capsys.readouterr().err.strip() == ("tritune: error: --address: required; the head node's dashboard, e.g. "
                                               "http://HEAD:8265 (or set RAY_API_SERVER_ADDRESS)")
    assert cli_main(["launch", job, "--address", "http://127.0.0.1:9", "--run-dir", "rel"]) == 2
    assert "must be absolute" in capsys.readouterr().err
    assert cli_main(["jobs", "list", "--address", "http://127.0.0.1:9"]) == 2  # nothing listens on port 9
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no Ray dashboard answers there" in err
    assert cli_main(["jobs", "status", "--address", "http://127.0.0.1:9"]) == 2
    assert "give a job id" in capsys.readouterr().err
    assert "Traceback" not in capsys.readouterr().err
    assert sys.modules.get("tritune.search.launch") is not None
