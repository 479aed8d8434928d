"""Commit statuses through a fake forge that checks each request against the forge's API description."""

from __future__ import annotations

import logging
import socket

import pytest

from gitsync.core.config import StatusSettings
from gitsync.adapters.status import REGISTRY, CommitStatus, Notifier, State
from tests.conftest import IN_CI, need_corpora
from tests.fakeforge import OCTOKIT, FakeForge

SHA = "a" * 40
TOKEN = "tok-123-secret"
REPOS = {"github": "acme/deploy", "gitea": "acme/deploy", "forgejo": "acme/deploy", "gitlab": "acme/platform/deploy"}


def _need(kind: str) -> None:
    if kind == "github" and not OCTOKIT.is_file():
        if IN_CI:
            pytest.fail(f"{OCTOKIT} missing; scripts/test fetches it")
        pytest.skip(f"{OCTOKIT} missing: run scripts/test once (it fetches @octokit/openapi)")
    if kind != "github":
        need_corpora()


def notifier(kind: str, forge: FakeForge) -> Notifier:
    settings = StatusSettings(kind, forge.url, REPOS[kind], "TOKEN")
    return Notifier([REGISTRY[kind](settings, TOKEN)], backoff=0.01)


def state_of(kind: str, item: dict) -> str:
    return item["state"] if kind == "github" else item["status"]


@pytest.mark.parametrize("kind", ["github", "gitea", "forgejo", "gitlab"])
def test_pending_then_success_on_the_exact_commit(kind: str) -> None:
    _need(kind)
    with FakeForge(kind) as forge:
        n = notifier(kind, forge)
        n.send(CommitStatus(SHA, State.PENDING, "gitsync/prod", "syncing aaaaaaa", "https://gitsync.example/syncs/1", "main"))
        n.send(CommitStatus(SHA, State.SUCCESS, "gitsync/prod", "3/3 deployments converged in 4.2s", "https://gitsync.example/syncs/1", "main"))
        assert n.flush(10)
        n.close()
        assert forge.state.violations == []
        posted = forge.state.posted(SHA)
        assert [state_of(forge.kind, p) for p in posted] == ["pending", "success"]
        assert posted[-1]["description"] == "3/3 deployments converged in 4.2s"
        assert posted[-1]["target_url"] == "https://gitsync.example/syncs/1"
        assert all(TOKEN in str(r.headers) for r in forge.state.requests)  # sent as a header, each time


@pytest.mark.parametrize("kind", ["github", "gitea", "gitlab"])
def test_no_duplicate_of_the_newest_status(kind: str) -> None:
    _need(kind)
    with FakeForge(kind) as forge:
        s = CommitStatus(SHA, State.FAILURE, "gitsync/prod", "apps/web.yaml:12: spec.replicas: must be >= 0")
        first = notifier(kind, forge)
        first.send(s)
        first.send(s)
        assert first.flush(10)
        first.close()
        # a restarted agent asks the forge for the newest status before posting
        second = notifier(kind, forge)
        second.send(s)
        assert second.flush(10)
        second.close()
        assert len(forge.state.posted(SHA)) == 1
        assert forge.state.violations == []


def test_long_description_is_shortened_to_what_github_accepts() -> None:
    _need("github")
    with FakeForge("github") as forge:
        n = notifier("github", forge)
        n.send(CommitStatus(SHA, State.FAILURE, "gitsync/prod", "web: " + "x" * 300))
        assert n.flush(10)
        n.close()
        (item,) = forge.state.posted(SHA)
        assert len(item["description"]) == 140 and item["description"].endswith("…")
        assert not any(r.code == 422 for r in forge.state.requests)


def test_github_refuses_an_overlong_description_as_the_real_one_does() -> None:
    _need("github")
    import requests

    with FakeForge("github") as forge:
        r = requests.post(f"{forge.url}/repos/a/b/statuses/{SHA}", json={"state": "success", "description": "x" * 141}, headers={"Authorization": "Bearer t"}, timeout=5)
        assert r.status_code == 422
        r = requests.post(f"{forge.url}/repos/a/b/statuses/{SHA}", json={"state": "done"}, headers={"Authorization": "Bearer t"}, timeout=5)
        assert r.status_code == 400 and forge.state.violations  # not in the API description's enum


def test_gitlab_states_are_mapped_and_reposting_is_harmless() -> None:
    _need("gitlab")
    with FakeForge("gitlab") as forge:
        n = notifier("gitlab", forge)
        n.send(CommitStatus(SHA, State.ERROR, "gitsync/prod", "host web-2 unreachable"))
        n.send(CommitStatus(SHA, State.FAILURE, "gitsync/prod", "web: apply failed"))  # failed again: GitLab answers 400
        assert n.flush(10)
        n.close()
        assert [p["status"] for p in forge.state.posted(SHA)] == ["failed"]
        assert any(r.code == 400 and "Cannot transition" in str(r.body) or r.code == 400 for r in forge.state.requests)
        assert n.failed == 0 and forge.state.violations == []
        assert forge.state.requests[-1].path.startswith("/api/v4/projects/acme%2Fplatform%2Fdeploy/statuses/")


def test_retries_with_backoff_then_succeeds() -> None:
    _need("gitea")
    with FakeForge("gitea") as forge:
        forge.state.fail_next = 3
        n = notifier("gitea", forge)
        n.send(CommitStatus(SHA, State.SUCCESS, "gitsync/prod", "ok"))
        assert n.flush(10)
        n.close()
        assert len(forge.state.posted(SHA)) == 1 and n.posted == 1


def test_a_forge_that_is_down_never_raises_and_never_logs_the_token(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = StatusSettings("github", f"http://127.0.0.1:{port}", "a/b", "TOKEN")
    n = Notifier([REGISTRY["github"](settings, TOKEN)], backoff=0.01)
    with caplog.at_level(logging.DEBUG):
        n.send(CommitStatus(SHA, State.SUCCESS, "gitsync/prod", "ok"))
        assert n.flush(10)
    n.close()
    assert n.failed == 1
    assert "after 4 tries" in caplog.text
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(
    "echo",
    [
        "bad credentials: {t}",
        "token={q}",  # URL-encoded
        '{{"message": "no", "token": "{j}"}}',  # JSON-escaped
        "Authorization: Basic {b}",  # an echoed Basic header
        "the token starts {t12} and is wrong",  # a part of it
        "x" * 190 + "{t}",  # cut by the 200-character limit
    ],
)
def test_a_forge_token_is_masked_in_every_spelling_a_forge_may_echo(echo: str) -> None:
    import base64
    import json
    import urllib.parse

    from gitsync.adapters.status.base import redacted

    token = "ghp_Ab/+=c9\"Zz0123456789xyz"
    text = echo.format(
        t=token, q=urllib.parse.quote(token, safe=""), j=json.dumps(token)[1:-1], b=base64.b64encode(f"x-access-token:{token}".encode()).decode(), t12=token[:12]
    )
    out = redacted(text, token)[:200]
    assert "***" in out
    for i in range(len(token) - 7):
        assert token[i : i + 8] not in out, out
    assert base64.b64encode(f"x-access-token:{token}".encode()).decode()[8:16] not in out
    assert redacted("nothing secret here", token) == "nothing secret here"


@pytest.mark.parametrize("kind", ["github", "gitea", "forgejo", "gitlab"])
def test_one_comment_per_pull_request_edited_in_place(kind: str) -> None:
    _need(kind)
    with FakeForge(kind) as forge:
        provider = REGISTRY[kind](StatusSettings(kind, forge.url, REPOS[kind], "TOKEN"), TOKEN)
        marker = "<!-- gitsync:prod:plan -->"
        forge.state.comments[7] = {100: "LGTM"}  # someone else's comment stays as it is
        forged = forge.state.add_comment(7, f"click [here](https://evil.example)\n{marker}", user=666)  # a stranger copied the marker first
        first = provider.upsert_comment(7, marker, f"plan of aaaa\n{marker}")
        assert first != forged and forge.state.comments[7].pop(forged).startswith("click")  # never taken for the agent's own
        again = provider.upsert_comment(7, marker, f"plan of bbbb\n{marker}")
        assert first == again and forge.state.comments[7] == {100: "LGTM", first: f"plan of bbbb\n{marker}"}
        fresh = REGISTRY[kind](StatusSettings(kind, forge.url, REPOS[kind], "TOKEN"), TOKEN)  # a restarted agent finds it by its marker
        assert fresh.upsert_comment(7, marker, f"plan of cccc\n{marker}") == first and len(forge.state.comments[7]) == 2
        del forge.state.comments[7][first]  # deleted by a person: made again, once
        made = fresh.upsert_comment(7, marker, f"plan of dddd\n{marker}")
        assert made != first and forge.state.comments[7][made] == f"plan of dddd\n{marker}" and len(forge.state.comments[7]) == 2
        assert forge.state.violations == []
