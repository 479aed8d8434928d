"""What asks for a sync: a cause (a request, or the agent keeping a commit's state), what it is
about, and the text the history keeps of it. The queue that turns them into syncs is the agent's
(gitsync/agent/queue.py)."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Cause(enum.StrEnum):
    """What asks for a sync."""

    # requests: someone or something asks (a schedule, a person, a forge)
    STARTUP = "startup"
    POLL = "poll"
    RELOAD = "reload"
    API = "api"
    WEBHOOK = "webhook"  # subject: the forge
    APPLY = "apply"  # a `gitsync apply` handed to the running agent
    IMAGES = "images"  # an image update committed
    CLI = "cli"  # a sync the CLI runs itself
    # heals: the agent keeping a commit's state; they change its status only on a new outcome
    EVENT = "event"  # the engines' events, debounced; subject: what they were about ("h1/web swarm/t-api")
    EVENTS = "events"  # an event stream came back (subject: the host; detail: reconnected)
    HOST = "host"  # a host's standing changed (subject: the host; detail: down, unreachable, back)
    BACKOFF = "backoff"  # a delay is over: a retry, a crash loop forgiven
    RECHECK = "recheck"  # the swarm looked at again while something is unhealthy


_CAUSES = frozenset(c.value for c in Cause)
REQUESTS = frozenset({Cause.STARTUP, Cause.POLL, Cause.RELOAD, Cause.API, Cause.WEBHOOK, Cause.APPLY, Cause.IMAGES, Cause.CLI})


@dataclass(frozen=True)
class Trigger:
    cause: Cause
    subject: str = ""
    detail: str = ""

    def __str__(self) -> str:
        return ":".join(x for x in (str(self.cause), self.subject, self.detail) if x)

    @property
    def requested(self) -> bool:
        return self.cause in REQUESTS


def text(triggers: Iterable[Trigger]) -> str:
    """As the history stores them: "event:h1/web,webhook:github"."""
    return ",".join(str(t) for t in triggers)


def parse(stored: str) -> tuple[Trigger, ...]:
    """The triggers of a stored sync. Rows written before the events' subjects were joined by spaces
    carry commas inside them ("event:h1/api,h2/web"): a part that names no cause continues the last."""
    out: list[Trigger] = []
    for part in stored.split(","):
        head, _, rest = part.partition(":")
        if head in _CAUSES:
            subject, _, detail = rest.partition(":") if head in (Cause.HOST, Cause.EVENTS) else (rest, "", "")
            out.append(Trigger(Cause(head), subject, detail))
        elif out:
            out[-1] = Trigger(out[-1].cause, f"{out[-1].subject} {part}".strip(), out[-1].detail)
    return tuple(out)


def is_heal(triggers: Iterable[Trigger]) -> bool:
    """True when none of the coalesced triggers was a request."""
    return not any(t.requested for t in triggers)
