"""The Services' proxy configuration (HAProxy): one frontend per Service port, balancing over that
port's endpoints. Pure: the same Services and endpoints always give the same text, so a proxy is
reloaded only when what it serves changes."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .models import Service

CONFIG_PATH = "/usr/local/etc/haproxy/haproxy.cfg"  # where the official image reads it

# What every proxy of gitsync's does with a connection (the Swarm runtime's proxies too): TCP, a
# second to connect, and a failed connect tried again on another server.
DEFAULTS = """\
defaults
    mode tcp
    log global
    timeout connect 1s
    timeout client 1h
    timeout server 1h
    option redispatch
    retries 3
"""

_HEAD = """\
# written by gitsync: do not edit, the next sync replaces it
global
    master-worker
    nbthread {threads}
    log stdout format raw local0 notice
    hard-stop-after {hard_stop}s

""" + DEFAULTS + """\
    default-server check inter 1s fall 1 rise 1
"""


@dataclass(frozen=True)
class Endpoint:
    """A replica a Service port sends connections to."""

    name: str  # e.g. web-0.h1 (replica and host)
    address: str
    port: int
    draining: bool = False  # keeps its open connections, gets no new ones


def _ident(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", text)


def backend_name(service: str, port: int) -> str:
    return f"svc-{_ident(service)}-{port}"


def render(services: Sequence[Service], endpoints: Mapping[tuple[str, int], Sequence[Endpoint]], hard_stop: int = 600, threads: int = 1) -> str:
    """The whole configuration. `endpoints` by (service, port); `hard_stop` bounds how long a reloaded
    worker may keep finishing its connections; `threads`: HAProxy's (by default one per core it may
    use: on a host of few cores, shared with the replicas, that doubled the p99 under load)."""
    out = [_HEAD.format(hard_stop=hard_stop, threads=threads)]
    for svc in sorted(services, key=lambda s: s.name):
        for p in sorted(svc.ports, key=lambda p: p.port):
            name = backend_name(svc.name, p.port)
            out.append(f"\nfrontend {name}\n    bind :{p.port}\n    default_backend {name}\n")
            # the replica with the fewest open connections: none is piled on past what it accepts
            # (round robin sent bursts to one, its listen queue overflowed, and HAProxy's retry waited
            # a second: 1 in 100 requests), and long-lived connections spread as they should
            out.append(f"\nbackend {name}\n    balance leastconn\n")
            for e in sorted(endpoints.get((svc.name, p.port), ()), key=lambda e: e.name):
                host = f"[{e.address}]" if ":" in e.address else e.address
                out.append(f"    server {_ident(e.name)} {host}:{e.port}{' weight 0' if e.draining else ''}\n")
    return "".join(out)


_SERVER = re.compile(r"^\s+server (\S+) (\S+)( weight 0)?\s*$")


def servers(text: str) -> dict[str, dict[str, tuple[str, bool]]]:
    """What a configuration written by `render` serves: backend -> server -> (address:port, draining)."""
    out: dict[str, dict[str, tuple[str, bool]]] = {}
    current: dict[str, tuple[str, bool]] | None = None
    for line in text.splitlines():
        if line.startswith("backend "):
            current = out.setdefault(line.split()[1], {})
        elif not line.startswith((" ", "\t")):
            current = None
        elif current is not None and (m := _SERVER.match(line)):
            current[m.group(1)] = (m.group(2), bool(m.group(3)))
    return out
