"""Previews as strangers may drive them (issue 20): keyed by what identifies them, bounded in what
they keep, their comments only the agent's own, escaped and cut to the forges' limits."""

from __future__ import annotations

import json
import time
from pathlib import Path

from gitsync.core import config as config_mod
from gitsync.agent.previews import Previews
from gitsync.adapters.status import Notifier, State
from gitsync.agent.previews import Preview


def previews(**kw: object) -> Previews:
    notifier = Notifier([])
    return Previews(config_mod.parse("name: t"), lambda: notifier, lambda sha: None)


def test_two_forks_main_branches_are_two_previews_and_a_newer_commit_replaces_only_its_own() -> None:
    p = previews()
    a, b = Preview("refs/pull/1/head", "a" * 40, "main", 1), Preview("refs/pull/2/head", "b" * 40, "main", 2)
    assert p.submit(a) == "queued" and p.submit(b) == "queued"
    assert p.superseded == 0 and [r.preview.sha for r in p.recent()] == ["b" * 40, "a" * 40]
    assert p.submit(Preview("refs/pull/1/head", "c" * 40, "main", 1)) == "replaced a preview still waiting for that branch"
    assert p.get("a" * 40).state == "superseded" and "newer on pull request #1" in p.get("a" * 40).summary  # type: ignore[union-attr]
    assert p.get("b" * 40).state == "pending"  # type: ignore[union-attr]
    # a branch of the repository called main-like names is its own key too
    assert p.submit(Preview("refs/heads/main2", "d" * 40, "main2")) == "queued"


def test_a_comment_keeps_what_a_commit_decides_inside_one_fence_and_fits_the_forges_limit() -> None:
    from gitsync.agent.previews import MAX_COMMENT, PreviewResult, comment_body

    marker = "<!-- gitsync:t:plan -->"
    hostile = "````\n@admin [click](https://evil.example) <img src=x> <!-- gitsync:t:plan -->\n```"
    r = PreviewResult(Preview("refs/pull/3/head", "e" * 40, "x", 3), state="failure", summary=f"invalid: apps/{hostile}.yaml:1: bad", problems=[hostile], text=f"+ {hostile}\n")
    body = comment_body("t", r, "http://agent/plans/" + "e" * 40, marker)
    head, _, rest = body.partition("\n\n")
    assert head == "**gitsync `t`** plan of eeeeeeeeeeee: **failure**"
    fence = rest.split("\n", 1)[0].removesuffix("text")
    assert fence == "`" * 5  # longer than the longest run of backticks inside
    inside, _, after = rest.split("\n", 1)[1].partition("\n" + fence + "\n")
    assert hostile in inside and fence not in inside
    assert "@admin" not in after and "evil" not in after and after.rstrip().endswith(marker) and after.count(marker) == 1

    huge = PreviewResult(Preview("refs/pull/3/head", "f" * 40, "x", 3), state="success", summary="would create 5000", text="".join(f"  + web-{i} create\n" for i in range(5000)))
    body = comment_body("t", huge, "http://agent/plans/" + "f" * 40, marker)
    assert len(body) <= MAX_COMMENT and "more line(s); the whole plan is on the page linked below" in body and body.endswith(marker)


def test_what_a_stopped_agent_left_unfinished_is_planned_after_a_restart_and_never_left_pending(tmp_path: Path) -> None:
    class Provider:
        kind = "fake"

        def __init__(self) -> None:
            self.posted: list[tuple[str, str, str]] = []

        def post(self, status) -> None:  # type: ignore[no-untyped-def]
            self.posted.append((status.sha[:1], str(status.state), status.description))

        def latest(self, sha: str, context: str) -> None:
            return None

    provider = Provider()
    notifier = Notifier([provider])  # type: ignore[list-item]
    cfg = config_mod.parse(f"name: t\nstate_dir: {tmp_path}\n")
    first = Previews(cfg, lambda: notifier, lambda sha: None)  # never started: as if it crashed with these queued
    first.submit(Preview("refs/pull/1/head", "a" * 40, "main", 1))
    first.submit(Preview("refs/pull/2/head", "b" * 40, "main", 2))
    first.submit(Preview("refs/pull/1/head", "c" * 40, "main", 1))  # overtakes a
    notifier.flush(5)
    assert provider.posted == [
        ("a", State.PENDING, "queued"), ("b", State.PENDING, "queued: 1 preview(s) ahead of it"),
        ("a", State.ERROR, "not planned: cccccccccccc, newer on pull request #1, came while it waited"),
        ("c", State.PENDING, "queued: 1 preview(s) ahead of it"),
    ]
    again = Previews(cfg, lambda: notifier, lambda sha: None)
    planned: list[str] = []
    again._preview = lambda p, r: (planned.append(p.sha[:1]), again._finish(r, State.SUCCESS, "in sync: nothing to change"))  # type: ignore[method-assign]
    again.start()
    try:
        deadline = time.monotonic() + 10
        while len(planned) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        again.stop()
    assert sorted(planned) == ["b", "c"]  # a was settled already; b and c are planned, each once
    notifier.flush(5)
    assert sorted((s, st) for s, st, _ in provider.posted if st == State.SUCCESS) == [("b", State.SUCCESS), ("c", State.SUCCESS)]
    assert json.loads((tmp_path / "previews-pending.json").read_text()) == []


def test_what_previews_keep_is_bounded_whatever_a_commit_plans() -> None:
    from gitsync.agent.previews import MAX_KEPT, MAX_TEXT, PreviewResult

    p = previews()
    for i in range(40):  # each a stranger's plan of thousands of replicas
        sha = f"{i:040x}"
        r = PreviewResult(Preview(f"refs/pull/{i}/head", sha, "x", i), state="success",
                          text="".join(f"  + t-web-{n:<5} create replica {n}\n" for n in range(40_000)),
                          plan={"counts": {"create": 40_000}, "hosts": {"h1": [{"name": f"t-web-{n}"} for n in range(40_000)]}})
        p._remember(r)
        p._finish(r, State.SUCCESS, "would create 40000")
        assert len(r.text) <= MAX_TEXT + 200 and "more line(s); `gitsync plan --ref" in r.text
        assert r.plan is not None and "hosts" not in r.plan and r.plan["counts"] == {"create": 40_000}
    kept = p.recent()
    assert sum(r.size for r in kept) <= MAX_KEPT and len(kept) <= 50


def test_a_commit_pushed_over_before_its_planning_began_is_settled_as_overtaken_naming_the_newer(tmp_path: Path) -> None:
    from tests.conftest import GitRepo, git

    work = GitRepo(tmp_path / "work")
    work.write("apps/a.yaml", "kind: Deployment\nmetadata: {name: a}\nspec: {image: x:1}\n")
    work.commit("main")
    git(work.path, "checkout", "-q", "-B", "feature")
    old = work.commit("first")
    git(work.path, "checkout", "-q", "-B", "feature", "main")
    new = work.commit("second, pushed over the first")
    bare = tmp_path / "bare.git"
    git(tmp_path, "clone", "-q", "--bare", str(work.path), str(bare))

    cfg = config_mod.parse(f"name: t\nstate_dir: {tmp_path / 'state'}\nsource: {{url: {bare}}}\nhosts: [{{name: h1, url: 'unix:///nowhere.sock'}}]\n")
    p = Previews(cfg, lambda: Notifier([]), lambda sha: None)
    result = p.get(old) if p.submit(Preview("refs/heads/feature", old, "feature")) else None
    assert result is not None
    try:
        p._preview(p._waiting.popitem()[1], result)
    finally:
        p.stop()
    assert result.state == "superseded" and p.superseded == 1
    assert result.summary == f"not planned: {new[:12]}, newer on branch feature, came while it waited"
