"""A plan in words: per host, what would be created (+), replaced (~), started (>), removed (-) or
reloaded (*) and why, as `gitsync plan` prints it and a preview's page shows it; and a one-line
summary for a commit status."""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Sequence
from typing import TextIO

from .actions import ActionKind, ActionResult, Plan, Waiting
from .config import HostSettings
from .models import Deployment, Service
from .units import format_duration


def render_plan(plan: Plan, revision: str, hosts_labels: dict[str, str], out: TextIO) -> None:
    print(f"revision {revision}", file=out)
    if plan.cluster:  # an engine that schedules itself: the plan speaks in its services
        _render_cluster(plan, out)
    for host in () if plan.cluster else plan.hosts:
        actions = plan.for_host(host)
        tag = f" ({hosts_labels[host]})" if hosts_labels.get(host) else ""
        if host in plan.unreachable:
            print(f"host {host}{tag}: UNREACHABLE: nothing changes there (its replicas go where the other hosts' changes say)", file=out)
            continue
        if not actions:
            print(f"host {host}{tag}: no changes", file=out)
            continue
        print(f"host {host}{tag}:", file=out)
        for a in actions:
            name = a.container_name or "?"
            what = f"Service {a.deployment}: " if a.object_kind == Service.KIND and a.kind == ActionKind.RELOAD and a.deployment != "proxy" else ""
            print(f"  {a.kind.symbol} {name:<32} {a.kind:<8} {what}{a.reason}", file=out)
    if plan.noops:
        print("up to date:", file=out)
        for noop in plan.noops:
            print(f"  = {noop}", file=out)
    for problem in plan.problems:
        print(f"problem: {problem}", file=out)
    for warning in plan.warnings:
        print(f"warning: {warning}", file=out)
    c = plan.counts()
    if plan.in_sync:
        print("in sync: nothing to do", file=out)
    elif not plan.actions:
        print(f"not in sync: {len(plan.problems)} problem(s) above; nothing to change until they are solved", file=out)
    else:
        reload = f", {c['reload']} to reload" if c["reload"] else ""
        if plan.cluster:
            print(f"plan: {c['create']} to create, {c['update']} to update, {c['remove']} to remove", file=out)
        else:
            print(f"plan: {c['create']} to create, {c['replace']} to replace, {c['start']} to start, {c['remove']} to remove{reload}", file=out)


def _render_cluster(plan: Plan, out: TextIO) -> None:
    if plan.unreachable:
        print("swarm: UNREACHABLE: no manager answers; nothing changes", file=out)
        return
    print("swarm:" if plan.actions else "swarm: no changes", file=out)
    for a in plan.actions:
        print(f"  {a.kind.symbol} {a.deployment:<24} {a.kind:<8} {a.reason}", file=out)


def progress_line(item: ActionResult | Waiting) -> str:
    """One line of `apply`'s progress: a change done, or what one in hand waits for."""
    if isinstance(item, Waiting):
        up_to = f"{round(item.up_to, 1):g}s" if item.up_to < 60 else format_duration(item.up_to)
        return f"  … {item.host}/{item.subject}: {item.what} (up to {up_to})"
    a = item.action
    mark = "ok" if item.ok else ("skipped" if item.skipped else "FAILED")
    return f"  {a.kind.symbol} {a.host}/{a.container_name}: {a.kind} {mark} ({format_duration(item.seconds)}){'' if item.ok else ': ' + item.message}"


def host_labels(hosts: Sequence[HostSettings]) -> dict[str, str]:
    """Each host's labels as `plan` shows them beside its name: role=web,zone=a."""
    return {h.name: ",".join(f"{k}={v}" for k, v in h.labels) for h in hosts}


def plan_text(plan: Plan, revision: str, hosts_labels: dict[str, str]) -> str:
    out = io.StringIO()
    render_plan(plan, revision, hosts_labels, out)
    return out.getvalue()


def summary(plan: Plan) -> str:
    """``would create 2, replace 3 (web: image), remove 1; 4 in sync``, or ``in sync: nothing to change``."""
    c = plan.counts()
    changed: dict[str, set[str]] = defaultdict(set)
    for a in plan.actions:
        if a.object_kind == Deployment.KIND and (a.kind == ActionKind.REPLACE or (a.kind == ActionKind.UPDATE and a.reason.startswith("changed: "))):
            fields = a.reason.removeprefix("changed: ").split(" (")[0]
            changed[a.deployment].update(f.split(" ")[0] for f in fields.split(", ") if f)
    parts = []
    for kind in ("create", "replace", "update", "start", "remove", "reload"):
        if c.get(kind):
            detail = "; ".join(f"{d}: {', '.join(sorted(f))}" for d, f in sorted(changed.items())) if kind in ("replace", "update") and changed else ""
            parts.append(f"{kind} {c[kind]}" + (f" ({detail})" if detail else ""))
    in_sync = f"{len(plan.noops)} in sync" if plan.noops else ""
    if not parts:
        return "in sync: nothing to change" if plan.in_sync else f"not in sync: {plan.problems[0]}" + (f" (and {len(plan.problems) - 1} more)" if len(plan.problems) > 1 else "")
    return "would " + ", ".join(parts) + (f"; {in_sync}" if in_sync else "")
