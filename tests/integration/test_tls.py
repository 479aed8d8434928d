"""A TLS-only engine (client certificates required): the transport production hosts should use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests import testbed
from tests.conftest import IN_CI, GitRepo, cli

pytestmark = pytest.mark.docker

LOOP = '["sh", "-c", "trap \'exit 0\' TERM; while :; do sleep 1 & wait $!; done"]'


@pytest.fixture(scope="module")
def tls_engine(engines: list[testbed.Engine]) -> Iterator[testbed.Engine]:
    try:
        e = testbed.up_tls()
    except testbed.TestbedUnavailable as exc:
        if IN_CI:
            pytest.fail(f"CI needs the TLS engine: {exc}")
        pytest.skip(str(exc))
    yield e
    testbed.down_tls()


def config(tmp: Path, tls: str) -> Path:
    repo = GitRepo(tmp / "repo")
    repo.write(
        "app.yaml",
        f"apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {{name: secure}}\nspec:\n  replicas: 2\n  image: gitsync-test/busybox:1\n  command: {LOOP}\n",
    )
    repo.commit("secure")
    c = tmp / "gitsync.yaml"
    c.write_text(f"name: it-tls\nsource: {{url: repo}}\nstate_dir: state\nhosts:\n  - {{name: h4, url: '{testbed.TLS_ENGINE.tcp_url}'{tls}}}\n")
    return c


def test_apply_over_tls_with_client_certificates(tls_engine: testbed.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Many machines set this; requests would let it replace hosts[].tls.ca (a bug found here).
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    d = testbed.tls_dir()
    c = config(tmp_path, f", tls: {{ca: '{d / 'ca.pem'}', cert: '{d / 'cert.pem'}', key: '{d / 'key.pem'}'}}")
    try:
        r = cli("apply", "-c", str(c))
        assert r.code == 0, r.out + r.err
        r = cli("hosts", "-c", str(c))
        assert r.code == 0 and "2/2 running" in r.out
    finally:
        api = docker.APIClient(base_url=tls_engine.unix_url, version="auto")
        for x in api.containers(all=True, filters={"label": "io.gitsync.managed-by=it-tls"}):
            api.remove_container(x["Id"], force=True)
        api.close()


def test_untrusted_engine_certificate_and_missing_client_certificate(tls_engine: testbed.Engine, tmp_path: Path) -> None:
    other = tmp_path / "other-ca"
    testbed.make_certs(other, tls_engine.addr, "someone-else")
    d = testbed.tls_dir()
    c = config(tmp_path, f", tls: {{ca: '{other / 'ca.pem'}', cert: '{d / 'cert.pem'}', key: '{d / 'key.pem'}'}}")
    r = cli("hosts", "-c", str(c))
    assert r.code == 1 and "TLS certificate not trusted" in r.out, r.out
    c.write_text(c.read_text().replace(f"ca: '{other / 'ca.pem'}', cert: '{d / 'cert.pem'}', key: '{d / 'key.pem'}'", f"ca: '{d / 'ca.pem'}'"))
    r = cli("hosts", "-c", str(c))
    assert r.code == 1 and "UNREACHABLE" in r.out and "Traceback" not in r.out + r.err
