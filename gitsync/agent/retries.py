"""What a failed change waits for before it is tried again: a delay, or a commit.

The error decides (``GitsyncError.transient``, carried on each ActionResult). A change that failed
for a passing reason (a host that did not answer, a busy engine, an image not pushed yet, a name
another container holds) is tried again after 1 s, 2 s, 4 s ... up to a cap. One that failed for a
reason only a commit can change (a rollout that failed its health gate, Swarm rolling an update
back, a spec the engine refuses) is held until a commit changes the object it asks for. Either way
a commit that changes the object gives its changes a fresh try at once: the keys carry its spec.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..core import labels as L
from ..core.actions import Action, ActionResult, ApplyResult
from .backoff import Backoff
from ..core.models import Deployment, DesiredState


def fingerprint(desired: DesiredState | None, kind: str, name: str) -> str:
    """The desired object of that kind and name, as a short hash ("" once it has left Git)."""
    if desired is None:
        return ""
    if kind == Deployment.KIND:
        d = desired.deployment(name)
        return L.spec_hash(d) if d is not None else ""
    obj = next((o for o in desired.of(kind) if o.name == name), None)
    return hashlib.sha256(repr(obj).encode()).hexdigest()[:16] if obj is not None else ""


def _key(a: Action, spec: str) -> tuple[str, str, str, str, str]:
    """One change, the same in every plan that asks for it for the same spec (container ids change; names do not)."""
    return (a.host, a.object_kind, a.container_name or a.deployment, str(a.kind), spec)


@dataclass(frozen=True)
class Hold:
    """Why a change waits, and for how long (None: until a commit changes its object)."""

    why: str
    seconds: float | None


class RetryPolicy:
    def __init__(self, base: float, cap: float) -> None:
        self._delays: Backoff[tuple[str, str, str, str, str]] = Backoff(base, cap, reset_after=float("inf"))
        self._said: dict[tuple[str, str, str, str, str], str] = {}  # what a change backed off said when it failed
        self._stalled: dict[tuple[str, str, str], tuple[str, str]] = {}  # (object kind, name, change) -> (spec, why)
        self._lock = threading.Lock()

    def remember(self, applied: ApplyResult, desired: DesiredState | None, now: float, words: Callable[[ActionResult], str]) -> None:
        """What an apply did: a change that worked starts afresh; one that failed waits as its error says.
        `words`: what a change held back says meanwhile (the words its failure was reported in)."""
        with self._lock:
            for r in applied.results:
                spec = fingerprint(desired, r.action.object_kind, r.action.deployment)
                key = _key(r.action, spec)
                if r.ok:
                    self._delays.forget(key)
                    self._said.pop(key, None)
                elif r.skipped:
                    continue
                elif not r.transient and spec:
                    self._stalled[(r.action.object_kind, r.action.deployment, str(r.action.kind))] = (spec, r.message)
                else:  # passing, or about an object gone from Git (no commit will change it): a delay
                    self._said[key] = words(r)
                    if not self._delays.known(key):
                        self._delays.allow(key, now)  # counts this try: the next waits `base`
            if desired is not None:  # a commit that changed an object forgets what its old spec did
                for (kind, name, change), (spec, _) in list(self._stalled.items()):
                    if fingerprint(desired, kind, name) != spec:
                        del self._stalled[(kind, name, change)]

    def hold(self, a: Action, desired: DesiredState, now: float) -> Hold | None:
        """Why `a` must wait now, or None when it may be tried."""
        spec = fingerprint(desired, a.object_kind, a.deployment)
        with self._lock:
            stalled = self._stalled.get((a.object_kind, a.deployment, str(a.kind)))
            if stalled is not None and stalled[0] == spec:
                return Hold(f"{a.deployment}: {a.kind} held back until a commit changes it; it failed on this spec: {stalled[1]}", None)
            key = _key(a, spec)
            if not self._delays.known(key):
                return None
            ok, tries, wait = self._delays.allow(key, now)
            if ok:
                return None
            return Hold(self._said.get(key, f"{a.deployment} {a.kind} failed on {a.host}"), wait)
