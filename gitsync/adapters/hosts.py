"""Docker hosts: an engine per host, and the observe step (one label-filtered list per host, in parallel)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from ..core import labels as L
from ..core.config import HostSettings
from .engine import Engine, EventStream, Pinger, connect, explain, follow_events
from ..core.errors import HostError
from ..core.live import HostObservation, LiveContainer, LiveVolume, from_list_entry
from ..core.proxyconf import CONFIG_PATH as PROXY_CONFIG
from ..core.settings import DEFAULT, Tunables

DEFAULT_TIMEOUT = 30


class Hosts:
    """An engine per host, made on first use and kept (one API version negotiation per host)."""

    def __init__(self, settings: tuple[HostSettings, ...], agent: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.settings = settings
        self.agent = agent
        self.timeout = timeout
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(4, min(32, len(settings) * 2)), thread_name_prefix="gitsync-host")
        self.observe_timeout = 5.0
        self.known_down: dict[str, str] = {}  # set by the agent's liveness: skip these hosts without waiting
        self._pingers: dict[str, Pinger] = {}

    def names(self) -> list[str]:
        return [h.name for h in self.settings]

    def setting(self, name: str) -> HostSettings:
        for h in self.settings:
            if h.name == name:
                return h
        raise KeyError(name)

    def engine(self, name: str) -> Engine:
        with self._lock:
            e = self._engines.get(name)
        if e is not None:
            return e
        e = connect(self.setting(name), self.timeout, self.observe_timeout)
        with self._lock:
            self._engines.setdefault(name, e)
            return self._engines[name]

    def forget(self, name: str) -> None:
        """Drop an engine after a failure, so that the next use reconnects."""
        with self._lock:
            e = self._engines.pop(name, None)
        if e is not None:
            e.close()

    def events(self, name: str, since: int, filters: Mapping[str, list[str]], tune: Tunables = DEFAULT) -> EventStream:
        return follow_events(self.setting(name), since, filters, tune)

    def probe(self, name: str, timeout: float = 1.0) -> str | None:
        """None when the engine answers /_ping in time, else why not. Never waits longer than `timeout`."""
        try:
            with self._lock:
                p = self._pingers.get(name)
            if p is None:
                p = Pinger(self.setting(name))
                with self._lock:
                    self._pingers[name] = p
            p.ping(timeout)
            return None
        except Exception as exc:
            self.forget(name)  # the next real use reconnects
            return explain(exc)

    def observe_one(self, name: str) -> HostObservation:
        start = time.monotonic()
        down = self.known_down.get(name)
        if down is not None:
            return HostObservation(name, False, (), down, 0.0)
        try:
            engine = self.engine(name)
            entries = engine.list_containers(f"{L.MANAGED_BY}={self.agent}", self.observe_timeout)
            volumes = tuple(sorted((LiveVolume.of(v) for v in engine.list_volumes(self.observe_timeout)), key=lambda v: v.name))
        except HostError as exc:
            self.forget(name)
            return HostObservation(name, False, (), exc.detail, time.monotonic() - start)
        containers = tuple(
            sorted((from_list_entry(name, e) for e in entries), key=lambda c: (c.deployment, c.replica or 0, c.name))
        )
        return HostObservation(name, True, containers, None, time.monotonic() - start, proxy_configs=self._proxy_configs(name, containers), volumes=volumes)

    def _proxy_configs(self, name: str, containers: tuple[LiveContainer, ...]) -> dict[int, str]:
        """What each of the host's proxies serves, by slot: its configuration file (one unread is unknown: the plan writes it again)."""
        out: dict[int, str] = {}
        proxies = sorted((c for c in containers if c.role == L.ROLE_PROXY), key=lambda c: (not c.running, -c.created, c.id))
        for proxy in proxies:
            if proxy.slot in out:
                continue
            try:
                raw = self.engine(name).read_file(proxy.id, PROXY_CONFIG)
            except HostError:
                continue
            if raw is not None:
                out[proxy.slot] = raw.decode("utf-8", "replace")
        return out

    def observe(self) -> dict[str, HostObservation]:
        """Every host in parallel; an unreachable host is reported, never raised."""
        futures = {name: self._pool.submit(self.observe_one, name) for name in self.names()}
        return {name: f.result() for name, f in futures.items()}

    def map(self, fn, names):  # type: ignore[no-untyped-def]
        """Run fn(name) for each host in parallel; returns name -> result (exceptions returned, not raised)."""
        futures = {n: self._pool.submit(fn, n) for n in names}
        out = {}
        for n, f in futures.items():
            try:
                out[n] = f.result()
            except Exception as exc:  # isolated per host
                out[n] = exc
        return out

    def close(self) -> None:
        for name in list(self._engines):
            self.forget(name)
        for p in self._pingers.values():
            p.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
