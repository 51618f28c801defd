"""``tritune launch`` and ``tritune jobs``: searches on a Ray cluster through its Jobs API.

    tritune launch JOB.yaml --address http://HEAD:8265      # submit, print the id, stream the logs
    tritune jobs list --address http://HEAD:8265
    tritune jobs status|logs|stop JOB_ID --address http://HEAD:8265

The address is the head node's dashboard (port 8265 by default); ``RAY_API_SERVER_ADDRESS``
stands in for ``--address``. See `tritune.search.launch` for what is submitted.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def _address(args: argparse.Namespace) -> str:
    from ..search.launch import check_address

    return check_address(args.address or os.environ.get("RAY_API_SERVER_ADDRESS"))


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _cmd_launch(args: argparse.Namespace) -> int:
    from ..search.launch import follow, prepare, submit

    address = _address(args)
    launch = prepare(args.job, working_dir=args.working_dir, run_dir=args.run_dir, workers=args.workers, resume=args.resume,
                     env=args.env, pip=args.pip, excludes=args.exclude, python=args.python, submission_id=args.job_id)
    job_id = submit(launch, address)
    print(f"job id: {job_id}")
    print(f"results: {launch.run_dir} on the head node")
    print(f"follow: tritune jobs logs {job_id} --address {address} --follow", flush=True)
    if args.detach:
        return 0
    try:
        status = follow(address, job_id, _write)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job goes on (tritune jobs stop {job_id} --address {address} ends it)", file=sys.stderr)
        return 130
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def _cmd_jobs(args: argparse.Namespace) -> int:
    from ..search import launch as api

    address = _address(args)
    if args.action == "list":
        rows = api.list_jobs(address)
        if not rows:
            print("no jobs")
            return 0
        print(f"{'id':34s} {'status':10s} {'start':19s}  {'job':20s} run dir")
        for r in rows:
            print(f"{r['id']:34s} {r['status']:10s} {r['start']:19s}  {r['job'] or '-':20s} {r['run_dir'] or '-'}")
        return 0
    if not args.job_id:
        raise ValueError(f"jobs {args.action}: give a job id (see tritune jobs list)")
    if args.action == "status":
        info = api.job_info(address, args.job_id)
        for key in ("id", "status", "start", "end", "job", "run_dir", "entrypoint", "message"):
            if info.get(key):
                print(f"{key + ':':12s} {info[key]}")
        return 0
    if args.action == "logs":
        if args.follow:
            status = api.follow(address, args.job_id, _write)
            print(f"job {args.job_id}: {status}")
        else:
            _write(api.job_logs(address, args.job_id))
        return 0
    stopped = api.stop_job(address, args.job_id)
    print(f"job {args.job_id}: {'stop requested' if stopped else 'not running (nothing to stop)'}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("launch", help="submit a search job to a Ray cluster (Ray Jobs API) and stream its logs")
    p.add_argument("job", help="job YAML file, inside the working directory")
    p.add_argument("--address", help="the head node's dashboard, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)")
    p.add_argument("--working-dir", help="folder uploaded to the cluster (default: the current one); holds the job and its input files")
    p.add_argument("--run-dir", help="where results land on the head node, absolute or ~/... (default: ~/tritune-runs/<job name>)")
    p.add_argument("--workers", type=int, help="parallel evaluations on the cluster")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="environment variable for the job (repeatable)")
    p.add_argument("--pip", action="append", default=[], metavar="REQ", help="pip requirement installed for the job (repeatable)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help="working-dir files not to upload (repeatable)")
    p.add_argument("--python", default="python", help="the cluster's Python command (default: python)")
    p.add_argument("--job-id", help="submission id to use (default: Ray picks one)")
    p.add_argument("--detach", action="store_true", help="print the job id and return without streaming the logs")
    p.set_defaults(func=_cmd_launch)

    p = sub.add_parser("jobs", help="list, inspect, read or stop jobs submitted to a Ray cluster")
    p.add_argument("action", choices=("list", "status", "logs", "stop"))
    p.add_argument("job_id", nargs="?")
    p.add_argument("--address", help="the head node's dashboard, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)")
    p.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    p.set_defaults(func=_cmd_jobs)
