"""Docker Swarm across the test bed's engines, for the benchmarks that compare with it."""

from __future__ import annotations

import contextlib

import docker

from tests import testbed


def leave(apis: dict[str, docker.APIClient]) -> None:
    """Every engine out of its swarm, the containers of its tasks and the bridge Swarm made on each
    (docker_gwbridge) gone."""
    for api in apis.values():
        with contextlib.suppress(Exception):
            api.leave_swarm(force=True)
        for c in api.containers(all=True, filters={"label": "com.docker.swarm.task"}):
            with contextlib.suppress(Exception):
                api.remove_container(c["Id"], force=True)
        for n in api.networks(names=["docker_gwbridge"]):
            with contextlib.suppress(Exception):
                api.remove_network(n["Id"])


def form(apis: dict[str, docker.APIClient], engines: list[testbed.Engine]) -> None:
    """A fresh swarm: the first engine its manager, the others workers."""
    leave(apis)
    first = engines[0]
    apis[first.name].init_swarm(advertise_addr=first.addr, listen_addr=f"{first.addr}:2377")
    token = apis[first.name].inspect_swarm()["JoinTokens"]["Worker"]
    for e in engines[1:]:
        apis[e.name].join_swarm([f"{first.addr}:2377"], token, advertise_addr=e.addr, listen_addr=f"{e.addr}:2377")
