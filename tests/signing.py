"""Signed commits for tests: SSH keys (ssh-keygen) and OpenPGP keys (gpg), made per test, and
commits signed with them by git itself."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import GitRepo, git


class SshKey:
    def __init__(self, folder: Path, name: str) -> None:
        self.path = folder / f"{name}_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(self.path)], check=True)
        self.public = (folder / f"{name}_ed25519.pub").read_text().strip()
        self.name = name

    def allowed_signer(self) -> str:
        """A line of git's allowed-signers file for this key."""
        return f'{self.name}@example.com namespaces="git" {self.public}\n'


class GpgKey:
    def __init__(self, folder: Path, name: str) -> None:
        self.home = folder / f"gnupg-{name}"
        self.home.mkdir(mode=0o700)
        env = {**os.environ, "GNUPGHOME": str(self.home)}
        subprocess.run(["gpg", "--batch", "--quiet", "--passphrase", "", "--quick-gen-key", f"{name} <{name}@example.com>", "ed25519", "sign", "never"],
                       check=True, env=env, capture_output=True)
        listed = subprocess.run(["gpg", "--batch", "--with-colons", "--list-secret-keys"], check=True, env=env, capture_output=True, text=True).stdout
        self.fingerprint = next(line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr:"))
        self.armored = subprocess.run(["gpg", "--batch", "--armor", "--export", self.fingerprint], check=True, env=env, capture_output=True).stdout


def signed_commit(repo: GitRepo, message: str, key: SshKey | GpgKey) -> str:
    git(repo.path, "add", "-A")
    if isinstance(key, SshKey):
        git(repo.path, "-c", "gpg.format=ssh", "-c", f"user.signingkey={key.path}", "commit", "-q", "-S", "--allow-empty", "-m", message)
    else:
        env = {**os.environ, "GNUPGHOME": str(key.home), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
        subprocess.run(["git", "-c", "gpg.format=openpgp", "-c", f"user.signingkey={key.fingerprint}", "commit", "-q", "-S", "--allow-empty", "-m", message],
                       cwd=repo.path, check=True, env=env, capture_output=True)
    return git(repo.path, "rev-parse", "HEAD")
