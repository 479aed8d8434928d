"""Commit statuses: one small interface, one module per forge, a registry by type."""

from __future__ import annotations

from .base import CommitStatus, Notifier, Provider, State, StatusError
from .gitea import GiteaProvider
from .github import GitHubProvider
from .gitlab import GitLabProvider

REGISTRY: dict[str, type[Provider]] = {
    "github": GitHubProvider,
    "gitea": GiteaProvider,
    "forgejo": GiteaProvider,
    "gitlab": GitLabProvider,
}

__all__ = ["REGISTRY", "CommitStatus", "Notifier", "Provider", "State", "StatusError"]
