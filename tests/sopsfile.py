"""Test fixtures in the format `sops` writes (the real sops is not on this machine; the product
never encrypts). Only for tests: the decryption they exercise was checked against the real sops's
files of ../shared/corpora/sops."""

from __future__ import annotations

import base64
import hashlib
import os
import textwrap
from typing import Any

import pyrage
import yaml
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gitsync.adapters import sops

# One identity for every test (a test key, published here on purpose).
TEST_IDENTITY = "AGE-SECRET-KEY-1NVPRJA3HM63NY6E0EWFPLTHJVNQ072EX5UF78SF4W7NX64D3CDCSN4GCGH"
TEST_RECIPIENT = str(pyrage.x25519.Identity.from_str(TEST_IDENTITY).to_public())


def _enc(value: Any, key: bytes, aad: str) -> str:
    kind = "bool" if isinstance(value, bool) else "int" if isinstance(value, int) else "float" if isinstance(value, float) else "str"
    if value == "":
        return ""
    plain = sops._to_bytes(value)
    iv = os.urandom(32)
    sealed = AESGCM(key).encrypt(iv, plain, aad.encode())
    b = base64.b64encode
    return f"ENC[AES256_GCM,data:{b(sealed[:-16]).decode()},iv:{b(iv).decode()},tag:{b(sealed[-16:]).decode()},type:{kind}]"


def _armor(data: bytes) -> str:
    body = "\n".join(textwrap.wrap(base64.b64encode(data).decode(), 64))
    return f"-----BEGIN AGE ENCRYPTED FILE-----\n{body}\n-----END AGE ENCRYPTED FILE-----\n"


def encrypt_tree(tree: dict[str, Any], recipients: tuple[str, ...] = (TEST_RECIPIENT,), encrypted_regex: str = "",
                 lastmodified: str = "2026-12-07T06:00:00Z") -> dict[str, Any]:
    """`tree` with its values encrypted and a sops block, as `sops encrypt --age` makes it."""
    key = os.urandom(32)
    rules = sops._Rules(encrypted_regex=encrypted_regex, unencrypted_suffix="" if encrypted_regex else "_unencrypted")
    mac = hashlib.sha512()

    def walk(node: Any, path: list[str]) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, [*path, k]) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, path) for v in node]
        if node is None:
            return None
        mac.update(sops._to_bytes(node))
        return _enc(node, key, ":".join(path) + ":") if rules.encrypted(path) else node

    out = walk(tree, [])
    meta: dict[str, Any] = {
        "age": [{"recipient": r, "enc": _armor(pyrage.encrypt(key, [pyrage.x25519.Recipient.from_str(r)]))} for r in recipients],
        "lastmodified": lastmodified,
        "mac": _enc(mac.hexdigest().upper(), key, lastmodified),
        "version": "3.9.4",
    }
    if encrypted_regex:
        meta["encrypted_regex"] = encrypted_regex
    else:
        meta["unencrypted_suffix"] = "_unencrypted"
    out["sops"] = meta
    return out


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|" if "\n" in v else None))


def encrypt_yaml(tree: dict[str, Any], **kw: Any) -> str:
    return yaml.dump(encrypt_tree(tree, **kw), Dumper=_Dumper, sort_keys=False)


def secret_manifest(name: str, values: dict[str, str], **kw: Any) -> str:
    """A gitsync Secret, encrypted as `sops encrypt --encrypted-regex '^(data|stringData)$'` does."""
    doc = {"apiVersion": "gitsync.io/v1", "kind": "Secret", "metadata": {"name": name}, "stringData": values}
    return encrypt_yaml(doc, encrypted_regex="^(data|stringData)$", **kw)
