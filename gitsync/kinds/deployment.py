"""The Deployment kind: a number of replicas of one container spec, placed across hosts.

Plan, placement rules in order of strength:
1. A replica that runs on a reachable host that still suits it never moves
   (the host matches the selector and is within maxPerHost / one-per-hostPort).
2. Each replica index runs once; duplicates (after a host came back, or an
   interrupted replace) keep the best copy: up to date, running, newest.
3. New replicas go to the eligible host with the fewest replicas of that
   deployment, then the fewest managed containers overall, then config order.
A replica that fits nowhere is a placement problem naming the deployment and
why; the rest of the plan still stands.

Apply, in order:
1. surplus removals (scaled down, pruned, duplicates), every host in parallel;
2. then per dependency level (``dependsOn``): starts, renames and creates on every
   host in parallel, then each deployment's rolling replace: batches of
   ``update.parallelism`` replicas across hosts, each new replica health-gated.
   A replica that fails the gate stops that rollout and the replicas already
   replaced roll back to their previous spec (kept in their ``io.gitsync.spec``
   label). Deployments of the next level wait until their dependencies are ready;
3. removals of replicas that moved to another host.
One failing host never stops the others.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..core import labels as L
from ..core.actions import PHASE_CREATE, PHASE_MOVED, PHASE_REPLACE, PHASE_START, PHASE_SURPLUS, Action, ActionKind, KindPlan, PlacementProblem, PlanView
from .run import Run
from ..core.config import HostSettings
from ..core.errors import HostError, Problem
from ..core.fields import (
    ENV_KEY_RE,
    IMAGE_RE,
    LABEL_KEY_RE,
    MAX_REPLICAS,
    NAME_RE,
    VOLUME_NAME_RE,
    Ctx,
    Obj,
    read_bool,
    read_command,
    read_duration,
    read_enum,
    read_int,
    read_list,
    read_str,
    read_str_map,
    path_problem,
    read_host_ip,
    shown,
)
from ..core.health import DeploymentStatus
from ..core.live import Health, HostObservation, LiveContainer
from ..core.models import BindMount, Deployment, DesiredState, Healthcheck, NetworkMode, Placement, Port, RestartPolicy, Service, UpdateOrder, UpdatePolicy, VolumeMount
from . import Header, Kind, register
from ..core.container import parse_options
from .files import mount_paths, read_files
from .secret import read_secret_env, read_secret_files
from .replicas import Replicas
from .volume import differs, external_refusal

log = logging.getLogger("gitsync.apply")


def _ports(ctx: Ctx, obj: Obj) -> tuple[Port, ...]:
    out: list[Port] = []
    seen_host: set[tuple[int, str]] = set()
    for line, path, item in read_list(ctx, obj, "ports"):
        p = Obj(ctx, item, path, line)
        if not p.ok:
            continue
        cport = read_int(ctx, p, "containerPort", None, 1, 65535)
        if cport is None and "containerPort" not in p.node:
            ctx.add(line, f"{path}.containerPort", "is required")
        hport = read_int(ctx, p, "hostPort", None, 1, 65535)
        host_ip = read_host_ip(ctx, p, hport)
        proto = read_str(ctx, p, "protocol") or "tcp"
        if proto not in ("tcp", "udp", "sctp"):
            ctx.add(p.line_of("protocol"), f"{path}.protocol", "must be tcp, udp or sctp")
        p.finish()
        if cport is not None:
            if hport is not None:
                if (hport, proto) in seen_host:
                    ctx.add(line, f"{path}.hostPort", f"{hport}/{proto} is used twice in this deployment")
                seen_host.add((hport, proto))
            out.append(Port(cport, hport, proto, host_ip))
    return tuple(out)


RELABEL = {"shared": "z", "private": "Z"}  # SELinux relabelling of a bind mount, as Docker's :z and :Z


def _volumes(ctx: Ctx, obj: Obj) -> tuple[tuple[VolumeMount, ...], tuple[BindMount, ...]]:
    """Named volumes, and host paths (``hostPath``)."""
    out: list[VolumeMount] = []
    binds: list[BindMount] = []
    paths: set[str] = set()
    for line, path, item in read_list(ctx, obj, "volumes"):
        v = Obj(ctx, item, path, line)
        if not v.ok:
            continue
        host_path = read_str(ctx, v, "hostPath")
        name = read_str(ctx, v, "name", required=host_path is None)
        mount = read_str(ctx, v, "mountPath", required=True)
        ro = read_bool(ctx, v, "readOnly")
        relabel = read_str(ctx, v, "seLinuxRelabel")
        v.finish()
        if relabel is not None and (relabel not in RELABEL or host_path is None):
            ctx.add(v.line_of("seLinuxRelabel"), f"{path}.seLinuxRelabel", f"{shown(relabel)}: shared or private, with a hostPath" if relabel not in RELABEL else "only with a hostPath")
            continue
        if name is not None and host_path is not None:
            ctx.add(v.line_of("hostPath"), f"{path}.hostPath", "a volume has either a name (a Docker volume) or a hostPath (a bind mount), not both")
            continue
        if name is not None and not VOLUME_NAME_RE.match(name):
            ctx.add(v.line_of("name"), f"{path}.name", f"{shown(name)} is not a valid volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*); mount a host path with hostPath")
            continue
        bad = [(k, value, why) for k, value in (("hostPath", host_path), ("mountPath", mount)) if value is not None and (why := path_problem(value))]
        for k, value, why in bad:
            ctx.add(v.line_of(k), f"{path}.{k}", f"{shown(value)} {why}")
        if bad:
            continue
        if mount is not None and mount in paths:
            ctx.add(v.line_of("mountPath"), f"{path}.mountPath", f"{mount} is mounted twice")
            continue
        if mount is None:
            continue
        paths.add(mount)
        if host_path is not None:
            binds.append(BindMount(host_path, mount, ro, RELABEL.get(relabel or "", ""), f"{path}.hostPath", v.line_of("hostPath")))
        elif name is not None:
            out.append(VolumeMount(name, mount, ro))
    return tuple(out), tuple(binds)


def _placement(ctx: Ctx, obj: Obj) -> Placement:
    node = obj.get("placement", None)
    if node is None:
        return Placement()
    p = Obj(ctx, node, obj.sub("placement"), obj.line_of("placement"))
    selector = read_str_map(ctx, p, "hostSelector", LABEL_KEY_RE, "label")
    max_per_host = read_int(ctx, p, "maxPerHost", None, 1, MAX_REPLICAS)
    p.finish()
    return Placement(selector, max_per_host)


def _healthcheck(ctx: Ctx, obj: Obj) -> Healthcheck | None:
    node = obj.get("healthcheck", None)
    if node is None:
        return None
    h = Obj(ctx, node, obj.sub("healthcheck"), obj.line_of("healthcheck"))
    if not h.ok:
        return None
    test_value = h.get("test", None, required=True)
    test: tuple[str, ...] = ()
    if isinstance(test_value, str):
        test = ("CMD-SHELL", test_value)
    elif test_value is not None:
        items = read_command(ctx, h, "test") or ()
        if items and items[0] not in ("CMD", "CMD-SHELL", "NONE"):
            ctx.add(h.line_of("test"), h.sub("test"), 'must start with "CMD" or "CMD-SHELL", or be a string for the shell')
        test = items
    hc = Healthcheck(
        test=test,
        interval=read_duration(ctx, h, "interval", 30.0),
        timeout=read_duration(ctx, h, "timeout", 30.0),
        retries=read_int(ctx, h, "retries", 3, 1, 100) or 3,
        start_period=read_duration(ctx, h, "startPeriod", 0.0),
    )
    h.finish()
    return hc


def _update(ctx: Ctx, obj: Obj) -> UpdatePolicy:
    node = obj.get("update", None)
    if node is None:
        return UpdatePolicy()
    u = Obj(ctx, node, obj.sub("update"), obj.line_of("update"))
    order = read_enum(ctx, u, "order", UpdateOrder.START_FIRST)
    parallelism = read_int(ctx, u, "parallelism", 1, 1, MAX_REPLICAS) or 1
    u.finish()
    return UpdatePolicy(order, parallelism)


def _deployment(ctx: Ctx, head: Header) -> Deployment | None:
    name, labels, origin = head.name, head.labels, head.origin
    spec = head.open_spec(ctx)
    if spec is None:
        return None
    before = len(ctx.problems)
    replicas = read_int(ctx, spec, "replicas", 1, 0, MAX_REPLICAS)
    image = read_str(ctx, spec, "image", required=True)
    if image is not None:
        if not IMAGE_RE.match(image) or len(image) > 512:
            ctx.add(spec.line_of("image"), "spec.image", f"{shown(image)} is not a valid image reference (e.g. registry.example.com/team/web:1.4.2)")
    command = read_command(ctx, spec, "command")
    plain_env, secret_refs = read_secret_env(ctx, spec)
    if secret_refs:
        spec.node["env"] = plain_env  # the secretKeyRef entries are read; the rest as any env
    env = read_str_map(ctx, spec, "env", ENV_KEY_RE, "environment variable")
    ports = _ports(ctx, spec)
    volumes, binds = _volumes(ctx, spec)
    taken = mount_paths(volumes, binds)
    files = read_files(ctx, spec, taken)
    secret_files, file_refs = read_secret_files(ctx, spec, taken | mount_paths(files))
    files += tuple(secret_files)
    secret_refs += file_refs
    placement = _placement(ctx, spec)
    healthcheck = _healthcheck(ctx, spec)
    update = _update(ctx, spec)
    restart = read_enum(ctx, spec, "restart", RestartPolicy.UNLESS_STOPPED)
    grace = read_duration(ctx, spec, "stopGracePeriod", 10.0)
    min_ready = read_duration(ctx, spec, "minReadySeconds", 0.0)
    allow_data_move = read_bool(ctx, spec, "allowDataMove")
    run_once = read_bool(ctx, spec, "runOnce")
    if run_once and restart in (RestartPolicy.ALWAYS, RestartPolicy.UNLESS_STOPPED) and "restart" in spec.node:
        ctx.add(spec.line_of("restart"), "spec.restart", f"{restart}: Docker would start a job again when it is done; use no or on-failure")
    depends: list[str] = []
    for dline, dpath, item in read_list(ctx, spec, "dependsOn"):
        if not isinstance(item, str) or not NAME_RE.match(item):
            ctx.add(dline, dpath, "must be the name of another deployment")
        elif item == name:
            ctx.add(dline, dpath, f"{name} cannot depend on itself")
        elif item in depends:
            ctx.add(dline, dpath, f"{item} is listed twice")
        else:
            depends.append(item)
    options = parse_options(ctx, spec, binds, files)
    if options.network_mode != NetworkMode.BRIDGE and ports:
        ctx.add(spec.line_of("networkMode"), "spec.networkMode", f"{options.network_mode}: a container on the host's network (or none) publishes no ports; remove spec.ports")
    spec.finish()
    if len(ctx.problems) != before or image is None:
        return None
    return Deployment(
        name=name,
        image=image,
        replicas=replicas if replicas is not None else 1,
        command=command,
        env=env,
        ports=ports,
        volumes=volumes,
        labels=labels,
        placement=placement,
        healthcheck=healthcheck,
        update=update,
        stop_grace_period=grace,
        min_ready_seconds=min_ready,
        depends_on=tuple(depends),
        allow_data_move=allow_data_move,
        run_once=run_once,
        restart=RestartPolicy.NO if run_once and "restart" not in spec.node else restart,
        options=options,
        origin=origin,
        secret_refs=tuple(secret_refs),
    )



def _check_dependencies(deployments: Sequence[Deployment], problems: list[Problem]) -> None:
    by_name = {d.name: d for d in deployments}
    for d in deployments:
        for dep in d.depends_on:
            if dep not in by_name:
                o = d.origin
                problems.append(Problem(o.file if o else "?", o.line if o else None, f"{d.name}: spec.dependsOn: no deployment named {dep!r}"))
    # cycles: depth-first search, reporting each cycle once, as a -> b -> a
    state: dict[str, int] = {}
    reported: set[frozenset[str]] = set()

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in by_name[n].depends_on:
            if m not in by_name:
                continue
            if state.get(m) == 1:
                cycle = path[path.index(m) :] + [m]
                key = frozenset(cycle)
                if key not in reported:
                    reported.add(key)
                    o = by_name[m].origin
                    problems.append(Problem(o.file if o else "?", o.line if o else None, f"dependsOn cycle: {' -> '.join(cycle)}"))
            elif state.get(m) is None:
                visit(m, [*path, m])
        state[n] = 2

    for name in sorted(by_name):
        if state.get(name) is None:
            visit(name, [name])



def describe_change(live: LiveContainer, d: Deployment) -> str:
    """Which fields of the container spec changed, e.g. "image a:1 -> a:2, env"."""
    old = live.spec_document()
    if old is None:
        return "created by an older gitsync or changed outside Git"
    return describe_difference(old, L.spec_document(d))


def describe_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """Which fields of two spec documents differ, by name: "changed: image a:1 -> a:2, env"."""
    parts: list[str] = []
    for key in sorted(set(old) | set(new)):
        if json.dumps(old.get(key), sort_keys=True) != json.dumps(new.get(key), sort_keys=True):
            if key == "image":
                parts.append(f"image {old.get(key)} -> {new.get(key)}")
            elif key == "files":  # which of them: their content is in Git, the plan names where they go (a secret by name)
                was, now = ({f[0]: f for f in doc.get("files") or []} for doc in (old, new))
                changed = [was.get(m) or now[m] for m in sorted(set(was) | set(now)) if was.get(m) != now.get(m)]
                named = [(now.get(f[0]) or f) for f in changed]
                plain = [f[0] for f in named if len(f) < 4]
                parts += [f"secret {f[3]}" for f in named if len(f) > 3] + (["files " + " ".join(plain)] if plain else [])
            elif key == "secretEnv":  # which secrets, never a value
                was, now = ({e[0]: e for e in doc.get("secretEnv") or []} for doc in (old, new))
                parts += sorted({f"secret {(now.get(k) or was[k])[1]}" for k in set(was) | set(now) if was.get(k) != now.get(k)})
            else:
                parts.append(key)
    if not parts:
        return "spec hash differs (labels edited by hand?)"
    return "changed: " + ", ".join(parts)


def _keeper_rank(c: LiveContainer, want_hash: str) -> tuple[int, int, int, str]:
    # Lower sorts first: running (never trade a serving replica for one that never started),
    # up to date, newest, then a stable tie-break.
    return (0 if c.running else 1, 0 if c.spec_hash == want_hash else 1, -c.created, c.id)


def plan_deployments(desired: DesiredState, view: PlanView) -> KindPlan:
    """See the module's placement rules."""
    # Stale: unreachable, but within its grace period. Its last known replicas still count
    # (nothing is rescheduled yet), it gets no new replicas, and no change is planned on it.
    observed, agent, order = view.observed, view.agent, view.order
    up, stale, fresh, unreachable = view.up, view.stale, view.fresh, view.unreachable
    actions: list[Action] = []
    noops: list[str] = []
    problems: list[PlacementProblem] = []
    placement: dict[str, dict[str, int]] = {}

    live_by_dep: dict[str, list[LiveContainer]] = defaultdict(list)
    for h in up:
        for c in observed[h.name].replicas:
            live_by_dep[c.deployment].append(c)
    # Overall load: every container we will keep or create, for the least-loaded tie-break.
    load: Counter[str] = Counter()
    # Fixed host ports, (host, port, protocol) -> deployment: held by the replicas that run (and
    # stay, for those of desired deployments), then by those placed; a host where another deployment
    # holds one of a deployment's ports is no place for it.
    held_ports: dict[tuple[str, int, str], str] = {}
    labels_of = {h.name: h.label_map for h in up}
    for d in desired.deployments:
        for c in live_by_dep.get(d.name, ()):
            if c.replica is not None and c.replica < d.replicas and d.placement.matches(labels_of.get(c.host, {})):
                for port, proto in _host_ports(d):
                    held_ports.setdefault((c.host, port, proto), d.name)

    for d in desired.deployments:
        first_action = len(actions)  # d's actions are appended from here
        want = L.spec_hash(d)
        eligible_all = [h for h in up if d.placement.matches(h.label_map)]
        eligible_names = {h.name for h in eligible_all}
        eligible = [h for h in eligible_all if h.name not in stale]
        cap = d.capacity_per_host()
        containers = live_by_dep.pop(d.name, [])
        per_host: Counter[str] = Counter()
        by_index: dict[int, list[LiveContainer]] = defaultdict(list)
        surplus: list[tuple[LiveContainer, str]] = []
        for c in containers:
            if c.replica is None or c.replica >= d.replicas:
                surplus.append((c, f"scaled down to {d.replicas}"))
            else:
                by_index[c.replica].append(c)

        kept: dict[int, LiveContainer] = {}
        moved: list[tuple[LiveContainer, str]] = []
        data = {i: desired.data_volumes(d, i) for i in range(d.replicas)}  # a replica with host-local data is bound to its host
        for idx in sorted(by_index):
            candidates = sorted(by_index[idx], key=lambda c: _keeper_rank(c, want))
            chosen = next((c for c in candidates if c.host in eligible_names and (cap is None or per_host[c.host] < cap)), None)
            if chosen is None and data.get(idx) and not d.allow_data_move:
                chosen = candidates[0]  # its data lives there: it stays until Git allows the move
                why = "the host no longer matches placement" if chosen.host not in eligible_names else f"the host is over the limit of {cap} per host"
                problems.append(PlacementProblem(d.name, (
                    f"replica {idx} stays on {chosen.host} ({why}): its volume {data[idx][0][0]} lives there; "
                    "set spec.allowDataMove: true to move it (the volume is left behind, not copied)"
                )))
            for c in candidates:
                if c is chosen:
                    continue
                if chosen is not None:
                    surplus.append((c, f"duplicate of replica {idx} (kept {chosen.name} on {chosen.host})"))
                elif c.host not in eligible_names:
                    moved.append((c, f"host {c.host} no longer matches placement ({d.placement.describe_selector()})"))
                else:
                    moved.append((c, f"over the limit of {cap} per host"))
            if chosen is not None:
                kept[idx] = chosen
                per_host[chosen.host] += 1
                load[chosen.host] += 1

        writer = desired.single_writer(d)
        forced_order = f" (stop-first: volume {writer} is ReadWriteOnce)" if writer and d.update.order == UpdateOrder.START_FIRST and not d.one_per_host else ""
        for idx, c in sorted(kept.items()):
            canonical = L.container_name(agent, d.name, idx)
            if c.name != canonical:
                # e.g. the new container of a replace cut off before it took the replica's name
                actions.append(Action(ActionKind.RENAME, c.host, d.name, idx, f"take the replica's name (was {c.name})", c.id, canonical, PHASE_START))
            if c.spec_hash != want:
                actions.append(
                    Action(ActionKind.REPLACE, c.host, d.name, idx, describe_change(c, d) + forced_order, c.id, c.name, PHASE_REPLACE)
                )
            elif d.run_once and c.state == "exited" and c.exit_code == 0:
                pass  # a job done: it ran to completion for this spec
            elif d.run_once and c.state == "exited":
                actions.append(Action(ActionKind.START, c.host, d.name, idx, f"job exited with code {c.exit_code}: run it again", c.id, c.name, PHASE_START))
            elif c.state in ("exited", "created"):
                actions.append(Action(ActionKind.START, c.host, d.name, idx, f"replica is {c.state}", c.id, c.name, PHASE_START))
            elif c.state == "dead":
                actions.append(Action(ActionKind.REPLACE, c.host, d.name, idx, "replica is dead", c.id, c.name, PHASE_REPLACE))

        missing = [i for i in range(d.replicas) if i not in kept]
        unplaced: list[int] = []
        waiting: set[int] = set()  # bound to data on a host that is not here now
        taken = {  # eligible hosts where another deployment holds one of d's fixed host ports
            h.name: held_ports[(h.name, port, proto)]
            for h in eligible for port, proto in _host_ports(d)
            if held_ports.get((h.name, port, proto), d.name) != d.name
        }
        for idx in missing:
            options = [
                h for h in eligible
                if (cap is None or per_host[h.name] < cap) and h.name not in taken and not _volume_conflict(desired, d, idx, view, h.name)
            ]
            left_behind = ""
            if data.get(idx):
                home = _data_home(d, idx, data[idx], view, options)
                if isinstance(home, PlacementProblem):
                    problems.append(home)
                    waiting.add(idx)
                    continue
                options, left_behind = home
            if not options:
                unplaced.append(idx)
                continue
            target = min(options, key=lambda h: (per_host[h.name], load[h.name], order[h.name]))
            per_host[target.name] += 1
            load[target.name] += 1
            for port, proto in _host_ports(d):
                held_ports.setdefault((target.name, port, proto), d.name)
            was = next((c for c, _ in moved if c.replica == idx), None)
            reason = f"replica {idx} of {d.replicas}" + (f", moved from {was.host}" if was else "")
            if left_behind:
                reason += f"; moves {left_behind.split(' ', 1)[0]} -> {target.name}: {left_behind.split(' ', 1)[1]}"
            actions.append(
                Action(ActionKind.CREATE, target.name, d.name, idx, reason, None, L.container_name(agent, d.name, idx), PHASE_CREATE)
            )
        if unplaced:
            why = why_unplaced(d, len(unplaced), eligible, fresh, unreachable)
            for v in {desired.volume(m.name) for m in d.volumes if desired.volume(m.name).external}:
                have = [h.name for h in eligible if view.observed[h.name].volume(v.name) is not None]
                why += f"; external volume {v.name} exists on {', '.join(have) or 'none of the eligible hosts'} (gitsync never makes it)"
            for other in sorted(set(taken.values())):
                on = ", ".join(sorted(h for h, o in taken.items() if o == other))
                ports = ", ".join(f"{p}/{proto}" for p, proto in _host_ports(d) if any(held_ports.get((h, p, proto)) == other for h in taken))
                why += f"; hostPort {ports} is held by deployment {other} on {on}"
            problems.append(PlacementProblem(d.name, why))

        for c, why in surplus:
            actions.append(Action(ActionKind.REMOVE, c.host, d.name, c.replica, why, c.id, c.name, PHASE_SURPLUS))
        for c, why in moved:
            actions.append(Action(ActionKind.REMOVE, c.host, d.name, c.replica, why, c.id, c.name, PHASE_MOVED))

        placement[d.name] = {h: n for h, n in sorted(per_host.items()) if n}
        if len(actions) == first_action and not unplaced and not waiting:
            noops.append(f"{d.name}: {d.replicas}/{d.replicas} replicas up to date")

    for dep in sorted(live_by_dep):
        for c in live_by_dep[dep]:
            why = f"deployment {dep} is no longer in Git (prune)" if dep else "carries our label but names no deployment"
            actions.append(Action(ActionKind.REMOVE, c.host, dep, c.replica, why, c.id, c.name, PHASE_SURPLUS))

    return KindPlan(actions, noops, problems, placement)


def _data_home(
    d: Deployment, idx: int, volumes: list[tuple[str, Any]], view: PlanView, options: list[HostSettings],
) -> tuple[list[HostSettings], str] | PlacementProblem:
    """Where a replica bound to host-local data may be created: on the host that holds its volume;
    on none while that host (or one that may hold it) is away; elsewhere only when Git allows the
    move. Returns the hosts and, for a move, what is left behind ("h1 volume pgdata on h1 is left
    behind, not copied"); or the problem that keeps it waiting."""
    vname = volumes[0][0]
    holders = sorted({h.name for h in view.up for name, _ in volumes if _holds(view, h.name, name)}, key=lambda n: view.order.get(n, 0))
    if holders:
        home = [h for h in options if h.name in holders]
        if home:
            return home, ""
        away = [h for h in holders if h in view.stale]
        if away:
            return PlacementProblem(d.name, f"replica {idx} waits for {away[0]}, where its volume {vname} lives ({away[0]} is unreachable)")
        if not d.allow_data_move:
            return PlacementProblem(d.name, (
                f"replica {idx} cannot move from {holders[0]}, where its volume {vname} lives (that host is no longer eligible); "
                "set spec.allowDataMove: true to move it (the volume is left behind, not copied)"
            ))
        return options, f"{holders[0]} volume {vname} on {holders[0]} is left behind, not copied"
    fresh = {h.name for h in view.fresh}
    unknown = [h.name for h in view.hosts if h.name not in fresh and d.placement.matches(h.label_map)]
    if unknown:
        return PlacementProblem(d.name, (
            f"replica {idx} waits for {', '.join(unknown)}: unreachable, and its volume {vname} may be there "
            "(gitsync does not start it on an empty volume elsewhere)"
        ))
    return options, ""


def _volume_conflict(desired: DesiredState, d: Deployment, idx: int, view: PlanView, host: str) -> bool:
    """A volume the replica would mount exists on the host but is not ours, or not as Git says
    (the Volume kind's plan names it), or is external and not there: no replica is created there on it."""
    for m in d.volumes:
        v = desired.volume(m.name)
        live = view.observed[host].volume(v.docker_name(idx))
        if v.external and (live is None or external_refusal(live, view)):
            return True
        if not v.external and live is not None and (live.owner != view.agent or differs(live, v)):
            return True
    return False


def _holds(view: PlanView, host: str, volume: str) -> bool:
    v = view.observed[host].volume(volume)
    return v is not None and v.owner == view.agent


def _host_ports(d: Deployment) -> list[tuple[int, str]]:
    return [(p.host_port, p.protocol) for p in d.ports if p.host_port is not None]


def why_unplaced(d: Deployment, count: int, eligible: Sequence[HostSettings], up: Sequence[HostSettings], unreachable: Sequence[str]) -> str:
    cap = d.capacity_per_host()
    fits = len(eligible) * cap if cap is not None else None
    parts = [f"{count} of {d.replicas} replicas cannot be placed"]
    if not eligible:
        parts.append(f"no reachable host matches hostSelector {d.placement.describe_selector()} ({len(up)} reachable)")
    elif cap is not None:
        limit = "a fixed hostPort allows 1 per host" if d.one_per_host and (d.placement.max_per_host or 2) >= 1 and cap == 1 else f"maxPerHost is {cap}"
        parts.append(f"{limit} and {len(eligible)} host(s) are eligible, so at most {fits} fit")
    if unreachable:
        parts.append(f"unreachable: {', '.join(unreachable)}")
    return "; ".join(parts)


def assess(desired: DesiredState, observed: Mapping[str, HostObservation]) -> dict[str, DeploymentStatus]:
    """How each deployment stands against its desired replicas. Pure."""
    out: dict[str, DeploymentStatus] = {}
    for d in desired.deployments:
        if d.run_once:
            out[d.name] = _assess_job(d, observed)
            continue
        want = L.spec_hash(d)
        running = healthy = starting = unhealthy = 0
        seen: set[int] = set()
        per_host: dict[str, int] = {}
        for obs in observed.values():
            for c in obs.replicas:
                if c.deployment != d.name or c.replica is None or c.replica >= d.replicas or c.replica in seen:
                    continue
                if c.spec_hash != want or not c.running:
                    continue
                seen.add(c.replica)
                running += 1
                per_host[c.host] = per_host.get(c.host, 0) + 1
                if d.healthcheck is None or c.health == "healthy":
                    healthy += 1
                elif c.health == "unhealthy":
                    unhealthy += 1
                else:
                    starting += 1
        if healthy == d.replicas:
            health, msg = Health.HEALTHY, f"{healthy}/{d.replicas} replicas healthy"
        elif running == 0 and d.replicas > 0:
            health, msg = Health.MISSING, f"0/{d.replicas} replicas running"
        elif starting and not unhealthy and running == d.replicas:
            health, msg = Health.PROGRESSING, f"{healthy}/{d.replicas} healthy, {starting} starting"
        else:
            parts = [f"{running}/{d.replicas} running"]
            if unhealthy:
                parts.append(f"{unhealthy} unhealthy")
            if starting:
                parts.append(f"{starting} starting")
            health, msg = Health.DEGRADED, ", ".join(parts)
        out[d.name] = DeploymentStatus(d.name, d.replicas, running, healthy, health, msg, dict(sorted(per_host.items())))
    return out


def _assess_job(d: Deployment, observed: Mapping[str, HostObservation]) -> DeploymentStatus:
    """A job is healthy once each replica of its spec exited with code 0; degraded when one failed."""
    want = L.spec_hash(d)
    done = running = 0
    failed: list[str] = []
    per_host: dict[str, int] = {}
    seen: set[int] = set()
    for obs in observed.values():
        for c in obs.replicas:
            if c.deployment != d.name or c.replica is None or c.replica >= d.replicas or c.replica in seen or c.spec_hash != want:
                continue
            seen.add(c.replica)
            per_host[c.host] = per_host.get(c.host, 0) + 1
            if c.running:
                running += 1
            elif c.state == "exited" and c.exit_code == 0:
                done += 1
            elif c.state == "exited":
                failed.append(f"replica {c.replica} exited with code {c.exit_code}")
    if done == d.replicas:
        health, msg = Health.HEALTHY, f"job done: {done}/{d.replicas} replicas exited with code 0"
    elif failed:
        health, msg = Health.DEGRADED, "job failed: " + ", ".join(failed)
    elif running:
        health, msg = Health.PROGRESSING, f"job running: {done}/{d.replicas} done, {running} running"
    else:
        health, msg = Health.MISSING, f"job not run: {done}/{d.replicas} done"
    return DeploymentStatus(d.name, d.replicas, running, done, health, msg, dict(sorted(per_host.items())))


class DeploymentKind(Kind):
    name = Deployment.KIND
    order = 20

    def parse(self, ctx: Ctx, head: Header) -> Deployment | None:
        return _deployment(ctx, head)

    def check(self, objects: Sequence[Any], problems: list[Problem], loaded: Mapping[str, Sequence[Any]]) -> None:
        _check_dependencies(objects, problems)

    def plan(self, desired: DesiredState, view: PlanView) -> KindPlan:
        return plan_deployments(desired, view)

    def apply(self, run: Run, actions: Sequence[Action]) -> None:
        apply_deployments(run, list(actions))

    def health(self, desired: DesiredState, observed: Mapping[str, HostObservation]) -> dict[str, Any]:
        return dict(assess(desired, observed))

    def finish(self, run: Run) -> None:
        """Files volumes no replica mounts any more (their files changed in Git, or the deployment went)
        and the agent's own networks no container is on go, on the hosts this run changed."""
        for host in sorted({a.host for a in run.plan.actions if a.host and a.object_kind in (self.name, Service.KIND)}):  # (a proxy replaced leaves networks too)
            try:
                engine = run.hosts.engine(host)
                for name in engine.prune_files(run.agent, 30):
                    log.info("%s: removed %s: no replica mounts these files from Git any more", host, name)
                for name in engine.prune_networks(L.group_network(run.agent, ""), run.agent):
                    log.info("%s: removed network %s: no replica is on it any more", host, name)
            except HostError as exc:
                log.warning("%s: files volumes not pruned: %s", host, exc.detail)


def apply_deployments(run: Run, actions: list[Action]) -> None:
    """See the module's apply order."""
    desired = run.desired
    replicas = Replicas(run)
    run.parallel((a for a in actions if a.phase == PHASE_SURPLUS), replicas.simple)
    known = {d.name for d in desired.deployments}
    levels = desired.levels()
    for i, level in enumerate(levels):
        names = set(level)
        run.parallel((a for a in actions if a.deployment in names and a.kind in (ActionKind.START, ActionKind.RENAME, ActionKind.CREATE)), replicas.simple)
        replaces = {n: [a for a in actions if a.deployment == n and a.kind == ActionKind.REPLACE] for n in level}
        work = [(desired.deployment(n), acts) for n, acts in replaces.items() if acts]
        if work:
            with ThreadPoolExecutor(len(work)) as pool:
                list(pool.map(lambda w: replicas.rollout(w[0], w[1]), work))  # type: ignore[arg-type]
        needed = sorted({dep for later in levels[i + 1 :] for n in later for dep in (desired.deployment(n).depends_on or ()) if dep in names})  # type: ignore[union-attr]
        if needed:
            touched = {a.deployment for a in actions}
            broken = {n: "its change failed above" for n in needed if (Deployment.KIND, n) in run.failed}  # waiting would not mend it
            waited = [n for n in needed if n not in broken]
            deadline = time.monotonic() + max([0.0, *(desired.deployment(n).gate_timeout() for n in waited)])  # type: ignore[union-attr]
            ready_or_not = _wait_ready(run, waited, deadline) if waited and touched & (names | {n for lv in levels[i + 1 :] for n in lv}) else {}
            not_ready = {**broken, **ready_or_not}
            if not not_ready:
                run.level_ready()
            for n, why in not_ready.items():
                run.failed.add((Deployment.KIND, n))
                for later in levels[i + 1 :]:
                    for dep_name in later:
                        dep = desired.deployment(dep_name)
                        if dep is not None and n in dep.depends_on:
                            run.failed.add((Deployment.KIND, dep_name))
                            for a in actions:
                                if a.deployment == dep_name and a.phase != PHASE_SURPLUS:
                                    run.skip(a, f"waiting for {n}, which is not ready ({why})")
    run.parallel((a for a in actions if a.phase == PHASE_MOVED and a.deployment in known), replicas.simple)
    done = run.done()
    # anything not handled above (a deployment no longer desired that moved) is run, never dropped silently
    run.parallel((a for a in actions if id(a) not in done), replicas.simple)


def _wait_ready(run: Run, names: list[str], deadline: float) -> dict[str, str]:
    """Wait until these deployments have every replica running and healthy; returns the ones that are not."""
    while True:
        status = assess(run.desired, run.observe())
        missing = {n: status[n].message for n in names if n in status and status[n].health != Health.HEALTHY}
        failed = {n for n in missing if status[n].message.startswith("job failed")}  # it will not finish by waiting
        if not missing or set(missing) == failed or time.monotonic() >= deadline or run.stopping():
            return missing
        time.sleep(0.25)



register(DeploymentKind())
