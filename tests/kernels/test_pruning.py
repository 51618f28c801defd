"""Tests for tritune.kernels.pruning: every method ends in the pattern's exact masks, masks hold
through fine-tuning, ADMM projects and converges, the cubic schedule, group lasso, bad plans."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tritune.evaluators.data import load_dataset
from tritune.kernels.patterns import achieved_sparsity, check_mask, make_mask
from tritune.kernels.pruning import (
    ADMM,
    GradualMagnitude,
    OneShotMagnitude,
    ReweightedGroupLasso,
    accuracy,
    create_pruning_method,
    cubic_sparsity,
    fit,
    resolve_plan,
    train_with_pruning,
)
from tritune.spaces.compression import LayerCompression, pattern_allowed


class Tiny(nn.Module):
    """3x3 conv, 3x3 conv, 1x1 conv, linear: every pattern applies somewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 16, 1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.dw(self.conv3(x)))
        return self.fc(nn.functional.avg_pool2d(x, 2).flatten(1))


ROLES = {"conv2": ("conv", 3), "conv3": ("conv", 1), "fc": ("linear", 1)}


def plan_for(pattern: str, sparsity: float) -> dict:
    return {n: (pattern, sparsity) for n, (role, k) in ROLES.items() if pattern_allowed(pattern, role, k)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny layers run ~10x faster on one thread than with two contending ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    model = Tiny()
    fit(model, digits, epochs=3, lr=3e-3, seed=0, progress=False)
    return model


CASES = [(m, p) for m in ("oneshot", "gradual", "admm") for p in
         ("unstructured", "nm2:4", "block4x1", "block8x1", "channel", "kernel_pattern", "gather_scatter")]
CASES += [("group_lasso", p) for p in ("block4x1", "channel", "kernel_pattern")]


@pytest.mark.parametrize("method_name, pattern", CASES)
def test_methods_give_exact_masks(trained, digits, method_name, pattern):
    model = copy.deepcopy(trained)
    plan = plan_for(pattern, 0.75)
    method = create_pruning_method(method_name).attach(model, plan)
    fit(model, digits, epochs=1, lr=1e-3, seed=0, method=method, progress=False)
    masks = method.finalize()
    assert set(masks) == set(plan)
    for name, mask in masks.items():
        weight = dict(model.named_modules())[name].weight
        check_mask(mask, pattern, 0.75)  # exact structure and nearest achievable ratio
        check_mask(weight != 0, pattern, 0.75)  # and the weights carry it
        expected = 0.5 if pattern == "nm2:4" else 0.75  # (fc has 10 rows: channel reaches 0.8)
        assert achieved_sparsity(mask) == pytest.approx(expected, abs=0.06)


def test_masked_weights_stay_zero_through_finetuning(trained, digits):
    model = copy.deepcopy(trained)
    method = OneShotMagnitude().attach(model, plan_for("block4x1", 0.75))
    masks = method.finalize()
    modules = dict(model.named_modules())
    # gradients of pruned weights are masked...
    x, y = digits.train.tensors
    nn.functional.cross_entropy(model(x[:64]), y[:64]).backward()
    for name, mask in masks.items():
        assert torch.all(modules[name].weight.grad[~mask] == 0)
        assert torch.any(modules[name].weight.grad[mask] != 0)
    # ...and after Adam with weight decay the weights are still zero (and the kept ones moved)
    before = {n: modules[n].weight.detach().clone() for n in masks}
    fit(model, digits, epochs=1, lr=1e-2, seed=0, method=method, weight_decay=1e-2, progress=False)
    for name, mask in masks.items():
        w = modules[name].weight.detach()
        assert torch.all(w[~mask] == 0)
        assert not torch.equal(w[mask], before[name][mask])
    method.verify()
    method.detach()


def test_channel_pruning_removes_filters_with_their_bias(trained, digits):
    model = copy.deepcopy(trained)
    method = OneShotMagnitude().attach(model, {"conv2": ("channel", 0.5)})
    mask = method.finalize()["conv2"]
    fit(model, digits, epochs=1, lr=1e-2, seed=0, method=method, progress=False)
    removed = ~mask.reshape(16, -1).any(1)
    assert int(removed.sum()) == 8 and torch.all(model.conv2.bias[removed] == 0)


def test_admm_projection_and_convergence(trained, digits):
    model = copy.deepcopy(trained)
    plan = plan_for("block4x1", 0.75)
    method = ADMM(rho=0.1, interval=5, rho_growth=1.6).attach(model, plan)
    fit(model, digits, epochs=3, lr=1e-2, seed=0, method=method, progress=False)
    assert len(method.residuals) >= 10
    for name in plan:
        check_mask(method.Z[name] != 0, "block4x1", 0.75)  # Z lies in the constraint set
        # it came from the last update, Z = Proj(W_t + U_{t-1}) = Proj(Z + U_t): a fixed point
        assert torch.allclose(method.project(name, method.Z[name] + method.U[name]), method.Z[name])
        # and the projection is Euclidean: no other member of the set is closer
        v = dict(model.named_modules())[name].weight.detach() + method.U[name]
        z = method.project(name, v)
        for seed in range(5):
            score = torch.rand(v.shape, generator=torch.Generator().manual_seed(seed))
            other = v * make_mask(v, "block4x1", 0.75, importance=score * v.abs())
            assert (v - z).norm() <= (v - other).norm()
    r = method.residuals
    assert r[-1] < 0.5 * r[0], r  # ||W - Z|| / ||W|| shrinks over the iterations
    assert sum(b < a for a, b in zip(r, r[1:])) >= 0.7 * (len(r) - 1), r
    before = method.residual()
    method.finalize()
    assert method.penalty() == 0 and before > 0


def test_cubic_schedule():
    assert cubic_sparsity(0, 0.9, start=10, end=110) == 0.0
    assert cubic_sparsity(10, 0.9, start=10, end=110) == 0.0
    assert cubic_sparsity(60, 0.9, start=10, end=110) == pytest.approx(0.9 * (1 - 0.5 ** 3))
    assert cubic_sparsity(110, 0.9, start=10, end=110) == pytest.approx(0.9)
    assert cubic_sparsity(500, 0.9, initial=0.2, start=10, end=110) == pytest.approx(0.9)
    values = [cubic_sparsity(t, 0.8, initial=0.1, start=0, end=50) for t in range(60)]
    assert values[0] == pytest.approx(0.1) and all(b >= a for a, b in zip(values, values[1:]))
    # steeper at the start than at the end (Zhu & Gupta: prune fast while redundancy is high)
    assert values[5] - values[0] > values[50] - values[45]


def test_gradual_follows_the_schedule(trained, digits):
    model = copy.deepcopy(trained)
    method = GradualMagnitude(end=0.8, updates=5).attach(model, {"conv3": ("unstructured", 0.8), "conv2": ("nm2:4", 0.5)})
    fit(model, digits, epochs=2, lr=1e-3, seed=0, method=method, progress=False)
    conv3 = [s["conv3"] for _, s in method.schedule if "conv3" in s]
    assert len(conv3) >= 5 and conv3[-1] == pytest.approx(0.8)
    assert all(b > a for a, b in zip(conv3, conv3[1:]))
    # N:M has one ratio: it is applied once, when the schedule reaches it
    assert [s["conv2"] for _, s in method.schedule if "conv2" in s] == [0.5]
    assert all(method.final.values())
    assert achieved_sparsity(model.conv3.weight != 0) == pytest.approx(0.8, abs=0.01)


def test_group_lasso_shrinks_weak_groups_more():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16))
    with torch.no_grad():
        model[0].weight[8:] *= 0.1  # rows 8..15 are the weak output channels
    method = ReweightedGroupLasso(strength=1e-2, reweight_every=5).attach(model, {"0": ("channel", 0.5)})
    start = method.group_norms("0").clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(30):
        method.before_step(step, 30)
        opt.zero_grad()
        method.penalty().backward()
        opt.step()
    ratio = method.group_norms("0") / start
    assert ratio[8:].max() < ratio[:8].min()  # every weak group lost a larger share than any strong one
    assert ratio[8:].mean() < 0.5 and ratio[:8].mean() > 0.8


@pytest.mark.parametrize("pattern, count", [("block4x1", 4 * 72), ("block1x4", 16 * 18), ("channel", 16), ("kernel_pattern", 16 * 8)])
def test_group_lasso_groups_partition_the_weight(pattern, count):
    model = Tiny()
    method = ReweightedGroupLasso().attach(model, {"conv2": (pattern, 0.75)})
    groups = method.groups("conv2")
    assert groups.shape[0] == count
    assert float(groups.detach().pow(2).sum()) == pytest.approx(float(model.conv2.weight.detach().pow(2).sum()), rel=1e-5)


def test_group_lasso_rejects_unstructured_patterns():
    with pytest.raises(ValueError, match=r"plan\['fc'\]: group lasso needs a structured pattern.*allowed: blockRxC, channel, kernel_pattern"):
        ReweightedGroupLasso().attach(Tiny(), {"fc": ("nm2:4", 0.5)})


def test_train_with_pruning_end_to_end_and_deterministic(trained, digits):
    results, weights = [], []
    for _ in range(2):
        model = copy.deepcopy(trained)
        plan = {"conv2": LayerCompression("kernel_pattern", 0.75), "fc": LayerCompression("unstructured", 0.5, 8, 8)}
        results.append(train_with_pruning(model, digits, plan, "gradual", epochs=1, lr=1e-3, seed=3, progress=False))
        weights.append(model.fc.weight.detach().clone())
    a, b = results
    assert torch.equal(weights[0], weights[1]) and a.accuracy_after == b.accuracy_after
    assert a.accuracy_before > 0.8 and a.accuracy_after > 0.8
    assert a.sparsity["fc"] == pytest.approx(0.5, abs=0.01) and a.sparsity["conv2"] == pytest.approx(0.75, abs=0.01)
    assert a.method == "gradual" and a.seconds > 0
    assert accuracy(model, digits.test) == a.accuracy_after


# ---------------------------------------------------------------------------------------- errors

def test_bad_plans_name_the_module_and_allowed_values():
    model = Tiny()
    with pytest.raises(ValueError, match=r"plan\['conv9'\]: unknown module 'conv9'; allowed .*conv1, conv2, conv3, dw, fc"):
        resolve_plan(model, {"conv9": ("unstructured", 0.5)})
    with pytest.raises(ValueError, match=r"plan\['conv3'\]: pattern 'kernel_pattern' not applicable to Conv2d 'conv3'.*allowed: dense, unstructured, nm2:4"):
        resolve_plan(model, {"conv3": ("kernel_pattern", 0.5)})
    with pytest.raises(ValueError, match=r"plan\['dw'\]: pattern 'block4x1' not applicable.*role dwconv.*allowed: dense, unstructured$"):
        resolve_plan(model, {"dw": ("block4x1", 0.5)})
    with pytest.raises(ValueError, match=r"plan\['fc'\].pattern: unknown sparsity pattern 'block'"):
        resolve_plan(model, {"fc": ("block", 0.5)})
    with pytest.raises(ValueError, match=r"plan\['fc'\].sparsity: 1.0 not allowed; allowed: a number in \[0, 1\)"):
        resolve_plan(model, {"fc": ("unstructured", 1.0)})
    with pytest.raises(ValueError, match=r"plan\['fc'\]: 0.5 not allowed; allowed: \(pattern, sparsity\)"):
        resolve_plan(model, {"fc": 0.5})
    with pytest.raises(ValueError, match=r"plan\['conv2'\]: kernel_pattern: unknown options \['shared'\]"):
        resolve_plan(model, {"conv2": ("kernel_pattern", 0.5, {"shared": 2})})
    assert resolve_plan(model, {"fc": ("dense", 0.0)}) == {}


def test_bad_method_options():
    with pytest.raises(ValueError, match="pruning method: 'snip' not allowed; allowed: oneshot, gradual, admm, group_lasso"):
        create_pruning_method("snip")
    with pytest.raises(ValueError, match="ADMM"):
        ADMM(rho=-1.0)
    with pytest.raises(ValueError, match="GradualMagnitude: start=0.8, end=0.5"):
        GradualMagnitude(start=0.8, end=0.5)
    with pytest.raises(ValueError, match="pruning method 'admm'"):
        create_pruning_method("admm", lr=3)
