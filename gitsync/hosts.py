"""Docker hosts: connections, and the observe step (one label-filtered list per host, in parallel)."""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import docker
import docker.errors
import docker.tls
import requests.adapters
import requests.exceptions
from urllib3.connection import HTTPConnection

from . import labels as L
from .config import HostSettings
from .errors import HostError
from .live import HostObservation, from_list_entry
from .settings import DEFAULT, Tunables

DEFAULT_TIMEOUT = 30


def _is_loopback(hostname: str) -> bool:
    if hostname in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _apiclient(**kwargs: object) -> docker.APIClient:
    """A low-level client. For TLS hosts the caller sets trust_env = False before the first request:
    requests lets $REQUESTS_CA_BUNDLE / $CURL_CA_BUNDLE override a session's own `verify`, which would
    silently replace hosts[].tls.ca with the system bundle (and fail, or trust the wrong CAs)."""
    return docker.APIClient(**kwargs)  # type: ignore[arg-type]


def check_transport(h: HostSettings) -> None:
    """Plain TCP is unauthenticated root access to the engine: only to loopback or when asked for."""
    if not h.url.startswith("tcp://") or h.tls is not None or h.insecure:
        return
    host = urlparse(h.url).hostname or ""
    if not _is_loopback(host):
        raise HostError(
            h.name,
            f"plain {h.url} is unencrypted and unauthenticated; configure hosts[].tls (ca, cert, key) "
            "or set insecure: true if this network is trusted",
        )


def explain(exc: BaseException) -> str:
    """A short, human reason for a Docker SDK or transport failure."""
    if isinstance(exc, HostError):
        return exc.detail
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "the engine did not answer in time"
    if isinstance(exc, requests.exceptions.SSLError):
        text = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return "TLS certificate not trusted (check hosts[].tls.ca)"
        return "TLS handshake refused (check hosts[].tls.cert and key: the engine wants a client certificate)"
    if isinstance(exc, requests.exceptions.ConnectionError):
        text = str(exc)
        for needle, say in (
            ("Connection refused", "connection refused"),
            ("No such file", "socket not found"),
            ("No route to host", "no route to host"),
            ("Name or service not known", "host name not found"),
            ("CERTIFICATE_VERIFY_FAILED", "TLS certificate not trusted (check hosts[].tls.ca)"),
            ("timed out", "connection timed out"),
        ):
            if needle in text:
                return say
        return "cannot connect"
    if isinstance(exc, docker.errors.DockerException):
        text = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text or "SSLCertVerificationError" in text:
            return "TLS certificate not trusted (check hosts[].tls.ca)"
        if "SSLError" in text or "TLSV13_ALERT_CERTIFICATE_REQUIRED" in text or "certificate required" in text:
            return "TLS handshake refused (check hosts[].tls.cert and key: the engine wants a client certificate)"
        if "Connection refused" in text:
            return "connection refused"
        if "timed out" in text.lower() or "ConnectTimeout" in text:
            return "connection timed out"
        if "No route to host" in text:
            return "no route to host"
        if "No such file" in text or "FileNotFoundError" in text:
            return "socket not found"
        return text.split("\n")[0][:200]
    return f"{type(exc).__name__}: {exc}"[:200]


class _KeepaliveAdapter(requests.adapters.HTTPAdapter):
    """TCP keepalive on an event stream: the kernel notices a peer gone silent (a cut network, a dead
    machine) after idle + interval * count seconds, at no cost to us."""

    def __init__(self, tune: Tunables) -> None:
        self._options = [
            (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
            (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, tune.keepalive_idle),
            (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, tune.keepalive_interval),
            (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, tune.keepalive_count),
        ]
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["socket_options"] = HTTPConnection.default_socket_options + self._options
        super().init_poolmanager(*args, **kwargs)


def _timed_out(exc: BaseException) -> bool:
    """The kernel gave up on a silent peer (ETIMEDOUT), somewhere in the chain of causes."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno == errno.ETIMEDOUT:
            return True
        nxt = seen.__cause__ or seen.__context__
        if nxt is None and seen.args and isinstance(seen.args[-1], BaseException):
            nxt = seen.args[-1]  # urllib3's ProtocolError carries the OSError as an argument
        seen = nxt
    return False


class EventStream:
    """A host's Docker event stream (decoded events), on a connection of its own that is alive for as
    long as the engine is: it ends when the engine closes it (it stopped), when the kernel's keepalive
    finds the peer gone (tcp://), or when closed. Iterating raises on any of those."""

    def __init__(self, api: docker.APIClient, events: Iterator[dict[str, Any]], silence: float) -> None:
        self._api = api
        self._events = events
        self._silence = silence
        self.silent_for = 0.0  # once it ended: how long the peer had been silent (keepalive gave up), else 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            yield from self._events
        except Exception as exc:
            if _timed_out(exc):
                self.silent_for = self._silence
            raise

    def close(self) -> None:
        for close in (getattr(self._events, "close", None), self._api.close):
            try:
                if close is not None:
                    close()
            except Exception:
                pass


class Hosts:
    """A client per host, made on first use and kept (one API version negotiation per host)."""

    def __init__(self, settings: tuple[HostSettings, ...], agent: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.settings = settings
        self.agent = agent
        self.timeout = timeout
        self._clients: dict[str, docker.DockerClient] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(4, min(32, len(settings) * 2)), thread_name_prefix="gitsync-host")
        self.observe_timeout = 5.0
        self.known_down: dict[str, str] = {}
        self._probe_clients: dict[str, docker.APIClient] = {}  # set by the agent's probe: skip these hosts without waiting

    def names(self) -> list[str]:
        return [h.name for h in self.settings]

    def setting(self, name: str) -> HostSettings:
        for h in self.settings:
            if h.name == name:
                return h
        raise KeyError(name)

    def client(self, name: str) -> docker.DockerClient:
        with self._lock:
            c = self._clients.get(name)
        if c is not None:
            return c
        h = self.setting(name)
        check_transport(h)
        tls = self._tls(h)
        try:
            # Pin the trust settings first (see _untrusting_env), then negotiate the API version
            # with a short timeout: a dead host must not hold a sync for long.
            api = _apiclient(
                base_url=h.url,
                tls=tls,
                version=None if tls is False else "1.24",
                timeout=int(min(self.timeout, self.observe_timeout)),
                use_ssh_client=h.url.startswith("ssh://"),
                max_pool_size=16,
            )
            if tls is not False:
                api.trust_env = False
                api._version = api._retrieve_server_version()
            c = docker.DockerClient.__new__(docker.DockerClient)
            c.api = api
            c.api.timeout = int(self.timeout)
        except Exception as exc:  # the SDK raises several kinds while negotiating
            raise HostError(name, explain(exc)) from None
        with self._lock:
            self._clients.setdefault(name, c)
            return self._clients[name]

    @staticmethod
    def _tls(h: HostSettings) -> docker.tls.TLSConfig | bool:
        if h.tls is None:
            return False
        return docker.tls.TLSConfig(
            client_cert=(h.tls.cert, h.tls.key) if h.tls.cert and h.tls.key else None,
            ca_cert=h.tls.ca,
            verify=h.tls.ca or True,
        )

    def forget(self, name: str) -> None:
        """Drop a client after a failure, so that the next use reconnects."""
        with self._lock:
            c = self._clients.pop(name, None)
        if c is not None:
            try:
                c.close()
            except Exception:
                pass

    def _pinned_client(self, h: HostSettings) -> docker.APIClient:
        """A client with a pinned API version: no negotiation round trip (/_ping and /events need none)."""
        check_transport(h)
        c = docker.APIClient(base_url=h.url, tls=self._tls(h), version="1.24", timeout=5, use_ssh_client=h.url.startswith("ssh://"))
        if h.tls is not None:
            c.trust_env = False  # see _apiclient
        return c

    def _probe_client(self, name: str) -> docker.APIClient:
        with self._lock:
            c = self._probe_clients.get(name)
        if c is None:
            c = self._pinned_client(self.setting(name))
            with self._lock:
                self._probe_clients[name] = c
        return c

    def events(self, name: str, since: int, filters: Mapping[str, list[str]], tune: Tunables = DEFAULT) -> EventStream:
        """Follow a host's events from `since` (seconds), on a client of its own with no read timeout: an
        idle stream is not a dead one, TCP keepalive tells them apart (unix sockets close with the engine)."""
        h = self.setting(name)
        try:
            api = self._pinned_client(h)
            if h.url.startswith("tcp://"):
                api.mount("http://", _KeepaliveAdapter(tune))
                api.mount("https://", _KeepaliveAdapter(tune))
            api.timeout = (5, None)  # type: ignore[assignment]  # connect within 5 s, then read for as long as it lasts
            silence = float(tune.keepalive_idle + tune.keepalive_interval * tune.keepalive_count) if h.url.startswith("tcp://") else 0.0
            return EventStream(api, api.events(since=since, filters=dict(filters), decode=True), silence)
        except Exception as exc:
            raise HostError(name, explain(exc)) from None

    def probe(self, name: str, timeout: float = 1.0) -> str | None:
        """None when the engine answers /_ping in time, else why not. Never waits longer than `timeout`."""
        try:
            api = self._probe_client(name)
            r = api._get(api._url("/_ping", versioned_api=False), timeout=timeout)
            r.raise_for_status()
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
            api = self.client(name).api
            params = {"all": 1, "filters": json.dumps({"label": [f"{L.MANAGED_BY}={self.agent}"]})}
            entries = api._result(api._get(api._url("/containers/json"), params=params, timeout=self.observe_timeout), True)
        except Exception as exc:
            self.forget(name)
            return HostObservation(name, False, (), explain(exc), time.monotonic() - start)
        containers = tuple(
            sorted((from_list_entry(name, e) for e in entries), key=lambda c: (c.deployment, c.replica or 0, c.name))
        )
        return HostObservation(name, True, containers, None, time.monotonic() - start)

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
        for name in list(self._clients):
            self.forget(name)
        for c in self._probe_clients.values():
            try:
                c.close()
            except Exception:
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)
