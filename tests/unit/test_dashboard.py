"""The dashboard's parts that need no browser: the trigger in a word, heal passes that changed
nothing folded into the sync before them, the commit's link on the forge, the timeline."""

from __future__ import annotations

from types import SimpleNamespace

from gitsync.core import config as config_mod
from gitsync.http.dashboard import fold, forge_commit_url, timeline_svg, trigger_word
from gitsync.agent.history import SyncRecord


def rec(i: int, trigger: str, outcome: str = "success", actions: int = 0, commit: str = "c1") -> SyncRecord:
    detail = {"actions": [{}] * actions}
    return SyncRecord(i, "t", trigger, f"main@sha1:{commit}", commit, 100.0 + i, 101.0 + i, outcome, None, "m", detail)


def test_triggers_in_a_word() -> None:
    assert [trigger_word(t) for t in ("webhook:github", "event:h1/web,webhook:gitea", "poll", "api", "apply", "startup", "reload", "event:h1/web,h2/web", "backoff", "host:h2")] == [
        "push", "push", "poll", "api", "api", "startup", "reload", "heal", "heal", "heal"]


def test_heal_passes_that_changed_nothing_fold_into_the_sync_before_them() -> None:
    newest_first = [rec(6, "event:h1/web"), rec(5, "event:h1/web", actions=1), rec(4, "event:h1/web"), rec(3, "event:h1/web"), rec(2, "webhook:github"),
                    rec(1, "event:h1/web", outcome="failure", commit="c0")]
    rows = fold(newest_first)
    assert [(r.sync.id, r.folded) for r in rows] == [(5, 1), (2, 2), (1, 0)]  # a change and a failure keep their rows
    assert rows[1].folded_last == 104.0
    other_commit = fold([rec(2, "event:h1/web", commit="c2"), rec(1, "poll")])
    assert [r.sync.id for r in other_commit] == [2, 1]


def test_the_commit_on_the_forge() -> None:
    def agent(status: str) -> SimpleNamespace:
        return SimpleNamespace(config=config_mod.parse(f"status: [{status}]"))
    assert forge_commit_url(agent("{type: github, repo: acme/deploy, token_env: T}"), "abc") == "https://github.com/acme/deploy/commit/abc"  # type: ignore[arg-type]
    assert forge_commit_url(agent("{type: github, url: 'https://ghe.example.com/api/v3', repo: a/b, token_env: T}"), "abc") == "https://ghe.example.com/a/b/commit/abc"  # type: ignore[arg-type]
    assert forge_commit_url(agent("{type: gitea, url: 'https://git.example.com', repo: a/b, token_env: T}"), "abc") == "https://git.example.com/a/b/commit/abc"  # type: ignore[arg-type]
    assert forge_commit_url(agent("{type: gitlab, url: 'https://gl.example.com', repo: g/p, token_env: T}"), "abc") == "https://gl.example.com/g/p/-/commit/abc"  # type: ignore[arg-type]
    assert forge_commit_url(agent("{type: gitlab, url: 'https://gl.example.com', repo: '42', token_env: T}"), "abc") is None  # type: ignore[arg-type]


def test_the_timeline_has_a_bar_per_sync_coloured_by_result() -> None:
    svg = timeline_svg(fold([rec(3, "poll", outcome="failure"), rec(2, "event:h1/web"), rec(1, "startup")]))
    assert svg.startswith("<svg") and svg.count("<rect") == 2 and 'class="failure"' in svg and "then 1 heal pass(es)" in svg
    assert timeline_svg([]) == ""
