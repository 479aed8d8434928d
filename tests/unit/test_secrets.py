"""Secrets: SOPS-encrypted Secrets used as files and variables, delivered sealed; what the plan,
its JSON and the labels say (never a value); rotation rolls exactly the users; bad input."""

from __future__ import annotations

import json

import pytest

from gitsync.core import config as config_mod
from gitsync.core import labels as L
from gitsync.core.errors import ManifestError
from gitsync.kinds.deployment import describe_change
from gitsync.core.live import HostObservation, LiveContainer
from gitsync.core.manifest import load_files
from gitsync.runtimes.containers.plan import make_plan
from gitsync.core.plantext import plan_text
from gitsync.core.secrets import SEEN, SecretReader
from gitsync.adapters.sops import AgeKeys
from tests.sopsfile import TEST_IDENTITY, encrypt_yaml, secret_manifest

PASSWORD = "correct-horse-battery-42"
TOKEN = "tok-9f8e7d6c5b4a"

APPS = b"""\
apiVersion: gitsync.io/v1
kind: Deployment
metadata: {name: db}
spec:
  image: postgres:16
  env:
    POSTGRES_PASSWORD_FILE: /run/secrets/db-password
  secrets:
    - {name: db, key: password, path: /run/secrets/db-password, mode: 0400, uid: 999}
---
apiVersion: gitsync.io/v1
kind: Deployment
metadata: {name: api}
spec:
  image: api:1
  env:
    MODE: prod
    API_TOKEN: {secretKeyRef: {name: api, key: token}}
---
apiVersion: gitsync.io/v1
kind: Deployment
metadata: {name: web}
spec:
  image: web:1
"""


def reader() -> SecretReader:
    return SecretReader(AgeKeys([TEST_IDENTITY], "test"))


def repo(password: str = PASSWORD, token: str = TOKEN) -> dict[str, bytes]:
    return {"apps.yaml": APPS, "secrets/db.yaml": secret_manifest("db", {"password": password, "user": "app"}).encode(),
            "secrets/api.yaml": secret_manifest("api", {"token": token}).encode()}


def problems(files: dict[str, bytes], r: SecretReader | None = None, variables: dict[str, str] = {}) -> list[str]:
    with pytest.raises(ManifestError) as err:
        load_files(files, variables=variables, secrets=r or reader())
    return [str(p) for p in err.value.problems]


def test_secrets_reach_their_users_sealed_and_nothing_shows_them():
    r = reader()
    state = load_files(repo(), secrets=r)
    db, api, web = (state.deployment(n) for n in ("db", "api", "web"))
    (mount,) = db.options.files
    assert (mount.mount_path, mount.secret, mount.owner, mount.folder) == ("/run/secrets/db-password", "db/password", (999, 0), False)
    assert mount.entries[0][1].reveal() == PASSWORD.encode() and mount.entries[0][2] == 0o400
    ((var, ref, sealed),) = api.options.secret_env
    assert (var, ref, sealed.reveal()) == ("API_TOKEN", "api/token", TOKEN.encode())
    assert dict(api.env) == {"MODE": "prod"} and not web.options.files
    hosts = config_mod.parse("name: t\nhosts:\n  - {name: h1, url: 'tcp://10.0.0.1:2375'}\n").hosts
    plan = make_plan(state, {"h1": HostObservation("h1", True, ())}, hosts, "t")
    shown = plan_text(plan, "main@sha1:x", {}) + json.dumps(plan.to_json()) + repr(state)
    shown += "".join(json.dumps(L.container_labels("t", d, 0, "r")) for d in (db, api))
    assert PASSWORD not in shown and TOKEN not in shown
    assert "correct-horse" not in shown and "9f8e7d" not in shown
    import hashlib
    assert hashlib.sha256(PASSWORD.encode()).hexdigest() not in shown  # the digests are keyed
    # and any text gitsync writes masks a value it decrypted
    assert SEEN.redactor.text(f"oops {PASSWORD}") == "oops ${secret}"
    assert config_mod.Config("t").redactor.text(TOKEN) == "${secret}"


def test_a_rotated_secret_replaces_exactly_its_users_and_says_which_secret():
    r = reader()
    old, new = load_files(repo(), secrets=r), load_files(repo(password="another-password-77"), secrets=r)
    for name in ("api", "web"):
        assert L.spec_hash(old.deployment(name)) == L.spec_hash(new.deployment(name))
    db_old, db_new = old.deployment("db"), new.deployment("db")
    assert L.spec_hash(db_old) != L.spec_hash(db_new)
    live = LiveContainer("c", "t_db-0", "h1", "db", 0, L.spec_hash(db_old), "r", "running", None, 1, "postgres:16", spec=L.canonical_spec(db_old))
    assert describe_change(live, db_new) == "changed: secret db/password"
    # re-encrypting the same values (new IVs, new data key) changes nothing
    assert L.spec_hash(load_files(repo(), secrets=r).deployment("db")) == L.spec_hash(db_old)
    api_new = load_files(repo(token="tok-rotated-0000"), secrets=r).deployment("api")
    live = LiveContainer("c", "t_api-0", "h1", "api", 0, "x", "r", "running", None, 1, "api:1", spec=L.canonical_spec(old.deployment("api")))
    assert describe_change(live, api_new) == "changed: secret api/token"


def test_a_preview_never_decrypts_and_matches_what_the_tracked_branch_decrypted():
    r = reader()
    files = repo()
    tracked = load_files(files, secrets=r)
    preview = load_files(files, secrets=r.preview())
    for name in ("db", "api"):
        assert L.spec_hash(preview.deployment(name)) == L.spec_hash(tracked.deployment(name))
    with pytest.raises(RuntimeError, match="never decrypts"):
        preview.deployment("db").options.files[0].entries[0][1].reveal()
    changed = load_files(repo(password="pr-changed-it"), secrets=reader().preview())  # never seen: shows as changed
    assert L.spec_hash(changed.deployment("db")) != L.spec_hash(tracked.deployment("db"))
    # a preview of a file no key opens still plans (nothing to decrypt)
    other = {**files, "secrets/db.yaml": secret_manifest("db", {"password": "x"}, recipients=("age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",)).encode()}
    assert load_files(other, secrets=reader().preview()).deployment("db") is not None


def test_bad_secrets_input_is_refused_naming_the_file_and_key():
    files = repo()
    missing = {**files, "apps.yaml": APPS.replace(b"key: password", b"key: pasword")}
    assert any(p.startswith("apps.yaml:9: db: spec.secrets[0]: Secret db has no key pasword (it has: password, user)") for p in problems(missing))
    gone = {k: v for k, v in files.items() if k != "secrets/api.yaml"}
    assert any("apps.yaml:18: api: spec.env.API_TOKEN: no Secret named api" in p for p in problems(gone))
    plain = {**files, "secrets/api.yaml": b"apiVersion: gitsync.io/v1\nkind: Secret\nmetadata: {name: api}\nstringData: {token: abc}\n"}
    assert any(p.startswith("secrets/api.yaml:1: Secret api: is plain text in Git: encrypt it with sops") for p in problems(plain))
    allowed = load_files(plain, secrets=SecretReader(AgeKeys([TEST_IDENTITY]), allow_plaintext=True))
    assert any("Secret api is plain text in Git" in w for w in allowed.warnings)
    assert any(p.startswith("secrets/db.yaml: encrypted for age recipients") for p in problems(files, SecretReader()))
    tampered = files["secrets/db.yaml"].replace(b"name: db", b"name: db2")  # a clear value outside encrypted_regex: in the MAC
    assert any(p.startswith("secrets/db.yaml: its MAC does not match") for p in problems({**files, "secrets/db.yaml": tampered}))


def test_an_encrypted_deployment_manifest_is_decrypted_and_its_values_masked():
    text = encrypt_yaml({"apiVersion": "gitsync.io/v1", "kind": "Deployment", "metadata_unencrypted": 1}).replace("metadata_unencrypted: 1\n", "")
    assert "Deployment" not in text  # every value encrypted, as plain `sops encrypt` does
    doc = {"apiVersion": "gitsync.io/v1", "kind": "Deployment", "metadata": {"name": "w"}, "spec": {"image": "registry.internal/w:7", "env": {"K": "hidden-value-1"}}}
    state = load_files({"w.yaml": encrypt_yaml(doc).encode()}, secrets=reader())
    assert dict(state.deployment("w").env) == {"K": "hidden-value-1"}
    assert SEEN.redactor.text("hidden-value-1") == "${secret}"


def test_compose_secrets_from_a_sops_file_and_from_the_environment():
    dotenv_like = encrypt_yaml({"password": "compose-pw-123"})
    compose = b"""\
services:
  app:
    image: a:1
    secrets:
      - db_pw
      - {source: token, target: api-token, uid: "1000", mode: 0440}
secrets:
  db_pw: {file: ./db.enc.yaml}
  token: {environment: TOKEN}
"""
    state = load_files({"compose.yaml": compose, "db.enc.yaml": dotenv_like.encode()}, variables={"TOKEN": "env-token-value"}, secrets=reader())
    files = {f.mount_path: f for f in state.deployment("app").options.files}
    assert set(files) == {"/run/secrets/db_pw", "/run/secrets/api-token"}
    assert files["/run/secrets/db_pw"].entries[0][1].reveal() == b"password: compose-pw-123\n"  # decrypted, in its own format
    assert files["/run/secrets/api-token"].entries[0][1].reveal() == b"env-token-value"
    assert (files["/run/secrets/api-token"].owner, files["/run/secrets/api-token"].entries[0][2]) == ((1000, 0), 0o440)
    plain = {"compose.yaml": compose.replace(b"./db.enc.yaml", b"./pw.txt"), "pw.txt": b"plain"}
    assert any(p.startswith("compose.yaml:5: services.app.secrets[0].file: ./pw.txt is plain text in Git") for p in problems(plain, variables={"TOKEN": "env-token-value"}))


def test_a_whole_secret_as_a_folder_binary_data_and_what_a_secret_may_not_be():
    import base64

    files = repo()
    doc = {"apiVersion": "gitsync.io/v1", "kind": "Secret", "metadata": {"name": "bin"},
           "data": {"key.der": base64.b64encode(b"\x00\x01binary\xff").decode(), "other": base64.b64encode(b"two").decode()}}
    files["secrets/bin.yaml"] = encrypt_yaml(doc, encrypted_regex="^(data|stringData)$").encode()
    files["apps.yaml"] = APPS.replace(b"  image: web:1\n", b"  image: web:1\n  secrets: [{name: bin}]\n")
    web = load_files(files, secrets=reader()).deployment("web")
    (mount,) = web.options.files
    assert (mount.mount_path, mount.folder, mount.secret) == ("/run/secrets/bin", True, "bin")
    assert {name: data.reveal() for name, data, _ in mount.entries} == {"key.der": b"\x00\x01binary\xff", "other": b"two"}
    bad = {**files, "secrets/x.yaml": b"apiVersion: gitsync.io/v1\nkind: Secret\nmetadata: {name: x}\nspec: {a: b}\nstringData: {'bad key': v}\n"}
    found = problems(bad, SecretReader(AgeKeys([TEST_IDENTITY]), allow_plaintext=True))
    assert "secrets/x.yaml:4: spec: a Secret has no spec: its values go under stringData (text) or data (base64)" in found, found
    assert "secrets/x.yaml:5: stringData.bad key: is not a valid key: letters, digits, '-', '_' and '.' (it may become a file name)" in found, found
    odd = {**files, "apps.yaml": APPS.replace(b"mode: 0400, uid: 999", b"mode: 0400, uid: 999, content: x")}
    assert any("spec.secrets[0].content: is not a key of spec.secrets" in p for p in problems(odd)), problems(odd)
