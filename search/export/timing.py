"""Time an exported folder in a fresh Python process, as a device would run it.

A pipeline's process has trained a supernet and built dozens of models by the time it exports;
onnxruntime runs measurably slower in it than in a process that only loads and runs the file (the
exported model and the target's own build alike), so a number timed there would not be the one a
user sees. `measure_folder` therefore starts ``python -m tritune.search.export.timing FOLDER
--target T``: the child reads the folder's ``manifest.json`` (written beforehand, without
timings), times the shipped files interleaved with the target's own build of the candidate
(`tritune.kernels.timing.measure_passes`), profiles them per layer and prints one JSON object.
The child reads only numbers and the files of the folder it is pointed at.

It does so in `PROCESSES` children, one after the other, and each contender keeps its fastest:
a shared machine has slow phases that last seconds and cover a whole child (every model in it,
the exported file and the reference build alike, 1.4-1.5x slower), which two passes inside one
process cannot step out of.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

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


def measure_folder(folder: str | Path, target: str, target_options: Mapping[str, Any] | None = None,
                   timeout: float = 900.0, processes: int = PROCESSES) -> dict[str, Any]:
    """The manifest's timing fields (``latency_measured_ms``, ``latency_measurement``,
    ``layer_latency``) for the exported ``folder``, measured in ``processes`` fresh processes:
    the fastest child's numbers, the reference build's fastest beside them, every child's latency
    and their spread."""
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes: {processes!r} not allowed; allowed: an integer >= 1")
    children = [_time_in_child(Path(folder), target, target_options, timeout) for _ in range(processes)]
    best = min(children, key=lambda c: c["latency_measured_ms"])
    latencies = [c["latency_measured_ms"] for c in children]
    builds = [c["latency_measurement"]["reference_build_ms"] for c in children]
    fastest_build = min(range(processes), key=lambda i: builds[i])
    measurement = {**best["latency_measurement"], "processes": processes, "process_latencies_ms": latencies,
                   "process_spread": (max(latencies) - min(latencies)) / min(latencies) if min(latencies) > 0 else 0.0,
                   "reference_build_ms": builds[fastest_build],
                   "reference_build_cpu_ms": children[fastest_build]["latency_measurement"]["reference_build_cpu_ms"],
                   "reference_build_process_latencies_ms": builds}
    measurement["statistic"] = f"the fastest of {processes} fresh processes x {MEASURE_PASSES} passes (min of round medians)"
    return {**best, "latency_measurement": measurement}


def _time_in_child(folder: Path, target: str, target_options: Mapping[str, Any] | None, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tritune.search.export.timing", str(folder), "--target", target,
           "--options", json.dumps(dict(target_options or {}), sort_keys=True)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ExportError(f"{str(folder)!r}: timing on {target} took over {timeout:g} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise ExportError(f"{str(folder)!r}: timing on {target} failed: {lines[-1] if lines else f'exit code {done.returncode}'}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _timings(folder: Path, target_name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """What the child computes (see the module docstring)."""
    import numpy as np

    from ...spaces import create as create_space
    from ...spaces.candidate import Candidate
    from ...kernels.timing import measure_passes
    from ...targets.ort_cpu import OrtRunnable
    from .exporter import _target
    from .onnx_model import ort_layer_profile

    doc = json.loads((folder / "manifest.json").read_text())
    tgt = _target(target_name, options)
    candidate = Candidate.from_json(doc["candidate"])
    space = create_space(doc["space"]["name"], **doc["space"]["config"])
    shape = tuple(int(d) for d in doc["input"]["shape"])
    onnx_bytes = (folder / "model.onnx").read_bytes()
    if target_name == "codegen-cpu":
        from ...targets.codegen_cpu import load_exported

        runnable: Any = load_exported(folder)
    else:
        runnable = OrtRunnable(tgt.session(onnx_bytes), str(doc["input"]["name"]), shape, tgt.threads, name=candidate.id,
                               onnx_bytes=onnx_bytes)
    reference = tgt.build(candidate, space=space)
    exported_m, reference_m = measure_passes([[runnable, reference]], tgt.protocol, passes=MEASURE_PASSES)[0]
    if target_name == "codegen-cpu":
        layer_latency = {"source": "tritune codegen-cpu profile(): median time of each op inside whole inferences "
                                   "(a fused block is one op, named by its block)",
                         "ms": {op["name"]: op["ms"] for op in runnable.profile(repeats=PROFILE_RUNS)}, "runs": PROFILE_RUNS}
    else:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        layer_latency = ort_layer_profile(onnx_bytes, [row["name"] for row in doc["layers"]], x, threads=tgt.threads)
    return {"latency_measured_ms": exported_m.latency_ms,
            "latency_measurement": _measurement_json(exported_m, reference_m, tgt.protocol),
            "layer_latency": _scaled(layer_latency, exported_m.latency_ms)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tritune.search.export.timing", description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--target", required=True)
    parser.add_argument("--options", default="{}", help="target options, a JSON object")
    args = parser.parse_args(argv)
    print(json.dumps(_timings(Path(args.folder), args.target, json.loads(args.options)), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
