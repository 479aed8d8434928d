"""examples/repo doubles as an end-to-end test: the README's walk-through, on the real engines.

The image is built by scripts/example-image, the quick start's own step, on every engine.
"""

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


def test_the_three_tier_application_keeps_its_rows_through_a_database_upgrade(fleet: Fleet) -> None:
    """examples/three-tier, offline: web -> api -> db by Service names, rows written through the web
    tier's hostPort, kept on db's volume through an image change of the database (stop-first)."""
    for e in fleet.engines:
        r = subprocess.run(["bash", "scripts/example-image"], cwd=ROOT, env={**os.environ, "DOCKER_HOST": e.unix_url}, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    fleet.write_config(extra_hosts="services: {proxyImage: 'gitsync-example/haproxy:2.6'}\n")
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
