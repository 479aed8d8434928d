"""The Secret kind, and how deployments use secrets.

A Secret holds named values (``stringData``: text, ``data``: base64), encrypted in Git with sops
(plain text only with ``secrets.allowPlaintext``). A deployment uses them as files (``spec.secrets``:
one key as a file, or every key as a folder) or, when the image wants it so, as environment variables
(``env: {X: {secretKeyRef: {name, key}}}``). Values are `Sealed`: the plan names the secret, never the
value, and a changed value rolls exactly the deployments that use it. A compose file's ``secrets:``
come as files of the repository (decrypted when sops encrypted them) or values of the environment."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..adapters import sops
from ..core.errors import Problem
from ..core.fields import ENV_KEY_RE, Ctx, Obj, path_problem, read_int, read_list, read_str, shown
from ..core.models import Deployment, FileMount, Sealed, Secret, SecretRef
from ..core.repofiles import RepoFiles, Unreadable, inside
from ..core.secrets import SecretReader
from . import Header, Kind, register

KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")  # Kubernetes' rule for a Secret's keys: they become file names
SECRETS_DIR = "/run/secrets"  # where compose (and Swarm) put them; the default here too
DEFAULT_MODE = 0o400
PLAINTEXT = ("is plain text in Git: encrypt it with sops (sops encrypt --age <the agent's recipient> -i <file>; for a Secret manifest "
             "add --encrypted-regex '^(data|stringData)$'), or set secrets.allowPlaintext: true in the agent's configuration")


def reader_of(ctx: Ctx) -> SecretReader:
    return ctx.secrets if isinstance(ctx.secrets, SecretReader) else SecretReader()


class SecretKind(Kind):
    name = Secret.KIND
    order = 5
    top_keys = ("stringData", "data", "type")  # no spec: a Secret is its values, as in Kubernetes

    def parse(self, ctx: Ctx, head: Header) -> Secret | None:
        reader = reader_of(ctx)
        before = len(ctx.problems)
        values: dict[str, Sealed] = {}
        if head.spec is not None:
            ctx.add(head.spec_line, "spec", "a Secret has no spec: its values go under stringData (text) or data (base64)")
        kind = head.body.get("type")
        if kind is not None and kind not in ("Opaque",):
            ctx.add(head.body_lines.get("type"), "type", f"{shown(kind)}: gitsync's Secrets are Opaque (any keys and values)")
        for key in ("stringData", "data"):
            node = head.body.get(key)
            if node is None:
                continue
            if not isinstance(node, dict):
                ctx.add(head.body_lines.get(key), key, "must be a mapping of keys to values")
                continue
            for k, v in node.items():
                line = node.line_of(k) if hasattr(node, "line_of") else head.body_lines.get(key)
                if not isinstance(k, str) or not KEY_RE.match(k) or len(k) > 253:
                    ctx.add(line, f"{key}.{k}", "is not a valid key: letters, digits, '-', '_' and '.' (it may become a file name)")
                    continue
                if k in values:
                    ctx.add(line, f"{key}.{k}", "is given in both stringData and data")
                    continue
                if isinstance(v, Sealed):
                    values[k] = v
                    continue
                if ctx.encrypted:  # a value sops left in the clear (outside its encrypted_regex)
                    ctx.add(line, f"{key}.{k}", "is not encrypted in this sops file: encrypt the Secret's values (--encrypted-regex '^(data|stringData)$')")
                    continue
                if v is None or isinstance(v, (dict, list)):
                    ctx.add(line, f"{key}.{k}", "must be a string")
                    continue
                raw = sops._scalar(v).encode()
                if key == "data":
                    import base64
                    import binascii

                    try:
                        raw = base64.b64decode(raw, validate=True)
                    except (binascii.Error, ValueError):
                        ctx.add(line, f"{key}.{k}", "is no base64 (put text under stringData)")
                        continue
                values[k] = reader.seal(raw, f"{head.name}/{k}")
        if not ctx.encrypted and not reader.allow_plaintext:
            ctx.add(head.origin.line, f"Secret {head.name}", PLAINTEXT)
        if not values and len(ctx.problems) == before:
            ctx.add(head.origin.line, f"Secret {head.name}", "has no values: give stringData (text) or data (base64)")
        if len(ctx.problems) != before:
            return None
        return Secret(head.name, values, ctx.encrypted, head.origin)

    def warnings(self, objects: Sequence[Any]) -> list[str]:
        return [f"{s.origin.file if s.origin else '?'}: Secret {s.name} is plain text in Git (secrets.allowPlaintext is set); encrypt it with sops"
                for s in objects if not s.encrypted]


register(SecretKind())


# -- a deployment's uses ----------------------------------------------------------------------

def read_secret_env(ctx: Ctx, spec: Obj) -> tuple[Any, list[SecretRef]]:
    """Split `env` into its plain values (returned as a mapping to read as before) and its
    secretKeyRef entries."""
    env = spec.node.get("env")
    refs: list[SecretRef] = []
    if not isinstance(env, dict):
        return env, refs
    plain = type(env)() if callable(type(env)) else {}
    if hasattr(env, "lines"):
        plain.lines = dict(env.lines)  # type: ignore[attr-defined]
        plain.line = env.line  # type: ignore[attr-defined]
    for k, v in env.items():
        if not (isinstance(v, dict) and "secretKeyRef" in v):
            plain[k] = v
            continue
        line = env.line_of(k) if hasattr(env, "line_of") else spec.line_of("env")
        at = f"spec.env.{k}"
        if not isinstance(k, str) or not ENV_KEY_RE.match(k):
            ctx.add(line, at, "is not a valid environment variable name")
            continue
        ref = Obj(ctx, v.get("secretKeyRef"), f"{at}.secretKeyRef", line)
        outer = Obj(ctx, v, at, line)
        outer.get("secretKeyRef", None)
        outer.finish()
        if not ref.ok:
            continue
        name = read_str(ctx, ref, "name", required=True)
        key = read_str(ctx, ref, "key", required=True)
        ref.finish()
        if name and key:
            refs.append(SecretRef(name, key, env=k, line=line, at=at))
    return plain, refs


def read_secret_files(ctx: Ctx, spec: Obj, taken: set[str]) -> tuple[list[FileMount], list[SecretRef]]:
    """`spec.secrets`: each a Secret's key as a file (or all its keys as a folder), or (from compose) a
    file of the repository or a value of the environment. Those resolve now; Secrets' when bound."""
    reader = reader_of(ctx)
    mounts: list[FileMount] = []
    refs: list[SecretRef] = []
    for line, at, item in read_list(ctx, spec, "secrets"):
        s = Obj(ctx, item, at, line)
        if not s.ok:
            continue
        name = read_str(ctx, s, "name", required=True)
        key = read_str(ctx, s, "key")
        path = read_str(ctx, s, "path")
        source = read_str(ctx, s, "file")
        sealed = s.get("content", None)
        mode = read_int(ctx, s, "mode", DEFAULT_MODE, 0, 0o777)
        uid = read_int(ctx, s, "uid", None, 0, 2**31 - 1)
        gid = read_int(ctx, s, "gid", None, 0, 2**31 - 1)
        s.finish()
        if name is None:
            continue
        if sealed is not None and not isinstance(sealed, Sealed):
            ctx.add(s.line_of("content"), f"{at}.content", "is not a key of spec.secrets: name a Secret (name, key) or a file")
            continue
        if key is not None and not KEY_RE.match(key):
            ctx.add(s.line_of("key"), f"{at}.key", f"{shown(key)} is not a valid key of a Secret")
            continue
        target = path or (f"{SECRETS_DIR}/{name}/{key}" if key and source is None and sealed is None else f"{SECRETS_DIR}/{name}")
        if why := path_problem(target):
            ctx.add(s.line_of("path"), f"{at}.path", f"{shown(target)} {why}")
            continue
        if target in taken:
            ctx.add(s.line_of("path") if path else line, f"{at}.path", f"{target} is mounted twice")
            continue
        taken.add(target)
        owner = (uid or 0, gid or 0) if uid is not None or gid is not None else None
        if isinstance(sealed, Sealed):  # a value of the environment (compose): sealed here, with the reader's key
            sealed = sealed if sealed.digest else reader.seal(sealed.reveal(), name)
            mounts.append(secret_mount(reader, target, {"": sealed}, mode or 0, owner, line, name))
        elif source is not None:
            got = _repository_secret(ctx, reader, source, name, s.line_of("file"), f"{at}.file")
            if got is not None:
                mounts.append(secret_mount(reader, target, {"": got}, mode or 0, owner, line, name))
        else:
            refs.append(SecretRef(name, key, path=target, mode=mode or 0, owner=owner, line=line, at=at))
    return mounts, refs


def _repository_secret(ctx: Ctx, reader: SecretReader, source: str, name: str, line: int, at: str) -> Sealed | None:
    """A file of the repository as a secret: decrypted, in its own format, when sops encrypted it."""
    repo = ctx.repo if isinstance(ctx.repo, RepoFiles) else RepoFiles()
    full = inside(ctx.file.rpartition("/")[0], source)
    data = repo.file(full) if full else Unreadable("is outside the repository: name a file in it")
    if isinstance(data, Unreadable):
        ctx.add(line, at, f"{source}: {data.why}")
        return None
    data = bytes(data)
    fmt = sops.sniff(data)
    if fmt is None:
        if not reader.allow_plaintext:
            ctx.add(line, at, f"{source} {PLAINTEXT}")
            return None
        return reader.seal(data, name)
    fingerprint = "file:" + hashlib.sha256(data).hexdigest()
    if not reader.decrypt:
        return reader.stand_in(fingerprint, name)
    try:
        plain = sops.decrypt(data, full or source, reader.keys, fmt).render()
    except sops.SopsError as exc:
        ctx.add(line, at, exc.why if exc.file == (full or source) else str(exc))
        return None
    return reader.seal(plain, name, fingerprint)


def secret_mount(reader: SecretReader, target: str, values: Mapping[str, Sealed], mode: int, owner: tuple[int, int] | None,
                 line: int, name: str) -> FileMount:
    """A file (values keyed "") or a folder of them; the digest keyed, over what the files are."""
    parts = [b"secret-folder" if "" not in values else b"secret-file", oct(mode).encode(), repr(owner).encode()]
    for k in sorted(values):
        parts += [k.encode(), values[k].digest.encode()]
    return FileMount(target, reader.keys.digest(*parts), "" not in values, tuple((k, values[k], mode) for k in sorted(values)), "", line,
                     secret=name, owner=owner)


def bind(deployments: Sequence[Deployment], secrets: Sequence[Secret], reader: SecretReader, problems: list[Problem],
         unopened: set[str] = set()) -> list[Deployment]:
    """Each deployment with the Secrets it names filled in: files and environment variables (`unopened`:
    Secrets whose file did not decrypt, a problem of its own already)."""
    by_name = {s.name: s for s in secrets}
    out = []
    for d in deployments:
        if not d.secret_refs:
            out.append(d)
            continue
        files, env, ok = list(d.options.files), list(d.options.secret_env), True
        for ref in d.secret_refs:
            file = d.origin.file if d.origin else "?"
            secret = by_name.get(ref.secret)
            if secret is None:
                ok = False
                if ref.secret in unopened:
                    continue
                problems.append(Problem(file, ref.line, f"{d.name}: {ref.at}: no Secret named {ref.secret}" + (f" (there are: {', '.join(sorted(by_name))})" if by_name else "")))
                ok = False
                continue
            if ref.key is not None and ref.key not in secret.values:
                problems.append(Problem(file, ref.line, f"{d.name}: {ref.at}: Secret {ref.secret} has no key {ref.key} (it has: {', '.join(sorted(secret.values))})"))
                ok = False
                continue
            label = f"{ref.secret}/{ref.key}" if ref.key else ref.secret
            if ref.env is not None:
                assert ref.key is not None
                env.append((ref.env, label, secret.values[ref.key]))
            else:
                assert ref.path is not None
                chosen = {"": secret.values[ref.key]} if ref.key else dict(secret.values)
                files.append(secret_mount(reader, ref.path, chosen, ref.mode, ref.owner, ref.line, label))
        # one that names a missing Secret stays (the load fails on its problem; others may depend on it)
        out.append(replace(d, options=replace(d.options, files=tuple(files), secret_env=tuple(sorted(env, key=lambda e: e[0]))), secret_refs=()) if ok else d)
    return out
