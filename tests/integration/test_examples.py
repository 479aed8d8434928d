"""examples/repo doubles as an end-to-end test: the README's walk-through, on the real engines.

The image is built by scripts/example-image, the quick start's own step, on every engine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli
from tests.sopsfile import secret_manifest
from tests.integration.conftest import Fleet, http_call

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_walk_through_on_examples_repo(fleet: Fleet) -> None:
    for e in fleet.engines:
        r = subprocess.run(["bash", "scripts/example-image"], cwd=ROOT, env={**os.environ, "DOCKER_HOST": e.unix_url}, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    fleet.write_config(extra_hosts="services: {proxyImage: 'gitsync-example/haproxy:2.6'}\n")  # as examples/gitsync.yaml
    shutil.copytree(ROOT / "examples" / "repo", fleet.repo.path, dirs_exist_ok=True)
    fleet.repo.commit("the examples")
    assert cli("validate", str(fleet.repo.path)).code == 0

    r = cli("apply", "-c", str(fleet.config), "--timeout", "90s")
    assert r.code == 0, r.out + r.err
    placed = fleet.by_host()
    web = {h: [n for n in names if "_web-" in n] for h, names in placed.items()}
    assert sum(len(v) for v in web.values()) == 2 and not web["h3"], placed  # hostSelector role=web: h1 and h2 only
    assert all(len(v) <= 2 for v in web.values())  # maxPerHost
    worker = [(h, n) for h, names in placed.items() for n in names if "_worker-" in n]
    assert len(worker) == 1, placed
    worker_id = fleet.ids()[worker[0][1]]
    assert all(f"{fleet.agent}-proxy" in names for names in placed.values())  # the Service web: a proxy on every host
    assert "1/1 Service ready" in r.out, r.out

    # The README: "web: one replica of image 2", committed, then plan and apply.
    web_yaml = fleet.repo.path / "apps" / "web.yaml"
    web_yaml.write_text(web_yaml.read_text().replace("replicas: 2", "replicas: 1", 1).replace("busybox:1", "busybox:2", 1))
    fleet.repo.commit("web: one replica of image 2")
    r = cli("plan", "-c", str(fleet.config))
    assert r.code == 2, r.out + r.err  # changes pending
    assert "image gitsync-example/busybox:1 -> gitsync-example/busybox:2" in r.out and "scaled down to 1" in r.out, r.out
    r = cli("apply", "-c", str(fleet.config), "--timeout", "90s")
    assert r.code == 0, r.out + r.err
    running = [c for h in ("h1", "h2") for c in fleet.containers(h, all=False) if c["Labels"].get("io.gitsync.deployment") == "web"]
    assert [c["Image"] for c in running] == ["gitsync-example/busybox:2"] and "(healthy)" in running[0]["Status"]
    assert fleet.ids()[worker[0][1]] == worker_id  # the worker did not change, so it was not touched
    assert cli("plan", "-c", str(fleet.config)).code == 0  # in sync


def test_the_three_tier_application_keeps_its_rows_through_a_database_upgrade_and_a_new_password(fleet: Fleet) -> None:
    """examples/three-tier, offline: web -> api -> db by Service names, rows written through the web
    tier's hostPort, kept on db's volume through an image change of the database (stop-first). The
    database's password is an encrypted Secret (a file for db, a variable for api): a new one in Git
    replaces exactly those two, and nothing but api's environment (asked for) shows it."""
    for e in fleet.engines:
        r = subprocess.run(["bash", "scripts/example-image"], cwd=ROOT, env={**os.environ, "DOCKER_HOST": e.unix_url}, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    key = ROOT / "examples" / "keys" / "example-age.key"
    fleet.write_config(extra_hosts=f"services: {{proxyImage: 'gitsync-example/haproxy:2.6'}}\nsecrets: {{ageKeyFile: '{key}'}}\n")
    shutil.copytree(ROOT / "examples" / "three-tier", fleet.repo.path, dirs_exist_ok=True)
    db_yaml = fleet.repo.path / "apps" / "db.yaml"
    db_yaml.write_text(db_yaml.read_text().replace("name: shop-db", f"name: {fleet.agent}-shop-db"))  # a volume of this test's own
    fleet.repo.commit("the shop")
    r = cli("apply", "-c", str(fleet.config), "--timeout", "120s")
    assert r.code == 0, r.out + r.err
    assert "3/3 deployments converged" in r.out and "3/3 Services ready" in r.out, r.out

    def call(path: str, body: str | None = None) -> tuple[int, str]:
        return http_call(fleet.engines[2].addr, 8000, path, body)  # any host: h3

    assert call("/cgi-bin/add", "order 1") == (200, "stored\n")
    assert call("/cgi-bin/add", "order 2") == (200, "stored\n")
    assert call("/cgi-bin/rows") == (200, "order 1\norder 2\n")
    db_yaml.write_text(db_yaml.read_text().replace("busybox:1", "busybox:2"))
    fleet.repo.commit("db: image 2")
    r = cli("apply", "-c", str(fleet.config), "--timeout", "120s")
    assert r.code == 0 and "replaced (stop-first)" not in r.err, r.out + r.err
    assert call("/cgi-bin/rows") == (200, "order 1\norder 2\n")

    # a new password, committed encrypted: db and api replaced (the plan names the secret), web kept
    old_password, new_password = "shop-db-7c41e9", "shop-db-rotated-5b2d"
    before = fleet.ids()
    files_volumes = {v["Name"] for api in fleet.clients.values() for v in (api.volumes(filters={"label": ["io.gitsync.role=files", f"io.gitsync.managed-by={fleet.agent}"]}) or {}).get("Volumes") or []}
    recipient = key.read_text().split("# public key: ")[1].split()[0]
    comment = "".join(line + "\n" for line in (fleet.repo.path / "apps" / "db-secret.yaml").read_text().splitlines() if line.startswith("#"))
    (fleet.repo.path / "apps" / "db-secret.yaml").write_text(comment + secret_manifest("db", {"password": new_password}, recipients=(recipient,)))
    fleet.repo.commit("db: a new password")
    plan = cli("plan", "-c", str(fleet.config))
    assert plan.code == 2 and plan.out.count("changed: secret db/password") == 3, plan.out  # db-0, api-0, api-1
    assert "web-" not in plan.out, plan.out
    r = cli("apply", "-c", str(fleet.config), "--timeout", "120s")
    assert r.code == 0, r.out + r.err
    after = fleet.ids()
    assert {n for n in before if "_web-" in n or "-proxy" in n} <= set(after)
    assert all(after[n] == before[n] for n in before if "_web-" in n)  # web does not use the secret: untouched
    assert not any(n in after and after[n] == before[n] for n in before if "_db-" in n or "_api-" in n)
    assert call("/cgi-bin/rows") == (200, "order 1\norder 2\n")  # api and db agree on the new password
    (h, db), = [(h, c) for h in fleet.clients for c in fleet.containers(h) if c["Labels"].get("io.gitsync.deployment") == "db"]

    def run_in(cmd: str) -> str:
        ex = fleet.clients[h].exec_create(db["Id"], ["sh", "-c", cmd])
        return fleet.clients[h].exec_start(ex["Id"]).decode()

    assert run_in("cat /run/secrets/db-password") == new_password  # the file, as the Secret holds it
    assert run_in("ls -ln /run/secrets/db-password").split()[:4] == ["-r--------", "1", "0", "0"]  # mode 0400, root's
    assert "401" in run_in("wget -O /dev/null http://127.0.0.1:5432/rows 2>&1")  # and the database wants it
    shown = plan.out + plan.err + r.out + r.err + cli("status", "-c", str(fleet.config)).out
    for h, api in fleet.clients.items():
        for c in fleet.containers(h):
            info = json.dumps(api.inspect_container(c["Id"]))
            if c["Labels"].get("io.gitsync.deployment") == "api":
                assert f"DB_PASSWORD={new_password}" in info  # asked for as a variable: Docker shows it there, and only there
                info = info.replace(f"DB_PASSWORD={new_password}", "")
            shown += info
        shown += json.dumps(api.volumes())
    assert new_password not in shown and old_password not in shown
    now = {v["Name"] for api in fleet.clients.values() for v in (api.volumes(filters={"label": ["io.gitsync.role=files", f"io.gitsync.managed-by={fleet.agent}"]}) or {}).get("Volumes") or []}
    assert now and not (files_volumes & now)  # the old password's files are gone from every host, the new one's there
