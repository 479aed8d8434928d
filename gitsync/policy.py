"""The agent's policy: what a manifest may ask of a host. A commit to the config repository must
not take over a host unless the operator allowed it; a refusal is a validation problem like any
other (``file:line: spec.privileged: not allowed by this agent's policy (policy.allowPrivileged)``)."""

from __future__ import annotations

from collections.abc import Iterator

from .config import PolicySettings
from .container import DOCKER_DEFAULT_CAPABILITIES
from .errors import Problem
from .models import Deployment, DesiredState, NetworkMode

TIGHTENING_SECURITY_OPTIONS = ("no-new-privileges", "no-new-privileges:true", "no-new-privileges=true")


def registry_of(image: str) -> str:
    """The registry an image reference pulls from: its first component when that is a host
    (has a dot or a port, or is localhost), else Docker Hub."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first.lower()
    return "docker.io"


def under(path: str, prefix: str) -> bool:
    """Whether `path` is `prefix` or inside it, by whole components (/srv/x is under /srv, /srv2 is not)."""
    path = "/" + "/".join(p for p in path.split("/") if p and p != ".")
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def _refusals(d: Deployment, p: PolicySettings) -> Iterator[tuple[str, str]]:
    """(key, why) for each thing d asks that the policy does not allow."""
    o = d.options
    if o.privileged and not p.allow_privileged:
        yield "spec.privileged", "policy.allowPrivileged"
    if o.network_mode == NetworkMode.HOST and not p.allow_host_network:
        yield "spec.networkMode", "policy.allowHostNetwork"
    extra = sorted(c for c in o.cap_add if c not in DOCKER_DEFAULT_CAPABILITIES and c not in p.allow_capabilities and "ALL" not in p.allow_capabilities)
    if extra:
        yield "spec.capAdd", f"{', '.join(extra)}: beyond Docker's default capabilities; policy.allowCapabilities"
    for host, _, _ in o.devices:
        if not any(under(host, prefix) for prefix in p.allow_devices):
            yield "spec.devices", f"{host}: policy.allowDevices"
    loose = [s for s in o.security_opt if s not in TIGHTENING_SECURITY_OPTIONS]
    if loose and not p.allow_security_options:
        yield "spec.securityOpt", f"{', '.join(loose)}: policy.allowSecurityOptions"
    for b in o.binds:
        rules = [r for r in p.bind_mounts if under(b.host_path, r.path)]
        if not rules:
            yield b.key, f"{b.host_path}: no policy.bindMounts entry allows this path"
        elif not b.read_only and all(r.read_only for r in rules):
            yield b.key, f"{b.host_path}: policy.bindMounts allows it read-only; set readOnly: true"
    if p.registries and registry_of(d.image) not in p.registries:
        yield "spec.image", f"{d.image} is from {registry_of(d.image)}: policy.images.registries ({', '.join(p.registries)})"
    if p.require_digest and "@" not in d.image:
        yield "spec.image", f"{d.image} has no digest (@sha256:...): policy.images.requireDigest"


def check(desired: DesiredState, policy: PolicySettings) -> list[Problem]:
    problems = []
    for d in desired.deployments:
        for key, why in _refusals(d, policy):
            line = next((b.line for b in d.options.binds if b.key == key), None) or d.options.lines.get(key)
            file = d.origin.file if d.origin else "?"
            problems.append(Problem(file, line or (d.origin.line if d.origin else None), f"{key}: not allowed by this agent's policy ({why})"))
    return problems
