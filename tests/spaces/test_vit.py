"""The vit family: genes, the token-carrying IR, the torch builder with token pruning, and ort-cpu."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tritune.spaces import Candidate, LayerCompression, create
from tritune.spaces.vit.network import TokenSelect, build_vit
from tritune.spaces.vit.space import kept_tokens

SMALL = dict(patch_sizes=[7], embed_dims=[48], depths=[1, 2], heads=[2, 3], mlp_ratios=[2], keep_ratios=[1.0, 0.5],
             compression={"patterns": ["dense", "unstructured"], "sparsities": [0.5], "w_bits": [32], "a_bits": [32]})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _with(space, candidate, **slots):
    """``candidate`` with the named slots (``b0_qkv=LayerCompression(...)``) replaced."""
    plan = list(candidate.compression)
    for name, choice in slots.items():
        plan[space.slot_index[name.replace("_", ".", 1)]] = choice
    return space.validate(candidate.replace(compression=plan))


def test_size_is_exact_and_every_candidate_is_distinct():
    space = create("vit", **SMALL)
    cands = list(space.enumerate())
    assert len(cands) == len(set(cands)) == space.size() == 33024


def test_sampled_candidates_round_trip_through_genome_and_json():
    space = create("vit")
    rng = np.random.default_rng(0)
    for _ in range(100):
        c = space.sample(rng)
        assert space.validate(c) == c
        assert space.from_genome(space.to_genome(c)) == c
        assert Candidate.from_json(json.loads(json.dumps(c.to_json()))) == c
        assert c["keep"][0] == 1.0 and len(c.compression) == len(space.slots)
    with pytest.raises(ValueError, match=r"candidate arch.heads: expected a list of 6 values"):
        space.to_genome(c.replace(arch={"heads": [2, 2]}))
    with pytest.raises(ValueError, match="vit.patch_sizes: 5 not allowed"):
        create("vit", patch_sizes=[4, 5])


def test_token_pruning_shrinks_every_later_layer_of_the_ir():
    space = create("vit")
    big = space.largest()
    assert (big["patch"], big["embed"], big["depth"]) == (4, 96, 6)
    pruned = space.dense(big, keep={2: 0.5})
    assert space.tokens(big) == [50] * 6
    assert space.tokens(pruned) == [50, 50, 26, 26, 26, 26] == [50, 50] + [kept_tokens(50, 0.5)] * 4
    layers = {L.name: L for L in space.layers(pruned)}
    assert "b2.select" in layers and "b1.select" not in layers
    heads, hd = big["heads"][2], space.head_dim
    for block, t in ((1, 50), (2, 26)):
        qkv, scores = layers[f"b{block}.qkv"], layers[f"b{block}.scores"]
        assert qkv.in_h == t and qkv.dense_macs == 96 * 3 * heads * hd * t
        assert scores.dense_macs == heads * t * t * hd and scores.groups == heads
        assert layers[f"b{block}.context"].dense_macs == heads * t * t * hd
    full = sum(L.dense_macs for L in space.layers(big))
    assert 1.3 < full / sum(L.dense_macs for L in layers.values()) < 2.0


def test_channel_pruning_removes_heads_and_hidden_units():
    space = create("vit")
    big = space.dense(space.largest())
    c = _with(space, big, b0_qkv=LayerCompression("channel", 0.5, 32, 32), b0_fc1=LayerCompression("channel", 0.75, 32, 32))
    w = space.widths(c)[0]
    assert (w["heads"], w["hidden"]) == (2, 96)
    layers = {L.name: L for L in space.layers(c)}
    assert layers["b0.qkv"].out_channels == 3 * 2 * space.head_dim and layers["b0.proj"].in_channels == 2 * space.head_dim
    assert layers["b0.fc1"].out_channels == 96 == layers["b0.fc2"].in_channels
    assert layers["b0.scores"].groups == 2
    net = build_vit(space, c)
    assert net.b0.qkv.linear.weight.shape == (96, 96) and net.b0.fc2.linear.weight.shape == (96, 96)
    assert net.b1.qkv.linear.weight.shape == (3 * 4 * space.head_dim, 96)
    # proj, fc2 and the classifier feed the residual stream or the logits: no channel choice on their menus
    for slot in ("b0.proj", "b0.fc2", "head", "patch_embed"):
        assert all(choice.pattern != "channel" for choice in space.slot_choices(space.slot_index[slot]))


def test_network_layers_are_the_ir_and_masks_are_applied():
    space = create("vit")
    rng = np.random.default_rng(3)
    for _ in range(5):
        c = space.sample(rng)
        net = build_vit(space, c, seed=1)
        modules = dict(net.named_modules())
        for L in space.layers(c):
            if L.op in ("linear", "matmul", "softmax", "layernorm", "conv", "token_select"):
                assert L.name in modules, L.name
            if L.op == "linear":
                op = modules[L.name].linear
                assert op.weight.shape == (L.out_channels, L.in_channels)
                if L.pattern == "unstructured":
                    assert abs(float((op.weight == 0).float().mean()) - L.sparsity) < 0.02
        x = torch.rand(3, 1, 28, 28)
        y = net(x)
        assert y.shape == (3, 10) and torch.isfinite(y).all()
        assert torch.equal(build_vit(space, c, seed=1)(x), y)  # seeded: the same weights again
        assert not torch.equal(build_vit(space, c, seed=2)(x), y)


def test_token_select_keeps_the_most_attended_and_fuses_the_rest():
    x = torch.arange(1 * 5 * 2, dtype=torch.float32).reshape(1, 5, 2)  # class token + 4 others
    attention = torch.tensor([[0.1, 0.4, 0.2, 0.3]])
    out = TokenSelect(kept=2, others=4)(x, attention)
    assert out.shape == (1, 4, 2)
    assert torch.equal(out[0, 0], x[0, 0])  # the class token stays first
    assert torch.equal(out[0, 1], x[0, 2]) and torch.equal(out[0, 2], x[0, 4])  # attention 0.4, then 0.3
    expected = (x[0, 3] * 0.2 + x[0, 1] * 0.1) / 0.3  # the package: attention-weighted mean of the others
    assert torch.allclose(out[0, 3], expected)
    assert TokenSelect(kept=4, others=4)(x, attention).shape == (1, 5, 2)


def test_ort_cpu_runs_vit_candidates_float_and_int8():
    from tritune.targets import create_target

    space = create("vit")
    target = create_target("ort-cpu")
    big = space.dense(space.largest(), keep={2: 0.5})
    runnable = target.build(big, space)
    x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    expected = build_vit(space, big, seed=target.seed)(torch.from_numpy(x)).numpy()
    assert np.allclose(runnable.run(x), expected, atol=1e-4)
    int8 = LayerCompression("dense", 0.0, 8, 8)
    c = _with(space, big, b0_qkv=int8, b1_fc1=int8)
    linear = target.build(c, space)
    assert set(linear.quantized_layers) == {"b0.qkv", "b1.fc1"}
    ref = build_vit(space, c, seed=target.seed)(torch.from_numpy(x)).numpy()
    assert np.linalg.norm(linear.run(x) - ref) / np.linalg.norm(ref) < 0.05
    # 8-bit attention: both matmuls of the block take quantized operands (random weights attend
    # almost uniformly, so only the graph is checked here, not the numbers)
    genome = space.to_genome(c)
    genome["b0.attn_bits"] = 8
    attention = target.build(space._make(genome), space)
    assert set(attention.quantized_layers) == {"b0.qkv", "b0.scores", "b0.context", "b1.fc1"}
    import onnx

    model = onnx.load_from_string(attention.onnx_bytes)
    produced_by = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.name.startswith(("/b0/scores/", "/b0/context/")):
            assert all(produced_by[i].op_type == "DequantizeLinear" for i in node.input)
    assert np.isfinite(attention.run(x)).all()


# --------------------------------------------------------------------------------------------
# the weight-sharing supernet
# --------------------------------------------------------------------------------------------
TINY = dict(embed_dims=[32, 48], depths=[1, 2], heads=[2], mlp_ratios=[2], patch_sizes=[7])


def _float_plan(space, candidate):
    """``candidate`` with every slot at float bits (same pattern where the menu has it) and float attention."""
    genome = space.to_genome(candidate)
    genes = {g.name: g for g in space.genes()}
    for name, value in genome.items():
        if name.startswith("comp:"):
            floated = LayerCompression(value.pattern, value.sparsity, 32, 32)
            genome[name] = floated if floated in genes[name].choice_set else space.menu.default()
        elif name.endswith(".attn_bits"):
            genome[name] = 32
    return space._make(genome)


def test_supernet_forward_equals_the_extracted_network():
    from tritune.spaces.weight_sharing import Supernet

    space = create("vit")
    net = space.supernet({"seed": 3}).eval()
    assert isinstance(net, Supernet)
    rng = np.random.default_rng(0)
    x = torch.rand(4, 1, 32, 32)  # mnist5k-hard's size: both resize to 28 px
    pruned = 0
    for _ in range(8):
        c = _float_plan(space, space.sample(rng))
        pruned += any(k < 1.0 for k in c["keep"][: c["depth"]])
        assert torch.allclose(net(x, c), net.extract(c)(x), atol=1e-5)
    assert pruned  # token pruning was exercised
    # quantized plans: extracted on calibration batches, the network fake-quantizes the activations
    # the supernet does, and its float copy (what is exported) has no quantizer left
    for _ in range(3):
        c = space.sample(rng)
        extracted = net.extract(c, [x])
        assert extracted.activation_quantizers() and not extracted.float_network().activation_quantizers()
        assert torch.allclose(net(x, c), extracted(x), atol=1e-5)


def test_supernet_trains_checkpoints_and_scores_mixed_candidates(tmp_path):
    from tritune.evaluators.data import load_dataset
    from tritune.evaluators.supernet_accuracy import SupernetAccuracy
    from tritune.evaluators.supernet_training import TrainConfig, accuracy, train_supernet
    from tritune.spaces.checkpoint import load_checkpoint

    space = create("vit", **TINY)
    data = load_dataset("digits", seed=0)
    net = space.supernet({"seed": 0})
    big = space.largest()
    before = accuracy(net, big, data)
    config = TrainConfig(steps=250, batch_size=64, lr=3e-3, optimizer="adamw", weight_decay=0.05, phases=None, n_random=1,
                         sensitivity_images=0)
    ckpt = tmp_path / "vit.safetensors"
    result = train_supernet(net, data, config, checkpoint=ckpt, progress=False)
    assert result.losses[-1] < result.losses[0]
    after = accuracy(net, big, data)
    assert after > max(0.5, before + 0.3), (before, after)
    loaded = load_checkpoint(ckpt)  # rebuilt from the header through the space registry
    assert type(loaded.supernet).__name__ == "ViTSupernet" and loaded.header["extra"]["train"]["optimizer"] == "adamw"
    assert accuracy(loaded.supernet, big, data) == after
    scores = SupernetAccuracy(ckpt).evaluate([big] + [space.sample(np.random.default_rng(i)) for i in range(4)])
    assert all(s["accuracy"] > 20.0 for s in scores), scores  # chance is 10 %


def test_sandwich_keeps_frozen_dimensions_at_the_largest():
    from tritune.spaces.compression import CompressionLimit
    from tritune.spaces.weight_sharing import ARCHITECTURE

    space = create("vit")
    sampler = space.supernet().sampler
    rng = np.random.default_rng(0)
    step = sampler.sandwich(rng, 3, ARCHITECTURE, n_dense=1)
    assert len(step) == 6
    # the teacher: the largest network at a patch size drawn for the step, so both patch paths get one
    teachers = {sampler.sandwich(np.random.default_rng(i), 0, ARCHITECTURE)[0] for i in range(12)}
    assert {t["patch"] for t in teachers} == set(space.patch_sizes)
    assert all(t.replace(arch={"patch": min(space.patch_sizes)}) == space.largest() for t in teachers)
    assert sampler.sandwich(rng, 0, ("depth",))[0] == space.largest()  # a fixed token grid: the largest itself
    assert all(c.compression == space.largest().compression and set(c["attn_bits"]) == {32} for c in step)
    low = step[1]
    assert low["patch"] == max(space.patch_sizes) and low["embed"] == min(space.embed_dims) and low["depth"] == min(space.depths)
    only_depth = sampler.sandwich(rng, 4, ("depth",))
    assert all(c["embed"] == max(space.embed_dims) and c["patch"] == min(space.patch_sizes) for c in only_depth)
    assert len({c["depth"] for c in only_depth}) > 1
    limited = sampler.sandwich(rng, 6, ("compression",), CompressionLimit(min_w_bits=8))
    assert all(choice.w_bits >= 8 for c in limited for choice in c.compression)
    harsh = sampler.sandwich(rng, 0, ("compression",), lower_end="harshest")[1]
    assert min(choice.w_bits for choice in harsh.compression) == min(space.menu.w_bits)
