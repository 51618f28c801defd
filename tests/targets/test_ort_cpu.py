"""The ort-cpu target: fingerprint, build (export + int8 QDQ), numerical agreement, timing protocol."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from tritune.spaces import LayerCompression, create
from tritune.spaces.mobilenet.space import SLOTS
from tritune.spaces.mobilenet.network import build_subnet
from tritune.targets import FINGERPRINT_KEYS, CAPABILITY_KEYS, create_target, list_targets
from tritune.kernels.timing import Measurement, Protocol, measure_many, measure_passes
from tritune.targets.ort_cpu import OrtCpuTarget, nodes_of_layers, onnx_module_path

#: int8 tolerance on these random-weight networks: relative L2 error of the logits below 5%
#: (typically ~1%), and the top-1 class agrees on at least 3 of 4 inputs.
INT8_REL_L2 = 0.05
TINY = Protocol(threads=1, warmup=2, rounds=3, runs_per_round=5)


@pytest.fixture(scope="module")
def target():
    return OrtCpuTarget(threads=1)


@pytest.fixture(scope="module")
def space():
    return create("mobilenet-small")


def _plan(cand, fn):
    return cand.replace(compression=[fn(name, role, k, comp) for (name, role, k), comp in zip(SLOTS, cand.compression)])


def _float(cand):
    """Same patterns (masks, channel pruning), every layer float."""
    return _plan(cand, lambda n, r, k, c: LayerCompression(c.pattern, c.sparsity, 32, 32))


def _int8(cand):
    return _plan(cand, lambda n, r, k, c: LayerCompression(c.pattern, c.sparsity, 8, 8))


def _torch(space, cand, x):
    net = build_subnet(space, cand, seed=0)
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def test_registered_and_fingerprint_keys(target):
    assert "ort-cpu" in list_targets()
    assert isinstance(create_target("ort-cpu", threads=2), OrtCpuTarget)
    fp = target.fingerprint()
    for key in FINGERPRINT_KEYS + ("isa", "cpu", "graph_optimization", "execution_mode", "inter_op_threads", "exporter"):
        assert key in fp, key
    assert fp["target"] == "ort-cpu" and fp["runtime"] == "onnxruntime" and fp["threads"] == 1
    assert fp["graph_optimization"] == "ORT_ENABLE_ALL"
    for flag in ("avx2", "avx512f", "avx512_vnni", "amx"):
        assert isinstance(fp["isa"][flag], bool)
    import onnxruntime

    assert fp["version"] == onnxruntime.__version__
    json.dumps(fp)


def test_capabilities_and_supports(target):
    caps = target.capabilities()
    assert set(CAPABILITY_KEYS) <= set(caps)
    assert caps["patterns"] == ["dense", "channel"] and caps["bit_widths"] == [32, 8]
    assert caps["builds"] and caps["measures"]
    assert target.supports("mobilenet") and target.supports("mobilenet-small")
    assert not target.supports("nb201") and not target.supports("no-such-space")


def test_unsupported_space_is_a_clear_error(target):
    nb = create("nb201")
    with pytest.raises(ValueError, match="cannot build candidates of space 'nb201'"):
        target.build(nb.sample(np.random.default_rng(0)))
    with pytest.raises(ValueError, match="cannot build candidates of space 'nb201'"):
        target.latency([nb.sample(np.random.default_rng(0))])
    with pytest.raises(ValueError, match="input_shape"):
        target.build(torch.nn.Linear(4, 4))


def test_fp32_session_equals_torch(target, space):
    rng = np.random.default_rng(10)
    for _ in range(2):
        cand = _float(space.sample(rng))  # masks and channel pruning kept, every layer float
        r = target.build(cand)
        assert r.quantized_layers == () and r.threads == 1
        x = np.random.default_rng(1).standard_normal(r.input_shape).astype(np.float32)
        np.testing.assert_allclose(r.run(x), _torch(space, cand, x), rtol=1e-4, atol=1e-5)
        assert set(r.build_s) == {"net", "export", "quantize", "session", "total"}


def test_int8_session_is_close_to_torch(target, space):
    cand = _int8(space.sample(np.random.default_rng(11)))
    r = target.build(cand)
    weighted = [L.name for L in space.layers(cand) if L.has_weights]
    assert sorted(r.quantized_layers) == sorted(weighted)
    agree = 0
    for seed in range(4):
        x = np.random.default_rng(100 + seed).standard_normal(r.input_shape).astype(np.float32)
        y, ref = r.run(x), _torch(space, cand, x)
        assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < INT8_REL_L2
        agree += int(y.argmax() == ref.argmax())
    assert agree >= 3


def test_only_integer_layers_are_quantized(target, space):
    """w8a8 on the 1x1 expand/project convs, weight-only w8a32 on the depthwise ones (float on
    dequantized weights: onnxruntime's int8 kernels need int8 inputs), the rest float."""
    import onnx

    base = _float(space.sample(np.random.default_rng(12)))

    def plan(n, r, k, c):
        if r in ("conv", "project") and k == 1:
            return LayerCompression(c.pattern, c.sparsity, 8, 8)
        return LayerCompression(c.pattern, c.sparsity, 8, 32) if r == "dwconv" else LayerCompression(c.pattern, c.sparsity, 32, 32)

    cand = _plan(base, plan)
    r = target.build(cand)
    layers = space.layers(cand)
    expected = {L.name for L in layers if L.has_weights and L.w_bits <= 8 and L.a_bits <= 8}
    weight_only = {L.name for L in layers if L.has_weights and L.w_bits <= 8 and L.a_bits == 32}
    assert set(r.quantized_layers) == expected and expected and weight_only
    model = onnx.load_from_string(r.onnx_bytes)
    produced_by = {o: n for n in model.graph.node for o in n.output}
    quantized_paths = set()
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            w = produced_by.get(node.input[1])
            if w is not None and w.op_type == "DequantizeLinear":
                quantized_paths.add(onnx_module_path(node).rsplit(".", 1)[0])
    assert quantized_paths == expected


def test_ir_layers_map_to_their_own_onnx_nodes(target, space):
    cand = space.sample(np.random.default_rng(13))
    net = build_subnet(space, cand)
    model = target.export(net, (1, space.in_channels, cand["resolution"], cand["resolution"]))
    weighted = [L.name for L in net.layers if L.has_weights]
    owned = nodes_of_layers(model, weighted)
    ops = {n.name: n.op_type for n in model.graph.node}
    for name in weighted:
        heavy = [n for n in owned[name] if ops[n] in ("Conv", "Gemm")]
        assert len(heavy) == 1, (name, owned[name])
    se = [n for n in weighted if n.endswith(".se.expand")]
    if se:  # 's1.b0.expand' must not own 's1.b0.se.expand'
        block = se[0].rsplit(".se.", 1)[0]
        assert not set(owned[f"{block}.expand"]) & set(owned[se[0]])


def test_measurement_protocol_on_a_tiny_model(target):
    tiny = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU()).eval()
    r = target.build(tiny, input_shape=(1, 1, 16, 16), name="tiny")
    assert r.run().shape == (1, 8, 16, 16)
    m = target.measure(r, protocol=TINY)
    assert isinstance(m, Measurement) and m.name == "tiny"
    assert 0 < m.latency_ms and 0 < m.p10_ms <= m.median_ms <= m.p90_ms
    assert len(m.round_medians_ms) == 3 and m.runs == 15 and m.latency_ms == min(m.round_medians_ms)
    assert m.spread == pytest.approx((max(m.round_medians_ms) - min(m.round_medians_ms)) / min(m.round_medians_ms))
    assert m.cpu_latency_ms is not None and 0 < m.cpu_share <= 1.5
    assert Measurement.from_json(json.loads(json.dumps(m.to_json()))) == m
    with pytest.raises(ValueError, match="threads"):
        measure_many([r], Protocol(threads=2))


def test_rounds_are_interleaved_across_models():
    log: list[str] = []
    fns = [lambda name=name: log.append(name) for name in "abc"]
    out = measure_many(fns, Protocol(warmup=1, rounds=2, runs_per_round=2), names=["a", "b", "c"])
    assert log == list("abc") + list("aabbcc") * 2
    assert [m.name for m in out] == ["a", "b", "c"]


def test_passes_keep_each_runnables_faster_pass():
    """A runnable slowed through its whole first pass is reported from its second one."""
    proto = Protocol(warmup=1, rounds=2, runs_per_round=2)
    per_pass = proto.warmup + proto.rounds * proto.runs_per_round

    def slowed_first_pass():
        count = {"n": 0}

        def run():
            count["n"] += 1
            if count["n"] <= per_pass:
                time.sleep(0.005)
        return run

    (one,) = measure_passes([[slowed_first_pass(), lambda: None]], proto, passes=1, names=[["slow", "fast"]])
    (two,) = measure_passes([[slowed_first_pass(), lambda: None]], proto, passes=2, names=[["slow", "fast"]])
    assert [m.name for m in two] == ["slow", "fast"]
    assert one[0].latency_ms >= 4.0 and two[0].latency_ms < 1.0
    with pytest.raises(ValueError, match="passes"):
        measure_passes([[lambda: None]], proto, passes=0)


def test_latency_builds_and_measures(space):
    t = OrtCpuTarget(threads=1, protocol=TINY, group_size=2)
    cands = [_float(c) for c in (space.smallest(), space.sample(np.random.default_rng(14)))]
    lat = t.latency(cands)
    assert lat.shape == (2,) and lat.dtype == np.float64 and np.all(lat > 0)


def test_dynamo_exporter_maps_layers_too(space):
    """The TorchScript exporter is the default (10x faster); the dynamo one must work as well."""
    cand = _plan(space.smallest(), lambda n, r, k, c: LayerCompression("dense", 0.0, 8 if r in ("conv", "project") else 32, 8))
    r = OrtCpuTarget(exporter="dynamo").build(cand)
    assert len(r.quantized_layers) == sum(1 for L in space.layers(cand) if L.has_weights and L.w_bits <= 8)
    x = r.example_input()
    ref = _torch(space, cand, x)
    assert np.linalg.norm(r.run(x) - ref) / np.linalg.norm(ref) < INT8_REL_L2


def test_a_candidate_built_again_in_a_process_is_the_same_model_from_memory():
    from tritune.spaces.screens import with_exclusions
    from tritune.targets import ort_cpu

    space = create("mobilenet", resolutions=[16, 24], widths=[0.25, 0.5], depths=[2, 3], in_channels=1, num_classes=10)
    target = OrtCpuTarget(threads=1, seed=7)  # a seed no other test builds with: the first build is a real one
    cand = space.sample(np.random.default_rng(11))
    first = target.build(cand, space=space)
    again = OrtCpuTarget(threads=1, seed=7).build(cand, space=space)  # another instance, same settings
    assert "memo" not in first.build_s and again.build_s["memo"] == 1.0
    assert again.onnx_bytes == first.onnx_bytes and again.quantized_layers == first.quantized_layers
    np.testing.assert_array_equal(again.run(), first.run())
    screened = with_exclusions(space, {"stem": ["dense@0/w4a32"]})  # a search's narrower menu builds the same network
    assert OrtCpuTarget(threads=1, seed=7).build(cand, space=screened).build_s.get("memo") == 1.0
    other = OrtCpuTarget(threads=1, seed=8).build(cand, space=space)  # other weights: built anew
    assert "memo" not in other.build_s and other.onnx_bytes != first.onnx_bytes

    memo = ort_cpu._BuildMemo(max_bytes=10)
    memo.put("a", b"12345"), memo.put("b", b"6789"), memo.get("a"), memo.put("c", b"00")
    assert memo.get("b") is None and memo.get("a") == b"12345" and memo.get("c") == b"00" and memo.size == 7
    memo.put("huge", b"x" * 11)
    assert memo.get("huge") is None
