"""Capture the live states the golden plan cases start from, on the real test-bed engines.

Run as root: ``python -m tests.golden.capture``. It applies tests/golden/base.yaml
with agent name "golden", then drives the engines into each state and saves what
the Engine's container list returns (the exact input of the observe step):

- ``steady.json``: base.yaml converged;
- ``stopped.json``: the same with one web replica stopped by hand;
- ``duplicates.json``: h1 was left out of a sync (as if unreachable), its web
  replicas were recreated on h2, then h1 came back: two copies of those replicas.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

import docker

from gitsync.core import config as config_mod
from gitsync.core import labels as L
from gitsync.reconcile import Syncer
from tests import testbed

HERE = Path(__file__).parent
AGENT = "golden"


def _dump(path: Path) -> None:
    out = {}
    for e in testbed.engines(3):
        api = docker.APIClient(base_url=e.tcp_url, version="auto")
        out[e.name] = api.containers(all=True, filters={"label": [f"io.gitsync.managed-by={AGENT}"]})
    path.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")


def _cleanup() -> None:
    for e in testbed.engines(3):
        api = docker.APIClient(base_url=e.tcp_url, version="auto")
        for c in api.containers(all=True, filters={"label": [f"io.gitsync.managed-by={AGENT}"]}):
            api.remove_container(c["Id"], force=True)


def main() -> int:
    testbed.up(3)
    _cleanup()
    cfg = config_mod.parse((HERE / "hosts.yaml").read_text(), "hosts.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        shutil.copy(HERE / "base.yaml", repo / "app.yaml")
        cfg = dataclasses.replace(cfg, source=dataclasses.replace(cfg.source, url=str(repo)), state_dir=tmp)
        s = Syncer(cfg)
        assert s.sync().outcome == "success"
        _dump(HERE / "live" / "steady.json")
        api = docker.APIClient(base_url=testbed.engines(3)[1].tcp_url, version="auto")
        api.stop(L.container_name(AGENT, "web", 1), timeout=5)
        _dump(HERE / "live" / "stopped.json")
        api.start(L.container_name(AGENT, "web", 1))
        without_h1 = dataclasses.replace(cfg, hosts=tuple(h for h in cfg.hosts if h.name != "h1"))
        assert Syncer(without_h1).sync().outcome == "success"
        _dump(HERE / "live" / "duplicates.json")
        s.close()
    _cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
