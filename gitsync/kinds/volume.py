"""The Volume kind: data that outlives containers. Declared (driver, options, access mode, shared,
per replica) or implicit (a name a deployment mounts: host-local, ReadWriteOnce). Volumes are made
on a host when a replica that mounts them is created there, carry gitsync's labels, and are never
removed. Checked against the deployments that mount them; planned against the volumes the hosts
have (a driver or options that differ from Git, a name an unmanaged volume already has)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..core import labels as L
from ..core.actions import KindPlan, PlacementProblem, PlanView
from ..core.live import HostObservation, LiveVolume
from ..core.errors import Problem
from ..core.fields import VOLUME_NAME_RE, Ctx, read_bool, read_enum, read_str, read_str_map, shown
from ..core.models import AccessMode, Deployment, DesiredState, Volume
from ..core.policy import volume_refusals
from . import Header, Kind, register

OPTION_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class VolumeKind(Kind):
    name = Volume.KIND
    order = 10
    name_re = VOLUME_NAME_RE  # Docker's rule for volume names (compose's are <project>_<name>)
    name_rule = "letters, digits, '_', '.' and '-', starting with a letter or digit"

    def parse(self, ctx: Ctx, head: Header) -> Volume | None:
        if head.spec is None:
            return Volume(head.name, origin=head.origin)  # no spec: a host-local ReadWriteOnce volume
        spec = head.open_spec(ctx)
        if spec is None:
            return None
        before = len(ctx.problems)
        driver = read_str(ctx, spec, "driver") or "local"
        opts = read_str_map(ctx, spec, "driverOpts", OPTION_KEY_RE, "driver option")
        mode = read_enum(ctx, spec, "accessMode", AccessMode.READ_WRITE_ONCE)
        shared = read_bool(ctx, spec, "shared")
        per_replica = read_bool(ctx, spec, "perReplica")
        external = read_bool(ctx, spec, "external")
        if external and ("driver" in spec.node or "driverOpts" in spec.node or per_replica):
            ctx.add(spec.line_of("external"), "spec.external", "an external volume exists already: it has no driver, driverOpts or perReplica of gitsync's")
        spec.finish()
        if len(ctx.problems) != before:
            return None
        return Volume(head.name, driver, opts, mode, shared, per_replica, external, head.origin)

    def check(self, objects: Sequence[Any], problems: list[Problem], loaded: Mapping[str, Sequence[Any]]) -> None:
        declared = {v.name: v for v in objects}
        for d in loaded.get(Deployment.KIND, ()):
            for m in d.volumes:
                v = declared.get(m.name) or Volume(m.name)
                file, first = (d.origin.file, d.origin.line) if d.origin else ("?", None)
                kind = "declared" if m.name in declared else "implicit (not declared: host-local)"
                if v.access_mode == AccessMode.READ_ONLY_MANY and not m.read_only:
                    problems.append(Problem(file, d.options.lines.get("spec.volumes") or first, f"{d.name}: spec.volumes: {m.name} is ReadOnlyMany; mount it with readOnly: true"))
                elif v.access_mode == AccessMode.READ_WRITE_ONCE and not m.read_only and d.replicas > 1 and not v.per_replica:
                    problems.append(Problem(
                        file, d.options.lines.get("spec.replicas") or first,
                        f"{d.name}: spec.replicas: {d.replicas} replicas cannot share the {kind} ReadWriteOnce volume {m.name} "
                        "(one writer); declare it as a Volume with perReplica: true (each replica its own), accessMode: ReadWriteMany, "
                        "or mount it readOnly",
                    ))

    def plan(self, desired: DesiredState, view: PlanView) -> KindPlan:
        out = KindPlan()
        wanted = _wanted(desired)
        for h in view.up:
            obs = view.observed[h.name]
            for live in obs.volumes:
                v = wanted.get(live.name)
                if v is None:
                    continue
                if v.external:
                    why = external_refusal(live, view)
                    if why:
                        out.problems.append(PlacementProblem(v.name, f"external volume {live.name} on {h.name} {why}; no replica mounts it there"))
                    continue
                if live.owner != view.agent:
                    owner = f"gitsync agent {live.owner}" if live.owner else "no gitsync agent (made by hand or another tool)"
                    out.problems.append(PlacementProblem(v.name, (
                        f"volume {live.name} on {h.name} belongs to {owner}; gitsync does not take over data it did not make: "
                        f"rename the volume in Git, or relabel or remove the one on {h.name} by hand"
                    )))
                elif differs(live, v):
                    out.problems.append(PlacementProblem(v.name, (
                        f"volume {live.name} on {h.name} has driver {live.driver} {_opts(live.options)}, Git says {v.driver} {_opts(v.driver_opts)}; "
                        "Docker cannot change a volume's driver or options: rename it in Git (a new, empty volume), or remove it by hand"
                    )))
        return out


def inventory(desired: DesiredState | None, observed: Mapping[str, HostObservation], agent: str) -> list[dict[str, Any]]:
    """Every volume this agent made, per host: what it holds (the replica bound to it) and whether
    Git still declares it (those it no longer does are kept, never removed)."""
    wanted = _wanted(desired) if desired is not None else {}
    rows = []
    for host, obs in sorted(observed.items()):
        for v in sorted(obs.volumes, key=lambda v: v.name):
            if v.owner != agent or v.role == L.ROLE_FILES:  # files from Git are no data: they come and go with their replicas
                continue
            declared = wanted.get(v.name)
            rows.append({
                "host": host,
                "name": v.name,
                "driver": v.driver,
                "deployment": v.deployment or None,
                "replica": v.replica,
                "state": ("in Git" if declared else "no manifest mounts it any more (kept)") if desired is not None else "unknown",
                "stale": obs.stale,
            })
    return rows


def external_refusal(live: LiveVolume, view: PlanView) -> str | None:
    """Why a replica may not mount this external volume, or None: another agent's data, or options
    that mount what the policy does not allow (an external volume is judged as it is, not as declared)."""
    if live.owner and live.owner != view.agent:
        return f"belongs to gitsync agent {live.owner}: an agent never mounts another's data"
    refused = [why for _, why in volume_refusals(live.driver, dict(live.options), view.policy)]
    return f"is not allowed by this agent's policy ({'; '.join(refused)})" if refused else None


def differs(live: LiveVolume, v: Volume) -> bool:
    """Whether a live volume's driver or options are not what Git declares (options only when declared)."""
    return live.driver != v.driver or bool(v.driver_opts and live.options != tuple(sorted(v.driver_opts)))


def _opts(opts: Sequence[tuple[str, str]]) -> str:
    return "(" + ", ".join(f"{k}={shown(v)}" for k, v in opts) + ")" if opts else "(no options)"


def _wanted(desired: DesiredState) -> dict[str, Volume]:
    """Docker volume name -> declaration, for every volume the deployments mount."""
    out: dict[str, Volume] = {}
    for d in desired.deployments:
        for m in d.volumes:
            v = desired.volume(m.name)
            for i in range(max(d.replicas, 1) if v.per_replica else 1):
                out[v.docker_name(i)] = v
    return out


register(VolumeKind())
