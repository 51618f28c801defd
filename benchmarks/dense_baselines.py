"""The dense contenders every layer benchmark times next to the generated kernels (same run).

``dense_baselines(conv, x)``: a one-thread torch call of ``conv`` and the same layer as a one-layer
model on ``ort-cpu`` (ONNX Runtime, 1 intra-op thread, ORT_ENABLE_ALL), as zero-argument callables
for `tritune.kernels.timing.measure_many`, with their names. Imported by the benchmark scripts
beside it (``python benchmarks/X.py`` puts this folder on ``sys.path``).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np


def dense_baselines(conv: Any, x: np.ndarray) -> tuple[list[Callable[[], None]], list[str]]:
    """``([torch, onnxruntime], ["torch", "onnxruntime"])`` for ``conv`` on input ``x`` ``[C, H, W]``."""
    import torch

    from tritune.targets.ort_cpu import OrtCpuTarget

    xt = torch.from_numpy(np.array(x))[None]

    def torch_dense() -> None:
        with torch.no_grad():
            conv(xt)

    ort = OrtCpuTarget(threads=1).build(conv, input_shape=(1, *x.shape), name="ort")
    return [torch_dense, ort.bench_fn()], ["torch", "onnxruntime"]
