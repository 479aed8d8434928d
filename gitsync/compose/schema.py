"""Compose files checked against the compose specification's JSON schema (the copy shipped beside
this module: compose-go's, draft 2020-12, which `docker compose` validates with; Apache-2.0, see
LICENSE.compose-spec), each problem located as ``file:line: key.path: message``."""

from __future__ import annotations

import functools
import re
import json
from pathlib import Path
from typing import Any

import jsonschema

from ..core import yamlsrc

SCHEMA_FILE = Path(__file__).with_name("compose-spec.json")


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def _plain(node: Any) -> Any:
    """JSON-like values for the validator (YAML may give dates or non-string keys)."""
    if isinstance(node, dict):  # a value tagged !reset is unset
        return {str(k): _plain(v) for k, v in node.items() if not isinstance(v, yamlsrc.Reset)}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    return str(node)


def _locate(root: Any, path: list[Any]) -> tuple[int, str]:
    """The line of the deepest node along `path`, and the path as a.b[0].c."""
    node, line, shown = root, getattr(root, "line", 0), ""
    for part in path:
        if isinstance(node, yamlsrc.Node):
            key = next((k for k in node if str(k) == str(part)), part)
            line = node.line_of(key)
            node = node.get(key)
            shown = f"{shown}.{part}" if shown else str(part)
        elif isinstance(node, yamlsrc.NodeList) and isinstance(part, int):
            line = node.line_of(part)
            node = node[part] if part < len(node) else None
            shown = f"{shown}[{part}]"
        else:
            break
    return line, shown


def _message(err: jsonschema.ValidationError) -> tuple[list[Any], str]:
    """(path to point at, message) for one schema error, in a person's words."""
    path = list(err.absolute_path)
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        extra = [k for k in extra if not any(re.match(p, k) for p in err.schema.get("patternProperties", {}))]
        if extra:
            return [*path, extra[0]], "is not a compose key here" + (" (compose allows only x- extensions besides its own keys)" if path else "")
    if err.validator == "required":
        return path, err.message.replace("is a required property", "is required")
    if err.validator == "type":
        want = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        return path, f"must be {' or '.join(want)}, not {type(err.instance).__name__}"
    return path, err.message


def validate(root: Any) -> list[tuple[int, str]]:
    """Every schema problem of a loaded compose file as (line, "key.path: message"), in file order."""
    found = []
    for err in _validator().iter_errors(_plain(root)):
        best = jsonschema.exceptions.best_match([err]) if err.context else err
        path, message = _message(best)
        line, shown = _locate(root, path)
        found.append((line, f"{shown}: {message}" if shown else message))
    return sorted(set(found))
