"""Benchmark: YAML alias bombs against tritune's job-file reader, with plain PyYAML as the baseline.

A "billion laughs" document nests lists of aliases: ``width ** depth`` strings once expanded, from
a few hundred bytes. PyYAML's ``safe_load`` shares aliased objects, so it returns fast, but any
code that walks the result (the old job reader turned it into JSON) expands it. tritune's reader
(`tritune.search.jobfile.loads_yaml`) refuses a document of more than ``MAX_NODES`` values once
expanded, or more than ``MAX_ALIASES`` aliases, before building anything.

Per bomb: the best of ``--repeats`` runs of wall time, and the peak of Python allocations
(tracemalloc). The baseline (``safe_load`` + ``json.dumps``) is skipped above ``--baseline-max``
strings, where it needs minutes and gigabytes.

    python benchmarks/input_bombs.py
"""
from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path

import yaml

from tritune.search.jobfile import MAX_NODES, InputError, loads_yaml


def bomb(width: int, depth: int) -> str:
    """``width ** depth`` strings once expanded, as the value of ``name``."""
    lines = [f"l0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, depth)]
    return "\n".join(lines) + f"\nname: *a{depth - 1}\n"


def measure(fn, text: str, repeats: int) -> dict:
    best: dict | None = None
    for _ in range(repeats):
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            fn(text)
            result = "accepted"
        except InputError:
            result = "refused"
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if best is None or seconds < best["ms"] / 1e3:
            best = {"ms": seconds * 1e3, "peak_mib": peak / 2**20, "result": result}
    assert best is not None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-max", type=int, default=10**6, help="largest expansion the baseline is run on")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "results" / "input_bombs.json"))
    args = parser.parse_args()

    rows = []
    print(f"tritune refuses more than {MAX_NODES} values once aliases are expanded")
    print("| bomb | bytes | expanded strings | tritune ms | tritune peak MiB | tritune | baseline ms | baseline peak MiB |")
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for width, depth in ((9, 4), (9, 5), (9, 6), (9, 9), (10, 9)):
        text = bomb(width, depth)
        ours = measure(loads_yaml, text, args.repeats)
        base = (measure(lambda t: json.dumps(yaml.safe_load(t)), text, args.repeats)
                if width ** depth <= args.baseline_max else None)
        rows.append({"width": width, "depth": depth, "bytes": len(text.encode()), "tritune": ours, "baseline": base})
        b = f"{base['ms']:.1f} | {base['peak_mib']:.1f}" if base else "not run | not run"
        print(f"| {width}^{depth} | {len(text.encode())} | {width ** depth:,} | {ours['ms']:.1f} | {ours['peak_mib']:.2f} | "
              f"{ours['result']} | {b} |")
    Path(args.out).write_text(json.dumps({"benchmark": "input_bombs", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
