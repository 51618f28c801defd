"""Submit a search to a Ray cluster through the Ray Jobs API, and manage submitted searches.

`launch` checks the job here first (a bad job fails in one line before anything is uploaded),
then submits a fixed command built from checked values, each quoted for the shell::

    python -m tritune.cli.main search JOB --address auto --run-dir RUN_DIR --quiet [--workers N] [--resume]

Nothing from the job file reaches that command line except, quoted, the file's own path
relative to the working directory, so a job name or path cannot inject a command. The working
directory (default: the current one) is uploaded as the job's ``working_dir``; the job file
and every input file it names by a relative path (a checkpoint, a predictor) must lie inside
it. Results land in ``RUN_DIR`` on the head node (default ``~/tritune-runs/<job name>``), not in
the uploaded copy, which Ray deletes with the job.
"""
from __future__ import annotations

import asyncio
import logging
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping, Sequence

#: What the head runs: the module, not a console script that may be missing from PATH.
ENTRYPOINT = ("-m", "tritune.cli.main", "search")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
#: How long a submission waits for a freshly started cluster's job agent.
AGENT_WAIT_S = 60.0

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_SUBMISSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_PYTHON = re.compile(r"[A-Za-z0-9_./+-]{1,256}")
_ADDRESS = re.compile(r"https?://(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?/?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


_quiet = logging.getLogger(__name__)  # Ray's packaging helpers log every ignore file they read


class LaunchError(ValueError):
    """A launch or jobs request that cannot be made; the message names the value."""


@dataclass(frozen=True)
class Launch:
    """A checked submission: `entrypoint` and `runtime_env` are what the cluster gets."""

    job_file: Path
    job_name: str
    working_dir: Path
    run_dir: str
    workers: int | None = None
    resume: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    pip: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    python: str = "python"
    submission_id: str | None = None

    @property
    def job_path(self) -> str:
        """The job file relative to the working directory, as the head sees it."""
        return PurePosixPath(self.job_file.relative_to(self.working_dir).as_posix()).as_posix()

    @property
    def entrypoint(self) -> str:
        args = [self.python, *ENTRYPOINT, self.job_path, "--address", "auto", "--run-dir", self.run_dir, "--quiet"]
        if self.workers is not None:
            args += ["--workers", str(self.workers)]
        if self.resume:
            args.append("--resume")
        return shlex.join(args)

    @property
    def runtime_env(self) -> dict[str, Any]:
        from .executors import WORKER_ENV

        # the search's settings for its workers go into the job's runtime env, so that the driver
        # adds no runtime env of its own (see `RayExecutor`)
        env: dict[str, Any] = {"working_dir": str(self.working_dir), "env_vars": {**self.env, **WORKER_ENV}}
        if self.pip:
            env["pip"] = list(self.pip)
        if self.excludes:
            env["excludes"] = list(self.excludes)
        return env

    @property
    def metadata(self) -> dict[str, str]:
        return {"tritune_job": self.job_name, "tritune_run_dir": self.run_dir}


def _safe_name(name: str) -> str:
    """A job name as one path component (letters, digits, ``._-``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")[:100]
    return cleaned or "search"


def _no_control(value: str, what: str) -> str:
    if _CONTROL.search(value):
        raise LaunchError(f"{what}: {value!r} holds control characters; allowed: printable characters")
    return value


def check_address(address: str | None) -> str:
    """The dashboard address of a cluster: ``http(s)://HOST:PORT``."""
    if not address:
        raise LaunchError("--address: required; the head node's dashboard, e.g. http://HEAD:8265 (or set RAY_API_SERVER_ADDRESS)")
    if not isinstance(address, str) or not _ADDRESS.fullmatch(address):
        raise LaunchError(f"--address: {address!r} not allowed; allowed: http://HOST:PORT or https://HOST:PORT (the Ray dashboard)")
    return address.rstrip("/")


def check_submission_id(value: str) -> str:
    if not isinstance(value, str) or not _SUBMISSION_ID.fullmatch(value):
        raise LaunchError(f"job id: {value!r} not allowed; allowed: 1-64 letters, digits, '_' and '-', starting with a letter or digit")
    return value


def prepare(
    job_file: str | Path,
    *,
    working_dir: str | Path | None = None,
    run_dir: str | None = None,
    workers: int | None = None,
    resume: bool = False,
    env: Sequence[str] = (),
    pip: Sequence[str] = (),
    excludes: Sequence[str] = (),
    python: str = "python",
    submission_id: str | None = None,
) -> Launch:
    """Check a submission here: the job, its files inside the working dir, every option."""
    from .executors import WORKER_ENV
    from .job import Job
    from .run import INPUT_FILE_OPTIONS

    job_file = Path(job_file)
    job = Job.from_yaml(job_file)  # JobError (one line) for a bad job, before any upload
    root = Path(working_dir if working_dir is not None else Path.cwd()).expanduser()
    if not root.is_dir():
        raise LaunchError(f"--working-dir: {str(root)!r} is not a directory")
    root = root.resolve()
    job_abs = job_file.resolve()
    if not job_abs.is_relative_to(root):
        raise LaunchError(f"job file {str(job_file)!r}: not inside the working directory {str(root)!r}, so the cluster would not get it; "
                          "run from the project folder or pass --working-dir")
    _no_control(job_abs.relative_to(root).as_posix(), f"job file {str(job_file)!r}")
    if not_uploaded(root, job_abs.relative_to(root).as_posix(), excludes):
        raise LaunchError(f"job file {str(job_file)!r}: matches a .gitignore, .rayignore or --exclude pattern, so Ray would not upload it")
    for i, spec in enumerate(job.evaluators):
        for key in INPUT_FILE_OPTIONS:
            value = spec.get(key)
            if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
                if not (root / value).resolve().is_relative_to(root):
                    raise LaunchError(f"job file {str(job_file)!r}: evaluators[{i}].{key} {value!r} lies outside the working directory "
                                      f"{str(root)!r}; the cluster would not get it")
                if not (root / value).exists():
                    raise LaunchError(f"job file {str(job_file)!r}: evaluators[{i}].{key} {value!r} not found in the working directory {str(root)!r}")
                if not_uploaded(root, value, excludes):
                    raise LaunchError(f"job file {str(job_file)!r}: evaluators[{i}].{key} {value!r} matches a .gitignore, .rayignore or "
                                      "--exclude pattern, so Ray would not upload it; move it out of the ignored folder, or set "
                                      "RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1 (Ray then uploads git-ignored files; keep run folders out with --exclude)")

    if run_dir is None:
        run_dir = f"~/tritune-runs/{_safe_name(job.name)}"
    if not isinstance(run_dir, str) or not run_dir.strip():
        raise LaunchError("--run-dir: must be a non-empty path on the head node")
    _no_control(run_dir, "--run-dir")
    if not (run_dir.startswith("/") or run_dir.startswith("~")):
        raise LaunchError(f"--run-dir: {run_dir!r} must be absolute or start with ~ (a relative path would land in the job's "
                          "temporary copy of the working directory, which Ray deletes)")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise LaunchError(f"--workers: {workers!r} must be a positive integer")

    env_vars: dict[str, str] = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not _ENV_KEY.fullmatch(key):
            raise LaunchError(f"--env: {item!r} not allowed; allowed: NAME=VALUE with NAME of letters, digits and '_'")
        if key in WORKER_ENV:
            raise LaunchError(f"--env: {key} is set by tritune itself; allowed: any other name")
        env_vars[key] = _no_control(value, f"--env {key}")
    for req in pip:
        _no_control(req, "--pip")
    for pattern in excludes:
        _no_control(pattern, "--exclude")
    if not _PYTHON.fullmatch(python):
        raise LaunchError(f"--python: {python!r} not allowed; allowed: a command name or path of letters, digits and ./_+-")
    return Launch(job_abs, job.name, root, run_dir, workers, bool(resume), env_vars, tuple(pip), tuple(excludes), python,
                  None if submission_id is None else check_submission_id(submission_id))


def not_uploaded(root: Path, relative: str, excludes: Sequence[str] = ()) -> bool:
    """Whether Ray leaves ``root/relative`` out of the uploaded working directory: it skips
    what ``.gitignore`` (unless ``RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1``) and ``.rayignore`` files
    along the way, or the ``excludes`` patterns, match -- the same walk as Ray's packaging."""
    import os

    try:
        from ray._private.runtime_env.packaging import _get_excludes, get_excludes_from_ignore_files
    except ImportError:  # another Ray layout: nothing to check against
        return False
    include_gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
    checks: list[Callable[[Path], bool]] = [_get_excludes(root, list(excludes))] if excludes else []
    path = root
    for part in (None, *PurePosixPath(relative).parts):
        if part is not None:
            path = path / part
        if path.is_dir():
            checks.extend(get_excludes_from_ignore_files(path, include_gitignore=include_gitignore, logger=_quiet))
        if part is not None and any(check(path) for check in checks):
            return True
    return False


# ----- the cluster ----------------------------------------------------------------------------------
def client(address: str):
    """A `JobSubmissionClient` for the dashboard at ``address`` (a clear error when unreachable)."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:  # ray without its "default" extra
        raise LaunchError(f"the Ray Jobs API needs ray[default] ({exc}); pip install 'ray[default]'") from None
    address = check_address(address)
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise LaunchError(f"--address {address}: no Ray dashboard answers there ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _call(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a Jobs API request; its failures (unknown job, dashboard gone) become one line."""
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, ConnectionError, ValueError, OSError) as exc:
        raise LaunchError(f"{what}: {_first_line(exc)}") from None


def submit(launch: Launch, address: str) -> str:
    """Submit ``launch``; returns the job id."""
    jobs = client(address)
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return jobs.submit_job(entrypoint=launch.entrypoint, runtime_env=launch.runtime_env, metadata=launch.metadata,
                                   submission_id=launch.submission_id)
        except RuntimeError as exc:
            # a cluster that has just started answers this until its job agent is up
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise LaunchError(f"submit: {_first_line(exc)}") from None
            time.sleep(1.0)
        except (ConnectionError, ValueError, OSError) as exc:
            raise LaunchError(f"submit: {_first_line(exc)}") from None


def follow(address: str, job_id: str, write: Callable[[str], Any], poll: float = 1.0) -> str:
    """Stream the job's logs through ``write`` until it ends; returns its final status."""
    jobs = client(address)
    job_id = check_submission_id(job_id)

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(tail())
    except (RuntimeError, ConnectionError, OSError) as exc:
        write(f"\n(log stream ended: {_first_line(exc)})\n")
    while True:
        status = str(_call(f"job {job_id}", jobs.get_job_status, job_id))
        if status.split(".")[-1] in TERMINAL:
            return status.split(".")[-1]
        time.sleep(poll)


def list_jobs(address: str) -> list[dict[str, Any]]:
    """Every job the cluster knows, oldest first: id, status, start, tritune job, entrypoint."""
    rows = []
    for info in _call("list", client(address).list_jobs):
        meta = info.metadata or {}
        rows.append({
            "id": info.submission_id or info.job_id or "",
            "status": str(info.status).split(".")[-1],
            "start": _when(info.start_time),
            "end": _when(info.end_time),
            "job": meta.get("tritune_job", ""),
            "run_dir": meta.get("tritune_run_dir", ""),
            "entrypoint": info.entrypoint,
            "message": (info.message or "").strip().splitlines()[0] if info.message else "",
        })
    return sorted(rows, key=lambda r: r["start"])


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else ""


def job_info(address: str, job_id: str) -> dict[str, Any]:
    info = _call(f"job {job_id}", client(address).get_job_info, check_submission_id(job_id))
    meta = info.metadata or {}
    return {"id": info.submission_id or job_id, "status": str(info.status).split(".")[-1], "start": _when(info.start_time),
            "end": _when(info.end_time), "job": meta.get("tritune_job", ""), "run_dir": meta.get("tritune_run_dir", ""),
            "entrypoint": info.entrypoint, "message": (info.message or "").strip()}


def job_logs(address: str, job_id: str) -> str:
    return _call(f"job {job_id}", client(address).get_job_logs, check_submission_id(job_id))


def stop_job(address: str, job_id: str) -> bool:
    """Ask the cluster to stop the job; False when it had ended already."""
    return bool(_call(f"job {job_id}", client(address).stop_job, check_submission_id(job_id)))
