"""A loopback fake forge for commit statuses, checking every request against the forge's official API description.

- GitHub: the OpenAPI description from npm ``@octokit/openapi`` (fetched by scripts/test into
  .cache/octokit-openapi/; GITSYNC_OCTOKIT_OPENAPI may point elsewhere).
- Gitea/Forgejo: the swagger extract in ../shared/corpora/gitea/swagger-extract.
- GitLab: the request schema in ../shared/corpora/gitlab/commit-status-api.

It answers as the forge would where that matters to a client: GitHub's 422 for a
description over 140 characters, GitLab's 400 for re-posting the current state,
Gitea's ``status`` key in responses. Requests that break the description are
answered 400 and recorded in ``violations`` so a test can fail on them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jsonschema

ROOT = Path(__file__).resolve().parents[1]
OCTOKIT = Path(os.environ.get("GITSYNC_OCTOKIT_OPENAPI", ROOT / ".cache" / "octokit-openapi" / "api.github.com.json"))
CORPORA = ROOT.parent / "shared" / "corpora"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    code: int


@dataclass
class ForgeState:
    kind: str
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # sha -> newest first
    requests: list[Recorded] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    comments: dict[int, dict[int, str]] = field(default_factory=dict)  # pull request -> comment id -> body
    authors: dict[int, int] = field(default_factory=dict)  # comment id -> the user id that wrote it
    comment_seq: int = 1000
    fail_next: int = 0  # answer 500 to this many POSTs
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_comment(self, pull: int, body: str, user: int) -> int:
        """A comment someone else wrote (a user id other than any token's)."""
        with self.lock:
            self.comment_seq += 1
            self.comments.setdefault(pull, {})[self.comment_seq] = body
            self.authors[self.comment_seq] = user
            return self.comment_seq

    def posted(self, sha: str | None = None) -> list[dict[str, Any]]:
        """Statuses created, oldest first."""
        with self.lock:
            items = [x for s, v in self.statuses.items() if sha is None or s == sha for x in v]
        return sorted(items, key=lambda x: x["id"])


def _github_spec() -> tuple[dict[str, Any], dict[str, Any]]:
    if not OCTOKIT.is_file():
        raise FileNotFoundError(f"{OCTOKIT} missing: scripts/test fetches it (npm pack @octokit/openapi)")
    spec = json.loads(OCTOKIT.read_text())
    post = spec["paths"]["/repos/{owner}/{repo}/statuses/{sha}"]["post"]
    get = spec["paths"]["/repos/{owner}/{repo}/commits/{ref}/statuses"]["get"]
    return post["requestBody"]["content"]["application/json"]["schema"], get


def _gitea_schema() -> dict[str, Any]:
    doc = json.loads((CORPORA / "gitea" / "swagger-extract" / "gitea-swagger-status-extract.json").read_text())
    assert "/repos/{owner}/{repo}/statuses/{sha}" in doc["paths"] and doc["basePath"] == "/api/v1"
    schema = dict(doc["definitions"]["CreateStatusOption"])
    schema["definitions"] = doc["definitions"]
    return schema


def _gitlab_schema() -> dict[str, Any]:
    return json.loads((CORPORA / "gitlab" / "commit-status-api" / "create-commit-status.request.schema.json").read_text())


GITEA_STATES = ("pending", "success", "error", "failure", "warning")  # swagger: CommitStatusState (+ Gitea's handler check)

# Comments on pull requests. GitHub: the OpenAPI description's own request bodies. Gitea's swagger
# (CreateIssueCommentOption, EditIssueCommentOption) and GitLab's notes API (POST/PUT
# .../merge_requests/:iid/notes) take a required string `body`; no corpus holds their descriptions.
COMMENT_BODY = {"type": "object", "properties": {"body": {"type": "string"}}, "required": ["body"], "additionalProperties": False}
USER_ROUTES = {"github": "/user", "gitea": "/api/v1/user", "gitlab": "/api/v4/user"}  # the token's own user


def user_id(token: str) -> int:
    """The user a token authenticates as: the same token, the same user."""
    return 1 + int(hashlib.sha256(token.encode()).hexdigest()[:6], 16)


COMMENT_ROUTES = {
    "github": (r"^/repos/[^/]+/[^/]+/issues/(\d+)/comments$", r"^/repos/[^/]+/[^/]+/issues/comments/(\d+)$", "PATCH"),
    "gitea": (r"^/api/v1/repos/[^/]+/[^/]+/issues/(\d+)/comments$", r"^/api/v1/repos/[^/]+/[^/]+/issues/comments/(\d+)$", "PATCH"),
    "gitlab": (r"^/api/v4/projects/[^/]+/merge_requests/(\d+)/notes$", r"^/api/v4/projects/[^/]+/merge_requests/\d+/notes/(\d+)$", "PUT"),
}


def _github_comment_schemas() -> dict[str, Any]:
    spec = json.loads(OCTOKIT.read_text())
    create = spec["paths"]["/repos/{owner}/{repo}/issues/{issue_number}/comments"]["post"]
    edit = spec["paths"]["/repos/{owner}/{repo}/issues/comments/{comment_id}"]["patch"]
    return {m: op["requestBody"]["content"]["application/json"]["schema"] for m, op in (("POST", create), ("PATCH", edit))}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: ForgeState
    schema: dict[str, Any]
    list_op: dict[str, Any] | None
    comment_schemas: dict[str, Any]

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, code: int, doc: Any, body: Any = None) -> None:
        raw = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)
        with self.state.lock:
            self.state.requests.append(Recorded(self.command, self.path, dict(self.headers.items()), body, code))

    def _violation(self, why: str, body: Any = None) -> None:
        with self.state.lock:
            self.state.violations.append(f"{self.command} {self.path}: {why}")
        self._answer(400, {"message": f"fake forge: {why}"}, body)

    def _auth_ok(self) -> bool:
        h = self.headers
        if self.state.kind == "github":
            return bool(re.match(r"^(Bearer|token) \S+$", h.get("Authorization", "")))
        if self.state.kind == "gitea":
            return bool(re.match(r"^(token|Bearer) \S+$", h.get("Authorization", "")))
        return bool(h.get("PRIVATE-TOKEN") or re.match(r"^Bearer \S+$", h.get("Authorization", "")))

    def _token(self) -> str:
        h = self.headers
        return h.get("PRIVATE-TOKEN") or h.get("Authorization", "").partition(" ")[2]

    def _user(self, uid: int) -> dict[str, Any]:
        return {"id": uid, "username" if self.state.kind == "gitlab" else "login": f"user{uid}"}

    def _route(self) -> tuple[str, dict[str, str]] | None:
        path = urlsplit(self.path).path
        kind = self.state.kind
        pats = {
            "github": [("create", r"^/repos/([^/]+)/([^/]+)/statuses/([0-9a-f]{40})$"), ("list", r"^/repos/([^/]+)/([^/]+)/commits/([^/]+)/statuses$")],
            "gitea": [("create", r"^/api/v1/repos/([^/]+)/([^/]+)/statuses/([0-9a-f]{40})$"), ("list", r"^/api/v1/repos/([^/]+)/([^/]+)/statuses/([0-9a-f]{40})$")],
            "gitlab": [("create", r"^/api/v4/projects/([^/]+)/statuses/([0-9a-f]{40})$"), ("list", r"^/api/v4/projects/([^/]+)/repository/commits/([0-9a-f]{40})/statuses$")],
        }[kind]
        for name, pat in pats:
            m = re.match(pat, path)
            if m and ((name == "create") == (self.command == "POST")):
                groups = m.groups()
                return name, {"sha": groups[-1], "project": unquote(groups[0])}
        return None

    def _comment_route(self) -> bool:
        """A comment request: answered here (True), or not one (False)."""
        path = urlsplit(self.path).path
        on_pull, one, edit_method = COMMENT_ROUTES[self.state.kind]
        m_pull, m_one = re.match(on_pull, path), re.match(one, path)
        if not (m_pull and self.command in ("GET", "POST")) and not (m_one and self.command == edit_method):
            return False
        if not self._auth_ok():
            self._answer(401, {"message": "Bad credentials"})
            return True
        if self.command == "GET":
            who = "author" if self.state.kind == "gitlab" else "user"
            with self.state.lock:
                items = [
                    {"id": i, "body": b, who: self._user(self.state.authors.get(i, 0))}
                    for i, b in self.state.comments.get(int(m_pull.group(1)), {}).items()  # type: ignore[union-attr]
                ]
            self._answer(200, items)
            return True
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            body = json.loads(raw)
            jsonschema.validate(body, self.comment_schemas.get(self.command, COMMENT_BODY))
        except (ValueError, jsonschema.ValidationError) as exc:
            self._violation(f"comment body does not match the API description: {exc}")
            return True
        with self.state.lock:
            if self.command == "POST":
                self.state.comment_seq += 1  # ids are never reused, as on a forge
                ident = self.state.comment_seq
                self.state.comments.setdefault(int(m_pull.group(1)), {})[ident] = body["body"]  # type: ignore[union-attr]
                self.state.authors[ident] = user_id(self._token())
                code = 201
            else:
                ident = int(m_one.group(1))  # type: ignore[union-attr]
                where = next((c for c in self.state.comments.values() if ident in c), None)
                if where is None:
                    code = 404
                else:
                    if self.state.authors.get(ident) != user_id(self._token()):  # a maintainer's token may; the agent must not
                        self.state.violations.append(f"{self.command} {self.path}: edited a comment that user{self.state.authors.get(ident)} wrote")
                    where[ident] = body["body"]
                    code = 200
        self._answer(code, {"id": ident, "body": body["body"]} if code != 404 else {"message": "Not Found"}, body)
        return True

    def do_PATCH(self) -> None:  # noqa: N802
        if not self._comment_route():
            self._violation("no such endpoint in the API description")

    def do_PUT(self) -> None:  # noqa: N802
        if not self._comment_route():
            self._violation("no such endpoint in the API description")

    def do_GET(self) -> None:  # noqa: N802
        if self._comment_route():
            return
        if urlsplit(self.path).path == USER_ROUTES[self.state.kind]:
            if not self._auth_ok():
                return self._answer(401, {"message": "Bad credentials"})
            return self._answer(200, self._user(user_id(self._token())))
        route = self._route()
        if route is None or route[0] != "list":
            return self._violation("no such endpoint in the API description")
        if not self._auth_ok():
            return self._answer(401, {"message": "Bad credentials"})
        sha = route[1]["sha"]
        query = parse_qs(urlsplit(self.path).query)
        if self.state.kind == "github" and self.list_op is not None:
            allowed = {"per_page", "page"}
            if set(query) - allowed:
                return self._violation(f"unknown query parameters {sorted(set(query) - allowed)}")
        with self.state.lock:
            items = list(self.state.statuses.get(sha, []))
        if self.state.kind == "gitlab" and "name" in query:
            items = [x for x in items if x["name"] == query["name"][0]]
        self._answer(200, items)

    def do_POST(self) -> None:  # noqa: N802
        if self._comment_route():
            return
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        if self.state.delay:
            time.sleep(self.state.delay)
        route = self._route()
        if route is None or route[0] != "create":
            return self._violation("no such endpoint in the API description")
        if not self._auth_ok():
            return self._answer(401, {"message": "Bad credentials"})
        try:
            body = json.loads(raw)
        except ValueError:
            return self._violation("body is not JSON")
        try:
            jsonschema.validate(body, self.schema)
        except jsonschema.ValidationError as exc:
            return self._violation(f"body does not match the API description: {exc.message}", body)
        if self.state.fail_next > 0:
            self.state.fail_next -= 1
            return self._answer(500, {"message": "injected failure"}, body)
        sha = route[1]["sha"]
        kind = self.state.kind
        if kind == "github":
            if len(body.get("description") or "") > 140:
                return self._answer(422, {"message": "Validation Failed", "errors": [{"field": "description", "code": "custom", "message": "description is too long (maximum is 140 characters)"}]}, body)
        elif kind == "gitea":
            if body.get("state") not in GITEA_STATES:
                return self._answer(400, {"message": "invalid state"}, body)
        elif kind == "gitlab":
            name = body.get("name") or body.get("context") or "default"
            with self.state.lock:
                current = next((x for x in self.state.statuses.get(sha, []) if x["name"] == name), None)
            if current is not None and current["status"] == body["state"]:
                return self._answer(400, {"message": f"Cannot transition status via :{body['state']} from :{current['status']}"}, body)
        with self.state.lock:
            ident = sum(len(v) for v in self.state.statuses.values()) + 1
            if kind == "github":
                item = {"id": ident, "state": body["state"], "description": body.get("description"), "target_url": body.get("target_url"), "context": body.get("context", "default")}
            elif kind == "gitea":
                item = {"id": ident, "status": body["state"], "description": body.get("description", ""), "target_url": body.get("target_url", ""), "context": body.get("context", "")}
            else:
                item = {"id": ident, "status": body["state"], "description": body.get("description"), "target_url": body.get("target_url"), "name": body.get("name") or body.get("context") or "default", "ref": body.get("ref")}
            self.state.statuses.setdefault(sha, []).insert(0, item)
        self._answer(201, item, body)


class FakeForge:
    def __init__(self, kind: str) -> None:
        self.kind = "gitea" if kind == "forgejo" else kind
        self.state = ForgeState(self.kind)
        list_op = None
        comment_schemas: dict[str, Any] = {}
        if self.kind == "github":
            schema, list_op = _github_spec()
            comment_schemas = _github_comment_schemas()
        elif self.kind == "gitea":
            schema = _gitea_schema()
        else:
            schema = _gitlab_schema()
        handler = type("H", (_Handler,), {"state": self.state, "schema": schema, "list_op": list_op, "comment_schemas": comment_schemas})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FakeForge:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
