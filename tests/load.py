"""A steady stream of HTTP requests, one connection each, counting failures and latencies.

Used by the Services' tests and benchmarks: every request opens its own TCP connection, as a
client behind a load balancer that does not reuse connections would.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, of the requests that succeeded
    bodies: Counter[str] = field(default_factory=Counter)  # who answered
    first_failure: float | None = None  # monotonic
    last_failure: float | None = None

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        s = sorted(self.latencies)
        return s[min(len(s) - 1, int(q * len(s)))]


class Load:
    """`workers` threads sending GET requests to host:port until stopped."""

    def __init__(self, host: str, port: int, workers: int = 4, timeout: float = 3.0, path: str = "/", pause: float = 0.0) -> None:
        self.host, self.port, self.workers, self.timeout, self.path, self.pause = host, port, workers, timeout, path, pause
        self.tally = Tally()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def one(self) -> tuple[bool, str, float]:
        t = time.perf_counter()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("GET", self.path, headers={"Connection": "close"})
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace").strip()
            if resp.status != 200:
                return False, f"HTTP {resp.status}", 0.0
            return True, body, time.perf_counter() - t
        except (OSError, http.client.HTTPException) as exc:
            return False, type(exc).__name__, 0.0
        finally:
            conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            ok, what, secs = self.one()
            with self._lock:
                if ok:
                    self.tally.ok += 1
                    self.tally.latencies.append(secs)
                    self.tally.bodies[what] += 1
                else:
                    now = time.monotonic()
                    self.tally.failed += 1
                    self.tally.errors[what] += 1
                    self.tally.first_failure = self.tally.first_failure or now
                    self.tally.last_failure = now
            if self.pause:
                time.sleep(self.pause)

    def __enter__(self) -> Load:
        for i in range(self.workers):
            t = threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 1)

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.tally.ok, self.tally.failed
