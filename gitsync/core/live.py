"""Live state as frozen data: what runs on the hosts, read back from our labels."""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
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
    role: str = ""  # "" for a replica, "proxy" for the Services' proxy
    networks: tuple[tuple[str, str], ...] = ()  # (network, address on it)
    published: tuple[tuple[int, str, int, str], ...] = ()  # (container port, protocol, host port, host address)
    uptime: float | None = None  # seconds running, at least (Docker's list gives it coarsely: "Up 5 seconds")
    exit_code: int | None = None  # of an exited container ("Exited (1) 3 seconds ago")

    @property
    def running(self) -> bool:
        return self.state == "running"

    def address_on(self, network: str) -> str | None:
        return next((ip for n, ip in self.networks if n == network and ip), None)

    def published_port(self, port: int, protocol: str = "tcp") -> int | None:
        """The host port a container port is published on (any address), if it is."""
        return next((hp for cp, proto, hp, _ in self.published if cp == port and proto == protocol), None)

    @property
    def slot(self) -> int:
        """A proxy's slot (0: the first proxy; another serves Services whose port the first one serves)."""
        slot = (self.spec_document() or {}).get("slot", 0)
        return slot if isinstance(slot, int) and not isinstance(slot, bool) and slot >= 0 else 0

    def spec_document(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.spec) if self.spec else None
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None


@dataclass(frozen=True)
class ContainerInfo:
    """One container as the engine inspects it right before a change, in gitsync's words (the
    engine's own dictionary stays in the adapter)."""

    id: str
    name: str  # without Docker's leading slash
    labels: Mapping[str, str]
    running: bool
    restarting: bool
    status: str  # created | running | exited | dead | ...
    exit_code: int | None
    restart_count: int
    health: str | None  # healthy | unhealthy | starting; None without a healthcheck
    health_output: str  # what the newest healthcheck said, on one line, at most 120 characters
    networks: Mapping[str, str] = field(default_factory=dict)  # network -> its address there

    @property
    def owner(self) -> str | None:
        """The gitsync agent that manages it, if any."""
        return self.labels.get(L.MANAGED_BY)

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> ContainerInfo:
        state = raw.get("State") or {}
        health = state.get("Health") or {}
        log = health.get("Log") or []
        nets = (raw.get("NetworkSettings") or {}).get("Networks") or {}
        code = state.get("ExitCode")
        return cls(
            str(raw.get("Id", "")), str(raw.get("Name") or "").lstrip("/"), dict((raw.get("Config") or {}).get("Labels") or {}),
            bool(state.get("Running")), bool(state.get("Restarting")), str(state.get("Status") or ""),
            int(code) if code is not None else None, int(raw.get("RestartCount") or 0),
            str(health["Status"]) if health.get("Status") else None,
            " ".join(str(log[-1].get("Output", "")).split())[:120] if log else "",
            {str(n): str((v or {}).get("IPAddress") or "") for n, v in nets.items()},
        )


@dataclass(frozen=True)
class LiveVolume:
    name: str
    driver: str
    options: tuple[tuple[str, str], ...]
    owner: str  # the agent whose managed-by label it carries; "" when no gitsync made it
    deployment: str = ""  # the deployment whose replica first mounted it
    replica: int | None = None
    role: str = ""  # "files": it holds files from Git that replicas mount (spec.files), not data

    @staticmethod
    def of(entry: dict[str, Any]) -> LiveVolume:
        labels = entry.get("Labels") or {}
        replica = str(labels.get(L.REPLICA, ""))
        return LiveVolume(
            str(entry.get("Name", "")), str(entry.get("Driver", "local")),
            tuple(sorted((str(k), str(v)) for k, v in (entry.get("Options") or {}).items())),
            str(labels.get(L.MANAGED_BY, "")), str(labels.get(L.DEPLOYMENT, "")), int(replica) if replica.isdigit() else None,
            str(labels.get(L.ROLE, "")),
        )


@dataclass(frozen=True)
class HostObservation:
    """One host as seen by one observe step."""

    host: str
    reachable: bool
    containers: tuple[LiveContainer, ...] = ()
    error: str | None = None
    seconds: float = 0.0
    stale: bool = False  # unreachable now: these are the last containers seen, within the host's grace
    proxy_configs: Mapping[int, str] = field(default_factory=dict)  # the configuration each proxy runs, by slot, when it has one
    volumes: tuple[LiveVolume, ...] = ()  # every volume on the host, gitsync's or not

    def proxy_config(self, slot: int = 0) -> str | None:
        return self.proxy_configs.get(slot)

    # Indexes, built once per observation: a plan asks them per replica and per Service.
    @cached_property
    def _volumes_by_name(self) -> dict[str, LiveVolume]:
        return {v.name: v for v in reversed(self.volumes)}  # the first of a name wins, as before

    def volume(self, name: str) -> LiveVolume | None:
        return self._volumes_by_name.get(name)

    @cached_property
    def replicas(self) -> tuple[LiveContainer, ...]:
        return tuple(c for c in self.containers if not c.role)

    @cached_property
    def replicas_by_deployment(self) -> dict[str, tuple[LiveContainer, ...]]:
        out: dict[str, list[LiveContainer]] = {}
        for c in self.replicas:
            out.setdefault(c.deployment, []).append(c)
        return {k: tuple(v) for k, v in out.items()}

    @cached_property
    def proxies(self) -> tuple[LiveContainer, ...]:
        return tuple(c for c in self.containers if c.role == L.ROLE_PROXY)

    def proxy(self, slot: int = 0) -> LiveContainer | None:
        """The slot's proxy: the running one, else the newest."""
        found = sorted((c for c in self.proxies if c.slot == slot), key=lambda c: (not c.running, -c.created, c.id))
        return found[0] if found else None


def _health(status: str) -> str | None:
    if "(healthy)" in status:
        return "healthy"
    if "(unhealthy)" in status:
        return "unhealthy"
    if "(health: starting)" in status:
        return "starting"
    return None


_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800, "month": 2592000, "year": 31536000}


def _uptime(status: str) -> float | None:
    """A lower bound of how long a running container has been up, from the list's Status text
    ("Up 5 seconds (healthy)", "Up About a minute", "Up Less than a second")."""
    if not status.startswith("Up "):
        return None
    text = status[3:]
    if text.startswith("Less than a second"):
        return 0.0
    m = re.match(r"(\d+|About an?) (second|minute|hour|day|week|month|year)s?", text)
    if m is None:
        return None
    count = 1 if m.group(1).startswith("About") else int(m.group(1))
    return float(count * _UNITS[m.group(2)])


def _exit_code(status: str) -> int | None:
    m = re.match(r"Exited \((-?\d+)\)", status or "")
    return int(m.group(1)) if m else None


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
        role=labels.get(L.ROLE, ""),
        uptime=_uptime(entry.get("Status", "")),
        exit_code=_exit_code(entry.get("Status", "")),
        networks=tuple(sorted(
            (str(n), str((v or {}).get("IPAddress") or "")) for n, v in ((entry.get("NetworkSettings") or {}).get("Networks") or {}).items()
        )),
        published=tuple(sorted({
            (int(p["PrivatePort"]), str(p.get("Type", "tcp")), int(p["PublicPort"]), str(p.get("IP", "")))
            for p in entry.get("Ports") or () if p.get("PublicPort")
        })),
    )
