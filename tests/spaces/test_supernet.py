"""The weight-sharing supernet: forward over the joint space, extraction, calibration, checkpoints,
training determinism, evaluators and the accuracy predictor. Tiny configs (16-20 px, width 0.25-0.5)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tritune.kernels.patterns import check_mask
from tritune.spaces import MobileNetSpace
from tritune.spaces.compression import parse_pattern
from tritune.spaces.mobilenet.network import ConvAct
from tritune.kernels.timing import torch_threads
from tritune.spaces.mobilenet.supernet import MobileNetSupernet, QuantizedConv2d, QuantizedLinear, extract, with_compression
from tritune.spaces.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tritune.spaces.mobilenet.supernet.sampling import dimension_of
from tritune.spaces.weight_sharing import DIMENSIONS

pytestmark = pytest.mark.timeout(300)


def tiny_space(**overrides) -> MobileNetSpace:
    cfg = dict(resolutions=(16, 20), widths=(0.25, 0.5), depths=(1, 2), expands=(3, 4), kernels=(3, 5), stem_stride=2,
               in_channels=1, num_classes=4)
    cfg.update(overrides)
    return MobileNetSpace(**cfg)


@pytest.fixture(scope="module")
def space() -> MobileNetSpace:
    return tiny_space()


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 1, 20, 20, generator=g)
    y = torch.randint(0, 4, (96,), generator=g)
    x[torch.arange(96), 0, y * 4, y * 4] += 4.0  # a learnable cue
    return torch.utils.data.TensorDataset(x, y)


def batches(n: int = 2, size: int = 8, res: int = 20, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 1, res, res, generator=g) for _ in range(n)]


# ----- forward over the joint space ------------------------------------------------------------
def test_random_candidates_of_every_pattern_run(space):
    # training mode (batch statistics and activation ranges): a fresh supernet has no
    # calibrated ranges for eval mode yet; eval mode is exercised by the extraction tests
    net = MobileNetSupernet(space).train()
    rng = np.random.default_rng(0)
    x = torch.randn(2, 1, 20, 20)
    seen = set()
    with torch.no_grad():
        for _ in range(300):
            cand = space.sample(rng)
            out = net(x, cand)
            assert out.shape == (2, 4) and torch.isfinite(out).all()
            seen |= {parse_pattern(c.pattern).family for c in cand.compression}
    assert seen >= {"dense", "unstructured", "nm", "block", "channel", "kernel_pattern", "gather_scatter"}
    # with gradients
    for _ in range(20):
        cand = space.sample(rng)
        net(torch.randn(2, 1, 16, 16), cand).sum().backward()
    assert net.stem.weight.grad is not None and torch.isfinite(net.stem.weight.grad).all()


def test_set_active_equals_explicit_candidate(space):
    net = MobileNetSupernet(space)
    cand = space.sample(np.random.default_rng(3))
    net.recalibrate(cand, batches())
    net.eval()
    x = torch.randn(2, 1, 20, 20)
    with torch.no_grad():
        ref = net(x, cand)
        net.set_active(cand)
        assert torch.equal(net(x), ref)
    net.set_active(None)
    with pytest.raises(ValueError, match="no candidate"):
        net(x)
    with pytest.raises(ValueError, match="input shape"):
        net(torch.randn(2, 3, 20, 20), cand)


def test_kernel_transform_is_learned(space):
    net = MobileNetSupernet(space).train()
    cand = net.sampler.largest()
    genome = space.to_genome(cand)
    genome["s0.b0.kernel"] = 3
    small = space.from_genome(space.canonical_genome(genome))
    net(torch.randn(2, 1, 20, 20), small).sum().backward()
    assert net.s0.b0.dw.transforms["3"].grad is not None and net.s0.b0.dw.transforms["3"].grad.abs().sum() > 0


def test_unsupported_bits_are_refused():
    with pytest.raises(ValueError, match="w_bits .*16"):
        MobileNetSupernet(tiny_space(compression={"w_bits": [8, 16]}))
    with pytest.raises(ValueError, match="not a mobilenet space"):
        MobileNetSupernet(object())  # type: ignore[arg-type]


# ----- extraction ------------------------------------------------------------------------------------
EXTRACT_PLANS = [("dense", 0.0, 32, 32), ("unstructured", 0.75, 4, 8), ("nm2:4", 0.5, 4, 8), ("block4x1", 0.9, 8, 32),
                 ("channel", 0.5, 8, 8), ("kernel_pattern", 0.75, 4, 32), ("gather_scatter", 0.5, 32, 8)]


@pytest.mark.parametrize("plan", EXTRACT_PLANS, ids=lambda p: f"{p[0]}-w{p[2]}a{p[3]}")
def test_extract_equals_supernet_and_keeps_structure(space, plan):
    net = MobileNetSupernet(space)
    base = space.sample(np.random.default_rng(hash(plan) % 1000))
    cand = with_compression(space, base, *plan)
    sub = extract(net, cand, batches(res=int(cand["resolution"])))
    del_modules = [m for m in sub.modules() if type(m).__name__ == "ElasticLayer"]
    assert not del_modules
    x = torch.randn(3, 1, int(cand["resolution"]), int(cand["resolution"]))
    net.eval()
    with torch.no_grad():
        assert torch.allclose(net(x, cand), sub(x), atol=1e-5, rtol=1e-5)
    modules = dict(sub.named_modules())
    checked = 0
    for spec in space.layers(cand):
        if not spec.has_weights:
            continue
        mod = modules[spec.name]
        op = mod.conv if isinstance(mod, ConvAct) else mod.linear
        w = op.dequantized_weight() if isinstance(op, (QuantizedConv2d, QuantizedLinear)) else op.weight
        # physical shapes are the IR's
        assert w.shape[0] == spec.out_channels
        assert w.shape[1] == (1 if spec.op == "dwconv" else spec.in_channels)
        if spec.op != "linear":
            assert w.shape[-1] == spec.kernel
        if spec.w_bits < 32:
            assert isinstance(op, (QuantizedConv2d, QuantizedLinear)) and op.weight_codes.dtype == torch.int8
            q = 2 ** (spec.w_bits - 1)
            assert int(op.weight_codes.abs().max()) <= q
        family = parse_pattern(spec.pattern).family
        if family not in ("dense", "channel"):
            mask = op.weight_mask
            check_mask(mask, spec.pattern, spec.sparsity)
            assert torch.all(w[~mask] == 0)
            if spec.w_bits == 32:  # float weights: the zeros are exactly the mask
                check_mask(w != 0, spec.pattern, spec.sparsity)
            checked += 1
    if plan[0] not in ("dense", "channel"):
        assert checked > 0


def test_extract_is_standalone_and_exports(space, tmp_path):
    net = MobileNetSupernet(space)
    cand = with_compression(space, space.sample(np.random.default_rng(5)), "unstructured", 0.5, 8, 8)
    sub = extract(net, cand, batches())
    x = torch.randn(1, 1, int(cand["resolution"]), int(cand["resolution"]))
    with torch.no_grad():
        ref = sub(x)
        net.reset_parameters()  # the extracted network shares no storage with the supernet
        assert torch.equal(sub(x), ref)
    assert sum(p.numel() for p in sub.parameters()) < sum(p.numel() for p in net.parameters())
    import onnx

    path = tmp_path / "sub.onnx"
    torch.onnx.export(sub, (x,), str(path), dynamo=False, opset_version=17)
    names = {n.name for n in onnx.load(str(path)).graph.node}
    assert any(n.startswith("/s0/b0/expand/conv/") for n in names)


# ----- calibration -----------------------------------------------------------------------------------
def test_recalibration_changes_statistics_only(space):
    net = MobileNetSupernet(space)
    cand = with_compression(space, space.sample(np.random.default_rng(2)), "unstructured", 0.5, 4, 8)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params = {k for k, _ in net.named_parameters()}
    net.recalibrate(cand, batches())
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "recalibration changed nothing"
    assert not changed & params, f"parameters changed: {sorted(changed & params)[:3]}"
    for k in changed:
        assert ".bn." in k or ".act_quant." in k, k
    assert any("running_mean" in k for k in changed) and any(".act_quant." in k for k in changed)


# ----- checkpoints -------------------------------------------------------------------------------------
def test_checkpoint_round_trip(space, tmp_path):
    net = MobileNetSupernet(space)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    cand = with_compression(space, space.sample(np.random.default_rng(4)), "nm2:4", 0.5, 4, 8)
    net.recalibrate(cand, batches())
    path = save_checkpoint(tmp_path / "sn.safetensors", net, step=7, extra={"data": "digits"})
    fresh = MobileNetSupernet(space)
    ck = load_checkpoint(path, fresh)
    assert ck.step == 7 and ck.extra == {"data": "digits"}
    rebuilt = load_checkpoint(path).supernet  # built from the header alone
    x = torch.randn(2, 1, 20, 20)
    for m in (net, fresh, rebuilt):
        m.eval()
    with torch.no_grad():
        ref = net(x, cand)
        assert torch.equal(fresh(x, cand), ref)
        assert torch.equal(rebuilt(x, cand), ref)


def test_bad_checkpoints_are_refused(space, tmp_path):
    path = save_checkpoint(tmp_path / "sn.safetensors", MobileNetSupernet(space))
    with pytest.raises(CheckpointError, match="another mobilenet config.*resolutions"):
        load_checkpoint(path, MobileNetSupernet(tiny_space(resolutions=(16, 24))))
    other = MobileNetSupernet(tiny_space())
    other.space.name = "mobilenet-small"
    with pytest.raises(CheckpointError, match="saved for space 'mobilenet'"):
        load_checkpoint(path, other)
    with pytest.raises(CheckpointError, match="supernet config"):
        load_checkpoint(path, MobileNetSupernet(space, {"kernel_transform": False}))
    # a newer schema
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        header = json.loads(fh.metadata()["tritune"])
    header["schema"] = 99
    newer = tmp_path / "newer.safetensors"
    save_file(load_file(str(path)), str(newer), metadata={"tritune": json.dumps(header)})
    with pytest.raises(CheckpointError, match="schema 99 is newer"):
        load_checkpoint(newer)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.safetensors")


# ----- training --------------------------------------------------------------------------------------
def test_resume_continues_like_an_uninterrupted_run(space, data, tmp_path):
    from tritune.evaluators.supernet_training import TrainConfig, train_supernet

    cfg = TrainConfig(steps=4, batch_size=16, lr=0.05, n_random=1, seed=3, phases="progressive")
    whole = MobileNetSupernet(space)
    full = train_supernet(whole, data, cfg, progress=False)
    ckpt = tmp_path / "run.safetensors"
    first = train_supernet(MobileNetSupernet(space), data, cfg, checkpoint=ckpt, progress=False, stop_after=2)
    assert first.step == 2
    resumed_net = MobileNetSupernet(space, {"seed": 9})  # other initial weights: all state must come from the file
    second = train_supernet(resumed_net, data, cfg, checkpoint=ckpt, progress=False)
    assert second.step == 4
    assert first.losses + second.losses == full.losses
    for (k, a), b in zip(whole.state_dict().items(), resumed_net.state_dict().values()):
        assert torch.equal(a, b), k


def test_training_learns_and_bad_data_is_refused(space, data):
    from tritune.evaluators.supernet_training import TrainConfig, train_candidate

    net = MobileNetSupernet(space)
    cand = net.sampler.largest()
    res = train_candidate(net, cand, data, TrainConfig(steps=30, batch_size=32, lr=0.1, seed=0))
    assert np.mean(res.losses[-5:]) < np.mean(res.losses[:5])
    rgb = torch.utils.data.TensorDataset(torch.randn(8, 3, 16, 16), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="in_channels=1"):
        train_candidate(net, cand, rgb, TrainConfig(steps=1))
    with pytest.raises(ValueError, match="phases"):
        TrainConfig(phases=[{"start": 0.5, "elastic": ["depth"]}])
    with pytest.raises(ValueError, match="unknown dimensions"):
        TrainConfig(phases=[{"start": 0.0, "elastic": ["colour"]}])


def test_frozen_dimensions_stay_at_the_largest(space):
    net = MobileNetSupernet(space)
    largest = space.to_genome(net.sampler.largest())
    rng = np.random.default_rng(0)
    for _ in range(20):
        genome = space.to_genome(net.sampler.sample(rng, ("kernel", "compression")))
        for name, value in genome.items():
            if dimension_of(name) not in ("kernel", "compression") and name in largest:
                assert value == largest[name], name
    smallest = net.sampler.smallest(DIMENSIONS)
    assert all(spec.w_bits == 4 for spec in space.layers(smallest) if spec.has_weights)
    assert all(spec.pattern == "dense" and spec.w_bits == 32 for spec in space.layers(net.sampler.smallest(("depth",))) if spec.has_weights)


# ----- evaluators and predictor ------------------------------------------------------------------------
def test_supernet_evaluators_from_a_job_spec(tmp_path):
    from tritune.evaluators import create_evaluator

    space = tiny_space(num_classes=10)  # digits: 10 classes
    net = MobileNetSupernet(space)
    path = save_checkpoint(tmp_path / "sn.safetensors", net, extra={"data": "digits"})
    ev = create_evaluator("supernet-accuracy", checkpoint=str(path), calib_batches=1, calib_batch_size=32)
    cands = [with_compression(space, space.sample(np.random.default_rng(i)), "unstructured", 0.5, 8, 8) for i in range(2)]
    first = ev.evaluate(cands)
    assert all(0.0 <= r["accuracy"] <= 100.0 for r in first)
    assert ev.evaluate(cands) == first and len(ev._results) == 2  # cached by candidate id
    before = {k: v.clone() for k, v in ev.supernet.state_dict().items()}
    ft = create_evaluator("supernet-finetune", supernet=ev.supernet, dataset="digits", epochs=0.05, calib_batches=1)
    assert 0.0 <= ft.evaluate(cands[:1])[0]["accuracy"] <= 100.0
    assert all(torch.equal(before[k], v) for k, v in ev.supernet.state_dict().items())  # fine-tuned a copy
    with pytest.raises(ValueError, match="unknown options"):
        create_evaluator("supernet-accuracy", checkpoint=str(path), epochs=3)
    with pytest.raises(ValueError, match="exactly one of checkpoint"):
        create_evaluator("supernet-accuracy")


def test_accuracy_predictor_round_trip(space, tmp_path):
    from tritune.predictors import AccuracyPredictor, load

    rng = np.random.default_rng(0)
    cands = [space.sample(rng) for _ in range(80)]
    y = np.array([50 + 40 * c["width"] + 4 * sum(c["depth"]) - 5 * (c.compression[0].w_bits == 4) for c in cands], dtype=float)
    pred = AccuracyPredictor(space, n_estimators=100).fit(cands, y)
    assert pred.error_["kendall"] > 0.4
    path = pred.save(tmp_path / "acc.json")
    again = load(path)
    assert isinstance(again, AccuracyPredictor) and again.metric == "accuracy"
    assert np.array_equal(again.predict(cands), pred.predict(cands))

    from tritune.evaluators import create_evaluator

    ev = create_evaluator("predicted-accuracy", path=str(path))
    assert ev.cheap and ev.evaluate(cands[:2])[0]["accuracy"] == pytest.approx(pred.predict(cands[:1])[0])
