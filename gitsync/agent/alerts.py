"""Telling people when something breaks and when it is fixed, through Apprise (Slack, Matrix,
Discord, Teams, ntfy, e-mail, JSON webhooks, ...).

A *condition* (the syncs failing, a deployment degraded, a host down) is told once when it starts,
again only when what it says changes (numbers aside) or after the target's reminder interval, and
once when it ends (recovery, back up). Sending happens on a thread of its own behind a bounded
queue: a slow or failing service never delays or fails a sync; a failure is logged and counted.
Every text passes the agent's redactor; a target's URL (it may hold a token) is never logged.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..core.config import NotifySettings
from ..core.errors import Reason
from ..adapters.apprise import apprise_module
from ..core.triggers import Trigger
from ..core.live import Health
from ..core.redact import Redactor

log = logging.getLogger("gitsync.notify")

DEGRADED_AFTER = 60.0  # a deployment or Service degraded this long is told
QUEUE = 100  # messages waiting to be sent; more are dropped (and counted)
SEND_TIMEOUT = 20.0


@dataclass(frozen=True)
class Message:
    event: str  # failure | recovery | rollback | degraded | host-down | host-up | unverified | test
    title: str
    body: str
    kind: str = "info"  # Apprise's notify type: info | success | warning | failure


def _gist(text: str) -> str:
    return re.sub(r"\d+(\.\d+)?", "#", re.sub(r"\b[0-9a-f]{12,64}\b", "ID", text))


class Alerts:
    """Conditions followed over syncs and host probes; what is new goes to the sender thread."""

    def __init__(self, agent: str, targets: tuple[NotifySettings, ...], redactor: Redactor = Redactor(),
                 counted: Callable[[str], None] | None = None, dashboard: str | None = None) -> None:
        self.agent = agent
        self.targets = targets
        self.redactor = redactor
        self.counted = counted or (lambda result: None)
        self.dashboard = dashboard
        self._told: dict[tuple[str, str], tuple[str, float]] = {}  # condition -> (gist told, when)
        self._since: dict[tuple[str, str], float] = {}  # degraded since (monotonic)
        self._lock = threading.Lock()
        self._queue: queue.Queue[Message | None] = queue.Queue(QUEUE)
        self._thread: threading.Thread | None = None

    # -- conditions ------------------------------------------------------
    def _start(self, key: tuple[str, str], msg: Message, gist: str | None = None) -> None:
        """The condition holds: tell it unless told already with the same gist (and no reminder is due)."""
        now = time.monotonic()
        gist = gist or _gist(re.sub(r" \(https?://\S+\)$", "", msg.body))  # what it says, not which sync's page it links
        with self._lock:
            told = self._told.get(key)
            remind = min((t.remind for t in self.targets if t.remind and msg.event in t.on), default=None)
            if told is not None and told[0] == gist and (remind is None or now - told[1] < remind):
                return
            self._told[key] = (gist, now)
        self.send(msg)

    def _end(self, key: tuple[str, str], msg: Message | None) -> None:
        with self._lock:
            was = self._told.pop(key, None)
        if was is not None and msg is not None:
            self.send(msg)

    def sync_done(self, result: Any, link: str | None = None) -> None:
        """After each sync: failures (unverified commits among them), recovery, rollbacks, degraded objects."""
        from ..reconcile import Outcome

        where = f" ({link})" if link else ""
        commit = (result.commit or "")[:12] or result.revision or "?"
        if result.outcome in (Outcome.FAILURE, Outcome.ERROR) and result.reason != Reason.HOST_UNREACHABLE:  # a host down is told as such
            event = "unverified" if result.reason == Reason.UNVERIFIED else "failure"
            # one condition per commit and kind of failure: a heal that words it anew (a count, a replica) is not news
            self._start(("sync", ""), Message(event, f"gitsync {self.agent}: sync of {commit} failed", f"{result.message}{where}", "failure"),
                        f"{result.commit or result.revision} {result.reason}")
        elif result.outcome == Outcome.SUCCESS:
            self._end(("sync", ""), Message("recovery", f"gitsync {self.agent}: syncing again", f"{commit}: {result.message}{where}", "success"))
        rollbacks = result.applied.rollbacks if result.applied is not None else []
        if rollbacks:
            self.send(Message("rollback", f"gitsync {self.agent}: rolled back at {commit}", "; ".join(rollbacks) + where, "warning"))
        self._degraded({**{f"deployment {n}": s for n, s in result.deployments.items()}, **{f"Service {n}": s for n, s in result.services.items()}}, where)

    def _degraded(self, status: Mapping[str, Any], where: str) -> None:
        now = time.monotonic()
        for name, st in status.items():
            key = ("degraded", name)
            if st.health == Health.DEGRADED:
                since = self._since.setdefault(key, now)
                if now - since >= DEGRADED_AFTER:
                    self._start(key, Message("degraded", f"gitsync {self.agent}: {name} degraded", f"{name}: {st.message}{where}", "warning"))
            else:
                self._since.pop(key, None)
                if st.health == Health.HEALTHY:
                    self._end(key, Message("degraded", f"gitsync {self.agent}: {name} healthy again", f"{name}: {st.message}", "success"))

    def host_changed(self, why: Trigger) -> None:
        """A host's standing changed (a Trigger of cause host: subject the host, detail down or back)."""
        host, what = why.subject, why.detail
        if what == "down":
            self._start(("host", host), Message("host-down", f"gitsync {self.agent}: host {host} is down", f"host {host} is down: its replicas are placed on the other hosts", "failure"))
        elif what == "back":
            self._end(("host", host), Message("host-up", f"gitsync {self.agent}: host {host} is back", f"host {host} answers again", "success"))

    # -- sending ---------------------------------------------------------
    def send(self, msg: Message) -> None:
        if not any(msg.event in t.on for t in self.targets):
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._sender, name="gitsync-notify", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait(Message(msg.event, self.redactor.text(msg.title), self.redactor.text(msg.body), msg.kind))
        except queue.Full:
            self.counted("dropped")
            log.warning("notification dropped (%d waiting): %s", QUEUE, self.redactor.text(msg.title))

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)

    def _sender(self) -> None:
        while True:
            msg = self._queue.get()
            if msg is None:
                return
            for i, target in enumerate(self.targets):
                if msg.event in target.on:
                    ok, why = deliver(target, msg)
                    self.counted("sent" if ok else "failed")
                    if not ok:
                        log.warning("notification to notify[%d] failed: %s", i, self.redactor.text(why))


def deliver(target: NotifySettings, msg: Message) -> tuple[bool, str]:
    """Send one message to one target through Apprise; whether it went, and why not."""
    apprise = apprise_module()

    url = target.resolved_url()
    if not url:
        return False, f"${target.url_env} is not set" if target.url_env else "no url"
    ap = apprise.Apprise(asset=apprise.AppriseAsset(async_mode=False))
    if not ap.add(url):
        return False, "Apprise does not know this URL (check its scheme)"
    kind = {"success": apprise.NotifyType.SUCCESS, "warning": apprise.NotifyType.WARNING, "failure": apprise.NotifyType.FAILURE}.get(msg.kind, apprise.NotifyType.INFO)
    done: list[bool] = []
    worker = threading.Thread(target=lambda: done.append(bool(ap.notify(title=msg.title, body=msg.body, notify_type=kind))), daemon=True)
    worker.start()
    worker.join(SEND_TIMEOUT)
    if worker.is_alive():
        return False, f"no answer within {SEND_TIMEOUT:.0f}s"
    return (True, "") if done and done[0] else (False, "the service refused it or could not be reached")
