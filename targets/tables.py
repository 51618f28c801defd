"""Tables of published measurements, and targets that look latencies up in them.

NAS-Bench-201 table format
--------------------------
`NB201Table` reads a CSV file (plain, or gzip-compressed: ``.csv.gz``; compression is detected
from the file's first bytes) with one header row and one row per architecture:

* ``nb201_index`` (required): the NAS-Bench-201 / NATS-Bench-TSS index, an integer 0..15624.
  Each index may appear once; indices may be missing (their values read as NaN).
* ``arch_str`` (required): the cell string, e.g.
  ``|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|``.
  It must agree with tritune's index mapping (`tritune.spaces.NB201Space.from_index`); a row
  that disagrees is an error, because it means the file uses another index order.
* any number of numeric columns. Names ending in ``_acc`` are accuracies (%), e.g.
  ``nats_cifar10_test_acc``, ``nats_cifar100_test_acc``, ``nats_imagenet16_120_test_acc``; every
  other column is a latency in milliseconds (``help_<device>``, ``nnmeter_<device>_ms``, your own).
  An empty cell (or ``nan``) means "not measured" and reads as NaN.

Without a path the table shipped inside tritune is used (``targets/data/nb201_embedded.csv.gz``:
NATS-Bench accuracies plus HELP / HW-NAS-Bench / nn-Meter latencies for 9 devices; provenance and
licences in ``targets/data/README.md``). Loaded tables are cached per (file, modification time),
so creating many tables or targets from one file parses it once.

BitFusion table
---------------
`BitFusionTable` reads the per-layer latency / energy look-up table of the BitFusion accelerator
published with APQ (``BitFusion_new.b1.dict``). It is read only from a path the user gives.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import os
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..spaces.candidate import Candidate
from ..spaces.compression import FLOAT_BITS
from ..spaces.nb201.space import NUM_ARCHS, NB201Space
from .base import Target

INDEX_COLUMN = "nb201_index"
ARCH_COLUMN = "arch_str"
REQUIRED_COLUMNS = (INDEX_COLUMN, ARCH_COLUMN)
EMBEDDED_FILE = "nb201_embedded.csv.gz"
#: Datasets of the NATS-Bench accuracy columns (``nats_<dataset>_test_acc``).
DATASETS = ("cifar10", "cifar100", "imagenet16_120")

#: What the columns of the shipped table measure (other columns are described by their name).
DEVICE_NOTES = {
    "help_fpga": "FPGA model (HW-NAS-Bench, CIFAR-10)",
    "help_eyeriss": "Eyeriss ASIC model (HW-NAS-Bench, CIFAR-10)",
    "help_pixel3": "Pixel 3 phone CPU (HW-NAS-Bench, CIFAR-10)",
    "help_raspi4": "Raspberry Pi 4 CPU (HW-NAS-Bench, CIFAR-10)",
    "help_gold_6226": "Intel Xeon Gold 6226 CPU (HELP)",
    "help_gold_6240": "Intel Xeon Gold 6240 CPU (HELP)",
    "help_titanxp_1": "NVIDIA Titan Xp GPU, batch 1 (HELP)",
    "help_1080ti_1": "NVIDIA GTX 1080 Ti GPU, batch 1 (HELP)",
    "nnmeter_cortexA76cpu_tflite21_ms": "Cortex-A76 CPU (Pixel 4), TFLite 2.1 (nn-Meter; 2,000 cells)",
}


class TableFormatError(ValueError):
    """A table file that cannot be read: the message names the file, and the line and column."""


def accuracy_column(dataset: str) -> str:
    """``'cifar10'`` -> ``'nats_cifar10_test_acc'``; unknown datasets raise ValueError."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset: {dataset!r} not allowed; allowed: {', '.join(DATASETS)}")
    return f"nats_{dataset}_test_acc"


def column_sha256(values: np.ndarray) -> str:
    """SHA-256 of a column as little-endian float64 (NaN written as the canonical quiet NaN)."""
    arr = np.ascontiguousarray(values, dtype="<f8").copy()
    arr[np.isnan(arr)] = np.nan
    return hashlib.sha256(arr.tobytes()).hexdigest()


# ----------------------------------------------------------------------------------------------
# NAS-Bench-201 tables
# ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _expected_arch_strs() -> tuple[str, ...]:
    space = NB201Space()
    return tuple(space.arch_str(space.from_index(i)) for i in range(NUM_ARCHS))


@dataclass(frozen=True)
class _TableData:
    source: str  # what error messages and fingerprints call the file
    file_name: str
    file_sha256: str
    names: tuple[str, ...]  # numeric columns, file order
    values: dict[str, np.ndarray]  # name -> read-only float64[NUM_ARCHS]
    present: np.ndarray  # bool[NUM_ARCHS]: the index has a row


_CACHE: dict[tuple, _TableData] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 8


def _parse_number(text: str, source: str, line: int, column: str) -> float:
    text = text.strip()
    if not text:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise TableFormatError(f"nb201 table {source}: line {line}, column {column!r}: {text!r} is not a number") from None
    if math.isinf(value):
        raise TableFormatError(f"nb201 table {source}: line {line}, column {column!r}: {text!r} is not a finite number")
    return value


def _parse(raw: bytes, source: str, file_name: str) -> _TableData:
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise TableFormatError(f"nb201 table {source}: not a readable gzip file ({exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TableFormatError(f"nb201 table {source}: not UTF-8 text ({exc})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    for header_row in reader:
        if any(cell.strip() for cell in header_row):
            header = [cell.strip() for cell in header_row]
            break
    if header is None:
        raise TableFormatError(f"nb201 table {source}: the file is empty; expected a header row with {', '.join(REQUIRED_COLUMNS)}")
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise TableFormatError(f"nb201 table {source}: duplicated columns {duplicated}")
    if "" in header:
        raise TableFormatError(f"nb201 table {source}: header column {header.index('') + 1} has no name")
    for required in REQUIRED_COLUMNS:
        if required not in header:
            raise TableFormatError(
                f"nb201 table {source}: missing required column {required!r}; columns found: {', '.join(header)}"
            )
    pos_index, pos_arch = header.index(INDEX_COLUMN), header.index(ARCH_COLUMN)
    names = tuple(h for h in header if h not in REQUIRED_COLUMNS)
    positions = [header.index(n) for n in names]
    columns = [np.full(NUM_ARCHS, np.nan) for _ in names]
    present = np.zeros(NUM_ARCHS, dtype=bool)
    first_line: dict[int, int] = {}
    expected = _expected_arch_strs()
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise TableFormatError(f"nb201 table {source}: line {line} has {len(row)} fields, the header has {len(header)}")
        cell = row[pos_index].strip()
        try:
            index = int(cell)
        except ValueError:
            raise TableFormatError(f"nb201 table {source}: line {line}, column {INDEX_COLUMN!r}: {cell!r} is not an integer") from None
        if not 0 <= index < NUM_ARCHS:
            raise TableFormatError(f"nb201 table {source}: line {line}, column {INDEX_COLUMN!r}: {index} not in 0..{NUM_ARCHS - 1}")
        if index in first_line:
            raise TableFormatError(f"nb201 table {source}: line {line}: nb201_index {index} already given on line {first_line[index]}")
        first_line[index] = line
        arch = row[pos_arch].strip()
        if arch != expected[index]:
            raise TableFormatError(
                f"nb201 table {source}: line {line}: arch_str {arch!r} disagrees with the NAS-Bench-201 index mapping, "
                f"which gives {expected[index]!r} for nb201_index {index} (is the file in another index order?)"
            )
        present[index] = True
        for k, (name, pos) in enumerate(zip(names, positions)):
            columns[k][index] = _parse_number(row[pos], source, line, name)
    if not present.any():
        raise TableFormatError(f"nb201 table {source}: no data rows after the header")
    values = {}
    for name, col in zip(names, columns):
        col.flags.writeable = False
        values[name] = col
    present.flags.writeable = False
    return _TableData(source, file_name, hashlib.sha256(raw).hexdigest(), names, values, present)


def _load(path: str | os.PathLike | None) -> _TableData:
    if path is None:
        resource = resources.files("tritune.targets").joinpath("data", EMBEDDED_FILE)
        key: tuple = ("<embedded>", EMBEDDED_FILE)
        with _CACHE_LOCK:
            if key in _CACHE:
                return _CACHE[key]
        data = _parse(resource.read_bytes(), f"<embedded {EMBEDDED_FILE}>", EMBEDDED_FILE)
    else:
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"nb201 table path: expected a file path, got {type(path).__name__}")
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"nb201 table: file not found: {p}" + (" (it is a directory)" if p.is_dir() else ""))
        stat = p.stat()
        key = (str(p.resolve()), stat.st_mtime_ns, stat.st_size)
        with _CACHE_LOCK:
            if key in _CACHE:
                return _CACHE[key]
        data = _parse(p.read_bytes(), str(p), p.name)
    with _CACHE_LOCK:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = data
    return data


def clear_table_cache() -> None:
    """Forget every parsed table (the next load reads the file again)."""
    with _CACHE_LOCK:
        _CACHE.clear()


_SPACE = NB201Space()


def nb201_index(candidate: Candidate, who: str = "nb201 table") -> int:
    """The NAS-Bench-201 index of an uncompressed ``nb201`` candidate; ValueError otherwise."""
    if not isinstance(candidate, Candidate):
        raise ValueError(f"{who}: expected a Candidate, got {type(candidate).__name__}")
    if candidate.space != _SPACE.name:
        raise ValueError(f"{who}: candidate {candidate.id} is from space {candidate.space!r}; allowed: {_SPACE.name!r}")
    for c in candidate.compression:
        if c.pattern != "dense" or c.sparsity != 0.0 or c.w_bits != FLOAT_BITS or c.a_bits != FLOAT_BITS:
            raise ValueError(f"{who}: candidate {candidate.id} is compressed ({c.token}); the table holds dense float models only")
    try:
        return _SPACE.index(candidate)
    except (KeyError, TypeError):
        raise ValueError(f"{who}: candidate {candidate.id} ops {candidate.get('ops')!r} are not a NAS-Bench-201 cell") from None


class NB201Table:
    """A NAS-Bench-201 table: float64 columns indexed by ``nb201_index`` (NaN = missing).

    ``NB201Table()`` is the table shipped with tritune; ``NB201Table(path)`` reads a ``.csv`` or
    ``.csv.gz`` in the format described in this module's docstring. Columns are read-only arrays
    of length 15,625 shared between every table loaded from the same unchanged file.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self._data = _load(path)
        self.path = None if path is None else Path(path).expanduser()

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "NB201Table":
        return cls(path)

    # ----- description ---------------------------------------------------------------------
    @property
    def source(self) -> str:
        """The path read, or ``<embedded nb201_embedded.csv.gz>``."""
        return self._data.source

    @property
    def file_name(self) -> str:
        return self._data.file_name

    @property
    def file_sha256(self) -> str:
        """SHA-256 of the (decompressed) CSV text."""
        return self._data.file_sha256

    @property
    def embedded(self) -> bool:
        return self.path is None

    @property
    def columns(self) -> tuple[str, ...]:
        """Numeric columns in file order (``nb201_index`` and ``arch_str`` excluded)."""
        return self._data.names

    @property
    def accuracy_columns(self) -> tuple[str, ...]:
        return tuple(n for n in self._data.names if n.endswith("_acc"))

    @property
    def latency_columns(self) -> tuple[str, ...]:
        return tuple(n for n in self._data.names if not n.endswith("_acc"))

    @property
    def indices(self) -> np.ndarray:
        """The indices that have a row, ascending."""
        return np.flatnonzero(self._data.present)

    def __len__(self) -> int:
        return int(self._data.present.sum())

    def __contains__(self, name: object) -> bool:
        return name in self._data.values

    def __repr__(self) -> str:
        return f"NB201Table({self.source!r}, rows={len(self)}, columns={len(self.columns)})"

    # ----- access --------------------------------------------------------------------------
    def column(self, name: str) -> np.ndarray:
        """The read-only float64 column of length 15,625 (NaN where missing)."""
        try:
            return self._data.values[name]
        except (KeyError, TypeError):
            raise ValueError(f"nb201 table {self.source}: column {name!r} not allowed; allowed: {', '.join(self.columns)}") from None

    def lookup(self, name: str, indices: int | Iterable[int] | np.ndarray) -> np.ndarray:
        """Values of column ``name`` at ``indices`` (a new float64 array; NaN where missing)."""
        col = self.column(name)
        idx = np.asarray(indices if not isinstance(indices, (int, np.integer)) else [indices])
        if idx.size == 0:
            return np.zeros(0)
        if idx.dtype.kind not in "iu":
            if idx.dtype.kind == "f" and np.all(np.isfinite(idx)) and np.all(idx == np.round(idx)):
                idx = idx.astype(np.int64)
            else:
                raise ValueError(f"nb201 table lookup: indices must be integers, got {idx.dtype} values")
        bad = idx[(idx < 0) | (idx >= NUM_ARCHS)]
        if bad.size:
            raise ValueError(f"nb201 table lookup: index {int(bad[0])} not in 0..{NUM_ARCHS - 1}")
        return col[idx].astype(np.float64, copy=True)

    def sha256(self, name: str) -> str:
        """SHA-256 of a column's values (see `column_sha256`)."""
        return column_sha256(self.column(name))

    def arch_str(self, index: int) -> str:
        """The cell string of an index (the file's strings were checked to be exactly these)."""
        if not 0 <= int(index) < NUM_ARCHS:
            raise ValueError(f"nb201 index: {index} not in 0..{NUM_ARCHS - 1}")
        return _expected_arch_strs()[int(index)]


# ----------------------------------------------------------------------------------------------
# The table target
# ----------------------------------------------------------------------------------------------
MISSING_POLICIES = ("nan", "error")
_TABLE_NOTE = "is a table of published measurements; it cannot build or measure models"


class NB201TableTarget(Target):
    """Latency of NAS-Bench-201 cells looked up in one column of an `NB201Table`.

    ``column`` is a latency column of the table (default ``help_fpga``); ``path`` a table file
    (default: the shipped table). Candidates whose value is missing get NaN, or, with
    ``missing="error"``, raise ValueError naming the candidate, its index and the column.
    """

    name = "nb201-table"
    description = "published NAS-Bench-201 latency table"

    def __init__(self, column: str = "help_fpga", path: str | os.PathLike | None = None, missing: str = "nan") -> None:
        if missing not in MISSING_POLICIES:
            raise ValueError(f"nb201-table missing: {missing!r} not allowed; allowed: {', '.join(MISSING_POLICIES)}")
        self.table = NB201Table(path)
        if column not in self.table.latency_columns:
            hint = " (that is an accuracy column)" if column in self.table.accuracy_columns else ""
            raise ValueError(
                f"nb201-table column: {column!r} not allowed{hint}; allowed: {', '.join(self.table.latency_columns)}"
            )
        self.column = column
        self.missing = missing
        self._values = self.table.column(column)
        self._space = NB201Space()
        self.description = f"{DEVICE_NOTES.get(column, column)}: published latency (ms) from {self.table.file_name}"

    # ----- Target ----------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        return {
            "target": self.name,
            "kind": "table",
            "device": self.column,
            "runtime": "published measurements",
            "version": None,
            "threads": None,
            "source": self.table.file_name,
            "column": self.column,
            "column_sha256": self.table.sha256(self.column),
        }

    def capabilities(self) -> dict[str, Any]:
        # The table holds dense float networks of one space: nothing beyond that is accelerated.
        return {
            "spaces": ["nb201"],
            "patterns": ["dense"],
            "bit_widths": [FLOAT_BITS],
            "builds": False,
            "measures": False,
            "rows": len(self.table),
            "known": int(np.count_nonzero(~np.isnan(self._values))),
        }

    def supports(self, space_name: str) -> bool:
        return space_name == self._space.name

    def index(self, candidate: Candidate) -> int:
        """The NAS-Bench-201 index of a candidate (ValueError for candidates the table cannot hold)."""
        return nb201_index(candidate, self.name)

    def latency(self, candidates: Sequence[Candidate], space: Any = None) -> np.ndarray:
        if isinstance(candidates, Candidate):
            raise ValueError("nb201-table latency: expected a sequence of candidates, got one Candidate; pass [candidate]")
        idx = np.fromiter((self.index(c) for c in candidates), dtype=np.int64)
        out = self._values[idx].astype(np.float64, copy=True)
        if self.missing == "error" and np.isnan(out).any():
            k = int(np.flatnonzero(np.isnan(out))[0])
            raise ValueError(
                f"nb201-table: no {self.column} value for candidate {candidates[k].id} (nb201_index {int(idx[k])}) "
                f"in {self.table.file_name}; {int(np.isnan(self._values).sum())} of {NUM_ARCHS} cells lack one"
            )
        return out

    def build(self, candidate: Candidate, space: Any = None, **options: Any) -> Any:
        raise NotImplementedError(f"target {self.name!r} {_TABLE_NOTE}")

    def measure(self, artifact: Any, **options: Any) -> dict[str, float]:
        raise NotImplementedError(f"target {self.name!r} {_TABLE_NOTE}")

    def __repr__(self) -> str:
        return f"NB201TableTarget(column={self.column!r}, source={self.table.source!r})"


# ----------------------------------------------------------------------------------------------
# BitFusion layer table (APQ)
# ----------------------------------------------------------------------------------------------
_BITFUSION_KEY = re.compile(r"^\((\s*\d+\s*(?:,\s*\d+\s*){6})\)-W(\d+)A(\d+)$")


class MissingEntryError(ValueError, KeyError):
    """A look-up key a table does not hold (a ValueError that ``except KeyError`` also catches)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class BitFusionLayer:
    """A parsed BitFusion key: ``(cin, cout, input_size, kernel, stride, pad, groups)-W{w}A{a}``."""

    cin: int
    cout: int
    input_size: int
    kernel: int
    stride: int
    pad: int
    groups: int
    w_bits: int
    a_bits: int

    @property
    def key(self) -> str:
        dims = (self.cin, self.cout, self.input_size, self.kernel, self.stride, self.pad, self.groups)
        return f"({', '.join(str(d) for d in dims)})-W{self.w_bits}A{self.a_bits}"


class BitFusionTable:
    """The BitFusion per-layer latency / energy table published with APQ (Wang et al., CVPR 2020).

    The file is JSON: ``"(cin, cout, input_size, kernel, stride, pad, groups)-W{w}A{a}"`` ->
    ``{"latency": ..., "energy": ...}`` for batch 1, plus ``"head"`` and ``"tail"`` entries for the
    network's fixed first and last layers. Only a user-given path is read (nothing is shipped).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        if path is None or not isinstance(path, (str, os.PathLike)):
            raise ValueError("BitFusion table: give the path of the table file (e.g. BitFusion_new.b1.dict)")
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"BitFusion table: file not found: {p}")
        self.path = p
        try:
            raw = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TableFormatError(f"BitFusion table {p}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise TableFormatError(f"BitFusion table {p}: expected a JSON object of layer keys, got {type(raw).__name__}")
        self.entries: dict[BitFusionLayer, tuple[float, float]] = {}
        self.extras: dict[str, tuple[float, float]] = {}
        for key, value in raw.items():
            cost = self._cost(key, value)
            match = _BITFUSION_KEY.match(key)
            if match is None:
                if key in ("head", "tail"):
                    self.extras[key] = cost
                    continue
                raise TableFormatError(
                    f"BitFusion table {p}: key {key!r} is not '(cin, cout, input_size, kernel, stride, pad, groups)-W<bits>A<bits>', 'head' or 'tail'"
                )
            dims = [int(x) for x in match.group(1).split(",")]
            layer = BitFusionLayer(*dims, w_bits=int(match.group(2)), a_bits=int(match.group(3)))
            if layer in self.entries:
                raise TableFormatError(f"BitFusion table {p}: key {key!r} given twice")
            self.entries[layer] = cost
        # Look-ups without ``pad``: the published keys always have pad == kernel // 2, so the other
        # seven numbers identify a layer; keep the first in case a file breaks that.
        self._by_shape: dict[tuple, BitFusionLayer] = {}
        for layer in self.entries:
            self._by_shape.setdefault(self._shape(layer.cin, layer.cout, layer.input_size, layer.kernel, layer.stride, layer.groups, layer.w_bits, layer.a_bits), layer)

    def _cost(self, key: str, value: Any) -> tuple[float, float]:
        if not isinstance(value, dict) or "latency" not in value or "energy" not in value:
            raise TableFormatError(f"BitFusion table {self.path}: entry {key!r} must be an object with 'latency' and 'energy'")
        try:
            latency, energy = float(value["latency"]), float(value["energy"])
        except (TypeError, ValueError):
            raise TableFormatError(f"BitFusion table {self.path}: entry {key!r}: latency / energy are not numbers") from None
        if not (math.isfinite(latency) and math.isfinite(energy)):
            raise TableFormatError(f"BitFusion table {self.path}: entry {key!r}: latency / energy are not finite")
        return latency, energy

    @staticmethod
    def _shape(*values: int) -> tuple[int, ...]:
        return tuple(int(v) for v in values)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def bit_pairs(self) -> tuple[tuple[int, int], ...]:
        """The (w_bits, a_bits) pairs present, sorted."""
        return tuple(sorted({(k.w_bits, k.a_bits) for k in self.entries}))

    @property
    def head(self) -> tuple[float, float]:
        return self._extra("head")

    @property
    def tail(self) -> tuple[float, float]:
        return self._extra("tail")

    def _extra(self, name: str) -> tuple[float, float]:
        if name not in self.extras:
            raise MissingEntryError(f"BitFusion table {self.path}: no {name!r} entry")
        return self.extras[name]

    def lookup(
        self, cin: int, cout: int, input_size: int, kernel: int, stride: int, groups: int, w_bits: int, a_bits: int,
        pad: int | None = None,
    ) -> tuple[float, float]:
        """``(latency, energy)`` of one layer. ``pad`` defaults to the table's own (kernel // 2).

        A layer the table does not hold raises `MissingEntryError` (a ValueError) naming the key."""
        if pad is None:
            layer = self._by_shape.get(self._shape(cin, cout, input_size, kernel, stride, groups, w_bits, a_bits))
            wanted = BitFusionLayer(int(cin), int(cout), int(input_size), int(kernel), int(stride), int(kernel) // 2, int(groups), int(w_bits), int(a_bits))
        else:
            wanted = BitFusionLayer(int(cin), int(cout), int(input_size), int(kernel), int(stride), int(pad), int(groups), int(w_bits), int(a_bits))
            layer = wanted if wanted in self.entries else None
        if layer is None:
            pairs = ", ".join(f"W{w}A{a}" for w, a in self.bit_pairs)
            raise MissingEntryError(f"BitFusion table {self.path.name}: no entry {wanted.key!r} (bit-widths present: {pairs})")
        return self.entries[layer]

    def __repr__(self) -> str:
        return f"BitFusionTable({str(self.path)!r}, entries={len(self.entries)})"
