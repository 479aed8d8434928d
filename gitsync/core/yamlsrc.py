"""Safe YAML that remembers where each value came from.

Mappings load as :class:`Node` dicts and sequences as :class:`NodeList`, each
knowing the line of every key or item, so that validation can report
``file:line`` with the key path. Duplicate keys, which plain PyYAML silently
collapses, are errors here. Only the safe tags are understood.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml


class Node(dict[Any, Any]):
    """A mapping with the line of each key (1-based)."""

    line: int = 0
    override = False  # tagged !override in a compose file: replaces what it merges onto

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[Any, int] = {}

    def line_of(self, key: Any) -> int:
        return self.lines.get(key, self.line)


class NodeList(list[Any]):
    """A sequence with the line of each item (1-based)."""

    line: int = 0
    override = False

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[int] = []

    def line_of(self, index: int) -> int:
        return self.lines[index] if 0 <= index < len(self.lines) else self.line


class DuplicateKeyError(yaml.MarkedYAMLError):
    pass


# libyaml's parser where PyYAML was built with it (its wheels are): a 1 MiB manifest parses in a
# second instead of half a minute of pure Python. The constructors below are the same either way.
class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    # Plain scalars as docker compose reads them (go-yaml v3: YAML 1.2 with 1.1's octals): booleans
    # are only true/false, null only ~/null/empty, no base 60 (`- 22:22` stays the string "22:22",
    # not 1342), and `yes`/`no`/`on`/`off` and timestamps stay strings.
    yaml_implicit_resolvers: dict[str, list[tuple[str, re.Pattern[str]]]] = {}


_CORE_SCHEMA = (
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:int", r"^[-+]?(?:0b[01_]+|0o[0-7_]+|0x[0-9a-fA-F_]+|0[0-7_]*|[1-9][0-9_]*)$", "-+0123456789"),
    ("tag:yaml.org,2002:float", r"^(?:[-+]?(?:\.[0-9_]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+0123456789."),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", "~nN"),
    ("tag:yaml.org,2002:merge", r"^<<$", "<"),
)
for _tag, _pattern, _first in _CORE_SCHEMA:
    _Loader.add_implicit_resolver(_tag, re.compile(_pattern), [*_first, ""] if _tag.endswith("null") else list(_first))


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    """As go-yaml v3 reads an integer: underscores ignored, 0b binary, 0o or a leading 0 octal, 0x hexadecimal."""
    text = str(loader.construct_scalar(node)).replace("_", "")
    sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text.lstrip("+"))
    for prefix, base in (("0b", 2), ("0o", 8), ("0x", 16)):
        if digits.startswith(prefix):
            return sign * int(digits[2:], base)
    return sign * int(digits, 8 if len(digits) > 1 and digits.startswith("0") else 10)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)  # type: ignore[arg-type]


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Iterator[Node]:
    data = Node()
    data.line = node.start_mark.line + 1
    yield data
    own = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
    loader.flatten_mapping(node)  # merged pairs first (later sources first), then the mapping's own
    merged = len(node.value) - own
    explicit: set[Any] = set()
    for i, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, "found an unhashable key", key_node.start_mark
            ) from None
        if i >= merged:  # a key written here: written twice is an error, over a merged one it overrides (`<<`)
            if key in explicit:
                raise DuplicateKeyError(
                    "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
                )
            explicit.add(key)
        data[key] = loader.construct_object(value_node, deep=True)
        data.lines[key] = key_node.start_mark.line + 1


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> Iterator[NodeList]:
    data = NodeList()
    data.line = node.start_mark.line + 1
    yield data
    for child in node.value:
        data.append(loader.construct_object(child, deep=True))
        data.lines.append(child.start_mark.line + 1)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)  # type: ignore[arg-type]
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)  # type: ignore[arg-type]


class Reset:
    """A value tagged ``!reset`` in a compose file: the key is unset (compose's merge tags)."""

    line: int = 0


def without_resets(value: Any) -> Any:
    """A tree with every value tagged ``!reset`` unset (a mapping's key dropped, a list's item dropped)."""
    if isinstance(value, Node):
        out = Node()
        out.line, out.override = value.line, value.override
        for k, v in value.items():
            if not isinstance(v, Reset):
                out[k], out.lines[k] = without_resets(v), value.line_of(k)
        return out
    if isinstance(value, NodeList):
        items = NodeList()
        items.line, items.override = value.line, value.override
        for i, v in enumerate(value):
            if not isinstance(v, Reset):
                items.append(without_resets(v))
                items.lines.append(value.line_of(i))
        return items
    return value


class _ComposeLoader(_Loader):
    """Also reads the tags compose defines: ``!reset`` (unset) and ``!override`` (the value as is)."""


def _construct_reset(loader: _Loader, suffix: str, node: yaml.Node) -> Reset:
    r = Reset()
    r.line = node.start_mark.line + 1
    return r


def _construct_override(loader: _Loader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        plain = type(node)("tag:yaml.org,2002:" + ("map" if isinstance(node, yaml.MappingNode) else "seq"), node.value, node.start_mark, node.end_mark)
        value = loader.construct_object(plain, deep=True)
        value.override = True
        return value
    return loader.construct_scalar(node)


_ComposeLoader.add_multi_constructor("!reset", _construct_reset)  # type: ignore[arg-type]
_ComposeLoader.add_multi_constructor("!override", _construct_override)  # type: ignore[arg-type]


TOO_DEEP = "nested too deeply to read; flatten this document"


def _aliasing(root: yaml.Node) -> str | None:
    """Why a document's anchors and aliases expand too far, or None: go-yaml v3's rule (what docker
    compose refuses as "excessive aliasing"), counted on the node graph without expanding it. Of the
    values a reader meets when it walks the expanded document, more than 100 through aliases, and
    more than a share of them that falls from 99 % (up to 400,000 values) to 10 % (4,000,000)."""
    size: dict[int, int] = {}  # id(node) -> values in it when expanded
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # depth first, iterative: a document may be deep
        node, done = stack.pop()
        if id(node) in size:
            continue
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else node.value if isinstance(node, yaml.SequenceNode) else []
        if done:
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)
    expanded, written = size[id(root)], len(size)
    via_aliases = expanded - written
    low, high = 400_000, 4_000_000
    allowed = 0.99 if expanded <= low else 0.10 if expanded >= high else 0.99 - 0.89 * (expanded - low) / (high - low)
    if via_aliases > 100 and expanded > 1000 and via_aliases / expanded > allowed:
        return f"excessive aliasing: its anchors and aliases expand {written} written values to {expanded}; write the repeated parts out, or use fewer levels of aliases"
    return None


class YamlSyntaxError(Exception):
    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _syntax_error(exc: yaml.YAMLError, text: str) -> YamlSyntaxError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    if "nesting depth" in problem:  # newer libyaml stops there; older ones and Python's parser recurse until RecursionError
        return YamlSyntaxError(line, TOO_DEEP)
    message = f"invalid YAML: {problem}"
    if context and "duplicate key" not in problem:
        message += f" ({context})"
    if "found character" in problem and mark is not None and _char_at(text, mark.line, mark.column) == "\t":
        message = message.replace("found character that", "found character '\\t' that") + "; indent with spaces, not tabs"
    return YamlSyntaxError(line, message)


def _char_at(text: str, line: int, column: int) -> str:
    lines = text.splitlines()
    return lines[line][column] if 0 <= line < len(lines) and 0 <= column < len(lines[line]) else ""


def load_all(text: str, compose: bool = False) -> list[tuple[int, Any]]:
    """Every document of a YAML stream with the line it starts on (`compose`: with compose's tags).

    Raises :class:`YamlSyntaxError` with the line of the first problem.
    """
    loader = (_ComposeLoader if compose else _Loader)(text)
    docs: list[tuple[int, Any]] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            why = _aliasing(node)
            if why is not None:
                raise YamlSyntaxError(node.start_mark.line + 1, why)
            docs.append((node.start_mark.line + 1, loader.construct_document(node)))
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, text) from None
    except RecursionError:  # the parser and the constructor recurse per level of nesting
        raise YamlSyntaxError(getattr(loader, "line", 0) + 1, TOO_DEEP) from None
    finally:
        loader.dispose()
    return docs


def load_one(text: str) -> Any:
    docs = load_all(text)
    if len(docs) > 1:
        raise YamlSyntaxError(docs[1][0], "expected a single YAML document, found several")
    return docs[0][1] if docs else None
