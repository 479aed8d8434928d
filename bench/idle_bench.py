"""What an idle agent costs per host it watches.

    sudo python -m bench.idle_bench [--hosts 3,30,90,300] [--seconds 30] [--code PATH] [--label NAME]

For each count N, `gitsync run` is started with N host entries (they share the three engines of
the test bed, round robin: an engine answers many entries, as a host answers one), no managed
containers and a 300 s poll interval, then left alone. After a warm-up, its CPU time (utime +
stime from /proc), resident memory (VmRSS) and threads are read over `--seconds`. `--code` runs
the agent from another checkout (for example a git worktree of an earlier commit), so a baseline
and the current code are measured on the same machine in the same run. Results are printed and
appended to bench/results/idle.jsonl.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench import append, proc_status
from tests import testbed

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def measure(n: int, seconds: float, code: Path, port: int, warmup: float) -> dict[str, float]:
    engines = testbed.engines(3)
    with tempfile.TemporaryDirectory(prefix="gitsync-idle-") as tmp:
        t = Path(tmp)
        (t / "manifests").mkdir()
        hosts = "".join(
            f"  - {{name: n{i:03d}, url: '{engines[i % 3].tcp_url}', insecure: true, grace: 10s}}\n" for i in range(n)
        )
        cfg = t / "agent.yaml"
        cfg.write_text(
            f"name: idlebench\nsource: {{url: '{t / 'manifests'}', interval: 300s}}\nhosts:\n{hosts}"
            f"server: {{listen: '127.0.0.1:{port}'}}\nstate_dir: {t / 'state'}\n"
        )
        env = {**os.environ, "PYTHONPATH": str(code)}
        with open(t / "agent.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "gitsync", "run", "-c", str(cfg)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=code)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the agent did not become ready:\n" + (t / "agent.log").read_text()[-2000:])
                time.sleep(0.2)
            time.sleep(warmup)
            c0, w0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(seconds)
            c1, w1 = cpu_seconds(proc.pid), time.monotonic()
            return {
                "hosts": n,
                "cpu_percent": round(100 * (c1 - c0) / (w1 - w0), 2),
                "rss_mb": round(proc_status(proc.pid, "VmRSS") / 1024, 1),
                "threads": proc_status(proc.pid, "Threads"),
            }
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--hosts", default="3,30,90,300")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--code", type=Path, default=ROOT, help="the checkout whose agent to run")
    p.add_argument("--label", default="current")
    args = p.parse_args()
    testbed.up(3)
    rows = []
    for i, n in enumerate(int(x) for x in args.hosts.split(",")):
        row = {"label": args.label, **measure(n, args.seconds, args.code.resolve(), 19400 + i, args.warmup)}
        row["cpu_percent_per_host"] = round(row["cpu_percent"] / n, 3)
        rows.append(row)
        print(f"{args.label:<10} {n:>4} hosts: {row['cpu_percent']:6.2f} % of a core ({row['cpu_percent_per_host']:.3f} %/host), "
              f"{row['rss_mb']:6.1f} MB RSS, {row['threads']} threads", flush=True)
    for row in rows:
        append("idle", {**row, "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": platform.machine(), "seconds": args.seconds})
    return 0


if __name__ == "__main__":
    sys.exit(main())
