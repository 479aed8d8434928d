"""Previews: the plan of a commit on another branch or of a pull request, against live state, never
applied, posted on that commit under a context of its own (``gitsync/<agent>/plan``), with a page.

Bounded: one preview at a time, on a thread of its own with its own git mirror and engine clients
(a sync of the tracked branch never waits for one); the newest commit per branch wins (a burst of
pushes previews the last); at most ``previews.keep`` results are kept, and at most MAX_WAITING
branches wait.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.config import Config
from ..core.errors import GitsyncError, ManifestError, PushedOver
from ..core.plantext import host_labels, plan_text, summary
from ..reconcile import Syncer
from ..adapters.status import CommitStatus, Notifier, State

log = logging.getLogger("gitsync.previews")

MAX_WAITING = 100
MAX_TEXT = 256 * 1024  # characters of one kept plan's text; `gitsync plan --ref` prints it whole
MAX_KEPT = 32 * 1024 * 1024  # characters of every kept preview's text and plan, all told
GC_EVERY = 10  # previews between two prunes of the preview mirror
MAX_COMMENT = 60_000  # characters of a comment, all told (GitHub takes 65,536; Gitea and GitLab more)


@dataclass(frozen=True)
class Preview:
    """A commit to plan without applying: of a branch other than the tracked one, or a pull request's."""

    ref: str  # what to fetch: refs/heads/feature, refs/pull/7/head, refs/merge-requests/7/head
    sha: str
    branch: str  # the branch it is on (of the fork, for a pull request from one)
    pull: int | None = None  # the pull or merge request's number

    @property
    def key(self) -> str:
        """What its newer commits replace it in: a pull request by its number (two forks' `main` are two
        pull requests), a branch of the repository by its name."""
        return f"pull request #{self.pull}" if self.pull is not None else f"branch {self.branch}"


@dataclass
class PreviewResult:
    preview: Preview
    state: str = "pending"  # pending | running | success | failure | error | superseded
    summary: str = "planning"
    revision: str | None = None
    text: str = ""  # the plan as `gitsync plan` prints it
    plan: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    queued: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    size: int = 0  # characters it holds (its text and plan), for the bound on what is kept

    def bound(self) -> None:
        """Cut what a stranger's commit can make large (a plan of thousands of replicas) to what a
        page needs: the text to MAX_TEXT, the plan's JSON to its counts when it is larger."""
        if len(self.text) > MAX_TEXT:
            cut = self.text[:MAX_TEXT].rsplit("\n", 1)[0]
            more = self.text.count("\n") - cut.count("\n")
            self.text = f"{cut}\n... cut: {more} more line(s); `gitsync plan --ref {self.preview.sha}` prints the whole plan\n"
        plan_size = len(json.dumps(self.plan)) if self.plan is not None else 0
        if self.plan is not None and plan_size > MAX_TEXT:
            self.plan = {"counts": self.plan.get("counts"), "in_sync": self.plan.get("in_sync"), "cut": f"the plan's JSON was {plan_size} characters"}
            plan_size = len(json.dumps(self.plan))
        self.size = len(self.text) + plan_size + sum(len(p) for p in self.problems[:1000])
        del self.problems[1000:]

    def to_json(self) -> dict[str, Any]:
        p = self.preview
        return {
            "sha": p.sha, "ref": p.ref, "branch": p.branch, "pull": p.pull, "state": self.state, "summary": self.summary,
            "revision": self.revision, "text": self.text, "plan": self.plan, "problems": self.problems,
            "queued": self.queued, "started": self.started, "finished": self.finished,
        }


def comment_body(agent: str, result: PreviewResult, url: str | None, marker: str, limit: int = MAX_COMMENT) -> str:
    """A preview as a pull request comment. Everything the commit decides (its summary, problems and
    plan: names, values, file names) is inside one code fence longer than any run of backticks in it,
    so none of it can be Markdown, a link, a mention or HTML; cut to `limit` with a link to the whole."""
    head = f"**gitsync `{agent}`** plan of {result.preview.sha[:12]}: **{result.state}**"
    block = "\n".join([result.summary, *(f"! {x}" for x in result.problems), "", result.text.rstrip()]).strip("\n")
    tail = [f"[The whole plan, per host]({url}). " if url else "", "Never applied: the sync of the tracked branch reports on the merged commit.", marker]
    room = limit - len(head) - sum(len(t) for t in tail) - 200
    if len(block) > room:
        cut = block[: max(room, 0)].rsplit("\n", 1)[0]
        block = f"{cut}\n... cut: {block.count(chr(10)) - cut.count(chr(10))} more line(s)" + ("; the whole plan is on the page linked below" if url else "")
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", block)), default=0))
    return "\n".join([head, "", fence + "text", block, fence, "", tail[0] + tail[1], tail[2]])


class Previews:
    def __init__(self, config: Config, notifier: Callable[[], Notifier], target_url: Callable[[str], str | None]) -> None:
        self.config = config
        self._notifier = notifier
        self._target_url = target_url
        self._waiting: OrderedDict[str, Preview] = OrderedDict()  # Preview.key -> its newest commit
        self._results: OrderedDict[str, PreviewResult] = OrderedDict()  # sha -> result, newest last
        self._cond = threading.Condition()
        self._stopping = False
        self._syncer: Syncer | None = None
        self._thread = threading.Thread(target=self._run, name="gitsync-previews", daemon=True)
        self.done = 0
        self.superseded = 0

    @property
    def context(self) -> str:
        return f"gitsync/{self.config.name}/plan"

    @property
    def _journal(self) -> Path:
        """The previews not finished yet, kept on disk so that a restarted agent plans them (their
        commits carry `pending`, which must not stay so)."""
        return Path(self.config.state_dir) / "previews-pending.json"

    def _save(self) -> None:
        """Called with the lock held, whenever what waits or runs changes."""
        running = [r.preview for r in self._results.values() if r.state == "running"]
        unfinished = [asdict(p) for p in [*running, *self._waiting.values()]]
        try:
            self._journal.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._journal.with_suffix(".tmp")
            tmp.write_text(json.dumps(unfinished))
            os.replace(tmp, self._journal)
        except OSError as exc:
            log.warning("cannot keep the list of unfinished previews in %s: %s", self._journal, exc)

    def start(self) -> None:
        """Start planning; first queue again what a stopped or crashed agent left unfinished."""
        try:
            left = [Preview(**p) for p in json.loads(self._journal.read_text())][: MAX_WAITING + 1]
        except FileNotFoundError:
            left = []
        except (OSError, ValueError, TypeError) as exc:
            log.warning("%s unreadable, unfinished previews are not resumed: %s", self._journal, exc)
            left = []
        for preview in left:
            log.info("preview of %s (%s): resumed after a restart", preview.sha[:12], preview.key)
            self.submit(preview)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        if self._syncer is not None:
            self._syncer.close()

    def submit(self, preview: Preview) -> str:
        """Queue a preview (its commit says pending at once); a newer commit of the same pull request
        or branch replaces one still waiting, whose status then says why it was not planned."""
        dropped: list[tuple[Preview, str]] = []
        with self._cond:
            old = self._waiting.pop(preview.key, None)
            if old is not None:
                dropped.append((old, f"not planned: {preview.sha[:12]}, newer on {preview.key}, came while it waited"))
            self._waiting[preview.key] = preview
            while len(self._waiting) > MAX_WAITING:
                _, oldest = self._waiting.popitem(last=False)
                dropped.append((oldest, f"not planned: more than {MAX_WAITING} previews waited; push again to plan it"))
            for gone, why in dropped:
                self.superseded += 1
                overtaken = self._results.get(gone.sha)
                if overtaken is not None and overtaken.state == "pending":
                    overtaken.state, overtaken.summary = "superseded", why
            result = PreviewResult(preview)
            self._remember(result)
            ahead = len(self._waiting) - 1 + sum(1 for r in self._results.values() if r.state == "running")
            self._save()
            self._cond.notify_all()
        for gone, why in dropped:  # pending was posted for it: it must not stay so
            self._notifier().send(CommitStatus(gone.sha, State.ERROR, self.context, why, self._target_url(gone.sha)))
        self._post(result, State.PENDING, f"queued: {ahead} preview(s) ahead of it" if ahead else "queued")  # a status from the start, never none
        return "replaced a preview still waiting for that branch" if old is not None else "queued"

    def get(self, sha: str) -> PreviewResult | None:
        with self._cond:
            return self._results.get(sha)

    def recent(self) -> list[PreviewResult]:
        with self._cond:
            return list(reversed(self._results.values()))

    def idle(self) -> bool:
        with self._cond:
            return not self._waiting and all(r.state != "running" for r in self._results.values())

    def _remember(self, result: PreviewResult) -> None:
        self._results.pop(result.preview.sha, None)
        self._results[result.preview.sha] = result
        self._trim()

    def _trim(self) -> None:
        """At most previews.keep results and MAX_KEPT characters of them, the oldest dropped first."""
        while len(self._results) > self.config.previews.keep or (len(self._results) > 1 and sum(r.size for r in self._results.values()) > MAX_KEPT):
            self._results.popitem(last=False)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                _, preview = self._waiting.popitem(last=False)
                result = self._results.get(preview.sha) or PreviewResult(preview)
                result.state, result.started = "running", time.time()
            try:
                self._preview(preview, result)
            except Exception as exc:  # never let one preview end the thread
                log.exception("preview of %s: unexpected error", preview.sha[:12])
                self._finish(result, State.ERROR, f"internal error: {type(exc).__name__}: {exc}")

    def _post(self, result: PreviewResult, state: State, description: str) -> None:
        self._notifier().send(CommitStatus(result.preview.sha, state, self.context, description, self._target_url(result.preview.sha)))

    def _finish(self, result: PreviewResult, state: State, description: str, *, state_shown: str | None = None) -> None:
        r = self.config.redactor  # live state may hold values of the environment (a tracked commit's image tag)
        description = r.text(description)
        with self._cond:
            result.text, result.plan, result.problems = r.text(result.text), r.data(result.plan), r.data(result.problems)
            result.bound()
            result.state, result.summary, result.finished = state_shown or str(state), description, time.time()
            self.done += 1
            self._trim()
            self._save()
        self._post(result, state, description)
        log.info("preview of %s (%s): %s: %s", result.preview.sha[:12], result.preview.key, state, description)
        if result.preview.pull is not None and self.config.previews.comment:
            self._comment(result)

    def _comment(self, result: PreviewResult) -> None:
        """The plan as one comment on the pull request, edited in place on each new push."""
        p = result.preview
        assert p.pull is not None
        marker = f"<!-- gitsync:{self.config.name}:plan -->"
        body = comment_body(self.config.name, result, self._target_url(p.sha), marker)
        for provider in self._notifier().providers:
            try:
                provider.upsert_comment(p.pull, marker, body)
            except Exception as exc:  # a forge never fails a preview
                log.warning("preview of %s: cannot comment on pull request #%s on %r: %s", p.sha[:12], p.pull, provider, exc)

    def _prune_mirror(self, preview: Preview) -> None:
        """The preview mirror keeps no stranger's objects: the ref a preview fetched goes once it is
        read, and every GC_EVERY previews what nothing refers to any more is pruned from disk."""
        assert self._syncer is not None
        try:
            self._syncer.source.forget_preview(preview.ref, prune=self.done % GC_EVERY == GC_EVERY - 1)
        except GitsyncError as exc:
            log.warning("preview mirror: %s", exc)

    def _preview(self, preview: Preview, result: PreviewResult) -> None:
        self._post(result, State.PENDING, f"planning {preview.sha[:7]} against the fleet")
        if self._syncer is None:  # its own mirror and engine clients: never shared with the sync of the tracked branch
            self._syncer = Syncer(replace(self.config, state_dir=f"{self.config.state_dir}/previews"))
        try:
            seen = self._syncer.preview(preview.ref, preview.sha)
        except ManifestError as exc:
            result.problems = [str(p) for p in exc.problems]
            more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
            self._finish(result, State.FAILURE, f"invalid: {exc.problems[0]}{more}")
            return
        except PushedOver as exc:  # overtaken after it left the queue: as if while it waited
            with self._cond:
                self.superseded += 1
            self._finish(result, State.ERROR, f"not planned: {exc.newest[:12]}, newer on {preview.key}, came while it waited", state_shown="superseded")
            return
        except GitsyncError as exc:
            self._finish(result, State.ERROR, f"could not tell: {exc}")
            return
        self._prune_mirror(preview)
        plan = seen.plan
        result.revision, result.plan = seen.snapshot.revision, plan.to_json()
        result.text = plan_text(plan, seen.snapshot.revision, host_labels(self.config.hosts))
        if plan.problems:
            result.problems += [str(p) for p in plan.problems]
            self._finish(result, State.FAILURE, f"{plan.problems[0]}" + (f" (and {len(plan.problems) - 1} more)" if len(plan.problems) > 1 else ""))
        elif plan.unreachable:
            self._finish(result, State.ERROR, f"could not tell: host {', '.join(plan.unreachable)} unreachable; {summary(plan)}")
        else:
            self._finish(result, State.SUCCESS, summary(plan))
