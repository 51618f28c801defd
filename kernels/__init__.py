"""Sparsity patterns, quantizers and compiled sparse / low-bit kernels (compression issue). Nothing here yet."""
