"""Sparsity patterns, packed formats, quantizers and compiled sparse kernels."""
from .formats import FORMAT_VERSION, PackedWeight, pack
from .patterns import DEFAULT_KERNEL_PATTERNS, achieved_sparsity, check_mask, kernel_library, make_mask

__all__ = [
    "DEFAULT_KERNEL_PATTERNS", "FORMAT_VERSION", "PackedWeight", "achieved_sparsity", "check_mask", "kernel_library",
    "make_mask", "pack",
]
