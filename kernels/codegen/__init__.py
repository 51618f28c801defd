"""Generated C kernels for sparse layers: lower, generate, compile (cached by content), load, autotune.

    from tritune.kernels import make_mask, pack
    from tritune.kernels.codegen import compile_layer, autotune, aligned_empty

    packed = pack(w * mask, "block8x1", mask)
    kernel = compile_layer(packed, "conv1x1", in_hw=(28, 28), bias=b, act="relu")
    y = kernel.run(x)                       # x: float32 [C, H, W], y: [O, H, W]
    best = autotune(packed, "conv1x1", (28, 28), bias=b, act="relu").kernel

Modules: `compiler` (find / probe the C compiler, cached builds), `plan` (geometry and lowering
of a packed weight to a loop nest), `generate` (the C source), `runtime` (`compile_layer`,
`CompiledKernel`), `autotune` (variants timed, choice recorded), `depthwise` (generated depthwise
convolutions), `chain` (a whole network as one C call, element-wise ops), `fused` (inverted-residual
blocks run band by band of rows).
"""
from .autotune import TuneResult, autotune, candidate_variants
from .compiler import CompilerError, cache_dir, compiler_available, find_compiler, openmp_supported, vector_width
from .generate import Variant
from .runtime import CompiledKernel, aligned_empty, compile_layer, default_variant

__all__ = [
    "CompiledKernel", "CompilerError", "TuneResult", "Variant", "aligned_empty", "autotune", "cache_dir", "candidate_variants",
    "compile_layer", "compiler_available", "default_variant", "find_compiler", "openmp_supported", "vector_width",
]
