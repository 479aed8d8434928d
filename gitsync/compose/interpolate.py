"""Compose's variable interpolation and its ``.env`` files.

``$VAR``, ``${VAR}``, ``${VAR:-default}`` (unset or empty), ``${VAR-default}`` (unset),
``${VAR:?error}`` / ``${VAR?error}``, ``${VAR:+alt}`` / ``${VAR+alt}``, ``$$`` for a literal
``$``; defaults and alternatives may themselves hold ``${...}``. An unset variable without a
default is the empty string, as compose has it. Variables come from the project's ``.env`` and
from those the agent's configuration names, never from the agent's own environment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..core import yamlsrc
from ..core.fields import shown

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class InterpolationError(ValueError):
    pass


MAX_NESTING = 20  # ${A:-${B:-...}} this deep at most: compose files nest one or two


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    out, pos = _expand(text, 0, variables, closing=False)
    return out


def _expand(text: str, pos: int, variables: Mapping[str, str], closing: bool, depth: int = 0) -> tuple[str, int]:
    """Expand from `pos` to the end (or, when `closing`, to the unmatched ``}``); (result, end)."""
    if depth > MAX_NESTING:
        raise InterpolationError(f"invalid interpolation format: defaults nested more than {MAX_NESTING} deep")
    out: list[str] = []
    while pos < len(text):
        c = text[pos]
        if closing and c == "}":
            return "".join(out), pos
        if c != "$":
            out.append(c)
            pos += 1
            continue
        nxt = text[pos + 1 : pos + 2]
        if nxt == "$":
            out.append("$")
            pos += 2
        elif nxt == "{":
            value, pos = _braced(text, pos + 2, variables, depth)
            out.append(value)
        else:
            m = NAME.match(text, pos + 1)
            if m is None:  # a lone $ stays as it is
                out.append("$")
                pos += 1
            else:
                out.append(variables.get(m.group(0), ""))
                pos = m.end()
    if closing:
        raise InterpolationError(f"invalid interpolation format in {shown(text)}: a '${{' is not closed")
    return "".join(out), pos


def _braced(text: str, pos: int, variables: Mapping[str, str], depth: int) -> tuple[str, int]:
    m = NAME.match(text, pos)
    if m is None:
        raise InterpolationError(f"invalid interpolation format in {shown(text)}: '${{' must be followed by a variable name")
    name, pos = m.group(0), m.end()
    if text[pos : pos + 1] == "}":
        return variables.get(name, ""), pos + 1
    op = text[pos : pos + 2] if text[pos : pos + 1] == ":" else text[pos : pos + 1]
    if op not in (":-", "-", ":?", "?", ":+", "+"):
        raise InterpolationError(f"invalid interpolation format in {shown(text)}: after ${{{name} comes '}}', ':-', '-', ':?', '?', ':+' or '+'")
    arg, end = _expand(text, pos + len(op), variables, closing=True, depth=depth + 1)
    value = variables.get(name)
    empty = value is None or (op.startswith(":") and value == "")
    if op in (":-", "-"):
        return (arg if empty else value or ""), end + 1
    if op in (":?", "?"):
        if empty:
            raise InterpolationError(f"required variable {name} is missing a value: {arg}" if arg else f"required variable {name} is missing a value")
        return value or "", end + 1
    return ("" if empty else arg), end + 1


def interpolate_tree(node: Any, variables: Mapping[str, str], problems: list[tuple[int, str, str]], path: str = "", line: int = 0) -> Any:
    """Every string value of a loaded YAML tree interpolated in place (keys are left as they are);
    problems as (line, key path, message)."""
    if isinstance(node, dict):
        for k in list(node):
            at = node.line_of(k) if isinstance(node, yamlsrc.Node) else line
            node[k] = interpolate_tree(node[k], variables, problems, f"{path}.{k}" if path else str(k), at)
        return node
    if isinstance(node, list):
        for i in range(len(node)):
            at = node.line_of(i) if isinstance(node, yamlsrc.NodeList) else line
            node[i] = interpolate_tree(node[i], variables, problems, f"{path}[{i}]", at)
        return node
    if isinstance(node, str) and "$" in node:
        try:
            return interpolate(node, variables)
        except InterpolationError as exc:
            problems.append((line, path, str(exc)))
    return node


_QUOTED = re.compile(r"""^'([^']*)'|^"((?:[^"\\]|\\.)*)\"""")
_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*(?:=\s*(.*?))?\s*$")


def parse_env_file(text: str, variables: Mapping[str, str] | None = None) -> tuple[dict[str, str], list[tuple[int, str]]]:
    """KEY=VALUE lines as compose reads them: ``#`` comments, ``export``, single quotes literal,
    double quotes with \\n escapes and ${VAR}, unquoted values up to an inline `` #`` comment.
    Returns (values, problems as (line, message))."""
    values: dict[str, str] = {}
    problems: list[tuple[int, str]] = []
    scope = dict(variables or {})
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        m = _ENV_LINE.match(raw)
        if m is None:
            problems.append((n, f"{raw.strip()[:40]!r} is not KEY=VALUE"))
            continue
        key, value = m.group(1), m.group(2) or ""
        try:
            quoted = _QUOTED.match(value)
            if quoted and quoted.group(1) is not None:
                value = quoted.group(1)
            elif quoted:
                value = interpolate(quoted.group(2).replace("\\n", "\n").replace('\\"', '"'), scope)
            else:
                value = interpolate(re.split(r"\s+#", value, maxsplit=1)[0].strip(), scope)
        except InterpolationError as exc:
            problems.append((n, str(exc)))
            continue
        values[key] = scope[key] = value
    return values, problems
