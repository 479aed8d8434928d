"""Restarts: the backoff of those the agent makes, and crash loops whoever restarts a replica."""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)  # what is backed off: a replica (host, deployment, index), a change

def crash_loop_reason(host: str, replica: int, restarts: int, forgive_after: float) -> str:
    return f"replica {replica} on {host} is crash-looping ({restarts} restarts); healthy again once it stays up {forgive_after:.0f}s"


class Backoff(Generic[K]):
    """Exponential backoff for the restarts the agent itself makes (a crash loop is never a hot loop)."""

    def __init__(self, base: float = 1.0, cap: float = 60.0, reset_after: float = 30.0) -> None:
        self.base, self.cap, self.reset_after = base, cap, reset_after
        self._tries: dict[K, tuple[int, float, float]] = {}  # key -> (restarts, last start, next allowed)
        self._seen: dict[K, tuple[int, float]] = {}  # key -> (restarts seen in events, last one)
        self._lock = threading.Lock()  # the sync thread asks, the event watchers report

    def _forget(self, now: float) -> None:
        """Drop replicas forgiven long ago (caller holds the lock): the memory stays as small as the trouble."""
        old = now - max(self.reset_after, self.cap) * 2
        for k in [k for k, v in self._tries.items() if v[1] < old]:
            del self._tries[k]
        for k in [k for k, v in self._seen.items() if v[1] < old]:
            del self._seen[k]

    def known(self, key: K) -> bool:
        with self._lock:
            return key in self._tries

    def forget(self, key: K) -> None:
        """It worked: the next failure starts the backoff afresh."""
        with self._lock:
            self._tries.pop(key, None)

    def allow(self, key: K, now: float) -> tuple[bool, int, float]:
        with self._lock:
            self._forget(now)
            restarts, last, next_at = self._tries.get(key, (0, 0.0, 0.0))
            if restarts and now - last > self.reset_after:
                restarts, next_at = 0, 0.0  # it stayed up long enough: forgive
            if now < next_at:
                return False, restarts, next_at - now
            delay = min(self.cap, self.base * (2**restarts))
            self._tries[key] = (restarts + 1, now, now + delay)
            return True, restarts + 1, delay

    def restarted(self, key: K, now: float) -> None:
        """A replica started again after it died, by whoever: Docker's restart policy, the agent, a person."""
        with self._lock:
            self._forget(now)
            n, last = self._seen.get(key, (0, 0.0))
            if n and now - last > self.reset_after:
                n = 0
            self._seen[key] = (n + 1, now)

    def looping(self, now: float) -> dict[K, tuple[int, float]]:
        """Replicas restarted at least twice and not yet up for `reset_after`: key -> (restarts, seconds until forgiven).

        One restart is a blip; a second within the window is a crash loop, even while the
        replica happens to be running between two crashes.
        """
        out: dict[K, tuple[int, float]] = {}
        with self._lock:
            counts = [(k, n, last) for k, (n, last, _) in self._tries.items()] + [(k, n, last) for k, (n, last) in self._seen.items()]
        for k, n, last in counts:
            if n >= 2 and now - last <= self.reset_after:
                prev_n, prev_left = out.get(k, (0, 0.0))
                out[k] = (max(n, prev_n), max(last + self.reset_after - now, prev_left))
        return out
