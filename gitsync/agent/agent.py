"""The agent: its sync worker, poller, image updates and its runtime's watch, put together.

Its parts live beside it in gitsync/agent/: queue (the sync queue and the debouncer), retries (what
a failed change waits for), backoff (restarts and crash loops), reporting (commit statuses),
previews, history, metrics, alerts, image updates; the runtime's watch is the runtime's own
(gitsync/runtimes/*/watch.py). The poller uses the ``schedule`` package with a random jitter so a
fleet of agents does not fetch in lockstep.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import schedule

from ..core import config as config_mod
from .alerts import Alerts
from .backoff import Backoff, crash_loop_reason
from ..core.config import Config
from ..core.errors import GitsyncError, Reason
from ..core.health import DeploymentStatus, ServiceStatus
from .history import History
from ..runtimes.containers.watch import HostWatch
from .metrics import Metrics
from ..core.models import Deployment, DesiredState
from ..core.plantext import progress_line
from ..core.actions import ActionKind, ActionResult, Plan, Waiting
from ..reconcile import Outcome, SyncResult, Syncer, failure_text
from ..runtimes import Observation
from ..runtimes.swarm.watch import SwarmWatch
from .retries import RetryPolicy
from .reporting import OUTCOME_STATE, build_providers, gist
from ..core.settings import DEFAULT, Tunables
from ..adapters.status import CommitStatus, Notifier, State
from .previews import Previews
from ..core.triggers import Cause, Trigger, is_heal, text
from .queue import Debouncer, SyncQueue
from .previews import Preview

log = logging.getLogger("gitsync.agent")

MAX_PROGRESS = 200  # progress lines kept with a sync
WATCHES: dict[str, type[HostWatch] | type[SwarmWatch]] = {"containers": HostWatch, "swarm": SwarmWatch}  # each runtime's watch between syncs, by runtime name

@dataclass
class LiveView:
    """What the dashboard and /api/status show: the newest sync's view of the fleet."""

    revision: str | None = None
    commit: str | None = None
    observed: Observation = None  # the runtime's, from the newest sync
    deployments: dict[str, DeploymentStatus] = field(default_factory=dict)
    updated: float = 0.0
    services: dict[str, ServiceStatus] = field(default_factory=dict)


class Agent:
    def __init__(self, config: Config, config_path: str | None = None, tunables: Tunables = DEFAULT) -> None:
        self.tune = tunables
        self.config_path = config_path
        self.config = config
        self.stopping = threading.Event()
        self.queue = SyncQueue()
        self.metrics = Metrics(config.name)
        self.history = History(config.state_dir, config.name, redactor=config.redactor)
        interrupted = self.history.mark_interrupted()
        if interrupted:
            log.warning("%d sync(s) were cut off by an earlier stop or crash; marked interrupted", interrupted)
        self.syncer = Syncer(config)
        self.notifier = Notifier(build_providers(config), redactor=config.redactor)
        self.alerts = Alerts(config.name, config.notify, config.redactor, counted=lambda result: self.metrics.notifications.labels(result).inc())
        self.view = LiveView()
        self.ready = threading.Event()
        self.last_result: SyncResult | None = None
        self._final_posted: dict[tuple[str, str], tuple[State, str]] = {}  # (commit, context) -> gist of the last final status
        self._scheduler = schedule.Scheduler()
        self._schedule_poll()
        self._threads: list[threading.Thread] = []
        self.listeners: list[Callable[[SyncResult], None]] = []
        self.debouncer = Debouncer(tunables.debounce, self.nudge)
        self.backoff: Backoff[tuple[str, str, int]] = Backoff(tunables.backoff_base, tunables.backoff_cap, tunables.backoff_reset_after)
        # changes that failed: tried again after a delay, or held for a commit, as their error says
        self.retries = RetryPolicy(tunables.backoff_base, tunables.backoff_cap)
        self._forgive_at: float | None = None  # a sync is due when a crash loop's replicas have stayed up long enough
        self._sync_lock = threading.Lock()  # held by a sync, and by a reload swapping what syncs use
        self.previews = Previews(config, lambda: self.notifier, self.plan_url)
        # what keeps an eye on the engines between syncs: the runtime's own watch
        self.watch: HostWatch | SwarmWatch = WATCHES[config.runtime](config, self.syncer, tunables, self.stopping, self.queue, self.debouncer, self.alerts, self.backoff)
        self.listeners.append(self.watch.sync_done)

    # -- configuration ---------------------------------------------------
    def _schedule_poll(self) -> None:
        self._scheduler.clear()
        interval = self.config.source.interval
        jitter = max(1.0, interval * 0.1)
        self._scheduler.every(int(interval)).to(int(interval + jitter)).seconds.do(self.nudge, Trigger(Cause.POLL))

    def reload(self) -> str:
        """Re-read the config file (SIGHUP). A bad file keeps the running config; says why either way."""
        if self.config_path is None:
            return "no config file to reload (running on defaults)"
        try:
            new = config_mod.load(self.config_path)
            providers = build_providers(new)
        except GitsyncError as exc:
            log.error("config reload refused, keeping the running config: %s", exc)
            return f"reload refused: {exc}"
        if new.name != self.config.name or new.state_dir != self.config.state_dir:
            log.error("config reload refused: name and state_dir cannot change while running (restart instead)")
            return "reload refused: name and state_dir cannot change while running"
        # Swap between syncs: the worker holds this lock for a whole sync, so none runs on a closed Syncer.
        with self._sync_lock:
            old_syncer, old_notifier = self.syncer, self.notifier
            self.config = new
            self.previews.config = new
            self.syncer = Syncer(new)
            self.watch.reconfigured(new, self.syncer)
            self.notifier = Notifier(providers, redactor=new.redactor)
            self.alerts.targets, self.alerts.redactor = new.notify, new.redactor
            self.history.redactor = self.history.redactor | new.redactor
            old_notifier.flush(5)
            old_notifier.close()
            old_syncer.close()
            self._schedule_poll()
        log.info("configuration reloaded from %s", self.config_path)
        self.nudge(Trigger(Cause.RELOAD))
        return "reloaded"

    # -- triggers --------------------------------------------------------
    def nudge(self, trigger: Trigger) -> bool:
        return self.queue.nudge(trigger)

    def _nudge_later(self, delay: float, trigger: Trigger) -> None:
        t = threading.Timer(delay, self.nudge, args=(trigger,))
        t.daemon = True
        t.start()

    # -- the sync worker ---------------------------------------------------
    def target_url(self, sync_id: int) -> str | None:
        base = self.config.server.public_url
        return f"{base}/syncs/{sync_id}" if base else None

    def plan_url(self, sha: str) -> str | None:
        base = self.config.server.public_url
        return f"{base}/plans/{sha}" if base else None

    def preview(self, p: Preview) -> str:
        """Queue the plan of another branch's or a pull request's commit (never applied)."""
        return self.previews.submit(p)

    def context(self, deployment: str | None = None) -> str:
        return f"gitsync/{self.config.name}" + (f"/{deployment}" if deployment else "")

    def run_one(self, triggers: tuple[Trigger, ...]) -> SyncResult:
        """One sync, recorded and reported however it ends: an unforeseen error too ends the history
        row and the commit's status as `error`, with its cause."""
        sync_id = self.history.start(text(triggers))
        commit: list[str] = []  # the commit, once the sync knows it
        try:
            return self._run_one(sync_id, triggers, commit)
        except Exception as exc:
            message = f"internal error: {type(exc).__name__}: {exc}"
            log.exception("sync %d: %s", sync_id, message)
            self.history.update(sync_id, finished=time.time(), outcome=str(Outcome.ERROR), reason=str(Reason.INTERNAL), message=message)
            self.metrics.syncs.labels(str(Outcome.ERROR)).inc()
            if commit:
                self._post(commit[0], State.ERROR, message, self.target_url(sync_id))
            raise

    def _run_one(self, sync_id: int, triggers: tuple[Trigger, ...], commit: list[str]) -> SyncResult:
        target = self.target_url(sync_id)

        def started(result: SyncResult) -> None:
            if result.commit:
                commit.append(result.commit)
            self.history.update(sync_id, revision=result.revision, commit_sha=result.commit)

        def planned(result: SyncResult) -> None:
            # pending once per commit: a heal sync of a commit already reported changes its status only
            # if its outcome changes (a crash loop must not flip it through pending on every restart)
            assert result.plan is not None
            if result.commit and (result.commit, self.context()) not in self._final_posted:
                self._post(result.commit, State.PENDING, f"syncing {result.commit[:7]}: {_plan_summary(result)}", target)

        lines: list[str] = []

        def progress(item: ActionResult | Waiting) -> None:
            # kept with the running sync, for a `gitsync apply` that asked for it to print as it goes
            lines.append(progress_line(item))
            self.history.update(sync_id, detail={"progress": lines[-MAX_PROGRESS:]})

        syncer = self.syncer
        with self.metrics.duration.time():
            result = syncer.sync(
                triggers=triggers, progress=progress, on_start=started, on_planned=planned, stop=self.stopping, plan_filter=self._hold_back,
                degraded=self._crash_looping,
            )
        self._remember_failures(result)
        self.history.update(
            sync_id,
            revision=result.revision,
            commit_sha=result.commit,
            finished=result.finished,
            outcome=str(result.outcome),
            reason=str(result.reason) if result.reason else None,
            message=result.message,
            detail=result.to_json() | {"progress": lines[-MAX_PROGRESS:]},
        )
        self.metrics.syncs.labels(str(result.outcome)).inc()
        if result.outcome == Outcome.SUCCESS:
            self.metrics.last_success.set(result.finished)
        self.metrics.set_revision(result.revision)
        if result.deployments:
            self.metrics.deployments(result.deployments)
        if result.deployments or result.services:
            self.metrics.services(result.services)
        try:
            observed = syncer.observe()
            self.metrics.observed(syncer.runtime.hosts_view(observed))
            # An invalid commit is not assessed: what runs is still the last good state, show that.
            assessed = bool(result.deployments or result.services)
            deployments = dict(result.deployments) if assessed else dict(self.view.deployments)
            services = dict(result.services) if assessed else dict(self.view.services)
            self.view = LiveView(result.revision, result.commit, observed, deployments, time.time(), services)
        except Exception:  # the view is best-effort; the sync result stands
            log.exception("refreshing the live view failed")
        if result.commit:
            state = OUTCOME_STATE[result.outcome]
            healing = is_heal(triggers)
            posts = [(self.context(), state, result.message)]
            if any(s.per_deployment for s in self.config.status):
                for name, ds in result.deployments.items():
                    dstate = State.SUCCESS if str(ds.health) == "Healthy" else state if state != State.SUCCESS else State.FAILURE
                    posts.append((self.context(name), dstate, f"{name}: {ds.message}"))
            for context, pstate, description in posts:
                said = gist(pstate, description)
                if not healing or self._final_posted.get((result.commit, context)) != said:
                    self._post(result.commit, pstate, description, target, context)
                    self._final_posted.pop((result.commit, context), None)
                    self._final_posted[(result.commit, context)] = said  # newest last
            while len(self._final_posted) > self.tune.statuses_remembered:  # a long-running agent remembers recent commits only
                del self._final_posted[next(iter(self._final_posted))]
        self.alerts.sync_done(result, target)
        self.last_result = result
        for listener in list(self.listeners):
            listener(result)
        return result

    def _hold_back(self, plan: Plan, desired: DesiredState) -> tuple[Plan, list[str]]:
        """Hold back what must wait: restarts inside their backoff, a rollout that already failed for this spec."""
        from dataclasses import replace as dc_replace

        now = time.monotonic()
        keep = []
        held: list[str] = []
        retry_in: float | None = None
        for a in plan.actions:
            hold = self.retries.hold(a, desired, now)
            if hold is not None:  # said as the failure itself: its status does not change while nothing does
                if hold.why not in held:
                    held.append(hold.why)
                log.info("held back: %s%s", hold.why, f" (tried again in {hold.seconds:.0f}s)" if hold.seconds is not None else "")
                if hold.seconds is not None:
                    retry_in = hold.seconds if retry_in is None else min(retry_in, hold.seconds)
                continue
            if a.object_kind != Deployment.KIND:
                keep.append(a)
                continue
            if a.kind == ActionKind.START and a.replica is not None:
                ok, restarts, wait = self.backoff.allow((a.host, a.deployment, a.replica), now)
                if not ok:
                    held.append(f"{a.deployment}: {crash_loop_reason(a.host, a.replica, restarts, self.backoff.reset_after)}")
                    log.info("%s: replica %d on %s crashed again; next restart in %.1fs", a.deployment, a.replica, a.host, wait)
                    retry_in = wait if retry_in is None else min(retry_in, wait)
                    continue
            keep.append(a)
        if retry_in is not None:
            self._nudge_later(retry_in + 0.05, Trigger(Cause.BACKOFF))
        return (dc_replace(plan, actions=tuple(keep)) if len(keep) != len(plan.actions) else plan), held

    def _crash_looping(self) -> dict[str, str]:
        """Deployments with a crash-looping replica, with the reason; a sync is nudged for when they are forgiven."""
        now = time.monotonic()
        out: dict[str, str] = {}
        due: float | None = None
        for (host, deployment, replica), (restarts, left) in sorted(self.backoff.looping(now).items()):
            out.setdefault(deployment, crash_loop_reason(host, replica, restarts, self.backoff.reset_after))
            due = left if due is None else min(due, left)
        if due is not None:
            at = now + due + 0.2
            if self._forgive_at is None or self._forgive_at <= now or at < self._forgive_at:
                self._forgive_at = at
                self._nudge_later(due + 0.2, Trigger(Cause.BACKOFF))
        return out

    def _remember_failures(self, result: SyncResult) -> None:
        """What failed in this apply waits as its error says: a delay, or a commit."""
        if result.applied is not None:
            self.retries.remember(result.applied, self.syncer.loaded, time.monotonic(), failure_text)

    def _post(self, sha: str, state: State, description: str, target: str | None, context: str | None = None) -> None:
        ref = self.config.source.branch
        self.notifier.send(CommitStatus(sha, state, context or self.context(), description, target, ref))

    def _worker(self) -> None:
        while not self.stopping.is_set():
            triggers = self.queue.take(timeout=0.5)
            if triggers is None:
                continue
            try:
                with self._sync_lock:
                    result = self.run_one(triggers)
                log.info("sync (%s) %s: %s", text(triggers), result.outcome, result.message)
            except Exception:
                log.exception("sync crashed; the next trigger will try again")
            finally:
                self.queue.done()
                self.ready.set()

    def _poller(self) -> None:
        while not self.stopping.is_set():
            self._scheduler.run_pending()
            idle = self._scheduler.idle_seconds
            self.stopping.wait(min(0.5, max(0.05, idle if idle is not None else 0.5)))

    def start(self) -> None:
        for target, name in ((self._worker, "gitsync-sync"), (self._poller, "gitsync-poll"), (self._images, "gitsync-images")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self._threads += self.watch.start()
        self.previews.start()
        self.nudge(Trigger(Cause.STARTUP))

    def _images(self) -> None:
        """Image update automation: a round per the shortest policy interval; a new tag becomes a commit
        (then a sync of it, or a preview on update.pushBranch). Problems are logged and counted, once each."""
        from .imageupdate import UpdateError, run_round
        from .previews import Preview

        told: set[str] = set()
        posted: tuple[str, State, str] | None = None
        while not self.stopping.is_set():
            cfg = self.config
            if not cfg.images:
                self.stopping.wait(5.0)
                continue
            head = self.last_result.commit if self.last_result is not None else None
            try:
                done = run_round(cfg, self.syncer.source)
            except UpdateError as exc:
                self.metrics.image_updates.labels("error").inc()
                log.warning("image update round failed: %s", exc)
                said: tuple[State, str] = (State.ERROR, f"image update round failed: {exc}")
            else:
                said = (State.FAILURE, "; ".join(done.problems)) if done.problems else (State.SUCCESS, f"images: {len(cfg.images)} polic{'y' if len(cfg.images) == 1 else 'ies'} looked at")
                for problem in done.problems:
                    self.metrics.image_updates.labels("problem").inc()
                    if problem not in told:
                        log.warning("images: %s", problem)
                told = set(done.problems)
                if done.commit is not None and done.branch is not None:
                    self.metrics.image_updates.labels("committed").inc()
                    if done.branch == cfg.source.branch:
                        self.nudge(Trigger(Cause.IMAGES))
                    else:
                        self.preview(Preview(f"refs/heads/{done.branch}", done.commit, done.branch))
            if head and posted != (head, *said):  # on the tracked commit, when what it says changes
                self._post(head, said[0], said[1], None, f"{self.context()}/images")
                posted = (head, *said)
            self.stopping.wait(min(p.interval for p in cfg.images))

    def stop(self, timeout: float = 300.0) -> None:
        """Finish the change in hand, record the sync, then stop."""
        self.stopping.set()
        self.watch.stop()
        self.debouncer.cancel()
        self.queue.close()
        for t in self._threads:
            t.join(timeout)
        self.previews.stop()
        self.notifier.flush(10)
        self.notifier.close()
        self.alerts.close()
        self.syncer.close()
        self.history.close()

    def status_json(self) -> dict[str, Any]:
        v = self.view
        runtime = self.syncer.runtime
        last = self.last_result
        return {
            "agent": self.config.name,
            "revision": v.revision,
            "commit": v.commit,
            "updated": v.updated,
            "syncing": not self.queue.idle(),
            "last_sync": None if last is None else {"outcome": str(last.outcome), "message": last.message, "finished": last.finished},
            "deployments": {k: s.to_json() for k, s in v.deployments.items()},
            "services": {k: s.to_json() for k, s in v.services.items()},
            "volumes": runtime.volumes(self.syncer.loaded, v.observed) if v.observed is not None else [],
            "hosts": runtime.hosts_view(v.observed) if v.observed is not None else {},
        }


def _plan_summary(result: SyncResult) -> str:
    plan = result.plan
    if plan is None or plan.in_sync:
        return "in sync"
    c = plan.counts()
    parts = [f"{n} to {k}" for k, n in c.items() if n]
    return ", ".join(parts) or f"{len(plan.problems)} problem(s)"
