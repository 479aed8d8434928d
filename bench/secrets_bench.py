"""Decrypting Secrets: what SOPS costs a sync, as a ratio to loading the same repository in plain text.

    python -m bench.secrets_bench [--secrets 100] [--rounds 7]

A repository of N Secrets (each two values, encrypted as `sops encrypt --encrypted-regex
'^(data|stringData)$'` writes them) and N Deployments, each using its Secret as a file and as a
variable, is loaded (validated, decrypted, MACs checked, values sealed) in-process; the baseline is
the same repository with the Secrets in plain text (secrets.allowPlaintext), loaded side by side,
interleaved, medians. A sync pays this once per commit (the agent keeps the last load). A preview's
load (no decryption) is measured too. Results are printed and appended to bench/results/secrets.jsonl.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from bench import record


def _repo(n: int, encrypted: bool) -> dict[str, bytes]:
    import yaml

    from tests.sopsfile import secret_manifest

    files: dict[str, bytes] = {}
    for i in range(n):
        values = {"password": f"pw-{i:04d}-9f3a2c", "user": f"user{i}"}
        if encrypted:
            files[f"secrets/s{i}.yaml"] = secret_manifest(f"s{i}", values).encode()
        else:
            files[f"secrets/s{i}.yaml"] = yaml.safe_dump({"apiVersion": "gitsync.io/v1", "kind": "Secret", "metadata": {"name": f"s{i}"}, "stringData": values}).encode()
        files[f"apps/d{i}.yaml"] = (
            f"apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {{name: d{i}}}\nspec:\n  image: app:1\n"
            f"  env: {{PW: {{secretKeyRef: {{name: s{i}, key: password}}}}}}\n"
            f"  secrets: [{{name: s{i}, key: user, path: /run/secrets/user}}]\n"
        ).encode()
    return files


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--secrets", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    from gitsync.core.manifest import load_files
    from gitsync.core.secrets import SecretReader
    from gitsync.adapters.sops import AgeKeys
    from tests.sopsfile import TEST_IDENTITY

    keys = AgeKeys([TEST_IDENTITY])
    encrypted, plain = _repo(args.secrets, True), _repo(args.secrets, False)
    runs: dict[str, list[float]] = {"sops": [], "plain": [], "preview": []}
    for _ in range(args.rounds):  # interleaved: the machine's noise hits each alike
        for name, files, reader in (("sops", encrypted, SecretReader(keys)), ("plain", plain, SecretReader(keys, allow_plaintext=True)),
                                    ("preview", encrypted, SecretReader(keys).preview())):
            t0 = time.perf_counter()
            load_files(files, secrets=reader)
            runs[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in runs.items()}
    record("secrets", {
        "bench": "secrets", "when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "secrets": args.secrets, "rounds": args.rounds, "median_s": {k: round(v, 4) for k, v in med.items()},
        "ratio_sops_to_plain": round(med["sops"] / med["plain"], 2), "ratio_preview_to_plain": round(med["preview"] / med["plain"], 2),
        "per_secret_ms": round((med["sops"] - med["plain"]) / args.secrets * 1000, 3),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
