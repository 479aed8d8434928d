"""One sync, as an ordered list of named steps that stop at the first error.

fetch -> load -> observe -> plan -> apply -> assess. The outcome is summarised
once, at the end, from what the steps returned or raised; no step sets it.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from typing import Any

from . import runtimes
from .core.actions import ActionResult, ApplyResult, Plan, Progress
from .core.config import Config
from .core.errors import FetchError, GitsyncError, HostError, ManifestError, Reason
from .core.health import DeploymentStatus, ServiceStatus
from .adapters.hosts import Hosts
from .core.live import Health
from .compose import is_compose_file
from .core.manifest import load_files
from .core.models import Deployment, DesiredState
from .runtimes import Observation
from .adapters.source import SIGNATURE, Snapshot, Source
from .core.triggers import Cause, Trigger, is_heal, text
from .adapters.verify import Unverified
from .core.units import format_duration

log = logging.getLogger("gitsync.sync")


class Outcome(enum.StrEnum):
    SUCCESS = "success"  # converged
    FAILURE = "failure"  # invalid repository, apply or health failed: a person must act
    ERROR = "error"  # the agent could not finish: git or hosts unreachable
    INTERRUPTED = "interrupted"  # cut off (agent stopped or crashed mid-sync)


@dataclass
class SyncResult:
    trigger: str  # as the history stores it (triggers.text)
    started: float
    finished: float = 0.0
    heal: bool = False  # no trigger was a request: the agent keeping a commit's state
    revision: str | None = None
    commit: str | None = None
    outcome: Outcome = Outcome.ERROR
    reason: Reason | None = None
    message: str = ""
    problems: list[str] = field(default_factory=list)
    plan: Plan | None = None
    applied: ApplyResult | None = None
    deployments: dict[str, DeploymentStatus] = field(default_factory=dict)
    services: dict[str, ServiceStatus] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)
    about: dict[str, Any] = field(default_factory=dict)  # the commit: subject, author, time
    notes: list[str] = field(default_factory=list)  # what reading the source says besides (who signed the commit)
    fallback: str = ""  # why the commit fetched last was applied, not the newest (the remote unreachable, an unsigned commit)

    @property
    def seconds(self) -> float:
        return max(0.0, self.finished - self.started)

    def to_json(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger,
            "revision": self.revision,
            "commit": self.commit,
            "about": self.about,
            "started": self.started,
            "finished": self.finished,
            "seconds": round(self.seconds, 3),
            "outcome": str(self.outcome),
            "reason": str(self.reason) if self.reason else None,
            "message": self.message,
            "problems": self.problems,
            "warnings": list(self.plan.warnings) if self.plan else [],
            "notes": self.notes,
            "unreachable": self.unreachable,
            "deployments": {k: v.to_json() for k, v in self.deployments.items()},
            "services": {k: v.to_json() for k, v in self.services.items()},
            "actions": [
                {**r.action.to_json(), "ok": r.ok, "message": r.message, "seconds": round(r.seconds, 3)}
                for r in (self.applied.results if self.applied else [])
            ],
        }


@dataclass
class _Sync:
    """What the steps of one sync share: its inputs, what each step found, how it ended."""

    result: SyncResult
    t0: float
    timeout: float
    progress: Progress | None
    on_start: Callable[[SyncResult], None] | None
    on_planned: Callable[[SyncResult], None] | None
    stop: threading.Event | None
    plan_filter: Callable[[Plan, DesiredState], tuple[Plan, list[str]]] | None
    degraded: Callable[[], Mapping[str, str]] | None
    snapshot: Snapshot | None = None
    desired: DesiredState | None = None
    observed: Observation | None = None
    plan: Plan | None = None
    held: list[str] = field(default_factory=list)  # what the plan filter held back, and why
    applied: ApplyResult | None = None
    cut_off: str | None = None  # set when the agent stopped the sync midway: how the message ends
    error: Exception | None = None

    @property
    def stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    @property
    def hopeless(self) -> set[str]:
        """Deployments that cannot converge in this sync: their apply failed, they cannot be placed, or they were held back."""
        out = {r.action.deployment for r in self.applied.failed if r.action.object_kind == Deployment.KIND} if self.applied else set()
        out |= {p.deployment for p in self.plan.problems} if self.plan else set()
        return out | {h.split(":", 1)[0] for h in self.held}


@dataclass
class Observed:
    snapshot: Snapshot
    desired: DesiredState
    observed: Observation
    plan: Plan
    unreachable: dict[str, str] = field(default_factory=dict)  # engines that did not answer, and why


def failure_text(r: ActionResult) -> str:
    """A failed change as a sync's message says it (the same words when a retry is held back)."""
    a = r.action
    if r.reason == Reason.HEALTH_CHECK_FAILED:
        return r.message
    who = f"{a.deployment}: replica {a.replica}" if a.replica is not None else a.deployment
    return f"{who} {a.kind} failed on {a.host}: {r.message}"


SOURCE_RETRY = (5.0, 300.0)  # while the remote is unreachable: seconds to the first retry of a fetch, and the longest wait
SOURCE_UNREACHABLE = "source unreachable"


@dataclass
class SourceDown:
    """The remote could not be fetched: since when, how often, and when to try again."""

    error: FetchError
    since: float  # wall time of the first failure
    tries: int
    retry_at: float  # monotonic


def _short(revision: str) -> str:
    """main@sha1:<12 hex>"""
    branch, _, sha = revision.partition("@sha1:")
    return f"{branch}@sha1:{sha[:12]}" if sha else revision


class Syncer:
    """Holds the long-lived parts of a sync (git mirror, host clients) between syncs."""

    def __init__(self, config: Config, source_override: str | None = None) -> None:
        self.config = config
        settings = config.source
        if source_override is not None:
            settings = dc_replace(settings, url=source_override, path="")
        self.source = Source(settings, config.state_dir)
        self.runtime = runtimes.make(config)
        self._loaded: tuple[tuple[str, bool], DesiredState] | None = None  # the last revision loaded: commits are immutable
        self.source_down: SourceDown | None = None
        self._observer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gitsync-observe")

    @property
    def hosts(self) -> Hosts:
        """The hosts of the containers runtime (what the agent watches)."""
        hosts = getattr(self.runtime, "hosts", None)
        if not isinstance(hosts, Hosts):
            raise TypeError(f"runtime {self.runtime.name} has no hosts of its own")
        return hosts

    @property
    def loaded(self) -> DesiredState | None:
        """The desired state of the revision loaded last."""
        return self._loaded[1] if self._loaded is not None else None

    def close(self) -> None:
        self._observer.shutdown(wait=False, cancel_futures=True)
        self.runtime.close()
        self.source.close()

    # -- steps -----------------------------------------------------------
    def fetch(self, retry: bool = True) -> Snapshot:
        """The tracked branch's newest commit; while the remote cannot be reached, the commit fetched
        last (from the mirror in state_dir), with a note saying so, so that healing goes on. A request
        (`retry`: a poll, a webhook, a person) always tries the remote; a heal tries it only once its
        backoff is over, so that it never waits on a fetch that times out. The outage is logged once,
        and its end."""
        down = self.source_down
        if down is not None and not retry and time.monotonic() < down.retry_at:
            return self._last_fetched(down.error, f"{SOURCE_UNREACHABLE} ({down.error.message})")
        try:
            snapshot = self.source.fetch()
        except Unverified as exc:
            if retry:
                raise  # a request: the commit gets its failure ("not signed by a trusted key: ...")
            refused = exc.snapshot.revision if isinstance(exc.snapshot, Snapshot) else "the newest commit"
            return self._last_fetched(exc, f"{_short(refused)} not applied ({exc.message})")
        except FetchError as exc:
            tries = down.tries + 1 if down is not None else 1
            # what a person must mend is tried at the longest wait (a request still tries at once)
            wait = min(SOURCE_RETRY[0] * 2 ** (tries - 1), SOURCE_RETRY[1]) if exc.transient else SOURCE_RETRY[1]
            self.source_down = SourceDown(exc, down.since if down is not None else time.time(), tries, time.monotonic() + wait)
            if down is None or down.error.message != exc.message:
                log.warning("source unreachable: %s; syncs use the commit fetched last until it answers (next try in %.0fs, then less often)", exc.message, wait)
            return self._last_fetched(exc, f"{SOURCE_UNREACHABLE} ({exc.message})")
        if down is not None:
            log.info("source reachable again, after %s", format_duration(time.time() - down.since))
            self.source_down = None
        return snapshot

    def _last_fetched(self, error: GitsyncError, why: str) -> Snapshot:
        """The commit fetched (and verified) last, noted with `why` the newest is not used."""
        last = self.source.last_fetched()
        if last is None:
            raise error  # nothing fetched before (or no remote): the sync fails as it always did
        snapshot, when = last
        head, _, detail = why.partition(" (")
        note = f"{head}: applied {_short(snapshot.revision)} from {format_duration(max(0.0, time.time() - when))} ago ({detail}"
        return dc_replace(snapshot, notes=(*snapshot.notes, note), fallback=note)

    def load(self, snapshot: Snapshot, placeholders: bool = False) -> DesiredState:
        """The desired state of a snapshot; with `placeholders`, as a preview sees it: the variables
        of the agent's environment are their names (``${TAG}``), never their values, whoever wrote it."""
        key = (snapshot.revision, placeholders)
        if self._loaded is not None and self._loaded[0] == key:
            return self._loaded[1]
        c = self.config
        reader = c.secrets.reader.preview() if placeholders else c.secrets.reader  # a preview never decrypts
        desired = load_files(snapshot.files, c.policy, c.compose.resolved(placeholders), frozenset(c.compose.profiles), reader)
        refused = runtimes.check(c, desired)
        if refused:
            raise ManifestError(refused)
        said = [n for n in snapshot.notes if n.startswith((SIGNATURE, "would not be applied"))] if placeholders else []
        if said:  # a preview says whether the commit would be applied
            desired = dc_replace(desired, warnings=(*desired.warnings, *said))
        hidden = sorted(c.compose.environment()) if placeholders else []
        if hidden and any(is_compose_file(p) for p in snapshot.files):
            note = f"a preview never sees the values of the agent's environment: {', '.join(f'${{{n}}}' for n in hidden)} stand in for them in this plan"
            desired = dc_replace(desired, warnings=(*desired.warnings, note))
        self._loaded = (key, desired)
        return desired

    def _fetch_load_observe(self, on_fetched: Callable[[Snapshot], None] | None = None, retry: bool = True) -> tuple[Snapshot, DesiredState, Observation]:
        """fetch and load, with observe running alongside: live state does not depend on the desired.

        If fetch or load fails, the observation is simply dropped.
        """
        observing = self._observer.submit(self.observe)
        try:
            snapshot = self.fetch(retry)
            if on_fetched is not None:
                on_fetched(snapshot)
            desired = self.load(snapshot)
        finally:
            observed = observing.result()
        return snapshot, desired, observed

    def observe(self) -> Observation:
        return self.runtime.observe()

    def plan(self, desired: DesiredState, observed: Observation) -> Plan:
        return self.runtime.plan(desired, observed)

    def preview(self, ref: str | None = None, sha: str | None = None) -> Observed:
        """fetch, load, observe, plan: what `gitsync plan` shows; of another branch or commit than the
        tracked one with `ref` (never applied)."""
        if ref is None:
            snapshot, desired, observed = self._fetch_load_observe()
        else:
            observing = self._observer.submit(self.observe)
            try:
                snapshot = self.source.fetch_ref(ref, sha)
                desired = self.load(snapshot, placeholders=True)
            finally:
                observed = observing.result()
        return Observed(snapshot, desired, observed, self.plan(desired, observed), self.runtime.unreachable(observed))

    def wait_converged(
        self,
        desired: DesiredState,
        deadline: float,
        skip: set[str] | frozenset[str] = frozenset(),
        first: Observation | None = None,
        stop: threading.Event | None = None,
    ) -> tuple[dict[str, DeploymentStatus], Observation]:
        """Assess until every deployment is healthy, the deadline, or `stop`.

        Deployments in `skip` (their apply failed, or they cannot be placed) are
        assessed but not waited for: they cannot converge in this sync. `first`
        is an observation still current (nothing was applied since), reused
        instead of reading the engines again. Waiting is not a change in hand:
        a stopping agent does not sit out the deadline.
        """
        return self.runtime.converge(desired, deadline, skip, first, stop, self.observe)

    # -- the sync --------------------------------------------------------
    def sync(
        self,
        triggers: tuple[Trigger, ...] = (Trigger(Cause.CLI),),
        progress: Progress | None = None,
        timeout: float = 120.0,
        on_start: Callable[[SyncResult], None] | None = None,
        on_planned: Callable[[SyncResult], None] | None = None,
        stop: threading.Event | None = None,
        plan_filter: Callable[[Plan, DesiredState], tuple[Plan, list[str]]] | None = None,
        degraded: Callable[[], Mapping[str, str]] | None = None,
    ) -> SyncResult:
        """One sync: the steps in order, until one raises or the sync is cut off; then the outcome,
        summarised in one place. `on_start` runs once the revision is known, `on_planned` once the
        plan is; `stop` makes apply finish the changes in flight and skip the rest; `plan_filter`
        holds back what must wait (the caller's policies); `degraded` names deployments the caller
        knows to be degraded whatever a single look shows (a replica crash-looping between restarts)."""
        s = _Sync(SyncResult(trigger=text(triggers), started=time.time(), heal=is_heal(triggers)), time.monotonic(), timeout, progress, on_start, on_planned, stop, plan_filter, degraded)
        try:
            for _name, step in self.steps:
                step(s)
                if s.cut_off is not None:
                    break
        except Exception as exc:  # typed errors, and the unforeseen: both end the sync with their cause
            s.error = exc
            if not isinstance(exc, GitsyncError):
                log.exception("sync %s: unexpected error", s.result.revision or "-")
        self._finalize(s)
        log.info("sync %s: %s (%s)", s.result.revision or "-", s.result.outcome, s.result.message)
        return s.result

    @property
    def steps(self) -> tuple[tuple[str, Callable[[_Sync], None]], ...]:
        return (
            ("fetch, load, observe", self._read),
            ("plan", self._plan),
            ("apply", self._apply),
            ("assess", self._assess),
        )

    def _read(self, s: _Sync) -> None:
        def fetched(snapshot: Snapshot) -> None:
            s.result.revision, s.result.commit, s.result.about = snapshot.revision, snapshot.commit, snapshot.about
            s.result.notes = list(snapshot.notes)
            s.result.fallback = snapshot.fallback
            if s.on_start is not None:
                s.on_start(s.result)

        try:
            s.snapshot, s.desired, s.observed = self._fetch_load_observe(fetched, retry=not s.result.heal)
        except Unverified as exc:
            if isinstance(exc.snapshot, Snapshot):
                fetched(exc.snapshot)  # the refused commit gets the sync's failure
            raise
        for warning in s.desired.warnings:  # every sync says it again (a plain-text Secret, a compose key ignored)
            log.warning("sync %s: %s", s.result.revision or "-", warning)

    def _plan(self, s: _Sync) -> None:
        assert s.desired is not None and s.observed is not None
        plan = self.plan(s.desired, s.observed)
        if s.plan_filter is not None:
            plan, s.held = s.plan_filter(plan, s.desired)
        s.plan = s.result.plan = plan
        s.result.unreachable = self.runtime.unreachable(s.observed)
        if s.on_planned is not None:
            s.on_planned(s.result)

    def _apply(self, s: _Sync) -> None:
        assert s.plan is not None and s.desired is not None and s.snapshot is not None
        s.applied = s.result.applied = self.runtime.apply(s.plan, s.desired, s.snapshot.revision, s.progress, s.stop, self.observe, s.t0 + s.timeout)
        if s.stopping and any(r.skipped for r in s.applied.results):
            s.cut_off = " before the agent stopped"

    def _assess(self, s: _Sync) -> None:
        assert s.plan is not None and s.desired is not None and s.applied is not None and s.observed is not None
        desired, applied = s.desired, s.applied
        touched = {r.action.deployment for r in applied.results if r.ok and r.action.object_kind == Deployment.KIND}
        waiting = {d.name for d in desired.deployments} - touched  # untouched: assess once, do not wait
        current = s.observed if not applied.results else None  # nothing changed: the observation still holds
        status, observed = (
            self.wait_converged(desired, s.t0 + s.timeout, s.hopeless | waiting, first=current, stop=s.stop)
            if desired.deployments else ({}, s.observed)
        )
        why_not: dict[str, str] = {}
        for p in s.plan.problems:  # a replica that cannot be placed or waits for its data's host: say why, not only how many run
            why_not.setdefault(p.deployment, p.message)
        for name, why in why_not.items():
            st = status.get(name)
            if st is not None and st.health != Health.HEALTHY:
                status[name] = dc_replace(st, message=f"{st.message}: {why}")
        for name, why in (s.degraded() if s.degraded is not None else {}).items():
            st = status.get(name)
            if st is not None and st.health in (Health.HEALTHY, Health.DEGRADED, Health.MISSING):
                status[name] = dc_replace(st, health=Health.DEGRADED, message=why)  # the reason, not a snapshot of it
        s.result.deployments = status
        s.result.services = dict(self.runtime.services(desired, observed))
        s.result.unreachable = self.runtime.unreachable(observed)
        unsettled = sorted(n for n, st in status.items() if st.health != Health.HEALTHY and n not in s.hopeless)
        if s.stopping and unsettled:
            s.result.problems = [f"{n}: {status[n].message}" for n in unsettled]
            s.cut_off = f"; the agent stopped before {', '.join(unsettled)} converged"

    def _finalize(self, s: _Sync) -> None:
        """The outcome, reason and message of a sync, from how its steps ended: the one place they are set."""
        r, exc = s.result, s.error
        if isinstance(exc, ManifestError):
            r.outcome, r.reason, r.message = Outcome.FAILURE, exc.reason, str(exc)
            r.problems = [str(p) for p in exc.problems]
        elif isinstance(exc, (FetchError, HostError)):
            r.outcome, r.reason, r.message = Outcome.ERROR, exc.reason, exc.message
        elif isinstance(exc, GitsyncError):
            r.outcome, r.reason, r.message = Outcome.FAILURE, exc.reason, exc.message
        elif exc is not None:  # a bug or a case not foreseen: an error, with its cause
            r.outcome, r.reason, r.message = Outcome.ERROR, Reason.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
        elif s.cut_off is not None:
            assert s.applied is not None
            done = sum(1 for x in s.applied.results if x.ok)
            r.outcome, r.reason = Outcome.INTERRUPTED, None
            r.message = f"stopped: {done} of {len(s.applied.results)} changes made{s.cut_off}"
        else:
            assert s.desired is not None and s.plan is not None and s.applied is not None
            self._summarise(r, s.desired, s.plan, s.applied, time.monotonic() - s.t0, s.held)
        r.message += f"; {r.fallback}" if r.fallback else ""  # said wherever the sync is shown
        r.finished = time.time()

    @staticmethod
    def _summarise(result: SyncResult, desired: DesiredState, plan: Plan, applied: ApplyResult, seconds: float, held: list[str] | None = None) -> None:
        n = len(desired.deployments)
        good = [s for s in result.deployments.values() if s.health == Health.HEALTHY]
        failed = [r for r in applied.failed if not r.skipped]
        if failed:
            first = failed[0]
            gate = first.reason == Reason.HEALTH_CHECK_FAILED
            result.outcome = Outcome.FAILURE
            result.reason = Reason.HEALTH_CHECK_FAILED if gate else Reason.APPLY_FAILED
            result.message = failure_text(first)
            if applied.rollbacks:
                result.message += f"; rolled back {len(applied.rollbacks)} replica(s)"
            result.problems = [
                r.message if r.reason == Reason.HEALTH_CHECK_FAILED else f"{r.action.deployment}: {r.action.kind} on {r.action.host}: {r.message}"
                for r in failed
            ] + applied.rollbacks
        elif held:
            result.outcome, result.reason = Outcome.FAILURE, Reason.HEALTH_CHECK_FAILED
            result.message = held[0]
            result.problems = list(held)
        elif plan.problems:
            result.outcome, result.reason = Outcome.FAILURE, Reason.PLACEMENT_FAILED
            result.message = str(plan.problems[0])
            result.problems = [str(p) for p in plan.problems]
        elif result.unreachable:
            names = ", ".join(sorted(result.unreachable))
            result.outcome, result.reason = Outcome.ERROR, Reason.HOST_UNREACHABLE
            result.message = f"host {names} unreachable ({next(iter(result.unreachable.values()))}); {len(good)}/{n} deployments converged elsewhere"
            result.problems = [f"host {h}: {e}" for h, e in sorted(result.unreachable.items())]
        elif len(good) < n or any(s.health != Health.HEALTHY for s in result.services.values()):
            bad = [s for s in [*result.deployments.values(), *result.services.values()] if s.health != Health.HEALTHY]
            result.outcome, result.reason = Outcome.FAILURE, Reason.HEALTH_CHECK_FAILED
            result.message = "; ".join(f"{s.name}: {s.message}" for s in bad)
            result.problems = [f"{s.name}: {s.message}" for s in bad]
        elif plan.in_sync:
            result.outcome, result.reason = Outcome.SUCCESS, None
            result.message = f"{n}/{n} deployments in sync, nothing to change"
        else:
            result.outcome, result.reason = Outcome.SUCCESS, None
            result.message = f"{n}/{n} deployments converged in {format_duration(seconds)}"
        if result.outcome == Outcome.SUCCESS and result.services:
            k = len(result.services)
            result.message += f"; {k}/{k} Service{'s' if k > 1 else ''} ready"
