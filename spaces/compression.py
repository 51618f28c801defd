"""Vocabulary of per-layer compression: sparsity patterns, ratios and bit-widths.

The space owns the *names* and the rules of which layer can carry which pattern; the kernels that
realise a pattern live in `tritune.kernels`. Keeping the vocabulary here lets every other part of
tritune speak about compression without importing any kernel code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

FLOAT_BITS = 32
#: Widest weight / activation bit-width an integer kernel takes (int8 codes hold 2-8 bit values).
INT_MAX_BITS = 8


def integer_bits(w_bits: int, a_bits: int) -> int:
    """The weight bits a layer computes with on integer kernels, or `FLOAT_BITS` when it runs in
    float: integer kernels need int8 weights *and* int8 inputs, so weight-only (w8a32) and
    activation-only (w32a8) quantization run as float layers on every runtime tritune targets."""
    return int(w_bits) if w_bits <= INT_MAX_BITS and a_bits <= INT_MAX_BITS else FLOAT_BITS

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


#: How a space may tie compression slots together (one choice for every slot of a group); the
#: space that owns the slots defines the groups (`tritune.spaces.mobilenet.tie_groups`).
TIE_MODES = ("none", "block", "stage", "role", "all")
#: The key of a `CompressionLimit` that applies to every slot.
ALL_SLOTS = "*"


@dataclass(frozen=True)
class CompressionLimit:
    """Bounds on the choices of a slot: at least ``min_w_bits`` / ``min_a_bits`` bits, at most
    ``max_sparsity``, and only ``patterns`` (None: any on the menu). A slot keeps its default
    (dense at the widest bits) whatever its limits say."""

    min_w_bits: int = 0
    min_a_bits: int = 0
    max_sparsity: float = 1.0
    patterns: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "min_w_bits", int(self.min_w_bits))
        object.__setattr__(self, "min_a_bits", int(self.min_a_bits))
        object.__setattr__(self, "max_sparsity", float(self.max_sparsity))
        if self.patterns is not None:
            object.__setattr__(self, "patterns", tuple(str(p) for p in self.patterns))
            for p in self.patterns:
                parse_pattern(p)
        if not 0.0 <= self.max_sparsity <= 1.0:
            raise ValueError(f"compression.limits: max_sparsity {self.max_sparsity} not in [0, 1]")

    def allows(self, choice: "LayerCompression") -> bool:
        return (choice.w_bits >= self.min_w_bits and choice.a_bits >= self.min_a_bits and choice.sparsity <= self.max_sparsity + 1e-9
                and (self.patterns is None or choice.pattern in self.patterns))

    def __and__(self, other: "CompressionLimit") -> "CompressionLimit":
        """Both limits at once."""
        if self.patterns is None or other.patterns is None:
            patterns = other.patterns if self.patterns is None else self.patterns
        else:
            patterns = tuple(p for p in self.patterns if p in other.patterns)
        return CompressionLimit(max(self.min_w_bits, other.min_w_bits), max(self.min_a_bits, other.min_a_bits),
                                min(self.max_sparsity, other.max_sparsity), patterns)

    @classmethod
    def from_config(cls, cfg: "CompressionLimit | dict", where: str = "compression.limits") -> "CompressionLimit":
        if isinstance(cfg, CompressionLimit):
            return cfg
        allowed = ("min_w_bits", "min_a_bits", "max_sparsity", "patterns")
        if not isinstance(cfg, dict):
            raise ValueError(f"{where}: expected a mapping with {', '.join(allowed)}; got {cfg!r}")
        unknown = sorted(set(cfg) - set(allowed))
        if unknown:
            raise ValueError(f"{where}: unknown fields {unknown}; allowed: {', '.join(allowed)}")
        try:
            return cls(**cfg)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None

    def to_config(self) -> dict:
        out: dict = {}
        if self.min_w_bits:
            out["min_w_bits"] = self.min_w_bits
        if self.min_a_bits:
            out["min_a_bits"] = self.min_a_bits
        if self.max_sparsity < 1.0:
            out["max_sparsity"] = self.max_sparsity
        if self.patterns is not None:
            out["patterns"] = list(self.patterns)
        return out


def _pairs(value: Any, where: str, convert: Callable[[Any, str], Any]) -> tuple:
    """A mapping (or ``(key, value)`` pairs) as key-sorted pairs of converted values: hashable
    and canonical, so equal menus compare and hash equal."""
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (tuple, list)) and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in value):
        items = list(value)
    else:
        raise ValueError(f"{where}: expected a mapping; got {value!r}")
    return tuple(sorted((str(k), convert(v, f"{where}.{k}")) for k, v in items))


def _tokens(value: Any, where: str) -> tuple[str, ...]:
    """Choice tokens (`LayerCompression.token`), checked and sorted."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"{where}: expected a list of choices like 'unstructured@0.9/w4a8'; got {value!r}")
    tokens = tuple(sorted({str(t) for t in value}))
    for t in tokens:
        try:
            LayerCompression.from_token(t)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return tokens


@dataclass(frozen=True)
class CompressionMenu:
    """Which patterns, ratios and bit-widths a search may choose from (per layer, filtered by role).

    ``tie``: slots sharing one choice (`TIE_MODES`; the space defines the groups). ``limits``:
    `CompressionLimit` s by slot name, role or ``"*"`` (every slot); a slot obeys all that name
    it. ``exclude``: choice tokens removed from a tie group's menu (by group name; what
    `tritune.spaces.sensitivity` writes for the choices a layer does not survive)."""

    patterns: tuple[str, ...] = KNOWN_PATTERNS
    sparsities: tuple[float, ...] = (0.5, 0.75, 0.9)
    w_bits: tuple[int, ...] = (4, 8, 32)
    a_bits: tuple[int, ...] = (8, 32)
    #: Dense float layers only: turn compression off and search the architecture alone.
    enabled: bool = True
    tie: str = "none"
    limits: tuple[tuple[str, CompressionLimit], ...] = ()
    exclude: tuple[tuple[str, tuple[str, ...]], ...] = ()
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patterns", tuple(self.patterns))
        object.__setattr__(self, "sparsities", tuple(float(s) for s in self.sparsities))
        object.__setattr__(self, "w_bits", tuple(int(b) for b in self.w_bits))
        object.__setattr__(self, "a_bits", tuple(int(b) for b in self.a_bits))
        if self.tie not in TIE_MODES:
            raise ValueError(f"compression.tie: {self.tie!r} not allowed; allowed: {', '.join(TIE_MODES)}")
        object.__setattr__(self, "limits", _pairs(self.limits, "compression.limits", CompressionLimit.from_config))
        object.__setattr__(self, "exclude", _pairs(self.exclude, "compression.exclude", _tokens))
        default = self.default()
        for group, tokens in self.exclude:
            if default.token in tokens:
                raise ValueError(f"compression.exclude.{group}: {default.token!r} is the default of every slot and cannot be excluded")
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
        allowed = {"patterns", "sparsities", "w_bits", "a_bits", "enabled", "tie", "limits", "exclude"}
        unknown = set(cfg) - allowed
        if unknown:
            raise ValueError(f"compression: unknown fields {sorted(unknown)}; allowed: {sorted(allowed)}")
        if cfg.get("enabled", True) is False:
            return cls.off()
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k != "enabled"})

    def to_config(self) -> dict:
        """The fields that rebuild this menu; ``tie``, ``limits`` and ``exclude`` only when set,
        so a menu without them has the config (and checkpoints) it always had."""
        out: dict = {
            "enabled": self.enabled,
            "patterns": list(self.patterns),
            "sparsities": list(self.sparsities),
            "w_bits": list(self.w_bits),
            "a_bits": list(self.a_bits),
        }
        if self.tie != "none":
            out["tie"] = self.tie
        if self.limits:
            out["limits"] = {k: v.to_config() for k, v in self.limits}
        if self.exclude:
            out["exclude"] = {k: list(v) for k, v in self.exclude}
        return out

    def replace(self, **changes: Any) -> "CompressionMenu":
        """A copy with some fields changed (``limits`` / ``exclude`` as mappings or pairs)."""
        fields_ = {"patterns": self.patterns, "sparsities": self.sparsities, "w_bits": self.w_bits, "a_bits": self.a_bits,
                   "enabled": self.enabled, "tie": self.tie, "limits": self.limits, "exclude": self.exclude}
        fields_.update(changes)
        return CompressionMenu(**fields_)

    def limit_for(self, slot: str, role: str) -> CompressionLimit | None:
        """What bounds a slot: the limits for ``"*"``, its role and its name, all at once."""
        found = [limit for key, limit in self.limits if key in (ALL_SLOTS, role, slot)]
        if not found:
            return None
        out = found[0]
        for limit in found[1:]:
            out = out & limit
        return out

    def excluded(self, group: str) -> frozenset[str]:
        """Choice tokens removed from tie group (or slot) ``group``."""
        return frozenset(dict(self.exclude).get(group, ()))

    def slot_options(self, slot: str, role: str, kernel: int) -> tuple[LayerCompression, ...]:
        """`options` of the slot's role, within the limits that name the slot."""
        limit = self.limit_for(slot, role)
        opts = self.options(role, kernel)
        if limit is None:
            return opts
        default = self.default()
        return tuple(c for c in opts if c == default or limit.allows(c))

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
