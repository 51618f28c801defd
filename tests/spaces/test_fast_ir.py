"""Layer codes without `LayerSpec` objects: `MobileNetSpace.layer_codes` + `KernelBatch.from_codes`
must give exactly what `space.layers` + `KernelBatch.from_networks` give (the predictor's fast path)."""
from __future__ import annotations

import copy
import dataclasses
import pickle

import numpy as np
import pytest

from tritune.predictors.fusion import CODE_COLUMNS as FUSION_COLUMNS
from tritune.predictors.fusion import DEFAULT_RULES, KernelBatch
from tritune.predictors import ort_layerwise
from tritune.predictors.ort_layerwise import LayerwiseLatencyPredictor, as_batch
from tritune.spaces import Candidate, LayerCompression, create, summarize
from tritune.spaces.mobilenet.space import CODE_COLUMNS, SLOTS, MobileNetSpace, code_row

RULES = {
    "default": DEFAULT_RULES,
    "no-promotion-no-add-fusion": dataclasses.replace(DEFAULT_RULES, promote_acts=(), fp32_add_fused=False),
}
BATCH_FIELDS = ("type", "owner", "anchor", "features", "layer_owner", "layer_start", "res", "eff8")


def _force(space: MobileNetSpace, cand: Candidate, rng: np.random.Generator, want) -> Candidate:
    """``cand`` with every slot that has a choice satisfying ``want`` set to a random such choice."""
    plan = list(cand.compression)
    for i, (name, _, _) in enumerate(SLOTS):
        gene = next(g for g in space._genes if g.name == f"comp:{name}")
        fits = [c for c in gene.choices if want(c)]
        if fits:
            plan[i] = fits[rng.integers(len(fits))]
    return space.validate(cand.replace(compression=plan))


def _candidates(space: MobileNetSpace, n: int = 300, seed: int = 0) -> list[Candidate]:
    """Random candidates plus channel-pruned, int8, every-depth/kernel/expand and extreme ones."""
    rng = np.random.default_rng(seed)
    cands = [space.sample(rng) for _ in range(n)]
    cands += [_force(space, c, rng, lambda x: x.pattern == "channel") for c in cands[:30]]
    cands += [_force(space, c, rng, lambda x: x.w_bits <= 8) for c in cands[30:60]]
    cands += [_force(space, c, rng, lambda x: x.pattern == "channel" and x.w_bits == 8) for c in cands[60:80]]
    for d in space.depths:  # every stage at every depth, with every kernel / expand in its blocks
        for k, e in zip(space.kernels, space.expands):
            arch = {"depth": [d] * 5, "kernel": [k] * 20, "expand": [e] * 20}
            cands.append(space.validate(cands[len(cands) % n].replace(arch=arch)))
    return cands + [space.largest(), space.smallest()]


def _slow_codes(space: MobileNetSpace, cands: list) -> tuple[np.ndarray, np.ndarray]:
    nets = [space.layers(c) for c in cands]
    rows = np.array([code_row(layer) for net in nets for layer in net], dtype=np.int64)
    return np.array([len(n) for n in nets]), rows


def _assert_same_batch(fast: KernelBatch, slow: KernelBatch) -> None:
    assert fast.n_networks == slow.n_networks
    for name in BATCH_FIELDS:
        a, b = getattr(fast, name), getattr(slow, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name


@pytest.fixture(scope="module")
def space() -> MobileNetSpace:
    return create("mobilenet")


@pytest.fixture(scope="module")
def cands(space) -> list[Candidate]:
    return _candidates(space)


def test_the_sample_covers_what_the_fast_path_must_get_right(space, cands):
    comps = [c for cand in cands for c in cand.compression]
    assert any(c.pattern == "channel" for c in comps) and any(c.w_bits == 8 for c in comps) and any(c.w_bits == 4 for c in comps)
    for gene in ("depth", "kernel", "expand"):
        seen = {v for c in cands for v in c[gene]}
        assert seen == set(getattr(space, gene + "s"))
    layers = [layer for c in cands for layer in space.layers(c)]
    pruned = [layer for layer in layers if layer.pattern == "channel"]
    assert pruned and any(layer.name.startswith("stem") for layer in pruned) and any(layer.name == "feature_mix" for layer in pruned)
    assert any(layer.name == "first.add" for layer in layers) and any(layer.name.endswith(".se.pool") for layer in layers)


def test_code_columns_are_the_ones_the_grouping_reads():
    assert CODE_COLUMNS == FUSION_COLUMNS


def test_layer_codes_equal_the_layer_ir_row_by_row(space, cands):
    lens, rows = space.layer_codes(cands)
    ref_lens, ref_rows = _slow_codes(space, cands)
    assert lens.dtype == rows.dtype == np.int64 and rows.shape == (ref_rows.shape[0], len(CODE_COLUMNS))
    assert np.array_equal(lens, ref_lens) and np.array_equal(rows, ref_rows)


@pytest.mark.parametrize("rules", list(RULES))
def test_kernel_batch_from_codes_is_bit_identical(space, cands, rules):
    slow = KernelBatch.from_networks([space.layers(c) for c in cands], RULES[rules])
    fast = KernelBatch.from_codes(*space.layer_codes(cands), RULES[rules])
    _assert_same_batch(fast, slow)
    _assert_same_batch(as_batch(cands, RULES[rules], space), slow)
    assert np.array_equal(fast.summed(), slow.summed()) and np.array_equal(fast.counts(), slow.counts())


@pytest.mark.parametrize("config", [
    {"name": "mobilenet-small"},  # stem stride 1, one input channel, another name
    {"name": "mobilenet", "widths": (0.05, 0.35), "depths": (1, 4), "kernels": (3,), "expands": (1, 6)},  # stride-1 stage adds
    {"name": "mobilenet", "compression": {"enabled": False}},
    {"name": "mobilenet", "num_classes": 2**31 + 5, "widths": (1.0,)},  # a value past int32: the rows stay exact
])
def test_other_configurations_agree(config):
    config = dict(config)
    space = create(config.pop("name"), **config)
    cands = _candidates(space, n=60, seed=5)
    lens, rows = space.layer_codes(cands)
    ref_lens, ref_rows = _slow_codes(space, cands)
    assert np.array_equal(lens, ref_lens) and np.array_equal(rows, ref_rows)
    if 0.05 in config.get("widths", ()):
        assert any(layer.name == "s3.b0.add" for c in cands for layer in space.layers(c))


def test_copies_json_and_odd_but_valid_values_take_a_path_that_agrees(space, cands):
    some = cands[:40]
    ref = _slow_codes(space, some)
    unpickled = pickle.loads(pickle.dumps(some))  # compression objects the genes never handed out
    from_json = [Candidate.from_json(c.to_json()) for c in some]
    for other in (unpickled, from_json):
        assert all(np.array_equal(a, b) for a, b in zip(space.layer_codes(other), ref))
    floats = [c.replace(arch={"kernel": [float(k) for k in c["kernel"]], "resolution": float(c["resolution"])}) for c in some[:5]]
    assert all(np.array_equal(a, b) for a, b in zip(space.layer_codes(floats), _slow_codes(space, floats)))
    # a tidy candidate among odd ones: rows stay in candidate order
    mixed = [some[0], floats[0], some[1], unpickled[2]]
    assert all(np.array_equal(a, b) for a, b in zip(space.layer_codes(mixed), _slow_codes(space, mixed)))
    assert space.layer_codes([])[1].shape == (0, len(CODE_COLUMNS))


def test_a_subclass_with_its_own_layers_is_not_second_guessed(cands):
    class Wider(MobileNetSpace):
        def layers(self, candidate):
            return [dataclasses.replace(layer, out_channels=layer.out_channels + 1) for layer in super().layers(candidate)]

    wider = Wider()
    assert all(np.array_equal(a, b) for a, b in zip(wider.layer_codes(cands[:10]), _slow_codes(wider, cands[:10])))


def test_copied_spaces_build_their_own_tables(space, cands):
    ref = space.layer_codes(cands[:20])
    assert "_code_table_cache" in space.__dict__
    for other in (copy.deepcopy(space), copy.copy(space)):
        assert "_code_table_cache" not in other.__dict__  # ids of this process's objects must not travel
        assert all(np.array_equal(a, b) for a, b in zip(other.layer_codes(cands[:20]), ref))
        assert all(np.array_equal(a, b) for a, b in zip(other.layer_codes(pickle.loads(pickle.dumps(cands[:20]))), ref))


@pytest.mark.parametrize("change, field", [
    ({"resolution": 100}, "resolution"),
    ({"width": 0.9}, "width"),
    ({"depth": [2, 3, 4, 5, 2]}, "s3.depth"),
    ({"kernel": [3] * 19 + [4]}, "s4.b3.kernel"),  # an inactive block is still checked, as `validate` does
    ({"expand": [3, 4, 6, "6"] + [3] * 16}, "s0.b3.ratio"),
    ({"kernel": [3] * 5}, "arch.kernel"),
])
def test_an_invalid_candidate_raises_naming_the_field(space, cands, change, field):
    bad = cands[0].replace(arch=change)
    with pytest.raises(ValueError, match=f"candidate {field}"):
        space.layer_codes(cands[1:5] + [bad])


def test_invalid_compression_space_and_type_raise(space, cands):
    plan = list(cands[0].compression)
    plan[SLOTS.index(("s0.b0.project", "project", 1))] = LayerCompression("channel", 0.5, 32, 32)  # a residual output can't lose channels
    with pytest.raises(ValueError, match="comp:s0.b0.project"):
        space.layer_codes([cands[1], cands[0].replace(compression=plan)])
    with pytest.raises(ValueError, match="candidate.space"):
        space.layer_codes([Candidate.make("nb201", dict(cands[0].arch), cands[0].compression)])
    with pytest.raises(ValueError, match="expected a Candidate"):
        space.layer_codes([cands[0], space.layers(cands[1])])


def test_kernel_batch_from_codes_checks_its_input():
    rows = np.ones((3, len(CODE_COLUMNS)), dtype=np.int64)
    with pytest.raises(ValueError, match="lengths sum to 2"):
        KernelBatch.from_codes([2], rows)
    with pytest.raises(ValueError, match="rows"):
        KernelBatch.from_codes([3], rows[:, :5])
    assert KernelBatch.from_codes([0, 0], np.zeros((0, len(CODE_COLUMNS)), dtype=np.int64)).n_networks == 2


def test_predictor_gives_identical_latencies_from_candidates_and_from_layers(space, cands, monkeypatch):
    monkeypatch.setattr(ort_layerwise, "PREDICT_CHUNK", 64)  # several chunks, one of them partial
    rng = np.random.default_rng(11)
    train = cands[:60]
    macs = np.array([summarize(space.layers(c))["macs"] for c in train])
    y = macs / 2e7 * np.exp(rng.normal(0, 0.05, macs.size)) + 0.5
    pred = LayerwiseLatencyPredictor(space=space, n_estimators=30).fit(train, y)
    nets = [space.layers(c) for c in cands]
    from_layers = pred.predict(nets)
    assert np.array_equal(pred.predict(cands), from_layers)
    assert np.array_equal(pred.predict([c.to_json() for c in cands]), from_layers)
    assert np.array_equal(pred.predict_additive(cands), pred.predict_additive(nets))
    one_batch = pred._predict_batch(KernelBatch.from_networks(nets, pred.rules), pred.theta_, pred.scale_, pred.booster_)
    assert np.allclose(from_layers, one_batch, rtol=1e-12)  # predicting in chunks changes nothing but rounding
    assert pred.predict([]).shape == (0,)
    refit = LayerwiseLatencyPredictor(space=space, n_estimators=30).fit(nets[:60], y)
    assert np.array_equal(refit.theta_, pred.theta_)  # fitting from candidates == fitting from layers
