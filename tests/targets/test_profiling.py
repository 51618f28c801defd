"""Profiling: stratified coverage, rows + metadata, resume without rebuilding, refusing mixed setups."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from tritune.spaces import create
from tritune.kernels.timing import Protocol
from tritune.targets.ort_cpu import OrtCpuTarget
from tritune.targets.profiling import (
    METADATA_FILE,
    MEASUREMENTS_FILE,
    SCHEMA_VERSION,
    ProfileMismatchError,
    coverage,
    normalized_latency,
    pooled_latency,
    profile,
    profile_sessions,
    read_measurements,
    session_dirs,
    stratified_candidates,
)

TINY = Protocol(threads=1, warmup=1, rounds=2, runs_per_round=3)


class CountingTarget(OrtCpuTarget):
    """The real target, counting builds."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.builds = 0

    def build(self, candidate, space=None, input_shape=None, **kw):
        self.builds += 1
        return super().build(candidate, space=space, input_shape=input_shape, **kw)


def test_stratified_sample_covers_every_choice():
    space = create("mobilenet-small")
    cands = stratified_candidates(space, 60, seed=0)
    assert len({c.id for c in cands}) == 60
    cov = coverage(space, cands)
    # architecture: every choice, balanced within one per gene (resolution, width are per candidate)
    assert set(cov["resolution"]) == set(space.resolutions) and max(cov["resolution"].values()) - min(cov["resolution"].values()) <= 1
    assert set(cov["width"]) == set(space.widths) and max(cov["width"].values()) - min(cov["width"].values()) <= 1
    for group, choices in (("depth", space.depths), ("kernel", space.kernels), ("expand", space.expands)):
        assert set(cov[group]) == set(choices)
        assert min(cov[group].values()) >= 0.2 * sum(cov[group].values()) / len(choices)
    # compression: every pattern, ratio and bit-width of the menu; all-float and all-low-bit mixes
    assert set(cov["pattern"]) == set(space.menu.patterns)
    assert set(cov["w_bits"]) == set(space.menu.w_bits) and set(cov["a_bits"]) == set(space.menu.a_bits)
    assert set(cov["sparsity"]) == {0.0, *space.menu.sparsities}
    assert cov["quantized_fraction"][0.0] >= 3 and cov["quantized_fraction"][1.0] >= 3


def test_stratified_sample_is_deterministic_and_prefix_stable():
    space = create("mobilenet-small")
    a = stratified_candidates(space, 30, seed=4)
    assert stratified_candidates(space, 30, seed=4) == a
    assert stratified_candidates(space, 12, seed=4) == a[:12]
    assert stratified_candidates(space, 12, seed=5) != a[:12]
    with pytest.raises(ValueError, match="strata"):
        stratified_candidates(space, 3, strata=("colour",))


def test_profile_writes_rows_and_resumes_without_rebuilding(tmp_path):
    space = create("mobilenet-small")
    target = CountingTarget()
    res = profile(target, space, 3, tmp_path, seed=1, protocol=TINY, group_size=2, progress=False)
    assert target.builds == 3 + 1 and res.measured == 3 and res.skipped == 0  # + the reference model, built once
    rows = read_measurements(tmp_path)
    assert len(rows) == 3
    ids = [c.id for c in stratified_candidates(space, 3, seed=1)]
    assert [r["candidate_id"] for r in rows] == ids
    for row in rows:
        for key in ("candidate", "latency_ms", "spread", "round_medians_ms", "timestamp", "median_ms", "p10_ms", "p90_ms", "build_s"):
            assert key in row, key
        assert row["latency_ms"] > 0 and len(row["round_medians_ms"]) == 2
        assert row["candidate"]["space"] == "mobilenet-small"
        assert row["reference_ms"] > 0  # the reference, timed in the row's group
    assert {r["group"] for r in rows} == {0, 1}
    # normalised latency: each row times median(reference) / its group's reference
    norm = normalized_latency(rows)
    ref = np.array([r["reference_ms"] for r in rows])
    np.testing.assert_allclose(norm, np.array([r["latency_ms"] for r in rows]) * np.median(ref) / ref)
    meta = json.loads((tmp_path / METADATA_FILE).read_text())
    assert meta["schema_version"] == SCHEMA_VERSION
    assert meta["target"]["name"] == "ort-cpu" and meta["target"]["fingerprint"]["threads"] == 1
    assert meta["space"] == {"name": "mobilenet-small", "config": json.loads(json.dumps(space.config()))}
    assert meta["protocol"] == TINY.to_json() and meta["tritune_version"]
    assert meta["runs"][0]["seed"] == 1
    assert meta["reference"] == {"kind": "largest", "candidate": json.loads(json.dumps(space.largest().to_json()))}

    # same arguments: nothing rebuilt
    target.builds = 0
    res = profile(target, space, 3, tmp_path, seed=1, protocol=TINY, group_size=2, progress=False)
    assert target.builds == 0 and res.skipped == 3 and res.measured == 0
    assert len(read_measurements(tmp_path)) == 3
    # a larger n extends the same (prefix-stable) list: only the new candidate is built
    res = profile(target, space, 4, tmp_path, seed=1, protocol=TINY, group_size=2, progress=False)
    assert target.builds == 1 + 1 and res.skipped == 3
    assert len(read_measurements(tmp_path)) == 4
    assert len(json.loads((tmp_path / METADATA_FILE).read_text())["runs"]) == 3

    # the command line on the same directory: everything already measured
    from tritune.cli.profile import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["profile", "--target", "ort-cpu", "--space", "mobilenet-small", "--n", "4", "--out", str(tmp_path),
                              "--seed", "1", "--rounds", "2", "--runs-per-round", "3", "--warmup", "1", "--group-size", "2", "--quiet"])
    assert args.func(args) == 0
    assert len(read_measurements(tmp_path)) == 4
    # numbers without a reference must not be mixed into this profile
    with pytest.raises(ProfileMismatchError, match="reference 'largest' != 'none'"):
        profile(target, space, 5, tmp_path, seed=1, protocol=TINY, group_size=2, progress=False, reference="none")
    # a profile written before the space had squeeze-excite slots: its reference is another candidate
    # (and so is everything the seed draws now), so it is not extended; its rows stay as they were
    from tritune.spaces.mobilenet.space import PRE_SE_SLOTS

    meta_path, rows_before = tmp_path / METADATA_FILE, (tmp_path / MEASUREMENTS_FILE).read_text()
    meta = json.loads(meta_path.read_text())
    meta["reference"]["candidate"]["compression"] = meta["reference"]["candidate"]["compression"][:PRE_SE_SLOTS]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ProfileMismatchError, match="reference candidate differs"):
        profile(target, space, 5, tmp_path, seed=1, protocol=TINY, group_size=2, progress=False)
    assert (tmp_path / MEASUREMENTS_FILE).read_text() == rows_before
    with pytest.raises(ValueError, match="profile.reference: 'median' not allowed; allowed: largest, none"):
        profile(target, space, 5, tmp_path, seed=1, protocol=TINY, progress=False, reference="median")


def _seed_metadata(tmp_path, space, target):
    """A metadata file as profile() writes it, without measuring anything."""
    meta = {
        "schema_version": SCHEMA_VERSION, "tritune_version": "0",
        "target": {"name": target.name, "fingerprint": json.loads(json.dumps(target.fingerprint()))},
        "space": {"name": space.name, "config": json.loads(json.dumps(space.config()))},
        "protocol": TINY.to_json(), "runs": [],
    }
    (tmp_path / METADATA_FILE).write_text(json.dumps(meta))
    return meta


class NeverBuilds(OrtCpuTarget):
    def build(self, *a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("a mismatched profile must be refused before building")


def test_mismatched_metadata_is_refused(tmp_path):
    space = create("mobilenet-small")
    target = NeverBuilds()
    meta = _seed_metadata(tmp_path, space, target)

    meta["target"]["fingerprint"]["version"] = "0.0.1"  # another onnxruntime
    (tmp_path / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(ProfileMismatchError, match="fingerprint differs in version"):
        profile(target, space, 2, tmp_path, protocol=TINY, progress=False)

    _seed_metadata(tmp_path, space, target)
    other_space = create("mobilenet-small", resolutions=(28, 32))
    with pytest.raises(ProfileMismatchError, match="space config differs in resolutions"):
        profile(target, other_space, 2, tmp_path, protocol=TINY, progress=False)
    with pytest.raises(ProfileMismatchError, match="threads"):
        profile(OrtCpuTarget(threads=2), space, 2, tmp_path, protocol=Protocol(threads=2, warmup=1, rounds=2, runs_per_round=3),
                progress=False)
    with pytest.raises(ProfileMismatchError, match="protocol"):
        profile(target, space, 2, tmp_path, protocol=Protocol(), progress=False)
    assert not (tmp_path / MEASUREMENTS_FILE).exists()


def test_truncated_last_line_is_tolerated(tmp_path):
    (tmp_path / MEASUREMENTS_FILE).write_text('{"candidate_id": "a", "latency_ms": 1.0}\n{"candidate_id": "b", "lat')
    rows = read_measurements(tmp_path)
    assert [r["candidate_id"] for r in rows] == ["a"]


def test_unsupported_space_is_refused(tmp_path):
    with pytest.raises(ValueError, match="does not support space 'nb201'"):
        profile(NeverBuilds(), create("nb201"), 2, tmp_path, protocol=TINY, progress=False)


def test_profile_then_fit_ships_a_predictor(tmp_path, capsys):
    """The documented path for a new device: profile (with --fit) -> a signed predictor file."""
    from tritune.cli.profile import add_parser
    from tritune.predictors import load

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    out, pred_file = tmp_path / "prof", tmp_path / "pred.json"
    args = parser.parse_args(["profile", "--target", "ort-cpu", "--space", "mobilenet-small", "--n", "24", "--out", str(out),
                              "--rounds", "2", "--runs-per-round", "3", "--warmup", "1", "--quiet", "--fit", str(pred_file)])
    assert args.func(args) == 0
    assert "saved to" in capsys.readouterr().out
    target = OrtCpuTarget(threads=1)
    pred = load(pred_file, expected_fingerprint=target.fingerprint())
    rows = read_measurements(out)
    assert len(rows) == 24 and pred.error_["n"] >= 3
    space = create("mobilenet-small")
    from tritune.spaces.candidate import Candidate

    values = pred.predict([Candidate.from_json(r["candidate"]) for r in rows], space=space)
    assert values.shape == (24,) and np.all(values > 0)
    # the same profile, refitted as a whole-model predictor by `tritune fit`
    args = parser.parse_args(["fit", str(out), "--out", str(tmp_path / "whole.json"), "--predictor", "whole-model"])
    assert args.func(args) == 0
    assert type(load(tmp_path / "whole.json")).__name__ == "WholeModelPredictor"
    args = parser.parse_args(["fit", str(tmp_path), "--out", str(tmp_path / "x.json")])
    with pytest.raises(ValueError, match="not a profile directory"):
        args.func(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["fit", str(out), "--out", "x.json", "--predictor", "gbm"])
    # a second session of the same candidates (here: the same rows, 10 % slower as a whole)
    # pools with the first; a profile of another space is refused
    second, other = tmp_path / "prof2", tmp_path / "prof3"
    for d in (second, other):
        d.mkdir()
        meta = json.loads((out / METADATA_FILE).read_text())
        if d == other:
            meta["space"]["config"]["resolutions"] = [64]
        (d / METADATA_FILE).write_text(json.dumps(meta))
    (second / MEASUREMENTS_FILE).write_text("".join(json.dumps({**r, "latency_ms": 1.1 * r["latency_ms"]}) + "\n" for r in rows))
    (other / MEASUREMENTS_FILE).write_text((out / MEASUREMENTS_FILE).read_text())
    args = parser.parse_args(["fit", str(out), str(second), "--out", str(tmp_path / "pooled.json")])
    assert args.func(args) == 0 and load(tmp_path / "pooled.json").error_["n"] >= 3
    args = parser.parse_args(["fit", str(out), str(other), "--out", str(tmp_path / "bad.json")])
    with pytest.raises(ValueError, match="another space"):
        args.func(args)
    # the layout of `--sessions 2`: one directory holding session-1, session-2
    import shutil

    shutil.copytree(out, tmp_path / "multi" / "session-1")
    shutil.copytree(second, tmp_path / "multi" / "session-2")
    args = parser.parse_args(["fit", str(tmp_path / "multi"), "--out", str(tmp_path / "multi.json")])
    assert args.func(args) == 0
    assert load(tmp_path / "multi.json").error_ == load(tmp_path / "pooled.json").error_


def test_profile_sessions_measure_the_same_candidates_pass_after_pass(tmp_path):
    target, out = CountingTarget(threads=1), tmp_path / "prof"
    results = profile_sessions(target, "mobilenet-small", 3, out, sessions=2, protocol=TINY, progress=False, reference="none")
    dirs = session_dirs(out)
    assert dirs == [out / "session-1", out / "session-2"] and [r.out_dir for r in results] == dirs
    first, second = (read_measurements(d) for d in dirs)
    assert [r["candidate_id"] for r in first] == [r["candidate_id"] for r in second]
    assert max(r["timestamp"] for r in first) <= min(r["timestamp"] for r in second)  # one pass after the other
    assert target.builds == 6  # every pass builds its own runnables
    y, rows = pooled_latency([first, second])
    assert len(rows) == 3 and np.all(y > 0)
    again = profile_sessions(target, "mobilenet-small", 3, out, sessions=2, protocol=TINY, progress=False, reference="none")
    assert [r.measured for r in again] == [0, 0] and [r.skipped for r in again] == [3, 3] and target.builds == 6
    assert session_dirs(dirs[0]) == [dirs[0]]
    with pytest.raises(ValueError, match="already holds a single-session profile"):
        profile_sessions(target, "mobilenet-small", 3, dirs[0], sessions=2, protocol=TINY, progress=False)
    with pytest.raises(ValueError, match=r"profile.sessions: 0 not allowed; allowed: an integer >= 1"):
        profile_sessions(target, "mobilenet-small", 3, tmp_path / "x", sessions=0)
    with pytest.raises(ValueError, match="not a profile directory"):
        session_dirs(tmp_path)


def test_pooled_latency_aligns_levels_and_takes_medians():
    ids = "abcde"
    first = [{"candidate_id": c, "latency_ms": float(v)} for c, v in zip(ids, [1, 2, 3, 4, 5])]
    slower = [{"candidate_id": c, "latency_ms": 1.2 * v * (1.5 if c == "c" else 1.0)} for c, v in zip(ids, [1, 2, 3, 4, 5])]
    partial = [{"candidate_id": c, "latency_ms": 0.9 * v} for c, v in zip(ids[:4], [1, 2, 3, 4])]
    y, rows = pooled_latency([first, slower, partial], "latency_ms")
    assert [r["candidate_id"] for r in rows] == list("abcd")  # e: not in every profile
    assert np.allclose(y, [1, 2, 3, 4])  # levels 1.2 / 0.9 removed; c's outlier outvoted
    y1, rows1 = pooled_latency([first])
    assert np.allclose(y1, [1, 2, 3, 4, 5]) and rows1 == first  # no reference: normalized = raw
    with pytest.raises(ValueError, match="no candidate in common"):
        pooled_latency([first, [{"candidate_id": "z", "latency_ms": 1.0}]], "latency_ms")


class PidTarget(OrtCpuTarget):
    """The real target, measured in fresh processes of one group each, noting which process built what."""

    def __init__(self, pid_file, **kw):
        super().__init__(**kw)
        self.pid_file = str(pid_file)
        self.groups_per_process = 1

    def build(self, candidate, space=None, input_shape=None, **kw):
        import os

        with open(self.pid_file, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        return super().build(candidate, space=space, input_shape=input_shape, **kw)


def test_groups_per_process_measures_in_fresh_processes_and_resumes(tmp_path):
    import os

    pids = tmp_path / "pids"
    space = create("mobilenet-small")
    out = tmp_path / "prof"
    result = profile(PidTarget(pids), space, 4, out, protocol=TINY, group_size=2, progress=False)
    assert (result.measured, result.skipped, result.builds) == (4, 0, 4)
    rows = read_measurements(out)
    assert [r["candidate_id"] for r in rows] == [c.id for c in stratified_candidates(space, 4, 0)]
    assert [r["group"] for r in rows] == [0, 0, 1, 1] and all(r["reference_ms"] > 0 for r in rows)
    built_in = [int(p) for p in pids.read_text().split()]
    assert len(set(built_in)) == 2 and os.getpid() not in built_in  # one child per group, none in this process
    again = profile(PidTarget(pids), space, 5, out, protocol=TINY, group_size=2, progress=False)
    assert (again.measured, again.skipped) == (1, 4)
