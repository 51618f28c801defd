"""What every target that builds real networks of the mobilenet spaces shares: which spaces it
answers for and how a candidate finds its (possibly user-configured) space."""
from __future__ import annotations

from typing import Any

from ..spaces.candidate import Candidate

SUPPORTED_SPACES = ("mobilenet", "mobilenet-small")


def is_mobilenet(space: Any) -> bool:
    from ..spaces.mobilenet import MobileNetSpace

    return isinstance(space, MobileNetSpace)


class BuildsMobileNets:
    """Mixin for targets: `supports` and `resolve_space` for mobilenet spaces (registered
    presets by name, or any `MobileNetSpace` passed in, e.g. a job's configured space)."""

    name: str
    _spaces: dict[str, Any]

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
            return is_mobilenet(self._space(space_name))
        except ValueError:
            return False

    def resolve_space(self, candidate: Candidate, space: Any = None) -> Any:
        """The space to build ``candidate`` in: ``space`` when given, else the registered one."""
        if space is None:
            try:
                space = self._space(candidate.space)
            except ValueError:
                space = None
        if space is None or not is_mobilenet(space):
            raise ValueError(f"{self.name}: cannot build candidates of space {candidate.space!r}; supported: "
                             f"{', '.join(SUPPORTED_SPACES)} (or any MobileNetSpace passed as space=)")
        if candidate.space != space.name:
            raise ValueError(f"{self.name}: candidate of space {candidate.space!r} given with space {space.name!r}")
        return space
