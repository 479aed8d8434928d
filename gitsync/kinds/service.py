"""The Service kind: one stable name and port over the replicas of the deployments its selector
picks. Parsed and checked against the deployments (ports claimed once, hostPorts that cannot
collide, targetPorts the replicas declare); plan and apply come with the data plane (see README)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..actions import KindPlan, PlanView
from ..errors import Problem
from ..fields import LABEL_KEY_RE, Ctx, Obj, read_int, read_list, read_str_map
from ..models import Deployment, DesiredState, Origin, Service, ServicePort, selectors_overlap
from . import Header, Kind, register


class ServiceKind(Kind):
    name = "Service"
    order = 30

    def parse(self, ctx: Ctx, head: Header) -> Service | None:
        spec = head.open_spec(ctx)
        if spec is None:
            return None
        before = len(ctx.problems)
        if spec.get("selector", None) is None:
            ctx.add(spec.line, "spec.selector", "is required")
        selector = read_str_map(ctx, spec, "selector", LABEL_KEY_RE, "label")
        if isinstance(spec.get("selector", None), dict) and not spec.get("selector"):
            ctx.add(spec.line_of("selector"), "spec.selector", "must name at least one label (an empty selector would pick every deployment)")
        host_selector = read_str_map(ctx, spec, "hostSelector", LABEL_KEY_RE, "label")
        ports: list[ServicePort] = []
        seen: set[int] = set()
        for pline, path, item in read_list(ctx, spec, "ports"):
            p = Obj(ctx, item, path, pline)
            if not p.ok:
                continue
            port = read_int(ctx, p, "port", None, 1, 65535)
            if port is None and "port" not in p.node:
                ctx.add(pline, f"{path}.port", "is required")
            target = read_int(ctx, p, "targetPort", port, 1, 65535)
            host_port = read_int(ctx, p, "hostPort", None, 1, 65535)
            p.finish()
            if port is not None and port in seen:
                ctx.add(p.line_of("port"), f"{path}.port", f"{port} is listed twice")
            elif port is not None and target is not None:
                seen.add(port)
                ports.append(ServicePort(port, target, host_port, Origin(ctx.file, pline)))
        if not ports and not spec.get("ports", None):
            ctx.add(spec.line, "spec.ports", "is required: at least one port (port, targetPort)")
        spec.finish()
        if len(ctx.problems) != before:
            return None
        return Service(head.name, selector, tuple(ports), host_selector, head.origin)

    def check(self, objects: Sequence[Any], problems: list[Problem], loaded: Mapping[str, Sequence[Any]]) -> None:
        deployments: Sequence[Deployment] = loaded.get("Deployment", ())
        claimed: dict[int, Service] = {}
        published: list[tuple[int, Service]] = []
        for svc in sorted(objects, key=lambda s: (s.origin.file, s.origin.line) if s.origin else ("", 0)):
            selected = [d for d in deployments if svc.selects(d)]
            for p in svc.ports:
                where = p.origin or svc.origin
                at = (where.file if where else "?", where.line if where else None)
                first = claimed.setdefault(p.port, svc)
                if first is not svc:
                    problems.append(Problem(*at, f"Service {svc.name}: port {p.port} is also the port of Service {first.name} ({first.origin}); "
                                            "one proxy per host serves every Service, so a port belongs to one Service"))
                declared = [d.name for d in selected if any(c.container_port == p.target_port for c in d.ports)]
                if selected and not declared:
                    names = ", ".join(d.name for d in selected)
                    problems.append(Problem(*at, f"Service {svc.name}: targetPort {p.target_port} is not a containerPort of the deployment(s) it selects ({names})"))
                if p.host_port is None:
                    continue
                for other_port, other in published:
                    if other_port == p.host_port and selectors_overlap(svc.host_selector, other.host_selector):
                        problems.append(Problem(*at, f"Service {svc.name}: hostPort {p.host_port} is also published by Service {other.name} ({other.origin}) on hosts both may use"))
                published.append((p.host_port, svc))
                for d in deployments:
                    if any(c.host_port == p.host_port and c.protocol == "tcp" for c in d.ports) and selectors_overlap(svc.host_selector, d.placement.host_selector):
                        problems.append(Problem(*at, f"Service {svc.name}: hostPort {p.host_port} is also a hostPort of deployment {d.name} ({d.origin}), on hosts both may use"))

    def plan(self, desired: DesiredState, view: PlanView) -> KindPlan:
        out = KindPlan()
        for svc in desired.services:
            if not any(svc.selects(d) for d in desired.deployments):
                wanted = ",".join(f"{k}={v}" for k, v in svc.selector)
                out.warnings.append(f"Service {svc.name}: selector {wanted} matches no deployment, so it has no endpoints")
        return out


register(ServiceKind())
