"""The sync queue's coalescing, restart backoff, heal triggers and the history's crash handling, without Docker."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from gitsync.core import config as config_mod
from gitsync.agent.agent import Agent
from gitsync.agent.backoff import Backoff
from gitsync.runtimes.containers.liveness import HostTracker
from gitsync.agent.reporting import gist
from gitsync.agent.queue import SyncQueue
from gitsync.core.triggers import Cause, Trigger, is_heal, parse, text
from gitsync.adapters.status import State
from gitsync.agent.history import History
from tests.conftest import IN_CI, GitRepo
from tests.fakeforge import OCTOKIT, FakeForge


def test_triggers_during_a_sync_coalesce_into_exactly_one_more() -> None:
    q = SyncQueue()
    runs: list[str] = []
    release = threading.Event()

    def worker() -> None:
        while True:
            t = q.take(timeout=2)
            if t is None:
                return
            runs.append(t)
            if len(runs) == 1:
                release.wait(5)  # the first sync is slow
            q.done()

    th = threading.Thread(target=worker)
    q.nudge(Trigger(Cause.POLL))
    th.start()
    deadline = time.monotonic() + 5
    while not runs and time.monotonic() < deadline:
        time.sleep(0.01)
    for i in range(50):  # a burst of webhooks while the first sync runs
        q.nudge(Trigger(Cause.WEBHOOK, str(i % 2)))
    release.set()
    th.join(10)
    q.close()
    assert [text(r) for r in runs] == ["poll", "webhook:0,webhook:1"]


def test_no_overlap_under_concurrent_nudges() -> None:
    q = SyncQueue()
    active = 0
    worst = 0
    lock = threading.Lock()
    done = 0

    def worker() -> None:
        nonlocal active, worst, done
        while q.take(timeout=0.5) is not None:
            with lock:
                active += 1
                worst = max(worst, active)
            time.sleep(0.005)
            with lock:
                active -= 1
                done += 1
            q.done()

    workers = [threading.Thread(target=worker) for _ in range(1)]
    for w in workers:
        w.start()
    nudgers = [threading.Thread(target=lambda: [q.nudge(Trigger(Cause.API)) or time.sleep(0.001) for _ in range(100)]) for _ in range(4)]
    for n in nudgers:
        n.start()
    for n in nudgers:
        n.join()
    time.sleep(0.1)
    q.close()
    for w in workers:
        w.join()
    assert worst == 1 and 1 <= done < 400


def test_a_sync_cut_off_by_a_crash_shows_as_interrupted(tmp_path: Path) -> None:
    h = History(str(tmp_path), "prod")
    first = h.start("poll")
    h.update(first, revision="main@sha1:" + "a" * 40, commit_sha="a" * 40)
    h.close()  # the agent dies here: no finish recorded
    again = History(str(tmp_path), "prod")
    assert again.mark_interrupted() == 1
    rec = again.get(first)
    assert rec is not None and rec.outcome == "interrupted" and "cut off" in rec.message
    assert again.recent(revision="aaaaaaa")[0].id == first


def test_history_retention_is_bounded(tmp_path: Path) -> None:
    h = History(str(tmp_path), "prod", keep=5)
    for _ in range(12):
        i = h.start("poll")
        h.update(i, outcome="success", finished=time.time(), message="ok")
    ids = [r.id for r in h.recent(100)]
    assert len(ids) == 5 and ids == sorted(ids, reverse=True) and ids[0] == 12


def test_backoff_doubles_caps_and_forgives_a_replica_that_stays_up() -> None:
    b = Backoff(base=1.0, cap=4.0, reset_after=30.0)
    key = ("h1", "api", 0)
    assert b.allow(key, 0.0) == (True, 1, 1.0)  # the first restart at once
    assert b.allow(key, 0.5)[0] is False  # inside the backoff
    assert b.allow(key, 1.0) == (True, 2, 2.0)
    assert b.allow(key, 3.0) == (True, 3, 4.0)
    assert b.allow(key, 7.0) == (True, 4, 4.0)  # capped
    assert b.allow(key, 11.0 + 31.0) == (True, 1, 1.0)  # up for longer than reset_after: forgiven


def test_a_second_restart_within_the_window_is_a_crash_loop() -> None:
    b = Backoff(base=1.0, cap=60.0, reset_after=30.0)
    key = ("h1", "api", 0)
    b.allow(key, 0.0)
    assert b.looping(0.5) == {}  # one restart is a blip
    b.allow(key, 1.0)
    assert b.looping(1.5) == {key: (2, 29.5)}  # looping, even while it runs between two crashes
    assert b.looping(31.5) == {}  # stayed up 30 s since the last restart


def test_only_syncs_nobody_asked_for_are_heal_syncs() -> None:
    assert is_heal(parse("event:h1/api,h2/web"))  # as rows written before subjects were joined by spaces
    assert parse("event:h1/api,h2/web") == (Trigger(Cause.EVENT, "h1/api h2/web"),)
    assert is_heal(parse("backoff")) and is_heal(parse("host:h2:down")) and is_heal(parse("events:h1:reconnected"))
    assert is_heal(parse("event:h1/api"))  # a deployment named api is not the API trigger
    assert not is_heal(parse("event:h1/web,webhook:github"))  # a push joined it
    assert not any(is_heal(parse(t)) for t in ("poll", "api", "startup", "reload", "apply", "images"))
    for t in (Trigger(Cause.HOST, "h2", "down"), Trigger(Cause.EVENT, "h1/web swarm/t-api"), Trigger(Cause.WEBHOOK, "gitea"), Trigger(Cause.RECHECK)):
        assert parse(text([t, Trigger(Cause.POLL)])) == (t, Trigger(Cause.POLL))  # what the history stores reads back the same


def test_restarts_seen_in_events_count_as_a_crash_loop_too() -> None:
    b = Backoff(base=1.0, cap=60.0, reset_after=30.0)
    key = ("h3", "crash", 0)
    b.restarted(key, 0.0)  # Docker's restart policy restarted it: the agent made no restart of its own
    assert b.looping(0.1) == {}
    b.restarted(key, 0.2)
    assert b.looping(0.3) == {key: (2, 29.9)}
    b.restarted(key, 40.0)  # long after: forgiven, it counts from one again
    assert b.looping(40.1) == {}


def test_a_heal_sync_reposts_only_what_changed_in_words() -> None:
    a = gist(State.FAILURE, "crash: replica 0 on h3 is crash-looping (2 restarts); healthy again once it stays up 30s")
    b = gist(State.FAILURE, "crash: replica 0 on h3 is crash-looping (7 restarts); healthy again once it stays up 30s")
    assert a == b  # only the count moved
    assert a != gist(State.FAILURE, "crash: 0/1 replicas running")  # the situation changed
    assert gist(State.SUCCESS, "1/1 deployments converged in 418ms") == gist(State.SUCCESS, "1/1 deployments in sync, nothing to change")
    assert gist(State.SUCCESS, "x") != gist(State.ERROR, "x")


def _event(action: str, nano: int, cid: str = "c0ffee") -> dict:
    attrs = {"io.gitsync.deployment": "web", "io.gitsync.replica": "0", "name": "a-web-0"}
    return {"Type": "container", "Action": action, "id": cid, "timeNano": nano, "time": nano // 10**9, "Actor": {"ID": cid, "Attributes": attrs}}


def test_events_replayed_after_a_reconnect_are_not_counted_again(tmp_path: Path) -> None:
    cfg = tmp_path / "gitsync.yaml"
    cfg.write_text(f"name: a\nsource: {{url: {tmp_path}}}\nstate_dir: {tmp_path / 'state'}\nhosts: [{{name: h1, url: 'unix:///nowhere.sock'}}]\n")
    agent = Agent(config_mod.load(str(cfg)), str(cfg))  # connects to nothing until started
    try:
        t = 1_700_000_000 * 10**9
        for ev in (_event("die", t), _event("start", t + 10**8)):  # one restart
            agent.watch.on_event("h1", ev)
        for ev in (_event("die", t), _event("start", t + 10**8)):  # the same two again, as a reconnect replays them
            agent.watch.on_event("h1", ev)
        assert agent.backoff.looping(time.monotonic()) == {}
        for ev in (_event("die", t + 10**9), _event("start", t + 2 * 10**9)):  # a second restart: a crash loop
            agent.watch.on_event("h1", ev)
        assert list(agent.backoff.looping(time.monotonic())) == [("h1", "web", 0)]
        agent.watch.on_event("h1", _event("destroy", t + 3 * 10**9, "other"))  # removed by a replace: not a restart
        assert agent.backoff.looping(time.monotonic())[("h1", "web", 0)][0] == 2
    finally:
        agent.debouncer.cancel()
        agent.stop(timeout=5)


def _agent_on_a_git_repo(tmp_path: Path, forge_url: str) -> Agent:
    repo = GitRepo(tmp_path / "repo")
    repo.write("apps/web.yaml", "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {image: x:1}\n")
    repo.commit("web")
    cfg = tmp_path / "gitsync.yaml"
    cfg.write_text(
        f"name: a\nsource: {{url: {repo.path}}}\nstate_dir: {tmp_path / 'state'}\nhosts: [{{name: h1, url: 'tcp://127.0.0.1:9'}}]\n"
        f"status: [{{type: github, url: '{forge_url}', repo: acme/deploy, token_env: GH_TOKEN}}]\n"
    )
    return Agent(config_mod.load(str(cfg)), str(cfg))


@pytest.mark.parametrize("where", ["inside the sync", "after the sync"])
def test_an_unforeseen_error_still_ends_the_sync_recorded_and_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    if not OCTOKIT.is_file():
        if IN_CI:
            pytest.fail(f"{OCTOKIT} missing; scripts/test fetches it")
        pytest.skip(f"{OCTOKIT} missing: run scripts/test once")
    monkeypatch.setenv("GH_TOKEN", "t")
    with FakeForge("github") as forge:
        agent = _agent_on_a_git_repo(tmp_path, forge.url)
        try:
            def boom(*args: object, **kwargs: object) -> None:
                raise KeyError("a case nobody foresaw")

            if where == "inside the sync":
                monkeypatch.setattr(agent.syncer, "plan", boom)
                result = agent.run_one((Trigger(Cause.API),))
                assert result.outcome == "error" and result.message == "internal error: KeyError: 'a case nobody foresaw'"
            else:
                monkeypatch.setattr(agent, "_remember_failures", boom)
                with pytest.raises(KeyError):
                    agent.run_one((Trigger(Cause.API),))
            row = agent.history.recent(1)[0]
            assert row.outcome == "error" and row.finished is not None and "KeyError" in row.message, row
            assert row.reason == "InternalError"
            agent.notifier.flush(10)
            states = [s["state"] for s in forge.state.posted(row.commit)]
            assert states[-1] == "error", states  # never left pending
            assert forge.state.violations == []
        finally:
            agent.stop(timeout=5)


def _tracker(tmp_path: Path, hosts: int = 3, grace: str = "0.2s") -> HostTracker:
    cfg = tmp_path / "gitsync.yaml"
    entries = "".join(f"  - {{name: h{i}, url: 'tcp://127.0.0.1:{9000 + i}', grace: {grace}}}\n" for i in range(1, hosts + 1))
    cfg.write_text(f"name: a\nsource: {{url: {tmp_path}}}\nhosts:\n{entries}")
    live = SimpleNamespace(known_down={})
    return HostTracker(config_mod.load(str(cfg)), lambda: live)


def test_many_hosts_unreachable_at_once_move_nothing(tmp_path: Path) -> None:
    t = _tracker(tmp_path)
    assert str(t.probed("h1", "connection timed out")) == "host:h1:unreachable"
    assert str(t.probed("h2", "connection timed out")) == "host:h2:unreachable"
    time.sleep(0.25)  # both past their grace
    assert t.probed("h1", "connection timed out") is None and t.holding  # 2 of 3: suspect ourselves
    assert t.probed("h2", "connection timed out") is None
    assert str(t.probed("h2", None)) == "host:h2:back" and not t.holding  # 1 of 3 now: h1 is judged again
    assert str(t.probed("h1", "connection timed out")) == "host:h1:down"


def test_one_host_of_two_down_still_moves_its_replicas(tmp_path: Path) -> None:
    t = _tracker(tmp_path, hosts=2)
    t.probed("h1", "connection refused")
    time.sleep(0.25)
    assert str(t.probed("h1", "connection refused")) == "host:h1:down"


def test_an_open_event_stream_vouches_for_its_host_until_it_ends(tmp_path: Path) -> None:
    t = _tracker(tmp_path)
    t.stream("h1", True)
    assert t.streaming("h1")
    time.sleep(0.25)  # longer than the grace with no probe at all: still fine, the stream is open
    t.stream("h1", False)  # the kernel found the peer gone: alive until now, the grace starts here
    assert not t.streaming("h1")
    assert str(t.probed("h1", "connection timed out")) == "host:h1:unreachable"
    assert t.probed("h1", "connection timed out") is None  # within the grace
    time.sleep(0.25)
    assert str(t.probed("h1", "connection timed out")) == "host:h1:down"
