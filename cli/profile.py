"""``tritune profile``: measure a stratified sample of a space on a real target (resumable).

    tritune profile --target ort-cpu --space mobilenet-small --n 700 --out profiles/ort-small [--sessions 4] [--fit ort-small.json]
    tritune fit profiles/ort-small [profiles/ort-small-2 ...] --out ort-small.json
    tritune profile --target codegen-cpu --space mobilenet --n 200 --out profiles/codegen --fit codegen.json

A codegen-cpu profile also records every plan step's time inside whole inferences; ``fit``
(``--predictor layerwise``) then makes the step-table predictor of
`tritune.predictors.codegen_layerwise`.

Wire it into the main parser with ``add_parser(subparsers)``. See `tritune.targets.profiling`.
"""
from __future__ import annotations

import argparse
import json


def _at_least(args: argparse.Namespace, minimum: int, *names: str) -> None:
    """Refuse a numeric argument below ``minimum``, naming the option."""
    for name in names:
        value = getattr(args, name)
        if value < minimum:
            raise ValueError(f"--{name.replace('_', '-')}: {value} not allowed; expected an integer >= {minimum}")


def _cmd_profile(args: argparse.Namespace) -> int:
    _at_least(args, 1, "n", "threads", "rounds", "runs_per_round", "group_size", "sessions")
    _at_least(args, 0, "warmup", "seed")
    from ..spaces.registry import create
    from ..kernels.timing import Protocol
    from ..targets.profiling import STRATA, profile_sessions
    from ..targets.registry import create_target

    protocol = Protocol(threads=args.threads, warmup=args.warmup, rounds=args.rounds, runs_per_round=args.runs_per_round)
    try:
        target = create_target(args.target, threads=args.threads)
    except ValueError as exc:
        if "bad options" not in str(exc) or args.threads != 1:
            raise
        target = create_target(args.target)  # a target without a threads option
    space = create(args.space)
    strata = [s.strip() for s in args.strata.split(",") if s.strip()] if args.strata else list(STRATA)
    results = profile_sessions(target, space, args.n, args.out, sessions=args.sessions, seed=args.seed, protocol=protocol,
                               strata=strata, group_size=args.group_size, progress=not args.quiet, reference=args.reference)
    for result in results:
        per = lambda key: result.seconds.get(key, 0.0) / max(1, result.measured)  # noqa: E731
        print(json.dumps({
            "out": str(result.out_dir), "candidates": len(result.candidates), "measured": result.measured,
            "skipped": result.skipped, "build_s_per_model": round(per("build"), 3), "measure_s_per_model": round(per("measure"), 3),
        }))
    if args.fit:
        from ..predictors.from_profile import summary

        print(f"{summary(_fit([args.out], args.predictor, args.fit))}; saved to {args.fit}")
    return 0


def _fit(profiles: list[str], kind: str, out: str, seed: int = 0):
    """`fit_from_profile`, or for a codegen-cpu profile (its steps timed inside whole inferences)
    the codegen step-table predictor (`tritune.predictors.codegen_layerwise`)."""
    from ..predictors.from_profile import fit_from_profile

    if kind == "layerwise" and _profile_target(profiles[0]) == "codegen-cpu":
        from ..predictors.codegen_layerwise import fit_codegen_profile

        return fit_codegen_profile(profiles, out=out, seed=seed)
    return fit_from_profile(profiles, kind, out=out, seed=seed)


def _profile_target(path: str) -> str | None:
    from pathlib import Path

    from ..targets.profiling import METADATA_FILE, session_dirs

    try:
        first = session_dirs(path)[0]
        return json.loads((Path(first) / METADATA_FILE).read_text())["target"]["name"]
    except (ValueError, OSError, KeyError, TypeError):
        return None  # fit_from_profile reports the problem with its own message


def _cmd_fit(args: argparse.Namespace) -> int:
    _at_least(args, 0, "seed")
    from ..predictors.from_profile import summary

    print(f"{summary(_fit(list(args.profile), args.predictor, args.out, args.seed))}; saved to {args.out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``profile`` on a ``parser.add_subparsers()`` object; returns the sub-parser."""
    p = subparsers.add_parser(
        "profile", help="measure a stratified sample of a space on a real target (resumable)",
        description="Build and time N stratified candidates of a space on a target; appends to OUT/measurements.jsonl "
                    "and re-runs skip what is already measured.",
    )
    p.add_argument("--target", required=True, help="target name, e.g. ort-cpu")
    p.add_argument("--space", required=True, help="space name, e.g. mobilenet-small")
    p.add_argument("--n", type=int, required=True, help="number of candidates")
    p.add_argument("--out", required=True, help="output directory (metadata.json, measurements.jsonl)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of the runtime (default 1)")
    p.add_argument("--rounds", type=int, default=5, help="timing rounds per model (default 5)")
    p.add_argument("--runs-per-round", type=int, default=20, help="runs per round (default 20)")
    p.add_argument("--warmup", type=int, default=10, help="warm-up runs per model (default 10)")
    p.add_argument("--group-size", type=int, default=8, help="models built and timed interleaved together (default 8)")
    p.add_argument("--strata", default="", help="comma-separated gene groups to balance (default: all of "
                   "resolution,width,depth,kernel,expand,pattern,bits)")
    p.add_argument("--reference", choices=("largest", "none"), default="largest",
                   help="time the space's largest dense candidate in every group, to normalise machine-speed drift (default largest)")
    p.add_argument("--sessions", type=int, default=1,
                   help="measure the candidates this many times, pass after pass, into OUT/session-<k>; `fit` labels each "
                        "candidate with the median over the passes (default 1; 3-4 on a shared machine, whose speed drifts "
                        "over time by as much as a good predictor's error)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--fit", metavar="FILE", help="then fit a latency predictor on the whole profile and save it here")
    p.add_argument("--predictor", choices=("layerwise", "whole-model"), default="layerwise", help="predictor --fit makes (default layerwise)")
    p.set_defaults(func=_cmd_profile)

    f = subparsers.add_parser("fit", help="fit a latency predictor on a profile directory and save it (JSON with a checksum; an HMAC with TRITUNE_PREDICTOR_KEY)",
                              description="Fit a latency predictor on every candidate of a `tritune profile` directory; "
                                          "the file carries the target's fingerprint and the predictor's held-out error.")
    f.add_argument("profile", nargs="+", help="profile directory (metadata.json, measurements.jsonl, or the session-<k> "
                                             "directories of --sessions); several: profiles of the same candidates from several "
                                             "sessions, each candidate labelled with the median over them")
    f.add_argument("--out", required=True, help="predictor file to write")
    f.add_argument("--predictor", choices=("layerwise", "whole-model"), default="layerwise", help="default layerwise")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=_cmd_fit)
    return p
