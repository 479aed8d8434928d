"""`gitsync run` end to end: a real agent process, a git daemon remote, real engines, signed webhooks,
commit statuses on a fake GitHub checked against GitHub's API description, history, dashboard, metrics."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import IN_CI, GitRepo, cli, free_port
from tests.fakeforge import FakeForge
from tests.integration.conftest import Fleet
from tests.integration.test_sync import WEB, deployment

pytestmark = pytest.mark.docker

SECRET = "webhook-secret-for-tests"
API_TOKEN = "api-token-for-tests"
GH_TOKEN = "gh-token-for-tests"


def wait_for(predicate, timeout: float = 30.0, every: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {getattr(predicate, '__name__', predicate)}")


class AgentProc:
    def __init__(
        self, fleet: Fleet, upstream: GitRepo, forge: FakeForge, tmp: Path, grace: str = "10s", per_deployment: bool = False, engines: int = 3,
        server_extra: str = "", config_extra: str = "", env: dict[str, str] | None = None, source_port: int | None = None, source_up: bool = True,
        source_verify: str = "", hosts: str | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        daemon_port = self.source_port = source_port or free_port()
        self._daemon_argv = ["git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack", f"--base-path={upstream.path.parent}", "--listen=127.0.0.1",
                             f"--port={daemon_port}", str(upstream.path.parent)]
        self.daemon: subprocess.Popen[bytes] | None = None
        if source_up:
            self.start_source()
        hosts_block = hosts  # given: the hosts: list as written (a Swarm's managers)
        hosts = "".join(
            f"  - {{name: {e.name}, url: '{e.tcp_url}', insecure: true, grace: {grace}, labels: {{role: {r}}}}}\n"
            for e, r in zip(fleet.engines[:engines], ("web", "web", "db"))
        )
        self.all_hosts = "".join(
            f"  - {{name: {e.name}, url: '{e.tcp_url}', insecure: true, grace: {grace}, labels: {{role: {r}}}}}\n"
            for e, r in zip(fleet.engines, ("web", "web", "db"))
        )
        self.config = tmp / "agent.yaml"
        self.config.write_text(
            f"name: {fleet.agent}\n"
            f"source: {{url: 'git://127.0.0.1:{daemon_port}/{upstream.path.name}', branch: main, interval: 300s"
            + (f", verify: {source_verify}" if source_verify else "") + "}\n"
            f"hosts:\n{hosts if hosts_block is None else hosts_block}"
            f"status:\n  - {{type: github, url: '{forge.url}', repo: acme/deploy, token_env: GH_TOKEN, per_deployment: {str(per_deployment).lower()}}}\n"
            f"server: {{listen: '127.0.0.1:{self.port}', public_url: '{self.url}'{server_extra}}}\n"
            f"state_dir: {tmp / 'state'}\n"
            + config_extra
        )
        env = {**os.environ, "GITSYNC_WEBHOOK_SECRET": SECRET, "GITSYNC_API_TOKEN": API_TOKEN, "GH_TOKEN": GH_TOKEN, **(env or {})}
        self.log = tmp / "agent.log"
        self._log = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "gitsync", "run", "-c", str(self.config)], stdout=self._log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_for(self._ready, 60)
        except AssertionError:
            self.stop()
            raise AssertionError("agent never became ready:\n" + self.log.read_text()[-3000:]) from None

    def start_source(self) -> None:
        """The remote's git daemon (again, on the same port)."""
        self.daemon = subprocess.Popen(self._daemon_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.2)

    def stop_source(self) -> None:
        """The remote goes away: connections to it are refused."""
        if self.daemon is not None:
            self.daemon.terminate()
            self.daemon.wait(10)
            self.daemon = None

    def _ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def hook(self, body: bytes, signature_secret: str = SECRET, event: str = "push") -> requests.Response:
        sig = "sha256=" + hmac.new(signature_secret.encode(), body, hashlib.sha256).hexdigest()
        return requests.post(
            f"{self.url}/hooks/github", data=body, headers={"X-GitHub-Event": event, "X-Hub-Signature-256": sig, "Content-Type": "application/json"}, timeout=5
        )

    def syncs(self) -> list[dict]:
        return requests.get(f"{self.url}/api/syncs", timeout=5).json()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stop_source()
        self._log.close()
        return self.proc.returncode


def web_agent(fleet: Fleet, forge: FakeForge, tmp_path: Path, replicas: int, **kwargs: object) -> tuple[GitRepo, AgentProc]:
    """An upstream repository with one commit of deployment web, and an agent following it."""
    upstream = GitRepo(tmp_path / "up" / "deploy")
    upstream.write("apps/web.yaml", deployment("web", replicas, extra=WEB, labels="{app: web}"))
    upstream.commit("web")
    return upstream, AgentProc(fleet, upstream, forge, tmp_path, **kwargs)  # type: ignore[arg-type]


def push_body(sha: str, ref: str = "refs/heads/main") -> bytes:
    return json.dumps({"ref": ref, "before": "0" * 39 + "1", "after": sha, "repository": {"full_name": "acme/deploy"}}).encode()


def statuses(forge: FakeForge, sha: str) -> list[tuple[str, str]]:
    return [(p["state"], p["description"]) for p in forge.state.posted(sha)]


def test_push_webhook_status_history_dashboard_metrics(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    upstream = GitRepo(tmp_path / "up" / "deploy")
    upstream.write("apps/web.yaml", deployment("web", 2, extra=WEB, labels="{app: web}"))
    c1 = upstream.commit("web v1")
    agent = AgentProc(fleet, upstream, github_forge, tmp_path)
    try:
        # the startup sync: pending, then success, on the exact commit
        wait_for(lambda: ("success", "1/1 deployments converged") in [(s, d[:25]) for s, d in statuses(github_forge, c1)])
        assert [s for s, _ in statuses(github_forge, c1)] == ["pending", "success"]
        assert github_forge.state.violations == []
        first = github_forge.state.posted(c1)[-1]
        assert first["context"] == f"gitsync/{fleet.agent}" and first["target_url"].startswith(f"{agent.url}/syncs/")

        # a push: the webhook only queues; the agent fetches the commit itself
        upstream.write("apps/web.yaml", deployment("web", 2, image="gitsync-test/busybox:2", extra=WEB, labels="{app: web}"))
        c2 = upstream.commit("web v2")
        t0 = time.monotonic()
        r = agent.hook(push_body(c2))
        assert r.status_code == 202 and r.json()["status"] == "queued"
        wait_for(lambda: any(s == "success" for s, _ in statuses(github_forge, c2)), 30)
        took = time.monotonic() - t0
        assert took < 15, f"push to success took {took:.1f}s"
        images = {c["Image"] for h in ("h1", "h2") for c in fleet.containers(h)}
        assert images == {"gitsync-test/busybox:2"}
        before = fleet.ids()

        # an invalid commit: failure naming file and line; what runs stays as it was
        upstream.write("apps/web.yaml", deployment("web", 2, image="gitsync-test/busybox:3", extra=WEB + "  replicas: -1\n"))
        c3 = upstream.commit("broken")
        assert agent.hook(push_body(c3)).status_code == 202
        wait_for(lambda: any(s == "failure" for s, _ in statuses(github_forge, c3)), 30)
        (desc,) = [d for s, d in statuses(github_forge, c3) if s == "failure"]
        assert desc.startswith("apps/web.yaml:") and "duplicate key 'replicas'" in desc
        assert fleet.ids() == before

        # forged, other-branch, ping and malformed webhooks: refused or ignored, no sync
        count = len(agent.syncs())
        assert agent.hook(push_body(c3), signature_secret="guess").status_code == 401
        assert requests.post(f"{agent.url}/hooks/github", data=push_body(c3), headers={"X-GitHub-Event": "push"}, timeout=5).status_code == 401
        other = agent.hook(push_body(c3, "refs/heads/feature"))  # another branch: a preview (tests/integration/test_previews.py), no sync
        assert other.status_code == 202 and other.json()["reason"] == f"queued: preview of branch feature at {c3[:12]}", other.json()
        assert agent.hook(b'{"zen": "hi"}', event="ping").status_code == 200
        assert agent.hook(b"{not json").status_code == 400
        big = b"{" + b" " * (6 * 1024 * 1024) + b"}"
        assert requests.post(f"{agent.url}/hooks/github", data=big, headers={"X-GitHub-Event": "push"}, timeout=30).status_code == 413
        chunked = requests.post(f"{agent.url}/hooks/github", data=iter([push_body(c3)]), headers={"X-GitHub-Event": "push"}, timeout=5)
        assert chunked.status_code == 401  # a chunked body is bounded as it is read, then judged like any other
        assert requests.get(f"{agent.url}/hooks/github", timeout=5).status_code == 405
        time.sleep(1.0)
        assert len(agent.syncs()) == count

        # the API trigger needs the bearer token
        assert requests.post(f"{agent.url}/api/sync", timeout=5).status_code == 401
        assert requests.post(f"{agent.url}/api/sync", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=5).status_code == 202
        wait_for(lambda: len(agent.syncs()) > count and agent.syncs()[0]["outcome"] != "running", 30)

        # history: the API, the CLI and the metrics agree
        api = agent.syncs()
        r = cli("status", "-c", str(agent.config), "--json")
        assert r.code == 0
        assert [(x["id"], x["outcome"], x["commit"]) for x in json.loads(r.out)] == [(x["id"], x["outcome"], x["commit"]) for x in api]
        r = cli("status", c3[:8], "-c", str(agent.config))
        assert r.code == 0 and "failure" in r.out and "apps/web.yaml:" in r.out
        metrics = requests.get(f"{agent.url}/metrics", timeout=5).text
        outcomes = [x["outcome"] for x in api]
        assert f'gitsync_syncs_total{{result="failure"}} {float(outcomes.count("failure"))}' in metrics
        assert f'gitsync_syncs_total{{result="success"}} {float(outcomes.count("success"))}' in metrics
        assert 'gitsync_webhook_requests_total{code="401",provider="github"} 3.0' in metrics
        assert 'gitsync_managed_containers{deployment="web",host="h1",state="running"} 1.0' in metrics
        assert 'gitsync_host_up{host="h3"} 1.0' in metrics
        assert f'gitsync_revision_info{{agent="{fleet.agent}",revision="main@sha1:{c3}"}} 1.0' in metrics

        # the dashboard, as a person sees it in a browser
        text = dashboard_text(agent.url + "/", tmp_path)
        assert "Recent syncs" in text and "Deployments" in text and "Hosts" in text
        assert c3[:12] in text and "failure" in text and "web" in text and "2/2" in text, text
        failed_id = next(x["id"] for x in api if x["commit"] == c3 and x["outcome"] == "failure")
        page = dashboard_text(f"{agent.url}/syncs/{failed_id}", tmp_path)
        assert f"Sync #{failed_id}" in page and "apps/web.yaml:" in page and "duplicate key" in page
        assert github_forge.state.violations == []
    finally:
        code = agent.stop()
    assert code == 0, agent.log.read_text()[-2000:]
    assert "stopped" in agent.log.read_text()


def chromium(url: str, tmp: Path, *how: str) -> str:
    """Headless Chromium on `url`: its stdout (`--dump-dom`: the rendered DOM) or, with
    `--screenshot=FILE`, a picture of the page as a person sees it."""
    exe = shutil.which("chromium")
    if exe is None:
        if IN_CI:
            pytest.fail("chromium missing; scripts/test installs it")
        pytest.skip("chromium not installed (apt-get install chromium)")
    out = subprocess.run(
        [
            exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp / 'chromium'}", "--virtual-time-budget=3000", *(how or ("--dump-dom",)), url,
        ],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def dashboard_text(url: str, tmp: Path) -> str:
    """What a person reads: the rendered DOM without tags."""
    import re

    text = re.sub(r"<style.*?</style>", " ", chromium(url, tmp), flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


def test_sigterm_during_a_rollout_finishes_the_change_in_hand(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    upstream = GitRepo(tmp_path / "up" / "deploy")
    slow = deployment("web", 4, extra=WEB + "  update: {order: stop-first}\n  stopGracePeriod: 2s\n", labels="{app: web}").replace(
        "trap 'exit 0' TERM; ", ""  # ignores SIGTERM: each replace waits out the grace period
    )
    upstream.write("apps/web.yaml", slow)
    upstream.commit("web")
    agent = AgentProc(fleet, upstream, github_forge, tmp_path)
    try:
        upstream.write("apps/web.yaml", slow.replace("busybox:1", "busybox:2"))
        c2 = upstream.commit("roll")
        assert agent.hook(push_body(c2)).status_code == 202
        wait_for(lambda: any(s == "pending" for s, _ in statuses(github_forge, c2)), 30)
        time.sleep(0.5)  # the rollout is under way
    finally:
        code = agent.stop()
    assert code == 0
    names = fleet.by_host()
    assert sum(len(v) for v in names.values()) == 4  # no replica lost, none half-replaced
    assert all("-next" not in n for v in names.values() for n in v)
    r = cli("status", "-c", str(agent.config), "--json")
    newest = json.loads(r.out)[0]
    assert newest["outcome"] in ("interrupted", "success")
    if newest["outcome"] == "interrupted":
        assert newest["message"].startswith("stopped:")


def test_sigterm_while_waiting_for_health_stops_at_once(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    upstream = GitRepo(tmp_path / "up" / "deploy")
    upstream.write("apps/web.yaml", deployment("web", 1, extra=WEB, labels="{app: web}"))
    upstream.commit("web")
    agent = AgentProc(fleet, upstream, github_forge, tmp_path)
    # Its first healthcheck runs a minute after start: the sync waits for health, it changes nothing more.
    slow = "  healthcheck: {test: [CMD, 'true'], interval: 60s, startPeriod: 60s, retries: 1}\n"
    upstream.write("apps/slow.yaml", deployment("slow", 1, extra=WEB + slow, labels="{app: slow}"))
    c2 = upstream.commit("slow")
    try:
        assert agent.hook(push_body(c2)).status_code == 202
        wait_for(lambda: any(c["Labels"].get("io.gitsync.deployment") == "slow" for h in ("h1", "h2") for c in fleet.containers(h, all=False)), 30)
        time.sleep(1)  # the sync is now assessing, waiting for "slow" to turn healthy
        t = time.monotonic()
    finally:
        code = agent.stop()
    assert code == 0
    assert time.monotonic() - t < 10, "a stopping agent sat out the wait for health"
    newest = json.loads(cli("status", "-c", str(agent.config), "--json").out)[0]
    assert newest["outcome"] == "interrupted" and newest["commit"] == c2, newest
    assert "before slow converged" in newest["message"], newest
    assert statuses(github_forge, c2)[-1][0] == "error"


def test_sighup_reload_and_per_deployment_contexts(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    upstream = GitRepo(tmp_path / "up" / "deploy")
    upstream.write("apps/web.yaml", deployment("web", 1, extra=WEB, labels="{app: web}"))
    c1 = upstream.commit("web")
    agent = AgentProc(fleet, upstream, github_forge, tmp_path, per_deployment=True)
    try:
        wait_for(lambda: any(p["context"] == f"gitsync/{fleet.agent}/web" and p["state"] == "success" for p in github_forge.state.posted(c1)))
        assert any(p["context"] == f"gitsync/{fleet.agent}" and p["state"] == "success" for p in github_forge.state.posted(c1))
        good = agent.config.read_text()
        agent.config.write_text(good + "surprise: true\n")
        agent.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in agent.log.read_text(), 10)
        assert "surprise: unknown key" in agent.log.read_text()
        assert requests.get(f"{agent.url}/healthz", timeout=5).status_code == 200  # still running the old config
        agent.config.write_text(good.replace("interval: 300s", "interval: 200s"))
        agent.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in agent.log.read_text(), 10)
        wait_for(lambda: any(x["trigger"] == "reload" and x["outcome"] == "success" for x in agent.syncs()), 20)
    finally:
        assert agent.stop() == 0


def test_apply_while_the_agent_runs_asks_the_agent_instead_of_racing_it(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    upstream, agent = web_agent(fleet, github_forge, tmp_path, 2)  # polls every 300s: only a request syncs soon
    try:
        wait_for(lambda: len([c for h in fleet.clients for c in fleet.containers(h, all=False)]) == 2, 30)
        time.sleep(1.5)  # the syncs the start-up's own container events ask for are done
        upstream.write("apps/web.yaml", deployment("web", 3, image="gitsync-test/busybox:2", extra=WEB, labels="{app: web}"))
        c2 = upstream.commit("web v2")
        r = cli("apply", "-c", str(agent.config), "--timeout", "90s")
        assert r.code == 0, r.out + r.err
        assert f"an agent is running for {fleet.agent} (pid {agent.proc.pid}): asked it to sync now" in r.out, r.out
        assert "success: 1/1 deployments converged" in r.out and c2 in r.out, r.out
        first_of_c2 = [s for s in agent.syncs() if s["commit"] == c2][-1]  # newest first: the oldest sync of c2
        assert "apply" in first_of_c2["trigger"].split(",") and first_of_c2["outcome"] == "success", agent.syncs()
        running = [c for h in fleet.clients for c in fleet.containers(h, all=False)]
        assert len(running) == 3 and {c["Image"] for c in running} == {"gitsync-test/busybox:2"}
        # a second agent for the same state is refused, and the first one keeps running
        second = subprocess.run([sys.executable, "-m", "gitsync", "run", "-c", str(agent.config)], capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and f"an agent is already running for {fleet.agent} (pid {agent.proc.pid}" in second.stderr, second.stderr
        assert agent.proc.poll() is None
    finally:
        assert agent.stop() == 0


def test_the_http_surface_refuses_cleanly_and_sends_security_headers(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    _, agent = web_agent(fleet, github_forge, tmp_path, 1)
    try:
        for path in ("/", "/api/status", "/healthz", "/syncs/1", "/nowhere"):
            r = requests.get(agent.url + path, timeout=5)
            assert r.headers.get("X-Content-Type-Options") == "nosniff" and r.headers.get("X-Frame-Options") == "DENY", (path, r.headers)
            assert "default-src 'none'" in r.headers.get("Content-Security-Policy", ""), (path, r.headers)
        for path in ("/api/syncs/" + "9" * 25, "/syncs/" + "9" * 25):  # no sync has such an id (and SQLite cannot hold it)
            assert requests.get(agent.url + path, timeout=5).status_code == 404, path
        lower = requests.post(agent.url + "/api/sync", headers={"Authorization": f"bearer {API_TOKEN}"}, timeout=5)
        assert lower.status_code == 202, lower.text  # the scheme is case-insensitive (RFC 9110)
        for wrong in (f"Basic {API_TOKEN}", f"Bearer {API_TOKEN}x", "Bearer", ""):
            assert requests.post(agent.url + "/api/sync", headers={"Authorization": wrong}, timeout=5).status_code == 401, wrong
        assert "Traceback" not in agent.log.read_text()
    finally:
        assert agent.stop() == 0


def test_the_dashboard_and_read_api_can_require_the_api_token(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    _, agent = web_agent(fleet, github_forge, tmp_path, 1, server_extra=", require_token_to_read: true")
    try:
        for path in ("/", "/api/status", "/api/syncs", "/api/syncs/1", "/syncs/1"):
            r = requests.get(agent.url + path, timeout=5)
            assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Basic realm="gitsync"', (path, r.status_code)
            assert "web" not in r.text
            assert requests.get(agent.url + path, auth=("anyone", "wrong"), timeout=5).status_code == 401, path
        assert requests.get(agent.url + "/", auth=("anyone", API_TOKEN), timeout=5).status_code == 200  # a browser's way
        assert requests.get(agent.url + "/api/status", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=5).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics"):  # probes and Prometheus need no token
            assert requests.get(agent.url + path, timeout=5).status_code == 200, path
    finally:
        assert agent.stop() == 0


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _closed_within(s: socket.socket, seconds: float) -> bool:
    """The server closed this connection (EOF or reset) within `seconds`."""
    s.settimeout(seconds)
    try:
        while s.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_slow_and_half_sent_requests_hold_neither_workers_nor_memory(fleet: Fleet, github_forge: FakeForge, tmp_path: Path) -> None:
    """Slowloris (headers trickled), bodies that stop short of their Content-Length, and big half-sent
    bodies: the agent keeps answering probes and valid webhooks, its memory stays bounded, and every
    such connection is closed once the request deadline (10 s) is past."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    upstream, agent = web_agent(fleet, github_forge, tmp_path, 1)
    held: list[socket.socket] = []
    head = subprocess.check_output(["git", "-C", str(upstream.path), "rev-parse", "HEAD"], text=True).strip()
    try:
        wait_for(lambda: any(s == "success" for s, _ in statuses(github_forge, head)), 60)
        before = _rss_mb(agent.proc.pid)
        port = int(agent.url.rsplit(":", 1)[1])

        def connect(first: bytes) -> socket.socket:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(first)
            held.append(s)
            return s

        trickling = [connect(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\n") for _ in range(600)]
        short = connect(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nContent-Length: 1000\r\n\r\n{")
        big = []
        for _ in range(100):  # 4 MiB announced (under the 5 MiB limit), 1 MiB sent, then silence
            s = connect(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nContent-Length: 4194304\r\n\r\n")
            s.sendall(b" " * (1024 * 1024))
            big.append(s)
        for _ in range(5):  # the attack goes on: the trickling clients send a byte each now and then
            for s in trickling:
                try:
                    s.sendall(b"X")
                except OSError:  # already closed by the agent: its deadline passed
                    pass
            t = time.monotonic()
            assert requests.get(agent.url + "/healthz", timeout=5).status_code == 200
            assert time.monotonic() - t < 2.0, "healthz slow under the flood"
            time.sleep(1)
        assert agent.hook(push_body(head)).status_code == 202  # a valid webhook still gets through
        grown = _rss_mb(agent.proc.pid) - before
        assert grown < 60, f"the agent grew by {grown:.0f} MB holding 700 slow connections"
        # past the deadline every one of them is closed by the agent, whatever it still sends
        assert _closed_within(short, 15)
        assert all(_closed_within(s, 5) for s in big[:10])
        for s in trickling[:10]:
            try:
                s.sendall(b"X")
            except OSError:
                pass
        assert all(_closed_within(s, 5) for s in trickling[:10])
        assert requests.get(agent.url + "/healthz", timeout=5).status_code == 200
        assert "Traceback" not in agent.log.read_text()
    finally:
        for s in held:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert agent.stop() == 0
