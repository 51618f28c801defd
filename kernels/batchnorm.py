"""Re-estimating BatchNorm statistics after weights or structure change.

Pruning, quantization and weight sharing all shift the activation statistics a BatchNorm layer
has stored; evaluating with stale ones understates what the weights can do (Once-for-All
re-estimates them for every subnet for this reason). Both the pruning loop and the supernet use
this one helper, so the averaging rule is the same everywhere.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def cumulative_batchnorm_stats(model: nn.Module) -> Iterator[list[nn.modules.batchnorm._BatchNorm]]:
    """Reset every BatchNorm's running statistics and average the batches run inside the block
    exactly (``momentum=None``: cumulative mean), restoring each layer's momentum afterwards.
    The caller decides which modules run in training mode while the batches go through."""
    bns = batchnorms(model)
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    try:
        yield bns
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
