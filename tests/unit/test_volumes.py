"""Volumes: declared or implicit, validated against the deployments that mount them; a replica with
host-local data stays bound to the host that holds it (it waits for that host rather than start
on an empty volume elsewhere), moves only when Git allows it, and the plan says what is left behind."""

from __future__ import annotations

import pytest

from gitsync.core import config as config_mod
from gitsync.core import labels as L
from gitsync.core.actions import ActionKind
from gitsync.core.config import PolicySettings
from gitsync.core.errors import ManifestError
from gitsync.core.live import HostObservation, LiveContainer, LiveVolume
from gitsync.core.manifest import load_files
from gitsync.runtimes.containers.plan import make_plan
from gitsync.core.plantext import plan_text, summary

CFG = config_mod.parse(
    "name: t\nsource: {url: /tmp/r}\nhosts:\n"
    "  - {name: h1, url: 'tcp://10.0.0.1:2375', labels: {role: db}}\n"
    "  - {name: h2, url: 'tcp://10.0.0.2:2375', labels: {role: db}}\n"
    "  - {name: h3, url: 'tcp://10.0.0.3:2375', labels: {role: web}}\n",
    "gitsync.yaml",
)


def db(extra: str = "", replicas: int = 1, selector: str = "{role: db}") -> bytes:
    return (
        "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: db}\n"
        f"spec:\n  replicas: {replicas}\n  image: 'db:1'\n  volumes: [{{name: pgdata, mountPath: /data}}]\n"
        f"  placement: {{hostSelector: {selector}}}\n{extra}"
    ).encode()


VOLUME = b"apiVersion: gitsync.io/v1\nkind: Volume\nmetadata: {name: pgdata}\nspec: {driver: local}\n"


def problems(files: dict[str, bytes]) -> list[str]:
    with pytest.raises(ManifestError) as err:
        load_files(files)
    return [str(p) for p in err.value.problems]


def test_one_writer_per_read_write_once_volume_and_read_only_mounts() -> None:
    (msg,) = problems({"db.yaml": db(replicas=2)})
    assert msg.startswith("db.yaml:5: db: spec.replicas: 2 replicas cannot share the implicit (not declared: host-local) ReadWriteOnce volume pgdata")  # at the key
    compose = b"services:\n  db:\n    image: db:1\n    volumes: ['pg:/data']\n    deploy:\n      replicas: 2\nvolumes:\n  pg: {}\n"
    (msg,) = problems({"compose.yaml": compose})
    assert msg.startswith("compose.yaml:6: db: deploy.replicas: 2 replicas cannot share the declared ReadWriteOnce volume default_pg"), msg
    assert "perReplica: true" in msg
    per = b"apiVersion: gitsync.io/v1\nkind: Volume\nmetadata: {name: pgdata}\nspec: {perReplica: true}\n"
    assert len(load_files({"db.yaml": db(replicas=2), "v.yaml": per}).deployments) == 1
    rox = b"apiVersion: gitsync.io/v1\nkind: Volume\nmetadata: {name: pgdata}\nspec: {accessMode: ReadOnlyMany}\n"
    assert "pgdata is ReadOnlyMany; mount it with readOnly: true" in problems({"db.yaml": db(), "v.yaml": rox})[0]
    bad = b"apiVersion: gitsync.io/v1\nkind: Volume\nmetadata: {name: pgdata}\nspec: {accessMode: Sometimes, shared: yes please}\n"
    got = problems({"db.yaml": db(), "v.yaml": bad})
    assert "v.yaml:4: spec.accessMode: 'Sometimes' is not one of ReadWriteOnce, ReadWriteMany, ReadOnlyMany" in got
    assert "v.yaml:4: spec.shared: must be true or false, not a string" in got


def replica(host: str, desired, state: str = "running") -> LiveContainer:  # type: ignore[no-untyped-def]
    d = desired.deployment("db")
    return LiveContainer(f"id-{host}", "t_db-0", host, "db", 0, L.spec_hash(d), "r", state, None, 1, "db:1")


def vol(name: str = "pgdata", owner: str = "t", driver: str = "local") -> LiveVolume:
    return LiveVolume(name, driver, (), owner, "db", 0)


def plan(desired, observed):  # type: ignore[no-untyped-def]
    return make_plan(desired, observed, CFG.hosts, "t")


def test_a_replica_goes_back_to_the_host_that_holds_its_data() -> None:
    desired = load_files({"db.yaml": db()})
    # its container is gone, its volume is on h2 (h1 is emptier): it is created on h2
    obs = {h: HostObservation(h, True, volumes=(vol(),) if h == "h2" else ()) for h in ("h1", "h2", "h3")}
    (a,) = plan(desired, obs).actions
    assert (a.kind, a.host) == (ActionKind.CREATE, "h2")
    # h2 is unreachable, within its grace: it waits for h2, nothing is created elsewhere
    obs["h2"] = HostObservation("h2", True, volumes=(vol(),), stale=True)
    p = plan(desired, obs)
    assert not p.actions and [str(x) for x in p.problems] == ["db: replica 0 waits for h2, where its volume pgdata lives (h2 is unreachable)"]
    # h2 is down (or the agent restarted while it is): its volume may be there, so it waits as well
    obs["h2"] = HostObservation("h2", False, error="connection refused")
    p = plan(desired, obs)
    assert not p.actions
    assert str(p.problems[0]) == "db: replica 0 waits for h2: unreachable, and its volume pgdata may be there (gitsync does not start it on an empty volume elsewhere)"
    # and the plan says so, as the sync does: not in sync, nothing placed elsewhere
    text = plan_text(p, "r", {})
    assert not p.in_sync and "in sync: nothing to do" not in text and "placed elsewhere" not in text, text
    assert "host h2: UNREACHABLE: nothing changes there" in text and "not in sync: 1 problem(s) above" in text
    assert summary(p).startswith("not in sync: db: replica 0 waits for h2")
    # the first time, with every host seen and no volume anywhere: placed as any replica
    fresh = {h: HostObservation(h, True) for h in ("h1", "h2", "h3")}
    assert [a.host for a in plan(desired, fresh).actions] == ["h1"]


def test_moving_data_is_refused_unless_git_allows_it_and_the_plan_says_what_stays() -> None:
    moved = load_files({"db.yaml": db(selector="{role: web}")})  # only h3 is eligible now
    obs = {h: HostObservation(h, True, (replica("h1", moved),) if h == "h1" else (), volumes=(vol(),) if h == "h1" else ()) for h in ("h1", "h2", "h3")}
    p = plan(moved, obs)
    assert not p.actions
    assert str(p.problems[0]).startswith("db: replica 0 stays on h1 (the host no longer matches placement): its volume pgdata lives there; set spec.allowDataMove: true")
    allowed = load_files({"db.yaml": db(selector="{role: web}", extra="  allowDataMove: true\n")})
    obs = {h: HostObservation(h, True, (replica("h1", allowed),) if h == "h1" else (), volumes=(vol(),) if h == "h1" else ()) for h in ("h1", "h2", "h3")}
    p = plan(allowed, obs)
    got = {(a.kind, a.host): a.reason for a in p.actions}
    assert got[(ActionKind.CREATE, "h3")] == "replica 0 of 1, moved from h1; moves h1 -> h3: volume pgdata on h1 is left behind, not copied"
    assert (ActionKind.REMOVE, "h1") in got and not p.problems


def test_live_volumes_that_differ_from_git_or_are_not_ours_are_problems_with_the_remedy() -> None:
    nfs = b"apiVersion: gitsync.io/v1\nkind: Volume\nmetadata: {name: pgdata}\nspec: {driver: local, driverOpts: {type: nfs, device: ':/pg'}}\n"
    desired = load_files({"db.yaml": db(), "v.yaml": nfs}, PolicySettings(volume_types=("nfs",)))
    obs = {h: HostObservation(h, True, volumes=(vol(),) if h == "h1" else ()) for h in ("h1", "h2", "h3")}
    msgs = [str(p) for p in plan(desired, obs).problems]
    assert any("volume pgdata on h1 has driver local (no options), Git says local (device=':/pg', type='nfs')" in m and "rename it in Git" in m for m in msgs), msgs
    obs = {h: HostObservation(h, True, volumes=(vol(owner=""),) if h == "h2" else ()) for h in ("h1", "h2", "h3")}
    p = plan(load_files({"db.yaml": db()}), obs)
    msgs = [str(x) for x in p.problems]
    assert any("volume pgdata on h2 belongs to no gitsync agent (made by hand or another tool)" in m for m in msgs), msgs
    # nothing is created on it: h2 has the name taken, h1 does not (and h2's data is not gitsync's to bind)
    assert [(a.kind, a.host) for a in p.actions] == [(ActionKind.CREATE, "h1")]


def test_a_read_write_once_volume_makes_the_rollout_stop_first_and_the_plan_says_so() -> None:
    old = load_files({"db.yaml": db()})
    new = load_files({"db.yaml": db().replace(b"db:1", b"db:2")})
    obs = {h: HostObservation(h, True, (replica("h1", old),) if h == "h1" else (), volumes=(vol(),) if h == "h1" else ()) for h in ("h1", "h2", "h3")}
    (a,) = plan(new, obs).actions
    assert a.kind == ActionKind.REPLACE and a.reason.endswith("(stop-first: volume pgdata is ReadWriteOnce)")


def test_the_inventory_lists_our_volumes_with_what_they_hold_and_keeps_the_undeclared() -> None:
    from gitsync.kinds.volume import inventory

    desired = load_files({"db.yaml": db()})
    obs = {
        "h1": HostObservation("h1", True, volumes=(vol(), vol("old-cache"), vol("theirs", owner=""))),
        "h2": HostObservation("h2", False),
    }
    rows = inventory(desired, obs, "t")
    assert [(r["host"], r["name"], r["deployment"], r["replica"], r["state"]) for r in rows] == [
        ("h1", "old-cache", "db", 0, "no manifest mounts it any more (kept)"),
        ("h1", "pgdata", "db", 0, "in Git"),
    ]


def test_an_external_volume_is_used_where_it_exists_never_compared_and_needs_no_driver() -> None:
    ext = b"apiVersion: gitsync.io/v1\nkind: Volume\nmetadata: {name: pgdata}\nspec: {external: true}\n"
    desired = load_files({"db.yaml": db(), "v.yaml": ext})
    assert desired.volume("pgdata").external
    obs = {h: HostObservation(h, True, volumes=(vol(owner=""),) if h == "h1" else ()) for h in ("h1", "h2", "h3")}
    p = plan(desired, obs)
    assert not p.problems and [(a.kind, a.host) for a in p.actions] == [(ActionKind.CREATE, "h1")]  # made by hand: that is the point
    both = b"apiVersion: gitsync.io/v1\nkind: Volume\nmetadata: {name: pgdata}\nspec: {external: true, driver: nfs}\n"
    assert problems({"db.yaml": db(), "v.yaml": both}) == [
        "v.yaml:4: spec.external: an external volume exists already: it has no driver, driverOpts or perReplica of gitsync's"
    ]
    compose = b"services:\n  db: {image: 'db:1', volumes: ['data:/data']}\nvolumes:\n  data: {external: true}\n"
    assert load_files({"p/compose.yaml": compose}).volume("data").external  # by its own name, not p_data
