"""The mobilenet family: OFA MobileNetV3 genes x per-layer compression, in one folder.

* `space` — genes, the layer IR and the integer code rows (no torch);
* `network` — the torch builder: candidate -> standalone network with masks and fake quantizers;
* `supernet` — the weight-sharing supernet, its sampler, sensitivity table and checkpoints.

Importing this package loads only `space`; the torch parts load when imported.
"""
from .space import MobileNetSpace

__all__ = ["MobileNetSpace"]
