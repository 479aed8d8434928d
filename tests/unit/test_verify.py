"""Signed commits only (issue 24, item 1): git verifies, with the keys the configuration names and
nothing of the machine's; a commit unsigned, signed by an untrusted key or changed after signing is
refused with a reason a person can act on; a preview says whether a commit would be applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitsync.core import config as config_mod
from gitsync.core.errors import ConfigError
from gitsync.adapters.source import Source
from gitsync.adapters.verify import Unverified
from tests.conftest import GitRepo, git
from tests.signing import GpgKey, SshKey, signed_commit


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("keys")
    return {"alice": SshKey(folder, "alice"), "mallory": SshKey(folder, "mallory"), "bob": GpgKey(folder, "bob"), "eve": GpgKey(folder, "eve")}


def source(tmp_path: Path, up: GitRepo, trusted: list[object]) -> Source:
    allowed = tmp_path / "allowed_signers"
    allowed.write_text("".join(k.allowed_signer() for k in trusted if isinstance(k, SshKey)))
    armored = tmp_path / "trusted.asc"
    armored.write_bytes(b"".join(k.armored for k in trusted if isinstance(k, GpgKey)))
    cfg = config_mod.parse(
        f"name: t\nsource:\n  url: '{up.path}'\n  verify: {{allowedSigners: '{allowed}', gpgKeys: '{armored}'}}\n", "g.yaml", tmp_path)
    return Source(cfg.source, str(tmp_path / "state"))


def test_ssh_and_openpgp_signed_commits_pass_and_the_others_are_refused_saying_why(tmp_path: Path, keys: dict) -> None:
    up = GitRepo(tmp_path / "up")
    up.write("a.yaml", "x: 1\n")
    src = source(tmp_path, up, [keys["alice"], keys["bob"]])
    signed_commit(up, "by alice", keys["alice"])
    got = src.fetch()
    assert "signature: SSH signature by alice@example.com (ED25519 key SHA256:" in " ".join(got.notes)
    signed_commit(up, "by bob", keys["bob"])
    assert "signature: OpenPGP signature by bob <bob@example.com> (key " + keys["bob"].fingerprint in " ".join(src.fetch().notes)

    up.commit("unsigned")
    with pytest.raises(Unverified, match="^not signed by a trusted key: the commit is not signed$") as refused:
        src.fetch()
    assert refused.value.snapshot.commit == git(up.path, "rev-parse", "HEAD")  # the commit refused, for its status
    signed_commit(up, "by mallory", keys["mallory"])
    with pytest.raises(Unverified, match="its SSH signature is by key SHA256:.*, which is not in source.verify.allowedSigners"):
        src.fetch()
    signed_commit(up, "by eve", keys["eve"])
    with pytest.raises(Unverified, match=f"its OpenPGP signature is by key .*{keys['eve'].fingerprint[-16:]}, which is not among source.verify.gpgKeys"):
        src.fetch()
    # head mode: a signed commit on top of unsigned ones is accepted
    signed_commit(up, "alice again", keys["alice"])
    assert src.fetch().commit == git(up.path, "rev-parse", "HEAD")
    # a trusted key removed from the configuration: its commits are refused
    (tmp_path / "again").mkdir()
    with pytest.raises(Unverified, match="not in source.verify.allowedSigners"):
        source(tmp_path / "again", up, [keys["bob"]]).fetch()


def test_a_signed_commit_changed_after_signing_is_refused(tmp_path: Path, keys: dict) -> None:
    up = GitRepo(tmp_path / "up")
    up.write("a.yaml", "x: 1\n")
    sha = signed_commit(up, "by alice", keys["alice"])
    raw = git(up.path, "cat-file", "commit", sha).replace("by alice", "by alice, or so it says")
    forged = __import__("subprocess").run(["git", "hash-object", "-t", "commit", "-w", "--stdin"], cwd=up.path, input=raw + "\n",
                                          capture_output=True, text=True, check=True).stdout.strip()
    git(up.path, "update-ref", "refs/heads/main", forged)
    with pytest.raises(Unverified, match="its SSH signature does not match the commit"):
        source(tmp_path, up, [keys["alice"]]).fetch()


def test_a_preview_says_whether_the_commit_would_be_applied(tmp_path: Path, keys: dict) -> None:
    up = GitRepo(tmp_path / "up")
    up.write("a.yaml", "x: 1\n")
    signed_commit(up, "signed", keys["alice"])
    git(up.path, "checkout", "-q", "-b", "feature")
    up.commit("unsigned")
    src = source(tmp_path, up, [keys["alice"]])
    assert "would not be applied: not signed by a trusted key: the commit is not signed" in src.fetch_ref("feature").notes
    assert any(n.startswith("signature: SSH signature by alice") for n in src.fetch_ref("main").notes)


def test_verify_is_checked_when_the_configuration_is_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="source.verify: names no keys"):
        config_mod.parse("name: t\nsource: {url: 'https://git.example.com/a.git', verify: {mode: head}}\n", "g.yaml", tmp_path)
    with pytest.raises(ConfigError, match="source.verify.allowedSigners: keys/allowed is not a file"):
        config_mod.parse("name: t\nsource: {url: 'https://git.example.com/a.git', verify: {allowedSigners: keys/allowed}}\n", "g.yaml", tmp_path)
    with pytest.raises(ConfigError, match="source.verify.mode: 'all': head is the mode there is"):
        config_mod.parse("name: t\nsource: {url: 'https://git.example.com/a.git', verify: {mode: all, gpgKeys: x}}\n", "g.yaml", tmp_path)
