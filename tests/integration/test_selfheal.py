"""Desired state that holds (issue 4), on the real engines: healing, crash loops, host loss and
return, health-gated rollouts with rollback, SIGKILL during apply, dependsOn."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import docker
import pytest
import requests

from tests import testbed
from tests.conftest import IN_CI, GitRepo, cli
from tests.fakeforge import FakeForge
from tests.integration.conftest import Fleet
from tests.integration.test_agent import AgentProc, push_body, statuses, wait_for

pytestmark = pytest.mark.docker

QUICK = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"]


def spec(name: str, replicas: int, image: str = "gitsync-test/busybox:1", role: str = "web", extra: str = "", command: list[str] | None = None) -> str:
    return (
        f"apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {{name: {name}, labels: {{app: {name}}}}}\n"
        f"spec:\n  replicas: {replicas}\n  image: {image}\n  command: {json.dumps(command or QUICK)}\n"
        f"  placement: {{hostSelector: {{role: {role}}}}}\n{extra}"
    )


def running(fleet: Fleet, deployment: str, hosts: tuple[str, ...] = ("h1", "h2", "h3")) -> list[dict]:
    out = []
    for h in hosts:
        try:
            out += [c for c in fleet.containers(h, all=False) if c["Labels"].get("io.gitsync.deployment") == deployment]
        except Exception:
            pass
    return out


def test_drift_is_healed_within_seconds(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    up = GitRepo(tmp_path / "up" / "deploy")
    up.write("apps/web.yaml", spec("web", 3, extra="  restart: \"no\"\n"))
    up.commit("web")
    agent = AgentProc(fleet, up, github_forge, tmp_path)
    try:
        wait_for(lambda: len(running(fleet, "web")) == 3, 30)
        api = {h: fleet.clients[h] for h in ("h1", "h2")}
        victims = {c["Names"][0].lstrip("/"): h for h in api for c in fleet.containers(h)}
        names = sorted(victims)
        # killed
        t = time.monotonic()
        api[victims[names[0]]].kill(names[0])
        wait_for(lambda: len(running(fleet, "web")) == 3 and api[victims[names[0]]].inspect_container(names[0])["State"]["Running"], 10, 0.05)
        assert time.monotonic() - t < 5
        # removed
        t = time.monotonic()
        api[victims[names[1]]].remove_container(names[1], force=True)
        wait_for(lambda: len(running(fleet, "web")) == 3, 10, 0.05)
        assert time.monotonic() - t < 5
        # stopped by hand
        api[victims[names[2]]].stop(names[2], timeout=1)
        wait_for(lambda: len(running(fleet, "web")) == 3, 10, 0.05)
        # an extra container carrying our labels, and a replica changed by hand (other spec hash)
        extra = fleet.clients["h1"].create_container(
            "gitsync-test/busybox:1", command=QUICK, name=f"{fleet.agent}-intruder",
            labels={"io.gitsync.managed-by": fleet.agent, "io.gitsync.deployment": "web", "io.gitsync.replica": "7", "io.gitsync.spec-hash": "x"},
        )
        fleet.clients["h1"].start(extra["Id"])
        wait_for(lambda: not any(c["Id"] == extra["Id"] for c in fleet.containers("h1")), 10, 0.05)
        assert len(running(fleet, "web")) == 3
        assert all(c["Names"][0].lstrip("/").startswith(f"{fleet.agent}_web-") for c in running(fleet, "web"))
    finally:
        assert agent.stop() == 0


def test_hosts_added_and_removed_by_sighup_are_watched_and_healed(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    up = GitRepo(tmp_path / "up" / "deploy")
    up.write("apps/web.yaml", spec("web", 2, extra="  restart: \"no\"\n") + "---\n" + spec("db", 1, role="db", extra="  restart: \"no\"\n"))
    up.commit("web and db")
    agent = AgentProc(fleet, up, github_forge, tmp_path, engines=2)  # h3 (role db) is not configured yet
    try:
        wait_for(lambda: len(running(fleet, "web")) == 2, 30)
        two = agent.config.read_text()
        three = two.replace(two[two.index("hosts:\n") : two.index("status:")], "hosts:\n" + agent.all_hosts)
        agent.config.write_text(three)
        agent.proc.send_signal(signal.SIGHUP)  # a host is added: db gets a place on it
        wait_for(lambda: len(running(fleet, "db")) == 1, 30)
        time.sleep(1)
        # on the host added, and on the hosts that were there: replicas removed by hand come back in seconds
        for deployment, hosts in (("db", ("h3",)), ("web", ("h1", "h2"))):
            t = time.monotonic()
            for c in running(fleet, deployment):
                host = next(h for h in hosts if any(x["Id"] == c["Id"] for x in fleet.containers(h)))
                fleet.clients[host].remove_container(c["Id"], force=True)
            wait_for(lambda: len(running(fleet, "db")) == 1 and len(running(fleet, "web")) == 2, 15, 0.05)
            assert time.monotonic() - t < 5, deployment
        agent.config.write_text(two)
        agent.proc.send_signal(signal.SIGHUP)  # and removed again: the agent goes on with the other two
        wait_for(lambda: agent.log.read_text().count("configuration reloaded") == 2, 10)
        victim = running(fleet, "web", ("h1",))[0]
        fleet.clients["h1"].remove_container(victim["Id"], force=True)
        wait_for(lambda: len(running(fleet, "web")) == 2, 15, 0.05)
    finally:
        assert agent.stop() == 0


def test_crash_loop_backs_off_and_reports_degraded(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    up = GitRepo(tmp_path / "up" / "deploy")
    up.write("apps/crash.yaml", spec("crash", 1, role="db", command=["sh", "-c", "sleep 0.2; exit 3"], extra="  restart: \"no\"\n"))
    sha = up.commit("crash")
    agent = AgentProc(fleet, up, github_forge, tmp_path)
    try:
        events = fleet.clients["h3"].events(since=int(time.time()), filters={"type": ["container"], "event": ["start"], "label": [f"io.gitsync.managed-by={fleet.agent}"]}, decode=True)
        starts: list[float] = []

        def count() -> None:
            for _ev in events:
                starts.append(time.monotonic())

        th = threading.Thread(target=count, daemon=True)
        th.start()
        time.sleep(10)
        events.close()
        # the first restart at once, then 1 s, 2 s, 4 s ... apart: never a hot loop
        assert 3 <= len(starts) <= 6, starts
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        # the k-th wait is the backoff, 2**(k-1) s, plus the replica's run: never shorter than the backoff
        # (less a fifth for when the test happens to receive each start event), and growing
        assert all(gap >= 0.8 * 2 ** (k - 1) for k, gap in enumerate(gaps) if k >= 1), gaps
        assert all(b > a * 1.2 for a, b in zip(gaps, gaps[1:])), gaps
        assert gaps[-1] >= 2.0, gaps
        status = json.loads(requests.get(f"{agent.url}/api/status", timeout=5).text)
        assert status["deployments"]["crash"]["health"] != "Healthy"
        wait_for(lambda: any(s == "failure" and ("crash" in d) for s, d in statuses(github_forge, sha)), 20)
        # the status says failure through the loop; it does not flip on every restart
        assert [s for s, _ in statuses(github_forge, sha)][-1] == "failure" and len(statuses(github_forge, sha)) <= 4, statuses(github_forge, sha)
        text = requests.get(f"{agent.url}/metrics", timeout=5).text
        assert 'gitsync_deployment_degraded{deployment="crash"} 1.0' in text
    finally:
        assert agent.stop() == 0


def test_a_crash_loop_under_dockers_restart_policy_reads_as_degraded(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    """The default restart policy: Docker restarts the replica itself; the agent counts the restarts from the events."""
    up = GitRepo(tmp_path / "up" / "deploy")
    up.write("apps/crash.yaml", spec("crash", 1, role="db", command=["sh", "-c", "sleep 0.3; exit 3"]))  # restart: unless-stopped
    sha = up.commit("crash")
    agent = AgentProc(fleet, up, github_forge, tmp_path)
    try:
        wait_for(lambda: any(s == "failure" and "crash-looping" in d for s, d in statuses(github_forge, sha)), 20)
        time.sleep(6)  # Docker goes on restarting it, 0.1 s, 0.2 s, 0.4 s ... apart
        posted = statuses(github_forge, sha)
        assert posted[-1][0] == "failure" and "crash-looping" in posted[-1][1], posted
        assert len(posted) <= 8, posted  # degraded throughout, not one post (or more) for each of Docker's ~7 restarts
        status = requests.get(f"{agent.url}/api/status", timeout=5).json()
        assert status["deployments"]["crash"]["health"] == "Degraded", status["deployments"]
        assert "crash-looping" in status["deployments"]["crash"]["message"]
        (c,) = fleet.containers("h3")  # Docker restarts it in place; the agent neither starts nor replaces it
        assert c["Names"] == [f"/{fleet.agent}_crash-0"]
    finally:
        assert agent.stop() == 0


def test_a_service_started_before_its_database_comes_up_once_the_database_does(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    """No dependsOn: api needs db over the network and exits while db does not answer; the retries bring it up."""
    h3 = fleet.engines[2].addr
    db = spec("db", 1, role="db", command=["sh", "-c", "sleep 4; echo ok > /tmp/ok; exec httpd -f -p 8099 -h /tmp"],
              extra="  ports: [{containerPort: 8099, hostPort: 8099}]\n")
    api = spec("api", 1, command=["sh", "-c", f"wget -q -O- http://{h3}:8099/ok || exit 1; " + QUICK[2]], extra='  restart: "no"\n')
    up = GitRepo(tmp_path / "up" / "deploy")
    up.write("apps/all.yaml", api + "---\n" + db)
    sha = up.commit("api and its database")
    t0 = int(time.time())
    agent = AgentProc(fleet, up, github_forge, tmp_path)

    def stays_up() -> str | None:
        """The host of an api replica that runs, and is still the same run 3 s later."""
        for h in ("h1", "h2"):
            for c in fleet.containers(h, all=False):
                if c["Labels"].get("io.gitsync.deployment") == "api":
                    first = fleet.clients[h].inspect_container(c["Id"])["State"]
                    time.sleep(3)
                    again = fleet.clients[h].inspect_container(c["Id"])["State"]
                    return h if again["Running"] and again["StartedAt"] == first["StartedAt"] else None
        return None

    try:
        host = wait_for(stays_up, 60, 0.2)
        assert len(running(fleet, "db")) == 1 and len(running(fleet, "api")) == 1
        starts = list(fleet.clients[host].events(since=t0, until=int(time.time()) + 1, decode=True,
                                                  filters={"type": ["container"], "event": ["start"], "label": ["io.gitsync.deployment=api"]}))
        assert len(starts) >= 3, "api should have failed while db was not answering, and been restarted more than once"
        # crash-looping until it has stayed up 30 s: failure, then success once, without flapping in between
        wait_for(lambda: statuses(github_forge, sha)[-1][0] == "success" and any(s == "failure" and "crash-looping" in d for s, d in statuses(github_forge, sha)), 60, 0.5)
        assert len(statuses(github_forge, sha)) <= 6, statuses(github_forge, sha)  # not two or three for each restart
    finally:
        assert agent.stop() == 0


def test_host_loss_moves_replicas_and_return_removes_extras(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    up = GitRepo(tmp_path / "up" / "deploy")
    up.write("apps/web.yaml", spec("web", 4))
    up.commit("web")
    agent = AgentProc(fleet, up, github_forge, tmp_path, grace="3s")
    h2 = fleet.engines[1]
    try:
        wait_for(lambda: len(running(fleet, "web")) == 4, 30)
        on_h2 = [c for c in running(fleet, "web") if c in fleet.containers("h2", all=False)]
        assert on_h2, "expected replicas on h2"
        t = time.monotonic()
        testbed.set_link(h2, False)  # the network to h2 is cut
        wait_for(lambda: len(running(fleet, "web", ("h1",))) == 4, 20, 0.1)
        moved = time.monotonic() - t
        assert moved < 3 + 3 + 2, f"replicas ran elsewhere only after {moved:.1f}s"
        testbed.set_link(h2, True)  # it comes back, with its old replicas still running
        wait_for(lambda: len(running(fleet, "web", ("h2",))) == 0 and len(running(fleet, "web", ("h1",))) == 4, 30, 0.2)
        time.sleep(1.5)
        assert len(running(fleet, "web")) == 4  # exactly the desired number: no more, no less
    finally:
        testbed.set_link(h2, True)
        assert agent.stop() == 0


def test_engine_death_and_restart(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    up = GitRepo(tmp_path / "up" / "deploy")
    up.write("apps/web.yaml", spec("web", 2))
    up.commit("web")
    agent = AgentProc(fleet, up, github_forge, tmp_path, grace="2s")
    h1 = fleet.engines[0]
    try:
        wait_for(lambda: len(running(fleet, "web")) == 2, 30)
        testbed.kill(h1)  # the engine dies
        wait_for(lambda: len(running(fleet, "web", ("h2",))) == 2, 20, 0.2)
        testbed.start(h1)  # it restarts; Docker restarts its old replicas (unless-stopped)
        fleet.clients["h1"].close()
        fleet.clients["h1"] = docker.APIClient(base_url=h1.tcp_url, version="auto", timeout=60)
        wait_for(lambda: len(running(fleet, "web", ("h1", "h2"))) == 2 and not running(fleet, "web", ("h1",)), 40, 0.3)
    finally:
        testbed.start(h1)
        assert agent.stop() == 0


def test_failing_healthcheck_stops_the_rollout_and_rolls_back(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    good = "  healthcheck: {test: [CMD, 'true'], interval: 1s, timeout: 1s, retries: 1}\n  update: {order: start-first, parallelism: 1}\n"
    up = GitRepo(tmp_path / "up" / "deploy")
    up.write("apps/web.yaml", spec("web", 3, extra=good))
    up.commit("web healthy")
    agent = AgentProc(fleet, up, github_forge, tmp_path)
    try:
        wait_for(lambda: sum(1 for c in running(fleet, "web") if "(healthy)" in c["Status"]) == 3, 30)
        before = {c["Names"][0]: c["Id"] for c in running(fleet, "web")}
        low = [3]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                n = sum(1 for c in running(fleet, "web") if "(healthy)" in c["Status"] and "-next" not in c["Names"][0])
                low[0] = min(low[0], n)
                time.sleep(0.05)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        bad = good.replace("[CMD, 'true']", "[CMD, sh, -c, 'echo db not reachable; exit 1']")
        up.write("apps/web.yaml", spec("web", 3, image="gitsync-test/busybox:2", extra=bad))
        sha = up.commit("web broken")
        assert agent.hook(push_body(sha)).status_code == 202
        wait_for(lambda: any(s == "failure" for s, _ in statuses(github_forge, sha)), 60)
        sampling.set()
        th.join(5)
        (desc,) = [d for s, d in statuses(github_forge, sha) if s == "failure"][:1]
        assert desc.startswith("web: replica ") and "unhealthy after" in desc and "db not reachable" in desc, desc
        after = running(fleet, "web")
        assert len(after) == 3 and {c["Image"] for c in after} == {"gitsync-test/busybox:1"}
        assert {c["Names"][0]: c["Id"] for c in after} == before  # start-first: the old replicas never stopped
        assert low[0] >= 3, "start-first ran fewer healthy replicas than desired"
        assert not any("-next" in c["Names"][0] for h in ("h1", "h2") for c in fleet.containers(h))
        # the next syncs do not retry the same broken spec in a loop
        r = requests.post(f"{agent.url}/api/sync", headers={"Authorization": "Bearer api-token-for-tests"}, timeout=5)
        assert r.status_code == 202
        time.sleep(2)
        assert {c["Names"][0]: c["Id"] for c in running(fleet, "web")} == before
    finally:
        assert agent.stop() == 0


def test_stop_first_rollback_restores_the_previous_spec(fleet: Fleet) -> None:
    good = "  update: {order: stop-first, parallelism: 2}\n  minReadySeconds: 1s\n"
    fleet.repo.write("apps/w.yaml", spec("w", 2, role="db", extra=good))
    fleet.repo.commit("w")
    assert cli("apply", "-c", str(fleet.config)).code == 0
    fleet.repo.write("apps/w.yaml", spec("w", 2, image="gitsync-test/busybox:2", role="db", extra=good, command=["sh", "-c", "exit 1"]))
    fleet.repo.commit("w crashes")
    r = cli("apply", "-c", str(fleet.config), "--timeout", "20s")
    assert r.code == 1
    assert "w: replica" in r.out and "exited with code" in r.out and "rolled back" in r.out, r.out + r.err
    after = running(fleet, "w")
    assert len(after) == 2 and {c["Image"] for c in after} == {"gitsync-test/busybox:1"}


def test_sigkill_during_apply_always_converges(fleet: Fleet) -> None:
    rng = random.Random(4)
    env = {**os.environ}
    kills = 0
    for round_ in range(8):
        image = f"gitsync-test/busybox:{1 + round_ % 2}"
        replicas = 4 + 2 * (round_ % 2)
        fleet.repo.write("apps/web.yaml", spec("web", replicas, image=image, extra="  update: {parallelism: 1}\n  minReadySeconds: 0.3s\n"))
        fleet.repo.commit(f"round {round_}")
        p = subprocess.Popen([sys.executable, "-m", "gitsync", "apply", "-c", str(fleet.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        time.sleep(rng.uniform(0.3, 2.0))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
        r = cli("apply", "-c", str(fleet.config), "--timeout", "60s")
        assert r.code == 0, r.out + r.err
        names = sorted(c["Names"][0].lstrip("/") for h in ("h1", "h2", "h3") for c in fleet.containers(h))
        assert names == sorted(f"{fleet.agent}_web-{i}" for i in range(replicas)), names  # no duplicates, orphans or temporaries
        assert {c["Image"] for c in running(fleet, "web")} == {image}
        assert len(running(fleet, "web")) == replicas
    assert kills >= 4


def test_the_agent_sigkilled_during_rollouts_converges_when_it_restarts(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    rng = random.Random(11)
    up = GitRepo(tmp_path / "up" / "deploy")
    rollout = "  update: {parallelism: 1}\n  minReadySeconds: 0.5s\n"
    up.write("apps/web.yaml", spec("web", 4, extra=rollout))
    up.commit("web")
    agent = AgentProc(fleet, up, github_forge, tmp_path)
    try:
        for round_ in range(3):
            image = f"gitsync-test/busybox:{2 + round_ % 2}"
            up.write("apps/web.yaml", spec("web", 4, image=image, extra=rollout))
            sha = up.commit(f"roll {round_}")
            assert agent.hook(push_body(sha)).status_code == 202
            time.sleep(rng.uniform(0.5, 2.5))  # somewhere in the rolling replace
            agent.proc.send_signal(signal.SIGKILL)
            agent.stop()
            agent = AgentProc(fleet, up, github_forge, tmp_path)  # the same state_dir: its history goes on
            wait_for(lambda: statuses(github_forge, sha) and statuses(github_forge, sha)[-1][0] == "success", 60)
            names = sorted(c["Names"][0].lstrip("/") for h in ("h1", "h2", "h3") for c in fleet.containers(h))
            assert names == sorted(f"{fleet.agent}_web-{i}" for i in range(4)), names  # no duplicates, orphans or -next
            assert {c["Image"] for c in running(fleet, "web")} == {image} and len(running(fleet, "web")) == 4
        history = json.loads(cli("status", "-c", str(agent.config), "--json", "-n", "100").out)
        assert any(x["outcome"] == "interrupted" for x in history), [x["outcome"] for x in history]
    finally:
        assert agent.stop() == 0


def test_depends_on_brings_the_dependency_up_healthy_first(fleet: Fleet) -> None:
    db = spec("db", 1, role="db", command=["sh", "-c", "trap 'exit 0' TERM; sleep 2; touch /tmp/ready; while :; do sleep 1 & wait $!; done"],
              extra="  healthcheck: {test: [CMD, test, -f, /tmp/ready], interval: 0.5s, timeout: 1s, retries: 10}\n")
    api = spec("api", 2, extra="  dependsOn: [db]\n")
    fleet.repo.write("apps/all.yaml", api + "---\n" + db)
    fleet.repo.commit("api on db")
    r = cli("apply", "-c", str(fleet.config), "--timeout", "60s")
    assert r.code == 0, r.out + r.err
    dbc = fleet.clients["h3"].inspect_container(f"{fleet.agent}_db-0")
    healthy_at = min(e["End"] for e in dbc["State"]["Health"]["Log"] if e["ExitCode"] == 0)
    for c in running(fleet, "api"):
        host = next(h for h in ("h1", "h2") if any(x["Id"] == c["Id"] for x in fleet.containers(h)))
        started = fleet.clients[host].inspect_container(c["Id"])["State"]["StartedAt"]
        assert started[:23] >= healthy_at[:23], (started, healthy_at)


def test_dependency_waits_see_the_agents_grace_view(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    """A host inside its grace still holds its replicas for the plan; the wait for a dependency must
    see them too, or a rollout that depends on them is skipped although nothing moved."""
    up = GitRepo(tmp_path / "up" / "deploy")
    db = spec("db", 1, role="db")
    up.write("apps/all.yaml", spec("api", 2, extra="  dependsOn: [db]\n") + "---\n" + db)
    up.commit("api on db")
    agent = AgentProc(fleet, up, github_forge, tmp_path, grace="60s")
    h3 = fleet.engines[2]
    try:
        wait_for(lambda: len(running(fleet, "api")) == 2 and len(running(fleet, "db")) == 1, 30)
        testbed.set_link(h3, False)  # db's host stops answering, well inside its grace
        wait_for(lambda: "h3" in agent.log.read_text() and "unreachable" in agent.log.read_text(), 10)
        up.write("apps/all.yaml", spec("api", 2, image="gitsync-test/busybox:2", extra="  dependsOn: [db]\n") + "---\n" + db)
        c2 = up.commit("api v2")
        assert agent.hook(push_body(c2)).status_code == 202
        wait_for(lambda: any(x["commit"] == c2 and x["outcome"] != "running" for x in agent.syncs()), 90, 0.5)
        sync = next(x for x in agent.syncs() if x["commit"] == c2 and x["outcome"] != "running")
        detail = requests.get(f"{agent.url}/api/syncs/{sync['id']}", timeout=5).json()["detail"]
        assert not any("waiting for db" in a["message"] for a in detail["actions"]), detail["actions"]
        assert {c["Image"] for c in running(fleet, "api", ("h1", "h2"))} == {"gitsync-test/busybox:2"}, detail
    finally:
        testbed.set_link(h3, True)
        assert agent.stop() == 0


def test_an_agent_starved_of_cpu_does_not_take_itself_for_dead_hosts(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    """Held to 1 % of a core for 25 s (cgroup CPU quota), with hosts' grace 5 s: every probe it makes
    is late, but the hosts are fine, so no replica may move."""
    cpu = Path("/sys/fs/cgroup/cpu")
    if not (cpu / "cpu.cfs_quota_us").is_file():
        if IN_CI:
            pytest.fail("the cgroup v1 cpu controller is needed to starve the agent")
        pytest.skip("no cgroup v1 cpu controller here")
    up = GitRepo(tmp_path / "up" / "deploy")
    up.write("apps/web.yaml", spec("web", 3))
    up.commit("web")
    agent = AgentProc(fleet, up, github_forge, tmp_path, grace="5s")
    group = cpu / f"gitsync-test-starved-{os.getpid()}"
    home = next(line.split(":")[2] for line in Path(f"/proc/{agent.proc.pid}/cgroup").read_text().splitlines() if ":cpu," in line or line.split(":")[1] == "cpu")
    try:
        wait_for(lambda: len(running(fleet, "web")) == 3, 30)
        time.sleep(2)
        before = sorted(c["Id"] for c in running(fleet, "web"))
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("1000")  # 1 % of one core
        (group / "cgroup.procs").write_text(str(agent.proc.pid))
        time.sleep(25)
        (group / "cpu.cfs_quota_us").write_text("-1")
        time.sleep(10)  # it catches up on what it saw (or thought it saw) meanwhile
        assert sorted(c["Id"] for c in running(fleet, "web")) == before, agent.log.read_text()[-3000:]
        assert " down" not in "".join(line for line in agent.log.read_text().splitlines() if "host h" in line), agent.log.read_text()[-3000:]
    finally:
        if agent.proc.poll() is None and group.exists():
            (cpu / home.lstrip("/") / "cgroup.procs").write_text(str(agent.proc.pid))
        if group.exists():
            group.rmdir()
        assert agent.stop() == 0


def test_healing_goes_on_while_the_remote_is_down_and_from_the_mirror_after_a_restart(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    """Issue 24, item 2: a failed fetch no longer ends the sync: the commit fetched last is applied (the
    history says so), a killed replica and a lost host are healed as usual, and a restarted agent heals
    from the mirror in its state directory. The remote back, the next commit is applied."""
    up = GitRepo(tmp_path / "up" / "deploy")
    up.write("apps/web.yaml", spec("web", 2, extra="  restart: \"no\"\n"))
    c1 = up.commit("web")
    agent = AgentProc(fleet, up, github_forge, tmp_path, grace="3s")
    h2 = fleet.engines[1]
    try:
        wait_for(lambda: any(s == "success" for s, _ in statuses(github_forge, c1)), 30)
        agent.stop_source()
        victim = running(fleet, "web")[0]
        host = next(h for h in ("h1", "h2") if any(c["Id"] == victim["Id"] for c in fleet.containers(h)))
        t = time.monotonic()
        fleet.clients[host].kill(victim["Id"])
        wait_for(lambda: len(running(fleet, "web")) == 2, 15, 0.1)
        assert time.monotonic() - t < 8
        wait_for(lambda: any("source unreachable: applied main@sha1:" + c1[:12] in (s.get("message") or "") for s in agent.syncs()), 10)
        assert not any(s == "failure" or s == "error" for s, _ in statuses(github_forge, c1))  # the commit's status is not flipped
        testbed.set_link(h2, False)  # a host lost while the remote is down: its replicas run elsewhere
        wait_for(lambda: len(running(fleet, "web", ("h1",))) == 2, 25, 0.2)
        testbed.set_link(h2, True)
        wait_for(lambda: len(running(fleet, "web")) == 2 and not running(fleet, "web", ("h2",)), 30, 0.2)
        log = agent.log.read_text()
        assert log.count("source unreachable:") >= 1 and log.count("syncs use the commit fetched last") == 1, log[-3000:]  # told once

        # restarted with the remote still down: it heals from the mirror it kept
        assert agent.stop() == 0
        agent = AgentProc(fleet, up, github_forge, tmp_path, grace="3s", source_port=agent.source_port, source_up=False)
        victim = running(fleet, "web")[0]
        fleet.clients["h1"].kill(victim["Id"])
        wait_for(lambda: len(running(fleet, "web")) == 2, 20, 0.1)

        # the remote back: the next commit is applied
        agent.start_source()
        up.write("apps/web.yaml", spec("web", 3, extra="  restart: \"no\"\n"))
        c2 = up.commit("three")
        assert agent.hook(push_body(c2)).status_code == 202
        wait_for(lambda: any(s == "success" for s, _ in statuses(github_forge, c2)), 60)
        assert len(running(fleet, "web")) == 3
    finally:
        testbed.set_link(h2, True)
        agent.stop()
