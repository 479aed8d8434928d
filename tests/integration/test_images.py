"""Image policies against Debian's docker-registry on the test bed (issue 25): the tags listed
through the distribution API (over several pages), the newest one the policy allows chosen, the
marked lines that would change shown; a registry that does not answer is reported."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import docker
import pytest

from gitsync.adapters import registry as registry_mod
from tests import testbed
from tests.conftest import GitRepo, cli, git
from tests.fakeforge import FakeForge
from tests.integration.conftest import Fleet
from tests.integration.test_agent import AgentProc, statuses, wait_for
from tests.integration.test_sync import LOOP
from tests.tokenregistry import TokenRegistry

pytestmark = pytest.mark.docker

TAGS = ("1.4.2", "1.4.3", "1.5.0-rc.1", "2.0.0", "latest")


def test_gitsync_images_picks_the_newest_tag_the_policy_allows_from_the_registry(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = f"{testbed.REGISTRY}/acme/web-{uuid.uuid4().hex[:8]}"  # the registry's storage outlives test runs: a repository of this run's
    digests = _push_tags(repo, TAGS, fleet.engines[0].unix_url)
    closed = "127.0.0.1:9/acme/web"  # nothing answers there
    fleet.write_config(extra_hosts=(
        f"images:\n  - {{name: web, repository: '{repo}', policy: {{semver: '>=1.4.0 <2.0.0'}}, insecure: true}}\n"
        f"  - {{name: pinned, repository: '{repo}', policy: {{semver: '>=1.4.0 <2.0.0'}}, insecure: true, pinDigest: true}}\n"
        f"  - {{name: gone, repository: '{closed}', policy: {{alphabetical: asc}}, insecure: true}}\n"))
    web = ("apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n"
           f"  image: {repo}:1.4.2   # {{\"$imagepolicy\": \"web\"}}\n")
    fleet.repo.write("apps/web.yaml", web)
    fleet.repo.commit("web at 1.4.2")
    monkeypatch.setattr(registry_mod, "PAGE", 2)  # three pages of the registry's answer
    r = cli("images", "-c", str(fleet.config))
    assert r.code == 1, r.out + r.err  # the closed registry
    assert f"tags seen: {', '.join(sorted(TAGS))}" in r.out and "chosen: 1.4.3" in r.out, r.out
    assert f"apps/web.yaml:5: {repo}:1.4.2 -> {repo}:1.4.3" in r.out, r.out
    assert "gone  127.0.0.1:9/acme/web  (alphabetical asc)\n  registry: 127.0.0.1:9 cannot be reached" in r.out, r.out
    doc = json.loads(cli("images", "--json", "-c", str(fleet.config)).out)
    (entry,) = [p for p in doc["policies"] if p["name"] == "web"]
    assert entry["chosen"] == "1.4.3" and entry["changes"] == [{"file": "apps/web.yaml", "line": 5, "from": f"{repo}:1.4.2", "to": f"{repo}:1.4.3"}]
    assert (fleet.repo.path / "apps/web.yaml").read_text() == web  # `images` shows; it changes nothing
    (pinned,) = [p for p in doc["policies"] if p["name"] == "pinned"]
    assert pinned["chosen"] == f"1.4.3@{digests['1.4.3']}" and digests["1.4.3"].startswith("sha256:")  # what docker push was given


def _push_tags(repo: str, tags: tuple[str, ...], engine_url: str) -> dict[str, str]:
    """Push the test image under each tag; the digest the registry gave each."""
    client = docker.APIClient(base_url=engine_url, version="auto", timeout=120)
    digests = {}
    try:
        for tag in tags:
            client.tag(f"{testbed.TEST_IMAGE}:1", repo, tag)
            for line in client.push(repo, tag=tag, stream=True, decode=True):
                assert "error" not in line, line
                digests[tag] = (line.get("aux") or {}).get("Digest", digests.get(tag))
            client.remove_image(f"{repo}:{tag}")
    finally:
        client.close()
    return digests


def test_a_newer_tag_becomes_a_commit_that_is_synced_and_the_next_one_too(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    repo = f"{testbed.REGISTRY}/acme/auto-{uuid.uuid4().hex[:8]}"
    _push_tags(repo, TAGS, fleet.engines[0].unix_url)
    up = GitRepo(tmp_path / "up" / "deploy")
    git(up.path, "config", "receive.denyCurrentBranch", "updateInstead")  # the agent pushes to it
    web = ("# the web tier: its tag is the policy's\napiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n"
           f"  image: '{repo}:1.4.2'    # {{\"$imagepolicy\": \"web\"}}\n  command: {json.dumps(LOOP)}\n  placement: {{hostSelector: {{role: web}}}}\n")
    up.write("apps/web.yaml", web)
    c1 = up.commit("web at 1.4.2")
    extra = (f"images:\n  - {{name: web, repository: '{repo}', policy: {{semver: '>=1.4.0 <2.0.0'}}, insecure: true, interval: 10s}}\n"
             "  - {name: gone, repository: '127.0.0.1:9/acme/gone', policy: {alphabetical: asc}, insecure: true}\n"  # a registry that is down
             "update: {author: {name: gitsync-bot, email: bot@example.com}}\n")
    agent = AgentProc(fleet, up, github_forge, tmp_path, config_extra=extra)
    try:
        wait_for(lambda: git(up.path, "rev-parse", "HEAD") != c1, 40)
        c2 = git(up.path, "rev-parse", "HEAD")
        assert git(up.path, "log", "-1", "--format=%an <%ae>|%s") == f"gitsync-bot <bot@example.com>|images: web {repo.rpartition('/')[2]}:1.4.2 -> 1.4.3 (apps/web.yaml:6)"
        assert (up.path / "apps/web.yaml").read_text() == web.replace(":1.4.2'", ":1.4.3'")  # the tag, and nothing else
        wait_for(lambda: any(s == "success" for s, _ in statuses(github_forge, c2)), 60)  # the registry down stops no sync
        wait_for(lambda: [p for p in github_forge.state.posted() if p["context"] == f"gitsync/{fleet.agent}/images"], 30)
        (reported,) = [p for p in github_forge.state.posted() if p["context"] == f"gitsync/{fleet.agent}/images"][:1]
        assert reported["state"] == "failure" and "image policy gone: 127.0.0.1:9 cannot be reached" in reported["description"], reported
        (c,) = [c for h in fleet.clients for c in fleet.containers(h) if c["Labels"].get("io.gitsync.deployment") == "web"]
        assert c["Image"] == f"{repo}:1.4.3"
        _push_tags(repo, ("1.5.0",), fleet.engines[0].unix_url)  # published later: the next round commits it
        wait_for(lambda: ":1.5.0'" in git(up.path, "show", "HEAD:apps/web.yaml"), 40)
        c3 = git(up.path, "rev-parse", "HEAD")
        wait_for(lambda: any(s == "success" for s, _ in statuses(github_forge, c3)), 60)
        time.sleep(12)  # a round later: nothing new, no commit
        assert git(up.path, "rev-parse", "HEAD") == c3
    finally:
        agent.stop()


def test_tags_through_the_bearer_token_flow_with_credentials_from_the_environment(fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = f"acme/token-{uuid.uuid4().hex[:8]}"
    _push_tags(f"{testbed.REGISTRY}/{path}", ("1.0.0", "1.1.0", "nightly"), fleet.engines[0].unix_url)
    registry = TokenRegistry(tmp_path, testbed.DATA / "registry", "reader", "pw-from-env-77")  # the same storage, behind tokens
    try:
        fleet.write_config(extra_hosts=(
            f"images:\n  - {{name: app, repository: '{registry.address}/{path}', policy: {{semver: '>=1.0.0'}}, caFile: '{registry.ca_file}',"
            " credentials: {username_env: REG_USER, password_env: REG_PASSWORD}}\n"))
        fleet.repo.write("apps/app.yaml", f"apiVersion: gitsync.io/v1\nkind: Volume\nmetadata: {{name: v-{fleet.agent}}}\n")
        fleet.repo.commit("something to read")
        monkeypatch.setenv("REG_USER", "reader")
        monkeypatch.setenv("REG_PASSWORD", "pw-from-env-77")
        r = cli("images", "-c", str(fleet.config))
        assert r.code == 0 and "tags seen: 1.0.0, 1.1.0, nightly" in r.out and "chosen: 1.1.0" in r.out, r.out + r.err
        monkeypatch.setenv("REG_PASSWORD", "wrong")
        r = cli("images", "-c", str(fleet.config))
        assert r.code == 1 and "registry: " in r.out and "(credentials?)" in r.out and "wrong" not in r.out, r.out
    finally:
        registry.close()


def test_on_push_branch_the_new_tag_waits_for_review_with_a_preview(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    from tests.integration.test_previews import plan_statuses

    repo = f"{testbed.REGISTRY}/acme/review-{uuid.uuid4().hex[:8]}"
    _push_tags(repo, ("2.0.0", "2.1.0"), fleet.engines[0].unix_url)
    up = GitRepo(tmp_path / "up" / "deploy")
    git(up.path, "config", "receive.denyCurrentBranch", "updateInstead")
    up.write("apps/web.yaml", "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n"
             f"  image: {repo}:2.0.0 # {{\"$imagepolicy\": \"web\"}}\n  command: {json.dumps(LOOP)}\n  placement: {{hostSelector: {{role: web}}}}\n")
    c1 = up.commit("web at 2.0.0")
    extra = (f"images:\n  - {{name: web, repository: '{repo}', policy: {{semver: '^2.0.0'}}, insecure: true, interval: 10s}}\n"
             "update: {pushBranch: gitsync/images}\n")
    agent = AgentProc(fleet, up, github_forge, tmp_path, config_extra=extra)
    try:
        wait_for(lambda: "gitsync/images" in git(up.path, "branch", "--list", "gitsync/images"), 40)
        head = git(up.path, "rev-parse", "gitsync/images")
        assert git(up.path, "rev-parse", "main") == c1  # the tracked branch waits for the review
        wait_for(lambda: any(p["state"] == "success" for p in plan_statuses(github_forge, fleet.agent, head)), 60)
        (c,) = [c for h in fleet.clients for c in fleet.containers(h) if c["Labels"].get("io.gitsync.deployment") == "web"]
        assert c["Image"] == f"{repo}:2.0.0"  # nothing runs before the merge
    finally:
        agent.stop()
