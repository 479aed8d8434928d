"""Benchmark `gitsync run` on the test bed.

    sudo python -m bench.agent_bench [--rounds 10]

1. push-to-converged: commit a one-replica image change, send the signed GitHub
   webhook, and time until the agent's history shows that commit converged;
   floor: `git fetch` of the commit into a mirror plus replacing that container
   straight through the SDK (create + start new, stop + remove old, rename: the
   same start-first replace), measured in the same run.
2. webhook throughput with wrk (Debian's package) while a sync runs: requests per
   second for rejected (bad signature) and accepted (signed push) webhooks, and
   how much the running sync slowed down compared with the same sync without load.
3. resident memory of the idle agent managing 300 containers (VmRSS).
Results are printed and appended to bench/results/agent.jsonl.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import requests

from bench import record, rss_mb
from bench.tools import need
from bench.sync_bench import clients, wipe
from tests import testbed

AGENT = "benchagent"
SECRET = "bench-secret"
QUICK_STOP = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"]
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=GIT_ENV).stdout.strip()


def manifest(name: str, replicas: int, image: str, host_role: str, extra: str = "") -> str:
    return (
        f"apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {{name: {name}}}\n"
        f"spec:\n  replicas: {replicas}\n  image: {image}\n  command: {json.dumps(QUICK_STOP)}\n"
        f"  placement: {{hostSelector: {{role: {host_role}}}}}\n{extra}"
    )


class Bed:
    def __init__(self, tmp: Path, bulk: int) -> None:
        self.tmp = tmp
        self.work = tmp / "work"
        self.work.mkdir()
        self.bare = tmp / "deploy.git"
        git(tmp, "init", "-q", "--bare", "-b", "main", str(self.bare))
        git(self.work, "init", "-q", "-b", "main")
        git(self.work, "remote", "add", "origin", str(self.bare))
        self.bulk = bulk
        self.write(one="gitsync-test/busybox:1", bulk_image="gitsync-test/busybox:1")
        self.port = 19300
        hosts = "".join(
            f"  - {{name: {e.name}, url: '{e.tcp_url}', insecure: true, labels: {{role: {'one' if e.index == 1 else 'bulk'}}}}}\n"
            for e in testbed.engines(3)
        )
        self.config = tmp / "agent.yaml"
        self.config.write_text(
            f"name: {AGENT}\nsource: {{url: '{self.bare}', interval: 600s}}\nhosts:\n{hosts}"
            f"server: {{listen: '127.0.0.1:{self.port}'}}\nstate_dir: {tmp / 'state'}\n"
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def write(self, one: str, bulk_image: str) -> str:
        (self.work / "one.yaml").write_text(manifest("one", 1, one, "one"))
        per = self.bulk // 2
        (self.work / "bulk.yaml").write_text(
            "---\n".join(manifest(f"bulk{i}", per, bulk_image, "bulk", "  update: {parallelism: 4}\n") for i in range(2))
        )
        git(self.work, "add", "-A")
        git(self.work, "commit", "-qm", f"one={one} bulk={bulk_image}")
        git(self.work, "push", "-q", "origin", "main")
        return git(self.work, "rev-parse", "HEAD")

    def start_agent(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "GITSYNC_WEBHOOK_SECRET": SECRET}
        self.log = open(self.tmp / "agent.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "gitsync", "run", "-c", str(self.config)], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return proc
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("agent not ready")

    def hook(self, sha: str) -> None:
        body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()
        sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        r = requests.post(f"{self.url}/hooks/github", data=body, headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": sig}, timeout=5)
        assert r.status_code == 202, r.text

    def converged(self, sha: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for s in requests.get(f"{self.url}/api/syncs", timeout=5).json():
                if s["commit"] == sha and s["outcome"] == "success":
                    return s
                if s["commit"] == sha and s["outcome"] in ("failure", "error"):
                    raise RuntimeError(f"sync of {sha} failed: {s['message']}")
            time.sleep(0.01)
        raise RuntimeError(f"{sha} did not converge")


def floor_replace(api: docker.APIClient, mirror: Path, bare: Path, name: str, image: str) -> float:
    """git fetch + start-first replace of one container, straight through the SDK."""
    t = time.perf_counter()
    subprocess.run(["git", "fetch", "-q", str(bare), "+refs/heads/main:refs/heads/main"], cwd=mirror, check=True, env=GIT_ENV)
    old = api.inspect_container(name)["Id"]
    new = api.create_container(image, command=QUICK_STOP, name=f"{name}-next", labels={"io.gitsync.bench-floor": "1"})["Id"]
    api.start(new)
    api.stop(old, timeout=10)
    api.remove_container(old, force=True)
    api.rename(new, name)
    return time.perf_counter() - t


def wrk(url: str, body: bytes, headers: dict[str, str], seconds: int, tmp: Path) -> dict:
    script = tmp / "post.lua"
    hdr = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(body.decode())}\n{hdr}')
    out = subprocess.run(["wrk", "-t2", "-c16", f"-d{seconds}s", "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    rps = float(next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec")))
    non2xx = next((int(line.split()[-1]) for line in out.splitlines() if "Non-2xx" in line), 0)
    return {"rps": round(rps), "non_2xx": non2xx, "raw_tail": out.strip().splitlines()[-2:]}


class _Done(Exception):
    """The measurements asked for are taken."""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--bulk", type=int, default=300, help="containers managed on the two bulk hosts")
    ap.add_argument("--wrk-seconds", type=int, default=8)
    ap.add_argument("--push-only", action="store_true", help="measure push to converged only (no webhook load, no rollouts)")
    args = ap.parse_args()
    need("wrk")
    testbed.up(3)
    apis = clients()
    wipe(apis, f"io.gitsync.managed-by={AGENT}")
    wipe(apis, "io.gitsync.bench-floor=1")
    report: dict = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{platform.machine()} {os.cpu_count()} cores", "code": os.getcwd()}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        bed = Bed(tmp, args.bulk)
        proc = bed.start_agent()
        try:
            total = sum(len(a.containers(filters={"label": f"io.gitsync.managed-by={AGENT}"})) for a in apis.values())
            report["managed_containers"] = total

            # 3. idle memory with every container managed (after a few syncs)
            time.sleep(3)
            report["idle_rss_mb"] = round(rss_mb(proc.pid), 1)

            # 1. push to converged vs floor
            ours, floor = [], []
            mirror = tmp / "mirror.git"
            git(tmp, "init", "-q", "--bare", str(mirror))
            h1 = apis["h1"]
            h1.create_container("gitsync-test/busybox:1", command=QUICK_STOP, name="floor-one", labels={"io.gitsync.bench-floor": "1"})
            h1.start("floor-one")
            for i in range(args.rounds):
                image = f"gitsync-test/busybox:{2 + i % 2}"
                sha = bed.write(one=image, bulk_image="gitsync-test/busybox:1")
                t = time.perf_counter()
                bed.hook(sha)
                bed.converged(sha)
                ours.append(time.perf_counter() - t)
                floor.append(floor_replace(h1, mirror, bed.bare, "floor-one", image))
            wipe(apis, "io.gitsync.bench-floor=1")
            report["push_to_converged_ms"] = round(statistics.median(ours) * 1000)
            report["push_floor_ms"] = round(statistics.median(floor) * 1000)
            report["push_ratio"] = round(statistics.median(ours) / statistics.median(floor), 2)

            if args.push_only:
                raise _Done
            # 2. webhook load while a sync runs: a rolling update of the bulk deployments
            def timed_rollout(image: str, load: dict | None) -> tuple[float, dict | None]:
                sha = bed.write(one="gitsync-test/busybox:1", bulk_image=image)
                t = time.perf_counter()
                bed.hook(sha)
                result = None
                if load is not None:
                    result = wrk(f"{bed.url}/hooks/github", load["body"], load["headers"], args.wrk_seconds, tmp)
                s = bed.converged(sha, 900)
                return time.perf_counter() - t, {"wrk": result, "sync_seconds": s["seconds"]}

            base_t, base = timed_rollout("gitsync-test/busybox:2", None)
            body = json.dumps({"ref": "refs/heads/main", "after": "f" * 40}).encode()
            bad = {"body": body, "headers": {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64}}
            bad_t, bad_r = timed_rollout("gitsync-test/busybox:3", bad)
            good_sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            good = {"body": body, "headers": {"X-GitHub-Event": "push", "X-Hub-Signature-256": good_sig}}
            good_t, good_r = timed_rollout("gitsync-test/busybox:2", good)
            assert bad_r and good_r and base
            report["rollout_sync_s_no_load"] = base["sync_seconds"]
            report["rejected_rps"] = bad_r["wrk"]["rps"]
            report["rejected_non_2xx"] = bad_r["wrk"]["non_2xx"]
            report["rollout_sync_s_under_rejected_load"] = bad_r["sync_seconds"]
            report["accepted_rps"] = good_r["wrk"]["rps"]
            report["rollout_sync_s_under_accepted_load"] = good_r["sync_seconds"]
            report["sync_slowdown_rejected"] = round(bad_r["sync_seconds"] / base["sync_seconds"], 2)
            report["sync_slowdown_accepted"] = round(good_r["sync_seconds"] / base["sync_seconds"], 2)
            syncs = requests.get(f"{bed.url}/api/syncs", timeout=5).json()
            report["syncs_recorded"] = len(syncs)
        except _Done:
            pass
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
            bed.log.close()
            wipe(apis, f"io.gitsync.managed-by={AGENT}")
    record("agent", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
