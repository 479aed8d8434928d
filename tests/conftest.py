"""Shared test helpers: real git repositories and in-process CLI runs."""

from __future__ import annotations

import io
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from gitsync.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared"
CORPORA = SHARED / "corpora"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_corpora() -> Path:
    """The shared corpora folder, or a skip (a failure in CI, which always has it)."""
    if not CORPORA.is_dir():
        if IN_CI:
            pytest.fail(f"{CORPORA} is missing; CI must run with ../shared beside the clone")
        pytest.skip(f"corpus folder {CORPORA} not found (it sits beside the clone as ../shared)")
    return CORPORA


@dataclass
class Run:
    code: int
    out: str
    err: str


def cli(*argv: str, cwd: Path | None = None) -> Run:
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        code = main(list(argv), out, err)
    finally:
        os.chdir(old)
    return Run(code, out.getvalue(), err.getvalue())


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=env).stdout.strip()


class GitRepo:
    """A real repository in a temp folder, on branch main."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        git(path, "init", "-q", "-b", "main")

    def write(self, rel: str, text: str) -> None:
        p = self.path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    def commit(self, message: str = "change") -> str:
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "--allow-empty", "-m", message)
        return git(self.path, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path / "repo")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port nothing listens on now and never handed out before in this run: the kernel may give
    a port just released again, and two of a test's servers (an agent and its git daemon) then meet."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port

