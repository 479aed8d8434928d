"""The everyday container fields of a Deployment, and the agent's policy on what a manifest may ask
of a host: each field parsed, validated with file:line, part of the spec hash (a change replaces the
replica and the plan names the field), stored in and rebuilt from the spec label; a refused manifest
is a validation problem naming the key and the policy setting."""

from __future__ import annotations

import json

import pytest

from gitsync.core import config as config_mod
from gitsync.core import container
from gitsync.core import labels as L
from gitsync.core.errors import ConfigError, ManifestError
from gitsync.kinds.deployment import describe_change
from gitsync.kinds.replicas import container_spec
from gitsync.core.live import LiveContainer
from gitsync.core.manifest import load_files
from gitsync.core.models import NetworkMode

HEAD = "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  image: web:1\n"

EVERY_FIELD = HEAD + """\
  entrypoint: ["/bin/tini", "--"]
  command: ["httpd", "-f"]
  workingDir: /srv
  user: "1000:1000"
  hostname: web-box
  resources:
    limits: {memory: 256Mi, cpus: "500m"}
    reservations: {memory: 64m, cpus: 0.25}
  capAdd: [net_admin, CAP_CHOWN]
  capDrop: [ALL]
  readOnlyRootFilesystem: true
  tmpfs: ["/run:size=64m,mode=1777", /tmp]
  extraHosts: {db.internal: 10.0.0.5, gw: host-gateway}
  init: true
  logging: {driver: json-file, options: {max-size: 10m, max-file: "3"}}
  ulimits: {nofile: {soft: 1024, hard: 4096}, nproc: 512}
  shmSize: 128m
  stopSignal: quit
  securityOpt: [no-new-privileges]
  devices: ["/dev/fuse", "/dev/snd:/dev/snd:r"]
  privileged: false
  networkMode: bridge
  volumes:
    - {hostPath: /srv/static, mountPath: /www, readOnly: true}
    - {name: cache, mountPath: /cache}
"""

OPEN = config_mod.PolicySettings(allow_devices=("/dev",), allow_capabilities=("NET_ADMIN",), bind_mounts=(config_mod.BindRule("/srv"),))


def problems(text: str, policy: config_mod.PolicySettings = config_mod.PolicySettings()) -> list[str]:
    with pytest.raises(ManifestError) as err:
        load_files({"web.yaml": text.encode()}, policy)
    return [str(p) for p in err.value.problems]


def test_every_field_parses_to_what_docker_is_given() -> None:
    d = load_files({"web.yaml": EVERY_FIELD.encode()}, OPEN).deployments[0]
    o = d.options
    assert o.entrypoint == ("/bin/tini", "--") and o.working_dir == "/srv" and o.user == "1000:1000" and o.hostname == "web-box"
    assert (o.memory, o.cpus, o.memory_reservation, o.cpus_reservation) == (256 << 20, 0.5, 64 << 20, 0.25)
    assert o.cap_add == ("CHOWN", "NET_ADMIN") and o.cap_drop == ("ALL",)
    assert o.tmpfs == (("/run", "size=64m,mode=1777"), ("/tmp", ""))
    assert o.ulimits == (("nofile", 1024, 4096), ("nproc", 512, 512)) and o.stop_signal == "SIGQUIT"
    assert o.devices == (("/dev/fuse", "/dev/fuse", "rwm"), ("/dev/snd", "/dev/snd", "r"))
    assert [(b.host_path, b.mount_path, b.read_only) for b in o.binds] == [("/srv/static", "/www", True)]
    assert [v.name for v in d.volumes] == ["cache"]

    spec = container_spec("t", d, 0, "t_web-0", "r")
    assert spec.mounts == (("cache", "/cache", False, ""), ("/srv/static", "/www", True, ""))
    assert spec.host_options == {
        "cap_add": ["CHOWN", "NET_ADMIN"], "cap_drop": ["ALL"], "read_only": True, "tmpfs": {"/run": "size=64m,mode=1777", "/tmp": ""},
        "extra_hosts": ["db.internal:10.0.0.5", "gw:host-gateway"], "init": True,
        "log_config": {"Type": "json-file", "Config": {"max-file": "3", "max-size": "10m"}},
        "ulimits": [{"name": "nofile", "soft": 1024, "hard": 4096}, {"name": "nproc", "soft": 512, "hard": 512}],
        "shm_size": 128 << 20, "security_opt": ["no-new-privileges"], "devices": ["/dev/fuse:/dev/fuse:rwm", "/dev/snd:/dev/snd:r"],
        "privileged": False, "mem_limit": 256 << 20, "mem_reservation": 64 << 20, "nano_cpus": 500_000_000, "cpu_shares": 256,
    }
    assert spec.create_options == {"entrypoint": ["/bin/tini", "--"], "working_dir": "/srv", "user": "1000:1000", "hostname": "web-box", "stop_signal": "SIGQUIT"}


def test_the_spec_label_round_trips_and_fields_left_out_keep_the_old_hash() -> None:
    d = load_files({"web.yaml": EVERY_FIELD.encode()}, OPEN).deployments[0]
    doc = json.loads(L.canonical_spec(d))
    assert L.spec_hash(L.deployment_from_spec(d, doc)) == L.spec_hash(d)  # what a rollback recreates is the same spec
    plain = load_files({"web.yaml": HEAD.encode()}).deployments[0]
    assert set(json.loads(L.canonical_spec(plain))) == {"image", "command", "env", "ports", "volumes", "labels", "healthcheck", "restart", "stop_grace_period"}
    assert container.document(plain.options) == {}


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("  user: nobody\n", "user"), ("  resources: {limits: {memory: 1g}}\n", "resources.limits.memory"), ("  capAdd: [SYS_TIME]\n", "capAdd"),
        ("  init: true\n", "init"), ("  stopSignal: SIGINT\n", "stopSignal"), ("  networkMode: none\n", "networkMode"),
        ("  volumes: [{hostPath: /srv/x, mountPath: /x}]\n", "hostPaths"), ("  logging: {driver: local}\n", "logging.driver"),
    ],
)
def test_a_changed_field_replaces_the_replica_and_the_plan_names_it(line: str, named: str) -> None:
    old = load_files({"web.yaml": HEAD.encode()}).deployments[0]
    new = load_files({"web.yaml": (HEAD + line).encode()}, config_mod.PolicySettings(allow_capabilities=("SYS_TIME",), bind_mounts=(config_mod.BindRule("/srv", False),))).deployments[0]
    assert L.spec_hash(old) != L.spec_hash(new)
    live = LiveContainer("id", "t_web-0", "h1", "web", 0, L.spec_hash(old), "r", "running", None, 1, "web:1", spec=L.canonical_spec(old))
    assert describe_change(live, new) == f"changed: {named}"


def test_bad_values_are_refused_with_file_line_and_key() -> None:
    got = problems(HEAD + """\
  entrypoint: /bin/sh -c x
  workingDir: srv
  user: "a b"
  resources: {limits: {memory: lots, cpus: -1}, reservations: {disk: 1g}}
  capAdd: [FLY]
  tmpfs: [run]
  extraHosts: {db: not-an-ip}
  ulimits: {nofile: {soft: 10, hard: 5}, files: 3}
  stopSignal: SIGNOPE
  devices: ["fuse"]
  networkMode: overlay
""")
    expect = [
        "web.yaml:6: spec.entrypoint: must be a list of strings",
        "web.yaml:7: spec.workingDir: must be an absolute path",
        "web.yaml:8: spec.user: 'a b' is not a user",
        "web.yaml:9: spec.resources.limits.memory: 'lots' is not a size",
        "web.yaml:9: spec.resources.limits.cpus: -1 must be more than 0",
        "web.yaml:9: spec.resources.reservations.disk: unknown key",
        "web.yaml:10: spec.capAdd[0]: 'FLY' is not a Linux capability",
        "web.yaml:11: spec.tmpfs[0]: 'run': the mount path must be an absolute path",
        "web.yaml:12: spec.extraHosts.db: 'not-an-ip' is not an IP address",
        "web.yaml:13: spec.ulimits.nofile: soft (10) must not exceed hard (5)",
        "web.yaml:13: spec.ulimits.files: is not a ulimit",
        "web.yaml:14: spec.stopSignal: 'SIGNOPE' is not a signal",
        "web.yaml:15: spec.devices[0]: 'fuse' is not a device",
        "web.yaml:16: spec.networkMode: 'overlay' is not one of bridge, host, none",
    ]
    for e in expect:
        assert any(g.startswith(e) for g in got), f"{e!r} not in {got}"
    assert len(got) == len(expect), got


def test_host_network_publishes_no_ports_and_no_service_selects_it() -> None:
    text = HEAD + "  networkMode: host\n  ports: [{containerPort: 80}]\n"
    (msg,) = problems(text, config_mod.PolicySettings(allow_host_network=True))
    assert msg == "web.yaml:6: spec.networkMode: host: a container on the host's network (or none) publishes no ports; remove spec.ports"
    dep = "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: web, labels: {app: web}}\nspec: {image: 'web:1', networkMode: none}\n"
    svc = "apiVersion: gitsync.io/v1\nkind: Service\nmetadata: {name: web}\nspec: {selector: {app: web}, ports: [{port: 80}]}\n"
    with pytest.raises(ManifestError) as err:
        load_files({"d.yaml": dep.encode(), "s.yaml": svc.encode()})
    assert any("selects deployment web, whose networkMode is none" in str(p) for p in err.value.problems), err.value.problems
    assert load_files({"d.yaml": dep.encode()}).deployments[0].options.network_mode == NetworkMode.NONE


def test_the_default_policy_refuses_every_way_out_of_the_container() -> None:
    got = problems(HEAD + """\
  privileged: true
  networkMode: host
  capAdd: [SYS_ADMIN, CHOWN]
  devices: [/dev/sda]
  securityOpt: [no-new-privileges, seccomp=unconfined]
  volumes: [{hostPath: /, mountPath: /host}]
""")
    assert got == [
        "web.yaml:6: spec.privileged: not allowed by this agent's policy (policy.allowPrivileged)",
        "web.yaml:7: spec.networkMode: not allowed by this agent's policy (policy.allowHostNetwork)",
        "web.yaml:8: spec.capAdd: not allowed by this agent's policy (SYS_ADMIN: beyond Docker's default capabilities; policy.allowCapabilities)",
        "web.yaml:9: spec.devices: not allowed by this agent's policy (/dev/sda: policy.allowDevices)",
        "web.yaml:10: spec.securityOpt: not allowed by this agent's policy (seccomp=unconfined: policy.allowSecurityOptions)",
        "web.yaml:11: spec.volumes[0].hostPath: not allowed by this agent's policy (/: no policy.bindMounts entry allows this path)",
    ]


def test_what_the_operator_allows_loads_and_bind_mounts_go_by_path_prefix() -> None:
    policy = config_mod.parse(
        "policy:\n  allowPrivileged: true\n  allowCapabilities: [net_admin]\n  allowDevices: [/dev/fuse]\n"
        "  bindMounts:\n    - {path: /srv/data/}\n    - {path: /var/log/app, readOnly: false}\n"
        "  images: {registries: [registry.example.com, docker.io], requireDigest: false}\n"
    ).policy
    ok = HEAD + "  privileged: true\n  capAdd: [NET_ADMIN]\n  devices: [/dev/fuse]\n  volumes:\n" \
        "    - {hostPath: /srv/data/a, mountPath: /a, readOnly: true}\n    - {hostPath: /var/log/app, mountPath: /logs}\n"
    assert load_files({"web.yaml": ok.encode()}, policy).deployments[0].options.privileged
    bad = HEAD + "  volumes:\n    - {hostPath: /srv/data/a, mountPath: /a}\n    - {hostPath: /srv/database, mountPath: /b, readOnly: true}\n"
    assert problems(bad, policy) == [
        "web.yaml:7: spec.volumes[0].hostPath: not allowed by this agent's policy (/srv/data/a: policy.bindMounts allows it read-only; set readOnly: true)",
        "web.yaml:8: spec.volumes[1].hostPath: not allowed by this agent's policy (/srv/database: no policy.bindMounts entry allows this path)",
    ]
    other = HEAD.replace("web:1", "ghcr.io/team/web:1")
    assert problems(other, policy) == [
        "web.yaml:5: spec.image: not allowed by this agent's policy (ghcr.io/team/web:1 is from ghcr.io: policy.images.registries (registry.example.com, docker.io))"
    ]
    digest = config_mod.parse("policy: {images: {requireDigest: true}}").policy
    assert "has no digest (@sha256:...): policy.images.requireDigest" in problems(HEAD, digest)[0]
    pinned = HEAD.replace("web:1", "web@sha256:" + "a" * 64)
    assert load_files({"web.yaml": pinned.encode()}, digest).deployments


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("policy: {allowPrivileged: yes please}", "gitsync.yaml:1: policy.allowPrivileged: must be true or false"),
        ("policy: {allowRoot: true}", "gitsync.yaml:1: policy.allowRoot: unknown key"),
        ("policy:\n  bindMounts: [{path: srv}]", "gitsync.yaml:2: policy.bindMounts[0].path:"),
        ("policy: {images: {registries: 'docker.io'}}", "gitsync.yaml:1: policy.images.registries: must be a list of registry hosts"),
    ],
)
def test_a_bad_policy_is_a_config_error_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_mod.parse(text)
    assert str(err.value).startswith(message), str(err.value)


def test_dns_pids_limit_tty_and_namespaced_sysctls_from_a_manifest_and_a_compose_file() -> None:
    """Issue 21, item 5: everyday keys seen refused in real compose files."""
    text = ("services:\n  app:\n    image: a:1\n    dns: 10.0.0.53\n    dns_search: [corp.example]\n    dns_opt: [ndots:2]\n"
            "    pids_limit: 200\n    tty: true\n    stdin_open: true\n    sysctls: [net.core.somaxconn=1024, kernel.shmmax=68719476736]\n"
            "    group_add: [audio, 1001]\n    domainname: corp.example\n    oom_score_adj: 200\n    mem_swappiness: 10\n    memswap_limit: 1g\n    attach: false\n")
    app = load_files({"compose.yaml": text.encode()}).deployments[0]
    o = app.options
    assert (o.dns, o.dns_search, o.dns_options, o.pids_limit, o.tty, o.stdin_open) == (("10.0.0.53",), ("corp.example",), ("ndots:2",), 200, True, True)
    assert o.sysctls == (("kernel.shmmax", "68719476736"), ("net.core.somaxconn", "1024"))
    assert (o.group_add, o.domainname, o.oom_score_adj, o.mem_swappiness, o.memswap_limit) == (("audio", "1001"), "corp.example", 200, 10, 1 << 30)
    spec = container_spec("t", app, 0, "t_app-0", "r")
    assert spec.host_options["dns"] == ["10.0.0.53"] and spec.host_options["pids_limit"] == 200 and spec.create_options["tty"] is True
    assert spec.sysctls == {"kernel.shmmax": "68719476736", "net.core.somaxconn": "1024"}
    with pytest.raises(ManifestError) as err:
        load_files({"compose.yaml": text.replace("kernel.shmmax", "vm.swappiness").replace("10.0.0.53", "dns.example").encode()})
    assert [str(p) for p in err.value.problems] == [
        "compose.yaml:4: services.app.dns[0]: 'dns.example' is not an IP address (a name server is given by its address)",
        "compose.yaml:10: services.app.sysctls.vm.swappiness: is not a kernel parameter a container has of its own (net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*)",
    ]
