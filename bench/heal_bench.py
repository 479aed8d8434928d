"""Benchmark self-healing on the test bed.

    sudo python -m bench.heal_bench [--rounds 3] [--swarm]

1. heal: a replica's process is SIGKILLed from the host (a real crash, exit 137).
   gitsync (restart: "no", so the agent does the restart itself, driven by the
   Docker event) against the floor: Docker's own restart policy ("always") on a
   plain container on the same host. Time from the kill to the container's next
   `start` event, read from the engine's event stream.
2. host death: the engine of a host holding replicas is SIGKILLed (its network
   namespace stays, so the address stops answering); time until the desired
   replicas run on the surviving hosts, with the default grace of 10 s.
   --swarm also measures Docker Swarm's own rescheduling on the same engines.
Results are printed and appended to bench/results/heal.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import docker
import requests

from bench import record, swarm
from bench.agent_bench import GIT_ENV, QUICK_STOP
from bench.sync_bench import clients, wipe
from tests import testbed

AGENT = "benchheal"


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env=GIT_ENV)


def crash(api: docker.APIClient, container: str) -> float:
    pid = api.inspect_container(container)["State"]["Pid"]
    t = time.time()
    os.kill(pid, signal.SIGKILL)
    return t


def next_start(api: docker.APIClient, since: float, match: dict[str, str], timeout: float = 30) -> float:
    """Time of the first `start` event after `since` for a container with these labels."""
    deadline = time.time() + timeout
    stream = api.events(since=int(since) - 1, until=None, filters={"type": ["container"], "event": ["start"], "label": [f"{k}={v}" for k, v in match.items()]}, decode=True)
    result: list[float] = []

    def read() -> None:
        for ev in stream:
            t = ev.get("timeNano", 0) / 1e9
            if t > since:
                result.append(t)
                return

    th = threading.Thread(target=read, daemon=True)
    th.start()
    th.join(max(0.0, deadline - time.time()))
    stream.close()
    if not result:
        raise RuntimeError(f"no start within {timeout}s")
    return result[0]


def wait_running(apis: dict[str, docker.APIClient], hosts: list[str], label: str, n: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = 0
        for h in hosts:
            try:
                count += len(apis[h].containers(filters={"label": label, "status": "running"}))
            except Exception:
                pass
        if count >= n:
            return time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(f"{n} replicas not running on {hosts} within {timeout}s")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3, help="crash rounds; each waits 31 s so every restart is a first one")
    ap.add_argument("--swarm", action="store_true")
    args = ap.parse_args()
    testbed.up(3)
    apis = clients()
    wipe(apis, f"io.gitsync.managed-by={AGENT}")
    wipe(apis, "io.gitsync.bench-floor=1")
    report: dict = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{platform.machine()} {os.cpu_count()} cores"}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        repo = tmp / "repo"
        repo.mkdir()
        heal = (
            "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: heal}\n"
            f"spec:\n  replicas: 1\n  image: gitsync-test/busybox:1\n  command: {json.dumps(QUICK_STOP)}\n  restart: \"no\"\n"
            "  placement: {hostSelector: {role: one}}\n"
        )
        web = (
            "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: web}\n"
            f"spec:\n  replicas: 3\n  image: gitsync-test/busybox:1\n  command: {json.dumps(QUICK_STOP)}\n"
            "  placement: {hostSelector: {pool: web}}\n"
        )
        (repo / "apps.yaml").write_text(heal + "---\n" + web)
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "bench")
        hosts = "".join(
            f"  - {{name: {e.name}, url: '{e.tcp_url}', insecure: true, labels: {{role: {'one' if e.index == 1 else 'other'}, pool: web}}}}\n"
            for e in testbed.engines(3)
        )
        config = tmp / "agent.yaml"
        port = 19400
        config.write_text(f"name: {AGENT}\nsource: {{url: '{repo}', interval: 600s}}\nhosts:\n{hosts}server: {{listen: '127.0.0.1:{port}'}}\nstate_dir: {tmp / 'state'}\n")
        log = open(tmp / "agent.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "gitsync", "run", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.2)
            h1 = apis["h1"]
            floor = h1.create_container("gitsync-test/busybox:1", command=QUICK_STOP, name="floor-heal", labels={"io.gitsync.bench-floor": "1"},
                                        host_config=h1.create_host_config(restart_policy={"Name": "always"}))
            h1.start(floor["Id"])
            ours, docker_policy = [], []
            for i in range(args.rounds):
                time.sleep(2.5)  # let both stay up: Docker and gitsync forgive a crash after a while
                t = crash(h1, "floor-heal")
                docker_policy.append(next_start(h1, t, {"io.gitsync.bench-floor": "1"}) - t)
                time.sleep(31 if i else 0.5)  # gitsync forgives after 30 s up: every round is a first restart
                name = f"{AGENT}-heal-0"
                t = crash(h1, name)
                ours.append(next_start(h1, t, {"io.gitsync.managed-by": AGENT, "io.gitsync.deployment": "heal"}) - t)
            report["heal_rounds"] = len(ours)
            report["heal_gitsync_ms"] = round(statistics.median(ours) * 1000)
            report["heal_docker_restart_policy_ms"] = round(statistics.median(docker_policy) * 1000)
            report["heal_ratio"] = round(statistics.median(ours) / statistics.median(docker_policy), 2)

            # host death: web has 3 replicas over h1..h3; kill the engine of a host holding one
            label = f"io.gitsync.managed-by={AGENT}"
            wait_running(apis, ["h1", "h2", "h3"], label, 4, 30)
            victim = "h2"
            held = len([c for c in apis[victim].containers(filters={"label": label}) if c["Labels"].get("io.gitsync.deployment") == "web"])
            assert held >= 1
            t = time.monotonic()
            testbed.kill(testbed.engines(3)[1])
            survivors = ["h1", "h3"]
            done = wait_running(apis, survivors, "io.gitsync.deployment=web", 3, 60)
            report["host_death_to_running_elsewhere_s"] = round(done - t, 1)
            report["host_grace_s"] = 10
        except Exception:
            log.flush()
            print((tmp / "agent.log").read_text()[-6000:], file=sys.stderr)
            raise
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            log.close()
            testbed.start(testbed.engines(3)[1])
            apis = clients()
            wipe(apis, f"io.gitsync.managed-by={AGENT}")
            wipe(apis, "io.gitsync.bench-floor=1")
    if args.swarm:
        report["swarm_host_death_to_running_elsewhere_s"] = swarm_reschedule(apis)
    record("heal", report)
    return 0


def swarm_reschedule(apis: dict[str, docker.APIClient]) -> float | None:
    """Docker Swarm with its defaults on the same engines: kill a worker's engine, time until 3 tasks run elsewhere."""
    e = testbed.engines(3)
    try:
        swarm.form(apis, e)
        spec = docker.types.TaskTemplate(docker.types.ContainerSpec("gitsync-test/busybox:1", command=QUICK_STOP), placement=docker.types.Placement(constraints=["node.role==worker"]))
        svc = apis["h1"].create_service(spec, name="swarmbench", mode=docker.types.ServiceMode("replicated", replicas=3))
        deadline = time.monotonic() + 60

        def running_on(hosts: list[str]) -> int:
            n = 0
            for h in hosts:
                try:
                    n += len(apis[h].containers(filters={"label": "com.docker.swarm.service.name=swarmbench", "status": "running"}))
                except Exception:
                    pass
            return n

        while running_on(["h2", "h3"]) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        if running_on(["h2", "h3"]) < 3:
            return None
        t = time.monotonic()
        testbed.kill(e[1])
        deadline = time.monotonic() + 120
        while running_on(["h3"]) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        took = time.monotonic() - t if running_on(["h3"]) >= 3 else None
        apis["h1"].remove_service(svc["ID"])
        return round(took, 1) if took else None
    finally:
        testbed.start(e[1])
        swarm.leave(clients())


if __name__ == "__main__":
    sys.exit(main())
