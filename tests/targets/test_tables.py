"""Tests for tritune.targets: the embedded NAS-Bench-201 table, user tables, the table target,
the target registry and the BitFusion reader -- against the real published data."""
from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import json
import math
import os
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

from tritune.spaces import NB201Space
from tritune.targets import (
    BitFusionTable,
    MissingEntryError,
    NB201Table,
    NB201TableTarget,
    TableFormatError,
    Target,
    check_target,
    create_target,
    list_targets,
    register_target,
)
from tritune.spaces.plugins import PluginGroup
from tritune.targets.registry import TARGETS
from tritune.targets.tables import EMBEDDED_FILE

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
JOINT_CSV = SHARED / "derived" / "nb201_joint_latency_accuracy.csv"
BITFUSION = SHARED / "apq" / "BitFusion_new.b1.dict"
EMBEDDED_PATH = REPO / "targets" / "data" / EMBEDDED_FILE

EMBEDDED_LATENCY = (
    "help_fpga", "help_eyeriss", "help_gold_6226", "help_pixel3", "help_raspi4", "help_titanxp_1",
    "help_gold_6240", "help_1080ti_1", "nnmeter_cortexA76cpu_tflite21_ms",
)
EMBEDDED_ACCURACY = ("nats_cifar10_test_acc", "nats_cifar100_test_acc", "nats_imagenet16_120_test_acc")
ARCH0 = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"


def need_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (expected beside the repository at ../shared/data)")
    return path


@pytest.fixture(scope="module")
def shared_rows() -> dict[int, dict[str, str]]:
    need_shared(JOINT_CSV)
    with open(JOINT_CSV, newline="") as fh:
        return {int(r["nb201_index"]): r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def embedded() -> NB201Table:
    return NB201Table()


def write_table(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    text = ",".join(header) + "\n" + "".join(",".join(str(x) for x in row) + "\n" for row in rows)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def arch(i: int) -> str:
    space = NB201Space()
    return space.arch_str(space.from_index(i))


# --------------------------------------------------------------------------------------------
# the embedded table
# --------------------------------------------------------------------------------------------
def test_embedded_table_loads_without_a_path(embedded):
    assert embedded.embedded and embedded.path is None
    assert len(embedded) == 15625
    assert list(embedded.indices) == list(range(15625))
    assert embedded.accuracy_columns == EMBEDDED_ACCURACY
    assert embedded.latency_columns == EMBEDDED_LATENCY
    for name in embedded.columns:
        col = embedded.column(name)
        assert col.dtype == np.float64 and col.shape == (15625,)
        assert not col.flags.writeable


def test_embedded_known_values(embedded):
    c10 = embedded.column("nats_cifar10_test_acc")
    assert int(np.nanargmax(c10)) == 6111 and c10[6111] == pytest.approx(94.37, abs=0.01)
    assert int(np.nanargmax(embedded.column("nats_cifar100_test_acc"))) == 9930
    assert embedded.column("nats_cifar100_test_acc")[9930] == pytest.approx(73.51, abs=0.01)
    assert int(np.nanargmax(embedded.column("nats_imagenet16_120_test_acc"))) == 857
    assert embedded.column("nats_imagenet16_120_test_acc")[857] == pytest.approx(47.31, abs=0.01)
    assert int((c10 >= 90).sum()) == 8698
    assert embedded.lookup("help_pixel3", 0)[0] == pytest.approx(3.60585, rel=1e-6)
    assert embedded.lookup("help_fpga", [0])[0] == pytest.approx(2.57296, rel=1e-6)
    assert embedded.lookup("help_eyeriss", np.array([0]))[0] == pytest.approx(3.64562, rel=1e-6)
    assert embedded.lookup("help_raspi4", [0])[0] == pytest.approx(10.48198, rel=1e-5)
    nn = embedded.column("nnmeter_cortexA76cpu_tflite21_ms")
    assert int(np.count_nonzero(~np.isnan(nn))) == 2000
    # every other embedded column is complete and positive
    for name in EMBEDDED_ACCURACY + EMBEDDED_LATENCY[:-1]:
        assert not np.isnan(embedded.column(name)).any(), name
    assert (embedded.column("help_fpga") > 0).all()
    assert embedded.arch_str(0) == ARCH0


def test_embedded_agrees_with_shared_csv(embedded, shared_rows):
    assert len(shared_rows) == 15625
    for name in embedded.columns:
        ref = np.array([float(shared_rows[i][name]) if shared_rows[i][name] != "" else np.nan for i in range(15625)])
        got = embedded.column(name)
        assert np.array_equal(np.isnan(ref), np.isnan(got)), name
        m = ~np.isnan(ref)
        np.testing.assert_allclose(got[m], ref[m], rtol=5e-6, err_msg=name)
    for i in (0, 1, 6111, 15624):
        assert embedded.arch_str(i) == shared_rows[i]["arch_str"]


def test_shared_csv_loads_as_a_user_table(embedded):
    table = NB201Table(need_shared(JOINT_CSV))
    assert len(table) == 15625 and not table.embedded
    assert len(table.latency_columns) == 27 + 4 and len(table.accuracy_columns) == 3
    assert table.source == str(JOINT_CSV)
    np.testing.assert_allclose(table.column("help_fpga"), embedded.column("help_fpga"), rtol=1e-6)
    assert int((~np.isnan(table.column("nnmeter_myriadvpu_openvino2019r2_ms"))).sum()) == 1999


def test_embedded_file_is_small_and_reproducible(tmp_path):
    assert EMBEDDED_PATH.stat().st_size < 1_500_000
    need_shared(JOINT_CSV)
    spec = importlib.util.spec_from_file_location("make_embedded", REPO / "targets" / "data" / "make_embedded.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.build(JOINT_CSV) == EMBEDDED_PATH.read_bytes(), "embedded table out of date: run targets/data/make_embedded.py"


def test_licences_and_provenance_ship_with_the_data():
    data = REPO / "targets" / "data"
    for name in ("LICENSE_HELP_MIT.txt", "LICENSE_nn-Meter_MIT.txt", "LICENSE_HW-NAS-Bench_MIT.txt"):
        assert "MIT License" in (data / "licenses" / name).read_text()
    readme = (data / "README.md").read_text()
    for word in ("NATS-Bench", "HELP", "nn-Meter", "HW-NAS-Bench", "28e982e3", "b307ae5", "200"):
        assert word in readme


def test_loaded_tables_are_cached(embedded):
    again = NB201Table()
    assert again.column("help_fpga") is embedded.column("help_fpga")


# --------------------------------------------------------------------------------------------
# user tables
# --------------------------------------------------------------------------------------------
HEADER = ["nb201_index", "arch_str", "nats_cifar10_test_acc", "my_board_ms"]


def small_rows() -> list[list[object]]:
    return [[0, arch(0), 85.5, 1.25], [6111, arch(6111), 94.37, ""], [15624, arch(15624), "", 7.0]]


@pytest.mark.parametrize("name", ["mine.csv", "mine.csv.gz"])
def test_user_table_from_path(tmp_path, name):
    path = write_table(tmp_path / name, HEADER, small_rows())
    table = NB201Table(path)
    assert len(table) == 3 and list(table.indices) == [0, 6111, 15624]
    assert table.columns == ("nats_cifar10_test_acc", "my_board_ms")
    assert table.accuracy_columns == ("nats_cifar10_test_acc",) and table.latency_columns == ("my_board_ms",)
    got = table.lookup("my_board_ms", [0, 6111, 15624, 5])
    assert got[0] == 1.25 and math.isnan(got[1]) and got[2] == 7.0 and math.isnan(got[3])
    assert table.lookup("nats_cifar10_test_acc", [6111])[0] == 94.37
    target = NB201TableTarget(column="my_board_ms", path=path)
    assert target.fingerprint()["source"] == name


def test_user_table_cache_follows_modification(tmp_path):
    path = write_table(tmp_path / "t.csv", HEADER, small_rows())
    first = NB201Table(path)
    assert NB201Table(str(path)).column("my_board_ms") is first.column("my_board_ms")
    rows = small_rows()
    rows[0][3] = 9.5
    write_table(path, HEADER, rows)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert NB201Table(path).lookup("my_board_ms", [0])[0] == 9.5


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        NB201Table(missing)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        create_target("nb201-table", path=missing)


@pytest.mark.parametrize("dropped", ["nb201_index", "arch_str"])
def test_missing_required_column(tmp_path, dropped):
    keep = [i for i, h in enumerate(HEADER) if h != dropped]
    path = write_table(tmp_path / "t.csv", [HEADER[i] for i in keep], [[r[i] for i in keep] for r in small_rows()])
    with pytest.raises(TableFormatError, match=f"missing required column '{dropped}'"):
        NB201Table(path)


def test_bad_number_names_line_and_column(tmp_path):
    rows = small_rows()
    rows[1][3] = "fast"
    path = write_table(tmp_path / "t.csv", HEADER, rows)
    with pytest.raises(ValueError, match=r"line 3, column 'my_board_ms': 'fast' is not a number"):
        NB201Table(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda rows: rows[1].__setitem__(1, arch(6112)), "disagrees with the NAS-Bench-201 index mapping"),
        (lambda rows: rows[1].__setitem__(0, 0), "nb201_index 0 already given on line 2"),
        (lambda rows: rows[1].__setitem__(0, 15625), r"15625 not in 0\.\.15624"),
        (lambda rows: rows[1].__setitem__(0, "x1"), "'x1' is not an integer"),
        (lambda rows: rows[1].append(3), "has 5 fields, the header has 4"),
    ],
)
def test_bad_rows(tmp_path, edit, message):
    rows = small_rows()
    edit(rows)
    path = write_table(tmp_path / "t.csv", HEADER, rows)
    with pytest.raises(TableFormatError, match=message):
        NB201Table(path)


def test_empty_and_header_only_files(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(TableFormatError, match="empty"):
        NB201Table(tmp_path / "empty.csv")
    write_table(tmp_path / "head.csv", HEADER, [])
    with pytest.raises(TableFormatError, match="no data rows"):
        NB201Table(tmp_path / "head.csv")


def test_unknown_column_and_bad_indices(embedded):
    with pytest.raises(ValueError, match=r"column 'help_tpu' not allowed; allowed: nats_cifar10_test_acc, .*help_fpga"):
        embedded.column("help_tpu")
    with pytest.raises(ValueError, match="not in 0..15624"):
        embedded.lookup("help_fpga", [15625])
    with pytest.raises(ValueError, match="integers"):
        embedded.lookup("help_fpga", [0.5])


# --------------------------------------------------------------------------------------------
# the table target
# --------------------------------------------------------------------------------------------
def test_table_target_latencies_from_arch_strings():
    space = NB201Space()
    target = create_target("nb201-table", column="help_fpga")
    assert isinstance(target, NB201TableTarget) and isinstance(target, Target)
    cand = space.from_arch_str(ARCH0)
    assert target.latency([cand])[0] == pytest.approx(2.57296, rel=1e-6)
    pixel = NB201TableTarget(column="help_pixel3")
    eyeriss = NB201TableTarget(column="help_eyeriss")
    out = np.concatenate([pixel.latency([cand]), eyeriss.latency([cand])])
    np.testing.assert_allclose(out, [3.60585, 3.64562], rtol=1e-6)


def test_table_target_matches_shared_csv(shared_rows):
    space = NB201Space()
    rng = np.random.default_rng(0)
    picks = rng.choice(15625, size=200, replace=False)
    cands = [space.from_arch_str(shared_rows[int(i)]["arch_str"]) for i in picks]
    for column in ("help_fpga", "help_gold_6226", "help_raspi4", "help_1080ti_1"):
        got = create_target("nb201-table", column=column).latency(cands)
        ref = [float(shared_rows[int(i)][column]) for i in picks]
        assert got.shape == (200,) and got.dtype == np.float64
        np.testing.assert_allclose(got, ref, rtol=5e-6, err_msg=column)
    # rankings differ between devices, which is why per-target search matters
    a = create_target("nb201-table", column="help_pixel3").latency(cands)
    b = create_target("nb201-table", column="help_gold_6226").latency(cands)
    assert not np.array_equal(np.argsort(a), np.argsort(b))


def test_table_target_missing_values(embedded):
    space = NB201Space()
    nn = embedded.column("nnmeter_cortexA76cpu_tflite21_ms")
    known, unknown = int(np.flatnonzero(~np.isnan(nn))[0]), int(np.flatnonzero(np.isnan(nn))[0])
    cands = [space.from_index(known), space.from_index(unknown)]
    lat = NB201TableTarget(column="nnmeter_cortexA76cpu_tflite21_ms").latency(cands)
    assert lat[0] == nn[known] and math.isnan(lat[1])
    strict = NB201TableTarget(column="nnmeter_cortexA76cpu_tflite21_ms", missing="error")
    assert strict.latency(cands[:1])[0] == nn[known]
    with pytest.raises(ValueError, match=f"nb201_index {unknown}"):
        strict.latency(cands)
    with pytest.raises(ValueError, match="missing: 'skip' not allowed"):
        NB201TableTarget(missing="skip")


def test_table_target_identity_and_refusals(embedded):
    fpga, pixel = NB201TableTarget("help_fpga"), NB201TableTarget("help_pixel3")
    fp = fpga.fingerprint()
    for key in ("target", "device", "runtime", "version", "threads", "source", "column", "column_sha256"):
        assert key in fp
    assert fp["column"] == "help_fpga" and fp["source"] == EMBEDDED_FILE
    assert fp["column_sha256"] == hashlib.sha256(embedded.column("help_fpga").astype("<f8").tobytes()).hexdigest()
    assert fp["column_sha256"] != pixel.fingerprint()["column_sha256"]
    json.dumps(fp)
    caps = fpga.capabilities()
    assert caps["patterns"] == ["dense"] and caps["bit_widths"] == [32] and caps["spaces"] == ["nb201"]
    assert caps["builds"] is False and caps["measures"] is False
    assert fpga.supports("nb201") and not fpga.supports("mobilenet")
    with pytest.raises(NotImplementedError, match="table of published measurements; it cannot build or measure"):
        fpga.build(NB201Space().from_index(0))
    with pytest.raises(NotImplementedError, match="table of published measurements"):
        fpga.measure(object())
    with pytest.raises(ValueError, match="accuracy column"):
        NB201TableTarget(column="nats_cifar10_test_acc")
    with pytest.raises(ValueError, match=r"column: 'help_tpu' not allowed; allowed: help_fpga"):
        NB201TableTarget(column="help_tpu")


def test_table_target_rejects_foreign_candidates():
    from tritune.spaces import Candidate, LayerCompression, create

    target = NB201TableTarget()
    mb = create("mobilenet-small")
    with pytest.raises(ValueError, match="from space 'mobilenet-small'"):
        target.latency([mb.sample(np.random.default_rng(0))])
    cand = NB201Space().from_index(3)
    squeezed = Candidate.make("nb201", cand.arch_dict(), [LayerCompression("unstructured", 0.5, 8, 8)])
    with pytest.raises(ValueError, match="compressed"):
        target.latency([squeezed])
    with pytest.raises(ValueError, match="not a NAS-Bench-201 cell"):
        target.latency([Candidate.make("nb201", {"ops": ["conv"] * 6})])
    assert target.latency([]).shape == (0,)


# --------------------------------------------------------------------------------------------
# registry and the Target contract
# --------------------------------------------------------------------------------------------
def test_registry_errors():
    assert "nb201-table" in list_targets()
    with pytest.raises(ValueError, match=r"target: 'tpu' not allowed; allowed: .*nb201-table"):
        create_target("tpu")
    with pytest.raises(ValueError, match=r"unknown options \['colum'\]; allowed: column, path, missing"):
        create_target("nb201-table", colum="help_fpga")


class _ConstTarget(Target):
    name = "const"
    description = "every candidate takes 1 ms"

    def __init__(self, ms: float = 1.0) -> None:
        self.ms = ms

    def fingerprint(self):
        return {"target": self.name, "device": "none", "runtime": "none", "version": None, "threads": None}

    def capabilities(self):
        return {"spaces": ["nb201"], "patterns": ["dense"], "bit_widths": [32], "builds": False, "measures": False}

    def supports(self, space_name):
        return True

    def latency(self, candidates):
        return np.full(len(candidates), self.ms)


def test_register_and_create_custom_target():
    try:
        register_target("const", _ConstTarget)
        assert list_targets()["const"] == "every candidate takes 1 ms"
        target = create_target("const", ms=2.5)
        assert target.latency([NB201Space().from_index(0)]).tolist() == [2.5]
        with pytest.raises(NotImplementedError, match="target 'const' cannot build"):
            target.build(None)
        register_target("broken", lambda **kw: object())
        with pytest.raises(TypeError, match="missing name, description"):
            create_target("broken")
    finally:
        TARGETS.unregister("const")
        TARGETS.unregister("broken")
    assert "const" not in list_targets()


def test_target_contract_is_enforced():
    class Half(Target):
        name = "half"

        def latency(self, candidates):
            return np.zeros(len(candidates))

    with pytest.raises(TypeError):
        Half()

    class Duck:
        name, description = "duck", "quacks"
        fingerprint = capabilities = supports = latency = staticmethod(lambda *a: None)

    assert check_target(Duck()) is not None


def test_entry_point_plugins_load_lazily(tmp_path, monkeypatch):
    module = "tritune_test_plugin_board"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(
        """
        import numpy as np
        LOADED = True

        class Board:
            name = "plugin-board"
            description = "a board from a plug-in"
            def __init__(self, ms=3.0): self.ms = ms
            def fingerprint(self): return {"target": self.name, "device": "board", "runtime": "x", "version": "1", "threads": 1}
            def capabilities(self): return {"spaces": ["nb201"], "patterns": ["dense"], "bit_widths": [8], "builds": True, "measures": True}
            def supports(self, space_name): return space_name == "nb201"
            def latency(self, candidates): return np.full(len(candidates), self.ms)
        """
    ))
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = EntryPoint(name="plugin-board", value=f"{module}:Board", group="tritune.targets")
    asked = []

    def fake_entry_points(group):
        asked.append(group)
        return [ep]

    monkeypatch.setattr(TARGETS, "plugins", PluginGroup("tritune.targets", fake_entry_points))
    try:
        assert "plugin-board" in list_targets()
        assert asked == ["tritune.targets"]
        assert module not in sys.modules  # listed, not imported
        board = create_target("plugin-board", ms=4.0)
        assert module in sys.modules
        assert board.latency([NB201Space().from_index(0)]).tolist() == [4.0]
        with pytest.raises(ValueError, match="unknown options"):
            create_target("plugin-board", watts=3)
    finally:
        sys.modules.pop(module, None)
        TARGETS.unregister("plugin-board")


# --------------------------------------------------------------------------------------------
# BitFusion
# --------------------------------------------------------------------------------------------
def test_bitfusion_real_table():
    path = need_shared(BITFUSION)
    raw = json.loads(path.read_text())
    table = BitFusionTable(path)
    assert len(table) == 6567
    assert table.bit_pairs == tuple((w, a) for w in (4, 6, 8) for a in (4, 6, 8))
    ref = raw["(96, 456, 14, 1, 1, 0, 1)-W4A4"]
    assert table.lookup(96, 456, 14, 1, 1, 1, 4, 4) == (ref["latency"], ref["energy"])
    assert table.lookup(cin=96, cout=456, input_size=14, kernel=1, stride=1, groups=1, w_bits=4, a_bits=4, pad=0) == (ref["latency"], ref["energy"])
    assert table.head == (raw["head"]["latency"], raw["head"]["energy"])
    assert table.tail == (raw["tail"]["latency"], raw["tail"]["energy"])
    # a depthwise 3x3 entry: pad is kernel // 2
    key = next(k for k in raw if k.startswith("(") and k.split("-")[0].split(", ")[3] == "3")
    dims = [int(x) for x in key.split("-")[0].strip("()").split(",")]
    w, a = int(key.split("-W")[1].split("A")[0]), int(key.split("A")[-1])
    cin, cout, size, k, s, pad, g = dims
    assert pad == 1
    assert table.lookup(cin, cout, size, k, s, g, w, a) == (raw[key]["latency"], raw[key]["energy"])
    with pytest.raises(ValueError, match=r"no entry '\(96, 456, 14, 1, 1, 0, 1\)-W5A4'"):
        table.lookup(96, 456, 14, 1, 1, 1, 5, 4)
    with pytest.raises(KeyError):
        table.lookup(97, 456, 14, 1, 1, 1, 4, 4)


def test_bitfusion_small_file_and_errors(tmp_path):
    good = {
        "(16, 32, 8, 3, 2, 1, 1)-W8A8": {"energy": 0.5, "latency": 0.25},
        "(32, 32, 8, 3, 1, 1, 32)-W4A8": {"energy": 0.1, "latency": 0.05},
        "head": {"energy": 1.0, "latency": 2.0},
    }
    path = tmp_path / "lut.dict"
    path.write_text(json.dumps(good))
    table = BitFusionTable(path)
    assert table.lookup(16, 32, 8, 3, 2, 1, 8, 8) == (0.25, 0.5)
    assert table.lookup(32, 32, 8, 3, 1, 32, 4, 8) == (0.05, 0.1)
    assert table.head == (2.0, 1.0)
    with pytest.raises(MissingEntryError, match="'tail'"):
        table.tail
    with pytest.raises(ValueError, match=r"\(16, 32, 8, 3, 2, 0, 1\)-W8A8"):
        table.lookup(16, 32, 8, 3, 2, 1, 8, 8, pad=0)
    bad = dict(good)
    bad["conv3x3-W8A8"] = {"energy": 1, "latency": 1}
    path.write_text(json.dumps(bad))
    with pytest.raises(TableFormatError, match="'conv3x3-W8A8' is not"):
        BitFusionTable(path)
    path.write_text(json.dumps({"(1, 1, 1, 1, 1, 0, 1)-W8A8": {"latency": "slow", "energy": 1}}))
    with pytest.raises(TableFormatError, match="not numbers"):
        BitFusionTable(path)
    path.write_text("{not json")
    with pytest.raises(TableFormatError, match="not valid JSON"):
        BitFusionTable(path)
    with pytest.raises(FileNotFoundError, match="missing.dict"):
        BitFusionTable(tmp_path / "missing.dict")
