"""Assess: how each deployment stands against its desired replicas. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from . import labels as L
from .live import Health, HostObservation
from .models import DesiredState


@dataclass(frozen=True)
class DeploymentStatus:
    name: str
    desired: int
    running: int  # up to date and running
    healthy: int  # running and, with a healthcheck, reported healthy
    health: Health
    message: str
    hosts: Mapping[str, int] = field(default_factory=dict)  # host -> running replicas

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "desired": self.desired,
            "running": self.running,
            "healthy": self.healthy,
            "health": str(self.health),
            "message": self.message,
            "hosts": dict(self.hosts),
        }


def assess(desired: DesiredState, observed: Mapping[str, HostObservation]) -> dict[str, DeploymentStatus]:
    out: dict[str, DeploymentStatus] = {}
    for d in desired.deployments:
        want = L.spec_hash(d)
        running = healthy = starting = unhealthy = 0
        seen: set[int] = set()
        per_host: dict[str, int] = {}
        for obs in observed.values():
            for c in obs.containers:
                if c.deployment != d.name or c.replica is None or c.replica >= d.replicas or c.replica in seen:
                    continue
                if c.spec_hash != want or not c.running:
                    continue
                seen.add(c.replica)
                running += 1
                per_host[c.host] = per_host.get(c.host, 0) + 1
                if d.healthcheck is None or c.health == "healthy":
                    healthy += 1
                elif c.health == "unhealthy":
                    unhealthy += 1
                else:
                    starting += 1
        if healthy == d.replicas:
            health, msg = Health.HEALTHY, f"{healthy}/{d.replicas} replicas healthy"
        elif running == 0 and d.replicas > 0:
            health, msg = Health.MISSING, f"0/{d.replicas} replicas running"
        elif starting and not unhealthy and running == d.replicas:
            health, msg = Health.PROGRESSING, f"{healthy}/{d.replicas} healthy, {starting} starting"
        else:
            parts = [f"{running}/{d.replicas} running"]
            if unhealthy:
                parts.append(f"{unhealthy} unhealthy")
            if starting:
                parts.append(f"{starting} starting")
            health, msg = Health.DEGRADED, ", ".join(parts)
        out[d.name] = DeploymentStatus(d.name, d.replicas, running, healthy, health, msg, dict(sorted(per_host.items())))
    return out
