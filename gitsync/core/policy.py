"""The agent's policy: what a manifest may ask of a host. A commit to the config repository must
not take over a host unless the operator allowed it; a refusal is a validation problem like any
other (``file:line: spec.privileged: not allowed by this agent's policy (policy.allowPrivileged)``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from .config import PolicySettings
from .container import DOCKER_DEFAULT_CAPABILITIES
from .errors import Problem
from .fields import path_problem
from .models import Deployment, DesiredState, NetworkMode, Volume

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


def bind_refusal(host_path: str, read_only: bool, p: PolicySettings, hint: str = "set readOnly: true") -> str | None:
    """Why the policy refuses a bind mount of `host_path` (a hostPath, or a volume that binds), or None."""
    why = path_problem(host_path)
    if why:
        return f"{host_path}: {why}"
    rules = [r for r in p.bind_mounts if under(host_path, r.path)]
    if not rules:
        return f"{host_path}: no policy.bindMounts entry allows this path"
    if not read_only and all(r.read_only for r in rules):
        return f"{host_path}: policy.bindMounts allows it read-only; {hint}"
    return None


def writable_roots(host_path: str, p: PolicySettings) -> list[str]:
    """The outermost prefix that replicas may write (a readOnly: false rule) which `host_path` lies
    strictly below, as a list of none or one: below it, a replica may have planted a link."""
    roots = sorted((r.path for r in p.bind_mounts if not r.read_only and under(host_path, r.path) and host_path.rstrip("/") != r.path), key=len)
    return roots[:1]


def volume_refusals(driver: str, options: Mapping[str, str], p: PolicySettings) -> Iterator[tuple[str, str]]:
    """(key, why) for what a volume's driver and options would mount that the policy does not allow:
    a driver not listed (a plugin may mount anything), a local volume that binds a host path (judged as
    a bind mount by policy.bindMounts), or mounts a file system type not listed (nfs: a network sink)."""
    if driver not in p.volume_drivers:
        yield "driver", f"{driver}: policy.volumes.drivers ({', '.join(p.volume_drivers) or 'none'})"
        return
    if driver != "local" or not options:
        return
    flags = [f.strip() for f in str(options.get("o", "")).split(",")]
    if "bind" in flags or "rbind" in flags or options.get("type") == "none":
        why = bind_refusal(str(options.get("device", "")), "ro" in flags, p, "add ro to the option o")
        if why:
            yield "driverOpts", f"binds a host path: {why}"
    elif options.get("type", "") not in ("tmpfs", *p.volume_types):
        yield "driverOpts", f"type {options.get('type', '(none)')}: policy.volumes.types ({', '.join(p.volume_types) or 'none'})"
    if options.get("type") != "tmpfs" and str(options.get("device", "")).startswith("/dev/") and not any(under(str(options["device"]), d) for d in p.allow_devices):
        yield "driverOpts", f"mounts the host device {options['device']}: policy.allowDevices"


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
        why = bind_refusal(b.host_path, b.read_only, p)
        if why:
            yield b.key, why
    if o.log_driver and o.log_driver not in p.log_drivers:
        yield "spec.logging", f"driver {o.log_driver} sends the container's output elsewhere; policy.logDrivers ({', '.join(p.log_drivers)})"
    if p.registries and registry_of(d.image) not in p.registries:
        yield "spec.image", f"{d.image} is from {registry_of(d.image)}: policy.images.registries ({', '.join(p.registries)})"
    if p.require_digest and "@" not in d.image:
        yield "spec.image", f"{d.image} has no digest (@sha256:...): policy.images.requireDigest"


def check(desired: DesiredState, policy: PolicySettings) -> list[Problem]:
    problems = []
    for v in desired.of(Volume.KIND):
        if v.external:
            continue  # its live driver and options are judged where it is found (the Volume kind's plan)
        for key, why in volume_refusals(v.driver, dict(v.driver_opts), policy):
            origin = v.origin
            problems.append(Problem(origin.file if origin else "?", origin.line if origin else None, f"spec.{key}: not allowed by this agent's policy (volume {v.name}: {why})"))
    for d in desired.deployments:
        for key, why in _refusals(d, policy):
            line = next((b.line for b in d.options.binds if b.key == key), None) or d.options.lines.get(key)
            file = d.origin.file if d.origin else "?"
            problems.append(Problem(file, line or (d.origin.line if d.origin else None), f"{key}: not allowed by this agent's policy ({why})"))
    return problems
