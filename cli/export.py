"""``tritune export RUN_DIR [--rank K | --knee | --all] [--target T] [--out DIR]``: the best subnets
of a search as files a device runs (``model.onnx``, compiled kernels for ``codegen-cpu``) with a
``manifest.json`` each, verified on the test split and timed on this machine."""
from __future__ import annotations

import argparse
from typing import Any


def _cmd_export(args: argparse.Namespace) -> int:
    from ..search.export import TARGETS, export_run

    select: str | int = "all" if args.all else args.rank if args.rank is not None else "knee"
    if args.target is not None and args.target not in TARGETS:
        raise ValueError(f"export --target: {args.target!r} not allowed; allowed: {', '.join(TARGETS)}")
    results = export_run(args.run, select=select, target=args.target, out=args.out, measure=not args.no_measure, progress=not args.quiet)
    header = f"{'candidate':14s} {'accuracy':>9s} {'search':>8s} {'agree':>6s} {'latency ms':>11s} {'predicted':>10s}  folder"
    print(header)
    for r in results:
        m = r.manifest
        ver = m["verification"]["codegen" if m["target"] == "codegen-cpu" else "model.onnx"]
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        print(f"{m['candidate_id']:14s} {fmt(m['accuracy'], '9.2f')} {fmt(m['search_accuracy'], '8.2f')} "
              f"{fmt(ver['top1_agreement'], '6.3f')} {fmt(m['latency_measured_ms'], '11.4f')} {fmt(m['latency_predicted_ms'], '10.4f')}  {r.directory}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="export Pareto-front subnets of a run (ONNX, compiled kernels, manifest)")
    p.add_argument("run", help="run directory (holds trials.db)")
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--rank", type=int, help="the front member of this rank (0 = best by the first objective, as `results show` numbers them)")
    pick.add_argument("--knee", action="store_true", help="the knee of the front (the default)")
    pick.add_argument("--all", action="store_true", help="every member of the front")
    p.add_argument("--target", help="ort-cpu or codegen-cpu (default: the run's latency target, else ort-cpu)")
    p.add_argument("--out", help="output folder (default RUN_DIR/export)")
    p.add_argument("--no-measure", action="store_true", help="skip timing and per-layer profiling")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_export)
