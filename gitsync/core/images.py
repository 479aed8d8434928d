"""Image update policies: which tag of an image repository is the newest one a policy allows, and
which lines of the repository name that image.

A line belongs to a policy by a marker comment at its end, as Flux writes it:
``image: registry.example.com/acme/web:1.4.2 # {"$imagepolicy": "web"}``. Only the tag on a marked
line changes; the rest of the file stays byte for byte (no YAML round trip: that would reformat it).
The tags come from the registry (gitsync/adapters/registry.py); semantic versions are compared by `semver` (a range is npm's: `>=1.4.0 <2.0.0`, `||` between sets,
and a pre-release only where a comparator of the range names one of the same version).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import ImagePolicy

MARKER_RE = re.compile(r'#\s*\{\s*"\$imagepolicy"\s*:\s*"(?P<name>[^"]*)"\s*\}\s*$')
COMPARATOR_RE = re.compile(r"^(?P<op>>=|<=|>|<|==|=|!=|\^|~)?v?(?P<version>\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?)$")

# -- policies --------------------------------------------------------------------------------

def check_range(text: str) -> str | None:
    """Why a semver range is not one, or None."""
    sets = [s.split() for s in text.split("||")]
    if not text.strip() or any(not s for s in sets):
        return "is empty"
    bad = [c for s in sets for c in s if not COMPARATOR_RE.match(c)]
    return f"{bad[0]!r} is no comparator (>=1.4.0, <2.0.0, =1.4.2)" if bad else None


def _satisfies(version: object, text: str) -> bool:
    import semver

    assert isinstance(version, semver.Version)
    for comparators in (s.split() for s in text.split("||")):
        parsed = [pair for m in map(COMPARATOR_RE.match, comparators) if m for pair in _expand(m["op"] or "==", semver.Version.parse(m["version"]))]
        if not all(version.match(f"{'==' if op == '=' else op}{v}") for op, v in parsed):
            continue
        if version.prerelease and not any(v.prerelease and (v.major, v.minor, v.patch) == (version.major, version.minor, version.patch) for _, v in parsed):
            continue  # npm's rule: a pre-release only where the range names one of the same version
        return True
    return False


def _expand(op: str, v: Any) -> list[tuple[str, Any]]:
    """npm's shorthands as plain comparators: ^1.2.3 is >=1.2.3 <2.0.0 (^0.2.3: <0.3.0), ~1.2.3 is >=1.2.3 <1.3.0."""
    if op == "^":
        upper = v.bump_major() if v.major else v.bump_minor() if v.minor else v.bump_patch()
    elif op == "~":
        upper = v.bump_minor()
    else:
        return [(op, v)]
    return [(">=", v), ("<", upper.replace(prerelease=None, build=None))]


def choose(policy: ImagePolicy, tags: Sequence[str]) -> str | None:
    """The newest tag the policy allows, or None."""
    if policy.semver is not None:
        import semver

        found = []
        for tag in tags:
            try:
                v = semver.Version.parse(tag[1:] if tag.startswith("v") else tag)
            except ValueError:
                continue  # not a version: skipped
            if _satisfies(v, policy.semver):
                found.append((v, tag))
        return max(found)[1] if found else None
    if policy.regex is not None:
        pattern = re.compile(policy.regex)
        matched = [(m, t) for t in tags if (m := pattern.fullmatch(t))]
        if policy.order:
            numeric = [(int(m[policy.order]), t) for m, t in matched if (m[policy.order] or "").isdigit()]
            return max(numeric)[1] if numeric else None
        return max(t for _, t in matched) if matched else None
    ordered = sorted(tags)
    if not ordered:
        return None
    return ordered[-1] if policy.alphabetical == "asc" else ordered[0]


# -- the registry ----------------------------------------------------------------------------

def split_repository(repository: str) -> tuple[str, str]:
    """registry.example.com/acme/web -> (registry.example.com, acme/web); Docker Hub's short names too."""
    first, _, rest = repository.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return "registry-1.docker.io", repository if "/" in repository else f"library/{repository}"


# -- marked lines ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Marker:
    file: str
    line: int  # 1-based
    policy: str
    reference: str  # the image as the line names it (registry.example.com/acme/web:1.4.2)
    start: int  # its span in the line's text
    end: int


def find_markers(files: Mapping[str, bytes], policies: Mapping[str, ImagePolicy]) -> tuple[list[Marker], list[str]]:
    """The marked lines of the repository's YAML files, and the problems of markers (file:line: ...)."""
    markers: list[Marker] = []
    problems: list[str] = []
    for path in sorted(files):
        if not path.endswith((".yaml", ".yml")):
            continue
        data = files[path]
        if b"$imagepolicy" not in data:
            continue
        for n, text in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            m = MARKER_RE.search(text)
            if m is None:
                continue
            name = m["name"]
            policy = policies.get(name)
            if policy is None:
                problems.append(f"{path}:{n}: the marker names image policy {name!r}, which the agent's configuration (images) does not have")
                continue
            ref = re.search(rf"(?<![\w./-]){re.escape(policy.repository)}(?::[\w][\w.-]{{0,127}})?(?:@sha256:[0-9a-f]{{64}})?(?![\w./-])", text[: m.start()])
            if ref is None:
                problems.append(f"{path}:{n}: marked for {name}, but the line names no image of {policy.repository}")
                continue
            markers.append(Marker(path, n, name, ref[0], ref.start(), ref.end()))
    return markers, problems


def retagged(reference: str, repository: str, tag: str) -> str:
    return f"{repository}:{tag}"


def rewrite(text: str, markers: Sequence[Marker], chosen: Mapping[str, str], repositories: Mapping[str, str]) -> str:
    """The file's text with each marked line's image at its policy's chosen tag; nothing else changes."""
    lines = text.splitlines(keepends=True)
    for mk in markers:
        if mk.policy not in chosen:
            continue
        line = lines[mk.line - 1]
        new = retagged(mk.reference, repositories[mk.policy], chosen[mk.policy])
        lines[mk.line - 1] = line[: mk.start] + new + line[mk.end:]
    return "".join(lines)
