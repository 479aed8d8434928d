"""Loading and planning a large desired state, against a baseline checkout, side by side.

    python -m bench.plan_bench [--baseline DIR] [--sizes 250,1000,2000]

For each size N: N deployments (2 replicas each, a containerPort) and N Services selecting one each,
loaded from one manifest and planned against 3 empty hosts (cold start), in a fresh process per
run (this checkout, then the baseline, interleaved, 3 rounds, medians): seconds to load, seconds to
plan, and the process's peak memory. No engine is needed: planning is pure. Results are printed
and appended to bench/results/plan.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from bench import record

ONE_RUN = r"""
import json, resource, sys, time
from gitsync.core import config as config_mod
from gitsync.core.live import HostObservation
from gitsync.core.manifest import load_files
from gitsync.runtimes.containers.plan import make_plan
n = int(sys.argv[1])
text = "".join(
    f"---\napiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {{name: d{i}, labels: {{app: d{i}}}}}\n"
    f"spec: {{replicas: 2, image: 'web:1', ports: [{{containerPort: 80}}]}}\n"
    f"---\napiVersion: gitsync.io/v1\nkind: Service\nmetadata: {{name: d{i}}}\nspec: {{selector: {{app: d{i}}}, ports: [{{port: {1000 + i}, targetPort: 80}}]}}\n"
    for i in range(n)
).encode()
hosts = "".join(f"  - {{name: h{i}, url: 'tcp://10.0.0.{i}:2375', insecure: true, address: 10.0.0.{i}}}\n" for i in range(1, 4))
cfg = config_mod.parse(f"name: t\nhosts:\n{hosts}services: {{proxyImage: 'haproxy:3'}}\n")
t0 = time.perf_counter()
desired = load_files({"app.yaml": text})
t1 = time.perf_counter()
plan = make_plan(desired, {h.name: HostObservation(h.name, True) for h in cfg.hosts}, cfg.hosts, "t", cfg.services)
t2 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "plan_s": t2 - t1, "actions": len(plan.actions), "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def one(code: str, n: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": code}
    out = subprocess.run([sys.executable, "-c", ONE_RUN, str(n)], cwd=code, env=env, capture_output=True, text=True, timeout=1800, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", help="a checkout of an earlier gitsync to compare with")
    ap.add_argument("--sizes", default="250,1000,2000")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    here = os.getcwd()
    codes = {"this": here} | ({"baseline": os.path.abspath(args.baseline)} if args.baseline else {})
    report: dict[str, object] = {"bench": "plan", "when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{platform.machine()} {os.cpu_count()} cores", "sizes": {}}
    for n in (int(x) for x in args.sizes.split(",")):
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in codes}
        for _ in range(args.rounds):  # interleaved: the machine's noise hits both alike
            for name, code in codes.items():
                runs[name].append(one(code, n))
        report["sizes"][str(n)] = {  # type: ignore[index]
            name: {k: round(statistics.median(r[k] for r in rs), 3) for k in ("load_s", "plan_s", "peak_mb", "actions")} for name, rs in runs.items()
        }
    record("plan", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
