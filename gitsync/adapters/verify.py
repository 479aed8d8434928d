"""Commit signatures: whether a commit carries a good signature by a key the agent trusts.

git itself verifies (`git verify-commit`: SSH signatures through ssh-keygen with an allowed-signers
file, OpenPGP through gpg), with only the keys the agent's configuration names: gpg gets a keyring
of its own under state_dir holding exactly `source.verify.gpgKeys`, and git reads no configuration
of the machine or the user (no other allowed signers, no other gpg program).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..core.config import VerifySettings
from ..core.errors import GitsyncError, Reason

TIMEOUT = 30
NOT_TRUSTED = "not signed by a trusted key"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    says: str  # who signed it (ok), or why it is refused


class Unverified(GitsyncError):
    """A commit the agent will not apply: its signature is missing, bad, or by a key not trusted."""

    reason = Reason.UNVERIFIED

    def __init__(self, message: str, snapshot: object) -> None:
        super().__init__(message)
        self.snapshot = snapshot  # the commit refused (a source.Snapshot), for its status


class Verifier:
    def __init__(self, settings: VerifySettings, state_dir: Path) -> None:
        self.settings = settings
        self.state_dir = state_dir

    def _gnupg_home(self) -> str | None:
        """A keyring of the agent's own with exactly the configured OpenPGP keys (made once per file content)."""
        if not self.settings.gpg_keys:
            return None
        data = Path(self.settings.gpg_keys).read_bytes()
        home = self.state_dir / "verify" / f"gnupg-{hashlib.sha256(data).hexdigest()[:16]}"
        if not (home / "imported").exists():
            home.mkdir(parents=True, exist_ok=True)
            os.chmod(home, 0o700)
            # public keys only, as a plain keyring file (no import: that would start an agent, whose socket
            # path could also be too long under state_dir); gpg runs without agent or key servers
            (home / "gpg.conf").write_text("no-autostart\n")
            done = subprocess.run(["gpg", "--batch", "--no-autostart", "--dearmor"], input=data, env={**os.environ, "GNUPGHOME": str(home)},
                                  capture_output=True, timeout=TIMEOUT) if data.strip() else subprocess.CompletedProcess([], 0, b"", b"")
            if done.returncode != 0 or (data.strip() and not done.stdout):
                raise GitsyncError(f"source.verify.gpgKeys: {self.settings.gpg_keys} holds no armored OpenPGP public keys: {done.stderr.decode(errors='replace').strip()[:300]}")
            (home / "pubring.gpg").write_bytes(done.stdout)
            (home / "imported").write_text("")
        return str(home)

    def check(self, git_dir: str, sha: str) -> Verdict:
        """Whether commit `sha` of the repository at `git_dir` is signed by a trusted key."""
        try:
            raw = subprocess.run(["git", f"--git-dir={git_dir}", "cat-file", "commit", sha], capture_output=True, text=True, timeout=TIMEOUT, check=True).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            return Verdict(False, f"{NOT_TRUSTED}: the commit cannot be read ({exc})")
        header = raw.partition("\n\n")[0]
        if not re.search(r"^gpgsig(-sha256)? ", header, re.M):
            return Verdict(False, f"{NOT_TRUSTED}: the commit is not signed")
        try:
            home = self._gnupg_home()
        except OSError as exc:
            return Verdict(False, f"{NOT_TRUSTED}: source.verify.gpgKeys cannot be read ({exc.strerror})")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "GNUPG"))}
        env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GNUPGHOME=home or str(self.state_dir / "verify" / "no-gpg-keys"))
        if home is None:
            os.makedirs(env["GNUPGHOME"], mode=0o700, exist_ok=True)  # an empty keyring: no OpenPGP signature is trusted
            Path(env["GNUPGHOME"], "gpg.conf").write_text("no-autostart\n")
        argv = ["git", f"--git-dir={git_dir}", "-c", f"gpg.ssh.allowedSignersFile={self.settings.allowed_signers or os.devnull}",
                "-c", "gpg.program=gpg", "-c", "gpg.minTrustLevel=undefined", "verify-commit", "--raw", sha]
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Verdict(False, f"{NOT_TRUSTED}: git verify-commit did not run ({exc})")
        said = done.stderr + done.stdout
        if done.returncode == 0:
            return Verdict(True, _signer(said))
        return Verdict(False, f"{NOT_TRUSTED}: {_why(said)}")


def _signer(said: str) -> str:
    m = re.search(r'Good "git" signature for (\S+) with (\S+) key (\S+)', said)
    if m:
        return f"SSH signature by {m[1]} ({m[2]} key {m[3]})"
    m = re.search(r"\[GNUPG:\] GOODSIG (\S+) (.*)", said)
    if m:
        fpr = re.search(r"\[GNUPG:\] VALIDSIG (\S+)", said)
        return f"OpenPGP signature by {m[2].strip()} (key {fpr[1] if fpr else m[1]})"
    return "a good signature"


def _why(said: str) -> str:
    if "no signature found" in said:
        return "the commit is not signed"
    if re.search(r"\[GNUPG:\] (ERRSIG|NO_PUBKEY) ", said):
        key = re.search(r"\[GNUPG:\] (?:ERRSIG|NO_PUBKEY) (\S+)", said)
        return f"its OpenPGP signature is by key {key[1] if key else '?'}, which is not among source.verify.gpgKeys"
    if "[GNUPG:] BADSIG" in said or "BAD signature" in said:
        return "its OpenPGP signature does not match the commit (changed after signing?)"
    if "No principal matched" in said or "allowedSignersFile" in said or "no matching principal" in said.lower():
        key = re.search(r"(SHA256:[A-Za-z0-9+/=]+)", said)
        return f"its SSH signature is by key {key[1] if key else '?'}, which is not in source.verify.allowedSigners"
    if "Could not verify signature" in said or "incorrect signature" in said or "Signature verification failed" in said:
        return "its SSH signature does not match the commit (changed after signing?)"
    return " ".join(said.split())[:200] or "git verify-commit refused it"
