"""Manifest loading: every problem located as file:line: key: message; all or nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitsync.core import labels
from gitsync.core.errors import ManifestError
from gitsync.core.manifest import MAX_FILE_BYTES, load_files, read_folder
from gitsync.core.models import UpdateOrder

HEAD = "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "repo"


def problems(text: str, name: str = "apps/web.yaml") -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_files({name: text.encode()})
    return [str(p) for p in info.value.problems]


INVALID = [
    ("negative replicas", HEAD + "  image: a:1\n  replicas: -1\n", "apps/web.yaml:7: spec.replicas: must be >= 0"),
    ("replicas not a number", HEAD + "  image: a:1\n  replicas: three\n", "apps/web.yaml:7: spec.replicas: must be a whole number, not a string"),
    ("unknown key", HEAD + "  image: a:1\n  replica: 3\n", "apps/web.yaml:7: spec.replica: unknown key"),
    ("missing image", HEAD + "  replicas: 1\n", "apps/web.yaml:5: spec.image: is required"),
    ("bad image", HEAD + "  image: 'Web App:latest'\n", "apps/web.yaml:6: spec.image: 'Web App:latest' is not a valid image reference"),
    ("bad image tag", HEAD + "  image: 'web:'\n", "apps/web.yaml:6: spec.image: 'web:' is not a valid image reference"),
    ("bad name", HEAD.replace("name: web", "name: Web_App") + "  image: a:1\n", "apps/web.yaml:4: metadata.name: 'Web_App' is not a valid name"),
    ("unknown kind", HEAD.replace("Deployment", "StatefulSet") + "  image: a:1\n", "apps/web.yaml:2: kind: 'StatefulSet' is not one of Secret, Volume, Service, Deployment"),
    ("wrong apiVersion", HEAD.replace("gitsync.io/v1", "apps/v1") + "  image: a:1\n", "apps/web.yaml:1: apiVersion: 'apps/v1' is not supported; use gitsync.io/v1"),
    ("command as string", HEAD + "  image: a:1\n  command: httpd -f\n", "apps/web.yaml:7: spec.command: must be a list of strings"),
    ("env boolean", HEAD + "  image: a:1\n  env:\n    DEBUG: true\n", "apps/web.yaml:8: spec.env.DEBUG: must be a string; quote it (\"true\")"),
    ("port out of range", HEAD + "  image: a:1\n  ports:\n    - containerPort: 70000\n", "apps/web.yaml:8: spec.ports[0].containerPort: must be <= 65535"),
    ("port missing", HEAD + "  image: a:1\n  ports:\n    - hostPort: 80\n", "apps/web.yaml:8: spec.ports[0].containerPort: is required"),
    ("host path volume", HEAD + "  image: a:1\n  volumes:\n    - {name: /srv/data, mountPath: /data}\n", "apps/web.yaml:8: spec.volumes[0].name: '/srv/data' is not a valid volume name"),
    ("relative mount", HEAD + "  image: a:1\n  volumes:\n    - {name: data, mountPath: data}\n", "apps/web.yaml:8: spec.volumes[0].mountPath: 'data' must be an absolute path"),
    ("update order", HEAD + "  image: a:1\n  update: {order: random}\n", "apps/web.yaml:7: spec.update.order: 'random' is not one of start-first, stop-first"),
    ("duration", HEAD + "  image: a:1\n  healthcheck: {test: [CMD, 'true'], interval: soon}\n", "apps/web.yaml:7: spec.healthcheck.interval: 'soon' is not a duration"),
    ("maxPerHost zero", HEAD + "  image: a:1\n  placement: {maxPerHost: 0}\n", "apps/web.yaml:7: spec.placement.maxPerHost: must be >= 1"),
    ("reserved label", HEAD.replace("name: web", "name: web\n  labels: {io.gitsync.replica: '1'}") + "  image: a:1\n", "apps/web.yaml:5: metadata.labels.io.gitsync.replica: the io.gitsync. prefix is reserved"),
    ("duplicate key", HEAD + "  image: a:1\n  image: b:1\n", "apps/web.yaml:7: invalid YAML: duplicate key 'image'"),
    ("tab indentation", HEAD + "\timage: a:1\n", "apps/web.yaml:6: invalid YAML: found character '\\t'"),
    ("not a mapping", "- just\n- a list\n", "apps/web.yaml:1: must be a mapping, not a list"),
    ("restart", HEAD + "  image: a:1\n  restart: sometimes\n", "apps/web.yaml:7: spec.restart: 'sometimes' is not one of no, always, on-failure, unless-stopped"),
    ("service without selector", "apiVersion: gitsync.io/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 80}]\n", "apps/web.yaml:4: spec.selector: is required"),
]


@pytest.mark.parametrize("text,expected", [(t, e) for _, t, e in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_manifest_is_located(text: str, expected: str) -> None:
    found = problems(text)
    assert any(p.startswith(expected) for p in found), found


def test_every_problem_is_reported_not_just_the_first() -> None:
    text = HEAD + "  image: 'BAD'\n  replicas: -2\n  colour: red\n"
    found = problems(text)
    assert len(found) == 3, found


@pytest.mark.parametrize(
    "header, header_problem",
    [
        (HEAD.replace("name: web", "name: Web_App"), "apps/web.yaml:4: metadata.name: 'Web_App' is not a valid name"),
        (HEAD.replace("gitsync.io/v1", "apps/v1"), "apps/web.yaml:1: apiVersion: 'apps/v1' is not supported"),
        (HEAD.replace("  name: web\n", "  labels: {app: web}\n"), "apps/web.yaml:3: metadata.name: is required"),
    ],
)
def test_a_bad_header_does_not_hide_the_problems_of_the_spec(header: str, header_problem: str) -> None:
    found = problems(header + "  image: a:1\n  replica: 3\n  restart: sometimes\n")
    assert any(p.startswith(header_problem) for p in found), found
    assert "apps/web.yaml:7: spec.replica: unknown key" in " ".join(found), found
    assert any(p.startswith("apps/web.yaml:8: spec.restart: 'sometimes' is not one of") for p in found), found


def test_a_bad_service_name_does_not_hide_its_spec() -> None:
    found = problems("apiVersion: gitsync.io/v1\nkind: Service\nmetadata: {name: Web}\nspec:\n  selector: {app: web}\n  portz: []\n")
    assert any(p.startswith("apps/web.yaml:3: metadata.name: 'Web'") for p in found) and any("spec.portz: unknown key" in p for p in found), found


def test_duplicate_names_across_files_name_both_places() -> None:
    doc = HEAD + "  image: a:1\n"
    with pytest.raises(ManifestError) as info:
        load_files({"a.yaml": doc.encode(), "b/c.yml": doc.encode()})
    assert [str(p) for p in info.value.problems] == ["b/c.yml:1: Deployment 'web' is declared twice (first at a.yaml:1)"]


def test_one_bad_file_refuses_the_whole_repository() -> None:
    good = HEAD + "  image: a:1\n"
    with pytest.raises(ManifestError):
        load_files({"good.yaml": good.encode(), "bad.yaml": b"kind: [\n"})


def test_several_documents_hidden_folders_and_other_files() -> None:
    two = HEAD + "  image: a:1\n---\n" + HEAD.replace("name: web", "name: api") + "  image: a:1\n  replicas: 2\n"
    state = load_files({"apps/all.yaml": two.encode(), ".github/x.yaml": b"not: [valid", "README.md": b"# hi", "empty.yaml": b"---\n"})
    assert [d.name for d in state.deployments] == ["api", "web"]
    assert state.deployment("api").replicas == 2  # type: ignore[union-attr]


def test_oversized_file_is_refused_without_parsing() -> None:
    found = problems("a" * (MAX_FILE_BYTES + 10))
    assert found == [f"apps/web.yaml: file is {MAX_FILE_BYTES + 10} bytes; manifests may be at most {MAX_FILE_BYTES} bytes"]


def test_full_deployment_round_trip() -> None:
    text = HEAD + (
        "  replicas: 3\n  image: registry.example.com:5000/team/web:1.4.2\n  command: [httpd, -f, -p, 80]\n"
        "  env: {LOG_LEVEL: info, WORKERS: 4}\n  ports: [{containerPort: 80, hostPort: 8080}]\n"
        "  volumes: [{name: data, mountPath: /data, readOnly: true}]\n"
        "  placement: {hostSelector: {role: web}, maxPerHost: 2}\n"
        "  healthcheck: {test: [CMD, wget, -q, localhost], interval: 5s, retries: 3, startPeriod: 1m30s}\n"
        "  update: {order: stop-first, parallelism: 2}\n"
    )
    d = load_files({"web.yaml": text.encode()}).deployments[0]
    assert d.replicas == 3 and d.image == "registry.example.com:5000/team/web:1.4.2"
    assert d.env == (("LOG_LEVEL", "info"), ("WORKERS", "4"))
    assert d.capacity_per_host() == 1  # the hostPort wins over maxPerHost 2
    assert d.healthcheck is not None and d.healthcheck.start_period == 90.0
    assert d.update.order == UpdateOrder.STOP_FIRST and d.update.parallelism == 2
    assert d.origin is not None and str(d.origin) == "web.yaml:1"


def test_spec_hash_ignores_replicas_placement_and_update_policy() -> None:
    base = HEAD + "  image: a:1\n"
    a = load_files({"a.yaml": (base + "  replicas: 1\n").encode()}).deployments[0]
    b = load_files({"a.yaml": (base + "  replicas: 9\n  placement: {maxPerHost: 1}\n  update: {order: stop-first}\n").encode()}).deployments[0]
    c = load_files({"a.yaml": (base + "  env: {A: b}\n").encode()}).deployments[0]
    assert labels.spec_hash(a) == labels.spec_hash(b)
    assert labels.spec_hash(a) != labels.spec_hash(c)


def test_examples_repo_is_valid() -> None:
    state = load_files(read_folder(str(EXAMPLES)))
    assert {d.name for d in state.deployments} == {"web", "worker"}
    web = state.deployment("web")
    assert web is not None and web.replicas >= 2 and web.placement.host_selector
    assert any(v.name for d in state.deployments for v in d.volumes)


@pytest.mark.parametrize("variant", ["three-tier", "three-tier-official", "compose-shop"])
def test_the_three_tier_examples_are_valid(variant: str) -> None:
    from gitsync.core.secrets import SecretReader
    from gitsync.adapters.sops import AgeKeys

    reader = SecretReader(AgeKeys.load(str(EXAMPLES.parent / "keys" / "example-age.key")))
    state = load_files(read_folder(str(EXAMPLES.parent / variant)), secrets=reader)
    assert {d.name for d in state.deployments} == {"web", "api", "db"} == {s.name for s in state.services}
    if variant != "compose-shop":  # the database's password: an encrypted Secret, a file for db, a variable for api
        assert [f.secret for f in state.deployment("db").options.files] == ["db/password"]  # type: ignore[union-attr]
        assert [e[0] for e in state.deployment("api").options.secret_env] in (["DB_PASSWORD"], ["PGRST_DB_URI"])  # type: ignore[union-attr]
        with pytest.raises(ManifestError) as err:
            load_files(read_folder(str(EXAMPLES.parent / variant)), secrets=SecretReader())  # without the key: refused, naming the file
        assert [str(p)[:44] for p in err.value.problems] == ["apps/db-secret.yaml: encrypted for age recip"]  # and only that
    assert state.deployment("api").depends_on == ("db",) and state.deployment("web").depends_on == ("api",)  # type: ignore[union-attr]
    (volume,) = state.volumes
    db = state.deployment("db")
    assert db is not None and db.replicas == 1 and state.data_volumes(db, 0) == [(volume.name, volume)]  # bound to its data's host
    assert state.single_writer(db) == volume.name  # rolled stop-first
    assert [p.host_port for s in state.services for p in s.ports if p.host_port] == [8000]


def test_depends_on_cycle_is_named() -> None:
    def dep(name: str, on: str) -> str:
        return HEAD.replace("name: web", f"name: {name}") + f"  image: a:1\n  dependsOn: [{on}]\n"

    found = problems(dep("a", "b") + "---\n" + dep("b", "c") + "---\n" + dep("c", "a"))
    assert any("dependsOn cycle: a -> b -> c -> a" in p for p in found), found
    found = problems(dep("a", "nothing"))
    assert any("a: spec.dependsOn: no deployment named 'nothing'" in p for p in found), found
    found = problems(dep("a", "a"))
    assert any("a cannot depend on itself" in p for p in found), found


def test_depends_on_orders_levels() -> None:
    def dep(name: str, on: str = "") -> str:
        return HEAD.replace("name: web", f"name: {name}") + "  image: a:1\n" + (f"  dependsOn: [{on}]\n" if on else "")

    state = load_files({"a.yaml": (dep("web", "api") + "---\n" + dep("api", "db") + "---\n" + dep("db") + "---\n" + dep("cron")).encode()})
    assert state.levels() == [["cron", "db"], ["api"], ["web"]]


def test_spec_label_round_trips_for_rollback() -> None:
    text = HEAD + (
        "  image: r.example.com/web:2\n  command: [httpd, -f]\n  env: {A: b}\n  ports: [{containerPort: 80, hostPort: 8080}, {containerPort: 53, protocol: udp}]\n"
        "  volumes: [{name: data, mountPath: /data, readOnly: true}]\n  healthcheck: {test: [CMD, 'true'], interval: 2s}\n  restart: always\n  stopGracePeriod: 3s\n"
    )
    d = load_files({"w.yaml": text.encode()}).deployments[0]
    import json

    rebuilt = labels.deployment_from_spec(d, json.loads(labels.canonical_spec(d)))
    assert labels.spec_hash(rebuilt) == labels.spec_hash(d)
    assert labels.spec_document(rebuilt) == labels.spec_document(d) and rebuilt.image == d.image


@pytest.mark.parametrize(
    "value, says",
    [
        (".inf", "must be a finite duration, not inf"),
        (".nan", "must be a finite duration, not nan"),
        ('"99999999999999999999h"', "is longer than a year (8760h)"),
        ("40000000", "is longer than a year (8760h)"),
    ],
)
def test_durations_out_of_range_are_refused_at_validation(value: str, says: str) -> None:
    found = problems(HEAD + f"  image: a:1\n  stopGracePeriod: {value}\n")
    assert len(found) == 1 and found[0].startswith("apps/web.yaml:7: spec.stopGracePeriod:") and says in found[0], found


@pytest.mark.parametrize(
    "text", [HEAD + "  image: " + "[" * 500 + "]" * 500 + "\n", HEAD + "  env: " + "{a: " * 3000 + "}" * 3000 + "\n"], ids=["lists", "mappings"]
)
def test_yaml_nested_too_deeply_is_a_located_problem_not_a_crash(text: str) -> None:
    found = problems(text)
    assert len(found) == 1 and "nested too deeply to read" in found[0] and found[0].startswith("apps/web.yaml:"), found


def test_links_are_refused_by_name_and_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "outside.txt"
    secret.write_text("root:the-secret-content\n")
    repo = tmp_path / "repo" / "apps"
    repo.mkdir(parents=True)
    (repo / "web.yaml").write_text(HEAD + "  image: a:1\n")
    (repo / "leak.yaml").symlink_to(secret)
    (repo / "gone.yaml").symlink_to(tmp_path / "nowhere.yaml")  # dangling
    big = repo / "big.yaml"
    big.write_bytes(b"#" * (50 * 1024 * 1024))
    with pytest.raises(ManifestError) as info:
        load_files(read_folder(str(tmp_path / "repo")))
    found = [str(p) for p in info.value.problems]
    assert "apps/leak.yaml: is a symbolic link; gitsync reads only regular files of the repository (commit the file itself)" in found
    assert any(p.startswith("apps/gone.yaml: is a symbolic link") for p in found)
    assert f"apps/big.yaml: file is {50 * 1024 * 1024} bytes; files gitsync reads may be at most {MAX_FILE_BYTES} bytes" in found
    assert "the-secret-content" not in " ".join(found)


def test_a_nul_character_is_refused_where_a_process_would_get_it() -> None:
    found = problems(HEAD + '  image: a:1\n  env: {GREETING: "hi\\0there"}\n  command: ["sh", "-c", "echo\\0x"]\n')
    assert any(p.startswith("apps/web.yaml:7: spec.env.GREETING: contains a NUL character") for p in found), found
    assert any(p.startswith("apps/web.yaml:8: spec.command[2]: contains a NUL character") for p in found), found


def test_a_yaml_alias_bomb_is_refused_quickly_and_never_expanded_into_a_message() -> None:
    import time

    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    text = "\n".join(levels) + "\napiVersion: *a8\nkind: *a8\nmetadata: {name: web}\nspec: {image: a:1}\n"
    assert len(text) < 1000
    t = time.monotonic()
    found = problems(text)
    assert time.monotonic() - t < 2
    assert sum(len(p) for p in found) < 2000, [p[:200] for p in found]
    assert found == [  # refused before anything walks it, as docker compose refuses it (issue 21)
        "apps/web.yaml:1: excessive aliasing: its anchors and aliases expand 39 written values to 3456790141; "
        "write the repeated parts out, or use fewer levels of aliases"
    ]


def test_a_reserved_label_is_located_at_its_key() -> None:
    found = problems(HEAD.replace("  name: web\n", "  name: web\n  labels:\n    app: web\n    io.gitsync.deployment: x\n") + "  image: a:1\n")
    assert found == ["apps/web.yaml:7: metadata.labels.io.gitsync.deployment: the io.gitsync. prefix is reserved for gitsync's own labels"]


def test_too_many_files_are_counted_right(tmp_path: Path) -> None:
    from gitsync.core.manifest import MAX_FILES

    d = tmp_path / "repo"
    d.mkdir()
    for i in range(MAX_FILES + 500):
        (d / f"m{i}.yaml").write_text("")
    with pytest.raises(ManifestError) as info:
        load_files(read_folder(str(d)))
    assert [str(p) for p in info.value.problems] == [f".: {MAX_FILES + 500} manifest files; at most {MAX_FILES} are read"]


def test_a_yaml_merge_may_be_overridden_but_a_key_written_twice_may_not() -> None:
    text = (
        "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels: &base {app: web, tier: front}\n"
        "spec:\n  image: a:1\n  env:\n    <<: *base\n    app: override\n"
    )
    d = load_files({"apps/web.yaml": text.encode()}).deployments[0]
    assert dict(d.env) == {"app": "override", "tier": "front"}
    found = problems(text + "    app: again\n")
    assert found == ["apps/web.yaml:11: invalid YAML: duplicate key 'app'"], found


def _dep(name: str, labels: str, ports: str, hosts: str = "{}") -> str:
    return (
        f"apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {{name: {name}, labels: {labels}}}\n"
        f"spec:\n  image: a:1\n  ports: {ports}\n  placement: {{hostSelector: {hosts}}}\n"
    )


def _svc(name: str, selector: str, ports: str, hosts: str | None = None) -> str:
    extra = f"  hostSelector: {hosts}\n" if hosts else ""
    return f"apiVersion: gitsync.io/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {selector}\n  ports: {ports}\n{extra}"


def test_a_service_is_checked_against_the_deployments_and_the_other_services() -> None:
    files = {
        "apps/a.yaml": (_dep("web", "{app: web}", "[{containerPort: 8080}]") + "---\n" + _dep("edge", "{app: edge}", "[{containerPort: 80, hostPort: 8443}]", "{role: edge}")).encode(),
        "svc/b.yaml": (
            _svc("web", "{app: web}", "[{port: 80, targetPort: 8080, hostPort: 8080}]")
            + "---\n" + _svc("web2", "{app: web}", "[{port: 80, targetPort: 8080}]")  # the same port: fine (a proxy of its own)
            + "---\n" + _svc("web3", "{app: web}", "[{port: 81, targetPort: 9999}]")  # not declared
            + "---\n" + _svc("pub", "{app: web}", "[{port: 82, targetPort: 8080, hostPort: 8080}]")  # hostPort of web, every host
            + "---\n" + _svc("tls", "{app: web}", "[{port: 83, targetPort: 8080, hostPort: 8443}]", "{role: edge}")  # edge's hostPort
            + "---\n" + _svc("apart", "{app: web}", "[{port: 84, targetPort: 8080, hostPort: 8443}]", "{role: db}")  # other hosts: fine
            + "---\n" + _svc("empty", "{}", "[{port: 85}]")
            + "---\n" + _svc("nothing", "{app: none}", "[{port: 86, targetPort: 1}]")  # selects nothing: not an error here
        ).encode(),
    }
    with pytest.raises(ManifestError) as info:
        load_files(files)
    got = [str(p) for p in info.value.problems]
    assert not any("web2" in p for p in got), got
    assert "svc/b.yaml:20: Service web3: targetPort 9999 is not a containerPort of the deployment(s) it selects (web)" in got
    assert any(p.startswith("svc/b.yaml:27: Service pub: hostPort 8080 is also published by Service web") for p in got), got
    assert any(p.startswith("svc/b.yaml:34: Service tls: hostPort 8443 is also a hostPort of deployment edge (apps/a.yaml:9)") for p in got), got
    assert "svc/b.yaml:49: spec.selector: must name at least one label (an empty selector would pick every deployment)" in got
    assert not any("apart" in p or "nothing" in p for p in got), got
    assert len(got) == 4, got


def test_container_names_never_collide_across_agents() -> None:
    """Issue 20, item 14: with '-' between agent and deployment, agent ca's x-0 and agent ca-x's 0 met."""
    from gitsync.core.labels import container_name

    assert container_name("ca", "x-0", 0) != container_name("ca-x", "0", 0)
    names = {container_name(a, d, r) for a in ("ca", "ca-x", "ca.x", "c") for d in ("x", "x-0", "0", "a-x") for r in (0, 10)}
    assert len(names) == 4 * 4 * 2
