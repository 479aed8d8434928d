"""What validating one large manifest costs: gitsync's load against PyYAML alone, in one process.

    python -m bench.load_bench [--keys 95000] [--rounds 3]

The manifest is one Deployment whose env holds `--keys` keys (about 1 MiB, the largest file gitsync
reads). Measured, CPU seconds (median of the rounds): PyYAML's pure-Python SafeLoader and its
libyaml CSafeLoader (the floor) on the same text, and gitsync's load_files (parse with line numbers,
duplicate-key checks, validation). No Docker needed. Results are printed and appended to
bench/results/load.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import yaml

from bench import append
from gitsync.core.manifest import load_files



def cpu(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--keys", type=int, default=95000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    text = (
        "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  image: a:1\n  env: {"
        + ",".join(f"K{i}: v" for i in range(args.keys))
        + "}\n"
    )
    data = text.encode()
    row = {
        "bytes": len(data),
        "pyyaml_python_s": round(cpu(lambda: yaml.load(text, Loader=yaml.SafeLoader), args.rounds), 3),
        "pyyaml_libyaml_s": round(cpu(lambda: yaml.load(text, Loader=yaml.CSafeLoader), args.rounds), 3),
        "gitsync_load_files_s": round(cpu(lambda: load_files({"a.yaml": data}), args.rounds), 3),
    }
    row["ratio_to_libyaml"] = round(row["gitsync_load_files_s"] / row["pyyaml_libyaml_s"], 2)
    print(json.dumps(row, indent=2))
    append("load", {**row, "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": platform.machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
