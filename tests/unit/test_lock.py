"""One gitsync process acts for an agent at a time: state_dir/agent.lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gitsync.agent.lock import AgentLock, Busy
from tests.conftest import cli

HOLD = "import sys, time; from gitsync.agent.lock import AgentLock; AgentLock(sys.argv[1]).acquire(sys.argv[2]); print('held', flush=True); time.sleep(60)"


def holder_process(state: Path, command: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(state), command], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    p.stdout.close()
    return p


def config(tmp_path: Path) -> Path:
    (tmp_path / "manifests").mkdir(exist_ok=True)
    cfg = tmp_path / "gitsync.yaml"
    cfg.write_text(
        "name: t\nsource: {url: manifests, interval: 300s}\nstate_dir: state\n"
        "hosts: [{name: h, url: 'tcp://127.0.0.1:9'}]\n"  # no engine there: a sync fails fast
    )
    return cfg


def test_the_lock_names_its_holder_and_is_released_on_exit(tmp_path: Path) -> None:
    lock = AgentLock(str(tmp_path))
    lock.acquire("run")
    with pytest.raises(Busy) as busy:
        AgentLock(str(tmp_path)).acquire("apply")
    assert busy.value.holder is not None and (busy.value.holder.pid, busy.value.holder.command) == (os.getpid(), "run")
    lock.release()
    AgentLock(str(tmp_path)).acquire("apply")


def test_a_holder_killed_with_sigkill_leaves_no_stale_lock(tmp_path: Path) -> None:
    p = holder_process(tmp_path, "run")
    with pytest.raises(Busy):
        AgentLock(str(tmp_path)).acquire("apply")
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    AgentLock(str(tmp_path)).acquire("apply")  # the kernel dropped the flock with the process


def test_a_second_agent_for_the_same_state_is_refused(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    p = holder_process(tmp_path / "state", "run")
    try:
        r = cli("run", "-c", str(cfg))
        assert r.code == 1
        assert f"gitsync: an agent is already running for t (pid {p.pid}, state_dir {tmp_path / 'state'})" in r.err, r.err
    finally:
        p.kill()
        p.wait(10)


def test_apply_waits_for_another_apply_then_acts(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    p = holder_process(tmp_path / "state", "apply")
    threading.Timer(1.0, p.kill).start()
    t0 = time.monotonic()
    r = cli("apply", "-c", str(cfg), "--timeout", "20s")
    assert time.monotonic() - t0 >= 0.9
    assert f"waiting for gitsync apply (pid {p.pid}) to finish acting for t" in r.out, r.out
    assert "host h" in r.out + r.err  # it went on to sync (and found no engine at the socket)
    p.wait(10)


def test_apply_gives_up_when_the_other_apply_does_not_finish(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    p = holder_process(tmp_path / "state", "apply")
    try:
        r = cli("apply", "-c", str(cfg), "--timeout", "1s")
        assert r.code == 1 and "another gitsync process still acts for t after 1s" in r.err, r.err
    finally:
        p.kill()
        p.wait(10)


def test_apply_refuses_to_race_an_agent_it_cannot_signal(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    p = holder_process(tmp_path / "state", "run")  # a python process: not a gitsync command to signal
    try:
        r = cli("apply", "-c", str(cfg))
        assert r.code == 1
        assert f"gitsync: an agent is running for t (pid {p.pid}): it will apply this commit within 5m00s (or use POST /api/sync)" in r.err, r.err
        r = cli("apply", "-c", str(cfg), str(tmp_path))
        assert r.code == 1 and f"it applies {tmp_path / 'manifests'}, not {tmp_path}: stop it to apply something else" in r.err, r.err
    finally:
        p.kill()
        p.wait(10)
