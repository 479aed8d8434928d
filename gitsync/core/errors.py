"""The exception tree and the reasons shared by logs, statuses and metrics.

Every error carries a :class:`Reason`, and says what a retry waits for: a *transient* one is worth
trying again after a delay (a host that did not answer, a name another container holds); a
*stalled* one only a commit can change (an invalid manifest, a rollout that failed its health gate,
a spec the engine refuses). The retry policy (retries.py) reads it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence


class Reason(enum.StrEnum):
    CONFIG_INVALID = "ConfigInvalid"
    MANIFEST_INVALID = "ManifestInvalid"
    FETCH_FAILED = "FetchFailed"
    HOST_UNREACHABLE = "HostUnreachable"
    PLACEMENT_FAILED = "PlacementFailed"
    APPLY_FAILED = "ApplyFailed"
    HEALTH_CHECK_FAILED = "HealthCheckFailed"
    LOCKED = "Locked"
    UNVERIFIED = "Unverified"  # the commit is not signed by a key the agent trusts
    INTERNAL = "InternalError"  # a bug or a case not foreseen: the sync still ends recorded


class GitsyncError(Exception):
    """Base of every error gitsync reports to a person."""

    reason: Reason = Reason.APPLY_FAILED
    transient: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def transient(exc: BaseException) -> bool:
    """Whether trying again after a delay may work: our errors say so; anything else (a bug, a case
    not foreseen) is retried after a delay too, never in a hot loop."""
    return exc.transient if isinstance(exc, GitsyncError) else True


class ConfigError(GitsyncError):
    """The agent configuration (gitsync.yaml) is invalid."""

    reason = Reason.CONFIG_INVALID


class LockedError(GitsyncError):
    """Another gitsync process acts for this agent (state_dir/agent.lock is held)."""

    reason = Reason.LOCKED
    transient = True


class Problem:
    """One located problem in a file: ``file:line: message``."""

    __slots__ = ("file", "line", "message")

    def __init__(self, file: str, line: int | None, message: str) -> None:
        self.file = file
        self.line = line
        self.message = message

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"

    def __repr__(self) -> str:
        return f"Problem({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Problem) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


class ManifestError(GitsyncError):
    """The desired state is invalid; carries every problem found, not just the first."""

    reason = Reason.MANIFEST_INVALID

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        first = str(self.problems[0]) if self.problems else "invalid manifests"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(first + more)


class FetchError(GitsyncError):
    """The source could not be fetched (remote unreachable, branch missing, auth failed)."""

    reason = Reason.FETCH_FAILED
    transient = True

    def __init__(self, message: str, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient  # False: a person must act (credentials, a host key, the branch's name)


class PushedOver(FetchError):
    """The commit asked for is no longer on its branch or pull request: a newer one replaced it."""

    def __init__(self, message: str, newest: str) -> None:
        super().__init__(message)
        self.newest = newest


class HostError(GitsyncError):
    """A Docker host could not be reached or answered with an error."""

    reason = Reason.HOST_UNREACHABLE
    transient = True

    def __init__(self, host: str, message: str) -> None:
        super().__init__(f"host {host}: {message}")
        self.host = host
        self.detail = message


class ApplyError(GitsyncError):
    """A change could not be applied on a host."""

    reason = Reason.APPLY_FAILED
    transient = True  # what refuses it is on the host (a link planted, a network not made): fixed there, not in Git
