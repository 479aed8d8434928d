"""Fetch the desired state: one exact commit, read straight from git objects.

A remote is cloned once (bare) into ``state_dir/source.git`` and then only
fetched, so an unchanged remote costs one negotiation. Manifests are read from
the commit's tree, never from a checkout, so what is applied is exactly the
commit named in the revision. A local path may also be a git work tree (its
HEAD commit) or a plain folder (the revision is a hash of the content).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any
from pathlib import Path
from urllib.parse import urlsplit

import git

from ..core.config import SourceSettings
from ..core.errors import FetchError, PushedOver
from .verify import Unverified, Verifier
from ..core.manifest import is_source_file, read_folder
from ..core.repofiles import LINK, MAX_FILE_BYTES, MAX_FILES, NOT_READ, TOO_MUCH, Budget, RepoFiles, Unreadable, too_large

_GIT_TIMEOUT = 120
SIGNATURE = "signature"
LAST_FETCH = "gitsync-last-fetch"  # in the mirror: "<sha> <unix time>" of the last successful fetch
LINK_MODE = 0o120000  # a symbolic link in a git tree


@dataclass(frozen=True)
class Snapshot:
    """The desired state's files at one revision."""

    revision: str  # "main@sha1:<hex>" for git, "sha256:<hex>" for a plain folder
    commit: str | None  # the commit sha, when there is one (commit statuses go there)
    files: dict[str, bytes] = field(repr=False)
    location: str = ""  # where the files were read from, for messages
    notes: tuple[str, ...] = ()  # what was left out and why (git submodules), for `plan` to say
    about: dict[str, Any] = field(default_factory=dict)  # the commit in human terms: subject, author, time
    fallback: str = ""  # not the newest commit: why (the remote unreachable, the newest not signed by a trusted key)

    @property
    def short(self) -> str:
        return (self.commit or self.revision.split(":")[-1])[:12]


def _preview_ref(ref: str) -> str:
    """Where the preview mirror keeps a fetched branch or pull request, while it is planned."""
    name = ref if ref.startswith("refs/") else f"refs/heads/{ref}"
    return "refs/gitsync/preview/" + re.sub(r"[^A-Za-z0-9._/-]", "_", name[5:])


def _is_remote(url: str) -> bool:
    return "://" in url or (":" in url and "@" in url.split(":", 1)[0]) or url.startswith("file:")


def _clean(stderr: str) -> str:
    """GitPython quotes git's stderr as "stderr: '...'"; take git's own words back out."""
    text = stderr.strip()
    if text.startswith("stderr: '"):
        text = text[len("stderr: '") :]
        if text.endswith("'"):
            text = text[:-1]
    return text.strip()


def _auth_hint(settings: SourceSettings) -> str:
    return f"check the token in ${settings.token_env}" if settings.token_env else "set source.token_env (https) or source.ssh_key (ssh)"


# git says why a fetch failed only in words (every failure exits 128). Matched in order, its words
# decide what gitsync says and whether waiting can help (False: a person must act first).
_GIT_FAILURES: tuple[tuple[tuple[str, ...], bool, Callable[[SourceSettings, str], str]], ...] = (
    (("couldn't find remote ref", "could not find remote branch"), False,
     lambda s, _: f"branch {s.branch!r} does not exist on {s.url}; check source.branch"),
    (("host key verification failed", "remote host identification has changed"), False,
     lambda s, _: f"the ssh host key of {s.url} is not known or has changed; check it and add it to your "
                  "known_hosts (ssh-keyscan prints it), gitsync never accepts an unknown host key"),
    (("authentication failed", "could not read username", "could not read password", "permission denied (publickey",
      "http basic: access denied", "403"), False,
     lambda s, _: f"authentication to {s.url} failed; {_auth_hint(s)}"),
    (("does not appear to be a git repository", "repository not found", "not found"), False,
     lambda s, _: f"{s.url} is not a git repository (or not visible with these credentials)"),
    (("unable to connect", "could not resolve host", "connection refused", "timed out"), True,
     lambda s, text: f"cannot fetch {s.url}: unable to connect "
                     f"({'connection refused' if 'refused' in text else 'host not found' if 'resolve' in text else 'no answer'})"),
)


def _classify(stderr: str, settings: SourceSettings) -> FetchError:
    """git's failure as gitsync's error: what it says and whether a retry after a delay may work."""
    stderr = _clean(stderr)
    text = stderr.lower()
    for needles, transient, say in _GIT_FAILURES:
        if any(n in text for n in needles):
            return FetchError(say(settings, text), transient=transient)
    for line in stderr.strip().splitlines():
        line = line.strip()
        if line.startswith("fatal:"):
            return FetchError(f"cannot fetch {settings.url}: {line[6:].strip()}")
    last = stderr.strip().splitlines()[-1] if stderr.strip() else "git failed"
    return FetchError(f"cannot fetch {settings.url}: {last}")


_SHA = re.compile(r"^[0-9a-f]{7,64}$")


class GitTree:
    """The other files of a commit's tree (under source.path), read when a sync names them."""

    def __init__(self, tree: git.Tree) -> None:
        self.tree = tree

    def _at(self, path: str) -> Any:
        try:
            return self.tree / path if path else self.tree
        except KeyError:
            return None

    def entry(self, path: str) -> tuple[str, int] | None:
        item = self._at(path)
        if item is None or item.type == "submodule":
            return None
        if item.type == "tree":
            return ("folder", 0)
        return ("link", 0) if item.mode == LINK_MODE else ("file", int(item.size))

    def read(self, path: str) -> bytes:
        data: bytes = self._at(path).data_stream.read()
        return data

    def below(self, folder: str) -> Iterator[str]:
        base = self._at(folder)
        for item in base.traverse() if base is not None and base.type == "tree" else ():
            if item.type == "blob":
                yield str(item.path)[len(str(self.tree.path)) + 1:] if self.tree.path else str(item.path)


def _about(commit: git.Commit) -> dict[str, Any]:
    """A commit in human terms (bounded: a subject is one line, at most 200 characters)."""
    subject = str(commit.message).strip().split("\n", 1)[0][:200]
    return {"subject": subject, "author": str(commit.author.name or "")[:100], "time": float(commit.committed_date)}


class Source:
    """The desired state's source, per :class:`SourceSettings`."""

    def __init__(self, settings: SourceSettings, state_dir: str) -> None:
        self.settings = settings
        self.state_dir = Path(state_dir)
        self._repo: git.Repo | None = None
        self._work_trees: dict[str, git.Repo] = {}
        self._files: tuple[str, str, dict[str, bytes], tuple[str, ...]] | None = None  # (commit, prefix, files, notes): commits are immutable
        self.verifier = Verifier(settings.verify, self.state_dir) if settings.verify is not None else None

    def credentials_env(self) -> dict[str, str]:
        """The environment git runs with to reach the source (no prompts; its credentials), for pushes too."""
        return self._env()

    # -- the environment git runs with: no prompts, credentials from the environment only
    def _env(self) -> dict[str, str]:
        env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "SSH_ASKPASS": "/bin/false"}
        s = self.settings
        if s.token_env:
            token = os.environ.get(s.token_env, "")
            if not token:
                raise FetchError(f"source.token_env names ${s.token_env}, which is not set or empty")
            origin = urlsplit(s.url)
            env.update(
                {
                    "GITSYNC_GIT_USERNAME": s.username,
                    "GITSYNC_GIT_TOKEN": token,
                    "GITSYNC_GIT_ORIGIN": f"{origin.scheme}://{origin.hostname or ''}{f':{origin.port}' if origin.port else ''}".lower(),
                    "GIT_CONFIG_COUNT": "1",
                    "GIT_CONFIG_KEY_0": "credential.helper",
                    # A shell function reading the token from the child's environment (never in argv or on disk),
                    # answering only for the configured scheme and host: a redirect elsewhere gets nothing.
                    "GIT_CONFIG_VALUE_0": (
                        '!f() { test "$1" = get || exit 0; p=; h=; while IFS="=" read -r k v; do case "$k" in protocol) p=$v;; host) h=$v;; esac; done; '
                        'test "$p://$h" = "$GITSYNC_GIT_ORIGIN" || exit 0; echo "username=$GITSYNC_GIT_USERNAME"; echo "password=$GITSYNC_GIT_TOKEN"; }; f'
                    ),
                }
            )
        ssh = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
        if s.ssh_key:
            if not os.path.isfile(s.ssh_key):
                raise FetchError(f"source.ssh_key: {s.ssh_key} does not exist")
            ssh += ["-i", s.ssh_key, "-o", "IdentitiesOnly=yes"]
        env["GIT_SSH_COMMAND"] = " ".join(shlex.quote(a) for a in ssh)
        return env

    def fetch(self) -> Snapshot:
        url = self.settings.url
        if not _is_remote(url):
            p = Path(url)
            if not p.exists():
                raise FetchError(f"source {url} does not exist")
            if p.is_file():
                raise FetchError(f"source {url} is a file; point source.url at a folder or repository")
            work_tree = self._cached_work_tree(url)
            if work_tree is not None:
                return self._read_head(work_tree, p)
            if (p / "HEAD").is_file() and (p / "objects").is_dir():
                return self._fetch_remote(str(p.resolve()))
            return self._read_folder(p)
        return self._fetch_remote(url)

    def fetch_ref(self, ref: str, sha: str | None = None) -> Snapshot:
        """Another commit of the source than the tracked branch's: a branch (``feature`` or
        ``refs/heads/feature``), a pull or merge request's ref (``refs/pull/7/head``), or a commit id.
        With `sha`, that commit (fetched through `ref`). For previews: never applied."""
        url = self.settings.url
        if not _is_remote(url):
            p = Path(url)
            work_tree = self._cached_work_tree(url)
            if work_tree is not None:
                return self._snapshot_of(work_tree, sha or ref, ref, str(work_tree.working_tree_dir), local=p)
            if not ((p / "HEAD").is_file() and (p / "objects").is_dir()):
                raise FetchError(f"source {url} is a plain folder: it has no branches or commits to preview")
            url = str(p.resolve())
        repo = self._open_mirror(url)
        name = ref if ref.startswith("refs/") else f"refs/heads/{ref}"
        local = _preview_ref(ref)
        wanted = sha or ref
        if _SHA.match(wanted) and self._has(repo, wanted):
            return self._snapshot_of(repo, wanted, ref, url)
        try:
            with repo.git.custom_environment(**self._env()):
                if _SHA.match(ref) and sha is None:  # a bare commit id: servers answer for reachable commits
                    repo.git.fetch("--no-tags", "origin", ref, kill_after_timeout=_GIT_TIMEOUT)
                    return self._snapshot_of(repo, ref, ref, url)
                repo.git.fetch("--no-tags", "origin", f"+{name}:{local}", kill_after_timeout=_GIT_TIMEOUT)
        except git.GitCommandError as exc:
            said = str(exc.stderr or exc)
            if "couldn't find remote ref" in said or "not our ref" in said:
                raise FetchError(f"{ref!r} is neither a branch nor a commit of {url}") from None
            raise _classify(said, self.settings) from None
        if sha and not self._has(repo, sha):
            newest = repo.commit(local).hexsha
            raise PushedOver(f"commit {sha[:12]} is no longer on {ref} of {url} (pushed over?); its newest commit is {newest[:12]}", newest)
        return self._snapshot_of(repo, sha or local, ref, url)

    def forget_preview(self, ref: str, prune: bool = False) -> None:
        """Drop the ref a preview fetched (its commit is read); with `prune`, also every object no
        branch of the mirror needs any more (a pull request's, a force-pushed branch's)."""
        repo = self._repo
        if repo is None:  # previews of a local work tree fetch nothing
            return
        try:
            if _SHA.match(ref) is None:
                repo.git.update_ref("-d", _preview_ref(ref))
            if prune:
                repo.git.reflog("expire", "--expire=now", "--all", kill_after_timeout=_GIT_TIMEOUT)
                repo.git.gc("--prune=now", "--quiet", kill_after_timeout=_GIT_TIMEOUT)
        except git.GitCommandError as exc:
            raise FetchError(f"cannot prune {repo.git_dir}: {str(exc.stderr or exc).strip()[:200]}") from None

    @staticmethod
    def _has(repo: git.Repo, sha: str) -> bool:
        try:
            repo.commit(sha)
            return True
        except (git.BadName, ValueError):
            return False

    def _snapshot_of(self, repo: git.Repo, rev: str, ref: str, where: str, local: Path | None = None) -> Snapshot:
        try:
            commit = repo.commit(rev)
        except (git.BadName, ValueError):
            raise FetchError(f"{ref!r} is neither a branch nor a commit of {where}") from None
        prefix = self._prefix_in(repo, local) if local is not None else self.settings.path
        files, notes = self._read_tree_uncached(commit, prefix, where)
        branch = ref.removeprefix("refs/heads/") if not _SHA.match(ref) else commit.hexsha[:12]
        verdict = self.verdict_note(repo, commit.hexsha)
        return Snapshot(f"{branch}@sha1:{commit.hexsha}", commit.hexsha, files, where, (*notes, *([verdict] if verdict else [])), _about(commit))

    # -- a local work tree: its HEAD commit
    def close(self) -> None:
        """End the git processes the open repositories keep."""
        for repo in [self._repo, *self._work_trees.values()]:
            if repo is not None:
                repo.close()
        self._repo, self._work_trees = None, {}

    def _cached_work_tree(self, url: str) -> git.Repo | None:
        work_tree = self._work_trees.get(url) or self._work_tree(Path(url))
        if work_tree is not None:
            self._work_trees[url] = work_tree
        return work_tree

    @staticmethod
    def _work_tree(p: Path) -> git.Repo | None:
        try:
            repo = git.Repo(p, search_parent_directories=True)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            return None
        if repo.bare:
            return None
        return repo

    def _prefix_in(self, repo: git.Repo, p: Path) -> str:
        """Where the manifests are inside a work tree: the folder `p` within it, then source.path."""
        assert repo.working_tree_dir is not None
        rel = os.path.relpath(p.resolve(), Path(repo.working_tree_dir).resolve()).replace(os.sep, "/")
        return "/".join(x for x in (rel if rel != "." else "", self.settings.path) if x)

    def _read_head(self, repo: git.Repo, p: Path) -> Snapshot:
        try:
            commit = repo.head.commit
        except ValueError:
            raise FetchError(f"{repo.working_tree_dir} has no commits yet; commit your manifests first") from None
        prefix = self._prefix_in(repo, p)
        try:
            branch = repo.active_branch.name
        except TypeError:
            branch = "HEAD"
        files, notes = self._read_tree(commit, prefix, str(repo.working_tree_dir))
        snapshot = Snapshot(f"{branch}@sha1:{commit.hexsha}", commit.hexsha, files, f"{repo.working_tree_dir}/{prefix}".rstrip("/"), notes, _about(commit))
        return self._verified(repo, snapshot)

    # -- a plain folder: revision = content hash
    def _read_folder(self, p: Path) -> Snapshot:
        root = p / self.settings.path if self.settings.path else p
        if not root.is_dir():
            raise FetchError(f"source.path {self.settings.path!r} is not a folder in {p}")
        files = read_folder(str(root))
        h = hashlib.sha256()
        for name in sorted(files):
            h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        return Snapshot(f"sha256:{h.hexdigest()}", None, files, str(root))

    # -- a remote: clone once, then fetch the branch
    def _open_mirror(self, url: str) -> git.Repo:
        if self._repo is not None:
            return self._repo
        path = self.state_dir / "source.git"
        try:
            if (path / "HEAD").is_file():
                repo = git.Repo(path)
            else:
                path.mkdir(parents=True, exist_ok=True)
                repo = git.Repo.init(path, bare=True)
            if "origin" in [r.name for r in repo.remotes]:
                if repo.remotes.origin.url != url:
                    repo.remotes.origin.set_url(url)
            else:
                repo.create_remote("origin", url)
        except (OSError, git.GitError) as exc:
            raise FetchError(f"cannot prepare {path}: {exc}") from None
        self._repo = repo
        return repo

    def _fetch_remote(self, url: str) -> Snapshot:
        repo = self._open_mirror(url)
        branch = self.settings.branch
        ref = f"refs/remotes/origin/{branch}"
        try:
            with repo.git.custom_environment(**self._env()):
                repo.git.fetch("--no-tags", "--prune", "origin", f"+refs/heads/{branch}:{ref}", kill_after_timeout=_GIT_TIMEOUT)
        except git.GitCommandError as exc:
            raise _classify(str(exc.stderr or exc), self.settings) from None
        try:
            commit = repo.commit(ref)
        except (git.BadName, ValueError):
            raise FetchError(f"branch {branch!r} does not exist on {url}; check source.branch") from None
        files, notes = self._read_tree(commit, self.settings.path, url)
        snapshot = self._verified(repo, Snapshot(f"{branch}@sha1:{commit.hexsha}", commit.hexsha, files, url, notes, _about(commit)))
        try:  # when and what was fetched (and verified) last: a sync heals from it while the remote is away, even after a restart
            (Path(repo.git_dir) / LAST_FETCH).write_text(json.dumps({"commit": commit.hexsha, "time": time.time(), "url": url}) + "\n")
        except OSError:
            pass
        return snapshot

    def _verified(self, repo: git.Repo, snapshot: Snapshot) -> Snapshot:
        """The tracked commit, if signed by a trusted key (with `source.verify`); else Unverified."""
        if self.verifier is None or snapshot.commit is None:
            return snapshot
        verdict = self.verifier.check(str(repo.git_dir), snapshot.commit)
        if not verdict.ok:
            raise Unverified(verdict.says, snapshot)
        return replace(snapshot, notes=(*snapshot.notes, f"{SIGNATURE}: {verdict.says}"))

    def verdict_note(self, repo: git.Repo, commit: str) -> str | None:
        """For a preview: whether the commit would be applied, as a note."""
        if self.verifier is None:
            return None
        verdict = self.verifier.check(str(repo.git_dir), commit)
        return f"{SIGNATURE}: {verdict.says}" if verdict.ok else f"would not be applied: {verdict.says}"

    def last_fetched(self) -> tuple[Snapshot, float] | None:
        """The commit fetched last from a remote (kept in the mirror in state_dir) and when, if any."""
        url = self.settings.url
        path = self.state_dir / "source.git"
        try:
            last = json.loads((path / LAST_FETCH).read_text())
            sha, when = str(last["commit"]), float(last["time"])
            if last.get("url") not in (url, str(Path(url).resolve())):
                return None  # fetched from another source than the configured one
            repo = self._repo if self._repo is not None else git.Repo(path)
            commit = repo.commit(sha)
            files, notes = self._read_tree(commit, self.settings.path, url)
        except (OSError, ValueError, KeyError, TypeError, git.GitError, FetchError):
            return None
        return Snapshot(f"{self.settings.branch}@sha1:{commit.hexsha}", commit.hexsha, files, url, notes, _about(commit)), float(when)

    def _read_tree(self, commit: git.Commit, prefix: str, where: str) -> tuple[dict[str, bytes], tuple[str, ...]]:
        if self._files is not None and self._files[:2] == (commit.hexsha, prefix):
            return self._files[2], self._files[3]
        files, notes = self._read_tree_uncached(commit, prefix, where)
        self._files = (commit.hexsha, prefix, files, notes)
        return files, notes

    def _read_tree_uncached(self, commit: git.Commit, prefix: str, where: str) -> tuple[dict[str, bytes], tuple[str, ...]]:
        tree = commit.tree
        if prefix:
            try:
                tree = tree / prefix
            except KeyError:
                raise FetchError(f"source.path {prefix!r} does not exist in {where} at {commit.hexsha[:12]}") from None
            if tree.type != "tree":
                raise FetchError(f"source.path {prefix!r} is not a folder in {where}")
        files: dict[str, bytes] = {}
        notes: list[str] = []
        budget = Budget()
        base = len(prefix) + 1 if prefix else 0
        hidden = lambda i, d: i.type != "blob" and str(i.path).rsplit("/", 1)[-1].startswith(".")  # noqa: E731  # by path: a submodule has no name
        for item in tree.traverse(prune=hidden):  # type: ignore[arg-type]
            if item.type == "submodule":  # type: ignore[union-attr]
                notes.append(f"{str(item.path)[base:]} is a git submodule; gitsync does not read submodules")  # type: ignore[union-attr]
                continue
            if item.type != "blob":  # type: ignore[union-attr]
                continue
            rel = str(item.path)[base:]  # type: ignore[union-attr]
            if not is_source_file(rel):
                continue
            if len(files) >= MAX_FILES:
                files[rel] = NOT_READ  # counted, so that the refusal says how many there are
                continue
            if item.mode == LINK_MODE:  # type: ignore[union-attr]
                files[rel] = Unreadable(LINK)
                continue
            if item.size > MAX_FILE_BYTES:  # type: ignore[union-attr]
                files[rel] = too_large(item.size)  # type: ignore[union-attr]
                continue
            if not budget.take(item.size):  # type: ignore[union-attr]
                files[rel] = TOO_MUCH
                continue
            files[rel] = item.data_stream.read()  # type: ignore[union-attr]
        return RepoFiles(files, GitTree(tree), budget), tuple(notes)
