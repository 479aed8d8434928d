"""Services on three real engines, with real HAProxy and real traffic: one name and port over the
ready replicas, wherever they run; no failed request through rollouts, scaling and prunes."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import requests

import pytest

from gitsync.core.config import load as load_config
from gitsync.adapters.hosts import Hosts
from gitsync.kinds.proxies import ConfigRefused, put_config
from gitsync.core.proxyconf import CONFIG_PATH
from tests import testbed
from tests.conftest import GitRepo, cli
from tests.fakeforge import FakeForge
from tests.integration.conftest import Fleet
from tests.integration.test_agent import AgentProc, push_body, statuses, wait_for
from tests.load import Load

pytestmark = pytest.mark.docker

SERVE = 'hostname > /www/index.html; trap "exit 0" TERM; httpd -f -p 80 -h /www & wait'


def web(replicas: int = 3, image: str = "gitsync-test/busybox:1", extra: str = "", placement: str = "") -> str:
    return (
        "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: web, labels: {app: web}}\n"
        f"spec:\n  replicas: {replicas}\n  image: {image}\n  command: [sh, -c, '{SERVE}']\n"
        "  ports: [{containerPort: 80}]\n  stopGracePeriod: 2s\n"
        + (f"  placement: {placement}\n" if placement else "")
        + extra
    )


SERVICE = (
    "apiVersion: gitsync.io/v1\nkind: Service\nmetadata: {name: web}\n"
    "spec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 80, hostPort: 8080}]\n"
)


OTHER = (
    "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: other, labels: {app: other}}\n"
    "spec:\n  image: gitsync-test/busybox:1\n  command: [sh, -c, 'echo other > /www/index.html; trap \"exit 0\" TERM; httpd -f -p 80 -h /www & wait']\n"
    "  ports: [{containerPort: 80}]\n  stopGracePeriod: 2s\n---\n"
    "apiVersion: gitsync.io/v1\nkind: Service\nmetadata: {name: web2}\nspec:\n  selector: {app: other}\n  ports: [{port: 80, targetPort: 80}]\n"
)


def setup(fleet: Fleet, replicas: int = 3, extra: str = "", placement: str = "") -> None:
    fleet.write_config(extra_hosts=f"services: {{proxyImage: '{testbed.PROXY_IMAGE}'}}\n")
    fleet.repo.write("apps/web.yaml", web(replicas, extra=extra, placement=placement))
    fleet.repo.write("apps/web-service.yaml", SERVICE)
    fleet.repo.commit("web behind a Service")


def apply(fleet: Fleet) -> str:
    r = cli("apply", "-c", str(fleet.config), "--timeout", "60s")
    assert r.code == 0, r.out + r.err
    return r.out


def apply_under_load(fleet: Fleet, host: str, workers: int = 4) -> tuple[str, Load]:
    """`gitsync apply` while requests stream to `host`:8080, half a second of them before and after."""
    with Load(addr(fleet, host), 8080, workers=workers) as load:
        time.sleep(0.5)
        out = apply(fleet)
        time.sleep(0.5)
    return out, load


def addr(fleet: Fleet, host: str) -> str:
    return next(e.addr for e in fleet.engines if e.name == host)


def in_container(fleet: Fleet, host: str, name: str, script: str) -> tuple[int, str]:
    api = fleet.clients[host]
    ex = api.exec_create(name, ["sh", "-c", script])
    out = api.exec_start(ex["Id"]).decode(errors="replace")
    return api.exec_inspect(ex["Id"])["ExitCode"], out


# the static busybox cannot use glibc's resolver: ask Docker's embedded DNS, then connect by address
BY_NAME = "wget -q -O- http://$(nslookup {name} 127.0.0.11 | awk '/^Address/ {{a=$2}} END {{print a}}'):{port}/"


def test_a_service_answers_by_name_on_every_host_and_on_every_edge_hosts_port(fleet: Fleet) -> None:
    setup(fleet, replicas=2, placement="{hostSelector: {role: web}}")  # replicas on h1 and h2, none on h3
    fleet.repo.write(
        "apps/client.yaml",
        "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: client}\n"
        "spec:\n  image: gitsync-test/busybox:1\n  command: [sleep, '3600']\n  placement: {hostSelector: {role: db}}\n",
    )
    fleet.repo.commit("a client on h3")
    r = cli("plan", "-c", str(fleet.config))
    assert r.code == 2, r.out + r.err
    assert f"+ {fleet.agent}-proxy" in r.out and "publishes 8080->80" in r.out
    out = apply(fleet)
    assert "FAILED" not in out, out
    for h in ("h1", "h2", "h3"):
        assert f"{fleet.agent}-proxy" in fleet.by_host()[h]
    # by name, from h3, whose replicas all run elsewhere
    answered = set()
    for _ in range(6):
        code, body = in_container(fleet, "h3", f"{fleet.agent}_client-0", BY_NAME.format(name="web", port=80))
        assert code == 0, body
        answered.add(body.strip())
    assert len(answered) == 2, answered  # both replicas, on the two other hosts
    # from outside, on every edge host (every host here), also h3 which runs no replica
    for h in ("h1", "h2", "h3"):
        with Load(addr(fleet, h), 8080, workers=1) as load:
            time.sleep(0.5)
        assert load.tally.ok > 0 and load.tally.failed == 0, (h, load.tally)
    # in sync: nothing more to do, and the plan says what the Service has
    r = cli("plan", "-c", str(fleet.config))
    assert r.code == 0 and "Service web: 2 endpoint(s) ready" in r.out, r.out
    r = cli("hosts", "-c", str(fleet.config))
    assert r.code == 0 and r.out.count("running: web 1, the Services' proxy\n") == 2 and "running: client 1, the Services' proxy\n" in r.out, r.out
    # a configuration HAProxy refuses is not put in place: the proxy keeps serving the one it runs
    engine = Hosts(load_config(str(fleet.config)).hosts, fleet.agent).engine("h3")
    proxy = f"{fleet.agent}-proxy"
    running = engine.read_file(proxy, CONFIG_PATH)
    with pytest.raises(ConfigRefused, match="HAProxy refused") as refused:
        put_config(engine, proxy, running.decode().replace("balance leastconn", "balance no-such-algorithm"))
    line = running.decode().splitlines().index("    balance leastconn") + 1
    assert f"haproxy.cfg:{line}" in str(refused.value) and "balance only supports" in str(refused.value)  # HAProxy's own words, located
    assert engine.read_file(proxy, CONFIG_PATH) == running
    with Load(addr(fleet, "h3"), 8080, workers=1) as load:
        time.sleep(0.3)
    assert load.tally.ok > 0 and load.tally.failed == 0
    # published on one address of the hosts only (compose's 127.0.0.1:8080:80): the proxies bind there
    fleet.repo.write("apps/web-service.yaml", SERVICE.replace("hostPort: 8080}", "hostPort: 8080, hostIP: 127.0.0.1}"))
    fleet.repo.commit("the Service on the hosts' loopback only")
    r = cli("plan", "-c", str(fleet.config))
    assert "publishes 127.0.0.1:8080->80" in r.out, r.out
    apply(fleet)
    assert fleet.clients["h3"].inspect_container(proxy)["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}
    with pytest.raises(OSError):
        socket.create_connection((addr(fleet, "h3"), 8080), timeout=2).close()
    # a second Service on the same port (two compose services that both listen on 80): a proxy of its
    # own on each host, so each name reaches its own replicas; when it goes, so does that proxy
    fleet.repo.write("apps/other.yaml", OTHER)
    fleet.repo.commit("another Service on port 80")
    r = cli("plan", "-c", str(fleet.config))
    assert r.out.count(f"+ {fleet.agent}-proxy-1") == 3 and f"~ {fleet.agent}-proxy " not in r.out, r.out
    apply(fleet)
    for _ in range(3):
        assert in_container(fleet, "h3", f"{fleet.agent}_client-0", BY_NAME.format(name="web2", port=80)) == (0, "other\n")
        code, body = in_container(fleet, "h3", f"{fleet.agent}_client-0", BY_NAME.format(name="web", port=80))
        assert code == 0 and body.strip() and body != "other\n", body
    (fleet.repo.path / "apps/other.yaml").unlink()
    fleet.repo.commit("the other Service goes")
    r = cli("plan", "-c", str(fleet.config))
    assert r.out.count(f"- {fleet.agent}-proxy-1") == 3, r.out
    apply(fleet)
    assert not any(f"{fleet.agent}-proxy-1" in names for names in fleet.by_host().values())
    # the Service leaves Git: the proxies go, the replicas stay as they are
    before = {n: i for n, i in fleet.ids().items() if "-proxy" not in n}
    (fleet.repo.path / "apps/web-service.yaml").unlink()
    fleet.repo.commit("no Service")
    r = cli("plan", "-c", str(fleet.config))
    assert r.out.count(f"- {fleet.agent}-proxy") == 3 and "no Service is left" in r.out, r.out
    apply(fleet)
    assert fleet.ids() == before


def test_rollouts_and_scale_down_behind_a_service_fail_no_request(fleet: Fleet) -> None:
    setup(fleet, replicas=3)  # one replica on each host
    apply(fleet)
    steps = [
        ("start-first rolling update", web(3, image="gitsync-test/busybox:2")),
        ("stop-first rolling update", web(3, image="gitsync-test/busybox:3", extra="  update: {order: stop-first}\n")),
        ("scale down", web(1, image="gitsync-test/busybox:3", extra="  update: {order: stop-first}\n")),
    ]
    for what, doc in steps:
        fleet.repo.write("apps/web.yaml", doc)
        fleet.repo.commit(what)
        out, load = apply_under_load(fleet, "h1")
        assert "FAILED" not in out, out
        if what == "stop-first rolling update":  # what each replica waited for, as it went
            for n in range(3):
                assert f"/{fleet.agent}_web-{n}: draining: out of the Services' rotation, finishing what is in flight (up to 1s)" in out, out
                assert f"/{fleet.agent}_web-{n}: stopping: SIGTERM, then SIGKILL after 2s (up to 2s)" in out, out
        assert load.tally.ok > 50, (what, load.tally)
        assert load.tally.failed == 0, (what, load.tally.failed, load.tally.errors, out)
    with Load(addr(fleet, "h2"), 8080, workers=2) as load:
        time.sleep(0.5)
    assert len(load.tally.bodies) == 1 and load.tally.failed == 0, load.tally  # only the replica left answers
    # prune: a second deployment the Service selects leaves Git while traffic flows
    fleet.repo.write("apps/canary.yaml", web(2).replace("name: web,", "name: canary,"))
    fleet.repo.commit("a canary")
    apply(fleet)
    (fleet.repo.path / "apps" / "canary.yaml").unlink()
    fleet.repo.commit("no canary")
    out, load = apply_under_load(fleet, "h1")
    assert out.count("remove ok") == 2, out
    # and it said what it waited for while it worked (a pruned deployment's endpoints left with the reload)
    assert f"/{fleet.agent}_canary-0: stopping: SIGTERM, then SIGKILL after" in out, out
    assert load.tally.ok > 50 and load.tally.failed == 0, (load.tally.failed, load.tally.errors, out)


def test_a_stop_first_rollout_with_a_healthcheck_fails_no_request_through_an_edge_host_without_replicas(fleet: Fleet) -> None:
    """Issue 20, item 15: 3 replicas on 2 hosts, each endpoint remote to the edge host the load goes to."""
    health = "  healthcheck: {test: [CMD, wget, -q, -O, /dev/null, 'http://127.0.0.1/'], interval: 1s, retries: 3}\n  update: {order: stop-first}\n"
    setup(fleet, replicas=3, extra=health, placement="{hostSelector: {role: web}}")
    apply(fleet)
    fleet.repo.write("apps/web.yaml", web(3, image="gitsync-test/busybox:2", extra=health, placement="{hostSelector: {role: web}}"))
    fleet.repo.commit("new image, stop-first")
    out, load = apply_under_load(fleet, "h3", workers=8)
    assert out.count("replace ok") == 3, out
    assert load.tally.ok > 50 and load.tally.failed == 0, (load.tally.failed, load.tally.errors, out)


def _failing_window(load: Load, since: float) -> float:
    """How long after `since` requests still failed (0 when none did)."""
    t = load.tally
    return 0.0 if t.last_failure is None else max(0.0, t.last_failure - since)


def test_a_dead_replica_a_dead_engine_and_a_cut_network_leave_rotation_within_seconds(fleet: Fleet) -> None:
    setup(fleet, replicas=3)
    apply(fleet)
    h2 = next(e for e in fleet.engines if e.name == "h2")
    replica = next(c for c in fleet.containers("h2") if c["Labels"].get("io.gitsync.deployment") == "web")
    try:
        with Load(addr(fleet, "h1"), 8080, workers=4, timeout=5.0) as load:
            time.sleep(0.5)
            t = time.monotonic()
            fleet.clients["h2"].kill(replica["Id"])  # a replica dies
            time.sleep(3)
        assert load.tally.ok > 50 and _failing_window(load, t) <= 1.5, load.tally  # the proxies' checks (1 s) take it out
        with Load(addr(fleet, "h1"), 8080, workers=4, timeout=5.0) as load:
            time.sleep(0.5)
            t = time.monotonic()
            testbed.set_link(h2, False)  # a host's network is cut
            time.sleep(4)
        assert load.tally.ok > 50 and _failing_window(load, t) <= 2.5, load.tally
        testbed.set_link(h2, True)
        apply(fleet)  # the replica killed above comes back
        with Load(addr(fleet, "h1"), 8080, workers=4, timeout=5.0) as load:
            time.sleep(0.5)
            t = time.monotonic()
            testbed.kill(h2)  # a host's engine dies
            time.sleep(3)
        assert load.tally.ok > 50 and _failing_window(load, t) <= 2.5, load.tally
    finally:
        testbed.set_link(h2, True)
        testbed.start(h2)


def test_the_agent_reports_services_on_the_commit_the_api_the_dashboard_and_metrics(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    up = GitRepo(tmp_path / "up" / "deploy")
    up.write("apps/web.yaml", web(3))
    up.write("apps/web-service.yaml", SERVICE)
    sha = up.commit("web behind a Service")
    agent = AgentProc(fleet, up, github_forge, tmp_path, config_extra=f"services: {{proxyImage: '{testbed.PROXY_IMAGE}'}}\n")

    def web_ready(n: int) -> bool:
        svc = requests.get(agent.url + "/api/status", timeout=5).json().get("services", {}).get("web")
        return bool(svc) and svc["health"] == "Healthy" and [e["state"] for e in svc["endpoints"]] == ["ready"] * n

    try:
        wait_for(lambda: any(s == "success" and "1/1 Service ready" in d for s, d in statuses(github_forge, sha)), 90)
        assert web_ready(3)
        assert 'gitsync_service_endpoints{service="web",state="ready"} 3.0' in requests.get(agent.url + "/metrics", timeout=5).text
        page = requests.get(agent.url + "/", timeout=5).text
        assert "<h2>Services</h2>" in page and "3 of 3 endpoints ready" in page
        # a replica dies: the agent brings it back (the Docker event) and it is an endpoint again
        victim = next(c for c in fleet.containers("h2") if c["Labels"].get("io.gitsync.deployment") == "web")
        with Load(addr(fleet, "h1"), 8080, workers=2, timeout=5.0) as load:
            fleet.clients["h2"].remove_container(victim["Id"], force=True)
            time.sleep(1)
            wait_for(lambda: web_ready(3), 30)
        assert load.tally.ok > 0
        # a Service with no endpoint at all: the commit says so
        up.write(
            "apps/ghost.yaml",
            "apiVersion: gitsync.io/v1\nkind: Service\nmetadata: {name: ghost}\nspec: {selector: {app: ghost}, ports: [{port: 81}]}\n",
        )
        sha2 = up.commit("a Service nothing serves")
        assert agent.hook(push_body(sha2)).status_code == 202
        said = "ghost: 0 of 0 endpoints ready: the selector matches no deployment"
        wait_for(lambda: any(s == "failure" and said in d for s, d in statuses(github_forge, sha2)), 60)
        assert 'gitsync_service_degraded{service="ghost"} 1.0' in requests.get(agent.url + "/metrics", timeout=5).text
    finally:
        assert agent.stop() == 0
