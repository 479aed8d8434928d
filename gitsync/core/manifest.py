"""Load and validate manifests: all or nothing, every problem as ``file:line: key: message``.

Pure: it takes file contents (path -> bytes), never reads the disk itself, so
that a git tree, a folder and a test table all load the same way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import compose
from .. import kinds
from ..adapters import sops
from . import yamlsrc
from .config import PolicySettings
from .errors import ManifestError, Problem
from .fields import LABEL_KEY_RE, Ctx, Obj, read_str, read_str_map, shown
from .models import Deployment, DesiredState, Origin, Secret, Volume
from ..kinds.secret import bind as bind_secrets
from .policy import check as policy_check
from .secrets import SecretReader, is_encrypted
from .repofiles import LINK, MAX_FILE_BYTES, MAX_FILES, MAX_TOTAL_BYTES, NOT_READ, TOO_MUCH, Budget, DiskTree, RepoFiles, Unreadable, too_large  # noqa: F401  (re-exported)

API_VERSION = "gitsync.io/v1"
MAX_OBJECTS = 5000  # deployments, services and volumes, all told
MAX_TOTAL_REPLICAS = 10_000  # a fleet of a few hundred hosts; each deployment has at most MAX_REPLICAS


def is_manifest_file(path: str) -> bool:
    parts = path.split("/")
    if any(p.startswith(".") for p in parts):
        return False
    return path.endswith((".yaml", ".yml")) and not compose.is_compose_file(path) and not compose.is_override_file(path)


def is_source_file(path: str) -> bool:
    """What a sync reads of the repository: manifests, compose files and the env files they use."""
    compose_file = compose.is_compose_file(path) or compose.is_override_file(path)
    return is_manifest_file(path) or compose.is_env_file(path) or (compose_file and not any(p.startswith(".") for p in path.split("/")))


def _document(ctx: Ctx, doc: Any, line: int) -> tuple[kinds.Kind, Any] | None:
    if doc is None:
        return None
    top = Obj(ctx, doc, "", line)
    if not top.ok:
        return None
    api = top.get("apiVersion", None, required=True)
    kind = top.get("kind", None, required=True)
    if api is not None and api != API_VERSION:
        ctx.add(top.line_of("apiVersion"), "apiVersion", f"{shown(api)} is not supported; use {API_VERSION}")
    known = kinds.REGISTRY.get(kind) if isinstance(kind, str) else None
    if kind is not None and known is None:
        ctx.add(top.line_of("kind"), "kind", f"{shown(kind)} is not one of {', '.join(kinds.names())}")
    meta = Obj(ctx, top.get("metadata", None, required=True), "metadata", top.line_of("metadata"))
    name = read_str(ctx, meta, "name", required=meta.ok)
    rules = known or kinds.Kind()
    if name is not None and not rules.valid_name(name):
        ctx.add(meta.line_of("name"), "metadata.name", f"{shown(name)} is not a valid name: {rules.name_rule}, at most 63 characters")
        name = None
    labels = read_str_map(ctx, meta, "labels", LABEL_KEY_RE, "label")
    label_lines = meta.get("labels", None)
    for k, _ in labels:
        if k.startswith("io.gitsync."):
            at = label_lines.line_of(k) if isinstance(label_lines, yamlsrc.Node) else meta.line_of("labels")
            ctx.add(at, f"metadata.labels.{k}", "the io.gitsync. prefix is reserved for gitsync's own labels")
    meta.get("annotations", None)
    meta.finish()
    spec_node = top.get("spec", None)
    body = {k: top.get(k, None) for k in rules.top_keys if k in top.node}
    top.finish()
    if known is None:
        return None  # the spec of an unknown kind has no rules to check
    # the spec is checked even when the header is wrong: every problem of a document in one run
    head = kinds.Header(name or "", labels, meta, spec_node, top.line_of("spec"), Origin(ctx.file, line), body, {k: top.line_of(k) for k in body})
    obj = known.parse(ctx, head)
    return (known, obj) if obj is not None and name is not None and api == API_VERSION else None




def load_files(
    files: Mapping[str, bytes], policy: PolicySettings = PolicySettings(), variables: Mapping[str, str] = {}, profiles: frozenset[str] = frozenset(),
    secrets: SecretReader | None = None,
) -> DesiredState:
    """Validate every manifest and compose project (interpolated from `variables` and each project's
    .env; services of `profiles` enabled), and what they ask of the hosts against the agent's policy
    (the safe default unless given); SOPS files decrypted with `secrets` (none: no keys, no plain
    text); return the desired state or raise ManifestError with every problem."""
    files = files if isinstance(files, RepoFiles) else RepoFiles(files)
    secrets = secrets if secrets is not None else SecretReader()
    problems: list[Problem] = []
    warnings: list[str] = []
    objects: dict[str, list[Any]] = {k.name: [] for k in kinds.ordered()}
    manifest_files = sorted(p for p in files if is_manifest_file(p) or compose.is_compose_file(p))
    if len(manifest_files) > MAX_FILES:
        raise ManifestError([Problem(".", None, f"{len(manifest_files)} manifest files; at most {MAX_FILES} are read")])
    includes = {p: compose.included_files(p, files) for p in manifest_files if compose.is_compose_file(p)}
    named = {f for fs in includes.values() for f in fs}
    included: set[str] = set()
    todo = [f for p, fs in includes.items() if p not in named for f in fs]  # from the projects no file includes
    while todo:
        f = todo.pop()
        if f not in included:
            included.add(f)
            todo += compose.included_files(f, files) if f in files else []
    manifest_files = [p for p in manifest_files if p not in included]  # part of the project that includes them
    folders = defaultdict(list)
    for path in manifest_files:
        if compose.is_compose_file(path):
            folders[path.rpartition("/")[0]].append(path)
    for found in folders.values():
        if len(found) > 1:
            problems.append(Problem(found[1], None, f"a folder holds one compose project; {found[0]} is there too: keep one of them"))
    overrides: dict[str, str] = {}  # compose file -> the override file beside it
    for path in sorted(p for p in files if compose.is_override_file(p) and is_source_file(p)):
        folder = path.rpartition("/")[0]
        if not folders.get(folder):
            problems.append(Problem(path, None, f"an override file, and {folder or 'the top folder'} has no compose file for it to override (compose.yaml)"))
        elif folders[folder][0] in overrides:
            problems.append(Problem(path, None, f"{overrides[folders[folder][0]]} is there too: docker compose reads only one override file; keep one of them"))
        else:
            overrides[folders[folder][0]] = path
    total = 0
    unopened: set[str] = set()  # Secrets in files that did not decrypt
    for path in manifest_files:
        data = files[path]
        if isinstance(data, Unreadable):
            problems.append(Problem(path, None, data.why))
            continue
        total += len(data)
        if len(data) > MAX_FILE_BYTES:
            problems.append(Problem(path, None, f"file is {len(data)} bytes; manifests may be at most {MAX_FILE_BYTES} bytes"))
            continue
        if total > MAX_TOTAL_BYTES:
            problems.append(Problem(path, None, f"manifests add up to more than {MAX_TOTAL_BYTES} bytes"))
            break
        if compose.is_compose_file(path):
            warnings += _compose_documents(path, overrides.get(path), files, variables, profiles, problems, objects, secrets)
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(path, None, f"not UTF-8 text (byte {exc.start})"))
            continue
        try:
            docs = yamlsrc.load_all(text)
        except yamlsrc.YamlSyntaxError as exc:
            problems.append(Problem(path, exc.line, exc.message))
            continue
        ctx = Ctx(path, problems, files, secrets, is_encrypted([d for _, d in docs]))
        if ctx.encrypted and not any(isinstance(d, dict) and "kind" in d for _, d in docs):
            continue  # sops-encrypted data, no manifest (a compose secret's file): read where it is used
        if ctx.encrypted:
            try:
                secrets.open_documents(path, [d for _, d in docs])
            except sops.SopsError as exc:
                problems.append(Problem(path, None, exc.why))
                unopened.update(_secret_names(d for _, d in docs))  # their users are not told "no Secret" on top
                continue
        for line, doc in docs:
            got = _document(ctx, doc, line)
            if got is not None:
                objects[got[0].name].append(got[1])
    for path, data in sorted(files.items()):  # an env file that was not read is a problem too, never an empty file
        if isinstance(data, Unreadable) and path not in manifest_files:
            problems.append(Problem(path, None, data.why))
    if _too_much(objects, problems):
        raise ManifestError(problems)  # nothing more is built from so much: no plan is made of it
    objects[Deployment.KIND] = bind_secrets(objects[Deployment.KIND], objects[Secret.KIND], secrets, problems, unopened)
    for kind in kinds.ordered():
        _check_unique(kind.name, objects[kind.name], problems)
        kind.check(objects[kind.name], problems, objects)
        warnings += kind.warnings(objects[kind.name])
    desired = DesiredState({name: tuple(sorted(objs, key=lambda o: o.name)) for name, objs in objects.items()}, tuple(warnings))
    problems.extend(policy_check(desired, policy))
    if problems:
        # a compose file's problems in its own words (stop_signal, not spec.stopSignal)
        problems = [Problem(*compose.where(p.file, overrides.get(p.file), p.line), compose.compose_words(p.message)) if compose.is_compose_file(p.file) or compose.is_override_file(p.file) else p for p in problems]
        raise ManifestError(sorted(set(problems), key=lambda p: (p.file, p.line or 0, p.message)))
    return desired


def _secret_names(docs: Any) -> set[str]:
    return {str(d["metadata"].get("name")) for d in docs if isinstance(d, dict) and d.get("kind") == Secret.KIND and isinstance(d.get("metadata"), dict)}


@dataclass
class _ComposeCtx(Ctx):
    """Problems of a document mapped from a compose file, located at the compose key."""

    prefix: str = ""

    def add(self, line: int | None, path: str, message: str) -> None:
        super().add(line, compose.compose_words(path, self.prefix), message)


def _compose_documents(
    path: str, override: str | None, files: Mapping[str, bytes], variables: Mapping[str, str], profiles: frozenset[str],
    problems: list[Problem], objects: dict[str, list[Any]], secrets: SecretReader,
) -> list[str]:
    """The compose file's documents (its override merged) into `objects`, its problems into `problems`; its warnings."""
    loaded = compose.load_project(path, files, variables, profiles, override)
    problems.extend(loaded.problems)
    if loaded.problems:
        return []
    for doc in loaded.docs:
        where = f"volumes.{doc.name}" if doc.kind == Volume.KIND else f"services.{doc.name}"
        ctx = _ComposeCtx(doc.file or path, problems, files, secrets, prefix=f"{where}.")
        kind = kinds.REGISTRY[doc.kind]
        if not kind.valid_name(doc.name):
            ctx.add(doc.line, where, f"{doc.name!r} cannot name a {doc.kind}: {kind.name_rule}, at most 63 characters; rename it")
            continue
        for k in doc.labels:
            if not LABEL_KEY_RE.match(k) or k.startswith("io.gitsync."):
                ctx.add(doc.label_lines.get(k, doc.line), f"{where}.labels.{k}", "is not a valid label name (the io.gitsync. prefix is reserved)")
        head = kinds.Header(doc.name, tuple(sorted(doc.labels.items())), Obj(ctx, {}, "metadata", doc.line), doc.spec, doc.line, Origin(doc.file or path, doc.line))
        obj = kind.parse(ctx, head)
        if obj is not None:
            objects[kind.name].append(obj)
    return loaded.warnings


def _too_much(objects: Mapping[str, list[Any]], problems: list[Problem]) -> bool:
    """Whether the desired state is larger than an agent plans: each bound is checked before any
    plan is made, so a small file cannot ask for work without end (a problem names where it tips)."""
    every = [o for objs in objects.values() for o in objs]
    if len(every) > MAX_OBJECTS:
        o = every[MAX_OBJECTS]
        problems.append(Problem(o.origin.file if o.origin else "?", o.origin.line if o.origin else None,
                                f"{len(every)} objects (deployments, services, volumes); one agent plans at most {MAX_OBJECTS}: split the fleet over agents"))
        return True
    total = 0
    for d in objects.get(Deployment.KIND, ()):
        total += d.replicas
        if total > MAX_TOTAL_REPLICAS:
            problems.append(Problem(d.origin.file if d.origin else "?", d.options.lines.get("spec.replicas") or (d.origin.line if d.origin else None),
                                    f"{d.name}: replicas add up to more than {MAX_TOTAL_REPLICAS} here; one agent runs at most {MAX_TOTAL_REPLICAS}: split the fleet over agents"))
            return True
    return False


def _check_unique(kind: str, objects: list[Any], problems: list[Problem]) -> None:
    seen: dict[str, Origin | None] = {}
    for obj in objects:
        if obj.name in seen:
            origin = obj.origin
            problems.append(
                Problem(origin.file if origin else "?", origin.line if origin else None, f"{kind} {obj.name!r} is declared twice (first at {seen[obj.name]})")
            )
        else:
            seen[obj.name] = obj.origin


def read_folder(root: str, reader: Callable[[str], bytes] | None = None) -> RepoFiles:
    """Manifest files under a folder on disk, by path relative to it (hidden folders skipped); the
    others there read when they are named (env files, files mounted into replicas)."""
    import os

    out: dict[str, bytes] = {}
    budget = Budget()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            rel = os.path.relpath(os.path.join(dirpath, fn), root).replace(os.sep, "/")
            if not is_source_file(rel):
                continue
            full = os.path.join(dirpath, fn)
            if len(out) >= MAX_FILES:
                out[rel] = NOT_READ  # counted, so that the refusal says how many there are
                continue
            if os.path.islink(full):  # never read outside the repository, nor follow a dangling link
                out[rel] = Unreadable(LINK)
                continue
            size = os.path.getsize(full)
            if size > MAX_FILE_BYTES:
                out[rel] = too_large(size)  # reported by load_files, never read whole
                continue
            if not budget.take(size):
                out[rel] = TOO_MUCH
                continue
            with open(full, "rb") as fh:
                out[rel] = reader(full) if reader else fh.read()
    return RepoFiles(out, DiskTree(root), budget)
