"""Weight-sharing supernet over the joint space of the `mobilenet` space (architecture x per-layer
sparsity x bit-widths).

* `MobileNetSupernet` -- every candidate is one forward pass of shared weights (`network`), built
  from `ElasticLayer` s (`elastic`: leading channels, OFA kernel transforms, cached pattern masks,
  fake quantizers).
* `extract` -- one candidate as a standalone `MobileNetSubnet` (BN folded, masks baked, int8
  codes + scales), equal to the supernet's output for it.
* `CandidateSampler` -- the sandwich ends and random candidates, drawn by the space's own
  sampler (the search's distribution), within a training phase's dimensions and limits.
* `trainable_subnet` -- one candidate as a standalone trainable network (fine-tuning), `deploy`
  -- that network back in `extract`'s deploy form.

`MobileNetSpace.supernet(config)` builds one. Checkpoints (`tritune.spaces.checkpoint`), training
(`tritune.evaluators.supernet_training`) and the accuracy evaluators
(`tritune.evaluators.supernet_accuracy`) serve any family's supernet
(`tritune.spaces.weight_sharing.Supernet`).
"""
from .elastic import QUANT_BITS, DeployWeights, ElasticLayer
from .extract import QuantizedConv2d, QuantizedLinear, extract
from .network import MobileNetSupernet, SupernetConfig
from .sampling import CandidateSampler, restrict_space, with_compression
from .trainable import TrainableSubnet, deploy, trainable_subnet

__all__ = [
    "QUANT_BITS", "CandidateSampler", "DeployWeights", "ElasticLayer", "MobileNetSupernet", "QuantizedConv2d",
    "QuantizedLinear", "SupernetConfig", "TrainableSubnet", "deploy", "extract", "restrict_space",
    "trainable_subnet", "with_compression",
]
