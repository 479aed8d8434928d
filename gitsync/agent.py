"""The agent: its sync worker, poller, prober and event watchers, put together.

The parts live beside it: triggers (the queue and the debouncer), liveness (host tracking),
backoff (restarts and crash loops), reporting (commit statuses). The poller uses the
``schedule`` package with a random jitter so a fleet of agents does not fetch in lockstep.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import schedule

from . import config as config_mod
from . import labels as L
from .alerts import Alerts
from .backoff import Backoff, crash_loop_reason
from .config import Config
from .errors import GitsyncError, Reason
from .health import DeploymentStatus, ServiceStatus
from .kinds.volume import inventory
from .history import History
from .engine import EventStream
from .live import HostObservation
from .liveness import HostTracker
from .metrics import Metrics
from .models import DesiredState
from .plantext import progress_line
from .actions import Action, ActionKind, ActionResult, Plan, Waiting
from .reconcile import Outcome, SyncResult, Syncer, failure_text
from .reporting import OUTCOME_STATE, build_providers, gist
from .settings import DEFAULT, Tunables
from .status import CommitStatus, Notifier, State
from .previews import Previews
from .triggers import Debouncer, SyncQueue, is_heal
from .webhooks import Preview

log = logging.getLogger("gitsync.agent")

MAX_PROGRESS = 200  # progress lines kept with a sync

@dataclass
class LiveView:
    """What the dashboard and /api/status show: the newest sync's view of the fleet."""

    revision: str | None = None
    commit: str | None = None
    observed: dict[str, HostObservation] = field(default_factory=dict)
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
        self.tracker = HostTracker(config, lambda: self.syncer.hosts)
        self._install_tracker(self.syncer)
        self.debouncer = Debouncer(tunables.debounce, self.nudge)
        self.backoff: Backoff[tuple[str, str, int]] = Backoff(tunables.backoff_base, tunables.backoff_cap, tunables.backoff_reset_after)
        # changes that failed (a proxy whose hostPort something else holds, a create Docker refuses):
        # tried again after 1 s, 2 s, 4 s ... up to the cap, until one works
        self.retries: Backoff[tuple[str, str, str, str]] = Backoff(tunables.backoff_base, tunables.backoff_cap, reset_after=float("inf"))
        self._failures: dict[tuple[str, str, str, str], str] = {}  # what each backed-off change said when it failed
        self._forgive_at: float | None = None  # a sync is due when a crash loop's replicas have stayed up long enough
        self.failed_rollouts: dict[str, tuple[str, str]] = {}  # deployment -> (spec hash, why)
        self.events_seen = 0
        # Containers whose newest lifecycle event is `die`. The Engine logs `die` before it has cleaned
        # the container up and updated the state its list endpoint reads (Docker 20.10: daemon/monitor.go),
        # so for a moment a dead replica is still listed as running; a sync that saw that must look again.
        self._died: dict[str, float] = {}
        self._died_lock = threading.Lock()
        self._event_nano: dict[str, int] = {}  # host -> timeNano of the newest event handled
        self._events_lock = threading.Lock()
        self._sync_lock = threading.Lock()  # held by a sync, and by a reload swapping what syncs use
        self._watchers: dict[tuple[str, str], threading.Event] = {}  # (host, url) -> set to stop its watcher
        self._streams: dict[tuple[str, str], EventStream] = {}  # the open event stream of each watcher
        self.previews = Previews(config, lambda: self.notifier, self.plan_url)

    def _install_tracker(self, syncer: Syncer) -> None:
        plain = syncer.observe

        def observe() -> dict[str, HostObservation]:
            observed = plain()
            self._settle_if_behind(observed)  # on every observation, the one a plan is made from included
            return self.tracker.rewrite(observed)

        syncer.observe = observe  # type: ignore[method-assign]

    # -- configuration ---------------------------------------------------
    def _schedule_poll(self) -> None:
        self._scheduler.clear()
        interval = self.config.source.interval
        jitter = max(1.0, interval * 0.1)
        self._scheduler.every(int(interval)).to(int(interval + jitter)).seconds.do(self.nudge, "poll")

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
            self.tracker = HostTracker(new, lambda: self.syncer.hosts)
            self._install_tracker(self.syncer)
            self.notifier = Notifier(providers, redactor=new.redactor)
            self.alerts.targets, self.alerts.redactor = new.notify, new.redactor
            self.history.redactor = self.history.redactor | new.redactor
            old_notifier.flush(5)
            old_notifier.close()
            old_syncer.close()
            self._schedule_poll()
            self._follow_hosts()
        log.info("configuration reloaded from %s", self.config_path)
        self.nudge("reload")
        return "reloaded"

    # -- triggers --------------------------------------------------------
    def nudge(self, trigger: str) -> bool:
        return self.queue.nudge(trigger)

    def _nudge_later(self, delay: float, trigger: str) -> None:
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

    def run_one(self, trigger: str) -> SyncResult:
        """One sync, recorded and reported however it ends: an unforeseen error too ends the history
        row and the commit's status as `error`, with its cause."""
        sync_id = self.history.start(trigger)
        commit: list[str] = []  # the commit, once the sync knows it
        try:
            return self._run_one(sync_id, trigger, commit)
        except Exception as exc:
            message = f"internal error: {type(exc).__name__}: {exc}"
            log.exception("sync %d: %s", sync_id, message)
            self.history.update(sync_id, finished=time.time(), outcome=str(Outcome.ERROR), reason=str(Reason.INTERNAL), message=message)
            self.metrics.syncs.labels(str(Outcome.ERROR)).inc()
            if commit:
                self._post(commit[0], State.ERROR, message, self.target_url(sync_id))
            raise

    def _run_one(self, sync_id: int, trigger: str, commit: list[str]) -> SyncResult:
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
                trigger=trigger, progress=progress, on_start=started, on_planned=planned, stop=self.stopping, plan_filter=self._hold_back,
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
            self.metrics.observed(observed)
            # An invalid commit is not assessed: what runs is still the last good state, show that.
            assessed = bool(result.deployments or result.services)
            deployments = dict(result.deployments) if assessed else dict(self.view.deployments)
            services = dict(result.services) if assessed else dict(self.view.services)
            self.view = LiveView(result.revision, result.commit, observed, deployments, time.time(), services)
        except Exception:  # the view is best-effort; the sync result stands
            log.exception("refreshing the live view failed")
        if result.commit:
            state = OUTCOME_STATE[result.outcome]
            healing = is_heal(trigger)
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
            key = _retry_key(a)
            if self.retries.known(key):
                ok, tries, wait = self.retries.allow(key, now)
                if not ok:  # said as the failure itself: its status does not change while nothing does
                    held.append(self._failures.get(key, f"{a.deployment} {a.kind} failed on {a.host}"))
                    log.info("%s %s on %s failed %d time(s); tried again in %.0fs", a.deployment, a.kind, a.host, tries, wait)
                    retry_in = wait if retry_in is None else min(retry_in, wait)
                    continue
            if a.object_kind != "Deployment":
                keep.append(a)
                continue
            if a.kind == ActionKind.REPLACE:
                d = desired.deployment(a.deployment)
                failed = self.failed_rollouts.get(a.deployment)
                if d is not None and failed is not None and failed[0] == L.spec_hash(d):
                    note = f"{a.deployment}: rollout held back, it failed before: {failed[1]}"
                    if note not in held:
                        held.append(note)
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
            self._nudge_later(retry_in + 0.05, "backoff")
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
                self._nudge_later(due + 0.2, "backoff")
        return out

    def _remember_failures(self, result: SyncResult) -> None:
        """What failed in this apply: changes to back off (any), rollouts not to retry on the same spec."""
        if result.applied is None:
            return
        now = time.monotonic()
        for r in result.applied.results:  # what failed backs off; what worked starts afresh
            key = _retry_key(r.action)
            if r.ok:
                self.retries.forget(key)
                self._failures.pop(key, None)
            elif not r.skipped:
                self._failures[key] = failure_text(r)
                if not self.retries.known(key):
                    self.retries.allow(key, now)  # counts this try: the next waits 1 s
        loaded = self.syncer.loaded
        for r in result.applied.failed:
            if r.action.kind == ActionKind.REPLACE and r.reason == Reason.HEALTH_CHECK_FAILED:
                desired_hash = next((L.spec_hash(d) for d in (loaded.deployments if loaded else ()) if d.name == r.action.deployment), None)
                if desired_hash:
                    self.failed_rollouts[r.action.deployment] = (desired_hash, r.message)
        # a new spec (a new commit) gets a fresh chance
        if loaded is not None:
            current = {d.name: L.spec_hash(d) for d in loaded.deployments}
            for name, (h, _) in list(self.failed_rollouts.items()):
                if current.get(name) != h:
                    del self.failed_rollouts[name]

    def _settle_if_behind(self, observed: dict[str, HostObservation]) -> None:
        """Sync again shortly when a container the events say died is still listed as running."""
        with self._died_lock:
            cutoff = time.monotonic() - self.tune.died_memory
            for cid in [c for c, t in self._died.items() if t < cutoff]:
                del self._died[cid]  # the list caught up long ago, or the container went without an event we saw
            behind = [c.name for o in observed.values() for c in o.containers if c.running and c.id in self._died]
        if behind:
            log.debug("the engine still lists %s as running after it died; looking again", ", ".join(behind))
            self._nudge_later(0.2, "event:settle")

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

    # -- watching hosts ----------------------------------------------------
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

    def _host_changed(self, why: str) -> None:
        """A host's standing changed ("host:h1:down"): say so, and sync."""
        (log.info if why.endswith("back") else log.warning)("%s", why.replace(":", " ", 2))
        self.alerts.host_changed(why)
        self.nudge(why)

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
                    self.nudge(f"events:{name}:reconnected")  # something may have happened while we were away
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
            with self._events_lock:
                self.events_seen += 1
            self.debouncer.poke(f"{host}/{attrs.get(L.DEPLOYMENT, '?')}")

    def _post(self, sha: str, state: State, description: str, target: str | None, context: str | None = None) -> None:
        ref = self.config.source.branch
        self.notifier.send(CommitStatus(sha, state, context or self.context(), description, target, ref))

    def _worker(self) -> None:
        while not self.stopping.is_set():
            trigger = self.queue.take(timeout=0.5)
            if trigger is None:
                continue
            try:
                with self._sync_lock:
                    result = self.run_one(trigger)
                log.info("sync (%s) %s: %s", trigger, result.outcome, result.message)
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
        for target, name in ((self._worker, "gitsync-sync"), (self._poller, "gitsync-poll"), (self._prober, "gitsync-probe"), (self._images, "gitsync-images")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self.previews.start()
        self._follow_hosts()
        self.nudge("startup")

    def _images(self) -> None:
        """Image update automation: a round per the shortest policy interval; a new tag becomes a commit
        (then a sync of it, or a preview on update.pushBranch). Problems are logged and counted, once each."""
        from .imageupdate import UpdateError, run_round
        from .webhooks import Preview

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
                        self.nudge("images")
                    else:
                        self.preview(Preview(f"refs/heads/{done.branch}", done.commit, done.branch))
            if head and posted != (head, *said):  # on the tracked commit, when what it says changes
                self._post(head, said[0], said[1], None, f"{self.context()}/images")
                posted = (head, *said)
            self.stopping.wait(min(p.interval for p in cfg.images))

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

    def stop(self, timeout: float = 300.0) -> None:
        """Finish the change in hand, record the sync, then stop."""
        self.stopping.set()
        for key in list(self._watchers):
            self._close_stream(key)
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
        hosts = {}
        for h in self.config.hosts:
            o = v.observed.get(h.name)
            hosts[h.name] = {
                "url": h.url,
                "labels": dict(h.labels),
                "reachable": bool(o and o.reachable),
                "error": o.error if o else None,
                "containers": [
                    {"name": c.name, "deployment": c.deployment, "replica": c.replica, "state": c.state, "health": c.health, "revision": c.revision}
                    | ({"role": c.role} if c.role else {})
                    for c in (o.containers if o else ())
                ],
            }
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
            "volumes": inventory(self.syncer.loaded, v.observed, self.config.name),
            "hosts": hosts,
        }


def _retry_key(a: Action) -> tuple[str, str, str, str]:
    """One change, the same in every plan that asks for it (container ids change; names do not)."""
    return (a.host, a.object_kind, a.container_name or a.deployment, str(a.kind))


def _plan_summary(result: SyncResult) -> str:
    plan = result.plan
    if plan is None or plan.in_sync:
        return "in sync"
    c = plan.counts()
    parts = [f"{n} to {k}" for k, n in c.items() if n]
    return ", ".join(parts) or f"{len(plan.problems)} problem(s)"
