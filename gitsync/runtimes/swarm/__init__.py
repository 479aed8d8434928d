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

Here: the runtime (plan, apply, converge). `spec`: a Deployment as a service spec, drift, what is
refused; `live`: what the Swarm says and how each object stands; `proxy`: a Service's HAProxy;
`watch`: the manager's events between syncs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import replace as dc_replace
from typing import Any

from ...core import labels as L
from ...core.actions import Action, ActionKind, ActionResult, ApplyResult, PlacementProblem, Plan, Progress, Waiting
from ...kinds.run import failure
from ...core.config import Config
from ...adapters.engine import EngineError, SwarmManager, connect_manager
from ...core.errors import Problem, Reason
from ...core.health import DeploymentStatus, ServiceStatus
from ...kinds.deployment import describe_difference
from ...core.live import Health
from ...core.models import Deployment, DesiredState, Sealed, Service
from .. import Runtime
from .live import (ENDED, PINNED, ROLE_VOLUME, ROLLED_BACK, UPDATING, LiveService, LiveTask, Node, SwarmObservation, _node, _pending, _task,
                   _service, _task_error, assess, assess_services, job_failed, node_names, node_rows, read)
from .proxy import config_name, config_text, networks, proxy_spec
from .spec import _change_words, check, document, document_hash, drift, file_objects, host_local, service_spec

__all__ = ["SwarmRuntime", "SwarmObservation", "LiveService", "LiveTask", "Node", "assess", "check", "document", "document_hash",
           "node_rows", "service_spec"]

log = logging.getLogger("gitsync.swarm")

CLUSTER = "swarm"  # the plan's one place: the cluster, not a host
CONNECT_TIMEOUT = 10.0
POLL = 0.5


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
            want = service_spec(self.agent, d, "", desired, pins.get(d.name, ""), reveal=False)
            name = want["Name"]
            if d.name in why_not:
                continue  # said as a problem: nothing is made where its data is not
            if live is None and name in observed.foreign:
                taken(name, d.name)
            elif live is None:
                job = "job: " if d.run_once else ""
                actions.append(Action(ActionKind.CREATE, CLUSTER, d.name, None, f"{job}{d.replicas} replica{'s' if d.replicas != 1 else ''} of {d.image}",
                                      container_name=name))
            elif live.spec_hash != want["Labels"][L.SPEC_HASH]:
                old = live.document
                what = describe_difference(old, document(d, desired)) if old is not None else "changed outside Git"
                actions.append(Action(ActionKind.UPDATE, CLUSTER, d.name, None, f"{what} ({_change_words(d)})", live.id, name))
            elif hand := drift(live.spec, want, frozenset(k for k, _, _ in d.options.secret_env)):
                actions.append(Action(ActionKind.UPDATE, CLUSTER, d.name, None, f"changed outside Git: {', '.join(hand)} ({_change_words(d)})", live.id, name))
            elif d.run_once and (why := job_failed(live, d.replicas)):
                actions.append(Action(ActionKind.UPDATE, CLUSTER, d.name, None, f"job failed ({why}): run it again", live.id, name))
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
                actions.append(Action(ActionKind.CREATE, CLUSTER, svc.name, None, f"Service proxy ({ports})", container_name=name, object_kind=Service.KIND))
            elif live.spec_hash != want["Labels"][L.SPEC_HASH]:
                actions.append(Action(ActionKind.UPDATE, CLUSTER, svc.name, None, f"Service proxy: {_proxy_change(live, want)}", live.id, name,
                                      object_kind=Service.KIND))
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
                                      object_kind=Service.KIND))
        return Plan(tuple(actions), tuple(noops), tuple(problems), hosts=(CLUSTER,), cluster=True)

    def _proxy_spec(self, svc: Service, desired: DesiredState, config: tuple[str, str], revision: str) -> dict[str, Any]:
        text = config_text(self.agent, svc, desired)
        return proxy_spec(self.agent, svc, desired, self.config.services.proxy_image, (config[0], config[1] or config_name(self.agent, svc, text)), revision)

    # apply
    def apply(self, plan: Plan, desired: DesiredState, revision: str, progress: Progress | None, stop: threading.Event | None,
              observe: Callable[[], Any], deadline: float) -> ApplyResult:
        """The Services' proxies, then deployments by dependency level (each level converged before the
        next), then what leaves Git (proxies before the deployments they served), then unused configs."""
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
            found = read(manager, self.agent)  # the swarm as this apply finds it
            pins = self._pins(desired, found)  # once per apply: the nodes holding data
        except EngineError as exc:
            self._forget()
            for a in plan.actions:
                record(failure(a, exc))
            return out
        changes = {(a.object_kind, a.deployment): a for a in plan.actions if a.kind != ActionKind.REMOVE}
        failed: set[str] = set()
        # the Services' proxies first: they find their tasks as they come (DNS), and a deployment that
        # reaches another by its Service's name (a dependency) needs the proxy to become healthy
        levels = [[a for (kind, _), a in sorted(changes.items()) if kind == Service.KIND]]
        levels += [[changes[(Deployment.KIND, n)] for n in level if (Deployment.KIND, n) in changes] for level in desired.levels()]
        for mine in levels:
            submitted: list[tuple[Action, _Target, str, float]] = []
            for a in mine:
                d = desired.deployment(a.deployment) if a.object_kind == Deployment.KIND else None
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
                    target = self._target(manager, a, desired, revision, pins, found)
                    submitted.append((a, target, self._submit(manager, a, target.spec), t0))
                except EngineError as exc:
                    failed.add(a.deployment)
                    record(failure(a, exc, time.monotonic() - t0))
            for a, target, before, t0 in submitted:
                ok, message, rolled = self._await(manager, a, target, before, deadline, progress, stop)
                if not ok:
                    failed.add(a.deployment)
                if rolled:
                    out.rollbacks.append(f"{a.deployment}: Swarm rolled the service back to its previous spec")
                record(ActionResult(a, ok, message, time.monotonic() - t0, reason=None if ok else Reason.APPLY_FAILED,
                                    transient=not rolled))  # rolled back: the same spec waits for a commit
        for a in sorted((a for a in plan.actions if a.kind == ActionKind.REMOVE), key=lambda a: a.object_kind != Service.KIND):
            t0 = time.monotonic()
            try:
                manager.remove_service(a.container_id or a.container_name or "")
                record(ActionResult(a, True, "removed", time.monotonic() - t0))
            except EngineError as exc:
                record(failure(a, exc, time.monotonic() - t0))
        self._prune_configs(manager)
        return out

    def _target(self, manager: SwarmManager, a: Action, desired: DesiredState, revision: str,
                placed: tuple[dict[str, str], dict[str, str]], found: SwarmObservation) -> _Target:
        """What one action submits and waits for: the spec, the hash its tasks carry, how many must run.
        `found`: the swarm as this apply found it."""
        if a.object_kind == Service.KIND:
            svc = next(s for s in desired.services if s.name == a.deployment)
            text = config_text(self.agent, svc, desired)
            cname = config_name(self.agent, svc, text)
            have = {k: v[0] for k, v in manager.objects("config", f"{L.MANAGED_BY}={self.agent}").items()}
            cid = manager.ensure_object("config", cname, text.encode(), {L.MANAGED_BY: self.agent, L.ROLE: L.ROLE_PROXY, L.SERVICE: svc.name}, have)
            spec = self._proxy_spec(svc, desired, (cid, cname), revision)
            return _Target(spec, spec["Labels"][L.SPEC_HASH], lambda: _eligible(manager.nodes(), svc.host_selector if spec["EndpointSpec"].get("Ports") else ()))
        d = desired.deployment(a.deployment)
        assert d is not None
        pins, why_not = placed
        if d.name in why_not:
            raise EngineError(CLUSTER, why_not[d.name], reached=True)
        refs = self._file_objects(manager, d)
        volume = host_local(desired, d)
        if volume is not None and pins.get(d.name):  # recorded in the cluster: the data's node outlives the service
            name = f"{self.agent}-volume-{volume}"
            labels = {L.MANAGED_BY: self.agent, L.ROLE: ROLE_VOLUME, L.VOLUME: volume, PINNED: pins[d.name]}
            manager.ensure_object("config", name, pins[d.name].encode(), labels, {k: v[0] for k, v in manager.objects("config", f"{L.ROLE}={ROLE_VOLUME}").items()})
        spec = service_spec(self.agent, d, revision, desired, pins.get(d.name, ""), refs, self._image(manager, d, found))
        live = found.service(d.name)
        if d.run_once and live is not None:  # a job runs again on an update, its spec changed or not
            spec["TaskTemplate"]["ForceUpdate"] = int((live.spec.get("TaskTemplate") or {}).get("ForceUpdate") or 0) + 1
        return _Target(spec, spec["Labels"][L.SPEC_HASH], lambda: d.replicas)

    @staticmethod
    def _image(manager: SwarmManager, d: Deployment, found: SwarmObservation) -> str:
        """The image pinned by digest (as `docker stack deploy` pins it): every task runs the same image,
        wherever and whenever Swarm starts one. A service running this image already keeps its digest,
        so a tag moved in the registry changes nothing until Git does; a registry that does not answer
        leaves the tag unpinned (each node pulls it as it starts a task), as the stack deploy does."""
        if "@" in d.image:
            return d.image
        live = found.service(d.name)
        running = str(((live.spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image") or "") if live else ""
        if running.startswith(d.image + "@"):
            return running
        try:
            return f"{d.image}@{manager.image_digest(d.image)}"
        except EngineError as exc:
            log.warning("%s: %s not pinned by digest, the registry did not answer the manager: %s", d.name, d.image, exc.detail)
            return d.image

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
                    raise EngineError(CLUSTER, f"{d.name}: external network {n} does not exist on the swarm (gitsync never makes it)", reached=True)

    def _submit(self, manager: SwarmManager, a: Action, spec: Mapping[str, Any]) -> str:
        """Create or update the service; the update status it had before (so that a stale one is not read as this
        change's), or, for a job, the run it had before ("" when it had none)."""
        if a.kind == ActionKind.CREATE:
            manager.create_service(spec)
            return ""
        live = manager.inspect_service(a.container_id or spec["Name"])
        if live is None:
            manager.create_service(spec)
            return ""
        if "ReplicatedJob" in (spec.get("Mode") or {}):
            before = str(((live.get("JobStatus") or {}).get("JobIteration") or {}).get("Index") or "")
        else:
            before = str((live.get("UpdateStatus") or {}).get("StartedAt") or "")
        manager.update_service(live["ID"], int((live.get("Version") or {}).get("Index") or 0), spec)
        return before

    def _await(self, manager: SwarmManager, a: Action, target: _Target, before: str, deadline: float,
               progress: Progress | None, stop: threading.Event | None) -> tuple[bool, str, bool]:
        """Until the service runs its new spec on as many tasks as it should (ok), Swarm rolled it back, or a
        task of the new spec failed to start (a create has nothing to roll back to); (ok, message, rolled back)."""
        if target.job:
            return self._await_job(manager, target, before, deadline, progress, stop)
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
            _pause(stop)

    def _await_job(self, manager: SwarmManager, target: _Target, before: str, deadline: float,
                   progress: Progress | None, stop: threading.Event | None) -> tuple[bool, str, bool]:
        """Until the job's new run completed on every replica (ok), or a task of it failed; (ok, message, False)."""
        want, name = target.hash, target.spec["Name"]
        said = False
        while True:
            s = manager.inspect_service(name)
            if s is None:
                return False, "the service was removed while its job ran", False
            live = _service(s, [_task(t) for t in manager.service_tasks(s["ID"])])
            count = target.count()
            done, running, failed = live.job_run(want)
            if str(live.iteration) != before:  # this apply's run, not the one before
                if len(done) >= count:
                    return True, f"job done: {count}/{count} tasks exited with code 0", False
                if failed:
                    return False, f"job failed: {_task_error(failed, want)}", False
            now = time.monotonic()
            if now >= deadline or (stop is not None and stop.is_set()):
                cut = "the agent stopped" if now < deadline else "did not complete in time"
                why = _pending(live.tasks, want)
                return False, f"{cut}: job {len(done)}/{count} done, {len(running)} running" + (f" ({why})" if why else ""), False
            if progress is not None and not said:
                progress(Waiting(CLUSTER, name, "the job's tasks to run to completion", deadline - now))
                said = True
            _pause(stop)

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
            _pause(stop)


def _pause(stop: threading.Event | None) -> None:
    """One poll's wait; an agent that stops wakes it."""
    if stop is not None:
        stop.wait(POLL)
    else:
        time.sleep(POLL)


@dataclass(frozen=True)
class _Target:
    spec: Mapping[str, Any]
    hash: str  # what its tasks' containers carry when they run this spec
    count: Callable[[], int]  # how many tasks must run it (a global proxy: the nodes it may run on)

    @property
    def job(self) -> bool:
        return "ReplicatedJob" in (self.spec.get("Mode") or {})


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


