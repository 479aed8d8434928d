"""Apply: execute a plan, kind by kind in their order (volumes, services, deployments); each
kind runs its own actions (see gitsync/kinds), each change re-checked against live state first."""

from __future__ import annotations

import threading
from collections.abc import Callable

from ... import kinds
from ...core.actions import ApplyResult, Plan, Progress
from ...kinds.run import Run
from ...core.config import PolicySettings, ServicesSettings
from ...adapters.hosts import Hosts
from ...core.live import HostObservation
from ...core.models import DesiredState


def apply_plan(
    plan: Plan,
    desired: DesiredState,
    hosts: Hosts,
    agent: str,
    revision: str,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    observe: Callable[[], dict[str, HostObservation]] | None = None,
    services: ServicesSettings = ServicesSettings(),
    policy: PolicySettings = PolicySettings(),
) -> ApplyResult:
    """Run the plan. When `stop` is set, changes in flight finish and the rest are skipped. `observe`
    is how waits for dependencies look at the hosts: the same view the plan was made from."""
    run = Run(plan, desired, hosts, agent, revision, progress, stop, observe or hosts.observe, services, policy)
    for kind in kinds.ordered():
        kind.prepare(run)
    for kind in kinds.ordered():
        mine = [a for a in plan.actions if a.object_kind == kind.name]
        if mine:
            kind.apply(run, mine)
    if plan.actions:
        for kind in kinds.ordered():
            kind.finish(run)
    done = run.done()
    for a in plan.actions:  # an action of a kind this agent does not know is reported, never dropped
        if id(a) not in done:
            run.skip(a, f"no kind {a.object_kind} to apply it")
    return run.out
