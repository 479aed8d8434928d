"""Load and validate manifests: all or nothing, every problem as ``file:line: key: message``.

Pure: it takes file contents (path -> bytes), never reads the disk itself, so
that a git tree, a folder and a test table all load the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import yamlsrc
from .errors import ManifestError, Problem
from .models import (
    DesiredState,
    Deployment,
    Healthcheck,
    Origin,
    Placement,
    Port,
    RestartPolicy,
    Service,
    ServicePort,
    UpdateOrder,
    UpdatePolicy,
    VolumeMount,
)
from .units import parse_duration

API_VERSION = "gitsync.io/v1"
KINDS = ("Deployment", "Service")
MAX_FILE_BYTES = 1024 * 1024
MAX_TOTAL_BYTES = 32 * 1024 * 1024
MAX_FILES = 2000
MAX_REPLICAS = 1000

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^([a-zA-Z0-9]([-a-zA-Z0-9.]*[a-zA-Z0-9])?/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
VOLUME_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
# The reference grammar of the distribution project (docker/distribution reference/regexp.go), condensed.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*(?::[0-9]+)?"
IMAGE_RE = re.compile(
    rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{{32,}})?$"
)


def is_manifest_file(path: str) -> bool:
    parts = path.split("/")
    if any(p.startswith(".") for p in parts):
        return False
    return path.endswith((".yaml", ".yml"))


@dataclass
class _Ctx:
    """Collects problems for one document."""

    file: str
    problems: list[Problem]

    def add(self, line: int | None, path: str, message: str) -> None:
        self.problems.append(Problem(self.file, line, f"{path}: {message}" if path else message))


_MISSING = object()


class _Obj:
    """A mapping being read: takes known keys, and reports what is left as unknown."""

    def __init__(self, ctx: _Ctx, node: Any, path: str, line: int) -> None:
        self.ctx = ctx
        self.path = path
        self.ok = isinstance(node, dict)
        self.node: dict[Any, Any] = node if self.ok else {}
        self.line = line or getattr(node, "line", 0)
        self.seen: set[Any] = set()
        if not self.ok and node is not None:
            ctx.add(line, path, f"must be a mapping, not {_type_name(node)}")

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def line_of(self, key: Any) -> int:
        return self.node.line_of(key) if isinstance(self.node, yamlsrc.Node) else self.line

    def get(self, key: str, default: Any = _MISSING, required: bool = False) -> Any:
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


def _shown(value: Any) -> str:
    """A value as a message quotes it: a string, shortened; anything else by its type only (a nested
    value, a YAML alias bomb above all, is never expanded into a message)."""
    if isinstance(value, str):
        return repr(value if len(value) <= 80 else value[:77] + "...")
    if isinstance(value, (bool, int, float)) or value is None:
        return repr(value)
    return _type_name(value)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _int(ctx: _Ctx, obj: _Obj, key: str, default: int | None, minimum: int, maximum: int) -> int | None:
    value = obj.get(key, None)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        ctx.add(obj.line_of(key), obj.sub(key), f"must be a whole number, not {_type_name(value)}")
        return default
    if value < minimum:
        ctx.add(obj.line_of(key), obj.sub(key), f"must be >= {minimum}")
        return default
    if value > maximum:
        ctx.add(obj.line_of(key), obj.sub(key), f"must be <= {maximum}")
        return default
    return value


def _str(ctx: _Ctx, obj: _Obj, key: str, required: bool = False) -> str | None:
    value = obj.get(key, None, required=required)
    if value is None:
        return None
    if not isinstance(value, str):
        ctx.add(obj.line_of(key), obj.sub(key), f"must be a string, not {_type_name(value)}")
        return None
    return value


def _duration(ctx: _Ctx, obj: _Obj, key: str, default: float) -> float:
    value = obj.get(key, None)
    if value is None:
        return default
    try:
        return parse_duration(value)
    except ValueError as exc:
        ctx.add(obj.line_of(key), obj.sub(key), str(exc))
        return default


NUL = "contains a NUL character, which no process can be given (Docker would create the container and fail to start it)"


def _str_map(ctx: _Ctx, obj: _Obj, key: str, key_re: re.Pattern[str], what: str) -> tuple[tuple[str, str], ...]:
    value = obj.get(key, None)
    if value is None:
        return ()
    if not isinstance(value, dict):
        ctx.add(obj.line_of(key), obj.sub(key), f"must be a mapping of {what}, not {_type_name(value)}")
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
            ctx.add(line, path, f"must be a string, not {_type_name(v)}")
            continue
        if "\0" in v:
            ctx.add(line, path, NUL)
            continue
        out.append((k, v))
    return tuple(sorted(out))


def _list(ctx: _Ctx, obj: _Obj, key: str) -> list[tuple[int, str, Any]]:
    value = obj.get(key, None)
    if value is None:
        return []
    if not isinstance(value, list):
        ctx.add(obj.line_of(key), obj.sub(key), f"must be a list, not {_type_name(value)}")
        return []
    lines = value.lines if isinstance(value, yamlsrc.NodeList) else []
    return [
        (lines[i] if i < len(lines) else obj.line_of(key), f"{obj.sub(key)}[{i}]", item) for i, item in enumerate(value)
    ]


def _command(ctx: _Ctx, obj: _Obj, key: str) -> tuple[str, ...] | None:
    value = obj.get(key, None)
    if value is None:
        return None
    if isinstance(value, str):
        ctx.add(obj.line_of(key), obj.sub(key), 'must be a list of strings, e.g. ["httpd", "-f"] (no shell parsing is done)')
        return None
    items = _list(ctx, obj, key)
    out: list[str] = []
    for line, path, item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            ctx.add(line, path, f"must be a string, not {_type_name(item)}")
            continue
        if "\0" in str(item):
            ctx.add(line, path, NUL)
            continue
        out.append(str(item))
    if not out and items == [] and isinstance(value, list) and not value:
        ctx.add(obj.line_of(key), obj.sub(key), "must not be empty; leave it out to use the image's default")
    return tuple(out)


def _ports(ctx: _Ctx, obj: _Obj) -> tuple[Port, ...]:
    out: list[Port] = []
    seen_host: set[tuple[int, str]] = set()
    for line, path, item in _list(ctx, obj, "ports"):
        p = _Obj(ctx, item, path, line)
        if not p.ok:
            continue
        cport = _int(ctx, p, "containerPort", None, 1, 65535)
        if cport is None and "containerPort" not in p.node:
            ctx.add(line, f"{path}.containerPort", "is required")
        hport = _int(ctx, p, "hostPort", None, 1, 65535)
        proto = _str(ctx, p, "protocol") or "tcp"
        if proto not in ("tcp", "udp", "sctp"):
            ctx.add(p.line_of("protocol"), f"{path}.protocol", "must be tcp, udp or sctp")
        p.finish()
        if cport is not None:
            if hport is not None:
                if (hport, proto) in seen_host:
                    ctx.add(line, f"{path}.hostPort", f"{hport}/{proto} is used twice in this deployment")
                seen_host.add((hport, proto))
            out.append(Port(cport, hport, proto))
    return tuple(out)


def _volumes(ctx: _Ctx, obj: _Obj) -> tuple[VolumeMount, ...]:
    out: list[VolumeMount] = []
    paths: set[str] = set()
    for line, path, item in _list(ctx, obj, "volumes"):
        v = _Obj(ctx, item, path, line)
        if not v.ok:
            continue
        name = _str(ctx, v, "name", required=True)
        mount = _str(ctx, v, "mountPath", required=True)
        ro = v.get("readOnly", False)
        if not isinstance(ro, bool):
            ctx.add(v.line_of("readOnly"), f"{path}.readOnly", "must be true or false")
            ro = False
        v.finish()
        if name is not None and not VOLUME_NAME_RE.match(name):
            ctx.add(v.line_of("name"), f"{path}.name", f"{_shown(name)} is not a valid volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*); host paths are not allowed")
            continue
        if mount is not None and not mount.startswith("/"):
            ctx.add(v.line_of("mountPath"), f"{path}.mountPath", "must be an absolute path")
            continue
        if mount is not None and mount in paths:
            ctx.add(v.line_of("mountPath"), f"{path}.mountPath", f"{mount} is mounted twice")
            continue
        if name is not None and mount is not None:
            paths.add(mount)
            out.append(VolumeMount(name, mount, ro))
    return tuple(out)


def _placement(ctx: _Ctx, obj: _Obj) -> Placement:
    node = obj.get("placement", None)
    if node is None:
        return Placement()
    p = _Obj(ctx, node, obj.sub("placement"), obj.line_of("placement"))
    selector = _str_map(ctx, p, "hostSelector", LABEL_KEY_RE, "label")
    max_per_host = _int(ctx, p, "maxPerHost", None, 1, MAX_REPLICAS)
    p.finish()
    return Placement(selector, max_per_host)


def _healthcheck(ctx: _Ctx, obj: _Obj) -> Healthcheck | None:
    node = obj.get("healthcheck", None)
    if node is None:
        return None
    h = _Obj(ctx, node, obj.sub("healthcheck"), obj.line_of("healthcheck"))
    if not h.ok:
        return None
    test_value = h.get("test", None, required=True)
    test: tuple[str, ...] = ()
    if isinstance(test_value, str):
        test = ("CMD-SHELL", test_value)
    elif test_value is not None:
        items = _command(ctx, h, "test") or ()
        if items and items[0] not in ("CMD", "CMD-SHELL", "NONE"):
            ctx.add(h.line_of("test"), h.sub("test"), 'must start with "CMD" or "CMD-SHELL", or be a string for the shell')
        test = items
    hc = Healthcheck(
        test=test,
        interval=_duration(ctx, h, "interval", 30.0),
        timeout=_duration(ctx, h, "timeout", 30.0),
        retries=_int(ctx, h, "retries", 3, 1, 100) or 3,
        start_period=_duration(ctx, h, "startPeriod", 0.0),
    )
    h.finish()
    return hc


def _update(ctx: _Ctx, obj: _Obj) -> UpdatePolicy:
    node = obj.get("update", None)
    if node is None:
        return UpdatePolicy()
    u = _Obj(ctx, node, obj.sub("update"), obj.line_of("update"))
    order_value = _str(ctx, u, "order")
    order = UpdateOrder.START_FIRST
    if order_value is not None:
        try:
            order = UpdateOrder(order_value)
        except ValueError:
            ctx.add(u.line_of("order"), u.sub("order"), f"{_shown(order_value)} is not one of start-first, stop-first")
    parallelism = _int(ctx, u, "parallelism", 1, 1, MAX_REPLICAS) or 1
    u.finish()
    return UpdatePolicy(order, parallelism)


def _deployment(ctx: _Ctx, meta: _Obj, name: str, labels: tuple[tuple[str, str], ...], spec_node: Any, line: int, origin: Origin) -> Deployment | None:
    spec = _Obj(ctx, spec_node, "spec", line)
    if not spec.ok:
        if spec_node is None:
            ctx.add(line, "spec", "is required")
        return None
    before = len(ctx.problems)
    replicas = _int(ctx, spec, "replicas", 1, 0, MAX_REPLICAS)
    image = _str(ctx, spec, "image", required=True)
    if image is not None:
        if not IMAGE_RE.match(image) or len(image) > 512:
            ctx.add(spec.line_of("image"), "spec.image", f"{_shown(image)} is not a valid image reference (e.g. registry.example.com/team/web:1.4.2)")
    command = _command(ctx, spec, "command")
    env = _str_map(ctx, spec, "env", ENV_KEY_RE, "environment variable")
    ports = _ports(ctx, spec)
    volumes = _volumes(ctx, spec)
    placement = _placement(ctx, spec)
    healthcheck = _healthcheck(ctx, spec)
    update = _update(ctx, spec)
    restart_value = _str(ctx, spec, "restart")
    restart = RestartPolicy.UNLESS_STOPPED
    if restart_value is not None:
        try:
            restart = RestartPolicy(restart_value)
        except ValueError:
            ctx.add(spec.line_of("restart"), "spec.restart", f"{_shown(restart_value)} is not one of no, always, on-failure, unless-stopped")
    grace = _duration(ctx, spec, "stopGracePeriod", 10.0)
    min_ready = _duration(ctx, spec, "minReadySeconds", 0.0)
    depends: list[str] = []
    for dline, dpath, item in _list(ctx, spec, "dependsOn"):
        if not isinstance(item, str) or not NAME_RE.match(item):
            ctx.add(dline, dpath, "must be the name of another deployment")
        elif item == name:
            ctx.add(dline, dpath, f"{name} cannot depend on itself")
        elif item in depends:
            ctx.add(dline, dpath, f"{item} is listed twice")
        else:
            depends.append(item)
    spec.finish()
    if len(ctx.problems) != before or image is None:
        return None
    return Deployment(
        name=name,
        image=image,
        replicas=replicas if replicas is not None else 1,
        command=command,
        env=env,
        ports=ports,
        volumes=volumes,
        labels=labels,
        placement=placement,
        healthcheck=healthcheck,
        update=update,
        restart=restart,
        stop_grace_period=grace,
        min_ready_seconds=min_ready,
        depends_on=tuple(depends),
        origin=origin,
    )


def _service(ctx: _Ctx, name: str, spec_node: Any, line: int, origin: Origin) -> Service | None:
    spec = _Obj(ctx, spec_node, "spec", line)
    if not spec.ok:
        if spec_node is None:
            ctx.add(line, "spec", "is required")
        return None
    before = len(ctx.problems)
    if spec.get("selector", None) is None:
        ctx.add(spec.line, "spec.selector", "is required")
    selector = _str_map(ctx, spec, "selector", LABEL_KEY_RE, "label")
    ports: list[ServicePort] = []
    for pline, path, item in _list(ctx, spec, "ports"):
        p = _Obj(ctx, item, path, pline)
        if not p.ok:
            continue
        port = _int(ctx, p, "port", None, 1, 65535)
        if port is None and "port" not in p.node:
            ctx.add(pline, f"{path}.port", "is required")
        target = _int(ctx, p, "targetPort", port, 1, 65535)
        p.finish()
        if port is not None and target is not None:
            ports.append(ServicePort(port, target))
    spec.finish()
    if len(ctx.problems) != before:
        return None
    return Service(name, selector, tuple(ports), origin)


def _document(ctx: _Ctx, doc: Any, line: int) -> Deployment | Service | None:
    if doc is None:
        return None
    top = _Obj(ctx, doc, "", line)
    if not top.ok:
        return None
    api = top.get("apiVersion", None, required=True)
    kind = top.get("kind", None, required=True)
    if api is not None and api != API_VERSION:
        ctx.add(top.line_of("apiVersion"), "apiVersion", f"{_shown(api)} is not supported; use {API_VERSION}")
    if kind is not None and (not isinstance(kind, str) or kind not in KINDS):
        ctx.add(top.line_of("kind"), "kind", f"{_shown(kind)} is not one of {', '.join(KINDS)}")
        kind = None
    meta = _Obj(ctx, top.get("metadata", None, required=True), "metadata", top.line_of("metadata"))
    name = _str(ctx, meta, "name", required=meta.ok)
    if name is not None and (not NAME_RE.match(name) or len(name) > 63):
        ctx.add(meta.line_of("name"), "metadata.name", f"{_shown(name)} is not a valid name: lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63 characters")
        name = None
    labels = _str_map(ctx, meta, "labels", LABEL_KEY_RE, "label")
    label_lines = meta.get("labels", None)
    for k, _ in labels:
        if k.startswith("io.gitsync."):
            at = label_lines.line_of(k) if isinstance(label_lines, yamlsrc.Node) else meta.line_of("labels")
            ctx.add(at, f"metadata.labels.{k}", "the io.gitsync. prefix is reserved for gitsync's own labels")
    meta.get("annotations", None)
    meta.finish()
    spec_node = top.get("spec", None)
    top.finish()
    if kind is None:
        return None  # the spec of an unknown kind has no rules to check
    # the spec is checked even when the header is wrong: every problem of a document in one run
    origin = Origin(ctx.file, line)
    if kind == "Deployment":
        obj: Deployment | Service | None = _deployment(ctx, meta, name or "", labels, spec_node, top.line_of("spec"), origin)
    else:
        obj = _service(ctx, name or "", spec_node, top.line_of("spec"), origin)
    return obj if name is not None and api == API_VERSION else None


class Unreadable(bytes):
    """A manifest file that was not read, and why (a link, too large): load_files reports it by name."""

    why: str

    def __new__(cls, why: str) -> "Unreadable":
        obj = super().__new__(cls, b"")
        obj.why = why
        return obj


def too_large(size: int) -> Unreadable:
    return Unreadable(f"file is {size} bytes; manifests may be at most {MAX_FILE_BYTES} bytes")


NOT_READ = Unreadable("not read: there are too many manifest files")
LINK = "is a symbolic link; gitsync reads only regular files of the repository (commit the file itself)"


def load_files(files: Mapping[str, bytes]) -> DesiredState:
    """Validate every manifest; return the desired state or raise ManifestError with every problem."""
    problems: list[Problem] = []
    objects: list[Deployment | Service] = []
    manifest_files = sorted(p for p in files if is_manifest_file(p))
    if len(manifest_files) > MAX_FILES:
        raise ManifestError([Problem(".", None, f"{len(manifest_files)} manifest files; at most {MAX_FILES} are read")])
    total = 0
    for path in manifest_files:
        data = files[path]
        if isinstance(data, Unreadable):
            problems.append(Problem(path, None, data.why))
            continue
        total += len(data)
        if len(data) > MAX_FILE_BYTES:
            problems.append(Problem(path, None, f"file is {len(data)} bytes; manifests may be at most {MAX_FILE_BYTES} bytes"))
            continue
        if total > MAX_TOTAL_BYTES:
            problems.append(Problem(path, None, f"manifests add up to more than {MAX_TOTAL_BYTES} bytes"))
            break
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(path, None, f"not UTF-8 text (byte {exc.start})"))
            continue
        try:
            docs = yamlsrc.load_all(text)
        except yamlsrc.YamlSyntaxError as exc:
            problems.append(Problem(path, exc.line, exc.message))
            continue
        ctx = _Ctx(path, problems)
        for line, doc in docs:
            obj = _document(ctx, doc, line)
            if obj is not None:
                objects.append(obj)
    _check_unique(objects, problems)
    _check_dependencies([o for o in objects if isinstance(o, Deployment)], problems)
    if problems:
        raise ManifestError(sorted(set(problems), key=lambda p: (p.file, p.line or 0, p.message)))
    deployments = tuple(sorted((o for o in objects if isinstance(o, Deployment)), key=lambda d: d.name))
    services = tuple(sorted((o for o in objects if isinstance(o, Service)), key=lambda s: s.name))
    return DesiredState(deployments, services)


def _check_unique(objects: list[Deployment | Service], problems: list[Problem]) -> None:
    seen: dict[tuple[str, str], Origin | None] = {}
    for obj in objects:
        key = (type(obj).__name__, obj.name)
        if key in seen:
            first = seen[key]
            origin = obj.origin
            problems.append(
                Problem(origin.file if origin else "?", origin.line if origin else None, f"{key[0]} {obj.name!r} is declared twice (first at {first})")
            )
        else:
            seen[key] = obj.origin


def _check_dependencies(deployments: list[Deployment], problems: list[Problem]) -> None:
    by_name = {d.name: d for d in deployments}
    for d in deployments:
        for dep in d.depends_on:
            if dep not in by_name:
                o = d.origin
                problems.append(Problem(o.file if o else "?", o.line if o else None, f"{d.name}: spec.dependsOn: no deployment named {dep!r}"))
    # cycles: depth-first search, reporting each cycle once, as a -> b -> a
    state: dict[str, int] = {}
    reported: set[frozenset[str]] = set()

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in by_name[n].depends_on:
            if m not in by_name:
                continue
            if state.get(m) == 1:
                cycle = path[path.index(m) :] + [m]
                key = frozenset(cycle)
                if key not in reported:
                    reported.add(key)
                    o = by_name[m].origin
                    problems.append(Problem(o.file if o else "?", o.line if o else None, f"dependsOn cycle: {' -> '.join(cycle)}"))
            elif state.get(m) is None:
                visit(m, [*path, m])
        state[n] = 2

    for name in sorted(by_name):
        if state.get(name) is None:
            visit(name, [name])


def read_folder(root: str, reader: Callable[[str], bytes] | None = None) -> dict[str, bytes]:
    """Manifest files under a folder on disk, by path relative to it (hidden folders skipped)."""
    import os

    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            rel = os.path.relpath(os.path.join(dirpath, fn), root).replace(os.sep, "/")
            if not is_manifest_file(rel):
                continue
            full = os.path.join(dirpath, fn)
            if len(out) >= MAX_FILES:
                out[rel] = NOT_READ  # counted, so that the refusal says how many there are
                continue
            if os.path.islink(full):  # never read outside the repository, nor follow a dangling link
                out[rel] = Unreadable(LINK)
                continue
            size = os.path.getsize(full)
            if size > MAX_FILE_BYTES:
                out[rel] = too_large(size)  # reported by load_files, never read whole
                continue
            with open(full, "rb") as fh:
                out[rel] = reader(full) if reader else fh.read()
    return out
