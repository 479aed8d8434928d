"""Runtimes: how the desired state becomes live on one kind of engine.

The kinds own what is theirs (parsing, cross-document checks, what the desired object is); a
runtime owns how the objects are observed, planned, applied and assessed on its engine. One
runtime per agent, chosen by `runtime:` in its configuration:

- `containers` (the default): gitsync is the orchestrator; it places each replica on a host,
  proxies Services itself and heals (gitsync/runtimes/containers/);
- `swarm`: a Docker Swarm schedules; gitsync plans, applies and reports Swarm services
  (gitsync/runtimes/swarm/).

A sync (gitsync/reconcile.py) talks to its runtime only through `Runtime`; a third runtime
(Nomad, Kubernetes) is one more package here and one line in `make`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..core.actions import ApplyResult, Plan, Progress
from ..core.errors import Problem
from ..core.health import DeploymentStatus, ServiceStatus
from ..core.models import DesiredState

if TYPE_CHECKING:
    from ..core.config import Config

Observation = Any  # what a runtime reads from its engine: its own type, opaque to the sync


class Runtime:
    name: str

    def check(self, desired: DesiredState) -> list[Problem]:
        """What this runtime cannot honour in a valid desired state, located (file:line), so that it
        is refused at validation, never silently dropped."""
        return []

    def observe(self) -> Observation:
        raise NotImplementedError

    def unreachable(self, observed: Observation) -> dict[str, str]:
        """The engines that did not answer, with why."""
        return {}

    def plan(self, desired: DesiredState, observed: Observation) -> Plan:
        raise NotImplementedError

    def apply(self, plan: Plan, desired: DesiredState, revision: str, progress: Progress | None, stop: threading.Event | None,
              observe: Callable[[], Observation], deadline: float) -> ApplyResult:
        raise NotImplementedError

    def converge(self, desired: DesiredState, deadline: float, skip: set[str] | frozenset[str], first: Observation | None,
                 stop: threading.Event | None, observe: Callable[[], Observation]) -> tuple[dict[str, DeploymentStatus], Observation]:
        """Assess until every Deployment not in `skip` is healthy, the deadline, or `stop`; `first`
        is an observation still current (nothing applied since)."""
        raise NotImplementedError

    def services(self, desired: DesiredState, observed: Observation) -> Mapping[str, ServiceStatus]:
        return {}

    def hosts_view(self, observed: Observation) -> dict[str, dict[str, Any]]:
        """The machines as /api/status, the dashboard and /metrics show them, by name: url, labels,
        reachable, error, and the containers of ours there (name, deployment, replica, state, health, revision)."""
        return {}

    def volumes(self, desired: DesiredState | None, observed: Observation) -> list[dict[str, Any]]:
        """The volumes this agent made, as `gitsync volumes` and /api/status list them."""
        return []

    def close(self) -> None:
        pass


def check(config: Config, desired: DesiredState) -> list[Problem]:
    """What the configured runtime cannot honour in `desired` (validation, without an engine)."""
    if config.runtime == "swarm":
        from .swarm import check as swarm_check

        return swarm_check(desired)
    return []


def make(config: Config) -> Runtime:
    if config.runtime == "swarm":
        from .swarm import SwarmRuntime

        return SwarmRuntime(config)
    from .containers import ContainersRuntime

    return ContainersRuntime(config)
