"""``ort-cpu``: ONNX Runtime on this machine's CPU, measured for real.

Build (`OrtCpuTarget.build`), for a candidate of any space with a network builder (the mobilenet
spaces, or a space of one's own that defines `tritune.spaces.SearchSpace.network`):

1. ``space.network(candidate)`` -- the candidate as a standalone PyTorch network whose module paths
   are its IR layer names (mobilenet: `tritune.spaces.mobilenet.network.build_subnet`, random seeded
   weights; ``channel`` pruning physically removes filters, other sparsity patterns are zero
   masks, which this runtime executes at dense speed);
2. ONNX export with the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``, opset
   17). In torch 2.13 it still works (with a deprecation warning, silenced here), takes about
   0.3-0.5 s for a mobilenet-small network against 3-5.5 s for ``dynamo=True``, and names every
   node after its module path (``/s2/b1/expand/conv/Conv``). ``exporter="dynamo"`` is available
   (module paths are then read from the ``pkg.torch.onnx.name_scopes`` node metadata);
3. for IR layers with ``w_bits <= 8`` and ``a_bits <= 8`` (``LayerSpec.int_bits``; lower
   bit-widths run as int8 here), static QDQ quantization with
   `onnxruntime.quantization.quantize_static`: per-channel symmetric QInt8 weights, QUInt8
   activations (MinMax over a small seeded random calibration set), and ``nodes_to_quantize``
   restricted to the ONNX nodes of those layers (conv/gemm and its activation), found by module
   path = IR layer name. ONNX Runtime's int8 convolutions need int8 weights *and* inputs, so a
   weight-only layer (w8a32) runs in float on its dequantized weights -- exactly what the search
   scored it as -- and an activation-only one (w32a8) in float on a float input (SE convs follow
   their own ``se`` slot, as the IR says). Element-wise ops (adds, SE multiply, pools) are left to
   ONNX Runtime, which fuses them into int8 kernels when their neighbours are quantized;
4. an `onnxruntime.InferenceSession`: ORT_ENABLE_ALL (the only fast level: 3.3-4.5x over the
   others), ``intra_op_num_threads=threads``, ``inter_op_num_threads=1``, sequential execution,
   denormals flushed to zero, CPUExecutionProvider.

`OrtRunnable.run(x)` returns the numpy output; `measure` times runnables with the interleaved
protocol of `tritune.kernels.timing`. `latency(candidates)` does all of that (mobilenet-small:
about 0.4 s to build a float model, 1.2-2 s with int8 layers -- quantization's per-channel
parameter search dominates -- plus about 0.25 s of timing) -- it is the slow ground truth;
searches should use a predictor trained on `tritune.targets.profiling` data and call this target
to check.

What int8 buys here is decided at graph level: int8 convolutions run NHWC (QLinearConv) and the
float ones NCHWc, so every int8<->float boundary costs a Q/DQ pair, transposes and reorders
(11-15 us each), and hswish/hsigmoid have no int8 kernel (they run float between Q/DQ). On
sub-millisecond mobilenet-small models, int8 on the 1x1 convs alone (the depthwise ones float)
measured ~1.2x *slower* than float, all layers int8 ~1.0x: a predictor needs the boundaries as
features, not a per-layer int8 speed-up.
"""
from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import os
import platform
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..spaces.candidate import Candidate
from ..spaces.compression import FLOAT_BITS, INT_MAX_BITS, LayerCompression, integer_bits, parse_pattern
from .base import Target
from ..kernels.quant import LayerQuantization
from ..kernels.timing import Measurement, Protocol, measure_target, torch_threads
from .space_support import SUPPORTED_SPACES, BuildsNetworks

GRAPH_OPTIMIZATION = "ORT_ENABLE_ALL"
OPSET = 17
EXPORTERS = ("torchscript", "dynamo")
#: ISA flags of /proc/cpuinfo that matter to ONNX Runtime's kernels (fp32 and int8 GEMM/conv).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
#: Pattern families that run faster than dense here: channel pruning removes the channels; every
#: other mask multiplies its zeros at dense speed (no sparse kernels in onnxruntime's CPU provider).
RUNS_FASTER = ("dense", "channel")


def _cpuinfo() -> dict[str, str]:
    """First processor block of /proc/cpuinfo (empty off Linux)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    if info:
                        break
                    continue
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cpu_fingerprint() -> dict[str, Any]:
    """CPU model, vendor, family/model numbers and the ISA flags of interest."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    isa = {flag: flag in flags for flag in ISA_FLAGS}
    isa["amx"] = any(f.startswith("amx") for f in flags)
    return {
        "model": info.get("model name") or platform.processor() or platform.machine(),
        "vendor": info.get("vendor_id"),
        "family": info.get("cpu family"),
        "model_number": info.get("model"),
        "machine": platform.machine(),
        "isa": isa,
    }


def onnx_module_path(node: Any) -> str:
    """The PyTorch module path an exported ONNX node came from (``''`` at the top level).

    TorchScript exporter: the node name ``/s2/b1/expand/conv/Conv`` -> ``s2.b1.expand.conv``.
    Dynamo exporter: the last module scope of the ``pkg.torch.onnx.name_scopes`` metadata."""
    for prop in getattr(node, "metadata_props", ()):
        if prop.key == "pkg.torch.onnx.name_scopes":
            import ast

            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                break
            return str(scopes[-2]) if len(scopes) >= 2 else ""
    name = node.name or ""
    if name.startswith("/"):
        return ".".join(name.strip("/").split("/")[:-1])
    return ""


def nodes_of_layers(model: Any, layer_names: Sequence[str]) -> dict[str, list[str]]:
    """ONNX node names per IR layer name: the nodes whose module path is the layer or inside it
    (``s0.b1.expand`` owns ``s0.b1.expand.conv`` and ``s0.b1.expand.act``, not ``s0.b1.se.expand``)."""
    wanted = set(layer_names)
    out: dict[str, list[str]] = {name: [] for name in layer_names}
    for node in model.graph.node:
        path = onnx_module_path(node)
        while path:
            if path in wanted:
                out[path].append(node.name)
                break
            path = path.rpartition(".")[0]
    return out


class _Calibration:
    """`CalibrationDataReader` over a few seeded standard-normal inputs."""

    def __init__(self, input_name: str, shape: Sequence[int], n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self._items = iter([{input_name: rng.standard_normal(tuple(shape)).astype(np.float32)} for _ in range(n)])

    def get_next(self) -> dict | None:
        return next(self._items, None)

    def rewind(self) -> None:  # not needed by MinMax
        pass


class _Inputs:
    """`CalibrationDataReader` over given inputs (one array per calibration run)."""

    def __init__(self, input_name: str, inputs: Sequence[np.ndarray]) -> None:
        self._items = iter([{input_name: np.ascontiguousarray(x, dtype=np.float32)} for x in inputs])

    def get_next(self) -> dict | None:
        return next(self._items, None)

    def rewind(self) -> None:  # not needed by MinMax
        pass


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's deprecation warnings and the quantizer's pre-processing advice."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


@dataclass
class OrtRunnable:
    """A built model: an InferenceSession with a fixed input, plus how it was built.

    ``quantized_layers``: IR layers running int8; ``build_s``: seconds per build step
    (``net``, ``export``, ``quantize``, ``session``, ``total``); ``onnx_bytes``: the final ONNX
    model (save it with `save`)."""

    session: Any
    input_name: str
    input_shape: tuple[int, ...]
    threads: int
    name: str = "model"
    candidate: Candidate | None = None
    quantized_layers: tuple[str, ...] = ()
    build_s: dict[str, float] = field(default_factory=dict)
    onnx_bytes: bytes = b""
    exporter: str = "torchscript"
    seed: int = 0
    _feed: dict | None = field(default=None, repr=False)

    def example_input(self) -> np.ndarray:
        """The fixed (seeded) input used for timing."""
        return np.random.default_rng(self.seed).standard_normal(self.input_shape).astype(np.float32)

    def run(self, x: Any = None) -> np.ndarray:
        """Run once on ``x`` (numpy or torch, shape ``input_shape``; default: `example_input`)."""
        if x is None:
            x = self.example_input()
        elif hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0]

    def bench_fn(self) -> Callable[[], Any]:
        """A zero-argument function running the model once on a fixed input (what is timed)."""
        if self._feed is None:
            self._feed = {self.input_name: self.example_input()}
        run, feed = self.session.run, self._feed
        return lambda: run(None, feed)

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "wb") as fh:
            fh.write(self.onnx_bytes)



class _BuildMemo:
    """The ONNX bytes of the candidates built in this process, least recently used dropped
    beyond ``max_bytes``: a pipeline times its leading candidates again, and exports beside
    the target's own build, models its search already built. Builds are deterministic (seeded
    weights and calibration inputs), so a hit is the model a new build would give."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.size = int(max_bytes), 0
        self._items: collections.OrderedDict[str, bytes] = collections.OrderedDict()

    def get(self, key: str) -> bytes | None:
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def put(self, key: str, data: bytes) -> None:
        if key in self._items or len(data) > self.max_bytes:
            return
        self._items[key] = data
        self.size += len(data)
        while self.size > self.max_bytes:
            self.size -= len(self._items.popitem(last=False)[1])


#: Candidate builds kept in memory per process (`OrtCpuTarget.build` of a candidate with the
#: default calibration).
_BUILDS = _BuildMemo(256 * 2**20)


def session_options(threads: int = 1) -> Any:
    """The onnxruntime settings of every tritune session: every graph optimisation, ``threads``
    intra-op threads, one inter-op thread, sequential, denormals flushed to zero, and exact int8
    products on x86 CPUs without VNNI (``session.x64quantprecision``: there onnxruntime's uint8 x
    int8 kernels sum pairs of products in 16 bits and saturate for weight codes outside
    [-64, 63], so it runs those layers as uint8 x uint8 instead; CPUs with VNNI are unaffected).
    Deploy an exported int8 model with the same entry."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    so.add_session_config_entry("session.x64quantprecision", "1")
    return so

class OrtCpuTarget(BuildsNetworks, Target):
    """ONNX Runtime CPU (``CPUExecutionProvider``) on this machine, timed with `Protocol`."""

    name = "ort-cpu"
    description = "ONNX Runtime on this CPU (fp32 + int8 QDQ); builds and times mobilenet candidates (slow: use a predictor)"

    def __init__(self, threads: int = 1, seed: int = 0, exporter: str = "torchscript", calibration_samples: int = 4,
                 group_size: int = 8, protocol: Protocol | dict | None = None) -> None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"ort-cpu.threads: {threads!r} must be an integer >= 1")
        if exporter not in EXPORTERS:
            raise ValueError(f"ort-cpu.exporter: {exporter!r} not allowed; allowed: {', '.join(EXPORTERS)}")
        if calibration_samples < 1 or group_size < 1:
            raise ValueError("ort-cpu: calibration_samples and group_size must be >= 1")
        self.threads, self.seed, self.exporter = threads, int(seed), exporter
        self.calibration_samples, self.group_size = int(calibration_samples), int(group_size)
        if isinstance(protocol, dict):
            protocol = Protocol.from_json(protocol)
        self.protocol = protocol or Protocol(threads=threads)
        if self.protocol.threads != threads:
            raise ValueError(f"ort-cpu: protocol.threads={self.protocol.threads} differs from threads={threads}")

    # ----- identity -----------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        import onnxruntime as ort
        import torch

        cpu = cpu_fingerprint()
        return {
            "target": self.name,
            "device": cpu["model"],
            "runtime": "onnxruntime",
            "version": ort.__version__,
            "threads": self.threads,
            "cpu": cpu,
            "isa": cpu["isa"],
            "execution_provider": "CPUExecutionProvider",
            "graph_optimization": GRAPH_OPTIMIZATION,
            "inter_op_threads": 1,
            "execution_mode": "sequential",
            "denormal_as_zero": True,
            "exporter": f"{self.exporter} opset {OPSET}" if self.exporter == "torchscript" else self.exporter,
            "torch": torch.__version__.split("+")[0],
            "quantization": "static QDQ of layers with w_bits <= 8 and a_bits <= 8, per-channel symmetric QInt8 weights, QUInt8 activations, MinMax",
        }

    def capabilities(self) -> dict[str, Any]:
        return {
            "spaces": list(SUPPORTED_SPACES),
            # Faster than dense float: physically removed channels. unstructured / N:M / block /
            # kernel-pattern / gather-scatter masks run at dense speed: no sparse kernels here.
            "patterns": list(RUNS_FASTER),
            "dense_speed_patterns": ["unstructured", "nm", "block", "kernel_pattern", "gather_scatter"],
            # 32 = float; 8 = int8 QDQ. Weight bit-widths 2-7 run as int8, 16 as float.
            "bit_widths": [32, 8],
            "lower_bits_run_as": 8,
            "activation_bits": "a layer runs int8 (u8 activations) iff w_bits <= 8 and a_bits <= 8; w8a32 runs float on dequantized weights",
            "builds": True,
            "measures": True,
        }

    def runs_as(self, choice: LayerCompression) -> LayerCompression:
        """Masks other than channel pruning run at dense speed; a layer runs int8 only with
        weights and inputs of at most 8 bits, and then at int8 speed whatever its bits."""
        structured = parse_pattern(choice.pattern).family in RUNS_FASTER
        pattern, sparsity = (choice.pattern, choice.sparsity) if structured else ("dense", 0.0)
        bits = INT_MAX_BITS if integer_bits(choice.w_bits, choice.a_bits) != FLOAT_BITS else FLOAT_BITS
        return LayerCompression(pattern, sparsity, bits, bits)

    # ----- building -----------------------------------------------------------------------

    def export(self, module: Any, input_shape: Sequence[int]) -> Any:
        """ONNX ``ModelProto`` of a module for a float input of ``input_shape`` (input ``input``,
        output ``output``)."""
        import onnx
        import torch

        x = torch.zeros(*input_shape)
        with _quiet(), torch_threads(1), torch.no_grad():
            if self.exporter == "torchscript":
                buf = io.BytesIO()
                try:
                    torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=OPSET, input_names=["input"],
                                      output_names=["output"], do_constant_folding=True)
                except TypeError as exc:  # a torch without the legacy exporter
                    raise RuntimeError(f"ort-cpu: the TorchScript ONNX exporter is unavailable ({exc}); use exporter='dynamo'") from exc
                return onnx.load_from_string(buf.getvalue())
            program = torch.onnx.export(module, (x,), dynamo=True, input_names=["input"], output_names=["output"], verbose=False)
            return program.model_proto

    def build(self, candidate: Any, space: Any = None, input_shape: Sequence[int] | None = None, *,
              quantize: Sequence[str] | None = None, name: str | None = None,
              calibration: Sequence[np.ndarray] | None = None,
              layer_quantization: Mapping[str, LayerQuantization] | None = None) -> OrtRunnable:
        """Build a runnable from a candidate (of a space with a network builder) or from a ``torch.nn.Module``.

        Candidate: layers with ``w_bits <= 8`` and ``a_bits <= 8`` run int8; ``space`` defaults to the registered
        space of ``candidate.space``; ``input_shape`` to ``space.input_shape(candidate)``.
        Module: ``input_shape`` is required; ``quantize`` lists module paths (IR layer names) to
        run int8 (default none). ``quantize`` given with a candidate overrides its plan.

        A module with real weights (an extracted subnet) passes ``calibration``: the inputs the
        activation ranges are calibrated on (arrays of ``input_shape``; default: seeded random
        ones), and ``layer_quantization``: per quantized layer the parameters to keep
        (`LayerQuantization`), so its int8 weights are its own codes."""
        t0 = time.perf_counter()
        times: dict[str, float] = {}
        memo_key = None
        if isinstance(candidate, Candidate):
            space = self.resolve_space(candidate, space)
            cand = space.validate(candidate)
            shape = tuple(input_shape or space.input_shape(cand))
            if quantize is None:
                quantize = [L.name for L in space.layers(cand) if L.int_bits < FLOAT_BITS]
            label = name or cand.id
            if calibration is None and layer_quantization is None:
                memo_key = self._memo_key(cand, space, shape, quantize)
                data = _BUILDS.get(memo_key)
                if data is not None:
                    session = self.session(data)
                    total = time.perf_counter() - t0
                    return OrtRunnable(
                        session=session, input_name=session.get_inputs()[0].name, input_shape=shape, threads=self.threads,
                        name=label, candidate=cand, quantized_layers=tuple(quantize), onnx_bytes=data, exporter=self.exporter,
                        seed=self.seed, build_s={"net": 0.0, "export": 0.0, "quantize": 0.0, "session": total, "total": total, "memo": 1.0},
                    )
            with torch_threads(1):
                module = space.network(cand, seed=self.seed)
        else:
            import torch

            if not isinstance(candidate, torch.nn.Module):
                raise ValueError(f"ort-cpu.build: expected a Candidate or a torch.nn.Module, got {type(candidate).__name__}")
            if input_shape is None:
                raise ValueError("ort-cpu.build: input_shape is required to build a torch module")
            cand, module, shape = None, candidate.eval(), tuple(input_shape)
            label = name or type(candidate).__name__
        times["net"] = time.perf_counter() - t0
        quantize = list(quantize or [])

        t = time.perf_counter()
        model = self.export(module, shape)
        times["export"] = time.perf_counter() - t

        t = time.perf_counter()
        if quantize:
            model = self._quantize(model, quantize, shape, calibration, layer_quantization)
        times["quantize"] = time.perf_counter() - t

        t = time.perf_counter()
        data = model.SerializeToString()
        session = self.session(data)
        times["session"] = time.perf_counter() - t
        times["total"] = time.perf_counter() - t0
        if memo_key is not None:
            _BUILDS.put(memo_key, data)
        return OrtRunnable(
            session=session, input_name=session.get_inputs()[0].name, input_shape=shape, threads=self.threads, name=label,
            candidate=cand, quantized_layers=tuple(quantize), build_s=times, onnx_bytes=data, exporter=self.exporter,
            seed=self.seed,
        )

    def _memo_key(self, candidate: Candidate, space: Any, shape: Sequence[int], quantize: Sequence[str]) -> str:
        """What a candidate's build depends on: the candidate, its space's settings, the input
        shape, the int8 layers and this target's build settings."""
        config = dict(space.config())
        if isinstance(config.get("compression"), dict):  # the menu's exclusions limit what is sampled, not how it is built
            config["compression"] = {k: v for k, v in config["compression"].items() if k != "exclude"}
        return json.dumps([candidate.to_json(), space.name, config, list(shape), sorted(quantize), self.exporter,
                           self.seed, self.calibration_samples], sort_keys=True, default=str)

    def _quantize(self, model: Any, layers: Sequence[str], shape: Sequence[int], calibration: Sequence[np.ndarray] | None = None,
                  layer_quantization: Mapping[str, LayerQuantization] | None = None) -> Any:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        owned = nodes_of_layers(model, layers)
        node_types = {n.name: n.op_type for n in model.graph.node}
        missing = [layer for layer, nodes in owned.items() if not any(node_types[n] in QUANTIZED_OPS for n in nodes)]
        if missing:
            raise ValueError(f"ort-cpu: no Conv/Gemm/MatMul node found for layers {missing[:5]} (module paths must equal IR layer names)")
        selected = [n for nodes in owned.values() for n in nodes]
        input_name = model.graph.input[0].name
        extra: dict[str, Any] = {"WeightSymmetric": True, "ActivationSymmetric": False}
        if layer_quantization:
            nodes = {n.name: n for n in model.graph.node}
            overrides = {}
            for layer, lq in layer_quantization.items():
                op = next((nodes[n] for n in owned.get(layer, ()) if nodes[n].op_type in QUANTIZED_OPS), None)
                if op is None:
                    raise ValueError(f"ort-cpu.build: layer_quantization names layer {layer!r}, which is not among the quantized layers")
                if lq.weight_scales is not None:  # output channels: axis 0 of a Conv / Gemm weight, axis 1 of a MatMul's (in, out) one
                    axis = 1 if op.op_type == "MatMul" else 0
                    overrides[op.input[1]] = [{"axis": axis, "scale": np.array(s, dtype=np.float32), "zero_point": np.array(0, dtype=np.int8)}
                                              for s in np.asarray(lq.weight_scales, dtype=np.float32).reshape(-1)]
                if lq.input_scale is not None:
                    overrides[op.input[0]] = [{"scale": np.array(lq.input_scale, dtype=np.float32),
                                               "zero_point": np.array(lq.input_zero_point or 0, dtype=np.uint8), "quant_type": QuantType.QUInt8}]
            # keep the given weight scales even where the int32 bias scale (input x weight scale) is tiny
            extra.update({"TensorQuantOverrides": overrides, "QDQDisableWeightAdjustForInt32Bias": True})
        reader = _Calibration(input_name, shape, self.calibration_samples, self.seed + 1) if calibration is None else _Inputs(input_name, calibration)
        with tempfile.TemporaryDirectory(prefix="tritune-ort-") as tmp, _quiet():
            out = os.path.join(tmp, "int8.onnx")
            quantize_static(
                model, out, reader,
                quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                nodes_to_quantize=selected, calibrate_method=CalibrationMethod.MinMax,
                extra_options=extra,
            )
            return onnx.load(out)

    def session(self, model: bytes | str) -> Any:
        """An InferenceSession with this target's settings (ORT_ENABLE_ALL, threads, sequential)."""
        import onnxruntime as ort

        return ort.InferenceSession(model, session_options(self.threads), providers=["CPUExecutionProvider"])

    def save_build(self, artifact: Any, path: str | os.PathLike) -> bool:
        """Write a built model's ONNX file (what `load_build` reads back)."""
        if not isinstance(artifact, OrtRunnable) or not artifact.onnx_bytes:
            return False
        artifact.save(path)
        return True

    def load_build(self, path: str | os.PathLike) -> OrtRunnable:
        """A model `save_build` wrote, as a runnable with this target's session settings (its
        input name and static shape read from the file)."""
        data = Path(path).read_bytes()
        session = self.session(data)
        first = session.get_inputs()[0]
        return OrtRunnable(session=session, input_name=first.name, input_shape=tuple(int(d) for d in first.shape),
                           threads=self.threads, name=Path(path).stem, onnx_bytes=data, exporter=self.exporter, seed=self.seed)

    # ----- timing -------------------------------------------------------------------------
    def measure(self, runnables: Any, protocol: Protocol | None = None, **options: Any) -> Measurement | list[Measurement]:
        """Time runnables with the interleaved protocol: a list gives a list of `Measurement`,
        one runnable gives one `Measurement`."""
        return measure_target(self.name, runnables, protocol or self.protocol, options)

    def latency(self, candidates: Sequence[Candidate], space: Any = None) -> np.ndarray:
        """Build and time every candidate (groups of ``group_size`` interleaved): seconds per
        candidate, so this is ground truth for checks, not for a search loop."""
        out = np.full(len(candidates), np.nan, dtype=np.float64)
        for start in range(0, len(candidates), self.group_size):
            group = list(candidates[start:start + self.group_size])
            runnables = [self.build(c, space=space) for c in group]
            for i, m in enumerate(self.measure(runnables)):
                out[start + i] = m.latency_ms
            del runnables
        return out
