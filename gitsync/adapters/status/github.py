"""GitHub (and GitHub Enterprise: url = https://HOST/api/v3) commit statuses."""

from __future__ import annotations

from urllib.parse import quote

from .base import TIMEOUT, CommitStatus, Provider, State


class GitHubProvider(Provider):
    kind = "github"

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "gitsync",
        }

    def _repo(self) -> str:
        owner, _, name = self.settings.repo.partition("/")
        return f"{quote(owner, safe='')}/{quote(name, safe='')}"

    def post(self, status: CommitStatus) -> None:
        body: dict[str, str] = {"state": str(status.state), "context": status.context, "description": status.description}
        if status.target_url:
            body["target_url"] = status.target_url
        r = self.session.post(
            f"{self.settings.url}/repos/{self._repo()}/statuses/{status.sha}", json=body, headers=self._headers(), timeout=TIMEOUT
        )
        self._check(r, "create status")

    def latest(self, sha: str, context: str) -> tuple[State, str] | None:
        r = self.session.get(
            f"{self.settings.url}/repos/{self._repo()}/commits/{sha}/statuses",
            params={"per_page": 100},
            headers=self._headers(),
            timeout=TIMEOUT,
        )
        self._check(r, "list statuses")
        for s in r.json():  # newest first
            if str(s.get("context", "")).lower() == context.lower():
                return State(s["state"]), s.get("description") or ""
        return None

    def user_url(self) -> str:
        return f"{self.settings.url}/user"

    def comment_urls(self, pull: int) -> tuple[str, str, str]:
        base = f"{self.settings.url}/repos/{self._repo()}/issues"
        return f"{base}/{pull}/comments", f"{base}/comments/{{id}}", "PATCH"
