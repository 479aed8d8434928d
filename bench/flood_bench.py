"""Benchmark the agent's HTTP server under a slow-connection flood.

    sudo python -m bench.flood_bench [--slow 2000] [--seconds 10] [--code DIR --label NAME]

The agent (`gitsync run`, one replica on the test bed) is measured twice in one run:
without a flood, then while a separate process keeps `--slow` connections open against it
(half trickle their headers a byte at a time, half announce a 4 MiB body, send 256 KiB of it
and trickle the rest; each one the agent closes is opened again at once). Both times: valid
(signed) webhooks per second with wrk, the latency of /healthz, and the agent's resident
memory (peak of samples every 0.2 s). `--code DIR` runs the agent from another checkout (the
baseline before the server change), so both are measured on the same machine.
Results are printed and appended to bench/results/flood.jsonl.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import platform
import resource
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench import record, rss_mb
from bench.tools import need
from bench.agent_bench import AGENT, SECRET, Bed, wrk
from bench.sync_bench import clients, wipe
from tests import testbed

TRICKLE = b"POST /hooks/github HTTP/1.1\r\nHost: agent\r\nX-GitHub-Event: push\r\n"
BIG = b"POST /hooks/github HTTP/1.1\r\nHost: agent\r\nX-GitHub-Event: push\r\nContent-Length: 4194304\r\n\r\n" + b" " * (256 * 1024)


def flood(port: int, slow: int, stop: threading.Event, stats: dict) -> None:
    """Keep `slow` connections open; every second each sends one more byte."""
    sel = selectors.DefaultSelector()
    opened = closed = 0

    def open_one(kind: int) -> None:
        nonlocal opened
        s = socket.socket()
        s.setblocking(True)
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(TRICKLE if kind == 0 else BIG)
        except OSError:
            s.close()
            return
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, kind)
        opened += 1

    for i in range(slow):
        open_one(i % 2)
    stats["open_at_start"] = len(sel.get_map())
    last_tick = time.monotonic()
    while not stop.is_set():
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                data = s.recv(65536)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                s.close()  # type: ignore[union-attr]
                closed += 1
                open_one(key.data)
        if time.monotonic() - last_tick >= 1.0:
            last_tick = time.monotonic()
            for key in list(sel.get_map().values()):
                try:
                    key.fileobj.send(b"X")  # type: ignore[union-attr]
                except OSError:
                    pass
    stats["opened"], stats["closed_by_agent"], stats["open_at_end"] = opened, closed, len(sel.get_map())
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]


def measure(bed: Bed, pid: int, seconds: int, tmp: Path) -> dict:
    peak = [rss_mb(pid)]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            try:
                peak.append(rss_mb(pid))
            except OSError:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lat: list[float] = []
    failed = 0
    for _ in range(10):
        t = time.perf_counter()
        try:
            ok = requests.get(f"{bed.url}/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            ok = False
        lat.append(time.perf_counter() - t)
        failed += not ok
        time.sleep(0.1)
    body = json.dumps({"ref": "refs/heads/main", "after": "f" * 40}).encode()
    sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    try:
        result = wrk(f"{bed.url}/hooks/github", body, {"X-GitHub-Event": "push", "X-Hub-Signature-256": sig}, seconds, tmp)
    except (subprocess.CalledProcessError, StopIteration) as exc:
        result = {"rps": 0, "error": str(exc)[:200]}
    done.set()
    sampler.join()
    return {
        "webhooks_rps": result["rps"],
        "webhooks_non_2xx": result.get("non_2xx"),
        "wrk_tail": result.get("raw_tail") or result.get("error"),
        "healthz_median_ms": round(statistics.median(lat) * 1000, 1),
        "healthz_max_ms": round(max(lat) * 1000, 1),
        "healthz_failed": failed,
        "rss_peak_mb": round(max(peak), 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slow", type=int, default=2000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--code", default=None, help="run the agent from this checkout (a baseline)")
    ap.add_argument("--label", default="this checkout")
    args = ap.parse_args()
    need("wrk")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    testbed.up(3)
    apis = clients()
    wipe(apis, f"io.gitsync.managed-by={AGENT}")
    report: dict = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{platform.machine()} {os.cpu_count()} cores", "code": args.label, "slow": args.slow}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        bed = Bed(tmp, 2)
        if args.code:
            os.environ["PYTHONPATH"] = os.path.abspath(args.code)
            os.chdir(args.code)
        proc = bed.start_agent()
        try:
            time.sleep(2)
            report["idle_rss_mb"] = round(rss_mb(proc.pid), 1)
            report["without_flood"] = measure(bed, proc.pid, args.seconds, tmp)
            stop = threading.Event()
            stats: dict = {}
            flooder = threading.Thread(target=flood, args=(bed.port, args.slow, stop, stats), daemon=True)
            flooder.start()
            while "open_at_start" not in stats and flooder.is_alive():
                time.sleep(0.1)
            time.sleep(3)
            report["with_flood"] = measure(bed, proc.pid, args.seconds, tmp)
            stop.set()
            flooder.join(30)
            report["flood"] = stats
            time.sleep(12)
            report["after_flood"] = measure(bed, proc.pid, 3, tmp)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            bed.log.close()
            wipe(apis, f"io.gitsync.managed-by={AGENT}")
    w, f = report["without_flood"], report["with_flood"]
    report["rps_ratio_flood_vs_none"] = round(f["webhooks_rps"] / w["webhooks_rps"], 2) if w["webhooks_rps"] else None
    record("flood", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
