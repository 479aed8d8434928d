"""The queue that turns any number of asks into syncs that never overlap, and the debouncer.

A trigger that arrives while a sync runs marks the queue dirty; however many arrive, exactly one
more sync follows. Bursts of Docker events are debounced into one trigger first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..core.triggers import Cause, Trigger


class SyncQueue:
    """At most one sync at a time; triggers during a sync coalesce into exactly one more."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: list[Trigger] = []
        self.running = False
        self.closed = False

    def nudge(self, trigger: Trigger) -> bool:
        """Ask for a sync. Returns False when one is already waiting (this trigger joins it)."""
        with self._cond:
            if self.closed:
                return False
            joined = bool(self._pending)
            self._pending.append(trigger)
            self._cond.notify_all()
            return not joined

    def take(self, timeout: float | None = None) -> tuple[Trigger, ...] | None:
        """Block until a sync is wanted; returns its triggers (each once, first come first), or None when closed."""
        with self._cond:
            end = None if timeout is None else time.monotonic() + timeout
            while not self._pending and not self.closed:
                remaining = None if end is None else end - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            if self.closed:
                return None
            triggers = tuple(dict.fromkeys(self._pending))
            self._pending.clear()
            self.running = True
            return triggers

    def done(self) -> None:
        with self._cond:
            self.running = False
            self._cond.notify_all()

    def idle(self) -> bool:
        with self._cond:
            return not self.running and not self._pending

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class Debouncer:
    """Coalesces bursts of Docker events into one nudge, at most `delay` after the first."""

    def __init__(self, delay: float, fire: Callable[[Trigger], object]) -> None:
        self.delay = delay
        self.fire = fire
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._reasons: list[str] = []

    def poke(self, reason: str) -> None:
        with self._lock:
            if reason not in self._reasons:
                self._reasons.append(reason)
            if self._timer is None:
                self._timer = threading.Timer(self.delay, self._go)
                self._timer.daemon = True
                self._timer.start()

    def _go(self) -> None:
        with self._lock:
            reasons, self._reasons, self._timer = self._reasons, [], None
        self.fire(Trigger(Cause.EVENT, " ".join(reasons[:5]) + ("…" if len(reasons) > 5 else "")))

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
