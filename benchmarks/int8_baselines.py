"""ONNX Runtime baselines for the integer kernel benchmark: one 1x1 convolution as ``Conv`` (fp32)
and as ``QLinearConv`` with uint8 input and output (what ORT runs for a QDQ-quantized Conv once
its graph optimiser has folded the Q / DQ pairs around it: per-channel int8 weights, int32 bias,
per-tensor uint8 activations). The int8 model is built directly, so its timing holds no float
quantize / dequantize of its input and output -- the integer kernel is compared kernel to kernel.
Imported by the benchmark scripts beside it (``python benchmarks/X.py`` puts this folder on ``sys.path``).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np


def _session(model: Any) -> Any:
    import onnxruntime as ort

    from tritune.targets.ort_cpu import session_options

    return ort.InferenceSession(model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])


def ort_qlinearconv(qw: Any, bias: np.ndarray, in_quant: Any, out_quant: Any, hw: tuple[int, int]) -> Callable[[], Any]:
    """A zero-argument run of the dense layer ``qw`` (a `QuantizedWeight`) as one uint8 ``QLinearConv``."""
    from onnx import TensorProto, helper, numpy_helper

    codes = qw.int_codes()
    O, K = codes.shape[:2]
    bias_q = np.round(bias.astype(np.float64) / (in_quant.scale * qw.scales.astype(np.float64))).astype(np.int32)
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [1, K, hw[0], hw[1]])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, None)
    inits = [numpy_helper.from_array(np.array(in_quant.scale, np.float32), "xs"),
             numpy_helper.from_array(np.array(in_quant.zero_point, np.uint8), "xz"),
             numpy_helper.from_array(codes.reshape(O, K, 1, 1).astype(np.int8), "w"),
             numpy_helper.from_array(qw.scales.astype(np.float32), "ws"),
             numpy_helper.from_array(np.zeros(O, np.int8), "wz"),
             numpy_helper.from_array(np.array(out_quant.scale, np.float32), "ys"),
             numpy_helper.from_array(np.array(out_quant.zero_point, np.uint8), "yz"),
             numpy_helper.from_array(bias_q, "b")]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], kernel_shape=[1, 1])
    model = helper.make_model(helper.make_graph([node], "qconv", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)])
    sess = _session(model)
    feed = {"x": np.random.default_rng(0).integers(0, 256, (1, K, *hw)).astype(np.uint8)}
    return lambda: sess.run(None, feed)


def ort_conv(weight: np.ndarray, bias: np.ndarray, hw: tuple[int, int], relu: bool = True) -> Callable[[], Any]:
    """A zero-argument run of the dense float layer as ONNX ``Conv`` (+ ``Relu``, which ORT fuses)."""
    from onnx import TensorProto, helper, numpy_helper

    O, K = weight.shape[:2]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K, hw[0], hw[1]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(weight.reshape(O, K, 1, 1).astype(np.float32), "w"), numpy_helper.from_array(bias.astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c" if relu else "y"])] + ([helper.make_node("Relu", ["c"], ["y"])] if relu else [])
    sess = _session(helper.make_model(helper.make_graph(nodes, "conv", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)]))
    feed = {"x": np.random.default_rng(0).standard_normal((1, K, *hw)).astype(np.float32)}
    return lambda: sess.run(None, feed)
