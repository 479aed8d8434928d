"""Benchmark Services on the test bed: the same image, the same load, side by side in one run.

    sudo python -m bench.service_bench [--seconds 10] [--workers 4]

1. failed requests during a rolling update of 3 replicas (one per host), a steady stream of
   requests (one connection each, tests/load.py) to h1:
   - gitsync, through its Service's hostPort (start-first, the default);
   - docker-compose (Debian's) `up -d` recreating its container after an image change, on h1,
     load to its published port;
   - with --swarm, Docker Swarm on the same engines, `docker service update` of 3 tasks (one per
     host). Its routing mesh (and its virtual IPs) need IPVS, which this machine's kernel lacks,
     so the mesh cannot answer here; what can run is a host-mode published port (the load to h1's
     task), which Swarm can only update stop-first on a node (the port is bound once).
2. throughput and latency (wrk, 2 threads, 16 connections; busybox httpd closes every connection
   after one answer, so each request is a new connection, two through the proxy) through the
   Service (h1's proxy, balancing over the 3 replicas, 2 of them on other hosts) against straight
   to the replica on h1 by the port its host publishes; --rounds interleaved runs, medians. And the
   latency of one request at a time (no queueing), both ways: what the extra hop costs.
3. time from a replica's death (SIGKILL) to its removal from rotation, and from a host's network
   cut to zero failed requests: the last failed request after the event.
Results are printed and appended to bench/results/service.jsonl.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import record, swarm
from bench.tools import need
from bench.agent_bench import GIT_ENV
from bench.sync_bench import clients, wipe
from gitsync.core.config import load as load_config
from gitsync.reconcile import Syncer
from tests import testbed
from tests.load import Load

AGENT = "benchsvc"
SERVE = 'hostname > /www/index.html; trap "exit 0" TERM; httpd -f -p 80 -h /www & wait'


def web(image: str) -> str:
    return (
        "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: web, labels: {app: web}}\n"
        f"spec:\n  replicas: 3\n  image: {image}\n  command: [sh, -c, '{SERVE}']\n"
        "  ports: [{containerPort: 80}]\n  stopGracePeriod: 2s\n"
        "---\napiVersion: gitsync.io/v1\nkind: Service\nmetadata: {name: web}\n"
        "spec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 80, hostPort: 8080}]\n"
    )


COMPOSE = """\
services:
  web:
    image: {image}
    command: ["sh", "-c", '{serve}']
    ports: ["8081:80"]
    stop_grace_period: 2s
"""


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env=GIT_ENV)


def during(host: str, port: int, workers: int, action) -> dict[str, object]:  # type: ignore[no-untyped-def]
    with Load(host, port, workers=workers, timeout=5.0) as load:
        time.sleep(1.0)
        t = time.monotonic()
        action()
        took = time.monotonic() - t
        time.sleep(1.0)
    tally = load.tally
    return {"ok": tally.ok, "failed": tally.failed, "errors": dict(tally.errors), "action_s": round(took, 2)}


def wrk(url: str, seconds: int) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency", url], check=True, capture_output=True, text=True).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    assert rps, out
    return {"rps": float(rps.group(1)), "p50_ms": ms("50"), "p99_ms": ms("99"), "errors": errors.group(0) if errors else ""}


def window(host: str, port: int, workers: int, event, settle: float) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Failed requests after `event`, and how long after it the last one failed."""
    with Load(host, port, workers=workers, timeout=5.0) as load:
        time.sleep(1.0)
        t = time.monotonic()
        event()
        time.sleep(settle)
    tally = load.tally
    last = None if tally.last_failure is None else round(tally.last_failure - t, 2)
    return {"ok": tally.ok, "failed": tally.failed, "last_failure_after_s": last, "errors": dict(tally.errors)}


def swarm_update(apis, engines, workers: int) -> dict[str, object] | None:  # type: ignore[no-untyped-def]
    import docker

    try:
        swarm.form(apis, engines)

        def spec(image: str) -> docker.types.TaskTemplate:
            return docker.types.TaskTemplate(
                docker.types.ContainerSpec(image, command=["sh", "-c", SERVE], stop_grace_period=2_000_000_000),
                placement=docker.types.Placement(maxreplicas=1),
            )

        svc = apis["h1"].create_service(
            spec("gitsync-test/busybox:1"), name="benchsvc-swarm", mode=docker.types.ServiceMode("replicated", replicas=3),
            endpoint_spec=docker.types.EndpointSpec(ports={8082: (80, "tcp", "host")}),
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            tasks = apis["h1"].tasks(filters={"service": "benchsvc-swarm", "desired-state": "running"})
            if sum(1 for t in tasks if t["Status"]["State"] == "running") == 3:
                break
            time.sleep(0.3)
        time.sleep(1)

        def update() -> None:
            version = apis["h1"].inspect_service(svc["ID"])["Version"]["Index"]
            apis["h1"].update_service(
                svc["ID"], version, task_template=spec("gitsync-test/busybox:2"), name="benchsvc-swarm",
                mode=docker.types.ServiceMode("replicated", replicas=3),
                endpoint_spec=docker.types.EndpointSpec(ports={8082: (80, "tcp", "host")}),
                update_config=docker.types.UpdateConfig(parallelism=1, order="stop-first"),
            )
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                state = (apis["h1"].inspect_service(svc["ID"]).get("UpdateStatus") or {}).get("State")
                if state == "completed":
                    return
                time.sleep(0.3)

        return during(engines[0].addr, 8082, workers, update)
    finally:
        swarm.leave(apis)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--swarm", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    need("wrk")
    need("docker-compose")
    engines = testbed.up(3)
    # wrk and the load open a connection per request from this namespace: let it reuse its
    # TIME_WAIT ports (as the proxies do), or later rounds run out of them and measure that
    tw = Path("/proc/sys/net/ipv4/tcp_tw_reuse")
    tw_before = tw.read_text().strip()
    tw.write_text("1")
    try:
        return run(args, engines)
    finally:
        tw.write_text(tw_before)


def run(args: argparse.Namespace, engines: list[testbed.Engine]) -> int:
    apis = clients()
    label = f"io.gitsync.managed-by={AGENT}"
    h1 = engines[0].addr
    report: dict[str, object] = {"bench": "service", "machine": f"{platform.node()} {os.cpu_count()} cpu", "time": time.time()}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        repo = tmp / "repo"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        (repo / "web.yaml").write_text(web("gitsync-test/busybox:1"))
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "v1")
        hosts = "".join(f"  - {{name: {e.name}, url: '{e.tcp_url}', insecure: true}}\n" for e in engines)
        cfg_path = tmp / "gitsync.yaml"
        cfg_path.write_text(
            f"name: {AGENT}\nsource: {{url: '{repo}'}}\nhosts:\n{hosts}services: {{proxyImage: '{testbed.PROXY_IMAGE}'}}\nstate_dir: {tmp / 'state'}\n"
        )
        syncer = Syncer(load_config(str(cfg_path)))
        compose_dir = tmp / "compose"
        compose_dir.mkdir()
        compose_env = {**os.environ, "DOCKER_HOST": engines[0].tcp_url, "COMPOSE_PROJECT_NAME": "benchsvc"}

        def compose_up(image: str) -> None:
            (compose_dir / "docker-compose.yml").write_text(COMPOSE.format(image=image, serve=SERVE))
            subprocess.run(["docker-compose", "up", "-d"], cwd=compose_dir, env=compose_env, check=True, capture_output=True)

        try:
            wipe(apis, label)
            first = syncer.sync(timeout=120)
            assert str(first.outcome) == "success", first.message
            compose_up("gitsync-test/busybox:1")
            time.sleep(1)

            def roll() -> None:
                (repo / "web.yaml").write_text(web("gitsync-test/busybox:2"))
                git(repo, "commit", "-qam", "v2")
                r = syncer.sync(timeout=120)
                assert str(r.outcome) == "success", r.message

            report["rolling_update_gitsync"] = during(h1, 8080, args.workers, roll)
            report["rolling_update_compose"] = during(h1, 8081, args.workers, lambda: compose_up("gitsync-test/busybox:2"))

            if args.swarm:
                report["rolling_update_swarm_host_mode"] = swarm_update(apis, engines, args.workers)

            local = next(c for c in apis["h1"].containers(filters={"label": [label, "io.gitsync.deployment=web"]}))
            direct_port = next(p["PublicPort"] for p in local["Ports"] if p.get("PrivatePort") == 80 and p.get("PublicPort"))
            rounds: dict[str, list[dict[str, float]]] = {"direct": [], "through_service": []}
            for _ in range(args.rounds):  # interleaved: the machine's noise hits both alike
                rounds["direct"].append(wrk(f"http://{h1}:{direct_port}/", args.seconds))
                rounds["through_service"].append(wrk(f"http://{h1}:8080/", args.seconds))
            med = {k: {m: statistics.median(r[m] for r in v) for m in ("rps", "p50_ms", "p99_ms")} for k, v in rounds.items()}
            report["throughput_rounds"] = rounds
            report["direct"], report["through_service"] = med["direct"], med["through_service"]
            report["throughput_ratio"] = round(med["through_service"]["rps"] / med["direct"]["rps"], 2)
            report["added_p99_ms"] = round(med["through_service"]["p99_ms"] - med["direct"]["p99_ms"], 3)
            report["added_p50_ms"] = round(med["through_service"]["p50_ms"] - med["direct"]["p50_ms"], 3)

            # latency with no queueing: one request at a time (what a request pays for the extra hop)
            lat: dict[str, list[float]] = {"direct": [], "through_service": []}
            for _ in range(args.rounds):
                for key, port in (("direct", direct_port), ("through_service", 8080)):
                    with Load(h1, port, workers=1) as one:
                        time.sleep(args.seconds / 2)
                    lat[key] += one.tally.latencies
            for key, values in lat.items():
                values.sort()
                report[f"one_at_a_time_{key}"] = {
                    "requests": len(values), "p50_ms": round(1000 * values[len(values) // 2], 3), "p99_ms": round(1000 * values[int(len(values) * 0.99)], 3),
                }
            report["one_at_a_time_added_p99_ms"] = round(report["one_at_a_time_through_service"]["p99_ms"] - report["one_at_a_time_direct"]["p99_ms"], 3)  # type: ignore[index]
            report["one_at_a_time_added_p50_ms"] = round(report["one_at_a_time_through_service"]["p50_ms"] - report["one_at_a_time_direct"]["p50_ms"], 3)  # type: ignore[index]

            victim = next(c for c in apis["h2"].containers(filters={"label": [label, "io.gitsync.deployment=web"]}))
            report["replica_killed"] = window(h1, 8080, args.workers, lambda: apis["h2"].kill(victim["Id"]), 4.0)
            syncer.sync(timeout=120)  # it comes back
            h3 = engines[2]
            try:
                report["host_network_cut"] = window(h1, 8080, args.workers, lambda: testbed.set_link(h3, False), 6.0)
            finally:
                testbed.set_link(h3, True)
        finally:
            subprocess.run(["docker-compose", "down"], cwd=compose_dir, env=compose_env, capture_output=True)
            wipe(apis, label)
            for api in apis.values():
                for n in api.networks(filters={"label": label}):
                    api.remove_network(n["Id"])
            syncer.close()
    record("service", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
