"""Real Docker engines for the integration tests: three dockerd hosts in network namespaces.

The test bed is started by the suite (tests/testbed.py) and taken down at the end
(GITSYNC_KEEP_TESTBED=1 keeps it for the next run). Where it cannot run (not root,
no dockerd) the tests skip with the reason, except under CI=true, where they fail.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests import testbed
from tests.conftest import IN_CI, GitRepo
from tests.fakeforge import OCTOKIT, FakeForge

LABEL = "io.gitsync.managed-by"


@pytest.fixture(scope="session")
def engines() -> Iterator[list[testbed.Engine]]:
    try:
        result = testbed.up(3)
    except testbed.TestbedUnavailable as exc:
        if IN_CI:
            pytest.fail(f"CI needs the real Docker test bed: {exc}")
        pytest.skip(f"real Docker engines unavailable: {exc}")
    yield result
    if os.environ.get("GITSYNC_KEEP_TESTBED") != "1":
        testbed.down(3)
        left = testbed.leftovers()
        assert not left, f"the test bed left these behind: {left}"


class Fleet:
    """A config repo, a gitsync.yaml for the three engines, and Docker clients to check the result."""

    def __init__(self, agent: str, engines: list[testbed.Engine], tmp: Path) -> None:
        self.agent = agent
        self.engines = engines
        self.tmp = tmp
        self.repo = GitRepo(tmp / "repo")
        self.config = tmp / "gitsync.yaml"
        self.clients = {e.name: docker.APIClient(base_url=e.tcp_url, version="auto", timeout=60) for e in engines}
        self.write_config()

    def write_config(self, extra_hosts: str = "", labels: dict[str, str] | None = None) -> None:
        roles = labels or {"h1": "web", "h2": "web", "h3": "db"}
        hosts = "".join(
            f"  - {{name: {e.name}, url: '{e.tcp_url}', insecure: true, labels: {{role: {roles[e.name]}}}}}\n" for e in self.engines
        )
        self.config.write_text(
            f"name: {self.agent}\nsource: {{url: repo, branch: main}}\nstate_dir: state\nhosts:\n{hosts}{extra_hosts}"
        )

    def containers(self, host: str, all: bool = True) -> list[dict]:
        return self.clients[host].containers(all=all, filters={"label": [f"{LABEL}={self.agent}"]})

    def by_host(self) -> dict[str, list[str]]:
        return {h: sorted(c["Names"][0].lstrip("/") for c in self.containers(h)) for h in self.clients}

    def ids(self) -> dict[str, str]:
        return {c["Names"][0].lstrip("/"): c["Id"] for h in self.clients for c in self.containers(h)}

    def cleanup(self) -> None:
        for api in self.clients.values():
            for c in api.containers(all=True, filters={"label": [f"{LABEL}={self.agent}"]}):
                api.remove_container(c["Id"], force=True)
            for v in (api.volumes(filters={"label": f"{LABEL}={self.agent}"}) or {}).get("Volumes") or []:
                api.remove_volume(v["Name"], force=True)
            for n in api.networks(filters={"label": f"{LABEL}={self.agent}"}):
                api.remove_network(n["Id"])


@pytest.fixture
def fleet(engines: list[testbed.Engine], tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    agent = "it-" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]
    f = Fleet(agent, engines, tmp_path)
    f.cleanup()  # leftovers of an earlier, interrupted run of the same test
    yield f
    f.cleanup()
    for api in f.clients.values():
        api.close()


@pytest.fixture
def github_forge() -> Iterator[FakeForge]:
    """A fake GitHub checking each request against npm @octokit/openapi (fetched by scripts/test)."""
    if not OCTOKIT.is_file():
        if IN_CI:
            pytest.fail(f"{OCTOKIT} missing; scripts/test fetches it")
        pytest.skip(f"{OCTOKIT} missing: run scripts/test once")
    with FakeForge("github") as forge:
        yield forge


def http_call(addr: str, port: int, path: str, body: str | None = None, within: float = 10.0, timeout: float = 10.0) -> tuple[int, str]:
    """(status, body) of one request (POST with a body, else GET), retried for `within` seconds while
    the connection fails: a replica just (re)started may take a moment to answer (the proxies' next
    check), as a client with retries would see."""
    deadline = time.monotonic() + within
    while True:
        conn = http.client.HTTPConnection(addr, port, timeout=timeout)
        try:
            conn.request("POST" if body is not None else "GET", path, body=body)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        except (OSError, http.client.HTTPException):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.3)
        finally:
            conn.close()
