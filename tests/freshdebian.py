"""A freshly installed Debian 12 on this machine, for testing what a new user meets.

A minimal bookworm root file system (``debootstrap --variant=minbase``: no python3, git, sudo or
curl) is entered with its own mount, PID and network namespaces. Its PID 1 is a plain ``sleep``
(not systemd), its network reaches the package registries through NAT on a veth pair, and it gets
the host's CA certificates (the ones through which this machine reaches those registries) as a
file and the usual environment variables naming it. Commands run in it as root, with nsenter, like
shells of their own ("terminals"). Stopping it kills its PID 1, and with it every process inside
(the kernel ends a PID namespace with its init); its mounts go with its mount namespace, and the
network, NAT rules and cgroups it made are removed, so nothing is left behind.

The base file system is built once and kept as a tarball (``CACHE``); every machine starts from a
fresh copy of it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
CACHE = Path(os.environ.get("GITSYNC_DEBIAN_CACHE", "/var/cache/gitsync-testbed/bookworm-minbase.tar"))
HOME = Path(os.environ.get("GITSYNC_TESTBED_DATA", "/var/lib/gitsync-testbed"))
NETNS = "gs-debian"
HOST_IF = "gsdeb0"
HOST_ADDR = "10.232.0.1"
MACHINE_ADDR = "10.232.0.2"
CA = "/etc/ssl/certs/ca-certificates.crt"
MACHINE_CA = "/etc/gitsync-host-ca.pem"  # outside /etc/ssl/certs: installing ca-certificates rewrites that folder
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CGROUP_ROOT = Path("/sys/fs/cgroup")


class Unavailable(RuntimeError):
    """This machine cannot run a fresh Debian (not root, no debootstrap, no unshare)."""


def _run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=timeout)


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise Unavailable("a fresh Debian machine needs root (namespaces, chroot)")
    for tool in ("debootstrap", "unshare", "nsenter", "ip", "iptables"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} not found: scripts/test installs it (apt-get install debootstrap iproute2 iptables)")
    if not Path(CA).is_file():
        raise Unavailable(f"{CA} missing: apt-get install ca-certificates")


def base_tarball() -> Path:
    """The minimal bookworm file system, built with debootstrap the first time (a few minutes)."""
    if CACHE.is_file():
        return CACHE
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    build = CACHE.parent / "bookworm-minbase.build"
    shutil.rmtree(build, ignore_errors=True)
    r = subprocess.run(
        ["debootstrap", "--variant=minbase", SUITE, str(build), MIRROR], capture_output=True, text=True, timeout=1200
    )
    if r.returncode != 0:
        shutil.rmtree(build, ignore_errors=True)
        raise RuntimeError(f"debootstrap failed ({r.returncode}): {(r.stdout + r.stderr)[-2000:]}")
    tmp = CACHE.with_suffix(".tmp")
    _run("tar", "-C", str(build), "-cf", str(tmp), ".", timeout=600)
    tmp.rename(CACHE)
    shutil.rmtree(build, ignore_errors=True)
    return CACHE


def _cgroup_dirs() -> set[Path]:
    """Every cgroup folder under the hierarchies' docker/ parents (what a dockerd inside creates)."""
    found: set[Path] = set()
    for base in CGROUP_ROOT.glob("*/docker"):
        if base.is_dir():
            found.add(base)
            found.update(p for p in base.rglob("*") if p.is_dir())
    return found


class Machine:
    """One fresh Debian 12; use as a context manager."""

    def __init__(self, name: str = "debian12") -> None:
        self.root = HOME / name
        self.init: subprocess.Popen[bytes] | None = None
        self.pid1: int | None = None  # the machine's PID 1, as this machine's pid
        self._forward_before = "0"
        self._cgroups_before: set[Path] = set()

    # -- life ------------------------------------------------------------
    def __enter__(self) -> "Machine":
        check_prerequisites()
        tarball = base_tarball()
        self.stop()  # the leftovers of an earlier, killed run
        self.root.mkdir(parents=True)
        _run("tar", "-C", str(self.root), "-xf", str(tarball), timeout=600)
        shutil.copyfile(CA, self.root / MACHINE_CA.lstrip("/"))
        shutil.copyfile("/etc/resolv.conf", self.root / "etc/resolv.conf")
        self._cgroups_before = _cgroup_dirs()
        self._network_up()
        self._start_init()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _network_up(self) -> None:
        if not Path(f"/var/run/netns/{NETNS}").exists():
            _run("ip", "netns", "add", NETNS)
        _run("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", "eth0", "netns", NETNS)
        _run("ip", "addr", "add", f"{HOST_ADDR}/30", "dev", HOST_IF)
        _run("ip", "link", "set", HOST_IF, "up")
        ns = ("ip", "netns", "exec", NETNS)
        _run(*ns, "ip", "addr", "add", f"{MACHINE_ADDR}/30", "dev", "eth0")
        _run(*ns, "ip", "link", "set", "eth0", "up")
        _run(*ns, "ip", "link", "set", "lo", "up")
        _run(*ns, "ip", "route", "add", "default", "via", HOST_ADDR)
        forward = Path("/proc/sys/net/ipv4/ip_forward")
        self._forward_before = forward.read_text().strip()
        forward.write_text("1")
        for rule in self._rules():
            _run("iptables", *rule[:1], "-I", *rule[1:])

    @staticmethod
    def _rules() -> list[tuple[str, ...]]:
        return [
            ("-tnat", "POSTROUTING", "-s", f"{MACHINE_ADDR}/32", "!", "-o", HOST_IF, "-j", "MASQUERADE"),
            ("-tfilter", "FORWARD", "-i", HOST_IF, "-j", "ACCEPT"),
            ("-tfilter", "FORWARD", "-o", HOST_IF, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"),
        ]

    def _start_init(self) -> None:
        r = str(self.root)
        # its root a mount point of its own and the root of its mount namespace (pivot_root, not chroot),
        # as on a real machine: dockerd remounts / when it unpacks images, and `docker exec` (runc
        # entering a container's mount namespace) lands in that namespace's root
        boot = (
            f"mount --bind {r} {r} && mount -t proc proc {r}/proc && mount --rbind /sys {r}/sys && mount --rbind /dev {r}/dev"
            f" && mount -t tmpfs tmpfs {r}/run && mount -t tmpfs tmpfs {r}/tmp"
            f" && mkdir -p {r}/.oldroot && cd {r} && pivot_root . .oldroot"
            " && umount -l /.oldroot && rmdir /.oldroot && exec /usr/bin/sleep infinity"
        )
        self.init = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{NETNS}", "unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", boot],
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pid = self._find_pid1()
            if pid is not None:
                self.pid1 = pid
                return
            if self.init.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("the fresh Debian machine did not start (its PID 1 never ran sleep)")

    def _find_pid1(self) -> int | None:
        """The machine's PID 1: the `sleep infinity` below our nsenter/unshare."""
        assert self.init is not None
        todo = [self.init.pid]
        while todo:
            pid = todo.pop()
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"/usr/bin/sleep", b"infinity"]:
                    return pid
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            todo.extend(int(c) for c in children)
        return None

    def _kill_inside(self) -> None:
        """SIGKILL every process whose root is this machine's (those of an earlier run killed midway)."""
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if os.readlink(proc / "root") == str(self.root):
                    os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                pass

    def stop(self) -> None:
        self._kill_inside()
        if self.pid1 is not None:
            try:
                os.kill(self.pid1, signal.SIGKILL)  # PID 1 of the machine: the kernel kills everything inside
            except ProcessLookupError:
                pass
            self.pid1 = None
        if self.init is not None:
            try:
                self.init.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.init.pid, signal.SIGKILL)
                self.init.wait(10)
            self.init = None
        for rule in self._rules():
            while _run("iptables", *rule[:1], "-C", *rule[1:], check=False).returncode == 0:
                _run("iptables", *rule[:1], "-D", *rule[1:], check=False)
        _run("ip", "link", "del", HOST_IF, check=False)
        _run("ip", "netns", "del", NETNS, check=False)
        if self._forward_before != "1":
            Path("/proc/sys/net/ipv4/ip_forward").write_text(self._forward_before)
            self._forward_before = "1"
        # the cgroups a dockerd inside made (their processes are gone); deepest first
        for d in sorted(_cgroup_dirs() - self._cgroups_before, key=lambda p: len(p.parts), reverse=True):
            try:
                d.rmdir()
            except OSError:
                pass
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)

    # -- terminals -------------------------------------------------------
    def env(self) -> dict[str, str]:
        return {
            "PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb", "USER": "root",
            # the host's CA certificates, as this machine's own environment names them
            "PIP_CERT": MACHINE_CA, "REQUESTS_CA_BUNDLE": MACHINE_CA, "SSL_CERT_FILE": MACHINE_CA,
            "NODE_EXTRA_CA_CERTS": MACHINE_CA, "GIT_SSL_CAINFO": MACHINE_CA, "CURL_CA_BUNDLE": MACHINE_CA,
        }

    def _bash(self, script: str, cwd: str) -> list[str]:
        """argv running `script` with bash inside the machine, as root, in a clean environment."""
        assert self.pid1 is not None
        return [
            "nsenter", "-t", str(self.pid1), "--mount", "--net", "--pid", "--root", "--wd",
            "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in self.env().items()), "/bin/bash", "-c", f"cd {cwd}\n{script}",
        ]

    def terminal(self, script: str, log: Path, cwd: str = "/root") -> subprocess.Popen[bytes]:
        """Run `script` as a shell of its own (its own process group, like a terminal's foreground job),
        its output to `log`."""
        with open(log, "ab") as out:
            return subprocess.Popen(self._bash(script, cwd), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def sh(self, script: str, timeout: float = 120, cwd: str = "/root") -> subprocess.CompletedProcess[str]:
        """Run `script` and wait: stdout and stderr apart."""
        return subprocess.run(self._bash(script, cwd), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)

    def copy_in(self, files: list[Path], src_root: Path, dest: str) -> None:
        """Copy these files (paths relative to src_root) into the machine under dest."""
        target = self.root / dest.lstrip("/")
        for rel in files:
            s = src_root / rel
            d = target / rel
            d.parent.mkdir(parents=True, exist_ok=True)
            if s.is_symlink():
                d.symlink_to(os.readlink(s))
            elif s.is_file():
                shutil.copy2(s, d)
