"""Secrets on the real engines, through the running agent: an encrypted Secret reaches the replicas
that use it (a file, a variable), a new value in Git replaces exactly those, a stranger's pull request
is planned without decrypting anything, and no output channel ever holds a value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import GitRepo, git
from tests.fakeforge import FakeForge
from tests.integration.conftest import Fleet
from tests.integration.test_agent import AgentProc, push_body, statuses, wait_for
from tests.integration.test_hostile import assert_never_shown, everything_shown
from tests.integration.test_previews import plan_statuses, pull_request_body
from tests.integration.test_sync import LOOP
from tests.sopsfile import TEST_IDENTITY, secret_manifest

pytestmark = pytest.mark.docker

FIRST, SECOND, STRANGER = "first-value-3e8a1c", "second-value-77b0d4", "pr-wants-this-9c2e"


def apps(token_key: str = "token") -> str:
    deployment = """\
apiVersion: gitsync.io/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  image: gitsync-test/busybox:1
  command: {loop}
  placement: {{hostSelector: {{role: web}}}}
{extra}"""
    loop = json.dumps(LOOP)
    return "---\n".join([
        deployment.format(name="files", loop=loop, extra=f"  secrets:\n    - {{name: api, key: {token_key}, path: /run/secrets/token, mode: 0440, uid: 1000, gid: 1000}}\n"),
        deployment.format(name="vars", loop=loop, extra=f"  env:\n    TOKEN: {{secretKeyRef: {{name: api, key: {token_key}}}}}\n"),
        deployment.format(name="plain", loop=loop, extra=""),
    ])


def test_a_secret_reaches_its_users_only_rotates_and_is_never_shown(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    key = tmp_path / "agent-age.key"
    key.write_text(TEST_IDENTITY + "\n")
    upstream = GitRepo(tmp_path / "up" / "deploy")
    upstream.write("apps.yaml", apps())
    upstream.write("secrets/api.yaml", secret_manifest("api", {"token": FIRST}))
    c1 = upstream.commit("an app with a token")
    agent = AgentProc(fleet, upstream, github_forge, tmp_path, config_extra=f"secrets: {{ageKeyFile: '{key}'}}\npreviews: {{comment: true}}\n")
    try:
        wait_for(lambda: any(s == "success" for s, _ in statuses(github_forge, c1)), 90)
        by_name = {c["Labels"]["io.gitsync.deployment"]: (h, c) for h in fleet.clients for c in fleet.containers(h)}
        h, files = by_name["files"]
        archive, stat = fleet.clients[h].get_archive(files["Id"], "/run/secrets/token")
        import io
        import tarfile

        member = tarfile.open(fileobj=io.BytesIO(b"".join(archive))).getmembers()[0]
        assert (stat["mode"] & 0o777, member.uid, member.gid) == (0o440, 1000, 1000)
        content = tarfile.open(fileobj=io.BytesIO(b"".join(fleet.clients[h].get_archive(files["Id"], "/run/secrets/token")[0]))).extractfile(member)
        assert content is not None and content.read() == FIRST.encode()
        hv, vars_ = by_name["vars"]
        assert f"TOKEN={FIRST}" in fleet.clients[hv].inspect_container(vars_["Id"])["Config"]["Env"]  # asked for as a variable
        inspected = json.dumps(fleet.clients[h].inspect_container(files["Id"]))
        assert FIRST not in inspected  # as a file: not in the container's config, labels or mounts

        # a new value: exactly its two users are replaced
        ids = {n: c["Id"] for n, (_, c) in by_name.items()}
        upstream.write("secrets/api.yaml", secret_manifest("api", {"token": SECOND}))
        c2 = upstream.commit("a new token")
        assert agent.hook(push_body(c2)).status_code == 202
        wait_for(lambda: any(s == "success" for s, _ in statuses(github_forge, c2)), 90)
        now = {c["Labels"]["io.gitsync.deployment"]: c["Id"] for h in fleet.clients for c in fleet.containers(h)}
        assert now["plain"] == ids["plain"] and now["files"] != ids["files"] and now["vars"] != ids["vars"]

        # a commit naming a key the Secret lacks: failure naming it, nothing applied
        upstream.write("apps.yaml", apps(token_key="tokn"))
        c3 = upstream.commit("a typo")
        assert agent.hook(push_body(c3)).status_code == 202
        wait_for(lambda: any(s == "failure" for s, _ in statuses(github_forge, c3)), 30)
        (failed,) = [d for s, d in statuses(github_forge, c3) if s == "failure"]
        assert "Secret api has no key tokn" in failed, failed
        git(upstream.path, "reset", "-q", "--hard", c2)

        # a stranger's pull request with a value of its own: planned, never decrypted
        upstream.write("secrets/api.yaml", secret_manifest("api", {"token": STRANGER}))
        pr = upstream.commit("mine")
        git(upstream.path, "update-ref", "refs/pull/5/head", pr)
        git(upstream.path, "reset", "-q", "--hard", c2)
        assert agent.hook(pull_request_body(5, pr, "main"), event="pull_request").status_code == 202
        wait_for(lambda: any(p["state"] != "pending" for p in plan_statuses(github_forge, fleet.agent, pr)), 60)
        wait_for(lambda: github_forge.state.comments.get(5), 10)
        assert "secret api/token" in json.dumps(github_forge.state.comments[5]), github_forge.state.comments

        shown, said = everything_shown(agent, github_forge, upstream, tmp_path, {}, pr, c2)
        assert "secret api/token" in said[2], said[2]  # the pull request's plan names the secret
        assert_never_shown((FIRST, SECOND, STRANGER), shown, tmp_path)
    finally:
        agent.stop()
