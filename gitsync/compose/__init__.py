"""Compose files as desired state: ``compose.yaml`` (or ``compose.yml``, ``docker-compose.yaml``,
``docker-compose.yml``) under the source path is a compose project, one per folder, read in stages
as compose reads it: YAML (with compose's ``!reset`` and ``!override`` tags), interpolation (from the
project's ``.env`` and the variables the agent configuration names), the compose JSON schema, then
gitsync's mapping onto Deployments, Services and Volumes (`mapping`)."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any
from dataclasses import dataclass, field, replace

from ..core import yamlsrc
from ..core.errors import Problem
from ..core.models import Deployment
from ..core.repofiles import RepoFiles, Unreadable, inside
from . import schema
from .interpolate import interpolate_tree, parse_env_file
from .mapping import Doc, Project
from .override import LINE_BASE, OVERRIDE_FILES, merge, shift_lines, where

COMPOSE_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
PROJECT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class Stage(enum.StrEnum):
    YAML = "yaml"
    INTERPOLATION = "interpolation"
    SCHEMA = "schema"
    SEMANTIC = "semantic"


def is_compose_file(path: str) -> bool:
    return path.rpartition("/")[2] in COMPOSE_FILES


def is_override_file(path: str) -> bool:
    return path.rpartition("/")[2] in OVERRIDE_FILES


def is_env_file(path: str) -> bool:
    """The files compose projects read besides their own: .env, and env_file targets named *.env."""
    name = path.rpartition("/")[2]
    return name == ".env" or (name.endswith(".env") and not any(p.startswith(".") for p in path.split("/")[:-1]))


@dataclass
class Loaded:
    """A compose file read: its documents, or its problems and the stage that refused it."""

    file: str
    docs: list[Doc] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    stage: Stage | None = None
    project: str = ""
    warnings: list[str] = field(default_factory=list)


def project_name(file: str, declared: object) -> str:
    if isinstance(declared, str) and declared:
        return declared
    folder = file.rpartition("/")[0].rpartition("/")[2]
    return re.sub(r"[^a-z0-9_-]", "", folder.lower()).lstrip("_-") or "default"


def _non_string_keys(node: object, path: str = "") -> list[tuple[int, str]]:
    """Mapping keys that are not strings (`123:` as a service's name), refused as compose refuses them;
    x- extensions are the file's own business."""
    out: list[tuple[int, str]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            at = node.line_of(k) if isinstance(node, yamlsrc.Node) else 0
            if not isinstance(k, str):
                out.append((at, f"{path or 'the top level'}: the key {k!r} is not a string; quote it ('{k}') if it is a name"))
            elif not k.startswith("x-"):
                out += _non_string_keys(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for item in node:
            out += _non_string_keys(item, path)
    return out


def _unset(root: Any) -> Any:
    """What !reset unsets, gone: everywhere but inside a service, whose extends merges first (the
    service mapper unsets after it)."""
    out = yamlsrc.without_resets(yamlsrc.Node() if isinstance(root, yamlsrc.Reset) else root)
    services = root.get("services") if isinstance(root, dict) else None
    if isinstance(services, yamlsrc.Node):
        kept = yamlsrc.Node()
        kept.line = services.line
        for k, v in services.items():
            if not isinstance(v, yamlsrc.Reset):
                kept[k], kept.lines[k] = v, services.line_of(k)
        out["services"] = kept
    return out


def _read_root(text: bytes) -> tuple[Any, list[tuple[int, str]]]:
    """A compose file's one mapping, or why it is none."""
    try:
        docs = yamlsrc.load_all(bytes(text).decode("utf-8"), compose=True)
    except UnicodeDecodeError as exc:
        return None, [(0, f"not UTF-8 text (byte {exc.start})")]
    except yamlsrc.YamlSyntaxError as exc:
        return None, [(exc.line or 0, exc.message)]
    if len(docs) != 1 or not isinstance(docs[0][1], dict):
        return None, [(docs[1][0] if len(docs) > 1 else 1, "a compose file is one YAML mapping (services: ...)")]
    return docs[0][1], _non_string_keys(docs[0][1])


def load_project(
    file: str, files: Mapping[str, bytes], variables: Mapping[str, str] = {}, profiles: frozenset[str] = frozenset(), override: str | None = None,
    _name: str | None = None, _seen: tuple[str, ...] = (),
) -> Loaded:
    """The compose file `file` (with the `override` file beside it merged onto it, as docker compose
    merges compose.override.yaml) read, interpolated, validated and mapped."""
    out = Loaded(file)
    files = files if isinstance(files, RepoFiles) else RepoFiles(files)

    def refuse(stage: Stage, found: list[tuple[int, str]]) -> Loaded:
        out.stage = stage
        out.problems = [Problem(*where(file, override, line or None), message) for line, message in found]
        return out

    root, unread = _read_root(files[file])
    if root is None or unread:
        return refuse(Stage.YAML, unread)
    if override is not None:
        over, unread = _read_root(files[override])
        if over is None or unread:
            return refuse(Stage.YAML, [(line + LINE_BASE, message) for line, message in unread])
        shift_lines(over)
        root = merge(root, over)

    root = _unset(root)
    folder = file.rpartition("/")[0]
    scope = dict(variables)
    dotenv = files.get(f"{folder}/.env" if folder else ".env")
    found: list[tuple[int, str]] = []
    if dotenv is not None:
        values, bad = parse_env_file(bytes(dotenv).decode("utf-8", "replace"), variables)
        found += [(0, f"{folder + '/' if folder else ''}.env:{n}: {m}") for n, m in bad]
        scope = {**values, **variables}  # what the agent configuration names wins, as the shell's environment does for compose
    problems: list[tuple[int, str, str]] = []
    interpolate_tree(root, scope, problems)
    found += [(line, f"{path}: {message}") for line, path, message in problems]
    if found:
        return refuse(Stage.INTERPOLATION, found)

    found = schema.validate(root)
    if found:
        return refuse(Stage.SCHEMA, found)

    name = _name or project_name(file, root.get("name"))
    if not PROJECT_RE.match(name):
        return refuse(Stage.SEMANTIC, [(root.line_of("name"), f"name: {name!r} is not a project name (lower-case letters, digits, '-' and '_')")])
    included = _include(file, root, files, variables, profiles, name, _seen)
    if included.problems:
        out.stage, out.problems = included.stage, included.problems
        return out
    project = Project(file, name, root, files, scope, profiles, override, included=frozenset(d.name for d in included.docs if d.kind == Deployment.KIND))
    project.map()
    out.project = name
    out.docs = included.docs + [replace(d, file=file) for d in project.docs]
    out.warnings = included.warnings + project.warnings
    if project.problems:
        return refuse(Stage.SEMANTIC, [(line, f"{path}: {message}") for line, path, message in sorted(project.problems, key=lambda t: (t[0] or 0, t[1], t[2]))])
    return out


MAX_INCLUDE_DEPTH = 5


def _include(file: str, root: Any, files: RepoFiles, variables: Mapping[str, str], profiles: frozenset[str], name: str, seen: tuple[str, ...]) -> Loaded:
    """The compose files `include:` names (each read as compose reads it, relative to its own folder,
    with its own .env), as part of this project: their services, networks and volumes join it."""
    out = Loaded(file)
    entries = root.get("include") or []
    for i, entry in enumerate(entries):
        at = entries.line_of(i) if isinstance(entries, yamlsrc.NodeList) else root.line_of("include")
        path = entry if isinstance(entry, str) else entry.get("path") if isinstance(entry, dict) else None
        extra = [k for k in (entry if isinstance(entry, dict) else ()) if k != "path" and not str(k).startswith("x-")]
        paths = [path] if isinstance(path, str) else list(path) if isinstance(path, list) else []
        why = ""
        if extra:
            why = f"include {', '.join(map(str, extra))}: an included file is read from its own folder, with its own .env"
        elif len(paths) != 1:
            why = "one file per include entry"
        full = inside(file.rpartition("/")[0], str(paths[0])) if len(paths) == 1 else None
        if not why and full is None:
            why = f"{paths[0]}: is outside the repository"
        elif not why and (full in seen or len(seen) >= MAX_INCLUDE_DEPTH):
            why = f"{paths[0]}: includes itself (or more than {MAX_INCLUDE_DEPTH} levels)"
        elif not why and isinstance(unread := files.file(full or ""), Unreadable):
            why = f"{paths[0]}: {unread.why}"
        if why:
            out.stage, out.problems = Stage.SEMANTIC, [*out.problems, Problem(file, at or None, f"include[{i}]: {why}")]
            continue
        assert full is not None
        loaded = load_project(full, files, variables, profiles, _name=name, _seen=(*seen, file))
        if loaded.problems:
            out.stage, out.problems = loaded.stage, [*out.problems, *loaded.problems]
            continue
        out.docs += loaded.docs
        out.warnings += loaded.warnings
    return out


def included_files(path: str, files: Mapping[str, bytes]) -> list[str]:
    """The compose files a compose file includes (read only as far as to find them): they are part of
    its project, never projects of their own."""
    try:
        root = yamlsrc.load_all(bytes(files[path]).decode("utf-8"), compose=True)[0][1]
    except (yamlsrc.YamlSyntaxError, UnicodeDecodeError, IndexError, KeyError):
        return []
    entries = root.get("include") if isinstance(root, dict) else None
    out = []
    for entry in entries if isinstance(entries, list) else []:
        p = entry if isinstance(entry, str) else entry.get("path") if isinstance(entry, dict) else None
        full = inside(path.rpartition("/")[0], p) if isinstance(p, str) else None
        if full:
            out.append(full)
    return out


# Where a Deployment's manifest key comes from in a compose service, for messages about it.
COMPOSE_KEYS = {
    "replicas": "deploy.replicas", "env": "environment", "placement": "deploy.placement", "update": "deploy.update_config",
    "stopGracePeriod": "stop_grace_period", "minReadySeconds": "x-gitsync.minReadySeconds", "dependsOn": "depends_on",
    "allowDataMove": "x-gitsync.allowDataMove", "workingDir": "working_dir", "resources": "deploy.resources", "capAdd": "cap_add",
    "capDrop": "cap_drop", "readOnlyRootFilesystem": "read_only", "extraHosts": "extra_hosts", "shmSize": "shm_size",
    "stopSignal": "stop_signal", "securityOpt": "security_opt", "networkMode": "network_mode", "driverOpts": "driver_opts",
    "dnsSearch": "dns_search", "dnsOptions": "dns_opt", "pidsLimit": "pids_limit", "stdinOpen": "stdin_open",
    "externalNetworks": "networks", "groupAdd": "group_add", "oomScoreAdj": "oom_score_adj", "memSwappiness": "mem_swappiness",
    "memswapLimit": "memswap_limit", "runOnce": "depends_on (service_completed_successfully)",
}
_SPEC_KEY = re.compile(r"\bspec\.([A-Za-z]+)")


def compose_words(message: str, prefix: str = "") -> str:
    """A message about a mapped document in the compose file's terms: spec.stopSignal -> stop_signal."""
    return _SPEC_KEY.sub(lambda m: prefix + COMPOSE_KEYS.get(m.group(1), m.group(1)), message).replace("dependsOn cycle", "depends_on cycle")
