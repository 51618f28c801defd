"""Hardware targets: where latencies come from (published tables now; real runtimes later).

Every target implements `Target` (fingerprint, capabilities, supports, batched latency in ms) and
is created by name through `create_target`; plug-ins register through the ``tritune.targets``
entry-point group.
"""
from .base import CAPABILITY_KEYS, FINGERPRINT_KEYS, Target, check_target
from ..kernels.timing import Measurement, Protocol, measure_many
from .ort_cpu import OrtCpuTarget, OrtRunnable
from .registry import ENTRY_POINT_GROUP, create_target, list_targets, refresh_plugins, register_target
from .tables import (
    DATASETS,
    EMBEDDED_FILE,
    BitFusionLayer,
    BitFusionTable,
    MissingEntryError,
    NB201Table,
    NB201TableTarget,
    TableFormatError,
    accuracy_column,
    clear_table_cache,
    column_sha256,
    nb201_index,
)

__all__ = [
    "BitFusionLayer", "BitFusionTable", "CAPABILITY_KEYS", "DATASETS", "EMBEDDED_FILE", "ENTRY_POINT_GROUP", "FINGERPRINT_KEYS",
    "MissingEntryError", "NB201Table", "NB201TableTarget", "TableFormatError", "Target", "accuracy_column",
    "check_target", "clear_table_cache", "column_sha256", "create_target", "list_targets", "nb201_index", "refresh_plugins",
    "register_target", "Measurement", "OrtCpuTarget", "OrtRunnable", "Protocol", "measure_many",
]
