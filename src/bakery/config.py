"""Load and validate bakery's settings: every problem reported at once, with its field path.

Settings live under the `bakery:` key of Invoke's configuration (invoke.yaml, `invoke -f
FILE`, INVOKE_BAKERY_* environment variables). Structure and types are checked by the pydantic
models below; the checks that relate fields to each other (an AZ's environment exists, DCS
failure domains name AZs, overlay ranges do not collide, ...) run in `topology_problems` once the
structure is sound, so a user sees every problem of a kind in one run.

Relative paths are taken relative to the working directory.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError, Problem
from .validation import Label, Model, problem_of

# Cloud resource names as the user wrote them in their cloud; printable, single line.
CloudName = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]{1,255}$")]
PortNumber = Annotated[int, Field(ge=1, le=65535)]
IPv4Net = ipaddress.IPv4Network
IPv4Addr = ipaddress.IPv4Address


class SecretSource(Model):
    """Where a secret the user owns comes from: an environment variable or a file (0600)."""

    env: Annotated[str, StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]*$")] | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretSource:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of 'env' (a variable name) or 'file' (a path)")
        return self


class Builder(Model):
    """Where `invoke bake` boots its builder VM in an environment. Unset fields come from the
    first AZ of the environment (network, flavor, compute AZ, security groups)."""

    network: CloudName | None = None
    flavor: CloudName | None = None
    compute_az: CloudName | None = None
    security_groups: list[CloudName] | None = None


class Environment(Model):
    """One OpenStack cloud: an entry of clouds.yaml."""

    cloud: CloudName
    region: CloudName | None = None
    builder: Builder = Builder()


class AvailabilityZone(Model):
    """What an `--az` label means: where and how its nodes are created."""

    environment: Label
    compute_az: CloudName | None = None
    network: CloudName
    subnet: IPv4Net | None = None
    flavor: CloudName
    key_pair: CloudName | None = None
    security_groups: list[CloudName] = []
    nodes: Annotated[int, Field(ge=1, le=9)] = 1
    # Private addresses for `render` without a cloud (launch takes them from the ports it makes).
    addresses: list[IPv4Addr] = []

    @model_validator(mode="after")
    def _addresses_fit(self) -> AvailabilityZone:
        if len(self.addresses) > self.nodes:
            raise ValueError(f"{len(self.addresses)} addresses given for {self.nodes} node(s)")
        if len(set(self.addresses)) != len(self.addresses):
            raise ValueError("addresses repeat")
        if self.subnet is not None:
            outside = [str(a) for a in self.addresses if a not in self.subnet]
            if outside:
                raise ValueError(f"addresses {outside} are outside subnet {self.subnet}")
        return self


class BaseImage(Model):
    """The cloud image a bake starts from: by exact name, else the newest image carrying these
    properties (default: os_distro and os_version of the image definition's base, as SCS
    images are labelled)."""

    name: CloudName | None = None
    properties: dict[
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_:.-]{1,255}$")], CloudName
    ] = {}


class Image(Model):
    definition: Label = "postgresql14-patroni"
    base_image: BaseImage = BaseImage()
    # How long a builder VM may take, in seconds, before the bake gives up and cleans up.
    build_timeout: Annotated[int, Field(ge=60, le=6 * 3600)] = 3600
    # `invoke rebuild`: bake again when the newest released image is older than this, even
    # without changed inputs (security updates of the base), and keep this many released
    # generations per environment (older ones are deleted once no server uses them).
    max_age_days: Annotated[int, Field(ge=1, le=365)] = 7
    keep_released: Annotated[int, Field(ge=1, le=20)] = 3


class DcsMember(Model):
    """One server of the DCS (a Consul server or an etcd member) and where it runs."""

    address: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.:-]{1,253}$")]
    # An AZ label from `azs`, or `external` for a member outside every AZ the cluster uses.
    failure_domain: Label


class Consul(Model):
    datacenter: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    auto_encrypt: bool = True
    gossip_key: SecretSource | None = None
    acl_token: SecretSource | None = None
    # The Consul cluster's CA; defaults to pki.ca_cert. Its key signs the client certificate
    # when auto_encrypt is off.
    ca_cert: Path | None = None
    ca_key: Path | None = None
    http_port: PortNumber = 8500
    # dnsmasq on the node forwards `.consul` names to the local agent (docs/monitoring.md).
    dns_forwarding: bool = True
    # The token the agent answers DNS queries with (service, node and query read); without
    # it, the anonymous token must allow those reads for DNS to answer.
    dns_token: SecretSource | None = None


class Etcd3(Model):
    port: PortNumber = 2379
    protocol: Literal["http", "https"] = "http"


class Dcs(Model):
    type: Literal["consul", "etcd3"] = "consul"
    members: Annotated[list[DcsMember], Field(min_length=1)]
    consul: Consul | None = None
    etcd3: Etcd3 | None = None

    @model_validator(mode="after")
    def _etcd3_defaults(self) -> Dcs:
        if self.type == "etcd3" and self.etcd3 is None:
            return self.model_copy(update={"etcd3": Etcd3()})
        return self


class PatroniTimings(Model):
    """Patroni's DCS timings; the bounds are Patroni's own (it refuses values outside them)."""

    ttl: Annotated[int, Field(ge=20)] = 30
    loop_wait: Annotated[int, Field(ge=1)] = 10
    retry_timeout: Annotated[int, Field(ge=3)] = 10
    maximum_lag_on_failover: Annotated[int, Field(ge=0)] = 1048576
    synchronous_mode: bool = False
    synchronous_mode_strict: bool = False
    failsafe_mode: bool = False

    @model_validator(mode="after")
    def _timings_fit(self) -> PatroniTimings:
        if self.loop_wait + 2 * self.retry_timeout > self.ttl:
            raise ValueError(
                f"loop_wait + 2 * retry_timeout = {self.loop_wait + 2 * self.retry_timeout} "
                f"exceeds ttl = {self.ttl}; Patroni needs loop_wait + 2*retry_timeout <= ttl"
            )
        return self


ParameterValue = str | bool | int | float


class Postgresql(Model):
    major: Annotated[int, Field(ge=13, le=17)] = 14
    port: PortNumber = 5432
    parameters: dict[
        Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_.]*$")], ParameterValue
    ] = {}
    # Networks whose clients may connect (hostssl + scram-sha-256); everything else is rejected.
    allowed_networks: Annotated[list[IPv4Net], Field(min_length=1)]

    @field_validator("parameters")
    @classmethod
    def _single_line(cls, parameters: dict[str, ParameterValue]) -> dict[str, ParameterValue]:
        for name, value in parameters.items():
            if isinstance(value, str) and ("\n" in value or "\r" in value or "\x00" in value):
                raise ValueError(f"parameter {name!r} contains a line break or NUL")
        return parameters


class PosixRepo(Model):
    type: Literal["posix"]
    path: Path = Path("/var/lib/pgbackrest")
    # The path is a file system every node mounts (NFS, CephFS...). Without it, each node's
    # repository is its own disk: archiving breaks at the first failover, and a new cluster
    # cannot be restored from it.
    shared: bool = False


# A host name for the S3 endpoint: pgBackRest 2.45 verifies certificates by DNS name only.
HostName = Annotated[
    str,
    StringConstraints(
        max_length=253,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
        r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$",
    ),
]


class S3Repo(Model):
    type: Literal["s3"]
    bucket: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]
    endpoint: HostName
    port: PortNumber = 443
    region: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    uri_style: Literal["host", "path"] = "host"
    path: Path = Path("/pgbackrest")
    # The CA that signed the endpoint's certificate (PEM, delivered to the nodes); without it
    # the system's trust store is used.
    ca_file: Path | None = None
    verify_tls: bool = True
    key: SecretSource
    key_secret: SecretSource

    @field_validator("endpoint", mode="before")
    @classmethod
    def _host_only(cls, value: Any) -> Any:
        if isinstance(value, str) and ("://" in value or ":" in value or "/" in value):
            raise ValueError(
                "give the host name only: no scheme, port or path (the port is repo.port)"
            )
        if isinstance(value, str) and _is_ip_address(value):
            raise ValueError(
                "an IP address: pgBackRest 2.45 checks certificates by DNS name only; "
                "give the endpoint's host name"
            )
        return value


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


Repository = Annotated[PosixRepo | S3Repo, Field(discriminator="type")]
# systemd OnCalendar expressions ("Sun *-*-* 01:00:00", "daily"); `systemd-analyze calendar`
# checks them in the render tier. One line, none of the characters a unit file would misread.
Calendar = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9 ,.:*/~+_-]{1,100}$")]


class BackupSchedule(Model):
    """When the backup timers fire on every node; only the leader's job backs up."""

    full: Calendar = "Sun *-*-* 01:00:00"
    diff: Calendar | None = "Mon..Sat *-*-* 01:00:00"


class PgBackRest(Model):
    repo: Repository = PosixRepo(type="posix")
    # repo1-cipher-type=aes-256-cbc with a passphrase generated into the state directory.
    encryption: bool = False
    retention_full: Annotated[int, Field(ge=1, le=99)] = 2
    retention_diff: Annotated[int, Field(ge=1, le=99)] | None = None
    # WAL archiving to the repository; default: on when every node reaches the repository
    # (s3, or a shared posix mount). A node-local repository is not reachable after a failover,
    # and an archive_command that fails keeps WAL forever.
    archive: bool | None = None
    # Scheduled backups (needs archiving); null turns the timers off.
    schedule: BackupSchedule | None = BackupSchedule()

    @property
    def shared(self) -> bool:
        """Every node reaches the same repository."""
        return self.repo.type == "s3" or self.repo.shared

    @property
    def archiving(self) -> bool:
        return self.shared if self.archive is None else self.archive

    @property
    def scheduled(self) -> bool:
        return self.archiving and self.schedule is not None


class Restore(Model):
    """Bootstrap a new cluster from a repository instead of initdb."""

    # The stanza (the scope of the cluster the backups came from); default: cluster.scope.
    from_scope: Label | None = None
    # Recover to this moment (with a UTC offset); without it, to the end of the archived WAL.
    target_time: AwareDatetime | None = None
    # The source's repository, when it is not this cluster's own.
    repo: Repository | None = None
    # The source repository's passphrase, when `repo` is given and encrypted.
    cipher_pass: SecretSource | None = None


class Cluster(Model):
    name_prefix: Label = "postgresql"
    scope: Label
    namespace: Label = "service"
    dcs: Dcs
    patroni: PatroniTimings = PatroniTimings()
    postgresql: Postgresql
    pgbackrest: PgBackRest = PgBackRest()
    restore: Restore | None = None


class Pki(Model):
    """The cluster CA: signs the REST API and PostgreSQL server certificates."""

    ca_cert: Path
    ca_key: Path
    cert_days: Annotated[int, Field(ge=1, le=3650)] = 365


class Lighthouse(Model):
    overlay_address: IPv4Addr
    # host:port of the lighthouse on the underlay, as Nebula's static_host_map wants it.
    public_address: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.-]{1,253}:[0-9]{1,5}$")]


class Overlay(Model):
    type: Literal["none", "nebula"] = "none"
    cidr: IPv4Net | None = None
    listen_port: PortNumber = 4242
    first_node_address: IPv4Addr | None = None
    ca_cert: Path | None = None
    ca_key: Path | None = None
    lighthouses: list[Lighthouse] = []
    groups: list[Label] = ["postgres"]


class Monitoring(Model):
    """Metrics exporters on every node, and who may scrape them."""

    # node_exporter and postgres_exporter (Debian packages in the image), started at first boot.
    exporters: bool = True
    # The address the exporters listen on: the overlay's (the default when there is one) or
    # the private network's.
    listen: Literal["overlay", "private"] | None = None
    # Where Prometheus scrapes from; default: cluster.postgresql.allowed_networks.
    networks: list[IPv4Net] | None = None


class Lifecycle(Model):
    """Watching and changing a running cluster: launch waits, status, roll, replace, destroy.
    Nodes are read through their console (BAKERY-NODE lines, docs/node-report.md)."""

    # A replica further behind (bytes) is unhealthy; default: cluster.patroni's
    # maximum_lag_on_failover, the lag Patroni still promotes from.
    max_lag: Annotated[int, Field(ge=0)] | None = None
    # Each node's reporter writes a line at every change and at least this often (seconds).
    report_heartbeat: Annotated[int, Field(ge=30, le=3600)] = 180
    # How long `launch` waits for a healthy cluster, and roll/replace for one node to stream.
    launch_timeout: Annotated[int, Field(ge=60, le=6 * 3600)] = 1800
    node_timeout: Annotated[int, Field(ge=60, le=6 * 3600)] = 1800
    # How long a graceful stop of a server may take before it is deleted anyway.
    stop_timeout: Annotated[int, Field(ge=10, le=3600)] = 300
    # Where this machine reaches the DCS's HTTP API (an etcd3 member's JSON gateway or a Consul
    # agent), e.g. https://10.0.0.5:2379; unset: not reachable, and bakery says what to do
    # by hand instead (destroy: clear the scope's keys).
    dcs_url: (
        Annotated[str, StringConstraints(pattern=r"^https?://[A-Za-z0-9.:\[\]-]+/?$")] | None
    ) = None


class LocalTarget(Model):
    """`invoke launch --target local`: the cluster as QEMU VMs on this machine, each AZ on a
    segment of its own (the AZ's `subnet`) behind a router on a routed underlay, where the
    external place (etcd, the Nebula lighthouse) lives. Addresses exist only inside the
    network namespaces the tool creates."""

    # The build directory of `invoke bake --target local` (its build.json names the qcow2);
    # default: build/<image.definition>.
    image: Path | None = None
    # The routed network between the AZ routers and the external place: the external place
    # takes its first host (the lighthouse's public address), the routers the next ones.
    underlay: IPv4Net = ipaddress.IPv4Network("198.51.100.0/24")
    memory_mb: Annotated[int, Field(ge=512, le=65536)] = 1024
    cpus: Annotated[int, Field(ge=1, le=16)] = 1
    # KVM when /dev/kvm is usable (a CPU with vmx/svm), else TCG (software emulation).
    accel: Literal["auto", "kvm", "tcg"] = "auto"


class Settings(Model):
    state_dir: Path = Path(".bakery")
    # Templates here are used instead of the project's own of the same name.
    template_overrides: Path | None = None
    environments: Annotated[dict[Label, Environment], Field(min_length=1)]
    azs: Annotated[dict[Label, AvailabilityZone], Field(min_length=1)]
    image: Image = Image()
    cluster: Cluster
    pki: Pki
    overlay: Overlay = Overlay()
    monitoring: Monitoring = Monitoring()
    lifecycle: Lifecycle = Lifecycle()
    local: LocalTarget = LocalTarget()

    @property
    def max_lag(self) -> int:
        """The replication lag (bytes) under which a replica counts as healthy."""
        configured = self.lifecycle.max_lag
        return self.cluster.patroni.maximum_lag_on_failover if configured is None else configured


def load_settings(raw: Mapping[str, Any] | None) -> Settings:
    """Validate the `bakery:` section; raise ConfigError listing every problem found."""
    if not isinstance(raw, Mapping):
        raise ConfigError(
            [Problem("bakery", "section missing: give a config with a 'bakery:' key")]
        )
    try:
        settings = Settings.model_validate(dict(raw))
    except ValidationError as error:
        raise ConfigError(
            [
                problem_of(_untagged(e), "bakery", "examples/", _SECRET_FIELDS)
                for e in error.errors()
            ]
        ) from None
    problems = topology_problems(settings)
    if problems:
        raise ConfigError(problems)
    return settings


def _untagged(error: Any) -> Any:
    """pydantic names the chosen variant of a repository in the path (`repo.s3.bucket`); the
    user wrote `repo.bucket`."""
    loc = list(error["loc"])
    for i in range(len(loc) - 1, 0, -1):
        if loc[i - 1] == "repo" and loc[i] in ("s3", "posix"):
            del loc[i]
    return {**error, "loc": tuple(loc)}


# Fields that carry a secret source: a secret written inline by mistake is never echoed.
_SECRET_FIELDS = {"gossip_key", "acl_token", "dns_token", "key", "key_secret", "cipher_pass"}


def topology_problems(settings: Settings) -> list[Problem]:
    """Checks across fields: references resolve, ranges do not collide, the DCS is coherent."""
    problems: list[Problem] = []
    for label, az in settings.azs.items():
        if az.environment not in settings.environments:
            problems.append(
                Problem(
                    f"bakery.azs.{label}.environment",
                    f"{az.environment!r} is not an environment; "
                    f"known: {', '.join(sorted(settings.environments))}",
                )
            )
    problems += _environment_problems(settings)
    problems += _dcs_problems(settings)
    if not problems:
        from .node.plan import dcs_survival_problems  # plan imports this module

        problems += dcs_survival_problems(settings, list(settings.azs))
    problems += _overlay_problems(settings)
    problems += _name_problems(settings)
    problems += _backup_problems(settings)
    problems += _monitoring_problems(settings)
    return problems


def _environment_problems(settings: Settings) -> list[Problem]:
    """Two labels for one cloud and region would make two bakes (and two sets of node names)
    in the same project, each taking the other's resources for its own."""
    seen: dict[tuple[str, str | None], str] = {}
    problems = []
    for label, environment in settings.environments.items():
        key = (environment.cloud, environment.region)
        if key in seen:
            problems.append(
                Problem(
                    f"bakery.environments.{label}",
                    f"same cloud {environment.cloud!r} and region as environment {seen[key]!r}: "
                    "give each cloud (and region) one environment",
                )
            )
        seen.setdefault(key, label)
    return problems


def builder_problems(settings: Settings) -> list[Problem]:
    """For a bake (not for rendering): every environment gets an image, so its builder needs
    a network and a flavor, given or taken from one of its AZs."""
    problems = []
    for label, environment in settings.environments.items():
        for key in ("network", "flavor"):
            if getattr(environment.builder, key) is None and first_az(settings, label) is None:
                problems.append(
                    Problem(
                        f"bakery.environments.{label}.builder.{key}",
                        "required: no AZ uses this environment to take it from",
                    )
                )
    return problems


def first_az(settings: Settings, environment: str) -> AvailabilityZone | None:
    return next((az for az in settings.azs.values() if az.environment == environment), None)


def _dcs_problems(settings: Settings) -> list[Problem]:
    dcs = settings.cluster.dcs
    where = "bakery.cluster.dcs"
    problems = []
    allowed = {*settings.azs, "external"}
    for i, member in enumerate(dcs.members):
        if member.failure_domain not in allowed:
            problems.append(
                Problem(
                    f"{where}.members.{i}.failure_domain",
                    f"{member.failure_domain!r} is neither an AZ label nor 'external'; "
                    f"allowed: {', '.join(sorted(allowed))}",
                )
            )
    addresses = [m.address for m in dcs.members]
    if len(set(addresses)) != len(addresses):
        problems.append(Problem(f"{where}.members", "a member address appears twice"))
    other = "etcd3" if dcs.type == "consul" else "consul"
    if getattr(dcs, other) is not None:
        problems.append(
            Problem(f"{where}.{other}", f"set, but {where}.type is {dcs.type!r}: remove one")
        )
    if dcs.type == "consul" and dcs.consul is None:
        problems.append(
            Problem(f"{where}.consul", "required when type is 'consul' (at least datacenter)")
        )
    if dcs.consul is not None and dcs.consul.dns_token and not dcs.consul.acl_token:
        problems.append(
            Problem(f"{where}.consul.dns_token", "set, but acl_token is not: ACLs are off")
        )
    return problems


def _overlay_problems(settings: Settings) -> list[Problem]:
    overlay = settings.overlay
    where = "bakery.overlay"
    if overlay.type == "none":
        return [
            Problem(f"{where}.{key}", "set, but overlay.type is 'none'")
            for key in ("cidr", "first_node_address", "ca_cert", "ca_key")
            if getattr(overlay, key) is not None
        ] + (
            [Problem(f"{where}.lighthouses", "set, but overlay.type is 'none'")]
            if overlay.lighthouses
            else []
        )
    problems = [
        Problem(f"{where}.{key}", "required when overlay.type is 'nebula'")
        for key in ("cidr", "ca_cert", "ca_key")
        if getattr(overlay, key) is None
    ]
    if not overlay.lighthouses:
        problems.append(Problem(f"{where}.lighthouses", "at least one lighthouse is required"))
    if overlay.cidr is None:
        return problems
    for i, lighthouse in enumerate(overlay.lighthouses):
        if lighthouse.overlay_address not in overlay.cidr:
            problems.append(
                Problem(
                    f"{where}.lighthouses.{i}.overlay_address",
                    f"{lighthouse.overlay_address} is outside overlay.cidr {overlay.cidr}",
                )
            )
    first = overlay.first_node_address
    if first is not None and first not in overlay.cidr:
        problems.append(
            Problem(
                f"{where}.first_node_address", f"{first} is outside overlay.cidr {overlay.cidr}"
            )
        )
    for label, az in settings.azs.items():
        if az.subnet is not None and az.subnet.overlaps(overlay.cidr):
            problems.append(
                Problem(
                    f"{where}.cidr",
                    f"{overlay.cidr} overlaps bakery.azs.{label}.subnet {az.subnet}: "
                    "overlay and underlay addresses must differ",
                )
            )
    return problems


def _name_problems(settings: Settings) -> list[Problem]:
    """Node names are made from the environment: two AZs in one environment share a counter,
    but a name must still fit a host name."""
    longest = max(len(a.environment) for a in settings.azs.values())
    length = longest + len(settings.cluster.name_prefix) + 4
    if length > 63:
        return [
            Problem(
                "bakery.cluster.name_prefix",
                f"node names would be {length} characters; a host name allows 63",
            )
        ]
    return []


def _backup_problems(settings: Settings, now: datetime | None = None) -> list[Problem]:
    """Backups that would not survive what they are for, and restores that cannot work."""
    backup = settings.cluster.pgbackrest
    where = "bakery.cluster.pgbackrest"
    problems = []
    if backup.archive and not backup.shared and len(settings.azs) > 1:
        problems.append(
            Problem(
                f"{where}.archive",
                "WAL archiving into a posix repository on each node's own disk, with nodes in "
                f"{len(settings.azs)} AZs: after a failover the new leader's repository has no "
                "stanza and WAL piles up; use an s3 repository (or repo.shared: true for a file "
                "system every node mounts)",
            )
        )
    if "schedule" in backup.model_fields_set and backup.schedule and not backup.archiving:
        problems.append(
            Problem(
                f"{where}.schedule",
                "set, but WAL archiving is off: backups need it (archive: true, with a "
                "repository every node reaches)",
            )
        )
    restore = settings.cluster.restore
    if restore is None:
        return problems
    where = "bakery.cluster.restore"
    source = restore.repo or backup.repo
    if source.type == "posix" and not source.shared:
        problems.append(
            Problem(
                f"{where}.repo" if restore.repo else where,
                "the source is a posix repository on a node's own disk, which a new cluster "
                "cannot reach: restore from s3 (or a posix repository with shared: true)",
            )
        )
    if restore.cipher_pass is not None and restore.repo is None:
        problems.append(
            Problem(
                f"{where}.cipher_pass",
                "set, but restore.repo is not: the source is this cluster's own repository, "
                "whose passphrase bakery keeps (pgbackrest.encryption)",
            )
        )
    now = now or datetime.now(UTC)
    if restore.target_time is not None and restore.target_time > now:
        problems.append(
            Problem(
                f"{where}.target_time",
                f"{restore.target_time.isoformat()} is in the future: recovery would never "
                "reach it",
            )
        )
    return problems


def config_warnings(settings: Settings) -> list[Problem]:
    """What is allowed but probably not meant: printed by `check`, `render` and `launch`."""
    backup = settings.cluster.pgbackrest
    where = "bakery.cluster.pgbackrest"
    warnings = []
    if backup.repo.type == "posix" and len(settings.azs) > 1:
        warnings.append(
            Problem(
                f"{where}.repo",
                "a posix repository does not survive losing an AZ (it lives on a node's disk, "
                "or on one site's shared mount); use an s3 repository for a multi-AZ cluster",
            )
        )
    restore = settings.cluster.restore
    for label, repo in (("repo", backup.repo), ("restore.repo", restore and restore.repo)):
        if repo is not None and repo.type == "s3" and not repo.verify_tls:
            prefix = "bakery.cluster" if label.startswith("restore") else where
            warnings.append(
                Problem(
                    f"{prefix}.{label}.verify_tls",
                    "false: the repository's certificate is not checked, so anyone on the way "
                    "can read and change the backups",
                )
            )
    if restore is not None and (restore.from_scope or settings.cluster.scope) == (
        settings.cluster.scope
    ):
        warnings.append(
            Problem(
                "bakery.cluster.restore.from_scope",
                f"the new cluster takes the source's scope {settings.cluster.scope!r}: the old "
                "cluster's keys must be gone from the DCS first (patronictl remove), or "
                "Patroni will not bootstrap; a new scope avoids that",
            )
        )
    return warnings


def _monitoring_problems(settings: Settings) -> list[Problem]:
    monitoring = settings.monitoring
    if monitoring.listen == "overlay" and settings.overlay.type == "none":
        return [
            Problem(
                "bakery.monitoring.listen",
                "'overlay', but overlay.type is 'none': use 'private' (or leave it unset)",
            )
        ]
    if monitoring.exporters and monitoring.networks == []:
        return [
            Problem(
                "bakery.monitoring.networks",
                "empty: nobody could scrape; set monitoring.exporters: false instead",
            )
        ]
    return []
