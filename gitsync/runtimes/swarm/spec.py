"""A Deployment as a Swarm service spec (the whole of it, as the Engine API takes it), the changes a
person may make by hand (drift), and what the swarm runtime refuses, located. Pure."""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...core import labels as L
from ...core.errors import Problem
from ...core.models import Deployment, DesiredState, NetworkMode, RestartPolicy, Sealed, UpdateOrder

MIN_MONITOR = 5.0  # seconds Swarm watches a new task for failure when minReadySeconds says less
PINNED = "io.gitsync.pinned-node"  # on a service whose host-local volume holds it to one node: that node's id
ROLE_VOLUME = "volume"  # a Swarm config recording which node holds a host-local volume (never pruned: the data stays)

# Container options this runtime does not carry to Swarm, with why (a manifest key each).
REFUSED_OPTIONS = {
    "shm_size": ("shmSize", "Swarm services have no shm size (mount a tmpfs at /dev/shm instead)"),
    "security_opt": ("securityOpt", "Swarm services take no security options"),
    "devices": ("devices", "Swarm services cannot map host devices"),
    "privileged": ("privileged", "Swarm services cannot be privileged"),
    "domainname": ("domainname", "Swarm services have no domain name"),
    "oom_score_adj": ("oomScoreAdj", "Swarm services on this engine's API take no OOM score"),
    "mem_swappiness": ("memSwappiness", "Swarm services take no swappiness"),
    "memswap_limit": ("memswapLimit", "Swarm services take no swap limit"),
    # the policy checks a host path on the host right before the change (a link planted under a
    # writable prefix would lead elsewhere); a manager cannot look into the other nodes' file systems
    "binds": ("hostPaths", "host paths cannot be checked on the nodes through a manager, so the policy cannot vouch for them (use a Volume)"),
}

# -- a Deployment as a Swarm service ----------------------------------------------------------
def service_name(agent: str, d: Deployment) -> str:
    return f"{agent}-{d.name}"


def name_taken(d: Deployment, desired: DesiredState | None) -> bool:
    """A Service of the same name answers the deployment's name (on the Service's ports)."""
    return desired is not None and any(svc.name == d.name for svc in desired.services)


def document(d: Deployment, desired: DesiredState | None = None) -> dict[str, Any]:
    """Everything the service's spec is made from: the container spec as the containers runtime
    hashes it, and what Swarm takes besides (the count, placement, update policy)."""
    return {
        **({"nameTakenByService": True} if name_taken(d, desired) else {}),
        **L.spec_document(d),
        "replicas": d.replicas,
        "placement": {"hostSelector": [list(x) for x in d.placement.host_selector], "maxPerHost": d.placement.max_per_host},
        "update": {"order": str(d.update.order), "parallelism": d.update.parallelism, "minReadySeconds": d.min_ready_seconds},
        "dependsOn": list(d.depends_on),
    }


def document_hash(doc: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _ns(seconds: float) -> int:
    return int(round(seconds * 1e9))


def _tmpfs(path: str, options: str) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for o in filter(None, options.split(",")):
        k, _, v = o.partition("=")
        if k == "size":
            opts["SizeBytes"] = _bytes(v)
        elif k == "mode":
            opts["Mode"] = int(v, 8)
    return {"Type": "tmpfs", "Target": path, **({"TmpfsOptions": opts} if opts else {})}


_SIZE = re.compile(r"^(\d+)([kmg]?)b?$", re.I)


def _bytes(v: str) -> int:
    m = _SIZE.match(v.strip())
    if not m:
        raise ValueError(v)
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]




def volume_name(agent: str, name: str) -> str:
    return f"gitsync-{agent}-{name}"


def _volume_mount(agent: str, name: str, target: str, read_only: bool, desired: DesiredState | None) -> dict[str, Any]:
    v = desired.volume(name) if desired is not None else None
    source = name if v is not None and v.external else volume_name(agent, name)
    if v is not None and v.per_replica:  # Swarm names it per task slot (1, 2, ...) on whichever node the slot runs
        source += "-{{.Task.Slot}}"
    opts: dict[str, Any] = {"Labels": {L.MANAGED_BY: agent, L.VOLUME: name}}
    if v is not None and not v.external:
        opts["DriverConfig"] = {"Name": v.driver, "Options": dict(v.driver_opts)}
    return {"Type": "volume", "Source": source, "Target": target, "ReadOnly": read_only, **({} if v is not None and v.external else {"VolumeOptions": opts})}


def host_local(desired: DesiredState, d: Deployment) -> str | None:
    """The first volume of `d` whose data lives on one node (the local driver, not shared)."""
    for m in d.volumes:
        v = desired.volume(m.name)
        if not v.shared and v.driver == "local" and not v.external:
            return m.name
    return None


@dataclass(frozen=True)
class FileObject:
    """One file a replica gets from a Swarm config (files of the repository) or secret (a Secret's value)."""

    kind: str  # config | secret
    name: str  # named by its content (a secret by its keyed digest): Swarm's objects cannot change
    target: str
    data: bytes | Sealed = field(repr=False)
    mode: int
    uid: int
    gid: int


def file_objects(agent: str, d: Deployment) -> list[FileObject]:
    out = []
    for f in d.options.files:
        uid, gid = f.owner or (0, 0)
        for inner, data, mode in f.entries:
            target = posixpath.join(f.mount_path, inner) if f.folder else f.mount_path
            if isinstance(data, Sealed):
                out.append(FileObject("secret", f"{agent}-s-{data.digest[:24]}", target, data, mode, uid, gid))
            else:
                out.append(FileObject("config", f"{agent}-f-{hashlib.sha256(data).hexdigest()[:24]}", target, data, mode, uid, gid))
    return out


def service_spec(agent: str, d: Deployment, revision: str, desired: DesiredState | None = None, pin: str = "",
                 refs: Mapping[str, str] | None = None, image: str = "", reveal: bool = True) -> dict[str, Any]:
    """The whole service spec, as the Engine API takes it (Swarm keeps no part of an old one). `pin`:
    the node holding its host-local volume; `refs`: the ids of its Swarm configs and secrets by name
    (none while planning: ids say nothing the names do not); `image`: the image pinned by digest.
    Without `reveal` (a plan: a preview has no values to reveal) the variables taken from secrets are
    left out: their digests are in the spec's hash, which tells a new value."""
    doc = document(d, desired)
    want = document_hash(doc)
    o = d.options
    cs: dict[str, Any] = {
        "Image": image or d.image,
        "Labels": {**dict(d.labels), L.MANAGED_BY: agent, L.DEPLOYMENT: d.name, L.SPEC_HASH: want},
        "Env": [f"{k}={v}" for k, v in d.env] + ([f"{k}={s.reveal().decode('utf-8', 'surrogateescape')}" for k, _, s in o.secret_env] if reveal else []),
        "StopGracePeriod": _ns(d.stop_grace_period),
    }
    mounts = [_volume_mount(agent, m.name, m.mount_path, m.read_only, desired) for m in d.volumes]
    for kind, key in (("config", "Configs"), ("secret", "Secrets")):
        files = [f for f in file_objects(agent, d) if f.kind == kind]
        if files:
            cs[key] = [{"File": {"Name": f.target, "UID": str(f.uid), "GID": str(f.gid), "Mode": f.mode},
                        f"{kind.capitalize()}ID": (refs or {}).get(f.name, ""), f"{kind.capitalize()}Name": f.name} for f in files]
    if o.entrypoint is not None:
        cs["Command"] = list(o.entrypoint)
    if d.command is not None:
        cs["Args"] = list(d.command)
    if d.healthcheck is not None:
        h = d.healthcheck
        cs["Healthcheck"] = {"Test": list(h.test), "Interval": _ns(h.interval), "Timeout": _ns(h.timeout), "Retries": h.retries, "StartPeriod": _ns(h.start_period)}
    simple = {"Dir": o.working_dir, "User": o.user, "Hostname": o.hostname, "StopSignal": o.stop_signal}
    cs.update({k: v for k, v in simple.items() if v is not None})
    flags = {"TTY": o.tty, "OpenStdin": o.stdin_open, "ReadOnly": o.read_only_root, "Init": o.init}
    cs.update({k: True for k, v in flags.items() if v})
    if o.group_add:
        cs["Groups"] = list(o.group_add)
    if o.extra_hosts:
        cs["Hosts"] = [f"{addr} {name}" for name, addr in o.extra_hosts]
    if o.dns or o.dns_search or o.dns_options:
        cs["DNSConfig"] = {k: list(v) for k, v in (("Nameservers", o.dns), ("Search", o.dns_search), ("Options", o.dns_options)) if v}
    if o.sysctls:
        cs["Sysctls"] = dict(o.sysctls)
    if o.cap_add:
        cs["CapabilityAdd"] = list(o.cap_add)
    if o.cap_drop:
        cs["CapabilityDrop"] = list(o.cap_drop)
    if o.ulimits:
        cs["Ulimits"] = [{"Name": n, "Soft": s, "Hard": h} for n, s, h in o.ulimits]
    mounts += [_tmpfs(p, opts) for p, opts in o.tmpfs]
    if mounts:
        cs["Mounts"] = mounts
    limits = {k: v for k, v in (("NanoCPUs", _ns(o.cpus) if o.cpus else None), ("MemoryBytes", o.memory), ("Pids", o.pids_limit)) if v}
    reserve = {k: v for k, v in (("NanoCPUs", _ns(o.cpus_reservation) if o.cpus_reservation else None), ("MemoryBytes", o.memory_reservation)) if v}
    condition = {RestartPolicy.NO: "none", RestartPolicy.ON_FAILURE: "on-failure"}.get(d.restart, "any")
    if d.run_once and condition == "any":  # cannot be (validated): a job runs to completion
        condition = "none"
    placement: dict[str, Any] = {}
    constraints = [f"node.labels.{k}=={v}" for k, v in d.placement.host_selector] + ([f"node.id=={pin}"] if pin else [])
    if constraints:
        placement["Constraints"] = constraints
    if d.placement.max_per_host:
        placement["MaxReplicas"] = d.placement.max_per_host
    # its name, unless a Service of the same name takes it (the Service's proxy answers it, on the Service's ports)
    alias = [] if name_taken(d, desired) else [d.name]
    networks = [{"Target": n, "Aliases": alias} for n in L.networks_of(agent, d)] + [{"Target": n} for n in o.external_networks]
    task: dict[str, Any] = {
        "ContainerSpec": cs,
        "RestartPolicy": {"Condition": condition, "Delay": _ns(1), "MaxAttempts": 0},
        "Networks": networks,
    }
    if limits or reserve:
        task["Resources"] = {**({"Limits": limits} if limits else {}), **({"Reservations": reserve} if reserve else {})}
    if placement:
        task["Placement"] = placement
    if o.log_driver:
        task["LogDriver"] = {"Name": o.log_driver, "Options": dict(o.log_options)}
    monitor = _ns(max(d.min_ready_seconds, MIN_MONITOR))
    order = update_order(d)
    published = [
        {"Protocol": p.protocol, "TargetPort": p.container_port, "PublishedPort": p.host_port, "PublishMode": "host"}
        for p in d.ports if p.host_port is not None
    ]
    spec: dict[str, Any] = {
        "Name": service_name(agent, d),
        "Labels": {**dict(d.labels), L.MANAGED_BY: agent, L.DEPLOYMENT: d.name, L.SPEC_HASH: want,
                   L.SPEC: json.dumps(doc, sort_keys=True, separators=(",", ":")), L.REVISION: revision, **({PINNED: pin} if pin else {})},
        "TaskTemplate": task,
        "Mode": {"Replicated": {"Replicas": d.replicas}},
        "UpdateConfig": {"Parallelism": d.update.parallelism, "Delay": 0, "FailureAction": "rollback", "Monitor": monitor,
                         "MaxFailureRatio": 0, "Order": order},
        "RollbackConfig": {"Parallelism": d.update.parallelism, "Delay": 0, "FailureAction": "pause", "Monitor": monitor,
                           "MaxFailureRatio": 0, "Order": order},
        "EndpointSpec": {"Mode": "dnsrr", **({"Ports": published} if published else {})},
    }
    if d.run_once:  # a job: its replicas run to completion side by side; an update runs it again (Swarm takes no update config for it)
        spec["Mode"] = {"ReplicatedJob": {"MaxConcurrent": d.replicas, "TotalCompletions": d.replicas}}
        del spec["UpdateConfig"], spec["RollbackConfig"]
    return spec


# What a person may change by hand with `docker service scale / update`: compared with Git on
# every plan (drift), by name as the plan says it.
_DRIFT: tuple[tuple[str, Callable[[Mapping[str, Any]], Any]], ...] = (
    ("replicas", lambda s: ((s.get("Mode") or {}).get("Replicated") or {}).get("Replicas")
     or ((s.get("Mode") or {}).get("ReplicatedJob") or {}).get("TotalCompletions")),
    ("image", lambda s: unpinned(str(_cs(s).get("Image") or ""))),
    ("env", lambda s: sorted(_cs(s).get("Env") or [])),  # less the variables from secrets (see drift)
    ("command", lambda s: (_cs(s).get("Command") or None, _cs(s).get("Args") or None)),
    ("user", lambda s: _cs(s).get("User") or None),
    ("placement", lambda s: sorted(((s.get("TaskTemplate") or {}).get("Placement") or {}).get("Constraints") or [])),
    ("resources", lambda s: _trim((s.get("TaskTemplate") or {}).get("Resources"))),
    ("ports", lambda s: sorted(json.dumps(p, sort_keys=True) for p in ((s.get("EndpointSpec") or {}).get("Ports") or []))),
    ("labels", lambda s: _cs(s).get("Labels") or {}),
)


def unpinned(image: str) -> str:
    """The image as Git names it, without the digest it was pinned to at deploy."""
    return image.split("@", 1)[0] if image.count("@") == 1 else image


def _cs(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    return (spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}


def _trim(v: Any) -> Any:
    """A value without its empty parts (Swarm writes back empty maps we never sent)."""
    if isinstance(v, Mapping):
        out = {k: _trim(x) for k, x in v.items()}
        return {k: x for k, x in out.items() if x not in (None, {}, [], 0, "")}
    return v


def drift(live: Mapping[str, Any], want: Mapping[str, Any], secret_env: frozenset[str] = frozenset()) -> list[str]:
    """What differs between the live spec and the one Git gives, for a service whose labels say it
    is up to date: a change made by hand. `replicas 5 -> 3`, `image`, ... `want` is a plan's spec: the
    variables taken from secrets (`secret_env`) are not in it, and not compared (no plan reveals them)."""
    out = []
    for name, get in _DRIFT:
        was, now = get(live), get(want)
        if name == "env":
            was = [e for e in was if e.split("=", 1)[0] not in secret_env]
        if was != now:
            out.append(f"{name} {was} -> {now}" if name in ("replicas", "image") else name)
    return out


def update_order(d: Deployment) -> str:
    """start-first as asked, but stop-first where a host port is published: it is bound once per node,
    so a new task could start only on a node the old ones do not use (as the containers runtime does)."""
    return "stop-first" if d.update.order == UpdateOrder.STOP_FIRST or d.one_per_host else "start-first"


def _change_words(d: Deployment) -> str:
    if d.run_once:
        return "runs the job again"
    order = update_order(d)
    forced = f" for hostPort {', '.join(str(p.host_port) for p in d.ports if p.host_port)}" if order != str(d.update.order) else ""
    return f"{order}{forced}, {d.update.parallelism} at a time"


def check(desired: DesiredState) -> list[Problem]:
    """What the swarm runtime cannot honour, located: refused at validation, never dropped."""
    problems: list[Problem] = []
    for svc in desired.services:
        for p in svc.ports:
            if p.host_ip:
                o = p.origin or svc.origin
                problems.append(Problem(o.file if o else "?", o.line if o else None,
                                        f"Service {svc.name}: hostIP: Swarm publishes a port on every address of a node, not on one (runtime: swarm)"))
    for d in desired.deployments:
        def refuse(key: str, why: str) -> None:
            o = d.origin
            line = d.options.lines.get(f"spec.{key.split('.')[0]}") or (o.line if o else None)
            problems.append(Problem(o.file if o else "?", line, f"spec.{key}: {why} (runtime: swarm)"))

        for attr, (key, why) in REFUSED_OPTIONS.items():
            if getattr(d.options, attr) not in ((), None, False):
                refuse(key, why)
        if d.options.network_mode != NetworkMode.BRIDGE:
            refuse("networkMode", "Swarm services run on the Swarm's networks only")
        for m in d.volumes:
            vol = desired.volume(m.name)
            if vol.per_replica and not vol.shared:
                refuse("volumes", f"{m.name}: Swarm cannot hold each replica to the node that has its data (declare the Volume shared, on a driver "
                                  "every node reaches, or use one replica)")
            elif vol.external and vol.driver == "local" and not vol.shared:
                refuse("volumes", f"{m.name}: Swarm cannot tell which node holds an external local volume (a task elsewhere would start on an empty one)")
        if any(p.host_ip for p in d.ports):
            refuse("ports", "Swarm publishes a port on every address of a node, not on one (drop hostIP)")
        for path, opts in d.options.tmpfs:
            for opt in filter(None, opts.split(",")):
                k, _, v = opt.partition("=")
                if k not in ("size", "mode") or (k == "size" and not _SIZE.match(v)):
                    refuse("tmpfs", f"{path}: Swarm takes only size= and mode= for a tmpfs, not {opt!r}")
    return problems


