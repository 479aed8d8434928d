"""Previews end to end: a push to a feature branch and a pull request event make the agent plan that
commit against the real engines (never applying it) and post the result on the commit under its own
context, with a page; an invalid commit fails naming file:line; a burst previews only the newest
commit of a branch; a preview never holds up the sync of the tracked branch; `gitsync plan --ref`."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import requests

from gitsync.core import config as config_mod
from gitsync.agent.agent import Agent
from gitsync.agent.previews import Preview
from gitsync.core.triggers import Cause, Trigger
from tests.conftest import GitRepo, cli, git
from tests.fakeforge import FakeForge
from tests.integration.conftest import Fleet
from gitsync.http.dashboard import fold
from gitsync.agent.history import SyncRecord
from tests.integration.test_agent import chromium, dashboard_text, push_body, wait_for, web_agent
from tests.integration.test_sync import WEB, deployment

pytestmark = pytest.mark.docker


def plan_statuses(forge: FakeForge, agent: str, sha: str) -> list[dict]:
    return [p for p in forge.state.posted(sha) if p["context"] == f"gitsync/{agent}/plan"]


def on_branch(upstream: GitRepo, branch: str, text: str, message: str) -> str:
    """A commit on `branch` (made from main), the work tree back on main after."""
    git(upstream.path, "checkout", "-q", "-B", branch, "main")
    upstream.write("apps/web.yaml", text)
    sha = upstream.commit(message)
    git(upstream.path, "checkout", "-q", "main")
    return sha


def pull_request_body(number: int, sha: str, head: str, base: str = "main", action: str = "opened") -> bytes:
    return json.dumps({
        "action": action, "number": number,
        "pull_request": {"number": number, "head": {"ref": head, "sha": sha}, "base": {"ref": base}},
        "repository": {"full_name": "acme/deploy"},
    }).encode()


def test_branch_pushes_and_pull_requests_are_planned_on_their_commits_never_applied(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    upstream, agent = web_agent(fleet, github_forge, tmp_path, 1, config_extra="previews: {comment: true}\n")
    name = fleet.agent
    try:
        wait_for(lambda: len([c for h in fleet.clients for c in fleet.containers(h, all=False)]) == 1, 30)
        before = fleet.ids()

        # a valid change on a feature branch: success, with what it would do, and a page
        feature = on_branch(upstream, "feature", deployment("web", 2, image="gitsync-test/busybox:2", extra=WEB, labels="{app: web}"), "web x2 v2")
        r = agent.hook(push_body(feature, "refs/heads/feature"))
        assert r.status_code == 202 and r.json() == {"status": "queued", "reason": f"queued: preview of branch feature at {feature[:12]}"}
        wait_for(lambda: any(p["state"] == "success" for p in plan_statuses(github_forge, name, feature)), 30)
        posted = plan_statuses(github_forge, name, feature)
        assert [p["state"] for p in posted] == ["pending", "pending", "success"]  # queued, planning, planned
        assert posted[-1]["description"] == "would create 1, replace 1 (web: image)" and posted[-1]["target_url"] == f"{agent.url}/plans/{feature}"
        doc = requests.get(f"{agent.url}/api/plans/{feature}", timeout=5).json()
        assert doc["state"] == "success" and doc["branch"] == "feature" and doc["revision"] == f"feature@sha1:{feature}"
        assert "image gitsync-test/busybox:1 -> gitsync-test/busybox:2" in doc["text"] and doc["plan"]["counts"]["create"] == 1
        page = requests.get(f"{agent.url}/plans/{feature}", timeout=5)
        assert page.status_code == 200 and "would create 1, replace 1 (web: image)" in page.text and "never applied" in page.text
        assert fleet.ids() == before  # nothing ran: a preview is never applied
        assert [p["context"] for p in github_forge.state.posted(feature)] == [f"gitsync/{name}/plan"] * 3  # no sync status on it

        # an invalid manifest on another branch: failure naming file and line
        broken = on_branch(upstream, "broken", deployment("web", 1, extra=WEB + "  replicas: -1\n"), "broken")
        assert agent.hook(push_body(broken, "refs/heads/broken")).status_code == 202
        wait_for(lambda: any(p["state"] == "failure" for p in plan_statuses(github_forge, name, broken)), 30)
        desc = plan_statuses(github_forge, name, broken)[-1]["description"]
        assert desc.startswith("invalid: apps/web.yaml:") and "duplicate key 'replicas'" in desc, desc

        # a pull request (from a fork: only its refs/pull/N/head has the commit)
        pr_sha = on_branch(upstream, "fork-work", deployment("web", 1, extra=WEB, labels="{app: web, tier: front}"), "relabel")
        git(upstream.path, "update-ref", "refs/pull/7/head", pr_sha)
        git(upstream.path, "branch", "-q", "-D", "fork-work")
        r = agent.hook(pull_request_body(7, pr_sha, "fork-work"), event="pull_request")
        assert r.status_code == 202 and r.json()["reason"] == f"queued: preview of pull request #7 at {pr_sha[:12]}"
        wait_for(lambda: any(p["state"] == "success" for p in plan_statuses(github_forge, name, pr_sha)), 30)
        assert plan_statuses(github_forge, name, pr_sha)[-1]["description"] == "would replace 1 (web: labels)"
        wait_for(lambda: github_forge.state.comments.get(7), 10)
        (comment,) = github_forge.state.comments[7].values()  # one comment on the pull request, with the plan
        assert f"plan of {pr_sha[:12]}: **success**" in comment and "\nwould replace 1 (web: labels)\n" in comment and f"<!-- gitsync:{name}:plan -->" in comment
        assert "~ " in comment and f"{agent.url}/plans/{pr_sha}" in comment
        pr_next = on_branch(upstream, "fork-work", deployment("web", 2, extra=WEB, labels="{app: web, tier: front}"), "relabel, x2")
        git(upstream.path, "update-ref", "refs/pull/7/head", pr_next)
        git(upstream.path, "branch", "-q", "-D", "fork-work")
        assert agent.hook(pull_request_body(7, pr_next, "fork-work", action="synchronize"), event="pull_request").status_code == 202
        wait_for(lambda: any(p["state"] == "success" for p in plan_statuses(github_forge, name, pr_next)), 30)
        wait_for(lambda: pr_next[:12] in next(iter(github_forge.state.comments[7].values())), 10)
        assert len(github_forge.state.comments[7]) == 1  # edited in place, never a second comment
        ignored = agent.hook(pull_request_body(8, pr_sha, "x", base="release"), event="pull_request")
        assert ignored.status_code == 200 and "targets release" in ignored.json()["reason"]
        assert agent.hook(pull_request_body(7, pr_sha, "fork-work"), signature_secret="guess", event="pull_request").status_code == 401

        # a burst of pushes to one branch: the newest is planned, those it overtook while waiting are not
        burst = [on_branch(upstream, "burst", deployment("web", n, extra=WEB, labels="{app: web}"), f"x{n}") for n in (2, 3, 4, 5)]
        for sha in burst:
            assert agent.hook(push_body(sha, "refs/heads/burst")).status_code == 202
        wait_for(lambda: any(p["state"] == "success" for p in plan_statuses(github_forge, name, burst[-1])), 30)
        assert plan_statuses(github_forge, name, burst[-1])[-1]["description"] == "would create 4"
        time.sleep(1)
        for sha in burst[1:-1]:  # overtaken while waiting (or pushed over as its planning began): never planned, and its status says so
            settled = [(p["state"], p["description"]) for p in plan_statuses(github_forge, name, sha)]
            assert settled[0][0] == "pending" and settled[-1][0] == "error", settled
            assert settled[-1][1].startswith("not planned: ") and "newer on branch burst, came while it waited" in settled[-1][1], settled
            assert [s for s, _ in settled].count("error") == 1 and "success" not in [s for s, _ in settled]
        listed = requests.get(f"{agent.url}/api/plans", timeout=5).json()
        assert [p["sha"] for p in listed][:1] == [burst[-1]] and {feature, broken, pr_sha} <= {p["sha"] for p in listed}
        assert "Previews" in requests.get(f"{agent.url}/plans", timeout=5).text
        assert github_forge.state.violations == []
        assert fleet.ids() == before

        # the pages as a person sees them, in a real browser: the dashboard at a glance, the plan page
        text = dashboard_text(agent.url + "/", tmp_path)
        records = [SyncRecord(x["id"], name, x["trigger"], x["revision"], x["commit"], x["started"], x["finished"], x["outcome"], x["reason"],
                              x["message"], requests.get(f"{agent.url}/api/syncs/{x['id']}", timeout=5).json()["detail"]) for x in agent.syncs()]
        rows = fold(records)
        assert len(rows) <= len(records) and text.count(" startup ") >= 1 and "Recent syncs" in text
        main = git(upstream.path, "rev-parse", "main")
        assert f"web {main[:12]} t, " in text  # the commit in human terms: its subject, then id, author and time
        for row in rows[:20]:
            assert f"#{row.sync.id} " in text, (row.sync.id, text)  # every row kept, after folding
        for gone in (r for r in records if r.id not in {row.sync.id for row in rows}):
            assert f"#{gone.id} " not in text  # a heal pass that changed nothing: a count on the row before it
        assert "Previews" in text and burst[-1][:12] in text and "would create 4" in text  # the newest previews
        dom = chromium(agent.url + "/", tmp_path)
        assert "<svg" in dom and dom.count("<rect") == min(len(rows), 48) and 'class="cell c-ok"' in dom
        shot = tmp_path / "dashboard.png"
        chromium(agent.url + "/", tmp_path, f"--screenshot={shot}", "--window-size=1280,1600")
        png = shot.read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 1280 and len(png) > 20_000
        plan_page = dashboard_text(f"{agent.url}/plans/{feature}", tmp_path)
        assert "would create 1, replace 1 (web: image)" in plan_page and "host h1" in plan_page and "never applied" in plan_page
    finally:
        assert agent.stop() == 0


def test_a_preview_never_holds_up_the_sync_of_the_tracked_branch(fleet: Fleet, tmp_path: Path) -> None:
    upstream = GitRepo(tmp_path / "up")
    upstream.write("apps/web.yaml", deployment("web", 1, extra=WEB, labels="{app: web}"))
    upstream.commit("web")
    hosts = "".join(f"  - {{name: {e.name}, url: '{e.tcp_url}', insecure: true, labels: {{role: web}}}}\n" for e in fleet.engines)
    cfg = config_mod.parse(f"name: {fleet.agent}\nsource: {{url: '{upstream.path}', branch: main, interval: 300s}}\nhosts:\n{hosts}state_dir: {tmp_path / 'state'}\n")
    agent = Agent(cfg)
    feature = on_branch(upstream, "feature", deployment("web", 2, extra=WEB, labels="{app: web}"), "x2")
    held, inside = threading.Event(), threading.Event()
    agent.start()
    try:
        wait_for(lambda: agent.ready.is_set() or agent.last_result is not None, 60)
        real = agent.previews._preview

        def slow(p: Preview, result: object) -> None:  # the preview thread, held inside a preview
            inside.set()
            held.wait(60)
            real(p, result)  # type: ignore[arg-type]

        agent.previews._preview = slow  # type: ignore[method-assign]
        agent.preview(Preview("refs/heads/feature", feature, "feature"))
        assert inside.wait(10)
        upstream.write("apps/web.yaml", deployment("web", 2, extra=WEB, labels="{app: web}"))
        main_sha = upstream.commit("web x2 on main")
        t0 = time.monotonic()
        agent.nudge(Trigger(Cause.WEBHOOK, "github"))
        wait_for(lambda: agent.last_result is not None and agent.last_result.commit == main_sha, 60)
        assert str(agent.last_result.outcome) == "success", agent.last_result.message
        assert held.is_set() is False and time.monotonic() - t0 < 30  # synced while the preview was still held
        held.set()
        wait_for(lambda: (r := agent.previews.get(feature)) is not None and r.state == "success", 30)
    finally:
        held.set()
        agent.stop()


def test_plan_ref_plans_another_branch_or_commit(fleet: Fleet, tmp_path: Path) -> None:
    fleet.repo.write("apps/web.yaml", deployment("web", 1, extra=WEB, labels="{app: web}"))
    fleet.repo.commit("web")
    assert cli("apply", "-c", str(fleet.config), "--timeout", "60s").code == 0
    sha = on_branch(fleet.repo, "feature", deployment("web", 3, extra=WEB, labels="{app: web}"), "x3")
    for ref in ("feature", sha, sha[:10]):
        r = cli("plan", "-c", str(fleet.config), "--ref", ref)
        assert r.code == 2 and "plan: 2 to create" in r.out and f"@sha1:{sha}" in r.out, (ref, r.out, r.err)
    r = cli("plan", "-c", str(fleet.config), "--ref", "nope")
    assert r.code == 1 and "'nope' is neither a branch nor a commit" in r.err, r.out + r.err
    assert cli("plan", "-c", str(fleet.config)).code == 0  # the tracked branch is untouched
