"""A Service on the swarm runtime: one HAProxy Swarm service per Service, global on the nodes its
hostSelector picks, publishing its hostPorts in host mode, and on the selected deployments' overlay
networks under the Service's name (so `<service>:<port>` reaches it from every managed container).

Its backends come from Swarm's own DNS: each selected deployment's alias resolves to the addresses
of its tasks (endpoint_mode dnsrr), re-resolved twice a second (a `server-template`); an address
missing from an answer leaves at once (`hold obsolete 0s`). Swarm adds a task to DNS once it is
healthy and takes it out two seconds before it stops it (its gossip convergence delay): the gossip to
the proxy's node and the next resolution must fit in those two seconds, so a rolling update or a
scale-down never leaves HAProxy sending to a stopped task; a connection refused anyway is retried
on another task. The configuration changes only when
the Service does (not when tasks move): it is a Swarm config named by its content. Pure.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ...core import labels as L
from ...core.models import DesiredState, Service
from ...core.proxyconf import CONFIG_PATH, DEFAULTS, backend_name

HEAD = """\
# written by gitsync: do not edit, the next apply replaces it
global
    log stdout format raw local0 notice

resolvers swarm
    nameserver dns 127.0.0.11:53
    accepted_payload_size 8192
    resolve_retries 3
    timeout resolve 500ms
    timeout retry 500ms
    hold valid 500ms
    hold other 1s
    hold refused 1s
    hold nx 1s
    hold timeout 1s
    hold obsolete 0s

""" + DEFAULTS


def proxy_name(agent: str, svc: Service) -> str:
    return f"{agent}-svc-{svc.name}"


def config_text(agent: str, svc: Service, desired: DesiredState) -> str:
    """HAProxy's configuration for one Service: a frontend per port, a backend resolving each selected
    deployment's tasks by its Swarm service's name (its own alias may be the Service's)."""
    out = [HEAD]
    selected = sorted(desired.selected(svc).values(), key=lambda d: d.name)
    for p in sorted(svc.ports, key=lambda p: p.port):
        name = backend_name(svc.name, p.port)
        out.append(f"\nfrontend {name}\n    bind :{p.port}\n    default_backend {name}\n")
        out.append(f"\nbackend {name}\n    balance leastconn\n")
        for d in selected:
            slots = max(8, 2 * d.replicas)  # a start-first update runs old and new tasks side by side
            out.append(f"    server-template {d.name}- 1-{slots} {agent}-{d.name}:{p.target_port} check inter 500ms fall 1 rise 1 "
                       "resolvers swarm init-addr none resolve-prefer ipv4\n")
    return "".join(out)


def config_name(agent: str, svc: Service, text: str) -> str:
    """Swarm configs cannot change: each content has a name of its own."""
    return f"{proxy_name(agent, svc)}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def networks(agent: str, svc: Service, desired: DesiredState) -> list[str]:
    """The overlay networks of the deployments the Service selects (the agent's one network when it selects none)."""
    nets = sorted({n for d in desired.selected(svc).values() for n in L.networks_of(agent, d)})
    return nets or [L.network_name(agent)]


def proxy_spec(agent: str, svc: Service, desired: DesiredState, image: str, config: tuple[str, str], revision: str) -> dict[str, Any]:
    """The proxy's whole Swarm service spec; `config` is the (id, name) of its configuration."""
    published = [{"Protocol": "tcp", "TargetPort": p.port, "PublishedPort": p.host_port, "PublishMode": "host"} for p in svc.ports if p.host_port]
    doc = {"image": image, "config": config[1], "networks": networks(agent, svc, desired), "published": published,
           "hostSelector": [list(x) for x in svc.host_selector]}
    want = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    labels = {L.MANAGED_BY: agent, L.ROLE: L.ROLE_PROXY, L.SERVICE: svc.name, L.SPEC_HASH: want}
    task: dict[str, Any] = {
        "ContainerSpec": {
            "Image": image,
            "Labels": labels,
            "Configs": [{"File": {"Name": CONFIG_PATH, "UID": "0", "GID": "0", "Mode": 0o444}, "ConfigID": config[0], "ConfigName": config[1]}],
            "StopGracePeriod": 10_000_000_000,
        },
        "RestartPolicy": {"Condition": "any", "Delay": 1_000_000_000, "MaxAttempts": 0},
        "Networks": [{"Target": n, "Aliases": [svc.name]} for n in networks(agent, svc, desired)],
    }
    if svc.host_selector and published:
        task["Placement"] = {"Constraints": [f"node.labels.{k}=={v}" for k, v in svc.host_selector]}
    order = "stop-first" if published else "start-first"  # a host port is bound once per node
    return {
        "Name": proxy_name(agent, svc),
        "Labels": {**labels, L.REVISION: revision, L.SPEC: json.dumps(doc, sort_keys=True)},
        "TaskTemplate": task,
        "Mode": {"Global": {}},
        "UpdateConfig": {"Parallelism": 1, "Delay": 0, "FailureAction": "rollback", "Monitor": 5_000_000_000, "MaxFailureRatio": 0, "Order": order},
        "RollbackConfig": {"Parallelism": 1, "Delay": 0, "FailureAction": "pause", "Monitor": 5_000_000_000, "MaxFailureRatio": 0, "Order": order},
        "EndpointSpec": {"Mode": "dnsrr", **({"Ports": published} if published else {})},
    }
