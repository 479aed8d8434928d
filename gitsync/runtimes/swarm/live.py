"""What a Swarm says, read through a manager: its nodes, our services (one per Deployment, one proxy
per Service) and their tasks, the nodes holding host-local volumes; and how each object stands. Pure
but for `read`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...core import labels as L
from ...adapters.engine import SwarmManager
from ...core.health import DeploymentStatus, EndpointStatus, ServiceStatus
from ...core.live import Health
from ...core.models import Deployment, DesiredState
from .spec import PINNED, ROLE_VOLUME, document, document_hash

ENDED = ("complete", "shutdown", "failed", "rejected", "orphaned", "remove")
FAILED = ("failed", "rejected")
UPDATING = ("updating", "rollback_started")
ROLLED_BACK = ("rollback_completed", "rollback_paused")


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
    iteration: int = 0  # a job's run it belongs to (Swarm's JobIteration)


@dataclass(frozen=True)
class LiveService:
    id: str
    name: str
    version: int
    deployment: str
    spec_hash: str
    spec: Mapping[str, Any] = field(repr=False)  # as the Engine API returns it
    update_state: str = ""
    tasks: tuple[LiveTask, ...] = ()
    iteration: int = 0  # a job's current run (Swarm's JobIteration)

    def job_run(self, want: str) -> tuple[list[LiveTask], list[LiveTask], list[LiveTask]]:
        """A job's current run on the spec `want`: its tasks done (exit 0), running, failed."""
        tasks = [t for t in self.tasks if t.spec_hash == want and t.iteration == self.iteration]
        return ([t for t in tasks if t.state == "complete"], [t for t in tasks if t.state == "running"],
                [t for t in tasks if t.state in FAILED])

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
        str(status.get("Timestamp", "")), int((t.get("JobIteration") or {}).get("Index") or 0),
    )


def _service(s: Mapping[str, Any], tasks: Sequence[LiveTask]) -> LiveService:
    spec = s.get("Spec") or {}
    labels = spec.get("Labels") or {}
    upd = s.get("UpdateStatus") or {}
    return LiveService(
        str(s.get("ID", "")), str(spec.get("Name", "")), int((s.get("Version") or {}).get("Index") or 0),
        str(labels.get(L.SERVICE) if labels.get(L.ROLE) == L.ROLE_PROXY else labels.get(L.DEPLOYMENT, "")),
        str(labels.get(L.SPEC_HASH, "")), spec, str(upd.get("State") or ""), tuple(tasks), int(((s.get("JobStatus") or {}).get("JobIteration") or {}).get("Index") or 0),
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
        if d.run_once:
            out[d.name] = _assess_job(d, live, want, observed)
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


def job_failed(live: LiveService, replicas: int) -> str:
    """Why the job's current run failed ("" when it did not): a task of it failed before all completed."""
    done, _, failed = live.job_run(live.spec_hash)
    return (_task_error(failed, live.spec_hash) or "a task failed") if failed and len(done) < replicas else ""


def _assess_job(d: Deployment, live: LiveService, want: str, observed: SwarmObservation) -> DeploymentStatus:
    """A job is healthy once its run on this spec completed on every replica (exit 0); degraded when a task failed."""
    done, running, failed = live.job_run(want) if live.spec_hash == want else ([], [], [])
    per_node: dict[str, int] = {}
    for t in done + running:
        per_node[observed.node_name(t.node_id)] = per_node.get(observed.node_name(t.node_id), 0) + 1
    if len(done) >= d.replicas:
        health, msg = Health.HEALTHY, f"job done: {d.replicas}/{d.replicas} tasks exited with code 0"
    elif failed:
        health, msg = Health.DEGRADED, f"job failed: {_task_error(failed, want)}"
    elif live.spec_hash != want:
        health, msg = Health.DEGRADED, "the job's service has another spec"
    elif running:
        health, msg = Health.PROGRESSING, f"job running: {len(done)}/{d.replicas} done, {len(running)} running"
    else:
        health, msg = Health.PROGRESSING, f"job waiting: {len(done)}/{d.replicas} done" + (f" ({why})" if (why := _pending(live.tasks, want)) else "")
    return DeploymentStatus(d.name, d.replicas, len(running), len(done), health, msg, dict(sorted(per_node.items())))


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

