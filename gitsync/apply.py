"""Apply: execute a plan, hosts in parallel, each change re-checked against live state first.

Rules kept here whatever the plan says:
- a container without our ``managed-by`` label is never stopped, renamed or removed;
- volumes are never removed;
- one failing host never stops the others; a failing action is reported, and
  later actions of the same deployment on that host are skipped (no rollout
  continues past a failure).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import docker.errors

from . import labels as L
from .errors import HostError
from .hosts import Hosts, explain
from .models import Deployment, DesiredState, RestartPolicy, UpdateOrder
from .plan import Action, ActionKind, Plan

PER_HOST_WORKERS = 4


@dataclass(frozen=True)
class ActionResult:
    action: Action
    ok: bool
    message: str = ""
    seconds: float = 0.0
    skipped: bool = False


@dataclass
class ApplyResult:
    results: list[ActionResult] = field(default_factory=list)

    @property
    def failed(self) -> list[ActionResult]:
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.failed


Progress = Callable[[ActionResult], None]


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


class _HostApplier:
    def __init__(
        self,
        hosts: Hosts,
        host: str,
        desired: DesiredState,
        agent: str,
        revision: str,
        progress: Progress | None,
        stop: threading.Event | None = None,
    ) -> None:
        self.stop = stop
        self.host = host
        self.hosts = hosts
        self.api = hosts.client(host).api
        self.desired = desired
        self.agent = agent
        self.revision = revision
        self.progress = progress
        self.failed_deployments: set[str] = set()
        self._images_ok: set[str] = set()
        self._volumes_ok: set[str] = set()
        self._lock = threading.Lock()

    # -- building blocks -------------------------------------------------
    def _owned(self, container_id: str) -> dict[str, Any] | None:
        """Inspect right before a change: gone -> None; not ours -> refuse."""
        try:
            info = self.api.inspect_container(container_id)
        except docker.errors.NotFound:
            return None
        owner = (info.get("Config", {}).get("Labels") or {}).get(L.MANAGED_BY)
        if owner != self.agent:
            raise HostError(self.host, f"container {info.get('Name', container_id)} is not managed by {self.agent}; left alone")
        return info

    def _ensure_image(self, image: str) -> None:
        with self._lock:
            if image in self._images_ok:
                return
        try:
            self.api.inspect_image(image)
        except docker.errors.ImageNotFound:
            repo, tag = _split_image(image)
            try:
                self.api.pull(repo, tag=tag)
            except docker.errors.APIError as exc:
                raise HostError(self.host, f"cannot pull {image}: {explain(exc)}") from None
        with self._lock:
            self._images_ok.add(image)

    def _ensure_volume(self, name: str) -> None:
        with self._lock:
            if name in self._volumes_ok:
                return
        try:
            self.api.inspect_volume(name)
        except docker.errors.NotFound:
            try:
                self.api.create_volume(name, labels={L.MANAGED_BY: self.agent})
            except docker.errors.APIError as exc:
                if getattr(exc, "status_code", None) != 409:
                    raise
        with self._lock:
            self._volumes_ok.add(name)

    def _create(self, d: Deployment, replica: int, name: str, extra_labels: dict[str, str] | None = None) -> str:
        self._ensure_image(d.image)
        for v in d.volumes:
            self._ensure_volume(v.name)
        labels = L.container_labels(self.agent, d, replica, self.revision)
        if extra_labels:
            labels.update(extra_labels)
        restart: dict[str, Any] = {"Name": "" if d.restart == RestartPolicy.NO else str(d.restart)}
        if d.restart == RestartPolicy.ON_FAILURE:
            restart["MaximumRetryCount"] = 0
        host_config = self.api.create_host_config(
            port_bindings={f"{p.container_port}/{p.protocol}": p.host_port for p in d.ports} or None,
            binds={v.name: {"bind": v.mount_path, "mode": "ro" if v.read_only else "rw"} for v in d.volumes} or None,
            restart_policy=restart,
        )
        healthcheck = None
        if d.healthcheck is not None:
            hc = d.healthcheck
            healthcheck = {
                "test": list(hc.test),
                "interval": _ns(hc.interval),
                "timeout": _ns(hc.timeout),
                "retries": hc.retries,
                "start_period": _ns(hc.start_period),
            }
        created = self.api.create_container(
            d.image,
            command=list(d.command) if d.command is not None else None,
            name=name,
            labels=labels,
            environment=[f"{k}={v}" for k, v in d.env] or None,
            ports=[(p.container_port, p.protocol) for p in d.ports] or None,
            volumes=[v.mount_path for v in d.volumes] or None,
            host_config=host_config,
            healthcheck=healthcheck,
            stop_timeout=int(d.stop_grace_period),
        )
        container_id: str = created["Id"]
        self.api.start(container_id)
        return container_id

    def _stop_remove(self, container_id: str, grace: float) -> None:
        if self._owned(container_id) is None:
            return
        try:
            self.api.stop(container_id, timeout=int(grace))
        except docker.errors.NotFound:
            return
        try:
            self.api.remove_container(container_id, v=False, force=True)
        except docker.errors.NotFound:
            pass

    # -- actions ---------------------------------------------------------
    def _grace(self, deployment: str) -> float:
        d = self.desired.deployment(deployment)
        return d.stop_grace_period if d is not None else 10.0

    def run(self, action: Action) -> ActionResult:
        start = time.monotonic()
        if self.stop is not None and self.stop.is_set():
            result = ActionResult(action, False, "skipped: the agent is stopping", 0.0, skipped=True)
        elif action.deployment in self.failed_deployments:
            result = ActionResult(action, False, "skipped: an earlier change of this deployment failed", 0.0, skipped=True)
        else:
            try:
                message = self._do(action)
                result = ActionResult(action, True, message, time.monotonic() - start)
            except Exception as exc:
                with self._lock:
                    self.failed_deployments.add(action.deployment)
                result = ActionResult(action, False, explain(exc), time.monotonic() - start)
        if self.progress is not None:
            self.progress(result)
        return result

    def _do(self, a: Action) -> str:
        if a.kind == ActionKind.REMOVE:
            assert a.container_id is not None
            self._stop_remove(a.container_id, self._grace(a.deployment))
            return "removed"
        if a.kind == ActionKind.START:
            assert a.container_id is not None
            if self._owned(a.container_id) is None:
                raise HostError(self.host, f"{a.container_name} disappeared before it could be started")
            self.api.start(a.container_id)
            return "started"
        d = self.desired.deployment(a.deployment)
        assert d is not None and a.replica is not None
        name = L.container_name(self.agent, d.name, a.replica)
        if a.kind == ActionKind.CREATE:
            try:
                self._create(d, a.replica, name)
            except docker.errors.APIError as exc:
                if getattr(exc, "status_code", None) == 409 and "already in use" in str(exc.explanation or ""):
                    return self._resolve_name_conflict(d, a.replica, name)
                raise
            return "created"
        # replace
        assert a.container_id is not None
        if self._owned(a.container_id) is None:
            self._create(d, a.replica, name)
            return "created (the old replica was already gone)"
        if d.update.order == UpdateOrder.STOP_FIRST or d.one_per_host:
            self._stop_remove(a.container_id, d.stop_grace_period)
            self._create(d, a.replica, name)
            return "replaced (stop-first)"
        temp = f"{name}-next"
        self._remove_stale_temp(temp)
        new_id = self._create(d, a.replica, temp, {L.SUCCESSOR: a.container_id})
        self._stop_remove(a.container_id, d.stop_grace_period)
        self.api.rename(new_id, name)
        return "replaced (start-first)"

    def _remove_stale_temp(self, temp: str) -> None:
        try:
            info = self.api.inspect_container(temp)
        except docker.errors.NotFound:
            return
        if (info.get("Config", {}).get("Labels") or {}).get(L.MANAGED_BY) == self.agent:
            self.api.remove_container(info["Id"], force=True)

    def _resolve_name_conflict(self, d: Deployment, replica: int, name: str) -> str:
        info = self.api.inspect_container(name)
        lbl = info.get("Config", {}).get("Labels") or {}
        if lbl.get(L.MANAGED_BY) != self.agent:
            raise HostError(self.host, f"the name {name} is taken by a container gitsync does not manage; rename or remove it")
        if lbl.get(L.DEPLOYMENT) == d.name and lbl.get(L.REPLICA) == str(replica) and lbl.get(L.SPEC_HASH) == L.spec_hash(d):
            if not info.get("State", {}).get("Running"):
                self.api.start(info["Id"])
            return "already present"
        self._stop_remove(info["Id"], d.stop_grace_period)
        self._create(d, replica, name)
        return "created (replaced a stale container of the same name)"

    def apply(self, actions: list[Action]) -> list[ActionResult]:
        results: list[ActionResult] = []
        with ThreadPoolExecutor(max_workers=PER_HOST_WORKERS, thread_name_prefix=f"apply-{self.host}") as pool:
            phase_groups: dict[int, list[Action]] = {}
            for a in actions:
                phase_groups.setdefault(a.phase, []).append(a)
            for phase in sorted(phase_groups):
                group = phase_groups[phase]
                if all(a.kind == ActionKind.REPLACE for a in group):
                    results.extend(self._rolling(group, pool))
                else:
                    results.extend(pool.map(self.run, group))
        return results

    def _rolling(self, group: list[Action], pool: ThreadPoolExecutor) -> list[ActionResult]:
        """Replace replicas of each deployment a batch of `parallelism` at a time."""
        results: list[ActionResult] = []
        by_dep: dict[str, list[Action]] = {}
        for a in group:
            by_dep.setdefault(a.deployment, []).append(a)
        for dep, items in sorted(by_dep.items()):
            d = self.desired.deployment(dep)
            step = d.update.parallelism if d is not None else 1
            for i in range(0, len(items), step):
                results.extend(pool.map(self.run, items[i : i + step]))
        return results


def _split_image(image: str) -> tuple[str, str | None]:
    if "@" in image:
        return image, None
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = image.rsplit(":", 1)
        return repo, tag
    return image, "latest"


def apply_plan(
    plan: Plan,
    desired: DesiredState,
    hosts: Hosts,
    agent: str,
    revision: str,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> ApplyResult:
    """Run the plan's actions, every host in parallel.

    When `stop` is set, actions in flight finish (a replace is never cut in
    half) and the remaining ones are skipped.
    """
    names = [h for h in plan.hosts if plan.for_host(h)]

    def one(host: str) -> list[ActionResult]:
        actions = plan.for_host(host)
        try:
            applier = _HostApplier(hosts, host, desired, agent, revision, progress, stop)
        except Exception as exc:
            hosts.forget(host)
            results = [ActionResult(a, False, explain(exc)) for a in actions]
            if progress:
                for r in results:
                    progress(r)
            return results
        return applier.apply(actions)

    out = ApplyResult()
    for host, res in hosts.map(one, names).items():
        if isinstance(res, BaseException):
            out.results.extend(ActionResult(a, False, explain(res)) for a in plan.for_host(host))
        else:
            out.results.extend(res)
    return out
