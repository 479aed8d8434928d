"""gitsync's swarm runtime against `docker stack deploy`, on a Swarm of the test bed's engines.

    sudo python -m bench.swarm_bench [--rounds 3] [--idle-seconds 30]

1. converge: 10 deployments of 3 replicas from empty, until every task runs. gitsync: `gitsync
   apply` of 10 manifests (it returns when every service runs its spec everywhere); the baseline:
   Debian's docker CLI (/usr/bin/docker, 20.10) `docker stack deploy` of the equivalent compose
   file, timed until the manager lists 30 running tasks. Rounds alternate; everything is removed
   (and its containers gone) between them. Both pull the image from the test bed's registry.
2. traffic: requests streamed to a node's port through a rolling image update of 2 replicas: gitsync's
   Service (its proxy on the node, hostPort) against `docker service update --image` of the same
   service published in host mode on that node (no proxy: what Swarm offers without the routing
   mesh, which needs IPVS). Failed requests counted.
3. idle: `gitsync run` watching the Swarm with 300 tasks of its own (10 services of 30, each on an
   overlay network of its own: one network holds a /24), left alone: CPU (utime + stime) and
   resident memory over `--idle-seconds`.
Results are printed and appended to bench/results/swarm.jsonl.
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
from pathlib import Path

import docker
import requests

from bench import proc_status, record, swarm
from bench.agent_bench import GIT_ENV, QUICK_STOP
from bench.idle_bench import cpu_seconds
from tests import testbed

ROOT = Path(__file__).resolve().parents[1]
DOCKER_CLI = "/usr/bin/docker"  # Debian's docker.io client: the baseline the issue names
AGENT = "swarmbench"
STACK = "stackbench"
N, REPLICAS = 10, 3


def manifests(image: str, replicas: int, own_networks: bool = False) -> dict[str, str]:
    """N deployments; with `own_networks` each on an overlay network of its own (a Swarm network holds
    one /24: some 250 tasks)."""
    return {
        f"apps/d{i}.yaml": "apiVersion: gitsync.io/v1\nkind: Deployment\n"
        f"metadata: {{name: d{i}}}\nspec:\n  image: '{image}'\n  replicas: {replicas}\n  command: {json.dumps(QUICK_STOP)}\n"
        + (f"  networks: [n{i}]\n" if own_networks else "")
        for i in range(N)
    }


def compose(image: str, replicas: int) -> str:
    services = "".join(
        f"  d{i}:\n    image: '{image}'\n    command: {json.dumps(QUICK_STOP).replace('$', '$$')}\n"
        f"    deploy: {{replicas: {replicas}, endpoint_mode: dnsrr}}\n" for i in range(N)
    )
    return f"version: '3.8'\nservices:\n{services}"


def running_tasks(api: docker.APIClient, label: str) -> int:
    ids = {s["ID"] for s in api.services(filters={"label": label})}
    return sum(1 for t in api.tasks(filters={"desired-state": "running"}) if t["ServiceID"] in ids and t["Status"]["State"] == "running")


def wait_running(api: docker.APIClient, label: str, want: int, t0: float, timeout: float = 300) -> float:
    while running_tasks(api, label) < want:
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{label}: not {want} tasks running after {timeout}s")
        time.sleep(0.1)
    return time.monotonic() - t0


def clear(apis: dict[str, docker.APIClient]) -> None:
    """Every service gone, and every task's container with it."""
    m = apis["h1"]
    for s in m.services():
        m.remove_service(s["ID"])
    deadline = time.monotonic() + 120
    while any(api.containers(all=True, filters={"label": "com.docker.swarm.task"}) for api in apis.values()):
        if time.monotonic() > deadline:
            raise RuntimeError("task containers still there after 120 s")
        time.sleep(0.2)


def gitsync_round(work: Path, cfg: Path, apis: dict[str, docker.APIClient]) -> float:
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "gitsync", "apply", "-c", str(cfg), "--timeout", "300s"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"gitsync apply failed: {done.stdout[-1500:]}{done.stderr[-1500:]}")
    return wait_running(apis["h1"], f"io.gitsync.managed-by={AGENT}", N * REPLICAS, t0)


def stack_round(file: Path, manager_url: str, apis: dict[str, docker.APIClient]) -> float:
    t0 = time.monotonic()
    done = subprocess.run([DOCKER_CLI, "-H", manager_url, "stack", "deploy", "-c", str(file), STACK], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"docker stack deploy failed: {done.stdout}{done.stderr}")
    return wait_running(apis["h1"], f"com.docker.stack.namespace={STACK}", N * REPLICAS, t0)


SERVE = 'hostname > /www/index.html; trap "exit 0" TERM; httpd -f -p 8080 -h /www & wait'
HEALTH = "  healthcheck: {test: [CMD, wget, -q, -O, /dev/null, 'http://127.0.0.1:8080/'], interval: 1s, timeout: 2s, retries: 3}\n"


def traffic(work: Path, cfg: Path, engines: list[testbed.Engine], apis: dict[str, docker.APIClient]) -> dict[str, object]:
    """Failed requests through a rolling update: gitsync's Service against a host-mode published service."""
    from tests.load import Load

    repo = work / "repo"
    for f in (repo / "apps").glob("*.yaml"):
        f.unlink()

    def web(tag: str) -> str:
        return ("apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: web, labels: {app: web}}\nspec:\n"
                f"  image: '{REPO}:{tag}'\n  replicas: 2\n  command: [sh, -c, {json.dumps(SERVE)}]\n  ports: [{{containerPort: 8080}}]\n{HEALTH}"
                "---\napiVersion: gitsync.io/v1\nkind: Service\nmetadata: {name: front}\nspec:\n  selector: {app: web}\n"
                "  ports: [{port: 80, targetPort: 8080, hostPort: 8090}]\n")

    out: dict[str, object] = {}
    (repo / "apps" / "web.yaml").write_text(web("1"))
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "web 1"], cwd=repo, check=True, env=GIT_ENV)
    run = [sys.executable, "-m", "gitsync", "apply", "-c", str(cfg), "--timeout", "300s"]
    subprocess.run(run, cwd=ROOT, check=True, capture_output=True)
    (repo / "apps" / "web.yaml").write_text(web("2"))
    subprocess.run(["git", "commit", "-qam", "web 2"], cwd=repo, check=True, env=GIT_ENV)
    with Load(engines[0].addr, 8090, workers=4) as load:
        time.sleep(1)
        subprocess.run(run, cwd=ROOT, check=True, capture_output=True)
        time.sleep(1)
    out["gitsync_service"] = {"ok": load.tally.ok, "failed": load.tally.failed}
    clear(apis)

    base = [DOCKER_CLI, "-H", engines[0].tcp_url, "service"]
    subprocess.run([*base, "create", "--detach=false", "-q", "--name", "base", "--replicas", "2", "--endpoint-mode", "dnsrr",
                    "--publish", "mode=host,target=8080,published=8091", "--health-cmd", "wget -q -O /dev/null http://127.0.0.1:8080/",
                    "--health-interval", "1s", "--health-retries", "3", f"{REPO}:1", "sh", "-c", SERVE], check=True, capture_output=True)
    with Load(engines[0].addr, 8091, workers=4) as load:
        time.sleep(1)
        subprocess.run([*base, "update", "--detach=false", "-q", "--image", f"{REPO}:2", "base"], check=True, capture_output=True)
        time.sleep(1)
    out["service_update_host_mode"] = {"ok": load.tally.ok, "failed": load.tally.failed}
    clear(apis)
    return out


def idle(work: Path, cfg: Path, apis: dict[str, docker.APIClient], seconds: float) -> dict[str, float]:
    """The agent watching 300 tasks of its own, idle."""
    repo = work / "repo"
    for f in (repo / "apps").glob("*.yaml"):
        f.unlink()
    for path, text in manifests(IMAGE, 30, own_networks=True).items():
        (repo / path).write_text(text)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "thirty each"], cwd=repo, check=True, env=GIT_ENV)
    port = 9181
    agent_cfg = work / "agent.yaml"
    agent_cfg.write_text(cfg.read_text() + f"server: {{listen: '127.0.0.1:{port}'}}\n")
    with open(work / "agent.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gitsync", "run", "-c", str(agent_cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        t0 = time.monotonic()
        wait_running(apis["h1"], f"io.gitsync.managed-by={AGENT}", 300, t0, timeout=600)
        while True:  # the first sync done and in sync
            try:
                if requests.get(f"http://127.0.0.1:{port}/api/status", timeout=2).json()["deployments"].get("d9", {}).get("health") == "Healthy":
                    break
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.5)
        time.sleep(10)
        c0, w0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(seconds)
        c1, w1 = cpu_seconds(proc.pid), time.monotonic()
        return {"tasks": 300, "cpu_percent": round(100 * (c1 - c0) / (w1 - w0), 2), "rss_mb": round(proc_status(proc.pid, "VmRSS") / 1024, 1)}
    finally:
        proc.terminate()
        proc.wait(60)


REPO = f"{testbed.REGISTRY}/gitsync-bench/swarm"
IMAGE = f"{REPO}:1"


def push_images(engine: testbed.Engine) -> str:
    """The bench image (tags 1 and 2) and the Services' proxy, in the registry; the proxy's name."""
    testbed.build_proxy_image(engine.unix_url)
    proxy = f"{testbed.REGISTRY}/gitsync-bench/haproxy"
    client = docker.APIClient(base_url=engine.unix_url, version="auto", timeout=120)
    try:
        for local, repo, tag in ((f"{testbed.TEST_IMAGE}:1", REPO, "1"), (f"{testbed.TEST_IMAGE}:1", REPO, "2"),
                                 (testbed.PROXY_IMAGE, proxy, "2.6")):
            client.tag(local, repo, tag)
            for line in client.push(repo, tag=tag, stream=True, decode=True):
                if "error" in line:
                    raise RuntimeError(line["error"])
    finally:
        client.close()
    return f"{proxy}:2.6"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle-seconds", type=float, default=30)
    args = ap.parse_args()
    engines = testbed.up(3)
    for e in engines:
        testbed.build_images(e.unix_url)
    proxy = push_images(engines[0])
    apis = {e.name: docker.APIClient(base_url=e.tcp_url, version="auto", timeout=60) for e in engines}
    swarm.form(apis, engines)
    try:
        with tempfile.TemporaryDirectory(prefix="gitsync-swarmbench-") as tmp:
            work = Path(tmp)
            repo = work / "repo"
            (repo / "apps").mkdir(parents=True)
            subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
            for path, text in manifests(IMAGE, REPLICAS).items():
                (repo / path).write_text(text)
            subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
            subprocess.run(["git", "commit", "-qm", "ten"], cwd=repo, check=True, env=GIT_ENV)
            cfg = work / "gitsync.yaml"
            cfg.write_text(f"name: {AGENT}\nruntime: swarm\nsource: {{url: '{repo}', branch: main, interval: 300s}}\n"
                           f"hosts:\n  - {{name: m1, url: '{engines[0].tcp_url}', insecure: true}}\nstate_dir: {work / 'state'}\n"
                           f"services: {{proxyImage: '{proxy}'}}\n")
            file = work / "stack.yaml"
            file.write_text(compose(IMAGE, REPLICAS))
            ours: list[float] = []
            theirs: list[float] = []
            for _ in range(args.rounds):
                for who in ("gitsync", "stack"):
                    clear(apis)
                    if who == "gitsync":
                        ours.append(gitsync_round(work, cfg, apis))
                    else:
                        theirs.append(stack_round(file, engines[0].tcp_url, apis))
            clear(apis)
            g, s = statistics.median(ours), statistics.median(theirs)
            report: dict[str, object] = {
                "when": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.node(), "cpus": os.cpu_count(),
                "converge_10x3_gitsync_s": [round(x, 2) for x in ours], "converge_10x3_stack_deploy_s": [round(x, 2) for x in theirs],
                "converge_ratio_median": round(g / s, 2),
            }
            report["rolling_update_requests"] = traffic(work, cfg, engines, apis)
            report["idle_300_tasks"] = idle(work, cfg, apis, args.idle_seconds)
            clear(apis)
            record("swarm", report)
    finally:
        swarm.leave(apis)
        for api in apis.values():
            api.close()


if __name__ == "__main__":
    main()
