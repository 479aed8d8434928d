"""The Services' proxies on engines, for the Service kind: create, replace, start and remove a
host's proxy, give it a configuration (checked by `haproxy -c` in the proxy, then a hitless reload
by SIGUSR2, all through the Docker API), and drain a replica before it is stopped for good.

A configuration HAProxy refuses is never put in place: the proxy keeps serving the one it runs and
the action fails with HAProxy's message.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping, Sequence

from ..core import labels as L
from ..core.actions import Action, ActionKind, ActionResult
from .run import Run, failure
from ..adapters.engine import ContainerSpec, Engine, explain
from ..core.errors import ApplyError, HostError
from ..core.models import Service
from ..core.live import HostObservation, LiveContainer
from ..core.proxyconf import CONFIG_PATH
from .endpoints import config_for, endpoint_name, in_slot, members, proxy_document, proxy_labels, slots, starting

NEXT_PATH = CONFIG_PATH + ".next"  # where a new configuration is checked before it replaces the running one
DRAIN = 1.0  # seconds between taking a replica out of rotation and stopping it (at most its stop grace period)
STARTED = 5.0  # how long a new proxy may take to be running with its configuration
RELOADED = 0.3  # how long a reload takes to be in effect (HAProxy's master starting new workers), with room


class ConfigRefused(ApplyError):
    pass


def put_config(engine: Engine, proxy: str, text: str) -> None:
    """Check the configuration in the proxy, then put it in place and reload hitlessly."""
    engine.put_file(proxy, NEXT_PATH, text.encode())
    code, out = engine.run(proxy, ["haproxy", "-c", "-f", NEXT_PATH])
    if code != 0:
        alerts = [re.sub(r"^.*\[ALERT\][^:]*:( config :)?\s*", "", line).strip() for line in out.splitlines() if "[ALERT]" in line]
        said = "; ".join(a for a in alerts if a and not a.startswith(("Fatal errors", "Error(s) found"))) or out.strip()
        said = said.replace(NEXT_PATH, "haproxy.cfg")[:600]
        raise ConfigRefused(f"HAProxy refused the new configuration (the proxy keeps the one it runs): {said}")
    engine.put_file(proxy, CONFIG_PATH, text.encode())
    engine.signal(proxy, "SIGUSR2")
    time.sleep(RELOADED)  # the master starts the new workers; until then the old ones serve the old endpoints


class Proxies:
    """One apply's proxy work, shared by the Service kind's actions and the drain hook."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.agent = run.agent
        self.network = L.network_name(run.agent)
        self.settings = {h.name: h for h in run.hosts.settings}
        self.draining: set[str] = set()  # replicas (ids) on their way out: weight 0 until they are gone
        self._lock = threading.Lock()

    @staticmethod
    def of(run: Run) -> Proxies:
        got = run.parts.get("proxies")
        if got is None:
            got = run.parts.setdefault("proxies", Proxies(run))
        assert isinstance(got, Proxies)
        return got

    # -- configuration ---------------------------------------------------
    def config(self, host: str, observed: Mapping[str, HostObservation], slot: int = 0) -> str:
        d = self.run.desired
        text, _ = config_for(host, d, observed, self.settings, self.network, self.draining, slot, self.run.services.proxy_threads)
        return text

    def reconfigure(self, observed: Mapping[str, HostObservation], only: set[str] | None = None) -> dict[str, str | BaseException]:
        """Give each running proxy (on `only` hosts, default all) its configuration where it changed."""

        hosts = [h for h, o in observed.items() if o.reachable and not o.stale and (only is None or h in only)]
        return dict(self.run.hosts.map(lambda h: self.configure(h, observed), hosts))

    def configure(self, host: str, observed: Mapping[str, HostObservation]) -> str:
        """The host's running proxies (one per slot), each given the configuration `observed` calls for, unless it has it."""
        obs = observed[host]
        running: dict[int, LiveContainer] = {}
        for c in sorted(obs.proxies, key=lambda c: (-c.created, c.id)):  # the newest running one of each slot
            if c.running:
                running.setdefault(c.slot, c)
        wanted = set(slots(self.run.desired.services).values())
        if not running:
            return "no proxy"
        done = "unchanged"
        for slot, proxy in sorted(running.items()):
            if slot not in wanted:
                continue  # on its way out (the plan removes it)
            text = self.config(host, observed, slot)
            if text != obs.proxy_config(slot):
                put_config(self.run.hosts.engine(host), proxy.id, text)
                done = "reloaded"
        return done

    # -- drain -----------------------------------------------------------
    def retire(self, host: str, container: str, grace: float) -> None:
        """Take a replica out of every proxy's rotation before it is stopped: its open connections
        finish on the old HAProxy workers, new ones go to the other endpoints."""
        with self._lock:
            observed = self.run.hosts.observe()
            found = next((c for c in observed[host].replicas if container in (c.id, c.name)), None) if host in observed else None
            if found is None:
                return
            name = endpoint_name(found)
            if not any(name in text for o in observed.values() for text in o.proxy_configs.values()):
                return  # no proxy serves it
            self.draining.add(found.id)
            self.reconfigure(observed)  # a proxy that fails here is retried by the Service's own step
        self.run.waiting(host, found.name, "draining: out of the Services' rotation, finishing what is in flight", max(0.0, min(DRAIN, grace)))
        time.sleep(max(0.0, min(DRAIN, grace)))

    def settle(self) -> None:
        """After the other kinds' changes (replicas created, replaced, removed): every proxy serves
        the endpoints as they are now. Each reload is reported as an action of its own."""
        observed = self._settled()
        self.draining.clear()
        for host, res in sorted(self.reconfigure(observed).items()):
            if res in ("no proxy", "unchanged"):
                continue
            proxy = observed[host].proxy(0)
            a = Action(ActionKind.RELOAD, host, "proxy", None, "endpoints after the changes above", proxy.id if proxy else None,
                       L.proxy_name(self.agent), object_kind=Service.KIND)
            self.run.record(failure(a, res) if isinstance(res, BaseException) else ActionResult(a, True, "reloaded"))

    # -- actions ---------------------------------------------------------
    def apply(self, actions: Sequence[Action]) -> None:
        run = self.run
        hosts = sorted({a.host for a in actions})
        joined = run.hosts.map(self._join, hosts)
        for h, res in joined.items():
            if isinstance(res, BaseException):
                for a in actions:
                    if a.host == h:
                        run.record(failure(a, res))
        hosts = [h for h in hosts if not isinstance(joined[h], BaseException)]
        observed = self._settled()
        run.hosts.map(lambda h: self._host(h, [a for a in actions if a.host == h], observed), hosts)

    def _join(self, host: str) -> None:
        """The managed network on the host, with every replica a Service selects on it."""
        engine = self.run.hosts.engine(host)
        engine.ensure_network(self.network, {L.MANAGED_BY: self.agent})
        obs = self.run.hosts.observe_one(host)
        d = self.run.desired
        for c in {c.id: c for s in d.services for c, dep in members(s, d, {host: obs}) if not dep.options.networks}.values():
            if c.address_on(self.network) is None:  # (one on networks of its own is reached there, by the proxy on them)
                engine.join(c.id, self.network)

    def _settled(self) -> dict[str, HostObservation]:
        """The hosts once the replicas just started are ready (or their gate time is up): a new
        configuration takes them in at once."""
        d = self.run.desired
        deadline = time.monotonic() + max([0.0, *(x.gate_timeout() for x in d.deployments)])
        while True:
            observed = self.run.hosts.observe()
            waiting = [c for s in d.services for c, dep in members(s, d, observed) if starting(c, dep)]
            if not waiting or time.monotonic() >= deadline or self.run.stopping():
                return observed
            time.sleep(0.25)

    def _host(self, host: str, actions: list[Action], observed: Mapping[str, HostObservation]) -> None:
        run = self.run
        order = {ActionKind.REMOVE: 0, ActionKind.REPLACE: 1, ActionKind.CREATE: 1, ActionKind.START: 1, ActionKind.RELOAD: 2}
        failed: str | None = None
        for a in sorted(actions, key=lambda a: order.get(a.kind, 3)):
            if id(a) in run.done():
                continue
            if run.stopping():
                run.skip(a, "the agent is stopping")
                continue
            if failed is not None and a.kind != ActionKind.REMOVE:
                run.skip(a, f"the proxy on {host} failed: {failed}")
                continue
            t = time.monotonic()
            try:
                msg = self._do(a, observed)
                run.record(ActionResult(a, True, msg, time.monotonic() - t))
            except Exception as exc:
                failed = explain(exc)
                run.record(failure(a, exc, time.monotonic() - t))
            if a.kind in (ActionKind.CREATE, ActionKind.REPLACE, ActionKind.START, ActionKind.RELOAD) and failed is None:
                # one configuration serves every Service of the proxy: the rest of its reloads are done with it
                # (a RELOAD reconfigures every proxy of the host)
                for b in actions:
                    if b is not a and b.kind == ActionKind.RELOAD and id(b) not in run.done() and (a.kind == ActionKind.RELOAD or b.container_name == a.container_name):
                        run.record(ActionResult(b, True, "reloaded", 0.0))

    def _do(self, a: Action, observed: Mapping[str, HostObservation]) -> str:
        engine = self.run.hosts.engine(a.host)
        if a.kind == ActionKind.REMOVE:
            assert a.container_id is not None
            self._remove(engine, a.container_id)
            return "removed"
        if a.kind == ActionKind.RELOAD:
            done = self.configure(a.host, {**observed, a.host: self.run.hosts.observe_one(a.host)})
            if done == "no proxy":
                raise HostError(a.host, "the proxy is not running")
            return done
        slot = _slot_of(a.deployment)
        if a.kind == ActionKind.START:
            assert a.container_id is not None
            engine.put_file(a.container_id, CONFIG_PATH, self.config(a.host, observed, slot).encode())
            engine.start(a.container_id)
            self._running(engine, a.container_id)
            return "started"
        if a.kind == ActionKind.REPLACE and a.container_id is not None:
            self._remove(engine, a.container_id)
        self._create(engine, a.host, observed, slot)
        return "created" if a.kind == ActionKind.CREATE else "replaced"

    def _remove(self, engine: Engine, container: str) -> None:
        info = engine.inspect(container)
        if info is None:
            return
        if info.owner != self.agent or info.labels.get(L.ROLE) != L.ROLE_PROXY:
            raise HostError(engine.host, f"container {info.name or container} is not {self.agent}'s proxy; left alone")
        engine.stop(container, 10.0)
        engine.remove(container)

    def _create(self, engine: Engine, host: str, observed: Mapping[str, HostObservation], slot: int = 0) -> None:
        d = self.run.desired
        image = self.run.services.proxy_image
        doc = proxy_document(image, self.network, in_slot(d.services, slot), self.settings[host], d, slot)
        engine.ensure_image(image)
        engine.ensure_network(self.network, {L.MANAGED_BY: self.agent})
        for network in doc.get("networks") or {}:
            engine.ensure_network(network, {L.MANAGED_BY: self.agent})
        spec = ContainerSpec(
            name=L.proxy_name(self.agent, slot),
            image=image,
            labels=proxy_labels(self.agent, doc, self.run.revision),
            ports=tuple((port, "tcp", (ip[0], host_port) if ip else host_port) for host_port, port, *ip in doc["published"]),
            restart="unless-stopped",
            network=self.network,
            aliases=tuple(doc["aliases"]),
            more_networks=tuple((n, tuple(names)) for n, names in (doc.get("networks") or {}).items()),
            sysctls={
                "net.ipv4.ip_unprivileged_port_start": "0",  # the official image's haproxy runs as a user
                # one connection to a replica per client connection: many short ones to few addresses
                "net.ipv4.tcp_tw_reuse": "1",
                "net.ipv4.ip_local_port_range": "1024 65000",
            },
        )
        container = engine.create(spec)
        try:
            engine.put_file(container, CONFIG_PATH, self.config(host, observed, slot).encode())
            engine.start(container)
            self._running(engine, container)
        except Exception:
            engine.remove(container)
            raise

    def _running(self, engine: Engine, container: str) -> None:
        """Wait until the new proxy runs; one that exits (its configuration refused) fails with its words."""
        deadline = time.monotonic() + STARTED
        while True:
            info = engine.inspect(container)
            if info is None or not info.running or info.restarting:
                if info is not None and (info.status in ("exited", "dead") or info.restarting):
                    said = " ".join(engine.logs(container, 5).split())[-400:]
                    raise ConfigRefused(f"the proxy exited with code {info.exit_code}: {said}")
            elif time.monotonic() - (deadline - STARTED) >= 0.5:
                return  # up for half a second: it took its configuration
            if time.monotonic() >= deadline:
                raise HostError(engine.host, f"the proxy is not running after {STARTED:.0f}s")
            time.sleep(0.1)


def _slot_of(name: str) -> int:
    """The slot of a proxy's action from its object name ("proxy": 0, "proxy-2": 2)."""
    tail = name.rpartition("-")[2]
    return int(tail) if name.startswith("proxy-") and tail.isdigit() else 0
