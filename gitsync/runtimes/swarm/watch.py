"""The swarm runtime's watch between syncs: the manager's event stream. A service of ours changed or
removed by someone else becomes a sync within the debounce (drift corrected in seconds); a node
going down or coming back is told (host-down, host-up) and synced, so that statuses say degraded
while Swarm reschedules, and healthy again. Swarm sends no event when it moves a task, so while a
sync finds something not healthy, it is looked at again (2 s, doubling to 30 s) until it is. Swarm
heals tasks itself: nothing here moves any."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ...core.config import Config
from ...adapters.engine import EventStream, follow_events
from ...core.settings import Tunables
from ...core.triggers import Cause, Trigger

if TYPE_CHECKING:  # handed in by the agent, which sits above the runtimes
    from ...agent.alerts import Alerts
    from ...agent.backoff import Backoff
    from ...agent.queue import Debouncer, SyncQueue

log = logging.getLogger("gitsync.agent")
RECHECK = (2.0, 30.0)  # first and longest pause before looking again at a degraded swarm


class SwarmWatch:
    def __init__(self, config: Config, syncer: Any, tune: Tunables, stopping: threading.Event,
                 queue: SyncQueue, debouncer: Debouncer, alerts: Alerts, backoff: Backoff[tuple[str, str, int]]) -> None:
        self.config = config
        self.tune = tune
        self.stopping = stopping
        self.queue = queue
        self.debouncer = debouncer
        self.alerts = alerts
        self._stream: EventStream | None = None
        self._lock = threading.Lock()
        self._down: set[str] = set()  # nodes said to be down
        self._recheck = RECHECK[0]  # seconds until a sync looks again at what is not healthy yet

    def reconfigured(self, config: Config, syncer: Any) -> None:
        self.config = config
        self._close()  # the follower reconnects to the managers now configured

    def start(self) -> list[threading.Thread]:
        t = threading.Thread(target=self._follow, name="gitsync-swarm-events", daemon=True)
        t.start()
        return []  # not joined on stop: a stream blocks until its read ends

    def stop(self) -> None:
        self._close()

    def _close(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def _follow(self) -> None:
        """Follow the first manager that answers; on a drop, the next, with a growing pause between rounds."""
        since = int(time.time())
        delay = 0.5
        first = True
        while not self.stopping.is_set():
            for h in self.config.hosts:
                if self.stopping.is_set():
                    return
                try:
                    stream = follow_events(h, since, {"type": ["service", "node"]}, self.tune)
                except Exception as exc:
                    log.debug("swarm events through %s: %s", h.name, exc)
                    continue
                with self._lock:
                    self._stream = stream
                if not first:
                    self.queue.nudge(Trigger(Cause.EVENTS, h.name, "reconnected"))  # something may have changed while we were away
                first, delay = False, 0.5
                try:
                    for ev in stream:
                        if self.stopping.is_set():
                            return
                        since = max(since, int(ev.get("time", since)))
                        self.on_event(ev)
                except Exception as exc:
                    log.debug("swarm event stream of %s dropped: %s", h.name, exc)
                finally:
                    stream.close()
            self.stopping.wait(delay)
            delay = min(self.tune.reconnect_max, delay * 2)

    def on_event(self, ev: dict[str, Any]) -> None:
        kind = str(ev.get("Type") or "")
        action = str(ev.get("Action") or "")
        attrs = (ev.get("Actor") or {}).get("Attributes") or {}
        name = str(attrs.get("name") or "")
        if kind == "service" and name.startswith(f"{self.config.name}-"):
            self.debouncer.poke(f"swarm/{name}")  # ours, changed by gitsync or by someone: the sync tells which
        elif kind == "node" and action == "update" and "state.new" in attrs:
            new = str(attrs["state.new"])
            if new == "down" and name not in self._down:
                self._down.add(name)
                self._changed(Trigger(Cause.HOST, name, "down"))
            elif new == "ready" and name in self._down:
                self._down.discard(name)
                self._changed(Trigger(Cause.HOST, name, "back"))

    def sync_done(self, result: Any) -> None:
        """After every sync: unless everything it assessed is healthy, look again a little later."""
        statuses = [*result.deployments.values(), *result.services.values()]
        if not statuses or all(str(st.health) == "Healthy" for st in statuses):
            self._recheck = RECHECK[0]
            return
        t = threading.Timer(self._recheck, self.queue.nudge, args=(Trigger(Cause.RECHECK),))
        t.daemon = True
        t.start()
        self._recheck = min(RECHECK[1], self._recheck * 2)

    def _changed(self, why: Trigger) -> None:
        (log.info if why.detail == "back" else log.warning)("swarm node %s is %s", why.subject, why.detail)
        self.alerts.host_changed(why)
        self.queue.nudge(why)
