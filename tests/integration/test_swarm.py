"""The swarm runtime on a real three-node Swarm of the test bed's engines (issue 23): Deployments
become Swarm services, planned in services, created, scaled back when scaled by hand, updated
(never recreated), rolled back by Swarm when the new image cannot run, pruned; services not ours
left alone; what the runtime cannot run refused at validation with the file and line."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator

import docker
import pytest

from bench import swarm as swarm_bed
from tests import testbed
from tests.conftest import cli
from tests.integration.conftest import Fleet, http_call
from tests.integration.test_images import _push_tags
from tests.integration.test_sync import LOOP

pytestmark = pytest.mark.docker

SERVE = 'echo "$V" > /www/index.html; trap "exit 0" TERM; httpd -f -p 8080 -h /www & wait'


@pytest.fixture(scope="module")
def swarm(engines: list[testbed.Engine]) -> Iterator[dict[str, docker.APIClient]]:
    """The test bed's engines as one Swarm (h1 the manager), nodes labelled role=web, web, db."""
    apis = {e.name: docker.APIClient(base_url=e.tcp_url, version="auto", timeout=60) for e in engines}
    swarm_bed.form(apis, engines)
    try:
        manager = apis["h1"]
        by_addr = {e.addr: e.name for e in engines}
        roles = {"h1": "web", "h2": "web", "h3": "db"}
        for n in manager.nodes():
            name = by_addr[n["Status"]["Addr"]]
            spec = dict(n["Spec"], Labels={"role": roles[name], "name": name})
            manager.update_node(n["ID"], n["Version"]["Index"], spec)
        yield apis
    finally:
        swarm_bed.leave(apis)
        for api in apis.values():
            for n in api.networks(names=["docker_gwbridge"]):
                try:
                    api.remove_network(n["Id"])
                except docker.errors.APIError:
                    pass
            api.close()


def _config(fleet: Fleet) -> None:
    fleet.config.write_text(
        f"name: {fleet.agent}\nruntime: swarm\nsource: {{url: repo, branch: main}}\nstate_dir: state\n"
        f"hosts:\n  - {{name: m1, url: '{fleet.engines[0].tcp_url}', insecure: true}}\n"
    )


def _web(image: str, replicas: int = 2) -> str:
    return (
        "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n"
        f"  image: '{image}'\n  replicas: {replicas}\n  command: [sh, -c, {json.dumps(SERVE)}]\n  env: {{V: '{image}'}}\n"
        "  ports: [{containerPort: 8080, hostPort: 8089}]\n  placement: {hostSelector: {role: web}}\n"
        "  healthcheck: {test: [CMD, wget, -q, -O, /dev/null, 'http://127.0.0.1:8080/'], interval: 1s, timeout: 2s, retries: 3}\n"
    )


WORKER = ("---\napiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: worker}\nspec:\n"
          f"  image: '{{image}}'\n  command: {json.dumps(LOOP)}\n  dependsOn: [web]\n")


def _services(api: docker.APIClient, agent: str) -> dict[str, dict]:
    return {s["Spec"]["Name"]: s for s in api.services(filters={"label": f"io.gitsync.managed-by={agent}"})}


def _running(api: docker.APIClient, service: str) -> list[dict]:
    return [t for t in api.tasks(filters={"service": service, "desired-state": "running"}) if t["Status"]["State"] == "running"]


def _served(engines: list[testbed.Engine], name: str, port: int = 8089) -> str:
    """What the web tier answers on its host port on the engine `name`."""
    addr = next(x for x in engines if x.name == name).addr
    code, body = http_call(addr, port, "/")
    return body.strip() if code == 200 else f"HTTP {code}"


def test_deployments_become_swarm_services_planned_updated_rolled_back_and_pruned(swarm: dict[str, docker.APIClient], fleet: Fleet) -> None:
    manager = swarm["h1"]
    repo = f"{testbed.REGISTRY}/gitsync-test/swarm-{uuid.uuid4().hex[:8]}"
    _push_tags(repo, ("1", "2"), fleet.engines[0].unix_url)  # Swarm tasks pull their image from the registry
    _config(fleet)
    foreign = manager.create_service({"ContainerSpec": {"Image": f"{repo}:1", "Args": LOOP}}, name=f"{fleet.agent}-theirs")["ID"]
    try:
        # what the runtime cannot run is refused at validation, naming file and line
        fleet.repo.write("apps/web.yaml", _web(f"{repo}:1") + "  domainname: example.org\n")
        fleet.repo.write("apps/svc.yaml", "apiVersion: gitsync.io/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n")
        fleet.repo.commit("not for a swarm")
        r = cli("validate", "-c", str(fleet.config))
        assert r.code != 0 and "apps/web.yaml:12: spec.domainname: Swarm services have no domain name (runtime: swarm)" in r.err, r.out + r.err
        assert "apps/svc.yaml:1: Service web: Services are not on the swarm runtime yet" in r.err, r.err
        assert not _services(manager, fleet.agent) or list(_services(manager, fleet.agent)) == [], "nothing applied"

        # created: planned in services, exit 2; applied; tasks only on the nodes role=web picks
        fleet.repo.write("apps/web.yaml", _web(f"{repo}:1") + WORKER.replace("{image}", f"{repo}:1"))
        (fleet.repo.path / "apps/svc.yaml").unlink()
        fleet.repo.commit("web and worker")
        r = cli("plan", "-c", str(fleet.config))
        assert r.code == 2, r.out + r.err
        assert f"  + web                      create   2 replicas of {repo}:1" in r.out and "+ worker" in r.out, r.out
        r = cli("apply", "-c", str(fleet.config), "--timeout", "120s")
        assert r.code == 0, r.out + r.err
        services = _services(manager, fleet.agent)
        assert set(services) == {f"{fleet.agent}-web", f"{fleet.agent}-worker"}, services
        web_id = services[f"{fleet.agent}-web"]["ID"]
        nodes = {n["ID"]: n["Spec"]["Labels"]["name"] for n in manager.nodes()}
        assert sorted(nodes[t["NodeID"]] for t in _running(manager, web_id)) == ["h1", "h2"]
        assert _served(fleet.engines, "h1") == f"{repo}:1" and _served(fleet.engines, "h2") == f"{repo}:1"
        assert cli("plan", "-c", str(fleet.config)).code == 0
        hosts = cli("hosts", "-c", str(fleet.config))
        assert hosts.code == 0 and hosts.out.count(" manager  active") == 1 and hosts.out.count(" worker   active") == 2 and "role=db" in hosts.out, hosts.out

        # scaled by hand: the plan says so, apply brings it back
        s = manager.inspect_service(web_id)
        manager.update_service(web_id, s["Version"]["Index"], task_template=s["Spec"]["TaskTemplate"], name=s["Spec"]["Name"],
                               labels=s["Spec"]["Labels"], mode={"Replicated": {"Replicas": 1}}, update_config=s["Spec"].get("UpdateConfig"),
                               rollback_config=s["Spec"].get("RollbackConfig"), endpoint_spec=s["Spec"].get("EndpointSpec"))
        r = cli("plan", "-c", str(fleet.config))
        assert r.code == 2 and "~ web" in r.out and "changed outside Git: replicas 1 -> 2" in r.out, r.out
        assert cli("apply", "-c", str(fleet.config), "--timeout", "120s").code == 0
        assert manager.inspect_service(web_id)["Spec"]["Mode"]["Replicated"]["Replicas"] == 2

        # a new image: updated in place (the same service), start-first
        fleet.repo.write("apps/web.yaml", _web(f"{repo}:2") + WORKER.replace("{image}", f"{repo}:1"))
        fleet.repo.commit("web 2")
        r = cli("plan", "-c", str(fleet.config))
        assert f"~ web                      update   changed: env, image {repo}:1 -> {repo}:2 (stop-first for hostPort 8089, 1 at a time)" in r.out, r.out
        r = cli("apply", "-c", str(fleet.config), "--timeout", "120s")
        assert r.code == 0, r.out + r.err
        assert _services(manager, fleet.agent)[f"{fleet.agent}-web"]["ID"] == web_id  # never recreated
        assert _served(fleet.engines, "h1") == f"{repo}:2" and _served(fleet.engines, "h2") == f"{repo}:2"

        # an image that does not exist: Swarm rolls back, apply fails naming the cause, the old version serves
        fleet.repo.write("apps/web.yaml", _web(f"{repo}-missing:9") + WORKER.replace("{image}", f"{repo}:1"))
        fleet.repo.commit("web broken")
        t0 = time.monotonic()
        r = cli("apply", "-c", str(fleet.config), "--timeout", "120s")
        assert r.code == 1, r.out + r.err
        assert "rolled back" in r.out + r.err and ("No such image" in r.out + r.err or "not found" in r.out + r.err), r.out + r.err
        assert time.monotonic() - t0 < 110
        spec = manager.inspect_service(web_id)["Spec"]
        assert spec["TaskTemplate"]["ContainerSpec"]["Image"] == f"{repo}:2"
        assert _served(fleet.engines, "h1") == f"{repo}:2" and _served(fleet.engines, "h2") == f"{repo}:2"

        # prune: worker leaves Git and its service goes; the service not ours stays
        fleet.repo.write("apps/web.yaml", _web(f"{repo}:2"))
        fleet.repo.commit("no worker")
        r = cli("plan", "-c", str(fleet.config))
        assert "- worker                   remove   not in Git any more" in r.out, r.out
        assert cli("apply", "-c", str(fleet.config), "--timeout", "120s").code == 0
        assert set(_services(manager, fleet.agent)) == {f"{fleet.agent}-web"}
        assert manager.inspect_service(foreign)["Spec"]["Name"] == f"{fleet.agent}-theirs"
    finally:
        for s in manager.services():
            manager.remove_service(s["ID"])
        end = time.monotonic() + 30  # Swarm removes the tasks' containers after the services: let it, before the fleet's cleanup
        while time.monotonic() < end and any(fleet.containers(h) for h in fleet.clients):
            time.sleep(0.5)
        for n in manager.networks(filters={"label": f"io.gitsync.managed-by={fleet.agent}"}):
            with contextlib.suppress(docker.errors.APIError):  # Swarm may be removing it already
                manager.remove_network(n["Id"])
