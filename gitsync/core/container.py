"""A Deployment's container fields beyond image, command, env, ports and volumes: read from the
manifest, written into the spec document (only those set, so a spec without them hashes as
before), read back from it, and handed to Docker.

Each field is one entry of `FIELDS`: its manifest key, the ContainerOptions attribute, and how
its value is stored in the spec document (JSON) and read back. Docker fills in values of its own
on inspect (``CAP_`` prefixes, memory rounded, a default log driver); gitsync never compares
those: a replica is up to date when its ``io.gitsync.spec-hash`` label says so.
"""

from __future__ import annotations

import ipaddress
import re
import signal as _signal
from collections.abc import Callable
from dataclasses import dataclass, fields as dc_fields, replace
from typing import Any

from .fields import Ctx, Obj, path_problem, read_bool, read_command, read_enum, read_int, read_list, read_parsed, read_str, read_str_map, shown, type_name
from .models import BindMount, ContainerOptions, FileMount, NetworkMode, Sealed
from .units import parse_cpus, parse_size

CAPABILITIES = frozenset(
    "AUDIT_CONTROL AUDIT_READ AUDIT_WRITE BLOCK_SUSPEND BPF CHECKPOINT_RESTORE CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID "
    "IPC_LOCK IPC_OWNER KILL LEASE LINUX_IMMUTABLE MAC_ADMIN MAC_OVERRIDE MKNOD NET_ADMIN NET_BIND_SERVICE NET_BROADCAST NET_RAW "
    "PERFMON SETFCAP SETGID SETPCAP SETUID SYSLOG SYS_ADMIN SYS_BOOT SYS_CHROOT SYS_MODULE SYS_NICE SYS_PACCT SYS_PTRACE "
    "SYS_RAWIO SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG WAKE_ALARM ALL".split()
)
# What every Docker container has unless dropped (moby's oci/caps/defaults.go).
DOCKER_DEFAULT_CAPABILITIES = frozenset(
    "AUDIT_WRITE CHOWN DAC_OVERRIDE FOWNER FSETID KILL MKNOD NET_BIND_SERVICE NET_RAW SETFCAP SETGID SETPCAP SETUID SYS_CHROOT".split()
)
ULIMITS = frozenset("core cpu data fsize locks memlock msgqueue nice nofile nproc rss rtprio rttime sigpending stack".split())
_SIGNALS = {s.name for s in _signal.Signals}
_HOSTNAME_RE = re.compile(r"^[a-zA-Z0-9]([-a-zA-Z0-9.]{0,62}[a-zA-Z0-9])?$")
_USER_RE = re.compile(r"^[a-zA-Z0-9_.-]+(:[a-zA-Z0-9_.-]+)?$")
_DEVICE_PERMS = re.compile(r"^[rwm]{1,3}$")


def _capabilities(ctx: Ctx, obj: Obj, key: str) -> tuple[str, ...]:
    out: list[str] = []
    for line, path, item in read_list(ctx, obj, key):
        name = item.upper().removeprefix("CAP_") if isinstance(item, str) else None
        if name not in CAPABILITIES:
            ctx.add(line, path, f"{shown(item)} is not a Linux capability (e.g. NET_ADMIN, SYS_PTRACE)")
        elif name not in out:
            out.append(name)
    return tuple(sorted(out))


def _strings(ctx: Ctx, obj: Obj, key: str, check: Callable[[str], str | None] = lambda s: None) -> list[tuple[int, str, str]]:
    out = []
    for line, path, item in read_list(ctx, obj, key):
        if not isinstance(item, str) or not item:
            ctx.add(line, path, f"must be a non-empty string, not {type_name(item)}")
            continue
        problem = check(item)
        if problem:
            ctx.add(line, path, problem)
            continue
        out.append((line, path, item))
    return out


def _tmpfs(ctx: Ctx, obj: Obj) -> tuple[tuple[str, str], ...]:
    out: dict[str, str] = {}
    for line, path, item in _strings(ctx, obj, "tmpfs"):
        mount, _, options = item.partition(":")
        if path_problem(mount):
            ctx.add(line, path, f"{shown(item)}: the mount path {path_problem(mount)}, e.g. /run or /run:size=64m,mode=1777")
        elif mount in out:
            ctx.add(line, path, f"{mount} is listed twice")
        else:
            out[mount] = options
    return tuple(sorted(out.items()))


def _extra_hosts(ctx: Ctx, obj: Obj) -> tuple[tuple[str, str], ...]:
    pairs = read_str_map(ctx, obj, "extraHosts", re.compile(r"^[a-zA-Z0-9]([-a-zA-Z0-9.]*[a-zA-Z0-9])?$"), "host")
    node = obj.get("extraHosts", None)
    for name, address in pairs:
        if address == "host-gateway":
            continue
        try:
            ipaddress.ip_address(address)
        except ValueError:
            at = node.line_of(name) if hasattr(node, "line_of") else obj.line_of("extraHosts")
            ctx.add(at, f"spec.extraHosts.{name}", f"{shown(address)} is not an IP address (or host-gateway)")
    return pairs


def _size(ctx: Ctx, obj: Obj, key: str) -> int | None:
    return read_parsed(ctx, obj, key, parse_size, None)


def _cpus(ctx: Ctx, obj: Obj, key: str) -> float | None:
    return read_parsed(ctx, obj, key, parse_cpus, None)


def _resources(ctx: Ctx, spec: Obj) -> dict[str, Any]:
    node = spec.get("resources", None)
    if node is None:
        return {}
    r = Obj(ctx, node, "spec.resources", spec.line_of("resources"))
    out: dict[str, Any] = {}
    for key, mem, cpu in (("limits", "memory", "cpus"), ("reservations", "memory_reservation", "cpus_reservation")):
        sub = r.get(key, None)
        if sub is None:
            continue
        o = Obj(ctx, sub, r.sub(key), r.line_of(key))
        out[mem] = _size(ctx, o, "memory")
        out[cpu] = _cpus(ctx, o, "cpus")
        o.finish()
    r.finish()
    if out.get("memory") and out.get("memory_reservation") and out["memory_reservation"] > out["memory"]:
        ctx.add(r.line_of("reservations"), "spec.resources.reservations.memory", "must not exceed limits.memory")
    return out


def _logging(ctx: Ctx, spec: Obj) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    node = spec.get("logging", None)
    if node is None:
        return None, ()
    lg = Obj(ctx, node, "spec.logging", spec.line_of("logging"))
    driver = read_str(ctx, lg, "driver", required=lg.ok)
    options = read_str_map(ctx, lg, "options", re.compile(r"^[a-zA-Z0-9][-a-zA-Z0-9_.]*$"), "log option")
    lg.finish()
    if driver is not None and not re.match(r"^[a-zA-Z0-9][-a-zA-Z0-9_./:]*$", driver):
        ctx.add(lg.line_of("driver"), "spec.logging.driver", f"{shown(driver)} is not a log driver name (e.g. json-file, local, syslog)")
    return driver, options


def _ulimits(ctx: Ctx, spec: Obj) -> tuple[tuple[str, int, int], ...]:
    node = spec.get("ulimits", None)
    if node is None:
        return ()
    u = Obj(ctx, node, "spec.ulimits", spec.line_of("ulimits"))
    out = []
    for name in list(u.node):
        value = u.get(name)
        line, path = u.line_of(name), u.sub(str(name))
        if name not in ULIMITS:
            ctx.add(line, path, f"is not a ulimit; use one of {', '.join(sorted(ULIMITS))}")
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            soft = hard = value
        elif isinstance(value, dict):
            lim = Obj(ctx, value, path, line)
            soft, hard = lim.get("soft", None, required=True), lim.get("hard", None, required=True)
            lim.finish()
        else:
            ctx.add(line, path, f"must be a number or {{soft: N, hard: N}}, not {type_name(value)}")
            continue
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= -1 for v in (soft, hard)):
            ctx.add(line, path, "soft and hard must be whole numbers (-1: unlimited)")
        elif hard != -1 and (soft == -1 or soft > hard):
            ctx.add(line, path, f"soft ({soft}) must not exceed hard ({hard})")
        else:
            out.append((str(name), soft, hard))
    return tuple(sorted(out))


def _stop_signal(ctx: Ctx, spec: Obj) -> str | None:
    value = spec.get("stopSignal", None)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 64:
        return str(value)
    text = value.upper() if isinstance(value, str) else ""
    name = text if text.startswith("SIG") else "SIG" + text
    if name in _SIGNALS or re.match(r"^SIGRTM(IN\+\d+|AX-\d+)$", name):
        return name
    ctx.add(spec.line_of("stopSignal"), "spec.stopSignal", f"{shown(value)} is not a signal (e.g. SIGTERM, SIGQUIT, SIGINT)")
    return None


def _devices(ctx: Ctx, spec: Obj) -> tuple[tuple[str, str, str], ...]:
    out = []
    for line, path, item in _strings(ctx, spec, "devices"):
        parts = item.split(":")
        host, inside, perms = parts[0], parts[1] if len(parts) > 1 else parts[0], parts[2] if len(parts) > 2 else "rwm"
        if len(parts) == 2 and _DEVICE_PERMS.match(parts[1]):
            inside, perms = host, parts[1]
        if len(parts) > 3 or not host.startswith("/") or not inside.startswith("/") or not _DEVICE_PERMS.match(perms):
            ctx.add(line, path, f"{shown(item)} is not a device; use /dev/HOST[:/dev/CONTAINER][:rwm]")
            continue
        if why := path_problem(host) or path_problem(inside):
            ctx.add(line, path, f"{shown(item)}: a device path {why}")
            continue
        out.append((host, inside, perms))
    return tuple(sorted(out))


# Kernel parameters a container has of its own (namespaced), as Docker allows them: net.* in its own
# network namespace, IPC's in its own IPC namespace. Anything else would change the host's kernel.
_SYSCTL_IPC = re.compile(r"^(kernel\.(msgmax|msgmnb|msgmni|sem|shmall|shmmax|shmmni|shm_rmid_forced)|fs\.mqueue\..+)$")


def _sysctls(ctx: Ctx, spec: Obj, network_mode: str | None) -> tuple[tuple[str, str], ...]:
    pairs = read_str_map(ctx, spec, "sysctls", re.compile(r"^[a-z0-9_]+(\.[a-zA-Z0-9_-]+)+$"), "kernel parameter")
    node = spec.get("sysctls", None)
    out = []
    for name, value in pairs:
        at = node.line_of(name) if hasattr(node, "line_of") else spec.line_of("sysctls")
        if name.startswith("net.") and network_mode == "host":
            ctx.add(at, f"spec.sysctls.{name}", "on the host's network it would change the host's kernel: not with networkMode host")
        elif not (name.startswith("net.") or _SYSCTL_IPC.match(name)):
            ctx.add(at, f"spec.sysctls.{name}", "is not a kernel parameter a container has of its own (net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*)")
        else:
            out.append((name, value))
    return tuple(sorted(out))


_NETWORK_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,99}$")


def _network_names(ctx: Ctx, spec: Obj, key: str) -> tuple[str, ...]:
    out: list[str] = []
    for line, path, item in _strings(ctx, spec, key, lambda s: None if _NETWORK_RE.match(s) else f"{shown(s)} is not a network name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"):
        if item in out:
            ctx.add(line, path, f"{item} is listed twice")
        else:
            out.append(item)
    return tuple(out)


def _domainname(ctx: Ctx, spec: Obj) -> str | None:
    name = read_str(ctx, spec, "domainname")
    if name is not None and not _HOSTNAME_RE.match(name):
        ctx.add(spec.line_of("domainname"), "spec.domainname", f"{shown(name)} is not a domain name")
        return None
    return name


def _addresses(ctx: Ctx, spec: Obj, key: str) -> tuple[str, ...]:
    out = []
    for line, path, item in _strings(ctx, spec, key):
        try:
            out.append(str(ipaddress.ip_address(item)))
        except ValueError:
            ctx.add(line, path, f"{shown(item)} is not an IP address (a name server is given by its address)")
    return tuple(out)


def parse_options(ctx: Ctx, spec: Obj, binds: tuple[BindMount, ...], files: tuple[FileMount, ...] = ()) -> ContainerOptions:
    """The container fields of a Deployment's spec (each key taken from `spec`)."""
    lines = {f"spec.{k}": spec.line_of(k) for k in spec.node if isinstance(k, str)}
    user = spec.get("user", None)
    if isinstance(user, int) and not isinstance(user, bool):
        user = str(user)
    if user is not None and (not isinstance(user, str) or not _USER_RE.match(user)):
        ctx.add(spec.line_of("user"), "spec.user", f"{shown(user)} is not a user: a name or uid, optionally :group or :gid")
        user = None
    working_dir = read_str(ctx, spec, "workingDir")
    if working_dir is not None and not working_dir.startswith("/"):
        ctx.add(spec.line_of("workingDir"), "spec.workingDir", "must be an absolute path")
    hostname = read_str(ctx, spec, "hostname")
    if hostname is not None and not _HOSTNAME_RE.match(hostname):
        ctx.add(spec.line_of("hostname"), "spec.hostname", f"{shown(hostname)} is not a host name")
    log_driver, log_options = _logging(ctx, spec)
    security = tuple(sorted({s for _, _, s in _strings(ctx, spec, "securityOpt", lambda s: None if re.match(r"^[a-z-]+([=:].*)?$", s) else f"{shown(s)} is not a security option (e.g. no-new-privileges, seccomp=unconfined)")}))
    shm = _size(ctx, spec, "shmSize")
    opts = ContainerOptions(
        entrypoint=read_command(ctx, spec, "entrypoint"),
        working_dir=working_dir,
        user=user,
        hostname=hostname,
        **_resources(ctx, spec),
        cap_add=_capabilities(ctx, spec, "capAdd"),
        cap_drop=_capabilities(ctx, spec, "capDrop"),
        read_only_root=read_bool(ctx, spec, "readOnlyRootFilesystem"),
        tmpfs=_tmpfs(ctx, spec),
        extra_hosts=_extra_hosts(ctx, spec),
        init=read_bool(ctx, spec, "init"),
        log_driver=log_driver,
        log_options=log_options,
        ulimits=_ulimits(ctx, spec),
        shm_size=shm,
        stop_signal=_stop_signal(ctx, spec),
        security_opt=security,
        devices=_devices(ctx, spec),
        privileged=read_bool(ctx, spec, "privileged"),
        network_mode=read_enum(ctx, spec, "networkMode", NetworkMode.BRIDGE),
        dns=_addresses(ctx, spec, "dns"),
        dns_search=tuple(s for _, _, s in _strings(ctx, spec, "dnsSearch", lambda s: None if _HOSTNAME_RE.match(s) else f"{shown(s)} is not a domain")),
        dns_options=tuple(s for _, _, s in _strings(ctx, spec, "dnsOptions", lambda s: None if re.match(r"^[a-z0-9_-]+(:\d+)?$", s) else f"{shown(s)} is not a resolver option (e.g. ndots:2)")),
        pids_limit=read_int(ctx, spec, "pidsLimit", None, -1, 1 << 22),
        tty=read_bool(ctx, spec, "tty"),
        stdin_open=read_bool(ctx, spec, "stdinOpen"),
        sysctls=_sysctls(ctx, spec, str(spec.get("networkMode", "bridge"))),
        group_add=tuple(str(g) for _, _, g in _strings(ctx, spec, "groupAdd", lambda s: None if _USER_RE.match(s) and ":" not in s else f"{shown(s)} is not a group name or gid")),
        domainname=_domainname(ctx, spec),
        oom_score_adj=read_int(ctx, spec, "oomScoreAdj", None, -1000, 1000),
        mem_swappiness=read_int(ctx, spec, "memSwappiness", None, 0, 100),
        memswap_limit=-1 if spec.get("memswapLimit", None) in (-1, "-1") else _size(ctx, spec, "memswapLimit"),
        networks=_network_names(ctx, spec, "networks"),
        external_networks=_network_names(ctx, spec, "externalNetworks"),
        binds=binds,
        files=files,
        lines=lines,
    )
    if opts.network_mode != NetworkMode.BRIDGE and opts.hostname is not None:
        ctx.add(spec.line_of("hostname"), "spec.hostname", f"cannot be set with networkMode {opts.network_mode}: the container has the host's (or no) network identity")
    if opts.network_mode != NetworkMode.BRIDGE and (opts.networks or opts.external_networks):
        key = "networks" if opts.networks else "externalNetworks"
        ctx.add(spec.line_of(key), f"spec.{key}", f"cannot be set with networkMode {opts.network_mode}")
    if opts.network_mode != NetworkMode.BRIDGE and opts.extra_hosts and opts.network_mode == NetworkMode.NONE:
        ctx.add(spec.line_of("extraHosts"), "spec.extraHosts", "means nothing with networkMode none")
    return opts


@dataclass(frozen=True)
class Field:
    key: str  # in the manifest and the spec document
    attr: str  # on ContainerOptions
    dump: Callable[[Any], Any] = lambda v: v
    load: Callable[[Any], Any] = lambda v: v


def _pairs(v: Any) -> Any:
    return [list(x) for x in v]


def _tuples(v: Any) -> Any:
    return tuple(tuple(x) for x in v)


FIELDS = (
    Field("entrypoint", "entrypoint", list, tuple),
    Field("workingDir", "working_dir"),
    Field("user", "user"),
    Field("hostname", "hostname"),
    Field("resources.limits.memory", "memory"),
    Field("resources.limits.cpus", "cpus"),
    Field("resources.reservations.memory", "memory_reservation"),
    Field("resources.reservations.cpus", "cpus_reservation"),
    Field("capAdd", "cap_add", list, tuple),
    Field("capDrop", "cap_drop", list, tuple),
    Field("readOnlyRootFilesystem", "read_only_root"),
    Field("tmpfs", "tmpfs", _pairs, _tuples),
    Field("extraHosts", "extra_hosts", _pairs, _tuples),
    Field("init", "init"),
    Field("logging.driver", "log_driver"),
    Field("logging.options", "log_options", _pairs, _tuples),
    Field("ulimits", "ulimits", _pairs, _tuples),
    Field("shmSize", "shm_size"),
    Field("stopSignal", "stop_signal"),
    Field("securityOpt", "security_opt", list, tuple),
    Field("devices", "devices", _pairs, _tuples),
    Field("privileged", "privileged"),
    Field("networkMode", "network_mode", str, NetworkMode),
    Field("dns", "dns", list, tuple),
    Field("dnsSearch", "dns_search", list, tuple),
    Field("dnsOptions", "dns_options", list, tuple),
    Field("pidsLimit", "pids_limit"),
    Field("tty", "tty"),
    Field("stdinOpen", "stdin_open"),
    Field("sysctls", "sysctls", _pairs, _tuples),
    Field("groupAdd", "group_add", list, tuple),
    Field("domainname", "domainname"),
    Field("oomScoreAdj", "oom_score_adj"),
    Field("memSwappiness", "mem_swappiness"),
    Field("memswapLimit", "memswap_limit"),
    Field("networks", "networks", list, tuple),
    Field("externalNetworks", "external_networks", list, tuple),
    Field("hostPaths", "binds", lambda v: sorted([b.host_path, b.mount_path, b.read_only] + ([b.relabel] if b.relabel else []) for b in v), lambda v: tuple(BindMount(*b) for b in v)),
    Field("files", "files", lambda v: sorted([f.mount_path, f.digest, f.folder] + ([f.secret] if f.secret else []) for f in v),
          lambda v: tuple(FileMount(f[0], f[1], f[2], secret=f[3] if len(f) > 3 else "") for f in v)),
    Field("secretEnv", "secret_env", lambda v: sorted([k, ref, s.digest] for k, ref, s in v), lambda v: tuple((k, ref, Sealed(None, dg, ref)) for k, ref, dg in v)),
)
_DEFAULTS = ContainerOptions()
assert {f.attr for f in FIELDS} == {f.name for f in dc_fields(ContainerOptions)} - {"lines"}, "every option has a FIELDS entry"


def document(opts: ContainerOptions) -> dict[str, Any]:
    """The options that differ from Docker's defaults, by manifest key, as JSON values."""
    return {f.key: f.dump(getattr(opts, f.attr)) for f in FIELDS if getattr(opts, f.attr) != getattr(_DEFAULTS, f.attr)}


def from_document(doc: dict[str, Any]) -> ContainerOptions:
    return replace(_DEFAULTS, **{f.attr: f.load(doc[f.key]) for f in FIELDS if f.key in doc})


def docker_options(opts: ContainerOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """(host config, container config) keyword arguments of the Docker SDK for the options set."""
    host: dict[str, Any] = {
        "cap_add": list(opts.cap_add) or None,
        "cap_drop": list(opts.cap_drop) or None,
        "read_only": opts.read_only_root or None,
        "tmpfs": dict(opts.tmpfs) or None,
        "extra_hosts": [f"{n}:{a}" for n, a in opts.extra_hosts] or None,
        "init": opts.init or None,
        "log_config": {"Type": opts.log_driver, "Config": dict(opts.log_options)} if opts.log_driver else None,
        "ulimits": [{"name": n, "soft": s, "hard": h} for n, s, h in opts.ulimits] or None,
        "shm_size": opts.shm_size,
        "security_opt": list(opts.security_opt) or None,
        "devices": [":".join(d) for d in opts.devices] or None,
        "privileged": opts.privileged,
        "mem_limit": opts.memory,
        "mem_reservation": opts.memory_reservation,
        "nano_cpus": int(opts.cpus * 1e9) if opts.cpus else None,
        "cpu_shares": max(2, int(opts.cpus_reservation * 1024)) if opts.cpus_reservation else None,
        "dns": list(opts.dns) or None,
        "dns_search": list(opts.dns_search) or None,
        "dns_opt": list(opts.dns_options) or None,
        "pids_limit": opts.pids_limit,
        "group_add": list(opts.group_add) or None,
        "oom_score_adj": opts.oom_score_adj,
        "mem_swappiness": opts.mem_swappiness,
        "memswap_limit": opts.memswap_limit,
    }
    config: dict[str, Any] = {
        "entrypoint": list(opts.entrypoint) if opts.entrypoint is not None else None,
        "working_dir": opts.working_dir,
        "user": opts.user,
        "hostname": opts.hostname,
        "stop_signal": opts.stop_signal,
        "tty": opts.tty or None,
        "domainname": opts.domainname,
        "stdin_open": opts.stdin_open or None,
    }
    return {k: v for k, v in host.items() if v is not None}, {k: v for k, v in config.items() if v is not None}

