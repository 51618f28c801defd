"""``tritune predict``: how fast is this candidate on a target, and how far to trust the answer.

    tritune predict --target nb201-table --target-option column=help_pixel3 --space nb201 --sample 5
    tritune predict --target ort-cpu --predictor ort.json cand.json

With ``--predictor`` the saved predictor answers (refused if it was made for another target) and
its measured error is printed; without it the target itself answers (a table look-up, or a real
build-and-measure on a runtime target, which takes seconds per candidate). A predictor file that
is not authenticated (no ``TRITUNE_PREDICTOR_KEY`` HMAC, see `tritune.predictors.io`) only
*claims* its error: it is printed as the file's claim, unverified.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


#: Most candidates one call predicts (``--sample`` or a candidate file's list).
MAX_CANDIDATES = 100_000


def _parse_options(pairs: list[str]) -> dict:
    from ..search.jobfile import InputError, loads_json

    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--target-option: {pair!r} is not KEY=VALUE")
        key, value = pair.split("=", 1)
        if not key or key in options:
            raise ValueError(f"--target-option: {pair!r}: {'empty' if not key else 'repeated'} key")
        try:
            options[key] = loads_json(value, f"--target-option {key}")
        except InputError:
            options[key] = value  # not JSON: the text itself
    return options


def _read_candidates(path: Path) -> list:
    from ..search.jobfile import read_json
    from ..spaces import Candidate

    where = f"candidate file {str(path)!r}"
    data = read_json(path, "candidate file", limit=64 << 20)
    items = data if isinstance(data, list) else [data]
    if not items:
        raise ValueError(f"{where}: holds an empty list; expected a candidate object or a non-empty list of them")
    if len(items) > MAX_CANDIDATES:
        raise ValueError(f"{where}: holds {len(items)} candidates; at most {MAX_CANDIDATES} per call")
    candidates = []
    for i, item in enumerate(items):
        try:
            candidates.append(Candidate.from_json(item))
        except ValueError as exc:
            raise ValueError(f"{where}: [{i}]: {exc}") from None
    return candidates


def _error_line(error: dict, authenticated: bool) -> str:
    def number(key: str, scale: float = 1.0, fmt: str = ".2f") -> str:
        value = error.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "?"
        return format(scale * value, fmt)

    text = (f"MAPE {number('mape')}%, within ±10% {number('within_10', 100.0, '.1f')}%, "
            f"Spearman {number('spearman', fmt='.3f')} (n={number('n', fmt='.0f')})")
    if authenticated:
        return f"measured error on held-out data (authenticated file): {text}"
    return (f"error the file claims (unverified: the file carries no valid HMAC; set TRITUNE_PREDICTOR_KEY to the "
            f"key it was saved with to verify it): {text}")


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..predictors import load
    from ..spaces import create
    from ..targets.registry import create_target

    if not 1 <= args.sample <= MAX_CANDIDATES:
        raise ValueError(f"--sample: {args.sample} not allowed; expected an integer from 1 to {MAX_CANDIDATES}")
    if args.seed < 0:
        raise ValueError(f"--seed: {args.seed} not allowed; expected an integer >= 0")
    target = create_target(args.target, **_parse_options(args.target_option))
    if args.candidate:
        candidates = _read_candidates(Path(args.candidate))
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
        try:
            values = np.asarray(predictor.predict(candidates), dtype=float)
        except ValueError as exc:  # a loaded file whose params cannot answer
            raise ValueError(f"predictor file {args.predictor}: cannot predict with it: {exc}") from None
        authenticated = bool(getattr(predictor, "authenticated_", False))
        source = f"predictor {args.predictor} ({type(predictor).__name__}, {'authenticated' if authenticated else 'unauthenticated'})"
        error = predictor.error_ if isinstance(predictor.error_, dict) else {}
    else:
        values = np.asarray(target.latency(candidates), dtype=float)
        source, error, authenticated = f"target {args.target}", {}, False
    print(f"{'candidate':14s} latency_ms   ({source})")
    for c, v in zip(candidates, values):
        print(f"{c.id:14s} {v:10.4g}")
    if error:
        print(_error_line(error, authenticated))
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
