"""Networks as compose keeps them, on real engines (issue 21, item 6): a service reaches by name only
the services it shares a network with; projects are apart from each other and from manifests; an
external network (a reverse proxy's) is joined as it is; networks no replica uses go."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests import testbed
from tests.conftest import cli
from tests.integration.conftest import Fleet

pytestmark = pytest.mark.docker

SERVE = "trap 'exit 0' TERM; mkdir -p /www; hostname > /www/index.html; httpd -f -p PORT -h /www & wait"
SHOP = f"""\
name: shop
services:
  web:
    image: gitsync-test/busybox:1
    command: ["sh", "-c", "{SERVE.replace('PORT', '81')}"]
    expose: [81]
    networks: [front, edge]
    deploy: {{placement: {{constraints: ["node.labels.role == db"]}}}}
  api:
    image: gitsync-test/busybox:1
    command: ["sh", "-c", "{SERVE.replace('PORT', '82')}"]
    expose: [82]
    networks: [front, back]
  db:
    image: gitsync-test/busybox:1
    command: ["sh", "-c", "{SERVE.replace('PORT', '83')}"]
    expose: [83]
    networks: [back]
networks:
  front: {{}}
  back: {{}}
  edge: {{external: true, name: EDGE}}
"""
OTHER = f"""\
services:
  my_tool:
    image: gitsync-test/busybox:1
    command: ["sh", "-c", "{SERVE.replace('PORT', '84')}"]
    expose: [84]
    deploy: {{placement: {{constraints: ["node.labels.role == db"]}}}}
"""
LOOKUP = "nslookup {name} 127.0.0.11 >/dev/null 2>&1 && echo {name}:yes || echo {name}:no"


def resolves(fleet: Fleet, host: str, container: str, names: list[str]) -> list[str]:
    api = fleet.clients[host]
    parallel = " ".join(f"({LOOKUP.format(name=n)}) &" for n in names) + " wait"  # a name that does not resolve waits for the upstream resolver
    ex = api.exec_create(container, ["sh", "-c", parallel])
    found = dict(x.split(":") for x in api.exec_start(ex["Id"]).decode().split())
    return [f"{n}:{found.get(n)}" for n in names]


def where(fleet: Fleet, deployment: str) -> tuple[str, str]:
    (found,) = [(h, c["Names"][0].lstrip("/")) for h in fleet.clients for c in fleet.containers(h) if c["Labels"].get("io.gitsync.deployment") == deployment]
    return found


def test_a_service_reaches_by_name_only_the_services_on_its_networks_and_projects_are_apart(fleet: Fleet) -> None:
    edge = f"{fleet.agent}-edge"  # made by someone else (a reverse proxy's network), on h3 only
    fleet.clients["h3"].create_network(edge, driver="bridge")
    try:
        fleet.write_config(extra_hosts=f"services: {{proxyImage: '{testbed.PROXY_IMAGE}'}}\n")
        fleet.repo.write("shop/compose.yaml", SHOP.replace("EDGE", edge))
        fleet.repo.write("other/compose.yaml", OTHER)
        fleet.repo.write("apps/plain.yaml", "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: plain}\n"
                         f"spec:\n  image: gitsync-test/busybox:1\n  command: [sh, -c, \"{SERVE.replace('PORT', '85')}\"]\n  placement: {{hostSelector: {{role: db}}}}\n")
        fleet.repo.commit("a shop of three networks, another project, a manifest")
        r = cli("apply", "-c", str(fleet.config), "--timeout", "90s")
        assert r.code == 0, r.out + r.err
        everyone = ["web", "api", "db", "my_tool"]  # ('_' in a name, as compose allows)
        expected = {"web": ["web", "api"], "api": ["web", "api", "db"], "db": ["api", "db"], "my_tool": ["my_tool"], "plain": []}
        with ThreadPoolExecutor(len(expected)) as pool:  # each waits for a name that does not resolve: all at once
            seen = dict(zip(expected, pool.map(lambda d: resolves(fleet, *where(fleet, d), everyone), expected)))
        for deployment, sees in expected.items():
            assert seen[deployment] == [f"{n}:{'yes' if n in sees else 'no'}" for n in everyone], deployment
        host, web = where(fleet, "web")
        networks = set(fleet.clients[host].inspect_container(web)["NetworkSettings"]["Networks"])
        assert networks == {f"gitsync-{fleet.agent}_shop_front", edge}, networks  # not on the agent's one network
        r = cli("plan", "-c", str(fleet.config))
        assert r.code == 0, r.out  # in sync

        # the other project leaves: its network goes from the hosts
        (fleet.repo.path / "other" / "compose.yaml").unlink()
        fleet.repo.commit("no other project")
        r = cli("apply", "-c", str(fleet.config), "--timeout", "90s")
        assert r.code == 0, r.out + r.err
        left = {n["Name"] for h in fleet.clients for n in fleet.clients[h].networks(filters={"label": f"io.gitsync.managed-by={fleet.agent}"})}
        assert f"gitsync-{fleet.agent}_other_default" not in left and f"gitsync-{fleet.agent}_shop_back" in left, left
    finally:
        fleet.cleanup()
        fleet.clients["h3"].remove_network(edge)
