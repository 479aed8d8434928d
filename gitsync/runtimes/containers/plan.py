"""Plan: desired x live -> ordered actions per host. Pure: no I/O, same input, same plan.

Each kind plans its own objects (see gitsync/kinds); the plan puts them together per host,
kinds in their order, and leaves out changes on hosts within their grace (stale).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ... import kinds
from ...core.actions import Plan, PlanView
from ...core.config import HostSettings, PolicySettings, ServicesSettings
from ...core.live import HostObservation
from ...core.models import DesiredState


def make_plan(
    desired: DesiredState,
    observed: Mapping[str, HostObservation],
    hosts: Sequence[HostSettings],
    agent: str,
    services: ServicesSettings = ServicesSettings(),
    policy: PolicySettings = PolicySettings(),
) -> Plan:
    view = PlanView.of(observed, hosts, agent, services, policy)
    parts = [(k.name, k.plan(desired, view)) for k in kinds.ordered()]
    rank = {name: i for i, (name, _) in enumerate(parts)}
    actions = [a for _, p in parts for a in p.actions if a.host not in view.stale]
    actions.sort(key=lambda a: (view.order.get(a.host, len(view.order)), a.host, rank.get(a.object_kind, len(rank)), *a.sort_key()))
    return Plan(
        tuple(actions),
        tuple(n for _, p in parts for n in p.noops),
        tuple(x for _, p in parts for x in p.problems),
        view.unreachable,
        tuple(h.name for h in hosts),
        {name: placed for _, p in parts for name, placed in p.placement.items()},
        desired.warnings + tuple(w for _, p in parts for w in p.warnings),
    )
