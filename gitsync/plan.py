"""Plan: desired x live -> ordered actions per host. Pure: no I/O, same input, same plan.

Placement rules, in order of strength:
1. A replica that runs on a reachable host that still suits it never moves
   (the host matches the selector and is within maxPerHost / one-per-hostPort).
2. Each replica index runs once; duplicates (after a host came back, or an
   interrupted replace) keep the best copy: up to date, running, newest.
3. New replicas go to the eligible host with the fewest replicas of that
   deployment, then the fewest managed containers overall, then config order.
A replica that fits nowhere is a placement problem naming the deployment and
why; the rest of the plan still stands.
"""

from __future__ import annotations

import enum
import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import labels as L
from .config import HostSettings
from .live import HostObservation, LiveContainer
from .models import Deployment, DesiredState


class ActionKind(enum.StrEnum):
    CREATE = "create"
    REPLACE = "replace"
    START = "start"
    RENAME = "rename"
    REMOVE = "remove"

    @property
    def symbol(self) -> str:
        return {"create": "+", "replace": "~", "start": ">", "rename": ">", "remove": "-"}[self.value]


# Order: free what is surplus, then bring replicas up, then retire what moved away.
PHASE_SURPLUS, PHASE_START, PHASE_CREATE, PHASE_REPLACE, PHASE_MOVED = range(5)
_PHASE_SURPLUS, _PHASE_START, _PHASE_CREATE, _PHASE_REPLACE, _PHASE_MOVED = range(5)


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    host: str
    deployment: str
    replica: int | None
    reason: str
    container_id: str | None = None  # the live container acted on (replace, start, remove)
    container_name: str | None = None
    phase: int = 0

    def sort_key(self) -> tuple[Any, ...]:
        return (self.phase, self.deployment, self.replica if self.replica is not None else -1, self.container_name or "")

    def to_json(self) -> dict[str, Any]:
        return {
            "action": str(self.kind),
            "host": self.host,
            "deployment": self.deployment,
            "replica": self.replica,
            "container": self.container_name,
            "container_id": self.container_id,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class PlacementProblem:
    deployment: str
    message: str

    def __str__(self) -> str:
        return f"{self.deployment}: {self.message}"


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    noops: tuple[str, ...] = ()
    problems: tuple[PlacementProblem, ...] = ()
    unreachable: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    placement: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # deployment -> host -> replicas

    @property
    def in_sync(self) -> bool:
        return not self.actions

    def for_host(self, host: str) -> list[Action]:
        return [a for a in self.actions if a.host == host]

    def counts(self) -> dict[str, int]:
        c = Counter(str(a.kind) for a in self.actions)
        return {k.value: c.get(k.value, 0) for k in ActionKind}

    def to_json(self) -> dict[str, Any]:
        return {
            "in_sync": self.in_sync,
            "hosts": {h: [a.to_json() for a in self.for_host(h)] for h in self.hosts},
            "unreachable": list(self.unreachable),
            "problems": [{"deployment": p.deployment, "message": p.message} for p in self.problems],
            "noops": list(self.noops),
            "placement": {d: dict(v) for d, v in self.placement.items()},
            "counts": self.counts(),
        }


def describe_change(live: LiveContainer, d: Deployment) -> str:
    """Which fields of the container spec changed, e.g. "image a:1 -> a:2, env"."""
    old = live.spec_document()
    new = L.spec_document(d)
    if old is None:
        return "created by an older gitsync or changed outside Git"
    parts: list[str] = []
    for key in sorted(set(old) | set(new)):
        if json.dumps(old.get(key), sort_keys=True) != json.dumps(new.get(key), sort_keys=True):
            if key == "image":
                parts.append(f"image {old.get(key)} -> {new.get(key)}")
            else:
                parts.append(key)
    if not parts:
        return "spec hash differs (labels edited by hand?)"
    return "changed: " + ", ".join(parts)


def _keeper_rank(c: LiveContainer, want_hash: str) -> tuple[int, int, int, str]:
    # Lower sorts first: running (never trade a serving replica for one that never started),
    # up to date, newest, then a stable tie-break.
    return (0 if c.running else 1, 0 if c.spec_hash == want_hash else 1, -c.created, c.id)


def make_plan(
    desired: DesiredState,
    observed: Mapping[str, HostObservation],
    hosts: Sequence[HostSettings],
    agent: str,
) -> Plan:
    order = {h.name: i for i, h in enumerate(hosts)}
    up = [h for h in hosts if observed.get(h.name) is not None and observed[h.name].reachable]
    # Stale: unreachable, but within its grace period. Its last known replicas still count
    # (nothing is rescheduled yet), it gets no new replicas, and no change is planned on it.
    stale = {h.name for h in up if observed[h.name].stale}
    fresh = [h for h in up if h.name not in stale]
    unreachable = tuple(h.name for h in hosts if h not in up or h.name in stale)
    actions: list[Action] = []
    noops: list[str] = []
    problems: list[PlacementProblem] = []
    placement: dict[str, dict[str, int]] = {}

    live_by_dep: dict[str, list[LiveContainer]] = defaultdict(list)
    for h in up:
        for c in observed[h.name].containers:
            live_by_dep[c.deployment].append(c)
    # Overall load: every container we will keep or create, for the least-loaded tie-break.
    load: Counter[str] = Counter()
    # Fixed host ports, (host, port, protocol) -> deployment: held by the replicas that run (and
    # stay, for those of desired deployments), then by those placed; a host where another deployment
    # holds one of a deployment's ports is no place for it.
    held_ports: dict[tuple[str, int, str], str] = {}
    for d in desired.deployments:
        for c in live_by_dep.get(d.name, ()):
            if c.replica is not None and c.replica < d.replicas and d.placement.matches(next((h.label_map for h in up if h.name == c.host), {})):
                for port, proto in _host_ports(d):
                    held_ports.setdefault((c.host, port, proto), d.name)

    for d in desired.deployments:
        want = L.spec_hash(d)
        eligible_all = [h for h in up if d.placement.matches(h.label_map)]
        eligible_names = {h.name for h in eligible_all}
        eligible = [h for h in eligible_all if h.name not in stale]
        cap = d.capacity_per_host()
        containers = live_by_dep.pop(d.name, [])
        per_host: Counter[str] = Counter()
        by_index: dict[int, list[LiveContainer]] = defaultdict(list)
        surplus: list[tuple[LiveContainer, str]] = []
        for c in containers:
            if c.replica is None or c.replica >= d.replicas:
                surplus.append((c, f"scaled down to {d.replicas}"))
            else:
                by_index[c.replica].append(c)

        kept: dict[int, LiveContainer] = {}
        moved: list[tuple[LiveContainer, str]] = []
        for idx in sorted(by_index):
            candidates = sorted(by_index[idx], key=lambda c: _keeper_rank(c, want))
            chosen: LiveContainer | None = None
            for c in candidates:
                if c.host in eligible_names and (cap is None or per_host[c.host] < cap):
                    chosen = c
                    break
            for c in candidates:
                if c is chosen:
                    continue
                if chosen is not None:
                    surplus.append((c, f"duplicate of replica {idx} (kept {chosen.name} on {chosen.host})"))
                elif c.host not in eligible_names:
                    moved.append((c, f"host {c.host} no longer matches placement ({d.placement.describe_selector()})"))
                else:
                    moved.append((c, f"over the limit of {cap} per host"))
            if chosen is not None:
                kept[idx] = chosen
                per_host[chosen.host] += 1
                load[chosen.host] += 1

        for idx, c in sorted(kept.items()):
            canonical = L.container_name(agent, d.name, idx)
            if c.name != canonical:
                # e.g. the new container of a replace cut off before it took the replica's name
                actions.append(Action(ActionKind.RENAME, c.host, d.name, idx, f"take the replica's name (was {c.name})", c.id, canonical, _PHASE_START))
            if c.spec_hash != want:
                actions.append(
                    Action(ActionKind.REPLACE, c.host, d.name, idx, describe_change(c, d), c.id, c.name, _PHASE_REPLACE)
                )
            elif c.state in ("exited", "created"):
                actions.append(Action(ActionKind.START, c.host, d.name, idx, f"replica is {c.state}", c.id, c.name, _PHASE_START))
            elif c.state == "dead":
                actions.append(Action(ActionKind.REPLACE, c.host, d.name, idx, "replica is dead", c.id, c.name, _PHASE_REPLACE))

        missing = [i for i in range(d.replicas) if i not in kept]
        unplaced: list[int] = []
        taken = {  # eligible hosts where another deployment holds one of d's fixed host ports
            h.name: held_ports[(h.name, port, proto)]
            for h in eligible for port, proto in _host_ports(d)
            if held_ports.get((h.name, port, proto), d.name) != d.name
        }
        for idx in missing:
            options = [h for h in eligible if (cap is None or per_host[h.name] < cap) and h.name not in taken]
            if not options:
                unplaced.append(idx)
                continue
            target = min(options, key=lambda h: (per_host[h.name], load[h.name], order[h.name]))
            per_host[target.name] += 1
            load[target.name] += 1
            for port, proto in _host_ports(d):
                held_ports.setdefault((target.name, port, proto), d.name)
            was = next((c for c, _ in moved if c.replica == idx), None)
            reason = f"replica {idx} of {d.replicas}" + (f", moved from {was.host}" if was else "")
            actions.append(
                Action(ActionKind.CREATE, target.name, d.name, idx, reason, None, L.container_name(agent, d.name, idx), _PHASE_CREATE)
            )
        if unplaced:
            why = _why_unplaced(d, len(unplaced), eligible, fresh, unreachable)
            for other in sorted(set(taken.values())):
                on = ", ".join(sorted(h for h, o in taken.items() if o == other))
                ports = ", ".join(f"{p}/{proto}" for p, proto in _host_ports(d) if any(held_ports.get((h, p, proto)) == other for h in taken))
                why += f"; hostPort {ports} is held by deployment {other} on {on}"
            problems.append(PlacementProblem(d.name, why))

        for c, why in surplus:
            actions.append(Action(ActionKind.REMOVE, c.host, d.name, c.replica, why, c.id, c.name, _PHASE_SURPLUS))
        for c, why in moved:
            actions.append(Action(ActionKind.REMOVE, c.host, d.name, c.replica, why, c.id, c.name, _PHASE_MOVED))

        placement[d.name] = {h: n for h, n in sorted(per_host.items()) if n}
        if not any(a.deployment == d.name for a in actions) and not unplaced:
            noops.append(f"{d.name}: {d.replicas}/{d.replicas} replicas up to date")

    for dep in sorted(live_by_dep):
        for c in live_by_dep[dep]:
            why = f"deployment {dep} is no longer in Git (prune)" if dep else "carries our label but names no deployment"
            actions.append(Action(ActionKind.REMOVE, c.host, dep, c.replica, why, c.id, c.name, _PHASE_SURPLUS))

    actions = [a for a in actions if a.host not in stale]
    actions.sort(key=lambda a: (order.get(a.host, len(order)), a.host, *a.sort_key()))
    return Plan(tuple(actions), tuple(noops), tuple(problems), unreachable, tuple(h.name for h in hosts), placement)


def _host_ports(d: Deployment) -> list[tuple[int, str]]:
    return [(p.host_port, p.protocol) for p in d.ports if p.host_port is not None]


def _why_unplaced(d: Deployment, count: int, eligible: Sequence[HostSettings], up: Sequence[HostSettings], unreachable: Sequence[str]) -> str:
    cap = d.capacity_per_host()
    fits = len(eligible) * cap if cap is not None else None
    parts = [f"{count} of {d.replicas} replicas cannot be placed"]
    if not eligible:
        parts.append(f"no reachable host matches hostSelector {d.placement.describe_selector()} ({len(up)} reachable)")
    elif cap is not None:
        limit = "a fixed hostPort allows 1 per host" if d.one_per_host and (d.placement.max_per_host or 2) >= 1 and cap == 1 else f"maxPerHost is {cap}"
        parts.append(f"{limit} and {len(eligible)} host(s) are eligible, so at most {fits} fit")
    if unreachable:
        parts.append(f"unreachable: {', '.join(unreachable)}")
    return "; ".join(parts)
