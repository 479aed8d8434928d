"""The everyday container fields on a real engine: each reaches Docker (read back by inspect and
from inside the container), the values Docker fills in never look like drift (the next plan is in
sync), a changed field replaces the replica naming the field, and a manifest asking for more than
the agent's policy allows is refused before anything reaches a host."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import cli
from tests.integration.conftest import Fleet

pytestmark = pytest.mark.docker

SCRIPT = "trap 'exit 0' INT; echo up > /tmp/up; httpd -f -p 8080 -h /www & wait"


def web(extra: str = "", ulimit: int = 1024) -> str:
    return f"""\
apiVersion: gitsync.io/v1
kind: Deployment
metadata: {{name: web}}
spec:
  image: gitsync-test/busybox:1
  entrypoint: [sh, -c]
  command: ["{SCRIPT}"]
  workingDir: /www
  user: "1000:1000"
  hostname: box
  resources:
    limits: {{memory: 64Mi, cpus: 0.5}}
    reservations: {{memory: 32m, cpus: 0.25}}
  capAdd: [NET_ADMIN]
  capDrop: [NET_RAW]
  readOnlyRootFilesystem: true
  tmpfs: ["/tmp:size=8m"]
  extraHosts: {{db.internal: 10.9.9.9}}
  init: true
  logging: {{driver: json-file, options: {{max-size: 1m}}}}
  ulimits: {{nofile: {{soft: {ulimit}, hard: 2048}}}}
  shmSize: 16m
  stopSignal: SIGINT
  securityOpt: [no-new-privileges]
  devices: ["/dev/null:/dev/xnull:rw"]
  dns: [10.9.9.53]
  dnsSearch: [corp.example]
  pidsLimit: 100
  tty: true
  sysctls: {{net.core.somaxconn: "1024"}}
  groupAdd: ["1001"]
  oomScoreAdj: 200
  volumes: [{{hostPath: STATIC, mountPath: /www, readOnly: true}}]
  placement: {{hostSelector: {{role: db}}}}
{extra}"""


def run_in(fleet: Fleet, host: str, container: str, cmd: str) -> tuple[int, str]:
    api = fleet.clients[host]
    ex = api.exec_create(container, ["sh", "-c", cmd])
    out = api.exec_start(ex["Id"]).decode()
    return api.exec_inspect(ex["Id"])["ExitCode"], out


def test_container_fields_reach_docker_never_drift_and_policy_refuses_what_it_does_not_allow(fleet: Fleet, tmp_path: Path) -> None:
    static = tmp_path / "static"  # the engines share this machine's file system: a host path on every host
    static.mkdir()
    (static / "index.html").write_text("static page\n")
    fleet.write_config(extra_hosts=f"policy:\n  allowCapabilities: [NET_ADMIN]\n  allowDevices: [/dev/null]\n  bindMounts: [{{path: '{tmp_path}'}}]\n")
    fleet.repo.write("apps/web.yaml", web().replace("STATIC", str(static)))
    fleet.repo.commit("web with every field")
    r = cli("apply", "-c", str(fleet.config), "--timeout", "60s")
    assert r.code == 0, r.out + r.err
    name = f"{fleet.agent}_web-0"
    info = fleet.clients["h3"].inspect_container(name)
    cfg, hc = info["Config"], info["HostConfig"]
    assert (cfg["Entrypoint"], cfg["WorkingDir"], cfg["User"], cfg["Hostname"], cfg["StopSignal"]) == (["sh", "-c"], "/www", "1000:1000", "box", "SIGINT")
    assert (hc["Memory"], hc["NanoCpus"], hc["MemoryReservation"], hc["CpuShares"]) == (64 << 20, 500_000_000, 32 << 20, 256)
    assert (hc["CapAdd"], hc["CapDrop"], hc["ReadonlyRootfs"], hc["Init"]) == (["NET_ADMIN"], ["NET_RAW"], True, True)
    assert hc["Tmpfs"] == {"/tmp": "size=8m"} and hc["ExtraHosts"] == ["db.internal:10.9.9.9"] and hc["ShmSize"] == 16 << 20
    assert hc["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m"}}
    assert hc["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048}] and hc["SecurityOpt"] == ["no-new-privileges"]
    assert hc["Devices"] == [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/xnull", "CgroupPermissions": "rw"}]
    assert hc["Binds"] == [f"{static}:/www:ro"]
    assert (hc["Dns"], hc["DnsSearch"], hc["PidsLimit"], hc["Sysctls"], cfg["Tty"]) == (["10.9.9.53"], ["corp.example"], 100, {"net.core.somaxconn": "1024"}, True)
    assert (hc["GroupAdd"], hc["OomScoreAdj"]) == (["1001"], 200)
    # and from inside: who it runs as, what it sees
    code, out = run_in(fleet, "h3", name, "id -u; hostname; cat /www/index.html; grep db.internal /etc/hosts; cat /tmp/up; ulimit -n; touch /x 2>&1 || echo read-only")
    assert code == 0, out
    lines = out.split("\n")
    assert lines[:3] == ["1000", "box", "static page"] and "10.9.9.9" in lines[3] and lines[4:6] == ["up", "1024"] and lines[-2] == "read-only", out

    # What Docker filled in (capability sets, the log driver's defaults) is no drift: in sync.
    r = cli("plan", "-c", str(fleet.config))
    assert r.code == 0 and "in sync" in r.out, r.out + r.err
    before = info["Id"]

    # A manifest asking for more than the policy allows: refused, nothing reaches the host.
    fleet.repo.write("apps/web.yaml", web(extra="  privileged: true\n").replace("STATIC", str(static)))
    fleet.repo.commit("make it privileged")
    r = cli("apply", "-c", str(fleet.config), "--timeout", "60s")
    assert r.code == 1, r.out + r.err
    assert "apps/web.yaml:35: spec.privileged: not allowed by this agent's policy (policy.allowPrivileged)" in r.out + r.err, r.out + r.err
    assert fleet.clients["h3"].inspect_container(name)["Id"] == before and not fleet.clients["h3"].inspect_container(name)["HostConfig"]["Privileged"]

    # A changed field replaces the replica, and the plan names it.
    fleet.repo.write("apps/web.yaml", web(ulimit=2048).replace("STATIC", str(static)))
    fleet.repo.commit("more files")
    r = cli("plan", "-c", str(fleet.config))
    assert r.code == 2 and "changed: ulimits" in r.out, r.out + r.err
    r = cli("apply", "-c", str(fleet.config), "--timeout", "60s")
    assert r.code == 0, r.out + r.err
    after = fleet.clients["h3"].inspect_container(name)
    assert after["Id"] != before and after["HostConfig"]["Ulimits"] == [{"Name": "nofile", "Soft": 2048, "Hard": 2048}]


def test_network_modes_host_and_none(fleet: Fleet) -> None:
    fleet.write_config(extra_hosts="policy: {allowHostNetwork: true}\n")
    for mode, role in (("host", "web"), ("none", "db")):
        fleet.repo.write(f"apps/{mode}.yaml", f"""\
apiVersion: gitsync.io/v1
kind: Deployment
metadata: {{name: on-{mode}}}
spec:
  image: gitsync-test/busybox:1
  command: [sh, -c, "trap 'exit 0' TERM; sleep 600 & wait"]
  networkMode: {mode}
  placement: {{hostSelector: {{role: {role}}}, maxPerHost: 1}}
""")
    fleet.repo.commit("host and none")
    r = cli("apply", "-c", str(fleet.config), "--timeout", "60s")
    assert r.code == 0, r.out + r.err
    for host, mode in (("h1", "host"), ("h3", "none")):
        info = fleet.clients[host].inspect_container(f"{fleet.agent}_on-{mode}-0")
        assert info["HostConfig"]["NetworkMode"] == mode and info["State"]["Running"], info["HostConfig"]["NetworkMode"]
        assert list(info["NetworkSettings"]["Networks"]) == [mode]
    r = cli("plan", "-c", str(fleet.config))
    assert r.code == 0 and "in sync" in r.out, r.out + r.err
