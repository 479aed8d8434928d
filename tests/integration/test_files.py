"""Files of the repository in the containers, on real engines (issue 21, item 4): a compose
project's read-only relative bind mounts and configs reach every replica on every host as those
files, read-only; a commit that changes one rolls the replicas onto the new content, and what no
replica mounts any more is removed from the hosts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import cli
from tests.integration.conftest import Fleet

pytestmark = pytest.mark.docker

COMPOSE = """\
services:
  web:
    image: gitsync-test/busybox:1
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    deploy: {replicas: 2, placement: {max_replicas_per_node: 1, constraints: ["node.labels.role == web"]}}
    volumes:
      - ./site:/www:ro
      - ./app.conf:/etc/app.conf:ro,cached
      - HOSTDIR:/host:ro,z
    configs:
      - {source: motd, target: /etc/motd, mode: 0400}
configs:
  motd: {content: "welcome"}
"""


def run_in(fleet: Fleet, host: str, container: str, cmd: str) -> tuple[int, str]:
    api = fleet.clients[host]
    ex = api.exec_create(container, ["sh", "-c", cmd])
    out = api.exec_start(ex["Id"]).decode()
    return api.exec_inspect(ex["Id"])["ExitCode"], out


def files_volumes(fleet: Fleet, host: str) -> list[str]:
    found = fleet.clients[host].volumes(filters={"label": f"io.gitsync.managed-by={fleet.agent}"}).get("Volumes") or []
    return sorted(v["Name"] for v in found if (v.get("Labels") or {}).get("io.gitsync.role") == "files")


def test_files_from_the_repository_reach_every_replica_read_only_and_a_commit_that_changes_them_rolls_the_replicas(fleet: Fleet, tmp_path: Path) -> None:
    (tmp_path / "hostdir").mkdir()
    fleet.write_config(extra_hosts=f"policy:\n  bindMounts: [{{path: '{tmp_path}'}}]\n")
    fleet.repo.write("web/compose.yaml", COMPOSE.replace("HOSTDIR", str(tmp_path / "hostdir")))
    fleet.repo.write("web/site/index.html", "<h1>v1</h1>\n")
    fleet.repo.write("web/site/css/main.css", "body {}\n")
    fleet.repo.write("web/app.conf", "level=1\n")
    fleet.repo.commit("web with its configuration")
    r = cli("apply", "-c", str(fleet.config), "--timeout", "60s")
    assert r.code == 0, r.out + r.err
    names = {h: [c["Names"][0].lstrip("/") for c in fleet.containers(h)] for h in ("h1", "h2")}
    assert all(len(n) == 1 for n in names.values()), names  # one replica on each web host
    for host, (name,) in names.items():
        code, out = run_in(fleet, host, name, "cat /etc/app.conf /www/index.html /www/css/main.css /etc/motd; echo; stat -c %a /etc/motd /etc/app.conf;"
                           " touch /www/x 2>/dev/null || echo read-only; (echo more >> /etc/app.conf) 2>/dev/null || echo read-only")
        assert code == 0 and out == "level=1\n<h1>v1</h1>\nbody {}\nwelcome\n400\n444\nread-only\nread-only\n", (host, out)
        assert len(files_volumes(fleet, host)) == 3
        binds = fleet.clients[host].inspect_container(name)["HostConfig"]["Binds"]
        assert f"{tmp_path / 'hostdir'}:/host:ro,z" in binds and sum(b.endswith(":ro") and "-files-" in b for b in binds) == 3, binds  # :z reaches Docker
    assert "files" not in cli("volumes", "-c", str(fleet.config)).out  # files from Git are no data volume
    r = cli("plan", "-c", str(fleet.config))
    assert r.code == 0, r.out  # in sync: nothing Docker filled in looks like drift

    fleet.repo.write("web/app.conf", "level=2\n")
    fleet.repo.commit("level 2")
    r = cli("plan", "-c", str(fleet.config))
    assert r.code == 2 and r.out.count("changed: files /etc/app.conf\n") == 2, r.out  # only the file that changed
    r = cli("apply", "-c", str(fleet.config), "--timeout", "60s")
    assert r.code == 0, r.out + r.err
    for host in ("h1", "h2"):
        (name,) = [c["Names"][0].lstrip("/") for c in fleet.containers(host)]
        assert run_in(fleet, host, name, "cat /etc/app.conf /www/index.html") == (0, "level=2\n<h1>v1</h1>\n")
        assert len(files_volumes(fleet, host)) == 3  # the old app.conf's volume is gone, the unchanged two stay

    (fleet.repo.path / "web" / "compose.yaml").unlink()
    fleet.repo.commit("no web")
    r = cli("apply", "-c", str(fleet.config), "--timeout", "60s")
    assert r.code == 0, r.out + r.err
    assert [files_volumes(fleet, h) for h in ("h1", "h2", "h3")] == [[], [], []]
