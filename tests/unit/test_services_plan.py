"""The Service kind's plan and status, from observed hosts: a proxy per host (publishing hostPorts
only where the hostSelector says), endpoints diffed against the configuration the proxy runs,
reasons a person can act on."""

from __future__ import annotations

from gitsync.core import config as config_mod
from gitsync.core import labels as L
from gitsync.core.actions import ActionKind
from gitsync.kinds import assess
from gitsync.kinds.endpoints import config_for, document_hash, proxy_document, proxy_labels
from gitsync.core.live import Health, HostObservation, LiveContainer
from gitsync.core.manifest import load_files
from gitsync.agent.metrics import Metrics
from gitsync.runtimes.containers.plan import make_plan

CFG = config_mod.parse(
    "name: t\nsource: {url: /tmp/r}\nservices: {proxyImage: 'haproxy:3.0.5'}\nhosts:\n"
    "  - {name: h1, url: 'tcp://10.0.0.1:2375', labels: {role: edge}}\n"
    "  - {name: h2, url: 'tcp://10.0.0.2:2375'}\n",
    "gitsync.yaml",
)
NET = L.network_name("t")
FILES = {
    "web.yaml": (
        "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: web, labels: {app: web}}\n"
        "spec: {replicas: 2, image: 'web:1', ports: [{containerPort: 80}]}\n"
    ).encode(),
    "svc.yaml": (
        "apiVersion: gitsync.io/v1\nkind: Service\nmetadata: {name: web}\n"
        "spec: {selector: {app: web}, ports: [{port: 80, targetPort: 80, hostPort: 8080}], hostSelector: {role: edge}}\n"
    ).encode(),
}


def replica(host: str, index: int, ip: str, public: int, state: str, spec_hash: str) -> LiveContainer:
    return LiveContainer(
        f"id-{host}-{index}", f"t_web-{index}", host, "web", index, spec_hash, "", state, None, 1, "web:1",
        networks=((NET, ip),), published=((80, "tcp", public, "10.0.0." + host[-1]),),
    )


def proxy(host: str, desired, config: str | None) -> tuple[LiveContainer, str | None]:  # type: ignore[no-untyped-def]
    h = next(x for x in CFG.hosts if x.name == host)
    doc = proxy_document("haproxy:3.0.5", NET, desired.services, h)
    labels = proxy_labels("t", doc, "r")
    return LiveContainer(f"proxy-{host}", "t-proxy", host, "", None, document_hash(doc), "r", "running", None, 1, "haproxy:3.0.5",
                         spec=labels[L.SPEC], role=L.ROLE_PROXY), config


def observed(desired, with_proxy: bool, web_state: str = "running", config: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    want = L.spec_hash(desired.deployment("web"))
    reps = {"h1": replica("h1", 0, "172.20.0.2", 32768, web_state, want), "h2": replica("h2", 1, "172.21.0.2", 32769, web_state, want)}
    out = {}
    for h in ("h1", "h2"):
        p, cfg = proxy(h, desired, (config or {}).get(h)) if with_proxy else (None, None)
        out[h] = HostObservation(h, True, tuple(x for x in (reps[h], p) if x is not None), proxy_configs={0: cfg} if cfg is not None else {})
    return out


def test_a_proxy_per_host_publishing_only_on_edge_hosts() -> None:
    desired = load_files(FILES)
    plan = make_plan(desired, observed(desired, with_proxy=False), CFG.hosts, "t", CFG.services)
    creates = [a for a in plan.actions if a.object_kind == "Service"]
    assert [(a.kind, a.host) for a in creates] == [(ActionKind.CREATE, "h1"), (ActionKind.CREATE, "h2")]
    assert "publishes 8080->80" in creates[0].reason and "publishes" not in creates[1].reason
    assert proxy_document("x", NET, desired.services, CFG.hosts[1])["published"] == []


def test_endpoints_local_by_network_address_remote_by_published_port() -> None:
    desired = load_files(FILES)
    obs = observed(desired, with_proxy=True)
    text, notes = config_for("h1", desired, obs, {h.name: h for h in CFG.hosts}, NET)
    assert "server t_web-0.h1 172.20.0.2:80\n" in text  # on h1: its address on the network
    assert "server t_web-1.h2 10.0.0.2:32769\n" in text  # on h2: the port published on h2's address
    assert notes == []
    # the proxies run an older configuration: a reload per host, saying which endpoints change
    old = {"h1": text.replace("    server t_web-1.h2 10.0.0.2:32769\n", ""), "h2": None}
    plan = make_plan(desired, observed(desired, with_proxy=True, config=old), CFG.hosts, "t", CFG.services)
    reloads = {a.host: a.reason for a in plan.actions if a.kind == ActionKind.RELOAD}
    assert reloads["h1"] == "endpoints +t_web-1.h2"
    assert "+t_web-0.h1" in reloads["h2"] and "+t_web-1.h2" in reloads["h2"]
    # in sync: no action, and the noop says how many endpoints are ready
    now = {h: config_for(h, desired, obs, {x.name: x for x in CFG.hosts}, NET)[0] for h in ("h1", "h2")}
    plan = make_plan(desired, observed(desired, with_proxy=True, config=now), CFG.hosts, "t", CFG.services)
    assert plan.in_sync and "Service web: 2 endpoint(s) ready" in plan.noops


def test_no_service_left_removes_the_proxies_and_a_unix_host_needs_an_address() -> None:
    desired = load_files(FILES)
    obs = observed(desired, with_proxy=True)
    gone = load_files({"web.yaml": FILES["web.yaml"]})
    plan = make_plan(gone, obs, CFG.hosts, "t", CFG.services)
    assert [(a.kind, a.host, a.reason) for a in plan.actions] == [
        (ActionKind.REMOVE, h, "no Service is left: the proxy goes") for h in ("h1", "h2")
    ]
    unix = config_mod.parse(
        "name: t\nsource: {url: /tmp/r}\nhosts:\n  - {name: h1, url: 'unix:///a.sock'}\n  - {name: h2, url: 'tcp://10.0.0.2:2375'}\n", "g.yaml"
    )
    plan = make_plan(desired, obs, unix.hosts, "t", unix.services)
    assert any("host h1 has no address" in str(p) and "hosts[].address" in str(p) for p in plan.problems)


def test_status_counts_ready_endpoints_and_says_why_the_others_are_not() -> None:
    desired = load_files(FILES)
    up = assess(desired, observed(desired, with_proxy=True), "Service")["web"]
    assert up.health == Health.HEALTHY and up.message == "2 of 2 endpoints ready"
    down = assess(desired, observed(desired, with_proxy=True, web_state="exited"), "Service")["web"]
    assert down.health == Health.DEGRADED
    assert down.message == "0 of 2 endpoints ready: t_web-0 on h1 is down; t_web-1 on h2 is down"
    # draining: the proxy runs it at weight 0
    obs = observed(desired, with_proxy=True)
    text, _ = config_for("h1", desired, obs, {h.name: h for h in CFG.hosts}, NET, draining={"id-h2-1"})
    assert "t_web-1.h2 10.0.0.2:32769 weight 0" in text
    st = assess(desired, observed(desired, with_proxy=True, config={"h1": text}), "Service")["web"]
    assert [(e.name, e.state) for e in st.endpoints] == [("t_web-0", "ready"), ("t_web-1", "draining")]
    m = Metrics("t")
    m.services({"web": st})
    text_metrics = m.render().decode()
    assert 'gitsync_service_endpoints{service="web",state="draining"} 1.0' in text_metrics
    assert 'gitsync_service_degraded{service="web"} 1.0' in text_metrics


def test_without_a_healthcheck_a_replica_is_an_endpoint_once_it_ran_min_ready_seconds() -> None:
    from dataclasses import replace

    files = dict(FILES)
    files["web.yaml"] = files["web.yaml"].replace(b"ports: [{containerPort: 80}]}", b"ports: [{containerPort: 80}], minReadySeconds: 10s}")
    desired = load_files(files)
    obs = observed(desired, with_proxy=True)
    young = {h: replace(o, containers=tuple(replace(c, uptime=3.0) if not c.role else c for c in o.containers)) for h, o in obs.items()}
    settings = {h.name: h for h in CFG.hosts}
    text, _ = config_for("h1", desired, young, settings, NET)
    assert "    server " not in text  # up 3 s of 10: no endpoint yet
    st = assess(desired, young, "Service")["web"]
    assert [e.state for e in st.endpoints] == ["starting", "starting"] and st.health == Health.PROGRESSING
    grown = {h: replace(o, containers=tuple(replace(c, uptime=15.0) if not c.role else c for c in o.containers)) for h, o in obs.items()}
    text, _ = config_for("h1", desired, grown, settings, NET)
    assert text.count("    server ") == 2


def test_two_services_on_one_port_get_a_proxy_each_and_one_left_alone_goes() -> None:
    both = {**FILES, "svc2.yaml": (
        "apiVersion: gitsync.io/v1\nkind: Service\nmetadata: {name: web2}\n"
        "spec: {selector: {app: web}, ports: [{port: 80, targetPort: 80}]}\n"
    ).encode()}
    desired = load_files(both)
    plan = make_plan(desired, observed(desired, with_proxy=False), CFG.hosts, "t", CFG.services)
    made = sorted((a.host, a.container_name, a.deployment) for a in plan.actions if a.kind == ActionKind.CREATE)
    assert made == [("h1", "t-proxy", "proxy"), ("h1", "t-proxy-1", "proxy-1"), ("h2", "t-proxy", "proxy"), ("h2", "t-proxy-1", "proxy-1")]
    second = next(a for a in plan.actions if a.container_name == "t-proxy-1")
    assert "for web2" in second.reason and "another one serves their port already" in second.reason
    settings = {h.name: h for h in CFG.hosts}
    first, other = (config_for("h1", desired, observed(desired, True), settings, NET, slot=s)[0] for s in (0, 1))
    assert "frontend svc-web-80" in first and "web2" not in first and "frontend svc-web2-80" in other and "frontend svc-web-80" not in other
    doc = proxy_document("haproxy:3.0.5", NET, [s for s in desired.services if s.name == "web2"], CFG.hosts[0], desired, 1)
    assert doc["slot"] == 1 and doc["aliases"] == ["web2"] and doc["published"] == []
    # web2 gone: the second proxy of each host goes, the first stays as it was
    h = CFG.hosts[0]
    extra = LiveContainer("p1", "t-proxy-1", "h1", "", None, document_hash(doc), "r", "running", None, 1, "haproxy:3.0.5",
                          spec=proxy_labels("t", doc, "r")[L.SPEC], role=L.ROLE_PROXY)
    assert extra.slot == 1 and h.name == "h1"
    single = load_files(FILES)
    obs = observed(single, with_proxy=True)
    obs["h1"] = HostObservation("h1", True, (*obs["h1"].containers, extra))
    plan = make_plan(single, obs, CFG.hosts, "t", CFG.services)
    gone = [(a.kind, a.host, a.container_name, a.reason) for a in plan.actions if a.container_name == "t-proxy-1"]
    assert gone == [(ActionKind.REMOVE, "h1", "t-proxy-1", "no Service needs this proxy any more (its Services' ports are free on another)")]
