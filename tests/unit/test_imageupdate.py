"""A round of image updates against real git repositories (the registry's answer given): the commit
changes the marked tags only, with the configured author; a push raced by another is retried on the
new head, never forced; nothing to change, no commit; pushBranch starts from the tracked branch."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitsync.core import config as config_mod
from gitsync.agent import imageupdate
from gitsync.adapters import registry
from gitsync.adapters.source import Source
from tests.conftest import GitRepo, git

WEB = "apiVersion: gitsync.io/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  image: r.example.com/acme/web:1.4.2 # {\"$imagepolicy\": \"web\"}\n"


def setup(tmp_path: Path, extra: str = "") -> tuple[GitRepo, Path, config_mod.Config]:
    work = GitRepo(tmp_path / "work")
    work.write("apps/web.yaml", WEB)
    work.commit("web")
    bare = tmp_path / "deploy.git"
    git(tmp_path, "clone", "-q", "--bare", str(work.path), str(bare))
    cfg = config_mod.parse(
        f"name: t\nsource: {{url: '{bare}'}}\nimages: [{{name: web, repository: r.example.com/acme/web, policy: {{semver: '>=1.4.0 <2.0.0'}}}}]\n"
        f"update: {{author: {{name: bot, email: bot@example.com}}{extra}}}\n", "g.yaml", tmp_path)
    return work, bare, cfg


def test_a_round_commits_the_new_tag_and_a_raced_push_is_retried_on_the_new_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work, bare, cfg = setup(tmp_path)
    monkeypatch.setattr(registry, "list_tags", lambda p: ["1.4.2", "1.4.3", "2.0.0"])
    real_git = imageupdate._git
    raced = []

    def racing(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
        out = real_git(cwd, *args, env=env)
        if args[0] == "commit" and not raced:  # someone pushes between our clone and our push
            raced.append(True)
            work.write("README.md", "hello\n")
            work.commit("someone else")
            git(work.path, "push", "-q", str(bare), "main")
        return out

    monkeypatch.setattr(imageupdate, "_git", racing)
    done = imageupdate.run_round(cfg, Source(cfg.source, str(tmp_path / "state")))
    assert done.branch == "main" and done.changes == ["web web:1.4.2 -> 1.4.3 (apps/web.yaml:5)"] and not done.problems
    log = git(bare, "log", "--format=%an|%s", "main").splitlines()
    assert log == ["bot|images: web web:1.4.2 -> 1.4.3 (apps/web.yaml:5)", "t|someone else", "t|web"]  # on top of the other push: nothing lost
    assert git(bare, "show", "main:apps/web.yaml") == WEB.replace(":1.4.2 ", ":1.4.3 ").rstrip("\n")
    again = imageupdate.run_round(cfg, Source(cfg.source, str(tmp_path / "state")))
    assert again.commit is None and again.changes == []  # the chosen tag is there already: no commit


def test_push_branch_starts_from_the_tracked_branch_and_problems_are_the_rounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work, bare, cfg = setup(tmp_path, ", pushBranch: gitsync/images")
    monkeypatch.setattr(registry, "list_tags", lambda p: ["1.5.0"])
    done = imageupdate.run_round(cfg, Source(cfg.source, str(tmp_path / "state")))
    assert done.branch == "gitsync/images"
    assert git(bare, "rev-parse", "main") == git(work.path, "rev-parse", "HEAD")  # the tracked branch is untouched
    assert "1.5.0" in git(bare, "show", "gitsync/images:apps/web.yaml")

    def down(p: object) -> list[str]:
        raise imageupdate.RegistryError("r.example.com cannot be reached: ConnectionError")

    monkeypatch.setattr(registry, "list_tags", down)
    done = imageupdate.run_round(cfg, Source(cfg.source, str(tmp_path / "state")))
    assert done.commit is None and done.problems == ["image policy web: r.example.com cannot be reached: ConnectionError"]


def test_with_a_signing_key_the_agents_commit_passes_its_own_verification(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gitsync.adapters.verify import Verifier
    from tests.signing import SshKey

    key = SshKey(tmp_path, "gitsync")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(key.allowed_signer())
    work, bare, cfg = setup(tmp_path, f", signingKey: '{key.path}'")
    monkeypatch.setattr(registry, "list_tags", lambda p: ["1.4.3"])
    done = imageupdate.run_round(cfg, Source(cfg.source, str(tmp_path / "state")))
    assert done.commit is not None
    verdict = Verifier(config_mod.VerifySettings(allowed_signers=str(allowed)), tmp_path / "v").check(str(bare), done.commit)
    assert verdict.ok and verdict.says.startswith("SSH signature by gitsync@example.com"), verdict
