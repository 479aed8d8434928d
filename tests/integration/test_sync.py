"""The sync on three real Docker engines: validate, plan, apply, change in Git, refuse bad input."""

from __future__ import annotations

import docker
import pytest

from tests import testbed
from tests.conftest import cli
from tests.integration.conftest import Fleet

pytestmark = pytest.mark.docker

LOOP = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]


def deployment(name: str, replicas: int = 1, image: str = "gitsync-test/busybox:1", extra: str = "", labels: str = "") -> str:
    cmd = ", ".join(f'"{c}"' if '"' not in c else repr(c) for c in LOOP)
    return (
        f"apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata:\n  name: {name}\n"
        + (f"  labels: {labels}\n" if labels else "")
        + f"spec:\n  replicas: {replicas}\n  image: {image}\n  command: [{cmd}]\n{extra}"
    )


WEB = "  placement: {hostSelector: {role: web}}\n"
DB = "  placement: {hostSelector: {role: db}}\n  volumes: [{name: DBVOL, mountPath: /data}]\n"


def seed(fleet: Fleet, web: int = 3) -> None:
    fleet.repo.write("apps/web.yaml", deployment("web", web, extra=WEB, labels="{app: web}"))
    fleet.repo.write("apps/db.yaml", deployment("db", 1, extra=DB.replace("DBVOL", f"{fleet.agent}-db")))
    fleet.repo.commit("seed")


def apply(fleet: Fleet, *extra: str):  # type: ignore[no-untyped-def]
    return cli("apply", "-c", str(fleet.config), "--timeout", "30s", *extra)


def test_apply_places_replicas_by_selector_and_labels_them(fleet: Fleet) -> None:
    seed(fleet)
    r = cli("plan", "-c", str(fleet.config))
    assert r.code == 2, r.out + r.err
    assert "+ " in r.out and "create" in r.out
    r = apply(fleet)
    assert r.code == 0, r.out + r.err
    assert "success: 2/2 deployments converged" in r.out
    placed = fleet.by_host()
    web_on = {h: [n for n in names if "_web-" in n] for h, names in placed.items()}
    assert sorted(len(v) for v in web_on.values()) == [0, 1, 2]  # spread over the two web hosts
    assert web_on["h3"] == [] and placed["h3"] == [f"{fleet.agent}_db-0"]
    (c,) = fleet.containers("h3")
    commit = fleet.repo.commit.__self__  # noqa: B018 - just to show the repo exists
    assert commit is not None
    labels = c["Labels"]
    assert labels["io.gitsync.managed-by"] == fleet.agent
    assert labels["io.gitsync.deployment"] == "db" and labels["io.gitsync.replica"] == "0"
    assert labels["io.gitsync.revision"].startswith("main@sha1:") and len(labels["io.gitsync.spec-hash"]) == 64
    assert c["State"] == "running"
    # applying again changes nothing, and plan says so with exit 0
    before = fleet.ids()
    assert apply(fleet).code == 0
    assert fleet.ids() == before
    r = cli("plan", "-c", str(fleet.config))
    assert r.code == 0 and "in sync" in r.out
    r = cli("hosts", "-c", str(fleet.config))
    assert r.code == 0 and "web 2" in r.out


def test_image_change_and_scaling_through_git(fleet: Fleet) -> None:
    seed(fleet, web=2)
    assert apply(fleet).code == 0
    before = fleet.ids()
    # scale up: the survivors are not recreated
    fleet.repo.write("apps/web.yaml", deployment("web", 4, extra=WEB, labels="{app: web}"))
    fleet.repo.commit("scale web to 4")
    assert apply(fleet).code == 0
    after = fleet.ids()
    for name, cid in before.items():
        assert after[name] == cid, f"{name} was recreated by a scale-up"
    assert sum("_web-" in n for n in after) == 4
    # an image change is planned as a replace naming the image, then rolled out
    fleet.repo.write("apps/web.yaml", deployment("web", 4, image="gitsync-test/busybox:2", extra=WEB, labels="{app: web}"))
    fleet.repo.commit("web 2")
    r = cli("plan", "-c", str(fleet.config))
    assert r.code == 2
    assert r.out.count("~ ") == 4 and "image gitsync-test/busybox:1 -> gitsync-test/busybox:2" in r.out
    assert apply(fleet).code == 0
    images = {c["Names"][0]: c["Image"] for h in ("h1", "h2") for c in fleet.containers(h)}
    assert len(images) == 4 and set(images.values()) == {"gitsync-test/busybox:2"}
    assert all("-next" not in n for n in images)  # start-first temporaries took the replica names
    # scale down removes the highest replicas
    fleet.repo.write("apps/web.yaml", deployment("web", 1, image="gitsync-test/busybox:2", extra=WEB, labels="{app: web}"))
    fleet.repo.commit("web down to 1")
    assert apply(fleet).code == 0
    assert sorted(n for n in fleet.ids() if "_web-" in n) == [f"{fleet.agent}_web-0"]


def test_invalid_repository_applies_nothing(fleet: Fleet) -> None:
    seed(fleet)
    assert apply(fleet).code == 0
    before = fleet.ids()
    fleet.repo.write("apps/web.yaml", deployment("web", 5, image="gitsync-test/busybox:2", extra=WEB + "  replicas: -1\n"))
    fleet.repo.write("apps/new.yaml", deployment("new", 2))
    fleet.repo.commit("broken")
    r = apply(fleet)
    assert r.code == 1
    assert "apps/web.yaml:" in r.err and "duplicate key 'replicas'" in r.err
    assert fleet.ids() == before  # nothing created, replaced or removed
    r = cli("validate", "-c", str(fleet.config))
    assert r.code == 1 and "apps/web.yaml:" in r.err


def test_prune_removes_containers_never_volumes(fleet: Fleet) -> None:
    seed(fleet)
    assert apply(fleet).code == 0
    (fleet.repo.path / "apps/db.yaml").unlink()
    fleet.repo.commit("drop db")
    r = cli("plan", "-c", str(fleet.config))
    assert "no longer in Git (prune)" in r.out
    assert apply(fleet).code == 0
    assert fleet.by_host()["h3"] == []
    vols = [v["Name"] for v in (fleet.clients["h3"].volumes() or {}).get("Volumes") or []]
    assert f"{fleet.agent}-db" in vols


def test_unmanaged_containers_are_never_touched(fleet: Fleet) -> None:
    api = fleet.clients["h3"]
    squatter = api.create_container("gitsync-test/busybox:1", command=LOOP, name=f"{fleet.agent}_db-0")
    other = api.create_container(
        "gitsync-test/busybox:1", command=LOOP, name=f"{fleet.agent}-other", labels={"io.gitsync.managed-by": "someone-else", "io.gitsync.deployment": "x"}
    )
    try:
        seed(fleet)
        r = apply(fleet)
        assert r.code == 1
        assert f"the name {fleet.agent}_db-0 is taken by a container gitsync does not manage" in r.out + r.err
        # the web deployment on the other hosts still converged
        assert sum("_web-" in n for n in fleet.ids()) == 3
        assert api.inspect_container(squatter["Id"])["Config"]["Labels"].get("io.gitsync.managed-by") is None
        assert api.inspect_container(other["Id"])["Id"] == other["Id"]
        # the name held by another agent's container: said so (names cannot collide by construction,
        # but an agent renamed by hand, or one sharing a name, meets its fellow's containers)
        api.remove_container(squatter["Id"], force=True)
        squatter = api.create_container(
            "gitsync-test/busybox:1", command=LOOP, name=f"{fleet.agent}_db-0", labels={"io.gitsync.managed-by": "someone-else", "io.gitsync.deployment": "db"}
        )
        r = apply(fleet)
        assert r.code == 1 and f"the name {fleet.agent}_db-0 is taken by a container of gitsync agent someone-else" in r.out + r.err, r.out + r.err
    finally:
        api.remove_container(squatter["Id"], force=True)
        api.remove_container(other["Id"], force=True)


def test_unreachable_host_is_named_and_others_still_sync(fleet: Fleet) -> None:
    fleet.write_config(extra_hosts="  - {name: gone, url: 'tcp://127.0.0.1:9', labels: {role: web}}\n")
    seed(fleet)
    r = apply(fleet)
    assert r.code == 1
    assert "host gone unreachable (connection refused)" in r.out
    assert sum("_web-" in n for n in fleet.ids()) == 3  # placed on the reachable web hosts
    r = cli("hosts", "-c", str(fleet.config))
    assert r.code == 1 and "gone" in r.out and "UNREACHABLE" in r.out


def test_impossible_placement_names_the_deployment(fleet: Fleet) -> None:
    fleet.repo.write("apps/web.yaml", deployment("web", 3, extra=WEB + "  ports: [{containerPort: 80, hostPort: 18080}]\n"))
    fleet.repo.commit("three on two hosts")
    r = cli("plan", "-c", str(fleet.config))
    assert r.code == 1 and "web: 1 of 3 replicas cannot be placed; a fixed hostPort allows 1 per host" in r.out
    r = apply(fleet)
    assert r.code == 1 and "web: 1 of 3 replicas cannot be placed" in r.out
    assert sum("_web-" in n for n in fleet.ids()) == 2  # what fits runs


def test_stopped_replica_is_started_and_stop_first_update(fleet: Fleet) -> None:
    fleet.repo.write("apps/w.yaml", deployment("w", 1, extra="  update: {order: stop-first}\n  placement: {hostSelector: {role: db}}\n"))
    fleet.repo.commit("w")
    assert apply(fleet).code == 0
    api = fleet.clients["h3"]
    api.stop(f"{fleet.agent}_w-0", timeout=5)
    r = cli("plan", "-c", str(fleet.config))
    assert r.code == 2 and "start" in r.out and "replica is exited" in r.out
    assert apply(fleet).code == 0
    assert api.inspect_container(f"{fleet.agent}_w-0")["State"]["Running"]
    fleet.repo.write("apps/w.yaml", deployment("w", 1, image="gitsync-test/busybox:3", extra="  update: {order: stop-first}\n  placement: {hostSelector: {role: db}}\n"))
    fleet.repo.commit("w3")
    r = apply(fleet)
    assert r.code == 0 and "replace ok" in r.out
    assert api.inspect_container(f"{fleet.agent}_w-0")["Config"]["Image"] == "gitsync-test/busybox:3"


def test_image_is_pulled_when_missing(fleet: Fleet) -> None:
    api = fleet.clients["h3"]
    try:
        api.remove_image(testbed.REGISTRY_IMAGE)
    except docker.errors.ImageNotFound:
        pass
    fleet.repo.write("apps/p.yaml", deployment("p", 1, image=testbed.REGISTRY_IMAGE, extra="  placement: {hostSelector: {role: db}}\n"))
    fleet.repo.commit("p")
    r = apply(fleet)
    assert r.code == 0, r.out + r.err
    assert api.inspect_container(f"{fleet.agent}_p-0")["Config"]["Image"] == testbed.REGISTRY_IMAGE


def test_missing_image_is_a_clear_failure(fleet: Fleet) -> None:
    missing = f"{testbed.REGISTRY}/gitsync-test/nothing-here:1"
    fleet.repo.write("apps/x.yaml", deployment("x", 1, image=missing, extra="  placement: {hostSelector: {role: db}}\n"))
    fleet.repo.commit("x")
    r = apply(fleet)
    assert r.code == 1
    assert f"x: replica 0 create failed on h3: cannot pull {missing}" in r.out
    with pytest.raises(docker.errors.NotFound):
        fleet.clients["h3"].inspect_container(f"{fleet.agent}_x-0")
