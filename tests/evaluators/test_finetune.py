"""Fine-tuning a candidate alone: the trainable subnet equals the supernet, deploys as `extract`
does, keeps masks exact and bits under every pruning method, and continues exactly from a saved
state (in this process and in another). Tiny space on `digits`, a few steps each."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tritune.evaluators.data import load_dataset
from tritune.evaluators.finetune import (DEFAULT_METHOD, METHODS, FinetuneConfig, FinetuneStateError, Finetuner, finetune,
                                         mask_report)
from tritune.kernels.patterns import check_mask
from tritune.kernels.pruning import prunable_modules, resolve_plan
from tritune.spaces import MobileNetSpace
from tritune.spaces.compression import LayerCompression, parse_pattern
from tritune.spaces.mobilenet.space import SLOT_INDEX
from tritune.kernels.timing import torch_threads
from tritune.spaces.mobilenet.supernet import MobileNetSupernet, QuantizedConv2d, QuantizedLinear, extract, with_compression
from tritune.spaces.images import fit_input
from tritune.spaces.mobilenet.supernet.trainable import TrainableSubnet, deploy, trainable_subnet

pytestmark = pytest.mark.timeout(300)


def tiny_space() -> MobileNetSpace:
    return MobileNetSpace(resolutions=(16, 20), widths=(0.25, 0.5), depths=(1, 2), expands=(3, 4), kernels=(3, 5), stem_stride=2,
                          in_channels=1, num_classes=10)


@pytest.fixture(scope="module")
def space() -> MobileNetSpace:
    return tiny_space()


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits")


#: One small calibration batch keeps each test to seconds (the default is 4 x 128 images).
FAST = dict(calib_batches=1, calib_batch_size=32)


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def batches(n: int = 2, size: int = 16, res: int = 20, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 1, res, res, generator=g) for _ in range(n)]


def mixed(space: MobileNetSpace, seed: int) -> "Candidate":  # noqa: F821
    """A random architecture with a mixed plan: one structured, one unstructured, one N:M and
    one channel-pruned slot among quantized ones."""
    base = with_compression(space, space.sample(np.random.default_rng(seed)), "dense", 0.0, 8, 8)
    plan = list(base.compression)
    for slot, comp in (("stem", LayerCompression("kernel_pattern", 0.75, 8, 8)), ("s0.b0.expand", LayerCompression("block4x1", 0.5, 4, 8)),
                       ("s1.b0.project", LayerCompression("unstructured", 0.75, 8, 32)), ("s2.b0.expand", LayerCompression("nm2:4", 0.5, 4, 8)),
                       ("final_expand", LayerCompression("channel", 0.5, 8, 8)), ("feature_mix", LayerCompression("gather_scatter", 0.5, 32, 8))):
        plan[SLOT_INDEX[slot]] = comp
    return space.validate(base.replace(compression=plan))


PLANS = [("dense", 0.0, 32, 32), ("unstructured", 0.75, 4, 8), ("block4x1", 0.5, 8, 32), ("kernel_pattern", 0.75, 8, 8),
         ("channel", 0.5, 8, 8), ("gather_scatter", 0.5, 32, 8)]


# ----- the trainable subnet -------------------------------------------------------------------------
@pytest.mark.parametrize("plan", PLANS, ids=lambda p: f"{p[0]}-w{p[2]}a{p[3]}")
def test_trainable_subnet_computes_what_the_supernet_computes(space, plan):
    sn = MobileNetSupernet(space)
    cand = with_compression(space, space.sample(np.random.default_rng(len(plan[0]))), *plan)
    calib = batches()
    sn.recalibrate(cand, calib)
    net = trainable_subnet(sn, cand)
    assert isinstance(net, TrainableSubnet) and net.candidate == cand
    x = torch.randn(64, 1, 20, 20)
    sn.eval(), net.eval()
    with torch.no_grad():
        ref, out = sn(x, cand), net(x)
        # the same deployed arithmetic on the same tensors (conv algorithms may round differently)
        assert float((ref - out).abs().max()) <= 1e-4 * float(ref.abs().max())
        assert torch.equal(ref.argmax(1), out.argmax(1))
        # the same recalibration on both sides gives the same network again, up to the odd
        # activation that float rounding puts on the other side of a quantization step
        net.recalibrate(batches(seed=7))
        sn.recalibrate(cand, batches(seed=7))
        sn.eval()
        ref, out = sn(x, cand), net.eval()(x)
        assert float((ref - out).abs().mean()) <= 1e-3 * float(ref.abs().mean())
        assert float((ref.argmax(1) == out.argmax(1)).float().mean()) >= 0.98
    # ordinary conv / linear layers with the IR's physical shapes, kernel transforms applied once
    modules = prunable_modules(net)
    elastic = dict(sn.named_elastic())
    for spec in net.weight_layers():
        op = modules[net.module_name(spec.name)]
        assert type(op).__mro__[1:3] in ((torch.nn.Conv2d, torch.nn.Module), (torch.nn.Linear, torch.nn.Module)) or \
            isinstance(op, (torch.nn.Conv2d, torch.nn.Linear))
        assert op.weight.shape[0] == spec.out_channels
        view = elastic[spec.name].view(spec).detach()
        mask = elastic[spec.name].mask(view, spec)
        assert torch.equal(op.weight.detach(), view * mask if mask is not None else view)
        assert (op.weight_quant is not None) == (spec.w_bits < 32) and (op.input_quant is not None) == (spec.a_bits < 32)
        if mask is not None:
            assert torch.equal(op.weight_mask, mask) and torch.equal(op.dense_weight, view)
    # the pruning methods take the candidate's plan
    layers = resolve_plan(net, net.pruning_plan())
    expected = {net.module_name(s.name) for s in net.weight_layers() if parse_pattern(s.pattern).family not in ("dense", "channel")}
    assert set(layers) == expected
    if plan[0] in ("unstructured", "block4x1", "kernel_pattern", "gather_scatter"):
        assert layers


@pytest.mark.parametrize("seed", [0, 1])
def test_deploy_computes_what_extract_computes(space, seed):
    sn = MobileNetSupernet(space)
    cand = mixed(space, seed)
    calib = batches(seed=seed + 3)
    ref = extract(sn, cand, calib)
    sub = deploy(trainable_subnet(sn, cand), cand, calib)
    assert type(sub) is type(ref)
    res = int(cand["resolution"])
    x = torch.randn(64, 1, res, res)
    with torch.no_grad():
        a, b = ref(x), sub(x)
    assert float((a - b).abs().mean()) <= 1e-3 * float(a.abs().mean())
    assert float((a.argmax(1) == b.argmax(1)).float().mean()) >= 0.98
    ref_mods, sub_mods = dict(ref.named_modules()), dict(sub.named_modules())
    n_quantized = n_masks = 0
    for name, m in ref_mods.items():
        if isinstance(m, (QuantizedConv2d, QuantizedLinear)):
            other = sub_mods[name]
            assert type(other) is type(m) and other.w_bits == m.w_bits
            if m.weight is None:
                assert other.weight_codes.dtype == torch.int8
                assert float((other.weight_codes.int() - m.weight_codes.int()).abs().float().mean()) < 0.01
                n_quantized += 1
            assert (m.input_quant is None) == (other.input_quant is None)
        mask = getattr(m, "weight_mask", None)
        if mask is not None:
            assert torch.equal(sub_mods[name].weight_mask, mask)
            n_masks += 1
    assert n_quantized > 0 and n_masks >= 4


def test_deploy_refuses_weights_outside_the_mask(space):
    sn = MobileNetSupernet(space)
    cand = mixed(space, 2)
    sn.recalibrate(cand, batches())
    net = trainable_subnet(sn, cand)
    op = net.get_submodule(net.module_name("s1.b0.project"))
    with torch.no_grad():
        op.weight.copy_(op.dense_weight)
    with pytest.raises(ValueError, match="s1.b0.project.*outside its mask"):
        deploy(net)
    with pytest.raises(ValueError, match="not"):
        deploy(trainable_subnet(sn, cand), mixed(space, 5))


# ----- fine-tuning ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def supernet(space):
    return MobileNetSupernet(space)


@pytest.mark.parametrize("method", METHODS)
def test_finetune_keeps_masks_exact_and_bits(space, data, supernet, method):
    cand = mixed(space, 4)
    net = trainable_subnet(supernet, cand)
    inherited = {k: v.clone() for k, v in net.masks().items()}
    tuner = Finetuner(net, data, FinetuneConfig(epochs=0.5, lr=0.05, batch_size=64, method=method, **FAST))
    if method == "group_lasso":  # the lasso takes the block and kernel-pattern layers, magnitude the rest
        lasso, rest = tuner.methods
        assert set(lasso.layers) == {"stem.conv", "s0.b0.expand.conv"} and len(rest.layers) == 3
    r = tuner.run()
    assert r.done and r.step == r.total_steps == 11 and r.method == method
    assert r.masks_exact and set(r.sparsity) == set(inherited)
    ops = net.ops()
    for spec in net.weight_layers():
        op = ops[spec.name]
        if spec.name in inherited:
            check_mask(op.weight_mask, spec.pattern, spec.sparsity)
            assert not bool((op.weight.detach()[~op.weight_mask] != 0).any())  # pruned weights are exactly zero
        else:
            assert op.weight_mask is None
    if method == "oneshot":  # magnitude on the inherited weights is the supernet's own mask
        assert all(torch.equal(net.masks()[k], v) for k, v in inherited.items())
    elif method in ("gradual", "admm"):  # the searching methods reach their own masks
        assert any(not torch.equal(net.masks()[k], v) for k, v in inherited.items())
    # bits kept: the trained network's fake-quantized forward is what its int8 deploy form computes
    sub = deploy(net)
    x = fit_input(data.test.tensors[0][:128], net.resolution)
    with torch.no_grad():
        a, b = net.eval()(x), sub(x)
    assert float((a - b).abs().max()) <= 1e-3 * float(a.abs().max())
    exact, _ = mask_report(sub, net.layers)
    assert exact
    for name, m in sub.named_modules():
        if isinstance(m, (QuantizedConv2d, QuantizedLinear)) and m.weight is None:
            q = 2 ** (m.w_bits - 1)
            assert -q <= int(m.weight_codes.min()) and int(m.weight_codes.max()) <= q - 1


def test_finetuning_learns_and_the_result_exports_unchanged(space, data, supernet, tmp_path):
    from tritune.search.export.exporter import export_model

    cand = mixed(space, 4)
    tuner = Finetuner(trainable_subnet(supernet, cand), data, FinetuneConfig(epochs=2.0, lr=0.1, batch_size=32, **FAST))
    r = tuner.run()
    assert r.accuracy_before < 25.0  # an untrained supernet: chance
    assert r.accuracy > r.accuracy_before + 40.0
    # the deploy form goes through the exporter as an extracted network does, and scores the same
    sub = deploy(tuner.net, cand, tuner.calib)
    res = export_model(cand, sub, data=data, calibration=tuner.calib, out_dir=tmp_path, space=space, measure=False)
    assert res.manifest["torch_accuracy"] == pytest.approx(r.accuracy)
    v = res.manifest["verification"]["model.onnx"]
    assert v["top1_agreement"] >= 0.95 and abs(v["accuracy"] - r.accuracy) <= 2.0


def test_admm_midway_is_scored_with_the_masks_it_would_apply(space, data, supernet):
    cand = mixed(space, 6)
    tuner = Finetuner(trainable_subnet(supernet, cand), data, FinetuneConfig(epochs=1.0, batch_size=128, method="admm", **FAST))
    r = tuner.run(until_epochs=0.3)
    assert not r.done and r.step == 3 and r.masks_exact
    with pytest.raises(ValueError, match="outside its mask"):
        deploy(tuner.net)  # the weights are still dense: ADMM has not pruned yet
    r = tuner.run()
    assert r.done and r.masks_exact
    deploy(tuner.net)


def _model_tensors(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.parametrize("method", ["gradual", "admm", "group_lasso"])
def test_stop_and_continue_equals_an_uninterrupted_run(space, data, supernet, method, tmp_path):
    cand = mixed(space, 3)
    config = FinetuneConfig(epochs=1.0, batch_size=128, lr=0.05, method=method, **FAST)
    whole = Finetuner(trainable_subnet(supernet, cand), data, config)
    whole.run()
    first = Finetuner(trainable_subnet(supernet, cand), data, config)
    r1 = first.run(until_epochs=0.45, save_to=tmp_path / "state.safetensors")
    assert r1.step == 5 and not r1.done
    second = Finetuner.load_state(tmp_path / "state.safetensors", data)
    assert second.step == 5 and second.accuracy_before == first.accuracy_before
    r2 = second.run()
    assert r2.done and r2.masks_exact
    a, b = whole.net.state_dict(), second.net.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for ma, mb in zip(whole.methods, second.methods):
        ta, va = ma.state_dict()
        tb, vb = mb.state_dict()
        assert json.dumps(va, sort_keys=True) == json.dumps(vb, sort_keys=True)
        assert set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.mark.slow  # a second Python process (~20 s on 2 busy cores)
def test_a_rung_continues_in_another_process(space, data, supernet, tmp_path):
    cand = mixed(space, 9)
    state = tmp_path / "rung.safetensors"
    r1 = finetune(trainable_subnet(supernet, cand), cand, data, epochs=1.0, batch_size=128, method="admm", stop_after_epochs=0.5, state=state,
                  **FAST)
    assert r1.step == 6 and state.is_file()
    script = (
        "import json, sys, torch\n"
        "torch.set_num_threads(1)\n"
        "from tritune.evaluators.data import load_dataset\n"
        "from tritune.evaluators.finetune import Finetuner\n"
        "t = Finetuner.load_state(sys.argv[1], load_dataset('digits'))\n"
        "r = t.run(save_to=sys.argv[2])\n"
        "print(json.dumps({'step': r.step, 'accuracy': r.accuracy}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(state), str(tmp_path / "other.safetensors")],
                         capture_output=True, text=True, timeout=240, check=True)
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    mine = finetune(None, cand, data, epochs=1.0, batch_size=128, method="admm", state=state, **FAST)  # continue here too
    assert mine.done and theirs["step"] == mine.step == 11
    assert theirs["accuracy"] == mine.accuracy
    a, b = _model_tensors(state), _model_tensors(tmp_path / "other.safetensors")
    for k in a:
        if k.startswith(("model.", "method.", "optim.")):
            assert torch.equal(a[k], b[k]), k


def test_bad_states_and_settings_are_refused(space, data, supernet, tmp_path):
    cand = mixed(space, 1)
    state = tmp_path / "s.safetensors"
    finetune(trainable_subnet(supernet, cand), cand, data, epochs=1.0, batch_size=128, stop_after_epochs=0.2, state=state, **FAST)
    with pytest.raises(FinetuneStateError, match="other settings.*lr"):
        finetune(None, cand, data, epochs=1.0, lr=0.5, batch_size=128, state=state, **FAST)
    with pytest.raises(FinetuneStateError, match="written for data"):
        Finetuner.load_state(state, load_dataset("digits", seed=1))
    with pytest.raises(ValueError, match="not"):
        finetune(None, mixed(space, 2), data, epochs=1.0, batch_size=128, state=state, **FAST)
    raw = bytearray(state.read_bytes())
    raw[-5] ^= 0xFF
    (tmp_path / "bad.safetensors").write_bytes(bytes(raw))
    with pytest.raises(FinetuneStateError, match="checksum|damaged"):
        Finetuner.load_state(tmp_path / "bad.safetensors", data)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file at all")
    with pytest.raises(FinetuneStateError, match="junk"):
        Finetuner.load_state(tmp_path / "junk.safetensors", data)
    with pytest.raises(FinetuneStateError, match="no such file"):
        Finetuner.load_state(tmp_path / "missing.safetensors", data)
    with pytest.raises(ValueError, match="finetune.method: 'magic' not allowed; allowed: oneshot"):
        FinetuneConfig(method="magic")
    with pytest.raises(ValueError, match="finetune.method_options"):
        FinetuneConfig(method="admm", method_options={"rho": -1.0})
    with pytest.raises(ValueError, match="finetune.epochs"):
        FinetuneConfig(epochs=0)
    assert DEFAULT_METHOD in METHODS

