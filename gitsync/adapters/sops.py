"""Reading files that `sops` encrypted for age recipients, as `sops decrypt` reads them.

A SOPS file keeps its structure in the clear and each value encrypted on its own:
``ENC[AES256_GCM,data:..,iv:..,tag:..,type:str]``, AES-256-GCM under one data key, with the value's
path in the tree (``db:password:``) as additional data. The data key is wrapped for each recipient
under ``sops.age[].enc`` (an armored age file). ``sops.mac`` is a SHA-512 over every value in document
order, encrypted with ``sops.lastmodified`` as additional data: a value changed, swapped or removed
outside sops breaks it. Structured files (YAML, JSON) are trees; dotenv, INI and binary files are
flattened into trees the same way sops's stores do. Encrypting is the user's sops, never ours.

What goes wrong is a `SopsError` naming the file and what to do; a value is never returned unchecked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import yaml

from ..core import yamlsrc

ENC_RE = re.compile(r"^ENC\[AES256_GCM,data:(?P<data>[^,]*),iv:(?P<iv>[^,]+),tag:(?P<tag>[^,]+),type:(?P<type>[a-z]+)\]$")
# sops >= 3.7 starts the MAC of a file with mac_only_encrypted with these bytes (sha256("sops")).
MAC_ONLY_ENCRYPTED_INIT = hashlib.sha256(b"sops").digest()
DEFAULT_KEY_FILE = "~/.config/sops/age/keys.txt"  # where sops looks when neither variable is set


class SopsError(Exception):
    """A SOPS file that cannot be read: `kind` is format, no-key, decrypt, mac or unsupported."""

    def __init__(self, file: str, kind: str, why: str) -> None:
        super().__init__(f"{file}: {why}")
        self.file = file
        self.kind = kind
        self.why = why


@dataclass
class Comment:
    text: str


class Pairs(list[tuple[Any, Any]]):
    """A map as the dotenv and INI stores hold one: (key, value) items in order, comments among them."""


class AgeKeys:
    """The age identities the agent decrypts with, and the key of the digests that stand for values.

    A digest of a secret value is an HMAC under a key derived from the identities: a label or a
    volume name may carry it (to roll what uses the value when it changes) without letting anyone
    who reads it test guesses of the value, as a bare hash of a short password would."""

    def __init__(self, identities: Iterable[str] = (), source: str = "") -> None:
        import pyrage

        self.texts = tuple(sorted(set(identities)))
        self.source = source  # where they came from, for messages
        self._identities = [pyrage.x25519.Identity.from_str(t) for t in self.texts]
        self.recipients = frozenset(str(i.to_public()) for i in self._identities)
        self._digest_key = hashlib.sha256(b"gitsync secret digests\0" + "\n".join(self.texts).encode()).digest()

    @classmethod
    def parse(cls, text: str, source: str) -> AgeKeys:
        """Identities from a key file's text (``AGE-SECRET-KEY-1...`` lines; # comments and blank lines)."""
        found = []
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not line.startswith("AGE-SECRET-KEY-1"):
                raise ValueError(f"{source}: line {n} is not an age identity (AGE-SECRET-KEY-1...)")
            found.append(line)
        try:
            return cls(found, source)
        except Exception:
            raise ValueError(f"{source}: an AGE-SECRET-KEY-1 line is not a valid age identity") from None

    @classmethod
    def load(cls, key_file: str | None, environ: dict[str, str] | None = None) -> AgeKeys:
        """As sops finds them: the configured file, else SOPS_AGE_KEY (the identities themselves) and
        SOPS_AGE_KEY_FILE, else sops's default file if it exists; no identities is no error here."""
        env = os.environ if environ is None else environ
        texts: list[tuple[str, str]] = []
        files = [key_file] if key_file else [f for f in (env.get("SOPS_AGE_KEY_FILE"),) if f]
        if not key_file and env.get("SOPS_AGE_KEY"):
            texts.append((env["SOPS_AGE_KEY"], "SOPS_AGE_KEY"))
        if not files and not texts and os.path.exists(os.path.expanduser(DEFAULT_KEY_FILE)):
            files.append(os.path.expanduser(DEFAULT_KEY_FILE))
        for path in files:
            try:
                with open(path, encoding="utf-8") as fh:
                    texts.append((fh.read(), path))
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"age key file {path}: {getattr(exc, 'strerror', None) or exc}") from None
        parsed = [cls.parse(t, s) for t, s in texts]
        return cls([i for p in parsed for i in p.texts], ", ".join(s for _, s in texts))

    def digest(self, *parts: bytes) -> str:
        h = hmac.new(self._digest_key, digestmod=hashlib.sha256)
        for p in parts:
            h.update(len(p).to_bytes(8, "big") + p)
        return h.hexdigest()

    def data_key(self, meta: dict[str, Any], file: str) -> bytes:
        """The file's data key, unwrapped with one of our identities."""
        import pyrage

        groups = meta.get("key_groups")
        if groups:
            if len(groups) > 1:
                raise SopsError(file, "unsupported", "its data key is split over key groups (Shamir); gitsync reads files encrypted for age recipients directly")
            meta = {**meta, **groups[0]}
        stanzas = [a for a in meta.get("age") or [] if isinstance(a, dict)]
        others = [k for k in ("pgp", "kms", "gcp_kms", "azure_kv", "hc_vault", "hckms") if meta.get(k)]
        if not stanzas:
            raise SopsError(file, "no-key", f"encrypted only for {', '.join(others) or 'no recipient'}; gitsync decrypts age: "
                            "add the agent's age recipient with `sops updatekeys` (or `sops rotate --add-age <recipient>`)")
        mine = [a for a in stanzas if a.get("recipient") in self.recipients] or stanzas
        for a in mine:
            enc = a.get("enc")
            if not isinstance(enc, str) or not self._identities:
                continue
            try:
                key = pyrage.decrypt(enc.encode(), self._identities)
            except Exception:
                continue
            if len(key) != 32:
                raise SopsError(file, "decrypt", "its age stanza does not hold a 32-byte data key: the file is damaged")
            return bytes(key)
        wanted = ", ".join(str(a.get("recipient")) for a in stanzas)
        held = f"the agent's {len(self._identities)} identities ({self.source})" if self._identities else "the agent has no age identity (secrets.ageKeyFile, SOPS_AGE_KEY_FILE or SOPS_AGE_KEY)"
        raise SopsError(file, "no-key", f"encrypted for age recipients {wanted}; none of them is {held}: "
                        "add the agent's recipient to the file with `sops updatekeys`, or give the agent one of those keys")


def sniff(data: bytes) -> str | None:
    """The format sops wrote `data` in, if it is a SOPS file; None for any other file."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            return None
        if isinstance(doc, dict) and isinstance(doc.get("sops"), dict):
            return "binary" if set(doc) == {"data", "sops"} and isinstance(doc["data"], str) and doc["data"].startswith("ENC[") else "json"
        return None
    lines = text.splitlines()
    if any(re.match(r"^sops_(mac|version|lastmodified)=", ln) for ln in lines):
        return "dotenv"
    if any(ln.strip() == "[sops]" for ln in lines):
        return "ini"
    if re.search(r"^sops:\s*$", text, re.M):
        return "yaml"
    return None


# -- the trees of each format ---------------------------------------------------------------

def _unflatten(flat: dict[str, str]) -> dict[str, Any]:
    """sops's flattened metadata (``age__list_0__map_enc``) back into maps and lists."""
    root: dict[str, Any] = {}
    for key, value in flat.items():
        parts = re.split(r"__(list|map)_", key)
        node: Any = root
        name: Any = parts[0]
        for kind, part in zip(parts[1::2], parts[2::2]):
            child: Any = [] if kind == "list" else {}
            if isinstance(node, dict):
                node = node.setdefault(name, child)
            else:
                while len(node) <= name:
                    node.append(None)
                node[name] = node[name] if node[name] is not None else child
                node = node[name]
            name = int(part) if kind == "list" else part
        if isinstance(node, dict):
            node[name] = value
        elif isinstance(node, list):
            while len(node) <= name:
                node.append(None)
            node[name] = value
    return root


def _dotenv_tree(text: str, file: str) -> Pairs:
    items = Pairs()
    for n, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        if line.startswith("#"):
            items.append((Comment(line[1:]), None))
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise SopsError(file, "format", f"line {n} is no KEY=VALUE line of a dotenv file")
        items.append((key, value.replace("\\n", "\n")))
    return items


def _ini_tree(text: str, file: str) -> Pairs:
    """Sections as maps (keys before any section in DEFAULT); comments attached as sops's INI store does."""
    sections = Pairs([("DEFAULT", Pairs())])
    pending: list[str] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line[0] in ";#":
            pending.append(line.lstrip("; ") if line[0] == ";" else line.lstrip("# "))
            continue
        if line.startswith("[") and line.endswith("]"):
            items = Pairs([(Comment("\n".join(pending)), None)] if pending else [])
            pending = []
            sections.append((line[1:-1].strip(), items))
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise SopsError(file, "format", f"line {n} is neither a [section] nor a key = value line")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        sections[-1][1].append((key.strip(), value))
        if pending:
            sections[-1][1].append((Comment("\n".join(pending)), None))
            pending = []
    return sections if sections[0][1] else Pairs(sections[1:])


def _yaml_trees(text: str, file: str) -> list[Any]:
    try:
        return [doc for _, doc in yamlsrc.load_all(text)]
    except yamlsrc.YamlSyntaxError as exc:
        raise SopsError(file, "format", f"line {exc.line}: {exc.message}") from None


def _pairs(tree: Any) -> list[tuple[Any, Any]]:
    return list(tree.items()) if isinstance(tree, dict) else list(tree)


# -- decrypting -------------------------------------------------------------------------------

@dataclass
class _Rules:
    unencrypted_suffix: str = ""
    encrypted_suffix: str = ""
    unencrypted_regex: str = ""
    encrypted_regex: str = ""
    mac_only_encrypted: bool = False

    def encrypted(self, path: list[str]) -> bool:
        out = True
        if self.unencrypted_suffix and any(p.endswith(self.unencrypted_suffix) for p in path):
            out = False
        if self.encrypted_suffix:
            out = any(p.endswith(self.encrypted_suffix) for p in path)
        if self.unencrypted_regex and any(re.search(self.unencrypted_regex, p) for p in path):
            out = False
        if self.encrypted_regex:
            out = any(re.search(self.encrypted_regex, p) for p in path)
        return out


def _rules(meta: dict[str, Any], file: str) -> _Rules:
    for key in ("encrypted_comment_regex", "unencrypted_comment_regex"):
        if meta.get(key):
            raise SopsError(file, "unsupported", f"sops.{key}: which values are encrypted then depends on comments, which gitsync does not keep; "
                            "use encrypted_regex or an encrypted/unencrypted suffix instead")
    written = {k: str(meta.get(k) or "") for k in ("unencrypted_suffix", "encrypted_suffix", "unencrypted_regex", "encrypted_regex")}
    if not any(written.values()):
        written["unencrypted_suffix"] = "_unencrypted"  # sops's default when no rule is written
    for k in ("unencrypted_regex", "encrypted_regex"):
        try:
            re.compile(written[k])
        except re.error as exc:
            raise SopsError(file, "format", f"sops.{k} is no regular expression ({exc})") from None
    only = meta.get("mac_only_encrypted")
    return _Rules(**written, mac_only_encrypted=only is True or str(only).lower() == "true")


def _go_float(f: float) -> str:
    """strconv.FormatFloat(f, 'f', -1, 64): the shortest digits, never an exponent."""
    if f != f:
        return "NaN"
    if f in (float("inf"), float("-inf")):
        return "+Inf" if f > 0 else "-Inf"
    return format(Decimal(repr(f)).normalize(), "f")


def _to_bytes(v: Any) -> bytes:
    if isinstance(v, bool):
        return b"True" if v else b"False"
    if isinstance(v, int):
        return str(v).encode()
    if isinstance(v, float):
        return _go_float(v).encode()
    if isinstance(v, bytes):
        return v
    return str(v).encode()


def _open(value: str, key: bytes, aad: str, file: str, where: str) -> Any:
    """One ENC[...] value, typed as sops typed it."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if value == "":
        return ""
    m = ENC_RE.match(value)
    if m is None:
        raise SopsError(file, "decrypt", f"{where}: should be encrypted (an ENC[AES256_GCM,...] value) and is not: the file was edited outside sops")
    try:
        data, iv, tag = (base64.b64decode(m[k], validate=True) for k in ("data", "iv", "tag"))
        plain = AESGCM(key).decrypt(iv, data + tag, aad.encode())
    except (binascii.Error, ValueError, InvalidTag):
        raise SopsError(file, "decrypt", f"{where}: does not decrypt (its ciphertext or place in the file was changed, or it was encrypted with another data key)") from None
    text = plain.decode("utf-8", "surrogateescape")
    try:
        match m["type"]:
            case "str" | "time":
                return text
            case "int":
                return int(text)
            case "float":
                return float(text)
            case "bool":
                return {"1": True, "t": True, "T": True, "true": True, "TRUE": True, "True": True,
                        "0": False, "f": False, "F": False, "false": False, "FALSE": False, "False": False}[text]
            case "bytes":
                return plain
            case "comment":
                return Comment(text)
    except (ValueError, KeyError):
        raise SopsError(file, "decrypt", f"{where}: decrypts to no {m['type']}") from None
    raise SopsError(file, "decrypt", f"{where}: unknown value type {m['type']!r}")


@dataclass
class Decrypted:
    """A decrypted file: its trees (one per YAML document), its format, and every value it encrypted."""

    format: str
    trees: list[Any]
    secrets: list[str] = field(default_factory=list)  # the plaintext of each encrypted leaf (to mask in output)

    def render(self) -> bytes:
        """The plaintext file as `sops decrypt` prints it (YAML and JSON without the comments)."""
        return _render(self.format, self.trees)


def decrypt(data: bytes, file: str, keys: AgeKeys, format: str | None = None) -> Decrypted:
    """Decrypt a SOPS file (its format sniffed unless given) and check its MAC."""
    fmt = format or sniff(data)
    if fmt is None:
        raise SopsError(file, "format", "is no SOPS file (no sops metadata)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SopsError(file, "format", f"not UTF-8 text (byte {exc.start})") from None
    if fmt in ("yaml", "json", "binary"):
        trees: list[Any]
        if fmt == "yaml":
            trees = _yaml_trees(text, file)
        else:
            try:
                trees = [json.loads(text)]
            except ValueError as exc:
                raise SopsError(file, "format", f"invalid JSON: {exc}") from None
        return decrypt_documents(trees, file, keys, fmt)
    items = _dotenv_tree(text, file) if fmt == "dotenv" else _ini_tree(text, file)
    if fmt == "dotenv":
        flat = {k[5:]: v for k, v in items if isinstance(k, str) and k.startswith("sops_")}
        items = Pairs((k, v) for k, v in items if not (isinstance(k, str) and k.startswith("sops_")))
    else:
        found = [v for k, v in items if k == "sops"]
        flat = {k: v.replace("\\n", "\n") for k, v in (found[0] if found else []) if isinstance(k, str)}
        items = Pairs((k, v) for k, v in items if k != "sops")
    return _decrypt_trees(fmt, [items], _unflatten(flat) if flat else None, file, keys)


def decrypt_documents(trees: list[Any], file: str, keys: AgeKeys, fmt: str = "yaml") -> Decrypted:
    """Decrypt parsed YAML documents (or a JSON tree) in place: a yamlsrc.Node keeps its lines."""
    metas = [t.pop("sops") for t in trees if isinstance(t, dict) and "sops" in t]
    if not metas:
        raise SopsError(file, "format", "has no sops: metadata")
    return _decrypt_trees(fmt, [t for t in trees if t is not None], metas[-1], file, keys)


def _decrypt_trees(fmt: str, trees: list[Any], meta: Any, file: str, keys: AgeKeys) -> Decrypted:
    if not isinstance(meta, dict):
        raise SopsError(file, "format", "its sops metadata is not a mapping")
    rules = _rules(meta, file)
    key = keys.data_key(meta, file)
    out = Decrypted(fmt, [])
    mac = hashlib.sha512(MAC_ONLY_ENCRYPTED_INIT if rules.mac_only_encrypted else b"")
    for tree in trees:
        out.trees.append(_walk(tree, [], rules, key, mac, file, out.secrets))
    stored = meta.get("mac")
    if not stored:
        raise SopsError(file, "mac", "has no MAC (sops.mac): its values cannot be checked, so none is used; encrypt it again with sops")
    try:
        when = datetime.fromisoformat(str(meta.get("lastmodified")).replace("Z", "+00:00"))
    except ValueError:
        raise SopsError(file, "mac", "sops.lastmodified is no time: the MAC cannot be checked") from None
    stamp = when.astimezone(when.tzinfo or timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    offset = when.utcoffset()
    stamp += "Z" if not offset else when.strftime("%z")[:3] + ":" + when.strftime("%z")[3:]
    try:
        expected = _open(str(stored), key, stamp, file, "sops.mac")
    except SopsError:
        raise SopsError(file, "mac", "its MAC does not decrypt: the sops metadata was changed outside sops") from None
    if not hmac.compare_digest(str(expected), mac.hexdigest().upper()):
        raise SopsError(file, "mac", "its MAC does not match its values: a value was changed, swapped or removed outside sops")
    return out


def _walk(node: Any, path: list[str], rules: _Rules, key: bytes, mac: Any, file: str, secrets: list[str]) -> Any:
    if isinstance(node, (dict, Pairs)):
        done = Pairs()
        for k, v in _pairs(node):
            if isinstance(k, Comment):
                done.append((_comment(k, path, rules, key, file), None))
                continue
            if not isinstance(k, str):
                raise SopsError(file, "format", f"{':'.join([*path, str(k)])}: a key that is no string")
            done.append((k, _walk(v, [*path, k], rules, key, mac, file, secrets)))
        if isinstance(node, Pairs):
            return done
        node.clear()  # in place: a yamlsrc.Node keeps its lines
        node.update(done)
        return node
    if isinstance(node, list):
        for i, item in enumerate(node):
            node[i] = _walk(item, path, rules, key, mac, file, secrets)
        return node
    if node is None:
        return None
    encrypted = rules.encrypted(path)
    where = ":".join(path)
    if encrypted:
        if not isinstance(node, str):
            raise SopsError(file, "decrypt", f"{where}: should be encrypted and is a {type(node).__name__}: the file was edited outside sops")
        value = _open(node, key, where + ":", file, where)
        if isinstance(value, Comment):
            raise SopsError(file, "decrypt", f"{where}: holds an encrypted comment where a value belongs")
        if value != "" and not isinstance(value, bool):
            secrets.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else _scalar(value))
    else:
        value = node
    if not rules.mac_only_encrypted or encrypted:
        mac.update(_to_bytes(value))
    return value


def _comment(c: Comment, path: list[str], rules: _Rules, key: bytes, file: str) -> Comment:
    """An encrypted comment (sops keeps one that does not decrypt as it is, as written by older sops)."""
    if not rules.encrypted(path) or not ENC_RE.match(c.text.strip()):
        return c
    try:
        got = _open(c.text.strip(), key, ":".join(path) + ":", file, "a comment")
    except SopsError:
        return c
    return got if isinstance(got, Comment) else Comment(str(got))


# -- printing ---------------------------------------------------------------------------------

def _plain(node: Any) -> Any:
    if isinstance(node, Pairs):
        return {k: _plain(v) for k, v in node if not isinstance(k, Comment)}
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items() if not isinstance(k, Comment)}
    if isinstance(node, list):
        return [_plain(v) for v in node if not isinstance(v, Comment)]
    return node


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, as sops prints them."""


_Dumper.add_representer(str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|" if "\n" in v else None))


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return _go_float(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "surrogateescape")
    return "" if v is None else str(v)


def _render(fmt: str, trees: list[Any]) -> bytes:
    if fmt == "binary":
        data = trees[0].get("data", "") if trees and isinstance(trees[0], dict) else ""
        return data if isinstance(data, bytes) else str(data).encode("utf-8", "surrogateescape")
    if fmt == "json":
        return (json.dumps(_plain(trees[0]), indent=4, ensure_ascii=False) + "\n").encode()
    if fmt == "yaml":
        return yaml.dump_all([_plain(t) for t in trees], Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False).encode()
    lines: list[str] = []
    if fmt == "dotenv":
        for k, v in trees[0]:
            if isinstance(k, Comment):
                lines.append(f"#{k.text}")
            else:
                lines.append(f"{k}=" + (v.replace("\n", "\\n") if isinstance(v, str) else _scalar(v)))
        return "".join(line + "\n" for line in lines).encode()
    for name, items in trees[0]:
        if isinstance(name, Comment) or (name == "DEFAULT" and not items):
            continue
        block = [f"; {k.text}" for k, _ in items[:1] if isinstance(k, Comment)]
        block.append(f"[{name}]")
        for k, v in items:
            if isinstance(k, Comment):
                continue
            block.append(f"{k} = {_scalar(v)}")
        lines.append("\n".join(block))
    return ("\n\n".join(lines) + "\n").encode()


def leaves(tree: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every value of a decrypted tree with its path (list items under their list's path)."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            if not isinstance(k, Comment):
                yield from leaves(v, (*path, str(k)))
    elif isinstance(tree, Pairs):
        for k, v in tree:
            if not isinstance(k, Comment):
                yield from leaves(v, (*path, str(k)))
    elif isinstance(tree, list):
        for v in tree:
            yield from leaves(v, path)
    else:
        yield path, tree
