"""Push webhooks: authenticate over the raw body, filter, and say whether to nudge the sync queue.

Pure: takes headers and the exact body bytes, returns a :class:`Decision`. The
HMAC is computed over the bytes as received, never over re-serialised JSON,
and compared in constant time. A webhook never carries what to apply: the
agent fetches the commit itself.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs

from ..agent.previews import Preview

PROVIDERS = ("github", "gitea", "forgejo", "gitlab")
ZERO_SHA = "0" * 40


@dataclass(frozen=True)
class Decision:
    code: int  # 202 queued, 200 ignored, 401 unauthenticated, 400 malformed, 403 disabled
    reason: str
    queue: bool = False
    ref: str | None = None
    after: str | None = None
    preview: Preview | None = None


def _h(headers: Mapping[str, str], name: str) -> str | None:
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return None


def _hex_hmac(secret: str, body: bytes, algo: str = "sha256") -> str:
    return hmac.new(secret.encode(), body, algo).hexdigest()


def _prefixed_ok(header: str | None, secret: str, body: bytes, prefix: str, algo: str) -> bool:
    if header is None:
        return False
    expected = f"{prefix}{_hex_hmac(secret, body, algo)}"
    return hmac.compare_digest(header.strip().encode(), expected.encode())


def _bare_ok(header: str | None, secret: str, body: bytes) -> bool:
    if header is None or not header.strip():
        return False
    return hmac.compare_digest(header.strip().encode(), _hex_hmac(secret, body).encode())


def verify(provider: str, headers: Mapping[str, str], body: bytes, secret: str) -> bool:
    """True when the request proves knowledge of the secret, per the forge's scheme."""
    if provider == "github":
        sig256 = _h(headers, "X-Hub-Signature-256")
        if sig256 is not None:
            return _prefixed_ok(sig256, secret, body, "sha256=", "sha256")
        # Legacy: HMAC-SHA1 only (old GitHub Enterprise); HMAC-SHA1 is still a sound MAC.
        return _prefixed_ok(_h(headers, "X-Hub-Signature"), secret, body, "sha1=", "sha1")
    if provider in ("gitea", "forgejo"):
        names = ["X-Forgejo-Signature", "X-Gitea-Signature"] if provider == "forgejo" else ["X-Gitea-Signature", "X-Gogs-Signature"]
        for name in names:
            value = _h(headers, name)
            if value is not None and value.strip():
                return _bare_ok(value, secret, body)
        return _prefixed_ok(_h(headers, "X-Hub-Signature-256"), secret, body, "sha256=", "sha256")
    if provider == "gitlab":
        token = _h(headers, "X-Gitlab-Token")
        if not token:
            return False
        return hmac.compare_digest(token.encode(), secret.encode())
    return False


def _event(provider: str, headers: Mapping[str, str]) -> str:
    if provider == "github":
        return (_h(headers, "X-GitHub-Event") or "").lower()
    if provider in ("gitea", "forgejo"):
        value = _h(headers, "X-Forgejo-Event") or _h(headers, "X-Gitea-Event") or _h(headers, "X-Gogs-Event") or _h(headers, "X-GitHub-Event")
        return (value or "").lower()
    value = (_h(headers, "X-Gitlab-Event") or "").lower()
    return {"push hook": "push", "tag push hook": "tag_push", "system hook": "system", "merge request hook": "pull_request"}.get(value, value)


def _payload(headers: Mapping[str, str], body: bytes) -> object:
    ctype = (_h(headers, "Content-Type") or "application/json").split(";")[0].strip().lower()
    text = body.decode("utf-8")
    if ctype == "application/x-www-form-urlencoded":
        fields = parse_qs(text)
        if "payload" not in fields:
            raise ValueError("form body without a payload field")
        text = fields["payload"][0]
    return json.loads(text)


def _is_sha(value: object) -> bool:
    return isinstance(value, str) and len(value) in (40, 64) and all(c in "0123456789abcdef" for c in value)


# The pull/merge request actions that bring a new head commit, per forge.
PULL_ACTIONS = {"github": ("opened", "synchronize", "reopened"), "gitea": ("opened", "synchronized", "reopened"), "gitlab": ("open", "update", "reopen")}


def _pull_request(provider: str, payload: dict[str, object], branch: str) -> Decision:
    """A pull or merge request event: a preview of its head commit when it targets the tracked branch."""
    if provider == "gitlab":
        attrs = payload.get("object_attributes")
        if not isinstance(attrs, dict):
            return Decision(400, "malformed payload: no object_attributes")
        action, number, base, head = attrs.get("action"), attrs.get("iid"), attrs.get("target_branch"), attrs.get("source_branch")
        last = attrs.get("last_commit")
        sha = last.get("id") if isinstance(last, dict) else None
        ref = f"refs/merge-requests/{number}/head"
    else:
        pr = payload.get("pull_request")
        if not isinstance(pr, dict) or not isinstance(pr.get("head"), dict) or not isinstance(pr.get("base"), dict):
            return Decision(400, "malformed payload: no pull_request head and base")
        action, number = payload.get("action"), payload.get("number", pr.get("number"))
        base, head, sha = pr["base"].get("ref"), pr["head"].get("ref"), pr["head"].get("sha")
        ref = f"refs/pull/{number}/head"
    if action not in PULL_ACTIONS["gitea" if provider == "forgejo" else provider]:
        return Decision(200, f"ignored: pull request {action or 'event'}: no new commit")
    if isinstance(number, bool) or not isinstance(number, int) or not _is_sha(sha) or not isinstance(head, str) or not head:
        return Decision(400, "malformed payload: pull request without number, head branch or head commit")
    if base != branch:
        return Decision(200, f"ignored: pull request #{number} targets {base}, this agent follows {branch}")
    return Decision(202, f"queued: preview of pull request #{number} at {str(sha)[:12]}", preview=Preview(ref, str(sha), head, number))


def decide(provider: str, headers: Mapping[str, str], body: bytes, secret: str | None, branch: str, previews: bool = False) -> Decision:
    """What to do with a webhook. `previews`: plan other branches' pushes and pull requests too."""
    if provider not in PROVIDERS:
        return Decision(404, f"unknown provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    if not secret:
        return Decision(403, "webhooks are disabled: no secret is configured (server.webhook_secret_env)")
    if not verify(provider, headers, body, secret):
        return Decision(401, "bad or missing signature")
    event = _event(provider, headers)
    if event == "ping":
        return Decision(200, "pong: the secret matches")
    if event in ("tag_push", "create", "delete"):
        return Decision(200, f"ignored: {event} event")
    if event not in ("push", "pull_request") or (event == "pull_request" and not previews):
        return Decision(200, f"ignored: {event or 'unnamed'} event is not a push")
    try:
        payload = _payload(headers, body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        return Decision(400, f"malformed payload: {'nested too deeply' if isinstance(exc, RecursionError) else type(exc).__name__}")
    if not isinstance(payload, dict):
        return Decision(400, "malformed payload: not a JSON object")
    if event == "pull_request":
        return _pull_request(provider, payload, branch)
    ref = payload.get("ref")
    after = payload.get("after")
    if not isinstance(ref, str) or not ref:
        return Decision(400, "malformed payload: no ref")
    if ref.startswith("refs/tags/"):
        return Decision(200, f"ignored: tag {ref[10:]}", ref=ref)
    if not ref.startswith("refs/heads/"):
        return Decision(200, f"ignored: {ref} is not a branch", ref=ref)
    pushed = ref[len("refs/heads/") :]
    if after == ZERO_SHA or payload.get("deleted") is True:
        return Decision(200, f"ignored: branch {pushed} was deleted", ref=ref)
    if pushed != branch and previews and _is_sha(after):
        return Decision(202, f"queued: preview of branch {pushed} at {str(after)[:12]}", ref=ref, after=str(after), preview=Preview(ref, str(after), pushed))
    if pushed != branch:
        return Decision(200, f"ignored: branch {pushed}, this agent follows {branch}", ref=ref)
    if after is not None and (not isinstance(after, str) or len(after) not in (40, 64)):
        return Decision(400, "malformed payload: after is not a commit id")
    return Decision(202, f"queued: push to {pushed}", queue=True, ref=ref, after=after)
