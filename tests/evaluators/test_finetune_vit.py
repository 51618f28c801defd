"""Fine-tuning a vit candidate alone through the family-neutral `Finetuner`: the trainable network
computes what the supernet computes, deploys as `extract` does, keeps masks exact and bits, learns,
and continues exactly from a saved state. Tiny space on `digits`."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tritune.evaluators.data import load_dataset
from tritune.evaluators.finetune import FinetuneConfig, Finetuner, finetune
from tritune.kernels.timing import torch_threads
from tritune.spaces import LayerCompression, create
from tritune.spaces.trainable import TrainableNetwork

pytestmark = pytest.mark.timeout(300)

TINY = dict(embed_dims=[32, 48], depths=[1, 2], heads=[2], mlp_ratios=[2], patch_sizes=[7], keep_ratios=[1.0, 0.5],
            compression={"patterns": ["dense", "unstructured", "nm2:4", "block8x1", "channel"], "sparsities": [0.5],
                         "w_bits": [4, 8, 32], "a_bits": [8, 32]})
FAST = dict(calib_batches=1, calib_batch_size=32)


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def space():
    return create("vit", **TINY)


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def supernet(space, data):
    """A briefly trained supernet (the inherited weights are better than chance)."""
    from tritune.evaluators.supernet_training import TrainConfig, train_supernet

    net = space.supernet({"seed": 0})
    with torch_threads(1):
        train_supernet(net, data, TrainConfig(steps=120, batch_size=64, lr=3e-3, optimizer="adamw", weight_decay=0.05, phases=None,
                                              n_random=1, sensitivity_images=0), progress=False)
    return net


def mixed(space):
    """The deepest architecture, tokens pruned in block 1, 8-bit attention, and a plan with every
    kind of layer: 4-bit N:M, 8-bit block, float unstructured, head pruning."""
    base = space.dense(space.largest(), {1: 0.5})
    choices = {"qkv": LayerCompression("channel", 0.5, 8, 8), "proj": LayerCompression("unstructured", 0.5, 32, 32),
               "fc1": LayerCompression("nm2:4", 0.5, 4, 8), "fc2": LayerCompression("block8x1", 0.5, 8, 8)}
    plan = [choices.get(name.rsplit(".", 1)[-1], LayerCompression("dense", 0.0, 8, 8)) for name, _ in space.slots]
    cand = base.replace(compression=plan, arch={"attn_bits": [8] * len(base["attn_bits"])})
    return space.validate(cand)


def calib(data, n: int = 2, size: int = 64) -> list[torch.Tensor]:
    return [data.train.tensors[0][i * size:(i + 1) * size] for i in range(n)]


def test_trainable_vit_computes_what_the_supernet_computes_and_deploys_as_extract(space, data, supernet):
    cand = mixed(space)
    batches = calib(data)
    supernet.eval()
    supernet.recalibrate(cand, batches)
    net = supernet.trainable(cand)
    assert isinstance(net, TrainableNetwork) and net.candidate == cand
    assert set(net.pruning_plan()) == {f"b{i}.{p}.linear" for i in range(cand["depth"]) for p in ("proj", "fc1", "fc2")}
    x = data.test.tensors[0][:64]
    with torch.no_grad():
        a, b = supernet(x, cand), net.eval()(x)
    assert torch.allclose(a, b, atol=1e-5 * float(a.abs().max()) + 1e-6)
    ext, dep = supernet.extract(cand, batches), net.deploy(batches)
    with torch.no_grad():
        assert torch.allclose(ext(x), a, atol=1e-5) and torch.allclose(dep(x), a, atol=1e-5)
    assert set(dep.activation_quantizers()) == set(ext.activation_quantizers()) and "b0.attn" in ext.activation_quantizers()
    # tokens are ranked by the 8-bit attention probabilities (as onnxruntime's int8 softmax gives them)
    seen = []
    hook = dep.b1.select.register_forward_pre_hook(lambda _m, args: seen.append(args[1]))
    with torch.no_grad():
        dep(x)
    hook.remove()
    quant = dep.activation_quantizers()["b0.attn"]
    steps = (seen[0] * dep.b0.heads / float(quant.scale)).double()
    assert torch.allclose(steps, steps.round(), atol=1e-3)  # a mean over heads of values on the 8-bit grid
    assert set(dep.pattern_masks()) == set(ext.pattern_masks()) and set(dep.quantization()) == set(ext.quantization())
    for name, q in ext.quantization().items():
        mine = dep.quantization()[name]
        assert np.allclose(q.weight_scales, mine.weight_scales) and q.input_scale == pytest.approx(mine.input_scale)


def test_finetuning_a_vit_learns_keeps_masks_and_bits(space, data, supernet):
    cand = mixed(space)
    tuner = Finetuner(supernet.trainable(cand), data, FinetuneConfig(epochs=4.0, lr=3e-3, optimizer="adamw", weight_decay=0.05, **FAST))
    r = tuner.run()
    assert r.masks_exact and r.done
    assert r.accuracy > r.accuracy_before + 5.0, (r.accuracy_before, r.accuracy)
    assert all(s == pytest.approx(0.5, abs=0.02) for s in r.sparsity.values()) and len(r.sparsity) == 3 * cand["depth"]
    sub = tuner.deployable()
    for i in range(cand["depth"]):  # 4-bit fc1: at most 15 levels per output channel
        w = sub.deployed_weights()[f"b{i}.fc1"]
        assert max(len(torch.unique(row)) for row in w) <= 15
        assert len(torch.unique(w[0])) > 3  # and not collapsed


def test_a_fine_tuned_vit_exports_as_it_scored(space, data, supernet, tmp_path):
    """int8 linears and attention, tokens pruned: the file agrees with the network it came from."""
    from tritune.search.export.exporter import export_model

    cand = mixed(space)
    tuner = Finetuner(supernet.trainable(cand), data, FinetuneConfig(epochs=4.0, lr=3e-3, optimizer="adamw", weight_decay=0.05, **FAST))
    r = tuner.run()
    res = export_model(cand, tuner.deployable(), data=data, calibration=tuner.calib, out_dir=tmp_path, space=space, measure=False)
    assert res.manifest["torch_accuracy"] == pytest.approx(r.accuracy)
    v = res.manifest["verification"]["model.onnx"]
    assert v["top1_agreement"] >= 0.95 and abs(v["accuracy"] - r.accuracy) <= 1.5, v


@pytest.mark.parametrize("method", ["gradual", "admm"])
def test_pruning_methods_reach_exact_masks_on_a_vit(space, data, supernet, method):
    cand = mixed(space)
    r = Finetuner(supernet.trainable(cand), data, FinetuneConfig(epochs=0.5, lr=1e-3, optimizer="adamw", method=method, **FAST)).run()
    assert r.masks_exact and r.done


def test_a_vit_fine_tune_continues_exactly_from_its_state(space, data, supernet, tmp_path):
    cand = mixed(space)
    options = dict(epochs=1.0, lr=1e-3, optimizer="adamw", calib_batches=1, calib_batch_size=32)
    whole = finetune(supernet.trainable(cand), cand, data, **options)
    state = tmp_path / "state.safetensors"
    finetune(supernet.trainable(cand), cand, data, stop_after_epochs=0.5, state=state, **options)
    resumed = finetune(None, cand, data, state=state, **options)
    assert resumed.done and resumed.accuracy == whole.accuracy
    a, b = whole.net.state_dict(), resumed.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
