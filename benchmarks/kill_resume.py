"""Benchmark: kill -9 at random moments, then ``--resume`` until done; nothing lost, nothing twice.

Four scenarios, each a real ``tritune search`` process killed with SIGKILL:

* ``inprocess``        -- the search process (NAS-Bench-201 tables, in-process executor);
* ``ray-driver``       -- the driver of a ``--ray`` search (tables); its local Ray must go too;
* ``measured-latency`` -- an in-process search whose latency is *measured* with onnxruntime
  and constrained, so the strategy screens candidates by a noisy number (a tiny mobilenet
  supernet scored on ``digits``);
* ``ray-worker``       -- a Ray worker process in the middle of a ``--ray`` search (supernet
  fine-tuning trials of a few seconds); the driver lives on and retries the lost trial.

Each repetition starts a fresh run and kills it at a random moment: once its store holds k
finished trials, k drawn uniformly from 0..N-1 (N: the reference's trials), plus a random delay
of up to one trial's mean duration (``ray-worker``: up to ``--worker-kills`` times, a random
worker each time, at random intervals); then it resumes until the command exits 0. Counted against the run's own reference:

* **lost** -- a reference trial missing from the final store, or a trial stored before a kill
  and gone or changed after it;
* **duplicated** -- a trial stored before a kill and evaluated again after it (its stored row,
  start time and worker included, changed), or a candidate evaluated under two trial numbers
  where the reference has it once;
* **identical** -- the final trials (number, candidate id, status, metrics) equal the reference.

The reference is an uninterrupted run of the same job -- except for ``measured-latency``, where
two uninterrupted runs measure different latencies: there it is an uninterrupted run fed the
killed run's stored latency measurements (its ``cheap`` table), which is what "the same trials
as without the kill" means for a measured metric. For the driver kills the benchmark also
times how long the killed search's processes live on (``leftover s``) and checks that its Ray
session directory is gone.

    python benchmarks/kill_resume.py                 # 10 repetitions per scenario
    python benchmarks/kill_resume.py --reps 2 --scenarios inprocess ray-worker
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from tritune.search.processes import alive, cmdline, descendants

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = ("inprocess", "ray-driver", "measured-latency", "ray-worker")
RAY_SESSIONS = Path(tempfile.gettempdir()) / "tritune-ray"


# ----- jobs -----------------------------------------------------------------------------------------
def nb201_job(run_dir: Path) -> dict:
    return {
        "name": "kill-nb201",
        "space": "nb201",
        "evaluators": [{"kind": "nb201-accuracy", "dataset": "cifar10"},
                       {"kind": "latency", "target": "nb201-table", "column": "help_fpga"}],
        "objectives": [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency", "direction": "minimize"}],
        "constraints": [{"metric": "latency", "max": 4.0}],
        "strategy": {"name": "evolution", "population": 10, "sample_size": 4},
        "budget": {"evaluations": 120},
        "batch_size": 4,
        "seed": 3,
        "run_dir": str(run_dir),
    }


TINY_SPACE = {"name": "mobilenet", "resolutions": [16], "widths": [0.25, 0.5], "depths": [1, 2], "expands": [3, 4],
              "kernels": [3, 5], "in_channels": 1, "num_classes": 10}


def tiny_checkpoint(path: Path) -> Path:
    """An untrained (seeded) supernet of `TINY_SPACE`: scoring it is deterministic, and a
    fine-tune of it is a real training run."""
    from tritune.spaces import create as create_space
    from tritune.spaces.mobilenet.supernet import MobileNetSupernet
    from tritune.spaces.checkpoint import save_checkpoint

    space_options = {k: v for k, v in TINY_SPACE.items() if k != "name"}
    net = MobileNetSupernet(create_space("mobilenet", **space_options), {"seed": 0})
    return save_checkpoint(path, net, extra={"data": "digits"})


def measured_latency_job(run_dir: Path, checkpoint: Path) -> dict:
    return {
        "name": "kill-ort",
        "space": TINY_SPACE,
        "evaluators": [{"kind": "supernet-accuracy", "checkpoint": str(checkpoint), "dataset": "digits",
                        "calib_batches": 1, "calib_batch_size": 64},
                       {"kind": "latency", "target": "ort-cpu"}],
        "objectives": [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency", "direction": "minimize"}],
        "constraints": [{"metric": "latency", "max": 0.11}],  # ms; about half of this space breaks it
        "strategy": {"name": "evolution", "population": 4, "sample_size": 2},
        "budget": {"evaluations": 8},
        "batch_size": 2,
        "seed": 0,
        "run_dir": str(run_dir),
    }


def finetune_job(run_dir: Path, checkpoint: Path, evaluations: int = 12) -> dict:
    return {
        "name": "kill-finetune",
        "space": TINY_SPACE,
        "evaluators": [{"kind": "supernet-finetune", "checkpoint": str(checkpoint), "dataset": "digits", "epochs": 0.25,
                        "batch_size": 32, "calib_batches": 1, "calib_batch_size": 64, "threads": 1}],
        "objectives": [{"metric": "accuracy", "direction": "maximize"}],
        "strategy": {"name": "random"},
        "budget": {"evaluations": evaluations},
        "batch_size": 4,
        "seed": 0,
        "run_dir": str(run_dir),
    }


# ----- processes --------------------------------------------------------------------------------------
def ray_sessions() -> set[str]:
    return {p.name for p in RAY_SESSIONS.iterdir()} if RAY_SESSIONS.is_dir() else set()


# ----- the store ----------------------------------------------------------------------------------------
def stored_rows(run_dir: Path) -> dict[int, tuple]:
    """Finished trials: number -> (candidate id, status, metrics, started, finished, worker)."""
    db = run_dir / "trials.db"
    if not db.exists():
        return {}
    for _ in range(20):
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                rows = con.execute("SELECT number, candidate_id, status, metrics, started, finished, worker FROM trials "
                                   "WHERE status != 'running'").fetchall()
            finally:
                con.close()
            return {r[0]: tuple(r[1:]) for r in rows}
        except sqlite3.DatabaseError:
            time.sleep(0.1)
    return {}


def sequence(rows: dict[int, tuple]) -> list[tuple]:
    return [(n, r[0], r[1], json.loads(r[2])) for n, r in sorted(rows.items())]


# ----- one run ------------------------------------------------------------------------------------------
@dataclass
class Rep:
    kills: int = 0
    hit: int = 0  # kills that interrupted a trial in flight
    stored_at_kill: list[int] = field(default_factory=list)  # finished trials in the store at each kill
    resumes: int = 0
    lost: int = 0
    duplicated: int = 0
    identical: bool = False
    leftover_s: float = 0.0
    stale_session: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def search_cmd(job_path: Path, ray: bool, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "tritune.cli.main", "search", str(job_path), "--quiet"]
    if ray:
        cmd += ["--ray", "--workers", "2"]
    if resume:
        cmd.append("--resume")
    return cmd


def run_to_end(cmd: list[str], env: dict, timeout: float = 900.0) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def kill_driver(cmd: list[str], env: dict, run_dir: Path, after: int, delay: float, rep: Rep) -> None:
    """Start the search; SIGKILL it ``delay`` seconds after its store holds ``after`` finished
    trials; then time how long its processes live on."""
    before = ray_sessions()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and _finished(run_dir) < after:
        time.sleep(0.02)
    deadline = time.monotonic() + delay
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is not None:
        rep.notes.append(f"finished before the kill (after {after} trials + {delay:.2f}s)")
        return
    family = descendants(proc.pid)
    running_before = _running(run_dir)
    proc.kill()
    proc.wait()
    killed_at = time.monotonic()
    rep.kills += 1
    rep.hit += int(bool(running_before))
    while any(alive(p) for p in family) and time.monotonic() - killed_at < 180:
        time.sleep(0.05)
    rep.leftover_s = max(rep.leftover_s, time.monotonic() - killed_at if family else 0.0)
    time.sleep(0.5)
    rep.stale_session = rep.stale_session or bool(ray_sessions() - before)


def _finished(run_dir: Path) -> int:
    return _count(run_dir, "status != 'running'")


def _running(run_dir: Path) -> int:
    return _count(run_dir, "status = 'running'")


def _count(run_dir: Path, where: str) -> int:
    db = run_dir / "trials.db"
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(f"SELECT count(*) FROM trials WHERE {where}").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return 0


def kill_workers(cmd: list[str], env: dict, kills: int, gap: tuple[float, float], rng: random.Random, rep: Rep) -> str:
    """Run a Ray search to its end, SIGKILLing a random Ray trial worker every ``gap`` seconds
    (at most ``kills`` times); returns the driver's stderr."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import threading

    err: list[str] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    next_kill = time.monotonic() + rng.uniform(*gap)
    while proc.poll() is None:
        time.sleep(0.05)
        if rep.kills >= kills or time.monotonic() < next_kill:
            continue
        workers = [p for p in descendants(proc.pid) if cmdline(p).startswith("ray::ImplicitFunc")]
        if not workers:
            continue
        try:
            os.kill(rng.choice(workers), signal.SIGKILL)
            rep.kills += 1
        except ProcessLookupError:
            pass
        next_kill = time.monotonic() + rng.uniform(*gap)
    reader.join(timeout=30)
    text = "".join(err)
    rep.hit += sum("RuntimeWarning: trial" in line and "evaluated again" in line for line in text.splitlines())
    if proc.returncode != 0:
        rep.notes.append(f"driver exited {proc.returncode}: {text.strip().splitlines()[-1:] if text.strip() else ''}")
    return text


def resume_until_done(job_path: Path, ray: bool, env: dict, rep: Rep, limit: int = 5) -> None:
    for _ in range(limit):
        done = run_to_end(search_cmd(job_path, ray, resume=True), env)
        rep.resumes += 1
        if done.returncode == 0:
            return
        rep.notes.append(f"resume exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")


def compare(reference: dict[int, tuple], final: dict[int, tuple], snapshots: list[dict[int, tuple]], rep: Rep) -> None:
    ref_seq, fin_seq = sequence(reference), sequence(final)
    rep.identical = ref_seq == fin_seq
    rep.lost = len(set(reference) - set(final))
    changed = set()
    for snap in snapshots:
        for number, row in snap.items():
            if number not in final:
                rep.lost += 1
            elif final[number] != row:
                changed.add(number)
    rep.duplicated = len(changed)
    # a candidate evaluated under more trial numbers than in the reference
    def counts(rows: dict[int, tuple]) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in rows.values():
            out[r[0]] = out.get(r[0], 0) + 1
        return out
    ref_counts, fin_counts = counts(reference), counts(final)
    rep.duplicated += sum(max(0, c - ref_counts.get(cid, 0)) for cid, c in fin_counts.items())


# ----- scenarios ------------------------------------------------------------------------------------------
def write_job(data: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def reference_run(make_job, work: Path, ray: bool, env: dict) -> tuple[dict[int, tuple], float]:
    run_dir = work / "reference"
    job_path = write_job(make_job(run_dir), work / "reference.yaml")
    started = time.monotonic()
    done = run_to_end(search_cmd(job_path, ray), env)
    if done.returncode != 0:
        raise SystemExit(f"reference run failed: {done.stderr[-2000:]}")
    return stored_rows(run_dir), time.monotonic() - started


def replay_reference(run_dir: Path, job_path: Path, work: Path, env: dict) -> dict[int, tuple]:
    """An uninterrupted run fed the measurements the killed run stored (its ``cheap`` table)."""
    replay = work / "replay"
    shutil.rmtree(replay, ignore_errors=True)
    replay.mkdir()
    source, copy = sqlite3.connect(run_dir / "trials.db"), sqlite3.connect(replay / "trials.db")
    source.backup(copy)  # WAL-aware, unlike a file copy
    source.close()
    copy.execute("DELETE FROM trials")
    copy.commit()
    copy.close()
    data = yaml.safe_load(job_path.read_text())
    data["run_dir"] = str(replay)
    replay_job = write_job(data, work / "replay.yaml")
    done = run_to_end(search_cmd(replay_job, ray=False, resume=True), env)
    if done.returncode != 0:
        raise SystemExit(f"replay run failed: {done.stderr[-2000:]}")
    return stored_rows(replay)


def run_scenario(name: str, reps: int, work: Path, env: dict, rng: random.Random, worker_kills: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work.parent / "supernet.safetensors"
    make_job = {
        "inprocess": nb201_job,
        "ray-driver": nb201_job,
        "measured-latency": lambda run_dir: measured_latency_job(run_dir, checkpoint),
        "ray-worker": lambda run_dir: finetune_job(run_dir, checkpoint),
    }[name]
    ray = name.startswith("ray")
    reference, duration = reference_run(make_job, work, ray, env)
    results = []
    from tqdm.auto import tqdm

    for i in tqdm(range(reps), desc=name, unit="rep"):
        rep = Rep()
        run_dir = work / f"run{i}"
        job_path = write_job(make_job(run_dir), work / f"run{i}.yaml")
        started = time.monotonic()
        snapshots = []
        if name == "ray-worker":
            kill_workers(search_cmd(job_path, ray), env, worker_kills, (0.15 * duration, 0.5 * duration), rng, rep)
            if not (run_dir / "trials.db").exists():
                rep.notes.append("no store")
            done = run_to_end(search_cmd(job_path, ray, resume=True), env)  # a finished run resumes as a no-op
            rep.resumes += 1
            if done.returncode != 0:
                rep.notes.append(f"resume exited {done.returncode}")
        else:
            per_trial = duration / max(1, len(reference))
            kill_driver(search_cmd(job_path, ray), env, run_dir, rng.randrange(len(reference)), rng.uniform(0.0, per_trial), rep)
            snapshots.append(stored_rows(run_dir))
            if rep.kills:
                rep.stored_at_kill.append(len(snapshots[-1]))
            if (run_dir / "trials.db").exists():
                resume_until_done(job_path, ray, env, rep)
            else:  # killed before the run existed: start it again
                done = run_to_end(search_cmd(job_path, ray), env)
                rep.resumes += 1
                if done.returncode != 0:
                    rep.notes.append(f"restart exited {done.returncode}")
        final = stored_rows(run_dir)
        ref = replay_reference(run_dir, job_path, work, env) if name == "measured-latency" else reference
        compare(ref, final, snapshots, rep)
        rep.seconds = time.monotonic() - started
        results.append(rep)
    return {
        "scenario": name,
        "reference_seconds": round(duration, 2),
        "reference_trials": len(reference),
        "reps": [asdict(r) for r in results],
        "kills": sum(r.kills for r in results),
        "hit": sum(r.hit for r in results),
        "resumes": sum(r.resumes for r in results),
        "lost": sum(r.lost for r in results),
        "duplicated": sum(r.duplicated for r in results),
        "identical": sum(r.identical for r in results),
        "leftover_s_max": round(max((r.leftover_s for r in results), default=0.0), 2),
        "stale_sessions": sum(r.stale_session for r in results),
    }


def table(rows: list[dict]) -> str:
    head = ("| scenario | runs | kills | trials stored at the kills | trials in flight hit | resumes | lost | duplicated | identical to reference "
            "| leftover Ray processes (max s) | stale Ray sessions |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        left = f"{r['leftover_s_max']:.1f}" if r["scenario"] in ("inprocess", "ray-driver", "measured-latency") else "n/a (driver lives)"
        stored = sorted(n for rep in r["reps"] for n in rep["stored_at_kill"])
        span = f"{stored[0]}..{stored[-1]} of {r['reference_trials']}" if stored else "n/a (driver lives)"
        lines.append(f"| {r['scenario']} | {len(r['reps'])} | {r['kills']} | {span} | {r['hit']} | {r['resumes']} | {r['lost']} | {r['duplicated']} "
                     f"| {r['identical']}/{len(r['reps'])} | {left} | {r['stale_sessions']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--worker-kills", type=int, default=2, help="worker kills per ray-worker run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "docs" / "results" / "kill_resume.json"))
    args = parser.parse_args()

    rng = random.Random(args.seed)
    env = dict(os.environ, PYTHONWARNINGS="always::RuntimeWarning", RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tritune-kill-") as tmp:
        work = Path(tmp)
        tiny_checkpoint(work / "supernet.safetensors")
        for name in args.scenarios:
            rows.append(run_scenario(name, args.reps, work / name, env, rng, args.worker_kills))
            print(table(rows[-1:]), flush=True)
    print()
    print(table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(out.read_text()) if out.exists() and set(args.scenarios) != set(SCENARIOS) else {}
    scenarios = {r["scenario"]: r for r in existing.get("scenarios", [])}
    scenarios.update({r["scenario"]: r for r in rows})
    out.write_text(json.dumps({
        "benchmark": "kill_resume", "machine": f"{platform.machine()} {os.cpu_count()} cpus (shared)",
        "command": " ".join(["python", "benchmarks/kill_resume.py", *sys.argv[1:]]),
        "scenarios": [scenarios[s] for s in SCENARIOS if s in scenarios],
    }, indent=1))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
