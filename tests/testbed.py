"""A bed of real Docker engines on one machine, one per network namespace.

Each "host" is a dockerd started inside its own network namespace (``gs-hN``),
joined to the root namespace by a veth pair on the bridge ``gsbr0``. The root
namespace reaches engine N at ``tcp://10.231.0.N:2375``; each engine also
listens on a unix socket under ``/run/gitsync-testbed/hN``.

Everything here is idempotent: namespaces, links, iptables rules and mounts
under an exec-root outlive the processes that made them (an earlier run, a
killed session), so :func:`up` reuses or removes them first. Needs root and
Debian's ``docker.io`` (``.ci/run`` installs it).

Used by the test suite (``tests/integration/conftest.py``) and the benchmarks
(``bench/``); also a command: ``python -m tests.testbed up|down|status``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

BRIDGE = "gsbr0"
SUBNET = "10.231.0"
BRIDGE_ADDR = f"{SUBNET}.254"
ROOT = Path(os.environ.get("GITSYNC_TESTBED_ROOT", "/run/gitsync-testbed"))
DATA = Path(os.environ.get("GITSYNC_TESTBED_DATA", "/var/lib/gitsync-testbed"))
TEST_IMAGE = "gitsync-test/busybox"
REGISTRY = f"{BRIDGE_ADDR}:5000"  # Debian's docker-registry, on the bridge, for pull tests
REGISTRY_IMAGE = f"{REGISTRY}/gitsync-test/pulled:1"
BUSYBOX = Path("/bin/busybox")
APPLETS = (
    "sh", "sleep", "echo", "cat", "true", "false", "ls", "wget", "httpd", "env",
    "kill", "ps", "date", "touch", "test", "mkdir", "rm", "hostname", "nc", "seq",
)


@dataclasses.dataclass(frozen=True)
class Engine:
    index: int
    tls: bool = False  # TLS-only engine (client certificates required) on port 2376

    @property
    def name(self) -> str:
        return f"h{self.index}"

    @property
    def netns(self) -> str:
        return f"gs-h{self.index}"

    @property
    def addr(self) -> str:
        return f"{SUBNET}.{self.index}"

    @property
    def tcp_url(self) -> str:
        return f"tcp://{self.addr}:{2376 if self.tls else 2375}"

    @property
    def exec_root(self) -> Path:
        return ROOT / self.name

    @property
    def sock(self) -> Path:
        return self.exec_root / "docker.sock"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.sock}"

    @property
    def pidfile(self) -> Path:
        return self.exec_root / "dockerd.pid"

    @property
    def data_root(self) -> Path:
        return DATA / self.name

    @property
    def log(self) -> Path:
        return DATA / f"{self.name}.log"


def _detach(args: list[str], log_path: Path, pidfile: Path | None = None) -> None:
    """Start a daemon in its own session that outlives us (setsid -f forks and returns at once)."""
    with open(log_path, "ab") as log:
        if pidfile is None:
            subprocess.run(["setsid", "-f", *args], stdout=log, stderr=log, stdin=subprocess.DEVNULL, check=True)
            return
        # the registry writes no pidfile of its own: ask the shell-free wrapper for the child's pid
        subprocess.run(["setsid", "-f", "sh", "-c", 'echo $$ > "$0"; exec "$@"', str(pidfile), *args], stdout=log, stderr=log, stdin=subprocess.DEVNULL, check=True)


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def _ok(*args: str) -> bool:
    return _run(*args, check=False).returncode == 0


class TestbedUnavailable(RuntimeError):
    """The machine cannot host the test bed (not root, no dockerd)."""


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise TestbedUnavailable("the Docker test bed needs root (network namespaces, dockerd)")
    for tool in ("dockerd", "ip", "iptables", "nsenter", "docker-registry"):
        if shutil.which(tool) is None:
            raise TestbedUnavailable(
                f"{tool} not found: run `bash .ci/run` once, or `apt-get install docker.io docker-registry busybox-static iproute2 iptables`"
            )
    if not HAPROXY.exists():
        raise TestbedUnavailable(f"{HAPROXY} not found: apt-get install haproxy (the test bed builds its proxy image from it)")
    if not BUSYBOX.exists():
        raise TestbedUnavailable("/bin/busybox not found: apt-get install busybox-static")


def _pid_alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _ensure_network(engine: Engine) -> None:
    if not _ok("ip", "link", "show", BRIDGE):
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
    _run("ip", "addr", "replace", f"{BRIDGE_ADDR}/24", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    ns = engine.netns
    if not Path(f"/var/run/netns/{ns}").exists():
        _run("ip", "netns", "add", ns)
    host_if = f"gsv{engine.index}"
    if not _ok("ip", "link", "show", host_if):
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
    _run("ip", "link", "set", host_if, "master", BRIDGE)
    _run("ip", "link", "set", host_if, "up")
    _run("ip", "netns", "exec", ns, "ip", "addr", "replace", f"{engine.addr}/24", "dev", "eth0")
    _run("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
    _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
    _run("ip", "netns", "exec", ns, "ip", "route", "replace", "default", "via", BRIDGE_ADDR)
    rule = ("FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT")
    if not _ok("iptables", "-C", *rule):
        _run("iptables", "-I", *rule)


def set_link(engine: Engine, up: bool) -> None:
    """Cut or restore an engine's network (its veth on the bridge)."""
    _run("ip", "link", "set", f"gsv{engine.index}", "up" if up else "down")


def _umount_under(path: Path) -> None:
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return
    targets = [m.split()[1] for m in mounts if len(m.split()) > 1]
    for target in sorted((t for t in targets if t.startswith(str(path) + "/") or t == str(path)), reverse=True):
        _run("umount", "-l", target, check=False)


def start(engine: Engine, timeout: float = 30.0) -> None:
    """Start the engine's dockerd if it is not running; wait until it answers."""
    _ensure_network(engine)
    args = _dockerd_args(engine)
    fingerprint = engine.exec_root / "args"
    same_args = fingerprint.exists() and fingerprint.read_text() == " ".join(args)
    if _pid_alive(engine.pidfile) and same_args and _answers(engine):
        deadline = time.monotonic() + timeout
        while not _tcp_open(engine) and time.monotonic() < deadline:
            time.sleep(0.1)
        return
    stop(engine)
    _umount_under(engine.exec_root)
    shutil.rmtree(engine.exec_root, ignore_errors=True)
    engine.exec_root.mkdir(parents=True, exist_ok=True)
    engine.data_root.mkdir(parents=True, exist_ok=True)
    fingerprint.write_text(" ".join(args))
    _detach(args, engine.log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _answers(engine) and _tcp_open(engine):
            return
        time.sleep(0.1)
    tail = engine.log.read_text(errors="replace")[-2000:] if engine.log.exists() else ""
    raise RuntimeError(f"dockerd {engine.name} did not answer within {timeout}s; log tail:\n{tail}")


def _dockerd_args(engine: Engine) -> list[str]:
    bip = f"172.{40 + engine.index}.0.1/16"
    if engine.tls:
        d = tls_dir()
        tls = ["--tlsverify", "--tlscacert", str(d / "ca.pem"), "--tlscert", str(d / "server-cert.pem"), "--tlskey", str(d / "server-key.pem")]
    else:
        tls = ["--tls=false"]
    return [
        "nsenter", f"--net=/var/run/netns/{engine.netns}",
        "dockerd", *tls,
        "-H", engine.unix_url, "-H", engine.tcp_url,
        "--data-root", str(engine.data_root),
        "--exec-root", str(engine.exec_root / "exec"),
        "--pidfile", str(engine.pidfile),
        "--bip", bip,
        "--cgroup-parent", f"/gitsync-testbed-{engine.name}",
        "--userland-proxy=false",
        "--insecure-registry", REGISTRY,
    ]


def start_registry(timeout: float = 15.0) -> None:
    """Debian's docker-registry on the bridge address, with the pull-test image pushed to it."""
    import urllib.request

    pidfile = ROOT / "registry.pid"
    url = f"http://{REGISTRY}/v2/"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    if not (_pid_alive(pidfile) and answers()):
        if shutil.which("docker-registry") is None:
            raise TestbedUnavailable("docker-registry not found: apt-get install docker-registry")
        ROOT.mkdir(parents=True, exist_ok=True)
        storage = DATA / "registry"
        storage.mkdir(parents=True, exist_ok=True)
        conf = ROOT / "registry.yml"
        conf.write_text(
            "version: 0.1\nlog: {level: warn}\nstorage: {filesystem: {rootdirectory: %s}, delete: {enabled: true}}\n"
            "http: {addr: '%s'}\n" % (storage, REGISTRY)
        )
        _detach(["docker-registry", "serve", str(conf)], DATA / "registry.log", pidfile)
        deadline = time.monotonic() + timeout
        while not answers():
            if time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not answer on {url}")
            time.sleep(0.1)


def push_pull_image(engine: Engine) -> None:
    """Put REGISTRY_IMAGE in the registry (pushed from one engine) and nowhere else."""
    import docker

    client = docker.APIClient(base_url=engine.unix_url, version="auto", timeout=120)
    try:
        repo, tag = REGISTRY_IMAGE.rsplit(":", 1)
        client.tag(f"{TEST_IMAGE}:1", repo, tag)
        for line in client.push(repo, tag=tag, stream=True, decode=True):
            if "error" in line:
                raise RuntimeError(f"push to the test registry failed: {line['error']}")
        client.remove_image(REGISTRY_IMAGE)
    finally:
        client.close()


def _answers(engine: Engine) -> bool:
    """GET /_ping over the engine's unix socket."""
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(engine.sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return _ok_response(s)
    except OSError:
        return False


def _tcp_open(engine: Engine) -> bool:
    """The engine's TCP address accepts connections (what the tests and gitsync use)."""
    import socket

    try:
        with socket.create_connection((engine.addr, 2376 if engine.tls else 2375), timeout=0.5):
            return True
    except OSError:
        return False


def _ok_response(s: object) -> bool:
    import socket

    assert isinstance(s, socket.socket)
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(256)
        if not chunk:
            break
        data += chunk
    return data.startswith(b"HTTP/1.") and data.split(b" ", 2)[1:2] == [b"200"]


def stop(engine: Engine, timeout: float = 20.0) -> None:
    pid = _pid_alive(engine.pidfile)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(engine.pidfile):
        time.sleep(0.1)
    if _pid_alive(engine.pidfile):
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)


def kill(engine: Engine) -> None:
    """SIGKILL the engine's dockerd (a host dying); containers may survive as orphans of containerd."""
    pid = _pid_alive(engine.pidfile)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def egress() -> Iterator[None]:
    """The engines reach the package registries, through NAT on this machine, for a build that
    installs packages; closed again after (the test bed is otherwise cut off from the outside)."""
    rules = [
        ("-tnat", "POSTROUTING", "-s", f"{SUBNET}.0/24", "!", "-o", BRIDGE, "-j", "MASQUERADE"),
        ("-tfilter", "FORWARD", "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "ACCEPT"),
        ("-tfilter", "FORWARD", "-o", BRIDGE, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"),
    ]
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    before = forward.read_text().strip()
    forward.write_text("1")
    for rule in rules:
        _run("iptables", rule[0], "-I", *rule[1:])
    try:
        yield
    finally:
        for rule in rules:
            _run("iptables", rule[0], "-D", *rule[1:], check=False)
        forward.write_text(before)


BOOKWORM = "gitsync-test/bookworm:1"


def bookworm_image(engine: Engine) -> str:
    """A Debian 12 base image on one engine (no registry serves debian:bookworm-slim here): the
    fresh-Debian tests' debootstrapped minbase, with this machine's CA bundle named to pip (the
    package registries are reached through a proxy that CA vouches for)."""
    from tests import freshdebian

    env = {**os.environ, "DOCKER_HOST": engine.unix_url}
    if subprocess.run(["docker", "image", "inspect", BOOKWORM], env=env, capture_output=True).returncode == 0:
        return BOOKWORM
    freshdebian.check_prerequisites()
    tarball = freshdebian.base_tarball()
    raw = BOOKWORM.replace(":1", ":minbase")
    subprocess.run(["docker", "import", str(tarball), raw], env=env, check=True, capture_output=True, timeout=600)
    ctx = Path(DATA) / "bookworm-context"
    shutil.rmtree(ctx, ignore_errors=True)
    ctx.mkdir(parents=True)
    shutil.copy(freshdebian.CA, ctx / "ca.pem")
    (ctx / "Dockerfile").write_text(f"FROM {raw}\nCOPY ca.pem {freshdebian.MACHINE_CA}\nENV PIP_CERT={freshdebian.MACHINE_CA}\n")
    subprocess.run(["docker", "build", "-q", "-t", BOOKWORM, str(ctx)], env=env, check=True, capture_output=True, timeout=300)
    shutil.rmtree(ctx, ignore_errors=True)
    return BOOKWORM


def die(engine: Engine) -> None:
    """The host dying: every container's processes and the engine at once (``kill`` alone leaves the
    containers running as orphans, which a dead host's would not)."""
    import docker

    client = docker.APIClient(base_url=engine.unix_url, version="auto", timeout=10)
    try:
        pids = [client.inspect_container(c["Id"])["State"]["Pid"] for c in client.containers()]
    finally:
        client.close()
    kill(engine)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def image_context(tag_note: str = "") -> bytes:
    """A build context: FROM scratch + Debian's static busybox and applet links."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dockerfile = (
            "FROM scratch\n"
            "COPY rootfs/ /\n"
            f'LABEL org.gitsync-testbed.image="{tag_note or "busybox"}"\n'
            'CMD ["sh"]\n'
        ).encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        tar.add(str(BUSYBOX), arcname="rootfs/bin/busybox")
        for applet in APPLETS:
            link = tarfile.TarInfo(f"rootfs/bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        for d in ("rootfs/tmp", "rootfs/data", "rootfs/www"):
            dinfo = tarfile.TarInfo(d)
            dinfo.type = tarfile.DIRTYPE
            dinfo.mode = 0o1777
            tar.addfile(dinfo)
    return buf.getvalue()


HAPROXY = Path("/usr/sbin/haproxy")
PROXY_IMAGE = "gitsync-test/haproxy:2.6"  # what tests set as services.proxyImage


def build_proxy_image(base_url: str) -> None:
    """Build PROXY_IMAGE on one engine unless it has it: the project's own script, from Debian's haproxy."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "proxy-image"
    subprocess.run(["bash", str(script), PROXY_IMAGE], env={**os.environ, "DOCKER_HOST": base_url}, check=True, capture_output=True, text=True)


def build_images(base_url: str, repo: str = TEST_IMAGE, tags: tuple[str, ...] = ("1", "2", "3")) -> None:
    """Build the busybox test image on one engine and tag it several times."""
    import docker

    client = docker.DockerClient(base_url=base_url, version="auto", timeout=120)
    try:
        have = {t for img in client.images.list(name=repo) for t in img.tags}
        if all(f"{repo}:{t}" in have for t in tags):
            return
        image, _ = client.images.build(fileobj=io.BytesIO(image_context()), custom_context=True, tag=f"{repo}:{tags[0]}", rm=True)
        for t in tags[1:]:
            image.tag(repo, t)
    finally:
        client.close()


TLS_ENGINE = Engine(4, tls=True)


def tls_dir() -> Path:
    return ROOT / "tls"


def make_certs(where: Path, ip: str, ca_name: str = "gitsync-test-ca") -> None:
    """A CA, a server certificate for `ip`, and a client certificate (openssl, 2 days)."""
    where.mkdir(parents=True, exist_ok=True)

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=where, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2", "-subj", f"/CN={ca_name}")
    (where / "server.ext").write_text(f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n")
    (where / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server-key.pem", "-out", "server.csr", "-subj", "/CN=engine")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial", "-out", "server-cert.pem", "-days", "2", "-extfile", "server.ext")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "client.csr", "-subj", "/CN=gitsync")
    ssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial", "-out", "cert.pem", "-days", "2", "-extfile", "client.ext")


def up_tls() -> Engine:
    """The TLS-only engine h4, with fresh certificates in tls_dir()."""
    check_prerequisites()
    if shutil.which("openssl") is None:
        raise TestbedUnavailable("openssl not found: apt-get install openssl")
    if not (tls_dir() / "cert.pem").exists() or not _pid_alive(TLS_ENGINE.pidfile):
        stop(TLS_ENGINE)
        shutil.rmtree(tls_dir(), ignore_errors=True)
        make_certs(tls_dir(), TLS_ENGINE.addr)
    start(TLS_ENGINE)
    build_images(TLS_ENGINE.unix_url)
    return TLS_ENGINE


def down_tls() -> None:
    stop(TLS_ENGINE)
    _reap_cgroups(TLS_ENGINE)
    _umount_under(TLS_ENGINE.exec_root)
    _umount_under(TLS_ENGINE.data_root)
    _run("ip", "link", "del", f"gsv{TLS_ENGINE.index}", check=False)
    _run("ip", "netns", "del", TLS_ENGINE.netns, check=False)
    shutil.rmtree(TLS_ENGINE.exec_root, ignore_errors=True)


def engines(n: int = 3) -> list[Engine]:
    return [Engine(i) for i in range(1, n + 1)]


def up(n: int = 3) -> list[Engine]:
    check_prerequisites()
    result = engines(n)
    for engine in result:
        start(engine)
    for engine in result:
        build_images(engine.unix_url)
        build_proxy_image(engine.unix_url)
    start_registry()
    push_pull_image(result[0])
    return result


def _reap_cgroups(engine: Engine) -> None:
    """Kill what is left in the engine's cgroups (a container whose shim died with a SIGKILLed engine
    lives on as an orphan of PID 1), then remove the cgroups themselves."""
    trees = [t for t in Path("/sys/fs/cgroup").glob(f"*/gitsync-testbed-{engine.name}") if t.is_dir()]
    for _ in range(50):
        pids = {int(p) for t in trees for f in t.rglob("cgroup.procs") for p in f.read_text().split()}
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    for t in trees:
        for d in sorted((d for d in t.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True) + [t]:
            try:
                d.rmdir()
            except OSError:
                pass


def down(n: int = 3) -> None:
    down_tls()
    for engine in engines(n):
        stop(engine)
        _reap_cgroups(engine)
        _umount_under(engine.exec_root)
        _umount_under(engine.data_root)
        _run("ip", "link", "del", f"gsv{engine.index}", check=False)
        _run("ip", "netns", "del", engine.netns, check=False)
        shutil.rmtree(engine.exec_root, ignore_errors=True)
    pid = _pid_alive(ROOT / "registry.pid")
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
    _run("ip", "link", "del", BRIDGE, check=False)
    rule = ("FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT")
    while _ok("iptables", "-C", *rule):
        _run("iptables", "-D", *rule, check=False)


def leftovers() -> list[str]:
    """What a taken-down test bed still has on the machine: processes, cgroups, mounts, namespaces."""
    found = [f"cgroup {t}" for t in Path("/sys/fs/cgroup").glob("*/gitsync-testbed-*")]
    try:
        mounts = [m.split()[1] for m in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        mounts = []
    found += [f"mount {m}" for m in mounts if m.startswith((str(ROOT), str(DATA)))]
    found += [f"network namespace {ns.name}" for ns in Path("/var/run/netns").glob("gs-h*")]
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and "gitsync-testbed" in (proc / "cgroup").read_text() and (proc / "stat").read_text().split()[2] != "Z":
                found.append(f"process {proc.name}: {(proc / 'cmdline').read_bytes().replace(bytes(1), b' ').decode(errors='replace')[:80]}")
        except OSError:
            pass
    return found


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "status"
    n = int(argv[1]) if len(argv) > 1 else 3
    if cmd == "up":
        for e in up(n):
            print(f"{e.name} {e.tcp_url} {e.unix_url}")
    elif cmd == "down":
        down(n)
    elif cmd == "status":
        for e in engines(n):
            print(f"{e.name} {'up' if _answers(e) else 'down'} {e.tcp_url}")
    else:
        print("usage: python -m tests.testbed up|down|status [N]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
