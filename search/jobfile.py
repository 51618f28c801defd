"""Reading job files (and other YAML / JSON the CLI reads) as plain, bounded data.

A job file is data from anywhere: a colleague, a bug report, a run directory someone sent. It is
read so that nothing in it can run code, hang or exhaust memory, and every refusal is one line
naming the file:

* size: at most `MAX_FILE_BYTES`; text must be UTF-8;
* YAML: only plain values (mappings with string keys, lists, strings, integers, finite or not
  floats, booleans, null). Tags beyond those (``!!python/...``, ``!!binary``, ``!!set``,
  timestamps, merge keys ``<<``) are refused or read as strings, and duplicate keys are refused;
* aliases: at most `MAX_ALIASES`, no alias inside itself, and the document with every alias
  expanded at most `MAX_NODES` values (a "billion laughs" bomb fails after reading a few hundred
  bytes, in milliseconds);
* nesting at most `MAX_DEPTH` levels and each string at most `MAX_STRING` characters.

`check_plain` applies the same bounds (and finiteness of numbers) to values that did not come
from a YAML file, such as the job stored in a run's ``trials.db``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = ["InputError", "MAX_ALIASES", "MAX_DEPTH", "MAX_FILE_BYTES", "MAX_NODES", "MAX_STRING", "check_plain",
           "loads_json", "loads_yaml", "read_json", "read_text", "read_yaml"]

MAX_FILE_BYTES = 1 << 20
MAX_ALIASES = 100
MAX_NODES = 100_000
MAX_DEPTH = 40
MAX_STRING = 10_000


class InputError(ValueError):
    """A file or value that is not acceptable input; the message names it."""


# ---------------------------------------------------------------------------------------------
# raw text

def read_text(path: str | os.PathLike, what: str = "file", limit: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of ``path``; InputError naming ``what`` and the path otherwise."""
    p = Path(path)
    label = f"{what} {str(p)!r}"
    try:
        if p.exists() and not p.is_dir() and not p.is_file():
            raise InputError(f"{label}: not a regular file")
        with open(p, "rb") as fh:
            raw = fh.read(limit + 1)
    except FileNotFoundError:
        raise InputError(f"{label}: not found") from None
    except IsADirectoryError:
        raise InputError(f"{label}: is a directory, expected a file") from None
    except NotADirectoryError:
        raise InputError(f"{label}: a part of the path is a file, not a directory") from None
    except PermissionError:
        raise InputError(f"{label}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{label}: cannot read ({exc.strerror or exc})") from None
    if len(raw) > limit:
        raise InputError(f"{label}: larger than {limit} bytes; not a {what}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{label}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); not a {what}") from None
    if "\0" in text:
        raise InputError(f"{label}: holds NUL bytes; not a {what}")
    return text


# ---------------------------------------------------------------------------------------------
# YAML

_ALLOWED_TAGS = {
    "tag:yaml.org,2002:null", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:str", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map",
}


class _LimitError(yaml.YAMLError):
    def __init__(self, message: str, mark: Any = None) -> None:
        super().__init__(message)
        self.message, self.mark = message, mark


class _PlainLoader(yaml.SafeLoader):
    """SafeLoader restricted to plain values, with bounded aliases, depth and expanded size."""

    # implicit types: no timestamps (they would become datetime objects), no merge keys, no '='
    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers
                if tag not in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:merge", "tag:yaml.org,2002:value")]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    yaml_constructors = {tag: fn for tag, fn in yaml.SafeLoader.yaml_constructors.items() if tag in _ALLOWED_TAGS}

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _LimitError(f"more than {MAX_ALIASES} aliases (*name); refused as a possible alias bomb", self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _LimitError(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_undefined(self, node: Any) -> Any:
        raise _LimitError(f"tag {node.tag!r} not allowed; allowed: plain strings, numbers, booleans, null, lists and mappings",
                          node.start_mark)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[str, Any] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else type(key_node).__name__
                raise _LimitError(f"key {shown!r} is not a string (quote it)", key_node.start_mark)
            key = key_node.value
            if key in seen:
                raise _LimitError(f"duplicate key {key!r} (first on line {seen[key].line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_PlainLoader.add_constructor(None, _PlainLoader.construct_undefined)


def _expanded_size(root: Any) -> None:
    """Refuse a node graph whose alias-expanded form has more than MAX_NODES values, or a cycle."""
    sizes: dict[int, int] = {}
    state: dict[int, int] = {}  # 1 = on the stack, 2 = done
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        key = id(node)
        if isinstance(node, yaml.ScalarNode):
            if len(node.value) > MAX_STRING:
                raise _LimitError(f"a string of {len(node.value)} characters; at most {MAX_STRING} allowed", node.start_mark)
            sizes[key] = 1
            continue
        children = [v for pair in node.value for v in pair] if isinstance(node, yaml.MappingNode) else list(node.value)
        if leaving:
            total = 1 + sum(sizes[id(c)] for c in children)
            if total > MAX_NODES:
                raise _LimitError(f"more than {MAX_NODES} values once aliases are expanded; refused as a possible alias bomb",
                                  node.start_mark)
            sizes[key] = total
            state[key] = 2
            continue
        if state.get(key) == 2:
            continue
        if state.get(key) == 1:
            raise _LimitError("an alias refers to a collection that contains it (a cycle)", node.start_mark)
        state[key] = 1
        stack.append((node, True))
        for child in children:
            if isinstance(child, yaml.ScalarNode) or state.get(id(child)) != 2:
                if state.get(id(child)) == 1:
                    raise _LimitError("an alias refers to a collection that contains it (a cycle)", child.start_mark)
                stack.append((child, False))


def _where(label: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "message", None) or str(exc)
    context = getattr(exc, "context", None)
    text = f"{context}, {problem}" if context and problem and context not in problem else str(problem)
    at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{label}: not valid YAML{at}: {' '.join(text.split())}"


def loads_yaml(text: str, label: str = "YAML", root: str = "") -> Any:
    """Parse one YAML document into plain values within the module's bounds; errors start with
    ``label`` and name a field as a path from ``root`` (``job.constraints[0].max``)."""
    if len(text) > MAX_FILE_BYTES:
        raise InputError(f"{label}: larger than {MAX_FILE_BYTES} characters")
    loader = None
    try:
        loader = _PlainLoader(text)  # the reader checks for non-printable characters at once
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise InputError(_where(label, exc)) from None
    except RecursionError:
        raise InputError(f"{label}: nested too deeply") from None
    except InputError:
        raise
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise InputError(f"{label}: {' '.join(str(exc).split())}") from None
    finally:
        if loader is not None:
            loader.dispose()
    check_plain(data, root, label=label)
    return data


def read_yaml(path: str | os.PathLike, what: str = "YAML file", root: str = "") -> Any:
    """`read_text` + `loads_yaml`, errors naming ``what`` and the path."""
    return loads_yaml(read_text(path, what), f"{what} {str(Path(path))!r}", root)


# ---------------------------------------------------------------------------------------------
# JSON

def _no_duplicates(label: str):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise InputError(f"{label}: duplicate key {key!r}")
            out[key] = value
        return out
    return hook


def _no_constant(label: str):
    def hook(name: str) -> Any:
        raise InputError(f"{label}: {name} not allowed; numbers must be finite")
    return hook


def loads_json(text: str, label: str = "JSON") -> Any:
    """Parse JSON into plain values within the module's bounds (no NaN, no duplicate keys)."""
    if len(text) > MAX_FILE_BYTES * 64:
        raise InputError(f"{label}: larger than {MAX_FILE_BYTES * 64} characters")
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates(label), parse_constant=_no_constant(label))
    except json.JSONDecodeError as exc:
        raise InputError(f"{label}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise InputError(f"{label}: nested too deeply") from None
    except InputError:
        raise
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise InputError(f"{label}: {' '.join(str(exc).split())}") from None
    check_plain(data, "", label=label, max_nodes=None)
    return data


def read_json(path: str | os.PathLike, what: str = "JSON file", limit: int = MAX_FILE_BYTES) -> Any:
    """`read_text` + `loads_json`, errors naming ``what`` and the path."""
    return loads_json(read_text(path, what, limit), f"{what} {str(Path(path))!r}")


# ---------------------------------------------------------------------------------------------
# plain values

def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_plain(value: Any, where: str, *, label: str = "", max_depth: int = MAX_DEPTH, max_nodes: int | None = MAX_NODES,
                max_string: int = MAX_STRING) -> None:
    """Refuse anything but plain, bounded, finite values (iteratively: no recursion on deep input).

    Allowed: mappings with string keys, lists / tuples, strings, ints, finite floats, bools,
    ``None``. Python callers may also pass ``os.PathLike`` values (paths). A refusal reads
    ``LABEL: WHERE.field[i]: ...``."""
    prefix = f"{label}: " if label else ""

    def path_of(link: tuple | None) -> str:
        parts: list[str] = []
        while link is not None:
            link, key = link
            parts.append(f"[{key}]" if isinstance(key, int) else (f".{key}" if link is not None or where else str(key)))
        return where + "".join(reversed(parts))

    def fail(link: tuple | None, detail: str) -> InputError:
        return InputError(f"{prefix}{path_of(link) or 'the document'}: {detail}")

    # a stack entry: (value, link to its place as (parent link, key), depth); paths are only spelled out on failure
    stack: list[tuple[Any, tuple | None, int]] = [(value, None, 0)]
    nodes = 0
    scalars = (bool, int, type(None))
    while stack:
        item, link, depth = stack.pop()
        nodes += 1
        if max_nodes is not None and nodes > max_nodes:
            raise fail(None, f"more than {max_nodes} values")
        kind = type(item)
        if kind in scalars:
            continue
        if kind is str:
            if len(item) > max_string:
                raise fail(link, f"a string of {len(item)} characters; at most {max_string} allowed")
            continue
        if kind is float:
            if not math.isfinite(item):
                raise fail(link, f"{item!r} not allowed; numbers must be finite")
            continue
        if depth >= max_depth and isinstance(item, (Mapping, list, tuple)):
            raise fail(link, f"nested deeper than {max_depth} levels")
        if kind is dict or isinstance(item, Mapping):
            for key, child in item.items():
                if type(key) is not str:
                    raise fail(link, f"key {_show(key)} is not a string")
                stack.append((child, (link, key), depth + 1))
            continue
        if kind is list or kind is tuple:
            for i, child in enumerate(item):
                stack.append((child, (link, i), depth + 1))
            continue
        if isinstance(item, (bool, int)):  # int / bool subclasses
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise fail(link, f"{item!r} not allowed; numbers must be finite")
            continue
        if isinstance(item, str):
            stack.append((str(item), link, depth))
            continue
        if isinstance(item, os.PathLike):
            continue
        raise fail(link, f"{type(item).__name__} value {_show(item)} not allowed; allowed: plain strings, numbers, "
                         "booleans, null, lists and mappings")
