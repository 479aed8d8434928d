"""Benchmark the sync on three real engines with 100 managed containers each.

    sudo python -m bench.sync_bench [--per-host 100] [--rounds 20]

(a) no-op: `plan` (fetch, load, observe, plan) and a no-op `apply` (the same plus
    assess), in process with warm clients, against the floor: listing the same
    containers on all hosts in parallel with the Docker SDK.
(b) cold converge of 3 x N containers from empty: gitsync apply, against
    - the SDK floor: create + start every container straight through the SDK,
      hosts in parallel, one after another per host;
    - the same floor with 4 workers per host (gitsync's own concurrency);
    - Debian's docker-compose (1.29.2) `up -d`, one project per host, in parallel.
Results are printed and appended to bench/results/sync.jsonl. Ratios, not times,
are the point: every figure is measured in the same run on the same engines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker

from bench import record
from bench.tools import need
from gitsync.core import config as config_mod
from gitsync.reconcile import Syncer
from tests import testbed

AGENT = "bench"
DEPLOYMENTS = 10
LOOP = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]


def clients() -> dict[str, docker.APIClient]:
    return {e.name: docker.APIClient(base_url=e.tcp_url, version="auto", timeout=300) for e in testbed.engines(3)}


def wipe(apis: dict[str, docker.APIClient], label: str) -> None:
    def one(api: docker.APIClient) -> None:
        for c in api.containers(all=True, filters={"label": label}):
            api.remove_container(c["Id"], force=True)

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(one, apis.values()))


def manifests(per_host: int) -> str:
    replicas = per_host * 3 // DEPLOYMENTS
    docs = []
    for i in range(DEPLOYMENTS):
        docs.append(
            f"apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {{name: app{i}, labels: {{app: app{i}}}}}\n"
            f"spec:\n  replicas: {replicas}\n  image: gitsync-test/busybox:1\n  command: {json.dumps(LOOP)}\n"
            f"  env: {{INDEX: '{i}'}}\n  placement: {{maxPerHost: {per_host // DEPLOYMENTS * 2}}}\n"
        )
    return "---\n".join(docs)


def make_config(tmp: Path, per_host: int) -> config_mod.Config:
    repo = tmp / "repo"
    repo.mkdir()
    (repo / "apps.yaml").write_text(manifests(per_host))
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env=env)
    hosts = "".join(f"  - {{name: {e.name}, url: '{e.tcp_url}', insecure: true}}\n" for e in testbed.engines(3))
    text = f"name: {AGENT}\nsource: {{url: {repo}}}\nstate_dir: {tmp / 'state'}\nhosts:\n{hosts}"
    return config_mod.parse(text, "bench.yaml", tmp)


def timed(fn, rounds: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def sdk_floor(apis: dict[str, docker.APIClient], per_host: int, workers: int) -> float:
    label = "io.gitsync.bench-floor=1"

    def host(api: docker.APIClient) -> None:
        def one(i: int) -> None:
            c = api.create_container("gitsync-test/busybox:1", command=LOOP, labels={"io.gitsync.bench-floor": "1"}, name=f"floor-{i}")
            api.start(c["Id"])

        if workers == 1:
            for i in range(per_host):
                one(i)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(one, range(per_host)))

    wipe(apis, label)
    t = time.perf_counter()
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(host, apis.values()))
    took = time.perf_counter() - t
    wipe(apis, label)
    return took


def compose_run(apis: dict[str, docker.APIClient], per_host: int, tmp: Path) -> float | None:
    exe = need("docker-compose")
    per_service = per_host // DEPLOYMENTS
    services = "".join(
        f"  app{i}:\n    image: gitsync-test/busybox:1\n    command: {json.dumps(LOOP)}\n    environment: {{INDEX: '{i}'}}\n"
        f"    labels: {{io.gitsync.bench-compose: '1'}}\n    scale: {per_service}\n    network_mode: bridge\n"
        for i in range(DEPLOYMENTS)
    )
    f = tmp / "compose.yaml"
    f.write_text("version: '2.4'\nservices:\n" + services)
    wipe(apis, "io.gitsync.bench-compose=1")
    t = time.perf_counter()
    procs = [
        subprocess.Popen([exe, "-f", str(f), "-p", f"bench{e.index}", "up", "-d"], env={**os.environ, "DOCKER_HOST": e.tcp_url}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for e in testbed.engines(3)
    ]
    errors = [p.communicate()[1] for p in procs]
    took = time.perf_counter() - t
    if any(p.returncode for p in procs):
        print("docker-compose failed:", [e.decode()[-500:] for e in errors])
        return None
    running = sum(len(api.containers(filters={"label": "io.gitsync.bench-compose=1"})) for api in apis.values())
    assert running == per_host * 3, f"compose started {running} containers"
    wipe(apis, "io.gitsync.bench-compose=1")
    return took


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-host", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--noop-only", action="store_true", help="skip the cold-converge contenders (gitsync still converges once)")
    args = ap.parse_args()
    testbed.up(3)
    apis = clients()
    wipe(apis, f"io.gitsync.managed-by={AGENT}")
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        cfg = make_config(tmp, args.per_host)
        total = args.per_host * 3

        # (b) cold converge, each contender from empty
        floor_seq = sdk_floor(apis, args.per_host, 1) if not args.noop_only else float("nan")
        floor_par = sdk_floor(apis, args.per_host, 4) if not args.noop_only else float("nan")
        compose = compose_run(apis, args.per_host, tmp) if not args.noop_only else None
        syncer = Syncer(cfg)
        t = time.perf_counter()
        result = syncer.sync(timeout=600)
        cold = time.perf_counter() - t
        assert result.outcome == "success", result.message
        running = sum(len(api.containers(filters={"label": f"io.gitsync.managed-by={AGENT}"})) for api in apis.values())
        assert running == total, f"{running} running, expected {total}"

        # (a) no-op, warm: the list floor vs plan vs no-op apply
        label = f"io.gitsync.managed-by={AGENT}"
        pool = ThreadPoolExecutor(3)

        def list_floor() -> None:
            list(pool.map(lambda api: api.containers(all=True, filters={"label": [label]}), apis.values()))

        def plan_once() -> None:
            seen = syncer.preview()
            assert seen.plan.in_sync

        def apply_once() -> None:
            r = syncer.sync()
            assert r.outcome == "success" and r.applied is not None and not r.applied.results

        for fn in (list_floor, plan_once, apply_once):
            fn()  # warm-up
        floor_t: list[float] = []
        plan_t: list[float] = []
        apply_t: list[float] = []
        for _ in range(args.rounds):  # interleaved, so that the machine's drift touches all three alike
            floor_t += timed(list_floor, 1)
            plan_t += timed(plan_once, 1)
            apply_t += timed(apply_once, 1)
        syncer.close()
        wipe(apis, label)

    med = statistics.median
    report = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "containers": total,
        "noop_list_floor_ms": round(med(floor_t) * 1000, 1),
        "noop_plan_ms": round(med(plan_t) * 1000, 1),
        "noop_apply_ms": round(med(apply_t) * 1000, 1),
        "noop_plan_ratio": round(med(plan_t) / med(floor_t), 2),
        "noop_apply_ratio": round(med(apply_t) / med(floor_t), 2),
        "cold_gitsync_s": round(cold, 2),
        "cold_sdk_floor_sequential_s": round(floor_seq, 2),
        "cold_sdk_floor_4_workers_s": round(floor_par, 2),
        "cold_compose_s": round(compose, 2) if compose else None,
        "cold_ratio_vs_sdk_sequential": round(cold / floor_seq, 2),
        "cold_ratio_vs_sdk_4_workers": round(cold / floor_par, 2),
        "cold_ratio_vs_compose": round(cold / compose, 2) if compose else None,
        "code": str(Path(__file__).resolve().parent.parent),
    }
    record("sync", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
