"""A compose project on the real engines: examples/compose-shop (web, api, db with replicas,
depends_on healthy and a named volume) applied over three hosts, reached by service name across
hosts, then changed in Git (an image, replicas, a removed service) and converged, its data kept."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli
from tests.integration.conftest import Fleet, http_call

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]


def replicas(fleet: Fleet, service: str) -> list[tuple[str, str]]:
    """(host, image) of each running replica of a compose service."""
    return sorted((h, c["Image"]) for h in fleet.clients for c in fleet.containers(h, all=False) if c["Labels"].get("io.gitsync.deployment") == service)


def call(addr: str, path: str, body: str | None = None) -> tuple[int, str]:
    return http_call(addr, 8000, path, body)


def test_a_compose_project_runs_across_hosts_by_service_name_and_converges_on_changes(fleet: Fleet) -> None:
    for e in fleet.engines:
        r = subprocess.run(["bash", "scripts/example-image"], cwd=ROOT, env={**os.environ, "DOCKER_HOST": e.unix_url}, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    volume = f"{fleet.agent}-shop-db"  # a volume of this test's own, named in the project's .env (read from the commit)
    fleet.write_config(extra_hosts="services: {proxyImage: 'gitsync-example/haproxy:2.6'}\n")
    shutil.copytree(ROOT / "examples" / "compose-shop", fleet.repo.path, dirs_exist_ok=True)
    (fleet.repo.path / ".env").write_text(f"# this test's volume\nDB_VOLUME={volume}\n")
    fleet.repo.commit("the shop, as a compose file")

    r = cli("plan", "-c", str(fleet.config))
    assert r.code == 2 and "+ " in r.out, r.out + r.err
    r = cli("apply", "-c", str(fleet.config), "--timeout", "120s")
    assert r.code == 0, r.out + r.err
    assert "3/3 deployments converged" in r.out and "3/3 Services ready" in r.out, r.out
    hosts = {h for s in ("web", "api", "db") for h, _ in replicas(fleet, s)}
    assert len(replicas(fleet, "web")) == 2 and len(replicas(fleet, "api")) == 2 and len(replicas(fleet, "db")) == 1 and len(hosts) >= 2
    (db_host, _), = replicas(fleet, "db")
    assert fleet.clients[db_host].inspect_volume(volume)["Labels"]["io.gitsync.managed-by"] == fleet.agent

    # web -> api -> db by their service names, whichever host each runs on; 8000 answers on every host
    h3 = fleet.engines[2].addr
    assert call(h3, "/cgi-bin/add", "order 1") == (200, "stored\n")
    for e in fleet.engines:
        assert call(e.addr, "/cgi-bin/rows") == (200, "order 1\n")

    # Changed in Git: the database's image, the API's replicas, the web service removed.
    text = (fleet.repo.path / "compose.yaml").read_text()
    head, _, rest = text.partition("  web:\n")
    rest = rest[rest.index("  api:\n"):]
    text = (head + rest).replace("deploy:\n      replicas: 2", "deploy:\n      replicas: 3")
    text = text.replace("image: gitsync-example/busybox:1\n    command: app-db", "image: gitsync-example/busybox:2\n    command: app-db")
    (fleet.repo.path / "compose.yaml").write_text(text)
    fleet.repo.commit("db image 2, api x3, no web")
    r = cli("plan", "-c", str(fleet.config))
    assert r.code == 2 and "image gitsync-example/busybox:1 -> gitsync-example/busybox:2" in r.out, r.out
    r = cli("apply", "-c", str(fleet.config), "--timeout", "120s")
    assert r.code == 0, r.out + r.err
    assert replicas(fleet, "web") == [] and len(replicas(fleet, "api")) == 3
    assert [img for _, img in replicas(fleet, "db")] == ["gitsync-example/busybox:2"] and replicas(fleet, "db")[0][0] == db_host
    api = fleet.clients[db_host]
    ex = api.exec_create(f"{fleet.agent}_db-0", ["cat", "/data/www/rows"])
    assert api.exec_start(ex["Id"]).decode() == "order 1\n"  # the row outlived the database's replacement
    r = cli("plan", "-c", str(fleet.config))
    assert r.code == 0 and "in sync" in r.out, r.out + r.err
