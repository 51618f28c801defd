"""ort-cpu latency predictors: fusion rules measured on ONNX Runtime, kernel grouping, layer-wise and
whole-model predictors (fit, accuracy over trivial baselines, signed save / load)."""
from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

from tritune import predictors
from tritune.predictors import (
    DEFAULT_RULES, FusionRules, KernelBatch, LayerwiseLatencyPredictor, WholeModelPredictor, detect_fusion_rules, kernels,
)
from tritune.predictors.fusion import layer_precision, optimized_graph
from tritune.predictors.io import seal
from tritune.predictors.metrics import score_report
from tritune.predictors.ort_layerwise import stratified_split
from tritune.spaces import LayerCompression, create
from tritune.spaces.candidate import Candidate
from tritune.spaces.layers import LayerSpec
from tritune.spaces.mobilenet.space import SLOTS

#: 160 rows of a real ort-cpu profile of the 224-px mobilenet space (onnxruntime 1.31, 1 thread,
#: 5 rounds x 20 runs), trimmed to what the predictors read.
PROFILE = Path(__file__).resolve().parents[1] / "data" / "ort_cpu_mobilenet_profile.jsonl.gz"


@pytest.fixture(scope="module")
def profile():
    with gzip.open(PROFILE, "rt") as fh:
        rows = [json.loads(line) for line in fh]
    space = create("mobilenet")
    cands = [Candidate.from_json(r["candidate"]) for r in rows]
    nets = [space.layers(c) for c in cands]
    y = np.array([r["latency_ms"] for r in rows])
    test = stratified_split(np.array([n[0].in_h for n in nets]), 0.25, 0)
    return space, cands, nets, y, test, np.array([r["group"] for r in rows])


@pytest.fixture(scope="module")
def layerwise(profile):
    space, cands, nets, y, test, groups = profile
    train = [n for n, m in zip(nets, test) if not m]
    return LayerwiseLatencyPredictor(space=space, n_estimators=80).fit(train, y[~test], target={"target": "ort-cpu", "device": "test"},
                                                                       groups=groups[~test])


# ----------------------------------------------------------------------------------------------
# fusion rules and kernels
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def detected():
    return detect_fusion_rules(timing=False)


def test_timed_fusion_probes_record_their_evidence(detected):
    """The micro-benchmarks time every probe and give a verdict per fold; the rules themselves
    still come from the optimised graphs (timing is evidence, recorded next to them)."""
    from tritune.kernels.timing import Protocol

    timed = detect_fusion_rules(timing=True, protocol=Protocol(threads=1, warmup=2, rounds=2, runs_per_round=5))
    us = timed.evidence["microseconds"]
    assert set(us) == set(timed.evidence["graphs"]) and all(v > 0 for v in us.values())
    verdicts = timed.evidence["timing_verdicts"]
    for kind in ("pw", "dw"):
        for fold in ("bn", "relu", "hswish", "add"):
            v = verdicts[f"{kind}+{fold}"]
            assert {"increment_us", "standalone_us", "folded"} <= set(v) and isinstance(v["folded"], bool)
    assert "micro-benchmarks" in timed.source
    same = lambda r: {k: v for k, v in r.to_json().items() if k not in ("source", "evidence")}  # noqa: E731
    assert same(timed) == same(detected)


def test_fusion_rules_detected_on_onnxruntime(detected):
    r = detected
    # what ORT 1.31 (CPU EP, ORT_ENABLE_ALL) does, as its optimised graphs show
    assert r.bn_fused
    assert {"relu", "hswish"} <= set(r.fp32_conv_acts)  # conv+BN+activation is one NCHWc kernel
    assert r.fp32_add_fused  # the residual sum rides on the fp32 conv (Conv with a 4th input)
    assert "relu" in r.int8_conv_acts and "hswish" not in r.int8_conv_acts
    assert "hswish" in r.int8_float_acts  # DQ -> HardSigmoid/Mul -> Q island
    assert r.int8_add  # QLinearAdd between int8 tensors
    assert "relu" in r.promote_acts and "hswish" not in r.promote_acts  # int8 -> float conv -> int8 runs int8
    assert r.evidence["graph_verdicts"]["fp32_add_fused"] is True
    assert any("Conv[Relu]" in op for op in r.evidence["graphs"]["pw+bn+relu"])
    assert FusionRules.from_json(json.loads(json.dumps(r.to_json()))) == r
    # the built-in defaults are these measured rules
    for field in ("fp32_conv_acts", "fp32_add_fused", "bn_fused", "int8_conv_acts", "int8_float_acts", "int8_add", "promote_acts",
                  "gelu_fused", "skip_layernorm", "attention_fused", "int8_softmax"):
        assert set(np.atleast_1d(getattr(DEFAULT_RULES, field))) >= set(np.atleast_1d(getattr(r, field))), field
    # transformers: a float GELU is its own node, the residual add stays before LayerNormalization,
    # attention stays FusedMatMul -> Softmax -> MatMul, int8 attention has a QLinearSoftmax and an
    # int8 linear's GELU runs as a float island (DQ -> Div -> Erf -> Q ...)
    assert not r.gelu_fused and not r.skip_layernorm and not r.attention_fused
    assert r.int8_softmax and "gelu" in r.int8_float_acts
    assert "Gelu" in r.evidence["graphs"]["vit"] and "QLinearSoftmax" in r.evidence["graphs"]["vit:int8"]


def test_kernels_group_a_small_ir():
    ir = [
        LayerSpec("stem", "conv", 3, 16, 32, 32, kernel=3, stride=2, act="hswish", bn=True),
        LayerSpec("b.expand", "conv", 16, 64, 16, 16, act="relu", bn=True, w_bits=8, a_bits=8),
        LayerSpec("b.dw", "dwconv", 64, 64, 16, 16, kernel=3, groups=64, act="relu", bn=True),
        LayerSpec("b.project", "conv", 64, 16, 16, 16, bn=True, w_bits=8, a_bits=8),
        LayerSpec("b.add", "add", 16, 16, 16, 16),
        LayerSpec("c.expand", "conv", 16, 64, 16, 16, act="hswish", bn=True),
        LayerSpec("pool", "global_pool", 64, 64, 16, 16),
        LayerSpec("fc", "linear", 64, 10),
    ]
    ks = kernels(ir)
    assert [k.type for k in ks] == ["stem_f32", "q_conv", "pw_i8", "dw_i8", "pw_i8", "dq_elt", "add_f32", "pw_f32", "pool_f32", "fc_f32"]
    assert ks[3].layers == ("b.dw",) and ks[3].int8  # float dw between int8 convs: promoted, as ORT does
    assert ks[0].macs == 16 * 3 * 9 * 16 * 16
    # all fp32: activations and the residual sum fold into the convs
    fp32 = [LayerSpec(L.name, L.op, L.in_channels, L.out_channels, L.in_h, L.in_w, L.kernel, L.stride, L.groups, L.act, L.bn) for L in ir]
    assert [k.type for k in kernels(fp32)] == ["stem_f32", "pw_f32", "dw_f32", "pw_f32", "add_fused", "pw_f32", "pool_f32", "fc_f32"]
    # without the promotion rule the dw stays float, with a boundary on each side
    naive = FusionRules(promote_acts=())
    assert [k.type for k in kernels(ir, naive)][2:7] == ["pw_i8", "dq_conv", "dw_f32", "q_conv", "pw_i8"]
    # the batch form sums the same kernels per network
    batch = KernelBatch.from_networks([ir, fp32, ir])
    assert batch.n_networks == 3 and np.array_equal(batch.summed()[0], batch.summed()[2])
    assert batch.counts()[0].sum() == len(ks)


def test_kernels_agree_with_the_graph_onnxruntime_runs():
    from tritune.targets.ort_cpu import OrtCpuTarget

    space = create("mobilenet-small")
    cand = space.largest()
    # 1x1 convs int8, depthwise float: ORT promotes the float depthwise convs of relu stages
    # without squeeze-excite and keeps the others float
    cand = cand.replace(compression=[LayerCompression("dense", 0.0, 8 if role in ("conv", "project") else 32, 8)
                                     for (_, role, _), _c in zip(SLOTS, cand.compression)])
    layers = space.layers(cand)
    graph = optimized_graph(OrtCpuTarget(threads=1).build(cand, space=space).onnx_bytes)
    names = [L.name for L in layers if L.has_weights]
    real = layer_precision(graph, names)
    batch = KernelBatch.from_networks([layers])
    mine = {L.name: "int8" if batch.eff8[i] else "fp32" for i, L in enumerate(layers) if L.has_weights}
    assert mine == {n: real.get(n) for n in names}
    assert mine["s0.b0.dw"] == "int8" and mine["s2.b0.dw"] == "fp32"  # promoted (relu) / not (hswish)
    adds = {k.layers[0]: k.type for k in kernels(layers) if k.type.startswith("add")}
    assert adds["s0.b1.add"] == "add_i8" and sum(n["op"] == "QLinearAdd" for n in graph) == sum(t == "add_i8" for t in adds.values())


def _vit_variant(space, cand, linear_bits: int, attn_bits: int, keep: dict | None = None):
    base = space.dense(cand, keep)
    plan = [LayerCompression("dense", 0.0, linear_bits, linear_bits) for _ in base.compression]
    return base.replace(compression=plan, arch={"attn_bits": [attn_bits] * len(base["attn_bits"])})


def test_vit_kernels_count_tokens_and_follow_transformer_rules():
    space = create("vit")
    big = space.largest()
    ks = kernels(space.layers(big))
    depth = big["depth"]
    types = [k.type for k in ks]
    assert types.count("ln_f32") == 2 * depth + 1 and types.count("mm_f32") == 2 * depth and types.count("softmax_f32") == depth
    assert types.count("gelu_f32") == depth  # a float GELU is a kernel of its own
    qkv = next(k for k in ks if k.layers == ("b0.qkv",))
    tokens = space.tokens(big)[0]
    assert qkv.hw_out == tokens and qkv.macs == qkv.cin * qkv.cout * tokens  # a linear runs once per token
    # pruning tokens from block 2 on shrinks the work of every later block, not of the first two
    pruned = space.dense(big, {2: 0.5})
    kp = kernels(space.layers(pruned))
    macs = lambda ks_, prefix: sum(k.macs for k in ks_ if k.layers and k.layers[0].startswith(prefix))  # noqa: E731
    assert macs(kp, "b0.") == macs(ks, "b0.") and macs(kp, "b1.") == macs(ks, "b1.")
    assert macs(kp, "b3.") < 0.6 * macs(ks, "b3.")
    assert "select_f32" in [k.type for k in kp]
    # int8 attention: int8 matmuls and softmax, one boundary into and one out of each attention
    k8 = [k.type for k in kernels(space.layers(_vit_variant(space, big, 32, 8)))]
    assert k8.count("mm_i8") == 2 * depth and k8.count("softmax_i8") == depth and "softmax_f32" not in k8
    assert k8.count("q_elt") == depth and k8.count("dq_elt") == depth
    # int8 linears: GELU becomes a float island; with GELU folded by a runtime, no GELU kernel at all
    k88 = [k.type for k in kernels(space.layers(_vit_variant(space, big, 8, 8)))]
    assert k88.count("gelu_i8") == depth and k88.count("fc_i8") == 4 * depth + 1
    assert "gelu_f32" not in [k.type for k in kernels(space.layers(big), FusionRules(gelu_fused=True))]
    # a runtime that fuses attention or the residual add into the layer norm runs fewer kernels
    fused = [k.type for k in kernels(space.layers(big), FusionRules(attention_fused=True, skip_layernorm=True))]
    assert fused.count("attn_f32") == depth and "mm_f32" not in fused and "softmax_f32" not in fused
    assert fused.count("ln_fused") == 2 * depth and fused.count("add_f32") == 0


def test_vit_kernels_agree_with_the_graph_onnxruntime_runs():
    from tritune.targets.ort_cpu import OrtCpuTarget

    space = create("vit")
    target = OrtCpuTarget(threads=1)
    rng = np.random.default_rng(5)
    for cand in [space.sample(rng) for _ in range(3)] + [_vit_variant(space, space.largest(), 8, 8)]:
        graph = [n["op"] for n in optimized_graph(target.build(cand, space=space).onnx_bytes)]
        types = [k.type for k in kernels(space.layers(cand))]
        assert graph.count("LayerNormalization") == types.count("ln_f32")
        assert graph.count("QLinearSoftmax") == types.count("softmax_i8") and graph.count("Softmax") == types.count("softmax_f32")
        assert graph.count("Gelu") == types.count("gelu_f32") and graph.count("Erf") == types.count("gelu_i8")


# ----------------------------------------------------------------------------------------------
# predictors
# ----------------------------------------------------------------------------------------------
def test_layerwise_beats_trivial_predictors_on_held_out_models(profile, layerwise):
    space, cands, nets, y, test, _ = profile
    held = [n for n, m in zip(nets, test) if m]
    pred = layerwise.predict(held)
    rep = score_report(y[test], pred)
    constant = score_report(y[test], np.full(test.sum(), np.median(y[~test])))
    macs = np.array([sum(L.macs for L in n) for n in nets])
    a, b = np.linalg.lstsq(np.column_stack([macs[~test], np.ones((~test).sum())]), y[~test], rcond=None)[0]
    flops = score_report(y[test], a * macs[test] + b)
    assert rep["spearman"] > 0.6 and rep["spearman"] > flops["spearman"]
    assert rep["mape"] < constant["mape"] and rep["mape"] < flops["mape"]
    assert layerwise.error_["n"] > 0 and 0 <= layerwise.error_["within_10"] <= 1
    # candidates, layer lists and kernel batches give the same numbers
    some = [c for c, m in zip(cands, test) if m][:5]
    assert np.allclose(layerwise.predict(some), pred[:5])
    assert np.allclose(layerwise.predict(KernelBatch.from_networks(held[:5])), pred[:5])
    costs = layerwise.kernel_costs(held[0])
    assert all(c >= 0 for _, c in costs) and len(costs) == len(kernels(held[0]))


def test_layerwise_round_trip_predicts_identically(tmp_path, profile, layerwise):
    _, cands, nets, *_ = profile
    path = layerwise.save(tmp_path / "lw.json")
    loaded = predictors.load(path, expected_fingerprint={"target": "ort-cpu"})
    assert type(loaded) is LayerwiseLatencyPredictor and loaded.rules == layerwise.rules
    assert np.array_equal(loaded.predict(nets[:40]), layerwise.predict(nets[:40]))
    assert np.array_equal(loaded.predict(cands[:3]), layerwise.predict(cands[:3]))  # space travels in the file
    doc = json.loads(path.read_text())
    assert doc["kind"] == "ort-layerwise-latency" and doc["params"]["rules"]["promote_acts"]
    assert set(doc["error"]) >= {"mape", "within_10", "spearman", "kendall", "n"}


def test_tampered_or_foreign_layerwise_file_is_refused(tmp_path, layerwise):
    path = layerwise.save(tmp_path / "lw.json")
    text = path.read_text()
    match = re.search(r'"theta": \[\n\s*([0-9.e+-]+)', text)
    assert match is not None
    value = match.group(1)
    path.write_text(text[: match.start(1)] + ("1.5" if value != "1.5" else "2.5") + text[match.end(1):])
    with pytest.raises(ValueError, match="checksum mismatch"):
        predictors.load(path)
    path = layerwise.save(tmp_path / "lw2.json")
    with pytest.raises(ValueError, match="another target"):
        predictors.load(path, expected_fingerprint={"target": "ort-cpu", "device": "another cpu"})
    doc = json.loads(path.read_text())
    doc["params"]["features"] = "ort-kernels/v0"
    seal(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="features"):
        predictors.load(path)


def test_whole_model_fits_saves_and_loads(tmp_path, profile):
    space, cands, nets, y, test, _ = profile
    train = [c for c, m in zip(cands, test) if not m]
    held = [c for c, m in zip(cands, test) if m]
    wm = WholeModelPredictor(space=space, n_estimators=150).fit(train, y[~test], target={"target": "ort-cpu"})
    rep = wm.score(held, y[test])
    assert rep["spearman"] > 0.3 and rep["mape"] < score_report(y[test], np.full(test.sum(), np.median(y[~test])))["mape"]
    path = wm.save(tmp_path / "wm.json")
    loaded = WholeModelPredictor.load(path)
    assert np.array_equal(loaded.predict(held), wm.predict(held))
    with pytest.raises(ValueError, match="not a 'ort-layerwise-latency'"):
        LayerwiseLatencyPredictor.load(path)
    with pytest.raises(ValueError, match="fit"):
        WholeModelPredictor(space=space).predict(held)
