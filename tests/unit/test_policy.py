"""The policy in one step or two (issue 20, items 2, 4, 5, 12): no manifest, compose file or mix of them
gets a container a host path, a host device or a network sink that the policy does not allow: not
with '..', not through a volume that binds or mounts a device, not through another agent's or a
hand-made external volume, not through a log driver; and what Docker would refuse at create is
refused at validation."""

from __future__ import annotations

import pytest

from gitsync.core import config as config_mod
from gitsync.core.actions import ActionKind
from gitsync.core.config import PolicySettings
from gitsync.core.errors import ManifestError
from gitsync.core.live import HostObservation, LiveVolume
from gitsync.core.manifest import load_files
from gitsync.runtimes.containers.plan import make_plan
from tests.unit.test_volumes import CFG, db

HEAD = "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  image: web:1\n"
OPEN = config_mod.parse(
    "policy:\n  allowDevices: [/dev/fuse]\n  bindMounts: [{path: /srv/static}, {path: /srv/data, readOnly: false}]\n"
).policy


def problems(files: dict[str, str], policy: PolicySettings = OPEN) -> list[str]:
    with pytest.raises(ManifestError) as err:
        load_files({k: v.encode() for k, v in files.items()}, policy)
    return [str(p) for p in err.value.problems]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"w.yaml": HEAD + "  volumes: [{hostPath: /srv/static/../../etc, mountPath: /e, readOnly: true}]\n"},
         "w.yaml:6: spec.volumes[0].hostPath: '/srv/static/../../etc' must be written without '..' components"),
        ({"w.yaml": HEAD + "  volumes: [{hostPath: /srv/data/x, mountPath: '/h:rw'}]\n"},
         "w.yaml:6: spec.volumes[0].mountPath: '/h:rw' must be a path without ':'"),
        ({"w.yaml": HEAD + "  devices: ['/dev/fuse/../sda']\n"}, "w.yaml:6: spec.devices[0]: '/dev/fuse/../sda': a device path must be written without '..'"),
        ({"compose.yaml": "services:\n  web:\n    image: web:1\n    volumes: ['/srv/static/..//..:/host:ro']\n"},
         "compose.yaml:4: services.web.volumes[0]"),
        ({"compose.yaml": "services:\n  web:\n    image: web:1\n    volumes:\n      - {type: bind, source: /srv/data/../.., target: /h}\n"},
         "compose.yaml:5: services.web.volumes[0]"),
    ],
)
def test_dot_dot_never_walks_out_of_an_allowed_prefix_and_mount_paths_are_what_docker_takes(files: dict[str, str], expected: str) -> None:
    got = problems(files)
    assert any(p.startswith(expected) and ("'..'" in p or "':'" in p) for p in got), got


def bind_volume(opts: str, driver: str = "local") -> str:
    return f"apiVersion: gitsync.io/v1\nkind: Volume\nmetadata: {{name: v}}\nspec: {{driver: {driver}, driverOpts: {opts}}}\n"


MOUNTS_V = HEAD + "  volumes: [{name: v, mountPath: /v}]\n"


@pytest.mark.parametrize(
    ("volume", "why"),
    [
        (bind_volume("{type: none, o: bind, device: /}"), "binds a host path: /: no policy.bindMounts entry allows this path"),
        (bind_volume("{type: ext4, o: 'rbind,rw', device: /etc}"), "binds a host path: /etc: no policy.bindMounts entry"),
        (bind_volume("{type: none, o: bind, device: /srv/static/app}"), "/srv/static/app: policy.bindMounts allows it read-only; add ro to the option o"),
        (bind_volume("{type: none, o: bind, device: /srv/data/../../root}"), "must be written without '..'"),
        (bind_volume("{type: nfs, o: 'addr=127.0.0.1', device: ':/'}"), "type nfs: policy.volumes.types (none)"),
        (bind_volume("{type: ext4, device: /dev/sda1}"), "type ext4: policy.volumes.types"),
        (bind_volume("{}", driver="vieux/sshfs"), "vieux/sshfs: policy.volumes.drivers (local)"),
    ],
)
def test_a_volume_is_no_bind_mount_or_device_in_disguise(volume: str, why: str) -> None:
    got = problems({"w.yaml": MOUNTS_V, "v.yaml": volume})
    assert any(p.startswith("v.yaml:1: spec.") and "not allowed by this agent's policy (volume v: " in p and why in p for p in got), got


def test_what_the_operator_allows_for_volumes_loads() -> None:
    policy = config_mod.parse(
        "policy:\n  bindMounts: [{path: /srv/data, readOnly: false}]\n  volumes: {drivers: [local, rexray], types: [nfs]}\n"
    ).policy
    for volume in (
        bind_volume("{type: none, o: bind, device: /srv/data/pg}"), bind_volume("{type: nfs, o: 'addr=10.0.0.5', device: ':/pg'}"),
        bind_volume("{type: tmpfs, device: tmpfs, o: size=64m}"), bind_volume("{}", driver="rexray"),
    ):
        assert load_files({"w.yaml": MOUNTS_V.encode(), "v.yaml": volume.encode()}, policy).deployments
    compose = "services:\n  web: {image: 'web:1', volumes: ['d:/d']}\nvolumes:\n  d: {driver_opts: {type: none, o: bind, device: /etc}}\n"
    assert problems({"compose.yaml": compose}) == [
        "compose.yaml:4: driver_opts: not allowed by this agent's policy (volume default_d: binds a host path: /etc: no policy.bindMounts entry allows this path)"
    ]


def test_an_external_volume_of_another_agent_or_that_binds_the_host_is_never_mounted() -> None:
    ext = b"apiVersion: gitsync.io/v1\nkind: Volume\nmetadata: {name: pgdata}\nspec: {external: true}\n"
    desired = load_files({"db.yaml": db(), "v.yaml": ext})
    for live, why in (
        (LiveVolume("pgdata", "local", (), "other-agent"), "belongs to gitsync agent other-agent: an agent never mounts another's data"),
        (LiveVolume("pgdata", "local", (("device", "/"), ("o", "bind"), ("type", "none")), ""), "binds a host path: /: no policy.bindMounts entry"),
        (LiveVolume("pgdata", "local", (("device", ":/"), ("o", "addr=127.0.0.1"), ("type", "nfs")), ""), "type nfs: policy.volumes.types"),
    ):
        obs = {h: HostObservation(h, True, volumes=(live,) if h == "h1" else ()) for h in ("h1", "h2", "h3")}
        p = make_plan(desired, obs, CFG.hosts, "t")
        assert not [a for a in p.actions if a.kind == ActionKind.CREATE], p.actions
        assert any(f"external volume pgdata on h1 {'' if 'belongs' in why else 'is not allowed by this agent' + chr(39) + 's policy ('}" in str(x) and why in str(x) for x in p.problems), p.problems
    ours = LiveVolume("pgdata", "local", (), "t")
    obs = {h: HostObservation(h, True, volumes=(ours,) if h == "h1" else ()) for h in ("h1", "h2", "h3")}
    assert [(a.kind, a.host) for a in make_plan(desired, obs, CFG.hosts, "t").actions] == [(ActionKind.CREATE, "h1")]


def test_logging_stays_on_the_host_unless_the_policy_lists_the_driver() -> None:
    syslog = HEAD + "  logging: {driver: syslog, options: {syslog-address: 'tcp://127.0.0.1:514'}}\n"
    assert problems({"w.yaml": syslog}) == [
        "w.yaml:6: spec.logging: not allowed by this agent's policy (driver syslog sends the container's output elsewhere; policy.logDrivers (json-file, local, journald, none))"
    ]
    compose = "services:\n  web:\n    image: web:1\n    logging: {driver: gelf, options: {gelf-address: 'udp://10.0.0.1:12201'}}\n"
    assert "logging: not allowed by this agent's policy (driver gelf" in problems({"compose.yaml": compose})[0]
    assert load_files({"w.yaml": (HEAD + "  logging: {driver: local, options: {max-size: 10m}}\n").encode()}).deployments
    allowed = config_mod.parse("policy: {logDrivers: [json-file, syslog]}").policy
    assert load_files({"w.yaml": syslog.encode()}, allowed).deployments
