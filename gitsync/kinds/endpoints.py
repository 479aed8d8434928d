"""Which replicas each Service sends connections to, as one host's proxy sees them, and what that
proxy is (its image, names and published ports). Pure: the same desired and live state always give
the same configuration, so a proxy is reloaded only when what it serves changes.

A proxy listens on each of its Services' ports on every network it is on, so two Services with the
same port cannot share one: each host runs one proxy per *slot*, and a Service goes to the first
slot (0, 1, ...) where none of its ports is taken, by name order. Most fleets have slot 0 only.

A replica on the proxy's own host is reached by its address on the managed network, one on another
host through the port its host publishes on that host's address (`hosts[].address`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ..core import labels as L
from ..core.config import HostSettings
from ..core.live import HostObservation, LiveContainer
from ..core.models import Deployment, DesiredState, Service
from ..core.proxyconf import Endpoint, render

ANY_ADDRESS = ("", "0.0.0.0", "::")


def ready(c: LiveContainer, d: Deployment) -> bool:
    """A replica that may get new connections: running and healthy by its healthcheck, or, without
    one, running for minReadySeconds."""
    if not c.running:
        return False
    if d.healthcheck is not None:
        return c.health == "healthy"
    return d.min_ready_seconds <= 0 or (c.uptime is not None and c.uptime >= d.min_ready_seconds)


def starting(c: LiveContainer, d: Deployment) -> bool:
    """Running, not ready yet, and on its way: its healthcheck has not decided, or it has run less than minReadySeconds."""
    return c.running and not ready(c, d) and (c.health == "starting" if d.healthcheck is not None else True)


def endpoint_name(c: LiveContainer) -> str:
    return f"{c.name}.{c.host}"


def members(svc: Service, desired: DesiredState, observed: Mapping[str, HostObservation]) -> list[tuple[LiveContainer, Deployment]]:
    """The live replicas of the deployments a Service selects, on hosts seen (or last seen): from
    the indexes of both sides, so a plan stays linear in Services and replicas."""
    sel = desired.selected(svc)
    return [
        (c, d)
        for _, obs in sorted(observed.items()) if obs.reachable
        for name, d in sel.items() for c in obs.replicas_by_deployment.get(name, ())
    ]


def endpoints(
    from_host: str,
    desired: DesiredState,
    observed: Mapping[str, HostObservation],
    settings: Mapping[str, HostSettings],
    network: str,
    draining: Collection[str] = (),
) -> tuple[dict[tuple[str, int], list[Endpoint]], list[str]]:
    """Each Service port's endpoints as the proxy on `from_host` reaches them, and why a ready replica
    is not among them. Replicas whose id is in `draining` stay, at weight 0 (no new connections)."""
    out: dict[tuple[str, int], list[Endpoint]] = {}
    notes: list[str] = []
    for svc in desired.services:
        for c, d in members(svc, desired, observed):
            if not ready(c, d):
                continue
            for p in svc.ports:
                address: str | None
                if c.host == from_host:
                    nets = L.networks_under(network, d)
                    address, port = next((a for a in map(c.address_on, nets) if a), None), p.target_port
                    if address is None:
                        notes.append(f"{c.name} on {c.host} is not on the network {nets[0]} yet")
                        continue
                else:
                    port = c.published_port(p.target_port)
                    bound = next((ip for cp, _, hp, ip in c.published if cp == p.target_port and hp == port), "")
                    h = settings.get(c.host)
                    address = bound if bound not in ANY_ADDRESS else (h.reach if h is not None else None)
                    if port is None or address is None:
                        why = "its port is not published" if port is None else "its host has no address (set hosts[].address)"
                        notes.append(f"{c.name} on {c.host} cannot be reached from {from_host}: {why}")
                        continue
                out.setdefault((svc.name, p.port), []).append(Endpoint(endpoint_name(c), address, port, c.id in draining))
    return out, notes


def slots(services: Sequence[Service]) -> dict[str, int]:
    """Each Service's proxy slot: the first whose ports are free of its own (by name, so stable)."""
    taken: list[set[int]] = []
    out: dict[str, int] = {}
    for s in sorted(services, key=lambda s: s.name):
        ports = {p.port for p in s.ports}
        slot = next((i for i, used in enumerate(taken) if not used & ports), len(taken))
        if slot == len(taken):
            taken.append(set())
        taken[slot] |= ports
        out[s.name] = slot
    return out


def in_slot(services: Sequence[Service], slot: int) -> list[Service]:
    chosen = slots(services)
    return [s for s in services if chosen[s.name] == slot]


def hard_stop(desired: DesiredState) -> int:
    """How long a reloaded proxy's old worker may finish connections: the longest stop grace period
    of the replicas served, at least 10 s."""
    graces = [d.stop_grace_period for s in desired.services for d in desired.selected(s).values()]
    return int(max([10.0, *graces])) + 1


def config_for(
    host: str, desired: DesiredState, observed: Mapping[str, HostObservation],
    settings: Mapping[str, HostSettings], network: str, draining: Collection[str] = (), slot: int = 0, threads: int = 1,
) -> tuple[str, list[str]]:
    """The configuration of the slot's proxy on `host`: its Services' ports and endpoints."""
    eps, notes = endpoints(host, desired, observed, settings, network, draining)
    return render(in_slot(desired.services, slot), eps, hard_stop(desired), threads), notes


def proxy_document(image: str, network: str, services: Sequence[Service], host: HostSettings, desired: DesiredState | None = None,
                   slot: int = 0) -> dict[str, Any]:
    """What the host's proxy container is: changing any of it recreates the proxy (endpoints are not in it).
    A Service's name resolves to the proxy on each network one of its deployments is on: on the agent's
    one network, and on the agent's own networks (spec.networks), where only the Services of
    deployments on that network have their names (compose's isolation between networks)."""
    labels = host.label_map
    grouped: dict[str, set[str]] = {}  # network -> the Services with a deployment on it
    shared = []
    for s in services:
        nets = {n for d in (desired.selected(s).values() if desired is not None else ()) for n in L.networks_under(network, d)}
        for n in nets - {network}:
            grouped.setdefault(n, set()).add(s.name)
        if not nets or network in nets:
            shared.append(s.name)
    return {
        **({"slot": slot} if slot else {}),  # the first proxy's document is as it was before slots
        "image": image,
        "network": network,
        "aliases": sorted(shared),
        **({"networks": {n: sorted(names) for n, names in sorted(grouped.items())}} if grouped else {}),
        "published": sorted(
            [p.host_port, p.port] + ([p.host_ip] if p.host_ip else []) for s in services if all(labels.get(k) == v for k, v in s.host_selector)
            for p in s.ports if p.host_port is not None
        ),
    }


def document_hash(doc: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def proxy_labels(agent: str, doc: Mapping[str, Any], revision: str) -> dict[str, str]:
    return {
        L.MANAGED_BY: agent,
        L.ROLE: L.ROLE_PROXY,
        L.SPEC_HASH: document_hash(doc),
        L.SPEC: json.dumps(doc, sort_keys=True, separators=(",", ":")),
        L.REVISION: revision,
    }
