"""Live state as frozen data: what runs on the hosts, read back from our labels."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from . import labels as L


class Health(enum.StrEnum):
    """Worst-of order: Healthy < Progressing < Degraded < Missing."""

    HEALTHY = "Healthy"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    MISSING = "Missing"

    @property
    def rank(self) -> int:
        return list(Health).index(self)

    @staticmethod
    def worst(values: list[Health]) -> Health:
        return max(values, key=lambda h: h.rank) if values else Health.HEALTHY


@dataclass(frozen=True)
class LiveContainer:
    id: str
    name: str
    host: str
    deployment: str
    replica: int | None
    spec_hash: str
    revision: str
    state: str  # created | running | paused | restarting | exited | removing | dead
    health: str | None  # healthy | unhealthy | starting | None (no healthcheck)
    created: int
    image: str
    spec: str = ""  # the normalised spec it was created from (JSON), for saying what changed
    successor_of: str | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    def spec_document(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.spec) if self.spec else None
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None


@dataclass(frozen=True)
class HostObservation:
    """One host as seen by one observe step."""

    host: str
    reachable: bool
    containers: tuple[LiveContainer, ...] = ()
    error: str | None = None
    seconds: float = 0.0
    stale: bool = False  # unreachable now: these are the last containers seen, within the host's grace


def _health(status: str) -> str | None:
    if "(healthy)" in status:
        return "healthy"
    if "(unhealthy)" in status:
        return "unhealthy"
    if "(health: starting)" in status:
        return "starting"
    return None


def from_list_entry(host: str, entry: dict[str, Any]) -> LiveContainer:
    """A container as the Engine's list endpoint returns it (no inspect needed)."""
    labels = entry.get("Labels") or {}
    names = entry.get("Names") or []
    replica_text = labels.get(L.REPLICA, "")
    replica = int(replica_text) if replica_text.isdigit() else None
    return LiveContainer(
        id=entry["Id"],
        name=names[0].lstrip("/") if names else entry["Id"][:12],
        host=host,
        deployment=labels.get(L.DEPLOYMENT, ""),
        replica=replica,
        spec_hash=labels.get(L.SPEC_HASH, ""),
        revision=labels.get(L.REVISION, ""),
        state=entry.get("State", "unknown"),
        health=_health(entry.get("Status", "")),
        created=int(entry.get("Created", 0)),
        image=entry.get("Image", ""),
        spec=labels.get(L.SPEC, ""),
        successor_of=labels.get(L.SUCCESSOR),
    )
