"""codegen-cpu latency predictor: the steps it costs are the steps the target plans (names matched
on real builds), the vectorised path equals the layer path, fit / predict / save / load, the CLI."""
from __future__ import annotations

import numpy as np
import pytest

from tritune.kernels.codegen import compiler_available
from tritune.predictors import load
from tritune.predictors.codegen_layerwise import CodegenLatencyPredictor, step_times
from tritune.predictors.codegen_units import UNIT_TYPES, rows_from_candidates, rows_from_layers, segment_sums, units
from tritune.spaces import LayerCompression, create
from tritune.spaces.mobilenet.space import SLOTS
from tritune.targets.profiling import stratified_candidates

needs_cc = pytest.mark.skipif(not compiler_available(), reason="no working C compiler")


def test_segment_sums_add_up_each_run_of_rows():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((500, 7))
    starts = np.flatnonzero(np.r_[True, rng.random(499) < 0.4])
    run = np.cumsum(np.isin(np.arange(500), starts)) - 1
    expected = np.column_stack([np.bincount(run, weights=values[:, j]) for j in range(7)])
    assert np.allclose(segment_sums(values, starts), expected)
    assert segment_sums(values, np.zeros(0, dtype=np.int64)).shape == (0, 7)


@pytest.mark.parametrize("space_name", ["mobilenet", "mobilenet-small"])
def test_candidates_give_the_same_units_as_their_layers(space_name):
    space = create(space_name)
    cands = stratified_candidates(space, 120, seed=4)
    slow = units(rows_from_layers([space.layers(c) for c in cands], [c["resolution"] for c in cands]))
    fast = units(rows_from_candidates(space, cands))
    assert np.array_equal(slow.net, fast.net) and np.array_equal(slow.type, fast.type)
    assert np.array_equal(slow.W, fast.W) and np.array_equal(slow.key, fast.key) and np.array_equal(slow.context, fast.context)
    assert np.unique(fast.key).size > 0.2 * fast.key.size  # keys tell configurations apart
    assert set(np.unique(slow.type)) >= {UNIT_TYPES.index(t) for t in ("conv1x1_f32", "conv1x1_i8", "dw_i8", "linear_i8")}


def _plan(space, fn, resolution=32):
    base = space.smallest().replace(arch={"resolution": resolution})
    return space.validate(base.replace(compression=[fn(role, k, c) for (_, role, k), c in zip(SLOTS, base.compression)]))


PLANS = {
    "float": lambda r, k, c: LayerCompression("block8x1", 0.75) if r in ("conv", "project") and k == 1 else c,
    "int8": lambda r, k, c: LayerCompression("block8x1", 0.75, 8, 8) if r in ("conv", "project", "se") and k == 1
    else LayerCompression("dense", 0.0, 8, 8),
    "mixed": lambda r, k, c: LayerCompression("unstructured", 0.5, 4, 8) if r == "conv"
    else (LayerCompression("dense", 0.0, 32, 8) if r == "project" else (LayerCompression("dense", 0.0, 8, 8) if r == "dwconv" else c)),
}


@needs_cc
@pytest.mark.parametrize("plan", list(PLANS))
def test_units_are_the_targets_steps(plan):
    from tritune.targets.codegen_cpu import CodegenCpuTarget

    space = create("mobilenet-small")
    cand = _plan(space, PLANS[plan], resolution=64)
    runnable = CodegenCpuTarget(fuse_min_bytes=1 << 16).for_profiling().build(cand, space=space)
    steps = {s["name"]: s["ms"] for s in runnable.step_times(repeats=3)}
    from tritune.kernels.codegen import vector_width

    pred = CodegenLatencyPredictor(space=space, vector_width=vector_width(), fuse_min_bytes=1 << 16)  # the target's settings
    b = pred.unit_batch([cand], named=True)
    ms = step_times(b, [steps])
    assert np.isfinite(ms).all(), [n for n, v in zip(b.names, ms) if not np.isfinite(v)]  # every unit is a step
    assert abs(np.nansum(ms) - sum(steps.values())) < 1e-9  # and every step is in a unit
    if plan == "float":
        assert UNIT_TYPES.index("fused_f32") in b.type  # blocks of at least 64 KiB run fused
    else:
        assert UNIT_TYPES.index("fused_f32") not in b.type  # a network with integer layers runs unfused


def _synthetic(space, n, seed=0):
    """Candidates with step times from a known linear law of their work and a network factor."""
    cands = stratified_candidates(space, n, seed=seed)
    pred = CodegenLatencyPredictor(space=space)
    b = pred.unit_batch(cands, named=True)
    rng = np.random.default_rng(seed)
    law = rng.uniform(0.001, 0.02, (len(UNIT_TYPES), b.W.shape[1]))
    ms = (b.W * law[b.type]).sum(1) * rng.lognormal(0, 0.02, len(b.W))
    steps = [dict() for _ in cands]
    for net, name, v in zip(b.net, b.names, ms):
        steps[net][name] = steps[net].get(name, 0.0) + float(v)
    totals = np.array([sum(s.values()) for s in steps])
    y = totals * (1.05 + 0.02 * (np.array([c["resolution"] for c in cands]) > 192))
    return cands, y, steps


def test_fit_predict_save_load(tmp_path):
    space = create("mobilenet")
    cands, y, steps = _synthetic(space, 120)
    pred = CodegenLatencyPredictor(space=space, n_estimators=60).fit(cands, y, steps=steps)
    assert pred.matched_ == 1.0 and 20 <= pred.error_["n"] <= 28 and pred.error_["within_10"] >= 0.9, pred.error_
    fresh = [space.sample(np.random.default_rng(i)) for i in range(50)]
    p = pred.predict(fresh)
    assert p.shape == (50,) and np.isfinite(p).all() and (p > 0).all()
    path = pred.save(tmp_path / "codegen.json")
    back = load(path)
    assert isinstance(back, CodegenLatencyPredictor) and np.array_equal(back.predict(fresh), p)
    assert np.array_equal(back.predict([c.to_json() for c in fresh]), p)
    costs = back.step_costs(fresh[0])
    assert costs and all(ms > 0 for _, ms in costs)


def test_table_answers_measured_steps_exactly():
    space = create("mobilenet-small")
    cands, y, steps = _synthetic(space, 40, seed=2)
    pred = CodegenLatencyPredictor(space=space, correction=False, holdout=0.0).fit(cands, y, steps=steps)
    b = pred.unit_batch(cands, named=True)
    keys, measured = b.key, step_times(b, steps)
    got = pred._unit_pred(b, pred.theta_, pred.table_keys_, pred.table_ms_)
    expect = np.array([np.median(measured[keys == k]) for k in keys])  # a configuration measured in several networks: its median
    assert np.allclose(got, expect)


def test_fit_refuses_missing_steps():
    space = create("mobilenet-small")
    cands = stratified_candidates(space, 12, seed=0)
    with pytest.raises(ValueError, match="steps"):
        CodegenLatencyPredictor(space=space).fit(cands, np.ones(12))


def test_correction_is_kept_only_where_it_helps_out_of_fold():
    space = create("mobilenet")
    cands, y, steps = _synthetic(space, 80, seed=3)
    res = np.array([c["resolution"] for c in cands])
    learnable = CodegenLatencyPredictor(space=space, n_estimators=60, holdout=0.0).fit(cands, y * np.where(res > 192, 1.3, 1.0), steps=steps)
    assert learnable.booster_ is not None  # a factor the features show: learned
    assert learnable.correction_cv_["corrected"] < learnable.correction_cv_["additive"]
    totals = np.array([sum(s.values()) for s in steps])
    noise = np.random.default_rng(0).lognormal(0, 0.05, len(y))
    unlearnable = CodegenLatencyPredictor(space=space, n_estimators=60, holdout=0.0).fit(cands, totals * noise, steps=steps)
    assert unlearnable.booster_ is None  # noise no feature explains: the additive sum alone
    assert unlearnable.correction_cv_["corrected"] >= unlearnable.correction_cv_["additive"]
