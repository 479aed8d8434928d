"""Apply: execute a plan, each change re-checked against live state first.

Order:
1. surplus removals (scaled down, pruned, duplicates), every host in parallel;
2. then per dependency level (``dependsOn``): starts, renames and creates on every
   host in parallel, then each deployment's rolling replace: batches of
   ``update.parallelism`` replicas across hosts, each new replica health-gated.
   A replica that fails the gate stops that rollout and the replicas already
   replaced roll back to their previous spec (kept in their ``io.gitsync.spec``
   label). Deployments of the next level wait until their dependencies are ready;
3. removals of replicas that moved to another host.

Rules kept whatever the plan says: a container without our ``managed-by`` label
is never stopped, renamed or removed; volumes are never removed; one failing
host never stops the others.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import docker.errors

from . import labels as L
from .errors import ApplyError, HostError, Reason
from .hosts import Hosts, explain
from .live import HostObservation
from .models import Deployment, DesiredState, RestartPolicy, UpdateOrder
from .plan import PHASE_MOVED, PHASE_SURPLUS, Action, ActionKind, Plan

PER_HOST_WORKERS = 4


@dataclass(frozen=True)
class ActionResult:
    action: Action
    ok: bool
    message: str = ""
    seconds: float = 0.0
    skipped: bool = False
    reason: Reason | None = None  # why it failed, when not ok: HealthCheckFailed for a replica that failed its gate


@dataclass
class ApplyResult:
    results: list[ActionResult] = field(default_factory=list)
    rollbacks: list[str] = field(default_factory=list)  # what was rolled back, for the report

    @property
    def failed(self) -> list[ActionResult]:
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.failed


Progress = Callable[[ActionResult], None]


class GateFailed(ApplyError):
    """A new replica did not become ready: the rollout stops. `previous` is the replica's former
    spec when its old container is already gone (stop-first), for the caller to roll it back too."""

    reason = Reason.HEALTH_CHECK_FAILED

    def __init__(self, message: str, previous: Previous | None = None) -> None:
        super().__init__(message)
        self.previous = previous


@dataclass(frozen=True)
class Previous:
    """What a replica was before it was replaced: enough to roll it back."""

    spec: dict[str, Any] | None
    revision: str


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def _split_image(image: str) -> tuple[str, str | None]:
    if "@" in image:
        return image, None
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = image.rsplit(":", 1)
        return repo, tag
    return image, "latest"


class HostApplier:
    """The changes on one host."""

    def __init__(self, hosts: Hosts, host: str, agent: str, revision: str, stop: threading.Event | None = None) -> None:
        self.host = host
        self.hosts = hosts
        self.api = hosts.client(host).api
        self.agent = agent
        self.revision = revision
        self.stop = stop
        self._images_ok: set[str] = set()
        self._volumes_ok: set[str] = set()
        self._lock = threading.Lock()

    # -- building blocks -------------------------------------------------
    def owned(self, container_id: str) -> dict[str, Any] | None:
        """Inspect right before a change: gone -> None; not ours -> refuse."""
        try:
            info = self.api.inspect_container(container_id)
        except docker.errors.NotFound:
            return None
        owner = (info.get("Config", {}).get("Labels") or {}).get(L.MANAGED_BY)
        if owner != self.agent:
            raise HostError(self.host, f"container {info.get('Name', container_id).lstrip('/')} is not managed by {self.agent}; left alone")
        return info

    def ensure_image(self, image: str) -> None:
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

    def ensure_volume(self, name: str) -> None:
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

    def create(self, d: Deployment, replica: int, name: str, revision: str | None = None, extra_labels: dict[str, str] | None = None) -> str:
        self.ensure_image(d.image)
        for v in d.volumes:
            self.ensure_volume(v.name)
        labels = L.container_labels(self.agent, d, replica, revision or self.revision)
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

    def stop_remove(self, container_id: str, grace: float) -> None:
        if self.owned(container_id) is None:
            return
        try:
            self.api.stop(container_id, timeout=int(grace))
        except docker.errors.NotFound:
            return
        try:
            self.api.remove_container(container_id, v=False, force=True)
        except docker.errors.NotFound:
            pass

    def remove_stale_temp(self, temp: str) -> None:
        try:
            info = self.api.inspect_container(temp)
        except docker.errors.NotFound:
            return
        if (info.get("Config", {}).get("Labels") or {}).get(L.MANAGED_BY) == self.agent:
            self.api.remove_container(info["Id"], force=True)

    def gate(self, container_id: str, d: Deployment, replica: int) -> None:
        """Wait until the new replica counts: healthy (with a healthcheck), or running minReadySeconds."""
        start = time.monotonic()
        deadline = start + d.gate_timeout()
        if d.healthcheck is None and d.min_ready_seconds > 0:
            time.sleep(d.min_ready_seconds)
        while True:
            info = self.api.inspect_container(container_id)
            state = info.get("State", {})
            waited = time.monotonic() - start
            restarts = int(info.get("RestartCount") or 0)
            if not state.get("Running") or state.get("Restarting") or restarts:
                again = f" (restarted {restarts} times)" if restarts else ""
                raise GateFailed(f"{d.name}: replica {replica} exited with code {state.get('ExitCode')}{again} after {waited:.0f}s on {self.host}")
            if d.healthcheck is None:
                return
            health = state.get("Health") or {}
            status = health.get("Status")
            if status == "healthy":
                return
            log = health.get("Log") or []
            last = " ".join(str(log[-1].get("Output", "")).split())[:120] if log else "no healthcheck result yet"
            if status == "unhealthy":
                raise GateFailed(f"{d.name}: replica {replica} unhealthy after {waited:.0f}s: {last}")
            if time.monotonic() >= deadline:
                raise GateFailed(f"{d.name}: replica {replica} not healthy after {waited:.0f}s: {last}")
            time.sleep(0.2)

    # -- replace ---------------------------------------------------------
    def replace(self, container_id: str, d: Deployment, replica: int, revision: str | None = None, gate: bool = True) -> Previous | None:
        """Replace one replica by one of spec `d`. Returns what it was (None if it was already gone).

        start-first: the new container runs under a temporary name until it passed the
        gate; only then is the old one stopped and the new one renamed. A failed gate
        removes the new container and leaves the old one running.
        stop-first (or a fixed hostPort): stop and remove, create, gate.
        """
        name = L.container_name(self.agent, d.name, replica)
        info = self.owned(container_id)
        if info is None:
            new_id = self.create(d, replica, name, revision)
            if gate:
                self.gate(new_id, d, replica)
            return None
        old_labels = info.get("Config", {}).get("Labels") or {}
        try:
            spec = json.loads(old_labels.get(L.SPEC, "")) if old_labels.get(L.SPEC) else None
        except ValueError:
            spec = None
        previous = Previous(spec, old_labels.get(L.REVISION, ""))
        if d.update.order == UpdateOrder.STOP_FIRST or d.one_per_host:
            self.stop_remove(container_id, d.stop_grace_period)
            new_id = self.create(d, replica, name, revision)
            if gate:
                try:
                    self.gate(new_id, d, replica)
                except GateFailed as exc:
                    raise GateFailed(exc.message, previous) from None
            return previous
        temp = f"{name}-next"
        self.remove_stale_temp(temp)
        new_id = self.create(d, replica, temp, revision, {L.SUCCESSOR: container_id})
        if gate:
            try:
                self.gate(new_id, d, replica)
            except GateFailed:
                self.api.remove_container(new_id, force=True)
                raise
        self.stop_remove(container_id, d.stop_grace_period)
        self.api.rename(new_id, name)
        return previous

    # -- the simple actions ----------------------------------------------
    def run_simple(self, a: Action, desired: DesiredState) -> str:
        if a.kind == ActionKind.REMOVE:
            assert a.container_id is not None
            d = desired.deployment(a.deployment)
            self.stop_remove(a.container_id, d.stop_grace_period if d else 10.0)
            return "removed"
        if a.kind == ActionKind.START:
            assert a.container_id is not None
            if self.owned(a.container_id) is None:
                raise HostError(self.host, f"{a.container_name} disappeared before it could be started")
            self.api.start(a.container_id)
            return "started"
        if a.kind == ActionKind.RENAME:
            assert a.container_id is not None and a.container_name is not None
            if self.owned(a.container_id) is None:
                raise HostError(self.host, f"{a.container_name} disappeared before it could be renamed")
            try:
                self.api.rename(a.container_id, a.container_name)
            except docker.errors.APIError as exc:
                if getattr(exc, "status_code", None) == 409:
                    raise HostError(self.host, f"cannot take the name {a.container_name}: a container gitsync does not manage has it") from None
                raise
            return "renamed"
        d = desired.deployment(a.deployment)
        assert d is not None and a.replica is not None
        name = L.container_name(self.agent, d.name, a.replica)
        try:
            self.create(d, a.replica, name)
        except docker.errors.APIError as exc:
            if getattr(exc, "status_code", None) == 409 and "already in use" in str(exc.explanation or ""):
                return self._resolve_name_conflict(d, a.replica, name)
            raise
        return "created"

    def _resolve_name_conflict(self, d: Deployment, replica: int, name: str) -> str:
        info = self.api.inspect_container(name)
        lbl = info.get("Config", {}).get("Labels") or {}
        if lbl.get(L.MANAGED_BY) != self.agent:
            raise HostError(self.host, f"the name {name} is taken by a container gitsync does not manage; rename or remove it")
        if lbl.get(L.DEPLOYMENT) == d.name and lbl.get(L.REPLICA) == str(replica) and lbl.get(L.SPEC_HASH) == L.spec_hash(d):
            if not info.get("State", {}).get("Running"):
                self.api.start(info["Id"])
            return "already present"
        self.stop_remove(info["Id"], d.stop_grace_period)
        self.create(d, replica, name)
        return "created (replaced a stale container of the same name)"


class _Run:
    """One apply: the appliers per host, the results, progress reporting."""

    def __init__(
        self, plan: Plan, desired: DesiredState, hosts: Hosts, agent: str, revision: str, progress: Progress | None, stop: threading.Event | None,
        observe: Callable[[], dict[str, HostObservation]],
    ) -> None:
        self.plan = plan
        self.observe = observe
        self.desired = desired
        self.hosts = hosts
        self.agent = agent
        self.revision = revision
        self.progress = progress
        self.stop = stop
        self.out = ApplyResult()
        self._appliers: dict[str, HostApplier | BaseException] = {}
        self._lock = threading.Lock()
        self.failed_deployments: set[str] = set()

    def applier(self, host: str) -> HostApplier:
        with self._lock:
            got = self._appliers.get(host)
        if got is None:
            try:
                got = HostApplier(self.hosts, host, self.agent, self.revision, self.stop)
            except Exception as exc:  # unreachable: every action there fails with the reason
                self.hosts.forget(host)
                got = exc
            with self._lock:
                self._appliers[host] = got
        if isinstance(got, BaseException):
            raise got
        return got

    def record(self, r: ActionResult) -> ActionResult:
        with self._lock:
            self.out.results.append(r)
            if not r.ok and not r.skipped:
                self.failed_deployments.add(r.action.deployment)
        if self.progress is not None:
            self.progress(r)
        return r

    def skip(self, a: Action, why: str) -> ActionResult:
        return self.record(ActionResult(a, False, f"skipped: {why}", 0.0, skipped=True))

    def stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def simple(self, a: Action) -> ActionResult:
        if self.stopping():
            return self.skip(a, "the agent is stopping")
        if a.deployment in self.failed_deployments and a.kind != ActionKind.REMOVE:
            return self.skip(a, "an earlier change of this deployment failed")
        t = time.monotonic()
        try:
            msg = self.applier(a.host).run_simple(a, self.desired)
            return self.record(ActionResult(a, True, msg, time.monotonic() - t))
        except Exception as exc:
            return self.record(ActionResult(a, False, explain(exc), time.monotonic() - t))

    def parallel(self, actions: Iterable[Action]) -> None:
        """Hosts in parallel, each host a few changes at a time."""
        by_host: dict[str, list[Action]] = {}
        for a in actions:
            by_host.setdefault(a.host, []).append(a)
        if not by_host:
            return

        def host_run(host: str) -> None:
            with ThreadPoolExecutor(PER_HOST_WORKERS, thread_name_prefix=f"apply-{host}") as pool:
                list(pool.map(self.simple, by_host[host]))

        for host, res in self.hosts.map(host_run, list(by_host)).items():
            if isinstance(res, BaseException):
                for a in by_host[host]:
                    self.record(ActionResult(a, False, explain(res)))

    def rollout(self, d: Deployment, actions: list[Action]) -> None:
        """Rolling replace across hosts, `parallelism` at a time, gated; on failure roll back."""
        done: list[tuple[Action, Previous | None]] = []
        pending = list(actions)
        while pending:
            if self.stopping():
                for a in pending:
                    self.skip(a, "the agent is stopping")
                return
            if d.name in self.failed_deployments:
                for a in pending:
                    self.skip(a, "an earlier change of this deployment failed")
                return
            batch, pending = pending[: d.update.parallelism], pending[d.update.parallelism :]
            outcomes: list[tuple[Action, Previous | None, BaseException | None, float]] = []

            def one(a: Action) -> tuple[Action, Previous | None, BaseException | None, float]:
                t = time.monotonic()
                try:
                    assert a.container_id is not None and a.replica is not None
                    prev = self.applier(a.host).replace(a.container_id, d, a.replica)
                    return a, prev, None, time.monotonic() - t
                except Exception as exc:
                    return a, exc.previous if isinstance(exc, GateFailed) else None, exc, time.monotonic() - t

            with ThreadPoolExecutor(max(1, len(batch))) as pool:
                outcomes = list(pool.map(one, batch))
            failures = [o for o in outcomes if o[2] is not None]
            for a, prev, exc, secs in outcomes:
                if exc is None:
                    done.append((a, prev))
                    self.record(ActionResult(a, True, f"replaced ({'stop-first' if d.update.order == UpdateOrder.STOP_FIRST or d.one_per_host else 'start-first'})", secs))
                else:
                    if isinstance(exc, GateFailed):
                        self.record(ActionResult(a, False, exc.message, secs, reason=exc.reason))
                    else:
                        self.record(ActionResult(a, False, explain(exc), secs))
                    stop_first = d.update.order == UpdateOrder.STOP_FIRST or d.one_per_host
                    if isinstance(exc, GateFailed) and stop_first:
                        done.append((a, prev))  # its old container is gone: roll it back as well
            if failures:
                for a in pending:
                    self.skip(a, "the rollout stopped at a failed replica")
                self.roll_back(d, done)
                return

    def roll_back(self, d: Deployment, done: list[tuple[Action, Previous | None]]) -> None:
        """Put the replicas replaced in this rollout back to the spec they had."""
        for a, prev in reversed(done):
            assert a.replica is not None
            spec = prev.spec if prev is not None else None
            if spec is None:
                self.out.rollbacks.append(f"{d.name}: replica {a.replica} on {a.host}: previous spec unknown, left at the new one")
                continue
            try:
                old = L.deployment_from_spec(d, spec)
                applier = self.applier(a.host)
                name = L.container_name(self.agent, d.name, a.replica)
                try:
                    current = applier.api.inspect_container(name)["Id"]
                except docker.errors.NotFound:
                    current = name
                applier.replace(current, old, a.replica, revision=prev.revision if prev else None, gate=False)
                self.out.rollbacks.append(f"{d.name}: replica {a.replica} on {a.host} rolled back to {old.image}")
            except Exception as exc:
                self.out.rollbacks.append(f"{d.name}: replica {a.replica} on {a.host}: rollback failed: {explain(exc)}")

    def wait_ready(self, names: list[str], deadline: float) -> dict[str, str]:
        """Wait until these deployments have every replica running and healthy; returns the ones that are not."""
        from .health import assess
        from .live import Health

        missing: dict[str, str] = {}
        while True:
            status = assess(self.desired, self.observe())
            missing = {n: status[n].message for n in names if n in status and status[n].health != Health.HEALTHY}
            if not missing or time.monotonic() >= deadline or self.stopping():
                return missing
            time.sleep(0.25)


def apply_plan(
    plan: Plan,
    desired: DesiredState,
    hosts: Hosts,
    agent: str,
    revision: str,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    observe: Callable[[], dict[str, HostObservation]] | None = None,
) -> ApplyResult:
    """Run the plan. When `stop` is set, changes in flight finish and the rest are skipped. `observe`
    is how waits for dependencies look at the hosts: the same view the plan was made from."""
    run = _Run(plan, desired, hosts, agent, revision, progress, stop, observe or hosts.observe)
    actions = list(plan.actions)
    run.parallel(a for a in actions if a.phase == PHASE_SURPLUS)
    known = {d.name for d in desired.deployments}
    levels = desired.levels()
    for i, level in enumerate(levels):
        names = set(level)
        run.parallel(a for a in actions if a.deployment in names and a.kind in (ActionKind.START, ActionKind.RENAME, ActionKind.CREATE))
        replaces = {n: [a for a in actions if a.deployment == n and a.kind == ActionKind.REPLACE] for n in level}
        work = [(desired.deployment(n), acts) for n, acts in replaces.items() if acts]
        if work:
            with ThreadPoolExecutor(len(work)) as pool:
                list(pool.map(lambda w: run.rollout(w[0], w[1]), work))  # type: ignore[arg-type]
        needed = sorted({dep for later in levels[i + 1 :] for n in later for dep in (desired.deployment(n).depends_on or ()) if dep in names})  # type: ignore[union-attr]
        if needed:
            touched = {a.deployment for a in actions}
            deadline = time.monotonic() + max(desired.deployment(n).gate_timeout() for n in needed)  # type: ignore[union-attr]
            not_ready = run.wait_ready(needed, deadline) if touched & (names | {n for lv in levels[i + 1 :] for n in lv}) else {}
            for n, why in not_ready.items():
                run.failed_deployments.add(n)
                for later in levels[i + 1 :]:
                    for dep_name in later:
                        dep = desired.deployment(dep_name)
                        if dep is not None and n in dep.depends_on:
                            run.failed_deployments.add(dep_name)
                            for a in actions:
                                if a.deployment == dep_name and a.phase != PHASE_SURPLUS:
                                    run.skip(a, f"waiting for {n}, which is not ready ({why})")
    run.parallel(a for a in actions if a.phase == PHASE_MOVED and a.deployment in known)
    done_ids = {id(r.action) for r in run.out.results}
    for a in actions:  # anything not handled above (a deployment no longer desired that moved) is skipped, never dropped silently
        if id(a) not in done_ids:
            run.parallel([a])
    return run.out
