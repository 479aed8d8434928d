"""``spec.files``: files of the repository mounted read-only into every replica of a Deployment
(configuration: an nginx.conf, a folder of rules). Each entry names one file or folder of the
repository (``source``, relative to the manifest's folder, never out of the repository) or gives
the content inline (``content``), and where it appears in the container (``mountPath``)."""

from __future__ import annotations

import hashlib
from typing import Any

from ..core.fields import Ctx, Obj, path_problem, read_int, read_list, read_str, shown
from ..core.models import FileMount
from ..core.repofiles import RepoFiles, Unreadable, inside

DEFAULT_MODE = 0o444  # as compose's configs: readable by anyone in the container, written by no one
MAX_FILES_PER_MOUNT = 500


def read_files(ctx: Ctx, spec: Obj, taken: set[str]) -> tuple[FileMount, ...]:
    """The spec's `files`, each read from the revision; `taken` are the mount paths of its volumes."""
    out: list[FileMount] = []
    repo: RepoFiles = ctx.repo if isinstance(ctx.repo, RepoFiles) else RepoFiles()
    folder = ctx.file.rpartition("/")[0]
    for line, path, item in read_list(ctx, spec, "files"):
        f = Obj(ctx, item, path, line)
        if not f.ok:
            continue
        source = read_str(ctx, f, "source")
        content = read_str(ctx, f, "content")
        mount = read_str(ctx, f, "mountPath", required=True)
        mode = read_int(ctx, f, "mode", None, 0, 0o777)
        f.finish()
        if (source is None) == (content is None):
            ctx.add(line, path, "give either source (a file or folder of the repository) or content (the file's text)")
            continue
        if mount is None:
            continue
        if why := path_problem(mount):
            ctx.add(f.line_of("mountPath"), f"{path}.mountPath", f"{shown(mount)} {why}")
            continue
        if mount in taken:
            ctx.add(f.line_of("mountPath"), f"{path}.mountPath", f"{mount} is mounted twice")
            continue
        entries, is_folder = _entries(ctx, repo, folder, source, content, mode, f.line_of("source"), f"{path}.source")
        if entries is None:
            continue
        taken.add(mount)
        out.append(FileMount(mount, _digest(entries, is_folder), is_folder, entries, source or "", line))
    return tuple(out)


def _entries(ctx: Ctx, repo: RepoFiles, folder: str, source: str | None, content: str | None, mode: int | None,
             line: int, path: str) -> tuple[tuple[tuple[str, bytes, int], ...] | None, bool]:
    if content is not None:
        return (("", content.encode(), DEFAULT_MODE if mode is None else mode),), False
    assert source is not None
    full = inside(folder, source)
    if full is None or full == "":
        ctx.add(line, path, f"{shown(source)} is outside the repository (or the repository itself): name a file or folder in it")
        return None, False
    kind = repo.kind(full)
    if kind == "folder":
        found = repo.folder(full)
        if isinstance(found, Unreadable):
            ctx.add(line, path, f"{source}: {found.why}")
            return None, True
        bad = [(name, data.why) for name, data in sorted(found.items()) if isinstance(data, Unreadable)]
        for name, why in bad[:5]:
            ctx.add(line, path, f"{source}/{name}: {why}")
        if bad:
            return None, True
        if len(found) > MAX_FILES_PER_MOUNT:
            ctx.add(line, path, f"{source} holds {len(found)} files; a folder mounted from the repository may hold at most {MAX_FILES_PER_MOUNT}")
            return None, True
        return tuple((name, bytes(data), DEFAULT_MODE if mode is None else mode) for name, data in sorted(found.items())), True
    data = repo.file(full)
    if isinstance(data, Unreadable):
        ctx.add(line, path, f"{source}: {data.why}" + (f" (looked for {full})" if data.why == "not in the repository" else ""))
        return None, False
    return (("", bytes(data), DEFAULT_MODE if mode is None else mode),), False


def _digest(entries: tuple[tuple[str, bytes, int], ...], folder: bool) -> str:
    h = hashlib.sha256(b"folder\0" if folder else b"file\0")
    for name, data, mode in entries:
        h.update(f"{name}\0{mode:o}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def mount_paths(*groups: Any) -> set[str]:
    return {m.mount_path for g in groups for m in g}
