"""The commit-status interface, and the notifier that posts off the sync's path.

A provider knows one forge's API: ``post(status)`` and ``latest(sha, context)``.
The :class:`Notifier` owns everything around it, the same for every forge:
posting in a background thread (a forge never blocks or fails a sync), skipping
a duplicate of the newest status for the context, timeouts and up to 4 tries
with backoff, and never logging the token.
"""

from __future__ import annotations

import base64
import enum
import json
import logging
import queue
import threading
import time
import urllib.parse
from dataclasses import dataclass, replace

import requests

from ...core.config import StatusSettings
from ...core.redact import Redactor

log = logging.getLogger("gitsync.status")

MAX_DESCRIPTION = 140
TRIES = 4
TIMEOUT = 10.0


class State(enum.StrEnum):
    PENDING = "pending"
    SUCCESS = "success"
    FAILURE = "failure"
    ERROR = "error"


@dataclass(frozen=True)
class CommitStatus:
    sha: str
    state: State
    context: str
    description: str
    target_url: str | None = None
    ref: str | None = None

    def shortened(self) -> CommitStatus:
        d = " ".join(self.description.split())
        if len(d) > MAX_DESCRIPTION:
            d = d[: MAX_DESCRIPTION - 1].rstrip() + "…"
        return CommitStatus(self.sha, self.state, self.context, d, self.target_url, self.ref)


class StatusError(Exception):
    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class Provider:
    """One forge's commit-status API."""

    kind = "forge"

    def __init__(self, settings: StatusSettings, token: str, session: requests.Session | None = None) -> None:
        self.settings = settings
        self._token = token
        self.session = session or requests.Session()

    def __repr__(self) -> str:  # never the token
        return f"{type(self).__name__}({self.settings.url}, {self.settings.repo})"

    def post(self, status: CommitStatus) -> None:
        raise NotImplementedError

    def latest(self, sha: str, context: str) -> tuple[State, str] | None:
        """The newest status for this context on the commit, as (state, description), if any."""
        raise NotImplementedError

    # -- one comment per pull request, edited in place -------------------------------
    def comment_urls(self, pull: int) -> tuple[str, str, str]:
        """(the pull request's comments, one comment with {id}, the method that edits one)."""
        raise NotImplementedError

    def _headers(self) -> dict[str, str]:
        raise NotImplementedError

    def user_url(self) -> str:
        """Where the forge says whose token this is."""
        raise NotImplementedError

    def whoami(self) -> int | None:
        """The id of the user this token speaks as (asked once), or None when the forge will not say
        (a GitHub App's installation token cannot read /user)."""
        if not hasattr(self, "_me"):
            r = self.session.get(self.user_url(), headers=self._headers(), timeout=TIMEOUT)
            if r.status_code in (401, 403, 404):
                log.warning("%r: cannot tell which comments are this agent's own (%s answers %s): it makes its own once per run", self, self.user_url(), r.status_code)
                self._me: int | None = None
            else:
                self._check(r, "read the token's user")
                self._me = int(r.json()["id"])
        return self._me

    def comments(self, pull: int) -> list[tuple[int, str, int | None]]:
        """(id, body, author's user id) of the pull or merge request's comments (the first 100)."""
        r = self.session.get(self.comment_urls(pull)[0], params={"per_page": 100}, headers=self._headers(), timeout=TIMEOUT)
        self._check(r, "list comments")
        return [(int(c["id"]), str(c.get("body") or ""), (c.get("user") or c.get("author") or {}).get("id")) for c in r.json()]

    def create_comment(self, pull: int, body: str) -> int:
        r = self.session.post(self.comment_urls(pull)[0], json={"body": body}, headers=self._headers(), timeout=TIMEOUT)
        self._check(r, "create comment")
        return int(r.json()["id"])

    def edit_comment(self, pull: int, comment: int, body: str) -> bool:
        """False when the comment is gone (deleted by someone)."""
        _, one, method = self.comment_urls(pull)
        r = self.session.request(method, one.format(id=comment), json={"body": body}, headers=self._headers(), timeout=TIMEOUT)
        if r.status_code == 404:
            return False
        self._check(r, "edit comment")
        return True

    def upsert_comment(self, pull: int, marker: str, body: str) -> int:
        """The comment carrying `marker` edited to `body`, or made once: never a second one. Only a
        comment this token's user wrote is its own: a stranger can copy the marker, not the author."""
        known = getattr(self, "_comment_ids", {})
        self._comment_ids = known
        me = self.whoami() if (pull, marker) not in known else None
        cid = known.get((pull, marker)) or next((i for i, text, author in self.comments(pull) if marker in text and me is not None and author == me), None)
        if cid is None or not self.edit_comment(pull, cid, body):
            cid = self.create_comment(pull, body)
        known[(pull, marker)] = cid
        return cid

    def _check(self, response: requests.Response, what: str) -> None:
        if response.status_code < 300:
            return
        retry = response.status_code >= 500 or response.status_code in (408, 409, 429)
        body = redacted(response.text, self._token)[:200]
        raise StatusError(f"{self.kind} {what}: HTTP {response.status_code}: {body}", retry)


_WINDOW = 8  # a run of this many characters of a secret (in any of its spellings) is masked


def redacted(text: str, secret: str) -> str:
    """`text` with every trace of `secret` masked as ***: verbatim, URL-, JSON- or base64-encoded (as in
    an echoed Basic header), cut off, or any run of 8 of its characters. Whole text first, then cut."""
    if len(secret) < 4:
        return text.replace(secret, "***") if secret else text
    spellings = {secret, urllib.parse.quote(secret, safe=""), json.dumps(secret)[1:-1]}
    for prefix in ("", "x-access-token:", "oauth2:", "token:"):
        spellings.add(base64.b64encode((prefix + secret).encode()).decode().rstrip("="))
    width = min(_WINDOW, len(secret))
    windows = {sp[i : i + width] for sp in spellings for i in range(len(sp) - width + 1)}
    masked = [False] * len(text)
    for i in range(len(text) - width + 1):
        if text[i : i + width] in windows:
            masked[i : i + width] = [True] * width
    out: list[str] = []
    for ch, m in zip(text, masked):
        if not m:
            out.append(ch)
        elif not out or out[-1] != "***":
            out.append("***")
    return "".join(out)


class Notifier:
    """Posts statuses through providers from a background thread."""

    def __init__(self, providers: list[Provider], backoff: float = 0.5, redactor: Redactor = Redactor()) -> None:
        self.providers = providers
        self.redactor = redactor  # a status never carries a value that must not be shown
        self.backoff = backoff
        self._queue: queue.Queue[CommitStatus | None] = queue.Queue(maxsize=1000)
        self._last: dict[tuple[int, str, str], tuple[State, str]] = {}
        self.posted = 0
        self.skipped = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="gitsync-status", daemon=True)
        self._thread.start()

    def send(self, status: CommitStatus) -> None:
        if not self.providers or not status.sha:
            return
        try:
            self._queue.put_nowait(replace(status, description=self.redactor.text(status.description)).shortened())
        except queue.Full:
            log.warning("status queue full; dropping %s for %s", status.state, status.sha[:12])

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far was posted (or given up on)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._queue.unfinished_tasks

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            status = self._queue.get()
            try:
                if status is None:
                    return
                for i, provider in enumerate(self.providers):
                    self._deliver(i, provider, status)
            except Exception:  # a notifier bug must not kill the thread
                log.exception("posting a commit status failed")
            finally:
                self._queue.task_done()

    def _deliver(self, index: int, provider: Provider, status: CommitStatus) -> None:
        key = (index, status.sha, status.context)
        want = (status.state, status.description)
        if self._last.get(key) == want:
            self.skipped += 1
            return
        delay = self.backoff
        for attempt in range(1, TRIES + 1):
            try:
                if key not in self._last and provider.latest(status.sha, status.context) == want:
                    self._last[key] = want
                    self.skipped += 1
                    return
                provider.post(status)
                self._last[key] = want
                self.posted += 1
                log.info("%r: %s %s on %s", provider, status.context, status.state, status.sha[:12])
                return
            except StatusError as exc:
                if not exc.retry or attempt == TRIES:
                    self.failed += 1
                    log.warning("%r: %s not posted on %s: %s", provider, status.state, status.sha[:12], exc)
                    return
            except requests.RequestException as exc:
                if attempt == TRIES:
                    self.failed += 1
                    log.warning("%r: %s not posted on %s after %d tries: %s", provider, status.state, status.sha[:12], TRIES, type(exc).__name__)
                    return
            time.sleep(delay)
            delay *= 2
