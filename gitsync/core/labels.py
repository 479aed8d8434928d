"""The labels that make a container ours, and the hash that says whether it is up to date.

Live state is read back from these labels alone: the agent keeps no inventory
of its own, so a restarted agent (or a second CLI) sees exactly what runs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from . import container
from .models import Deployment

PREFIX = "io.gitsync."
MANAGED_BY = "io.gitsync.managed-by"
DEPLOYMENT = "io.gitsync.deployment"
REPLICA = "io.gitsync.replica"
SPEC_HASH = "io.gitsync.spec-hash"
# The normalised spec itself (JSON), so that a plan can say which fields changed without an inspect.
SPEC = "io.gitsync.spec"
REVISION = "io.gitsync.revision"
# Set on the new container of a start-first replace until it takes the replica's name.
SUCCESSOR = "io.gitsync.successor-of"
# On a volume gitsync made: the declared (logical) volume name; with io.gitsync.deployment and
# io.gitsync.replica, the replica whose data it holds.
VOLUME = "io.gitsync.volume"
# What a container is to gitsync when it is no replica: "proxy" (the host's Services' proxy).
ROLE = "io.gitsync.role"
ROLE_PROXY = "proxy"
# On a Swarm service that proxies a Service (runtime swarm): the Service's name.
SERVICE = "io.gitsync.service"
ROLE_FILES = "files"  # a volume holding files of the repository that replicas mount (spec.files)
# On a replica: the files volumes it mounts, comma-separated (what keeps them from being pruned).
FILES = "io.gitsync.files"


def files_volume(agent: str, digest: str) -> str:
    """The volume on a host that holds one FileMount's content: named by the content."""
    return f"gitsync-{agent}-files-{digest[:24]}"


def network_name(agent: str) -> str:
    """The user-defined network on every host that the replicas and the Services' proxy share."""
    return f"gitsync-{agent}"


def group_network(agent: str, name: str) -> str:
    """One of the agent's own networks on a host (spec.networks; a compose project's networks):
    ``gitsync-<agent>_<name>`` ('_' is in no agent's name, so no two agents' names meet)."""
    return f"gitsync-{agent}_{name}"


def networks_of(agent: str, d: Deployment) -> tuple[str, ...]:
    """The agent's networks a replica is on: its own networks', or the agent's one network."""
    return networks_under(network_name(agent), d)


def networks_under(agent_network: str, d: Deployment) -> tuple[str, ...]:
    """networks_of, from the name of the agent's one network."""
    return tuple(f"{agent_network}_{n}" for n in d.options.networks) or (agent_network,)


def proxy_name(agent: str, slot: int = 0) -> str:
    """The host's Services' proxy; a second (slot 1, ...) serves Services whose port the first one serves already."""
    return f"{agent}-proxy" if not slot else f"{agent}-proxy-{slot}"


def spec_document(d: Deployment) -> dict[str, Any]:
    """The normalised container spec: everything that shapes a replica, replicas and placement excluded.

    Scaling or moving a deployment must never recreate the replicas that stay,
    so the count, the placement and the update policy are left out.
    """
    return {
        "image": d.image,
        "command": list(d.command) if d.command is not None else None,
        "env": sorted([k, v] for k, v in d.env),
        "ports": sorted([p.container_port, p.host_port or 0, p.protocol] + ([p.host_ip] if p.host_ip else []) for p in d.ports),
        "volumes": sorted([v.name, v.mount_path, v.read_only] for v in d.volumes),
        "labels": sorted([k, v] for k, v in d.labels),
        "healthcheck": None
        if d.healthcheck is None
        else {
            "test": list(d.healthcheck.test),
            "interval": d.healthcheck.interval,
            "timeout": d.healthcheck.timeout,
            "retries": d.healthcheck.retries,
            "start_period": d.healthcheck.start_period,
        },
        "restart": str(d.restart),
        "stop_grace_period": d.stop_grace_period,
        **({"runOnce": True} if d.run_once else {}),  # only when set: a spec without it hashes as before
        **container.document(d.options),  # only the fields set: a spec without them hashes as before
    }


def canonical_spec(d: Deployment) -> str:
    return json.dumps(spec_document(d), sort_keys=True, separators=(",", ":"))


def spec_hash(d: Deployment) -> str:
    return hashlib.sha256(canonical_spec(d).encode()).hexdigest()


def container_labels(agent: str, d: Deployment, replica: int, revision: str) -> dict[str, str]:
    labels = dict(d.labels)
    labels.update(
        {
            MANAGED_BY: agent,
            DEPLOYMENT: d.name,
            REPLICA: str(replica),
            SPEC_HASH: spec_hash(d),
            SPEC: canonical_spec(d),
            REVISION: revision,
        }
    )
    if d.options.files:
        labels[FILES] = ",".join(sorted({files_volume(agent, f.digest) for f in d.options.files}))
    return labels


def container_name(agent: str, deployment: str, replica: int) -> str:
    """``<agent>_<deployment>-<replica>``: '_' is in neither an agent's nor a deployment's name, so no
    two agents' replicas share a name (with '-' agent ca's x-0 and agent ca-x's 0 would)."""
    return f"{agent}_{deployment}-{replica}"


def deployment_from_spec(base: Deployment, doc: dict[str, Any]) -> Deployment:
    """The deployment a container was created from, rebuilt from its io.gitsync.spec label (for rollback).

    Only the container spec is rebuilt; replicas, placement and rollout policy come from `base`.
    """
    from dataclasses import replace

    from .models import Healthcheck, Port, RestartPolicy, VolumeMount

    hc = doc.get("healthcheck")
    return replace(
        base,
        image=doc["image"],
        command=tuple(doc["command"]) if doc.get("command") is not None else None,
        env=tuple((k, v) for k, v in doc.get("env", [])),
        ports=tuple(Port(c, h or None, p, *ip) for c, h, p, *ip in doc.get("ports", [])),
        volumes=tuple(VolumeMount(n, m, ro) for n, m, ro in doc.get("volumes", [])),
        labels=tuple((k, v) for k, v in doc.get("labels", [])),
        healthcheck=None
        if hc is None
        else Healthcheck(tuple(hc["test"]), hc["interval"], hc["timeout"], hc["retries"], hc["start_period"]),
        restart=RestartPolicy(doc.get("restart", "unless-stopped")),
        stop_grace_period=float(doc.get("stop_grace_period", 10.0)),
        run_once=bool(doc.get("runOnce", False)),
        options=container.from_document(doc),
    )
