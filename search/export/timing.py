"""Time exported folders in fresh Python processes, as a device would run them.

A pipeline's process has trained a supernet and built dozens of models by the time it exports;
onnxruntime runs measurably slower in it than in a process that only loads and runs the file (the
exported model and the target's own build alike), so a number timed there would not be the one a
user sees. `measure_folders` therefore starts ``python -m tritune.search.export.timing FOLDER...
--target T``: the child reads each folder's ``manifest.json`` (written beforehand, without
timings), times every shipped model interleaved with the target's own build of its candidate, all
folders in one group (`tritune.kernels.timing.measure_passes`), profiles them per layer and
prints one JSON list. The child reads only numbers and the files of the folders it is pointed at.

The target's own build of each candidate is made once, in the calling process, and handed to the
children as a file where the target can (`tritune.targets.fresh_timing.prebuild`); the first
child alone profiles per layer, and the profile is scaled to each folder's fastest latency.

It does so in `PROCESSES` children, one after the other, and each contender keeps its fastest:
a shared machine has slow phases that last seconds and cover a whole child (every model in it,
1.4-1.5x slower), which two passes inside one process cannot step out of. Timing the folders of
one front together keeps such a phase from making one member look slower than the others."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from .runs import ExportError

#: Passes of the interleaved protocol per model; the faster pass counts.
MEASURE_PASSES = 2
#: Fresh processes that time a folder; each contender's fastest counts.
PROCESSES = 3
#: Inferences of the per-layer profile.
PROFILE_RUNS = 20


def _measurement_json(m: Any, reference: Any, protocol: Any) -> dict[str, Any]:
    return {"protocol": protocol.to_json(), "passes": MEASURE_PASSES, "statistic": "the fastest pass's latency (min of round medians)",
            "latency_ms": m.latency_ms, "median_ms": m.median_ms, "p10_ms": m.p10_ms,
            "p90_ms": m.p90_ms, "spread": m.spread, "round_medians_ms": m.round_medians_ms, "cpu_latency_ms": m.cpu_latency_ms,
            "cpu_share": m.cpu_share, "process": "fresh",
            "reference_build_ms": reference.latency_ms, "reference_build_cpu_ms": reference.cpu_latency_ms,
            "reference_build": "the target's own build of the candidate (random seeded weights, as a search times it), "
                               "timed in the same interleaved rounds"}


def _scaled(profile: dict[str, Any], latency_ms: float) -> dict[str, Any]:
    """A per-layer profile with ``ms`` scaled to sum to the measured latency (``raw_ms`` as
    profiled: a profiler's per-node overhead inflates small layers, so only the split is used)."""
    raw = dict(profile["ms"])
    total = sum(raw.values())
    factor = latency_ms / total if total > 0 else 0.0
    return {**profile, "raw_ms": raw, "raw_total_ms": total, "scale": factor, "ms": {k: v * factor for k, v in raw.items()}}


def measure_folders(folders: Sequence[str | Path], target: str, target_options: Mapping[str, Any] | None = None,
                    timeout: float = 900.0, processes: int = PROCESSES) -> list[dict[str, Any]]:
    """The manifest's timing fields (``latency_measured_ms``, ``latency_measurement``,
    ``layer_latency``) for each exported folder, all timed together in ``processes`` fresh
    processes: per folder its fastest child's numbers, the reference build's fastest beside them,
    every child's latency and their spread."""
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes: {processes!r} not allowed; allowed: an integer >= 1")
    paths = [Path(f) for f in folders]
    if not paths:
        return []
    with tempfile.TemporaryDirectory(prefix="tritune-builds-") as tmp:
        builds = _reference_builds(paths, target, target_options, Path(tmp))
        children = [_time_in_child(paths, target, target_options, builds, i == 0, timeout * len(paths)) for i in range(processes)]
    return [_fastest([child[i] for child in children]) for i in range(len(paths))]


def _reference_builds(folders: list[Path], target_name: str, options: Mapping[str, Any] | None, directory: Path) -> list[str | None]:
    """The target's own build of each folder's candidate, made once here for the children."""
    from ...targets.fresh_timing import can_save_builds, prebuild
    from .exporter import _target

    tgt = _target(target_name, dict(options or {}))
    if not can_save_builds(tgt):
        return [None] * len(folders)
    paths: list[str | None] = []
    for i, folder in enumerate(folders):
        try:
            _, candidate, space = _manifest(folder)
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise ExportError(f"{_names([folder])}: timing on {target_name} failed: {type(exc).__name__}: {exc}") from None
        (directory / str(i)).mkdir()  # one folder each: two folders may hold the same candidate
        paths += prebuild(tgt, [candidate], space, directory / str(i))
    return paths


def _manifest(folder: Path) -> tuple[dict[str, Any], Any, Any]:
    """A folder's manifest, its candidate and its configured space."""
    from ...spaces import create as create_space
    from ...spaces.candidate import Candidate

    doc = json.loads((folder / "manifest.json").read_text())
    return doc, Candidate.from_json(doc["candidate"]), create_space(doc["space"]["name"], **doc["space"]["config"])


def _fastest(children: list[dict[str, Any]]) -> dict[str, Any]:
    """One folder's timing fields from its numbers in every child (the per-layer profile from
    the child that took it, scaled to the fastest latency)."""
    processes = len(children)
    best = min(children, key=lambda c: c["latency_measured_ms"])
    profile = next(c["layer_profile"] for c in children if c.get("layer_profile") is not None)
    latencies = [c["latency_measured_ms"] for c in children]
    builds = [c["latency_measurement"]["reference_build_ms"] for c in children]
    fastest_build = min(range(processes), key=lambda i: builds[i])
    measurement = {**best["latency_measurement"], "processes": processes, "process_latencies_ms": latencies,
                   "process_spread": (max(latencies) - min(latencies)) / min(latencies) if min(latencies) > 0 else 0.0,
                   "reference_build_ms": builds[fastest_build],
                   "reference_build_cpu_ms": children[fastest_build]["latency_measurement"]["reference_build_cpu_ms"],
                   "reference_build_process_latencies_ms": builds}
    measurement["statistic"] = f"the fastest of {processes} fresh processes x {MEASURE_PASSES} passes (min of round medians)"
    fields = {k: v for k, v in best.items() if k != "layer_profile"}
    return {**fields, "latency_measurement": measurement, "layer_latency": _scaled(profile, best["latency_measured_ms"])}


def _time_in_child(folders: list[Path], target: str, target_options: Mapping[str, Any] | None, builds: list[str | None],
                   profile: bool, timeout: float) -> list[dict[str, Any]]:
    from ...targets.fresh_timing import FreshProcessError, run_fresh

    args = [*map(str, folders), "--target", target, "--options", json.dumps(dict(target_options or {}), sort_keys=True),
            "--builds", json.dumps(builds), *(["--profile"] if profile else [])]
    try:
        return run_fresh("tritune.search.export.timing", args, timeout=timeout)
    except FreshProcessError as exc:
        if exc.timed_out:
            raise ExportError(f"{_names(folders)}: timing on {target} took over {timeout:g} s") from None
        raise ExportError(f"{_names(folders)}: timing on {target} failed: {exc.detail}") from None


def _names(folders: list[Path]) -> str:
    return ", ".join(repr(str(f)) for f in folders)


def _timings(folders: list[Path], target_name: str, options: Mapping[str, Any], builds: list[str | None] | None = None,
             profile: bool = True) -> list[dict[str, Any]]:
    """What the child computes (see the module docstring)."""
    from ...kernels.timing import measure_passes
    from .exporter import _target

    tgt = _target(target_name, options)
    builds = builds if builds is not None else [None] * len(folders)
    loaded = [_load(folder, target_name, tgt, build) for folder, build in zip(folders, builds)]
    group = [r for runnable, reference, _ in loaded for r in (runnable, reference)]
    measured = measure_passes([group], tgt.protocol, passes=MEASURE_PASSES)[0]
    return [_folder_timing(folder, target_name, tgt, runnable, doc, measured[2 * i], measured[2 * i + 1], profile)
            for i, (folder, (runnable, _, doc)) in enumerate(zip(folders, loaded))]


def _load(folder: Path, target_name: str, tgt: Any, build: str | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """A folder's shipped model, the target's own build of its candidate (loaded from ``build``
    when the caller made it), and its manifest."""
    from ...targets.fresh_timing import load_or_build
    from ...targets.ort_cpu import OrtRunnable

    doc, candidate, space = _manifest(folder)
    shape = tuple(int(d) for d in doc["input"]["shape"])
    if target_name == "codegen-cpu":
        from ...targets.codegen_cpu import load_exported

        runnable: Any = load_exported(folder)
    else:
        onnx_bytes = (folder / "model.onnx").read_bytes()
        runnable = OrtRunnable(tgt.session(onnx_bytes), str(doc["input"]["name"]), shape, tgt.threads, name=candidate.id,
                               onnx_bytes=onnx_bytes)
    return runnable, load_or_build(tgt, build, candidate, space), doc


def _folder_timing(folder: Path, target_name: str, tgt: Any, runnable: Any, doc: dict[str, Any], exported_m: Any,
                   reference_m: Any, profile: bool) -> dict[str, Any]:
    """One folder's timing fields, with its per-layer profile (``layer_profile``, unscaled) when ``profile``."""
    import numpy as np

    from .onnx_model import ort_layer_profile

    fields = {"latency_measured_ms": exported_m.latency_ms, "latency_measurement": _measurement_json(exported_m, reference_m, tgt.protocol)}
    if not profile:
        return {**fields, "layer_profile": None}
    if target_name == "codegen-cpu":
        layer_latency = {"source": "tritune codegen-cpu profile(): median time of each op inside whole inferences "
                                   "(a fused block is one op, named by its block)",
                         "ms": {op["name"]: op["ms"] for op in runnable.profile(repeats=PROFILE_RUNS)}, "runs": PROFILE_RUNS}
    else:
        shape = tuple(int(d) for d in doc["input"]["shape"])
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        layer_latency = ort_layer_profile((folder / "model.onnx").read_bytes(), [row["name"] for row in doc["layers"]], x,
                                          threads=tgt.threads)
    return {**fields, "layer_profile": layer_latency}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tritune.search.export.timing", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--target", required=True)
    parser.add_argument("--options", default="{}", help="target options, a JSON object")
    parser.add_argument("--builds", default=None, help="per folder, the file of the target's build of its candidate (JSON list; null: build it)")
    parser.add_argument("--profile", action="store_true", help="profile each model per layer")
    args = parser.parse_args(argv)
    builds = json.loads(args.builds) if args.builds else None
    print(json.dumps(_timings([Path(f) for f in args.folders], args.target, json.loads(args.options), builds, args.profile), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
