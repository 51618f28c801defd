"""``tritune predict``: how fast is this candidate on a target, and how far to trust the answer.

    tritune predict --target nb201-table --target-option column=help_pixel3 --space nb201 --sample 5
    tritune predict --target ort-cpu --predictor ort.json cand.json

With ``--predictor`` the saved predictor answers (refused if it was made for another target) and
its measured error is printed; without it the target itself answers (a table look-up, or a real
build-and-measure on a runtime target, which takes seconds per candidate).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--target-option: {pair!r} is not KEY=VALUE")
        key, value = pair.split("=", 1)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..predictors import load
    from ..spaces import Candidate, create
    from ..targets.registry import create_target

    target = create_target(args.target, **_parse_options(args.target_option))
    if args.candidate:
        path = Path(args.candidate)
        if not path.is_file():
            raise ValueError(f"predict: candidate file {str(path)!r} not found")
        data = json.loads(path.read_text())
        candidates = [Candidate.from_json(c) for c in (data if isinstance(data, list) else [data])]
        space = create(args.space or candidates[0].space)
        candidates = [space.validate(c) for c in candidates]
    elif args.space:
        space = create(args.space)
        rng = np.random.default_rng(args.seed)
        candidates = [space.sample(rng) for _ in range(args.sample)]
    else:
        raise ValueError("predict: give a CANDIDATE.json or --space NAME [--sample N]")
    if not target.supports(space.name):
        raise ValueError(f"predict: target {args.target!r} does not support space {space.name!r}")

    if args.predictor:
        predictor = load(args.predictor, expected_fingerprint=target.fingerprint())
        values = np.asarray(predictor.predict(candidates), dtype=float)
        source = f"predictor {args.predictor} ({type(predictor).__name__})"
        error = predictor.error_ or {}
    else:
        values = np.asarray(target.latency(candidates), dtype=float)
        source, error = f"target {args.target}", {}
    print(f"{'candidate':14s} latency_ms   ({source})")
    for c, v in zip(candidates, values):
        print(f"{c.id:14s} {v:10.4g}")
    if error:
        print(f"measured error on held-out data: MAPE {error.get('mape', float('nan')):.2f}%, "
              f"within ±10% {100 * error.get('within_10', float('nan')):.1f}%, Spearman {error.get('spearman', float('nan')):.3f} "
              f"(n={error.get('n', '?')})")
    elif args.predictor is None:
        print("values come from the target itself (measured or tabulated), not from a model")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("predict", help="latency of candidates on a target (predicted or looked up)")
    p.add_argument("candidate", nargs="?", help="candidate JSON file (one object or a list)")
    p.add_argument("--target", required=True, help="target name, e.g. nb201-table, ort-cpu")
    p.add_argument("--target-option", action="append", default=[], metavar="KEY=VALUE", help="target option (repeatable)")
    p.add_argument("--predictor", help="saved predictor file (JSON)")
    p.add_argument("--space", help="space name (with --sample)")
    p.add_argument("--sample", type=int, default=1, help="random candidates to predict (with --space)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_predict)
    return p
