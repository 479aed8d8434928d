"""The agent configuration (``gitsync.yaml``): typed, documented, strict.

Unknown keys are errors naming the key's path and line. Secrets are never
inline: the config names the environment variable that holds them.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from . import yamlsrc
from .fields import IMAGE_RE
from .errors import ConfigError
from .redact import MIN_LENGTH as MIN_SECRET_LENGTH, Redactor
from .secrets import SEEN, SecretReader
from ..adapters.sops import AgeKeys
from .units import parse_duration

AGENT_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
HOST_NAME_RE = re.compile(r"^[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ADDRESS_RE = re.compile(r"^([0-9.]+|\[?[0-9a-fA-F:]+\]?|[a-zA-Z0-9]([-a-zA-Z0-9.]*[a-zA-Z0-9])?)$")  # an IP or a host name
RUNTIMES = ("containers", "swarm")  # gitsync/runtimes
STATUS_TYPES = ("github", "gitea", "forgejo", "gitlab")
DEFAULT_STATUS_URLS = {"github": "https://api.github.com", "gitlab": "https://gitlab.com"}


@dataclass(frozen=True)
class TLSSettings:
    ca: str | None = None
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class HostSettings:
    """One Docker host."""

    name: str
    url: str
    labels: tuple[tuple[str, str], ...] = ()
    tls: TLSSettings | None = None
    insecure: bool = False
    grace: float = 10.0
    address: str | None = None  # where other hosts reach the ports this host publishes

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    @property
    def reach(self) -> str | None:
        """`address`, else the host part of a tcp:// or ssh:// url; None for a unix:// host without one."""
        if self.address:
            return self.address
        if self.url.startswith(("tcp://", "ssh://")):
            return urlparse(self.url).hostname
        return None


@dataclass(frozen=True)
class VerifySettings:
    """Which commits may be applied: `head`, the tip of the branch must carry a good signature by one
    of these keys (SSH: git's allowed-signers file; OpenPGP: armored public keys)."""

    mode: str = "head"
    allowed_signers: str | None = None
    gpg_keys: str | None = None


@dataclass(frozen=True)
class SourceSettings:
    """Where the desired state comes from."""

    url: str = "."
    branch: str = "main"
    path: str = ""
    interval: float = 60.0
    token_env: str | None = None
    username: str = "x-access-token"
    ssh_key: str | None = None
    verify: VerifySettings | None = None


@dataclass(frozen=True)
class StatusSettings:
    type: str
    url: str
    repo: str
    token_env: str
    per_deployment: bool = False


@dataclass(frozen=True)
class ServerSettings:
    listen: str = "127.0.0.1:9100"
    webhook_secret_env: str | None = "GITSYNC_WEBHOOK_SECRET"
    api_token_env: str | None = "GITSYNC_API_TOKEN"
    public_url: str | None = None
    max_body_bytes: int = 5 * 1024 * 1024
    require_token_to_read: bool = False  # the dashboard and the read API want the API token too


DEFAULT_PROXY_IMAGE = "haproxy:3.0.5"  # the official image, LTS branch, pinned


@dataclass(frozen=True)
class ServicesSettings:
    """The Services' data plane: one proxy container per host."""

    proxy_image: str = DEFAULT_PROXY_IMAGE
    proxy_threads: int = 1  # HAProxy's threads: one keeps the tail short where the proxy shares a few cores with replicas


@dataclass(frozen=True)
class BindRule:
    path: str  # a host path prefix (whole components: /srv allows /srv/x, not /srv2)
    read_only: bool = True  # only read-only mounts under it


LOCAL_LOG_DRIVERS = ("json-file", "local", "journald", "none")  # they keep output on the host


@dataclass(frozen=True)
class PolicySettings:
    """What a manifest may ask of a host. The defaults refuse every way out of the container."""

    allow_privileged: bool = False
    allow_host_network: bool = False
    allow_capabilities: tuple[str, ...] = ()  # beyond Docker's default set; ("ALL",) allows any
    allow_devices: tuple[str, ...] = ()  # host device path prefixes
    allow_security_options: bool = False  # securityOpt other than no-new-privileges
    bind_mounts: tuple[BindRule, ...] = ()
    registries: tuple[str, ...] = ()  # images only from these; () = any
    require_digest: bool = False
    volume_drivers: tuple[str, ...] = ("local",)  # a volume plugin may mount anything
    volume_types: tuple[str, ...] = ()  # file system types the local driver may mount (type: nfs), besides tmpfs
    log_drivers: tuple[str, ...] = LOCAL_LOG_DRIVERS  # others ship a container's output to an address


@dataclass(frozen=True)
class ComposeSettings:
    """What compose files are interpolated with besides their project's .env, and their profiles."""

    variables: tuple[tuple[str, str], ...] = ()  # literal values
    from_environment: tuple[str, ...] = ()  # names whose values come from the agent's environment
    profiles: tuple[str, ...] = ()  # services of these profiles run too (as `docker compose --profile`)

    def environment(self) -> dict[str, str]:
        """The listed variables of the agent's environment that are set. Their values are never shown
        (`redact`), which needs them long enough to tell apart from other text."""
        env = {n: os.environ[n] for n in self.from_environment if n in os.environ}
        for n, v in env.items():
            if 0 < len(v) < MIN_SECRET_LENGTH:
                raise ConfigError(
                    f"compose.variablesFromEnvironment: ${n} is shorter than {MIN_SECRET_LENGTH} characters; values from the environment are "
                    f"masked wherever gitsync shows text, and one this short cannot be: if it is no secret, give it in compose.variables"
                )
        return env

    def resolved(self, placeholders: bool = False) -> dict[str, str]:
        """The variables now: the agent's environment for the names listed (an unset one is left out),
        or, with `placeholders`, a stand-in for each of those (previews never see the values)."""
        env = self.environment()
        if placeholders:
            env = {n: placeholder(n) for n in env}
        return {**env, **dict(self.variables)}

    @cached_property
    def redactor(self) -> Redactor:
        """What shows the environment's values, and their stand-ins, as ``${NAME}`` in everything gitsync shows
        (read once: the agent's environment does not change while it runs)."""
        env = self.environment()
        return Redactor(env, named=frozenset((n, placeholder(n)) for n in env))


def placeholder(name: str) -> str:
    """A variable's stand-in in previews: text that fits where values usually go (an image tag, a host
    name, a volume name: lower-case letters, digits, '-'), unlike any value, and shown as ``${NAME}``."""
    return f"env-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"


@dataclass(frozen=True)
class SecretSettings:
    """How Secrets are read: the age identities that decrypt SOPS files (secrets.ageKeyFile, else
    SOPS_AGE_KEY_FILE / SOPS_AGE_KEY as sops reads them), and whether plain-text Secrets are allowed."""

    age_key_file: str | None = None
    allow_plaintext: bool = False

    @cached_property
    def reader(self) -> SecretReader:
        """One per configuration: it remembers which ciphertexts it decrypted, for previews."""
        try:
            keys = AgeKeys.load(self.age_key_file)
        except ValueError as exc:
            raise ConfigError(f"secrets.ageKeyFile: {exc}") from None
        return SecretReader(keys, self.allow_plaintext)


@dataclass(frozen=True)
class ImagePolicy:
    """Which tags of an image repository may run: the newest by semver range, by a number in the tag
    (regex with a named group), or alphabetically."""

    name: str
    repository: str  # registry.example.com/acme/web
    semver: str | None = None  # a range: ">=1.4.0 <2.0.0"
    regex: str | None = None
    order: str | None = None  # the regex's named group, compared as a number
    alphabetical: str | None = None  # asc | desc
    username_env: str | None = None
    password_env: str | None = None
    interval: float = 300.0
    insecure: bool = False  # plain http (a registry of one's own on a trusted network)
    pin_digest: bool = False  # name the chosen tag with its digest (web:1.4.3@sha256:...): the commit says exactly what runs
    ca_file: str | None = None  # the CA that signed the registry's certificate (a registry of one's own)


@dataclass(frozen=True)
class UpdateSettings:
    """How image updates reach Git: a commit on the tracked branch, or on a branch of its own for review."""

    branch: str | None = None  # default: source.branch
    push_branch: str | None = None
    author_name: str = "gitsync"
    author_email: str = "gitsync@localhost"
    message_template: str = "images: {changes}"
    signing_key: str | None = None  # an SSH private key: the agent's commits are signed (needed with source.verify)


NOTIFY_EVENTS = ("failure", "recovery", "rollback", "degraded", "host-down", "host-up", "unverified")


@dataclass(frozen=True)
class NotifySettings:
    """One target of notifications: an Apprise URL (or the environment variable holding it, for URLs
    with tokens in them), the events it hears about, and how often a condition that lasts is told again."""

    url: str | None = None
    url_env: str | None = None
    on: frozenset[str] = frozenset({"failure", "recovery"})
    remind: float | None = None  # seconds; None: a lasting condition is told once

    def resolved_url(self) -> str | None:
        return self.url or (os.environ.get(self.url_env) if self.url_env else None) or None


@dataclass(frozen=True)
class PreviewSettings:
    """Plans of other branches and pull requests, posted on their commits (never applied)."""

    enabled: bool = True
    keep: int = 50  # previews kept for their pages, newest first
    comment: bool = False  # also one comment on the pull request with the plan, edited in place on each push


@dataclass(frozen=True)
class Config:
    name: str
    source: SourceSettings = field(default_factory=SourceSettings)
    hosts: tuple[HostSettings, ...] = ()
    status: tuple[StatusSettings, ...] = ()
    server: ServerSettings = field(default_factory=ServerSettings)
    services: ServicesSettings = field(default_factory=ServicesSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    compose: ComposeSettings = field(default_factory=ComposeSettings)
    previews: PreviewSettings = field(default_factory=PreviewSettings)
    secrets: SecretSettings = field(default_factory=SecretSettings)
    notify: tuple[NotifySettings, ...] = ()
    images: tuple[ImagePolicy, ...] = ()
    update: UpdateSettings = field(default_factory=UpdateSettings)
    runtime: str = "containers"  # what runs the desired state: gitsync's own placement on hosts, or a Docker Swarm
    state_dir: str = ".gitsync"
    path: str | None = None  # the file it came from

    @property
    def redactor(self) -> Redactor:
        """What masks, in everything gitsync shows, the values it holds but never tells (the environment's,
        and every value decrypted so far)."""
        return self.compose.redactor | SEEN.redactor | self._notify_redactor

    @cached_property
    def _notify_redactor(self) -> Redactor:
        """Notification URLs from the environment (they carry tokens) are shown as ${NAME}."""
        return Redactor({n.url_env: v for n in self.notify if n.url_env and (v := os.environ.get(n.url_env)) and len(v) >= MIN_SECRET_LENGTH})

    def host(self, name: str) -> HostSettings | None:
        return next((h for h in self.hosts if h.name == name), None)


def default_agent_name() -> str:
    raw = socket.gethostname().lower()
    cleaned = re.sub(r"[^a-z0-9.-]+", "-", raw).strip("-.")
    return cleaned or "gitsync"


def default_host() -> HostSettings:
    url = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    return HostSettings(name="local", url=url)


class _Reader:
    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, node: Any, key: Any, path: str, message: str) -> ConfigError:
        line = node.line_of(key) if isinstance(node, (yamlsrc.Node, yamlsrc.NodeList)) and key is not None else getattr(node, "line", 0)
        where = f"{self.file}:{line}" if line else self.file
        return ConfigError(f"{where}: {path}: {message}")

    def mapping(self, node: Any, path: str, allowed: tuple[str, ...], parent: Any = None, key: Any = None) -> dict[str, Any]:
        if node is None:
            return {}
        if not isinstance(node, dict):
            raise self.fail(parent if parent is not None else node, key, path, "must be a mapping")
        for k in node:
            if k not in allowed:
                raise self.fail(node, k, f"{path}.{k}" if path else str(k), f"unknown key (allowed: {', '.join(allowed)})")
        return dict(node)

    def string(self, node: Any, key: str, path: str, default: str | None = None, pattern: re.Pattern[str] | None = None) -> str | None:
        value = node.get(key) if isinstance(node, dict) else None
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            raise self.fail(node, key, path, "must be a non-empty string")
        if pattern is not None and not pattern.match(value):
            raise self.fail(node, key, path, f"{value!r} has characters that are not allowed here")
        return value

    def duration(self, node: Any, key: str, path: str, default: float) -> float:
        value = node.get(key) if isinstance(node, dict) else None
        if value is None:
            return default
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise self.fail(node, key, path, str(exc)) from None

    def boolean(self, node: Any, key: str, path: str, default: bool) -> bool:
        value = node.get(key) if isinstance(node, dict) else None
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(node, key, path, "must be true or false")
        return value


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else (base / p))


def _loopback_url(url: str) -> bool:
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _has_password(url: str) -> bool:
    """user:password@ in a URL (a user name alone, as in ssh://git@host, is fine)."""
    from urllib.parse import urlsplit

    try:
        return "://" in url and urlsplit(url).password is not None
    except ValueError:
        return False


def _is_path_like(url: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*://", url) and not re.match(r"^[\w.-]+@[\w.-]+:", url)


def parse(text: str, file: str = "gitsync.yaml", base: Path | None = None) -> Config:
    base = base or Path(".")
    r = _Reader(file)
    try:
        root = yamlsrc.load_one(text)
    except yamlsrc.YamlSyntaxError as exc:
        where = f"{file}:{exc.line}" if exc.line else file
        raise ConfigError(f"{where}: {exc.message}") from None
    top = r.mapping(root, "", ("name", "source", "hosts", "status", "server", "services", "policy", "compose", "previews", "secrets", "notify", "images", "update", "runtime", "state_dir"))
    name = r.string(root, "name", "name", default_agent_name(), AGENT_NAME_RE)
    assert name is not None

    src_node = top.get("source")
    src = r.mapping(src_node, "source", ("url", "branch", "path", "interval", "token_env", "username", "ssh_key", "verify"), root, "source")
    url = r.string(src_node, "url", "source.url", ".") or "."
    if _is_path_like(url):
        url = _resolve(base, url) or url
    token_env = r.string(src_node, "token_env", "source.token_env", None, ENV_NAME_RE)
    if _has_password(url):
        raise r.fail(src_node, "url", "source.url", "has a password in it, and the URL is logged, stored and shown: "
                     "put the token in an environment variable and name that in source.token_env")
    if token_env and url.lower().startswith("http://") and not _loopback_url(url):
        raise r.fail(src_node, "token_env", "source.token_env", "a token is never sent over plain http:// (but to this machine): use an https:// source.url")
    path = (r.string(src_node, "path", "source.path", "") or "").strip("/")
    if ".." in path.split("/"):
        raise r.fail(src_node, "path", "source.path", "must stay inside the repository (no '..')")
    source = SourceSettings(
        url=url,
        branch=r.string(src_node, "branch", "source.branch", "main") or "main",
        path=path,
        interval=max(1.0, r.duration(src_node, "interval", "source.interval", 60.0)),
        token_env=token_env,
        username=r.string(src_node, "username", "source.username", "x-access-token") or "x-access-token",
        ssh_key=_resolve(base, r.string(src_node, "ssh_key", "source.ssh_key")),
        verify=_verify(r, src_node, base, url),
    )
    del src

    hosts: list[HostSettings] = []
    hosts_node = top.get("hosts")
    if hosts_node is not None:
        if not isinstance(hosts_node, list):
            raise r.fail(root, "hosts", "hosts", "must be a list of hosts")
        for i, h in enumerate(hosts_node):
            p = f"hosts[{i}]"
            r.mapping(h, p, ("name", "url", "tls", "labels", "grace", "insecure", "address"), hosts_node, i)
            hname = r.string(h, "name", f"{p}.name", None, HOST_NAME_RE)
            hurl = r.string(h, "url", f"{p}.url")
            if hname is None or hurl is None:
                raise r.fail(hosts_node, i, p, "needs a name and a url")
            if any(x.name == hname for x in hosts):
                raise r.fail(h, "name", f"{p}.name", f"host {hname!r} is listed twice")
            if _has_password(hurl):
                raise r.fail(h, "url", f"{p}.url", "has a password in it, and the URL is logged and shown: use tls (tcp://) or an ssh key (ssh://)")
            scheme = hurl.split("://", 1)[0] if "://" in hurl else ""
            if scheme not in ("unix", "tcp", "ssh", "npipe"):
                raise r.fail(h, "url", f"{p}.url", f"{hurl!r}: use unix://PATH, tcp://HOST:PORT or ssh://USER@HOST")
            tls_node = h.get("tls")
            tls = None
            if tls_node is not None:
                r.mapping(tls_node, f"{p}.tls", ("ca", "cert", "key"), h, "tls")
                tls = TLSSettings(
                    ca=_resolve(base, r.string(tls_node, "ca", f"{p}.tls.ca")),
                    cert=_resolve(base, r.string(tls_node, "cert", f"{p}.tls.cert")),
                    key=_resolve(base, r.string(tls_node, "key", f"{p}.tls.key")),
                )
                if (tls.cert is None) != (tls.key is None):
                    raise r.fail(h, "tls", f"{p}.tls", "cert and key go together")
                if scheme != "tcp":
                    raise r.fail(h, "tls", f"{p}.tls", "TLS applies to tcp:// hosts only")
            labels_node = h.get("labels")
            labels: list[tuple[str, str]] = []
            if labels_node is not None:
                if not isinstance(labels_node, dict):
                    raise r.fail(h, "labels", f"{p}.labels", "must be a mapping of label: value")
                for k, v in labels_node.items():
                    if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (str, int, float)):
                        raise r.fail(labels_node, k, f"{p}.labels.{k}", "labels are strings (quote true/false)")
                    labels.append((k, str(v)))
            hosts.append(
                HostSettings(
                    name=hname,
                    url=hurl,
                    labels=tuple(sorted(labels)),
                    tls=tls,
                    insecure=r.boolean(h, "insecure", f"{p}.insecure", False),
                    grace=r.duration(h, "grace", f"{p}.grace", 10.0),
                    address=r.string(h, "address", f"{p}.address", None, ADDRESS_RE),
                )
            )
    if not hosts:
        hosts.append(default_host())

    statuses: list[StatusSettings] = []
    status_node = top.get("status")
    if status_node is not None:
        if not isinstance(status_node, list):
            raise r.fail(root, "status", "status", "must be a list of commit-status providers")
        for i, s in enumerate(status_node):
            p = f"status[{i}]"
            r.mapping(s, p, ("type", "url", "repo", "token_env", "per_deployment"), status_node, i)
            stype = r.string(s, "type", f"{p}.type")
            if stype not in STATUS_TYPES:
                raise r.fail(s, "type", f"{p}.type", f"must be one of {', '.join(STATUS_TYPES)}")
            surl = r.string(s, "url", f"{p}.url", DEFAULT_STATUS_URLS.get(stype))
            if surl is None:
                raise r.fail(s, "type", f"{p}.url", f"is required for {stype} (the forge's base URL)")
            repo = r.string(s, "repo", f"{p}.repo")
            if repo is None:
                raise r.fail(status_node, i, f"{p}.repo", "is required (owner/name; GitLab: numeric id or group/project)")
            tenv = r.string(s, "token_env", f"{p}.token_env", None, ENV_NAME_RE)
            if tenv is None:
                raise r.fail(status_node, i, f"{p}.token_env", "is required: the environment variable holding the token")
            statuses.append(StatusSettings(stype, surl.rstrip("/"), repo, tenv, r.boolean(s, "per_deployment", f"{p}.per_deployment", False)))

    srv_node = top.get("server")
    r.mapping(srv_node, "server", ("listen", "webhook_secret_env", "api_token_env", "public_url", "max_body_bytes", "require_token_to_read"), root, "server")
    listen = r.string(srv_node, "listen", "server.listen", "127.0.0.1:9100") or "127.0.0.1:9100"
    port = listen.rpartition(":")[2]
    if ":" not in listen or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise r.fail(srv_node, "listen", "server.listen", f"{listen!r} must be HOST:PORT with a port from 1 to 65535")
    max_body = srv_node.get("max_body_bytes") if isinstance(srv_node, dict) else None
    if max_body is not None and (isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1024):
        raise r.fail(srv_node, "max_body_bytes", "server.max_body_bytes", "must be a number of bytes >= 1024")
    server = ServerSettings(
        listen=listen,
        webhook_secret_env=r.string(srv_node, "webhook_secret_env", "server.webhook_secret_env", "GITSYNC_WEBHOOK_SECRET", ENV_NAME_RE),
        api_token_env=r.string(srv_node, "api_token_env", "server.api_token_env", "GITSYNC_API_TOKEN", ENV_NAME_RE),
        public_url=(r.string(srv_node, "public_url", "server.public_url") or "").rstrip("/") or None,
        max_body_bytes=max_body or 5 * 1024 * 1024,
        require_token_to_read=r.boolean(srv_node, "require_token_to_read", "server.require_token_to_read", False),
    )
    svc_node = top.get("services")
    r.mapping(svc_node, "services", ("proxyImage", "proxyThreads"), root, "services")
    threads = svc_node.get("proxyThreads", 1) if isinstance(svc_node, dict) else 1
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 64:
        raise r.fail(svc_node, "proxyThreads", "services.proxyThreads", "must be a number of threads from 1 to 64")
    proxy_image = r.string(svc_node, "proxyImage", "services.proxyImage", DEFAULT_PROXY_IMAGE) or DEFAULT_PROXY_IMAGE
    if not IMAGE_RE.match(proxy_image) or len(proxy_image) > 512:
        raise r.fail(svc_node, "proxyImage", "services.proxyImage", f"{proxy_image!r} is not an image reference (e.g. {DEFAULT_PROXY_IMAGE})")
    state_dir = _resolve(base, r.string(root, "state_dir", "state_dir", ".gitsync")) or ".gitsync"
    runtime = r.string(root, "runtime", "runtime", "containers") or "containers"
    if runtime not in RUNTIMES:
        raise r.fail(root, "runtime", "runtime", f"{runtime!r} is no runtime: {' or '.join(RUNTIMES)} (containers: gitsync places replicas on the hosts; swarm: a Docker Swarm whose managers are the hosts)")
    if runtime == "swarm" and not top.get("hosts"):
        raise r.fail(root, "runtime", "runtime", "swarm needs the Swarm's managers under hosts: (the first that answers is used)")
    return Config(
        name=name, source=source, hosts=tuple(hosts), status=tuple(statuses), server=server,
        services=ServicesSettings(proxy_image, threads), policy=_policy(r, root, top.get("policy")),
        compose=_compose(r, root, top.get("compose")), previews=_previews(r, root, top.get("previews")),
        secrets=_secrets(r, root, top.get("secrets"), file), notify=_notify(r, root, top.get("notify")),
        images=_images(r, root, top.get("images"), base), update=_update(r, root, top.get("update"), base), runtime=runtime,
        state_dir=state_dir, path=file,
    )


def _previews(r: _Reader, root: Any, node: Any) -> PreviewSettings:
    r.mapping(node, "previews", ("enabled", "keep", "comment"), root, "previews")
    keep = node.get("keep", 50) if isinstance(node, dict) else 50
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= 1000:
        raise r.fail(node, "keep", "previews.keep", "must be a whole number from 1 to 1000")
    return PreviewSettings(r.boolean(node, "enabled", "previews.enabled", True), keep, r.boolean(node, "comment", "previews.comment", False))


def _verify(r: _Reader, src: Any, base: Path, url: str) -> VerifySettings | None:
    node = src.get("verify") if isinstance(src, dict) else None
    if node is None:
        return None
    r.mapping(node, "source.verify", ("mode", "allowedSigners", "gpgKeys"), src, "verify")
    mode = r.string(node, "mode", "source.verify.mode", "head")
    if mode != "head":
        raise r.fail(node, "mode", "source.verify.mode", f"{mode!r}: head is the mode there is (the commit applied must be signed by a trusted key)")
    files = {}
    for key in ("allowedSigners", "gpgKeys"):
        given = r.string(node, key, f"source.verify.{key}")
        path = _resolve(base, given) if given else None
        if path is not None and not os.path.isfile(path):
            raise r.fail(node, key, f"source.verify.{key}", f"{given} is not a file (relative paths are relative to this configuration)")
        files[key] = path
    if not any(files.values()):
        raise r.fail(src, "verify", "source.verify", "names no keys: give allowedSigners (SSH signatures, git's allowed-signers file) and/or gpgKeys (armored OpenPGP public keys)")
    if _is_path_like(url) and os.path.isdir(url) and not (os.path.exists(os.path.join(url, ".git")) or os.path.isfile(os.path.join(url, "HEAD"))):
        raise r.fail(src, "verify", "source.verify", f"{url} is a plain folder: it has no commits to verify")
    return VerifySettings(mode or "head", files["allowedSigners"], files["gpgKeys"])


def _update(r: _Reader, root: Any, node: Any, base: Path) -> UpdateSettings:
    if node is None:
        return UpdateSettings()
    r.mapping(node, "update", ("branch", "pushBranch", "author", "messageTemplate", "signingKey"), root, "update")
    branch_re = re.compile(r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._/-]*$")
    author = node.get("author")
    r.mapping(author, "update.author", ("name", "email"), node, "author")
    key = _resolve(base, r.string(node, "signingKey", "update.signingKey"))
    if key is not None and not os.path.isfile(key):
        raise r.fail(node, "signingKey", "update.signingKey", f"{key} is not a file (an SSH private key the agent signs its commits with)")
    return UpdateSettings(
        r.string(node, "branch", "update.branch", None, branch_re), r.string(node, "pushBranch", "update.pushBranch", None, branch_re),
        r.string(author, "name", "update.author.name", "gitsync") or "gitsync", r.string(author, "email", "update.author.email", "gitsync@localhost") or "gitsync@localhost",
        r.string(node, "messageTemplate", "update.messageTemplate", "images: {changes}") or "images: {changes}", key,
    )


def _images(r: _Reader, root: Any, node: Any, base: Path) -> tuple[ImagePolicy, ...]:
    if node is None:
        return ()
    if not isinstance(node, list):
        raise r.fail(root, "images", "images", "must be a list of image policies ({name, repository, policy})")
    out: list[ImagePolicy] = []
    for i, p_node in enumerate(node):
        p = f"images[{i}]"
        r.mapping(p_node, p, ("name", "repository", "policy", "credentials", "interval", "insecure", "pinDigest", "caFile"), node, i)
        name = r.string(p_node, "name", f"{p}.name", None, re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$"))
        repo = r.string(p_node, "repository", f"{p}.repository", None, re.compile(r"^[a-z0-9][a-z0-9._:-]*(/[a-z0-9][a-z0-9._-]*)*$"))
        if name is None or repo is None:
            raise r.fail(node, i, p, "needs a name (used in the markers) and a repository (registry.example.com/acme/web)")
        if any(x.name == name for x in out):
            raise r.fail(p_node, "name", f"{p}.name", f"policy {name!r} is listed twice")
        pol = p_node.get("policy")
        r.mapping(pol, f"{p}.policy", ("semver", "regex", "order", "alphabetical"), p_node, "policy")
        kinds = [k for k in ("semver", "regex", "alphabetical") if isinstance(pol, dict) and k in pol]
        if len(kinds) != 1:
            raise r.fail(p_node, "policy", f"{p}.policy", "give one of semver (a range: '>=1.4.0 <2.0.0'), regex (with order: a named group) or alphabetical (asc|desc)")
        semver_range = r.string(pol, "semver", f"{p}.policy.semver")
        if semver_range is not None:
            from .images import check_range

            if why := check_range(semver_range):
                raise r.fail(pol, "semver", f"{p}.policy.semver", f"{semver_range!r}: {why}")
        regex = r.string(pol, "regex", f"{p}.policy.regex")
        order = r.string(pol, "order", f"{p}.policy.order")
        if regex is not None:
            try:
                groups = re.compile(regex).groupindex
            except re.error as exc:
                raise r.fail(pol, "regex", f"{p}.policy.regex", f"is no regular expression ({exc})") from None
            if order is not None and order not in groups:
                raise r.fail(pol, "order", f"{p}.policy.order", f"{order!r} is not a named group of the regex (?P<{order}>...)")
        alphabetical = r.string(pol, "alphabetical", f"{p}.policy.alphabetical")
        if alphabetical not in (None, "asc", "desc"):
            raise r.fail(pol, "alphabetical", f"{p}.policy.alphabetical", "must be asc or desc")
        creds = p_node.get("credentials")
        r.mapping(creds, f"{p}.credentials", ("username_env", "password_env"), p_node, "credentials")
        user_env = r.string(creds, "username_env", f"{p}.credentials.username_env", None, ENV_NAME_RE)
        pass_env = r.string(creds, "password_env", f"{p}.credentials.password_env", None, ENV_NAME_RE)
        if (user_env is None) != (pass_env is None):
            raise r.fail(p_node, "credentials", f"{p}.credentials", "give both username_env and password_env")
        out.append(ImagePolicy(name, repo, semver_range, regex, order, alphabetical, user_env, pass_env,
                               max(10.0, r.duration(p_node, "interval", f"{p}.interval", 300.0)), r.boolean(p_node, "insecure", f"{p}.insecure", False),
                               r.boolean(p_node, "pinDigest", f"{p}.pinDigest", False), _resolve(base, r.string(p_node, "caFile", f"{p}.caFile"))))
    return tuple(out)


def _notify(r: _Reader, root: Any, node: Any) -> tuple[NotifySettings, ...]:
    if node is None:
        return ()
    if not isinstance(node, list):
        raise r.fail(root, "notify", "notify", "must be a list of targets ({url: ..., on: [...]})")
    out = []
    for i, t in enumerate(node):
        p = f"notify[{i}]"
        r.mapping(t, p, ("url", "urlEnv", "on", "remind"), node, i)
        url, url_env = r.string(t, "url", f"{p}.url"), r.string(t, "urlEnv", f"{p}.urlEnv", None, ENV_NAME_RE)
        if (url is None) == (url_env is None):
            raise r.fail(node, i, p, "give either url (an Apprise URL) or urlEnv (the environment variable that holds one, when it carries a token)")
        if url is not None:
            from ..adapters.apprise import apprise_module

            if not apprise_module().Apprise().add(url):
                raise r.fail(t, "url", f"{p}.url", "is not a URL Apprise knows (see its list of services: slack://, ntfy://, mailto://, json://, ...)")
        on = t.get("on", ["failure", "recovery"])
        if not isinstance(on, list) or not on or not all(e in NOTIFY_EVENTS for e in on):
            raise r.fail(t, "on", f"{p}.on", f"must be a list of events from {', '.join(NOTIFY_EVENTS)}")
        remind = r.duration(t, "remind", f"{p}.remind", 0.0) if isinstance(t, dict) and "remind" in t else None
        out.append(NotifySettings(url, url_env, frozenset(on), remind or None))
    return tuple(out)


def _secrets(r: _Reader, root: Any, node: Any, file: str | None) -> SecretSettings:
    r.mapping(node, "secrets", ("ageKeyFile", "allowPlaintext"), root, "secrets")
    key_file = r.string(node, "ageKeyFile", "secrets.ageKeyFile") if isinstance(node, dict) else None
    if key_file and file and not os.path.isabs(os.path.expanduser(key_file)):
        key_file = os.path.join(os.path.dirname(os.path.abspath(file)), key_file)  # beside the configuration
    settings = SecretSettings(os.path.expanduser(key_file) if key_file else None, r.boolean(node, "allowPlaintext", "secrets.allowPlaintext", False))
    settings.reader  # a key file that cannot be read is refused now, not at the first sync
    return settings


def _compose(r: _Reader, root: Any, node: Any) -> ComposeSettings:
    r.mapping(node, "compose", ("variables", "variablesFromEnvironment", "profiles"), root, "compose")
    node = node or {}
    values = node.get("variables") or {}
    if not isinstance(values, dict) or not all(isinstance(k, str) and ENV_NAME_RE.match(k) and isinstance(v, (str, int, float)) and not isinstance(v, bool) for k, v in values.items()):
        raise r.fail(node, "variables", "compose.variables", "must be a mapping of NAME: value (quote true/false)")
    names = node.get("variablesFromEnvironment") or []
    if not isinstance(names, list) or not all(isinstance(n, str) and ENV_NAME_RE.match(n) for n in names):
        raise r.fail(node, "variablesFromEnvironment", "compose.variablesFromEnvironment", "must be a list of environment variable names")
    profiles = node.get("profiles") or []
    if not isinstance(profiles, list) or not all(isinstance(p, str) and p for p in profiles):
        raise r.fail(node, "profiles", "compose.profiles", "must be a list of profile names")
    settings = ComposeSettings(tuple((k, str(v)) for k, v in values.items()), tuple(names), tuple(profiles))
    settings.environment()  # a value too short to mask is refused now, not at the first sync
    return settings


def _policy(r: _Reader, root: Any, node: Any) -> PolicySettings:
    r.mapping(
        node, "policy", ("allowPrivileged", "allowHostNetwork", "allowCapabilities", "allowDevices", "allowSecurityOptions", "bindMounts", "images", "volumes", "logDrivers"),
        root, "policy",
    )

    def strings(parent: Any, path: str, key: str, pattern: re.Pattern[str], what: str) -> tuple[str, ...]:
        value = parent.get(key) if isinstance(parent, dict) else None
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and pattern.match(v) for v in value):
            raise r.fail(parent, key, f"{path}.{key}", f"must be a list of {what}")
        return tuple(value)

    rules: list[BindRule] = []
    binds = node.get("bindMounts") if isinstance(node, dict) else None
    if binds is not None and not isinstance(binds, list):
        raise r.fail(node, "bindMounts", "policy.bindMounts", "must be a list of {path: /srv/data, readOnly: true}")
    for i, b in enumerate(binds or ()):
        p = f"policy.bindMounts[{i}]"
        r.mapping(b, p, ("path", "readOnly"), binds, i)
        path = r.string(b, "path", f"{p}.path", None, re.compile(r"^/[^\0:]*$"))
        if path is None:
            raise r.fail(binds, i, f"{p}.path", "is required: an absolute host path prefix")
        rules.append(BindRule(path.rstrip("/") or "/", r.boolean(b, "readOnly", f"{p}.readOnly", True)))
    images = node.get("images") if isinstance(node, dict) else None
    r.mapping(images, "policy.images", ("registries", "requireDigest"), node, "images")
    volumes = node.get("volumes") if isinstance(node, dict) else None
    r.mapping(volumes, "policy.volumes", ("drivers", "types"), node, "volumes")
    word = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")
    drivers = strings(volumes, "policy.volumes", "drivers", word, "volume driver names (e.g. local)") if isinstance(volumes, dict) and "drivers" in volumes else ("local",)
    log_drivers = strings(node, "policy", "logDrivers", word, "log driver names (e.g. json-file)") if isinstance(node, dict) and "logDrivers" in node else LOCAL_LOG_DRIVERS
    caps = tuple(c.upper().removeprefix("CAP_") for c in strings(node, "policy", "allowCapabilities", re.compile(r"^[A-Za-z_]+$"), "capability names (e.g. NET_ADMIN)"))
    return PolicySettings(
        allow_privileged=r.boolean(node, "allowPrivileged", "policy.allowPrivileged", False),
        allow_host_network=r.boolean(node, "allowHostNetwork", "policy.allowHostNetwork", False),
        allow_capabilities=caps,
        allow_devices=strings(node, "policy", "allowDevices", re.compile(r"^/dev/"), "device paths (e.g. /dev/fuse)"),
        allow_security_options=r.boolean(node, "allowSecurityOptions", "policy.allowSecurityOptions", False),
        bind_mounts=tuple(rules),
        registries=tuple(x.lower() for x in strings(images, "policy.images", "registries", re.compile(r"^[a-zA-Z0-9.-]+(:[0-9]+)?$"), "registry hosts (e.g. registry.example.com, docker.io)")),
        require_digest=r.boolean(images, "requireDigest", "policy.images.requireDigest", False),
        volume_drivers=drivers,
        volume_types=strings(volumes, "policy.volumes", "types", word, "file system types (e.g. nfs)"),
        log_drivers=log_drivers,
    )


def load(path: str | None) -> Config:
    """Load ``path``; without one, ``./gitsync.yaml`` if present, else the defaults."""
    if path is None:
        if Path("gitsync.yaml").is_file():
            path = "gitsync.yaml"
        else:
            return parse("{}", file="(defaults)", base=Path.cwd())
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; pass -c with the path of your gitsync.yaml") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > 1024 * 1024:
        raise ConfigError(f"{path}: larger than 1 MiB; is this the right file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return parse(text, file=str(path), base=p.resolve().parent)
