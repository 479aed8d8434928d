"""Benchmarks (see BENCHMARKS.md), and what they share: where results go, and reading /proc."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def append(name: str, row: dict[str, Any]) -> None:
    """Add one result line to bench/results/<name>.jsonl."""
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / f"{name}.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")


def record(name: str, report: dict[str, Any]) -> None:
    """Print a benchmark's report and append it to its results."""
    print(json.dumps(report, indent=2))
    append(name, report)


def proc_status(pid: int, key: str) -> int:
    """A number from /proc/<pid>/status (VmRSS in kB, Threads, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_mb(pid: int) -> float:
    return proc_status(pid, "VmRSS") / 1024
