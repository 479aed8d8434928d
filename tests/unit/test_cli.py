"""The command line's contract for errors nobody foresaw: one line and exit 1, the traceback only with -v."""

from __future__ import annotations

import argparse
from typing import TextIO

import pytest

from gitsync import cli as cli_mod
from tests.conftest import cli


def test_an_unexpected_error_is_one_line_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cli_mod, "cmd_hosts", broken)
    r = cli("hosts")
    assert r.code == 1
    assert r.err == "gitsync: unexpected error: RuntimeError: disk on fire (run with -v for the traceback)\n"
    r = cli("-v", "hosts")
    assert r.code == 1 and "Traceback (most recent call last)" in r.err and "disk on fire" in r.err
