"""Parts by name: the one `Registry` behind spaces, targets, evaluators, strategies, predictors and data sets.

A job file names its parts as text; a registry maps such a name to a factory (a class or a
function taking keyword options). `check_options` checks the options a file gives against the
factory's signature *and its type hints* before it is called, so ``checkpoint: 5`` or
``target: 0`` is one line naming the option and the expected type instead of a TypeError deep
inside.

Code enters a registry only two ways, never from a file's contents:

* `Registry.register` (each part's ``register_*`` function) in tritune or in the user's own Python;
* installed plug-ins: an entry point in the group ``tritune.<kind>s`` (``tritune.targets``,
  ``tritune.evaluators``, ``tritune.strategies``, ``tritune.spaces``, ``tritune.predictors``,
  ``tritune.datasets``) whose object is the factory::

      [project.entry-points."tritune.targets"]
      my-board = "my_package.targets:MyBoardTarget"

  Entry points are listed the first time a registry is asked about a name it does not know (or
  for a listing); each is imported only when its name is used (`PluginGroup`).

This module imports nothing of tritune, so every layer can use it.
"""
from __future__ import annotations

import collections.abc
import inspect
import math
import os
import types
import typing
from importlib.metadata import EntryPoint, entry_points
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar

__all__ = ["PluginGroup", "Registry", "check_options", "check_value", "describe_type", "parameters"]

_NONE = type(None)


# ---------------------------------------------------------------------------------------------
# values against type hints

def describe_type(hint: Any) -> str:
    """A type hint in words a job-file author reads: ``int``, ``str | None``, ``list of int``."""
    if hint is Any or hint is inspect.Parameter.empty:
        return "any value"
    if hint is _NONE or hint is None:
        return "null"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(dict.fromkeys(describe_type(a) for a in args))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if hint in (os.PathLike,) or origin is os.PathLike:
        return "a path"
    if origin in (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Iterable, collections.abc.Collection):
        inner = [a for a in args if a is not Ellipsis]
        if origin is tuple and args and Ellipsis not in args:
            return f"a list of {len(args)} ({', '.join(describe_type(a) for a in args)})"
        return f"a list of {_plural(inner[0])}" if inner else "a list"
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping) or hint in (dict, Mapping):
        return "a mapping"
    if hint in (list, tuple, collections.abc.Sequence):
        return "a list"
    if isinstance(hint, type):
        return {bool: "true | false", int: "an integer", float: "a number", str: "a string"}.get(hint, hint.__name__)
    return str(hint)


def _plural(hint: Any) -> str:
    words = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
    return words.get(hint, f"values of type {describe_type(hint)}") if isinstance(hint, type) else f"({describe_type(hint)})"


def _conforms(value: Any, hint: Any) -> bool:
    if hint is Any or hint is inspect.Parameter.empty or isinstance(hint, (str, typing.ForwardRef, typing.TypeVar)):
        return True  # unknown to us: the factory checks it
    if hint is None or hint is _NONE:
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if origin is typing.Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if origin is typing.Annotated:
        return _conforms(value, args[0])
    if hint is os.PathLike or origin is os.PathLike:
        return (isinstance(value, str) and value != "" and "\0" not in value) or isinstance(value, os.PathLike)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    sequence_origins = (list, tuple, collections.abc.Sequence, collections.abc.Iterable, collections.abc.Collection,
                        collections.abc.MutableSequence, set, frozenset)
    if origin in sequence_origins or hint in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and Ellipsis not in args:
            return len(value) == len(args) and all(_conforms(v, a) for v, a in zip(value, args))
        inner = [a for a in args if a is not Ellipsis]
        return not inner or all(_conforms(v, inner[0]) for v in value)
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping) or hint in (dict, Mapping, collections.abc.Mapping):
        if not isinstance(value, Mapping):
            return False
        if len(args) == 2:
            return all(_conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items())
        return True
    if origin is collections.abc.Callable or hint is collections.abc.Callable or hint is typing.Callable:
        return callable(value)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def check_value(value: Any, hint: Any, where: str) -> None:
    """Raise ValueError ``WHERE: VALUE not allowed; expected ...`` when ``value`` does not fit ``hint``."""
    if not _conforms(value, hint):
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        raise ValueError(f"{where}: {shown} ({type(value).__name__}) not allowed; expected {describe_type(hint)}")


def _hints(factory: Callable[..., Any]) -> dict[str, Any]:
    """Resolved parameter type hints of a factory (a class: of its ``__init__``); unresolvable ones skipped."""
    target = inspect.unwrap(factory)
    target = target.__init__ if isinstance(target, type) else target
    try:
        return typing.get_type_hints(target)
    except Exception:
        pass
    out: dict[str, Any] = {}
    raw = getattr(target, "__annotations__", {}) or {}
    globalns = getattr(inspect.unwrap(target), "__globals__", {})
    for name, annotation in raw.items():
        probe = types.FunctionType((lambda: None).__code__, globalns)
        probe.__annotations__ = {name: annotation}
        try:
            out[name] = typing.get_type_hints(probe)[name]
        except Exception:
            continue
    return out


# ---------------------------------------------------------------------------------------------
# options against a factory

def parameters(factory: Callable[..., Any], reserved: Iterable[str] = ()) -> dict[str, inspect.Parameter] | None:
    """The named parameters a factory takes as options (minus ``reserved``); None without a signature."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    reserved = set(reserved)
    return {p.name: p for p in signature.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in reserved}


def check_options(factory: Callable[..., Any], options: Mapping[str, Any], where: str, *, reserved: Iterable[str] = (),
                  python_only: Mapping[str, str] | None = None, unknown: str = "unknown options") -> None:
    """Raise ValueError naming the first option ``factory`` does not take, or whose value does not
    fit the factory's type hint.

    ``reserved``: parameters the caller fills itself (a strategy's ``seed``): a file giving one is
    told so. ``python_only``: option -> why it is refused from a file (an option that would let a
    file run code, such as a compiler command). ``unknown``: the words before the list of unknown
    options in the message."""
    for key in options:
        if not isinstance(key, str):
            raise ValueError(f"{where}: option name {key!r} must be a string")
    for key, why in (python_only or {}).items():
        if key in options:
            raise ValueError(f"{where}.{key}: not accepted from a file or the command line ({why})")
    reserved = tuple(reserved)
    for key in reserved:
        if key in options:
            raise ValueError(f"{where}.{key}: set by tritune, not an option here")
    params = parameters(factory, reserved)
    if params is None:
        return  # a builtin without a signature checks its own options
    takes_more = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())
    bad = sorted(set(options) - set(params))
    if bad and not takes_more:
        raise ValueError(f"{where}: {unknown} {bad}; allowed: {', '.join(params) or '(none)'}")
    hints = _hints(factory)
    for key, value in options.items():
        if key in params and key in hints:
            check_value(value, hints[key], f"{where}.{key}")


# ---------------------------------------------------------------------------------------------
# plug-ins

class PluginGroup:
    """The entry points of one group (``tritune.targets``, ...), listed once and loaded by name.

    ``discover(group)`` returns the entry points (`importlib.metadata.entry_points` by default; a
    test may pass another). Listing imports nothing; `load` imports one plug-in."""

    def __init__(self, group: str, discover: Callable[[str], Iterable[EntryPoint]] | None = None) -> None:
        self.group = group
        self._discover = discover or (lambda g: entry_points(group=g))
        self._found: dict[str, EntryPoint] | None = None

    def entry_points(self) -> dict[str, EntryPoint]:
        if self._found is None:
            found: dict[str, EntryPoint] = {}
            try:
                eps = list(self._discover(self.group))
            except Exception:  # a broken environment must not break the built-in parts
                eps = []
            for ep in eps:
                found.setdefault(ep.name, ep)
            self._found = found
        return self._found

    def refresh(self) -> None:
        """Forget discovered entry points (after installing a plug-in in a running process)."""
        self._found = None

    def describe(self) -> dict[str, str]:
        """Plug-in name -> ``plug-in module:object`` (nothing imported)."""
        return {name: f"plug-in {ep.value}" for name, ep in self.entry_points().items()}

    def load(self, name: str, where: str) -> Callable[..., Any] | None:
        """The plug-in's object (imported now), or None when no plug-in has that name."""
        ep = self.entry_points().get(name)
        if ep is None:
            return None
        try:
            obj = ep.load()
        except Exception as exc:
            raise ValueError(f"{where}: plug-in {ep.value!r} (entry point group {self.group}) failed to load: {exc}") from exc
        if not callable(obj):
            raise ValueError(f"{where}: plug-in {ep.value!r} (entry point group {self.group}) is not callable")
        return obj


# ---------------------------------------------------------------------------------------------
# the registry

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class _Entry:
    factory: Callable[..., Any] | None
    loader: Callable[[], Callable[..., Any]] | None
    description: str
    python_only: dict[str, str] = field(default_factory=dict)


class Registry(Generic[F]):
    """Names -> factories of one kind of part: built-ins, the user's registrations and installed plug-ins.

    ``noun`` names the part in messages (``"target"``); ``field`` is what a job file calls the
    name (``"evaluator kind"``; default ``noun``). ``group`` is the entry-point group plug-ins use.
    ``accept(obj, where)`` may refuse a plug-in's object with ValueError (a predictor kind must be
    a class that reads files back). ``discover`` replaces `importlib.metadata.entry_points`
    (tests)."""

    def __init__(self, noun: str, group: str, *, field: str | None = None,
                 accept: Callable[[Any, str], None] | None = None,
                 discover: Callable[[str], Iterable[EntryPoint]] | None = None) -> None:
        self.noun = noun
        self.field = field or noun
        self.plugins = PluginGroup(group, discover)
        self._accept = accept
        self._entries: dict[str, _Entry] = {}

    @property
    def group(self) -> str:
        return self.plugins.group

    def register(self, name: str, factory: F | None = None, description: str = "", *,
                 loader: Callable[[], F] | None = None, python_only: Mapping[str, str] | None = None) -> None:
        """File ``factory`` (or a ``loader`` returning it on first use, to keep imports lazy) under ``name``.

        Registering a name again replaces it. An empty ``description`` takes the factory's
        ``description`` attribute, else the first line of its docstring. ``python_only``: options refused from files and the command
        line (they would let a file run code), each with the way to set it instead."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.noun} name: {name!r} must be a non-empty string")
        if (factory is None) == (loader is None):
            raise ValueError(f"{self.noun} {name}: give exactly one of factory or loader")
        if factory is not None and not callable(factory):
            raise ValueError(f"{self.noun} {name}: factory {factory!r} is not callable")
        if not description and factory is not None:
            text = getattr(factory, "description", "")
            description = text if isinstance(text, str) and text else (getattr(factory, "__doc__", None) or "").strip().split("\n")[0]
        self._entries[name] = _Entry(factory, loader, description, dict(python_only or {}))

    def unregister(self, name: str) -> None:
        """Forget a registered name (a plug-in of that name is found again on next use)."""
        self._entries.pop(name, None)

    def describe(self) -> dict[str, str]:
        """Every known name -> one-line description, sorted; plug-ins are listed, not imported."""
        out = {name: entry.description for name, entry in self._entries.items()}
        for name, text in self.plugins.describe().items():
            out.setdefault(name, text)
        return dict(sorted(out.items()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._entries or name in self.plugins.entry_points())

    def find(self, name: Any) -> F | None:
        """The factory for ``name`` (a lazy built-in or a plug-in is imported now), or None."""
        if not isinstance(name, str) or not name:
            return None
        entry = self._entries.get(name)
        if entry is not None:
            if entry.factory is None:
                entry.factory = entry.loader()  # type: ignore[misc]
            return entry.factory  # type: ignore[return-value]
        where = f"{self.noun} {name}"
        obj = self.plugins.load(name, where)
        if obj is None:
            return None
        if self._accept is not None:
            self._accept(obj, where)
        self.register(name, obj)
        return obj  # type: ignore[return-value]

    def get(self, name: Any) -> F:
        """The factory for ``name``; ValueError naming the allowed names otherwise."""
        factory = self.find(name)
        if factory is None:
            raise ValueError(f"{self.field}: {name!r} not allowed; allowed: {', '.join(self.describe()) or '(none)'}")
        return factory

    def check(self, name: Any, options: Mapping[str, Any], where: str | None = None, *,
              reserved: Iterable[str] = (), trusted: bool = False) -> None:
        """Raise ValueError naming an unknown name, an option the factory does not take, a value of
        the wrong type, or (unless ``trusted``) an option refused from files."""
        factory = self.get(name)
        check_options(factory, options, where or f"{self.noun} {name}", reserved=reserved,
                      python_only=None if trusted else self._entries[name].python_only)

    def create(self, name: Any, /, *, trusted: bool = False, **options: Any) -> Any:
        """Check ``options`` (see `check`), then call the factory with them."""
        self.check(name, options, trusted=trusted)
        return self.get(name)(**options)
