"""The swarm runtime's pure parts: a Deployment as a Swarm service spec, what it refuses (with file
and line), the plan in services (create, update with the fields that changed, a change made by hand,
remove, a name taken by a service not ours), and the assessment from tasks."""

from __future__ import annotations

from typing import Any

from gitsync.core import config as config_mod
from gitsync.core import labels as L
from gitsync.core.live import Health
from gitsync.core.manifest import load_files
from gitsync.core.plantext import plan_text, summary
from gitsync.runtimes import check
from gitsync.runtimes.swarm import LiveService, LiveTask, Node, SwarmObservation, SwarmRuntime, assess, document, document_hash, service_spec

CFG = config_mod.parse("name: t\nruntime: swarm\nhosts:\n  - {name: m1, url: 'tcp://10.0.0.1:2375'}\n")

WEB = (
    "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n"
    "  image: 'web:1'\n  replicas: 3\n  command: [serve, --port, '80']\n  env: {MODE: prod}\n"
    "  ports: [{containerPort: 80, hostPort: 8080}]\n"
    "  placement: {hostSelector: {role: web}, maxPerHost: 1}\n"
    "  healthcheck: {test: [CMD, probe], interval: 2s, timeout: 1s, retries: 4}\n"
    "  update: {order: start-first, parallelism: 2}\n  minReadySeconds: 10\n"
    "  resources: {limits: {memory: 64Mi, cpus: 0.5}}\n  user: '1000'\n"
)
WORKER = "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: worker}\nspec: {image: 'w:1', replicas: 2}\n"


def _live(d: Any, agent: str = "t", replicas: int | None = None, running: int | None = None, spec: dict | None = None) -> LiveService:
    want = service_spec(agent, d, "main@sha1:x")
    if replicas is not None:
        want["Mode"] = {"Replicated": {"Replicas": replicas}}
    h = want["Labels"][L.SPEC_HASH]
    tasks = tuple(LiveTask(f"t{i}", f"n{i % 2}", i + 1, "running", "running", "", h, "2026") for i in range(d.replicas if running is None else running))
    return LiveService(f"id-{d.name}", want["Name"], 7, d.name, h, spec or want, tasks=tasks)


def _obs(*services: LiveService, foreign: frozenset[str] = frozenset()) -> SwarmObservation:
    nodes = (Node("n0", "a", "manager", "active", "ready", "10.0.0.1"), Node("n1", "b", "worker", "active", "ready", "10.0.0.2"))
    return SwarmObservation("m1", None, nodes, services, foreign)


def test_a_deployment_becomes_one_service_spec_with_everything_swarm_takes() -> None:
    (d,) = load_files({"web.yaml": WEB.encode()}).deployments
    spec = service_spec("t", d, "main@sha1:abc")
    cs = spec["TaskTemplate"]["ContainerSpec"]
    assert spec["Name"] == "t-web" and spec["Mode"] == {"Replicated": {"Replicas": 3}}
    assert cs["Image"] == "web:1" and cs["Args"] == ["serve", "--port", "80"] and "Command" not in cs and cs["Env"] == ["MODE=prod"] and cs["User"] == "1000"
    assert cs["Healthcheck"] == {"Test": ["CMD", "probe"], "Interval": 2_000_000_000, "Timeout": 1_000_000_000, "Retries": 4, "StartPeriod": 0}
    assert cs["Labels"][L.MANAGED_BY] == "t" and cs["Labels"][L.SPEC_HASH] == spec["Labels"][L.SPEC_HASH] == document_hash(document(d))
    assert spec["Labels"][L.REVISION] == "main@sha1:abc"
    assert spec["TaskTemplate"]["Placement"] == {"Constraints": ["node.labels.role==web"], "MaxReplicas": 1}
    assert spec["TaskTemplate"]["Resources"] == {"Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 64 << 20}}
    assert spec["TaskTemplate"]["Networks"] == [{"Target": "gitsync-t", "Aliases": ["web"]}]
    assert spec["EndpointSpec"] == {"Mode": "dnsrr", "Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"}]}
    upd = spec["UpdateConfig"]
    # a host port is bound once per node: stop-first, whatever was asked; the monitor window is minReadySeconds
    assert upd == {"Parallelism": 2, "Delay": 0, "FailureAction": "rollback", "Monitor": 10_000_000_000, "MaxFailureRatio": 0, "Order": "stop-first"}
    (w,) = load_files({"w.yaml": WORKER.encode()}).deployments
    assert service_spec("t", w, "")["UpdateConfig"]["Order"] == "start-first" and service_spec("t", w, "")["UpdateConfig"]["Monitor"] == 5_000_000_000


def test_what_swarm_cannot_run_is_refused_with_file_and_line() -> None:
    text = WEB.replace("replicas: 3", "replicas: 1") + "  domainname: example.org\n  volumes: [{name: data, mountPath: /data}]\n"
    desired = load_files({"apps/web.yaml": text.encode(), "apps/data.yaml": b"apiVersion: gitsync.io/v1\nkind: Volume\nmetadata: {name: data}\nspec: {perReplica: true}\n"})
    said = [str(p) for p in check(CFG, desired)]
    assert "apps/web.yaml:16: spec.domainname: Swarm services have no domain name (runtime: swarm)" in said
    assert ("apps/web.yaml:17: spec.volumes: data: Swarm cannot hold each replica to the node that has its data (declare the Volume "
            "shared, on a driver every node reaches, or use one replica) (runtime: swarm)") in said, said
    assert check(config_mod.parse("name: t\n"), desired) == []  # the containers runtime runs them


def test_a_volume_per_replica_on_a_shared_driver_is_one_volume_per_task_slot() -> None:
    text = WEB + "  volumes: [{name: data, mountPath: /data}]\n"
    vol = b"apiVersion: gitsync.io/v1\nkind: Volume\nmetadata: {name: data}\nspec: {perReplica: true, shared: true}\n"
    desired = load_files({"apps/web.yaml": text.encode(), "apps/data.yaml": vol})
    assert check(CFG, desired) == []
    d = desired.deployment("web")
    assert d is not None
    (mount,) = service_spec("t", d, "", desired=desired)["TaskTemplate"]["ContainerSpec"]["Mounts"]
    assert mount["Source"] == "gitsync-t-data-{{.Task.Slot}}" and mount["Target"] == "/data"  # Swarm fills in the slot on the node
    assert mount["VolumeOptions"]["Labels"] == {"io.gitsync.managed-by": "t", "io.gitsync.volume": "data"}


def test_the_plan_speaks_in_services() -> None:
    runtime = SwarmRuntime(CFG)
    old = load_files({"web.yaml": WEB.encode(), "w.yaml": WORKER.encode()})
    web, worker = old.deployment("web"), old.deployment("worker")
    gone = load_files({"w.yaml": WORKER.replace("worker", "old").encode()}).deployment("old")
    assert web is not None and worker is not None and gone is not None
    assert runtime.plan(old, _obs(_live(web), _live(worker))).in_sync

    new = load_files({"web.yaml": WEB.replace("web:1", "web:2").encode(), "x.yaml": WORKER.replace("worker", "batch").encode()})
    plan = runtime.plan(new, _obs(_live(web), _live(gone)))
    text = plan_text(plan, "main@sha1:abc", {})
    assert "  ~ web                      update   changed: image web:1 -> web:2 (stop-first for hostPort 8080, 2 at a time)\n" in text, text
    assert "  + batch                    create   2 replicas of w:1\n" in text and "  - old                      remove   not in Git any more\n" in text, text
    assert text.endswith("plan: 1 to create, 1 to update, 1 to remove\n"), text
    assert summary(plan) == "would create 1, update 1 (web: image), remove 1"

    scaled = runtime.plan(old, _obs(_live(web, replicas=1), _live(worker)))  # `docker service scale web=1`
    (a,) = scaled.actions
    assert a.reason == "changed outside Git: replicas 1 -> 3 (stop-first for hostPort 8080, 2 at a time)"

    taken = runtime.plan(load_files({"w.yaml": WORKER.encode()}), _obs(foreign=frozenset({"t-worker"})))
    assert not taken.actions and "a Swarm service named t-worker exists that gitsync did not make" in str(taken.problems[0])
    down = runtime.plan(old, SwarmObservation(None, "no manager answers"))
    assert plan_text(down, "r", {}).splitlines()[1] == "swarm: UNREACHABLE: no manager answers; nothing changes"


def test_health_is_read_from_the_tasks_on_the_current_spec() -> None:
    desired = load_files({"w.yaml": WORKER.encode()})
    (d,) = desired.deployments
    assert assess(desired, _obs(_live(d)))["worker"].health == Health.HEALTHY
    assert assess(desired, _obs(_live(d))).get("worker").hosts == {"a": 1, "b": 1}  # type: ignore[union-attr]
    half = assess(desired, _obs(_live(d, running=1)))["worker"]
    assert half.health == Health.DEGRADED and half.message == "1/2 tasks running"
    assert assess(desired, _obs())["worker"].health == Health.MISSING
    old = load_files({"w.yaml": WORKER.replace("w:1", "w:0").encode()}).deployment("worker")
    assert assess(desired, _obs(_live(old)))["worker"].health == Health.DEGRADED  # still on another spec


DATA = (
    "apiVersion: gitsync.io/v1\nkind: Volume\nmetadata: {name: data}\n---\n"
    "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: db}\nspec:\n  image: 'db:1'\n  volumes: [{name: data, mountPath: /data}]\n---\n"
    "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: backup}\nspec:\n  image: 'b:1'\n  volumes: [{name: data, mountPath: /data, readOnly: true}]\n"
)


def test_host_local_data_holds_its_deployments_to_the_node_that_has_it() -> None:
    runtime = SwarmRuntime(CFG)
    desired = load_files({"data.yaml": DATA.encode()})
    pins, why_not = runtime._pins(desired, _obs())
    assert pins == {"backup": "n0", "db": "n0"} and not why_not  # one node for one volume, whoever mounts it
    recorded = SwarmObservation("m1", None, _obs().nodes, volume_nodes={"data": "n1"})
    assert runtime._pins(desired, recorded)[0] == {"backup": "n1", "db": "n1"}  # where the data was made, also after a removal
    (db,) = [d for d in desired.deployments if d.name == "db"]
    spec = service_spec("t", db, "", desired, "n1")
    assert spec["TaskTemplate"]["Placement"]["Constraints"] == ["node.id==n1"] and spec["Labels"]["io.gitsync.pinned-node"] == "n1"
    (mount,) = spec["TaskTemplate"]["ContainerSpec"]["Mounts"]
    assert mount["Source"] == "gitsync-t-data" and mount["Target"] == "/data" and mount["VolumeOptions"]["DriverConfig"]["Name"] == "local"
    gone = SwarmObservation("m1", None, _obs().nodes, volume_nodes={"data": "n9"})
    plan = runtime.plan(desired, gone)
    assert not plan.actions and "volume data is on node n9, which left the swarm: its data stays there" in str(plan.problems[0]), plan.problems


MIGRATE = ("apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: migrate}\n"
           "spec: {image: 'm:1', replicas: 2, runOnce: true, command: [migrate]}\n")


def _job(d: Any, states: tuple[str, ...], iteration: int = 7, error: str = "") -> LiveService:
    want = service_spec("t", d, "")
    h = want["Labels"][L.SPEC_HASH]
    old = tuple(LiveTask(f"o{i}", "n0", 0, "complete", "failed", "task: non-zero exit (1)", h, "2025", iteration - 1) for i in range(2))
    tasks = tuple(LiveTask(f"t{i}", f"n{i % 2}", 0, "complete", s, error if s == "failed" else "", h, "2026", iteration) for i, s in enumerate(states))
    return LiveService("id-migrate", want["Name"], 9, d.name, h, want, tasks=old + tasks, iteration=iteration)


def test_a_job_is_a_replicated_job_run_again_when_its_run_failed_and_healthy_once_done() -> None:
    runtime = SwarmRuntime(CFG)
    desired = load_files({"m.yaml": MIGRATE.encode()})
    (d,) = desired.deployments
    spec = service_spec("t", d, "")
    assert spec["Mode"] == {"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 2}}
    assert "UpdateConfig" not in spec and "RollbackConfig" not in spec  # Swarm takes no update config for a job
    assert spec["TaskTemplate"]["RestartPolicy"]["Condition"] == "none"  # a failed run fails the sync; the next runs it again
    assert check(CFG, desired) == []

    plan = runtime.plan(desired, _obs())
    assert plan_text(plan, "r", {}).count("  + migrate                  create   job: 2 replicas of m:1\n") == 1
    done = _job(d, ("complete", "complete"))  # the run before failed; this one completed: nothing to do
    assert runtime.plan(desired, _obs(done)).in_sync
    st = assess(desired, _obs(done))["migrate"]
    assert st.health == Health.HEALTHY and st.message == "job done: 2/2 tasks exited with code 0"
    running = _job(d, ("complete", "running"))
    assert runtime.plan(desired, _obs(running)).in_sync and assess(desired, _obs(running))["migrate"].health == Health.PROGRESSING

    failed = _job(d, ("complete", "failed"), error="task: non-zero exit (3)")
    (a,) = runtime.plan(desired, _obs(failed)).actions
    assert a.reason == "job failed (task failed: task: non-zero exit (3)): run it again", a.reason
    st = assess(desired, _obs(failed))["migrate"]
    assert st.health == Health.DEGRADED and st.message == "job failed: task failed: task: non-zero exit (3)"
    changed = load_files({"m.yaml": MIGRATE.replace("m:1", "m:2").encode()})
    (a,) = runtime.plan(changed, _obs(done)).actions
    assert a.kind == "update" and a.reason == "changed: image m:1 -> m:2 (runs the job again)", a.reason


def test_a_plan_never_reveals_a_secret_and_a_preview_plans_a_deployment_that_uses_one() -> None:
    from gitsync.core.secrets import SecretReader
    from gitsync.adapters.sops import AgeKeys
    from tests.sopsfile import TEST_IDENTITY, secret_manifest

    uses = WORKER.replace("spec: {image: 'w:1', replicas: 2}", "spec: {image: 'w:1', replicas: 2, env: {TOKEN: {secretKeyRef: {name: api, key: token}}}}")
    files = {"w.yaml": uses.encode(), "api.yaml": secret_manifest("api", {"token": "tok-31f2"}).encode()}
    reader = SecretReader(AgeKeys([TEST_IDENTITY], "test"))
    applied = load_files(files, secrets=reader)
    (d,) = applied.deployments
    live = _live(d)  # as applied: its variable holds the value
    assert "TOKEN=tok-31f2" in live.spec["TaskTemplate"]["ContainerSpec"]["Env"]
    runtime = SwarmRuntime(CFG)
    assert runtime.plan(applied, _obs(live)).in_sync
    preview = load_files(files, secrets=reader.preview())  # nothing decrypted: the same commit plans in sync
    assert runtime.plan(preview, _obs(live)).in_sync
    changed = load_files({**files, "w.yaml": uses.replace("replicas: 2", "replicas: 3").encode()}, secrets=reader.preview())
    (a,) = runtime.plan(changed, _obs(live)).actions
    assert a.reason.startswith("changed: replicas") and "tok-31f2" not in a.reason
