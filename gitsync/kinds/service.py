"""The Service kind: a stable name over the replicas its selector picks. Parsed and validated;
plan and apply come with the data plane (see README)."""

from __future__ import annotations

from ..fields import LABEL_KEY_RE, Ctx, Obj, read_int, read_list, read_str_map
from ..models import Service, ServicePort
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
        ports: list[ServicePort] = []
        for pline, path, item in read_list(ctx, spec, "ports"):
            p = Obj(ctx, item, path, pline)
            if not p.ok:
                continue
            port = read_int(ctx, p, "port", None, 1, 65535)
            if port is None and "port" not in p.node:
                ctx.add(pline, f"{path}.port", "is required")
            target = read_int(ctx, p, "targetPort", port, 1, 65535)
            p.finish()
            if port is not None and target is not None:
                ports.append(ServicePort(port, target))
        spec.finish()
        if len(ctx.problems) != before:
            return None
        return Service(head.name, selector, tuple(ports), head.origin)


register(ServiceKind())
