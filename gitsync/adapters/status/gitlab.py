"""GitLab commit statuses (``/api/v4/projects/:id/statuses/:sha``)."""

from __future__ import annotations

from urllib.parse import quote

from .base import TIMEOUT, CommitStatus, Provider, State

# GitLab's own vocabulary: no "failure"/"error", both are "failed".
TO_GITLAB = {State.PENDING: "pending", State.SUCCESS: "success", State.FAILURE: "failed", State.ERROR: "failed"}
FROM_GITLAB = {"pending": State.PENDING, "running": State.PENDING, "success": State.SUCCESS, "failed": State.FAILURE, "canceled": State.ERROR}


class GitLabProvider(Provider):
    kind = "gitlab"

    def _headers(self) -> dict[str, str]:
        return {"PRIVATE-TOKEN": self._token, "User-Agent": "gitsync"}

    def _base(self) -> str:
        url = self.settings.url
        api = url if url.endswith("/api/v4") else f"{url}/api/v4"
        return f"{api}/projects/{quote(self.settings.repo, safe='')}"

    def post(self, status: CommitStatus) -> None:
        body: dict[str, str] = {"state": TO_GITLAB[status.state], "name": status.context, "description": status.description}
        if status.target_url:
            body["target_url"] = status.target_url
        if status.ref:
            body["ref"] = status.ref
        r = self.session.post(f"{self._base()}/statuses/{status.sha}", json=body, headers=self._headers(), timeout=TIMEOUT)
        if r.status_code == 400 and "Cannot transition status" in r.text:
            return  # GitLab refuses to re-post the current state: it is already there
        self._check(r, "create status")

    def latest(self, sha: str, context: str) -> tuple[State, str] | None:
        r = self.session.get(
            f"{self._base()}/repository/commits/{sha}/statuses",
            params={"name": context, "order_by": "id", "sort": "desc", "all": "true"},
            headers=self._headers(),
            timeout=TIMEOUT,
        )
        self._check(r, "list statuses")
        for s in r.json():
            if s.get("name") == context:
                state = FROM_GITLAB.get(s.get("status", ""))
                return (state, s.get("description") or "") if state else None
        return None

    def user_url(self) -> str:
        return self._base().split("/projects/")[0] + "/user"

    def comment_urls(self, pull: int) -> tuple[str, str, str]:
        notes = f"{self._base()}/merge_requests/{pull}/notes"  # a merge request's comments are its notes
        return notes, f"{notes}/{{id}}", "PUT"
