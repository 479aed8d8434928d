"""Replicas on engines, for the Deployment kind: create, start, rename, remove, and replace one
replica health-gated (start-first or stop-first), a rollout of several, and its roll-back.

Rules kept whatever the plan says: a container without our ``managed-by`` label is never
stopped, renamed or removed; volumes are never removed.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..core import labels as L
from ..core.actions import Action, ActionKind, ActionResult
from .run import Run, failure
from ..adapters.engine import Conflict, ContainerSpec, NotFound, explain
from ..core.errors import ApplyError, HostError, Reason
from ..core.live import ContainerInfo
from ..adapters.hosts import Hosts
from ..core.config import PolicySettings
from ..core.container import docker_options
from ..core.models import AccessMode, Deployment, DesiredState, NetworkMode, Sealed, UpdateOrder, Volume
from ..core.policy import writable_roots


class GateFailed(ApplyError):
    """A new replica did not become ready: the rollout stops. `previous` is the replica's former
    spec when its old container is already gone (stop-first), for the caller to roll it back too."""

    reason = Reason.HEALTH_CHECK_FAILED
    transient = False  # the same spec would fail again: it waits for a commit

    def __init__(self, message: str, previous: Previous | None = None) -> None:
        super().__init__(message)
        self.previous = previous


@dataclass(frozen=True)
class Previous:
    """What a replica was before it was replaced: enough to roll it back."""

    spec: dict[str, Any] | None
    revision: str


def container_spec(
    agent: str, d: Deployment, replica: int, name: str, revision: str, extra_labels: dict[str, str] | None = None, publish_on: str | None = None,
    desired: DesiredState | None = None, files_at: Mapping[str, str] | None = None,
) -> ContainerSpec:
    """What Docker is asked to create; `files_at` is where each files volume's content is on the host."""
    labels = L.container_labels(agent, d, replica, revision)
    labels.update(extra_labels or {})
    hc = d.healthcheck
    host_options, create_options = docker_options(d.options)
    own_network = d.options.network_mode == NetworkMode.BRIDGE
    return ContainerSpec(
        name=name,
        image=d.image,
        labels=labels,
        command=d.command,
        env=d.env + tuple((k, s.reveal().decode("utf-8", "surrogateescape")) for k, _, s in d.options.secret_env),
        ports=tuple((p.container_port, p.protocol, (p.host_ip, p.host_port) if p.host_ip and p.host_port else p.host_port) for p in d.ports),
        mounts=tuple(((desired.volume(v.name) if desired else Volume(v.name)).docker_name(replica), v.mount_path, v.read_only, "") for v in d.volumes)
        + tuple((b.host_path, b.mount_path, b.read_only, b.relabel) for b in d.options.binds)
        + tuple(((files_at or {}).get(L.files_volume(agent, f.digest), L.files_volume(agent, f.digest)), f.mount_path, True, "") for f in d.options.files),
        restart=str(d.restart),
        healthcheck=None if hc is None else {
            "test": hc.test, "interval": hc.interval, "timeout": hc.timeout, "retries": hc.retries, "start_period": hc.start_period,
        },
        stop_grace=d.stop_grace_period,
        network=L.networks_of(agent, d)[0] if own_network else str(d.options.network_mode),  # where the host's Services' proxy reaches it
        more_networks=tuple((n, ()) for n in L.networks_of(agent, d)[1:] + d.options.external_networks) if own_network else (),
        publish_on=publish_on,  # where the other hosts' proxies reach it
        host_options=host_options,
        create_options=create_options,
        sysctls=dict(d.options.sysctls) or None,
    )


def _publish_address(reach: str | None) -> str | None:
    """The address to publish replicas' ports on: the host's reach address when it is an IP address
    (an engine binds addresses, not names); else every address."""
    try:
        return str(ipaddress.ip_address(reach)) if reach else None
    except ValueError:
        return None


Retire = Callable[[str, float], None]  # (container, stop grace): before a replica is stopped for good
Say = Callable[[str, str, float], None]  # (container, what it waits for, for how long at most): progress


def stop_first(d: Deployment, desired: DesiredState) -> bool:
    """Replaced stop-first: asked for, or forced by a fixed hostPort (bound once per host) or a
    writable ReadWriteOnce volume (two writers on one data directory corrupt it)."""
    return d.update.order == UpdateOrder.STOP_FIRST or d.one_per_host or d.run_once or desired.single_writer(d) is not None


class HostApplier:
    """The changes on one host."""

    def __init__(
        self, hosts: Hosts, host: str, agent: str, revision: str, retire: Retire | None = None, desired: DesiredState | None = None,
        policy: PolicySettings = PolicySettings(), say: Say | None = None,
    ) -> None:
        self.host = host
        self.desired = desired or DesiredState()
        self.policy = policy
        self.say: Say = say or (lambda subject, what, up_to: None)
        self.engine = hosts.engine(host)
        self.agent = agent
        self.revision = revision
        self.retire = retire
        self.publish_on = _publish_address(hosts.setting(host).reach)
        self._images_ok: set[str] = set()
        self._volumes_ok: set[str] = set()
        self._network_ok: set[str] = set()
        self._files_ok: set[str] = set()
        self._files_at: dict[str, str] = {}  # files volume -> its content's path on this host
        self._making: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    # -- building blocks -------------------------------------------------
    def owned(self, container: str) -> ContainerInfo | None:
        """Inspect right before a change: gone -> None; not ours -> refuse."""
        info = self.engine.inspect(container)
        if info is None:
            return None
        if info.owner != self.agent:
            raise HostError(self.host, f"container {info.name or container} is not managed by {self.agent}; left alone")
        return info

    def _once(self, done: set[str], key: str, make: Any) -> None:
        """make() once per key, even when several creates on this host ask at the same moment."""
        with self._lock:
            if key in done:
                return
            lock = self._making.setdefault(key, threading.Lock())
        with lock:
            if key in done:
                return
            make()
            with self._lock:
                done.add(key)

    def create(self, d: Deployment, replica: int, name: str, revision: str | None = None, extra_labels: dict[str, str] | None = None) -> str:
        self._once(self._images_ok, d.image, lambda: self.engine.ensure_image(d.image))
        for m in d.volumes:
            v = self.desired.volume(m.name)
            labels = {L.MANAGED_BY: self.agent, L.VOLUME: v.name, L.DEPLOYMENT: d.name}
            if v.per_replica or v.access_mode == AccessMode.READ_WRITE_ONCE:
                labels[L.REPLICA] = str(replica)  # the replica whose data it holds (a ReadWriteOnce volume has one)
            vname = v.docker_name(replica)
            if v.external:  # Docker would make a missing one, empty: it must be there
                self._once(self._volumes_ok, vname, lambda vname=vname: self._external(vname, d))
                continue
            self._once(self._volumes_ok, vname, lambda vname=vname, v=v, labels=labels: self.engine.ensure_volume(vname, labels, v.driver, dict(v.driver_opts)))
        for f in d.options.files:
            vname = L.files_volume(self.agent, f.digest)
            self._once(self._files_ok, vname, lambda vname=vname, f=f: self._files_at.__setitem__(vname, self.engine.ensure_files(
                vname, {L.MANAGED_BY: self.agent, L.ROLE: L.ROLE_FILES}, d.image, revealed(f.entries), f.folder, f.owner)))
        if d.options.network_mode == NetworkMode.BRIDGE:
            for network in L.networks_of(self.agent, d):
                self._once(self._network_ok, network, lambda network=network: self.engine.ensure_network(network, {L.MANAGED_BY: self.agent}))
            for network in d.options.external_networks:  # another's: it must be there (Docker would not make it)
                self._once(self._network_ok, network, lambda network=network: self._external_network(network, d))
        spec = container_spec(self.agent, d, replica, name, revision or self.revision, extra_labels, self.publish_on, self.desired, self._files_at)
        container_id = self.engine.create(spec)
        try:
            self._no_planted_links(d)  # last thing before the start: Docker resolves a bind's source as it mounts it
        except ApplyError:
            self.engine.remove(container_id)
            raise
        self.engine.start(container_id)
        return container_id

    def _holder(self, name: str, info: ContainerInfo | None = None) -> str:
        """Who has a container name: another gitsync agent's container, or one gitsync does not manage."""
        info = info if info is not None else self.engine.inspect(name)
        owner = info.owner if info is not None else None
        return f"a container of gitsync agent {owner}" if owner and owner != self.agent else "a container gitsync does not manage"

    def _no_planted_links(self, d: Deployment) -> None:
        """A bind mount below a prefix that replicas may write (policy.bindMounts readOnly: false) must
        not pass through a symbolic link: a replica could have planted one there that Docker would
        follow out of the prefix. Each component below the prefix is looked at on this host."""
        for b in d.options.binds:
            for root in writable_roots(b.host_path, self.policy):
                below = [p for p in b.host_path[len(root):].split("/") if p and p != "."]
                link = self.engine.first_link(d.image, root, below)
                if link is not None:
                    raise ApplyError(f"{link} on {self.host} is a symbolic link below {root}, where replicas may write: never followed (make it a folder)")

    def _external_network(self, name: str, d: Deployment) -> None:
        if not self.engine.has_network(name):
            raise ApplyError(f"{d.name}: external network {name} does not exist on {self.host}; create it there (docker network create {name}), "
                             "or list it under networks for gitsync to make one of its own")

    def _external(self, name: str, d: Deployment) -> None:
        if not self.engine.has_volume(name):
            raise ApplyError(f"{d.name}: external volume {name} does not exist on {self.host}; create it there (docker volume create {name}), "
                             "or declare it without external: true for gitsync to make it")

    def stop_remove(self, container: str, grace: float) -> None:
        """Stop and remove a replica for good: first out of every Service's endpoints (drained)."""
        info = self.owned(container)
        if info is None:
            return
        if self.retire is not None:
            self.retire(container, grace)
        try:
            self.say(info.name or container, f"stopping: SIGTERM, then SIGKILL after {grace:g}s", grace)
            self.engine.stop(container, grace)
            self.engine.remove(container)
        except NotFound:
            pass

    def remove_stale_temp(self, temp: str) -> None:
        info = self.engine.inspect(temp)
        if info is not None and info.owner == self.agent:
            self.engine.remove(info.id)

    def gate(self, container_id: str, d: Deployment, replica: int) -> None:
        """Wait until the new replica counts: healthy (with a healthcheck), or running minReadySeconds."""
        start = time.monotonic()
        deadline = start + d.gate_timeout()
        subject = L.container_name(self.agent, d.name, replica)
        if d.healthcheck is not None:
            self.say(subject, "waiting until healthy by its healthcheck", d.gate_timeout())
        elif d.min_ready_seconds > 0:
            self.say(subject, f"waiting until it has run {d.min_ready_seconds:g}s (minReadySeconds)", d.min_ready_seconds + 1.0)
        if d.run_once:
            self._finished(container_id, d, replica, start, deadline, subject)
            return
        if d.healthcheck is None and d.min_ready_seconds > 0:
            # and a second more: Docker reports uptime in whole seconds, which is what the Services read
            time.sleep(d.min_ready_seconds + 1.0)
        for info, waited in self._inspections(container_id, d, replica, start, "ready"):
            restarts = info.restart_count
            if not info.running or info.restarting or restarts:
                again = f" (restarted {restarts} times)" if restarts else ""
                raise GateFailed(f"{d.name}: replica {replica} exited with code {info.exit_code}{again} after {waited:.0f}s on {self.host}")
            if d.healthcheck is None:
                return
            status = info.health
            if status == "healthy":
                return
            last = info.health_output or "no healthcheck result yet"
            if status == "unhealthy":
                raise GateFailed(f"{d.name}: replica {replica} unhealthy after {waited:.0f}s: {last}")
            if time.monotonic() >= deadline:
                raise GateFailed(f"{d.name}: replica {replica} not healthy after {waited:.0f}s: {last}")

    def _inspections(self, container_id: str, d: Deployment, replica: int, start: float, until: str) -> Iterator[tuple[ContainerInfo, float]]:
        """The new replica as inspected every 0.2 s (with the seconds waited), until the caller is content."""
        while True:
            info = self.engine.inspect(container_id)
            waited = time.monotonic() - start
            if info is None:
                raise GateFailed(f"{d.name}: replica {replica} was removed after {waited:.0f}s on {self.host}, before it was {until}")
            yield info, waited
            time.sleep(0.2)

    def _finished(self, container_id: str, d: Deployment, replica: int, start: float, deadline: float, subject: str) -> None:
        """A job's replica counts once it exited with code 0 (Docker's on-failure restarts included)."""
        self.say(subject, "waiting until the job is done (exit code 0)", deadline - start)
        for info, waited in self._inspections(container_id, d, replica, start, "done"):
            if not info.running and not info.restarting and info.status == "exited":
                code = info.exit_code
                if code == 0:
                    return
                raise GateFailed(f"{d.name}: job replica {replica} exited with code {code} after {waited:.0f}s on {self.host}")
            if time.monotonic() >= deadline:
                raise GateFailed(f"{d.name}: job replica {replica} still running after {waited:.0f}s on {self.host}")

    # -- replace ---------------------------------------------------------
    def replace(self, container: str, d: Deployment, replica: int, revision: str | None = None, gate: bool = True) -> Previous | None:
        """Replace one replica by one of spec `d`. Returns what it was (None if it was already gone).

        start-first: the new container runs under a temporary name until it passed the
        gate; only then is the old one stopped and the new one renamed. A failed gate
        removes the new container and leaves the old one running.
        stop-first (or a fixed hostPort): stop and remove, create, gate.
        """
        name = L.container_name(self.agent, d.name, replica)
        info = self.owned(container)
        if info is None:
            new_id = self.create(d, replica, name, revision)
            if gate:
                self.gate(new_id, d, replica)
            return None
        old_labels = info.labels
        try:
            spec = json.loads(old_labels.get(L.SPEC, "")) if old_labels.get(L.SPEC) else None
        except ValueError:
            spec = None
        previous = Previous(spec, old_labels.get(L.REVISION, ""))
        if stop_first(d, self.desired):
            self.stop_remove(container, d.stop_grace_period)
            new_id = self.create(d, replica, name, revision)
            if gate:
                try:
                    self.gate(new_id, d, replica)
                except GateFailed as exc:
                    raise GateFailed(exc.message, previous) from None
            return previous
        temp = f"{name}-next"
        self.remove_stale_temp(temp)
        new_id = self.create(d, replica, temp, revision, {L.SUCCESSOR: container})
        if gate:
            try:
                self.gate(new_id, d, replica)
            except GateFailed:
                self.engine.remove(new_id)
                raise
        self.stop_remove(container, d.stop_grace_period)
        self.engine.rename(new_id, name)
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
            self.engine.start(a.container_id)
            return "started"
        if a.kind == ActionKind.RENAME:
            assert a.container_id is not None and a.container_name is not None
            if self.owned(a.container_id) is None:
                raise HostError(self.host, f"{a.container_name} disappeared before it could be renamed")
            try:
                self.engine.rename(a.container_id, a.container_name)
            except Conflict:
                raise HostError(self.host, f"cannot take the name {a.container_name}: {self._holder(a.container_name)} has it") from None
            return "renamed"
        d = desired.deployment(a.deployment)
        assert d is not None and a.replica is not None
        name = L.container_name(self.agent, d.name, a.replica)
        try:
            self.create(d, a.replica, name)
        except Conflict:  # the name is taken
            return self._resolve_name_conflict(d, a.replica, name)
        return "created"

    def _resolve_name_conflict(self, d: Deployment, replica: int, name: str) -> str:
        info = self.engine.inspect(name)
        if info is None:  # gone meanwhile
            self.create(d, replica, name)
            return "created"
        lbl = info.labels
        if info.owner != self.agent:
            raise HostError(self.host, f"the name {name} is taken by {self._holder(name, info)}; rename or remove it")
        if lbl.get(L.DEPLOYMENT) == d.name and lbl.get(L.REPLICA) == str(replica) and lbl.get(L.SPEC_HASH) == L.spec_hash(d):
            if not info.running:
                self.engine.start(info.id)
            return "already present"
        self.stop_remove(info.id, d.stop_grace_period)
        self.create(d, replica, name)
        return "created (replaced a stale container of the same name)"


class Replicas:
    """One apply's replica work: an applier per host, simple actions, rollouts and roll-backs."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self._appliers: dict[str, HostApplier | BaseException] = {}
        self._lock = threading.Lock()

    def applier(self, host: str) -> HostApplier:
        with self._lock:
            got = self._appliers.get(host)
        if got is None:
            try:
                got = HostApplier(
                    self.run.hosts, host, self.run.agent, self.run.revision, lambda c, grace: self.run.retiring(host, c, grace), self.run.desired,
                    self.run.policy, lambda subject, what, up_to: self.run.waiting(host, subject, what, up_to),
                )
            except Exception as exc:  # unreachable: every action there fails with the reason
                self.run.hosts.forget(host)
                got = exc
            with self._lock:
                self._appliers[host] = got
        if isinstance(got, BaseException):
            raise got
        return got

    def simple(self, a: Action) -> str:
        return self.applier(a.host).run_simple(a, self.run.desired)

    def rollout(self, d: Deployment, actions: list[Action]) -> None:
        """Rolling replace across hosts, `parallelism` at a time, gated; on failure roll back."""
        run = self.run
        done: list[tuple[Action, Previous | None]] = []
        pending = list(actions)
        while pending:
            if run.stopping():
                for a in pending:
                    run.skip(a, "the agent is stopping")
                return
            if (Deployment.KIND, d.name) in run.failed:
                for a in pending:
                    run.skip(a, "an earlier change of this deployment failed")
                return
            batch, pending = pending[: d.update.parallelism], pending[d.update.parallelism :]

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
            for a, prev, exc, secs in outcomes:
                if exc is None:
                    done.append((a, prev))
                    run.record(ActionResult(a, True, f"replaced ({'stop-first' if stop_first(d, self.run.desired) else 'start-first'})", secs))
                elif isinstance(exc, GateFailed):
                    run.record(failure(a, exc, secs))
                    if stop_first(d, self.run.desired):
                        done.append((a, prev))  # its old container is gone: roll it back as well
                else:
                    run.record(failure(a, exc, secs))
            if any(o[2] is not None for o in outcomes):
                for a in pending:
                    run.skip(a, "the rollout stopped at a failed replica")
                self.roll_back(d, done)
                return

    def roll_back(self, d: Deployment, done: list[tuple[Action, Previous | None]]) -> None:
        """Put the replicas replaced in this rollout back to the spec they had."""
        rollbacks = self.run.out.rollbacks
        for a, prev in reversed(done):
            assert a.replica is not None
            spec = prev.spec if prev is not None else None
            if spec is None:
                rollbacks.append(f"{d.name}: replica {a.replica} on {a.host}: previous spec unknown, left at the new one")
                continue
            try:
                old = L.deployment_from_spec(d, spec)
                applier = self.applier(a.host)
                name = L.container_name(self.run.agent, d.name, a.replica)
                current = applier.engine.inspect(name)
                applier.replace(current.id if current else name, old, a.replica, revision=prev.revision if prev else None, gate=False)
                rollbacks.append(f"{d.name}: replica {a.replica} on {a.host} rolled back to {old.image}")
            except Exception as exc:
                rollbacks.append(f"{d.name}: replica {a.replica} on {a.host}: rollback failed: {explain(exc)}")


def revealed(entries: Sequence[tuple[str, bytes | Sealed, int]]) -> tuple[tuple[str, bytes, int], ...]:
    """A files volume's content as it is written: a secret's value only here, on its way to the host."""
    return tuple((name, data.reveal() if isinstance(data, Sealed) else data, mode) for name, data, mode in entries)
