"""Compose files as desired state: mapped onto the same model as manifests (a compose file plans
exactly as its equivalent manifests), interpolated as compose does, checked against the compose
schema, every unsupported key refused with file:line and why; the corpora of compose files written
by others load or are refused for a documented reason, at the stage their index names."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from gitsync import compose
from gitsync.core import config as config_mod
from gitsync.compose.interpolate import InterpolationError, interpolate, parse_env_file
from gitsync.core.errors import ManifestError
from gitsync.core.live import HostObservation
from gitsync.core.manifest import load_files
from gitsync.runtimes.containers.plan import make_plan
from tests.conftest import need_corpora

ROOT = Path(__file__).resolve().parents[2]
HOSTS = config_mod.parse(
    "name: t\nhosts:\n"
    "  - {name: h1, url: 'tcp://10.0.0.1:2375', labels: {role: web}}\n"
    "  - {name: h2, url: 'tcp://10.0.0.2:2375', labels: {role: web}}\n"
    "  - {name: h3, url: 'tcp://10.0.0.3:2375', labels: {role: db}}\n"
).hosts

SHOP = """\
name: shop
services:
  web:
    image: registry.example.com/web:1.2
    ports: ["8000:80"]
    depends_on: [api]
    deploy:
      replicas: 2
      update_config: {parallelism: 1, order: start-first}
    healthcheck:
      test: wget -q -O /dev/null http://127.0.0.1/
      interval: 2s
  api:
    image: registry.example.com/api:${API_TAG:-3}
    command: app-api --port 8080
    environment:
      DB_HOST: db
      DEBUG: "false"
    expose: [8080]
    depends_on:
      db: {condition: service_healthy}
    deploy:
      replicas: 2
      resources: {limits: {memory: 128M, cpus: "0.5"}}
      placement: {constraints: ["node.labels.role == web"], max_replicas_per_node: 1}
    restart: unless-stopped
  db:
    image: postgres:16.4
    volumes: ["pgdata:/var/lib/postgresql/data"]
    environment: [POSTGRES_PASSWORD=secret]
    expose: ["5432"]
    stop_grace_period: 30s
    healthcheck:
      test: ["CMD", "pg_isready"]
    x-gitsync: {hostSelector: {role: db}}
volumes:
  pgdata: {}
"""

EQUIVALENT = """\
apiVersion: gitsync.io/v1
kind: Deployment
metadata: {name: web, labels: {compose.project: shop, compose.service: web}}
spec:
  image: registry.example.com/web:1.2
  networks: [shop_default]
  replicas: 2
  ports: [{containerPort: 80}]
  dependsOn: [api]
  update: {parallelism: 1, order: start-first}
  healthcheck: {test: wget -q -O /dev/null http://127.0.0.1/, interval: 2s}
  restart: "no"
---
apiVersion: gitsync.io/v1
kind: Service
metadata: {name: web}
spec:
  selector: {compose.project: shop, compose.service: web}
  ports: [{port: 80, targetPort: 80, hostPort: 8000}]
---
apiVersion: gitsync.io/v1
kind: Deployment
metadata: {name: api, labels: {compose.project: shop, compose.service: api}}
spec:
  image: registry.example.com/api:3
  networks: [shop_default]
  command: [app-api, --port, "8080"]
  env: {DB_HOST: db, DEBUG: "false"}
  ports: [{containerPort: 8080}]
  dependsOn: [db]
  replicas: 2
  resources: {limits: {memory: 128Mi, cpus: 0.5}}
  placement: {hostSelector: {role: web}, maxPerHost: 1}
  update: {order: stop-first}
  restart: unless-stopped
---
apiVersion: gitsync.io/v1
kind: Service
metadata: {name: api}
spec:
  selector: {compose.project: shop, compose.service: api}
  ports: [{port: 8080}]
---
apiVersion: gitsync.io/v1
kind: Deployment
metadata: {name: db, labels: {compose.project: shop, compose.service: db}}
spec:
  image: postgres:16.4
  networks: [shop_default]
  volumes: [{name: shop_pgdata, mountPath: /var/lib/postgresql/data}]
  env: {POSTGRES_PASSWORD: secret}
  ports: [{containerPort: 5432}]
  stopGracePeriod: 30s
  healthcheck: {test: [CMD, pg_isready]}
  placement: {hostSelector: {role: db}}
  update: {order: stop-first}
  restart: "no"
---
apiVersion: gitsync.io/v1
kind: Service
metadata: {name: db}
spec:
  selector: {compose.project: shop, compose.service: db}
  ports: [{port: 5432}]
---
apiVersion: gitsync.io/v1
kind: Volume
metadata: {name: shop_pgdata}
"""


def empty_hosts() -> dict[str, HostObservation]:
    return {h.name: HostObservation(h.name, True, []) for h in HOSTS}


def refused(files: dict[str, str], **kw: object) -> list[str]:
    with pytest.raises(ManifestError) as err:
        load_files({k: v.encode() for k, v in files.items()}, **kw)  # type: ignore[arg-type]
    return [str(p) for p in err.value.problems]


def test_a_compose_file_plans_exactly_as_its_equivalent_manifests() -> None:
    from_compose = load_files({"shop/compose.yaml": SHOP.encode()})
    from_manifests = load_files({"shop.yaml": EQUIVALENT.encode()})
    assert dict(from_compose.objects) == dict(from_manifests.objects)
    a, b = make_plan(from_compose, empty_hosts(), HOSTS, "t"), make_plan(from_manifests, empty_hosts(), HOSTS, "t")
    assert a.to_json() == b.to_json() and a.counts()["create"] == 8, a.to_json()  # 5 replicas, a proxy on each of 3 hosts
    db = from_compose.deployment("db")
    assert db is not None and db.origin is not None and str(db.origin) == "shop/compose.yaml:27"


def test_ports_expose_and_published_ports_map_onto_services_or_host_ports() -> None:
    text = """\
services:
  dns:
    image: dns:1
    ports: ["53:53/udp", "8053:53", {target: 9000, published: 9000, mode: host}, "127.0.0.1::7000"]
"""
    got = refused({"p/compose.yaml": text})
    assert got == ["p/compose.yaml:4: services.dns.ports[3]: host address 127.0.0.1 without a published port: give the port to publish on it"]
    d = load_files({"p/compose.yaml": text.replace(', "127.0.0.1::7000"', "").encode()})
    dep, svc = d.deployment("dns"), d.services[0]
    assert dep is not None and sorted((p.container_port, p.host_port or 0, p.protocol) for p in dep.ports) == [(53, 0, "tcp"), (53, 53, "udp"), (9000, 9000, "tcp")]
    assert [(p.port, p.target_port, p.host_port) for p in svc.ports] == [(53, 53, 8053)]  # TCP through the Service, on every host
    # a host address: the Service's hostPort (or a udp port) published on that address of each host only
    local = load_files({"p/compose.yaml": text.replace('"127.0.0.1::7000"', '"127.0.0.1:7000:7000", "[::1]:5353:54/udp"').encode()})
    dep, svc = local.deployment("dns"), local.services[0]
    assert [(p.port, p.host_port, p.host_ip) for p in svc.ports] == [(53, 8053, None), (7000, 7000, "127.0.0.1")]
    assert dep is not None and (54, 5353, "udp", "::1") in [(p.container_port, p.host_port, p.protocol, p.host_ip) for p in dep.ports]
    assert refused({"p/compose.yaml": text.replace('"127.0.0.1::7000"', '"[::1]:5353:53/udp"')}) == [
        "p/compose.yaml:4: services.dns.ports: container port 53/udp is published twice (53 and 5353); keep one"]


@pytest.mark.parametrize(
    ("text", "variables", "expected"),
    [
        ("$A-${A}", {"A": "x"}, "x-x"), ("${A:-d}|${A-d}", {"A": ""}, "d|"), ("${B:-d}|${B-d}", {}, "d|d"),
        ("${A:+alt}|${A+alt}", {"A": ""}, "|alt"), ("${A:+alt}", {"A": "v"}, "alt"), ("$$A $${A}", {"A": "x"}, "$A ${A}"),
        ("${A:-${B:-deep}}", {}, "deep"), ("cost $5", {}, "cost $5"), ("${UNSET}", {}, ""), ("${A:?}", {"A": "v"}, "v"),
    ],
)
def test_interpolation_as_compose_does_it(text: str, variables: dict[str, str], expected: str) -> None:
    assert interpolate(text, variables) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${A:?set A to the tag}", "required variable A is missing a value: set A to the tag"), ("${A?}", "required variable A is missing a value"),
        ("${A:-x", "a '${' is not closed"), ("${ A}", "'${' must be followed by a variable name"), ("${A*x}", "after ${A comes"),
    ],
)
def test_interpolation_errors(text: str, message: str) -> None:
    with pytest.raises(InterpolationError) as err:
        interpolate(text, {"A": ""} if "?}" not in text else {})
    assert message in str(err.value)


def test_variables_come_from_the_projects_env_and_the_agent_configuration_never_the_agents_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "services:\n  web:\n    image: web:${TAG}\n    environment: ['SECRET=${GITSYNC_TOKEN:-none}', FROM_ENV]\n"
    env = "# the project's defaults\nexport TAG=1.0\nFROM_ENV='from .env'\nQUOTED=\"a\\nb\" # comment\n"
    monkeypatch.setenv("GITSYNC_TOKEN", "do-not-leak")
    d = load_files({"p/compose.yaml": text.encode(), "p/.env": env.encode()})
    web = d.deployment("web")
    assert web is not None and web.image == "web:1.0" and dict(web.env) == {"SECRET": "none", "FROM_ENV": "from .env"}
    cfg = config_mod.parse("compose: {variables: {TAG: '2.0'}, variablesFromEnvironment: [GITSYNC_TOKEN]}").compose
    web = load_files({"p/compose.yaml": text.encode(), "p/.env": env.encode()}, variables=cfg.resolved()).deployment("web")
    assert web is not None and web.image == "web:2.0" and dict(web.env)["SECRET"] == "do-not-leak"  # named explicitly: passed
    assert parse_env_file(env)[0]["QUOTED"] == "a\nb"
    assert refused({"p/compose.yaml": "services:\n  web:\n    image: web:${TAG:?set TAG}\n"}) == [
        "p/compose.yaml:3: services.web.image: required variable TAG is missing a value: set TAG"
    ]


def test_unsupported_keys_are_refused_with_the_key_and_why_and_the_policy_applies() -> None:
    text = """\
services:
  web:
    build: .
    image: web:1
    privileged: true
    cgroup_parent: custom
    volumes: ["./conf:/etc/app", "/srv/data:/data"]
"""
    assert refused({"p/compose.yaml": text}) == [
        "p/compose.yaml:3: services.web.build: not supported by gitsync: it deploys images from a registry: build and push in CI, then reference the image (building on each host would run the repository's Dockerfile on every host and give each its own image)",
        "p/compose.yaml:6: services.web.cgroup_parent: not supported by gitsync: a container's cgroup is the engine's to place",
        "p/compose.yaml:7: services.web.volumes[0]: ./conf: a writable path beside the compose file is data, which a commit should not hold: "
        "use a named volume (data:/etc/app, declared under the top-level volumes), or add :ro to mount it from the repository as configuration",
    ]
    ok = text.replace("    build: .\n", "").replace("    cgroup_parent: custom\n", "").replace('"./conf:/etc/app", ', "")
    assert refused({"p/compose.yaml": ok}) == [
        "p/compose.yaml:4: privileged: not allowed by this agent's policy (policy.allowPrivileged)",
        "p/compose.yaml:5: volumes[0].hostPath: not allowed by this agent's policy (/srv/data: no policy.bindMounts entry allows this path)",
    ]


def test_names_both_formats_define_are_errors_naming_both_places_and_one_project_per_folder() -> None:
    manifest = "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {image: 'web:1'}\n"
    got = refused({"apps/web.yaml": manifest, "p/compose.yaml": "services:\n  web: {image: 'web:2'}\n"})
    assert got == ["p/compose.yaml:2: Deployment 'web' is declared twice (first at apps/web.yaml:1)"]
    got = refused({"p/compose.yaml": "services: {}\n", "p/docker-compose.yml": "services: {}\n"})
    assert got == ["p/docker-compose.yml: a folder holds one compose project; p/compose.yaml is there too: keep one of them"]
    assert refused({"p/compose.yaml": "services:\n  Web_1: {image: 'web:2'}\n"})[0].startswith(
        "p/compose.yaml:2: services.Web_1: 'Web_1' cannot name a Deployment: lower-case letters"
    )


def test_compose_tags_profiles_extends_and_swarm_ignored_keys() -> None:
    text = """\
services:
  base:
    image: app:1
    command: [serve]
    environment: {A: "1", B: "2"}
  worker:
    extends: base
    command: !reset null
    environment: {B: "3"}
    container_name: the-worker
  debug:
    image: app:1
    profiles: [debug]
"""
    d = load_files({"p/compose.yaml": text.encode()})
    w = d.deployment("worker")
    assert w is not None and w.command is None and dict(w.env) == {"A": "1", "B": "3"} and d.deployment("debug") is None
    assert d.warnings == ("p/compose.yaml:10: services.worker.container_name: ignored, as Swarm does: gitsync names replicas <agent>-worker-<n>; reach it by its service name",)
    assert load_files({"p/compose.yaml": text.encode()}, profiles=frozenset({"debug"})).deployment("debug") is not None


# -- the corpora ----------------------------------------------------------------------------------

def _load(path: Path) -> tuple[compose.Loaded, list[str]]:
    files = {"p/compose.yaml": path.read_bytes()}
    loaded = compose.load_project("p/compose.yaml", files)
    if loaded.problems:
        return loaded, [str(p) for p in loaded.problems]
    try:
        load_files(files, config_mod.PolicySettings(allow_host_network=True, bind_mounts=(config_mod.BindRule("/", False),)))
    except ManifestError as exc:
        loaded.stage = compose.Stage.SEMANTIC
        return loaded, [str(p) for p in exc.problems]
    return loaded, []


def _reason(problem: str) -> str:
    """The unsupported feature a refusal names: its compose key."""
    key = problem.split(": ", 2)[1]
    return key.split(".")[-1].split("[")[0] if key.startswith(("services.", "volumes.", "networks.")) else key


def corpus_summary(folder: Path) -> tuple[int, int, Counter[str]]:
    loads, total, reasons = 0, 0, Counter[str]()
    for path in sorted(folder.glob("*.y*ml")):
        total += 1
        loaded, problems = _load(path)
        if not problems:
            loads += 1
            continue
        assert loaded.stage == compose.Stage.SEMANTIC, (path.name, problems)
        for p in problems:  # each refusal is for a documented unsupported feature, or a file the corpus left out
            documented = (compose.mapping.UNSUPPORTED, "not in the repository", "beside the compose file is data", "anonymous volume", "is empty (an unset variable?)", "not allowed by this agent's policy")
            assert any(d in p for d in documented), (path.name, p)
        reasons.update({_reason(p) for p in problems})
    return loads, total, reasons


def test_the_compose_corpus_loads_or_is_refused_for_documented_reasons_and_the_readme_says_how_many() -> None:
    accept = need_corpora() / "compose" / "accept"
    loads, total, reasons = corpus_summary(accept)
    line = f"{loads} of {total} load"
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert line in readme, f"README.md should report the compose corpus: {line}; refused for {dict(reasons)}"


def test_every_rejected_compose_file_is_refused_at_the_stage_its_index_names() -> None:
    folder = need_corpora() / "compose"
    index = json.loads((folder / "reject" / "_index.json").read_text())
    for entry in index["reject"]:
        loaded, problems = _load(folder / entry["file"])
        assert problems, entry["file"]
        assert all(p.startswith("p/compose.yaml:") for p in problems), problems  # file:line
        assert loaded.stage == entry["stage"], (entry["file"], loaded.stage, problems)
    loaded, problems = _load(folder / "edge" / "compose-go__extends-reset-tag.yaml")
    assert problems == [], problems  # !reset loads
    loaded, problems = _load(folder / "edge" / "docker-compose-v2__pre_start__schema-version-skew.yaml")
    assert loaded.stage == compose.Stage.SEMANTIC and "pre_start: not supported by gitsync" in problems[0]  # the schema knows it; gitsync does not


def test_the_schema_shipped_is_the_one_docker_compose_validates_with() -> None:
    theirs = need_corpora() / "compose" / "schema" / "compose-go.compose-spec.2020-12.json"
    assert json.loads(compose.schema.SCHEMA_FILE.read_text()) == json.loads(theirs.read_text())


def test_awesome_compose_stacks_of_images_only_load_and_plan_or_are_refused_for_documented_reasons() -> None:
    corpus = need_corpora() / "awesome-compose"
    catalog = json.loads((corpus / "catalog.json").read_text())
    planned, total = [], 0
    for ex in catalog["examples"]:
        if not ex["image_only"]:
            continue
        total += 1
        files = {ex["compose_file"]: (corpus / "compose-files" / ex["compose_file"]).read_bytes()}
        open_policy = config_mod.PolicySettings(bind_mounts=(config_mod.BindRule("/", False),))
        try:
            desired = load_files(files, open_policy)
        except ManifestError as exc:
            for p in exc.problems:
                documented = (compose.mapping.UNSUPPORTED, "beside the compose file is data", "not in the repository", "not declared", "a home folder means nothing", "the source is empty",
                              "not allowed by this agent's policy")
                assert any(d in str(p) for d in documented), (ex["example"], str(p))
            continue
        plan = make_plan(desired, empty_hosts(), HOSTS, "t")
        assert not plan.problems, (ex["example"], plan.problems)
        assert plan.counts()["create"] >= len(desired.deployments), ex["example"]
        planned.append(ex["example"])
    line = f"{len(planned)} of the {total} awesome-compose stacks that use only images load and plan"
    assert line in " ".join((ROOT / "README.md").read_text().split()), f"README.md should say: {line} ({', '.join(planned)})"


def test_hostile_interpolation_is_a_problem_not_a_crash() -> None:
    deep = "${A:-" * 5000 + "x" + "}" * 5000
    (msg,) = refused({"p/compose.yaml": f'services:\n  web:\n    image: "{deep}"\n'})
    assert msg == "p/compose.yaml:3: services.web.image: invalid interpolation format: defaults nested more than 20 deep"
    (msg,) = refused({"p/compose.yaml": 'services:\n  web:\n    image: "' + "x" * 5000 + '${"\n'})
    assert len(msg) < 300 and "'${' must be followed by a variable name" in msg
    env_escape = "services:\n  web: {image: 'web:1', env_file: ../../etc/passwd.env}\n"
    assert "is outside the repository" in refused({"p/compose.yaml": env_escape})[0]  # never read outside the repository


def test_yaml_is_read_as_compose_reads_it_yaml_1_2() -> None:
    """Issue 21, item 1: nothing docker compose reads as a string becomes a number or a boolean."""
    text = (
        "services:\n  git:\n    image: gitea/gitea:1\n    restart: no\n"
        "    ports:\n      - 2222:22\n      - 3000:3000\n"
        "    environment:\n      FLAG: yes\n      OTHER: off\n      WHEN: 2024-01-01\n      OCTAL: 010\n"
    )
    d = load_files({"compose.yaml": text.encode()}, config_mod.PolicySettings())
    git = d.deployment("git")
    assert git is not None
    assert str(git.restart) == "no"
    svc = next(s for s in d.services if s.name == "git")
    assert sorted((p.host_port, p.target_port) for p in svc.ports) == [(2222, 22), (3000, 3000)]  # not the base-60 number 133342
    ssh = load_files({"compose.yaml": b"services:\n  ssh:\n    image: ssh:1\n    ports:\n      - 22:22\n"}).services[0]
    assert [(p.host_port, p.target_port) for p in ssh.ports] == [(22, 22)]  # not port 1342
    assert refused({"compose.yaml": "services:\n  git:\n    image: g:1\n    ports:\n      - 2222:22\n      - 22:22\n"}) == [
        "compose.yaml:6: services.git.ports: container port 22 is published twice (2222 and 22); a Service publishes one hostPort per port: "
        "keep one, or let the container listen on a second port"
    ]  # never one of them dropped without a word
    assert dict(git.env) == {"FLAG": "yes", "OTHER": "off", "WHEN": "2024-01-01", "OCTAL": "8"}  # as go-yaml v3 reads 010 (octal, as YAML 1.1 did)
    manifest = "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: m}\nspec:\n  image: web:1\n  env: {DEBUG: no}\n  init: yes\n"
    with pytest.raises(ManifestError) as err:
        load_files({"m.yaml": manifest.encode()})
    assert [str(p) for p in err.value.problems] == ["m.yaml:7: spec.init: must be true or false, not a string"]


def test_excessive_aliasing_non_string_keys_and_two_names_are_refused_as_compose_refuses_them() -> None:
    """Issue 21, item 2."""
    laughs = 'x-a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
        f"x-{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 10) + "]\n" for i in range(8)
    ) + "services:\n  web: {image: 'a:1'}\n"
    loaded = compose.load_project("compose.yaml", {"compose.yaml": laughs.encode()})  # refused at once, never expanded
    assert loaded.stage == compose.Stage.YAML and "excessive aliasing" in str(loaded.problems[0]), loaded.problems
    shared = "x-base: &base {image: 'a:1', environment: {A: '1'}}\nservices:\n  a: *base\n  b: *base\n"
    assert sorted(d.name for d in load_files({"compose.yaml": shared.encode()}).deployments) == ["a", "b"]  # anchors as people use them
    assert refused({"compose.yaml": "services:\n  123:\n    image: a:1\n"}) == [
        "compose.yaml:2: services: the key 123 is not a string; quote it ('123') if it is a name"
    ]
    two = "services:\n  web:\n    image: a:1\n    volumes: ['d:/d']\nvolumes:\n  d:\n    name: x\n    external:\n      name: y\n"
    assert refused({"compose.yaml": two}) == ["compose.yaml:8: volumes.d.external.name: conflicts with name: only use name (and external: true)"]
    old = "services:\n  web:\n    image: a:1\n    volumes: ['d:/d']\nvolumes:\n  d:\n    external:\n      name: y\n"
    assert [(v.name, v.external) for v in load_files({"compose.yaml": old.encode()}).volumes] == [("y", True)]  # the older spelling, understood


BASE = """\
services:
  web:
    image: nginx:1.25
    command: ["nginx", "-g", "daemon off;"]
    ports: ["8080:80", "127.0.0.1:9000:9000"]
    environment: [A=1, B=2]
    labels: {tier: front}
    volumes: ["data:/data", "logs:/logs"]
    depends_on: [cache]
    healthcheck: {test: ["CMD", "true"], interval: 5s}
    cap_add: [CHOWN]
  cache:
    image: redis:7
volumes: {data: {}, logs: {}, other: {}}
"""

OVERRIDE = """\
services:
  web:
    image: nginx:1.27
    command: ["nginx-debug", "-g", "daemon off;"]
    ports: ["8081:81"]
    environment: {B: "3", C: "4"}
    labels: [owner=ops]
    volumes: ["other:/data"]
    depends_on: {db: {condition: service_healthy}}
    healthcheck: {test: ["CMD", "false"]}
    cap_add: [KILL]
  cache:
    ports: !reset []
    restart: always
  db:
    image: postgres:16
    healthcheck: {test: ["CMD", "pg_isready"]}
"""


def test_an_override_file_beside_the_compose_file_merges_as_docker_compose_merges_it() -> None:
    """Issue 21, item 3: compose.override.yaml is merged (the compose specification's rules), never read as a manifest."""
    from gitsync.compose.override import merge
    from gitsync.core import yamlsrc

    merged = merge(yamlsrc.load_all(BASE, compose=True)[0][1], yamlsrc.load_all(OVERRIDE, compose=True)[0][1])
    web = merged["services"]["web"]
    assert web["image"] == "nginx:1.27" and web["command"] == ["nginx-debug", "-g", "daemon off;"]  # replaced, never appended
    assert web["ports"] == ["8080:80", "127.0.0.1:9000:9000", "8081:81"]  # appended: a new unique key
    assert dict(web["environment"]) == {"A": "1", "B": "3", "C": "4"} and dict(web["labels"]) == {"tier": "front", "owner": "ops"}
    assert web["volumes"] == ["other:/data", "logs:/logs"]  # the same target: replaced where it was
    assert set(web["depends_on"]) == {"cache", "db"} and web["depends_on"]["db"] == {"condition": "service_healthy"}
    assert web["healthcheck"] == {"test": ["CMD", "false"], "interval": "5s"}  # test replaced, the rest kept
    assert web["cap_add"] == ["CHOWN", "KILL"]
    assert "ports" not in merged["services"]["cache"] and merged["services"]["cache"]["restart"] == "always"
    replaced = merge(yamlsrc.load_all(BASE, compose=True)[0][1], yamlsrc.load_all("services:\n  web:\n    ports: !override ['1:1']\n", compose=True)[0][1])
    assert replaced["services"]["web"]["ports"] == ["1:1"]

    both = {"app/compose.yaml": BASE.replace(', "127.0.0.1:9000:9000"', "").encode(), "app/compose.override.yaml": OVERRIDE.encode()}
    d = load_files(both, config_mod.PolicySettings())
    assert sorted(x.name for x in d.deployments) == ["cache", "db", "web"]  # not a manifest: no "apiVersion is required"
    web_d = d.deployment("web")
    assert web_d is not None and web_d.image == "nginx:1.27" and dict(web_d.env) == {"A": "1", "B": "3", "C": "4"}
    assert sorted(p.host_port for s in d.services if s.name == "web" for p in s.ports) == [8080, 8081]

    # a problem in the override names the override file and its line
    bad = {**both, "app/compose.override.yaml": OVERRIDE.replace("restart: always", "restart: sometimes").encode()}
    with pytest.raises(ManifestError) as err:
        load_files(bad)
    assert ("app/compose.override.yaml", 14) in [(p.file, p.line) for p in err.value.problems], err.value.problems
    assert "services.cache.restart: 'sometimes' is not one of" in str(err.value.problems)
    alone = {"solo/compose.override.yml": OVERRIDE.encode()}
    with pytest.raises(ManifestError) as err:
        load_files(alone)
    assert [str(p) for p in err.value.problems] == ["solo/compose.override.yml: an override file, and solo has no compose file for it to override (compose.yaml)"]
    two = {**both, "app/docker-compose.override.yml": b"services: {}\n"}
    with pytest.raises(ManifestError) as err:
        load_files(two)
    assert "docker compose reads only one override file" in str(err.value.problems[0])


def test_env_file_reads_any_file_of_the_repository_in_git_and_on_disk_but_no_link_nor_a_path_out(tmp_path: Path) -> None:
    """Issue 21, item 3: env_file takes any file name (.env.production), read from the commit itself."""
    from gitsync.core.config import SourceSettings
    from gitsync.core.manifest import read_folder
    from gitsync.adapters.source import Source
    from tests.conftest import GitRepo

    repo = GitRepo(tmp_path / "repo")
    repo.write("app/compose.yaml", "services:\n  web:\n    image: web:1\n    env_file: [.env.production, ../shared/common.vars]\n")
    repo.write("app/.env.production", "MODE=production\nTOKEN=abc\n")
    repo.write("shared/common.vars", "REGION=eu\nMODE=overridden-by-the-later-file\n")
    repo.commit("env files")
    snap = Source(SourceSettings(url=str(repo.path)), str(tmp_path / "state")).fetch()
    assert ".env.production" not in " ".join(snap.files)  # not read at once: only when a project names it
    for files in (snap.files, read_folder(str(repo.path))):
        web = load_files(files).deployment("web")
        assert web is not None and dict(web.env) == {"MODE": "overridden-by-the-later-file", "TOKEN": "abc", "REGION": "eu"}

    (repo.path / "app" / "linked.vars").symlink_to("/etc/hostname")
    (repo.path / "app" / "compose.yaml").write_text("services:\n  web:\n    image: web:1\n    env_file: [linked.vars, missing.env]\n")
    assert refused_files(read_folder(str(repo.path))) == [
        "app/compose.yaml:4: services.web.env_file: linked.vars: is a symbolic link; gitsync reads only regular files of the repository (commit the file itself)",
        "app/compose.yaml:4: services.web.env_file: missing.env: not in the repository (looked for app/missing.env)",
    ]


def refused_files(files: dict[str, bytes]) -> list[str]:
    with pytest.raises(ManifestError) as err:
        load_files(files)
    return [str(p) for p in err.value.problems]


def test_an_anonymous_volume_is_each_replicas_own_and_kept_across_replacements() -> None:
    """Issue 21, item 5: `- /var/lib/mysql` (and long syntax without a source) as docker compose keeps it across a recreate."""
    text = "name: shop\nservices:\n  db:\n    image: mysql:8\n    deploy: {replicas: 2}\n    volumes: [/var/lib/mysql, {type: volume, target: /cache}]\n"
    d = load_files({"compose.yaml": text.encode()})
    db = d.deployment("db")
    assert db is not None and sorted((m.name, m.mount_path) for m in db.volumes) == [("shop_db_cache", "/cache"), ("shop_db_var-lib-mysql", "/var/lib/mysql")]
    assert sorted((v.name, v.per_replica, v.docker_name(1)) for v in d.volumes) == [
        ("shop_db_cache", True, "shop_db_cache-1"), ("shop_db_var-lib-mysql", True, "shop_db_var-lib-mysql-1")]


def test_every_key_of_the_compose_specification_is_mapped_ignored_or_refused_with_a_reason_and_the_readme_says_which() -> None:
    """Issue 21, item 5: the README's table names every service key of the schema gitsync validates with."""
    schema = json.loads(compose.schema.SCHEMA_FILE.read_text())
    keys = sorted(schema["$defs"]["service"]["properties"])
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Compose files"):]
    assert [k for k in keys if f"`{k}`" not in section] == []
    past_schema = set()
    for key in keys:  # a key in a service, with a value the schema takes: loaded, or refused with a reason (never the generic refusal)
        for value in ("x", "true", "1", "[x]", "{}", "[]"):
            text = f"services:\n  s:\n    image: a:1\n    {key}: {value}\n"
            loaded = compose.load_project("compose.yaml", {"compose.yaml": text.encode()})
            if loaded.stage not in (compose.Stage.SCHEMA, compose.Stage.INTERPOLATION):
                past_schema.add(key)
                generic = [str(p) for p in loaded.problems if "remove it, or deploy this service with a manifest" in str(p)]
                assert generic == [], (key, generic)
                break
    assert len(past_schema) > 80, sorted(set(keys) - past_schema)


def test_a_service_name_with_an_underscore_is_a_deployment_and_service_of_that_name() -> None:
    from gitsync.core import labels as L

    d = load_files({"compose.yaml": b"services:\n  my_app:\n    image: a:1\n    expose: [80]\n"})
    assert [x.name for x in d.deployments] == ["my_app"] and [s.name for s in d.services] == ["my_app"]
    assert L.container_name("t", "my_app", 0) == "t_my_app-0"  # an agent's name has no '_': the first one ends it


def test_a_service_others_wait_to_complete_successfully_is_a_job_that_runs_once_per_change() -> None:
    """Issue 21, item 5: depends_on with condition service_completed_successfully (a migration)."""
    from gitsync.core import labels as L
    from gitsync.kinds.deployment import assess

    text = ("services:\n  migrate:\n    image: app:1\n    command: [migrate]\n"
            "  app:\n    image: app:1\n    depends_on:\n      migrate: {condition: service_completed_successfully}\n")
    d = load_files({"compose.yaml": text.encode()})
    migrate, app = d.deployment("migrate"), d.deployment("app")
    assert migrate is not None and app is not None and migrate.run_once and not app.run_once and app.depends_on == ("migrate",)
    assert L.spec_document(migrate)["runOnce"] is True and "runOnce" not in L.spec_document(app)

    def job(state: str, code: int | None) -> dict[str, HostObservation]:
        from gitsync.core.live import LiveContainer
        c = LiveContainer("c1", "t_migrate-0", "h1", "migrate", 0, L.spec_hash(migrate), "r", state, None, 1, "app:1", spec=L.canonical_spec(migrate), exit_code=code)
        return {"h1": HostObservation("h1", True, (c,)), "h2": HostObservation("h2", True), "h3": HostObservation("h3", True)}

    assert assess(d, job("exited", 0))["migrate"].health == "Healthy"
    assert assess(d, job("exited", 3))["migrate"].message == "job failed: replica 0 exited with code 3"
    assert assess(d, job("running", None))["migrate"].health == "Progressing"
    done = make_plan(d, job("exited", 0), HOSTS, "t")
    assert not [a for a in done.actions if a.deployment == "migrate"]  # done: never run again for this spec
    failed = make_plan(d, job("exited", 3), HOSTS, "t")
    assert [a.reason for a in failed.actions if a.deployment == "migrate"] == ["job exited with code 3: run it again"]
    always = text.replace("command: [migrate]\n", "command: [migrate]\n    restart: always\n")
    assert "compose.yaml:5: services.migrate.restart: always: Docker would start a job again when it is done; use no or on-failure" in refused({"compose.yaml": always})


def test_include_reads_another_compose_file_from_its_own_folder_into_the_project() -> None:
    """Issue 21, item 5: include (compose's way to split a project), each file relative to its own folder."""
    main = "name: shop\ninclude:\n  - ../db/compose.yaml\nservices:\n  web:\n    image: web:1\n    depends_on: [db]\n    env_file: .env.web\n"
    db = "name: ignored\nservices:\n  db:\n    image: postgres:${PG:-15}\n    env_file: db.env\n    volumes: [data:/var/lib/postgresql/data]\nvolumes:\n  data: {}\n"
    files = {"shop/compose.yaml": main.encode(), "shop/.env.web": b"A=1\n", "db/compose.yaml": db.encode(), "db/.env": b"PG=16\n", "db/db.env": b"B=2\n"}
    d = load_files(files)
    assert sorted(x.name for x in d.deployments) == ["db", "web"]  # db/compose.yaml is no project of its own
    db_d, web = d.deployment("db"), d.deployment("web")
    assert db_d is not None and web is not None
    assert db_d.image == "postgres:16" and dict(db_d.env) == {"B": "2"} and dict(web.env) == {"A": "1"}  # each from its own folder
    assert web.depends_on == ("db",) and [v.name for v in d.volumes] == ["shop_data"]  # one project: shop
    assert db_d.origin is not None and db_d.origin.file == "db/compose.yaml"
    assert dict(db_d.labels)["compose.project"] == "shop"
    assert refused({"shop/compose.yaml": main.replace("../db/compose.yaml", "../../etc/compose.yaml")}) == [
        "shop/compose.yaml:3: include[0]: ../../etc/compose.yaml: is outside the repository"]
    loop = {"a/compose.yaml": "include: [../b/compose.yaml]\nservices: {a: {image: 'a:1'}}\n", "b/compose.yaml": "include: [../a/compose.yaml]\nservices: {b: {image: 'b:1'}}\n"}
    assert any("includes itself" in p for p in refused(loop))


def test_two_services_on_one_port_each_get_their_name_on_a_proxy_of_their_own_or_another_port_if_asked() -> None:
    from gitsync.kinds.endpoints import in_slot, slots

    text = "services:\n  web: {image: 'a:1', expose: [80]}\n  api: {image: 'a:1', expose: [80]}\n  db: {image: 'a:1', expose: [5432]}\n"
    state = load_files({"compose.yaml": text.encode()})
    assert slots(state.services) == {"api": 0, "db": 0, "web": 1}  # by name: api first; web's port 80 is taken there
    assert [s.name for s in in_slot(state.services, 1)] == ["web"]
    fixed = text.replace("api: {image: 'a:1', expose: [80]}", "api: {image: 'a:1', expose: [80], x-gitsync: {servicePorts: {80: 8080}}}")
    state = load_files({"compose.yaml": fixed.encode()})
    assert sorted((s.name, p.port, p.target_port) for s in state.services for p in s.ports) == [("api", 8080, 80), ("db", 5432, 5432), ("web", 80, 80)]
    assert set(slots(state.services).values()) == {0}


@pytest.mark.parametrize("odd", [
    "services:\n  web: {image: 'a:1', x-gitsync: 5}\n",
    "services:\n  web: {image: 'a:1', deploy: null}\n",
    "services:\n  web: {image: 'a:1'}\nvolumes: !reset null\nnetworks: !reset null\ninclude: !reset null\n",
    "services:\n  web: {image: 'a:1', extends: !reset [], profiles: !reset null}\n",
    "services:\n  web: {image: 'a:1', depends_on: {db: !reset null}}\n  db: {image: 'b:1'}\n",
    "services:\n  web: {image: 'a:1'}\nvolumes:\n  d: {x-gitsync: [1]}\n",
    "services:\n  web: {image: 'a:1'}\nnetworks:\n  n: !reset null\n",
])
def test_odd_compose_shapes_found_by_fuzzing_are_loaded_or_refused_never_a_crash(odd: str) -> None:
    try:
        load_files({"compose.yaml": odd.encode()})
    except ManifestError as exc:
        assert all(str(p).startswith("compose.yaml") for p in exc.problems), exc.problems
