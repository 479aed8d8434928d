"""The containers runtime: gitsync is the orchestrator. Each replica is a container that gitsync
places on a host, starts, gates on its health and replaces; Services are the hosts' HAProxy
proxies. Plans speak per host (plan.py here), apply runs the kinds' actions
(apply.py here), assessment reads the containers' labels (each kind's health)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ...core.actions import ApplyResult, Plan, Progress
from .apply import apply_plan
from ...core.config import Config
from ...core.health import DeploymentStatus, ServiceStatus
from ...adapters.hosts import Hosts
from ...kinds import assess
from ...core.live import Health, HostObservation
from ...core.models import DesiredState, Service
from .plan import make_plan
from .. import Runtime

Observed = dict[str, HostObservation]


class ContainersRuntime(Runtime):
    name = "containers"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.hosts = Hosts(config.hosts, config.name)

    def observe(self) -> Observed:
        return self.hosts.observe()

    def unreachable(self, observed: Observed) -> dict[str, str]:
        return {n: o.error or "unreachable" for n, o in observed.items() if not o.reachable}

    def plan(self, desired: DesiredState, observed: Observed) -> Plan:
        c = self.config
        return make_plan(desired, observed, c.hosts, c.name, c.services, c.policy)

    def apply(self, plan: Plan, desired: DesiredState, revision: str, progress: Progress | None, stop: threading.Event | None,
              observe: Callable[[], Observed], deadline: float) -> ApplyResult:
        c = self.config
        return apply_plan(plan, desired, self.hosts, c.name, revision, progress, stop, observe, c.services, c.policy)

    def converge(self, desired: DesiredState, deadline: float, skip: set[str] | frozenset[str], first: Observed | None,
                 stop: threading.Event | None, observe: Callable[[], Observed], poll: float = 0.25) -> tuple[dict[str, DeploymentStatus], Observed]:
        while True:
            observed, first = (first, None) if first is not None else (observe(), None)
            status = assess(desired, observed)
            crashed = {
                c.deployment for o in observed.values() for c in o.containers if c.state in ("exited", "restarting", "dead")
            }  # a replica that already died will not converge by waiting
            present = {(c.deployment, c.replica) for o in observed.values() for c in o.containers}
            lost = {d.name for d in desired.deployments if any((d.name, r) not in present for r in range(d.replicas))}
            # nor one removed since the plan (by hand, say): the next sync creates it, this one stops waiting
            settled = all(s.health == Health.HEALTHY for name, s in status.items() if name not in skip | crashed | lost)
            if settled or time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                return status, observed
            if stop is not None:
                stop.wait(poll)
            else:
                time.sleep(poll)

    def services(self, desired: DesiredState, observed: Observed) -> Mapping[str, ServiceStatus]:
        return assess(desired, observed, Service.KIND) if desired.services else {}

    def hosts_view(self, observed: Observed) -> dict[str, dict[str, Any]]:
        out = {}
        for h in self.config.hosts:
            o = observed.get(h.name)
            out[h.name] = {
                "url": h.url,
                "labels": dict(h.labels),
                "reachable": bool(o and o.reachable),
                "error": o.error if o else None,
                "containers": [
                    {"name": c.name, "deployment": c.deployment, "replica": c.replica, "state": c.state, "health": c.health, "revision": c.revision}
                    | ({"role": c.role} if c.role else {})
                    for c in (o.containers if o else ())
                ],
            }
        return out

    def volumes(self, desired: DesiredState | None, observed: Observed) -> list[dict[str, Any]]:
        from ...kinds.volume import inventory

        return inventory(desired, observed, self.config.name)

    def close(self) -> None:
        self.hosts.close()
