"""Only signed commits run (issue 24), through the running agent on the real engines: an unsigned
commit gets its failure and is never applied, while the agent keeps healing the last signed one."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from tests import testbed
from tests.catcher import Catcher, refusing_url
from tests.conftest import GitRepo
from tests.fakeforge import FakeForge
from tests.integration.conftest import Fleet
from tests.integration.test_agent import API_TOKEN, AgentProc, push_body, statuses, wait_for
from tests.integration.test_selfheal import running, spec
from tests.signing import SshKey, signed_commit

pytestmark = pytest.mark.docker


def test_an_unsigned_commit_is_refused_and_the_last_signed_one_is_healed(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    alice = SshKey(tmp_path, "alice")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(alice.allowed_signer())
    up = GitRepo(tmp_path / "up" / "deploy")
    up.write("apps/web.yaml", spec("web", 2, extra="  restart: \"no\"\n"))
    c1 = signed_commit(up, "web, signed", alice)
    agent = AgentProc(fleet, up, github_forge, tmp_path, config_extra="", source_verify=f"{{allowedSigners: '{allowed}'}}")
    try:
        wait_for(lambda: any(s == "success" for s, _ in statuses(github_forge, c1)), 30)
        up.write("apps/web.yaml", spec("web", 1, extra="  restart: \"no\"\n"))
        c2 = up.commit("web: one replica, unsigned")
        assert agent.hook(push_body(c2)).status_code == 202
        wait_for(lambda: any(s == "failure" for s, _ in statuses(github_forge, c2)), 30)
        assert ("failure", "not signed by a trusted key: the commit is not signed") in statuses(github_forge, c2)
        assert len(running(fleet, "web")) == 2  # never applied
        victim = running(fleet, "web")[0]
        host = next(h for h in ("h1", "h2") if any(c["Id"] == victim["Id"] for c in fleet.containers(h)))
        fleet.clients[host].kill(victim["Id"])
        wait_for(lambda: len(running(fleet, "web")) == 2, 15, 0.1)  # healed: the signed commit's two replicas
        wait_for(lambda: any(f"main@sha1:{c2[:12]} not applied: applied main@sha1:{c1[:12]}" in (s.get("message") or "") for s in agent.syncs()), 10)
        time.sleep(1)
        assert len(running(fleet, "web")) == 2
        c3 = signed_commit(up, "alice signs on top", alice)
        assert agent.hook(push_body(c3)).status_code == 202
        wait_for(lambda: any(s == "success" for s, _ in statuses(github_forge, c3)), 30)
        wait_for(lambda: len(running(fleet, "web")) == 1, 15)  # the signed head applies, with the unsigned change beneath it
    finally:
        agent.stop()


def test_people_hear_once_per_condition_through_apprise_and_a_slow_service_delays_no_sync(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    catcher, slow = Catcher(), Catcher(delay=30)
    events = "[failure, recovery, rollback, degraded, host-down, host-up, unverified]"
    notify = f"notify:\n  - {{url: '{catcher.url}', on: {events}}}\n  - {{url: '{slow.url}', on: {events}}}\n  - {{url: '{refusing_url()}'}}\n"
    good = "  update: {order: stop-first, parallelism: 2}\n  minReadySeconds: 1s\n"
    up = GitRepo(tmp_path / "up" / "deploy")
    up.write("apps/web.yaml", spec("web", 2, extra=good))
    c1 = up.commit("web")
    agent = AgentProc(fleet, up, github_forge, tmp_path, grace="3s", config_extra=notify)
    h2 = fleet.engines[1]
    try:
        wait_for(lambda: any(s == "success" for s, _ in statuses(github_forge, c1)), 30)
        up.write("apps/web.yaml", spec("web", 2, extra=good).replace("image:", "imag:"))
        c2 = up.commit("a typo")
        t = time.monotonic()
        assert agent.hook(push_body(c2)).status_code == 202
        wait_for(lambda: any(s == "failure" for s, _ in statuses(github_forge, c2)), 30)
        assert time.monotonic() - t < 10  # the slow and the refusing targets delay nothing
        r = requests.post(f"{agent.url}/api/sync", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=5)  # the same failure again: not told again
        assert r.status_code == 202
        up.write("apps/web.yaml", spec("web", 2, extra=good))
        c3 = up.commit("fixed")
        assert agent.hook(push_body(c3)).status_code == 202
        wait_for(lambda: any(s == "success" for s, _ in statuses(github_forge, c3)), 60)
        testbed.set_link(h2, False)
        wait_for(lambda: any("host h2 is down" in t for t in catcher.titles()), 30)
        testbed.set_link(h2, True)
        wait_for(lambda: any("host h2 is back" in t for t in catcher.titles()), 30)
        wait_for(lambda: len(running(fleet, "web")) == 2, 30)
        up.write("apps/web.yaml", spec("web", 2, image="gitsync-test/busybox:2", extra=good, command=["sh", "-c", "exit 1"]))
        c4 = up.commit("crashes")
        assert agent.hook(push_body(c4)).status_code == 202
        wait_for(lambda: any(s == "failure" for s, _ in statuses(github_forge, c4)), 60)
        wait_for(lambda: any("rolled back" in t for t in catcher.titles()), 10)
        time.sleep(2)
        name = fleet.agent
        assert catcher.titles() == [
            f"gitsync {name}: sync of {c2[:12]} failed", f"gitsync {name}: syncing again", f"gitsync {name}: host h2 is down",
            f"gitsync {name}: host h2 is back", f"gitsync {name}: sync of {c4[:12]} failed", f"gitsync {name}: rolled back at {c4[:12]}",
        ], "\n".join(f"{b['title'][-30:]}: {b['message'][:200]}" for b in catcher.bodies)
        assert "spec.image: is required" in catcher.bodies[0]["message"] and "/syncs/" in catcher.bodies[0]["message"]
        metrics = requests.get(f"{agent.url}/metrics", timeout=5).text
        assert 'gitsync_notifications_total{result="failed"}' in metrics and 'gitsync_notifications_total{result="sent"} 6.0' in metrics, metrics
    finally:
        testbed.set_link(h2, True)
        agent.stop()
        catcher.close()
        slow.close()
