"""Assess: how each object stands against its desired state. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

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
    """How each object stands, from every kind that has a health (today: Deployments)."""
    from . import kinds

    out: dict[str, DeploymentStatus] = {}
    for kind in kinds.ordered():
        out.update(kind.health(desired, observed))
    return out
