"""``model.onnx`` of a candidate: its standalone network as onnxruntime's CPU target runs it.

The float graph is the network's `float_network` (deployed weights: masks baked, quantized
weights dequantized; `tritune.spaces.weight_sharing.DeployableNetwork`), exported the way
``ort-cpu`` exports every candidate; then every layer with ``w_bits <= 8`` and ``a_bits <= 8``
is quantized to QDQ with `OrtCpuTarget.build`'s plan (the same nodes, so onnxruntime fuses them
into the same int8 kernels the search timed), with two differences that keep the search's numbers:

* weights keep the supernet's per-channel scales, so the int8 initializers *are* the layer's
  codes -- 4-bit codes included, which int8 holds exactly (the manifest says so per layer);
* a layer whose input the supernet fake-quantized keeps that calibrated uint8 scale and zero
  point; every other tensor (layer outputs, attention operands, inputs of layers the search ran
  in float) is calibrated with MinMax on the images the supernet was recalibrated on.

What the runtime cannot do is written down per layer (`layer_notes`): weight-only layers (w8a32)
run in float on their dequantized weights, so they compute what the search scored but store
float32; inputs of float-weight layers (w32a8) run in float although the search fake-quantized
them; activations below 8 bits run on the 8-bit grid of their calibrated range.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from ...spaces.compression import FLOAT_BITS, INT_MAX_BITS
from ...spaces.layers import LayerSpec
from ...targets.ort_cpu import OrtCpuTarget, OrtRunnable


def int8_layers(layers: Sequence[LayerSpec]) -> list[str]:
    """IR layers onnxruntime runs int8: int8 weights and inputs (``LayerSpec.int_bits``, the
    ``ort-cpu`` target's rule; an attention matmul counts its two operands)."""
    return [L.name for L in layers if L.int_bits < FLOAT_BITS]


def layer_notes(layers: Sequence[LayerSpec]) -> dict[str, dict[str, str]]:
    """How each weight layer runs in ``model.onnx`` (weights, input activation)."""
    notes: dict[str, dict[str, str]] = {}
    for L in layers:
        if not L.has_weights:
            continue
        if L.int_bits < FLOAT_BITS:
            weights = "int8 codes" if L.w_bits == INT_MAX_BITS else f"int8 holding the {L.w_bits}-bit codes exactly"
            act = "uint8, the supernet's calibrated range" + ("" if L.a_bits == INT_MAX_BITS else f" ({L.a_bits}-bit step, 8-bit clipping)")
            notes[L.name] = {"runs_as": "int8 (QDQ)", "weight_storage": weights, "input_activation": act}
        elif L.w_bits <= INT_MAX_BITS:
            notes[L.name] = {"runs_as": "float32 (onnxruntime's int8 kernels need int8 inputs too)",
                             "weight_storage": f"float32 holding the dequantized {L.w_bits}-bit codes", "input_activation": "float32"}
        else:
            act = "float32" if L.a_bits >= FLOAT_BITS else f"float32 (the search fake-quantized it to {L.a_bits} bits; float layers run float here)"
            notes[L.name] = {"runs_as": "float32", "weight_storage": "float32", "input_activation": act}
    return notes


def build_onnx(network: Any, input_shape: Sequence[int], calibration: Sequence[np.ndarray], *, threads: int = 1,
               exporter: str = "torchscript") -> OrtRunnable:
    """``model.onnx`` of a `DeployableNetwork` as an `OrtRunnable` (``onnx_bytes`` is the file);
    ``calibration``: single inputs of ``input_shape`` (the recalibration images at its input size)."""
    target = OrtCpuTarget(threads=threads, exporter=exporter)
    layers = int8_layers(network.layers)
    kept = network.quantization()
    keep = {name: kept[name] for name in layers if name in kept}
    return target.build(network.float_network(), input_shape=tuple(input_shape), quantize=layers, calibration=list(calibration),
                        layer_quantization=keep or None, name="model.onnx")


# ----- per-layer profile ------------------------------------------------------------------------
_SUFFIX_LAYERS = {"Add": "add", "Mul": "scale", "GlobalAveragePool": "pool"}
#: Profiled inferences left out at the start (first-run allocations).
WARMUP_RUNS = 5


def _layer_of(node_name: str, layers: set[str]) -> str | None:
    """IR layer of a profiled node (``/s0/b1/expand/conv/Conv_token_3`` -> ``s0.b1.expand``)."""
    if not node_name.startswith("/"):
        return None
    parts = node_name.strip("/").split("/")
    path, last = ".".join(parts[:-1]), parts[-1]
    for op, suffix in _SUFFIX_LAYERS.items():
        if last.startswith(op) and f"{path}.{suffix}".strip(".") in layers:
            return f"{path}.{suffix}".strip(".")
    while path:
        if path in layers:
            return path
        path = path.rpartition(".")[0]
    return None


def ort_layer_profile(onnx_bytes: bytes, layer_names: Sequence[str], x: np.ndarray, *, threads: int = 1,
                      runs: int = 50) -> dict[str, Any]:
    """Per IR layer, the median over ``runs`` inferences of its kernels' time in onnxruntime's own
    profiler (ms). Kernels without a module path (layout reorders, transposes, some Q/DQ) count
    for the layer that ran before them: they are the cost of the boundary that layer's output
    crosses."""
    import onnxruntime as ort

    from ...targets.ort_cpu import session_options

    names = set(layer_names)
    with tempfile.TemporaryDirectory(prefix="tritune-profile-") as tmp:
        so = session_options(threads)
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}
        for _ in range(WARMUP_RUNS + runs):
            session.run(None, feed)
        with open(session.end_profiling()) as fh:
            events = json.load(fh)
    runs_at = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    runs_at = runs_at[WARMUP_RUNS:]
    per_run: list[dict[str, float]] = [defaultdict(float) for _ in runs_at]
    last: dict[int, str] = {}
    starts = [a for a, _ in runs_at]
    for e in sorted(events, key=lambda e: e.get("ts", 0)):
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        i = int(np.searchsorted(starts, e["ts"], side="right")) - 1
        if i < 0 or e["ts"] > runs_at[i][1]:
            continue
        layer = _layer_of(e["name"][: -len("_kernel_time")], names) or last.get(i) or layer_names[0]
        per_run[i][layer] += float(e.get("dur", 0)) / 1e3
        last[i] = layer
    per_layer = {name: float(np.median([r.get(name, 0.0) for r in per_run])) for name in layer_names} if per_run else {}
    return {"source": f"onnxruntime {ort.__version__} profiler: kernel time per node, median of {runs} runs; "
                      "kernels without a module path count for the layer before them",
            "ms": per_layer, "runs": len(per_run)}
