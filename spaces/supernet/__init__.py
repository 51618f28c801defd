"""Weight-sharing supernet over the joint space of the `mobilenet` space (architecture x per-layer
sparsity x bit-widths).

* `MobileNetSupernet` -- every candidate is one forward pass of shared weights (`network`), built
  from `ElasticLayer` s (`elastic`: leading channels, OFA kernel transforms, cached pattern masks,
  fake quantizers).
* `extract` -- one candidate as a standalone `MobileNetSubnet` (BN folded, masks baked, int8
  codes + scales), equal to the supernet's output for it.
* `CandidateSampler` -- the sandwich ends and random candidates, drawn by the space's own
  sampler (the search's distribution), within a training phase's dimensions and limits.
* `SensitivityTable` -- per-gene accuracy drops of a trained supernet (stored in its
  checkpoint), their sum per candidate and the choices to exclude (`screened_space`).
* `save_checkpoint` / `load_checkpoint` -- safetensors + JSON header.
* `trainable_subnet` -- one candidate as a standalone trainable network (fine-tuning), `deploy`
  -- that network back in `extract`'s deploy form.

Training lives in `tritune.evaluators.supernet_training`, accuracy evaluators in
`tritune.evaluators.supernet_accuracy`.
"""
from .checkpoint import FORMAT, SCHEMA, Checkpoint, CheckpointError, build_supernet, load_checkpoint, read_header, save_checkpoint
from .elastic import QUANT_BITS, DeployWeights, ElasticLayer
from .extract import QuantizedConv2d, QuantizedLinear, extract
from .network import MobileNetSupernet, SupernetConfig, resize_input
from .sampling import ARCHITECTURE, DIMENSIONS, LOWER_ENDS, CandidateSampler, restrict_space, with_compression
from .sensitivity import SensitivityTable, screened_space
from .trainable import TrainableSubnet, deploy, trainable_subnet

__all__ = [
    "DIMENSIONS", "FORMAT", "QUANT_BITS", "SCHEMA", "CandidateSampler", "Checkpoint", "CheckpointError", "DeployWeights",
    "ElasticLayer", "MobileNetSupernet", "QuantizedConv2d", "QuantizedLinear", "SupernetConfig", "build_supernet",
    "extract", "load_checkpoint", "read_header", "resize_input", "save_checkpoint", "with_compression",
    "TrainableSubnet", "deploy", "trainable_subnet",
    "ARCHITECTURE", "LOWER_ENDS", "SensitivityTable", "restrict_space", "screened_space",
]
