"""Golden plans: one folder per case (tests/golden/cases/NAME) with the live state captured
from real engines (tests/golden/live, see capture.py), the desired manifests, and the plan
as `gitsync plan` prints it. GITSYNC_UPDATE_GOLDEN=1 rewrites expected.txt (review the diff)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import yaml

from gitsync.core import config as config_mod
from gitsync.core.plantext import host_labels, render_plan
from gitsync.core.live import HostObservation, from_list_entry
from gitsync.core.manifest import load_files
from gitsync.runtimes.containers.plan import make_plan

GOLDEN = Path(__file__).parent.parent / "golden"
CASES = sorted(p for p in (GOLDEN / "cases").iterdir() if p.is_dir())


def _observed(case: dict, hosts: list[str]) -> dict[str, HostObservation]:
    live_name = case.get("live", "empty")
    raw = {} if live_name == "empty" else json.loads((GOLDEN / "live" / f"{live_name}.json").read_text())
    unreachable = set(case.get("unreachable", []))
    return {
        h: HostObservation(h, False, (), "connection refused")
        if h in unreachable
        else HostObservation(h, True, tuple(from_list_entry(h, e) for e in raw.get(h, [])))
        for h in hosts
    }


@pytest.mark.parametrize("case_dir", CASES, ids=[c.name for c in CASES])
def test_golden_plan(case_dir: Path) -> None:
    cfg = config_mod.parse((GOLDEN / "hosts.yaml").read_text(), "hosts.yaml")
    case = yaml.safe_load((case_dir / "case.yaml").read_text()) or {}
    desired_file = case_dir / "desired.yaml"
    desired = load_files({"app.yaml": (desired_file if desired_file.exists() else GOLDEN / "base.yaml").read_bytes()})
    observed = _observed(case, [h.name for h in cfg.hosts])
    plan = make_plan(desired, observed, cfg.hosts, cfg.name)
    again = make_plan(desired, observed, cfg.hosts, cfg.name)
    assert plan == again, "planning must be deterministic"
    buf = io.StringIO()
    render_plan(plan, "golden", host_labels(cfg.hosts), buf)
    buf.write("--- json\n")
    buf.write(json.dumps({k: v for k, v in plan.to_json().items() if k != "hosts"}, indent=1, sort_keys=True) + "\n")
    got = buf.getvalue()
    expected_file = case_dir / "expected.txt"
    if os.environ.get("GITSYNC_UPDATE_GOLDEN") == "1":
        expected_file.write_text(got)
    assert expected_file.exists(), f"{expected_file} missing: run with GITSYNC_UPDATE_GOLDEN=1 and review it"
    assert got == expected_file.read_text()


def _port_plan(replicas_a: int, replicas_b: int) -> tuple[list[tuple[str, str]], list[str]]:
    def dep(name: str, n: int) -> str:
        return f"apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {n}\n  image: x:1\n  ports: [{{containerPort: 80, hostPort: 8080}}]\n"

    desired = load_files({"a.yaml": dep("a", replicas_a).encode(), "b.yaml": dep("b", replicas_b).encode()})
    hosts = config_mod.parse("hosts:\n  - {name: h1, url: 'unix:///h1'}\n  - {name: h2, url: 'unix:///h2'}\n").hosts
    plan = make_plan(desired, {h.name: HostObservation(h.name, True, (), None, 0.0) for h in hosts}, hosts, "t")
    return sorted((a.deployment, a.host) for a in plan.actions), [str(p) for p in plan.problems]


def test_deployments_sharing_a_fixed_host_port_are_placed_apart() -> None:
    creates, problems = _port_plan(1, 1)
    assert creates == [("a", "h1"), ("b", "h2")] and problems == []


def test_a_fixed_host_port_held_everywhere_is_refused_before_anything_is_applied() -> None:
    creates, problems = _port_plan(2, 1)
    assert creates == [("a", "h1"), ("a", "h2")]
    assert len(problems) == 1 and problems[0].startswith("b: 1 of 1 replicas cannot be placed"), problems
    assert problems[0].endswith("hostPort 8080/tcp is held by deployment a on h1, h2"), problems
