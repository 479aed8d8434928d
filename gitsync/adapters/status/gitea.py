"""Gitea and Forgejo commit statuses (same API: /api/v1)."""

from __future__ import annotations

from urllib.parse import quote

from .base import TIMEOUT, CommitStatus, Provider, State


class GiteaProvider(Provider):
    kind = "gitea"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self._token}", "Accept": "application/json", "User-Agent": "gitsync"}

    def _base(self) -> str:
        owner, _, name = self.settings.repo.partition("/")
        url = self.settings.url
        api = url if url.endswith("/api/v1") else f"{url}/api/v1"
        return f"{api}/repos/{quote(owner, safe='')}/{quote(name, safe='')}"

    def post(self, status: CommitStatus) -> None:
        body: dict[str, str] = {"state": str(status.state), "context": status.context, "description": status.description}
        if status.target_url:
            body["target_url"] = status.target_url
        r = self.session.post(f"{self._base()}/statuses/{status.sha}", json=body, headers=self._headers(), timeout=TIMEOUT)
        self._check(r, "create status")

    def latest(self, sha: str, context: str) -> tuple[State, str] | None:
        r = self.session.get(
            f"{self._base()}/statuses/{sha}", params={"sort": "recentupdate", "limit": "50"}, headers=self._headers(), timeout=TIMEOUT
        )
        self._check(r, "list statuses")
        for s in r.json():
            if s.get("context") == context:
                state = s.get("status") or s.get("state")  # responses say "status"
                try:
                    return State(state), s.get("description") or ""
                except ValueError:
                    return None
        return None

    def user_url(self) -> str:
        return self._base().split("/repos/")[0] + "/user"

    def comment_urls(self, pull: int) -> tuple[str, str, str]:
        return f"{self._base()}/issues/{pull}/comments", f"{self._base()}/issues/comments/{{id}}", "PATCH"
