"""What plan makes and apply runs, whatever the kind: actions, the plan, the view of the hosts a
plan is made from, and what an apply reports (results, progress). The machinery of one apply is
gitsync/kinds/run.py."""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import HostSettings, PolicySettings, ServicesSettings
from .errors import Reason
from .live import HostObservation
from .models import Deployment


class ActionKind(enum.StrEnum):
    CREATE = "create"
    REPLACE = "replace"
    START = "start"
    RENAME = "rename"
    REMOVE = "remove"
    RELOAD = "reload"  # a new configuration, taken without a restart (a Service's endpoints)
    UPDATE = "update"  # an object the engine rolls out itself (a Swarm service)

    @property
    def symbol(self) -> str:
        return {"create": "+", "replace": "~", "start": ">", "rename": ">", "remove": "-", "reload": "*", "update": "~"}[self.value]


# Order within a kind: free what is surplus, then bring objects up, then retire what moved away.
PHASE_SURPLUS, PHASE_START, PHASE_CREATE, PHASE_REPLACE, PHASE_MOVED = range(5)


@dataclass(frozen=True)
class Action:
    """One change on one host to one object (`object_kind` `deployment`: a Deployment's name today)."""

    kind: ActionKind
    host: str
    deployment: str
    replica: int | None
    reason: str
    container_id: str | None = None  # the live container acted on (replace, start, remove)
    container_name: str | None = None
    phase: int = 0
    object_kind: str = Deployment.KIND

    @property
    def subject(self) -> tuple[str, str]:
        """The object acted on: (kind, name)."""
        return self.object_kind, self.deployment

    def sort_key(self) -> tuple[Any, ...]:
        return (self.phase, self.deployment, self.replica if self.replica is not None else -1, self.container_name or "")

    def to_json(self) -> dict[str, Any]:
        return {
            "action": str(self.kind),
            "kind": self.object_kind,
            "host": self.host,
            "deployment": self.deployment,
            "replica": self.replica,
            "container": self.container_name,
            "container_id": self.container_id,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class PlacementProblem:
    deployment: str
    message: str

    def __str__(self) -> str:
        return f"{self.deployment}: {self.message}"


@dataclass(frozen=True)
class PlanView:
    """The hosts as one plan sees them."""

    hosts: Sequence[HostSettings]  # configured, in config order
    observed: Mapping[str, HostObservation]
    agent: str
    up: list[HostSettings]  # reachable now or within their grace
    stale: set[str]  # within their grace: last known objects count, nothing changes there
    fresh: list[HostSettings]  # reachable now
    unreachable: tuple[str, ...]
    order: dict[str, int]
    services: ServicesSettings = ServicesSettings()
    policy: PolicySettings = PolicySettings()  # for what is found live (an external volume's options)

    @staticmethod
    def of(
        observed: Mapping[str, HostObservation], hosts: Sequence[HostSettings], agent: str, services: ServicesSettings = ServicesSettings(),
        policy: PolicySettings = PolicySettings(),
    ) -> PlanView:
        up = [h for h in hosts if observed.get(h.name) is not None and observed[h.name].reachable]
        stale = {h.name for h in up if observed[h.name].stale}
        return PlanView(
            hosts, observed, agent, up, stale, [h for h in up if h.name not in stale],
            tuple(h.name for h in hosts if h not in up or h.name in stale), {h.name: i for i, h in enumerate(hosts)}, services, policy,
        )


@dataclass
class KindPlan:
    """One kind's share of a plan."""

    actions: list[Action] = field(default_factory=list)
    noops: list[str] = field(default_factory=list)
    problems: list[PlacementProblem] = field(default_factory=list)
    placement: dict[str, dict[str, int]] = field(default_factory=dict)  # object -> host -> count
    warnings: list[str] = field(default_factory=list)  # worth saying, not worth failing the sync for


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    noops: tuple[str, ...] = ()
    problems: tuple[PlacementProblem, ...] = ()
    unreachable: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    placement: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # deployment -> host -> replicas
    warnings: tuple[str, ...] = ()
    cluster: bool = False  # made for an engine that schedules itself (a Swarm): its one "host" is the cluster

    @property
    def in_sync(self) -> bool:
        """Nothing to change and nothing in the way (a replica waiting for its host is not in sync)."""
        return not self.actions and not self.problems

    def for_host(self, host: str) -> list[Action]:
        return [a for a in self.actions if a.host == host]

    def counts(self) -> dict[str, int]:
        c = Counter(str(a.kind) for a in self.actions)
        return {k.value: c.get(k.value, 0) for k in ActionKind if k != ActionKind.UPDATE or self.cluster}

    def to_json(self) -> dict[str, Any]:
        return ({"warnings": list(self.warnings)} if self.warnings else {}) | {
            "in_sync": self.in_sync,
            "hosts": {h: [a.to_json() for a in self.for_host(h)] for h in self.hosts},
            "unreachable": list(self.unreachable),
            "problems": [{"deployment": p.deployment, "message": p.message} for p in self.problems],
            "noops": list(self.noops),
            "placement": {d: dict(v) for d, v in self.placement.items()},
            "counts": self.counts(),
        }


@dataclass(frozen=True)
class ActionResult:
    action: Action
    ok: bool
    message: str = ""
    seconds: float = 0.0
    skipped: bool = False
    reason: Reason | None = None  # why it failed, when not ok: HealthCheckFailed for a replica that failed its gate
    transient: bool = True  # when not ok: worth trying again after a delay; False: only a commit can change the outcome



@dataclass
class ApplyResult:
    results: list[ActionResult] = field(default_factory=list)
    rollbacks: list[str] = field(default_factory=list)  # what was rolled back, for the report

    @property
    def failed(self) -> list[ActionResult]:
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class Waiting:
    """Long work in hand, said while it lasts: what a change waits for, and for how long at most."""

    host: str
    subject: str  # the container
    what: str  # "ready: healthy by its healthcheck", "draining from the Services", ...
    up_to: float  # seconds, at most


Progress = Callable[["ActionResult | Waiting"], None]
