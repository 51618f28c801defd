"""The layer IR: the one language spoken between spaces, predictors, targets and exporters.

A candidate expands to a flat list of `LayerSpec`. Each entry says what a runtime must execute
(op, shapes, stride, groups, activation) and how it is compressed (pattern, sparsity, bits).
Costs derived from it (MACs, parameters, bytes) are *effective*: they account for the sparsity
and the bit-widths, because that is what memory traffic and storage see.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .compression import FLOAT_BITS, integer_bits

#: Op kinds. ``conv`` covers full and grouped convolutions, ``dwconv`` depthwise ones. ``linear``
#: applies to each of its ``in_h`` x ``in_w`` positions (a transformer's tokens: ``in_h`` tokens,
#: ``in_w`` 1). ``matmul`` multiplies two activations per group (attention: a group per head,
#: ``in_channels`` the reduction width of all heads, ``out_channels`` the output width of all
#: heads, ``in_h`` the rows); ``token_select`` keeps the most attended tokens and fuses the others.
OPS = ("conv", "dwconv", "linear", "avgpool", "maxpool", "global_pool", "add", "mul", "act",
       "layernorm", "matmul", "softmax", "token_select")
ACTIVATIONS = ("none", "relu", "relu6", "hswish", "hsigmoid", "sigmoid", "gelu")


@dataclass(frozen=True)
class LayerSpec:
    """One executed layer. Spatial sizes are the *input* H x W; padding is 'same' (k // 2)."""

    name: str
    op: str
    in_channels: int
    out_channels: int
    in_h: int = 1
    in_w: int = 1
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    act: str = "none"
    #: Batch-norm folded after the op (conv+BN is one kernel on every runtime tritune targets).
    bn: bool = False
    pattern: str = "dense"
    sparsity: float = 0.0
    w_bits: int = FLOAT_BITS
    a_bits: int = FLOAT_BITS
    #: Index into the candidate's compression plan, or -1 when the layer is not searchable.
    slot: int = -1

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"LayerSpec.op: {self.op!r} not allowed; allowed: {', '.join(OPS)}")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"LayerSpec.act: {self.act!r} not allowed; allowed: {', '.join(ACTIVATIONS)}")
        if self.in_channels <= 0 or self.out_channels <= 0:
            raise ValueError(f"LayerSpec {self.name}: channels must be positive")

    # ----- shapes -------------------------------------------------------------------------
    @property
    def out_h(self) -> int:
        if self.op == "global_pool":
            return 1
        return (self.in_h + self.stride - 1) // self.stride

    @property
    def out_w(self) -> int:
        if self.op == "global_pool":
            return 1
        return (self.in_w + self.stride - 1) // self.stride

    @property
    def has_weights(self) -> bool:
        return self.op in ("conv", "dwconv", "linear")

    @property
    def int_bits(self) -> int:
        """Weight bits on integer kernels, `FLOAT_BITS` for a layer that runs in float
        (`tritune.spaces.compression.integer_bits`); a ``matmul``'s two operands count as its
        weights and inputs."""
        return integer_bits(self.w_bits, self.a_bits) if self.has_weights or self.op == "matmul" else FLOAT_BITS

    # ----- dense costs --------------------------------------------------------------------
    @property
    def weight_count(self) -> int:
        """Dense weight count (no bias: BN is folded, linear bias is negligible)."""
        if self.op == "linear":
            return self.in_channels * self.out_channels
        if self.op in ("conv", "dwconv"):
            return self.out_channels * (self.in_channels // self.groups) * self.kernel * self.kernel
        return 0

    @property
    def dense_macs(self) -> int:
        """Multiply-accumulates of the dense op (pooling and element-wise ops count one per output)."""
        outputs = self.out_channels * self.out_h * self.out_w
        if self.has_weights:
            return self.weight_count * self.out_h * self.out_w
        if self.op == "matmul":
            return self.out_channels * (self.in_channels // self.groups) * self.out_h * self.out_w
        if self.op in ("avgpool", "maxpool"):
            return outputs * self.kernel * self.kernel
        if self.op == "global_pool":
            return self.in_channels * self.in_h * self.in_w
        return outputs

    # ----- effective costs ----------------------------------------------------------------
    @property
    def density(self) -> float:
        """Share of weights kept. Channel pruning is already in the shape (the IR is the physical
        network), so a ``channel`` layer counts as dense here."""
        if not self.has_weights or self.pattern == "channel":
            return 1.0
        return 1.0 - self.sparsity

    @property
    def macs(self) -> float:
        """MACs left after pruning (the work an ideal sparse kernel does)."""
        return self.dense_macs * self.density

    @property
    def params(self) -> float:
        """Non-zero weights after pruning."""
        return self.weight_count * self.density

    @property
    def weight_bytes(self) -> float:
        """Storage of the non-zero weights at their bit-width (index overhead is the kernel's business)."""
        return self.params * self.w_bits / 8.0

    @property
    def input_bytes(self) -> float:
        return self.in_channels * self.in_h * self.in_w * self.a_bits / 8.0

    @property
    def output_bytes(self) -> float:
        return self.out_channels * self.out_h * self.out_w * self.a_bits / 8.0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "LayerSpec":
        return cls(**data)


def summarize(layers: list[LayerSpec]) -> dict[str, float]:
    """Totals a table or a predictor baseline wants: effective MACs, params, bytes, layer count."""
    return {
        "macs": float(sum(layer.macs for layer in layers)),
        "dense_macs": float(sum(layer.dense_macs for layer in layers)),
        "params": float(sum(layer.params for layer in layers)),
        "weight_bytes": float(sum(layer.weight_bytes for layer in layers)),
        "layers": float(len(layers)),
    }
