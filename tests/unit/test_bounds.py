"""Bounds (issue 20, item 6): the whole desired state is bounded before it is built or planned, what
is read of a repository is bounded before it is read, and planning is near-linear in its size."""

from __future__ import annotations

import cProfile
import pstats
from pathlib import Path

import pytest

from gitsync.core.config import SourceSettings
from gitsync.core.errors import ManifestError
from gitsync.core.live import HostObservation
from gitsync.core.manifest import MAX_TOTAL_BYTES, load_files, read_folder
from gitsync.runtimes.containers.plan import make_plan
from gitsync.adapters.source import Source
from tests.conftest import GitRepo
from tests.unit.test_volumes import CFG


def problems(files: dict[str, bytes]) -> list[str]:
    with pytest.raises(ManifestError) as err:
        load_files(files)
    return [str(p) for p in err.value.problems]


def deployments(n: int, replicas: int, services: bool = False) -> bytes:
    return "".join(
        f"---\napiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {{name: d{i}, labels: {{app: d{i}}}}}\n"
        f"spec: {{replicas: {replicas}, image: 'web:1', ports: [{{containerPort: 80}}]}}\n"
        + (f"---\napiVersion: gitsync.io/v1\nkind: Service\nmetadata: {{name: d{i}}}\nspec: {{selector: {{app: d{i}}}, ports: [{{port: {1000 + i}, targetPort: 80}}]}}\n" if services else "")
        for i in range(n)
    ).encode()


def test_replicas_and_objects_are_bounded_all_told_not_only_each() -> None:
    got = problems({"a.yaml": deployments(11, 1000)})  # each deployment within its bound, the sum not
    assert got == ["a.yaml:55: d10: replicas add up to more than 10000 here; one agent runs at most 10000: split the fleet over agents"]
    got = problems({"a.yaml": deployments(2600, 0, services=True)})
    assert len(got) == 1 and got[0].endswith("5200 objects (deployments, services, volumes); one agent plans at most 5000: split the fleet over agents")


def test_what_is_read_is_bounded_before_it_is_read(tmp_path: Path) -> None:
    blob = b"# " + b"x" * (1024 * 1024 - 10) + b"\n"  # one env file's worth, under the per-file bound
    folder = tmp_path / "f"
    folder.mkdir()
    for i in range(40):
        (folder / f"{i:02d}.env").write_bytes(blob)
    files = read_folder(str(folder))
    assert sum(len(v) for v in files.values()) <= MAX_TOTAL_BYTES
    assert any("add up to more than" in str(p) for p in problems(files))
    # the same blob under 40 names in one git commit: git stores it once, a reader must not pay 40 times
    repo = GitRepo(tmp_path / "repo")
    for i in range(40):
        repo.write(f"{i:02d}.env", blob.decode())
    repo.commit("one blob, many names")
    snap = Source(SourceSettings(url=str(repo.path)), str(tmp_path / "st")).fetch()
    assert sum(len(v) for v in snap.files.values()) <= MAX_TOTAL_BYTES
    assert "not read: the files gitsync reads" in " ".join(problems(snap.files))


def test_loading_and_planning_are_near_linear_in_services_and_replicas() -> None:
    calls = []  # Python function calls made: counted, not timed, so the same on any machine
    for n in (250, 1000):
        text = deployments(n, 2, services=True)
        observed = {h.name: HostObservation(h.name, True) for h in CFG.hosts}
        profile = cProfile.Profile()
        profile.enable()
        plan = make_plan(load_files({"a.yaml": text}), observed, CFG.hosts, "t", CFG.services)
        profile.disable()
        calls.append(pstats.Stats(profile).total_calls)  # type: ignore[attr-defined]
        assert len([a for a in plan.actions if a.object_kind == "Deployment"]) == 2 * n
    assert calls[1] < 5 * calls[0], calls  # four times the input; quadratic would be about sixteen times the work
