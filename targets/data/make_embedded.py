"""Rebuild ``nb201_embedded.csv.gz``, the NAS-Bench-201 table tritune ships as its default.

Provenance and licences: see ``README.md`` in this folder. This script is a maintenance tool, not
part of the package at run time; tritune only ever reads the ``.csv.gz`` it writes.

Usage (from the repository root)::

    python targets/data/make_embedded.py [SOURCE_CSV] [--out targets/data/nb201_embedded.csv.gz]

SOURCE_CSV defaults to ``<repo>/../shared/data/derived/nb201_joint_latency_accuracy.csv``, the join
of NATS-Bench TSS accuracies, HELP latencies and nn-Meter latencies keyed by ``nb201_index``.
The output is reproducible byte for byte: values are written with 6 significant digits, rows in
index order, and the gzip header carries mtime 0 and no file name.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[2] / "shared" / "data" / "derived" / "nb201_joint_latency_accuracy.csv"
DEFAULT_OUT = HERE / "nb201_embedded.csv.gz"

#: Columns kept, in this order. Accuracies are NATS-Bench TSS 200-epoch test accuracies (%);
#: every other numeric column is a latency in milliseconds.
COLUMNS = (
    "nb201_index",
    "arch_str",
    "nats_cifar10_test_acc",
    "nats_cifar100_test_acc",
    "nats_imagenet16_120_test_acc",
    "help_fpga",
    "help_eyeriss",
    "help_gold_6226",
    "help_pixel3",
    "help_raspi4",
    "help_titanxp_1",
    "help_gold_6240",
    "help_1080ti_1",
    "nnmeter_cortexA76cpu_tflite21_ms",
)
NUM_ARCHS = 15625


def _number(text: str, where: str) -> str:
    if text.strip() == "":
        return ""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{where}: {text!r} is not a finite number")
    return f"{value:.6g}"


def build(source: Path) -> bytes:
    with open(source, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise SystemExit(f"{source}: missing columns {missing}")
        rows = {}
        for line, row in enumerate(reader, start=2):
            index = int(row["nb201_index"])
            out = [str(index), row["arch_str"].strip()]
            out += [_number(row[c], f"{source} line {line} column {c}") for c in COLUMNS[2:]]
            rows[index] = out
    if sorted(rows) != list(range(NUM_ARCHS)):
        raise SystemExit(f"{source}: expected the {NUM_ARCHS} indices 0..{NUM_ARCHS - 1} once each")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    for index in range(NUM_ARCHS):
        writer.writerow(rows[index])
    raw = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        gz.write(text.getvalue().encode("ascii"))
    return raw.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not args.source.is_file():
        print(f"source table not found: {args.source}", file=sys.stderr)
        return 2
    data = build(args.source)
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data):,} bytes, {NUM_ARCHS} rows, {len(COLUMNS)} columns)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
