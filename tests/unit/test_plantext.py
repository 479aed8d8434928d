"""The one-line summary a preview posts on its commit: what would change, and per replaced
deployment which fields."""

from __future__ import annotations

from gitsync.core import config as config_mod
from gitsync.core import labels as L
from gitsync.core.live import HostObservation, LiveContainer
from gitsync.core.manifest import load_files
from gitsync.runtimes.containers.plan import make_plan
from gitsync.core.plantext import summary

HOSTS = config_mod.parse("name: t\nhosts:\n  - {name: h1, url: 'tcp://10.0.0.1:2375'}\n").hosts


def dep(name: str, image: str, replicas: int = 1) -> bytes:
    return f"apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec: {{image: '{image}', replicas: {replicas}}}\n".encode()


def test_the_summary_says_what_would_change_and_which_fields() -> None:
    old = load_files({"a.yaml": dep("web", "web:1", 2), "b.yaml": dep("api", "api:1")})
    live = tuple(
        LiveContainer(f"id{n}{i}", f"t_{n}-{i}", "h1", n, i, L.spec_hash(d), "r", "running", None, 1, d.image, spec=L.canonical_spec(d))
        for d in old.deployments for n in [d.name] for i in range(d.replicas)
    )
    obs = {"h1": HostObservation("h1", True, live)}
    assert summary(make_plan(old, obs, HOSTS, "t")) == "in sync: nothing to change"
    new = load_files({"a.yaml": dep("web", "web:2", 3), "b.yaml": dep("api", "api:1")})
    assert summary(make_plan(new, obs, HOSTS, "t")) == "would create 1, replace 2 (web: image); 1 in sync"
