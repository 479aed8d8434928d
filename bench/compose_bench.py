"""Validating compose files: gitsync against docker-compose, side by side, on the real files we have.

    python -m bench.compose_bench [--corpora ../shared/corpora] [--rounds 5]

The largest real compose file of the corpora (and then every one of them, in one folder each) is
validated by `gitsync validate` and by `docker-compose config -q` (the peer: it reads, interpolates
and checks the same file), each in a fresh process, interleaved, medians; also gitsync's validation
in-process (no interpreter start), which is what the agent pays per sync. Results are printed and
appended to bench/results/compose.jsonl.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import record
from bench.tools import need


def _files(corpora: Path) -> list[Path]:
    found = sorted((corpora / "compose" / "accept").glob("*.y*ml")) + sorted((corpora / "awesome-compose" / "compose-files").glob("*/compose.y*ml"))
    return [f for f in found if f.is_file()]


def _timed(argv: list[str], cwd: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    return time.perf_counter() - t0, done.returncode


def _in_process(folder: Path, rounds: int) -> float:
    from gitsync.core import config as config_mod
    from gitsync.core.errors import ManifestError
    from gitsync.core.manifest import load_files, read_folder

    open_policy = config_mod.PolicySettings(allow_host_network=True, allow_privileged=True, bind_mounts=(config_mod.BindRule("/", False),))
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        try:
            load_files(read_folder(str(folder)), open_policy)
        except ManifestError:
            pass  # refused is validated too: the time to say why counts the same
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpora", default=str(Path(__file__).resolve().parents[2] / "shared" / "corpora"))
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    compose = need("docker-compose")
    files = _files(Path(args.corpora))
    if not files:
        print(f"bench: no compose files under {args.corpora}", file=sys.stderr)
        return 1
    largest = max(files, key=lambda f: f.stat().st_size)
    report: dict[str, object] = {"bench": "compose", "when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{platform.machine()} {os.cpu_count()} cores"}
    with tempfile.TemporaryDirectory() as tmp:
        folders = []
        for i, f in enumerate(files):
            folder = Path(tmp) / f"p{i}"
            folder.mkdir()
            shutil.copy(f, folder / "compose.yaml")
            folders.append(folder)
        biggest = folders[files.index(largest)]
        env_runs: dict[str, list[float]] = {"gitsync": [], "docker-compose": []}
        for _ in range(args.rounds):  # interleaved: the machine's noise hits both alike
            env_runs["gitsync"].append(_timed([sys.executable, "-m", "gitsync", "validate", str(biggest)], Path.cwd())[0])
            env_runs["docker-compose"].append(_timed([compose, "-f", "compose.yaml", "config", "-q"], biggest)[0])
        every: dict[str, float] = {"gitsync": 0.0, "docker-compose": 0.0}
        for folder in folders:  # every file once, each in a fresh process
            every["gitsync"] += _timed([sys.executable, "-m", "gitsync", "validate", str(folder)], Path.cwd())[0]
            every["docker-compose"] += _timed([compose, "-f", "compose.yaml", "config", "-q"], folder)[0]
        report["largest"] = {"file": largest.name, "bytes": largest.stat().st_size,
                             "process_s": {k: round(statistics.median(v), 3) for k, v in env_runs.items()},
                             "gitsync_in_process_s": round(_in_process(biggest, args.rounds * 20), 5)}
        report["every_file"] = {"files": len(folders), "process_s": {k: round(v, 2) for k, v in every.items()},
                                "gitsync_in_process_s": round(sum(_in_process(f, 3) for f in folders), 4)}
    record("compose", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
