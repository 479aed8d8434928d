"""The desired state as frozen data: what the manifests say, normalised."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar



class UpdateOrder(enum.StrEnum):
    START_FIRST = "start-first"
    STOP_FIRST = "stop-first"


class RestartPolicy(enum.StrEnum):
    NO = "no"
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    UNLESS_STOPPED = "unless-stopped"


class Sealed:
    """A secret value: shown nowhere (its repr names the secret; JSON cannot take it), compared by its
    keyed digest, and revealed only where a replica is made. A preview's holds no value at all."""

    __slots__ = ("_value", "digest", "name")

    def __init__(self, value: bytes | None, digest: str, name: str = "secret") -> None:
        self._value = value
        self.digest = digest  # keyed (sops.AgeKeys.digest): tells a change, not the value
        self.name = name  # "db/password", for messages

    def reveal(self) -> bytes:
        if self._value is None:
            raise RuntimeError(f"secret {self.name} was not decrypted (a preview never decrypts)")
        return self._value

    @property
    def known(self) -> bool:
        return self._value is not None

    def __repr__(self) -> str:
        return f"<secret {self.name}>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sealed) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)


@dataclass(frozen=True)
class Origin:
    """Where an object was declared: ``apps/web.yaml:12``."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Port:
    container_port: int
    host_port: int | None = None
    protocol: str = "tcp"
    host_ip: str | None = None  # the host address hostPort is published on (default: every address)


@dataclass(frozen=True)
class VolumeMount:
    name: str
    mount_path: str
    read_only: bool = False


class AccessMode(enum.StrEnum):
    READ_WRITE_ONCE = "ReadWriteOnce"  # one writer: one replica, rolled stop-first
    READ_WRITE_MANY = "ReadWriteMany"
    READ_ONLY_MANY = "ReadOnlyMany"


@dataclass(frozen=True)
class Volume:
    """A declared volume. Undeclared names a deployment mounts are implicit: host-local, ReadWriteOnce."""

    KIND: ClassVar[str] = "Volume"  # its documents' kind

    name: str
    driver: str = "local"
    driver_opts: tuple[tuple[str, str], ...] = ()
    access_mode: AccessMode = AccessMode.READ_WRITE_ONCE
    shared: bool = False  # every host sees the same data (network storage)
    per_replica: bool = False  # replica N mounts its own volume <name>-N
    external: bool = False  # made outside gitsync: used where it exists, never made, labelled or compared
    origin: Origin | None = field(default=None, compare=False)

    def docker_name(self, replica: int) -> str:
        return f"{self.name}-{replica}" if self.per_replica else self.name


class NetworkMode(enum.StrEnum):
    BRIDGE = "bridge"  # the agent's network (a user-defined bridge), where Services reach replicas
    HOST = "host"
    NONE = "none"


@dataclass(frozen=True)
class BindMount:
    """A path of the host mounted into the container (``volumes[].hostPath``): host data, never moved."""

    host_path: str
    mount_path: str
    read_only: bool = False
    relabel: str = ""  # SELinux: "z" (shared with other containers), "Z" (this container's own), "" none
    key: str = field(default="", compare=False)  # where it was written: spec.volumes[2].hostPath
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class FileMount:
    """Files of the repository mounted read-only into every replica (``spec.files``): one file, or a
    folder's files. On each host that runs a replica they rest in a Docker volume of their own,
    named by `digest`, so a commit that changes them rolls the replicas onto a new one."""

    mount_path: str
    digest: str  # sha256 of the paths, modes and contents: what a change rolls on
    folder: bool = False
    entries: tuple[tuple[str, bytes | Sealed, int], ...] = field(default=(), compare=False, repr=False)  # (path inside, content, mode)
    source: str = field(default="", compare=False)  # where in the repository, for messages
    line: int = field(default=0, compare=False)
    secret: str = ""  # a secret's file ("db/password"): its digest is keyed, its content never shown
    owner: tuple[int, int] | None = None  # uid, gid (default root)


@dataclass(frozen=True)
class ContainerOptions:
    """The container fields beyond image, command, env, ports and volumes; defaults are Docker's.

    `lines` says where each set field was written (``spec.privileged`` -> 14), for policy messages."""

    entrypoint: tuple[str, ...] | None = None
    working_dir: str | None = None
    user: str | None = None
    hostname: str | None = None
    memory: int | None = None  # resources.limits.memory, bytes
    cpus: float | None = None  # resources.limits.cpus
    memory_reservation: int | None = None  # resources.reservations.memory, bytes (a soft limit)
    cpus_reservation: float | None = None  # resources.reservations.cpus: a relative CPU weight (CpuShares)
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    read_only_root: bool = False
    tmpfs: tuple[tuple[str, str], ...] = ()  # (path, mount options)
    extra_hosts: tuple[tuple[str, str], ...] = ()  # (name, address)
    init: bool = False
    log_driver: str | None = None
    log_options: tuple[tuple[str, str], ...] = ()
    ulimits: tuple[tuple[str, int, int], ...] = ()  # (name, soft, hard)
    shm_size: int | None = None
    stop_signal: str | None = None
    security_opt: tuple[str, ...] = ()
    devices: tuple[tuple[str, str, str], ...] = ()  # (host path, container path, permissions)
    privileged: bool = False
    network_mode: NetworkMode = NetworkMode.BRIDGE
    dns: tuple[str, ...] = ()  # name servers (addresses)
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    pids_limit: int | None = None
    tty: bool = False
    stdin_open: bool = False
    sysctls: tuple[tuple[str, str], ...] = ()  # namespaced kernel parameters only (the container's own)
    group_add: tuple[str, ...] = ()  # supplementary groups of the main process (names or gids)
    domainname: str | None = None
    oom_score_adj: int | None = None  # -1000 (never killed first) .. 1000
    mem_swappiness: int | None = None  # 0 .. 100
    memswap_limit: int | None = None  # memory plus swap, bytes (-1: unlimited swap)
    networks: tuple[str, ...] = ()  # the agent's own networks it is on, by name (none: the agent's one network)
    external_networks: tuple[str, ...] = ()  # Docker networks made by others it joins (a reverse proxy's)
    binds: tuple[BindMount, ...] = ()
    files: tuple[FileMount, ...] = ()
    secret_env: tuple[tuple[str, str, Sealed], ...] = ()  # (variable, "db/password", value): asked for as environment
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class SecretRef:
    """A deployment's use of a Secret's key (or of all its keys, as a folder), as a file or a variable."""

    secret: str
    key: str | None
    path: str | None = None  # a file (a folder when key is None)
    env: str | None = None  # or an environment variable
    mode: int = 0o400
    owner: tuple[int, int] | None = None
    line: int = 0
    at: str = ""  # the manifest key, for messages


@dataclass(frozen=True)
class Secret:
    """Values that reach only the replicas that use them (decrypted from SOPS, or plain if allowed)."""

    KIND: ClassVar[str] = "Secret"  # its documents' kind

    name: str
    values: Mapping[str, Sealed] = field(default_factory=dict, repr=False)
    encrypted: bool = True
    origin: Origin | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Placement:
    host_selector: tuple[tuple[str, str], ...] = ()
    max_per_host: int | None = None

    def matches(self, host_labels: dict[str, str]) -> bool:
        return all(host_labels.get(k) == v for k, v in self.host_selector)

    def describe_selector(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.host_selector) or "any host"


@dataclass(frozen=True)
class Healthcheck:
    test: tuple[str, ...]
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0


@dataclass(frozen=True)
class UpdatePolicy:
    order: UpdateOrder = UpdateOrder.START_FIRST
    parallelism: int = 1


JOB_TIMEOUT = 600.0  # how long a job's replica may run before its change counts as failed


@dataclass(frozen=True)
class Deployment:
    KIND: ClassVar[str] = "Deployment"  # its documents' kind

    name: str
    image: str
    replicas: int = 1
    command: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    ports: tuple[Port, ...] = ()
    volumes: tuple[VolumeMount, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    placement: Placement = field(default_factory=Placement)
    healthcheck: Healthcheck | None = None
    update: UpdatePolicy = field(default_factory=UpdatePolicy)
    restart: RestartPolicy = RestartPolicy.UNLESS_STOPPED
    stop_grace_period: float = 10.0
    min_ready_seconds: float = 0.0
    depends_on: tuple[str, ...] = ()
    allow_data_move: bool = False  # a replica bound to its host-local data may be recreated elsewhere (the data stays)
    run_once: bool = False  # a job: each replica runs to completion once per change of its spec (exit 0: done)
    options: ContainerOptions = field(default_factory=ContainerOptions)
    origin: Origin | None = field(default=None, compare=False)
    secret_refs: tuple[SecretRef, ...] = field(default=(), compare=False, repr=False)  # uses of Secrets, until loading binds them

    @property
    def one_per_host(self) -> bool:
        """A fixed hostPort can be bound once per host."""
        return any(p.host_port is not None for p in self.ports)

    def gate_timeout(self) -> float:
        """How long a new replica may take to count as ready (a job: to finish) before the rollout fails."""
        if self.run_once:
            return JOB_TIMEOUT
        if self.healthcheck is not None:
            hc = self.healthcheck
            return max(10.0, hc.start_period + (hc.interval + hc.timeout) * (hc.retries + 1) + 5.0)
        return self.min_ready_seconds + 10.0

    def capacity_per_host(self) -> int | None:
        limits = [n for n in (self.placement.max_per_host, 1 if self.one_per_host else None) if n is not None]
        return min(limits) if limits else None


@dataclass(frozen=True)
class ServicePort:
    port: int  # what clients use: <service>:<port>
    target_port: int  # the replicas' container port
    host_port: int | None = None  # also published on the hosts the Service's hostSelector picks
    host_ip: str | None = None  # on this address of theirs only (default: every address)
    origin: Origin | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Service:
    """A stable name over the replicas of the deployments whose labels match `selector`."""

    KIND: ClassVar[str] = "Service"  # its documents' kind

    name: str
    selector: tuple[tuple[str, str], ...]
    ports: tuple[ServicePort, ...] = ()
    host_selector: tuple[tuple[str, str], ...] = ()  # the hosts that publish hostPorts; () = every host
    origin: Origin | None = field(default=None, compare=False)


def selectors_overlap(a: tuple[tuple[str, str], ...], b: tuple[tuple[str, str], ...]) -> bool:
    """Whether some host could match both label selectors: unless they want different values for one key."""
    wants = dict(a)
    return all(wants.get(k, v) == v for k, v in b)


@dataclass(frozen=True)
class DesiredState:
    """Every object of the repository, by kind name, each kind's sorted by name."""

    objects: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # what loading noticed and went on (a compose key Swarm ignores too)

    def of(self, kind: str) -> tuple[Any, ...]:
        return self.objects.get(kind, ())

    @property
    def deployments(self) -> tuple[Deployment, ...]:
        return self.of(Deployment.KIND)

    @property
    def services(self) -> tuple[Service, ...]:
        return self.of(Service.KIND)

    @property
    def volumes(self) -> tuple[Volume, ...]:
        return self.of(Volume.KIND)

    # Indexes, built once per desired state (it never changes): a plan asks them per replica.
    @cached_property
    def _by_name(self) -> dict[tuple[str, str], Any]:
        return {(kind, o.name): o for kind, objs in self.objects.items() for o in reversed(objs)}

    @cached_property
    def _by_label(self) -> dict[tuple[str, str], frozenset[str]]:
        out: dict[tuple[str, str], set[str]] = {}
        for d in self.deployments:
            for pair in d.labels:
                out.setdefault(pair, set()).add(d.name)
        return {k: frozenset(v) for k, v in out.items()}

    def selected(self, svc: Service) -> dict[str, Deployment]:
        """The deployments a Service selects, by name: from the label index, not by asking each."""
        if not svc.selector:
            return {}
        names = frozenset.intersection(*(self._by_label.get(pair, frozenset()) for pair in svc.selector))
        return {n: self._by_name[(Deployment.KIND, n)] for n in sorted(names)}

    def volume(self, name: str) -> Volume:
        """The declared volume, or the implicit one a deployment mounts by that name."""
        return self._by_name.get((Volume.KIND, name)) or Volume(name)

    def data_volumes(self, d: Deployment, replica: int) -> list[tuple[str, Volume]]:
        """The volumes (Docker name, declaration) holding this replica's data on its host: mounted
        writable, host-local and ReadWriteOnce. A replica with such data is bound to its host."""
        out = []
        for m in d.volumes:
            v = self.volume(m.name)
            if not m.read_only and not v.shared and v.access_mode == AccessMode.READ_WRITE_ONCE:
                out.append((v.docker_name(replica), v))
        return out

    def single_writer(self, d: Deployment) -> str | None:
        """The ReadWriteOnce volume d mounts writable, if any: then d is rolled stop-first."""
        return next((m.name for m in d.volumes if not m.read_only and self.volume(m.name).access_mode == AccessMode.READ_WRITE_ONCE), None)

    def deployment(self, name: str) -> Deployment | None:
        got: Deployment | None = self._by_name.get((Deployment.KIND, name))
        return got

    def levels(self) -> list[list[str]]:
        """Deployments grouped so that each one comes after everything it depends on (validated acyclic)."""
        names = {d.name for d in self.deployments}
        deps = {d.name: [x for x in d.depends_on if x in names] for d in self.deployments}
        level: dict[str, int] = {}

        def depth(n: str, trail: tuple[str, ...] = ()) -> int:
            if n in level:
                return level[n]
            if n in trail:  # cannot happen after validation; never loop
                return 0
            level[n] = 1 + max((depth(x, (*trail, n)) for x in deps[n]), default=-1)
            return level[n]

        for n in sorted(names):
            depth(n)
        out: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
        for n in sorted(names):
            out[level[n]].append(n)
        return out
