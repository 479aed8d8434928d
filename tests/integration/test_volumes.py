"""Data on real engines: a database's host-local volume outlives its containers, an image change,
a kill, its host's engine dying (the replica waits for that host, nothing runs elsewhere meanwhile)
and moves only when Git allows it; the old volume is never removed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import testbed
from tests.conftest import cli
from tests.integration.conftest import Fleet, http_call

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
    """What the database serves at /rows, through its Service."""
    addr = next(e.addr for e in fleet.engines if e.name == via)
    status, text = http_call(addr, 8090, "/rows", within=within, timeout=3)
    return text if status == 200 else f"HTTP {status}"


def write(fleet: Fleet, host: str, line: str) -> None:
    api = fleet.clients[host]
    ex = api.exec_create(f"{fleet.agent}_db-0", ["sh", "-c", f"echo {line} >> /data/www/rows"])
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
    fleet.clients[home].kill(f"{fleet.agent}_db-0")
    apply(fleet)
    assert where(fleet) == [home] and rows(fleet) == "row1\nrow2\n"
    # its host's engine dies: the replica waits for it and runs nowhere else in between
    engine = next(e for e in fleet.engines if e.name == home)
    testbed.kill(engine)  # SIGKILL: a host dying (its containers may outlive dockerd as orphans)
    try:
        out = apply(fleet, code=1)
        assert f"db: replica 0 waits for {home}: unreachable, and its volume {fleet.agent}-pgdata may be there" in out, out
        assert where(fleet, skip=home) == []  # not started on an empty volume elsewhere
    finally:
        testbed.start(engine)
    apply(fleet)
    # back on its host with its data (read in the container: right after its engine restarts, the
    # host's published ports may still be held by the killed engine's orphaned port proxies)
    assert where(fleet) == [home] and cat(fleet, home, f"{fleet.agent}_db-0", "/data/www/rows") == "row1\nrow2\n"
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


def cat(fleet: Fleet, host: str, container: str, path: str) -> str:
    api = fleet.clients[host]
    ex = api.exec_create(container, ["cat", path])
    return api.exec_start(ex["Id"]).decode()


def test_per_replica_volumes_and_a_shared_volume_that_moves_with_its_replica(fleet: Fleet, tmp_path: Path) -> None:
    # Every test engine runs on this one machine and sees its filesystem: a bind `device` there is
    # what NFS (or any network storage) gives a real fleet, one path every host mounts.
    shared = tmp_path / "shared"
    shared.mkdir()
    fleet.write_config(f"policy:\n  bindMounts: [{{path: '{shared}', readOnly: false}}]\n")  # a volume that binds is judged as a bind mount
    loop = "trap \"exit 0\" TERM; while :; do sleep 1; done"
    fleet.repo.write("apps/kv.yaml", (
        "apiVersion: gitsync.io/v1\nkind: Volume\nmetadata: {name: kvdata}\nspec: {perReplica: true}\n---\n"
        "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: kv}\n"
        f"spec:\n  replicas: 2\n  image: gitsync-test/busybox:1\n  command: [sh, -c, '{loop}']\n"
        "  volumes: [{name: kvdata, mountPath: /data}]\n  stopGracePeriod: 1s\n"
    ))
    fleet.repo.write("apps/files.yaml", (
        f"apiVersion: gitsync.io/v1\nkind: Volume\nmetadata: {{name: {fleet.agent}-files}}\n"
        f"spec: {{shared: true, driverOpts: {{type: none, o: bind, device: '{shared}'}}}}\n---\n"
        "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: files}\n"
        f"spec:\n  image: gitsync-test/busybox:1\n  command: [sh, -c, '{loop}']\n"
        f"  volumes: [{{name: {fleet.agent}-files, mountPath: /data}}]\n  stopGracePeriod: 1s\n"
    ))
    fleet.repo.commit("kv with a volume per replica, files on shared storage")
    apply(fleet)
    kv = {c["Labels"]["io.gitsync.replica"]: h for h in fleet.clients for c in fleet.containers(h) if c["Labels"].get("io.gitsync.deployment") == "kv"}
    assert sorted(kv) == ["0", "1"]
    for i, h in kv.items():
        write_in = fleet.clients[h].exec_create(f"{fleet.agent}_kv-{i}", ["sh", "-c", f"echo replica {i} > /data/me"])
        fleet.clients[h].exec_start(write_in["Id"])
        fleet.clients[h].remove_container(f"{fleet.agent}_kv-{i}", force=True)  # both gone
    apply(fleet)
    for i, h in kv.items():  # each back on its host, with its own data
        assert cat(fleet, h, f"{fleet.agent}_kv-{i}", "/data/me") == f"replica {i}\n"
    r = cli("volumes", "-c", str(fleet.config))
    assert r.code == 0, r.out + r.err
    for i, h in kv.items():
        assert any(line.split()[:2] == [h, f"kvdata-{i}"] and f"kv replica {i}" in line and "in Git" in line for line in r.out.splitlines()), r.out
    # the shared volume: its replica's host stops, the replica runs elsewhere with the same data
    (home,) = [h for h in fleet.clients for c in fleet.containers(h) if c["Labels"].get("io.gitsync.deployment") == "files"]
    (shared / "hello").write_text("kept\n")
    engine = next(e for e in fleet.engines if e.name == home)
    testbed.stop(engine)
    try:
        apply(fleet, code=1)  # exit 1: a host is unreachable; `gitsync apply` places its replicas elsewhere at once
        (now,) = [h for h in fleet.clients if h != home for c in fleet.containers(h) if c["Labels"].get("io.gitsync.deployment") == "files"]
        assert cat(fleet, now, f"{fleet.agent}_files-0", "/data/hello") == "kept\n"
    finally:
        testbed.start(engine)
    # kv leaves Git: its volumes stay, listed as kept
    (fleet.repo.path / "apps" / "kv.yaml").unlink()
    fleet.repo.commit("no kv")
    apply(fleet)
    r = cli("volumes", "-c", str(fleet.config))
    assert sum("no manifest mounts it any more (kept)" in line for line in r.out.splitlines() if "kvdata-" in line) == 2, r.out


def test_a_volume_gitsync_did_not_make_or_with_other_options_is_refused_with_the_remedy(fleet: Fleet) -> None:
    for api in fleet.clients.values():  # the name is taken on every host by a volume someone made by hand
        api.create_volume(f"{fleet.agent}-theirs")
    try:
        fleet.repo.write("apps/app.yaml", (
            "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: app}\n"
            f"spec:\n  image: gitsync-test/busybox:1\n  command: [sleep, '3600']\n  volumes: [{{name: {fleet.agent}-theirs, mountPath: /data}}]\n"
        ))
        fleet.repo.commit("app on a volume name that is taken")
        out = apply(fleet, code=1)
        assert f"volume {fleet.agent}-theirs on h1 belongs to no gitsync agent (made by hand or another tool)" in out, out
        assert "rename the volume in Git" in out and where_app(fleet) == []  # nothing created on it
    finally:
        for api in fleet.clients.values():
            api.remove_volume(f"{fleet.agent}-theirs")
    # ours, but Git now says other options: a problem with the remedy, the running replica left as it is
    fleet.repo.write("apps/app.yaml", (
        "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: app}\n"
        f"spec:\n  image: gitsync-test/busybox:1\n  command: [sleep, '3600']\n  volumes: [{{name: {fleet.agent}-mine, mountPath: /data}}]\n"
    ))
    fleet.repo.commit("app on its own volume")
    apply(fleet)
    fleet.repo.write("apps/vol.yaml", (
        f"apiVersion: gitsync.io/v1\nkind: Volume\nmetadata: {{name: {fleet.agent}-mine}}\nspec: {{driverOpts: {{type: tmpfs, device: tmpfs}}}}\n"
    ))
    fleet.repo.commit("the same volume, other options")
    r = cli("plan", "-c", str(fleet.config))
    assert r.code == 1 and "Docker cannot change a volume's driver or options: rename it in Git" in r.out, r.out


def where_app(fleet: Fleet) -> list[str]:
    return [h for h in fleet.clients for c in fleet.containers(h) if c["Labels"].get("io.gitsync.deployment") == "app"]


def test_an_external_volume_is_used_on_the_host_that_has_it_and_never_made_elsewhere(fleet: Fleet) -> None:
    name = f"{fleet.agent}-ext"
    for api in fleet.clients.values():
        if name in [v["Name"] for v in (api.volumes() or {}).get("Volumes") or []]:
            api.remove_volume(name, force=True)
    fleet.repo.write("apps/app.yaml", (
        f"apiVersion: gitsync.io/v1\nkind: Volume\nmetadata: {{name: {name}}}\nspec: {{external: true}}\n---\n"
        "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: app}\n"
        f"spec:\n  image: gitsync-test/busybox:1\n  command: [sh, -c, 'trap \"exit 0\" TERM; sleep 600 & wait']\n"
        f"  volumes: [{{name: {name}, mountPath: /data}}]\n"
    ))
    fleet.repo.commit("an app on an external volume")
    try:
        out = apply(fleet, code=1)  # on no host yet: nothing is made
        assert f"external volume {name} exists on none of the eligible hosts (gitsync never makes it)" in out, out
        assert not any(name in [v["Name"] for v in (api.volumes() or {}).get("Volumes") or []] for api in fleet.clients.values())
        fleet.clients["h2"].create_volume(name)  # made by hand, unlabelled
        apply(fleet)
        assert where_app(fleet) == ["h2"]
        assert fleet.clients["h2"].inspect_volume(name)["Labels"] in (None, {})  # never labelled, never taken over
        assert cli("plan", "-c", str(fleet.config)).code == 0
    finally:
        for api in fleet.clients.values():
            for c in api.containers(all=True, filters={"label": [f"io.gitsync.managed-by={fleet.agent}"]}):
                api.remove_container(c["Id"], force=True)
            if name in [v["Name"] for v in (api.volumes() or {}).get("Volumes") or []]:
                api.remove_volume(name, force=True)
