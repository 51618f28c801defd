"""The vit family: small vision transformers x token pruning x per-layer compression, in one folder.

* `space` — genes, the layer IR (attention matmuls, layer norms, token selection; no torch);
* `network` — the torch builder: candidate -> standalone network with token pruning and masks.

Importing this package loads only `space`.
"""
from .space import ViTSpace

__all__ = ["ViTSpace"]
