"""Vocabulary of per-layer compression: sparsity patterns, ratios and bit-widths.

The space owns the *names* and the rules of which layer can carry which pattern; the kernels that
realise a pattern live in `tritune.kernels`. Keeping the vocabulary here lets every other part of
tritune speak about compression without importing any kernel code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

FLOAT_BITS = 32

#: Pattern families, and the layer roles each can be applied to. A role is the structural kind of a
#: layer: a full convolution (``conv``, with its kernel size), a depthwise convolution (``dwconv``),
#: or a fully connected layer (``linear``).
PATTERN_FAMILIES = (
    "dense",
    "unstructured",
    "nm",
    "block",
    "channel",
    "kernel_pattern",
    "gather_scatter",
)

#: The parameterised variants tritune knows. N:M fixes its own ratio (1 - N/M); the others take a
#: ratio from the menu.
KNOWN_PATTERNS = (
    "dense",
    "unstructured",
    "nm2:4",
    "nm1:4",
    "nm2:8",
    "block4x1",
    "block8x1",
    "block16x1",
    "block1x4",
    "channel",
    "kernel_pattern",
    "gather_scatter",
)


@dataclass(frozen=True)
class PatternSpec:
    """A parsed pattern name: family plus its parameters (N:M, or block rows x cols)."""

    name: str
    family: str
    n: int = 0
    m: int = 0
    rows: int = 1
    cols: int = 1

    @property
    def fixed_sparsity(self) -> float | None:
        """N:M patterns define their own ratio; dense is 0; the rest take one from the menu."""
        if self.family == "dense":
            return 0.0
        if self.family == "nm":
            return 1.0 - self.n / self.m
        return None


def parse_pattern(name: str) -> PatternSpec:
    """Parse ``'nm2:4'``, ``'block8x1'``, ``'unstructured'``...; unknown names raise ValueError."""
    if name in ("dense", "unstructured", "channel", "kernel_pattern", "gather_scatter"):
        return PatternSpec(name, name)
    try:
        if name.startswith("nm"):
            n, m = (int(x) for x in name[2:].split(":"))
            if 0 < n < m:
                return PatternSpec(name, "nm", n=n, m=m)
        elif name.startswith("block"):
            r, c = (int(x) for x in name[5:].split("x"))
            if r >= 1 and c >= 1 and r * c > 1:
                return PatternSpec(name, "block", rows=r, cols=c)
    except ValueError:
        pass
    raise ValueError(
        f"pattern: unknown sparsity pattern {name!r}; allowed: dense, unstructured, nmN:M "
        f"(e.g. nm2:4), blockRxC (e.g. block4x1), channel, kernel_pattern, gather_scatter"
    )


#: Structural roles of compressible layers. ``project`` is a 1x1 convolution whose output feeds a
#: residual sum, ``se`` the squeeze-excite pair of 1x1 convolutions on a pooled vector (its output
#: scales every channel of the block) and ``classifier`` the final linear layer: none may lose
#: output channels.
ROLES = ("stem", "conv", "project", "dwconv", "linear", "classifier", "se")


def pattern_allowed(pattern: str, role: str, kernel: int) -> bool:
    """Whether a layer of this role/kernel can carry the pattern.

    The rules follow what a kernel can exploit: N:M, block and gather-scatter group weights along
    the reduction axis of a matrix product, which a depthwise convolution lacks and a 3-channel
    stem is too short for; kernel-pattern pruning selects taps of 3x3 full convolutions; channel
    pruning removes whole output filters, which a residual projection or the classifier cannot
    lose.
    """
    if role not in ROLES:
        raise ValueError(f"role: {role!r} not allowed; allowed: {', '.join(ROLES)}")
    family = parse_pattern(pattern).family
    if family in ("dense", "unstructured"):
        return True
    if role == "dwconv":
        return False
    if family == "kernel_pattern":
        return role in ("conv", "stem") and kernel == 3
    if family == "channel":
        return role in ("conv", "stem", "linear")
    return role != "stem"


@dataclass(frozen=True)
class LayerCompression:
    """How one prunable/quantizable layer is compressed. ``bits == 32`` means float."""

    pattern: str = "dense"
    sparsity: float = 0.0
    w_bits: int = FLOAT_BITS
    a_bits: int = FLOAT_BITS

    def to_json(self) -> dict:
        return {"pattern": self.pattern, "sparsity": self.sparsity, "w_bits": self.w_bits, "a_bits": self.a_bits}

    @classmethod
    def from_json(cls, data: dict, where: str = "compression") -> "LayerCompression":
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object with pattern, sparsity, w_bits, a_bits; got {data!r}")
        unknown = set(data) - {"pattern", "sparsity", "w_bits", "a_bits"}
        if unknown:
            raise ValueError(f"{where}: unknown fields {sorted(unknown)}; allowed: pattern, sparsity, w_bits, a_bits")
        return cls(
            pattern=str(data.get("pattern", "dense")),
            sparsity=float(data.get("sparsity", 0.0)),
            w_bits=int(data.get("w_bits", FLOAT_BITS)),
            a_bits=int(data.get("a_bits", FLOAT_BITS)),
        )

    @property
    def token(self) -> str:
        """Compact string used as a categorical choice (Optuna) and in tables: ``block4x1@0.75/w8a8``."""
        return f"{self.pattern}@{self.sparsity:g}/w{self.w_bits}a{self.a_bits}"

    @classmethod
    def from_token(cls, token: str) -> "LayerCompression":
        try:
            head, bits = token.split("/w")
            pattern, sparsity = head.split("@")
            w, a = bits.split("a")
            return cls(pattern, float(sparsity), int(w), int(a))
        except ValueError as exc:
            raise ValueError(f"compression token {token!r}: expected PATTERN@RATIO/wBITSaBITS") from exc


DENSE_FLOAT = LayerCompression()


@dataclass(frozen=True)
class CompressionMenu:
    """Which patterns, ratios and bit-widths a search may choose from (per layer, filtered by role)."""

    patterns: tuple[str, ...] = KNOWN_PATTERNS
    sparsities: tuple[float, ...] = (0.5, 0.75, 0.9)
    w_bits: tuple[int, ...] = (4, 8, 32)
    a_bits: tuple[int, ...] = (8, 32)
    #: Dense float layers only: turn compression off and search the architecture alone.
    enabled: bool = True
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patterns", tuple(self.patterns))
        object.__setattr__(self, "sparsities", tuple(float(s) for s in self.sparsities))
        object.__setattr__(self, "w_bits", tuple(int(b) for b in self.w_bits))
        object.__setattr__(self, "a_bits", tuple(int(b) for b in self.a_bits))
        for p in self.patterns:
            parse_pattern(p)
        if "dense" not in self.patterns:
            raise ValueError("compression.patterns: must include 'dense' (every layer can stay dense)")
        for s in self.sparsities:
            if not 0.0 < s < 1.0:
                raise ValueError(f"compression.sparsities: {s} not in the open interval (0, 1)")
        for name, bits in (("w_bits", self.w_bits), ("a_bits", self.a_bits)):
            if not bits:
                raise ValueError(f"compression.{name}: must list at least one bit-width")
            for b in bits:
                if b not in (2, 3, 4, 5, 6, 7, 8, 16, 32):
                    raise ValueError(f"compression.{name}: {b} not allowed; allowed: 2-8, 16, 32")

    @classmethod
    def off(cls) -> "CompressionMenu":
        return cls(patterns=("dense",), sparsities=(0.5,), w_bits=(32,), a_bits=(32,), enabled=False)

    @classmethod
    def from_config(cls, cfg: dict | None) -> "CompressionMenu":
        if cfg is None:
            return cls()
        allowed = {"patterns", "sparsities", "w_bits", "a_bits", "enabled"}
        unknown = set(cfg) - allowed
        if unknown:
            raise ValueError(f"compression: unknown fields {sorted(unknown)}; allowed: {sorted(allowed)}")
        if cfg.get("enabled", True) is False:
            return cls.off()
        return cls(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in cfg.items() if k != "enabled"})

    def to_config(self) -> dict:
        return {
            "enabled": self.enabled,
            "patterns": list(self.patterns),
            "sparsities": list(self.sparsities),
            "w_bits": list(self.w_bits),
            "a_bits": list(self.a_bits),
        }

    def options(self, role: str, kernel: int) -> tuple[LayerCompression, ...]:
        """Every valid choice for a layer of this role, in a fixed order (dense float first)."""
        key = (role, kernel)
        if key not in self._cache:
            if not self.enabled:
                self._cache[key] = (DENSE_FLOAT,)
            else:
                choices: list[LayerCompression] = []
                for pattern in self.patterns:
                    if not pattern_allowed(pattern, role, kernel):
                        continue
                    fixed = parse_pattern(pattern).fixed_sparsity
                    ratios: Iterable[float] = (fixed,) if fixed is not None else self.sparsities
                    for s in ratios:
                        for w in self.w_bits:
                            for a in self.a_bits:
                                choices.append(LayerCompression(pattern, round(float(s), 6), w, a))
                default = self.default()
                choices.sort(key=lambda c: c != default)
                self._cache[key] = tuple(choices)
        return self._cache[key]

    def default(self) -> LayerCompression:
        """The canonical value of an unused slot: dense at the widest bit-widths on the menu."""
        return LayerCompression("dense", 0.0, max(self.w_bits), max(self.a_bits))
