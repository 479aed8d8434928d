"""Kinds of desired state, by kind name.

A kind is one module: it parses and validates its documents into frozen specs, plans them
against the live state of the hosts, applies its actions and says how its objects stand. It
registers itself here; load, plan, apply and assess take the kinds in `order` (volumes, then
services, then deployments), so adding a kind touches nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..core.actions import Action, KindPlan, PlanView
from .run import Run
from ..core.errors import Problem
from ..core.fields import NAME_RE, Ctx, Obj
from ..core.live import HostObservation
from ..core.models import Deployment, DesiredState, Origin


@dataclass(frozen=True)
class Header:
    """What every document has, read before its kind's rules: its name, labels and where it is."""

    name: str
    labels: tuple[tuple[str, str], ...]
    meta: Obj
    spec: Any  # the spec node, as YAML gave it
    spec_line: int
    origin: Origin
    body: Mapping[str, Any] = field(default_factory=dict)  # the kind's top-level keys besides spec (a Secret's stringData)
    body_lines: Mapping[str, int] = field(default_factory=dict)

    def open_spec(self, ctx: Ctx) -> Obj | None:
        """The spec, to be read key by key; None (and a problem) when it is missing or no mapping."""
        spec = Obj(ctx, self.spec, "spec", self.spec_line)
        if spec.ok:
            return spec
        if self.spec is None:
            ctx.add(self.spec_line, "spec", "is required")
        return None


class Kind:
    name: ClassVar[str]
    order: ClassVar[int]  # volumes 10, services 15, deployments 20
    # What metadata.name may be (the names of containers, DNS names, Docker volumes differ).
    name_re: ClassVar[re.Pattern[str]] = NAME_RE
    name_rule: ClassVar[str] = "lower-case letters, digits, '-' and '_', starting and ending with a letter or digit"
    top_keys: ClassVar[tuple[str, ...]] = ()  # top-level keys of its documents besides apiVersion, kind, metadata, spec

    def valid_name(self, name: str) -> bool:
        return bool(self.name_re.match(name)) and len(name) <= 63

    def parse(self, ctx: Ctx, head: Header) -> Any | None:
        """The document's spec, normalised; None when it has problems (each added to ctx)."""
        raise NotImplementedError

    def check(self, objects: Sequence[Any], problems: list[Problem], loaded: Mapping[str, Sequence[Any]]) -> None:
        """Rules across documents: this kind's `objects` among themselves (references, cycles) and
        against those of other kinds (`loaded`, by kind name)."""

    def warnings(self, objects: Sequence[Any]) -> list[str]:
        """What loading these objects should tell on every sync without refusing them."""
        return []

    def plan(self, desired: DesiredState, view: PlanView) -> KindPlan:
        return KindPlan()

    def prepare(self, run: Run) -> None:
        """Before any kind applies: hook into the shared run (e.g. `run.before_retire`)."""

    def apply(self, run: Run, actions: Sequence[Action]) -> None:
        for a in actions:
            run.skip(a, f"{self.name} has nothing to apply")

    def finish(self, run: Run) -> None:
        """After every kind applied its actions: settle what they changed underneath (e.g. endpoints)."""

    def health(self, desired: DesiredState, observed: Mapping[str, HostObservation]) -> dict[str, Any]:
        """Each object's status (with `health` and `message`), by name."""
        return {}


REGISTRY: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    if kind.name in REGISTRY:
        raise ValueError(f"kind {kind.name} is registered twice")
    REGISTRY[kind.name] = kind
    return kind


def ordered() -> list[Kind]:
    return sorted(REGISTRY.values(), key=lambda k: (k.order, k.name))


def names() -> list[str]:
    return [k.name for k in ordered()]


from . import deployment, secret, service, volume  # noqa: E402,F401  (the built-in kinds register themselves)


def assess(desired: DesiredState, observed: Mapping[str, HostObservation], kind: str = Deployment.KIND) -> dict[str, Any]:
    """How each object of one kind stands on the hosts (names repeat across kinds: a Deployment and
    a Service are both called web), by name."""
    return REGISTRY[kind].health(desired, observed)
