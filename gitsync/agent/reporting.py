"""Reporting a sync on its commit: the providers, the state an outcome maps to, and what counts as
saying something new (heal syncs post only then)."""

from __future__ import annotations

import os
import re

from ..core.config import Config
from ..core.errors import ConfigError
from ..reconcile import Outcome
from ..adapters.status import REGISTRY, Provider, State

def gist(state: State, description: str) -> tuple[State, str]:
    """What a status says, for heal syncs to post again only when it changes: for success the state
    alone; otherwise the reason without its numbers (counts and seconds change with every restart,
    the words only when the situation does)."""
    return state, "" if state == State.SUCCESS else re.sub(r"\d+(\.\d+)?", "#", re.sub(r"\b[0-9a-f]{12,64}\b", "ID", description))


OUTCOME_STATE = {
    Outcome.SUCCESS: State.SUCCESS,
    Outcome.FAILURE: State.FAILURE,
    Outcome.ERROR: State.ERROR,
    Outcome.INTERRUPTED: State.ERROR,
}


def build_providers(cfg: Config) -> list[Provider]:
    providers: list[Provider] = []
    for s in cfg.status:
        token = os.environ.get(s.token_env, "")
        if not token:
            raise ConfigError(f"status: {s.type} for {s.repo}: ${s.token_env} is not set (it holds the API token)")
        providers.append(REGISTRY[s.type](s, token))
    return providers
