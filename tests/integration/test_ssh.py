"""ssh on real servers. An ssh:// host: the Docker SDK runs `ssh HOST docker system dial-stdio`, as it would against a real server.

sshd (Debian's) runs inside test host h3's network namespace with a config of the test's own;
authorized_keys points the remote `docker` CLI at h3's engine. The client side gets its options
from an `ssh` wrapper first in PATH (-F with the test's config), so nothing of the user's ssh
setup is read or changed. A git source over ssh: the same sshd serves the config repository,
with the key named in source.ssh_key.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from tests import testbed
from gitsync.core.config import SourceSettings
from gitsync.core.errors import FetchError
from gitsync.adapters.source import Source
from tests.conftest import IN_CI, GitRepo, git

pytestmark = pytest.mark.docker

PORT = 2222


@dataclass
class Sshd:
    """Debian's sshd in h3's namespace, accepting one client key."""

    addr: str
    dir: Path
    client_key: Path
    h3: testbed.Engine

    def wrapper(self, name: str, ssh_config: str) -> dict[str, str]:
        """An environment whose `ssh` reads only `ssh_config`: the stand-in for a user's ssh setup."""
        d = self.dir / name
        (d / "bin").mkdir(parents=True)
        (d / "ssh_config").write_text(ssh_config)
        wrapper = d / "bin" / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {d / "ssh_config"} "$@"\n')
        wrapper.chmod(0o755)
        return {**os.environ, "PATH": f"{d / 'bin'}:{os.environ['PATH']}"}


@pytest.fixture
def sshd(engines: list[testbed.Engine], tmp_path: Path) -> Iterator[Sshd]:
    exe = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(exe) or shutil.which("docker") is None:
        if IN_CI:
            pytest.fail("sshd or the docker CLI missing; scripts/test installs openssh-server and docker.io")
        pytest.skip("sshd or the docker CLI not installed")
    h3 = engines[2]
    d = tmp_path / "ssh"
    d.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key")], check=True)
    pub = (d / "client_key.pub").read_text().strip()
    (d / "authorized_keys").write_text(f'environment="DOCKER_HOST={h3.unix_url}" {pub}\n')
    (d / "sshd_config").write_text(
        f"Port {PORT}\nListenAddress {h3.addr}\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitUserEnvironment yes\nStrictModes no\nUsePAM no\nLogLevel ERROR\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{h3.netns}", exe, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((h3.addr, PORT), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    yield Sshd(h3.addr, d, d / "client_key", h3)
    proc.terminate()
    proc.communicate(timeout=10)


@pytest.fixture
def ssh_host(sshd: Sshd) -> tuple[str, dict[str, str]]:
    env = sshd.wrapper(
        "docker-client",
        f"Host *\n  IdentityFile {sshd.client_key}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
        "  UserKnownHostsFile /dev/null\n  BatchMode yes\n  LogLevel ERROR\n",
    )
    return f"ssh://root@{sshd.addr}:{PORT}", env


def test_apply_and_hosts_over_ssh(ssh_host: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    url, env = ssh_host
    repo = GitRepo(tmp_path / "repo")
    repo.write(
        "app.yaml",
        "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: viassh}\nspec:\n  replicas: 2\n  image: gitsync-test/busybox:1\n"
        '  command: ["sh", "-c", "trap \'exit 0\' TERM; while :; do sleep 1 & wait $!; done"]\n',
    )
    repo.commit("over ssh")
    cfg = tmp_path / "gitsync.yaml"
    cfg.write_text(f"name: it-ssh\nsource: {{url: repo}}\nstate_dir: state\nhosts:\n  - {{name: far, url: '{url}'}}\n")
    api = docker.APIClient(base_url=testbed.engines(3)[2].unix_url, version="auto")
    try:
        r = subprocess.run([sys.executable, "-m", "gitsync", "apply", "-c", str(cfg)], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        running = api.containers(filters={"label": "io.gitsync.managed-by=it-ssh"})
        assert len(running) == 2
        r = subprocess.run([sys.executable, "-m", "gitsync", "hosts", "-c", str(cfg)], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "2/2 running" in r.stdout, r.stdout + r.stderr
    finally:
        for c in api.containers(all=True, filters={"label": "io.gitsync.managed-by=it-ssh"}):
            api.remove_container(c["Id"], force=True)
        api.close()


def test_git_source_over_ssh_with_a_key_file(sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = GitRepo(tmp_path / "work")
    work.write("apps/web.yaml", "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {image: 'a:1'}\n")
    head = work.commit("first")
    bare = tmp_path / "deploy.git"
    git(tmp_path, "clone", "-q", "--bare", str(work.path), str(bare))
    url = f"ssh://root@{sshd.addr}:{PORT}{bare}"
    host_pub = " ".join((sshd.dir / "host_key.pub").read_text().split()[:2])
    known = sshd.dir / "known_hosts"
    known.write_text(f"[{sshd.addr}]:{PORT} {host_pub}\n")
    # The user's ssh config knows the server's host key but names no identity: the key must come from source.ssh_key.
    env = sshd.wrapper("git-client", f"Host *\n  UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n  LogLevel ERROR\n")
    monkeypatch.setenv("PATH", env["PATH"])

    snap = Source(SourceSettings(url=url, path="apps", ssh_key=str(sshd.client_key)), str(tmp_path / "ok")).fetch()
    assert snap.commit == head and snap.revision == f"main@sha1:{head}" and list(snap.files) == ["web.yaml"]

    other = sshd.dir / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    with pytest.raises(FetchError, match=r"authentication to ssh://.* failed; set source.token_env \(https\) or source.ssh_key"):
        Source(SourceSettings(url=url, ssh_key=str(other)), str(tmp_path / "wrong")).fetch()
    with pytest.raises(FetchError, match=r"source.ssh_key: .*/missing does not exist"):
        Source(SourceSettings(url=url, ssh_key=str(sshd.dir / "missing")), str(tmp_path / "missing")).fetch()

    # A server whose host key is not in known_hosts is refused with a reason, never accepted blindly.
    known.write_text("")
    with pytest.raises(FetchError, match=r"ssh host key of ssh://.* is not known or has changed"):
        Source(SourceSettings(url=url, ssh_key=str(sshd.client_key)), str(tmp_path / "unknown")).fetch()
