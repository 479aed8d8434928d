"""Load and validate manifests: all or nothing, every problem as ``file:line: key: message``.

Pure: it takes file contents (path -> bytes), never reads the disk itself, so
that a git tree, a folder and a test table all load the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import kinds, yamlsrc
from .config import PolicySettings
from .errors import ManifestError, Problem
from .fields import LABEL_KEY_RE, NAME_RE, Ctx, Obj, read_str, read_str_map, shown
from .models import DesiredState, Origin
from .policy import check as policy_check

API_VERSION = "gitsync.io/v1"
MAX_FILE_BYTES = 1024 * 1024
MAX_TOTAL_BYTES = 32 * 1024 * 1024
MAX_FILES = 2000


def is_manifest_file(path: str) -> bool:
    parts = path.split("/")
    if any(p.startswith(".") for p in parts):
        return False
    return path.endswith((".yaml", ".yml"))


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
    if name is not None and (not NAME_RE.match(name) or len(name) > 63):
        ctx.add(meta.line_of("name"), "metadata.name", f"{shown(name)} is not a valid name: lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63 characters")
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
    top.finish()
    if known is None:
        return None  # the spec of an unknown kind has no rules to check
    # the spec is checked even when the header is wrong: every problem of a document in one run
    obj = known.parse(ctx, kinds.Header(name or "", labels, meta, spec_node, top.line_of("spec"), Origin(ctx.file, line)))
    return (known, obj) if obj is not None and name is not None and api == API_VERSION else None


class Unreadable(bytes):
    """A manifest file that was not read, and why (a link, too large): load_files reports it by name."""

    why: str

    def __new__(cls, why: str) -> "Unreadable":
        obj = super().__new__(cls, b"")
        obj.why = why
        return obj


def too_large(size: int) -> Unreadable:
    return Unreadable(f"file is {size} bytes; manifests may be at most {MAX_FILE_BYTES} bytes")


NOT_READ = Unreadable("not read: there are too many manifest files")
LINK = "is a symbolic link; gitsync reads only regular files of the repository (commit the file itself)"


def load_files(files: Mapping[str, bytes], policy: PolicySettings = PolicySettings()) -> DesiredState:
    """Validate every manifest, and what they ask of the hosts against the agent's policy (the safe
    default unless given); return the desired state or raise ManifestError with every problem."""
    problems: list[Problem] = []
    objects: dict[str, list[Any]] = {k.name: [] for k in kinds.ordered()}
    manifest_files = sorted(p for p in files if is_manifest_file(p))
    if len(manifest_files) > MAX_FILES:
        raise ManifestError([Problem(".", None, f"{len(manifest_files)} manifest files; at most {MAX_FILES} are read")])
    total = 0
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
        ctx = Ctx(path, problems)
        for line, doc in docs:
            got = _document(ctx, doc, line)
            if got is not None:
                objects[got[0].name].append(got[1])
    for kind in kinds.ordered():
        _check_unique(kind.name, objects[kind.name], problems)
        kind.check(objects[kind.name], problems, objects)
    desired = DesiredState({name: tuple(sorted(objs, key=lambda o: o.name)) for name, objs in objects.items()})
    problems.extend(policy_check(desired, policy))
    if problems:
        raise ManifestError(sorted(set(problems), key=lambda p: (p.file, p.line or 0, p.message)))
    return desired


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


def read_folder(root: str, reader: Callable[[str], bytes] | None = None) -> dict[str, bytes]:
    """Manifest files under a folder on disk, by path relative to it (hidden folders skipped)."""
    import os

    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            rel = os.path.relpath(os.path.join(dirpath, fn), root).replace(os.sep, "/")
            if not is_manifest_file(rel):
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
            with open(full, "rb") as fh:
                out[rel] = reader(full) if reader else fh.read()
    return out
