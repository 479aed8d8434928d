"""Reading one document's fields: typed values out of YAML nodes, every problem located as
``file:line: key.path: message``. What the kinds' parsers are written with."""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from . import yamlsrc
from .errors import Problem
from .units import parse_duration

MAX_REPLICAS = 1000

NAME_RE = re.compile(r"^[a-z0-9]([-_a-z0-9]*[a-z0-9])?$")  # '_' as compose's service names have it (never in an agent's name)
LABEL_KEY_RE = re.compile(r"^([a-zA-Z0-9]([-a-zA-Z0-9.]*[a-zA-Z0-9])?/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
VOLUME_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
# The reference grammar of the distribution project (docker/distribution reference/regexp.go), condensed.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*(?::[0-9]+)?"
IMAGE_RE = re.compile(
    rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{{32,}})?$"
)


@dataclass
class Ctx:
    """Collects problems for one document."""

    file: str
    problems: list[Problem]
    repo: Any = None  # the revision's RepoFiles, for what a document names in the repository (spec.files)
    secrets: Any = None  # the load's secrets.SecretReader (keys, whether it may decrypt)
    encrypted: bool = False  # the document came from a file sops encrypted

    def add(self, line: int | None, path: str, message: str) -> None:
        self.problems.append(Problem(self.file, line, f"{path}: {message}" if path else message))


MISSING = object()


class Obj:
    """A mapping being read: takes known keys, and reports what is left as unknown."""

    def __init__(self, ctx: Ctx, node: Any, path: str, line: int) -> None:
        self.ctx = ctx
        self.path = path
        self.ok = isinstance(node, dict)
        self.node: dict[Any, Any] = node if self.ok else {}
        self.line = line or getattr(node, "line", 0)
        self.seen: set[Any] = set()
        if not self.ok and node is not None:
            ctx.add(line, path, f"must be a mapping, not {type_name(node)}")

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def line_of(self, key: Any) -> int:
        return self.node.line_of(key) if isinstance(self.node, yamlsrc.Node) else self.line

    def get(self, key: str, default: Any = MISSING, required: bool = False) -> Any:
        self.seen.add(key)
        if key not in self.node or self.node[key] is None:
            if required and self.ok:
                self.ctx.add(self.line, self.sub(key), "is required")
            return default
        return self.node[key]

    def finish(self, hint: Iterable[str] = ()) -> None:
        for key in self.node:
            if key not in self.seen:
                known = ", ".join(sorted(str(k) for k in self.seen))
                self.ctx.add(self.line_of(key), self.sub(str(key)), f"unknown key (known keys here: {known})")


def shown(value: Any) -> str:
    """A value as a message quotes it: a string, shortened; anything else by its type only (a nested
    value, a YAML alias bomb above all, is never expanded into a message)."""
    if isinstance(value, str):
        return repr(value if len(value) <= 80 else value[:77] + "...")
    if isinstance(value, (bool, int, float)) or value is None:
        return repr(value)
    return type_name(value)


_TYPE_NAMES = ((bool, "a boolean"), ((int, float), "a number"), (str, "a string"), (list, "a list"), (dict, "a mapping"))  # bool first: it is an int


def type_name(value: Any) -> str:
    return next((name for t, name in _TYPE_NAMES if isinstance(value, t)), type(value).__name__)


def read_host_ip(ctx: Ctx, obj: Obj, host_port: int | None) -> str | None:
    """`hostIP`: the host address a hostPort is published on (an IP address; 0.0.0.0 and :: mean every one)."""
    value = read_str(ctx, obj, "hostIP")
    if value is None:
        return None
    try:
        address = ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        ctx.add(obj.line_of("hostIP"), obj.sub("hostIP"), f"{shown(value)} is not an IP address (e.g. 127.0.0.1)")
        return None
    if host_port is None:
        ctx.add(obj.line_of("hostIP"), obj.sub("hostIP"), "means nothing without hostPort")
        return None
    return None if address.is_unspecified else str(address)


def read_int(ctx: Ctx, obj: Obj, key: str, default: int | None, minimum: int, maximum: int) -> int | None:
    value = obj.get(key, None)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        ctx.add(obj.line_of(key), obj.sub(key), f"must be a whole number, not {type_name(value)}")
        return default
    if value < minimum:
        ctx.add(obj.line_of(key), obj.sub(key), f"must be >= {minimum}")
        return default
    if value > maximum:
        ctx.add(obj.line_of(key), obj.sub(key), f"must be <= {maximum}")
        return default
    return value


def read_str(ctx: Ctx, obj: Obj, key: str, required: bool = False) -> str | None:
    value = obj.get(key, None, required=required)
    if value is None:
        return None
    if not isinstance(value, str):
        ctx.add(obj.line_of(key), obj.sub(key), f"must be a string, not {type_name(value)}")
        return None
    return value


def read_bool(ctx: Ctx, obj: Obj, key: str, default: bool = False) -> bool:
    value = obj.get(key, None)
    if value is None:
        return default
    if not isinstance(value, bool):
        ctx.add(obj.line_of(key), obj.sub(key), f"must be true or false, not {type_name(value)}")
        return default
    return value


P = TypeVar("P")


def read_parsed(ctx: Ctx, obj: Obj, key: str, parse: Callable[[Any], P], default: P) -> P:
    """The value parsed by `parse` (whose ValueError says what is wrong), or `default`."""
    value = obj.get(key, None)
    if value is None:
        return default
    try:
        return parse(value)
    except ValueError as exc:
        ctx.add(obj.line_of(key), obj.sub(key), str(exc))
        return default


def read_duration(ctx: Ctx, obj: Obj, key: str, default: float) -> float:
    return read_parsed(ctx, obj, key, parse_duration, default)


E = TypeVar("E", bound=enum.StrEnum)


def read_enum(ctx: Ctx, obj: Obj, key: str, default: E) -> E:
    value = read_str(ctx, obj, key)
    if value is None:
        return default
    try:
        return type(default)(value)
    except ValueError:
        ctx.add(obj.line_of(key), obj.sub(key), f"{shown(value)} is not one of {', '.join(type(default))}")
        return default


def path_problem(path: str) -> str | None:
    """Why `path` cannot be given to Docker as written, or None. Absolute; no ':' (Docker's separator
    in a mount); no '..' component: the policy judges a host path as written, and '..' would walk out
    of the prefix it names (so it is refused in a container path too, for one rule everywhere)."""
    if not path.startswith("/"):
        return "must be an absolute path"
    if ":" in path or "\0" in path:
        return "must be a path without ':' or NUL characters"
    if ".." in path.split("/"):
        return "must be written without '..' components (write the path it means)"
    return None


NUL = "contains a NUL character, which no process can be given (Docker would create the container and fail to start it)"


def read_str_map(ctx: Ctx, obj: Obj, key: str, key_re: re.Pattern[str], what: str) -> tuple[tuple[str, str], ...]:
    value = obj.get(key, None)
    if value is None:
        return ()
    if not isinstance(value, dict):
        ctx.add(obj.line_of(key), obj.sub(key), f"must be a mapping of {what}, not {type_name(value)}")
        return ()
    out: list[tuple[str, str]] = []
    for k, v in value.items():
        line = value.line_of(k) if isinstance(value, yamlsrc.Node) else obj.line_of(key)
        path = f"{obj.sub(key)}.{k}"
        if not isinstance(k, str) or not key_re.match(k):
            ctx.add(line, path, f"is not a valid {what} name")
            continue
        if isinstance(v, bool):
            ctx.add(line, path, f"must be a string; quote it (\"{str(v).lower()}\") to keep YAML from reading a boolean")
            continue
        if isinstance(v, (int, float)):
            v = str(v)
        if not isinstance(v, str):
            ctx.add(line, path, f"must be a string, not {type_name(v)}")
            continue
        if "\0" in v:
            ctx.add(line, path, NUL)
            continue
        out.append((k, v))
    return tuple(sorted(out))


def read_list(ctx: Ctx, obj: Obj, key: str) -> list[tuple[int, str, Any]]:
    value = obj.get(key, None)
    if value is None:
        return []
    if not isinstance(value, list):
        ctx.add(obj.line_of(key), obj.sub(key), f"must be a list, not {type_name(value)}")
        return []
    lines = value.lines if isinstance(value, yamlsrc.NodeList) else []
    return [
        (lines[i] if i < len(lines) else obj.line_of(key), f"{obj.sub(key)}[{i}]", item) for i, item in enumerate(value)
    ]


def read_command(ctx: Ctx, obj: Obj, key: str) -> tuple[str, ...] | None:
    value = obj.get(key, None)
    if value is None:
        return None
    if isinstance(value, str):
        ctx.add(obj.line_of(key), obj.sub(key), 'must be a list of strings, e.g. ["httpd", "-f"] (no shell parsing is done)')
        return None
    items = read_list(ctx, obj, key)
    out: list[str] = []
    for line, path, item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            ctx.add(line, path, f"must be a string, not {type_name(item)}")
            continue
        if "\0" in str(item):
            ctx.add(line, path, NUL)
            continue
        out.append(str(item))
    if not out and items == [] and isinstance(value, list) and not value:
        ctx.add(obj.line_of(key), obj.sub(key), "must not be empty; leave it out to use the image's default")
    return tuple(out)


