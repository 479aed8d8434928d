"""One round of image update automation: for each policy, the newest allowed tag; where a marked
line names another, a commit that changes exactly those tags, pushed to the tracked branch (or to
`update.pushBranch`, a branch for review) with the source's credentials. A push that races another
is retried on the new head, never forced. The normal path takes over from there: a sync of the
commit (or a preview of it, on pushBranch)."""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..core.config import Config
from ..core.images import find_markers, rewrite
from ..adapters.registry import RegistryError, resolve
from ..adapters.source import Source

log = logging.getLogger("gitsync.images")

TRIES = 3  # pushes raced by others before the round gives up (the next round tries again)
MAX_FILE = 1 << 20


class UpdateError(Exception):
    pass


@dataclass
class Round:
    changes: list[str] = field(default_factory=list)  # "web 1.4.2 -> 1.4.3 (apps/web.yaml:5)"
    commit: str | None = None
    branch: str | None = None  # where it was pushed
    problems: list[str] = field(default_factory=list)  # markers naming unknown policies, registries that did not answer


def _git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)
    if done.returncode != 0:
        raise UpdateError(f"git {args[0]}: {(done.stderr or done.stdout).strip()[:300]}")
    return done.stdout.strip()


def run_round(config: Config, source: Source) -> Round:
    """Look at every policy once; commit and push what is newer. Never raises for a registry or a
    marker: those are the round's problems; a git failure is an UpdateError."""
    out = Round()
    policies = {p.name: p for p in config.images}
    update = config.update
    base_branch = update.branch or config.source.branch
    target = update.push_branch or base_branch
    env = source.credentials_env()
    url = config.source.url
    chosen: dict[str, str] = {}
    for p in config.images:
        try:
            tag = resolve(p)
        except RegistryError as exc:
            out.problems.append(f"image policy {p.name}: {exc}")
            continue
        if tag is not None:
            chosen[p.name] = tag
    for attempt in range(TRIES):
        with tempfile.TemporaryDirectory(prefix="gitsync-images-") as tmp:
            work = Path(tmp) / "work"
            _git(Path(tmp), "clone", "-q", "--no-checkout", url, str(work), env=env)
            remote_branches = _git(work, "branch", "-r")
            start = f"origin/{target}" if f"origin/{target}" in remote_branches.split() else f"origin/{base_branch}"
            _git(work, "checkout", "-q", "-B", "gitsync-images", start)
            root = work / config.source.path if config.source.path else work
            files = {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*.y*ml"))
                     if f.is_file() and not f.is_symlink() and ".git" not in f.relative_to(work).parts and f.stat().st_size <= MAX_FILE}
            markers, problems = find_markers(files, policies)
            if attempt == 0:
                out.problems += problems
            repos = {p.name: p.repository for p in config.images}
            changes: list[str] = []
            for path in sorted({m.file for m in markers}):
                mine = [m for m in markers if m.file == path and m.policy in chosen and m.reference != f"{repos[m.policy]}:{chosen[m.policy]}"]
                if not mine:
                    continue
                text = files[path].decode("utf-8")
                (root / path).write_text(rewrite(text, mine, chosen, repos), encoding="utf-8")  # only the marked tags change
                changes += [f"{m.policy} {m.reference.rpartition('/')[2]} -> {chosen[m.policy]} ({path}:{m.line})" for m in mine]
            if not changes:
                return out  # every marked line names the chosen tag already
            _git(work, "add", "-A")
            message = update.message_template.replace("{changes}", ", ".join(changes))
            author = {"GIT_AUTHOR_NAME": update.author_name, "GIT_AUTHOR_EMAIL": update.author_email,
                      "GIT_COMMITTER_NAME": update.author_name, "GIT_COMMITTER_EMAIL": update.author_email}
            sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={update.signing_key}", "commit", "-S"] if update.signing_key else ["commit"]
            _git(work, *sign, "-q", "-m", message, env=author)
            sha = _git(work, "rev-parse", "HEAD")
            pushed = subprocess.run(["git", "push", "-q", url, f"HEAD:refs/heads/{target}"], cwd=work, capture_output=True, text=True,
                                    env={**os.environ, **env}, timeout=120)
            if pushed.returncode == 0:
                out.changes, out.commit, out.branch = changes, sha, target
                log.info("images: pushed %s to %s: %s", sha[:12], target, ", ".join(changes))
                return out
            said = (pushed.stderr or pushed.stdout).strip()
            if "non-fast-forward" not in said and "fetch first" not in said and "rejected" not in said:
                raise UpdateError(f"git push to {target}: {said[:300]}")
            log.info("images: the push to %s raced another (try %d of %d); again on the new head", target, attempt + 1, TRIES)
    raise UpdateError(f"the push to {target} lost the race {TRIES} times; the next round tries again")
