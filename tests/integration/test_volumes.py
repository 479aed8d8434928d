"""Data on real engines: a database's host-local volume outlives its containers, an image change,
a kill, its host's engine dying (the replica waits for that host, nothing runs elsewhere meanwhile)
and moves only when Git allows it; the old volume is never removed."""

from __future__ import annotations

import http.client
import time

import pytest

from tests import testbed
from tests.conftest import cli
from tests.integration.conftest import Fleet

pytestmark = pytest.mark.docker

SERVE = "mkdir -p /data/www; trap \"exit 0\" TERM; httpd -f -p 80 -h /data/www & wait"


def db(agent: str, image: str = "gitsync-test/busybox:1", extra: str = "") -> str:
    return (
        "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: db, labels: {app: db}}\n"
        f"spec:\n  image: {image}\n  command: [sh, -c, '{SERVE}']\n  ports: [{{containerPort: 80}}]\n"
        f"  volumes: [{{name: {agent}-pgdata, mountPath: /data}}]\n  stopGracePeriod: 1s\n{extra}"
        "---\napiVersion: gitsync.io/v1\nkind: Service\nmetadata: {name: db}\n"
        "spec: {selector: {app: db}, ports: [{port: 80, targetPort: 80, hostPort: 8090}]}\n"
    )


def apply(fleet: Fleet, code: int = 0) -> str:
    r = cli("apply", "-c", str(fleet.config), "--timeout", "60s")
    assert r.code == code, r.out + r.err
    return r.out + r.err


def where(fleet: Fleet, skip: str = "") -> list[str]:
    return [h for h in fleet.clients if h != skip for c in fleet.containers(h) if c["Labels"].get("io.gitsync.deployment") == "db"]


def rows(fleet: Fleet, via: str = "h1", within: float = 5.0) -> str:
    """What the database serves at /rows, through its Service; a replica just (re)started may take a
    moment to answer (the proxies' next check), as a client with retries would see."""
    addr = next(e.addr for e in fleet.engines if e.name == via)
    deadline = time.monotonic() + within
    while True:
        conn = http.client.HTTPConnection(addr, 8090, timeout=5)
        try:
            conn.request("GET", "/rows")
            resp = conn.getresponse()
            return resp.read().decode() if resp.status == 200 else f"HTTP {resp.status}"
        except (OSError, http.client.HTTPException):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
        finally:
            conn.close()


def write(fleet: Fleet, host: str, line: str) -> None:
    api = fleet.clients[host]
    ex = api.exec_create(f"{fleet.agent}-db-0", ["sh", "-c", f"echo {line} >> /data/www/rows"])
    api.exec_start(ex["Id"])
    assert api.exec_inspect(ex["Id"])["ExitCode"] == 0


def test_a_databases_data_survives_image_changes_kills_and_its_hosts_death(fleet: Fleet) -> None:
    fleet.write_config(extra_hosts=f"services: {{proxyImage: '{testbed.PROXY_IMAGE}'}}\n")
    fleet.repo.write("apps/db.yaml", db(fleet.agent))
    fleet.repo.commit("a database")
    apply(fleet)
    (home,) = where(fleet)
    write(fleet, home, "row1")
    assert rows(fleet) == "row1\n"
    # an image change: stop-first (one writer), same host, same data
    fleet.repo.write("apps/db.yaml", db(fleet.agent, image="gitsync-test/busybox:2"))
    fleet.repo.commit("db image 2")
    r = cli("plan", "-c", str(fleet.config))
    assert "(stop-first: volume " in r.out, r.out
    apply(fleet)
    assert where(fleet) == [home] and rows(fleet) == "row1\n"
    write(fleet, home, "row2")
    # killed: back on its host with its data
    fleet.clients[home].kill(f"{fleet.agent}-db-0")
    apply(fleet)
    assert where(fleet) == [home] and rows(fleet) == "row1\nrow2\n"
    # its host's engine dies: the replica waits for it and runs nowhere else in between
    engine = next(e for e in fleet.engines if e.name == home)
    testbed.stop(engine)
    try:
        out = apply(fleet, code=1)
        assert f"db: replica 0 waits for {home}: unreachable, and its volume {fleet.agent}-pgdata may be there" in out, out
        assert where(fleet, skip=home) == []  # not started on an empty volume elsewhere
    finally:
        testbed.start(engine)
    apply(fleet)
    assert where(fleet) == [home] and rows(fleet) == "row1\nrow2\n"
    # a placement that leaves its host: refused, until Git allows the move; the old volume stays
    other = next(h for h in ("h1", "h2", "h3") if h != home)
    roles = {h: ("db" if h == other else "web") for h in ("h1", "h2", "h3")}
    fleet.write_config(labels=roles, extra_hosts=f"services: {{proxyImage: '{testbed.PROXY_IMAGE}'}}\n")
    fleet.repo.write("apps/db.yaml", db(fleet.agent, image="gitsync-test/busybox:2", extra="  placement: {hostSelector: {role: db}}\n"))
    fleet.repo.commit("db to the db host")
    out = apply(fleet, code=1)
    assert f"replica 0 stays on {home} (the host no longer matches placement): its volume {fleet.agent}-pgdata lives there" in out, out
    assert where(fleet) == [home]
    fleet.repo.write("apps/db.yaml", db(fleet.agent, image="gitsync-test/busybox:2", extra="  placement: {hostSelector: {role: db}}\n  allowDataMove: true\n"))
    fleet.repo.commit("move db, knowingly")
    r = cli("plan", "-c", str(fleet.config))
    assert f"moves {home} -> {other}: volume {fleet.agent}-pgdata on {home} is left behind, not copied" in r.out, r.out
    apply(fleet)
    assert where(fleet) == [other] and rows(fleet) == "HTTP 404"  # a new, empty volume there
    assert fleet.clients[home].inspect_volume(f"{fleet.agent}-pgdata")["Labels"]["io.gitsync.managed-by"] == fleet.agent  # kept
