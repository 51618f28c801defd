"""The standalone mobilenet network: structure = layer IR, physical channel pruning, exact masks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tritune.spaces import LayerCompression, create
from tritune.spaces.mobilenet.space import CHANNEL_MULTIPLE, SLOT_INDEX, SLOTS, pruned_channels
from tritune.kernels.patterns import check_mask, make_mask
from tritune.spaces.mobilenet.network import build_subnet, effective_channels, input_shape, trace_layers

FIELDS = ("op", "in_channels", "out_channels", "in_h", "kernel", "stride", "groups", "act")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _without_channel(candidate):
    plan = [LayerCompression("dense", 0.0, c.w_bits, c.a_bits) if c.pattern == "channel" else c for c in candidate.compression]
    return candidate.replace(compression=plan)


def _ir_rows(layers):
    return [tuple(getattr(L, f) for f in FIELDS) for L in layers]


def _traced_rows(net, shape):
    return [tuple(r[f] for f in FIELDS) for r in trace_layers(net, shape)]


def _assert_structure(net, layers, shape):
    traced = trace_layers(net, shape)
    assert [tuple(r[f] for f in FIELDS) for r in traced] == _ir_rows(layers)
    # weighted layers and pools are named after the IR layers (adds/muls have graph names)
    for r, L in zip(traced, layers):
        if L.op in ("conv", "dwconv", "linear", "global_pool"):
            assert r["name"] == L.name
        if "input_channels_seen" in r:  # the tensor flowing in really has that many channels
            assert r["input_channels_seen"] == L.in_channels


def test_structure_equals_ir_for_50_small_candidates():
    space = create("mobilenet-small")
    rng = np.random.default_rng(0)
    with_channel = 0
    for i in range(50):
        cand = space.sample(rng)
        if i % 2:  # no channel pruning: the module must be space.layers exactly
            cand = _without_channel(cand)
            assert space.layers(cand) == space.layers(cand)
            layers = space.layers(cand)
        else:
            layers = space.layers(cand)
            with_channel += any(c.pattern == "channel" for c in cand.compression)
        net = build_subnet(space, cand, seed=i)
        _assert_structure(net, layers, input_shape(space, cand))
        assert not net.training
    assert with_channel >= 10


def test_structure_equals_ir_for_large_candidates():
    space = create("mobilenet")
    rng = np.random.default_rng(1)
    cands = [space.sample(rng) for _ in range(3)] + [space.largest(), space.smallest()]
    for k, cand in enumerate(cands):
        net = build_subnet(space, cand)
        _assert_structure(net, space.layers(cand), input_shape(space, cand))
        if k == 0:  # one real 224-px-class forward pass
            with torch.no_grad():
                y = net(torch.randn(*input_shape(space, cand)))
            assert y.shape == (1, 1000) and torch.isfinite(y).all()


def test_channel_pruning_changes_only_widths_in_the_ir():
    space = create("mobilenet-small")
    rng = np.random.default_rng(2)
    for _ in range(100):
        cand = space.sample(rng)
        phys = space.layers(cand)
        plain = space.layers(_without_channel(cand))
        eff = effective_channels(space, cand)
        by_name = {L.name: L for L in phys}
        for name, channels in eff.items():
            assert by_name[name].out_channels == channels
        # only channel-related fields change (and first.add may disappear)
        names = [L.name for L in plain]
        assert [L.name for L in phys] == [n for n in names if n in by_name]
        for L, P in zip([L for L in plain if L.name in by_name], phys):
            assert (L.op, L.kernel, L.stride, L.in_h, L.act, L.w_bits, L.a_bits, L.slot) == (P.op, P.kernel, P.stride, P.in_h, P.act, P.w_bits, P.a_bits, P.slot)


def test_effective_channels_keys_are_the_active_slots():
    space = create("mobilenet-small")
    cand = space.sample(np.random.default_rng(3))
    eff = effective_channels(space, cand)
    slot_layers = [L.name for L in space.layers(cand) if L.slot >= 0]
    assert sorted(eff) == sorted(slot_layers)
    assert all(name in SLOT_INDEX or name.removesuffix(".reduce").removesuffix(".expand") in SLOT_INDEX for name in eff)
    assert any(".se." in name for name in eff)
    assert eff["classifier"] == space.num_classes


@pytest.mark.parametrize("channels,sparsity,kept", [(40, 0.75, 12), (24, 0.9, 4), (1280, 0.9, 128), (96, 0.5, 48), (16, 0.75, 4), (72, 0.9, 8)])
def test_pruned_channel_rule(channels, sparsity, kept):
    assert pruned_channels(channels, sparsity) == kept
    assert kept % CHANNEL_MULTIPLE == 0
    removed_exact = math.floor(sparsity * channels + 0.5)
    assert abs((channels - kept) - removed_exact) <= CHANNEL_MULTIPLE // 2 or kept == CHANNEL_MULTIPLE


def _all_channel(space, cand, sparsity):
    plan = []
    for (name, role, k), comp in zip(SLOTS, cand.compression):
        opt = LayerCompression("channel", sparsity, 32, 32)
        plan.append(opt if opt in space.menu.options(role, k) else LayerCompression())
    return cand.replace(compression=plan)


def test_channel_pruning_physically_shrinks_the_network():
    space = create("mobilenet-small")
    cand = space.validate(space.largest())
    dense = cand.replace(compression=[LayerCompression()] * len(SLOTS))
    pruned = _all_channel(space, cand, 0.75)
    assert sum(c.pattern == "channel" for c in pruned.compression) > 10
    net_d, net_p = build_subnet(space, dense), build_subnet(space, pruned)
    params = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert params(net_p) < 0.5 * params(net_d)
    eff = effective_channels(space, pruned)
    nominal = {L.name: L.out_channels for L in space.layers(dense)}
    slot_of = {L.name: L.slot for L in space.layers(pruned)}
    for name, channels in eff.items():
        role = SLOTS[slot_of[name]][1]
        if role in ("conv", "stem", "linear"):
            assert channels == pruned_channels(nominal[name], 0.75) < nominal[name]
    # the consumers shrink with the producers
    blk = net_p.s0.b0
    assert blk.expand.conv.out_channels == blk.dw.conv.in_channels == blk.dw.conv.groups == blk.project.conv.in_channels
    assert net_p.final_expand.conv.out_channels == net_p.feature_mix.linear.in_features
    assert net_p.feature_mix.linear.out_features == net_p.classifier.linear.in_features
    assert net_p.stem.conv.out_channels == net_p.first.dw.conv.in_channels
    # a pruned stem no longer matches the first block's width: no residual sum there
    assert not net_p.first.residual and net_d.first.residual
    assert "first.add" not in [L.name for L in space.layers(pruned)]
    # SE bottleneck keeps its nominal width; its input/output follow the pruned expand
    se_block = net_p.s1.b0
    assert se_block.se.reduce.conv.in_channels == se_block.expand.conv.out_channels == se_block.se.expand.conv.out_channels
    with torch.no_grad():
        assert net_p(torch.randn(*input_shape(space, pruned))).shape == (1, 10)


PATTERNS = ["unstructured", "nm2:4", "nm1:4", "nm2:8", "block4x1", "block8x1", "block16x1", "block1x4", "kernel_pattern", "gather_scatter"]


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("shape", [(48, 24, 1, 1), (32, 16, 3, 3), (20, 40)])
def test_magnitude_masks_have_the_pattern_structure(pattern, shape):
    """The masks the subnet applies (`make_mask`, tested in depth in test_patterns.py)."""
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    if pattern == "kernel_pattern" and shape[2:] != (3, 3):  # refused with a clear error, not skipped
        with pytest.raises(ValueError, match="kernel_pattern"):
            make_mask(w, pattern, 0.5)
        return
    for sparsity in (0.5, 0.75, 0.9):
        keep = make_mask(w, pattern, sparsity)
        check_mask(keep, pattern, sparsity)
        # by magnitude: the kept weights are the strong ones on average
        assert w.abs()[keep].mean() > w.abs()[~keep].mean()
        if pattern == "unstructured":
            assert w.abs()[~keep].max() <= w.abs()[keep].min()


def test_masks_are_applied_and_zeros_stay_zeros():
    space = create("mobilenet-small")
    cand = space.sample(np.random.default_rng(5))
    net = build_subnet(space, cand)
    modules = dict(net.named_modules())
    checked = 0
    for L in space.layers(cand):
        if L.slot < 0 or not L.has_weights:
            continue
        m = modules[L.name]
        w = (m.conv if hasattr(m, "conv") else m.linear).weight
        if L.sparsity == 0 or L.pattern in ("dense", "channel"):
            assert bool((w != 0).all())  # channel pruning is physical: no zeros in the kept filters
            continue
        check_mask(w != 0, L.pattern, L.sparsity)
        checked += 1
    assert checked >= 10


def test_weights_are_deterministic_and_seeded():
    space = create("mobilenet-small")
    cand = space.sample(np.random.default_rng(6))
    a, b, c = build_subnet(space, cand, seed=0), build_subnet(space, cand, seed=0), build_subnet(space, cand, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_rejects_other_spaces():
    nb = create("nb201")
    cand = nb.sample(np.random.default_rng(0))
    with pytest.raises(ValueError, match="mobilenet"):
        build_subnet(nb, cand)
    small = create("mobilenet-small")
    with pytest.raises(ValueError):
        build_subnet(small, create("mobilenet").sample(np.random.default_rng(0)))


def test_built_weights_read_back_as_their_pattern_even_where_randn_draws_an_exact_zero():
    # this candidate's seed stream draws an exact 0.0 inside a kept 8x1 block of s4.b1.project
    from tritune.spaces.mobilenet.space import MobileNetSpace
    from tritune.spaces.mobilenet.supernet.sampling import with_compression

    space = MobileNetSpace(resolutions=(16, 24), widths=(0.25, 0.5, 0.75), depths=(2, 3), expands=(3, 4, 6), kernels=(3, 5),
                           in_channels=1, num_classes=10, compression={"tie": "role", "patterns": ["dense", "nm2:4", "block8x1", "channel"],
                                                                       "sparsities": [0.5, 0.75], "w_bits": [8, 32], "a_bits": [8, 32]})
    cand = with_compression(space, space.largest(), "block8x1", 0.75, 32, 32)
    net = build_subnet(space, cand)
    modules = dict(net.named_modules())
    checked = 0
    for layer in net.layers:
        if layer.has_weights and layer.pattern == "block8x1" and layer.sparsity > 0:
            module = modules[layer.name]
            op = module.conv if hasattr(module, "conv") else module.linear
            check_mask(op.weight.detach().numpy() != 0, "block8x1")
            checked += 1
    assert checked > 10
