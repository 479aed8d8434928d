"""Webhook authentication and filtering against the real formats in ../shared/corpora."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest

from gitsync.agent.previews import Preview
from gitsync.http.webhooks import decide, verify
from tests.conftest import need_corpora

SECRET = "hook-secret"


def github_headers(body: bytes, event: str = "push", secret: str = SECRET) -> dict[str, str]:
    return {"X-GitHub-Event": event, "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


def test_every_forge_vector() -> None:
    corpora = need_corpora()
    doc = json.loads((corpora / "signatures" / "forge_vectors.json").read_text())
    assert len(doc["vectors"]) >= 9
    for v in doc["vectors"]:
        body = (corpora / "signatures" / v["body_file"]).read_bytes()
        assert hashlib.sha256(body).hexdigest() == v["body_sha256"], f"{v['id']}: body bytes changed (CRLF conversion?)"
        assert verify(v["forge"], v["headers"], body, v["secret"]) is v["valid"], v["id"]


def test_every_github_hmac_vector() -> None:
    corpora = need_corpora()
    vectors = json.loads((corpora / "signatures" / "github_hmac_sha256_vectors.json").read_text())
    assert len(vectors) == 16
    for v in vectors:
        body = base64.b64decode(v["payload_utf8_b64"])
        if v["id"] == "neg-body-with-trailing-newline":
            body += b"\n"
        secret = v["secret"] + ("-wrong" if v["id"] == "neg-wrong-secret" else "")
        headers = {v["header"]: v["expected"]}
        assert verify("github", headers, body, secret) is v["valid"], v["id"]


def _payloads(corpora: Path, forge: str) -> list[Path]:
    return sorted((corpora / forge).glob("docs-examples/*.json")) + sorted((corpora / forge).glob("go-scm-fixtures/webhooks/*.json"))


@pytest.mark.parametrize("forge", ["github", "gitea", "gitlab"])
def test_every_push_payload_parses(forge: str) -> None:
    corpora = need_corpora()
    files = _payloads(corpora, forge)
    assert files
    seen_queue = 0
    for path in files:
        body = path.read_bytes()
        payload = json.loads(body)
        if forge == "gitlab":
            event = {"push": "Push Hook", "tag_push": "Tag Push Hook"}.get(payload.get("object_kind", ""), "Push Hook")
            headers = {"X-Gitlab-Event": event, "X-Gitlab-Token": SECRET}
        elif forge == "gitea":
            event = "push" if str(payload.get("ref", "")).startswith("refs/") else ("create" if "create" in path.name else "delete")
            headers = {"X-Gitea-Event": event, "X-Gitea-Signature": hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}
        else:
            event = "push" if path.name.startswith("push") else ("create" if "create" in path.name else "delete")
            headers = github_headers(body, event)
        ref = payload.get("ref", "")
        branch = ref[len("refs/heads/") :] if ref.startswith("refs/heads/") else "main"
        d = decide(forge, headers, body, SECRET, branch)
        assert d.code in (200, 202), (path.name, d)
        if ref.startswith("refs/tags/") or event in ("create", "delete"):
            assert d.code == 200 and not d.queue, path.name
        elif payload.get("after") == "0" * 40:
            assert d.code == 200 and "deleted" in d.reason, path.name
        else:
            assert d.code == 202 and d.queue and d.after == payload["after"], path.name
            seen_queue += 1
        # and the same push for another branch is ignored with a reason
        other = decide(forge, headers, body, SECRET, "some-other-branch")
        assert not other.queue and other.code == 200
    assert seen_queue >= 1


def test_decisions() -> None:
    body = json.dumps({"ref": "refs/heads/main", "after": "a" * 40}).encode()
    assert decide("github", github_headers(body), body, SECRET, "main").code == 202
    assert decide("github", github_headers(body, secret="other"), body, SECRET, "main").code == 401
    assert decide("github", {"X-GitHub-Event": "push"}, body, SECRET, "main").code == 401
    assert decide("github", github_headers(body), body, None, "main").code == 403
    ping = decide("github", github_headers(b'{"zen": "x"}', "ping"), b'{"zen": "x"}', SECRET, "main")
    assert ping.code == 200 and "pong" in ping.reason
    bad = b"{not json"
    assert decide("github", github_headers(bad), bad, SECRET, "main").code == 400
    noref = b'{"after": "x"}'
    assert decide("github", github_headers(noref), noref, SECRET, "main").code == 400
    form = b"payload=" + json.dumps({"ref": "refs/heads/main", "after": "b" * 40}).encode().replace(b"{", b"%7B").replace(b"}", b"%7D")
    h = {**github_headers(form), "Content-Type": "application/x-www-form-urlencoded"}
    assert decide("github", h, form, SECRET, "main").code == 202
    forgejo = {"X-Forgejo-Event": "push", "X-Forgejo-Signature": hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}
    assert decide("forgejo", forgejo, body, SECRET, "main").code == 202
    gitea_hub = {"X-Gitea-Event": "push", "X-Hub-Signature-256": github_headers(body)["X-Hub-Signature-256"]}
    assert decide("gitea", gitea_hub, body, SECRET, "main").code == 202
    assert decide("gitlab", {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "nope"}, body, SECRET, "main").code == 401


def test_a_signed_payload_nested_too_deeply_is_refused_not_crashed() -> None:
    body = b"[" * 5000 + b"]" * 5000
    d = decide("github", github_headers(body), body, SECRET, "main")
    assert d.code == 400 and "nested too deeply" in d.reason


SHA = "a" * 40


def signed(provider: str, body: bytes, event: str) -> dict[str, str]:
    sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    if provider == "github":
        return {"X-GitHub-Event": event, "X-Hub-Signature-256": "sha256=" + sig}
    if provider in ("gitea", "forgejo"):
        return {"X-Gitea-Event": event, "X-Gitea-Signature": sig}
    return {"X-Gitlab-Event": event, "X-Gitlab-Token": SECRET}


@pytest.mark.parametrize(
    ("provider", "event", "payload", "ref"),
    [
        ("github", "pull_request", {"action": "synchronize", "number": 7, "pull_request": {"head": {"ref": "f", "sha": SHA}, "base": {"ref": "main"}}}, "refs/pull/7/head"),
        ("gitea", "pull_request", {"action": "synchronized", "number": 7, "pull_request": {"head": {"ref": "f", "sha": SHA}, "base": {"ref": "main"}}}, "refs/pull/7/head"),
        ("forgejo", "pull_request", {"action": "opened", "number": 7, "pull_request": {"head": {"ref": "f", "sha": SHA}, "base": {"ref": "main"}}}, "refs/pull/7/head"),
        ("gitlab", "Merge Request Hook", {"object_kind": "merge_request", "object_attributes": {
            "iid": 7, "action": "update", "source_branch": "f", "target_branch": "main", "last_commit": {"id": SHA}}}, "refs/merge-requests/7/head"),
    ],
)
def test_pull_and_merge_requests_against_the_tracked_branch_are_previewed(provider: str, event: str, payload: dict, ref: str) -> None:
    body = json.dumps(payload).encode()
    d = decide(provider, signed(provider, body, event), body, SECRET, "main", previews=True)
    assert (d.code, d.queue, d.preview) == (202, False, Preview(ref, SHA, "f", 7)), d
    assert decide(provider, signed(provider, body, event), body, SECRET, "main").code == 200  # previews off: ignored
    other = json.loads(body)
    (other.get("pull_request") or other["object_attributes"]).update({"base": {"ref": "release"}} if provider != "gitlab" else {"target_branch": "release"})
    body = json.dumps(other).encode()
    assert "targets release" in decide(provider, signed(provider, body, event), body, SECRET, "main", previews=True).reason
    closed = json.loads(body)
    if provider == "gitlab":
        closed["object_attributes"]["action"] = "close"
    else:
        closed["action"] = "closed"
    body = json.dumps(closed).encode()
    d = decide(provider, signed(provider, body, event), body, SECRET, "main", previews=True)
    assert d.code == 200 and d.preview is None and "no new commit" in d.reason


def test_a_push_to_another_branch_is_previewed_and_a_deleted_branch_is_not() -> None:
    body = json.dumps({"ref": "refs/heads/feature", "after": SHA}).encode()
    d = decide("github", signed("github", body, "push"), body, SECRET, "main", previews=True)
    assert (d.code, d.queue, d.preview, d.reason) == (202, False, Preview("refs/heads/feature", SHA, "feature"), f"queued: preview of branch feature at {SHA[:12]}")
    gone = json.dumps({"ref": "refs/heads/feature", "after": "0" * 40, "deleted": True}).encode()
    assert decide("github", signed("github", gone, "push"), gone, SECRET, "main", previews=True).preview is None
    bad = json.dumps({"action": "opened", "number": "7", "pull_request": {"head": {"ref": "f", "sha": "xyz"}, "base": {"ref": "main"}}}).encode()
    assert decide("github", signed("github", bad, "pull_request"), bad, SECRET, "main", previews=True).code == 400
