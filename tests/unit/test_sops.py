"""Decrypting SOPS files: every file the real sops wrote in ../shared/corpora/sops decrypts to its
plaintext (and the damaged ones fail naming the file); our own fixtures cover tampering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gitsync.adapters import sops
from tests.conftest import CORPORA, need_corpora
from tests.sopsfile import TEST_IDENTITY, TEST_RECIPIENT, encrypt_yaml, secret_manifest

CASES = sorted(p.name for p in (CORPORA / "sops").glob("*-*") if p.is_dir()) if (CORPORA / "sops").is_dir() else []


def _case(name: str) -> tuple[Path, dict, bytes, sops.AgeKeys]:
    folder = need_corpora() / "sops" / name
    meta = json.loads((folder / "meta.json").read_text())
    return folder, meta, (folder / meta["file"]).read_bytes(), sops.AgeKeys.load(str(folder / "key.txt"))


def _same(a, b) -> bool:
    """Trees equal; JSON numbers 7 and 7.0 equal (older sops typed JSON integers as floats)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def test_the_corpus_is_there():
    assert len(list((need_corpora() / "sops").glob("case-*"))) >= 10 and CASES  # the parametrized tests below ran


@pytest.mark.parametrize("name", [c for c in CASES if c.startswith("case-")])
def test_every_file_of_the_real_sops_decrypts_to_its_plaintext(name):
    folder, meta, data, keys = _case(name)
    assert sops.sniff(data) == meta["format"] or (meta["format"] == "dotenv" and sops.sniff(data) == "dotenv")
    got = sops.decrypt(data, meta["file"], keys)  # the format found from the content, not the name
    assert got.format == meta["format"]
    if (folder / "expected.json").exists():
        want = json.loads((folder / "expected.json").read_text())
        tree = sops._plain(got.trees[0])
        assert _same(tree, want), (tree, want)
        if meta["format"] in ("yaml", "json"):  # delivered in its own format: it reads back as the same tree
            again = yaml.safe_load(got.render()) if meta["format"] == "yaml" else json.loads(got.render())
            assert _same(again, want)
    for exact in ("expected.env", "expected.bin"):
        if (folder / exact).exists():
            assert got.render() == (folder / exact).read_bytes()


@pytest.mark.parametrize("name", [c for c in CASES if c.startswith("neg-")])
def test_every_damaged_file_fails_naming_the_file(name):
    _, meta, data, keys = _case(name)
    with pytest.raises(sops.SopsError) as err:
        sops.decrypt(data, "repo/" + meta["file"], keys)
    assert str(err.value).startswith("repo/" + meta["file"] + ": ")
    assert err.value.kind == {"decrypt-error": "decrypt", "mac-mismatch": "mac", "no-matching-key": "no-key"}[meta["error_kind"]]


def _keys() -> sops.AgeKeys:
    return sops.AgeKeys([TEST_IDENTITY], "test")


def test_a_value_swapped_between_list_items_breaks_the_mac():
    text = encrypt_yaml({"list": ["one", "two"], "x": "y"})
    doc = yaml.safe_load(text)
    doc["list"].reverse()  # same path, so each still decrypts: only the MAC can tell
    with pytest.raises(sops.SopsError, match="MAC does not match") as err:
        sops.decrypt(yaml.safe_dump(doc).encode(), "s.yaml", _keys())
    assert err.value.kind == "mac"


def test_a_value_moved_to_another_key_does_not_decrypt():
    doc = yaml.safe_load(encrypt_yaml({"a": "first", "b": "second"}))
    doc["a"], doc["b"] = doc["b"], doc["a"]
    with pytest.raises(sops.SopsError, match="a: does not decrypt"):
        sops.decrypt(yaml.safe_dump(doc, sort_keys=False).encode(), "s.yaml", _keys())


def test_a_cleartext_value_changed_breaks_the_mac():
    doc = yaml.safe_load(encrypt_yaml({"a": "secret", "note_unencrypted": "hello"}))
    doc["note_unencrypted"] = "changed"
    with pytest.raises(sops.SopsError, match="MAC does not match"):
        sops.decrypt(yaml.safe_dump(doc, sort_keys=False).encode(), "s.yaml", _keys())


def test_a_value_written_in_the_clear_where_one_should_be_encrypted_is_refused():
    doc = yaml.safe_load(encrypt_yaml({"a": "secret"}))
    doc["a"] = "plain"
    with pytest.raises(sops.SopsError, match="should be encrypted"):
        sops.decrypt(yaml.safe_dump(doc, sort_keys=False).encode(), "s.yaml", _keys())


def test_a_file_for_other_keys_says_which_recipients_it_wants():
    other = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
    text = encrypt_yaml({"a": "secret"}, recipients=(other,))
    with pytest.raises(sops.SopsError) as err:
        sops.decrypt(text.encode(), "app/s.yaml", _keys())
    assert err.value.kind == "no-key" and other in str(err.value) and "sops updatekeys" in str(err.value)
    with pytest.raises(sops.SopsError, match="no age identity"):
        sops.decrypt(text.encode(), "app/s.yaml", sops.AgeKeys())


def test_pgp_only_and_comment_rules_are_refused_with_what_to_do():
    doc = yaml.safe_load(encrypt_yaml({"a": "secret"}))
    doc["sops"]["age"] = []
    doc["sops"]["pgp"] = [{"fp": "ABCD", "enc": "x"}]
    with pytest.raises(sops.SopsError, match="encrypted only for pgp; gitsync decrypts age"):
        sops.decrypt(yaml.safe_dump(doc).encode(), "s.yaml", _keys())
    doc = yaml.safe_load(encrypt_yaml({"a": "secret"}))
    doc["sops"]["encrypted_comment_regex"] = "^sops:enc"
    with pytest.raises(sops.SopsError, match="encrypted_comment_regex"):
        sops.decrypt(yaml.safe_dump(doc).encode(), "s.yaml", _keys())


def test_a_secret_manifest_round_trips_and_lists_its_values_for_masking():
    text = secret_manifest("db", {"password": "hunter2-long", "user": "app"})
    assert TEST_RECIPIENT in text and "hunter2" not in text
    got = sops.decrypt(text.encode(), "db.yaml", _keys())
    assert got.trees[0]["stringData"] == {"password": "hunter2-long", "user": "app"}
    assert got.trees[0]["metadata"] == {"name": "db"}  # outside encrypted_regex: left in the clear
    assert sorted(got.secrets) == ["app", "hunter2-long"]


def test_keys_from_the_environment_as_sops_reads_them(tmp_path):
    f = tmp_path / "keys.txt"
    f.write_text(f"# created: today\n# public key: {TEST_RECIPIENT}\n{TEST_IDENTITY}\n")
    assert sops.AgeKeys.load(None, {"SOPS_AGE_KEY_FILE": str(f)}).recipients == {TEST_RECIPIENT}
    assert sops.AgeKeys.load(None, {"SOPS_AGE_KEY": TEST_IDENTITY}).recipients == {TEST_RECIPIENT}
    assert sops.AgeKeys.load(str(f), {}).recipients == {TEST_RECIPIENT}
    f.write_text("not a key\n")
    with pytest.raises(ValueError, match="line 1 is not an age identity"):
        sops.AgeKeys.load(str(f), {})


def test_digests_are_keyed():
    a, b = sops.AgeKeys([TEST_IDENTITY]), sops.AgeKeys()
    assert a.digest(b"pw") == sops.AgeKeys([TEST_IDENTITY]).digest(b"pw") != b.digest(b"pw")
    import hashlib
    assert hashlib.sha256(b"pw").hexdigest() not in (a.digest(b"pw"), b.digest(b"pw"))
