"""The agent's pages: the dashboard people look at first, a page per sync and per preview.

Plain HTML with inline CSS and SVG: no scripts, no external assets (the pages' Content-Security-
Policy allows nothing else). What a person wants at a glance comes first: the last sync, a
timeline of recent ones, each deployment's replicas per host as a grid; the history folds the heal
passes that changed nothing into the sync before them.
"""

from __future__ import annotations

import html
import math
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..agent.history import SyncRecord
from ..agent.previews import PreviewResult
from ..core.triggers import Cause, is_heal, parse
from ..core.units import format_duration

if TYPE_CHECKING:
    from ..agent.agent import Agent

CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:14px 28px;display:flex;gap:24px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:20px;margin:0}header a{color:#fff;text-decoration:none}header .meta{color:#c9d1dc;font-size:14px}
main{padding:20px 28px;max-width:1200px}
section{background:#fff;border:1px solid #e1e5eb;border-radius:8px;padding:14px 18px;margin-bottom:18px}
h2{font-size:16px;margin:0 0 10px}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #eef0f3;vertical-align:top}
th{font-weight:600;color:#546070;font-size:13px}
code{font:13px ui-monospace,SFMono-Regular,Menlo,monospace;background:#f1f3f6;padding:1px 4px;border-radius:4px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.success,.Healthy,.up,.ready{background:#dcf5e3;color:#17663a}.failure,.Degraded,.Missing,.down{background:#fde2e1;color:#a1261e}
.error,.interrupted{background:#fff0d6;color:#8a5300}.pending,.running,.Progressing,.starting,.draining{background:#e1ecff;color:#1f4fa3}
.muted{color:#6b7686}.problems li{margin:2px 0}
.scroll{overflow-x:auto}td.msg{overflow-wrap:anywhere;min-width:16em}td.when{white-space:nowrap}
.subject{font-weight:600}.folded{color:#6b7686;font-size:13px}pre{white-space:pre-wrap;overflow-wrap:anywhere;font:13px ui-monospace,monospace}
.grid{display:flex;gap:3px;flex-wrap:wrap}.cell{width:14px;height:14px;border-radius:3px;display:inline-block}
.c-ok{background:#2f9e5a}.c-starting{background:#6b9be0}.c-bad{background:#d9453a}.c-stopped{background:#b9c0cb}
.timeline rect.success{fill:#2f9e5a}.timeline rect.failure{fill:#d9453a}.timeline rect.error,.timeline rect.interrupted{fill:#e0a030}
.timeline rect.running{fill:#6b9be0}.superseded{background:#eef0f3;color:#6b7686}
"""


def _page(title: str, body: str, agent_name: str = "", revision: str | None = None, refresh: bool = False) -> str:
    meta = f'<span class="meta">agent <b>{html.escape(agent_name)}</b></span>' if agent_name else ""
    if revision:
        meta += f'<span class="meta">revision <code style="color:#1d2430">{html.escape(revision)}</code></span>'
    meta += '<span class="meta"><a href="/plans">previews</a></span>'
    again = '<meta http-equiv="refresh" content="2">' if refresh else ""  # while a sync runs, the page follows it
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f'<meta name=viewport content="width=device-width,initial-scale=1">{again}'
        f"<title>{html.escape(title)} · gitsync</title><style>{CSS}</style></head><body>"
        f'<header><h1><a href="/">gitsync</a></h1>{meta}</header><main>{body}</main></body></html>'
    )


def not_found(what: str) -> str:
    return _page("Not found", f"<p>{html.escape(what)}</p>")


def _badge(text: str) -> str:
    return f'<span class="badge {html.escape(text)}">{html.escape(text)}</span>'


def _when(ts: float | None) -> str:
    if not ts:
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


# -- what the pages are made of ---------------------------------------------------------------
_WORDS = ((Cause.WEBHOOK, "push"), (Cause.API, "api"), (Cause.APPLY, "api"), (Cause.POLL, "poll"), (Cause.RELOAD, "reload"),
          (Cause.STARTUP, "startup"), (Cause.IMAGES, "images"), (Cause.CLI, "cli"))


def trigger_word(stored: str) -> str:
    """What started a sync, as a word: push, api, poll, reload, startup, or heal (the agent keeping
    a commit's state after Docker events, a backoff timer or a host coming and going)."""
    causes = {t.cause for t in parse(stored)}
    return next((word for cause, word in _WORDS if cause in causes), "heal")


def _changed_nothing(r: SyncRecord) -> bool:
    return r.outcome == "success" and not (r.detail.get("actions") or []) and is_heal(parse(r.trigger))


@dataclass
class Row:
    """A sync as the history table shows it, with the heal passes after it that changed nothing."""

    sync: SyncRecord
    folded: int = 0
    folded_last: float | None = None


def fold(records: list[SyncRecord]) -> list[Row]:
    """Newest first in, newest first out: a heal pass that changed nothing, of the same commit as the
    sync before it, becomes a count on that sync's row. Every sync that changed something or failed keeps its row."""
    rows: list[Row] = []
    for r in reversed(records):  # oldest first
        if rows and _changed_nothing(r) and rows[-1].sync.commit == r.commit and rows[-1].sync.outcome == "success":
            rows[-1].folded += 1
            rows[-1].folded_last = r.started
            continue
        rows.append(Row(r))
    return list(reversed(rows))


def forge_commit_url(agent: Agent, sha: str | None) -> str | None:
    """The commit on the forge the first status provider posts to, when there is one."""
    if not sha or not agent.config.status:
        return None
    s = agent.config.status[0]
    base = s.url.rstrip("/")
    if s.type == "github":
        web = "https://github.com" if base == "https://api.github.com" else re.sub(r"/api/v3$", "", base)
        return f"{web}/{s.repo}/commit/{sha}"
    if s.type in ("gitea", "forgejo"):
        return f"{base}/{s.repo}/commit/{sha}"
    if s.type == "gitlab" and not s.repo.isdigit():
        return f"{base}/{s.repo}/-/commit/{sha}"
    return None


def _commit_cell(agent: Agent, sha: str | None, about: dict[str, Any], revision: str | None) -> str:
    short = html.escape((sha or revision or "–")[:12])
    url = forge_commit_url(agent, sha)
    ref = f'<a href="{html.escape(url)}"><code>{short}</code></a>' if url else f"<code>{short}</code>"
    if not about:
        return ref
    who = html.escape(about.get("author") or "")
    return f'<span class=subject>{html.escape(about.get("subject") or "")}</span><br><span class=muted>{ref} {who}, {_when(about.get("time"))}</span>'


def _about_row(sha: str | None, about: dict[str, Any], agent: Agent) -> str:
    return f"<tr><th>commit</th><td>{_commit_cell(agent, sha, about, None)}</td></tr>"


def timeline_svg(rows: list[Row], width: int = 720, height: int = 64) -> str:
    """The recent syncs, oldest left: a bar each, its height the duration (log scale), its colour the result."""
    shown = list(reversed(rows[:48]))
    if not shown:
        return ""
    step = min(width / max(len(shown), 1), 18.0)  # a few syncs are a few bars, not one wide block
    longest = max((r.sync.seconds or 0.0) for r in shown) or 1.0
    bars = []
    for i, row in enumerate(shown):
        secs = row.sync.seconds
        frac = 0.15 + 0.85 * (math.log1p(secs or 0.0) / math.log1p(longest)) if secs is not None else 1.0
        h = max(4.0, frac * (height - 4))
        label = f"#{row.sync.id} {trigger_word(row.sync.trigger)} {row.sync.outcome} in {format_duration(secs) if secs is not None else 'running'}"
        if row.folded:
            label += f", then {row.folded} heal pass(es) with nothing to change"
        bars.append(
            f'<a href="/syncs/{row.sync.id}"><rect class="{html.escape(row.sync.outcome)}" x="{i * step + 1:.1f}" y="{height - h:.1f}" '
            f'width="{max(step - 2, 2):.1f}" height="{h:.1f}" rx="2"><title>{html.escape(label)}</title></rect></a>'
        )
    return (
        f'<svg class=timeline role=img aria-label="recent syncs" viewBox="0 0 {width} {height}" width="100%" height="{height}" '
        f'preserveAspectRatio="none" xmlns="http://www.w3.org/2000/svg">{"".join(bars)}</svg>'
    )


def _cell(c: dict[str, Any]) -> str:
    if c["state"] != "running":
        kind, what = ("stopped", c["state"])
    elif c.get("health") == "unhealthy":
        kind, what = ("bad", "unhealthy")
    elif c.get("health") == "starting":
        kind, what = ("starting", "starting")
    else:
        kind, what = ("ok", "running" + (", healthy" if c.get("health") == "healthy" else ""))
    return f'<span class="cell c-{kind}" title="{html.escape(c["name"])}: {html.escape(what)}"></span>'


def replica_grid(s: dict[str, Any]) -> str:
    """Per deployment, per host: a square per replica, coloured by its state."""
    hosts = list(s["hosts"])
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for h, hv in s["hosts"].items():
        for c in hv["containers"]:
            if c.get("deployment") and not c.get("role"):
                by.setdefault((c["deployment"], h), []).append(c)
    rows = []
    for name, d in sorted(s["deployments"].items()):
        cells = "".join(
            f'<td><span class=grid>{"".join(_cell(c) for c in sorted(by.get((name, h), []), key=lambda c: c["name"]))}</span></td>' for h in hosts
        )
        rows.append(
            f"<tr><td><b>{html.escape(name)}</b></td><td>{_badge(d['health'])}</td><td>{d['running']}/{d['desired']}</td>{cells}"
            f"<td class=msg>{html.escape(d['message'])}</td></tr>"
        )
    head = "".join(f"<th>{html.escape(h)}</th>" for h in hosts)
    if not rows:
        return "<p>No deployments yet.</p>"
    return f"<div class=scroll><table><tr><th>deployment</th><th>health</th><th>replicas</th>{head}<th>detail</th></tr>{''.join(rows)}</table></div>"


def render_dashboard(agent: Agent) -> str:
    s = agent.status_json()
    parts: list[str] = []
    rows = fold(agent.history.recent(300))
    last = s["last_sync"]
    if last:
        parts.append(
            f"<section><h2>Last sync</h2><p>{_badge(last['outcome'])} {html.escape(last['message'])} "
            f'<span class="muted">at {_when(last["finished"])}</span></p>{timeline_svg(rows)}</section>'
        )
    else:
        parts.append("<section><h2>Last sync</h2><p>No sync has finished yet.</p></section>")
    parts.append("<section><h2>Deployments</h2>" + replica_grid(s) + "</section>")
    services = s.get("services") or {}
    if services:
        srows = []
        for name, sv in sorted(services.items()):
            eps = ", ".join(f"{html.escape(e['name'])}@{html.escape(e['host'])} {_badge(e['state'])}" for e in sv["endpoints"]) or "none"
            srows.append(
                f"<tr><td><b>{html.escape(name)}</b></td><td>{_badge(sv['health'])}</td><td>{html.escape('; '.join(sv['ports']))}</td>"
                f"<td class=msg>{html.escape(sv['message'])}</td><td class=msg>{eps}</td></tr>"
            )
        parts.append(
            "<section><h2>Services</h2><div class=scroll><table><tr><th>service</th><th>health</th><th>ports</th><th>detail</th><th>endpoints</th></tr>"
            + "".join(srows) + "</table></div></section>"
        )
    volumes = s.get("volumes") or []
    if volumes:
        vrows = "".join(
            f"<tr><td>{html.escape(v['host'])}</td><td><b>{html.escape(v['name'])}</b></td><td>{html.escape(v['driver'])}</td>"
            f"<td>{html.escape(str(v['deployment'] or '–'))}{'' if v['replica'] is None else ' replica ' + str(v['replica'])}</td>"
            f"<td>{html.escape(v['state'])}</td></tr>"
            for v in volumes
        )
        parts.append(
            "<section><h2>Volumes</h2><div class=scroll><table><tr><th>host</th><th>volume</th><th>driver</th><th>holds</th><th>state</th></tr>"
            + vrows + "</table></div></section>"
        )
    hrows = []
    for name, h in s["hosts"].items():
        state = "up" if h["reachable"] else "down"
        running = sum(1 for c in h["containers"] if c["state"] == "running")
        labels = ", ".join(f"{k}={v}" for k, v in h["labels"].items()) or "–"
        err = f" {html.escape(h['error'])}" if h["error"] else ""
        hrows.append(
            f"<tr><td><b>{html.escape(name)}</b></td><td class=msg>{_badge(state)}{err}</td><td><code>{html.escape(h['url'])}</code></td>"
            f"<td>{html.escape(labels)}</td><td>{running}/{len(h['containers'])} running</td></tr>"
        )
    parts.append(
        "<section><h2>Hosts</h2><div class=scroll><table><tr><th>host</th><th>state</th><th>url</th><th>labels</th><th>containers</th></tr>"
        + "".join(hrows) + "</table></div></section>"
    )
    previews = agent.previews.recent()[:5]
    if previews:
        parts.append(
            '<section><h2>Previews <a class=muted href="/plans">all</a></h2><div class=scroll><table><tr><th>commit</th><th>of</th><th>result</th>'
            "<th>when</th><th>summary</th></tr>" + "".join(_preview_row(p) for p in previews) + "</table></div></section>"
        )
    srows = []
    for row in rows[:20]:
        r = row.sync
        secs = format_duration(r.seconds) if r.seconds is not None else "…"
        folded = (
            f"<br><span class=folded>+ {row.folded} heal pass{'es' if row.folded > 1 else ''} with nothing to change, the last at {_when(row.folded_last)}</span>"
            if row.folded else ""
        )
        srows.append(
            f'<tr><td><a href="/syncs/{r.id}">#{r.id}</a></td><td class=when>{_when(r.started)}</td><td>{trigger_word(r.trigger)}</td>'
            f"<td class=msg>{_commit_cell(agent, r.commit, r.detail.get('about') or {}, r.revision)}</td><td>{_badge(r.outcome)}</td><td>{secs}</td>"
            f"<td class=msg>{html.escape(r.message)}{folded}</td></tr>"
        )
    parts.append(
        "<section><h2>Recent syncs</h2>"
        + (
            "<div class=scroll><table><tr><th>sync</th><th>started</th><th>trigger</th><th>commit</th><th>result</th><th>took</th><th>message</th></tr>"
            + "".join(srows) + "</table></div>"
            if srows
            else "<p>No syncs recorded yet.</p>"
        )
        + "</section>"
    )
    busy = bool(s["syncing"]) or not agent.previews.idle()
    return _page("Dashboard", "".join(parts), agent.config.name, s["revision"], refresh=busy)


def render_sync(agent: Agent, r: SyncRecord) -> str:
    d = r.detail
    parts = [
        f"<section><h2>Sync #{r.id} {_badge(r.outcome)}</h2><table>"
        f"<tr><th>message</th><td>{html.escape(r.message)}</td></tr>"
        f"<tr><th>revision</th><td><code>{html.escape(r.revision or '–')}</code></td></tr>"
        f"<tr><th>trigger</th><td>{trigger_word(r.trigger)} <span class=muted>({html.escape(r.trigger)})</span></td></tr>"
        + _about_row(r.commit, d.get("about") or {}, agent)
        + f"<tr><th>started</th><td>{_when(r.started)}</td></tr>"
        f"<tr><th>took</th><td>{format_duration(r.seconds) if r.seconds is not None else 'still running'}</td></tr>"
        "</table></section>"
    ]
    problems = d.get("problems") or []
    if problems:
        parts.append("<section><h2>Problems</h2><ul class=problems>" + "".join(f"<li><code>{html.escape(p)}</code></li>" for p in problems) + "</ul></section>")
    warnings = d.get("warnings") or []
    if warnings:
        parts.append("<section><h2>Warnings</h2><ul class=problems>" + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul></section>")
    deps = d.get("deployments") or {}
    if deps:
        rows = "".join(
            f"<tr><td><b>{html.escape(n)}</b></td><td>{_badge(x['health'])}</td><td>{x['running']}/{x['desired']}</td><td>{html.escape(x['message'])}</td>"
            f"<td>{html.escape(', '.join(f'{h}: {c}' for h, c in x['hosts'].items()))}</td></tr>"
            for n, x in sorted(deps.items())
        )
        parts.append(f"<section><h2>Deployments</h2><table><tr><th>deployment</th><th>health</th><th>replicas</th><th>detail</th><th>hosts</th></tr>{rows}</table></section>")
    actions = d.get("actions") or []
    if actions:
        rows = "".join(
            f"<tr><td>{html.escape(a['host'])}</td><td><code>{html.escape(a['container'] or '')}</code></td><td>{html.escape(a['action'])}</td>"
            f"<td>{html.escape(a['reason'])}</td><td>{_badge('success' if a['ok'] else 'failure')} {html.escape(a['message'])}</td></tr>"
            for a in actions
        )
        parts.append(f"<section><h2>Changes</h2><table><tr><th>host</th><th>container</th><th>action</th><th>why</th><th>result</th></tr>{rows}</table></section>")
    elif r.outcome == "success":
        parts.append("<section><h2>Changes</h2><p>None: everything was already as Git says.</p></section>")
    return _page(f"Sync #{r.id}", "".join(parts), agent.config.name, r.revision)


def _preview_row(p: PreviewResult) -> str:
    pv = p.preview
    what = f"pull request #{pv.pull} ({html.escape(pv.branch)})" if pv.pull is not None else f"branch {html.escape(pv.branch)}"
    return (
        f'<tr><td><a href="/plans/{pv.sha}"><code>{pv.sha[:12]}</code></a></td><td>{what}</td><td>{_badge(p.state)}</td>'
        f"<td class=when>{_when(p.finished or p.queued)}</td><td class=msg>{html.escape(p.summary)}</td></tr>"
    )


def render_previews(agent: Agent) -> str:
    rows = "".join(_preview_row(p) for p in agent.previews.recent())
    body = (
        "<section><h2>Previews</h2><p class=muted>Plans of other branches' and pull requests' commits against the fleet as it is: "
        "never applied. The newest commit per branch is planned.</p>"
        + (f"<table><tr><th>commit</th><th>of</th><th>result</th><th>when</th><th>summary</th></tr>{rows}</table>" if rows else "<p>No previews yet.</p>")
        + "</section>"
    )
    return _page("Previews", body, agent.config.name)


def render_preview(agent: Agent, p: PreviewResult) -> str:
    pv = p.preview
    parts = [
        f"<section><h2>Preview of <code>{pv.sha[:12]}</code></h2><p>{_badge(p.state)} {html.escape(p.summary)}</p>"
        f"<table><tr><th>branch</th><td>{html.escape(pv.branch)}</td></tr>"
        + (f"<tr><th>pull request</th><td>#{pv.pull}</td></tr>" if pv.pull is not None else "")
        + f"<tr><th>commit</th><td><code>{pv.sha}</code></td></tr><tr><th>revision</th><td><code>{html.escape(p.revision or '–')}</code></td></tr>"
        f"<tr><th>planned</th><td>{_when(p.finished)}</td></tr></table>"
        "<p class=muted>Against the fleet as it was then; never applied. Once merged, the sync of the tracked branch reports on its commit.</p></section>"
    ]
    if p.problems:
        parts.append("<section><h2>Problems</h2><ul class=problems>" + "".join(f"<li>{html.escape(x)}</li>" for x in p.problems) + "</ul></section>")
    if p.text:
        parts.append(f"<section><h2>Plan</h2><pre>{html.escape(p.text)}</pre></section>")
    return _page(f"Preview {pv.sha[:12]}", "".join(parts), agent.config.name, p.revision)
