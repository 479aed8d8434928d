"""The source step against real git: local work trees and folders, git daemon, smart HTTP with auth."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gitsync.core.config import SourceSettings
from gitsync.core.errors import FetchError, ManifestError
from gitsync.core.manifest import load_files
from gitsync.adapters.source import Source
from tests.conftest import GitRepo, cli, free_port, git

MANIFEST = "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {image: 'a:1', replicas: REPLICAS}\n"




@pytest.fixture
def upstream(tmp_path: Path) -> GitRepo:
    r = GitRepo(tmp_path / "upstream")
    r.write("apps/web.yaml", MANIFEST.replace("REPLICAS", "2"))
    r.write("README.md", "not a manifest")
    r.commit("first")
    git(r.path, "config", "http.receivepack", "true")
    git(r.path, "config", "uploadpack.allowAnySHA1InWant", "true")
    return r


def test_local_work_tree_applies_its_head_commit(upstream: GitRepo, tmp_path: Path) -> None:
    head = git(upstream.path, "rev-parse", "HEAD")
    (upstream.path / "apps/web.yaml").write_text(MANIFEST.replace("REPLICAS", "9"))  # not committed
    snap = Source(SourceSettings(url=str(upstream.path / "apps")), str(tmp_path / "st")).fetch()
    assert snap.revision == f"main@sha1:{head}" and snap.commit == head
    assert list(snap.files) == ["web.yaml"] and b"replicas: 2" in snap.files["web.yaml"]


def test_a_committed_link_is_refused_by_name_not_followed(upstream: GitRepo, tmp_path: Path) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_text("secret: the-secret-content\n")
    (upstream.path / "apps" / "leak.yaml").symlink_to(outside)
    upstream.commit("a link")
    snap = Source(SourceSettings(url=str(upstream.path)), str(tmp_path / "st")).fetch()
    with pytest.raises(ManifestError) as info:
        load_files(snap.files)
    assert [str(p) for p in info.value.problems] == [
        "apps/leak.yaml: is a symbolic link; gitsync reads only regular files of the repository (commit the file itself)"
    ]


def test_a_submodule_is_skipped_and_named(upstream: GitRepo, tmp_path: Path) -> None:
    sub = GitRepo(tmp_path / "sub")
    sub.write("x.yaml", "not: read\n")
    sub.commit("sub")
    git(upstream.path, "-c", "protocol.file.allow=always", "submodule", "-q", "add", str(sub.path), "apps/vendor")
    upstream.commit("a submodule")
    for url in (str(upstream.path), f"file://{upstream.path}"):  # a work tree, and a remote
        snap = Source(SourceSettings(url=url), str(tmp_path / "st")).fetch()
        assert sorted(snap.files) == ["apps/web.yaml"], snap.files.keys()
        assert snap.notes == ("apps/vendor is a git submodule; gitsync does not read submodules",)


def test_plain_folder_revision_is_a_content_hash(tmp_path: Path) -> None:
    d = tmp_path / "plain"
    d.mkdir()
    (d / "a.yaml").write_text(MANIFEST.replace("REPLICAS", "1"))
    s = Source(SourceSettings(url=str(d)), str(tmp_path / "st"))
    first = s.fetch()
    assert first.revision.startswith("sha256:") and first.commit is None
    assert s.fetch().revision == first.revision
    (d / "a.yaml").write_text(MANIFEST.replace("REPLICAS", "2"))
    assert s.fetch().revision != first.revision


@pytest.fixture
def daemon(upstream: GitRepo) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={upstream.path.parent}", "--listen=127.0.0.1", f"--port={port}", str(upstream.path.parent)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"git://127.0.0.1:{port}/{upstream.path.name}"
    proc.terminate()
    proc.wait(timeout=10)


def test_remote_is_cloned_once_then_fetched(upstream: GitRepo, daemon: str, tmp_path: Path) -> None:
    state = tmp_path / "st"
    s = Source(SourceSettings(url=daemon, branch="main", path="apps"), str(state))
    first = s.fetch()
    assert first.commit == git(upstream.path, "rev-parse", "HEAD")
    assert list(first.files) == ["web.yaml"]
    mirror = state / "source.git"
    assert (mirror / "HEAD").is_file() and not (mirror / "apps").exists()  # bare: read from objects, no checkout
    packs_before = sorted(p.name for p in (mirror / "objects").rglob("*") if p.is_file())
    # an unchanged remote: a new Source (as after a restart) reuses the mirror and fetches nothing new
    again = Source(SourceSettings(url=daemon, branch="main", path="apps"), str(state)).fetch()
    assert again.revision == first.revision
    assert sorted(p.name for p in (mirror / "objects").rglob("*") if p.is_file()) == packs_before
    upstream.write("apps/web.yaml", MANIFEST.replace("REPLICAS", "3"))
    new = upstream.commit("three")
    snap = s.fetch()
    assert snap.commit == new and b"replicas: 3" in snap.files["web.yaml"]


def test_missing_branch_and_path_are_named(upstream: GitRepo, daemon: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="branch 'release' does not exist on git://"):
        Source(SourceSettings(url=daemon, branch="release"), str(tmp_path / "a")).fetch()
    with pytest.raises(FetchError, match="source.path 'nowhere' does not exist"):
        Source(SourceSettings(url=daemon, path="nowhere"), str(tmp_path / "b")).fetch()


def test_unreachable_remote_is_a_fetch_error(tmp_path: Path) -> None:
    url = f"git://127.0.0.1:{free_port()}/repo"
    with pytest.raises(FetchError, match=r"cannot fetch git://127\.0\.0\.1:\d+/repo: unable to connect"):
        Source(SourceSettings(url=url), str(tmp_path / "st")).fetch()


class _GitHttp(BaseHTTPRequestHandler):
    """Smart HTTP through the real `git http-backend`, behind HTTP basic auth."""

    root: Path
    expected: str
    seen: list[str]

    def log_message(self, *args: object) -> None:
        pass

    def _serve(self) -> None:
        auth = self.headers.get("Authorization", "")
        self.seen.append(auth)
        if auth != "Basic " + base64.b64encode(self.expected.encode()).decode():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            **os.environ,
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "tester",
        }
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode().split("\r\n"):
            k, _, v = line.partition(": ")
            if k.lower() == "status":
                status = int(v.split()[0])
            elif k:
                headers.append((k, v))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _serve
    do_POST = _serve


@pytest.fixture
def http_remote(upstream: GitRepo) -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("H", (_GitHttp,), {"root": upstream.path.parent, "expected": "x-access-token:s3cret-token", "seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{upstream.path.name}", seen
    server.shutdown()
    server.server_close()


def test_https_token_from_the_environment(http_remote: tuple[str, list[str]], upstream: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen = http_remote
    monkeypatch.setenv("DEPLOY_TOKEN", "s3cret-token")
    snap = Source(SourceSettings(url=url, token_env="DEPLOY_TOKEN"), str(tmp_path / "st")).fetch()
    assert snap.commit == git(upstream.path, "rev-parse", "HEAD")
    assert "s3cret-token" not in (tmp_path / "st" / "source.git" / "config").read_text()  # never stored


def test_the_token_is_never_given_to_a_host_a_redirect_points_to(upstream: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    elsewhere = ThreadingHTTPServer(("127.0.0.2", 0), type("B", (_GitHttp,), {"root": upstream.path.parent, "expected": "x:never", "seen": seen}))

    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.2:{elsewhere.server_address[1]}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

    first = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    for srv in (elsewhere, first):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("DEPLOY_TOKEN", "s3cret-token")
        with pytest.raises(FetchError):
            Source(SourceSettings(url=f"http://127.0.0.1:{first.server_address[1]}/{upstream.path.name}", token_env="DEPLOY_TOKEN"), str(tmp_path / "st")).fetch()
        assert seen, "git did not follow the redirect: the test proves nothing"
        assert not any("s3cret-token" in base64.b64decode(a.split()[1]).decode() for a in seen if a.startswith("Basic ")), seen
    finally:
        for srv in (elsewhere, first):
            srv.shutdown()
            srv.server_close()


def test_failed_auth_says_so_without_the_token(http_remote: tuple[str, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = http_remote
    monkeypatch.setenv("DEPLOY_TOKEN", "wrong-token")
    with pytest.raises(FetchError) as info:
        Source(SourceSettings(url=url, token_env="DEPLOY_TOKEN"), str(tmp_path / "a")).fetch()
    assert "authentication to" in str(info.value) and "$DEPLOY_TOKEN" in str(info.value)
    assert "wrong-token" not in str(info.value)
    with pytest.raises(FetchError, match="authentication to .* failed; set source.token_env"):
        Source(SourceSettings(url=url), str(tmp_path / "b")).fetch()
    monkeypatch.delenv("DEPLOY_TOKEN")
    with pytest.raises(FetchError, match=r"source.token_env names \$DEPLOY_TOKEN, which is not set"):
        Source(SourceSettings(url=url, token_env="DEPLOY_TOKEN"), str(tmp_path / "c")).fetch()


def test_cli_reports_bad_config_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "gitsync.yaml").write_text("name: x\nsource:\n  ur1: somewhere\n")
    r = cli("plan", "-c", str(tmp_path / "gitsync.yaml"))
    assert r.code == 1
    assert r.err.strip() == f"gitsync: {tmp_path / 'gitsync.yaml'}:3: source.ur1: unknown key (allowed: url, branch, path, interval, token_env, username, ssh_key, verify)"
    r = cli("plan", "-c", str(tmp_path / "missing.yaml"))
    assert r.code == 1 and "no such file" in r.err and "Traceback" not in r.err


def test_console_script_never_shows_a_traceback(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "gitsync"  # the console script of the environment running the tests
    assert exe.is_file(), f"{exe} missing: install the package (scripts/test does)"
    (tmp_path / "gitsync.yaml").write_text("source: {url: ./nowhere}\n")
    p = subprocess.run([str(exe), "plan"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr and "does not exist" in p.stderr
    p = subprocess.run([str(exe), "validate", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stderr.strip() == f"gitsync: {tmp_path / 'nope'}: not a folder"


def test_the_preview_mirror_keeps_no_strangers_objects(upstream: GitRepo, daemon: str, tmp_path: Path) -> None:
    """Issue 20, item 7: a pull request's objects leave the preview mirror once planned and pruned."""
    s = Source(SourceSettings(url=daemon, branch="main"), str(tmp_path / "st"))
    s.fetch()
    mirror = tmp_path / "st" / "source.git"

    def kib() -> int:
        stats = dict(line.split(": ") for line in git(mirror, "count-objects", "-v").splitlines())
        return int(stats["size"]) + int(stats["size-pack"])

    base = kib()
    for n in range(1, 7):
        git(upstream.path, "checkout", "-q", "-B", f"pr{n}", "main")
        upstream.write("apps/blob.yaml", "# " + os.urandom(300_000).hex() + "\n")  # 600 KB no branch of the mirror needs
        git(upstream.path, "update-ref", f"refs/pull/{n}/head", upstream.commit(f"pull request {n}"))
        git(upstream.path, "checkout", "-q", "main")
        git(upstream.path, "branch", "-q", "-D", f"pr{n}")
        snap = s.fetch_ref(f"refs/pull/{n}/head")
        assert "apps/blob.yaml" in snap.files
        s.forget_preview(f"refs/pull/{n}/head", prune=n == 6)
        if n == 5:
            assert kib() > base + 5 * 290, kib()  # what it fetched waits for the next prune (compressed: about half)
    assert git(mirror, "for-each-ref", "refs/gitsync/") == ""
    assert kib() < base + 200, (base, kib())
    assert s.fetch().files["apps/web.yaml"]  # the tracked branch is intact
