"""One gitsync process at a time acts for an agent: a lock in its state folder.

`gitsync run` holds the lock for as long as it runs, `gitsync apply` while it applies. The lock is
an advisory ``flock`` on ``state_dir/agent.lock``: the kernel releases it when its holder exits,
however it exits, so a crash never leaves a stale lock. The file names the holder (pid and command)
so that a refused process can say who is acting and what to do instead.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ConfigError

FILE = "agent.lock"


@dataclass(frozen=True)
class Holder:
    pid: int
    command: str  # "run" (the agent) or "apply"
    since: float


class Busy(Exception):
    """The lock is held by another process."""

    def __init__(self, holder: Holder | None) -> None:
        super().__init__(f"held by {holder}")
        self.holder = holder


class AgentLock:
    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir) / FILE
        self._fd: int | None = None

    def acquire(self, command: str) -> None:
        """Take the lock now or raise :class:`Busy` naming its holder."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot open the lock {self.path}: {exc.strerror}; check state_dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Busy(self.holder()) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command, "since": time.time()}).encode(), 0)
        self._fd = fd

    def wait(self, command: str, timeout: float, on_busy: Callable[[Holder | None], None] | None = None) -> None:
        """Take the lock, waiting up to `timeout` seconds for its holder; :class:`Busy` after that."""
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                return self.acquire(command)
            except Busy as exc:
                if time.monotonic() >= deadline:
                    raise
                if not told and on_busy is not None:
                    on_busy(exc.holder)
                    told = True
                time.sleep(0.2)

    def holder(self) -> Holder | None:
        """Who holds the lock, as its file says (None when it cannot be read)."""
        try:
            data = json.loads(self.path.read_text())
            return Holder(int(data["pid"]), str(data["command"]), float(data["since"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "AgentLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_gitsync(pid: int) -> bool:
    """The process is a gitsync command (a pid from the lock file may have been reused, or be another namespace's)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.path.basename(argv[0]) == b"gitsync" or argv[1:3] == [b"-m", b"gitsync"] or (
        len(argv) > 1 and os.path.basename(argv[1]) == b"gitsync"  # python /path/to/bin/gitsync
    )
