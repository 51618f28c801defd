"""Menus narrowed before a search: a target's `runs_as` takes off the choices it gives no speed of
their own, and that claim holds in the models the target builds."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from tritune.spaces import MobileNetSpace
from tritune.spaces.compression import LayerCompression
from tritune.spaces.screens import runs_as_exclusions, with_exclusions
from tritune.targets.codegen_cpu import CodegenCpuTarget
from tritune.targets.ort_cpu import OrtCpuTarget

MENU = dict(patterns=["dense", "nm2:4", "block8x1", "channel", "unstructured"], sparsities=[0.5, 0.75], w_bits=[4, 8, 32],
            a_bits=[8, 32])


def space(tie: str = "role", **menu) -> MobileNetSpace:
    return MobileNetSpace(resolutions=(16,), widths=(0.25, 0.5), depths=(1, 2), expands=(3, 4), kernels=(3,), in_channels=1,
                          num_classes=10, compression={**MENU, **menu, "tie": tie})


def comp_genes(s: MobileNetSpace) -> list:
    return [g for g in s.genes() if g.name.startswith("comp:")]


@pytest.mark.parametrize("choice, expected", [
    (("dense", 0.0, 32, 32), ("dense", 0.0, 32, 32)),
    (("block8x1", 0.75, 8, 8), ("dense", 0.0, 8, 8)),
    (("nm2:4", 0.5, 32, 8), ("dense", 0.0, 32, 32)),
    (("channel", 0.5, 8, 32), ("channel", 0.5, 32, 32)),
    (("channel", 0.75, 4, 8), ("channel", 0.75, 8, 8)),
    (("unstructured", 0.5, 4, 32), ("dense", 0.0, 32, 32)),
])
def test_ort_cpu_runs_masks_at_dense_speed_and_int8_only_with_8_bit_inputs(choice, expected):
    assert OrtCpuTarget().runs_as(LayerCompression(*choice)) == LayerCompression(*expected)


def test_codegen_cpu_keeps_its_sparse_patterns_and_runs_one_sided_quantization_in_float():
    target = CodegenCpuTarget()
    assert target.runs_as(LayerCompression("block8x1", 0.75, 8, 8)) == LayerCompression("block8x1", 0.75, 8, 8)
    assert target.runs_as(LayerCompression("nm2:4", 0.5, 8, 32)) == LayerCompression("nm2:4", 0.5, 32, 32)
    assert target.runs_as(LayerCompression("dense", 0.0, 3, 8)) == LayerCompression("dense", 0.0, 4, 8)


@pytest.mark.parametrize("tie", ["role", "none"])
def test_only_choices_that_run_as_themselves_stay_and_each_dropped_one_has_its_twin_on_the_menu(tie):
    full = space(tie)
    runs_as = OrtCpuTarget().runs_as
    exclude = runs_as_exclusions(full, runs_as)
    fast = with_exclusions(full, exclude)
    assert exclude and fast.size() < full.size()
    before = {g.name: g.choices for g in comp_genes(full)}
    for gene in comp_genes(fast):
        assert all(runs_as(c) == c for c in gene.choices), gene.name
        dropped = set(before[gene.name]) - set(gene.choices)
        assert {c.token for c in dropped} == set(exclude.get(gene.name[5:], ()))
        assert all(runs_as(c) in gene.choices for c in dropped)
        assert gene.choices[0] == LayerCompression()  # dense float always stays
    rng = np.random.default_rng(0)
    for _ in range(20):  # the narrowed space's candidates are candidates of the job's space
        candidate = fast.sample(rng)
        assert full.validate(candidate) == candidate


def test_a_target_that_runs_every_choice_as_itself_drops_nothing():
    full = space()
    assert runs_as_exclusions(full, lambda c: c) == {}


def test_exclusions_add_to_what_the_menu_already_excludes():
    full = space(exclude={"se": ["dense@0/w8a8"]})
    fast = with_exclusions(full, runs_as_exclusions(full, OrtCpuTarget().runs_as))
    assert "dense@0/w8a8" in fast.menu.excluded("se")
    assert "nm2:4@0.5/w32a32" in fast.menu.excluded("se")


def graph_signature(model_bytes: bytes) -> list:
    """What onnxruntime executes: op types in order, and the shapes of the weights they read."""
    model = onnx.load_from_string(model_bytes)
    dims = {init.name: tuple(init.dims) for init in model.graph.initializer}
    return [(node.op_type, tuple(dims.get(name) for name in node.input)) for node in model.graph.node]


def test_on_ort_cpu_a_dropped_choice_builds_the_same_graph_as_its_twin():
    full, target = space(), OrtCpuTarget()
    rng = np.random.default_rng(3)
    checked = 0
    while checked < 2:
        candidate = full.sample(rng)
        genome = full.to_genome(candidate)
        twin_genome = {k: target.runs_as(v) if isinstance(v, LayerCompression) else v for k, v in genome.items()}
        twin = full.from_genome(full.canonical_genome(twin_genome))
        if twin == candidate:
            continue
        assert graph_signature(target.build(candidate, full).onnx_bytes) == graph_signature(target.build(twin, full).onnx_bytes)
        checked += 1
