"""How each object stands against its desired state: the statuses every runtime reports. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .live import Health


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


@dataclass(frozen=True)
class EndpointStatus:
    name: str  # the replica's container
    host: str
    state: str  # ready | starting | draining | down


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    health: Health
    message: str  # e.g. "2 of 3 endpoints ready: web-2 on h3 is exited"
    endpoints: tuple[EndpointStatus, ...] = ()
    ports: tuple[str, ...] = ()  # e.g. "80 -> 8080, hostPort 8080"

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "health": str(self.health),
            "message": self.message,
            "ports": list(self.ports),
            "endpoints": [{"name": e.name, "host": e.host, "state": e.state} for e in self.endpoints],
        }
