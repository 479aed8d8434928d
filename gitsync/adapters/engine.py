"""The Docker adapter: the one module that speaks to Docker engines.

Everything else sees an :class:`Engine` per host (list, inspect, create, start, stop, rename,
remove, images, volumes, ping, events) and gitsync's own errors: :class:`NotFound`,
:class:`Conflict`, or an :class:`EngineError` that says why in a few words. No ``docker.errors``
type and no SDK internals leave this module; it is the seam a Swarm backend plugs into.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import io
import ipaddress
import json
import os
import posixpath
import re
import socket
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import docker
import docker.errors
import docker.tls
import requests.adapters
import requests.exceptions
from urllib3.connection import HTTPConnection

from ..core.config import HostSettings
from ..core.errors import GitsyncError, HostError, Reason
from ..core.live import ContainerInfo
from ..core.settings import DEFAULT, Tunables


class EngineError(HostError):
    """An engine refused a request or could not be reached; `detail` says why in a few words. Not
    reached: unreachable, retried after a delay. Refused: the change failed, retried after a delay
    when the engine's trouble may pass (it failed inside, a name is taken), else held for a commit
    (a spec it calls invalid)."""

    def __init__(self, host: str, message: str, reached: bool = False, transient: bool = True) -> None:
        super().__init__(host, message)
        if reached:
            self.reason = Reason.APPLY_FAILED
        self.transient = transient


class NotFound(EngineError):
    """The container, image or volume asked for does not exist (any more): it may yet (an image pushed late)."""

    def __init__(self, host: str, message: str) -> None:
        super().__init__(host, message, reached=True)


class Conflict(EngineError):
    """A name is taken, or the object is in a state that refuses the change: it may pass."""

    def __init__(self, host: str, message: str) -> None:
        super().__init__(host, message, reached=True)


def _is_loopback(hostname: str) -> bool:
    if hostname in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def check_transport(h: HostSettings) -> None:
    """Plain TCP is unauthenticated root access to the engine: only to loopback or when asked for.
    A missing unix socket is said at once (the SDK would leave the socket it tried open)."""
    if h.url.startswith("unix://") and not os.path.exists(h.url.removeprefix("unix://")):
        raise HostError(h.name, "socket not found")
    if not h.url.startswith("tcp://") or h.tls is not None or h.insecure:
        return
    host = urlparse(h.url).hostname or ""
    if not _is_loopback(host):
        raise HostError(
            h.name,
            f"plain {h.url} is unencrypted and unauthenticated; configure hosts[].tls (ca, cert, key) "
            "or set insecure: true if this network is trusted",
        )


def explain(exc: BaseException) -> str:
    """A short, human reason for a failure to talk to an engine."""
    if isinstance(exc, HostError):
        return exc.detail
    if isinstance(exc, GitsyncError):
        return str(exc)  # our own words, whole: they say what to do
    if isinstance(exc, docker.errors.APIError):
        said = str(exc.explanation or exc)
        taken = _PORT_TAKEN.search(said)
        if taken:  # Docker's words lead with the endpoint's id; what matters is the port
            return f"port {taken.group(2)} is taken on this host by something else ({taken.group(1)}:{taken.group(2)}: {taken.group(3)})"
        return said
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "the engine did not answer in time"
    if isinstance(exc, requests.exceptions.SSLError):
        text = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return "TLS certificate not trusted (check hosts[].tls.ca)"
        return "TLS handshake refused (check hosts[].tls.cert and key: the engine wants a client certificate)"
    if isinstance(exc, requests.exceptions.ConnectionError):
        text = str(exc)
        for needle, say in (
            ("Connection refused", "connection refused"),
            ("No such file", "socket not found"),
            ("No route to host", "no route to host"),
            ("Name or service not known", "host name not found"),
            ("CERTIFICATE_VERIFY_FAILED", "TLS certificate not trusted (check hosts[].tls.ca)"),
            ("timed out", "connection timed out"),
        ):
            if needle in text:
                return say
        return "cannot connect"
    if isinstance(exc, docker.errors.DockerException):
        text = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text or "SSLCertVerificationError" in text:
            return "TLS certificate not trusted (check hosts[].tls.ca)"
        if "SSLError" in text or "TLSV13_ALERT_CERTIFICATE_REQUIRED" in text or "certificate required" in text:
            return "TLS handshake refused (check hosts[].tls.cert and key: the engine wants a client certificate)"
        if "Connection refused" in text:
            return "connection refused"
        if "timed out" in text.lower() or "ConnectTimeout" in text:
            return "connection timed out"
        if "No route to host" in text:
            return "no route to host"
        if "No such file" in text or "FileNotFoundError" in text:
            return "socket not found"
        return text.split("\n")[0][:200]
    return f"{type(exc).__name__}: {exc}"[:200]


def _files_tar(entries: Sequence[tuple[str, bytes, int]], folder: bool, owner: tuple[int, int] | None = None) -> bytes:
    """`data` (the file, or a folder of them, owned by `owner`), then `done`: what a files volume holds."""
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(name: str, data: bytes | None, mode: int) -> None:
            info = tarfile.TarInfo(name)
            info.mtime, info.mode = now, mode
            if owner is not None and name.startswith("data"):
                info.uid, info.gid = owner
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

        if folder:
            add("data", None, 0o555)
            made: set[str] = set()
            for name, data, mode in entries:
                parts = name.split("/")
                for i in range(1, len(parts)):
                    sub = "/".join(parts[:i])
                    if sub not in made:
                        made.add(sub)
                        add(f"data/{sub}", None, 0o555)
                add(f"data/{name}", data, mode)
        else:
            (_, data, mode), = entries
            add("data", data, mode)
        add("done", b"", 0o444)
    return buf.getvalue()


@contextlib.contextmanager
def _translated(host: str) -> Iterator[None]:
    """SDK and transport errors in, gitsync's errors out."""
    try:
        yield
    except HostError:
        raise
    except docker.errors.NotFound as exc:  # ImageNotFound included
        raise NotFound(host, explain(exc)) from None
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            raise Conflict(host, explain(exc)) from None
        status = exc.status_code or 500  # 4xx: the request itself is refused, the same one would be again
        raise EngineError(host, explain(exc), reached=True, transient=status >= 500 or status in (408, 429)) from None
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise EngineError(host, explain(exc)) from None


@dataclass(frozen=True)
class ContainerSpec:
    """A container to create, in gitsync's terms (no SDK types)."""

    name: str
    image: str
    labels: Mapping[str, str]
    command: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    ports: tuple[tuple[int, str, int | tuple[str, int] | None], ...] = ()  # (container port, protocol, host port, (address, host port) or None)
    publish_on: str | None = None  # the host address ports without a host port are published on (default: every one)
    mounts: tuple[tuple[str, str, bool, str], ...] = ()  # (volume or host path, path in the container, read-only, SELinux relabel)
    restart: str = "unless-stopped"  # no | always | on-failure | unless-stopped
    healthcheck: Mapping[str, Any] | None = None  # test, interval, timeout, retries, start_period (seconds)
    stop_grace: float = 10.0
    network: str | None = None  # a user-defined network to join instead of the default bridge
    aliases: tuple[str, ...] = ()  # names that resolve to this container on that network
    more_networks: tuple[tuple[str, tuple[str, ...]], ...] = ()  # other networks it joins before it starts, with its names there
    host_options: Mapping[str, Any] = field(default_factory=dict)  # more HostConfig, as Docker SDK keywords
    create_options: Mapping[str, Any] = field(default_factory=dict)  # more container config (entrypoint, user, ...)
    sysctls: Mapping[str, str] | None = None  # namespaced kernel settings of the container


_PORT_TAKEN = re.compile(r"(?:Bind for|listen tcp4?6?) \[?([0-9a-fA-F.:]*?)\]?:(\d+)(?: failed)?: (port is already allocated|bind: address already in use)")
_GO_MODE_SYMLINK = 1 << 27  # os.ModeSymlink in the file mode the archive API reports


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def _split_image(image: str) -> tuple[str, str | None]:
    if "@" in image:
        return image, None
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = image.rsplit(":", 1)
        return repo, tag
    return image, "latest"


class Engine:
    """One host's engine, on one client made by :func:`connect`."""

    def __init__(self, host: str, api: docker.APIClient) -> None:
        self.host = host
        self._api = api

    def list_containers(self, label: str, timeout: float) -> list[dict[str, Any]]:
        """Every container (running or not) carrying `label` (key=value), as the list endpoint gives them."""
        api = self._api
        params = {"all": 1, "filters": json.dumps({"label": [label]})}
        with _translated(self.host):
            result: list[dict[str, Any]] = api._result(api._get(api._url("/containers/json"), params=params, timeout=timeout), True)
        return result

    def list_volumes(self, timeout: float) -> list[dict[str, Any]]:
        """Every volume on the host (name, driver, options, labels)."""
        api = self._api
        with _translated(self.host):
            result = api._result(api._get(api._url("/volumes"), timeout=timeout), True)
        return list(result.get("Volumes") or [])

    def inspect(self, ref: str) -> ContainerInfo | None:
        """A container by id or name; None when there is none."""
        try:
            with _translated(self.host):
                return ContainerInfo.of(self._api.inspect_container(ref))
        except NotFound:
            return None

    def ensure_image(self, image: str) -> None:
        """Pull the image unless the engine has it."""
        try:
            with _translated(self.host):
                self._api.inspect_image(image)
            return
        except NotFound:
            pass
        repo, tag = _split_image(image)
        try:
            with _translated(self.host):
                self._api.pull(repo, tag=tag)
        except EngineError as exc:
            raise EngineError(self.host, f"cannot pull {image}: {exc.detail}", reached=exc.reason != Reason.HOST_UNREACHABLE, transient=exc.transient) from None

    def has_volume(self, name: str) -> bool:
        try:
            with _translated(self.host):
                self._api.inspect_volume(name)
            return True
        except NotFound:
            return False

    def ensure_volume(self, name: str, labels: Mapping[str, str], driver: str = "local", options: Mapping[str, str] | None = None) -> None:
        """Create the named volume unless it exists (one made meanwhile by someone else is fine)."""
        if self.has_volume(name):
            return
        try:
            with _translated(self.host):
                self._api.create_volume(name, driver=driver, driver_opts=dict(options or {}) or None, labels=dict(labels))
        except Conflict:
            pass

    def create(self, spec: ContainerSpec) -> str:
        """Create the container (not started); its id."""
        api = self._api
        restart: dict[str, Any] = {"Name": "" if spec.restart == "no" else spec.restart}
        if spec.restart == "on-failure":
            restart["MaximumRetryCount"] = 0
        hc = spec.healthcheck
        with _translated(self.host):
            host_config = api.create_host_config(
                port_bindings={
                    f"{port}/{proto}": host_port if host_port is not None or spec.publish_on is None else (spec.publish_on,)
                    for port, proto, host_port in spec.ports
                } or None,
                binds=[f"{source}:{path}:{'ro' if ro else 'rw'}{',' + relabel if relabel else ''}" for source, path, ro, relabel in spec.mounts] or None,
                restart_policy=restart,
                network_mode=spec.network,
                sysctls=dict(spec.sysctls) if spec.sysctls else None,
                **spec.host_options,
            )
            networking = None
            if spec.network not in (None, "host", "none"):
                networking = api.create_networking_config({spec.network: api.create_endpoint_config(aliases=list(spec.aliases) or None)})
            created = api.create_container(
                spec.image,
                command=list(spec.command) if spec.command is not None else None,
                name=spec.name,
                labels=dict(spec.labels),
                environment=[f"{k}={v}" for k, v in spec.env] or None,
                ports=[(port, proto) for port, proto, _ in spec.ports] or None,
                volumes=[m[1] for m in spec.mounts] or None,
                host_config=host_config,
                healthcheck=None if hc is None else {
                    "test": list(hc["test"]),
                    "interval": _ns(hc["interval"]),
                    "timeout": _ns(hc["timeout"]),
                    "retries": hc["retries"],
                    "start_period": _ns(hc["start_period"]),
                },
                stop_timeout=int(spec.stop_grace),
                networking_config=networking,
                **spec.create_options,
            )
        container_id: str = created["Id"]
        try:
            for network, aliases in spec.more_networks:
                with _translated(self.host):
                    api.connect_container_to_network(container_id, network, aliases=list(aliases) or None)
        except HostError:
            with contextlib.suppress(HostError), _translated(self.host):
                api.remove_container(container_id, force=True)
            raise
        return container_id

    def first_link(self, image: str, root: str, below: Sequence[str]) -> str | None:
        """The first of root/a, root/a/b, ... (for `below` = [a, b, ...]) that is a symbolic link on this
        host, or None. Looked at through a container that never starts (`image`, there already, with
        `root` bound read-only): the archive API stats a path without following its last component."""
        if not below:
            return None
        with self._helper(image, f"{root}:/gitsync-root:ro", "path-check") as helper:
            for i in range(1, len(below) + 1):
                stat = self._stat(helper, "/gitsync-root/" + "/".join(below[:i]))
                if stat is None:
                    return None  # Docker makes what is missing, as folders
                if int(stat.get("mode", 0)) & _GO_MODE_SYMLINK or stat.get("linkTarget"):
                    return root.rstrip("/") + "/" + "/".join(below[:i])
            return None

    @contextlib.contextmanager
    def _helper(self, image: str, bind: str, role: str) -> Iterator[str]:
        """A container that never starts (`image`, there already, with `bind`): the archive API reads
        and writes its file system and volumes all the same. Removed after use."""
        api = self._api
        with _translated(self.host):
            helper: str = api.create_container(
                image, entrypoint=["/gitsync-never-started"], labels={"io.gitsync.role": role}, network_disabled=True,
                host_config=api.create_host_config(binds=[bind], network_mode="none"),
            )["Id"]
            try:
                yield helper
            finally:
                api.remove_container(helper, force=True)

    def _stat(self, container: str, path: str) -> dict[str, Any] | None:
        """What the archive API says of a path in a container (without following a link at its end); None when absent."""
        api = self._api
        r = api.head(api._url("/containers/{0}/archive", container), params={"path": path}, timeout=30)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        stat: dict[str, Any] = json.loads(base64.b64decode(r.headers.get("X-Docker-Container-Path-Stat", "") or "e30="))
        return stat

    def ensure_files(self, volume: str, labels: Mapping[str, str], image: str, entries: Sequence[tuple[str, bytes, int]], folder: bool,
                     owner: tuple[int, int] | None = None) -> str:
        """The host path of a FileMount's content: the volume `volume`, filled once through a container
        that never starts (`image`, there already; the archive API writes into its volumes), the marker
        `done` written after the content, so that a half-written volume is filled again."""
        self.ensure_volume(volume, labels)
        api = self._api
        with self._helper(image, f"{volume}:/gitsync-files", "files-helper") as helper:
            if self._stat(helper, "/gitsync-files/done") is None:
                if not entries:
                    raise EngineError(self.host, f"volume {volume} has lost its files and their content is no longer known; the next change of them in Git writes them again", reached=True, transient=False)
                if not api.put_archive(helper, "/gitsync-files", _files_tar(entries, folder, owner)):
                    raise EngineError(self.host, f"could not write the files of {volume}", reached=True)
        with _translated(self.host):
            mountpoint = str(api.inspect_volume(volume).get("Mountpoint") or "")
        if not mountpoint.startswith("/"):
            raise EngineError(self.host, f"volume {volume} has no mount point on the host (driver local expected)", reached=True)
        return mountpoint + "/data"

    def prune_files(self, agent: str, timeout: float) -> list[str]:
        """Remove this agent's files volumes that no container of it mounts any more; their names."""
        in_use: set[str] = set()
        for c in self.list_containers(f"io.gitsync.managed-by={agent}", timeout):
            in_use.update(v for v in str((c.get("Labels") or {}).get("io.gitsync.files", "")).split(",") if v)
        removed = []
        for v in self.list_volumes(timeout):
            labels = v.get("Labels") or {}
            if labels.get("io.gitsync.managed-by") == agent and labels.get("io.gitsync.role") == "files" and v.get("Name") not in in_use:
                try:
                    with _translated(self.host):
                        self._api.remove_volume(v["Name"])
                    removed.append(str(v["Name"]))
                except HostError:
                    pass  # in use after all (a create in flight): the next sync looks again
        return removed

    def prune_networks(self, prefix: str, agent: str) -> list[str]:
        """Remove the agent's networks named `prefix`... that no container is on; their names."""
        removed = []
        with _translated(self.host):
            found = self._api.networks(filters={"label": f"io.gitsync.managed-by={agent}"})
        for n in found:
            if not str(n.get("Name", "")).startswith(prefix):
                continue
            try:
                with _translated(self.host):
                    if self._api.inspect_network(n["Id"]).get("Containers"):
                        continue
                    self._api.remove_network(n["Id"])
                removed.append(str(n["Name"]))
            except HostError:
                pass  # joined meanwhile: the next apply looks again
        return removed

    def start(self, container: str) -> None:
        with _translated(self.host):
            self._api.start(container)

    def stop(self, container: str, grace: float) -> None:
        with _translated(self.host):
            self._api.stop(container, timeout=int(grace))

    def remove(self, container: str) -> None:
        """Remove the container, never its volumes."""
        with _translated(self.host):
            self._api.remove_container(container, v=False, force=True)

    def rename(self, container: str, name: str) -> None:
        with _translated(self.host):
            self._api.rename(container, name)

    def signal(self, container: str, signal: str) -> None:
        """Send a signal (e.g. SIGUSR2) to the container's main process."""
        with _translated(self.host):
            self._api.kill(container, signal=signal)

    def put_file(self, container: str, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write one file into the container (through the API: no shell, no ssh)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(posixpath.basename(path))
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
        with _translated(self.host):
            if not self._api.put_archive(container, posixpath.dirname(path) or "/", buf.getvalue()):
                raise EngineError(self.host, f"could not write {path} into {container}", reached=True)

    def read_file(self, container: str, path: str, limit: int = 1 << 20) -> bytes | None:
        """One file out of the container (running or not); None when it has no such file."""
        try:
            with _translated(self.host):
                stream, _ = self._api.get_archive(container, path)
                raw = b"".join(stream)
        except NotFound:
            return None
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            member = next((m for m in tar.getmembers() if m.isfile()), None)
            f = tar.extractfile(member) if member is not None and member.size <= limit else None
            return f.read() if f is not None else None

    def logs(self, container: str, tail: int = 20) -> str:
        with _translated(self.host):
            out = self._api.logs(container, stdout=True, stderr=True, tail=tail)
        return out.decode("utf-8", "replace") if isinstance(out, bytes) else str(out)

    def run(self, container: str, argv: list[str]) -> tuple[int, str]:
        """Run a command in the running container; its exit code and output (stdout and stderr)."""
        with _translated(self.host):
            exec_id = self._api.exec_create(container, argv, stdout=True, stderr=True)["Id"]
            output = self._api.exec_start(exec_id)
            code = self._api.exec_inspect(exec_id).get("ExitCode")
        text = output.decode("utf-8", "replace") if isinstance(output, bytes) else str(output)
        return (code if isinstance(code, int) else -1), text

    def has_network(self, name: str) -> bool:
        with _translated(self.host):
            return any(n.get("Name") == name for n in self._api.networks(names=[name]))

    def ensure_network(self, name: str, labels: Mapping[str, str]) -> str:
        """The id of the user-defined bridge network `name`, created unless it exists."""
        for _ in range(2):
            with _translated(self.host):
                found = sorted((n for n in self._api.networks(names=[name]) if n.get("Name") == name), key=lambda n: (n.get("Created", ""), n["Id"]))
            for extra in found[1:]:  # Docker allows two networks of one name (made at the same moment): keep the oldest
                with contextlib.suppress(EngineError), _translated(self.host):
                    self._api.remove_network(extra["Id"])
            if found:
                return str(found[0]["Id"])
            try:
                with _translated(self.host):
                    return str(self._api.create_network(name, driver="bridge", labels=dict(labels), check_duplicate=True)["Id"])
            except Conflict:
                continue  # made meanwhile by someone else: look it up again
        raise EngineError(self.host, f"network {name} could neither be found nor created", reached=True)

    def join(self, container: str, network: str, aliases: tuple[str, ...] = ()) -> bool:
        """Connect a container (running or not) to a network unless it is on it; whether it joined now."""
        info = self.inspect(container)
        if info is None:
            raise NotFound(self.host, f"no container {container}")
        if network in info.networks:
            return False
        with _translated(self.host):
            self._api.connect_container_to_network(container, network, aliases=list(aliases) or None)
        return True

    def address_on(self, container: str, network: str) -> str | None:
        """The container's IP address on a network it is on."""
        info = self.inspect(container)
        return (info.networks.get(network) or None) if info is not None else None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._api.close()


def _tls(h: HostSettings) -> docker.tls.TLSConfig | bool:
    if h.tls is None:
        return False
    return docker.tls.TLSConfig(
        client_cert=(h.tls.cert, h.tls.key) if h.tls.cert and h.tls.key else None,
        ca_cert=h.tls.ca,
        verify=h.tls.ca or True,
    )


def connect(h: HostSettings, timeout: float, negotiate_timeout: float) -> Engine:
    """An engine client for the host; the API version is negotiated within `negotiate_timeout` (a dead
    host must not hold a sync for long). For TLS hosts trust_env is off before the first request:
    requests lets $REQUESTS_CA_BUNDLE / $CURL_CA_BUNDLE override a session's own `verify`, which would
    silently replace hosts[].tls.ca with the system bundle."""
    check_transport(h)
    tls = _tls(h)
    try:
        api = docker.APIClient(
            base_url=h.url,
            tls=tls,
            version=None if tls is False else "1.24",
            timeout=int(min(timeout, negotiate_timeout)),
            use_ssh_client=h.url.startswith("ssh://"),
            max_pool_size=16,
        )
        if tls is not False:
            api.trust_env = False
            api._version = api._retrieve_server_version()
        api.timeout = int(timeout)
    except Exception as exc:  # the SDK raises several kinds while negotiating
        raise EngineError(h.name, explain(exc)) from None
    return Engine(h.name, api)


def _pinned(h: HostSettings) -> docker.APIClient:
    """A client with a pinned API version: no negotiation round trip (/_ping and /events need none)."""
    check_transport(h)
    c = docker.APIClient(base_url=h.url, tls=_tls(h), version="1.24", timeout=5, use_ssh_client=h.url.startswith("ssh://"))
    if h.tls is not None:
        c.trust_env = False  # see connect
    return c


class Pinger:
    """Asks one engine /_ping, on a client of its own kept between probes."""

    def __init__(self, h: HostSettings) -> None:
        self.host = h.name
        self._api = _pinned(h)

    def ping(self, timeout: float) -> None:
        """Returns when the engine answered in time; raises EngineError saying why not."""
        api = self._api
        with _translated(self.host):
            r = api._get(api._url("/_ping", versioned_api=False), timeout=timeout)
            r.raise_for_status()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._api.close()


class _KeepaliveAdapter(requests.adapters.HTTPAdapter):
    """TCP keepalive on an event stream: the kernel notices a peer gone silent (a cut network, a dead
    machine) after idle + interval * count seconds, at no cost to us."""

    def __init__(self, tune: Tunables) -> None:
        self._options = [
            (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
            (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, tune.keepalive_idle),
            (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, tune.keepalive_interval),
            (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, tune.keepalive_count),
        ]
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["socket_options"] = HTTPConnection.default_socket_options + self._options
        super().init_poolmanager(*args, **kwargs)


def _timed_out(exc: BaseException) -> bool:
    """The kernel gave up on a silent peer (ETIMEDOUT), somewhere in the chain of causes."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno == errno.ETIMEDOUT:
            return True
        nxt = seen.__cause__ or seen.__context__
        if nxt is None and seen.args and isinstance(seen.args[-1], BaseException):
            nxt = seen.args[-1]  # urllib3's ProtocolError carries the OSError as an argument
        seen = nxt
    return False


class EventStream:
    """A host's Docker event stream (decoded events), on a connection of its own that is alive for as
    long as the engine is: it ends when the engine closes it (it stopped), when the kernel's keepalive
    finds the peer gone (tcp://), or when closed. Iterating raises EngineError on any of those."""

    def __init__(self, host: str, api: docker.APIClient, events: Iterator[dict[str, Any]], silence: float) -> None:
        self.host = host
        self._api = api
        self._events = events
        self._silence = silence
        self.silent_for = 0.0  # once it ended: how long the peer had been silent (keepalive gave up), else 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            yield from self._events
        except Exception as exc:
            if _timed_out(exc):
                self.silent_for = self._silence
            raise EngineError(self.host, explain(exc)) from None

    def close(self) -> None:
        for close in (getattr(self._events, "close", None), self._api.close):
            with contextlib.suppress(Exception):
                if close is not None:
                    close()


def follow_events(h: HostSettings, since: int, filters: Mapping[str, list[str]], tune: Tunables = DEFAULT) -> EventStream:
    """Follow a host's events from `since` (seconds), on a client of its own with no read timeout: an
    idle stream is not a dead one, TCP keepalive tells them apart (unix sockets close with the engine)."""
    try:
        api = _pinned(h)
        if h.url.startswith("tcp://"):
            api.mount("http://", _KeepaliveAdapter(tune))
            api.mount("https://", _KeepaliveAdapter(tune))
        api.timeout = (5, None)  # connect within 5 s, then read for as long as it lasts
        silence = float(tune.keepalive_idle + tune.keepalive_interval * tune.keepalive_count) if h.url.startswith("tcp://") else 0.0
        return EventStream(h.name, api, api.events(since=since, filters=dict(filters), decode=True), silence)
    except HostError:
        raise
    except Exception as exc:
        raise EngineError(h.name, explain(exc)) from None


class SwarmManager:
    """A Swarm manager's API (services, tasks, nodes, overlay networks), for the swarm runtime.
    Specs go in and come out as the Engine API writes them (``TaskTemplate``, ``Mode``, ...)."""

    def __init__(self, host: str, api: docker.APIClient) -> None:
        self.host = host
        self._api = api

    def state(self) -> tuple[str, bool, str]:
        """(this engine's swarm state, whether it can manage the swarm, the swarm's id)."""
        with _translated(self.host):
            sw = self._api.info().get("Swarm") or {}
        return str(sw.get("LocalNodeState") or "inactive"), bool(sw.get("ControlAvailable")), str((sw.get("Cluster") or {}).get("ID") or "")

    def nodes(self) -> list[dict[str, Any]]:
        with _translated(self.host):
            return list(self._api.nodes())

    def services(self, label: str) -> list[dict[str, Any]]:
        with _translated(self.host):
            return list(self._api.services(filters={"label": label}))

    def service_names(self) -> set[str]:
        with _translated(self.host):
            return {str((s.get("Spec") or {}).get("Name", "")) for s in self._api.services()}

    def tasks(self, label: str) -> list[dict[str, Any]]:
        """The tasks of the services with `label` (Swarm keeps a few ended ones per slot)."""
        with _translated(self.host):
            return list(self._api.tasks(filters={"label": label}))

    def service_tasks(self, ident: str) -> list[dict[str, Any]]:
        with _translated(self.host):
            return list(self._api.tasks(filters={"service": ident}))

    def image_digest(self, image: str) -> str:
        """The digest the image's registry gives its tag now, asked through the manager (its registry
        settings and credentials); raises EngineError when the registry does not answer."""
        with _translated(self.host):
            return str(self._api.inspect_distribution(image)["Descriptor"]["digest"])

    def inspect_service(self, ident: str) -> dict[str, Any] | None:
        try:
            with _translated(self.host):
                return dict(self._api.inspect_service(ident))
        except NotFound:
            return None

    def create_service(self, spec: Mapping[str, Any]) -> str:
        with _translated(self.host):
            out = self._api.create_service(
                spec["TaskTemplate"], name=spec["Name"], labels=spec.get("Labels"), mode=spec.get("Mode"),
                update_config=spec.get("UpdateConfig"), rollback_config=spec.get("RollbackConfig"), endpoint_spec=spec.get("EndpointSpec"),
            )
        return str(out.get("ID") or "")

    def update_service(self, ident: str, version: int, spec: Mapping[str, Any]) -> list[str]:
        """Submit the whole spec at the version read (a concurrent change makes it fail, never lost); Swarm's warnings."""
        with _translated(self.host):
            out = self._api.update_service(
                ident, version, task_template=spec["TaskTemplate"], name=spec["Name"], labels=spec.get("Labels"), mode=spec.get("Mode"),
                update_config=spec.get("UpdateConfig"), rollback_config=spec.get("RollbackConfig"), endpoint_spec=spec.get("EndpointSpec"),
            )
        return [str(w) for w in (out or {}).get("Warnings") or []]

    def remove_service(self, ident: str) -> None:
        with contextlib.suppress(NotFound), _translated(self.host):
            self._api.remove_service(ident)

    def objects(self, kind: str, label: str) -> dict[str, tuple[str, dict[str, str]]]:
        """Swarm configs or secrets (`kind`) with `label`: name -> (id, labels)."""
        with _translated(self.host):
            listed = self._api.configs(filters={"label": label}) if kind == "config" else self._api.secrets(filters={"label": label})
        return {o["Spec"]["Name"]: (o["ID"], dict(o["Spec"].get("Labels") or {})) for o in listed}

    def ensure_object(self, kind: str, name: str, data: bytes, labels: Mapping[str, str], have: Mapping[str, str]) -> str:
        """A Swarm config or secret (immutable: its name says its content), unless in `have` (name -> id); its id."""
        if name in have:
            return have[name]
        create = self._api.create_config if kind == "config" else self._api.create_secret
        try:
            with _translated(self.host):
                return str(create(name, data, labels=dict(labels))["ID"])
        except Conflict:  # made meanwhile
            with _translated(self.host):
                listed = self._api.configs(filters={"name": name}) if kind == "config" else self._api.secrets(filters={"name": name})
            return str(next(o["ID"] for o in listed if o["Spec"]["Name"] == name))

    def remove_object(self, kind: str, ident: str) -> bool:
        try:
            with _translated(self.host):
                (self._api.remove_config if kind == "config" else self._api.remove_secret)(ident)
            return True
        except (NotFound, Conflict):
            return False
        except EngineError:  # still in use by a task shutting down: the next apply removes it
            return False

    def network_exists(self, name: str) -> bool:
        with _translated(self.host):
            return any(n.get("Name") == name for n in self._api.networks(names=[name]))

    def ensure_overlay(self, name: str, labels: Mapping[str, str]) -> None:
        """An attachable overlay network (made once; a concurrent maker wins)."""
        if self.network_exists(name):
            return
        with contextlib.suppress(Conflict), _translated(self.host):
            self._api.create_network(name, driver="overlay", attachable=True, labels=dict(labels), check_duplicate=True)

    def remove_network(self, name: str) -> bool:
        try:
            with _translated(self.host):
                self._api.remove_network(name)
            return True
        except (NotFound, Conflict):
            return False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._api.close()


def connect_manager(h: HostSettings, timeout: float) -> SwarmManager:
    """A client for one manager of a Swarm; raises EngineError when it does not answer, or answers but
    cannot manage a swarm (a worker, or an engine in no swarm)."""
    engine = connect(h, timeout, timeout)
    manager = SwarmManager(h.name, engine._api)
    try:
        state, control, _ = manager.state()
    except EngineError:
        manager.close()
        raise
    if state != "active" or not control:
        manager.close()
        what = "is in no swarm" if state != "active" else "is a worker, not a manager"
        raise EngineError(h.name, f"{what} (runtime swarm needs a manager: `docker node ls` works there)")
    return manager
