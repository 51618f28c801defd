"""``codegen-cpu``: a whole compressed mobilenet run layer by layer on generated C kernels.

ONNX Runtime executes pruned weights at dense speed; this target runs each layer on a kernel
generated for *its* sparsity pattern (`tritune.kernels.codegen`), so block / unstructured / N:M /
kernel-pattern sparsity turns into latency.

Build (`CodegenCpuTarget.build`) from a candidate of a mobilenet space (via
`tritune.spaces.mobilenet.network.build_subnet`) or from a `MobileNetSubnet` already built or
extracted from a supernet (`tritune.spaces.mobilenet.supernet.extract`; the ``weight_mask`` buffer gives
the pattern's structure):

1. walk the layer IR (``net.layers``, execution order) and plan one op list; every activation
   buffer is allocated once, 64-byte aligned (`aligned_empty`), and reused after its last reader;
2. 1x1 convolutions, the 3x3 stem and the linear layers (SE reduce / expand too) are packed in
   the pattern the IR names for them (`tritune.kernels.formats.pack`) and compiled with bias and
   activation fused (`compile_layer`, or `autotune` with ``autotune=True``); dense and
   channel-pruned layers (physically narrower) run on the generated dense 8x1-block kernel;
3. depthwise convolutions run on generated depthwise kernels (`kernels.codegen.depthwise`); a
   depthwise kernel followed by a squeeze-excite pool also writes the channel means, so the
   pool costs no pass over the tensor; other global pools, the SE channel multiply, residual
   adds and dense linear layers too large to compile as constants run on the small element-wise
   C library of `kernels.codegen.chain`;
4. blocks whose expanded tensor has at least ``fuse_min_bytes`` (default 1 MiB) run fused
   (`tritune.kernels.codegen.fused`): expand -> depthwise -> project band after band of rows, the
   expanded tensor kept in a ring of rows that stays in L2 (squeeze-excite blocks: expand ->
   depthwise with its pool); the first block, when its input is that large, is fused with the
   stride-2 stem that produces it (stem -> depthwise -> project, and the residual sum from the
   ring), so the network's first tensor never exists in full; ``fuse_min_bytes=None`` never fuses;
5. every op is a C step with one calling convention, and the whole network runs as one
   `OpChain`: one ctypes call per inference, no Python or numpy between ops.

`CodegenRunnable.run(x)` returns the logits; ``bench_fn()`` is what `tritune.kernels.timing`
times; ``plan`` lists each op (name, family, variant, compile seconds); ``profile()`` times each
op alone, for a breakdown of where the time goes.

Export: `save_exported(runnable, net, DIR)` writes the shared libraries a network runs
(``DIR/kernels``), its packed weights (``DIR/weights.npz``, no pickle) and ``DIR/codegen.json``;
`load_exported(DIR)` runs them again from Python without compiling (``tritune export --target
codegen-cpu`` writes such folders).

Layers with ``w_bits <= 8`` and ``a_bits <= 8`` run on the integer kernels
(`tritune.targets.codegen_int8`); the others run float32 (lower weight bits dequantized).
Batch 1. ``threads > 1`` parallelises the generated conv / linear kernels with OpenMP; depthwise
kernels and element-wise ops stay on one thread.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from importlib import metadata
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..spaces.candidate import Candidate
from ..spaces.compression import FLOAT_BITS, INT_MAX_BITS, LayerCompression, integer_bits
from .base import Target
from ..kernels.timing import Measurement, Protocol, measure_target, torch_threads
from .space_support import SUPPORTED_SPACES, BuildsMobileNets
from .ort_cpu import cpu_fingerprint

#: Patterns running on generated sparse kernels, per layer kind (see `capabilities`).
SPARSE_PATTERNS = {
    "conv1x1": ["block", "unstructured", "nm", "gather_scatter"],
    "linear": ["block", "unstructured", "nm", "gather_scatter"],
    "conv3x3": ["kernel_pattern", "block", "unstructured", "nm", "gather_scatter"],
}


#: Blocks whose expanded tensor (the depthwise layer's input) has at least this many bytes run
#: fused (`tritune.kernels.codegen.fused`): larger tensors leave the caches while a network runs.
FUSE_MIN_BYTES = 1 << 20
#: Groups of a profile measured per fresh process (8 groups of 8 models: about a quarter of a
#: process's memory mappings; see `CodegenCpuTarget.groups_per_process`).
GROUPS_PER_PROCESS = 8

#: Dense linear layers with more weights run on numpy's BLAS: a matrix-vector product is memory
#: bound either way, and a generated kernel would carry megabytes of weights as C source
#: (feature_mix of the largest net: 1.8M weights, minutes of compilation).
BLAS_LINEAR_WEIGHTS = 1 << 18


def _version() -> str:
    try:
        return metadata.version("tritune")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class Op:
    """One planned step: ``step`` (a C function and its buffers) runs it; the rest describes it."""

    name: str
    family: str
    kind: str
    step: Any = field(repr=False)  # `tritune.kernels.codegen.chain.CStep`
    keep: Any = field(repr=False)  # the kernel / library owning the step's code and workspace
    pattern: str = "dense"
    variant: str = ""
    compile_s: float = 0.0
    cached: bool = False
    #: 8: the integer kernels (uint8 activations, int8 / 4-bit weights); 32: float
    bits: int = 32

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "kind": self.kind, "pattern": self.pattern,
                "variant": self.variant, "compile_s": round(self.compile_s, 4), "cached": self.cached, "bits": self.bits}


@dataclass(eq=False)
class CodegenRunnable:
    """A planned network: ``run(x)`` -> logits, ``bench_fn()`` for timing, ``plan`` per op."""

    name: str
    ops: list[Op]
    input_shape: tuple[int, ...]
    threads: int
    candidate: Candidate | None
    build_s: dict[str, float]
    autotuned: bool
    _input: np.ndarray = field(repr=False)
    _output: np.ndarray = field(repr=False)
    _buffers: list[np.ndarray] = field(default_factory=list, repr=False)
    _chain: Any = field(default=None, repr=False)
    #: the packed weight each conv / linear layer runs with, by layer name (what an export saves)
    packed: dict[str, Any] = field(default_factory=dict, repr=False)
    #: the building target's ``fuse_min_bytes`` (which blocks run fused)
    fuse_min_bytes: int | None = FUSE_MIN_BYTES
    #: the torch network this runnable computes (with fake quantizers where layers run int8): its
    #: forward is the reference the compiled network is checked against
    net: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from ..kernels.codegen.chain import OpChain

        self._chain = OpChain([op.step for op in self.ops], keep=[self._buffers, [op.keep for op in self.ops]])

    @property
    def plan(self) -> list[dict[str, Any]]:
        return [op.describe() for op in self.ops]

    def libraries(self) -> list[str]:
        """Paths of the shared libraries this network runs: every generated kernel's and the
        element-wise library that chains them."""
        paths = {str(self._chain._lib._name)}
        for op in self.ops:
            parts = [getattr(op.keep, role, None) for role in ("stem", "expand", "depthwise", "project")] \
                if hasattr(op.keep, "depthwise") else [op.keep]
            for part in parts:
                library = getattr(part, "library", None)
                if library:
                    paths.add(str(library))
        return sorted(paths)

    def _forward(self) -> None:
        self._chain()

    def run(self, x: Any) -> np.ndarray:
        """Logits ``[1, classes]`` for one input ``[1, C, H, W]`` (numpy or torch)."""
        arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        if tuple(arr.shape) != self.input_shape:
            raise ValueError(f"x: shape {tuple(arr.shape)} not allowed; allowed: {self.input_shape} (batch 1)")
        self._input[...] = arr.reshape(self._input.shape)
        self._forward()
        return self._output.copy().reshape(1, -1)

    def example_input(self, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal(self.input_shape, dtype=np.float32)

    def bench_fn(self) -> Callable[[], None]:
        """Runs the network once on the input currently in its buffer (a seeded one at first)."""
        self._input[...] = self.example_input().reshape(self._input.shape)
        return self._chain

    def profile(self, repeats: int = 20) -> list[dict[str, Any]]:
        """Per op, in plan order: ``ms`` the median time inside whole inferences (timed in C
        between steps; caches as the rest of the network leaves them) and ``alone_ms`` the median
        time of the op run alone, again and again (its data stays in cache)."""
        self.bench_fn()()
        inside = self._chain.timed(repeats)
        out = []
        clock = time.perf_counter
        for op, t_in in zip(self.ops, inside):
            alone = op.step.bound()
            ts = []
            for _ in range(repeats):
                t0 = clock()
                alone()
                ts.append(clock() - t0)
            out.append({**op.describe(), "ms": float(t_in) * 1e3, "alone_ms": float(np.median(ts)) * 1e3})
        return out

    def step_times(self, repeats: int = 20) -> list[dict[str, Any]]:
        """Per op, in plan order: name, kind, bits and ``ms``, its median time inside whole
        inferences (what `tritune.targets.profiling` records for the codegen-cpu predictor)."""
        self.bench_fn()()
        inside = self._chain.timed(repeats)
        return [{"name": op.name, "kind": op.kind, "bits": op.bits, "ms": float(t) * 1e3} for op, t in zip(self.ops, inside)]


#: Activation range of every quantizer of a layer-seeded build (``weights="layer"``).
LAYER_SEEDED_RANGE = (-4.0, 4.0)


def _layer_seeded(net: Any) -> Any:
    """``net`` with every weight layer's weight and bias drawn from a generator seeded by the
    layer's configuration (its pattern's mask applied), so equal layers get equal values."""
    import zlib

    import torch

    from ..kernels.patterns import make_mask
    from ..spaces.compression import parse_pattern

    modules = dict(net.named_modules())
    with torch.no_grad():
        for L in net.layers:
            if not L.has_weights:
                continue
            op = modules[L.name].conv if hasattr(modules[L.name], "conv") else modules[L.name].linear
            key = json.dumps([L.op, L.in_channels, L.out_channels, L.kernel, L.groups, L.stride, L.pattern, L.sparsity, L.act])
            gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
            w = torch.randn(op.weight.shape, generator=gen) / max(1.0, float(op.weight[0].numel())) ** 0.5
            if parse_pattern(L.pattern).family not in ("dense", "channel") and L.sparsity > 0:
                w = w * make_mask(w, L.pattern, L.sparsity)
            op.weight.copy_(w)
            op.bias.copy_(torch.randn(op.bias.shape, generator=gen) * 0.05)
    return net


class _Buffers:
    """Activation buffers allocated once: a released buffer is reused by a later op of no larger size."""

    def __init__(self) -> None:
        from ..kernels.codegen import aligned_empty

        self._new = aligned_empty
        self.all: list[np.ndarray] = []
        self.free: list[np.ndarray] = []

    def get(self, shape: Sequence[int], dtype: Any = np.float32) -> np.ndarray:
        """A buffer of ``shape`` (float32, or uint8 codes viewing a float buffer; 64 bytes of
        slack past the end, which integer kernels may read)."""
        dtype = np.dtype(dtype)
        if dtype != np.float32:
            return self._bytes(int(np.prod(shape)) * dtype.itemsize, dtype, shape)
        n = int(np.prod(shape))
        fits = [b for b in self.free if b.size >= n]
        if fits:
            flat = min(fits, key=lambda b: b.size)
            self.free = [b for b in self.free if b is not flat]
        else:
            flat = self._new((n,))
            flat[:] = 0.0
            self.all.append(flat)
        return flat[:n].reshape(tuple(shape))

    def _bytes(self, n_bytes: int, dtype: Any, shape: Sequence[int]) -> np.ndarray:
        flat = self.get((-(-n_bytes // 4) + 16,))
        return flat.view(np.uint8)[:n_bytes].view(dtype).reshape(tuple(shape))

    def release(self, view: np.ndarray) -> None:
        base = view.base if view.base is not None else view
        for b in self.all:
            if b is base or np.shares_memory(b, view):
                if not any(f is b for f in self.free):
                    self.free.append(b)
                return


def _conv_kind(L: Any, shape: Sequence[int], linear: bool) -> tuple[str, tuple[int, int] | None]:
    """The generated kernel kind of conv / linear layer ``L`` and its input grid (``shape``: the
    input's ``(C, H, W)``); other convolutions are refused."""
    if linear:
        return "linear", None
    if L.groups == 1 and L.kernel in (1, 3):
        return f"conv{L.kernel}x{L.kernel}", (shape[1], shape[2])
    raise ValueError(f"codegen-cpu: layer {L.name}: conv with kernel {L.kernel}, groups {L.groups} not allowed; "
                     "allowed: 1x1 / 3x3 full convolutions, depthwise k 3/5/7")


def _act_name(module: Any) -> str:
    from torch import nn

    act = getattr(module, "act", None)
    if act is None:
        return "none"
    for cls, name in ((nn.ReLU, "relu"), (nn.Hardswish, "hswish"), (nn.Hardsigmoid, "hsigmoid")):
        if isinstance(act, cls):
            return name
    raise ValueError(f"codegen-cpu: activation {type(act).__name__} of {module!r} not allowed; allowed: ReLU, Hardswish, Hardsigmoid")


def _weights(module: Any) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Float weight, bias and structure mask of a ConvAct / LinearAct (plain or extracted/quantized)."""
    op = module.conv if hasattr(module, "conv") else module.linear
    w = op.dequantized_weight() if hasattr(op, "dequantized_weight") else op.weight
    mask = getattr(op, "weight_mask", None)
    to = lambda t: None if t is None else np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)  # noqa: E731
    w_np, m_np = to(w), to(mask)
    if m_np is not None:
        w_np = w_np * (m_np != 0)
    return w_np, to(op.bias), None if m_np is None else m_np != 0


class CodegenCpuTarget(BuildsMobileNets, Target):
    """Generated sparse C kernels on this CPU (float32 and int8), timed with `Protocol`.

    ``calibration_samples``: seeded standard-normal inputs a candidate's activation ranges are
    calibrated on (its weights are random too; pass ``calibration`` to `build` for real data).
    ``weights``: ``"candidate"`` (weights seeded by the candidate, as `build_subnet` makes them)
    or ``"layer"`` (weights seeded by each layer's configuration, activation grids fixed instead of
    calibrated): layers of equal configuration then generate the same C source, so a profile of
    many candidates compiles each layer configuration once (`for_profiling`). Latency does not
    depend on the values, so both give the same numbers and the same fingerprint."""

    name = "codegen-cpu"
    description = "Generated sparse C kernels on this CPU (float32 and int8): runs whole compressed mobilenet candidates layer by layer"

    def __init__(self, threads: int = 1, seed: int = 0, autotune: bool = False, cc: str | None = None,
                 cache_dir: str | None = None, protocol: Protocol | dict | None = None,
                 fuse_min_bytes: int | None = FUSE_MIN_BYTES, calibration_samples: int = 4, weights: str = "candidate") -> None:
        if isinstance(calibration_samples, bool) or not isinstance(calibration_samples, int) or calibration_samples < 1:
            raise ValueError(f"codegen-cpu.calibration_samples: {calibration_samples!r} not allowed; allowed: an integer >= 1")
        if weights not in ("candidate", "layer"):
            raise ValueError(f"codegen-cpu.weights: {weights!r} not allowed; allowed: candidate, layer")
        self.calibration_samples, self.weights = calibration_samples, weights
        #: candidates `tritune.targets.profiling.profile` may build at once (compilation runs in subprocesses)
        self.parallel_builds = 2
        #: groups of models a profile measures per fresh process: each model loads tens of compiled
        #: libraries, which stay mapped, and a process holds about 65k memory mappings
        self.groups_per_process = GROUPS_PER_PROCESS
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"codegen-cpu.threads: {threads!r} must be an integer >= 1")
        if not isinstance(autotune, bool):
            raise ValueError(f"codegen-cpu.autotune: {autotune!r} not allowed; allowed: True, False")
        if fuse_min_bytes is not None and (isinstance(fuse_min_bytes, bool) or not isinstance(fuse_min_bytes, int) or fuse_min_bytes < 0):
            raise ValueError(f"codegen-cpu.fuse_min_bytes: {fuse_min_bytes!r} not allowed; allowed: an integer >= 0, or None (never fuse)")
        self.fuse_min_bytes = fuse_min_bytes
        self.threads, self.seed, self.autotune, self.cc, self.cache_dir = threads, int(seed), autotune, cc, cache_dir
        if isinstance(protocol, dict):
            protocol = Protocol.from_json(protocol)
        self.protocol = protocol or Protocol(threads=threads)
        if self.protocol.threads != threads:
            raise ValueError(f"codegen-cpu: protocol.threads={self.protocol.threads} differs from threads={threads}")

    def for_profiling(self) -> "CodegenCpuTarget":
        """The same target building with layer-seeded weights (``weights="layer"``): what a profile
        of many candidates uses, so each layer configuration compiles once."""
        twin = CodegenCpuTarget(self.threads, self.seed, self.autotune, self.cc, self.cache_dir, self.protocol, self.fuse_min_bytes,
                                self.calibration_samples, weights="layer")
        twin.parallel_builds, twin.groups_per_process = self.parallel_builds, self.groups_per_process
        return twin

    # ----- identity -----------------------------------------------------------------------
    def available(self) -> bool:
        """Whether a working C compiler is found (``$CC`` or cc/gcc/clang)."""
        from ..kernels.codegen import compiler_available

        return compiler_available(self.cc)

    def unavailable_reason(self) -> str | None:
        """Why the target cannot build (None when it can)."""
        from ..kernels.codegen import CompilerError, compiler_available, find_compiler

        try:
            comp = find_compiler(self.cc)
        except CompilerError as exc:
            return str(exc)
        if not compiler_available(self.cc):
            return f"C compiler {' '.join(comp.command)!r} cannot build a shared library"
        return None

    def fingerprint(self) -> dict[str, Any]:
        from ..kernels.codegen import CompilerError, find_compiler, vector_width
        from ..kernels.codegen.compiler import BASE_FLAGS, OPENMP_FLAG
        from ..kernels.codegen.csource import KERNELS_REVISION

        cpu = cpu_fingerprint()
        try:
            comp = find_compiler(self.cc)
            banner, command, lanes = comp.version, " ".join(comp.command), vector_width(self.cc)
        except CompilerError as exc:
            banner, command, lanes = f"unavailable: {exc}", None, None
        flags = list(BASE_FLAGS) + ([OPENMP_FLAG] if self.threads > 1 else [])
        return {
            "target": self.name, "device": cpu["model"], "runtime": "tritune generated C", "version": _version(),
            "kernels_revision": KERNELS_REVISION,
            "threads": self.threads, "cpu": cpu, "isa": cpu["isa"], "compiler": command, "compiler_version": banner,
            "flags": flags, "vector_width": lanes, "autotune": self.autotune, "fuse_min_bytes": self.fuse_min_bytes,
        }

    def runs_as(self, choice: LayerCompression) -> LayerCompression:
        """Weight-only or activation-only quantization runs as float; integer layers compute
        4-bit codes (2-4 bit weights) or 8-bit codes (5-8 bit weights) on 8-bit inputs."""
        if integer_bits(choice.w_bits, choice.a_bits) == FLOAT_BITS:
            return LayerCompression(choice.pattern, choice.sparsity, FLOAT_BITS, FLOAT_BITS)
        return LayerCompression(choice.pattern, choice.sparsity, 4 if choice.w_bits <= 4 else INT_MAX_BITS, INT_MAX_BITS)

    def capabilities(self) -> dict[str, Any]:
        return {
            "spaces": list(SUPPORTED_SPACES),
            "patterns": ["dense", "channel", "block", "unstructured", "nm", "gather_scatter", "kernel_pattern"],
            # which patterns run on generated sparse kernels, per layer kind; everything else dense
            "sparse_kernels": {k: list(v) for k, v in SPARSE_PATTERNS.items()},
            "dense_kernels": {"dwconv": "generated depthwise (k 3/5/7, stride 1/2)", "channel": "generated dense on the kept channels",
                              "global_pool/add/mul": "generated element-wise C (kernels.codegen.chain)"},
            "fused_blocks": "expand -> depthwise -> project over bands of rows when the expanded tensor has >= fuse_min_bytes",
            "bit_widths": [4, 8, 32],
            "int8_layers": "w_bits <= 8 and a_bits <= 8: generated integer kernels (uint8 activations on each layer's calibrated "
                           "grid, int8 / 4-bit weights per output channel; AVX-512 VNNI, AVX2, portable C); other layers float",
            "lower_bits_run_as": "2-3 bit weights as 4-bit codes, 5-7 bit weights as 8-bit codes; a_bits < 8 as uint8 codes clamped to the grid",
            "activation_bits": "a_bits <= 8 with w_bits = 32: float kernel on the fake-quantized input",
            "builds": True,
            "measures": True,
            "available": self.available(),
        }

    # ----- building -----------------------------------------------------------------------

    def build(self, candidate: Any, space: Any = None, input_shape: Sequence[int] | None = None, *,
              name: str | None = None, packed: Mapping[str, Any] | None = None,
              calibration: Sequence[Any] | None = None) -> CodegenRunnable:
        """A runnable from a candidate of a mobilenet space, or from a `MobileNetSubnet`
        (``input_shape`` required). Raises `CompilerError` (clear message) without a compiler.

        Layers with ``w_bits <= 8`` and ``a_bits <= 8`` run on the integer kernels
        (`tritune.targets.codegen_int8`). A candidate's weights are quantized per output channel and
        its activation ranges calibrated (min / max) on ``calibration`` (input batches; default:
        ``calibration_samples`` seeded standard-normal inputs); an extracted subnet brings its own
        codes and calibrated input quantizers (`tritune.spaces.mobilenet.supernet.extract`); a float subnet
        whose IR names lower bits is quantized and calibrated like a candidate.

        ``packed``: `tritune.kernels.formats.PackedWeight` s by layer name, used instead of
        packing those layers' module weights (what `load_exported` passes: the structure of a
        sparse layer whose kept weights include exact zeros is not in its dense weight)."""
        from ..kernels.codegen import CompilerError
        from ..spaces.mobilenet.network import MobileNetSubnet, build_subnet
        from ..spaces.mobilenet.network import input_shape as shape_of

        reason = self.unavailable_reason()
        if reason is not None:
            raise CompilerError(f"codegen-cpu: target unavailable: {reason}")
        t0 = time.perf_counter()
        if isinstance(candidate, Candidate):
            space = self.resolve_space(candidate, space)
            cand = space.validate(candidate)
            net = build_subnet(space, cand, seed=self.seed)
            shape = tuple(input_shape or shape_of(space, cand))
            label = name or cand.id
        elif isinstance(candidate, MobileNetSubnet):
            if input_shape is None:
                raise ValueError("codegen-cpu.build: input_shape is required to build a MobileNetSubnet")
            cand, net, shape, label = None, candidate.eval(), tuple(int(v) for v in input_shape), name or "MobileNetSubnet"
        else:
            raise ValueError(f"codegen-cpu.build: expected a Candidate or a MobileNetSubnet, got {type(candidate).__name__}")
        if len(shape) != 4 or shape[0] != 1:
            raise ValueError(f"input_shape: {shape} not allowed; allowed: (1, C, H, W) (batch 1)")
        from .codegen_int8 import runs_int8

        quantized = any(L.has_weights and (L.w_bits < 32 or L.a_bits < 32) for L in net.layers)
        with torch_threads(1):
            if self.weights == "layer" and isinstance(candidate, Candidate):
                net = _layer_seeded(net)
            if quantized:
                net = self.quantized(net, shape, calibration)
            t_net = time.perf_counter() - t0
            packs = dict(packed or {})
            if any(runs_int8(L) for L in net.layers):
                ops, buffers, x_in, logits = self._plan_mixed(net, shape, packs)
            else:
                ops, buffers, x_in, logits = self._plan(net, shape, packs)
        times = {"net": t_net, "compile": sum(op.compile_s for op in ops), "total": time.perf_counter() - t0}
        return CodegenRunnable(label, ops, shape, self.threads, cand, times, self.autotune, x_in, logits, buffers, packed=packs,
                               fuse_min_bytes=self.fuse_min_bytes, net=net)

    def quantized(self, net: Any, shape: Sequence[int], calibration: Sequence[Any] | None = None) -> Any:
        """``net`` with its quantized layers' codes and calibrated input ranges
        (`tritune.targets.codegen_int8.quantize_subnet`) on ``calibration`` or seeded normal inputs."""
        import torch

        from .codegen_int8 import quantize_subnet

        if calibration is None and self.weights == "layer":
            return quantize_subnet(net, [], fixed_range=LAYER_SEEDED_RANGE)
        if calibration is None:
            gen = torch.Generator().manual_seed(self.seed + 1)
            calibration = [torch.randn((self.calibration_samples, *shape[1:]), generator=gen)]
        batches = [torch.as_tensor(np.asarray(b, dtype=np.float32)) if not hasattr(b, "detach") else b for b in calibration]
        return quantize_subnet(net, batches)

    @staticmethod
    def _packed(w: np.ndarray, mask: np.ndarray | None, pattern: str) -> Any:
        from ..kernels.formats import pack

        if pattern == "dense":  # exact zeros (a trained weight, dequantized codes) stay inside a dense layer
            mask = np.ones(w.shape, dtype=bool)
        return pack(w, pattern, mask)

    def _layer_packed(self, name: str, w: np.ndarray, mask: np.ndarray | None, pattern: str, packs: dict[str, Any]) -> Any:
        """The packed weight of layer ``name``: the one in ``packs`` (given to `build`), else
        ``w`` packed in ``pattern`` and recorded in ``packs``."""
        given = packs.get(name)
        if given is None:
            packs[name] = given = self._packed(w, mask, pattern)
        elif tuple(given.shape) != tuple(w.shape) or given.pattern != pattern:
            raise ValueError(f"codegen-cpu: packed weight of layer {name}: {given.pattern} {tuple(given.shape)} not allowed; "
                             f"allowed: {pattern} {tuple(w.shape)} (the layer's plan)")
        return given

    @staticmethod
    def _conv_weights(L: Any, module: Any) -> tuple[np.ndarray, np.ndarray | None, str, str, np.ndarray | None]:
        """(weight, bias, family, pattern, structure mask) of a conv / linear layer of the IR."""
        from ..spaces.compression import parse_pattern

        w, b, mask = _weights(module)
        family, pattern = parse_pattern(L.pattern).family, L.pattern
        if family == "channel" or L.sparsity <= 0.0:
            family, pattern, mask = "dense", "dense", None  # channel: the kept weights are dense
        return w, b, family, pattern, mask

    def _tuned(self, packed: Any, kind: str, in_hw: Any, stride: int, bias: np.ndarray | None, act: str) -> Any:
        """The layer's variants timed (`tritune.kernels.codegen.autotune`): the fastest, recorded."""
        from ..kernels.codegen import autotune

        return autotune(packed, kind, in_hw, stride, bias, act, self.threads, cache_dir=self.cache_dir, cc=self.cc)

    def _kernel(self, packed: Any, kind: str, in_hw: Any, stride: int, bias: np.ndarray | None, act: str) -> Any:
        from ..kernels.codegen import compile_layer

        if self.autotune:
            return self._tuned(packed, kind, in_hw, stride, bias, act).kernel
        return compile_layer(packed, kind, in_hw, stride, bias, act, threads=self.threads, cache_dir=self.cache_dir, cc=self.cc)

    def _plan(self, net: Any, shape: tuple[int, ...], packs: dict[str, Any]) -> tuple[list[Op], list[np.ndarray], np.ndarray, np.ndarray]:
        from ..kernels.codegen.chain import add_step, matvec_step, mean_step
        from ..kernels.codegen.depthwise import compile_depthwise
        lib = {"cc": self.cc, "cache_dir": self.cache_dir}

        modules = dict(net.named_modules())
        bufs = _Buffers()
        ops: list[Op] = []
        x = x_in = bufs.get(shape[1:])
        layers = list(net.layers)
        by_name = {L.name: L for L in layers}
        with_add = {L.name.rsplit(".", 1)[0] for L in layers if L.op == "add"}
        residual: dict[str, np.ndarray] = {}  # block -> its input, kept until the block's add

        def consumed(buf: np.ndarray) -> None:
            if buf is not x_in and not any(buf is r for r in residual.values()):  # the input stays for bench_fn
                bufs.release(buf)

        fused_pool: np.ndarray | None = None  # channel means written by the previous depthwise kernel
        fused, skip = self._fusable(layers), set()
        scratch = None
        if fused:
            from ..kernels.codegen.fused import new_scratch
            scratch = new_scratch()  # one ring + band buffer for every fused block: they run in turn
        for i, L in enumerate(layers):
            if L.op not in ("dwconv", "global_pool"):
                fused_pool = None
            prefix = L.name.rsplit(".", 1)[0].removesuffix(".se")
            if L.name.startswith(f"{prefix}.se.") and L.op != "global_pool":
                continue  # SE reduce / expand / scale are planned with the SE pool
            if i in skip:
                continue  # planned inside a fused block
            if prefix in with_add and prefix not in residual and L.op in ("conv", "dwconv"):
                residual[prefix] = x
            if i in fused:
                group = fused[i]
                after = layers[group[-1] + 1] if group[-1] + 1 < len(layers) else None
                se_pool = after is not None and after.op == "global_pool" and after.name.endswith(".se.pool")
                head = layers[group[0]]
                stem_add = head.op == "conv" and head.kernel == 3 and after is not None and after.op == "add"
                op, y = self._fused_op(modules, [layers[j] for j in group], x, bufs, se_pool, scratch, packs, residual=stem_add)
                ops.append(op)
                skip.update(group)
                if stem_add:  # the block's input never exists: its residual sum is part of the fused step
                    skip.add(group[-1] + 1)
                consumed(x)
                x = y
                fused_pool = op.keep.pooled  # read by the squeeze-excite pool that follows (if any)
                continue
            if L.op in ("conv", "linear"):
                module = modules[L.name]
                w, b, family, pattern, mask = self._conv_weights(L, module)
                kind, in_hw = _conv_kind(L, x.shape, L.op == "linear")
                if kind == "linear" and family == "dense" and w.size > BLAS_LINEAR_WEIGHTS:
                    w = self._layer_packed(L.name, w, None, "dense", packs).unpack()
                    y = bufs.get((w.shape[0],))
                    st = matvec_step(w, b, _act_name(module), x.reshape(-1), y, **lib)
                    ops.append(Op(L.name, "dense", "linear", st.step, st, "dense", "matvec"))
                    consumed(x)
                    x = y
                    continue
                k = self._kernel(self._layer_packed(L.name, w, mask, pattern, packs), kind, in_hw, L.stride, b, _act_name(module))
                y = bufs.get(k.out_shape)
                xin = x.reshape(k.in_shape)
                ops.append(Op(L.name, family, kind, k.step(xin, y), k, pattern, k.variant.name, k.compile_s, k.cached))
                consumed(x)
                x = y
            elif L.op == "dwconv":
                module = modules[L.name]
                w, b, _ = _weights(module)
                nxt = layers[i + 1] if i + 1 < len(layers) else None
                se_pool = nxt is not None and nxt.op == "global_pool" and nxt.name.endswith(".se.pool")
                k = compile_depthwise(w, b, (x.shape[1], x.shape[2]), L.stride, _act_name(module), cache_dir=self.cache_dir, cc=self.cc,
                                      pool=se_pool)
                y = bufs.get(k.out_shape)
                ops.append(Op(L.name, "dense", "dwconv", k.step(x, y), k, "dense",
                              f"k{L.kernel}s{L.stride}" + (" packed" if k.packed else "") + ("+pool" if se_pool else ""), k.compile_s, k.cached))
                consumed(x)
                x = y
                fused_pool = k.pooled
            elif L.op == "global_pool":
                if fused_pool is not None and L.name.endswith(".se.pool"):
                    v = fused_pool  # computed by the depthwise kernel that produced x
                else:
                    v = bufs.get((x.shape[0],))
                    st = mean_step(x.reshape(x.shape[0], -1), v, **lib)
                    ops.append(Op(L.name, "dense", "global_pool", st.step, st))
                if L.name.endswith(".se.pool"):
                    ops.extend(self._se(modules, by_name, prefix, v, x, bufs, packs))
                else:
                    consumed(x)
                    x = v
            elif L.op == "add":
                res = residual.pop(prefix)
                st = add_step(x, res, **lib)
                ops.append(Op(L.name, "dense", "add", st.step, st))
                bufs.release(res)
            else:
                raise ValueError(f"codegen-cpu: layer {L.name}: op {L.op!r} not allowed; allowed: conv, dwconv, linear, global_pool, add, mul")
        return ops, bufs.all, x_in, x

    def _plan_mixed(self, net: Any, shape: tuple[int, ...], packs: dict[str, Any]) -> tuple[list[Op], list[np.ndarray], np.ndarray, np.ndarray]:
        """The op list of a network with integer layers (`tritune.targets.codegen_int8`): every
        tensor in the forms its readers need, integer producers writing them in their epilogues."""
        from ..kernels.codegen.chain import add_step, fakequant_step, matvec_step, mean_step, quant_step, scale_quant_step, scale_step
        from ..kernels.codegen.depthwise import compile_depthwise
        from .codegen_int8 import Value, build_nodes, layer_quantization, mark_needs

        lib = {"cc": self.cc, "cache_dir": self.cache_dir}
        modules = dict(net.named_modules())
        bufs = _Buffers()
        ops: list[Op] = []
        x_in = bufs.get(shape[1:])
        source = Value(tuple(shape[1:]), f=x_in, keep=True)
        nodes, logits = build_nodes(list(net.layers), source)
        mark_needs(nodes, modules, logits, self.threads)

        def convert(v: Value, name: str) -> None:
            """The forms of ``v`` its producer did not write, from its float form."""
            for grid in sorted(v.need_q - set(v.q), key=lambda g: (g.scale, g.zero_point)):
                v.q[grid] = bufs.get(v.f.shape, np.uint8)
                st = quant_step(v.f, v.q[grid], grid, **lib)
                ops.append(Op(f"{name}.quant", "dense", "quant", st.step, st))
            for grid in sorted(v.need_fq - set(v.fq), key=lambda g: (g.scale, g.zero_point)):
                v.fq[grid] = bufs.get(v.f.shape)
                st = fakequant_step(v.f, v.fq[grid], grid, **lib)
                ops.append(Op(f"{name}.fakequant", "dense", "quant", st.step, st))

        def release(v: Value) -> None:
            if v.keep:
                return
            for buf in [v.f, *v.q.values(), *v.fq.values()]:
                if buf is not None:
                    bufs.release(buf)
            v.f, v.q, v.fq = None, {}, {}

        convert(source, "input")
        for i, node in enumerate(nodes):
            L, x, out = node.layer, node.ins[0], node.out
            module = modules.get(L.name)
            if node.kind in ("conv", "dw") and node.int8:
                ops.append(self._int8_op(node, module, bufs, packs))
            elif node.kind == "conv":
                ops.append(self._float_conv_op(node, module, bufs, packs, lib, matvec_step))
            elif node.kind == "dw":
                w, b, _ = _weights(module)
                _, grid = layer_quantization(module)
                pool = out.pooled is not None
                k = compile_depthwise(w, b, (x.shape[1], x.shape[2]), L.stride, _act_name(module), cache_dir=self.cache_dir, cc=self.cc, pool=pool)
                out.f = bufs.get(k.out_shape)
                ops.append(Op(L.name, "dense", "dwconv", k.step(x.f if grid is None else x.fq[grid], out.f), k, "dense",
                              f"k{L.kernel}s{L.stride}" + (" packed" if k.packed else "") + ("+pool" if pool else ""), k.compile_s, k.cached))
                if pool:
                    out.pooled.f = k.pooled
            elif node.kind == "pool":
                if out.f is None:  # not summed by the producer
                    out.f = bufs.get((x.shape[0],))
                    st = mean_step(x.f.reshape(x.shape[0], -1), out.f, **lib)
                    ops.append(Op(L.name, "dense", "global_pool", st.step, st))
            elif node.kind == "scale":
                s_vec = node.ins[1]
                if out.need_q and len(out.need_q) == 1 and not (out.need_f or out.need_fq):
                    grid = next(iter(out.need_q))
                    out.q[grid] = bufs.get(x.f.shape, np.uint8)
                    st = scale_quant_step(x.f, s_vec.f, out.q[grid], grid, **lib)
                else:
                    st = scale_step(x.f, s_vec.f, **lib)
                    out.f, x.f = x.f, None  # scaled in place: the tensor is now the product
                ops.append(Op(L.name, "dense", "mul", st.step, st))
            elif node.kind == "add":
                res = node.ins[1]
                st = add_step(x.f, res.f, **lib)
                out.f, x.f = x.f, None  # summed in place
                ops.append(Op(L.name, "dense", "add", st.step, st))
            convert(out, L.name)
            for v in {id(v): v for v in [*node.ins, *([node.residual] if node.residual is not None else [])]}.values():
                if v.last == i:
                    release(v)
            if out.last < i and out is not logits:  # nothing reads it (a tensor only pooled, say)
                release(out)
        return ops, bufs.all, x_in, logits.f

    def _int8_op(self, node: Any, module: Any, bufs: "_Buffers", packs: dict[str, Any]) -> Op:
        """An integer conv / linear / depthwise layer writing the forms its output is read in."""
        from ..kernels.codegen.qdepthwise import compile_qdepthwise
        from ..kernels.codegen.qruntime import autotune_q, compile_qlayer
        from ..spaces.compression import parse_pattern
        from .codegen_int8 import layer_quantization, pool_fused, quantized_weight

        L, x, out = node.layer, node.ins[0], node.out
        _, grid = layer_quantization(module)
        kind = "dw" if node.kind == "dw" else ("linear" if node.linear else f"conv{L.kernel}x{L.kernel}")
        qw = packs.get(L.name)
        if qw is None:
            packs[L.name] = qw = quantized_weight(L, module, kind)
        op = module.conv if hasattr(module, "conv") else module.linear
        bias = None if op.bias is None else op.bias.detach().cpu().numpy().astype(np.float32)
        pool = out.pooled is not None and pool_fused(out, self.threads)
        grids = sorted(out.need_q, key=lambda g: (g.scale, g.zero_point))
        out_quant = grids[0] if grids else None
        out_float = out.need_f or bool(out.need_fq) or len(grids) > 1 or (out_quant is None and not pool)
        opts = {"in_quant": grid, "act": _act_name(module), "out_quant": out_quant, "out_float": out_float, "pool": pool}
        in_hw = None if kind == "linear" else (x.shape[1], x.shape[2])
        if kind == "dw":
            k = compile_qdepthwise(qw, bias, in_hw, L.stride, **opts, cache_dir=self.cache_dir, cc=self.cc)
        else:
            opts["residual"] = node.residual is not None
            if self.autotune and kind != "linear":
                k = autotune_q(qw, kind, in_hw, L.stride, bias, **opts, threads=self.threads, cache_dir=self.cache_dir, cc=self.cc).kernel
            else:
                k = compile_qlayer(qw, kind, in_hw, L.stride, bias, **opts, threads=self.threads, cache_dir=self.cache_dir, cc=self.cc)
        io = {}
        if out_quant is not None:
            out.q[out_quant] = io["q"] = bufs.get(k.out_shape, np.uint8)
        if out_float:
            out.f = io["f"] = bufs.get(k.out_shape)
        if pool:
            out.pooled.f = io["pool"] = bufs.get((k.out_shape[0],))
        if node.residual is not None:
            io["res"] = node.residual.f.reshape(k.out_shape)
        step = k.step(x.q[grid].reshape(k.in_shape), **io)
        family = parse_pattern(L.pattern).family if L.sparsity > 0 and parse_pattern(L.pattern).family != "channel" else "dense"
        kind_name = "dwconv" if kind == "dw" else kind
        variant = f"int{qw.bits} {k.variant}" + ("+pool" if pool else "") + ("+res" if node.residual is not None else "")
        return Op(L.name, family, kind_name, step, k, qw.pattern, variant, k.compile_s, k.cached, bits=8)

    def _float_conv_op(self, node: Any, module: Any, bufs: "_Buffers", packs: dict[str, Any], lib: dict, matvec_step: Any) -> Op:
        """A float conv / linear layer of a mixed network (its input fake-quantized when ``a_bits <= 8``)."""
        from .codegen_int8 import layer_quantization

        L, x, out = node.layer, node.ins[0], node.out
        _, grid = layer_quantization(module)
        xin = x.f if grid is None else x.fq[grid]
        w, b, family, pattern, mask = self._conv_weights(L, module)
        if node.linear:
            w = w.reshape(w.shape[0], -1)
            mask = None if mask is None else mask.reshape(w.shape)
            if family == "dense" and w.size > BLAS_LINEAR_WEIGHTS:
                w = self._layer_packed(L.name, w, None, "dense", packs).unpack()
                out.f = bufs.get((w.shape[0],))
                st = matvec_step(w, b, _act_name(module), xin.reshape(-1), out.f, **lib)
                return Op(L.name, "dense", "linear", st.step, st, "dense", "matvec")
        kind, in_hw = _conv_kind(L, x.shape, node.linear)
        k = self._kernel(self._layer_packed(L.name, w, mask, pattern, packs), kind, in_hw, L.stride, b, _act_name(module))
        out.f = bufs.get(k.out_shape)
        return Op(L.name, family, kind, k.step(xin.reshape(k.in_shape), out.f), k, pattern, k.variant.name, k.compile_s, k.cached)

    def _fusable(self, layers: list) -> dict[int, tuple[int, ...]]:
        """Blocks planned as one fused step (`tritune.kernels.codegen.fused`): index of the first
        layer -> indices of [expand or stem,] depthwise, project, for blocks without squeeze-excite
        whose tensor around the depthwise layer (the expanded one, or the stem's output) has at
        least `fuse_min_bytes`."""
        from ..kernels.codegen import vector_width

        if self.fuse_min_bytes is None:
            return {}
        vw = vector_width(self.cc)
        out: dict[int, tuple[int, ...]] = {}
        one_by_one = lambda L: L is not None and L.op == "conv" and L.kernel == 1 and L.groups == 1  # noqa: E731
        for i, L in enumerate(layers):
            if L.op != "dwconv" or i + 1 >= len(layers) or 4 * L.in_channels * L.in_h * L.in_w < self.fuse_min_bytes:
                continue
            prefix = L.name.rsplit(".", 1)[0]
            nxt, prev = layers[i + 1], layers[i - 1] if i > 0 else None
            if (i == 1 and prev.op == "conv" and prev.kernel == 3 and prev.groups == 1 and prev.stride == 2 and self.threads == 1
                    and L.stride == 1 and one_by_one(nxt) and nxt.name.startswith(prefix + ".") and L.in_w >= vw
                    and (L.in_h * L.in_w) % vw == 0):  # the network's stem produces the first block's input band by band
                out[0] = (0, i, i + 1)
                continue
            expand = i - 1 if one_by_one(prev) and prev.name.startswith(prefix + ".") and L.in_w >= vw else None
            if one_by_one(nxt) and nxt.name.startswith(prefix + ".") and -(-L.in_w // L.stride) >= vw:
                group = ((expand,) if expand is not None else ()) + (i, i + 1)
            elif expand is not None:  # before a squeeze-excite: expand -> depthwise (+ its pool)
                group = (expand, i)
            else:
                continue
            out[group[0]] = group
        return out

    def _fused_op(self, modules: dict, group: list, x: np.ndarray, bufs: _Buffers, se_pool: bool,
                  scratch: np.ndarray | None, packs: dict[str, Any], residual: bool = False) -> tuple[Op, np.ndarray]:
        from ..kernels.codegen.fused import compile_fused_block

        dw_at = next(j for j, L in enumerate(group) if L.op == "dwconv")
        dw, expand, proj = group[dw_at], group[:dw_at], group[dw_at + 1:]
        stem = bool(expand) and expand[0].kernel == 3  # the network's stem, not a 1x1 expand
        packed, act, bias, tile, families = {}, {}, {}, {}, []
        for role, L in (("expand", expand[0] if expand else None), ("project", proj[0] if proj else None)):
            if L is None:
                packed[role] = act[role] = bias[role] = tile[role] = None
                continue
            module = modules[L.name]
            w, b, family, pattern, mask = self._conv_weights(L, module)
            packed[role], bias[role], act[role] = self._layer_packed(L.name, w, mask, pattern, packs), b, _act_name(module)
            families.append(family)
            tile[role] = None
            if self.autotune:  # the variant measured fastest for the layer alone, run band by band
                kind = "conv3x3" if role == "expand" and stem else "conv1x1"
                tile[role] = self._tuned(packed[role], kind, (L.in_h, L.in_w), L.stride, b, act[role]).variant
        if proj and act["project"] != "none":
            raise ValueError(f"codegen-cpu: layer {proj[0].name}: a fused block's project layer has activation {act['project']!r}; allowed: none")
        wd, bd, _ = _weights(modules[dw.name])
        producer = {"stem": packed["expand"], "stem_stride": expand[0].stride, "stem_bias": bias["expand"], "stem_act": act["expand"],
                    "stem_tile": tile["expand"], "residual": residual} if stem else {
                    "expand_bias": bias["expand"], "expand_act": act["expand"] or "none", "expand_tile": tile["expand"]}
        blk = compile_fused_block(None if stem else packed["expand"], wd, (x.shape[1], x.shape[2]), dw.stride, packed["project"],
                                  dw_bias=bd, dw_act=_act_name(modules[dw.name]), project_bias=bias["project"], pool=se_pool,
                                  project_tile=tile["project"], scratch=scratch, threads=self.threads, cache_dir=self.cache_dir,
                                  cc=self.cc, **producer)
        y = bufs.get(blk.out_shape)
        family = next((f for f in families if f != "dense"), "dense")
        pattern = next((L.pattern for L in group if L.op == "conv" and L.sparsity > 0), "dense")
        name = dw.name.rsplit(".", 1)[0]
        op = Op(name, family, "fused_block", blk.step(x.reshape(blk.in_shape), y), blk, pattern,
                " ".join([f"{('s' if stem else 'e') if expand else ''}dw{dw.kernel}s{dw.stride}{'p' if proj else ''}{'+pool' if se_pool else ''}"
                          f"{'+res' if residual else ''}", f"r{blk.rows}",
                          *[f"{role}:{k.variant.name}" for role, k in (("s", blk.stem), ("e", blk.expand), ("p", blk.project)) if k is not None]]),
                blk.compile_s, blk.cached)
        return op, y

    def _se(self, modules: dict, layers: dict, prefix: str, pooled: np.ndarray, x: np.ndarray, bufs: _Buffers,
            packs: dict[str, Any]) -> list[Op]:
        """SE reduce (linear + relu), expand (linear + hsigmoid), each with its slot's pattern,
        then x *= scale in place."""
        from ..kernels.codegen.chain import scale_step
        ops = []
        v = pooled
        for part in ("reduce", "expand"):
            name = f"{prefix}.se.{part}"
            module = modules[name]
            w, b, family, pattern, mask = self._conv_weights(layers[name], module)
            w = w.reshape(w.shape[0], -1)
            mask = None if mask is None else mask.reshape(w.shape)
            k = self._kernel(self._layer_packed(name, w, mask, pattern, packs), "linear", None, 1, b, _act_name(module))
            y = bufs.get(k.out_shape)
            ops.append(Op(name, family, "linear", k.step(v, y), k, pattern, k.variant.name, k.compile_s, k.cached))
            bufs.release(v)
            v = y
        st = scale_step(x, v, cc=self.cc, cache_dir=self.cache_dir)
        ops.append(Op(f"{prefix}.se.scale", "dense", "mul", st.step, st))
        bufs.release(v)
        return ops

    # ----- timing -------------------------------------------------------------------------
    def measure(self, runnables: Any, protocol: Protocol | None = None, **options: Any) -> Measurement | list[Measurement]:
        """Time runnables with the interleaved protocol of `tritune.kernels.timing` (a list gives a list)."""
        return measure_target(self.name, runnables, protocol or self.protocol, options)

    def latency(self, candidates: Sequence[Candidate], space: Any = None) -> np.ndarray:
        """Build and time every candidate (ground truth, seconds per candidate)."""
        out = np.full(len(candidates), np.nan, dtype=np.float64)
        for i, c in enumerate(candidates):
            out[i] = self.measure(self.build(c, space=space)).latency_ms
        return out


# ----- export ---------------------------------------------------------------------------------
#: ``codegen.json`` of an exported network: what `load_exported` reads.
EXPORT_FORMAT = "tritune-codegen-export"
EXPORT_SCHEMA = 1
#: Schema of exports holding integer layers (codes, scales and input grids in ``weights.npz``).
EXPORT_SCHEMA_INT8 = 2
#: The time stamp of every member of a written ``.npz`` (zip) file, so the same arrays give the same bytes.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class ExportedModelError(ValueError):
    """An exported folder that cannot be loaded; the message names the file and the problem."""


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez`` with fixed member time stamps and sorted members: same arrays, same bytes.
    Read it back with ``np.load(path, allow_pickle=False)`` (no object arrays are written)."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            arr = np.asarray(arrays[key])
            if arr.dtype.hasobject:
                raise ValueError(f"write_npz: array {key!r} holds Python objects; allowed: numeric and string arrays")
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, arr if arr.flags.c_contiguous else arr.copy(), allow_pickle=False)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weight_arrays(net: Any, runnable: CodegenRunnable) -> dict[str, np.ndarray]:
    """``<layer>/<array>`` of every weight layer: the packed weight the plan ran (conv / linear;
    integer layers: their codes, scales and bits) or the dense weight (depthwise), the bias, and
    the input grid of a layer that quantizes its input (``input_scale``, ``input_zero_point``,
    ``input_bits``)."""
    from ..kernels.formats import QuantizedWeight
    from .codegen_int8 import layer_quantization

    modules = dict(net.named_modules())
    arrays: dict[str, np.ndarray] = {}
    for L in net.layers:
        if not L.has_weights:
            continue
        w, b, _ = _weights(modules[L.name])
        packed = runnable.packed.get(L.name)
        op = modules[L.name].conv if hasattr(modules[L.name], "conv") else modules[L.name].linear
        if packed is not None:
            arrays.update(packed.to_npz_dict(prefix=f"{L.name}/"))
        elif getattr(op, "weight_codes", None) is not None:  # low-bit weights: the codes, so that loading rebuilds them bit for bit
            arrays[f"{L.name}/weight_codes"] = op.weight_codes.detach().cpu().numpy().astype(np.int8)
            arrays[f"{L.name}/weight_scales"] = op.weight_scales.detach().cpu().numpy()
            if getattr(op, "weight_mask", None) is not None:
                arrays[f"{L.name}/weight_mask"] = op.weight_mask.detach().cpu().numpy().astype(bool)
        else:
            arrays[f"{L.name}/weight"] = w
        if b is not None:
            arrays[f"{L.name}/bias"] = b
        _, grid = layer_quantization(modules[L.name])
        if grid is not None:
            arrays[f"{L.name}/input_scale"] = np.array(grid.scale, dtype=np.float64)
            arrays[f"{L.name}/input_zero_point"] = np.array(grid.zero_point, dtype=np.int32)
            arrays[f"{L.name}/input_bits"] = np.array(grid.bits, dtype=np.int32)
        if isinstance(packed, QuantizedWeight):
            arrays[f"{L.name}/codes_shape"] = np.array(_op_weight_shape(modules[L.name]), dtype=np.int64)
    return arrays


def _op_weight_shape(module: Any) -> tuple[int, ...]:
    op = module.conv if hasattr(module, "conv") else module.linear
    w = op.weight if getattr(op, "weight", None) is not None else op.weight_codes
    return tuple(w.shape)


def save_exported(runnable: CodegenRunnable, net: Any, directory: str | os.PathLike) -> dict[str, Any]:
    """Write a built network into ``directory``: ``kernels/`` (the shared libraries it runs, each
    beside its C source), ``weights.npz`` (packed weights per layer, biases) and ``codegen.json``
    (its layer IR, input shape, target settings, file checksums). `load_exported` runs it again
    without compiling. ``net`` is the `MobileNetSubnet` the runnable was built from. Returns
    the ``codegen.json`` document."""
    if runnable.autotuned:
        raise ValueError("save_exported: the runnable was built with autotune=True; allowed: a build with autotune=False "
                         "(its kernels are generated again from the weights alone when loaded)")
    out = Path(directory)
    kernels = out / "kernels"
    kernels.mkdir(parents=True, exist_ok=True)
    libraries = []
    for path in runnable.libraries():
        src = Path(path)
        for item in (src, src.with_suffix(".c")):
            if item.is_file():
                shutil.copyfile(item, kernels / item.name)
        libraries.append({"file": f"kernels/{src.name}", "sha256": _sha256(kernels / src.name)})
    write_npz(out / "weights.npz", _weight_arrays(net, runnable))
    doc = {
        "format": EXPORT_FORMAT, "schema": EXPORT_SCHEMA_INT8 if any(op.bits == 8 for op in runnable.ops) else EXPORT_SCHEMA,
        "name": runnable.name,
        "input_shape": list(runnable.input_shape), "threads": runnable.threads,
        "fuse_min_bytes": runnable.fuse_min_bytes,
        "layers": [L.to_json() for L in net.layers], "libraries": libraries,
        "weights": {"file": "weights.npz", "sha256": _sha256(out / "weights.npz")},
        "plan": [{k: v for k, v in op.items() if k not in ("compile_s", "cached")} for op in runnable.plan],
    }
    (out / "codegen.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return doc


def _read_export(where: Path) -> dict[str, Any]:
    path = where / "codegen.json"
    if not path.is_file():
        raise ExportedModelError(f"exported model {str(where)!r}: no codegen.json (not a codegen-cpu export)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ExportedModelError(f"{str(path)!r}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        raise ExportedModelError(f"{str(path)!r}: format {doc.get('format') if isinstance(doc, dict) else None!r}; allowed: {EXPORT_FORMAT!r}")
    if doc.get("schema") not in (EXPORT_SCHEMA, EXPORT_SCHEMA_INT8):
        raise ExportedModelError(f"{str(path)!r}: schema {doc.get('schema')!r}; this tritune reads {EXPORT_SCHEMA} and {EXPORT_SCHEMA_INT8}")
    for entry in [doc["weights"], *doc["libraries"]]:
        file = where / entry["file"]
        if Path(entry["file"]).is_absolute() or ".." in Path(entry["file"]).parts:
            raise ExportedModelError(f"{str(path)!r}: file {entry['file']!r} not allowed; allowed: paths inside the export folder")
        if not file.is_file():
            raise ExportedModelError(f"exported model {str(where)!r}: {entry['file']} is missing")
        if _sha256(file) != entry["sha256"]:
            raise ExportedModelError(f"exported model {str(where)!r}: {entry['file']} changed since export (sha256 differs)")
    return doc


def _input_quant(weights: Mapping[str, np.ndarray], name: str) -> Any:
    """The calibrated input fake quantizer a layer was exported with (None: float input)."""
    from ..kernels.quant import ActFakeQuant

    if f"{name}/input_scale" not in weights:
        return None
    q = ActFakeQuant(int(np.asarray(weights[f"{name}/input_bits"])))
    q.scale.fill_(float(np.asarray(weights[f"{name}/input_scale"])))
    q.zero_point.fill_(int(np.asarray(weights[f"{name}/input_zero_point"])))
    q.calibrated.fill_(True)
    q._calibrated = True
    return q.eval()


def _net_from_export(doc: dict[str, Any], weights: Mapping[str, np.ndarray]) -> tuple[Any, dict[str, Any]]:
    """The `MobileNetSubnet` of an export (weights set from the npz; integer layers as the
    quantized modules `tritune.spaces.mobilenet.supernet.extract` makes) and its packed weights."""
    import torch

    from ..kernels.formats import PackedWeight, QuantizedWeight, structure
    from ..spaces.layers import LayerSpec
    from ..spaces.mobilenet.space import STAGES
    from ..spaces.mobilenet.network import ConvAct, MobileNetSubnet
    from ..spaces.mobilenet.supernet.elastic import DeployWeights
    from ..spaces.mobilenet.supernet.extract import QuantizedConv2d, QuantizedLinear

    layers = [LayerSpec.from_json(d) for d in doc["layers"]]
    net = MobileNetSubnet(layers, len(STAGES))
    modules = dict(net.named_modules())
    packs: dict[str, Any] = {}
    with torch.no_grad():
        for L in layers:
            if not L.has_weights:
                continue
            module = modules[L.name]
            op = module.conv if hasattr(module, "conv") else module.linear
            bias = weights.get(f"{L.name}/bias")
            bias_t = torch.from_numpy(np.asarray(bias, dtype=np.float32)) if bias is not None else torch.zeros_like(op.bias)
            quant = _input_quant(weights, L.name)
            if f"{L.name}/bits" in weights:  # an integer layer: codes, scales, structure
                qw = packs[L.name] = QuantizedWeight.from_npz_dict(weights, prefix=f"{L.name}/")
                shape = tuple(int(v) for v in np.asarray(weights[f"{L.name}/codes_shape"]))
                codes = torch.from_numpy(qw.int_codes().reshape(shape))
                scales = torch.from_numpy(qw.scales.copy())
                mask = None if qw.pattern == "dense" else torch.from_numpy(structure(qw.codes).reshape(shape))
                d = DeployWeights(weight=codes.float() * scales.reshape(-1, *[1] * (len(shape) - 1)), bias=bias_t, codes=codes,
                                  scales=scales, mask=mask)
            elif f"{L.name}/weight_codes" in weights:  # low-bit weights of a layer that runs float (depthwise)
                codes = torch.from_numpy(np.asarray(weights[f"{L.name}/weight_codes"], dtype=np.int8)).reshape(op.weight.shape)
                scales = torch.from_numpy(np.asarray(weights[f"{L.name}/weight_scales"]))
                mask = weights.get(f"{L.name}/weight_mask")
                mask_t = None if mask is None else torch.from_numpy(np.asarray(mask, dtype=bool)).reshape(op.weight.shape)
                d = DeployWeights(weight=codes.float() * scales.reshape(-1, *[1] * (codes.dim() - 1)), bias=bias_t, codes=codes,
                                  scales=scales, mask=mask_t)
            else:
                if f"{L.name}/weight" in weights:
                    w = np.asarray(weights[f"{L.name}/weight"])
                else:
                    packs[L.name] = PackedWeight.from_npz_dict(weights, prefix=f"{L.name}/")
                    w = packs[L.name].unpack()
                wt = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).reshape(op.weight.shape)
                if quant is None:
                    op.weight.copy_(wt)
                    op.bias.copy_(bias_t)
                    continue
                d = DeployWeights(weight=wt, bias=bias_t)
            if isinstance(module, ConvAct):
                module.conv = QuantizedConv2d(d, op.stride[0], op.padding[0], op.groups, quant, L.w_bits)
            else:
                module.linear = QuantizedLinear(d, quant, L.w_bits)
    return net.eval().requires_grad_(False), packs


def load_exported(directory: str | os.PathLike, *, allow_compile: bool = False, cc: str | None = None) -> CodegenRunnable:
    """Run an exported codegen-cpu network (`save_exported`) from Python: ``load_exported(DIR).run(x)``
    gives the logits of one input ``[1, C, H, W]`` (``profile()`` and ``bench_fn()`` as for a built one).

    The shared libraries in ``DIR/kernels`` are loaded as they are; nothing is compiled. Where this
    machine's compiler or CPU differs from the exporting one, the kernels' cache keys differ and
    loading is refused, unless ``allow_compile`` (the kernels are then generated again from the
    packed weights, in a temporary folder). ``DIR`` is never written to. Only numbers are read
    (``np.load(..., allow_pickle=False)``, JSON); every file is checked against its SHA-256."""
    import tempfile

    from ..kernels.codegen import compiler

    where = Path(directory)
    doc = _read_export(where)
    with np.load(where / doc["weights"]["file"], allow_pickle=False) as npz:
        weights = {k: npz[k] for k in npz.files}
    net, packs = _net_from_export(doc, weights)
    cache = Path(tempfile.mkdtemp(prefix="tritune-exported-"))
    for entry in doc["libraries"]:  # the exported libraries, seen through a private cache folder
        src = (where / entry["file"]).resolve()
        os.symlink(src, cache / src.name)
        if src.with_suffix(".c").is_file():
            os.symlink(src.with_suffix(".c"), cache / src.with_suffix(".c").name)
    target = CodegenCpuTarget(threads=int(doc["threads"]), cc=cc, cache_dir=str(cache), fuse_min_bytes=doc["fuse_min_bytes"])
    before = compiler.stats()["compiles"]
    runnable = target.build(net, input_shape=tuple(doc["input_shape"]), name=str(doc.get("name") or where.name), packed=packs)
    compiled = compiler.stats()["compiles"] - before
    if compiled and not allow_compile:
        raise ExportedModelError(f"exported model {str(where)!r}: {compiled} of its kernels were built for another CPU or "
                                 "C compiler than this one; pass allow_compile=True to generate them again from weights.npz")
    return runnable


__all__ = ["CodegenCpuTarget", "CodegenRunnable", "ExportedModelError", "Op", "load_exported", "save_exported", "write_npz"]
