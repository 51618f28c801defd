"""``tritune report RUN_DIR``: ``RUN_DIR/report.html``, one self-contained page (inline SVG, no
network) with the Pareto front, a summary per stage and a per-layer view of each exported model."""
from __future__ import annotations

import argparse
from typing import Any


def _cmd_report(args: argparse.Namespace) -> int:
    from ..search.html_report import write_report

    path = write_report(args.run, out=args.out)
    print(f"written: {path}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="write RUN_DIR/report.html (front, stages, exported models)")
    p.add_argument("run", help="run directory (holds trials.db)")
    p.add_argument("--out", help="output file (default RUN_DIR/report.html)")
    p.set_defaults(func=_cmd_report)
