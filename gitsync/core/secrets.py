"""What a load of the repository may do with secrets: decrypt SOPS files with the agent's age keys
(or, for a preview, not at all), seal each value so that no output can show it, and remember the
values it has seen so that every place gitsync writes text masks them.

A value's digest is keyed (`sops.AgeKeys.digest`): it rolls the replicas that use the value when it
changes, in labels and volume names, without telling the value. A preview never decrypts: a value
whose ciphertext the agent decrypted before (on the tracked branch) keeps the digest it had; any
other is unknown and shows as changed."""

from __future__ import annotations

import base64
import binascii
import threading
from dataclasses import dataclass, field
from typing import Any

from ..adapters import sops
from .models import Sealed, Secret
from .redact import Masking, Redactor

SEEN = Masking()  # every decrypted value of this process, masked wherever gitsync writes text
MASK_NAME = "secret"  # shown as ${secret}


@dataclass
class SecretReader:
    keys: sops.AgeKeys = field(default_factory=sops.AgeKeys)
    allow_plaintext: bool = False
    decrypt: bool = True  # False: a preview (strangers' code) never decrypts
    known: dict[str, str] = field(default_factory=dict)  # ciphertext -> the digest of its value (kept across loads)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def preview(self) -> SecretReader:
        return SecretReader(self.keys, self.allow_plaintext, False, self.known, self._lock)

    def seal(self, value: bytes, name: str, ciphertext: str = "") -> Sealed:
        digest = self.keys.digest(b"value", value)
        if ciphertext:
            with self._lock:
                self.known[ciphertext] = digest
        if len(value) >= 4:
            try:
                SEEN.use(Redactor(named=frozenset({(MASK_NAME, value.decode("utf-8"))})))
            except UnicodeDecodeError:
                pass
        return Sealed(value, digest, name)

    def stand_in(self, ciphertext: str, name: str) -> Sealed:
        """A preview's value: the digest the tracked branch's decryption gave this ciphertext, else unknown."""
        with self._lock:
            digest = self.known.get(ciphertext) or self.keys.digest(b"unknown", ciphertext.encode())
        return Sealed(None, digest, name)

    def open_documents(self, file: str, docs: list[Any]) -> None:
        """Decrypt a SOPS manifest's documents in place (raises sops.SopsError). The values of a
        Secret (stringData, data) become Sealed; the other kinds' values stay text, masked from
        now on. In a preview, nothing is decrypted: a Secret's values are stand-ins."""
        secret_values = [(doc, key, k, v) for doc in docs if _is_secret(doc) for key in ("stringData", "data")
                         if isinstance(doc.get(key), dict) for k, v in doc[key].items()]
        if not self.decrypt:
            for doc in docs:
                if isinstance(doc, dict):
                    doc.pop("sops", None)
            for doc, key, k, v in secret_values:
                doc[key][k] = self.stand_in(str(v), f"{_name(doc)}/{k}")
            return
        got = sops.decrypt_documents(docs, file, self.keys)
        masked = frozenset((MASK_NAME, v) for v in got.secrets if len(v) >= 4)
        if masked:
            SEEN.use(Redactor(named=masked))
        for doc, key, k, cipher in secret_values:
            value = doc[key][k]
            raw = value if isinstance(value, bytes) else sops._scalar(value).encode()
            if key == "data":
                try:
                    raw = base64.b64decode(raw, validate=True)
                except (binascii.Error, ValueError):
                    raise sops.SopsError(file, "format", f"data.{k}: is no base64 (put text under stringData)") from None
            doc[key][k] = self.seal(raw, f"{_name(doc)}/{k}", str(cipher))


def _is_secret(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("kind") == Secret.KIND


def _name(doc: Any) -> str:
    meta = doc.get("metadata")
    return str(meta.get("name")) if isinstance(meta, dict) else "?"


def is_encrypted(docs: list[Any]) -> bool:
    return any(isinstance(d, dict) and isinstance(d.get("sops"), dict) for d in docs)
