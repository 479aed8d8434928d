"""The Docker adapter's calls the Services' data plane is built from, on a real engine and the test
bed's proxy image (the official image's contract): a user-defined network whose aliases resolve,
a configuration written into a container and checked by HAProxy, a reload by signal, all through
the Docker API (no shell on the host, no ssh)."""

from __future__ import annotations

import time

import pytest

from gitsync.core.config import HostSettings
from gitsync.adapters.engine import ContainerSpec, EngineError, connect
from gitsync.core.proxyconf import CONFIG_PATH, Endpoint, render
from gitsync.core.models import Service, ServicePort
from tests import testbed
from tests.integration.conftest import Fleet

LABEL = "io.gitsync.managed-by"


def test_a_proxy_on_a_network_serves_a_name_after_a_checked_reload(fleet: Fleet) -> None:
    e = fleet.engines[0]
    engine = connect(HostSettings(e.name, e.tcp_url, insecure=True), 30, 5)
    labels = {LABEL: fleet.agent}
    net = f"{fleet.agent}-net"
    made: list[str] = []
    try:
        assert engine.ensure_network(net, labels) == engine.ensure_network(net, labels)  # made once
        web = engine.create(ContainerSpec(f"{fleet.agent}-httpd", testbed.TEST_IMAGE + ":1", labels, ("httpd", "-f", "-p", "8080", "-h", "/www")))
        made.append(web)
        engine.put_file(web, "/www/index.html", b"hello from the replica\n")
        engine.start(web)
        assert engine.join(web, net) and not engine.join(web, net)  # a running container joins once
        proxy = engine.create(ContainerSpec(
            f"{fleet.agent}-proxy", testbed.PROXY_IMAGE, labels, network=net, aliases=("web",),
            sysctls={"net.ipv4.ip_unprivileged_port_start": "0"},  # the image's non-root haproxy binds :80
        ))
        made.append(proxy)
        svc = Service("web", (("app", "web"),), (ServicePort(80, 8080),))
        engine.put_file(proxy, CONFIG_PATH, render([svc], {}).encode())
        engine.start(proxy)
        client = engine.create(ContainerSpec(f"{fleet.agent}-client", testbed.TEST_IMAGE + ":1", labels, ("sleep", "300"), network=net))
        made.append(client)
        engine.start(client)

        proxy_ip = engine.address_on(proxy, net)
        code, out = engine.run(client, ["busybox", "nslookup", "web"])  # Docker's DNS on the network
        assert code == 0 and f"Address: {proxy_ip}" in out, out

        def fetch() -> tuple[int, str]:  # by address: the static busybox cannot use glibc NSS to resolve names
            return engine.run(client, ["wget", "-q", "-O", "-", f"http://{proxy_ip}:80/"])

        assert fetch()[0] != 0  # no endpoint yet
        address = engine.address_on(web, net)
        assert address
        new = render([svc], {("web", 80): [Endpoint("web-0.h1", address, 8080)]})
        engine.put_file(proxy, "/tmp/next.cfg", new.encode())
        code, out = engine.run(proxy, ["haproxy", "-c", "-f", "/tmp/next.cfg"])
        assert code == 0, out
        engine.put_file(proxy, CONFIG_PATH, new.encode())
        engine.signal(proxy, "SIGUSR2")  # the master re-reads its configuration, new workers serve
        deadline = time.monotonic() + 10
        while fetch()[0] != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert fetch() == (0, "hello from the replica\n")
        engine.put_file(proxy, "/tmp/bad.cfg", new.replace("balance leastconn", "balance nonsense").encode())
        code, out = engine.run(proxy, ["haproxy", "-c", "-f", "/tmp/bad.cfg"])
        assert code != 0 and "[ALERT]" in out and "/tmp/bad.cfg" in out  # refused, in HAProxy's words
        info = engine.inspect(proxy)
        assert info is not None and info.running
        with pytest.raises(EngineError):
            engine.put_file("no-such-container", "/tmp/x", b"x")
    finally:
        for c in made:
            engine.remove(c)
        fleet.clients[e.name].remove_network(net)
        engine.close()
