"""The repository's files at one revision, as a sync reads them: the manifests, compose and env
files at once, and any other file or folder a compose project or a manifest names (an env_file, a
configuration file mounted into replicas) when it is named. Every file read counts against one
budget per revision; symbolic links, paths out of the repository and oversized files are never
read: they come back as :class:`Unreadable`, which says why."""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterator, Mapping
from typing import Protocol

MAX_FILE_BYTES = 1024 * 1024
MAX_TOTAL_BYTES = 32 * 1024 * 1024
MAX_FILES = 2000
LINK = "is a symbolic link; gitsync reads only regular files of the repository (commit the file itself)"


class Unreadable(bytes):
    """A file that was not read, and why (a link, too large): whoever asked for it reports it by name."""

    why: str

    def __new__(cls, why: str) -> "Unreadable":
        obj = super().__new__(cls, b"")
        obj.why = why
        return obj


def too_large(size: int) -> Unreadable:
    return Unreadable(f"file is {size} bytes; files gitsync reads may be at most {MAX_FILE_BYTES} bytes")


NOT_READ = Unreadable("not read: there are too many manifest files")
TOO_MUCH = Unreadable(f"not read: the files gitsync reads (manifests, compose, env and mounted files) add up to more than {MAX_TOTAL_BYTES} bytes")
MISSING = Unreadable("not in the repository")


class Budget:
    """What may still be read of one revision: each file's size is known before its content is
    read, so the total is bounded before it is spent (a blob repeated under many names costs its
    size each time)."""

    def __init__(self) -> None:
        self.left = MAX_TOTAL_BYTES

    def take(self, size: int) -> bool:
        if size > self.left:
            return False
        self.left -= size
        return True


class Tree(Protocol):
    """Where the rest of a revision's files are: a git tree, or a folder on disk."""

    def entry(self, path: str) -> tuple[str, int] | None:
        """('file' | 'folder' | 'link', size) of a path inside the tree, or None."""

    def read(self, path: str) -> bytes: ...

    def below(self, folder: str) -> Iterator[str]:
        """Every path under `folder` (files and links; folders are walked, hidden ones too)."""


class RepoFiles(dict[str, bytes]):
    """The files read at once (a dict, by path), and :meth:`file` / :meth:`folder` for the others."""

    def __init__(self, eager: Mapping[str, bytes] = {}, tree: Tree | None = None, budget: Budget | None = None) -> None:
        super().__init__(eager)
        self._tree = tree if tree is not None else DictTree(eager)
        self._budget = budget or Budget()
        self._read: dict[str, bytes] = {}  # each path costs the budget once, however often it is asked for

    def file(self, path: str) -> bytes:
        """The file at `path` (relative to the source's root), or an Unreadable saying why not."""
        if path in self:
            return self[path]
        if path not in self._read:
            self._read[path] = self._file(path)
        return self._read[path]

    def folder(self, path: str) -> dict[str, bytes] | Unreadable:
        """Every file under the folder `path`, by path relative to it; an Unreadable for the folder
        itself when it is missing, a link or a file."""
        found = self._tree.entry(path) if self._tree is not None else None
        if found is None or found[0] != "folder":
            return Unreadable(LINK) if found and found[0] == "link" else MISSING if found is None else Unreadable("is a file, not a folder")
        assert self._tree is not None
        out: dict[str, bytes] = {}
        for sub in self._tree.below(path):
            if len(out) >= MAX_FILES:
                return Unreadable(f"holds more than {MAX_FILES} files")
            out[sub[len(path) + 1:] if path else sub] = self.file(sub)
        return out

    def kind(self, path: str) -> str | None:
        """'file', 'folder' or 'link' for what is at `path`, None when nothing is."""
        if path in self:
            return "file"
        found = self._tree.entry(path) if self._tree is not None else None
        return found[0] if found else None

    def _file(self, path: str) -> bytes:
        found = self._tree.entry(path) if self._tree is not None else None
        if found is None:
            return MISSING
        what, size = found
        if what == "link":
            return Unreadable(LINK)
        if what == "folder":
            return Unreadable("is a folder, not a file")
        if size > MAX_FILE_BYTES:
            return too_large(size)
        if not self._budget.take(size):
            return TOO_MUCH
        assert self._tree is not None
        return self._tree.read(path)


def inside(folder: str, path: str) -> str | None:
    """`path` (relative to `folder`, both inside the repository) as a path from the repository's
    root, or None when it leaves the repository or is absolute."""
    if path.startswith("/") or "\0" in path:
        return None
    joined = posixpath.normpath(posixpath.join(folder or ".", path))
    if joined == ".":
        return ""
    if joined.startswith("../") or joined == "..":
        return None
    return joined


class DictTree:
    """Files given as a mapping (a test's, a command line's): folders are the paths' prefixes."""

    def __init__(self, files: Mapping[str, bytes]) -> None:
        self.files = files

    def entry(self, path: str) -> tuple[str, int] | None:
        if path in self.files:
            return ("file", len(self.files[path]))
        return ("folder", 0) if any(p.startswith(f"{path}/") for p in self.files) or (path == "" and self.files) else None

    def read(self, path: str) -> bytes:
        return bytes(self.files[path])

    def below(self, folder: str) -> Iterator[str]:
        yield from sorted(p for p in self.files if p.startswith(f"{folder}/"))


class DiskTree:
    """A plain folder's other files: read at the moment they are asked for, never through a link."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def _full(self, path: str) -> str | None:
        full = os.path.join(self.root, *[p for p in path.split("/") if p])
        parent = os.path.dirname(full)
        if os.path.realpath(parent) != parent and full != self.root:  # a link on the way
            return None
        return full

    def entry(self, path: str) -> tuple[str, int] | None:
        full = self._full(path)
        if full is None:
            return ("link", 0)
        try:
            st = os.lstat(full)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return ("link", 0)
        if stat.S_ISDIR(st.st_mode):
            return ("folder", 0)
        return ("file", st.st_size) if stat.S_ISREG(st.st_mode) else ("link", 0)

    def read(self, path: str) -> bytes:
        full = self._full(path)
        assert full is not None
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            return fh.read(MAX_FILE_BYTES + 1)

    def below(self, folder: str) -> Iterator[str]:
        base = self._full(folder)
        if base is None:
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
                yield name if rel == "." else f"{rel}/{name}"
