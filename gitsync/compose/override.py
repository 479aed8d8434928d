"""An override file (``compose.override.yaml`` beside ``compose.yaml``) merged onto its compose
file as docker compose merges them (the compose specification's merge rules): mappings merge key
by key, sequences append, ``command``, ``entrypoint`` and ``healthcheck.test`` are replaced, the
entries of ``ports``, ``volumes``, ``secrets`` and ``configs`` replace those with the same unique key,
``environment``, ``labels``, ``extra_hosts``, ``depends_on`` and ``networks`` merge as mappings whichever
way each file writes them, ``!reset`` unsets and ``!override`` replaces. The override's lines stay
its own: they are numbered from LINE_BASE, so that a problem names the file it is in."""

from __future__ import annotations

from typing import Any

from ..core import yamlsrc

OVERRIDE_FILES = ("compose.override.yml", "compose.override.yaml", "docker-compose.override.yml", "docker-compose.override.yaml")
LINE_BASE = 10_000_000  # lines of the override file, shifted: no compose file has so many

REPLACED = {"command", "entrypoint"}
AS_MAPPING = {"environment", "labels", "extra_hosts", "depends_on", "networks", "sysctls", "annotations", "args"}
UNIQUE = {"ports", "volumes", "secrets", "configs"}


def is_override_file(path: str) -> bool:
    return path.rpartition("/")[2] in OVERRIDE_FILES


def shift_lines(tree: Any, by: int = LINE_BASE) -> None:
    """Number a tree's lines from `by` (each node once: an alias shares its node)."""
    seen: set[int] = set()

    def walk(n: Any) -> None:
        if id(n) in seen or not isinstance(n, (yamlsrc.Node, yamlsrc.NodeList, yamlsrc.Reset)):
            return
        seen.add(id(n))
        n.line = (n.line or 0) + by
        if isinstance(n, yamlsrc.Node):
            n.lines = {k: v + by for k, v in n.lines.items()}
            for v in n.values():
                walk(v)
        elif isinstance(n, yamlsrc.NodeList):
            n.lines = [v + by for v in n.lines]
            for v in n:
                walk(v)

    walk(tree)


def where(file: str, override: str | None, line: int | None) -> tuple[str, int | None]:
    """The file and line a (possibly shifted) line is in."""
    if override is not None and line is not None and line >= LINE_BASE:
        return override, line - LINE_BASE or None
    return file, line


def merge(base: Any, over: Any, key: str = "", depth: int = 0) -> Any:
    """`over` merged onto `base`; `key` is the name `over` has in its parent (its rules depend on it)."""
    if isinstance(over, yamlsrc.Reset):
        return over
    if getattr(over, "override", False) or key in REPLACED or (key == "test" and depth >= 3):
        return over
    if key in AS_MAPPING and depth >= 2 and isinstance(base, (dict, list)) and isinstance(over, (dict, list)):
        return merge(_as_mapping(base, key), _as_mapping(over, key), "", depth)
    if key == "logging" and isinstance(base, dict) and isinstance(over, dict) and over.get("driver", base.get("driver")) != base.get("driver"):
        return over  # another driver: the base's options mean nothing to it
    if isinstance(base, dict) and isinstance(over, dict):
        out = yamlsrc.Node()
        out.line = getattr(base, "line", 0)
        for k in list(base) + [k for k in over if k not in base]:
            if k in over and isinstance(over[k], yamlsrc.Reset):
                continue  # unset
            value = merge(base[k], over[k], str(k), depth + 1) if k in base and k in over else over[k] if k in over else base[k]
            out[k] = value
            both_maps = k in base and k in over and isinstance(base[k], dict) and isinstance(over[k], dict)
            out.lines[k] = _line(over, k) if k in over and not both_maps else _line(base, k)  # a merged mapping is where the base has it
        return out
    if isinstance(base, list) and isinstance(over, list):
        return _append(base, over, key if key in UNIQUE and depth >= 2 else "")
    return over


def _line(parent: Any, key: Any) -> int:
    return parent.line_of(key) if isinstance(parent, (yamlsrc.Node, yamlsrc.NodeList)) else 0


def _append(base: list[Any], over: list[Any], unique: str) -> yamlsrc.NodeList:
    """`over`'s entries after `base`'s; with a unique key, one that shares its key replaces the first."""
    out = yamlsrc.NodeList()
    out.line = getattr(base, "line", 0)
    entries = [(v, _line(base, i)) for i, v in enumerate(base)]
    for i, v in enumerate(over):
        k = _unique_key(unique, v) if unique else None
        at = next((j for j, (old, _) in enumerate(entries) if k is not None and _unique_key(unique, old) == k), None)
        if at is not None:
            entries[at] = (merge(entries[at][0], v, "", 3) if isinstance(v, dict) and isinstance(entries[at][0], dict) else v, _line(over, i))
        elif unique or v not in [old for old, _ in entries]:
            entries.append((v, _line(over, i)))
    for v, line in entries:
        out.append(v)
        out.lines.append(line)
    return out


def _unique_key(kind: str, entry: Any) -> Any:
    if kind == "ports":
        if isinstance(entry, dict):
            return (str(entry.get("host_ip") or ""), str(entry.get("target")), str(entry.get("published") or ""), str(entry.get("protocol") or "tcp"))
        text, _, proto = str(entry).partition("/")
        parts = text.rsplit(":", 2)
        ip, pub, target = ([""] * (3 - len(parts)) + parts) if len(parts) < 3 else parts
        return (ip.strip("[]"), target, pub, proto or "tcp")
    if kind == "volumes":
        if isinstance(entry, dict):
            return entry.get("target")
        parts = str(entry).split(":")
        return parts[1] if len(parts) > 1 else parts[0]
    # secrets and configs: by target, which defaults to the source's name
    if isinstance(entry, dict):
        return entry.get("target") or entry.get("source")
    return str(entry)


def _as_mapping(value: Any, key: str) -> Any:
    """A list written for a key that is a mapping at heart (KEY=VALUE, host:ip, service names)."""
    if isinstance(value, dict):
        return value
    out = yamlsrc.Node()
    out.line = getattr(value, "line", 0)
    for i, entry in enumerate(value):
        text = str(entry)
        v: Any
        if key in ("depends_on",):
            k, v = text, _node({"condition": "service_started"}, _line(value, i))
        elif key == "networks":
            k, v = text, None
        elif key == "extra_hosts":
            sep = "=" if "=" in text else ":"
            k, _, v = text.partition(sep)
        else:
            k, eq, rest = text.partition("=")
            v = rest if eq else None
        out[k] = v
        out.lines[k] = _line(value, i)
    return out


def _node(items: dict[str, Any], line: int) -> yamlsrc.Node:
    n = yamlsrc.Node()
    n.line = line
    for k, v in items.items():
        n[k], n.lines[k] = v, line
    return n
