"""Spaces: validity under mutation/crossover, exact JSON, encodings, sizes, IR, Optuna."""
from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pytest

from tritune.spaces import Candidate, CompressionMenu, LayerCompression, create, list_spaces, pattern_allowed
from tritune.spaces.mobilenet.space import SLOTS, STAGES, MobileNetSpace

SPACE_NAMES = ["nb201", "mobilenet", "mobilenet-small"]


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_10k_mutations_and_crossovers_stay_valid(name):
    space = create(name)
    rng = np.random.default_rng(1)
    population = [space.sample(rng) for _ in range(20)]
    changed = 0
    for step in range(10_000):
        a = population[rng.integers(len(population))]
        if step % 2:
            child = space.mutate(a, rng)
            changed += child != a
        else:
            child = space.crossover(a, population[rng.integers(len(population))], rng)
        assert space.validate(child) == child  # valid and already canonical
        population[rng.integers(len(population))] = child
    assert changed >= 4900  # a mutation always changes something


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_json_round_trip_is_exact_and_id_is_stable(name):
    space = create(name)
    rng = np.random.default_rng(2)
    for _ in range(200):
        c = space.sample(rng)
        text = c.dumps()
        back = Candidate.loads(text)
        assert back == c and hash(back) == hash(c) and back.dumps() == text and back.id == c.id
        assert Candidate.loads(json.dumps(json.loads(text), indent=3)) == c  # formatting does not matter
    assert len(c.id) == 12


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_encoding_has_fixed_length(name):
    space = create(name)
    rng = np.random.default_rng(3)
    cands = [space.sample(rng) for _ in range(100)]
    X = space.encode_batch(cands)
    assert X.shape == (100, space.encoding_length)
    assert np.isfinite(X).all()
    assert len({tuple(row) for row in X}) == len(set(cands))  # distinct candidates encode differently


def test_nb201_index_and_strings_match_the_benchmark():
    space = create("nb201")
    assert space.size() == 15625
    c = space.from_index(6111)  # the best CIFAR-10 cell in NATS-Bench TSS
    assert space.arch_str(c) == "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
    assert space.index(space.from_arch_str(space.arch_str(c))) == 6111
    all_ids = {space.index(x) for x in space.enumerate()}
    assert all_ids == set(range(15625))
    with pytest.raises(ValueError, match="arch_str"):
        space.from_arch_str("|conv~0|")


def test_mobilenet_size_matches_enumeration_on_a_tiny_configuration():
    space = MobileNetSpace(resolutions=(32,), widths=(1.0,), depths=(1, 2), expands=(3,), kernels=(3, 5), compression={"enabled": False})
    enumerated = list(space.enumerate())
    assert len(enumerated) == len(set(enumerated)) == space.size() == (2 + 2**2) ** 5
    # with compression: 2 choices per slot (dense w8a8, unstructured 50% w8a8) -> 6 fixed slots, 3 per
    # block, 4 in the three stages with squeeze-excite
    menu = CompressionMenu(patterns=("dense", "unstructured"), sparsities=(0.5,), w_bits=(8,), a_bits=(8,))
    tiny = MobileNetSpace(resolutions=(32,), widths=(1.0,), depths=(1, 2), expands=(3,), kernels=(3,), compression=menu)
    assert tiny.size() == 2**6 * (2**3 + 2**6) ** 2 * (2**4 + 2**8) ** 3
    big = create("mobilenet")
    assert math.isclose(big.log10_size(), math.log10(big.size()))
    with pytest.raises(ValueError, match="enumeration limit"):
        next(big.enumerate())


def test_mobilenet_layers_follow_the_candidate():
    space = create("mobilenet")
    rng = np.random.default_rng(4)
    for _ in range(50):
        c = space.sample(rng)
        layers = space.layers(c)
        # one layer per active compression slot (two for a squeeze-excite slot), carrying that slot's plan
        slotted = [layer for layer in layers if layer.slot >= 0]
        se_blocks = sum(d for d, (*_, se) in zip(c["depth"], STAGES) if se)
        assert len(slotted) == 6 + 3 * sum(c["depth"]) + 2 * se_blocks
        for layer in slotted:
            plan = c.compression[layer.slot]
            assert (layer.pattern, layer.sparsity, layer.w_bits, layer.a_bits) == (plan.pattern, plan.sparsity, plan.w_bits, plan.a_bits)
            assert pattern_allowed(layer.pattern, SLOTS[layer.slot][1], SLOTS[layer.slot][2])
            kept = 1.0 if layer.pattern == "channel" else 1 - layer.sparsity  # channel pruning is in the shape
            assert layer.macs == pytest.approx(layer.dense_macs * kept)
        # shapes chain: the classifier sees the feature-mix width and the final spatial size is >= 1
        assert layers[-1].op == "linear" and layers[-1].out_channels == 1000
        assert all(layer.in_h >= 1 for layer in layers)
    dense = space.largest()
    assert all(c.pattern == "dense" for c in dense.compression)
    assert sum(layer.macs for layer in space.layers(dense)) > sum(layer.macs for layer in space.layers(space.smallest()))


def test_depthwise_never_gets_nm_or_block_and_kernel_pattern_only_on_3x3():
    space = create("mobilenet")
    for gene in space.genes():
        if not gene.name.startswith("comp:"):
            continue
        slot = gene.name[5:]
        patterns = {c.pattern for c in gene.choices}
        if slot.endswith(".dw"):
            assert patterns == {"dense", "unstructured"}
        if "kernel_pattern" in patterns:
            assert slot == "stem"
        if slot.endswith("project") or slot == "classifier":
            assert "channel" not in patterns


def test_validate_names_field_and_allowed_values():
    space = create("mobilenet")
    c = space.sample(np.random.default_rng(5))
    bad = c.replace(arch={"resolution": 100})
    with pytest.raises(ValueError, match=r"resolution.*100.*allowed: 160, 176"):
        space.validate(bad)
    plan = list(c.compression)
    plan[1] = LayerCompression("nm2:4", 0.5, 8, 8)  # N:M on a depthwise layer
    with pytest.raises(ValueError, match=r"comp:first.dw.*allowed"):
        space.validate(c.replace(compression=plan))
    with pytest.raises(ValueError, match="candidate.space"):
        create("nb201").validate(c)
    with pytest.raises(ValueError, match="candidate.schema"):
        Candidate.from_json({"schema": 99, "space": "nb201", "arch": {}})
    with pytest.raises(ValueError, match="space: 'nope' not allowed; allowed"):
        create("nope")
    with pytest.raises(ValueError, match="compression.w_bits"):
        CompressionMenu(w_bits=(9,))


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_suggest_is_define_by_run_and_round_trips_params(name):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = create(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        c = space.suggest(trial)
        assert space.validate(c) == c
        assert trial.params == space.params(c)  # only active genes became parameters
        study.tell(trial, 0.0)
    if name != "nb201":
        depth_params = [t.params for t in study.trials]
        assert any(sum(1 for k in p if k.startswith("s0.b3.")) == 0 for p in depth_params)


def test_registry_lists_the_spaces():
    assert set(SPACE_NAMES) <= set(list_spaces())


def test_compression_off_gives_architecture_only_space():
    space = MobileNetSpace(compression={"enabled": False})
    c = space.sample(np.random.default_rng(0))
    assert all(x == LayerCompression() for x in c.compression)


def test_plans_written_before_squeeze_excite_slots_build_the_same_network():
    """A plan without the squeeze-excite slots (stored profiles, saved candidates) reads as dense SE
    layers with the bit-widths of the block's depthwise slot: the network it always meant."""
    from tritune.spaces.mobilenet.space import PRE_SE_SLOTS, SLOT_INDEX, with_se_slots

    space = create("mobilenet")
    rng = np.random.default_rng(11)
    assert len(SLOTS) - PRE_SE_SLOTS == 4 * sum(se for *_, se in STAGES)
    assert all(role == "se" for _, role, _ in SLOTS[PRE_SE_SLOTS:])  # appended: older slot indices stay put
    for _ in range(20):
        cand = space.sample(rng)
        old = cand.replace(compression=cand.compression[:PRE_SE_SLOTS])
        full = with_se_slots(old)
        assert len(full.compression) == len(SLOTS) and full.compression[:PRE_SE_SLOTS] == old.compression
        for name, _, _ in SLOTS[PRE_SE_SLOTS:]:
            se, dw = full.compression[SLOT_INDEX[name]], full.compression[SLOT_INDEX[name.removesuffix(".se") + ".dw"]]
            assert (se.pattern, se.sparsity, se.w_bits, se.a_bits) == ("dense", 0.0, dw.w_bits, dw.a_bits)
        assert space.validate(old) == space.validate(full)
        assert space.layers(old) == space.layers(full)
        assert np.array_equal(space.encode(old), space.encode(full))
        (n_old, r_old), (n_full, r_full) = space.layer_codes([old]), space.layer_codes([full])
        assert np.array_equal(n_old, n_full) and np.array_equal(r_old, r_full)
        assert with_se_slots(cand) is cand  # full plans pass through
    with pytest.raises(ValueError, match=f"compression: expected {len(SLOTS)} .* got {PRE_SE_SLOTS - 1}"):
        space.validate(cand.replace(compression=cand.compression[:PRE_SE_SLOTS - 1]))


def test_squeeze_excite_slot_compresses_both_se_layers():
    space = create("mobilenet")
    cand = space.validate(space.largest())
    plan = [LayerCompression("block8x1", 0.75, 8, 8) if role == "se" else c for (_, role, _), c in zip(SLOTS, cand.compression)]
    layers = {L.name: L for L in space.layers(cand.replace(compression=plan))}
    for part in ("reduce", "expand"):
        L = layers[f"s4.b0.se.{part}"]
        assert (L.pattern, L.sparsity, L.w_bits, L.a_bits, SLOTS[L.slot][0]) == ("block8x1", 0.75, 8, 8, "s4.b0.se")
    assert layers["s4.b0.dw"].pattern == "dense" and layers["s4.b0.dw"].w_bits == 32
    # channel pruning would change the width the SE output scales: not a choice for the se role
    with pytest.raises(ValueError, match="comp:s1.b0.se"):
        bad = list(plan)
        bad[SLOTS.index(("s1.b0.se", "se", 1))] = LayerCompression("channel", 0.5)
        space.validate(cand.replace(compression=bad))


# ----- tied compression slots and limits (mobilenet) ------------------------------------------------
TIE_MENU = dict(patterns=["dense", "unstructured", "nm2:4", "channel"], sparsities=[0.5, 0.75], w_bits=[4, 8, 32], a_bits=[8, 32])


def _group_values(space: MobileNetSpace, cand: Candidate) -> None:
    """Every group's existing slots carry its one choice (or dense at its bits where they cannot
    carry the pattern); slots of absent blocks carry the default."""
    from tritune.spaces.mobilenet.space import slot_block

    genome = space.to_genome(cand)
    default = space.menu.default()
    for name, members in space.groups:
        value = genome[f"comp:{name}"]
        for m in members:
            blk = slot_block(m)
            alive = blk is None or cand["depth"][blk[0]] > blk[1]
            got = cand.compression[m]
            if not alive:
                assert got == default
            else:
                assert got == value or (got == LayerCompression("dense", 0.0, value.w_bits, value.a_bits)
                                        and value not in space.slot_choices(m)), (name, m, got, value)


@pytest.mark.parametrize("tie", ["block", "stage", "role", "all"])
def test_the_sampler_respects_tied_slots_and_limits(tie):
    limits = {"*": {"max_sparsity": 0.5}, "classifier": {"min_w_bits": 8}, "s0.b0.dw": {"patterns": ["dense"]}}
    space = MobileNetSpace(resolutions=(32,), widths=(0.5,), in_channels=1, num_classes=10,
                           compression={**TIE_MENU, "tie": tie, "limits": limits})
    untied = MobileNetSpace(resolutions=(32,), widths=(0.5,), in_channels=1, num_classes=10, compression={**TIE_MENU, "limits": limits})
    comp_genes = [g for g in space.genes() if g.name.startswith("comp:")]
    assert len(comp_genes) == len(space.groups) == {"block": 22, "stage": 7, "role": 7, "all": 1}[tie]
    assert space.encoding_length < untied.encoding_length and space.size() < untied.size()
    rng = np.random.default_rng(0)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: set = set()
    cands = [space.sample(rng) for _ in range(150)]
    cands += [space.mutate(c, rng) for c in cands[:50]] + [space.crossover(a, b, rng) for a, b in zip(cands[:50], cands[50:100])]
    for _ in range(30):
        trial = study.ask()
        cands.append(space.suggest(trial))
        study.tell(trial, 0.0)
    for c in cands:
        assert space.validate(c) == c
        _group_values(space, c)
        for i, comp in enumerate(c.compression):
            assert comp.sparsity <= 0.5
            name = SLOTS[i][0]
            if name == "classifier":
                assert comp.w_bits >= 8
            if name == "s0.b0.dw":
                assert comp.pattern == "dense"
            seen.add(comp.pattern)
        assert untied.validate(c) == c  # a tied candidate is a candidate of the untied space
    assert {"unstructured", "channel"} <= seen and all(len(space.encode(c)) == space.encoding_length for c in cands[:5])
    assert len({space.encode(c).tobytes() for c in cands}) > 100
    # a plan whose tied slots differ is refused, naming the group
    broken = list(cands[0].compression)
    group, members = next((g, m) for g, m in space.groups if len(m) > 1)
    other = next(v for v in space.slot_choices(members[0]) if v != broken[members[0]] and v.pattern == "dense")
    broken[members[0]] = other
    with pytest.raises(ValueError, match=f"comp:{group}"):
        space.validate(cands[0].replace(compression=broken))


def test_tied_size_matches_enumeration_on_a_tiny_configuration():
    tiny = dict(resolutions=(32,), widths=(1.0,), depths=(1, 2), expands=(3,), kernels=(3,))
    two = dict(patterns=["dense", "unstructured"], sparsities=[0.5], w_bits=[32], a_bits=[32])
    for tie, size in (("stage", 2**5 * 2**7), ("role", 2**5 * 2**7), ("block", 4 * (2 + 2**2) ** 5)):
        space = MobileNetSpace(**tiny, compression={**two, "tie": tie})
        enumerated = list(space.enumerate())
        assert len(enumerated) == len(set(enumerated)) == space.size() == size, tie
    # one group: 2^5 depth patterns x its menu (dense, unstructured, N:M; each at w8 and w32)
    space = MobileNetSpace(**tiny, compression={"patterns": ["dense", "unstructured", "nm2:4"], "sparsities": [0.5], "w_bits": [8, 32],
                                                "a_bits": [32], "tie": "all"})
    enumerated = list(space.enumerate())
    assert len(enumerated) == len(set(enumerated)) == space.size() == 2**5 * 6


def test_bad_ties_limits_and_exclusions_name_the_field():
    with pytest.raises(ValueError, match="compression.tie"):
        MobileNetSpace(compression={"tie": "layer"})
    with pytest.raises(ValueError, match="compression.limits: 'nope'"):
        MobileNetSpace(compression={"limits": {"nope": {"min_w_bits": 8}}})
    with pytest.raises(ValueError, match="compression.exclude: 'dwconv' is not a group of tie=stage"):
        MobileNetSpace(compression={"tie": "stage", "exclude": {"dwconv": ["unstructured@0.9/w4a8"]}})
    with pytest.raises(ValueError, match="cannot be excluded"):
        MobileNetSpace(compression={"tie": "role", "exclude": {"dwconv": ["dense@0/w32a32"]}})
    space = MobileNetSpace(compression={"tie": "role", "exclude": {"dwconv": ["unstructured@0.9/w4a8"]}})
    gene = next(g for g in space.genes() if g.name == "comp:dwconv")
    assert "unstructured@0.9/w4a8" not in {c.token for c in gene.choices} and len(gene.choices) == 23
    # configs: an untied space without limits keeps the config it always had
    assert set(MobileNetSpace().config()["compression"]) == {"enabled", "patterns", "sparsities", "w_bits", "a_bits"}
    assert MobileNetSpace(**space.config()).config() == space.config()
