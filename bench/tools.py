"""The programs a benchmark drives besides the test bed (wrk, docker-compose): found on PATH, or
installed from Debian's packages (as root), or named with the command that installs them."""

from __future__ import annotations

import os
import shutil
import subprocess


class Missing(SystemExit):
    pass


def need(program: str, package: str | None = None) -> str:
    """The path of `program`, installed with apt-get (package `package`, default the same name)
    when it is missing; else the benchmark stops, saying what to install."""
    found = shutil.which(program)
    if found:
        return found
    package = package or program
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        print(f"bench: installing {package} (apt-get) for {program}", flush=True)
        done = subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env, capture_output=True, text=True)
        if done.returncode != 0:  # a fresh machine's package lists may be empty
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env, capture_output=True)
        found = shutil.which(program)
        if found:
            return found
    raise Missing(f"bench: {program} is needed: apt-get install {package} (as root), then run this again")
