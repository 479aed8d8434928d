"""HTTP: webhooks, the API, the dashboard, health and metrics (``gitsync run``).

The webhook handler only authenticates, filters and nudges the sync queue; it
never syncs in the request. The server is waitress: connections are read
asynchronously by one thread (a slow or silent client holds a socket, never a
worker), complete requests go to a fixed pool of workers, and a request must
arrive whole (headers and body) within `request_timeout` or its connection is
closed. Bodies are bounded by their declared length before they are read;
what is buffered beyond `_INBUF` per connection goes to a temporary file.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import re
import resource
import threading
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from wsgiref.headers import Headers

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer

from .. import __version__
from . import webhooks
from ..agent.agent import Agent
from .dashboard import not_found, render_dashboard, render_preview, render_previews, render_sync
from ..core.triggers import Cause, Trigger

log = logging.getLogger("gitsync.server")
logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "task queue depth" per request under load: no log flood

HOOK = re.compile(r"^/hooks/([a-z]+)/?$")
SYNC_API = re.compile(r"^/api/syncs/(\d{1,18})$")  # a longer number is no sync id (SQLite's are 64-bit): 404
SYNC_PAGE = re.compile(r"^/syncs/(\d{1,18})$")
PLAN_API = re.compile(r"^/api/plans/([0-9a-f]{40}|[0-9a-f]{64})$")
PLAN_PAGE = re.compile(r"^/plans/([0-9a-f]{40}|[0-9a-f]{64})$")
# Sent with every answer: no sniffing, no framing, nothing loaded from elsewhere (the pages are self-contained).
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
}
_INBUF = 64 * 1024  # a connection's request bytes kept in memory; more go to a temporary file
_HEADER_BYTES = 64 * 1024


class _Channel(HTTPChannel):
    """A connection that notes when the request it is reading began (see _Server.maintenance)."""

    request_began: float | None = None

    def received(self, data: bytes) -> bool:
        if self.request_began is None:
            self.request_began = time.monotonic()
        done = super().received(data)
        if self.request is None:  # nothing half-read: the next byte begins a new request
            self.request_began = None
        return done


class _Server(TcpWSGIServer):
    """waitress, and a deadline for a whole request: a client that trickles its headers or body
    keeps its connection only `request_timeout` seconds (waitress's own timeout is for silence)."""

    channel_class = _Channel
    request_timeout = 10.0

    def maintenance(self, now: float) -> None:
        super().maintenance(now)
        cutoff = time.monotonic() - self.request_timeout
        for channel in list(self.active_channels.values()):
            began = getattr(channel, "request_began", None)
            if began is not None and began < cutoff and not channel.requests:
                channel.will_close = True


class _RateLimitedLog:
    """Logs the first refusal, then at most one summary line per interval: an attack must not flood the log."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._next = 0.0
        self._suppressed = 0

    def warn(self, fmt: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._suppressed += 1
                return
            suppressed, self._suppressed = self._suppressed, 0
            self._next = now + self.interval
        log.warning(fmt + (f" (and {suppressed} more refused since the last report)" if suppressed else ""), *args)


_refusals = _RateLimitedLog()


class Handler:
    """One request and its answer; `do_GET`/`do_POST` route it."""

    def __init__(self, agent: Agent, environ: dict[str, Any]) -> None:
        self.agent = agent
        self.environ = environ
        self.command = environ.get("REQUEST_METHOD", "GET")
        self.path = environ.get("PATH_INFO") or "/"
        self.headers = Headers([(k[5:].replace("_", "-").title(), v) for k, v in environ.items() if k.startswith("HTTP_")])
        for key, name in (("CONTENT_LENGTH", "Content-Length"), ("CONTENT_TYPE", "Content-Type")):
            if environ.get(key):
                self.headers[name] = environ[key]
        self.client = environ.get("REMOTE_ADDR", "?")
        self.status = 500
        self.out_headers: list[tuple[str, str]] = []
        self.body = b""

    # -- plumbing ------------------------------------------------------------
    def _send(self, code: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self.status, self.body = code, body
        self.out_headers = [("Content-Type", ctype), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
        self.out_headers += list({**SECURITY_HEADERS, **(extra or {})}.items())

    def _json(self, code: int, doc: Any, extra: dict[str, str] | None = None) -> None:
        doc = self.agent.config.redactor.data(doc)  # value by value, so that it stays JSON
        self._send(code, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(), "application/json", extra)

    def _html(self, code: int, page: str) -> None:
        self._send(code, self.agent.config.redactor.text(page).encode(), "text/html; charset=utf-8")

    def _read_body(self) -> bytes:
        """The body, already read and bounded by the server: a bad or too large Content-Length never
        reaches the application (400, 413), a chunked body arrives with its length."""
        length = int(self.environ.get("CONTENT_LENGTH") or 0)
        return self.environ["wsgi.input"].read(length) if length > 0 else b""

    def _api_token(self) -> str | None:
        env = self.agent.config.server.api_token_env
        return (os.environ.get(env) if env else None) or None

    def _token_given(self, token: str) -> bool:
        """`Authorization: Bearer <token>`, or Basic with the token as password (what a browser can send)."""
        scheme, _, given = self.headers.get("Authorization", "").strip().partition(" ")
        scheme, given = scheme.lower(), given.strip()
        if scheme == "basic":
            try:
                given = base64.b64decode(given, validate=True).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                return False
        elif scheme != "bearer":
            return False
        return hmac.compare_digest(given.encode(), token.encode())  # the scheme is case-insensitive, the token is not

    def _may_read(self) -> bool:
        """With server.require_token_to_read, the dashboard and the read API answer only to the API token."""
        if not self.agent.config.server.require_token_to_read:
            return True
        token = self._api_token()
        if token is None:
            env = self.agent.config.server.api_token_env or "server.api_token_env"
            self._json(403, {"error": f"server.require_token_to_read is set but ${env} is not: nothing can be read"})
            return False
        if self._token_given(token):
            return True
        self._json(401, {"error": "this agent wants its API token to show its state"}, {"WWW-Authenticate": 'Basic realm="gitsync"'})
        return False

    # -- routes ----------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if (path in ("/", "/index.html", "/api/status", "/plans") or path.startswith(("/api/syncs", "/syncs/", "/api/plans", "/plans/"))) and not self._may_read():
            return
        if HOOK.match(path) or path == "/api/sync":
            self._json(405, {"error": "use POST"}, {"Allow": "POST"})
        elif path == "/healthz":
            self._json(200, {"ok": True})
        elif path == "/readyz":
            ready = self.agent.ready.is_set()
            self._json(200 if ready else 503, {"ready": ready, "reason": None if ready else "the first sync has not finished"})
        elif path == "/metrics":
            self._send(200, self.agent.config.redactor.text(self.agent.metrics.render().decode()).encode(), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/api/status":
            self._json(200, self.agent.status_json())
        elif path == "/api/syncs":
            self._json(200, [r.to_json(with_detail=False) for r in self.agent.history.recent(100)])
        elif m := SYNC_API.match(path):
            rec = self.agent.history.get(int(m.group(1)))
            self._json(200, rec.to_json()) if rec else self._json(404, {"error": "no such sync"})
        elif path in ("/", "/index.html"):
            self._html(200, render_dashboard(self.agent))
        elif path == "/api/plans":
            self._json(200, [r.to_json() for r in self.agent.previews.recent()])
        elif m := PLAN_API.match(path):
            pr = self.agent.previews.get(m.group(1))
            self._json(200, pr.to_json()) if pr else self._json(404, {"error": "no preview of that commit (it may be older than the previews kept)"})
        elif path == "/plans":
            self._html(200, render_previews(self.agent))
        elif m := PLAN_PAGE.match(path):
            pr = self.agent.previews.get(m.group(1))
            if pr is None:
                self._html(404, not_found("No preview of that commit. It may be older than the previews kept."))
            else:
                self._html(200, render_preview(self.agent, pr))
        elif m := SYNC_PAGE.match(path):
            rec = self.agent.history.get(int(m.group(1)))
            if rec is None:
                self._html(404, not_found("No such sync. It may be older than the history keeps."))
            else:
                self._html(200, render_sync(self.agent, rec))
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if m := HOOK.match(path):
            self._hook(m.group(1))
        elif path == "/api/sync":
            self._api_sync()
        else:
            self._json(404 if not SYNC_API.match(path) else 405, {"error": "not found"})

    def _other(self) -> None:
        self._json(405, {"error": "method not allowed"}, {"Allow": "GET, POST"})

    def _hook(self, provider: str) -> None:
        if provider not in webhooks.PROVIDERS:
            self._json(404, {"error": f"unknown provider {provider!r}"})
            return
        body = self._read_body()
        env = self.agent.config.server.webhook_secret_env
        secret = os.environ.get(env) if env else None
        previews = self.agent.config.previews.enabled
        d = webhooks.decide(provider, {k: v for k, v in self.headers.items()}, body, secret, self.agent.config.source.branch, previews)
        if d.queue:
            self.agent.nudge(Trigger(Cause.WEBHOOK, provider))
        if d.preview is not None:
            self.agent.preview(d.preview)
        self.agent.metrics.webhooks.labels(provider, str(d.code)).inc()
        if d.code >= 400:
            _refusals.warn("webhook %s from %s: %d %s", provider, self.client, d.code, d.reason)
        queued = d.queue or d.preview is not None
        self._json(d.code, {"status": "queued" if queued else ("ignored" if d.code == 200 else "refused"), "reason": d.reason})

    def _api_sync(self) -> None:
        token = self._api_token()
        if not token:
            self._json(403, {"error": f"the sync API is disabled: set ${self.agent.config.server.api_token_env or 'server.api_token_env'}"})
            return
        if not self._token_given(token):
            self._json(401, {"error": "bad or missing bearer token"}, {"WWW-Authenticate": "Bearer"})
            return
        fresh = self.agent.nudge(Trigger(Cause.API))
        self._json(202, {"status": "queued", "reason": "queued" if fresh else "joined a sync already waiting"})




class App:
    """The WSGI application: every answer carries the security headers, and an unforeseen error is
    a logged 500, never a dropped connection."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        h = Handler(self.agent, environ)
        route = {"GET": h.do_GET, "HEAD": h.do_GET, "POST": h.do_POST}.get(h.command, h._other)
        try:
            route()
        except Exception:
            log.exception("error while answering %s %s from %s", h.command, h.path, h.client)
            h._json(500, {"error": "internal error; see the agent's log"})
        start_response(f"{h.status} {HTTPStatus(h.status).phrase}", h.out_headers)
        return [b"" if h.command == "HEAD" else h.body]


def _raise_open_files(wanted: int) -> int:
    """Lift the soft limit of open files toward `wanted` (a connection is a file); what it is now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


class HTTPServer:
    MAX_CONNECTIONS = 4000
    WORKERS = 8

    def __init__(self, agent: Agent) -> None:
        host, _, port = agent.config.server.listen.rpartition(":")
        files = _raise_open_files(self.MAX_CONNECTIONS + 512)
        self._map: dict[int, Any] = {}
        self.httpd = _Server(
            App(agent),
            map=self._map,
            host=host.strip("[]") or "127.0.0.1",
            port=int(port),
            threads=self.WORKERS,
            connection_limit=max(64, min(self.MAX_CONNECTIONS, files - 512)),
            channel_timeout=30,  # silent connections (keep-alive ones between requests included)
            cleanup_interval=1,
            asyncore_use_poll=True,  # select() stops at 1,024 descriptors
            max_request_body_size=agent.config.server.max_body_bytes,
            max_request_header_size=_HEADER_BYTES,
            inbuf_overflow=_INBUF,
            ident=f"gitsync/{__version__}",
            expose_tracebacks=False,
        )
        self.thread = threading.Thread(target=self.httpd.run, name="gitsync-http", daemon=True)

    @property
    def address(self) -> str:
        return f"http://{self.httpd.effective_host}:{self.httpd.effective_port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.task_dispatcher.shutdown(timeout=2)
        wasyncore.close_all(self._map)
        self.thread.join(timeout=5)
