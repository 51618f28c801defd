"""Timing a pool of candidates together in fresh processes (`tritune.targets.fresh_timing`)."""
from __future__ import annotations

import pytest

from tritune.spaces import create
from tritune.targets.fresh_timing import FreshTiming, time_fresh


def test_a_pool_is_timed_in_every_process_and_each_keeps_its_fastest():
    space = create("mobilenet", resolutions=[16, 32], widths=[0.25, 1.0], depths=[2, 4], in_channels=1, num_classes=10)
    small, large = space.smallest(), space.largest()
    out = time_fresh([large, small], space, "ort-cpu", processes=2, passes=1)
    assert [t.candidate_id for t in out] == [large.id, small.id]
    for t in out:
        assert len(t.process_latencies_ms) == 2 and t.latency_ms == min(t.process_latencies_ms) > 0
        assert t.to_json()["process_spread"] == pytest.approx(t.process_spread) and t.process_spread >= 0
    assert out[0].latency_ms > 2 * out[1].latency_ms  # 4x the pixels, 4x the width, twice the depth
    assert time_fresh([], space, "ort-cpu") == []


def test_bad_arguments_are_clean_errors():
    space = create("mobilenet-small")
    with pytest.raises(ValueError, match="processes: 0 not allowed"):
        time_fresh([space.smallest()], space, "ort-cpu", processes=0)
    with pytest.raises(ValueError, match="target: 'no-such-target' not allowed; allowed: ") as err:
        time_fresh([space.smallest()], space, "no-such-target", processes=1)  # refused before any process starts
    assert "\n" not in str(err.value)
    assert FreshTiming("x", 1.0, (1.0, 1.5)).process_spread == pytest.approx(0.5)


def test_ort_builds_are_made_once_and_loaded_as_the_same_model(tmp_path):
    import numpy as np

    from tritune.targets.base import Target
    from tritune.targets.fresh_timing import can_save_builds, load_or_build, prebuild
    from tritune.targets.registry import create_target

    space = create("mobilenet-small")
    cands = [space.smallest(), space.largest()]
    target = create_target("ort-cpu")
    paths = prebuild(target, cands, space, tmp_path)
    assert all(p is not None for p in paths) and len(set(paths)) == 2
    for cand, path in zip(cands, paths):
        loaded, built = load_or_build(target, path, cand, space), target.build(cand, space=space)
        assert loaded.input_shape == built.input_shape and loaded.onnx_bytes == built.onnx_bytes
        np.testing.assert_array_equal(loaded.run(), built.run())

    class Table(Target):  # a target without save_build: every process builds for itself
        name = "table"

        def fingerprint(self):
            return {}

        def capabilities(self):
            return {}

        def supports(self, space_name):
            return True

        def latency(self, candidates, space=None):
            return np.ones(len(candidates))

    assert can_save_builds(target) and not can_save_builds(Table())
    assert prebuild(Table(), cands, space, tmp_path) == [None, None]
