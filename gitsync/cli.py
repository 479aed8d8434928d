"""The command line: a thin ``main(argv) -> int`` mapping errors to exit codes in one place."""

from __future__ import annotations

import argparse
import enum
import json
import logging
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, TextIO, cast

from . import __version__
from .core import labels as L
from . import runtimes
from .core.actions import ActionResult, Waiting
from .core.config import Config, load as load_config
from .core.errors import ConfigError, GitsyncError, LockedError, ManifestError
from .core.triggers import Cause, Trigger, parse
from .agent.lock import AgentLock, Busy, Holder, is_gitsync
from .core.manifest import load_files, read_folder
from .reconcile import Observed, Outcome, Syncer
from .core.plantext import host_labels, progress_line, render_plan
from .core.redact import MaskedStream, Masking, MaskingFilter
from .core.units import format_duration


class Exit(enum.IntEnum):
    OK = 0
    ERROR = 1
    CHANGES = 2  # `plan`: changes pending
    USAGE = 64


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gitsync", description="GitOps for plain Docker hosts.")
    p.add_argument("--version", action="version", version=f"gitsync {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens, step by step")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    v = sub.add_parser("validate", help="load and validate manifests")
    v.add_argument("path", nargs="?", help="a folder of manifests (default: the configured source)")
    v.add_argument("-c", "--config", help="agent configuration (default: ./gitsync.yaml if present)")

    pl = sub.add_parser("plan", help="show what apply would do, per host")
    pl.add_argument("-c", "--config")
    pl.add_argument("--json", action="store_true", help="machine-readable output")
    pl.add_argument("--ref", help="plan this branch or commit of the source instead of the tracked branch (never applied)")
    pl.add_argument("path", nargs="?", help="use this folder or repository instead of source.url")

    a = sub.add_parser("apply", help="one sync now; wait until converged or failed")
    a.add_argument("-c", "--config")
    a.add_argument("path", nargs="?", help="use this folder or repository instead of source.url")
    a.add_argument("--timeout", default="120s", help="how long to wait for convergence (default 120s)")
    a.add_argument("--json", action="store_true")

    h = sub.add_parser("hosts", help="hosts, reachability, managed containers")
    h.add_argument("-c", "--config")
    h.add_argument("--json", action="store_true")

    v = sub.add_parser("volumes", help="the volumes gitsync made, per host: the replica bound to each, and those Git no longer mounts")
    v.add_argument("-c", "--config")
    v.add_argument("--json", action="store_true")
    v.add_argument("path", nargs="?", help="a repository or folder instead of source.url")

    r = sub.add_parser("run", help="the agent: poll, webhooks, HTTP server; until SIGTERM")
    r.add_argument("-c", "--config")

    im = sub.add_parser("images", help="image policies: per policy the tags seen, the one chosen, and the lines that would change")
    im.add_argument("-c", "--config")
    im.add_argument("--json", action="store_true")
    im.add_argument("path", nargs="?", help="use this folder or repository instead of source.url")

    n = sub.add_parser("notify", help="notifications: --test sends one message to every target of the configuration")
    n.add_argument("-c", "--config")
    n.add_argument("--test", action="store_true", required=True, help="send a test message to each notify target")

    st = sub.add_parser("status", help="sync history, per commit")
    st.add_argument("rev", nargs="?", help="a commit (prefix) or revision to show")
    st.add_argument("-c", "--config")
    st.add_argument("--json", action="store_true")
    st.add_argument("-n", "--limit", type=int, default=20)
    return p


MASKING = Masking()  # what this process must never show; grows as configurations are read


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = cast(TextIO, MaskedStream(out or sys.stdout, MASKING))
    err = cast(TextIO, MaskedStream(err or sys.stderr, MASKING))
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse prints its own message
        return int(exc.code or 0) and int(Exit.USAGE)
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.command == "run" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=err,
    )
    for log_handler in logging.getLogger().handlers:
        if not any(isinstance(f, MaskingFilter) for f in log_handler.filters):
            log_handler.addFilter(MaskingFilter(MASKING))
    try:
        handler = {
            "validate": cmd_validate,
            "plan": cmd_plan,
            "apply": cmd_apply,
            "hosts": cmd_hosts,
            "volumes": cmd_volumes,
            "run": cmd_run,
            "status": cmd_status,
            "notify": cmd_notify,
            "images": cmd_images,
        }[args.command]
        return int(handler(args, out, err))
    except ManifestError as exc:
        for p in exc.problems:
            print(p, file=err)
        print(f"invalid: {len(exc.problems)} problem(s); nothing was applied", file=err)
        return Exit.ERROR
    except GitsyncError as exc:
        print(f"gitsync: {exc}", file=err)
        return Exit.ERROR
    except KeyboardInterrupt:
        print("gitsync: interrupted", file=err)
        return 130
    except Exception as exc:  # a bug or a case not foreseen: still one line, the traceback only when asked for
        if args.verbose:
            traceback.print_exc(file=err)
        print(f"gitsync: unexpected error: {type(exc).__name__}: {exc} (run with -v for the traceback)", file=err)
        return Exit.ERROR


def _config(args: argparse.Namespace, path: str | None = None) -> Config:
    cfg = load_config(path or getattr(args, "config", None))
    MASKING.use(cfg.redactor)
    return cfg


def _json(doc: Any, out: TextIO) -> None:
    """JSON for a program: masked value by value, so that it stays JSON."""
    print(json.dumps(MASKING.redactor.data(doc), indent=2, sort_keys=True), file=out)


# -- validate ---------------------------------------------------------------
def cmd_validate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.path is not None:
        if not os.path.isdir(args.path):
            raise ConfigError(f"{args.path}: not a folder")
        files: Mapping[str, bytes] = read_folder(args.path)
        where = args.path
    else:
        cfg = _config(args)
        syncer = Syncer(cfg)
        if os.path.isdir(cfg.source.url):
            # The working copy, uncommitted edits included: what you are about to commit.
            root = os.path.join(cfg.source.url, cfg.source.path) if cfg.source.path else cfg.source.url
            files = read_folder(root)
            where = root
        else:
            snap = syncer.fetch()
            files, where = snap.files, f"{snap.location} at {snap.revision}"
    cfg = _config(args)  # its policy and compose variables (the defaults without -c)
    desired = load_files(files, cfg.policy, cfg.compose.resolved(), frozenset(cfg.compose.profiles), cfg.secrets.reader)
    refused = runtimes.check(cfg, desired)
    if refused:
        raise ManifestError(refused)
    nd, ns, nv = len(desired.deployments), len(desired.services), len(desired.volumes)
    print(f"{where}: valid ({len(files)} file(s), {nd} deployment(s), {ns} service(s), {nv} volume(s))", file=out)
    for warning in desired.warnings:
        print(f"warning: {warning}", file=out)
    return Exit.OK


# -- plan -------------------------------------------------------------------
def _preview(cfg: Config, path: str | None, ref: str | None = None) -> Observed:
    """fetch, load, observe and plan, once (of `ref` when given, else of the tracked branch)."""
    syncer = Syncer(cfg, path)
    try:
        return syncer.preview(ref)
    finally:
        syncer.close()


def cmd_plan(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    cfg = _config(args)
    seen = _preview(cfg, args.path, args.ref)
    plan = seen.plan
    if args.json:
        doc = plan.to_json()
        doc["revision"] = seen.snapshot.revision
        doc["unreachable"] = seen.unreachable
        doc["notes"] = list(seen.snapshot.notes)
        _json(doc, out)
    else:
        render_plan(plan, seen.snapshot.revision, host_labels(cfg.hosts), out)
        for note in seen.snapshot.notes:
            print(f"note: {note}", file=out)
        for name, why in seen.unreachable.items():
            print(f"gitsync: {'host ' + name if name != 'swarm' else 'swarm'} unreachable: {why}", file=err)
    if plan.problems or plan.unreachable:
        return Exit.ERROR
    return Exit.OK if plan.in_sync else Exit.CHANGES


# -- apply ------------------------------------------------------------------
def cmd_apply(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .core.units import parse_duration

    try:
        timeout = parse_duration(args.timeout)
    except ValueError as exc:
        raise ConfigError(f"--timeout: {exc}") from None
    cfg = _config(args)
    lock = AgentLock(cfg.state_dir)
    try:
        lock.acquire("apply")
    except Busy as busy:
        if busy.holder is not None and busy.holder.command == "run":
            return _apply_through_agent(cfg, busy.holder, args.path, timeout, out)

        def waiting(holder: Holder | None) -> None:
            who = f"gitsync {holder.command} (pid {holder.pid})" if holder else "another gitsync process"
            print(f"waiting for {who} to finish acting for {cfg.name}", file=out, flush=True)

        try:
            lock.wait("apply", timeout, waiting)
        except Busy:
            raise LockedError(f"another gitsync process still acts for {cfg.name} after {args.timeout} ({lock.path}); try again later") from None
    try:
        return _apply_here(cfg, args, timeout, out, err)
    finally:
        lock.release()


def _apply_here(cfg: Config, args: argparse.Namespace, timeout: float, out: TextIO, err: TextIO) -> int:
    syncer = Syncer(cfg, args.path)

    def progress(r: ActionResult | Waiting) -> None:
        if not args.json:
            print(progress_line(r), file=out, flush=True)

    try:
        result = syncer.sync(progress=progress, timeout=timeout)
    finally:
        syncer.close()
    if args.json:
        _json(result.to_json(), out)
    else:
        if result.plan is not None and result.plan.in_sync:
            for noop in result.plan.noops:
                print(f"  = {noop}", file=out)
        for p in result.problems:
            print(f"  ! {p}", file=err if result.outcome != Outcome.SUCCESS else out)
        for w in result.plan.warnings if result.plan is not None else ():
            print(f"  warning: {w}", file=out)
        print(f"{result.outcome}: {result.message} (revision {result.revision or '-'})", file=out)
    return Exit.OK if result.outcome == Outcome.SUCCESS else Exit.ERROR


def _apply_through_agent(cfg: Config, agent: Holder, path: str | None, timeout: float, out: TextIO) -> int:
    """An agent acts for this name: ask it for a sync (SIGUSR1) and report that sync, as `flux reconcile` does."""
    import signal
    import time

    from .agent.history import History

    running = f"an agent is running for {cfg.name} (pid {agent.pid})"
    if path is not None:
        raise LockedError(f"{running}; it applies {cfg.source.url}, not {path}: stop it to apply something else")
    history = History(cfg.state_dir, cfg.name)
    try:
        newest = history.recent(1)
        before = newest[0].id if newest else 0
        try:
            if not is_gitsync(agent.pid):
                raise PermissionError
            os.kill(agent.pid, signal.SIGUSR1)
        except (PermissionError, ProcessLookupError):
            raise LockedError(
                f"{running}: it will apply this commit within {format_duration(cfg.source.interval)} (or use POST /api/sync)"
            ) from None
        print(f"{running}: asked it to sync now; waiting for the result", file=out, flush=True)
        deadline = time.monotonic() + timeout + 60  # the agent's own sync has its timeouts; allow for a sync already running
        said: dict[int, int] = {}  # sync id -> progress lines printed
        while time.monotonic() < deadline:
            mine = [r for r in history.recent(10) if r.id > before and any(t.cause == Cause.APPLY for t in parse(r.trigger))]
            for r in mine:  # the agent's progress as it goes, as if it were this command's own
                lines = r.detail.get("progress") or []
                for line in lines[said.get(r.id, 0):]:
                    print(line, file=out, flush=True)
                said[r.id] = len(lines)
            done = [r for r in mine if r.outcome != "running"]
            if done:
                r = done[-1]
                for p in r.detail.get("problems") or []:
                    print(f"  ! {p}", file=out)
                print(f"{r.outcome}: {r.message} (revision {r.revision or '-'}; sync #{r.id} of the agent)", file=out)
                return Exit.OK if r.outcome == Outcome.SUCCESS else Exit.ERROR
            time.sleep(0.2)
    finally:
        history.close()
    raise LockedError(f"{running}: its sync has not finished yet; `gitsync status` shows it when it has")


# -- hosts ------------------------------------------------------------------
def cmd_images(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Each image policy: the tags its registry has, the newest it allows, and the marked lines that would change."""
    from .core.images import choose, find_markers
    from .adapters.registry import RegistryError, digest_of, list_tags

    cfg = _config(args)
    if not cfg.images:
        print("gitsync: the configuration has no image policies (images)", file=err)
        return int(Exit.ERROR)
    syncer = Syncer(cfg, args.path)
    try:
        snapshot = syncer.fetch()
    finally:
        syncer.close()
    policies = {p.name: p for p in cfg.images}
    markers, problems = find_markers(snapshot.files, policies)
    doc: dict[str, Any] = {"revision": snapshot.revision, "policies": [], "problems": problems}
    failed = bool(problems)
    for p in cfg.images:
        entry: dict[str, Any] = {"name": p.name, "repository": p.repository, "tags": [], "chosen": None, "changes": []}
        try:
            entry["tags"] = sorted(list_tags(p))
            entry["chosen"] = choose(p, entry["tags"])
            if entry["chosen"] and p.pin_digest:
                entry["chosen"] += f"@{digest_of(p, entry['chosen'])}"
        except RegistryError as exc:
            entry["error"] = str(exc)
            failed = True
        for mk in (m for m in markers if m.policy == p.name):
            new = f"{p.repository}:{entry['chosen']}" if entry["chosen"] else None
            entry["changes"].append({"file": mk.file, "line": mk.line, "from": mk.reference, "to": new if new and new != mk.reference else None})
        doc["policies"].append(entry)
    if args.json:
        _json(doc, out)
        return int(Exit.ERROR) if failed else 0
    print(f"{snapshot.revision}", file=out)
    for e in doc["policies"]:
        rule = next(f"{k} {getattr(policies[e['name']], k)}" for k in ("semver", "regex", "alphabetical") if getattr(policies[e["name"]], k) is not None)
        print(f"{e['name']}  {e['repository']}  ({rule})", file=out)
        if "error" in e:
            print(f"  registry: {e['error']}", file=out)
        else:
            shown_tags = ", ".join(e["tags"][:20]) + (f", ... ({len(e['tags'])} in all)" if len(e["tags"]) > 20 else "")
            print(f"  tags seen: {shown_tags or 'none'}", file=out)
            print(f"  chosen: {e['chosen'] or 'none: no tag is allowed by the policy'}", file=out)
        for c in e["changes"]:
            print(f"  {c['file']}:{c['line']}: {c['from']}" + (f" -> {c['to']}" if c["to"] else " (up to date)" if e["chosen"] else ""), file=out)
        if not e["changes"]:
            print("  no marked line names this image", file=out)
    for problem in problems:
        print(problem, file=err)
    return int(Exit.ERROR) if failed else 0


def cmd_notify(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Send one test message to every notification target, and say which took it."""
    from .agent.alerts import Message, deliver

    cfg = _config(args)
    MASKING.use(cfg.redactor)
    if not cfg.notify:
        print("gitsync: the configuration has no notify targets", file=err)
        return int(Exit.ERROR)
    msg = Message("test", f"gitsync {cfg.name}: test", f"a test message from the gitsync agent {cfg.name}: notifications reach you here")
    failed = 0
    for i, target in enumerate(cfg.notify):
        ok, why = deliver(target, msg)
        print(f"notify[{i}] ({', '.join(sorted(target.on))}): " + ("sent" if ok else f"failed: {why}"), file=out)
        failed += not ok
    return int(Exit.ERROR) if failed else 0


def cmd_hosts(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    cfg = _config(args)
    syncer = Syncer(cfg)
    try:
        observed = syncer.observe()
    finally:
        syncer.close()
    if cfg.runtime == "swarm":
        return _swarm_nodes(observed, args.json, out, err)
    rows: list[dict[str, Any]] = []
    for h in cfg.hosts:
        o = observed[h.name]
        by_dep: dict[str, int] = {}
        for c in o.containers:
            if c.deployment:  # the Services' proxy has a role, not a deployment
                by_dep[c.deployment] = by_dep.get(c.deployment, 0) + 1
        rows.append(
            {
                "name": h.name,
                "url": h.url,
                "labels": dict(h.labels),
                "reachable": o.reachable,
                "error": o.error,
                "containers": len(o.containers),
                "running": sum(1 for c in o.containers if c.running),
                "deployments": by_dep,
                "proxy": any(c.role == L.ROLE_PROXY for c in o.containers),
            }
        )
    if args.json:
        _json(rows, out)
    else:
        for r in rows:
            state = "up" if r["reachable"] else f"UNREACHABLE ({r['error']})"
            labels = ",".join(f"{k}={v}" for k, v in r["labels"].items()) or "-"
            deps = ", ".join([f"{k} {v}" for k, v in sorted(r["deployments"].items())] + (["the Services' proxy"] if r["proxy"] else [])) or "no managed containers"
            print(f"{r['name']:<12} {state:<12} {r['url']:<40} labels {labels:<20} {r['running']}/{r['containers']} running: {deps}", file=out)
    return Exit.OK if all(r["reachable"] for r in rows) else Exit.ERROR


def _swarm_nodes(observed: Any, as_json: bool, out: TextIO, err: TextIO) -> int:
    """The nodes of the swarm: role, availability, state, labels, and how many of our tasks run there."""
    from .runtimes.swarm import node_rows

    if not observed.reachable:
        print(f"gitsync: swarm unreachable: {observed.error}", file=err)
        return Exit.ERROR
    rows = node_rows(observed)
    if as_json:
        _json(rows, out)
    else:
        print(f"swarm, through manager {observed.manager}:", file=out)
        for r in rows:
            labels = ",".join(f"{k}={v}" for k, v in r["labels"].items()) or "-"
            tasks = ", ".join(f"{k} {v}" for k, v in sorted(r["deployments"].items())) or "no tasks of ours"
            print(f"{r['name']:<12} {r['role']:<8} {r['availability']:<7} {r['state']:<8} {r['addr']:<16} labels {labels:<20} {tasks}", file=out)
    return Exit.OK if all(r["state"] == "ready" for r in rows) else Exit.ERROR


def _containers_only(cfg: Config, what: str, err: TextIO) -> bool:
    """True (and says so) when the configuration's runtime is not containers."""
    if cfg.runtime == "containers":
        return False
    print(f"gitsync: {what} is not on runtime {cfg.runtime} yet: the agent, `gitsync plan`, `apply` and `hosts` are", file=err)
    return True


# -- volumes ------------------------------------------------------------------
def cmd_volumes(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .kinds.volume import inventory

    cfg = _config(args)
    if _containers_only(cfg, "gitsync volumes", err):
        return Exit.USAGE
    seen = _preview(cfg, args.path)
    rows = inventory(seen.desired, seen.observed, cfg.name)
    unreachable = {n: o.error for n, o in seen.observed.items() if not o.reachable}
    if args.json:
        _json({"volumes": rows, "unreachable": unreachable}, out)
    else:
        for r in rows:
            holds = f"{r['deployment']} replica {r['replica']}" if r["replica"] is not None else (r["deployment"] or "-")
            print(f"{r['host']:<12} {r['name']:<32} {r['driver']:<8} {holds:<24} {r['state']}", file=out)
        if not rows:
            print("no volumes made by gitsync on the reachable hosts", file=out)
        for name, why in sorted(unreachable.items()):
            print(f"gitsync: host {name} unreachable, its volumes are not listed: {why}", file=err)
    return Exit.ERROR if unreachable else Exit.OK


# -- run --------------------------------------------------------------------
def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import signal

    path = args.config or ("gitsync.yaml" if os.path.isfile("gitsync.yaml") else None)
    cfg = _config(args, path)
    log = logging.getLogger("gitsync")
    # A `gitsync apply` that finds the lock held sends SIGUSR1: held back until the agent can take it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    lock = AgentLock(cfg.state_dir)
    try:
        lock.acquire("run")
    except Busy as busy:
        if busy.holder is not None and busy.holder.command == "run":
            raise LockedError(f"an agent is already running for {cfg.name} (pid {busy.holder.pid}, state_dir {cfg.state_dir})") from None
        log.info("waiting for gitsync apply (pid %s) to finish", busy.holder.pid if busy.holder else "?")
        lock.wait("run", float("inf"))
    try:
        return _run_agent(cfg, path, log, out, err)
    finally:
        lock.release()


def _run_agent(cfg: Config, path: str | None, log: logging.Logger, out: TextIO, err: TextIO) -> int:
    import signal
    import threading

    from .agent.agent import Agent
    from .http.server import HTTPServer

    agent = Agent(cfg, path)
    try:
        server = HTTPServer(agent)
    except OSError as exc:
        agent.stop(5)
        raise ConfigError(f"server.listen {cfg.server.listen}: {exc.strerror}") from None
    stop = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        log.info("received %s: finishing the change in hand, then stopping", signal.Signals(signum).name)
        agent.stopping.set()  # apply skips what it has not started
        stop.set()

    def on_hup(signum: int, frame: object) -> None:
        def reload() -> None:
            said = agent.reload()
            MASKING.use(agent.config.redactor)
            log.info("SIGHUP: %s", said)

        threading.Thread(target=reload, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    # `gitsync apply` while the agent runs asks it for a sync instead of racing it
    signal.signal(signal.SIGUSR1, lambda signum, frame: threading.Thread(target=agent.nudge, args=(Trigger(Cause.APPLY),), daemon=True).start())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    server.start()
    secret_env = cfg.server.webhook_secret_env
    if not secret_env or not os.environ.get(secret_env):
        log.warning("webhooks are refused: set $%s to the webhook secret to accept pushes", secret_env or "GITSYNC_WEBHOOK_SECRET")
    log.info("gitsync %s agent %s: %s every %s; dashboard %s/", __version__, cfg.name, cfg.source.url, format_duration(cfg.source.interval), server.address)
    agent.start()
    while not stop.wait(1.0):
        pass
    agent.stop()
    server.stop()
    log.info("stopped")
    return Exit.OK


# -- status -------------------------------------------------------------------
def cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .agent.history import History

    cfg = _config(args)
    history = History(cfg.state_dir, cfg.name)
    try:
        records = history.recent(args.limit, args.rev)
    finally:
        history.close()
    if args.json:
        _json([r.to_json(with_detail=args.rev is not None) for r in records], out)
        return Exit.OK
    if not records:
        print("no syncs recorded" + (f" for {args.rev}" if args.rev else "") + f" in {cfg.state_dir}", file=out)
        return Exit.OK
    import time as _time

    for r in records:
        when = _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(r.started))
        rev = (r.commit or r.revision or "-")[:12]
        took = format_duration(r.seconds) if r.seconds is not None else "running"
        print(f"#{r.id:<5} {when}  {rev:<12}  {r.outcome:<11} {took:>7}  {r.trigger:<14} {r.message}", file=out)
        if args.rev is not None:
            for p in r.detail.get("problems") or []:
                print(f"         ! {p}", file=out)
    return Exit.OK


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
