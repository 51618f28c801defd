"""Latency / energy predictors: estimators with a scikit-learn shape that know their target and error.

* `FewShotLatencyPredictor` -- NAS-Bench-201 latency on a new device from ~10 measurements,
  with a device prior learned from other devices (and `design` to pick which cells to measure).
* `LayerwiseTablePredictor` -- per-network latency or energy as a sum over layers, from a
  per-layer table (BitFusion) with an XGBoost regressor for layers the table lacks.
* `LayerwiseLatencyPredictor` -- ONNX Runtime CPU latency as a sum of fused-kernel costs (kernels
  from `fusion.kernels` with rules measured on the runtime) plus a per-model correction.
* `WholeModelPredictor` -- XGBoost on the candidate encoding (``space.encode``), the baseline.
* `AccuracyPredictor` -- the same model for accuracy (fitted on evaluated candidates).
* `score_report` -- the error summary every predictor is judged and shipped with.
* `load(path, expected_fingerprint=None)` -- read any saved predictor (signed JSON, see `io`).
"""
from .base import NotFittedError, Predictor
from .fewshot import DevicePrior, FewShotLatencyPredictor, fit_device_prior
from .fusion import DEFAULT_RULES, KERNEL_TYPES, FusionRules, Kernel, KernelBatch, detect_fusion_rules, kernels
from .io import FORMAT, SCHEMA, PredictorFileError, load
from .layerwise_table import (
    KEY_FIELDS,
    LayerBatch,
    LayerwiseTablePredictor,
    bitfusion_fingerprint,
    bitfusion_key,
    table_arrays,
)
from .metrics import REPORT_KEYS, score_report
from .nb201_features import FEATURE_NAMES as NB201_FEATURE_NAMES
from .nb201_features import nb201_features
from .ort_layerwise import LayerwiseLatencyPredictor
from .whole_model import WholeModelPredictor
from .accuracy import AccuracyPredictor
from .registry import PREDICTORS, predictor_class, register_predictor

__all__ = [
    "AccuracyPredictor", "DEFAULT_RULES", "FusionRules", "KERNEL_TYPES", "Kernel", "KernelBatch", "LayerwiseLatencyPredictor", "WholeModelPredictor",
    "detect_fusion_rules", "kernels",
    "DevicePrior", "FORMAT", "FewShotLatencyPredictor", "KEY_FIELDS", "LayerBatch", "LayerwiseTablePredictor",
    "NB201_FEATURE_NAMES", "NotFittedError", "PREDICTORS", "Predictor", "PredictorFileError", "REPORT_KEYS", "SCHEMA",
    "bitfusion_fingerprint", "bitfusion_key", "fit_device_prior", "load", "nb201_features", "predictor_class",
    "register_predictor", "score_report", "table_arrays",
]
