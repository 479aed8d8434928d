"""An ssh:// host: the Docker SDK runs `ssh HOST docker system dial-stdio`, as it would against a real server.

sshd (Debian's) runs inside test host h3's network namespace with a config of the test's own;
authorized_keys points the remote `docker` CLI at h3's engine. The client side gets its options
from an `ssh` wrapper first in PATH (-F with the test's config), so nothing of the user's ssh
setup is read or changed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests import testbed
from tests.conftest import IN_CI, GitRepo

pytestmark = pytest.mark.docker

PORT = 2222


@pytest.fixture
def ssh_host(engines: list[testbed.Engine], tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd) or shutil.which("docker") is None:
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
    proc = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{h3.netns}", sshd, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((h3.addr, PORT), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    (d / "ssh_config").write_text(
        f"Host *\n  IdentityFile {d / 'client_key'}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
        "  UserKnownHostsFile /dev/null\n  BatchMode yes\n  LogLevel ERROR\n"
    )
    bin_dir = d / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {d / "ssh_config"} "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    yield f"ssh://root@{h3.addr}:{PORT}", env
    proc.terminate()
    proc.communicate(timeout=10)


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
