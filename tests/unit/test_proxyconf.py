"""The Services' proxy configuration is one HAProxy accepts (checked by HAProxy itself, `haproxy -c`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gitsync.core.proxyconf import Endpoint, render
from gitsync.core.models import Service, ServicePort
from tests.conftest import IN_CI

SERVICES = [
    Service("web", (("app", "web"),), (ServicePort(80, 8080), ServicePort(443, 8443, 8443))),
    Service("api v2", (("app", "api"),), (ServicePort(81, 9000),)),  # a name HAProxy would not take as is
    Service("db", (("app", "db"),), (ServicePort(5432, 5432),)),  # no endpoints yet
]
ENDPOINTS = {
    ("web", 80): [Endpoint("web-1.h2", "10.231.0.2", 49154), Endpoint("web-0.h1", "172.30.0.5", 8080, draining=True)],
    ("web", 443): [Endpoint("web-0.h1", "172.30.0.5", 8443)],
    ("api v2", 81): [Endpoint("api-0.h3", "fd00::3", 9000)],
}


def test_the_configuration_serves_each_port_over_its_endpoints_and_is_stable() -> None:
    text = render(SERVICES, ENDPOINTS)
    assert text == render(list(reversed(SERVICES)), {k: list(reversed(v)) for k, v in ENDPOINTS.items()})  # order does not matter
    web80 = text.split("backend svc-web-80\n", 1)[1].split("\n\n", 1)[0]
    assert "server web-0.h1 172.30.0.5:8080 weight 0" in web80  # draining: no new connections
    assert "server web-1.h2 10.231.0.2:49154" in web80 and "49154 weight" not in web80
    assert "frontend svc-api_v2-81\n    bind :81\n" in text
    assert "server api-0.h3 [fd00::3]:9000" in text
    assert "backend svc-db-5432\n    balance leastconn\n" in text and "svc-db-5432\n    balance leastconn\n    server" not in text
    # one thread unless configured: HAProxy's default (one per core) doubled the tail on a host of two cores
    assert "\n    nbthread 1\n" in text and "\n    nbthread 4\n" in render(SERVICES, ENDPOINTS, threads=4)


def test_haproxy_accepts_the_configuration(tmp_path: Path) -> None:
    haproxy = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if haproxy is None:
        if IN_CI:
            pytest.fail("haproxy not found: scripts/test installs it (apt-get install haproxy)")
        pytest.skip("haproxy not found: apt-get install haproxy, or run ./scripts/test")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(render(SERVICES, ENDPOINTS, threads=2))
    r = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    cfg.write_text(render(SERVICES, ENDPOINTS).replace("balance leastconn", "balance nonsense", 1))
    assert subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30).returncode != 0  # the check can fail
