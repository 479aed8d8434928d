"""One apply's machinery, shared by the kinds of the containers runtime: results in order,
progress, the stop flag, hosts in parallel, and the objects whose change failed; and, for every
runtime, a change that raised as its result (`failure`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..core.actions import Action, ActionKind, ActionResult, ApplyResult, Plan, Progress, Waiting
from ..core.config import PolicySettings, ServicesSettings
from ..adapters.engine import explain
from ..core.errors import GitsyncError, transient
from ..core.live import HostObservation
from ..core.models import DesiredState

if TYPE_CHECKING:
    from ..adapters.hosts import Hosts

PER_HOST_WORKERS = 4


def failure(a: Action, exc: BaseException, seconds: float = 0.0) -> ActionResult:
    """A change that raised: in the error's words, with its reason and what a retry waits for."""
    reason = exc.reason if isinstance(exc, GitsyncError) else None
    return ActionResult(a, False, explain(exc), seconds, reason=reason, transient=transient(exc))


class Run:
    """One apply, shared by the kinds: results in order, progress, the stop flag, and the objects
    whose change failed (their later changes are skipped)."""

    def __init__(
        self, plan: Plan, desired: DesiredState, hosts: Hosts, agent: str, revision: str, progress: Progress | None,
        stop: threading.Event | None, observe: Callable[[], dict[str, HostObservation]], services: ServicesSettings = ServicesSettings(),
        policy: PolicySettings = PolicySettings(),
    ) -> None:
        self.plan = plan
        self.desired = desired
        self.hosts = hosts
        self.agent = agent
        self.revision = revision
        self.progress = progress
        self.stop = stop
        self.observe = observe  # the view waits look at: the one the plan was made from
        self.services = services
        self.policy = policy  # what is checked on a host right before a change (links under writable bind mounts)
        self.parts: dict[str, Any] = {}  # a kind's own state for this apply, by the kind's choice of key
        self.out = ApplyResult()
        self.failed: set[tuple[str, str]] = set()
        self.before_retire: list[Callable[[str, str, float], None]] = []  # kinds that must let go of a replica first
        self.between_levels: list[Callable[[], None]] = []  # after a dependency level is ready, before the next starts
        self._lock = threading.Lock()

    def level_ready(self) -> None:
        """The replicas of one dependency level are ready and the next level is about to start: whatever
        serves them takes them in first (the Services' endpoints), so the next level can reach them."""
        for hook in self.between_levels:
            hook()

    def retiring(self, host: str, container: str, grace: float) -> None:
        """A replica is about to be stopped for good (replaced, scaled down, pruned): whatever serves
        it lets go first (the Services drain it, within `grace`)."""
        for hook in self.before_retire:
            hook(host, container, grace)

    def waiting(self, host: str, subject: str, what: str, up_to: float) -> None:
        if self.progress is not None:
            self.progress(Waiting(host, subject, what, up_to))

    def record(self, r: ActionResult) -> ActionResult:
        with self._lock:
            self.out.results.append(r)
            if not r.ok and not r.skipped:
                self.failed.add(r.action.subject)
        if self.progress is not None:
            self.progress(r)
        return r

    def skip(self, a: Action, why: str) -> ActionResult:
        return self.record(ActionResult(a, False, f"skipped: {why}", 0.0, skipped=True))

    def stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def done(self) -> set[int]:
        with self._lock:
            return {id(r.action) for r in self.out.results}

    def one(self, a: Action, do: Callable[[Action], str]) -> ActionResult:
        """Run one action (unless the agent stops or an earlier change of its object failed)."""
        if self.stopping():
            return self.skip(a, "the agent is stopping")
        if a.subject in self.failed and a.kind != ActionKind.REMOVE:
            return self.skip(a, "an earlier change of this deployment failed")
        t = time.monotonic()
        try:
            msg = do(a)
            return self.record(ActionResult(a, True, msg, time.monotonic() - t))
        except Exception as exc:
            return self.record(failure(a, exc, time.monotonic() - t))

    def parallel(self, actions: Iterable[Action], do: Callable[[Action], str]) -> None:
        """Hosts in parallel, each host a few changes at a time."""
        by_host: dict[str, list[Action]] = {}
        for a in actions:
            by_host.setdefault(a.host, []).append(a)
        if not by_host:
            return

        def host_run(host: str) -> None:
            with ThreadPoolExecutor(PER_HOST_WORKERS, thread_name_prefix=f"apply-{host}") as pool:
                list(pool.map(lambda a: self.one(a, do), by_host[host]))

        for host, res in self.hosts.map(host_run, list(by_host)).items():
            if isinstance(res, BaseException):
                for a in by_host[host]:
                    self.record(failure(a, res))
