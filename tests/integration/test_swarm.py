"""The swarm runtime on a real three-node Swarm of the test bed's engines (issue 23): Deployments
become Swarm services, planned in services, created, scaled back when scaled by hand, updated
(never recreated), rolled back by Swarm when the new image cannot run, pruned; services not ours
left alone; what the runtime cannot run refused at validation with the file and line."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from bench import swarm as swarm_bed
from tests import freshdebian, testbed
from tests.conftest import IN_CI, GitRepo, cli, free_port, git
from tests.fakeforge import FakeForge
from tests.integration.test_agent import AgentProc, statuses, wait_for
from tests.integration.test_previews import on_branch, plan_statuses, pull_request_body
from tests.integration.conftest import Fleet, http_call
from tests.integration.test_images import _push_tags
from tests.integration.test_fresh_debian import readme_block
from tests.integration.test_hostile import assert_never_shown, everything_shown
from tests.sopsfile import TEST_IDENTITY, secret_manifest
from tests.integration.test_sync import LOOP
from tests.load import Load

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
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
            api.close()


def _clean(manager: docker.APIClient, fleet: Fleet, apis: dict[str, docker.APIClient]) -> None:
    """What a test left on the swarm: services (and, once Swarm removed them, their containers), our
    configs, secrets and overlay networks, and the volumes Swarm made for our tasks."""
    for s in manager.services():
        manager.remove_service(s["ID"])
    end = time.monotonic() + 30
    while time.monotonic() < end and any(fleet.containers(h) for h in fleet.clients):
        time.sleep(0.5)
    mine = {"label": f"io.gitsync.managed-by={fleet.agent}"}
    for c in manager.configs(filters=mine):
        with contextlib.suppress(docker.errors.APIError):
            manager.remove_config(c["ID"])
    for c in manager.secrets(filters=mine):
        with contextlib.suppress(docker.errors.APIError):
            manager.remove_secret(c["ID"])
    for n in manager.networks(filters=mine):
        with contextlib.suppress(docker.errors.APIError):  # Swarm may be removing it already
            manager.remove_network(n["Id"])
    for api in apis.values():
        for v in (api.volumes(filters=mine) or {}).get("Volumes") or []:
            with contextlib.suppress(docker.errors.APIError):
                api.remove_volume(v["Name"], force=True)


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


SECRET = "swarm-secret-5d1f0a"


def _move_tag(repo: str, tag: str, engine_url: str) -> str:
    """Push another image (one label apart) under `tag`: the tag moves in the registry. Its new digest."""
    client = docker.APIClient(base_url=engine_url, version="auto", timeout=120)
    try:
        dockerfile = f"FROM {testbed.TEST_IMAGE}:1\nLABEL moved={uuid.uuid4().hex}\n".encode()
        for line in client.build(fileobj=io.BytesIO(dockerfile), tag=f"{repo}:{tag}", rm=True, decode=True):
            assert "error" not in line, line
        digest = ""
        for line in client.push(repo, tag=tag, stream=True, decode=True):
            assert "error" not in line, line
            digest = (line.get("aux") or {}).get("Digest", digest)
        client.remove_image(f"{repo}:{tag}")
        return digest
    finally:
        client.close()


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
        fleet.repo.write("apps/svc.yaml", "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: migrate}\nspec:\n  image: 'x:1'\n  shmSize: 64Mi\n")
        fleet.repo.commit("not for a swarm")
        r = cli("validate", "-c", str(fleet.config))
        assert r.code != 0 and "apps/web.yaml:12: spec.domainname: Swarm services have no domain name (runtime: swarm)" in r.err, r.out + r.err
        assert "apps/svc.yaml:6: spec.shmSize: Swarm services have no shm size (mount a tmpfs at /dev/shm instead) (runtime: swarm)" in r.err, r.err
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

        # tasks run the image by digest, as the registry had it at deploy; a tag moved since changes nothing until Git does
        def image() -> str:
            return str(manager.inspect_service(web_id)["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"])

        first = manager.inspect_distribution(f"{repo}:1")["Descriptor"]["digest"]
        assert image() == f"{repo}:1@{first}"
        assert _move_tag(repo, "1", fleet.engines[0].unix_url) != first
        r = cli("plan", "-c", str(fleet.config))
        assert r.code == 0, r.out + r.err
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
        assert image() == f"{repo}:1@{first}"  # an update for another reason keeps the digest the tag had

        # a new image: updated in place (the same service), start-first
        fleet.repo.write("apps/web.yaml", _web(f"{repo}:2") + WORKER.replace("{image}", f"{repo}:1"))
        fleet.repo.commit("web 2")
        r = cli("plan", "-c", str(fleet.config))
        assert f"~ web                      update   changed: env, image {repo}:1 -> {repo}:2 (stop-first for hostPort 8089, 1 at a time)" in r.out, r.out
        r = cli("apply", "-c", str(fleet.config), "--timeout", "120s")
        assert r.code == 0, r.out + r.err
        assert _services(manager, fleet.agent)[f"{fleet.agent}-web"]["ID"] == web_id  # never recreated
        assert image() == f"{repo}:2@" + manager.inspect_distribution(f"{repo}:2")["Descriptor"]["digest"]
        assert _served(fleet.engines, "h1") == f"{repo}:2" and _served(fleet.engines, "h2") == f"{repo}:2"

        # an image that does not exist: Swarm rolls back, apply fails naming the cause, the old version serves
        fleet.repo.write("apps/web.yaml", _web(f"{repo}-missing:9") + WORKER.replace("{image}", f"{repo}:1"))
        fleet.repo.commit("web broken")
        t0 = time.monotonic()
        r = cli("apply", "-c", str(fleet.config), "--timeout", "120s")
        assert r.code == 1, r.out + r.err
        assert "rolled back" in r.out + r.err and ("No such image" in r.out + r.err or "not found" in r.out + r.err), r.out + r.err
        assert time.monotonic() - t0 < 110
        assert image().startswith(f"{repo}:2@sha256:")
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
        _clean(manager, fleet, swarm)


def test_the_agent_on_a_swarm_corrects_drift_in_seconds_and_reports_a_lost_node_without_moving_anything(
    swarm: dict[str, docker.APIClient], fleet: Fleet, github_forge: FakeForge, tmp_path: Path,
) -> None:
    manager = swarm["h1"]
    repo = f"{testbed.REGISTRY}/gitsync-test/swarm-{uuid.uuid4().hex[:8]}"
    _push_tags(repo, ("1",), fleet.engines[0].unix_url)
    up = GitRepo(tmp_path / "up" / "deploy")
    # the workers hold a secret (a file and a variable): never shown on any channel of the agent
    uses = "  secrets: [{name: api, key: token, path: /run/secrets/token}]\n  env: {TOKEN: {secretKeyRef: {name: api, key: token}}}\n"
    # and a volume each, on a driver every node reaches (declared shared): one per task slot
    uses += "  volumes: [{name: scratch, mountPath: /scratch}]\n---\napiVersion: gitsync.io/v1\nkind: Volume\nmetadata: {name: scratch}\nspec: {perReplica: true, shared: true}\n"
    up.write("apps/web.yaml", "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: worker}\nspec:\n"
             f"  image: '{repo}:1'\n  replicas: 3\n  command: {json.dumps(LOOP)}\n" + uses)
    up.write("secrets/api.yaml", secret_manifest("api", {"token": SECRET}))
    c1 = up.commit("three workers")
    key = tmp_path / "agent-age.key"
    key.write_text(TEST_IDENTITY + "\n")
    agent = AgentProc(fleet, up, github_forge, tmp_path, config_extra=f"runtime: swarm\nsecrets: {{ageKeyFile: '{key}'}}\n",
                      hosts=f"  - {{name: m1, url: '{fleet.engines[0].tcp_url}', insecure: true}}\n")
    h3 = fleet.engines[2]
    try:
        wait_for(lambda: any(s == "success" for s, _ in statuses(github_forge, c1)), 90)
        name = f"{fleet.agent}-worker"
        s = manager.inspect_service(name)
        version = s["Version"]["Index"]

        # scaled by hand: back to 3 within seconds, through the manager's events (the poll is 300 s away)
        manager.update_service(s["ID"], version, task_template=s["Spec"]["TaskTemplate"], name=name, labels=s["Spec"]["Labels"],
                               mode={"Replicated": {"Replicas": 1}}, update_config=s["Spec"].get("UpdateConfig"),
                               rollback_config=s["Spec"].get("RollbackConfig"), endpoint_spec=s["Spec"].get("EndpointSpec"))
        t0 = time.monotonic()
        hand = manager.inspect_service(name)["Version"]["Index"]  # the hand-made change; gitsync's own comes after it

        def corrected() -> bool:
            now = manager.inspect_service(name)
            return now["Version"]["Index"] > hand and now["Spec"]["Mode"]["Replicated"]["Replicas"] == 3

        wait_for(corrected, 20)
        assert time.monotonic() - t0 < 15

        def reported() -> bool:
            st = requests.get(f"{agent.url}/api/status", timeout=5).json()
            return st["deployments"]["worker"]["health"] == "Healthy" and sum(len(h["containers"]) for h in st["hosts"].values()) == 3

        wait_for(reported, 30)
        status = requests.get(f"{agent.url}/api/status", timeout=5).json()
        assert len(status["hosts"]) == 3 and {h["labels"]["role"] for h in status["hosts"].values()} == {"web", "db"}
        version = manager.inspect_service(name)["Version"]["Index"]
        (task, *_) = _running(manager, name)
        api = swarm[{n["ID"]: n["Spec"]["Labels"]["name"] for n in manager.nodes()}[task["NodeID"]]]
        ex = api.exec_create(task["Status"]["ContainerStatus"]["ContainerID"], ["cat", "/run/secrets/token"])
        assert api.exec_start(ex["Id"]).decode() == SECRET  # delivered as a Swarm secret, decrypted by the agent
        slots = {t["Slot"]: t for t in _running(manager, name)}
        for slot, t in slots.items():
            (m,) = [m for m in swarm[{n["ID"]: n["Spec"]["Labels"]["name"] for n in manager.nodes()}[t["NodeID"]]].inspect_container(
                t["Status"]["ContainerStatus"]["ContainerID"])["Mounts"] if m["Destination"] == "/scratch"]
            assert m["Name"] == f"gitsync-{fleet.agent}-scratch-{slot}", m

        # a pull request is planned against the Swarm, on its commit, and never applied
        pr = on_branch(up, "more", "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: worker}\nspec:\n"
                       f"  image: '{repo}:1'\n  replicas: 4\n  command: {json.dumps(LOOP)}\n" + uses, "four workers")
        git(up.path, "update-ref", "refs/pull/3/head", pr)
        assert agent.hook(pull_request_body(3, pr, "more"), event="pull_request").status_code == 202
        wait_for(lambda: any(p["state"] == "success" for p in plan_statuses(github_forge, fleet.agent, pr)), 30)
        assert plan_statuses(github_forge, fleet.agent, pr)[-1]["description"] == "would update 1 (worker: replicas)"
        assert "~ worker                   update   changed: replicas (start-first, 1 at a time)" in requests.get(f"{agent.url}/api/plans/{pr}", timeout=5).json()["text"]
        assert manager.inspect_service(name)["Version"]["Index"] == version  # a preview is never applied

        # a node's engine dies: Swarm moves its task, gitsync says so and moves nothing itself
        testbed.kill(h3)
        try:
            wait_for(lambda: any(not h["reachable"] for h in requests.get(f"{agent.url}/api/status", timeout=5).json()["hosts"].values()), 60)
            wait_for(lambda: len(_running(manager, name)) == 3, 60)  # rescheduled by Swarm onto the two nodes left
            wait_for(lambda: requests.get(f"{agent.url}/api/status", timeout=5).json()["deployments"]["worker"]["health"] == "Healthy", 30)
        finally:
            testbed.start(h3)
        assert manager.inspect_service(name)["Version"]["Index"] == version  # gitsync did not touch the service
        assert "is down" in agent.log.read_text()
        wait_for(lambda: all(n["Status"]["State"] == "ready" for n in manager.nodes()), 60)
        shown, _ = everything_shown(agent, github_forge, up, tmp_path, {}, pr, c1)  # statuses, pages, /api, /metrics, log, CLI
        assert_never_shown((SECRET,), shown, tmp_path)
    finally:
        agent.stop()
        _clean(manager, fleet, swarm)


def test_a_service_on_the_swarm_answers_by_name_and_on_its_host_port_through_a_rollout_without_a_failed_request(
    swarm: dict[str, docker.APIClient], fleet: Fleet,
) -> None:
    manager = swarm["h1"]
    repo = f"{testbed.REGISTRY}/gitsync-test/swarm-{uuid.uuid4().hex[:8]}"
    _push_tags(repo, ("1", "2"), fleet.engines[0].unix_url)
    proxy = _push_proxy_image(fleet.engines[0])
    _config(fleet)
    with open(fleet.config, "a") as fh:
        fh.write(f"services: {{proxyImage: '{proxy}'}}\n")
    service = ("---\napiVersion: gitsync.io/v1\nkind: Service\nmetadata: {name: front}\nspec:\n  selector: {app: web}\n"
               "  ports: [{port: 80, targetPort: 8080, hostPort: 8090}]\n  hostSelector: {role: web}\n")
    client = ("---\napiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: client}\nspec:\n"
              f"  image: '{repo}:1'\n  command: {json.dumps(LOOP)}\n  placement: {{hostSelector: {{role: db}}}}\n")

    def web(image: str) -> str:  # no host port of its own: the Service publishes one
        return _web(image).replace("metadata: {name: web}", "metadata: {name: web, labels: {app: web}}").replace(
            "  ports: [{containerPort: 8080, hostPort: 8089}]\n", "  ports: [{containerPort: 8080}]\n")

    try:
        fleet.repo.write("apps/web.yaml", web(f"{repo}:1") + service + client)
        fleet.repo.commit("web behind front")
        r = cli("plan", "-c", str(fleet.config))
        assert "  + front                    create   Service proxy (80 -> 8080, hostPort 8090)\n" in r.out, r.out
        r = cli("apply", "-c", str(fleet.config), "--timeout", "120s")
        assert r.code == 0 and "1/1 Service ready" in r.out + r.err, r.out + r.err
        for h in ("h1", "h2"):  # the nodes role=web picks publish the host port
            wait_for(lambda h=h: _served(fleet.engines, h, 8090) == f"{repo}:1", 20)  # type: ignore[misc]
        # by name, from a managed container on a node with no proxy of its port's own
        (task,) = _running(manager, f"{fleet.agent}-client")
        node = {n["ID"]: n["Spec"]["Labels"]["name"] for n in manager.nodes()}[task["NodeID"]]
        cid = task["Status"]["ContainerStatus"]["ContainerID"]
        api = swarm[node]
        ex = api.exec_create(cid, ["sh", "-c", "wget -q -O- http://$(nslookup front 127.0.0.11 | awk '/^Address/ {a=$2} END {print a}'):80/"])
        assert api.exec_start(ex["Id"]).decode().strip() == f"{repo}:1"

        # a rolling update of web under load through the Service's host port: no request fails
        fleet.repo.write("apps/web.yaml", web(f"{repo}:2") + service + client)
        fleet.repo.commit("web 2")
        with Load(fleet.engines[0].addr, 8090, workers=4) as load:
            time.sleep(0.5)
            r = cli("apply", "-c", str(fleet.config), "--timeout", "120s")
            time.sleep(1.0)
        assert r.code == 0, r.out + r.err
        assert load.tally.ok > 50 and load.tally.failed == 0, (load.tally.failed, load.tally.errors, r.out)
        assert set(load.tally.bodies) <= {f"{repo}:1", f"{repo}:2"} and f"{repo}:2" in load.tally.bodies

        # scaled down under load: the task that goes leaves DNS before it stops
        fleet.repo.write("apps/web.yaml", web(f"{repo}:2").replace("replicas: 2", "replicas: 1") + service + client)
        fleet.repo.commit("web 1 replica")
        with Load(fleet.engines[1].addr, 8090, workers=4) as load:
            time.sleep(0.5)
            r = cli("apply", "-c", str(fleet.config), "--timeout", "120s")
            time.sleep(3.0)
        assert r.code == 0 and len(_running(manager, f"{fleet.agent}-web")) == 1, r.out + r.err
        assert load.tally.ok > 50 and load.tally.failed == 0, (load.tally.failed, load.tally.errors, r.out)

        # the Service leaves Git: its proxy and its configuration go
        fleet.repo.write("apps/web.yaml", web(f"{repo}:2").replace("replicas: 2", "replicas: 1") + client)
        fleet.repo.commit("no front")
        r = cli("apply", "-c", str(fleet.config), "--timeout", "120s")
        assert r.code == 0 and "- swarm/" in r.out, r.out
        assert f"{fleet.agent}-svc-front" not in {s["Spec"]["Name"] for s in manager.services()}
        wait_for(lambda: not manager.configs(filters={"label": f"io.gitsync.managed-by={fleet.agent}"}), 20)
    finally:
        _clean(manager, fleet, swarm)


def _push_proxy_image(engine: testbed.Engine) -> str:
    """The test bed's HAProxy image, in the registry (Swarm tasks pull their image)."""
    testbed.build_proxy_image(engine.unix_url)
    name = f"{testbed.REGISTRY}/gitsync-test/haproxy"
    client = docker.APIClient(base_url=engine.unix_url, version="auto", timeout=120)
    try:
        client.tag(testbed.PROXY_IMAGE, name, "2.6")
        for line in client.push(name, tag="2.6", stream=True, decode=True):
            assert "error" not in line, line
    finally:
        client.close()
    return f"{name}:2.6"


def test_the_three_tier_example_runs_on_the_swarm_with_its_volume_held_and_its_secret_delivered(
    swarm: dict[str, docker.APIClient], fleet: Fleet,
) -> None:
    """examples/three-tier through the swarm runtime, unchanged but for the images' registry: web -> api
    -> db by Service names, a row written and read through the web tier's hostPort on every node, db
    held to the node that holds its volume (recorded in the cluster), its password a Swarm secret file
    (a variable for api, as the manifest asks), and none of it in db's service spec."""
    manager = swarm["h1"]
    h1 = fleet.engines[0]
    r = subprocess.run(["bash", "scripts/example-image"], cwd=ROOT, env={**os.environ, "DOCKER_HOST": h1.unix_url}, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    client = docker.APIClient(base_url=h1.unix_url, version="auto", timeout=120)
    try:
        for local, tag in (("gitsync-example/busybox", "1"), ("gitsync-example/haproxy", "2.6")):
            client.tag(f"{local}:{tag}", f"{testbed.REGISTRY}/{local}", tag)
            for line in client.push(f"{testbed.REGISTRY}/{local}", tag=tag, stream=True, decode=True):
                assert "error" not in line, line
    finally:
        client.close()
    key = ROOT / "examples" / "keys" / "example-age.key"
    _config(fleet)
    with open(fleet.config, "a") as fh:
        fh.write(f"services: {{proxyImage: '{testbed.REGISTRY}/gitsync-example/haproxy:2.6'}}\nsecrets: {{ageKeyFile: '{key}'}}\n")
    shutil.copytree(ROOT / "examples" / "three-tier", fleet.repo.path, dirs_exist_ok=True)
    for f in (fleet.repo.path / "apps").glob("*.yaml"):
        text = f.read_text().replace("image: gitsync-example/", f"image: {testbed.REGISTRY}/gitsync-example/")
        f.write_text(text.replace("name: shop-db", f"name: {fleet.agent}-shop-db"))
    fleet.repo.commit("the shop")
    try:
        r = cli("apply", "-c", str(fleet.config), "--timeout", "180s")
        assert r.code == 0, r.out + r.err
        assert "3/3 deployments converged" in r.out and "3/3 Services ready" in r.out, r.out
        for e in fleet.engines:  # the web tier's port, on every node
            wait_for(lambda e=e: http_call(e.addr, 8000, "/cgi-bin/rows")[0] == 200, 30)  # type: ignore[misc]
        assert http_call(fleet.engines[2].addr, 8000, "/cgi-bin/add", "order 1") == (200, "stored\n")
        assert http_call(fleet.engines[1].addr, 8000, "/cgi-bin/rows") == (200, "order 1\n")

        db = manager.inspect_service(f"{fleet.agent}-db")
        (task,) = _running(manager, db["ID"])
        records = manager.configs(filters={"label": "io.gitsync.role=volume"})
        (record,) = [c for c in records if c["Spec"]["Labels"].get("io.gitsync.volume") == f"{fleet.agent}-shop-db"]
        assert record["Spec"]["Labels"]["io.gitsync.pinned-node"] == task["NodeID"]
        assert f"node.id=={task['NodeID']}" in db["Spec"]["TaskTemplate"]["Placement"]["Constraints"]
        (secret,) = db["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"]
        assert secret["File"]["Name"] == "/run/secrets/db-password" and secret["File"]["Mode"] == 0o400
        api_env = manager.inspect_service(f"{fleet.agent}-api")["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
        (password,) = [v.split("=", 1)[1] for v in api_env if v.startswith("DB_PASSWORD=")]
        assert len(password) >= 8 and password not in json.dumps(db)  # asked for as a variable by api only
        assert password not in r.out + r.err and password not in cli("plan", "-c", str(fleet.config)).out
        assert cli("plan", "-c", str(fleet.config)).code == 0  # in sync
    finally:
        _clean(manager, fleet, swarm)

def test_a_compose_project_runs_on_the_swarm(swarm: dict[str, docker.APIClient], fleet: Fleet) -> None:
    """A compose file as people write it: a published port (a Service on every node), a service on the
    project's network reaching another by name, an environment file, a one-off service that must
    complete first (a Swarm job)."""
    manager = swarm["h1"]
    repo = f"{testbed.REGISTRY}/gitsync-test/swarm-{uuid.uuid4().hex[:8]}"
    _push_tags(repo, ("1",), fleet.engines[0].unix_url)
    _config(fleet)
    with open(fleet.config, "a") as fh:
        fh.write(f"services: {{proxyImage: '{_push_proxy_image(fleet.engines[0])}'}}\n")
    fleet.repo.write("shop/.env", "GREETING=hello from compose\nCODE=0\n")

    def compose(probe: str = "1") -> str:
        return (
            "services:\n"
            f"  web:\n    image: {repo}:1\n    command: [sh, -c, {json.dumps(SERVE.replace('$V', '$$GREETING'))}]\n"
            "    environment: [GREETING]\n    ports: ['8095:8080']\n"
            f"  probe:\n    image: {repo}:1\n    command: {json.dumps(LOOP)}\n    labels: [v={probe}]\n"
            "    depends_on: {web: {condition: service_started}, migrate: {condition: service_completed_successfully}}\n"
            f"  migrate:\n    image: {repo}:1\n    command: [sh, -c, 'sleep 1; exit $${{CODE:-0}}']\n    environment: [CODE]\n"
        )

    fleet.repo.write("shop/compose.yaml", compose())
    fleet.repo.commit("a compose project")
    try:
        r = cli("apply", "-c", str(fleet.config), "--timeout", "120s")
        assert r.code == 0, r.out + r.err
        for e in fleet.engines:
            wait_for(lambda e=e: _served(fleet.engines, e.name, 8095) == "hello from compose", 30)  # type: ignore[misc]
        (task,) = _running(manager, f"{fleet.agent}-probe")
        node = {n["ID"]: n["Spec"]["Labels"]["name"] for n in manager.nodes()}[task["NodeID"]]
        api = swarm[node]
        ex = api.exec_create(task["Status"]["ContainerStatus"]["ContainerID"],
                             ["sh", "-c", "wget -q -O- http://$(nslookup web 127.0.0.11 | awk '/^Address/ {a=$2} END {print a}'):8080/"])
        assert api.exec_start(ex["Id"]).decode().strip() == "hello from compose"  # by name and container port, on the project's network
        assert cli("plan", "-c", str(fleet.config)).code == 0  # the job ran to completion: it is not run again
        migrate = manager.inspect_service(f"{fleet.agent}-migrate")
        assert "ReplicatedJob" in migrate["Spec"]["Mode"]
        assert [t["Status"]["State"] for t in manager.tasks(filters={"service": migrate["ID"]})] == ["complete"]

        # a run that fails: the sync fails naming the exit code, what waits for it is not changed; the plan runs it again
        fleet.repo.write("shop/.env", "GREETING=hello from compose\nCODE=3\n")
        fleet.repo.write("shop/compose.yaml", compose(probe="2"))
        fleet.repo.commit("a migration that fails")
        r = cli("apply", "-c", str(fleet.config), "--timeout", "120s")
        assert r.code == 1 and "job failed: task failed: task: non-zero exit (3)" in r.out + r.err, r.out + r.err
        assert "probe" in r.out + r.err and "its dependency migrate failed" in r.out + r.err, r.out + r.err
        r = cli("plan", "-c", str(fleet.config))
        assert r.code == 2 and "job failed (task failed: task: non-zero exit (3)): run it again" in r.out, r.out
    finally:
        _clean(manager, fleet, swarm)


def _readme_service_script(image: str, sock_source: str, group_of: str, build_context: Path) -> str:
    """The README's commands for the agent on the Swarm, as written but for where this test bed
    differs: the registry, the base image (no registry serves debian:bookworm-slim here), and each
    node's socket (the test bed's engines share one file system, so each has its own path)."""
    lines = readme_block("**The agent on the Swarm it manages.**")
    script = "\n".join(lines).replace("\\\n", " ")
    for written, here in (
        ("registry.example.com/gitsync:1", image),
        ("docker build -t", f"docker build -q --build-arg BASE={testbed.BOOKWORM} -t"),
        (f" -t {image} . &&", f" -t {image} {build_context} &&"),
        ("source=/var/run/docker.sock,", f"source={sock_source},"),
        ("stat -c %g /var/run/docker.sock", f"stat -c %g {group_of}"),
    ):
        assert written in script, f"the README's commands no longer say {written!r}:\n{script}"
        script = script.replace(written, here)
    return script


def _set_role(api: docker.APIClient, node_id: str, role: str) -> None:
    """A node made manager or worker, read again for each try (each change moves every node's version)."""
    for _ in range(20):
        n = api.inspect_node(node_id)
        if n["Spec"]["Role"] == role:
            return
        with contextlib.suppress(docker.errors.APIError):
            api.update_node(node_id, n["Version"]["Index"], dict(n["Spec"], Role=role))
        time.sleep(0.5)
    raise AssertionError(f"node {node_id} did not become {role}")


def test_the_agent_runs_on_the_swarm_it_manages_as_the_readme_shows_and_moves_with_its_node(
    swarm: dict[str, docker.APIClient], fleet: Fleet, tmp_path: Path,
) -> None:
    """Issue 23, item 9: the project's Dockerfile built and run as the README's Swarm service; its
    node's engine killed, Swarm starts it on another manager, where it carries on from Git."""
    try:
        testbed.bookworm_image(fleet.engines[0])
    except freshdebian.Unavailable as exc:
        if IN_CI:
            pytest.fail(f"CI must build the agent's image: {exc}")
        pytest.skip(str(exc))
    by_addr = {e.addr: e for e in fleet.engines}
    manager = swarm["h1"]
    for n in manager.nodes():  # three managers: one's death leaves a quorum
        _set_role(manager, n["ID"], "manager")
    managers_up = lambda api: all(n.get("ManagerStatus", {}).get("Reachability") == "reachable" for n in api.nodes())  # noqa: E731
    wait_for(lambda: managers_up(manager), 60)
    node_of = {n["ID"]: by_addr[n["Status"]["Addr"]] for n in manager.nodes()}
    socks = testbed.ROOT / "nodes"
    socks.mkdir(exist_ok=True)
    for node_id, engine in node_of.items():
        (socks / f"{node_id}.sock").unlink(missing_ok=True)
        (socks / f"{node_id}.sock").symlink_to(engine.sock)

    repo = f"{testbed.REGISTRY}/gitsync-test/swarm-{uuid.uuid4().hex[:8]}"
    _push_tags(repo, ("1",), fleet.engines[0].unix_url)
    up = GitRepo(tmp_path / "served" / "deploy")

    def workers(n: int) -> str:
        return ("apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: worker}\nspec:\n"
                f"  image: '{repo}:1'\n  replicas: {n}\n  command: {json.dumps(LOOP)}\n")

    up.write("apps/worker.yaml", workers(2))
    up.commit("two workers")
    port = free_port()
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={up.path.parent}", f"--listen={testbed.BRIDGE_ADDR}",
                               f"--port={port}", str(up.path.parent)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tmp_path / "work"
    work.mkdir()
    (work / "gitsync.yaml").write_text(
        f"name: {fleet.agent}\nruntime: swarm\nsource: {{url: 'git://{testbed.BRIDGE_ADDR}:{port}/deploy', branch: main, interval: 3s}}\n"
        "hosts:\n  - {name: local, url: 'unix:///var/run/docker.sock'}\n"
        "server: {listen: '0.0.0.0:9100'}\nstate_dir: /var/lib/gitsync\n"
    )
    image = f"{testbed.REGISTRY}/gitsync-test/agent:1"
    script = _readme_service_script(image, f"{socks}/{{{{.Node.ID}}}}.sock", fleet.engines[0].sock, ROOT)
    env = {**os.environ, "DOCKER_HOST": fleet.engines[0].unix_url, "GITSYNC_WEBHOOK_SECRET": "swarm-agent-hook-7c1e"}
    killed: testbed.Engine | None = None
    try:
        t0 = time.monotonic()
        with testbed.egress():  # the build installs Debian's python3 and git, and gitsync's packages from PyPI
            r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        print(f"built, pushed and created in {time.monotonic() - t0:.0f} s")

        def agent_on() -> testbed.Engine | None:
            live = next(a for e, a in swarm.items() if e != (killed.name if killed else None))
            try:
                tasks = live.tasks(filters={"service": "gitsync", "desired-state": "running"})
            except docker.errors.APIError:  # the managers electing a leader after a death: ask again
                return None
            return next((node_of[t["NodeID"]] for t in tasks if t["Status"]["State"] == "running"), None)

        def synced(engine: testbed.Engine, replicas: int) -> bool:
            with contextlib.suppress(requests.RequestException, KeyError, TypeError):
                st = requests.get(f"http://{engine.addr}:9100/api/status", timeout=3).json()
                worker = st["deployments"]["worker"]
                return worker["health"] == "Healthy" and worker["desired"] == worker["healthy"] == replicas
            return False

        first = wait_for(agent_on, 180, every=1)
        wait_for(lambda: synced(first, 2), 120, every=1)
        print(f"built and started in {time.monotonic() - t0:.0f} s on {first.name}")

        # its node dies: Swarm starts the agent on another manager, and it goes on applying Git
        killed = first
        testbed.die(first)
        t0 = time.monotonic()
        second = wait_for(lambda: (e := agent_on()) is not None and e != first and e, 120, every=1)
        up.write("apps/worker.yaml", workers(3))
        up.commit("three workers")
        print(f"moved to {second.name} in {time.monotonic() - t0:.0f} s")
        wait_for(lambda: synced(second, 3), 120, every=1)
        print(f"synced there in {time.monotonic() - t0:.0f} s")
        assert swarm[second.name].inspect_service(f"{fleet.agent}-worker")["Spec"]["Mode"]["Replicated"]["Replicas"] == 3
    finally:
        daemon.terminate()
        daemon.wait()
        if killed is not None:
            testbed.start(killed)
        live = swarm["h1"]

        def rejoined() -> bool:
            with contextlib.suppress(docker.errors.APIError):
                return all(n["Status"]["State"] == "ready" for n in live.nodes()) and managers_up(live)
            return False

        wait_for(rejoined, 90, every=1)
        for s in live.services(filters={"name": "gitsync"}):
            live.remove_service(s["ID"])
        # the agent gone first: until then it would put back what the clean-up removes
        agents = {"label": "com.docker.swarm.service.name=gitsync"}
        wait_for(lambda: not any(api.containers(filters=agents) for api in swarm.values()), 60, every=1)
        _clean(live, fleet, swarm)
        for c in live.configs(filters={"name": "gitsync.yaml"}):
            with contextlib.suppress(docker.errors.APIError):
                live.remove_config(c["ID"])
        for node_id, engine in node_of.items():
            if engine is not fleet.engines[0]:
                _set_role(live, node_id, "worker")
        for api in swarm.values():
            for c in api.containers(all=True, filters=agents):
                with contextlib.suppress(docker.errors.APIError):
                    api.remove_container(c["Id"], force=True)
            with contextlib.suppress(docker.errors.APIError):
                api.remove_volume("gitsync-state", force=True)
        shutil.rmtree(socks, ignore_errors=True)
