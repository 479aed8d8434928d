"""A compose project, schema-valid, translated into gitsync documents: each service a Deployment
(and, when it listens on a TCP port, a Service of the same name, so services reach each other by
name across hosts as compose promises on one), each top-level volume a Volume. The documents are
the same trees a manifest gives, keeping the compose file's lines, so the kinds' own parsers
validate them and plan, apply and status work identically. A compose key gitsync cannot honour is
refused, naming it and why; none is dropped silently.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core import yamlsrc
from ..core.models import Deployment, Sealed, Service, Volume
from ..core.repofiles import LINK, MISSING, RepoFiles, Unreadable, inside
from .interpolate import parse_env_file
from .override import where

PROJECT_LABEL = "compose.project"
SERVICE_LABEL = "compose.service"
UNSUPPORTED = "not supported by gitsync"

# Keys refused with the reason a user needs; any other compose key gitsync does not map is refused too.
WHY = {
    "build": "it deploys images from a registry: build and push in CI, then reference the image "
             "(building on each host would run the repository's Dockerfile on every host and give each its own image)",
    "volumes_from": "declare the volumes this service needs itself",
    "models": "AI models are not deployed by gitsync",
    "provider": "services run by a provider plugin are not deployed by gitsync",
    "extends": "extends from another file: copy the service into this file",
    "pid": "a container shares no process namespace under gitsync",
    "ipc": "a container shares no IPC namespace under gitsync",
    "uts": "a container shares no UTS namespace (the host's name) under gitsync",
    "userns_mode": "a container keeps the engine's user namespace setting",
    "use_api_socket": "a container never gets the engine's API (it would be root on the host)",
    "cgroup": "a container keeps its own cgroup namespace",
    "cgroup_parent": "a container's cgroup is the engine's to place",
    "device_cgroup_rules": "devices are given one by one (devices:, under the policy)",
    "runtime": "replicas run with the engine's default runtime",
    "isolation": "Windows containers are not deployed by gitsync",
    "credential_spec": "Windows containers are not deployed by gitsync",
    "cpu_count": "a Windows setting: use cpus",
    "cpu_percent": "a Windows setting: use cpus",
    "cpu_period": "use cpus (deploy.resources.limits.cpus)",
    "cpu_quota": "use cpus (deploy.resources.limits.cpus)",
    "cpu_shares": "use deploy.resources.reservations.cpus (a relative weight, as CPU shares)",
    "cpu_rt_period": "real-time scheduling is not given to replicas",
    "cpu_rt_runtime": "real-time scheduling is not given to replicas",
    "cpuset": "replicas are not pinned to CPUs: hosts differ",
    "blkio_config": "block I/O weights are not set by gitsync",
    "storage_opt": "the storage driver's options are the engine's",
    "oom_kill_disable": "a replica that cannot be killed when memory runs out could take the host down",
    "gpus": "GPUs are not given to replicas",
    "mac_address": "addresses are Docker's to give on each host",
    "external_links": "reach other containers through a shared network (externalNetworks) by their names",
    "platform": "a host pulls the image for its own platform",
    "pull_refresh_after": "gitsync pulls an image when the host does not have it (missing)",
    "post_start": "lifecycle hooks are not run by gitsync: put the step in the image's entrypoint",
    "pre_start": "lifecycle hooks are not run by gitsync: put the step in the image's entrypoint",
    "pre_stop": "lifecycle hooks are not run by gitsync: use stop_signal and stop_grace_period",
    "annotations": "the engines gitsync supports (Docker 20.10+) do not all keep annotations: use labels",
}
IGNORED = {"version", "develop"}  # compose itself ignores them (version is obsolete; develop needs `watch`)


@dataclass
class Doc:
    """One translated document: kind, name, metadata labels, spec tree, and where it came from."""

    kind: str
    name: str
    line: int
    spec: yamlsrc.Node
    labels: dict[str, str] = field(default_factory=dict)
    label_lines: dict[str, int] = field(default_factory=dict)
    file: str = ""  # the compose file it is written in (an included one's own)


def node(line: int, items: Mapping[str, Any] | None = None, lines: Mapping[str, int] | None = None) -> yamlsrc.Node:
    n = yamlsrc.Node()
    n.line = line
    for k, v in (items or {}).items():
        if v is not None:
            n[k] = v
            n.lines[k] = (lines or {}).get(k, line)
    return n


def nlist(line: int, items: list[Any], lines: list[int] | None = None) -> yamlsrc.NodeList:
    n = yamlsrc.NodeList()
    n.line = line
    for i, v in enumerate(items):
        n.append(v)
        n.lines.append(lines[i] if lines and i < len(lines) else line)
    return n


def line_of(parent: Any, key: Any, default: int = 0) -> int:
    return parent.line_of(key) if isinstance(parent, (yamlsrc.Node, yamlsrc.NodeList)) else default


def number(value: Any) -> Any:
    """A whole number written as one (schema allows strings, for interpolation)."""
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return value


@dataclass
class Project:
    """One compose file's services mapped; problems as (line, key path, message)."""

    file: str
    name: str
    root: Any
    files: RepoFiles
    variables: Mapping[str, str]
    profiles: frozenset[str] = frozenset()
    override: str | None = None  # the override file merged onto this one, for messages
    network_names: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> ("own" | "external", name)
    jobs: dict[str, int] = field(default_factory=dict)  # services others wait for to complete successfully -> where it is said
    included: frozenset[str] = frozenset()  # the services of the files it includes, which its own may depend on
    docs: list[Doc] = field(default_factory=list)
    problems: list[tuple[int, str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def folder(self) -> str:
        return self.file.rpartition("/")[0]

    def refuse(self, line: int, path: str, why: str = "") -> None:
        self.problems.append((line, path, f"{UNSUPPORTED}: {why}" if why else f"{UNSUPPORTED}; remove it, or deploy this service with a manifest (README: compose)"))

    def fail(self, line: int, path: str, message: str) -> None:
        self.problems.append((line, path, message))

    def volume_name(self, key: str) -> str:
        decl = (self.root.get("volumes") or {}).get(key)
        if isinstance(decl, dict) and isinstance(decl.get("name"), str):
            return str(decl["name"])
        if isinstance(decl, dict) and decl.get("external") in (True, "true"):
            return key  # an external volume is found by its own name
        if isinstance(decl, dict) and isinstance(decl.get("external"), dict) and isinstance(decl["external"].get("name"), str):
            return str(decl["external"]["name"])  # compose's older spelling, external: {name: ...}
        return f"{self.name}_{key}"  # compose's own naming: data docker compose made on a host is found

    def map(self) -> None:
        root = self.root
        for key in root:
            if key in ("services", "volumes", "networks", "name", "configs", "secrets", "include") or key in IGNORED or str(key).startswith("x-"):
                continue
            self.refuse(line_of(root, key), str(key), WHY.get(str(key), ""))
        self._networks()
        for key, decl in (root.get("volumes") or {}).items():
            self._volume(str(key), decl if isinstance(decl, dict) else {}, line_of(root["volumes"], key))
        services = root.get("services") or {}
        profiles = {n: yamlsrc.without_resets(s).get("profiles") or () if isinstance(s, dict) else () for n, s in services.items()}
        active = {n for n in services if not profiles[n] or set(profiles[n]) & self.profiles}
        for name, svc in services.items():
            if name in active and isinstance(svc, dict):
                ServiceMapper(self, str(name), svc, line_of(services, name), services, active).map()
        for doc in self.docs:  # depends_on ... service_completed_successfully: that service is a job (runOnce)
            if doc.kind == Deployment.KIND and doc.name in self.jobs:
                doc.spec["runOnce"], doc.spec.lines["runOnce"] = True, self.jobs[doc.name]

    def _networks(self) -> None:
        """Each network of the project is one of the agent's networks on every host, named <project>_<key>
        (or its name:), so projects stay apart as in compose; an external one is joined as it is."""
        nets = self.root.get("networks") or {}
        for key, decl in nets.items():
            decl = decl or {}
            external = decl.get("external")
            if isinstance(external, dict) or external in (True, "true"):
                name = external.get("name") if isinstance(external, dict) and external.get("name") else decl.get("name") or key
                self.network_names[str(key)] = ("external", str(name))
            else:
                self.network_names[str(key)] = ("own", str(decl.get("name") or f"{self.name}_{key}"))
            for opt in decl:
                if opt in ("driver",) and decl[opt] == "bridge" or opt in ("name", "external") or str(opt).startswith("x-"):
                    continue
                why = {
                    "internal": "an internal network would cut the published ports through which other hosts' proxies reach the replicas; "
                                "the project's own networks are apart from other projects' already",
                    "ipam": "addresses are Docker's to give on each host",
                    "driver": "a bridge on each host, the agent's own",
                }.get(str(opt), "a network of the project is a bridge on each host, made by gitsync")
                self.refuse(line_of(decl, opt), f"networks.{key}.{opt}", why)
        self.network_names.setdefault("default", ("own", f"{self.name}_default"))

    def _volume(self, key: str, decl: Any, line: int) -> None:
        spec: dict[str, Any] = {}
        lines: dict[str, int] = {}
        for opt, value in (decl or {}).items():
            at = line_of(decl, opt, line)
            if opt == "driver":
                spec["driver"], lines["driver"] = value, at
            elif opt == "driver_opts":
                spec["driverOpts"], lines["driverOpts"] = node(at, {str(k): str(v) for k, v in value.items()}, {str(k): line_of(value, k, at) for k in value}), at
            elif opt == "name":
                if not value:
                    self.fail(at, f"volumes.{key}.name", "is empty (an unset variable?)")
            elif opt == "x-gitsync" and not isinstance(value, dict | None):
                self.fail(at, f"volumes.{key}.x-gitsync", "must be a mapping (accessMode, perReplica, shared)")
            elif opt == "x-gitsync":
                for k, v in (value or {}).items():
                    if k not in ("accessMode", "shared", "perReplica"):
                        self.fail(line_of(value, k, at), f"volumes.{key}.x-gitsync.{k}", "unknown key (known keys here: accessMode, perReplica, shared)")
                    else:
                        spec[k], lines[k] = v, line_of(value, k, at)
            elif str(opt).startswith("x-"):
                continue
            elif opt == "external":
                if isinstance(value, dict) and value.get("name") is not None:
                    if "name" in decl:  # as compose refuses it
                        self.fail(at, f"volumes.{key}.external.name", "conflicts with name: only use name (and external: true)")
                    value = True
                if value in (True, "true"):
                    if "driver" in decl or "driver_opts" in decl:
                        self.fail(at, f"volumes.{key}.external", "conflicts with driver and driver_opts: an external volume exists already")
                    spec["external"], lines["external"] = True, at
            else:
                self.refuse(at, f"volumes.{key}.{opt}")
        self.docs.append(Doc(Volume.KIND, self.volume_name(key), line, node(line, spec, lines)))


class ServiceMapper:
    """One compose service into a Deployment spec (and a Service)."""

    def __init__(self, project: Project, name: str, svc: yamlsrc.Node, line: int, services: Mapping[str, Any], active: set[str]) -> None:
        self.p, self.name, self.svc, self.line, self.active = project, name, svc, line, active
        self.services = services
        self.spec: dict[str, Any] = {}
        self.lines: dict[str, int] = {}
        self.env: dict[str, str] = {}
        self.labels: dict[str, str] = {}
        self.label_lines: dict[str, int] = {}
        self.container_ports: list[tuple[int, str, int | None, int, str | None]] = []  # (port, protocol, host port, line, host address)
        self.service_ports: list[tuple[int, int | None, int, str | None]] = []  # (target port, published, line, host address)
        self.volumes: list[Any] = []
        self.files: list[tuple[int, dict[str, Any]]] = []  # spec.files entries (relative read-only binds, configs)
        self.secrets: list[tuple[int, dict[str, Any]]] = []  # spec.secrets entries
        self.tmpfs: list[str] = []
        self.x: Mapping[str, Any] = {}

    def path(self, *keys: Any) -> str:
        return "".join([f"services.{self.name}", *(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys)])

    def put(self, key: str, value: Any, line: int) -> None:
        if value is not None:
            self.spec[key] = value
            self.lines[key] = line

    def at(self, key: str) -> int:
        return line_of(self.svc, key, self.line)

    def map(self) -> None:
        before = len(self.p.problems)
        if "extends" in self.svc and not isinstance(self.svc["extends"], yamlsrc.Reset):
            self._extends()
        self.svc = svc = yamlsrc.without_resets(self.svc)  # after extends: what !reset unsets is gone
        handlers: dict[str, Callable[[Any, int], None]] = {
            "image": lambda v, at: self.put("image", v, at),
            "command": lambda v, at: self.put("command", self._argv("command", v, at), at),
            "entrypoint": lambda v, at: self.put("entrypoint", self._argv("entrypoint", v, at), at),
            "environment": self._environment,
            "env_file": self._env_file,
            "ports": self._ports,
            "expose": self._expose,
            "volumes": self._volumes,
            "configs": lambda v, at: self._declared_files("configs", v, at),
            "secrets": lambda v, at: self._declared_files("secrets", v, at),
            "tmpfs": lambda v, at: self.tmpfs.extend([v] if isinstance(v, str) else list(v)),
            "restart": self._restart,
            "stop_grace_period": lambda v, at: self.put("stopGracePeriod", v, at),
            "stop_signal": lambda v, at: self.put("stopSignal", v, at),
            "labels": self._labels,
            "healthcheck": self._healthcheck,
            "depends_on": self._depends_on,
            "links": self._links,
            "deploy": self._deploy,
            "scale": lambda v, at: self.put("replicas", number(v), at),
            "user": lambda v, at: self.put("user", str(v), at),
            "working_dir": lambda v, at: self.put("workingDir", v, at),
            "hostname": lambda v, at: self.put("hostname", v, at),
            "cap_add": lambda v, at: self.put("capAdd", v, at),
            "cap_drop": lambda v, at: self.put("capDrop", v, at),
            "read_only": lambda v, at: self.put("readOnlyRootFilesystem", v, at),
            "extra_hosts": self._extra_hosts,
            "init": lambda v, at: self.put("init", v, at),
            "logging": self._logging,
            "ulimits": lambda v, at: self.put("ulimits", node(at, {str(k): number(x) if not isinstance(x, dict) else node(line_of(v, k, at), {a: number(b) for a, b in x.items()}) for k, x in v.items()}, {str(k): line_of(v, k, at) for k in v}), at),
            "shm_size": lambda v, at: self.put("shmSize", v, at),
            "security_opt": lambda v, at: self.put("securityOpt", v, at),
            "devices": self._devices,
            "privileged": lambda v, at: self.put("privileged", v, at),
            "network_mode": self._network_mode,
            "networks": self._service_networks,
            "pull_policy": self._pull_policy,
            "dns": lambda v, at: self.put("dns", nlist(at, [v]) if isinstance(v, str) else v, at),
            "dns_search": lambda v, at: self.put("dnsSearch", nlist(at, [v]) if isinstance(v, str) else v, at),
            "dns_opt": lambda v, at: self.put("dnsOptions", v, at),
            "pids_limit": lambda v, at: self.put("pidsLimit", number(v), at),
            "tty": lambda v, at: self.put("tty", v, at),
            "stdin_open": lambda v, at: self.put("stdinOpen", v, at),
            "sysctls": self._sysctls,
            "group_add": lambda v, at: self.put("groupAdd", nlist(at, [str(g) for g in v], [line_of(v, i, at) for i in range(len(v))]), at),
            "domainname": lambda v, at: self.put("domainname", v, at),
            "oom_score_adj": lambda v, at: self.put("oomScoreAdj", number(v), at),
            "mem_swappiness": lambda v, at: self.put("memSwappiness", number(v), at),
            "memswap_limit": lambda v, at: self.put("memswapLimit", number(v), at),
            "label_file": self._label_file,
            "attach": lambda v, at: None,  # which logs `docker compose up` shows: nothing to deploy
            "profiles": lambda v, at: None,  # an active service: its profile is enabled
            "mem_limit": lambda v, at: self._resource("limits", "memory", v, at),
            "mem_reservation": lambda v, at: self._resource("reservations", "memory", v, at),
            "cpus": lambda v, at: self._resource("limits", "cpus", v, at),
            "x-gitsync": self._x_gitsync,
            "container_name": lambda v, at: self.p.warnings.append(
                "{}:{}: ".format(*where(self.p.file, self.p.override, at)) + f"{self.path('container_name')}: ignored, as Swarm does: gitsync names replicas <agent>-{self.name}-<n>; reach it by its service name"),
        }
        for key, value in svc.items():
            key = str(key)
            at = self.at(key)
            if isinstance(value, yamlsrc.Reset) or key == "extends":
                continue
            if key in handlers:
                handlers[key](value, at)
            elif key in IGNORED or key.startswith("x-"):
                continue
            else:
                self.p.refuse(at, self.path(key), WHY.get(key, ""))
        if "image" not in self.spec and len(self.p.problems) == before:  # (a refused build or provider says why already)
            self.p.fail(self.line, self.path("image"), "is required: gitsync deploys images from a registry")
        if "network_mode" in svc and "networks" in svc:
            self.p.fail(self.at("networks"), self.path("networks"), "cannot be set with network_mode")
        elif "network_mode" not in svc and "networks" not in svc:  # compose's default network of the project
            kind, name = self.p.network_names["default"]
            self._networks_put([name] if kind == "own" else [], [name] if kind == "external" else [], self.line)
        self._finish()

    def _extends(self) -> None:
        """extends within this file: the base service's keys, overridden by this one's (mappings
        merged key by key, anything else replaced; !reset unsets)."""
        ext = self.svc["extends"]
        base_name = ext if isinstance(ext, str) else ext.get("service")
        if isinstance(ext, dict) and ext.get("file"):
            self.p.refuse(self.at("extends"), self.path("extends", "file"), WHY["extends"])
            return
        base = self.services.get(base_name)
        if not isinstance(base, dict) or base_name == self.name:
            self.p.fail(self.at("extends"), self.path("extends"), f"no other service named {base_name!r} in this file")
            return
        merged = _merge(base, self.svc)
        merged.pop("extends", None)
        if "extends" in base:
            self.p.refuse(self.at("extends"), self.path("extends"), "extends of a service that extends another: flatten one level")
        self.svc = merged

    def _argv(self, key: str, value: Any, at: int) -> Any:
        if isinstance(value, str):
            try:
                return nlist(at, shlex.split(value))  # compose splits a string as a shell would, without running one
            except ValueError as exc:
                self.p.fail(at, self.path(key), f"cannot be split into arguments: {exc}")
                return None
        return value

    def _environment(self, value: Any, at: int) -> None:
        if isinstance(value, dict):
            items = [(str(k), v, line_of(value, k, at)) for k, v in value.items()]
        else:
            items = []
            for i, entry in enumerate(value):
                k, eq, v = str(entry).partition("=")
                items.append((k, v if eq else None, line_of(value, i, at)))
        for k, v, line in items:
            if v is None:  # a name alone: its value from the project's variables, unset if none
                if k in self.p.variables:
                    self.env[k] = self.p.variables[k]
                continue
            self.env[k] = str(v).lower() if isinstance(v, bool) else str(v)

    def _env_file(self, value: Any, at: int) -> None:
        entries = [value] if isinstance(value, str) else list(value)
        loaded: dict[str, str] = {}
        for i, e in enumerate(entries):
            path = e if isinstance(e, str) else e.get("path")
            required = True if isinstance(e, str) else e.get("required", True) not in (False, "false")
            line = line_of(value, i, at) if not isinstance(value, str) else at
            loaded.update(self._pairs_file("env_file", str(path), line, required))
        self.env = {**loaded, **self.env}  # environment wins over env_file

    def _pairs_file(self, key: str, path: str, line: int, required: bool = True) -> dict[str, str]:
        """KEY=VALUE lines of a file of the repository (env_file, label_file), its problems said under `key`."""
        full = inside(self.p.folder, path)
        data = self.p.files.file(full) if full else Unreadable("is outside the repository")
        if isinstance(data, Unreadable):
            if required or data is not MISSING:
                self.p.fail(line, self.path(key), f"{path}: {data.why}" + (f" (looked for {full})" if data is MISSING else ""))
            return {}
        values, problems = parse_env_file(bytes(data).decode("utf-8", "replace"))
        for n, msg in problems:
            self.p.fail(line, self.path(key), f"{full}:{n}: {msg}")
        return values

    def _ports(self, value: Any, at: int) -> None:
        for i, entry in enumerate(value):
            line = line_of(value, i, at)
            if isinstance(entry, dict):
                unknown = [k for k in entry if k not in ("target", "published", "protocol", "host_ip", "mode", "name", "app_protocol") and not str(k).startswith("x-")]
                for k in unknown:
                    self.p.refuse(line_of(entry, k, line), self.path("ports", i, k))
                target, published = number(entry.get("target")), entry.get("published")
                triples = _expand(target, number(published) if published not in (None, "") else None, self, line, i)
                proto, host_ip, mode = entry.get("protocol", "tcp"), entry.get("host_ip"), entry.get("mode", "ingress")
            else:
                parsed = _short_port(str(entry))
                if parsed is None:
                    self.p.fail(line, self.path("ports", i), f"{str(entry)!r} is not a port: [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]")
                    continue
                host_ip, published, target, proto = parsed
                triples = _expand(target, published, self, line, i)
                mode = "ingress"
            ip = None if host_ip in (None, "", "0.0.0.0", "::") else str(host_ip)
            if ip is not None and any(pub is None for _, pub in triples):
                self.p.fail(line, self.path("ports", i), f"host address {ip} without a published port: give the port to publish on it")
                continue
            if proto not in ("tcp", "udp"):
                self.p.refuse(line, self.path("ports", i), f"protocol {proto}: tcp and udp only")
                continue
            for t, pub in triples:
                if proto == "tcp" and mode != "host":
                    self.service_ports.append((t, pub, line, ip))  # through the Service, on every host (as Swarm's ingress)
                    self.container_ports.append((t, "tcp", None, line, None))
                else:  # mode host, and udp (Services are TCP): on the hosts that run a replica
                    self.container_ports.append((t, proto, pub, line, ip))

    def _expose(self, value: Any, at: int) -> None:
        for i, entry in enumerate(value):
            line = line_of(value, i, at)
            text, _, proto = str(entry).partition("/")
            for t, _pub in _expand(_range(text), None, self, line, i):
                self.container_ports.append((t, proto or "tcp", None, line, None))
                if (proto or "tcp") == "tcp":
                    self.service_ports.append((t, None, line, None))

    def _volumes(self, value: Any, at: int) -> None:
        for i, entry in enumerate(value):
            line = line_of(value, i, at)
            path = self.path("volumes", i)
            if isinstance(entry, str):
                parts = entry.split(":")
                if len(parts) == 1:
                    self._anonymous(line, path, entry, False)
                    continue
                source, target, mode = parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"
                kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
                modes = set(mode.split(","))
                if modes - {"ro", "rw", "z", "Z", "cached", "delegated", "consistent"} or {"z", "Z"} <= modes:
                    self.p.refuse(line, path, f"mode {mode}: ro or rw, z or Z (SELinux), cached, delegated or consistent (ignored on Linux, as by docker)")
                    continue
                ro = "ro" in modes
                relabel = "z" if "z" in modes else "Z" if "Z" in modes else ""
            else:
                kind, source, target, ro = entry.get("type"), entry.get("source"), entry.get("target"), entry.get("read_only", False) in (True, "true")
                relabel = str((entry.get("bind") or {}).get("selinux") or "") if isinstance(entry.get("bind"), dict) else ""
                for k in entry:
                    if k in ("type", "source", "target", "read_only", "consistency") or str(k).startswith("x-"):
                        continue
                    if k == "bind" and set(entry["bind"]) <= {"create_host_path", "selinux"}:
                        continue
                    if k == "tmpfs" and kind == "tmpfs" and set(entry["tmpfs"]) <= {"size", "mode"}:
                        continue
                    if k == "volume" and not entry["volume"].get("nocopy") and not entry["volume"].get("subpath"):
                        continue
                    self.p.refuse(line_of(entry, k, line), f"{path}.{k}")
                if kind == "tmpfs":
                    opts = entry.get("tmpfs") or {}
                    extra = ",".join(f"{k}={v}" for k, v in (("size", opts.get("size")), ("mode", opts.get("mode"))) if v is not None)
                    self.tmpfs.append(f"{target}:{extra}" if extra else str(target))
                    continue
                if kind not in ("volume", "bind"):
                    self.p.refuse(line, f"{path}.type", f"type {kind}: volume, bind and tmpfs only")
                    continue
                if source is None:
                    self._anonymous(line, path, str(target), ro)
                    continue
            if kind == "bind":
                if str(source).startswith("~"):
                    self.p.fail(line, path, f"{source}: a home folder means nothing on a host gitsync deploys to; use an absolute path the hosts have, or a path in the repository")
                    continue
                if not str(source).startswith("/"):
                    self._from_repository(line, path, str(source), target, ro)
                    continue
                shared = {"z": "shared", "Z": "private"}.get(relabel)
                self.volumes.append((line, {"hostPath": source, "mountPath": target, "readOnly": ro or None, "seLinuxRelabel": shared}))
            else:
                if source == "":
                    self.p.fail(line, path, f"{entry}: the source is empty (an unset variable?): set it in the project's .env or compose.variables")
                    continue
                if source not in (self.p.root.get("volumes") or {}):
                    self.p.fail(line, path, f"refers to volume {source!r}, which is not declared under the top-level volumes")
                    continue
                self.volumes.append((line, {"name": self.p.volume_name(str(source)), "mountPath": target, "readOnly": ro or None}))

    def _anonymous(self, line: int, path: str, target: str, ro: bool) -> None:
        """An anonymous volume: each replica's own, kept across its replacements as docker compose keeps
        it across a recreate (a Volume <project>_<service>_<path>, perReplica)."""
        if not target.startswith("/"):
            self.p.fail(line, path, f"{target}: a volume's path in the container must be absolute")
            return
        slug = re.sub(r"[^a-zA-Z0-9_.-]+", "-", target.strip("/")) or "root"
        name = f"{self.p.name}_{self.name}_{slug}"[:200]
        if all(d.name != name for d in self.p.docs):
            self.p.docs.append(Doc(Volume.KIND, name, line, node(line, {"perReplica": True})))
        self.volumes.append((line, {"name": name, "mountPath": target, "readOnly": ro or None}))

    def _from_repository(self, line: int, path: str, source: str, target: Any, ro: bool) -> None:
        """A relative bind mount: files of the repository (configuration) when read-only; data otherwise."""
        if not ro:
            self.p.fail(line, path, f"{source}: a writable path beside the compose file is data, which a commit should not hold: use a named volume "
                        f"(data:{target}, declared under the top-level volumes), or add :ro to mount it from the repository as configuration")
            return
        if self._in_repository(line, path, source):
            self.files.append((line, {"source": source, "mountPath": target}))

    def _in_repository(self, line: int, path: str, source: str) -> bool:
        """Whether `source` (relative to the compose file) is a file or folder of the repository; else says why not."""
        full = inside(self.p.folder, source)
        kind = self.p.files.kind(full) if full else None
        if full is None or full == "":
            self.p.fail(line, path, f"{source}: is outside the repository (or the repository itself): name a file or folder in it")
        elif kind is None:
            self.p.fail(line, path, f"{source}: not in the repository (looked for {full})")
        elif kind == "link":
            self.p.fail(line, path, f"{source}: {LINK}")
        return kind in ("file", "folder")

    def _declared_files(self, kind: str, value: Any, at: int) -> None:
        """Compose configs and secrets: files of the repository (file:), a project variable (environment:)
        or, for configs, inline text (content:). Secrets (and configs of the environment, whose values are
        never shown) become spec.secrets: decrypted when sops encrypted the file, never shown."""
        declared = self.p.root.get(kind) or {}
        for i, entry in enumerate(value):
            line = line_of(value, i, at)
            long = isinstance(entry, dict)
            name = str(entry.get("source") if long else entry)
            target = entry.get("target") if long else None
            allowed = ("source", "target", "mode") + (("uid", "gid") if kind == "secrets" else ())
            for k in (entry if long else ()):
                if k not in allowed and not str(k).startswith("x-"):
                    self.p.refuse(line_of(entry, k, line), self.path(kind, i, k), "files from the repository belong to root and are readable by all (mode 0444 unless mode says otherwise)")
            decl = declared.get(name)
            if not isinstance(decl, dict):
                self.p.fail(line, self.path(kind, i), f"refers to {kind[:-1]} {name!r}, which is not declared under the top-level {kind}")
                continue
            default = f"/run/secrets/{name}" if kind == "secrets" else f"/{name}"
            mount = str(target) if target else default
            if kind == "secrets" and not mount.startswith("/"):
                mount = f"/run/secrets/{mount}"  # compose: a relative target is under /run/secrets
            item: dict[str, Any] = {"mountPath": mount} if kind == "configs" else {"name": name, "path": mount}
            for k in ("mode", "uid", "gid"):
                if long and entry.get(k) is not None:
                    v = entry[k]
                    item[k] = int(v, 8) if k == "mode" and isinstance(v, str) and re.fullmatch(r"0?[0-7]{1,4}", v) else int(v) if isinstance(v, str) and v.isdigit() else v
            if "file" in decl:
                if not self._in_repository(line_of(decl, "file", line), f"{kind}.{name}.file", str(decl["file"])):
                    continue
                item["source" if kind == "configs" else "file"] = str(decl["file"])
            elif "content" in decl and kind == "configs":
                item["content"] = str(decl["content"])
            elif "environment" in decl:
                variable = str(decl["environment"])
                if variable not in self.p.variables:
                    self.p.fail(line_of(decl, "environment", line), f"{kind}.{name}.environment", f"{variable} is not set (compose.variables, or the project's .env)")
                    continue
                value_text = self.p.variables[variable]
                if kind == "configs":
                    item = {"name": name, "path": mount, "mode": item.get("mode", 0o444)}
                item["content"] = Sealed(value_text.encode(), "", name)  # sealed by the deployment's reader
                self.secrets.append((line, item))
                continue
            else:
                why = "external" if "external" in decl else "name" if "name" in decl else "no source"
                self.p.refuse(line_of(declared, name, line), f"{kind}.{name}", f"a {kind[:-1]} with {why}: give it file: (a file of the repository)"
                              + (", content: or environment:" if kind == "configs" else " or environment:"))
                continue
            (self.files if kind == "configs" else self.secrets).append((line, item))

    def _restart(self, value: Any, at: int) -> None:
        if isinstance(value, str) and value.startswith("on-failure:"):
            self.p.refuse(at, self.path("restart"), "a retry count: use on-failure (Docker retries without limit; gitsync backs off crash loops)")
            return
        self.put("restart", value, at)

    def _label_file(self, value: Any, at: int) -> None:
        """Labels from files of the repository (KEY=VALUE lines, as env files); labels: wins."""
        for i, path in enumerate([value] if isinstance(value, str) else list(value)):
            line = line_of(value, i, at) if not isinstance(value, str) else at
            for k, v in self._pairs_file("label_file", str(path), line).items():
                self.labels.setdefault(k, v)
                self.label_lines.setdefault(k, line)

    def _labels(self, value: Any, at: int) -> None:
        items = value.items() if isinstance(value, dict) else (str(e).partition("=")[::2] for e in value)
        for i, (k, v) in enumerate(items):
            self.labels[str(k)] = "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
            self.label_lines[str(k)] = line_of(value, k if isinstance(value, dict) else i, at)

    def _healthcheck(self, value: Any, at: int) -> None:
        if value.get("disable") in (True, "true"):
            return
        out: dict[str, Any] = {}
        lines: dict[str, int] = {}
        for k, v in value.items():
            key = {"test": "test", "interval": "interval", "timeout": "timeout", "retries": "retries", "start_period": "startPeriod"}.get(str(k))
            if key is None:
                if k != "disable":
                    self.p.refuse(line_of(value, k, at), self.path("healthcheck", k))
                continue
            out[key], lines[key] = number(v), line_of(value, k, at)
        if "test" not in out:  # the image's own healthcheck, with other timings: gitsync needs the test itself
            self.p.fail(at, self.path("healthcheck", "test"), "is required by gitsync (it does not read the image's healthcheck)")
            return
        self.put("healthcheck", node(at, out, lines), at)

    def _depends_on(self, value: Any, at: int) -> None:
        names: list[str] = []
        if isinstance(value, dict):
            for dep, cond in value.items():
                line = line_of(value, dep, at)
                cond = cond or {}
                if cond.get("condition") == "service_completed_successfully":
                    self.p.jobs.setdefault(str(dep), line)  # a job: it runs to completion, and this one starts after
                elif cond.get("condition", "service_started") not in ("service_started", "service_healthy"):
                    self.p.refuse(line, self.path("depends_on", dep, "condition"), f"{cond.get('condition')}: started, healthy or completed successfully only")
                if cond.get("restart") in (True, "true"):
                    self.p.refuse(line, self.path("depends_on", dep, "restart"), "restarting dependents when a dependency changes")
                if cond.get("required") in (False, "false"):
                    self.p.refuse(line, self.path("depends_on", dep, "required"), "an optional dependency: list it only when the service is there")
                names.append(str(dep))
        else:
            names = [str(d) for d in value]
        for dep in names:
            if dep in self.p.included:
                continue
            if dep not in self.services:
                self.p.fail(at, self.path("depends_on"), f"depends on undefined service {dep!r}")
            elif dep not in self.active:
                self.p.fail(at, self.path("depends_on"), f"depends on {dep!r}, whose profiles are not enabled (compose.profiles in the agent configuration)")
        self.put("dependsOn", nlist(at, [d for d in names if d in self.active or d in self.p.included]), at)

    def _links(self, value: Any, at: int) -> None:
        deps = list(self.spec.get("dependsOn") or [])
        for i, link in enumerate(value):
            target, _, alias = str(link).partition(":")
            if alias and alias != target:
                self.p.refuse(line_of(value, i, at), self.path("links", i), "a link alias: services reach each other by service name")
            elif target not in deps:
                deps.append(target)
        self.put("dependsOn", nlist(at, deps), at)

    def _deploy(self, value: Any, at: int) -> None:
        for k, v in (value or {}).items():
            line = line_of(value, k, at)
            if k == "replicas":
                self.put("replicas", number(v), line)
            elif k == "mode" and v == "replicated":
                continue
            elif k == "placement":
                self._placement(v, line)
            elif k == "update_config":
                self._update(v, line)
            elif k == "resources":
                for kind, limits in v.items():
                    for r, amount in (limits or {}).items():
                        if kind in ("limits", "reservations") and r in ("cpus", "memory"):
                            self._resource(str(kind), str(r), amount, line_of(limits, r, line))
                        else:
                            self.p.refuse(line_of(limits, r, line), self.path("deploy", "resources", kind, r))
            elif k == "restart_policy":
                for rk, rv in v.items():
                    if rk == "condition":
                        self.put("restart", {"none": "no", "on-failure": "on-failure", "any": "always"}.get(rv, rv), line_of(v, rk, line))
                    else:
                        self.p.refuse(line_of(v, rk, line), self.path("deploy", "restart_policy", rk), "Docker restarts at once; gitsync backs off crash loops")
            elif k == "mode":
                self.p.refuse(line, self.path("deploy", "mode"), f"mode {v}: use replicas with x-gitsync: {{maxPerHost: 1}}")
            else:
                self.p.refuse(line, self.path("deploy", k))

    def _placement(self, value: Any, at: int) -> None:
        selector: dict[str, str] = {}
        for k, v in value.items():
            line = line_of(value, k, at)
            if k == "constraints":
                for i, c in enumerate(v):
                    m = re.fullmatch(r"\s*node\.labels\.([^\s=!]+)\s*==\s*(\S+)\s*", str(c))
                    if m is None:
                        self.p.refuse(line_of(v, i, line), self.path("deploy", "placement", "constraints", i), f"{c!r}: only node.labels.KEY == VALUE (the hosts' labels in the agent configuration)")
                    else:
                        selector[m.group(1)] = m.group(2)
            elif k == "max_replicas_per_node":
                self._placement_put("maxPerHost", number(v), line)
            else:
                self.p.refuse(line, self.path("deploy", "placement", k))
        if selector:
            self._placement_put("hostSelector", node(at, selector), at)

    def _placement_put(self, key: str, value: Any, line: int) -> None:
        placement = self.spec.setdefault("placement", node(line))
        self.lines.setdefault("placement", line)
        placement[key] = value
        placement.lines[key] = line

    def _update(self, value: Any, at: int) -> None:
        upd = node(at)
        for k, v in value.items():
            line = line_of(value, k, at)
            if k == "parallelism":
                upd["parallelism"], upd.lines["parallelism"] = number(v), line
            elif k == "order":
                upd["order"], upd.lines["order"] = v, line
            elif k == "monitor":
                self.put("minReadySeconds", v, line)
            elif k == "failure_action" and v == "rollback":
                continue
            elif k == "failure_action":
                self.p.refuse(line, self.path("deploy", "update_config", k), f"{v}: gitsync stops a failed rollout and rolls back what it replaced (failure_action: rollback)")
            else:
                self.p.refuse(line, self.path("deploy", "update_config", k))
        self.put("update", upd, at)

    def _resource(self, kind: str, what: str, amount: Any, line: int) -> None:
        res = self.spec.setdefault("resources", node(line))
        self.lines.setdefault("resources", line)
        sub = res.setdefault(kind, node(line))
        res.lines.setdefault(kind, line)
        sub[what], sub.lines[what] = amount, line

    def _extra_hosts(self, value: Any, at: int) -> None:
        out: dict[str, str] = {}
        lines: dict[str, int] = {}
        if isinstance(value, dict):
            for k, v in value.items():
                out[str(k)], lines[str(k)] = str(v[0] if isinstance(v, list) and v else v), line_of(value, k, at)
        else:
            for i, e in enumerate(value):
                m = re.fullmatch(r"([^:=]+)[:=](.+)", str(e))
                if m is None:
                    self.p.fail(line_of(value, i, at), self.path("extra_hosts", i), f"{e!r} is not HOST:IP or HOST=IP")
                    continue
                out[m.group(1)], lines[m.group(1)] = m.group(2).strip("[]"), line_of(value, i, at)
        self.put("extraHosts", node(at, out, lines), at)

    def _logging(self, value: Any, at: int) -> None:
        self.put("logging", node(at, {"driver": value.get("driver", "json-file"), "options": value.get("options")}), at)

    def _devices(self, value: Any, at: int) -> None:
        out = []
        for i, d in enumerate(value):
            if isinstance(d, dict):
                out.append(":".join(str(x) for x in (d.get("source"), d.get("target") or d.get("source"), d.get("permissions") or "rwm")))
            else:
                out.append(str(d))
        self.put("devices", nlist(at, out, [line_of(value, i, at) for i in range(len(value))]), at)

    def _network_mode(self, value: Any, at: int) -> None:
        if value in ("host", "none", "bridge"):
            self.put("networkMode", value, at)
        else:
            self.p.refuse(at, self.path("network_mode"), f"{value}: host, none or bridge (the agent's network) only")

    def _service_networks(self, value: Any, at: int) -> None:
        own: list[str] = []
        external: list[str] = []
        for i, net in enumerate(value if isinstance(value, list) else list(value)):
            line = line_of(value, i if isinstance(value, list) else net, at)
            if net not in self.p.network_names:
                self.p.fail(line, self.path("networks"), f"refers to network {net!r}, which is not declared under the top-level networks")
                continue
            opts = value.get(net) if isinstance(value, dict) else None
            for k in opts or {}:
                self.p.refuse(line_of(opts, k, line), self.path("networks", net, k), "services reach each other by service name, through the Services' proxy on the networks they share")
            kind, name = self.p.network_names[str(net)]
            (external if kind == "external" else own).append(name)
        self._networks_put(own, external, at)

    def _networks_put(self, own: list[str], external: list[str], at: int) -> None:
        if own:
            self.put("networks", nlist(at, own), at)
        if external:
            self.put("externalNetworks", nlist(at, external), at)

    def _sysctls(self, value: Any, at: int) -> None:
        if isinstance(value, dict):
            items = {str(k): str(v) for k, v in value.items()}
            lines = {str(k): line_of(value, k, at) for k in value}
        else:
            items, lines = {}, {}
            for i, e in enumerate(value):
                k, _, v = str(e).partition("=")
                items[k], lines[k] = v, line_of(value, i, at)
        self.put("sysctls", node(at, items, lines), at)

    def _pull_policy(self, value: Any, at: int) -> None:
        if value not in ("missing", "if_not_present"):
            self.p.refuse(at, self.path("pull_policy"), f"{value}: gitsync pulls an image when the host does not have it (missing)")

    def _x_gitsync(self, value: Any, at: int) -> None:
        known = ("hostSelector", "maxPerHost", "minReadySeconds", "allowDataMove", "servicePorts", "service")
        if not isinstance(value, dict | None):
            self.p.fail(at, self.path("x-gitsync"), f"must be a mapping ({', '.join(known)})")
            return
        for k, v in (value or {}).items():
            line = line_of(value, k, at)
            if k in ("hostSelector", "maxPerHost"):
                self._placement_put(str(k), v, line)
            elif k in ("minReadySeconds", "allowDataMove"):
                self.put(str(k), v, line)
            elif k not in known:
                self.p.fail(line, self.path("x-gitsync", k), f"unknown key (known keys here: {', '.join(known)})")
        self.x = value or {}

    def _finish(self) -> None:
        p, x = self.p, self.x
        if self.env:
            self.put("env", node(self.line, self.env), self.at("environment") or self.at("env_file"))
        ports: dict[tuple[int, str], tuple[int | None, int, str | None]] = {}
        for port, proto, host, line, ip in self.container_ports:
            was = ports.get((port, proto), (None, line, None))
            if was[0] is not None and host is not None and (was[0], was[2]) != (host, ip):  # never one of them dropped without a word
                self.p.fail(line, f"services.{self.name}.ports", f"container port {port}/{proto} is published twice ({was[0]} and {host}); keep one")
                continue
            if (port, proto) not in ports or host is not None:
                ports[(port, proto)] = (host, line, ip)
        if ports:
            self.put("ports", nlist(self.at("ports") or self.at("expose"), [
                node(line, {"containerPort": port, "hostPort": host, "hostIP": ip, "protocol": proto if proto != "tcp" else None})
                for (port, proto), (host, line, ip) in ports.items()
            ], [line for _, line, _ in ports.values()]), self.at("ports") or self.at("expose"))
        if self.volumes:
            self.put("volumes", nlist(self.at("volumes"), [node(line, v) for line, v in self.volumes], [line for line, _ in self.volumes]), self.at("volumes"))
        if self.files:
            at = self.at("volumes") or self.at("configs")
            self.put("files", nlist(at, [node(line, v) for line, v in self.files], [line for line, _ in self.files]), at)
        if self.secrets:
            at = self.at("secrets") or self.at("configs")
            self.put("secrets", nlist(at, [node(line, v) for line, v in self.secrets], [line for line, _ in self.secrets]), at)
        if self.tmpfs:
            self.put("tmpfs", nlist(self.at("tmpfs") or self.at("volumes"), self.tmpfs), self.at("tmpfs") or self.at("volumes"))
        self.spec.setdefault("restart", "no")  # compose's default: Docker does not restart it (the agent still heals it)
        update = self.spec.setdefault("update", node(self.line))
        update.setdefault("order", "stop-first")  # compose recreates a container stop-first
        labels = {**self.labels, PROJECT_LABEL: p.name, SERVICE_LABEL: self.name}
        p.docs.append(Doc(Deployment.KIND, self.name, self.line, node(self.line, self.spec, self.lines), labels, self.label_lines))
        renumber = {number(k): number(v) for k, v in (x.get("servicePorts") or {}).items()}
        targets: dict[int, tuple[int | None, int, str | None]] = {}
        for target, published, line, ip in self.service_ports:
            was_published = targets.get(target, (None, line, None))[0]
            if was_published is not None and published is not None and published != was_published:  # never one of them dropped without a word
                self.p.fail(line, f"services.{self.name}.ports", f"container port {target} is published twice ({was_published} and {published}); "
                            "a Service publishes one hostPort per port: keep one, or let the container listen on a second port")
                continue
            if target not in targets or published is not None:
                targets[target] = (published, line, ip)
        if not targets or x.get("service") in (False, "false"):
            return
        sports = [node(line, {"port": renumber.get(t, t), "targetPort": t, "hostPort": pub, "hostIP": ip}) for t, (pub, line, ip) in targets.items()]
        spec = node(self.line, {"selector": node(self.line, {PROJECT_LABEL: p.name, SERVICE_LABEL: self.name}), "ports": nlist(self.line, sports, [line for _, line, _ in targets.values()])})
        p.docs.append(Doc(Service.KIND, self.name, self.line, spec))


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = yamlsrc.Node()
        out.line = getattr(over, "line", 0)
        for k in list(base) + [k for k in over if k not in base]:
            if k in over and isinstance(over[k], yamlsrc.Reset):
                continue
            value = _merge(base[k], over[k]) if k in base and k in over else over[k] if k in over else base[k]
            out[k] = value
            out.lines[k] = line_of(over, k) if k in over else line_of(base, k)
        return out
    return over


def _range(text: str) -> Any:
    return text if "-" in text else number(text)


_SHORT_PORT = re.compile(r"^(?:(?:\[(?P<ip6>[^\]]+)\]|(?P<ip>[^:\[\]]*)):)??(?:(?P<pub>[\d-]*):)?(?P<target>[\d-]+)(?:/(?P<proto>\w+))?$")


def _short_port(text: str) -> tuple[str | None, Any, Any, str] | None:
    m = _SHORT_PORT.match(text.strip())
    if m is None:
        return None
    pub = m.group("pub")
    return m.group("ip6") or m.group("ip") or None, _range(pub) if pub else None, _range(m.group("target")), m.group("proto") or "tcp"


def _expand(target: Any, published: Any, mapper: ServiceMapper, line: int, i: int) -> list[tuple[int, int | None]]:
    """Port ranges (8000-8002 or 8000-8002:9000-9002) as (target, published) pairs."""
    def span(v: Any) -> list[int] | None:
        if isinstance(v, int):
            return [v]
        m = re.fullmatch(r"(\d+)-(\d+)", str(v))
        return list(range(int(m.group(1)), int(m.group(2)) + 1)) if m and int(m.group(1)) <= int(m.group(2)) <= int(m.group(1)) + 100 else None

    targets = span(target)
    pubs = span(published) if published is not None else None
    if targets is None or (published is not None and pubs is None) or any(not 1 <= t <= 65535 for t in (targets or []) + (pubs or [])):
        mapper.p.fail(line, mapper.path("ports", i), f"{target if published is None else f'{published}:{target}'} is not a port or a range of at most 100 ports")
        return []
    if pubs is not None and len(pubs) != len(targets):
        if len(pubs) > 1:
            mapper.p.fail(line, mapper.path("ports", i), "a published range must be as long as the container range")
            return []
        pubs = pubs * len(targets) if len(targets) == 1 else None
        if pubs is None:
            mapper.p.fail(line, mapper.path("ports", i), "one published port for a range of container ports")
            return []
    return list(zip(targets, pubs or [None] * len(targets)))
