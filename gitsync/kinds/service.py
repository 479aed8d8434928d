"""The Service kind: one stable name and port over the replicas of the deployments its selector
picks. Parsed and checked against the deployments (ports claimed once, hostPorts that cannot
collide, targetPorts the replicas declare). Served by one proxy per host (kinds/proxies.py): the
plan says per host what happens to the proxy and to each Service's endpoints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..core import labels as L
from ..core.actions import PHASE_CREATE, PHASE_REPLACE, PHASE_START, PHASE_SURPLUS, Action, ActionKind, KindPlan, PlacementProblem, PlanView
from .run import Run
from ..core.config import HostSettings
from ..core.errors import Problem
from ..core.fields import LABEL_KEY_RE, Ctx, Obj, read_host_ip, read_int, read_list, read_str_map
from ..core.models import Deployment, DesiredState, NetworkMode, Origin, Service, ServicePort, selectors_overlap
from ..core.health import EndpointStatus, ServiceStatus
from ..core.live import Health, HostObservation
from ..core.proxyconf import backend_name, render, servers
from . import Header, Kind, register
from .endpoints import document_hash, endpoint_name, endpoints, hard_stop, in_slot, members, proxy_document, ready, slots, starting
from .proxies import Proxies


class ServiceKind(Kind):
    name = Service.KIND
    order = 15  # the proxies before the replicas: a replica may reach another Service as it starts

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
            host_ip = read_host_ip(ctx, p, host_port)
            p.finish()
            if port is not None and port in seen:
                ctx.add(p.line_of("port"), f"{path}.port", f"{port} is listed twice")
            elif port is not None and target is not None:
                seen.add(port)
                ports.append(ServicePort(port, target, host_port, host_ip, Origin(ctx.file, pline)))
        if not ports and not spec.get("ports", None):
            ctx.add(spec.line, "spec.ports", "is required: at least one port (port, targetPort)")
        spec.finish()
        if len(ctx.problems) != before:
            return None
        return Service(head.name, selector, tuple(ports), host_selector, head.origin)

    def check(self, objects: Sequence[Any], problems: list[Problem], loaded: Mapping[str, Sequence[Any]]) -> None:
        deployments: Sequence[Deployment] = loaded.get(Deployment.KIND, ())
        index = DesiredState({Deployment.KIND: tuple(deployments)})  # selection by label index: linear in Services
        tcp_host_ports: dict[int, list[Deployment]] = {}
        for d in deployments:
            for c in d.ports:
                if c.host_port is not None and c.protocol == "tcp" and d not in tcp_host_ports.get(c.host_port, []):
                    tcp_host_ports.setdefault(c.host_port, []).append(d)
        published: dict[int, list[Service]] = {}
        for svc in sorted(objects, key=lambda s: (s.origin.file, s.origin.line) if s.origin else ("", 0)):
            selected = list(index.selected(svc).values())
            for d in selected:
                if d.options.network_mode != NetworkMode.BRIDGE:
                    o = svc.origin
                    problems.append(Problem(o.file if o else "?", o.line if o else None, f"Service {svc.name}: selects deployment {d.name}, whose networkMode is "
                                            f"{d.options.network_mode}; a Service reaches replicas on gitsync's network (networkMode bridge, the default)"))
            for p in svc.ports:
                where = p.origin or svc.origin
                at = (where.file if where else "?", where.line if where else None)
                declared = [d.name for d in selected if any(c.container_port == p.target_port for c in d.ports)]
                if selected and not declared:
                    names = ", ".join(d.name for d in selected)
                    problems.append(Problem(*at, f"Service {svc.name}: targetPort {p.target_port} is not a containerPort of the deployment(s) it selects ({names})"))
                if p.host_port is None:
                    continue
                for other in published.get(p.host_port, []):
                    if selectors_overlap(svc.host_selector, other.host_selector):
                        problems.append(Problem(*at, f"Service {svc.name}: hostPort {p.host_port} is also published by Service {other.name} ({other.origin}) on hosts both may use"))
                published.setdefault(p.host_port, []).append(svc)
                for d in tcp_host_ports.get(p.host_port, []):
                    if selectors_overlap(svc.host_selector, d.placement.host_selector):
                        problems.append(Problem(*at, f"Service {svc.name}: hostPort {p.host_port} is also a hostPort of deployment {d.name} ({d.origin}), on hosts both may use"))

    def plan(self, desired: DesiredState, view: PlanView) -> KindPlan:
        out = KindPlan()
        for svc in desired.services:
            if not desired.selected(svc):
                wanted = ",".join(f"{k}={v}" for k, v in svc.selector)
                out.warnings.append(f"Service {svc.name}: selector {wanted} matches no deployment, so it has no endpoints")
        plan_proxies(desired, view, out)
        return out

    def prepare(self, run: Run) -> None:
        if run.desired.services or any(a.object_kind == self.name for a in run.plan.actions):
            run.before_retire.append(Proxies.of(run).retire)
        if run.desired.services:
            run.between_levels.append(Proxies.of(run).settle)

    def apply(self, run: Run, actions: Sequence[Action]) -> None:
        Proxies.of(run).apply(actions)

    def finish(self, run: Run) -> None:
        if run.desired.services and not run.stopping():
            Proxies.of(run).settle()

    def health(self, desired: DesiredState, observed: Mapping[str, HostObservation]) -> dict[str, Any]:
        return {s.name: service_status(s, desired, observed) for s in desired.services}


def service_status(svc: Service, desired: DesiredState, observed: Mapping[str, HostObservation]) -> ServiceStatus:
    """A Service's endpoints and how they stand; degraded when not every replica it selects is ready
    or a reachable host has no running proxy."""
    chosen = list(desired.selected(svc).values())
    wanted = sum(d.replicas for d in chosen)
    slot = slots(desired.services).get(svc.name, 0)
    draining = {
        name for o in observed.values() if o.proxy_config(slot)
        for p in svc.ports for name, (_, weight0) in servers(o.proxy_config(slot) or "").get(backend_name(svc.name, p.port), {}).items() if weight0
    }
    eps: list[EndpointStatus] = []
    for c, d in members(svc, desired, observed):
        if endpoint_name(c) in draining:
            state = "draining"
        elif ready(c, d):
            state = "ready"
        else:
            state = "starting" if starting(c, d) else "down"
        eps.append(EndpointStatus(c.name, c.host, state))
    n_ready = sum(1 for e in eps if e.state == "ready")
    why = [f"{e.name} on {e.host} is {e.state}" for e in eps if e.state != "ready"]
    if not chosen:
        why.append("the selector matches no deployment")
    elif wanted > len(eps):
        why.append(f"{wanted - len(eps)} replica(s) not running")
    no_proxy = sorted(h for h, o in observed.items() if o.reachable and not o.stale and not any(c.running and c.slot == slot for c in o.proxies))
    if no_proxy:
        why.append(f"no proxy running on {', '.join(no_proxy)}")
    message = f"{n_ready} of {max(wanted, len(eps))} endpoints ready" + (": " + "; ".join(why[:4]) if why else "")
    if n_ready >= wanted and chosen and not no_proxy:
        health = Health.HEALTHY
    elif n_ready == 0 and wanted > 0 and any(e.state == "starting" for e in eps) and not no_proxy:
        health = Health.PROGRESSING
    else:
        health = Health.DEGRADED
    ports = tuple(f"{p.port} -> {p.target_port}" + (f", hostPort {p.host_port}" if p.host_port else "") for p in svc.ports)
    return ServiceStatus(svc.name, health, message, tuple(eps), ports)


PROXY = "proxy"  # the object name of the proxy's own actions (one proxy per host serves every Service)


def _proxy_change(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    if old is None:
        return "created by an older gitsync or changed outside Git"
    parts = []
    if old.get("image") != new["image"]:
        parts.append(f"image {old.get('image')} -> {new['image']}")
    names = lambda doc: {*(doc.get("aliases") or ()), *(n for ns in (doc.get("networks") or {}).values() for n in ns)}  # noqa: E731
    was, now = names(old), names(new)
    parts += [f"Service {n} added" for n in sorted(now - was)] + [f"Service {n} removed" for n in sorted(was - now)]
    if old.get("networks") != new.get("networks") and was == now:
        parts.append("networks " + (", ".join(new.get("networks") or {}) or "the agent's one network only"))
    if old.get("published") != new["published"]:
        parts.append("publishes " + (", ".join(_published(e) for e in new["published"]) or "no port"))
    if old.get("network") != new["network"]:
        parts.append(f"network {new['network']}")
    return "; ".join(parts) or "spec hash differs (labels edited by hand?)"


def _published(entry: Sequence[Any]) -> str:
    """A published port of a proxy document: [hostPort, port] or [hostPort, port, hostIP]."""
    return f"{entry[2]}:{entry[0]}->{entry[1]}" if len(entry) > 2 else f"{entry[0]}->{entry[1]}"


def proxy_object(slot: int) -> str:
    """The object name of a proxy's own actions: "proxy", "proxy-1", ..."""
    return PROXY if not slot else f"{PROXY}-{slot}"


def _plan_proxy(desired: DesiredState, view: PlanView, out: KindPlan, h: HostSettings, obs: HostObservation, slot: int,
                services: list[Service], settings: Mapping[str, HostSettings], network: str) -> None:
    """One slot's proxy on one host (created, replaced, started or removed) and its Services' endpoints."""
    proxy_name, obj = L.proxy_name(view.agent, slot), proxy_object(slot)
    live = sorted((c for c in obs.proxies if c.slot == slot), key=lambda c: (not c.running, -c.created, c.id))
    for extra in live[1:]:
        out.actions.append(Action(ActionKind.REMOVE, h.name, obj, None, "a second proxy of this slot on this host", extra.id, extra.name, PHASE_SURPLUS, Service.KIND))
    proxy = live[0] if live else None
    if not services:
        if proxy is not None:
            why = "no Service is left: the proxy goes" if not desired.services else "no Service needs this proxy any more (its Services' ports are free on another)"
            out.actions.append(Action(ActionKind.REMOVE, h.name, obj, None, why, proxy.id, proxy.name, PHASE_SURPLUS, Service.KIND))
        return
    doc = proxy_document(view.services.proxy_image, network, services, h, desired, slot)
    fresh_proxy = proxy is None or proxy.spec_hash != document_hash(doc)
    if proxy is None:
        published = ", ".join(_published(e) for e in doc["published"])
        names = sorted({*doc["aliases"], *(n for ns in (doc.get("networks") or {}).values() for n in ns)})
        why = f"the Services' proxy ({view.services.proxy_image}) for {', '.join(names)}" + (f"; publishes {published}" if published else "")
        if slot:
            why += f" (a proxy of its own: another one serves their port{'s' if len(names) > 1 else ''} already)"
        out.actions.append(Action(ActionKind.CREATE, h.name, obj, None, why, None, proxy_name, PHASE_CREATE, Service.KIND))
    elif fresh_proxy:
        out.actions.append(Action(ActionKind.REPLACE, h.name, obj, None, _proxy_change(proxy.spec_document(), doc), proxy.id, proxy.name, PHASE_REPLACE, Service.KIND))
    elif not proxy.running:
        out.actions.append(Action(ActionKind.START, h.name, obj, None, f"the proxy is {proxy.state}", proxy.id, proxy.name, PHASE_START, Service.KIND))
    eps, _ = endpoints(h.name, desired, view.observed, settings, network)
    text = render(services, eps, hard_stop(desired), view.services.proxy_threads)
    have = servers(obs.proxy_config(slot) or "") if not fresh_proxy else {}
    unjoined = sorted({c.name for s in services for c, dep in members(s, desired, {h.name: obs}) if not dep.options.networks and c.address_on(network) is None})
    reloads = 0
    for svc in sorted(services, key=lambda s: s.name):
        changes: list[str] = []
        for p in sorted(svc.ports, key=lambda p: p.port):
            now = {e.name: f"[{e.address}]:{e.port}" if ":" in e.address else f"{e.address}:{e.port}" for e in eps.get((svc.name, p.port), ())}
            was = {n: a for n, (a, _) in have.get(backend_name(svc.name, p.port), {}).items()}
            tag = f":{p.port}" if len(svc.ports) > 1 else ""
            changes += [f"+{n}{tag}" for n in sorted(set(now) - set(was))]
            changes += [f"-{n}{tag}" for n in sorted(set(was) - set(now))]
            changes += [f"~{n}{tag}" for n in sorted(set(now) & set(was)) if now[n] != was[n]]
        if fresh_proxy:
            continue  # the new proxy starts with them
        if changes:
            reloads += 1
            out.actions.append(Action(ActionKind.RELOAD, h.name, svc.name, None, "endpoints " + ", ".join(changes), proxy.id if proxy else None, proxy_name, PHASE_REPLACE, Service.KIND))
    if not fresh_proxy and proxy is not None and not reloads:
        if unjoined:
            out.actions.append(Action(ActionKind.RELOAD, h.name, obj, None, f"{', '.join(unjoined)} join(s) the network {network}", proxy.id, proxy_name, PHASE_REPLACE, Service.KIND))
        elif obs.proxy_config(slot) != text:
            out.actions.append(Action(ActionKind.RELOAD, h.name, obj, None, "configuration changed" if obs.proxy_config(slot) else "configuration unknown", proxy.id, proxy_name, PHASE_REPLACE, Service.KIND))


def plan_proxies(desired: DesiredState, view: PlanView, out: KindPlan) -> None:
    """Per reachable host: the proxy (created, replaced, started or removed) and each Service's
    endpoints on it (a reload when they changed)."""
    services = desired.services
    network = L.network_name(view.agent)
    settings = {h.name: h for h in view.hosts}
    spread = {c.host for s in services for c, _ in members(s, desired, view.observed)}
    for h in view.hosts:
        if h.reach is None and len(spread) > 1 and h.name in spread:
            out.problems.append(PlacementProblem(PROXY, f"host {h.name} has no address the other hosts' proxies can reach its replicas on: set hosts[].address for it (its url is {h.url})"))
    chosen = slots(services)
    for h in view.fresh:
        obs = view.observed[h.name]
        wanted = set(chosen.values())
        for slot in sorted({c.slot for c in obs.proxies} | wanted):
            _plan_proxy(desired, view, out, h, obs, slot, in_slot(services, slot), settings, network)
    for svc in services:
        if not any(a.deployment == svc.name and a.object_kind == Service.KIND for a in out.actions):
            n = sum(1 for c, d in members(svc, desired, view.observed) if ready(c, d))
            out.noops.append(f"Service {svc.name}: {n} endpoint(s) ready")


register(ServiceKind())
