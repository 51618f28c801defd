"""Images as a network of a given input size takes them."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_input(x: torch.Tensor, size: int) -> torch.Tensor:
    """Images ``x`` (N, C, H, W) at ``size`` x ``size``: bilinear, antialiased when shrinking,
    unchanged when already that size. Every family's networks and supernets resize with this, so
    a data set of any size feeds any candidate the same way."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=bool(size < max(x.shape[-2:])))
