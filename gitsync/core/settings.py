"""The agent's tunables in one place: how often it looks, how long it waits, how it backs off.

These are not configuration a user sets (gitsync.yaml is); they are the numbers the agent's parts
share, each with what it trades. Tests and benchmarks make their own with `dataclasses.replace`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tunables:
    # -- host liveness (agent: HostTracker and the prober) --
    probe_interval: float = 0.5  # seconds between probe rounds of hosts with no open event stream
    probe_timeout: float = 1.0  # a host that does not answer /_ping within this is failing
    probe_streaming_every: float = 30.0  # a host whose event stream is open is probed this seldom (a frozen engine)
    observer_late: float = 1.0  # a probe round this late, or this much slower than its timeout: the agent is starved
    # -- event streams (hosts.EventStream) --
    keepalive_idle: int = 1  # TCP keepalive: a silent peer is found after idle + interval * count seconds
    keepalive_interval: int = 1
    keepalive_count: int = 2
    reconnect_max: float = 5.0  # an event stream that cannot connect retries after 0.5 s, doubling up to this
    # -- reacting to events --
    debounce: float = 0.1  # a burst of Docker events becomes one sync at most this long after the first
    died_memory: float = 60.0  # how long a `die` is remembered to spot a dead replica the engine still lists
    # -- restarts the agent makes (Backoff) --
    backoff_base: float = 1.0  # the first restart is at once, the next after this, doubling
    backoff_cap: float = 60.0
    backoff_reset_after: float = 30.0  # a replica up this long is forgiven; two restarts within it are a crash loop
    # -- memory bounds of a long-running agent --
    statuses_remembered: int = 1000  # (commit, context) pairs whose last posted status is kept for de-duplication


DEFAULT = Tunables()
