"""Agent configuration: strict keys with their path and line, sensible defaults."""

from __future__ import annotations

import pytest

from gitsync.core.config import parse
from gitsync.core.errors import ConfigError, HostError
from gitsync.adapters.engine import check_transport


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, "gitsync.yaml")
    return str(info.value)


def test_defaults() -> None:
    cfg = parse("{}", "gitsync.yaml")
    assert cfg.source.branch == "main" and cfg.source.interval == 60.0
    assert [h.name for h in cfg.hosts] == ["local"]
    assert cfg.server.listen == "127.0.0.1:9100"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("name: prod\nsoruce: {url: x}\n", "gitsync.yaml:2: soruce: unknown key"),
        ("source:\n  url: x\n  brnch: main\n", "gitsync.yaml:3: source.brnch: unknown key"),
        ("hosts:\n  - name: a\n    url: tcp://1.2.3.4:2376\n    tsl: {}\n", "gitsync.yaml:4: hosts[0].tsl: unknown key"),
        ("hosts:\n  - name: a\n    url: http://x\n", "gitsync.yaml:3: hosts[0].url: 'http://x': use unix://PATH"),
        ("source: {interval: often}\n", "gitsync.yaml:1: source.interval: 'often' is not a duration"),
        ("status:\n  - type: bitbucket\n    repo: a/b\n    token_env: T\n", "gitsync.yaml:2: status[0].type: must be one of github, gitea, forgejo, gitlab"),
        ("status:\n  - type: github\n    repo: a/b\n", "status[0].token_env: is required"),
        ("name: Prod_1\n", "gitsync.yaml:1: name: 'Prod_1' has characters that are not allowed here"),
        ("hosts:\n  - {name: a, url: 'unix:///x'}\n  - {name: a, url: 'unix:///y'}\n", "hosts[1].name: host 'a' is listed twice"),
        ("source: {path: ../etc}\n", "source.path: must stay inside the repository"),
        ("name: [\n", "gitsync.yaml:2: invalid YAML"),
        ("source: {interval: .inf}\n", "gitsync.yaml:1: source.interval: must be a finite duration, not inf"),
        ("hosts:\n  - {name: a, url: 'unix:///x', grace: .nan}\n", "gitsync.yaml:2: hosts[0].grace: must be a finite duration, not nan"),
        ("server: {listen: '127.0.0.1:notaport'}\n", "gitsync.yaml:1: server.listen: '127.0.0.1:notaport' must be HOST:PORT with a port from 1 to 65535"),
        ("server: {listen: '127.0.0.1:70000'}\n", "server.listen: '127.0.0.1:70000' must be HOST:PORT"),
        ("source: {url: 'https://bob:hunter2@git.example.com/d.git'}\n", "gitsync.yaml:1: source.url: has a password in it"),
        ("source: {url: 'http://git.example.com/d.git', token_env: T}\n", "source.token_env: a token is never sent over plain http://"),
        ("source: {url: 'http://[::2]/d.git', token_env: T}\n", "source.token_env: a token is never sent over plain http://"),
        ("hosts:\n  - {name: a, url: 'ssh://bob:hunter2@h1'}\n", "gitsync.yaml:2: hosts[0].url: has a password in it"),
    ],
)
def test_config_errors_name_the_key(text: str, expected: str) -> None:
    said = error(text)
    assert expected in said and "hunter2" not in said, said


def test_plain_tcp_needs_loopback_tls_or_insecure() -> None:
    cfg = parse(
        "hosts:\n"
        "  - {name: far, url: 'tcp://10.0.0.5:2375'}\n"
        "  - {name: near, url: 'tcp://127.0.0.1:2375'}\n"
        "  - {name: trusted, url: 'tcp://10.0.0.6:2375', insecure: true}\n"
        "  - {name: tls, url: 'tcp://10.0.0.7:2376', tls: {ca: ca.pem, cert: c.pem, key: k.pem}}\n",
        "gitsync.yaml",
    )
    with pytest.raises(HostError, match="far: plain tcp://10.0.0.5:2375 is unencrypted"):
        check_transport(cfg.hosts[0])
    for h in cfg.hosts[1:]:
        check_transport(h)


def test_relative_paths_resolve_against_the_config_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = parse("source: {url: repo}\nstate_dir: st\n", "gitsync.yaml", base=tmp_path)
    assert cfg.source.url == str(tmp_path / "repo")
    assert cfg.state_dir == str(tmp_path / "st")


def test_a_token_over_http_to_this_machine_is_allowed() -> None:
    assert parse("source: {url: 'http://127.0.0.1:8080/d.git', token_env: T}\n").source.token_env == "T"


def test_a_hosts_address_and_the_services_proxy_image() -> None:
    cfg = parse(
        "hosts:\n  - {name: a, url: 'tcp://10.0.0.5:2376', insecure: true}\n  - {name: b, url: 'unix:///run/docker.sock'}\n"
        "  - {name: c, url: 'unix:///run/docker.sock', address: 192.168.1.9}\n  - {name: d, url: 'ssh://ops@edge.example.com'}\n",
        "gitsync.yaml",
    )
    assert [h.reach for h in cfg.hosts] == ["10.0.0.5", None, "192.168.1.9", "edge.example.com"]
    assert cfg.services.proxy_image == "haproxy:3.0.5"
    assert parse("services: {proxyImage: 'registry.local/haproxy:2.6'}\n", "g.yaml").services.proxy_image == "registry.local/haproxy:2.6"
    assert cfg.services.proxy_threads == 1 and parse("services: {proxyThreads: 4}\n", "g.yaml").services.proxy_threads == 4
    assert error("services: {proxyThreads: 0}\n").startswith("gitsync.yaml:1: services.proxyThreads: must be a number of threads from 1 to 64")
    assert error("services: {proxyImage: 'Not An Image'}\n").startswith("gitsync.yaml:1: services.proxyImage: 'Not An Image' is not an image reference")
    assert error("services: {proxy: x}\n").startswith("gitsync.yaml:1: services.proxy: unknown key")
    assert "hosts[0].address: 'a b' has characters that are not allowed here" in error("hosts:\n  - {name: a, url: 'unix:///x', address: 'a b'}\n")
