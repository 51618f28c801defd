"""The ``tritune`` command line: search, spaces, results, profile, predict, supernet."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np


def _cmd_search(args: argparse.Namespace) -> int:
    from ..search.job import Job, check_run_dir
    from ..search.run import run_search

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers: {args.workers} not allowed; expected an integer >= 1")
    if args.address is not None and not args.address.strip():
        raise ValueError("--address: empty; expected a Ray address such as 'ray://host:10001' or 'auto'")
    job = Job.from_yaml(args.job)
    check_run_dir(args.run_dir or job.run_dir, "--run-dir" if args.run_dir else f"job file {args.job!r}: job.run_dir")
    if job.stages is not None:
        return _run_stages(job, args)
    result = run_search(
        job, run_dir=args.run_dir, resume=args.resume, executor="ray" if args.ray else None,
        workers=args.workers, address=args.address, progress=not args.quiet,
    )
    problem = job.problem()
    print(f"\n{job.name}: {result.evaluations} evaluations ({result.replayed} replayed from the store), "
          f"{len(result.records)} trials, costly queries {result.queries['costly']}, cheap queries {result.queries['cheap']}")
    print(f"Pareto front ({len(result.front)} candidates):")
    print(result.table(problem))
    print(f"\nwritten: {result.run_dir}/trials.csv, pareto.json, pareto.png, trials.db")
    return 0


def _run_stages(job, args: argparse.Namespace) -> int:
    from ..search.stages.runner import run_pipeline

    result = run_pipeline(job, run_dir=args.run_dir, resume=args.resume, executor="ray" if args.ray else None,
                          workers=args.workers, address=args.address, progress=not args.quiet)
    print(f"\n{job.name}: {len(result.stages)} stages")
    for record in result.stages:
        print(f"  {record.name:9s} {record.seconds:8.1f} s  {_stage_line(record)}")
    if result.final:
        print(f"\nFinal front ({len(result.final)} models; accuracy of the exported files, latency measured on this machine):")
        print(f"  {'candidate':12s}  {'accuracy %':>10s}  {'latency ms':>10s}  {'fine-tuned %':>12s}  folder")
        for m in result.final:
            mark = "  knee" if result.knee is not None and m.candidate.id == result.knee.candidate.id else ""
            print(f"  {m.candidate.id:12s}  {m.accuracy:10.2f}  {m.latency_ms:10.4g}  {m.finetuned_accuracy:12.2f}  {m.folder}{mark}")
    written = ["trials.db", "pareto.json", "stages.json"] + (["final.json", "export/"] if result.final else [])
    if (result.run_dir / "report.html").is_file():
        written.append("report.html")
    print(f"\nwritten: {result.run_dir}/{{{','.join(written)}}}")
    return 0


def _stage_line(record) -> str:
    s = record.summary
    if record.name == "supernet":
        return f"{s.get('how', '?')}: {s.get('steps', '?')} steps, {s.get('checkpoint', '')}"
    if record.name == "search":
        refs = f" ({s['references_on_front']} of {s['references']} hand-made references on it)" if s.get("references") else ""
        menu = f"; {s['choices_excluded']} choices off the menu" if s.get("choices_excluded") else ""
        fast = f" (only what {s['target_menu']} runs faster kept)" if s.get("target_menu") else ""
        return f"{s.get('evaluations', '?')} evaluations, {s.get('trials', '?')} trials, front of {s.get('front', '?')}{refs}{menu}{fast}"
    if record.name == "refine":
        return f"{len(s.get('finalists', []))} finalists, {sum((s.get('evaluations') or {}).values())} evaluations"
    if record.name == "finetune":
        models = s.get("models", [])
        return ", ".join(f"{m['candidate_id']} {m['inherited_accuracy']:.1f}->{m['accuracy']:.1f}% ({m['epochs']:g} ep)" for m in models)
    if record.name == "front":
        return f"{s.get('models', '?')} models measured on {s.get('target', '?')}, front of {len(s.get('front', []))}"
    return ""


def _cmd_spaces(args: argparse.Namespace) -> int:
    from ..spaces import create, list_spaces

    if args.action == "list":
        for name, description in list_spaces().items():
            print(f"{name:18s} {description}")
        return 0
    if not args.name:
        raise ValueError(f"spaces {args.action}: give a space name; allowed: {', '.join(list_spaces())}")
    if not 1 <= args.n <= 1_000_000 or args.seed < 0:
        raise ValueError(f"spaces {args.action}: --n {args.n} / --seed {args.seed} not allowed; expected 1 <= n <= 1000000 and seed >= 0")
    space = create(args.name)
    if args.action == "show":
        info = space.describe()
        info["size"] = f"{space.size():.4g}"
        print(json.dumps(info, indent=2))
        return 0
    rng = np.random.default_rng(args.seed)
    for _ in range(args.n):
        candidate = space.sample(rng)
        if args.layers:
            for layer in space.layers(candidate):
                print(f"  {layer.name:22s} {layer.op:11s} {layer.in_channels:5d}->{layer.out_channels:<5d} "
                      f"{layer.in_h}x{layer.in_w} k{layer.kernel} s{layer.stride} {layer.pattern}@{layer.sparsity:g} w{layer.w_bits}a{layer.a_bits}")
        print(candidate.dumps())
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    from ..search.job import Job, JobError
    from ..search.jobfile import loads_json
    from ..search.report import format_front, front, knee
    from ..search.jobfile import read_json
    from ..search.stages.state import StageLog
    from ..search.store import TrialStore

    if args.limit < 0:
        raise ValueError(f"--limit: {args.limit} not allowed; expected an integer >= 0")
    run = Path(args.run)
    db = run / "trials.db"
    if not db.is_file():
        raise ValueError(f"results show: {str(run)!r} holds no trials.db (is it a run directory?)")
    with TrialStore(db, readonly=True) as store:
        # the stored job is data: read it plainly and check its fields; nothing of it is built
        stored = store.get_meta("job")
        if not isinstance(stored, str):
            raise ValueError(f"results show: {str(db)!r} holds no job; not a complete tritune run")
        try:
            job = Job.from_dict(loads_json(stored, f"the job stored in {str(db)!r}"), validate=False)
        except JobError as exc:
            raise JobError(f"the job stored in {str(db)!r}: {exc}") from None
        records = [r for r in store.all() if r.status != "running"]
        stages = StageLog(store).records() if job.stages is not None else []
    problem = job.problem()
    best = front(records, problem)
    k = knee(best, problem)
    counts = {s: sum(r.status == s for r in records) for s in ("complete", "infeasible", "failed")}
    if stages:
        print(f"{job.name}: {len(stages)} of 5 stages finished")
        for record in stages:
            print(f"  {record.name:9s} {record.seconds:8.1f} s  {_stage_line(record)}")
        print()
    print(f"{job.name}: strategy {job.strategy}, {len(records)} trials {counts}")
    print(format_front(best, problem, None if k is None else k.number, limit=args.limit))
    final_path = run / "final.json"
    if stages and final_path.is_file():
        final = read_json(final_path, "final front")
        if not isinstance(final, dict) or not isinstance(final.get("front"), list):
            raise ValueError(f"results show: {str(final_path)!r} is not a final front (expected an object with a front list)")
        print(f"\nFinal front ({len(final['front'])} models, exported and measured; knee {final.get('knee')}):")
        for m in final["front"][: args.limit]:
            print(f"  {str(m.get('candidate_id')):12s}  accuracy {_num(m.get('accuracy'))} %  latency {_num(m.get('latency_ms'))} ms  "
                  f"fine-tuned {_num(m.get('finetuned_accuracy'))} %")
    return 0


def _num(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tritune", description="Hardware-aware architecture and compression search.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("search", help="run or resume a search job")
    p.add_argument("job", help="job YAML file")
    p.add_argument("--address", help="address of an existing Ray cluster (implies the Ray executor)")
    p.add_argument("--ray", action="store_true", help="use the Ray Tune executor on a local Ray")
    p.add_argument("--workers", type=int, help="parallel evaluations (Ray)")
    p.add_argument("--resume", action="store_true", help="continue the run in the job's run_dir")
    p.add_argument("--run-dir", help="override the job's run_dir")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("spaces", help="list, describe or sample search spaces")
    p.add_argument("action", choices=("list", "show", "sample"))
    p.add_argument("name", nargs="?")
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", action="store_true", help="also print the layer IR")
    p.set_defaults(func=_cmd_spaces)

    from .predict import add_parser as add_predict_parser
    from .profile import add_parser as add_profile_parser
    from .supernet import add_parser as add_supernet_parser
    from .export import add_parser as add_export_parser
    from .report import add_parser as add_report_parser
    from .jobs import add_parser as add_jobs_parser

    add_profile_parser(sub)
    add_predict_parser(sub)
    add_supernet_parser(sub)
    add_export_parser(sub)
    add_report_parser(sub)
    add_jobs_parser(sub)

    p = sub.add_parser("results", help="show the Pareto front of a run")
    p.add_argument("action", choices=("show",))
    p.add_argument("run", help="run directory")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=_cmd_results)
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _input_error(exc: BaseException) -> str | None:
    """The message of an error caused by input (a file, a run directory, an argument), else None (a bug)."""
    import sqlite3

    if isinstance(exc, ValueError):  # tritune's own input errors, and Unicode errors
        return _one_line(exc)
    if isinstance(exc, OSError):  # missing, unreadable or misplaced files and directories
        if exc.filename is not None and exc.strerror:
            where = repr(exc.filename) if exc.filename2 is None else f"{exc.filename!r} -> {exc.filename2!r}"
            return _one_line(f"{where}: {exc.strerror}")
        return _one_line(exc)
    if isinstance(exc, sqlite3.DatabaseError):  # a damaged or foreign trials.db
        return _one_line(f"trials.db is damaged or not a tritune store ({exc})")
    if isinstance(exc, RecursionError):  # a file nested deeper than its reader can follow
        return "an input file is nested too deeply to read (RecursionError)"
    try:
        import yaml
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, yaml.YAMLError):
        return _one_line(f"not valid YAML: {exc}")
    return None


def _inputs(args: argparse.Namespace) -> list[str]:
    """The files and directories a command was given, to name them in an error that does not."""
    return [v for k in ("job", "run", "run_dir", "candidate", "predictor") if isinstance(v := getattr(args, k, None), str)]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; an error caused by input is one line ``tritune: error: ...`` and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("tritune: interrupted; finished trials are saved, continue with --resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output went away (`| head`): stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except Exception as exc:
        message = _input_error(exc)
        if message is None:
            raise
        inputs = _inputs(args)
        if not isinstance(exc, ValueError) and inputs and not any(n in message for n in inputs):
            message = f"{message} (reading {', '.join(map(repr, inputs))})"
        print(f"tritune: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
