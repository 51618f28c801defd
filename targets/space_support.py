"""How targets that build real networks find the space of a candidate and say which spaces they
answer for.

`BuildsNetworks`: any space with a network builder (`tritune.spaces.SearchSpace.network`), the
registered one by name or a configured one passed in (a job's space). `BuildsMobileNets`: the
mobilenet spaces only, for targets whose code plans mobilenet networks itself (``codegen-cpu``).
"""
from __future__ import annotations

from typing import Any

from ..spaces.candidate import Candidate

#: The built-in spaces with a network builder.
SUPPORTED_SPACES = ("mobilenet", "mobilenet-small")


def is_mobilenet(space: Any) -> bool:
    from ..spaces.mobilenet.space import MobileNetSpace

    return isinstance(space, MobileNetSpace)


def builds_networks(space: Any) -> bool:
    """Whether ``space`` turns candidates into torch networks (`SearchSpace.network`)."""
    return bool(getattr(space, "builds_networks", False))


class BuildsNetworks:
    """Mixin for targets: `supports` and `resolve_space` for spaces with a network builder
    (registered ones by name, or any such space passed in, e.g. a job's configured space)."""

    name: str
    _spaces: dict[str, Any]
    #: What the target can build, for messages.
    builds_what = "spaces with a network builder (SearchSpace.network)"

    def accepts(self, space: Any) -> bool:
        return builds_networks(space)

    def _space(self, name: str) -> Any:
        cache = self.__dict__.setdefault("_spaces", {})
        if name not in cache:
            from ..spaces.registry import create

            cache[name] = create(name)
        return cache[name]

    def supports(self, space_name: str) -> bool:
        if space_name in SUPPORTED_SPACES:
            return True
        try:
            return self.accepts(self._space(space_name))
        except ValueError:
            return False

    def resolve_space(self, candidate: Candidate, space: Any = None) -> Any:
        """The space to build ``candidate`` in: ``space`` when given, else the registered one."""
        if space is None:
            try:
                space = self._space(candidate.space)
            except ValueError:
                space = None
        if space is None or not self.accepts(space):
            raise ValueError(f"{self.name}: cannot build candidates of space {candidate.space!r}; supported: "
                             f"{', '.join(SUPPORTED_SPACES)} (or, passed as space=, {self.builds_what})")
        if candidate.space != space.name:
            raise ValueError(f"{self.name}: candidate of space {candidate.space!r} given with space {space.name!r}")
        return space


class BuildsMobileNets(BuildsNetworks):
    """`BuildsNetworks` for the mobilenet spaces only."""

    builds_what = "any MobileNetSpace"

    def accepts(self, space: Any) -> bool:
        return is_mobilenet(space)
