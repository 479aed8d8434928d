"""Host liveness: which hosts answer, which are failing within their grace, which are down.

Fed by the agent's probes and by its event streams (an open stream vouches for its host); read by
every observation the agent plans from.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...core.config import Config
from ...core.live import HostObservation
from ...core.triggers import Cause, Trigger

log = logging.getLogger("gitsync.agent")


@dataclass
class HostHealth:
    last_ok: float
    last_seen: HostObservation | None = None
    failing_since: float | None = None
    error: str | None = None
    down: bool = False


class HostTracker:
    """Reachability per host: the probe's verdicts and the last containers seen.

    A host that stops answering keeps its last known replicas for `grace`
    (a blip moves nothing); past the grace it is down and its replicas are
    placed elsewhere. Observations are rewritten accordingly before planning.
    """

    def __init__(self, cfg: Config, hosts_ref: Callable[[], Any]) -> None:
        now = time.monotonic()
        self.grace = {h.name: h.grace for h in cfg.hosts}
        self.state = {h.name: HostHealth(last_ok=now) for h in cfg.hosts}
        self._hosts_ref = hosts_ref
        self._lock = threading.Lock()
        self._streaming: set[str] = set()  # hosts whose event stream is open: alive without probing
        self.holding = False  # many hosts unreachable at once: suspect our side, move nothing

    def stream(self, name: str, up: bool, silent_for: float = 0.0) -> Trigger | None:
        """A host's event stream opened (the engine answered: as good as a probe, and a reason to sync
        when the host was failing) or ended: the host was alive until now, or, when TCP keepalive gave
        up on it, until `silent_for` seconds ago (its grace counts from its last sign of life)."""
        now = time.monotonic()
        with self._lock:
            h = self.state.setdefault(name, HostHealth(last_ok=now))
            if not up:
                self._streaming.discard(name)
                if h.failing_since is None:
                    h.last_ok = now - silent_for
                return None
            self._streaming.add(name)
        return self.probed(name, None)

    def streaming(self, name: str) -> bool:
        with self._lock:
            return name in self._streaming

    def _many_unreachable(self) -> bool:
        """More than half of several hosts failing at once is more likely this agent's network or CPU
        than their hosts (Kubernetes' node lifecycle controller stops evicting then, too)."""
        failing = sum(1 for h in self.state.values() if h.failing_since is not None)
        return len(self.state) >= 2 and failing * 2 > len(self.state)

    def probed(self, name: str, error: str | None) -> Trigger | None:
        """Record a probe; returns a reason to sync when the host's standing changed."""
        now = time.monotonic()
        with self._lock:
            h = self.state.setdefault(name, HostHealth(last_ok=now))
            if error is None:
                was_failing = h.failing_since is not None
                h.last_ok, h.failing_since, h.error = now, None, None
                if self.holding and not self._many_unreachable():
                    self.holding = False
                    log.info("fewer than half of the hosts are unreachable now: hosts past their grace count as down again")
                self._hosts_ref().known_down.pop(name, None)
                if h.down or was_failing:
                    h.down = False
                    return Trigger(Cause.HOST, name, "back")
                return None
            h.error = error
            self._hosts_ref().known_down[name] = error
            if h.failing_since is None:
                h.failing_since = now
                return Trigger(Cause.HOST, name, "unreachable")
            if not h.down and now - h.last_ok >= self.grace.get(name, 10.0):  # unreachable since its last answer
                if self._many_unreachable():
                    if not self.holding:
                        self.holding = True
                        failing = sum(1 for x in self.state.values() if x.failing_since is not None)
                        log.warning("%d of %d hosts unreachable at once: suspecting this agent's own network or CPU, "
                                    "no replicas are moved until fewer are", failing, len(self.state))
                    return None
                h.down = True
                return Trigger(Cause.HOST, name, "down")
            return None

    def rewrite(self, observed: dict[str, HostObservation]) -> dict[str, HostObservation]:
        now = time.monotonic()
        out = dict(observed)
        with self._lock:
            for name, o in observed.items():
                h = self.state.setdefault(name, HostHealth(last_ok=now))
                if o.reachable:
                    h.last_seen, h.last_ok = o, now
                    if h.failing_since is None:
                        h.down = False
                    continue
                since = h.last_ok
                if not h.down and h.last_seen is not None and now - since < self.grace.get(name, 10.0):
                    left = self.grace.get(name, 10.0) - (now - since)
                    out[name] = HostObservation(
                        name, True, h.last_seen.containers, f"{o.error}; its replicas (except those bound to data there) move if it is still down in {left:.0f}s", o.seconds, stale=True,
                        volumes=h.last_seen.volumes
                    )
        return out
