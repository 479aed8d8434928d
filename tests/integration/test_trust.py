"""Only signed commits run (issue 24), through the running agent on the real engines: an unsigned
commit gets its failure and is never applied, while the agent keeps healing the last signed one."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import GitRepo
from tests.fakeforge import FakeForge
from tests.integration.conftest import Fleet
from tests.integration.test_agent import AgentProc, push_body, statuses, wait_for
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
