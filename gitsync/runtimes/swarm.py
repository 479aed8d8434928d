"""The swarm runtime: a Docker Swarm schedules, gitsync plans, applies and reports.

Each Deployment is one replicated Swarm service named ``<agent>-<deployment>``, labelled as
gitsync's (managed-by, deployment, spec hash, the spec itself, revision), on the agent's
attachable overlay network with the deployment's name as its alias (DNS round robin: no
virtual IP, so no IPVS is needed). `update` becomes the service's update config with failure
action rollback; host ports are published in host mode. Convergence is read from Swarm: the
service's update status and its tasks, each task's container labels saying which spec it runs.
Swarm heals tasks and reschedules them off dead nodes; gitsync only reports it.

What Swarm cannot honour, or this runtime does not do yet, is refused at validation with the
file and line (`check`), never dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import posixpath
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from typing import Any

from .. import labels as L
from ..actions import Action, ActionKind, ActionResult, ApplyResult, PlacementProblem, Plan, Progress, Waiting
from ..config import Config
from ..engine import EngineError, SwarmManager, connect_manager
from ..errors import Problem, Reason
from ..health import DeploymentStatus, EndpointStatus, ServiceStatus
from ..kinds.deployment import describe_difference
from ..live import Health
from ..models import Deployment, DesiredState, NetworkMode, RestartPolicy, Sealed, Service, UpdateOrder
from . import Runtime
from .swarmproxy import config_name, config_text, networks, proxy_spec

log = logging.getLogger("gitsync.swarm")

CLUSTER = "swarm"  # the plan's one place: the cluster, not a host
CONNECT_TIMEOUT = 10.0
POLL = 0.5
MIN_MONITOR = 5.0  # seconds Swarm watches a new task for failure when minReadySeconds says less
ENDED = ("complete", "shutdown", "failed", "rejected", "orphaned", "remove")
FAILED = ("failed", "rejected")
UPDATING = ("updating", "rollback_started")
ROLLED_BACK = ("rollback_completed", "rollback_paused")

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
    "binds": ("hostPaths", "host paths are not on the swarm runtime yet"),
}
NOT_YET: dict[str, str] = {}  # kinds the swarm runtime does not run yet, with why


# -- what a Swarm says ----------------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    id: str
    hostname: str
    role: str  # manager | worker
    availability: str  # active | pause | drain
    state: str  # ready | down | unknown | disconnected
    addr: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LiveTask:
    id: str
    node_id: str
    slot: int
    desired: str  # running | shutdown | ...
    state: str  # new .. running, complete, failed, rejected, ...
    error: str
    spec_hash: str  # the spec it runs (its container's label)
    timestamp: str


@dataclass(frozen=True)
class LiveService:
    id: str
    name: str
    version: int
    deployment: str
    spec_hash: str
    spec: Mapping[str, Any] = field(repr=False)  # as the Engine API returns it
    update_state: str = ""
    update_message: str = ""
    update_started: str = ""
    tasks: tuple[LiveTask, ...] = ()

    @property
    def document(self) -> dict[str, Any] | None:
        raw = (self.spec.get("Labels") or {}).get(L.SPEC)
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None


@dataclass(frozen=True)
class SwarmObservation:
    manager: str | None  # the manager that answered
    error: str | None = None  # why none did
    nodes: tuple[Node, ...] = ()
    services: tuple[LiveService, ...] = ()  # ours: one per Deployment
    foreign: frozenset[str] = frozenset()  # names of services that are not ours
    proxies: tuple[LiveService, ...] = ()  # ours: one per Service (its `deployment` is the Service's name)
    volume_nodes: Mapping[str, str] = field(default_factory=dict)  # host-local volume -> the node holding it (recorded)

    @property
    def reachable(self) -> bool:
        return self.manager is not None

    def service(self, deployment: str) -> LiveService | None:
        return next((s for s in self.services if s.deployment == deployment), None)

    def proxy(self, service: str) -> LiveService | None:
        return next((s for s in self.proxies if s.deployment == service), None)

    def node_name(self, node_id: str) -> str:
        return node_names(self).get(node_id, node_id[:12])


def _node(n: Mapping[str, Any]) -> Node:
    spec, desc, status = n.get("Spec") or {}, n.get("Description") or {}, n.get("Status") or {}
    return Node(
        str(n.get("ID", "")), str(desc.get("Hostname", "")), str(spec.get("Role", "")), str(spec.get("Availability", "")),
        str(status.get("State", "")), str(status.get("Addr", "")), tuple(sorted((spec.get("Labels") or {}).items())),
    )


def _task(t: Mapping[str, Any]) -> LiveTask:
    status = t.get("Status") or {}
    cs = ((t.get("Spec") or {}).get("ContainerSpec") or {})
    return LiveTask(
        str(t.get("ID", "")), str(t.get("NodeID", "")), int(t.get("Slot") or 0), str(t.get("DesiredState", "")),
        str(status.get("State", "")), str(status.get("Err") or ""), str((cs.get("Labels") or {}).get(L.SPEC_HASH, "")),
        str(status.get("Timestamp", "")),
    )


def _service(s: Mapping[str, Any], tasks: Sequence[LiveTask]) -> LiveService:
    spec = s.get("Spec") or {}
    labels = spec.get("Labels") or {}
    upd = s.get("UpdateStatus") or {}
    return LiveService(
        str(s.get("ID", "")), str(spec.get("Name", "")), int((s.get("Version") or {}).get("Index") or 0),
        str(labels.get(L.SERVICE) if labels.get(L.ROLE) == L.ROLE_PROXY else labels.get(L.DEPLOYMENT, "")),
        str(labels.get(L.SPEC_HASH, "")), spec, str(upd.get("State") or ""), str(upd.get("Message") or ""), str(upd.get("StartedAt") or ""),
        tuple(tasks),
    )


def read(manager: SwarmManager, agent: str) -> SwarmObservation:
    mine = f"{L.MANAGED_BY}={agent}"
    services = manager.services(mine)
    ids = {s["ID"] for s in services}
    tasks: dict[str, list[LiveTask]] = {}
    for t in manager.tasks(mine):
        if t.get("ServiceID") in ids:
            tasks.setdefault(t["ServiceID"], []).append(_task(t))
    every = manager.service_names() - {s.get("Spec", {}).get("Name", "") for s in services}
    live = sorted((_service(s, tasks.get(s["ID"], [])) for s in services), key=lambda x: x.name)
    proxy = {s.id for s in live if (s.spec.get("Labels") or {}).get(L.ROLE) == L.ROLE_PROXY}
    nodes = tuple(sorted((_node(n) for n in manager.nodes()), key=lambda n: n.hostname))
    records = manager.objects("config", f"{L.ROLE}={ROLE_VOLUME}")
    volume_nodes = {labels[L.VOLUME]: labels[PINNED] for _, labels in records.values()
                    if labels.get(L.MANAGED_BY) == agent and L.VOLUME in labels and PINNED in labels}
    return SwarmObservation(manager.host, None, nodes, tuple(s for s in live if s.id not in proxy), frozenset(every),
                            tuple(s for s in live if s.id in proxy), volume_nodes)


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


PINNED = "io.gitsync.pinned-node"  # on a service whose host-local volume holds it to one node: that node's id
ROLE_VOLUME = "volume"  # a Swarm config recording which node holds a host-local volume (never pruned: the data stays)


def volume_name(agent: str, name: str) -> str:
    return f"gitsync-{agent}-{name}"


def _volume_mount(agent: str, name: str, target: str, read_only: bool, desired: DesiredState | None) -> dict[str, Any]:
    v = desired.volume(name) if desired is not None else None
    source = name if v is not None and v.external else volume_name(agent, name)
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
                 refs: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The whole service spec, as the Engine API takes it (Swarm keeps no part of an old one). `pin`:
    the node holding its host-local volume; `refs`: the ids of its Swarm configs and secrets by name
    (none while planning: ids say nothing the names do not)."""
    doc = document(d, desired)
    want = document_hash(doc)
    o = d.options
    cs: dict[str, Any] = {
        "Image": d.image,
        "Labels": {**dict(d.labels), L.MANAGED_BY: agent, L.DEPLOYMENT: d.name, L.SPEC_HASH: want},
        "Env": [f"{k}={v}" for k, v in d.env] + [f"{k}={s.reveal().decode('utf-8', 'surrogateescape')}" for k, _, s in o.secret_env],
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
    return {
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


# What a person may change by hand with `docker service scale / update`: compared with Git on
# every plan (drift), by name as the plan says it.
_DRIFT: tuple[tuple[str, Callable[[Mapping[str, Any]], Any]], ...] = (
    ("replicas", lambda s: ((s.get("Mode") or {}).get("Replicated") or {}).get("Replicas")),
    ("image", lambda s: _cs(s).get("Image")),
    ("env", lambda s: sorted(_cs(s).get("Env") or [])),
    ("command", lambda s: (_cs(s).get("Command") or None, _cs(s).get("Args") or None)),
    ("user", lambda s: _cs(s).get("User") or None),
    ("placement", lambda s: sorted(((s.get("TaskTemplate") or {}).get("Placement") or {}).get("Constraints") or [])),
    ("resources", lambda s: _trim((s.get("TaskTemplate") or {}).get("Resources"))),
    ("ports", lambda s: sorted(json.dumps(p, sort_keys=True) for p in ((s.get("EndpointSpec") or {}).get("Ports") or []))),
    ("labels", lambda s: _cs(s).get("Labels") or {}),
)


def _cs(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    return (spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}


def _trim(v: Any) -> Any:
    """A value without its empty parts (Swarm writes back empty maps we never sent)."""
    if isinstance(v, Mapping):
        out = {k: _trim(x) for k, x in v.items()}
        return {k: x for k, x in out.items() if x not in (None, {}, [], 0, "")}
    return v


def drift(live: Mapping[str, Any], want: Mapping[str, Any]) -> list[str]:
    """What differs between the live spec and the one Git gives, for a service whose labels say it
    is up to date: a change made by hand. `replicas 5 -> 3`, `image`, ..."""
    out = []
    for name, get in _DRIFT:
        was, now = get(live), get(want)
        if was != now:
            out.append(f"{name} {was} -> {now}" if name in ("replicas", "image") else name)
    return out


def update_order(d: Deployment) -> str:
    """start-first as asked, but stop-first where a host port is published: it is bound once per node,
    so a new task could start only on a node the old ones do not use (as the containers runtime does)."""
    return "stop-first" if d.update.order == UpdateOrder.STOP_FIRST or d.one_per_host else "start-first"


def _change_words(d: Deployment) -> str:
    order = update_order(d)
    forced = f" for hostPort {', '.join(str(p.host_port) for p in d.ports if p.host_port)}" if order != str(d.update.order) else ""
    return f"{order}{forced}, {d.update.parallelism} at a time"


def check(desired: DesiredState) -> list[Problem]:
    """What the swarm runtime cannot honour, located: refused at validation, never dropped."""
    problems: list[Problem] = []
    for kind, why in NOT_YET.items():
        for obj in desired.of(kind):
            o = obj.origin
            problems.append(Problem(o.file if o else "?", o.line if o else None, f"{kind} {obj.name}: {why} (runtime: swarm); it runs on runtime: containers"))
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
            if vol.per_replica:
                refuse("volumes", f"{m.name}: a volume per replica cannot be held to one node per replica on Swarm (use a shared driver, or one replica)")
            elif vol.external and vol.driver == "local" and not vol.shared:
                refuse("volumes", f"{m.name}: Swarm cannot tell which node holds an external local volume (a task elsewhere would start on an empty one)")
        if d.run_once:
            refuse("runOnce", "jobs are not on the swarm runtime yet")
        if any(p.host_ip for p in d.ports):
            refuse("ports", "Swarm publishes a port on every address of a node, not on one (drop hostIP)")
        for path, opts in d.options.tmpfs:
            for opt in filter(None, opts.split(",")):
                k, _, v = opt.partition("=")
                if k not in ("size", "mode") or (k == "size" and not _SIZE.match(v)):
                    refuse("tmpfs", f"{path}: Swarm takes only size= and mode= for a tmpfs, not {opt!r}")
    return problems


# -- the runtime ------------------------------------------------------------------------------
class SwarmRuntime(Runtime):
    name = "swarm"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.agent = config.name
        self._manager: SwarmManager | None = None
        self._lock = threading.Lock()

    # connection: the first manager that answers, kept until it fails
    def manager(self) -> SwarmManager:
        with self._lock:
            if self._manager is not None:
                return self._manager
            why = []
            for h in self.config.hosts:
                try:
                    self._manager = connect_manager(h, CONNECT_TIMEOUT)
                    return self._manager
                except EngineError as exc:
                    why.append(f"{h.name}: {exc.message}")
            raise EngineError(CLUSTER, "no manager answers (" + "; ".join(why) + ")")

    def _forget(self) -> None:
        with self._lock:
            if self._manager is not None:
                self._manager.close()
            self._manager = None

    def close(self) -> None:
        self._forget()

    def check(self, desired: DesiredState) -> list[Problem]:
        return check(desired)

    # observation
    def observe(self) -> SwarmObservation:
        try:
            return read(self.manager(), self.agent)
        except EngineError as exc:
            self._forget()
            return SwarmObservation(None, exc.message)

    def unreachable(self, observed: SwarmObservation) -> dict[str, str]:
        return {} if observed.reachable else {CLUSTER: observed.error or "unreachable"}

    # plan
    def plan(self, desired: DesiredState, observed: SwarmObservation) -> Plan:
        if not observed.reachable:
            return Plan((), unreachable=(CLUSTER,), hosts=(CLUSTER,), cluster=True)
        actions: list[Action] = []
        noops: list[str] = []
        problems: list[PlacementProblem] = []

        def taken(name: str, what: str) -> None:
            problems.append(PlacementProblem(what, f"a Swarm service named {name} exists that gitsync did not make: it is never touched (rename or remove it)"))

        pins, why_not = self._pins(desired, observed)
        for name, why in why_not.items():
            problems.append(PlacementProblem(name, why))
        for d in desired.deployments:
            live = observed.service(d.name)
            want = service_spec(self.agent, d, "", desired, pins.get(d.name, ""))
            name = want["Name"]
            if d.name in why_not:
                continue  # said as a problem: nothing is made where its data is not
            if live is None and name in observed.foreign:
                taken(name, d.name)
            elif live is None:
                actions.append(Action(ActionKind.CREATE, CLUSTER, d.name, None, f"{d.replicas} replica{'s' if d.replicas != 1 else ''} of {d.image}",
                                      container_name=name))
            elif live.spec_hash != want["Labels"][L.SPEC_HASH]:
                old = live.document
                what = describe_difference(old, document(d, desired)) if old is not None else "changed outside Git"
                actions.append(Action(ActionKind.UPDATE, CLUSTER, d.name, None, f"{what} ({_change_words(d)})", live.id, name))
            elif hand := drift(live.spec, want):
                actions.append(Action(ActionKind.UPDATE, CLUSTER, d.name, None, f"changed outside Git: {', '.join(hand)} ({_change_words(d)})", live.id, name))
            else:
                noops.append(f"{d.name}: {d.replicas} replica{'s' if d.replicas != 1 else ''} of {d.image}")
        for svc in desired.services:
            live = observed.proxy(svc.name)
            want = self._proxy_spec(svc, desired, ("", ""), "")
            name = want["Name"]
            ports = ", ".join(f"{p.port} -> {p.target_port}" + (f", hostPort {p.host_port}" if p.host_port else "") for p in svc.ports)
            if live is None and name in observed.foreign:
                taken(name, svc.name)
            elif live is None:
                actions.append(Action(ActionKind.CREATE, CLUSTER, svc.name, None, f"Service proxy ({ports})", container_name=name, object_kind="Service"))
            elif live.spec_hash != want["Labels"][L.SPEC_HASH]:
                actions.append(Action(ActionKind.UPDATE, CLUSTER, svc.name, None, f"Service proxy: {_proxy_change(live, want)}", live.id, name,
                                      object_kind="Service"))
            else:
                noops.append(f"Service {svc.name}: {ports}")
        wanted = {d.name for d in desired.deployments}
        for live in observed.services:
            if live.deployment not in wanted:
                actions.append(Action(ActionKind.REMOVE, CLUSTER, live.deployment, None, "not in Git any more", live.id, live.name, phase=1))
        served = {svc.name for svc in desired.services}
        for live in observed.proxies:
            if live.deployment not in served:
                actions.append(Action(ActionKind.REMOVE, CLUSTER, live.deployment, None, "Service not in Git any more", live.id, live.name, phase=1,
                                      object_kind="Service"))
        return Plan(tuple(actions), tuple(noops), tuple(problems), hosts=(CLUSTER,), cluster=True)

    def _proxy_spec(self, svc: Service, desired: DesiredState, config: tuple[str, str], revision: str) -> dict[str, Any]:
        text = config_text(self.agent, svc, desired)
        return proxy_spec(self.agent, svc, desired, self.config.services.proxy_image, (config[0], config[1] or config_name(self.agent, svc, text)), revision)

    # apply
    def apply(self, plan: Plan, desired: DesiredState, revision: str, progress: Progress | None, stop: threading.Event | None,
              observe: Callable[[], Any], deadline: float) -> ApplyResult:
        """Deployments by dependency level (each level converged before the next), then the Services'
        proxies, then what leaves Git (proxies before the deployments they served), then unused configs."""
        out = ApplyResult()

        def record(r: ActionResult) -> None:
            out.results.append(r)
            if progress is not None:
                progress(r)

        if not plan.actions:
            return out
        try:
            manager = self.manager()
            self._networks(manager, desired)
        except EngineError as exc:
            self._forget()
            for a in plan.actions:
                record(ActionResult(a, False, exc.message))
            return out
        changes = {(a.object_kind, a.deployment): a for a in plan.actions if a.kind != ActionKind.REMOVE}
        failed: set[str] = set()
        levels = [[changes[("Deployment", n)] for n in level if ("Deployment", n) in changes] for level in desired.levels()]
        levels.append([a for (kind, _), a in sorted(changes.items()) if kind == "Service"])
        for mine in levels:
            submitted: list[tuple[Action, _Target, str, float]] = []
            for a in mine:
                d = desired.deployment(a.deployment) if a.object_kind == "Deployment" else None
                broken = sorted(set(d.depends_on) & failed) if d is not None else []
                if stop is not None and stop.is_set():
                    record(ActionResult(a, False, "skipped: the agent is stopping", skipped=True))
                    continue
                if broken:
                    record(ActionResult(a, False, f"skipped: its dependency {broken[0]} failed", skipped=True))
                    failed.add(a.deployment)
                    continue
                t0 = time.monotonic()
                try:
                    target = self._target(manager, a, desired, revision)
                    submitted.append((a, target, self._submit(manager, a, target.spec), t0))
                except EngineError as exc:
                    failed.add(a.deployment)
                    record(ActionResult(a, False, exc.message, time.monotonic() - t0))
            for a, target, before, t0 in submitted:
                ok, message, rolled = self._await(manager, a, target, before, deadline, progress, stop)
                if not ok:
                    failed.add(a.deployment)
                if rolled:
                    out.rollbacks.append(f"{a.deployment}: Swarm rolled the service back to its previous spec")
                record(ActionResult(a, ok, message, time.monotonic() - t0, reason=None if ok else Reason.APPLY_FAILED))
        for a in sorted((a for a in plan.actions if a.kind == ActionKind.REMOVE), key=lambda a: a.object_kind != "Service"):
            t0 = time.monotonic()
            try:
                manager.remove_service(a.container_id or a.container_name or "")
                record(ActionResult(a, True, "removed", time.monotonic() - t0))
            except EngineError as exc:
                record(ActionResult(a, False, exc.message, time.monotonic() - t0))
        self._prune_configs(manager)
        return out

    def _target(self, manager: SwarmManager, a: Action, desired: DesiredState, revision: str) -> _Target:
        """What one action submits and waits for: the spec, the hash its tasks carry, how many must run."""
        if a.object_kind == "Service":
            svc = next(s for s in desired.services if s.name == a.deployment)
            text = config_text(self.agent, svc, desired)
            cname = config_name(self.agent, svc, text)
            have = {k: v[0] for k, v in manager.objects("config", f"{L.MANAGED_BY}={self.agent}").items()}
            cid = manager.ensure_object("config", cname, text.encode(), {L.MANAGED_BY: self.agent, L.ROLE: L.ROLE_PROXY, L.SERVICE: svc.name}, have)
            spec = self._proxy_spec(svc, desired, (cid, cname), revision)
            return _Target(spec, spec["Labels"][L.SPEC_HASH], lambda: _eligible(manager.nodes(), svc.host_selector if spec["EndpointSpec"].get("Ports") else ()))
        d = desired.deployment(a.deployment)
        assert d is not None
        pins, why_not = self._pins(desired, read(manager, self.agent))
        if d.name in why_not:
            raise EngineError(CLUSTER, why_not[d.name])
        refs = self._file_objects(manager, d)
        volume = host_local(desired, d)
        if volume is not None and pins.get(d.name):  # recorded in the cluster: the data's node outlives the service
            name = f"{self.agent}-volume-{volume}"
            labels = {L.MANAGED_BY: self.agent, L.ROLE: ROLE_VOLUME, L.VOLUME: volume, PINNED: pins[d.name]}
            manager.ensure_object("config", name, pins[d.name].encode(), labels, {k: v[0] for k, v in manager.objects("config", f"{L.ROLE}={ROLE_VOLUME}").items()})
        spec = service_spec(self.agent, d, revision, desired, pins.get(d.name, ""), refs)
        return _Target(spec, spec["Labels"][L.SPEC_HASH], lambda: d.replicas)

    def _file_objects(self, manager: SwarmManager, d: Deployment) -> dict[str, str]:
        """The Swarm configs and secrets a deployment's files need, made where missing: name -> id."""
        refs: dict[str, str] = {}
        for kind in ("config", "secret"):
            files = [f for f in file_objects(self.agent, d) if f.kind == kind]
            if not files:
                continue
            have = {k: v[0] for k, v in manager.objects(kind, f"{L.MANAGED_BY}={self.agent}").items()}
            for f in files:
                data = f.data.reveal() if isinstance(f.data, Sealed) else f.data
                role = "secret" if kind == "secret" else L.ROLE_FILES
                refs[f.name] = have[f.name] = manager.ensure_object(kind, f.name, data, {L.MANAGED_BY: self.agent, L.ROLE: role}, have)
        return refs

    def _pins(self, desired: DesiredState, observed: SwarmObservation) -> tuple[dict[str, str], dict[str, str]]:
        """The node each deployment with host-local data is held to: where its volume was made (recorded
        in the cluster, or read off its service), else the eligible node holding fewest such volumes.
        And the deployments that cannot be placed, with why."""
        pins: dict[str, str] = {}
        why_not: dict[str, str] = {}
        nodes = {n.id: n for n in observed.nodes}
        load: dict[str, int] = {n: 0 for n in nodes}
        for node in observed.volume_nodes.values():
            load[node] = load.get(node, 0) + 1
        for d in desired.deployments:
            volume = host_local(desired, d)
            if volume is None:
                continue
            known = observed.volume_nodes.get(volume)
            if known is None:
                live = observed.service(d.name)
                known = (live.spec.get("Labels") or {}).get(PINNED) if live is not None else None
            if known:
                pins[d.name] = known
                if known not in nodes:
                    why_not[d.name] = f"volume {volume} is on node {known[:12]}, which left the swarm: its data stays there (move it, or remove the volume's record {self.agent}-volume-{volume})"
                continue
            eligible = [n for n in observed.nodes if n.state == "ready" and n.availability == "active"
                        and all(dict(n.labels).get(k) == v for k, v in d.placement.host_selector)]
            if not eligible:
                why_not[d.name] = f"no ready node matches its hostSelector to hold volume {volume}"
                continue
            choice = min(eligible, key=lambda n: (load.get(n.id, 0), n.hostname, n.id))
            pins[d.name] = choice.id
            load[choice.id] = load.get(choice.id, 0) + 1
            observed = dc_replace(observed, volume_nodes={**observed.volume_nodes, volume: choice.id})  # a volume shared by several deployments: one node
        return pins, why_not

    def _prune_configs(self, manager: SwarmManager) -> None:
        """Our configs and secrets (proxies' configurations, files, secret values) that no service of ours
        mounts any more. Volume records stay: the data they point to does."""
        try:
            specs = [((s.get("Spec") or {}).get("TaskTemplate") or {}).get("ContainerSpec", {}) for s in manager.services(f"{L.MANAGED_BY}={self.agent}")]
            for kind, key in (("config", "Configs"), ("secret", "Secrets")):
                used = {c.get(f"{kind.capitalize()}Name") for cs in specs for c in cs.get(key) or []}
                for name, (ident, labels) in manager.objects(kind, f"{L.MANAGED_BY}={self.agent}").items():
                    if name not in used and labels.get(L.ROLE) != ROLE_VOLUME:
                        manager.remove_object(kind, ident)
        except EngineError as exc:
            log.info("pruning Swarm configs and secrets: %s (the next apply tries again)", exc.message)

    def _networks(self, manager: SwarmManager, desired: DesiredState) -> None:
        labels = {L.MANAGED_BY: self.agent}
        nets = {n for d in desired.deployments for n in L.networks_of(self.agent, d)}
        nets |= {n for svc in desired.services for n in networks(self.agent, svc, desired)}
        for n in sorted(nets):
            manager.ensure_overlay(n, labels)
        for d in desired.deployments:
            for n in d.options.external_networks:
                if not manager.network_exists(n):
                    raise EngineError(CLUSTER, f"{d.name}: external network {n} does not exist on the swarm (gitsync never makes it)")

    def _submit(self, manager: SwarmManager, a: Action, spec: Mapping[str, Any]) -> str:
        """Create or update the service; the update status it had before (so that a stale one is not read as this change's)."""
        if a.kind == ActionKind.CREATE:
            manager.create_service(spec)
            return ""
        live = manager.inspect_service(a.container_id or spec["Name"])
        if live is None:
            manager.create_service(spec)
            return ""
        before = str((live.get("UpdateStatus") or {}).get("StartedAt") or "")
        manager.update_service(live["ID"], int((live.get("Version") or {}).get("Index") or 0), spec)
        return before

    def _await(self, manager: SwarmManager, a: Action, target: _Target, before: str, deadline: float,
               progress: Progress | None, stop: threading.Event | None) -> tuple[bool, str, bool]:
        """Until the service runs its new spec on as many tasks as it should (ok), Swarm rolled it back, or a
        task of the new spec failed to start (a create has nothing to roll back to); (ok, message, rolled back)."""
        want, name = target.hash, target.spec["Name"]
        said = False
        while True:
            s = manager.inspect_service(name)
            if s is None:
                return False, "the service was removed while it was being changed", False
            tasks = [_task(t) for t in manager.service_tasks(s["ID"])]
            upd = s.get("UpdateStatus") or {}
            fresh = bool(upd) and str(upd.get("StartedAt") or "") != before
            state = str(upd.get("State") or "") if fresh else ""
            count = target.count()
            if state in ROLLED_BACK:
                back = str(((s.get("Spec") or {}).get("Labels") or {}).get(L.SPEC_HASH) or "")
                serving = sum(1 for t in tasks if t.spec_hash == back and t.state == "running" and t.desired == "running")
                if serving >= count or time.monotonic() >= deadline:  # said once the previous spec serves again
                    why = _task_error(tasks, want) or str(upd.get("Message") or "update failed")
                    return False, f"update failed: {why}; Swarm rolled back to the previous spec", True
            running = [t for t in tasks if t.spec_hash == want and t.state == "running" and t.desired == "running"]
            old = [t for t in tasks if t.spec_hash != want and t.desired == "running" and t.state not in ENDED]
            if state not in UPDATING and len(running) >= count and not old:
                return True, f"{len(running)}/{count} tasks running", False
            if a.kind == ActionKind.CREATE and (err := _task_error(tasks, want)):
                return False, err, False
            now = time.monotonic()
            if now >= deadline or (stop is not None and stop.is_set()):
                why = _task_error(tasks, want) or _pending(tasks, want)
                cut = "the agent stopped" if now < deadline else "did not converge in time"
                return False, f"{cut}: {len(running)}/{count} tasks on the new spec running" + (f" ({why})" if why else ""), False
            if progress is not None and not said:
                progress(Waiting(CLUSTER, name, "tasks running on the new spec" + (f" (Swarm: {state})" if state else ""), deadline - now))
                said = True
            if stop is not None:
                stop.wait(POLL)
            else:
                time.sleep(POLL)

    def services(self, desired: DesiredState, observed: SwarmObservation) -> Mapping[str, ServiceStatus]:
        return assess_services(desired, observed, self.agent)

    def hosts_view(self, observed: SwarmObservation) -> dict[str, dict[str, Any]]:
        """The Swarm's nodes as hosts: role and availability as labels, our tasks as containers."""
        if not observed.reachable:
            return {CLUSTER: {"url": "", "labels": {}, "reachable": False, "error": observed.error, "containers": []}}
        names = node_names(observed)
        out: dict[str, dict[str, Any]] = {}
        for n in observed.nodes:
            tasks = [
                {"name": f"{s.name}.{t.slot}", "deployment": s.deployment, "replica": t.slot - 1, "state": t.state,
                 "health": None, "revision": (s.spec.get("Labels") or {}).get(L.REVISION)}
                for s in observed.services for t in s.tasks if t.node_id == n.id and t.desired == "running"
            ] + [
                {"name": f"{s.name}.{names[n.id]}", "deployment": None, "replica": None, "state": t.state, "health": None,
                 "revision": (s.spec.get("Labels") or {}).get(L.REVISION), "role": L.ROLE_PROXY}
                for s in observed.proxies for t in s.tasks if t.node_id == n.id and t.desired == "running"
            ]
            out[names[n.id]] = {"url": n.addr, "labels": {"role": n.role, "availability": n.availability, **dict(n.labels)},
                                "reachable": n.state == "ready", "error": None if n.state == "ready" else f"node {n.state}", "containers": tasks}
        return out

    # assessment
    def converge(self, desired: DesiredState, deadline: float, skip: set[str] | frozenset[str], first: SwarmObservation | None,
                 stop: threading.Event | None, observe: Callable[[], Any]) -> tuple[dict[str, DeploymentStatus], SwarmObservation]:
        while True:
            observed, first = (first, None) if first is not None else (observe(), None)
            status = assess(desired, observed)
            settled = all(s.health == Health.HEALTHY for n, s in status.items() if n not in skip)
            if settled or not observed.reachable or time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                return status, observed
            if stop is not None:
                stop.wait(POLL)
            else:
                time.sleep(POLL)


@dataclass(frozen=True)
class _Target:
    spec: Mapping[str, Any]
    hash: str  # what its tasks' containers carry when they run this spec
    count: Callable[[], int]  # how many tasks must run it (a global proxy: the nodes it may run on)


def _eligible(nodes: Sequence[Mapping[str, Any]], selector: Sequence[tuple[str, str]]) -> int:
    """The nodes a global service runs a task on: ready, active, with the selector's labels."""
    n = [_node(x) for x in nodes]
    return sum(1 for x in n if x.state == "ready" and x.availability == "active" and all(dict(x.labels).get(k) == v for k, v in selector))


def _proxy_change(live: LiveService, want: Mapping[str, Any]) -> str:
    try:
        old = json.loads((live.spec.get("Labels") or {}).get(L.SPEC) or "{}")
        new = json.loads(want["Labels"][L.SPEC])
    except ValueError:
        return "changed outside Git"
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    words = {"config": "its configuration (ports or the deployments it selects)", "image": "services.proxyImage", "networks": "networks",
             "published": "hostPorts", "hostSelector": "hostSelector"}
    return "changed: " + ", ".join(words.get(k, k) for k in changed) if changed else "changed outside Git"


def assess_services(desired: DesiredState, observed: SwarmObservation, agent: str) -> dict[str, ServiceStatus]:
    """Each Service: its proxies running (one per eligible node) and the tasks behind it."""
    out: dict[str, ServiceStatus] = {}
    for svc in desired.services:
        ports = tuple(f"{p.port} -> {p.target_port}" + (f", hostPort {p.host_port}" if p.host_port else "") for p in svc.ports)
        live = observed.proxy(svc.name)
        backends = sum(
            1 for d in desired.selected(svc).values() if (ls := observed.service(d.name)) is not None
            for t in ls.tasks if t.state == "running" and t.desired == "running"
        )
        if live is None:
            out[svc.name] = ServiceStatus(svc.name, Health.MISSING, "no proxy on the swarm", ports=ports)
            continue
        proxies = [t for t in live.tasks if t.state == "running" and t.desired == "running" and t.spec_hash == live.spec_hash]
        nodes = [(n.id, dict(n.labels)) for n in observed.nodes if n.state == "ready" and n.availability == "active"]
        want = sum(1 for _, labels in nodes if not any(p.host_port for p in svc.ports) or all(labels.get(k) == v for k, v in svc.host_selector))
        endpoints = tuple(EndpointStatus(f"{live.name}.{observed.node_name(t.node_id)}", observed.node_name(t.node_id), "ready") for t in proxies)
        if len(proxies) >= want and backends:
            health, msg = Health.HEALTHY, f"{len(proxies)} prox{'y' if len(proxies) == 1 else 'ies'}, {backends} task{'s' if backends != 1 else ''} behind"
        elif not backends:
            health, msg = Health.DEGRADED, "no task of the deployments it selects runs"
        else:
            health, msg = Health.DEGRADED, f"{len(proxies)}/{want} proxies running"
        out[svc.name] = ServiceStatus(svc.name, health, msg, endpoints, ports)
    return out


def _task_error(tasks: Sequence[LiveTask], want: str) -> str:
    """The newest error of a task of the new spec: "No such image: ...", "task: non-zero exit (1)"."""
    bad = sorted((t for t in tasks if t.spec_hash == want and t.state in FAILED and t.error), key=lambda t: t.timestamp)
    return f"task {bad[-1].state}: {bad[-1].error}" if bad else ""


def _pending(tasks: Sequence[LiveTask], want: str) -> str:
    waiting = [t for t in tasks if t.spec_hash == want and t.state == "pending" and t.error]
    return f"pending: {waiting[0].error}" if waiting else ""


def assess(desired: DesiredState, observed: SwarmObservation) -> dict[str, DeploymentStatus]:
    """How each Deployment's service stands: tasks running on its spec, per node. Pure."""
    out: dict[str, DeploymentStatus] = {}
    for d in desired.deployments:
        want = document_hash(document(d, desired))
        live = observed.service(d.name)
        if live is None:
            out[d.name] = DeploymentStatus(d.name, d.replicas, 0, 0, Health.MISSING, "no service on the swarm")
            continue
        running = [t for t in live.tasks if t.spec_hash == want and t.state == "running" and t.desired == "running"]
        per_node: dict[str, int] = {}
        for t in running:
            host = observed.node_name(t.node_id)
            per_node[host] = per_node.get(host, 0) + 1
        n = len(running)
        why = _task_error(live.tasks, want) or _pending(live.tasks, want)
        if live.spec_hash != want:
            health, msg = Health.DEGRADED, f"the service runs another spec ({live.update_state or 'not updated'})"
        elif n >= d.replicas:
            health, msg = Health.HEALTHY, f"{d.replicas}/{d.replicas} tasks running"
        elif n == 0 and d.replicas > 0:
            health, msg = Health.MISSING, f"0/{d.replicas} tasks running"
        else:
            health, msg = (Health.PROGRESSING if live.update_state in UPDATING else Health.DEGRADED), f"{n}/{d.replicas} tasks running"
        if why and health != Health.HEALTHY:
            msg += f" ({why})"
        out[d.name] = DeploymentStatus(d.name, d.replicas, min(n, d.replicas), min(n, d.replicas), health, msg, dict(sorted(per_node.items())))
    return out


def node_names(observed: SwarmObservation) -> dict[str, str]:
    """Each node's name as gitsync shows it: its hostname, with the start of its id where two share one."""
    count: dict[str, int] = {}
    for n in observed.nodes:
        count[n.hostname] = count.get(n.hostname, 0) + 1
    return {n.id: n.hostname if count[n.hostname] == 1 else f"{n.hostname}-{n.id[:6]}" for n in observed.nodes}


def node_rows(observed: SwarmObservation) -> list[dict[str, Any]]:
    """`gitsync hosts` on a swarm: each node, its role, availability, state, labels, and our tasks there."""
    rows = []
    for n in observed.nodes:
        tasks: dict[str, int] = {}
        for s in observed.services:
            for t in s.tasks:
                if t.node_id == n.id and t.state == "running" and t.desired == "running":
                    tasks[s.deployment] = tasks.get(s.deployment, 0) + 1
        rows.append({"name": node_names(observed)[n.id], "id": n.id, "role": n.role, "availability": n.availability, "state": n.state,
                     "addr": n.addr, "labels": dict(n.labels), "deployments": tasks})
    return rows
