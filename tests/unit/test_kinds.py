"""A kind plugs in by writing one module and registering it: load, plan and apply take it in its
order, with nothing else changed. The toy kind here is a Note, planned before deployments."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gitsync.core import config as config_mod
from gitsync import kinds
from gitsync.core.actions import PHASE_CREATE, Action, ActionKind, ActionResult, KindPlan, PlanView
from gitsync.kinds.run import Run
from gitsync.runtimes.containers.apply import apply_plan
from gitsync.core.errors import ManifestError
from gitsync.core.fields import Ctx, Obj, read_str
from gitsync.core.live import HostObservation
from gitsync.core.manifest import load_files
from gitsync.core.models import DesiredState, Origin
from gitsync.runtimes.containers.plan import make_plan


@dataclass(frozen=True)
class NoteSpec:
    name: str
    text: str
    origin: Origin | None = None


class Note(kinds.Kind):
    name = "Note"
    order = 10

    def parse(self, ctx: Ctx, head: kinds.Header) -> NoteSpec | None:
        spec = Obj(ctx, head.spec, "spec", head.spec_line)
        text = read_str(ctx, spec, "text", required=True)
        spec.finish()
        return NoteSpec(head.name, text, head.origin) if text else None

    def plan(self, desired: DesiredState, view: PlanView) -> KindPlan:
        host = view.fresh[0].name
        return KindPlan([Action(ActionKind.CREATE, host, n.name, None, n.text, phase=PHASE_CREATE, object_kind=self.name) for n in desired.of("Note")])

    def apply(self, run: Run, actions: Sequence[Action]) -> None:
        for a in actions:
            run.record(ActionResult(a, True, "noted"))


@pytest.fixture
def note_kind() -> Iterator[None]:
    kinds.register(Note())
    try:
        yield
    finally:
        kinds.REGISTRY.pop("Note")


FILES = {
    "a.yaml": b"""apiVersion: gitsync.io/v1
kind: Deployment
metadata: {name: web}
spec: {image: "busybox:1", replicas: 1}
---
apiVersion: gitsync.io/v1
kind: Note
metadata: {name: hello}
spec: {text: "hi there"}
""",
}
HOSTS = config_mod.parse("name: t\nsource: {url: /tmp/r}\nhosts:\n  - {name: one, url: 'unix:///x.sock'}\n", "gitsync.yaml").hosts


def test_a_registered_kind_loads_plans_and_applies_in_its_order(note_kind: None) -> None:
    desired = load_files(FILES)
    assert [n.name for n in desired.of("Note")] == ["hello"]
    assert [d.name for d in desired.deployments] == ["web"]
    plan = make_plan(desired, {"one": HostObservation("one", True)}, HOSTS, "t")
    assert [(a.object_kind, a.deployment) for a in plan.actions] == [("Note", "hello"), ("Deployment", "web")]
    assert plan.actions[0].to_json()["kind"] == "Note"
    notes = make_plan(DesiredState({"Note": desired.of("Note")}), {"one": HostObservation("one", True)}, HOSTS, "t")
    result = apply_plan(notes, desired, None, "t", "rev", observe=dict)  # type: ignore[arg-type]
    assert [(r.ok, r.message) for r in result.results] == [(True, "noted")]


def test_a_registered_kinds_problems_are_located_and_listed_with_the_known_kinds(note_kind: None) -> None:
    bad = {"n.yaml": b"apiVersion: gitsync.io/v1\nkind: Note\nmetadata: {name: x}\nspec:\n  txt: 1\n---\napiVersion: gitsync.io/v1\nkind: Nope\nmetadata: {name: y}\n"}
    with pytest.raises(ManifestError) as err:
        load_files(bad)
    text = [str(p) for p in err.value.problems]
    assert "n.yaml:4: spec.text: is required" in text
    assert any(t.startswith("n.yaml:5: spec.txt: unknown key") for t in text)
    assert "n.yaml:8: kind: 'Nope' is not one of Secret, Note, Volume, Service, Deployment" in text


def test_an_action_of_a_kind_the_agent_does_not_know_is_reported_not_dropped() -> None:
    from gitsync.core.actions import Plan

    a = Action(ActionKind.CREATE, "one", "x", None, "?", object_kind="Gadget")
    result = apply_plan(Plan((a,)), DesiredState(), None, "t", "rev", observe=dict)  # type: ignore[arg-type]
    assert [(r.skipped, r.message) for r in result.results] == [(True, "skipped: no kind Gadget to apply it")]


def test_only_the_engine_module_speaks_docker() -> None:
    """The Docker adapter is the one module boundary to engines (the seam for other backends)."""
    root = Path(__file__).resolve().parents[2] / "gitsync"
    speakers = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[Any] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            if any(n == "docker" or n.startswith("docker.") for n in names):
                speakers.add(str(path.relative_to(root)))
    assert speakers == {"adapters/engine.py"}


def test_a_service_that_selects_no_deployment_is_a_warning_in_the_plan_not_an_error() -> None:
    import io

    from gitsync.core.plantext import render_plan

    files = {
        "a.yaml": FILES["a.yaml"].split(b"---\n")[0]
        + b"---\napiVersion: gitsync.io/v1\nkind: Service\nmetadata: {name: api}\nspec:\n  selector: {app: api}\n  ports: [{port: 80}]\n"
    }
    desired = load_files(files)  # valid: in Kubernetes, too, a selector may match nothing (yet)
    plan = make_plan(desired, {"one": HostObservation("one", True)}, HOSTS, "t")
    assert plan.warnings == ("Service api: selector app=api matches no deployment, so it has no endpoints",)
    assert not plan.problems and plan.to_json()["warnings"] == list(plan.warnings)
    buf = io.StringIO()
    render_plan(plan, "rev", {}, buf)
    assert "warning: Service api: selector app=api matches no deployment" in buf.getvalue()


def test_the_engines_inspection_reaches_the_kinds_in_gitsyncs_words() -> None:
    from gitsync.core.live import ContainerInfo

    raw = {  # the parts of `docker inspect` gitsync reads, as Engine 20.10 writes them
        "Id": "c0ffee", "Name": "/t-web-0", "RestartCount": 2,
        "Config": {"Labels": {"io.gitsync.managed-by": "t", "io.gitsync.role": "proxy"}},
        "State": {"Status": "running", "Running": True, "Restarting": False, "ExitCode": 0,
                  "Health": {"Status": "unhealthy", "Log": [{"Output": "wget: can't\n  connect\n"}, {"Output": "wget: server returned error\n"}]}},
        "NetworkSettings": {"Networks": {"gitsync-t": {"IPAddress": "10.0.9.2"}, "bridge": {"IPAddress": ""}}},
    }
    info = ContainerInfo.of(raw)
    assert (info.id, info.name, info.owner, info.running, info.restarting, info.status) == ("c0ffee", "t-web-0", "t", True, False, "running")
    assert (info.exit_code, info.restart_count, info.health, info.health_output) == (0, 2, "unhealthy", "wget: server returned error")
    assert info.networks == {"gitsync-t": "10.0.9.2", "bridge": ""}
    bare = ContainerInfo.of({"Id": "x", "State": {"Status": "created"}})
    assert (bare.owner, bare.health, bare.exit_code, bare.health_output, bare.name) == (None, None, None, "", "")
