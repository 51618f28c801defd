"""Per-layer sensitivity of a trained supernet: how much accuracy one compression gene costs.

For every compression gene of the space (a slot, or a tie group of slots) and every choice on its
menu, the table holds the accuracy drop -- in points, against the reference network dense and
float -- measured when that gene alone takes the choice and every other layer stays dense float
(`tritune.evaluators.sensitivity.measure_sensitivity`). As in HAQ (Wang et al., CVPR 2019) and
APQ (Wang et al., CVPR 2020), which tell sensitive layers apart before searching bit-widths,
the table is measured once and then used two ways:

* `SensitivityTable.estimate`: the sum of a candidate's per-gene drops, a free estimate of what
  its plan costs (the ``sensitivity`` evaluator, a cheap metric a job can constrain, so a
  candidate with a crushed layer is rejected before the costly accuracy query);
* `SensitivityTable.exclusions`: the choices that alone cost more than ``max_drop`` points, in
  the form of the ``compression.exclude`` space option (`screened_space`), so the space's sampler
  -- and every strategy built on it -- no longer proposes them.

A *factored* table (for spaces with many genes) measures each gene's sparsity choices at float
bits and its bit-widths dense, and estimates a combined choice as the sum of the two.

It serves any space whose compression genes come from a `CompressionMenu` (a ``menu`` and a
``tie`` mode, as `mobilenet` has). The table is plain JSON; it is stored in the supernet checkpoint's ``extra`` header field under
`EXTRA_KEY`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .base import SearchSpace
from .candidate import Candidate
from .compression import LayerCompression

#: Where a checkpoint's ``extra`` header keeps the table.
EXTRA_KEY = "sensitivity"
SCHEMA = 1


def sparsity_part(choice: LayerCompression, float_bits: LayerCompression) -> LayerCompression:
    """The choice's pattern and ratio at the widest bit-widths (``float_bits``' bits)."""
    return LayerCompression(choice.pattern, choice.sparsity, float_bits.w_bits, float_bits.a_bits)


def bits_part(choice: LayerCompression) -> LayerCompression:
    """The choice's bit-widths, dense."""
    return LayerCompression("dense", 0.0, choice.w_bits, choice.a_bits)


@dataclass
class SensitivityTable:
    """Accuracy drops (points) by compression gene and choice token.

    ``tie``: the tie mode of the space it was measured on (its genes are that mode's groups);
    ``reference``: the architecture measured (dense float: ``base`` % accuracy on ``images``
    training images); ``factored``: drops were measured per sparsity choice and per bit-width
    pair, not per choice."""

    tie: str
    reference: Candidate
    base: float
    drops: dict[str, dict[str, float]]
    images: int = 0
    factored: bool = False
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    # ----- persistence ----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "tie": self.tie, "reference": self.reference.to_json(), "base": self.base, "drops": self.drops,
                "images": self.images, "factored": self.factored, "seconds": self.seconds, "extra": self.extra}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "sensitivity") -> "SensitivityTable":
        if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
            raise ValueError(f"{where}: not a sensitivity table of schema {SCHEMA}")
        try:
            drops = {str(g): {str(t): float(v) for t, v in d.items()} for g, d in data["drops"].items()}
            return cls(tie=str(data["tie"]), reference=Candidate.from_json(data["reference"]), base=float(data["base"]), drops=drops,
                       images=int(data.get("images", 0)), factored=bool(data.get("factored", False)),
                       seconds=float(data.get("seconds", 0.0)), extra=dict(data.get("extra") or {}))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"{where}: damaged sensitivity table ({exc})") from None

    # ----- use -------------------------------------------------------------------------------------
    def check_space(self, space: SearchSpace, where: str = "sensitivity") -> None:
        """Refuse a space whose compression genes are not the ones measured."""
        if space.tie != self.tie:
            raise ValueError(f"{where}: measured with compression.tie={self.tie!r}; the space ties {space.tie!r} (measure it again for this space)")
        missing = sorted(g.name[5:] for g in space.genes() if g.name.startswith("comp:") and g.name[5:] not in self.drops)
        if missing:
            raise ValueError(f"{where}: no drops for compression genes {missing[:5]}")

    def drop(self, gene: str, choice: LayerCompression, default: LayerCompression) -> float:
        """The measured drop of one gene at one choice (0 for the default; never below 0)."""
        if choice == default:
            return 0.0
        table = self.drops[gene]
        if not self.factored:
            return max(0.0, table[choice.token])
        parts = [sparsity_part(choice, default), bits_part(choice)]
        return sum(max(0.0, table[p.token]) for p in parts if p != default)

    def estimate(self, space: SearchSpace, candidate: Candidate) -> float:
        """Estimated accuracy drop (points) of ``candidate``'s plan: the sum of its genes' drops."""
        genome = space.to_genome(space.validate(candidate))
        default = space.menu.default()
        return sum(self.drop(g.name[5:], genome[g.name], default) for g in space._genes if g.name.startswith("comp:") and g.is_active(genome))

    def exclusions(self, space: SearchSpace, max_drop: float) -> dict[str, list[str]]:
        """The choices of each gene that alone cost more than ``max_drop`` points, as the
        ``compression.exclude`` option of ``space`` takes them (choices already off the menu
        are kept off)."""
        self.check_space(space)
        default = space.menu.default()
        out: dict[str, list[str]] = {}
        for gene in space.genes():
            if not gene.name.startswith("comp:"):
                continue
            name = gene.name[5:]
            bad = sorted(set(space.menu.excluded(name)) | {c.token for c in gene.choices if self.drop(name, c, default) > max_drop})
            if bad:
                out[name] = bad
        return out


def screened_space(space: SearchSpace, table: SensitivityTable, max_drop: float) -> SearchSpace:
    """``space`` without the choices `SensitivityTable.exclusions` names (its candidates are
    candidates of ``space``)."""
    from .screens import with_exclusions

    return with_exclusions(space, table.exclusions(space, max_drop))


def table_from_extra(extra: Mapping[str, Any], where: str = "supernet checkpoint") -> SensitivityTable | None:
    """The table stored in a checkpoint's ``extra`` header (None when there is none)."""
    data = extra.get(EXTRA_KEY) if isinstance(extra, Mapping) else None
    return None if data is None else SensitivityTable.from_json(data, f"{where}: extra.{EXTRA_KEY}")

