"""The containers runtime's watch between syncs: each host's Docker events (a replica died, was
killed, turned unhealthy) and probes (a host stopped answering, came back). What it sees becomes a
sync (debounced), a restart counted for crash-loop backoff, or a host's standing changed; every
observation the agent plans from is rewritten by the host tracker (a host within its grace keeps
its last known replicas)."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Any

from ...core import labels as L
from ...core.config import Config
from ...adapters.engine import EventStream
from ...core.live import HostObservation
from .liveness import HostTracker
from ...core.settings import Tunables
from ...core.triggers import Cause, Trigger

if TYPE_CHECKING:  # handed in by the agent, which sits above the runtimes
    from ...agent.alerts import Alerts
    from ...agent.backoff import Backoff
    from ...reconcile import Syncer
    from ...agent.queue import Debouncer, SyncQueue

log = logging.getLogger("gitsync.agent")


class HostWatch:
    def __init__(self, config: Config, syncer: Syncer, tune: Tunables, stopping: threading.Event,
                 queue: SyncQueue, debouncer: Debouncer, alerts: Alerts, backoff: Backoff[tuple[str, str, int]]) -> None:
        self.config = config  # the agent's current configuration and syncer (a reload swaps both)
        self.syncer = syncer
        self.tune = tune
        self.stopping = stopping
        self.queue = queue
        self.debouncer = debouncer
        self.alerts = alerts
        self.backoff = backoff
        self.tracker = HostTracker(config, lambda: self.syncer.hosts)
        self.install(syncer)
        # Containers whose newest lifecycle event is `die`. The Engine logs `die` before it has cleaned
        # the container up and updated the state its list endpoint reads (Docker 20.10: daemon/monitor.go),
        # so for a moment a dead replica is still listed as running; a sync that saw that must look again.
        self._died: dict[str, float] = {}
        self._died_lock = threading.Lock()
        self._event_nano: dict[str, int] = {}  # host -> timeNano of the newest event handled
        self._events_lock = threading.Lock()
        self._watchers: dict[tuple[str, str], threading.Event] = {}  # (host, url) -> set to stop its watcher
        self._streams: dict[tuple[str, str], EventStream] = {}  # the open event stream of each watcher

    def install(self, syncer: Syncer) -> None:
        """Every observation of `syncer` (the one a plan is made from included) goes through the tracker."""
        plain = syncer.observe

        def observe() -> dict[str, HostObservation]:
            observed = plain()
            self._settle_if_behind(observed)
            return self.tracker.rewrite(observed)

        syncer.observe = observe  # type: ignore[method-assign]

    def reconfigured(self, config: Config, syncer: Syncer) -> None:
        """After a reload: a tracker for the new hosts, watchers for hosts added or moved."""
        self.config, self.syncer = config, syncer
        self.tracker = HostTracker(config, lambda: self.syncer.hosts)
        self.install(syncer)
        self._follow_hosts()

    def start(self) -> list[threading.Thread]:
        t = threading.Thread(target=self._prober, name="gitsync-probe", daemon=True)
        t.start()
        self._follow_hosts()
        return [t]

    def sync_done(self, result: Any) -> None:
        """Containers report their own deaths (events): nothing to look at again after a sync."""

    def stop(self) -> None:
        for key in list(self._watchers):
            self._close_stream(key)

    def _nudge_later(self, delay: float, trigger: Trigger) -> None:
        t = threading.Timer(delay, self.queue.nudge, args=(trigger,))
        t.daemon = True
        t.start()

    def _settle_if_behind(self, observed: dict[str, HostObservation]) -> None:
        """Sync again shortly when a container the events say died is still listed as running."""
        with self._died_lock:
            cutoff = time.monotonic() - self.tune.died_memory
            for cid in [c for c, t in self._died.items() if t < cutoff]:
                del self._died[cid]  # the list caught up long ago, or the container went without an event we saw
            behind = [c.name for o in observed.values() for c in o.containers if c.running and c.id in self._died]
        if behind:
            log.debug("the engine still lists %s as running after it died; looking again", ", ".join(behind))
            self._nudge_later(0.2, Trigger(Cause.EVENT, "settle"))

    def _lifecycle(self, host: str, action: str, container_id: str, attrs: dict[str, str]) -> None:
        now = time.monotonic()
        with self._died_lock:
            if action == "die":
                self._died[container_id] = now
                return
            if action not in ("start", "destroy"):
                return
            died = self._died.pop(container_id, None)
        replica = attrs.get(L.REPLICA, "")
        if action == "start" and died is not None and replica.isdigit():
            # the same container started again after it died: a restart (a replace or removal ends in destroy)
            self.backoff.restarted((host, attrs.get(L.DEPLOYMENT, ""), int(replica)), now)

    def _prober(self) -> None:
        """Probe the hosts the event streams do not vouch for, twice a second; the others every
        `probe_streaming_every` seconds (an engine frozen behind a live TCP connection). A round that
        starts or ends late says more about this agent than about the hosts: its failures are not judged."""
        t = self.tune
        last: dict[str, float] = {}
        expected = time.monotonic()
        while not self.stopping.is_set():
            start = time.monotonic()
            hosts = self.syncer.hosts
            for n in hosts.names():
                last.setdefault(n, start - random.uniform(0, t.probe_streaming_every))  # spread the slow probes
            due = [n for n in hosts.names() if not self.tracker.streaming(n) or start - last[n] >= t.probe_streaming_every]
            verdicts = hosts.map(lambda n: hosts.probe(n, timeout=t.probe_timeout), due) if due else {}
            took = time.monotonic() - start
            late = start - expected > t.observer_late or took > t.probe_timeout + t.observer_late
            if late and any(e is not None for e in verdicts.values()):
                log.warning("this agent is late (%.1fs behind, a probe round took %.1fs): not judging hosts by this round; starved of CPU?",
                            max(0.0, start - expected), took)
            for name, err in verdicts.items():
                last[name] = start
                if err is not None and late:
                    continue
                why = self.tracker.probed(name, err if isinstance(err, str) or err is None else str(err))
                if why is not None:
                    self._host_changed(why)
            self.stopping.wait(t.probe_interval)
            expected = start + took + t.probe_interval

    def _host_changed(self, why: Trigger) -> None:
        """A host's standing changed (subject: the host; detail: down, unreachable, back): say so, and sync."""
        (log.info if why.detail == "back" else log.warning)("host %s %s", why.subject, why.detail)
        self.alerts.host_changed(why)
        self.queue.nudge(why)

    def _watch(self, key: tuple[str, str], done: threading.Event) -> None:
        """Follow one host's Docker events for our containers; reconnect when the stream drops, until
        the agent stops or `done` (the host left the configuration). An open stream vouches for its host."""
        name = key[0]
        since = int(time.time())
        delay = 0.5
        first = True
        while not self.stopping.is_set() and not done.is_set():
            if name in self.syncer.hosts.known_down:
                self.stopping.wait(0.5)
                continue
            stream = None
            try:
                stream = self.syncer.hosts.events(name, since, {"type": ["container"], "label": [f"{L.MANAGED_BY}={self.config.name}"]}, self.tune)
                with self._events_lock:
                    self._streams[key] = stream
                if done.is_set():
                    break
                back = self.tracker.stream(name, True)
                if back is not None:
                    self._host_changed(back)
                if not first:
                    self.queue.nudge(Trigger(Cause.EVENTS, name, "reconnected"))  # something may have happened while we were away
                first = False
                delay = 0.5
                for ev in stream:
                    if self.stopping.is_set() or done.is_set():
                        break
                    since = max(since, int(ev.get("time", since)))
                    self.on_event(name, ev)
            except Exception as exc:  # a dropped connection, a dead host: reconnect
                log.debug("event stream of %s dropped: %s", name, exc)
            finally:
                if stream is not None:
                    self.tracker.stream(name, False, stream.silent_for)
                    with self._events_lock:
                        if self._streams.get(key) is stream:
                            del self._streams[key]
                    stream.close()
            first = False
            self.stopping.wait(delay)
            delay = min(self.tune.reconnect_max, delay * 2)

    def on_event(self, host: str, ev: dict[str, Any]) -> None:
        """One Docker event of a host's stream. A reconnect asks for events since the last one's second,
        so the newest are delivered again: those already handled are skipped (a replayed die and start
        must not count as another restart)."""
        nano = int(ev.get("timeNano") or 0)
        with self._events_lock:  # one watcher thread per host, two for a moment after a reload
            if nano and nano <= self._event_nano.get(host, 0):
                return
            self._event_nano[host] = max(nano, self._event_nano.get(host, 0))
        action = str(ev.get("Action") or ev.get("status") or "")
        attrs = (ev.get("Actor") or {}).get("Attributes") or {}
        cid = str(ev.get("id") or (ev.get("Actor") or {}).get("ID") or "")
        if cid:
            self._lifecycle(host, action, cid, attrs)
        if action == "kill" and attrs.get("signal") in ("12", "SIGUSR2"):
            return  # a proxy's hitless reload, sent by gitsync itself
        if action in ("die", "destroy", "stop", "oom", "kill", "start", "pause") or action.startswith("health_status"):
            self.debouncer.poke(f"{host}/{attrs.get(L.DEPLOYMENT, '?')}")

    def _follow_hosts(self) -> None:
        """One event watcher per configured host: started for a host added (at start or by SIGHUP),
        stopped for one removed or whose address changed."""
        want = {(h.name, h.url) for h in self.config.hosts}
        for key in [k for k in self._watchers if k not in want]:
            self._watchers.pop(key).set()
            self._close_stream(key)
        for key in sorted(want - set(self._watchers)):
            done = threading.Event()
            self._watchers[key] = done
            t = threading.Thread(target=self._watch, args=(key, done), name=f"gitsync-events-{key[0]}", daemon=True)
            t.start()  # not joined on stop: a stream blocks until its read times out

    def _close_stream(self, key: tuple[str, str]) -> None:
        with self._events_lock:
            stream = self._streams.pop(key, None)
        if stream is not None:
            stream.close()  # its watcher, blocked reading, wakes up
