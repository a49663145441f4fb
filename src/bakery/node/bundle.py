"""The node bundle: every file a node receives at first boot, and the user-data that writes it.

`build_bundles` does all checks that can be made before anything is created (CA files, secret
sources, nebula-cert), then renders each file, parses it back (`checks`), and returns the
bundles in memory; `write_bundles` puts them on disk. Paths on the node follow
docs/node-layout.md.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .. import checks
from ..config import Settings
from ..errors import BakeryError, ConfigError, Problem
from ..secrets import Secret, SecretStore
from ..templating import make_environment, render
from . import backup, consul_dns, monitoring
from .plan import Node, Plan

# Nova refuses user-data whose base64 form is larger than this.
USER_DATA_LIMIT = 65535
# Patroni's REST API on every node (patroni.yml listens on it, the Nebula firewall opens it).
RESTAPI_PORT = 8008


@dataclass(frozen=True)
class NodePaths:
    """Where the bundle's files live on the node (docs/node-layout.md)."""

    major: int
    config: str = "/etc/patroni/patroni.yml"
    env: str = "/etc/patroni/patroni.env"
    post_bootstrap: str = "/etc/patroni/post-bootstrap.sh"
    ca: str = "/etc/patroni/tls/ca.pem"
    node_cert: str = "/etc/patroni/tls/node.pem"
    node_key: str = "/etc/patroni/tls/node.key"
    pgpass: str = "/var/lib/postgresql/.pgpass.patroni"
    pgbackrest: str = "/etc/pgbackrest/pgbackrest.conf"
    node_env: str = "/etc/bakery/node.env"

    @property
    def bin_dir(self) -> str:
        return f"/usr/lib/postgresql/{self.major}/bin"

    @property
    def data_dir(self) -> str:
        return f"/var/lib/postgresql/{self.major}/patroni"


@dataclass(frozen=True)
class BundleFile:
    path: str
    content: str
    owner: str
    mode: str  # as cloud-init wants it: a string such as '0600'

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()


@dataclass(frozen=True)
class Bundle:
    node: Node
    files: list[BundleFile]
    services: list[str]
    user_data: str = field(repr=False)

    @property
    def user_data_base64_size(self) -> int:
        return len(base64.b64encode(self.user_data.encode()))


@dataclass(frozen=True)
class _ClusterMaterial:
    """What every node shares: CAs, secrets, cluster-wide settings."""

    ca: Any
    consul_ca: Any
    passwords: dict[str, Secret]
    gossip_key: Secret | None
    acl_token: Secret | None
    admin_verifier: str
    backup: backup.BackupMaterial
    monitor_verifier: str
    dns_token: Secret | None


def build_bundles(settings: Settings, plan: Plan, environ: dict[str, str] | None = None) -> list:
    """Render and check every node's bundle. Creates secrets and certificates in the state
    directory on first use, but only after every preflight check has passed."""
    _check_addresses_allowed(settings, plan)
    monitoring.check_plan(settings, plan)
    material = _prepare(settings, environ)
    env = make_environment(settings.template_overrides)
    return [_bundle(settings, env, material, node) for node in plan.nodes]


def _check_addresses_allowed(settings: Settings, plan: Plan) -> None:
    networks = settings.cluster.postgresql.allowed_networks
    problems = [
        Problem(
            "bakery.cluster.postgresql.allowed_networks",
            f"node {node.name} speaks on {node.address}, outside every allowed network "
            f"({', '.join(map(str, networks))}): replication from it would be refused",
        )
        for node in plan.nodes
        if not any(node.address in net for net in networks)
    ]
    if problems:
        raise ConfigError(problems)


def _prepare(settings: Settings, environ: dict[str, str] | None) -> _ClusterMaterial:
    from .. import pki  # cryptography is heavy: loaded only when certificates are needed

    ca = pki.load_ca(settings.pki.ca_cert, settings.pki.ca_key, "bakery.pki")
    consul = settings.cluster.dcs.consul if settings.cluster.dcs.type == "consul" else None
    consul_ca = None
    where = "bakery.cluster.dcs.consul"
    if consul is not None:
        cert = consul.ca_cert or settings.pki.ca_cert
        key = None if consul.auto_encrypt else (consul.ca_key or settings.pki.ca_key)
        consul_ca = pki.load_ca(cert, key, where)
    if settings.overlay.type == "nebula":
        pki.nebula_cert_binary()
        for key in ("ca_cert", "ca_key"):
            path = getattr(settings.overlay, key)
            if not path.exists():
                raise BakeryError(
                    f"bakery.overlay.{key}: {path} does not exist (create a Nebula CA with "
                    "`invoke ca`, or point to your overlay's CA)"
                )
    store = SecretStore(settings.state_dir, environ)
    resolve = store.resolve
    gossip = (
        resolve(consul.gossip_key, f"{where}.gossip_key") if consul and consul.gossip_key else None
    )
    token = resolve(consul.acl_token, f"{where}.acl_token") if consul and consul.acl_token else None
    dns_token = (
        resolve(consul.dns_token, f"{where}.dns_token") if consul and consul.dns_token else None
    )
    backup_material = backup.prepare(settings, store)
    # Passwords last: they are the only thing written to the state directory here.
    return _ClusterMaterial(
        ca,
        consul_ca,
        store.passwords(),
        gossip,
        token,
        store.scram_verifier("admin"),
        backup.generate(settings, store, backup_material),
        store.scram_verifier("monitor"),
        dns_token,
    )


def _bundle(settings: Settings, env, material: _ClusterMaterial, node: Node) -> Bundle:
    from .. import pki

    cluster = settings.cluster
    paths = NodePaths(cluster.postgresql.major)
    node_dir = settings.state_dir / "nodes" / node.name
    names = (node.name, *consul_dns.certificate_names(settings))
    spec = pki.LeafSpec(node.name, names, tuple(node.addresses), settings.pki.cert_days)
    tls = pki.issue_cached(node_dir, "node", material.ca, spec)
    context = _context(settings, material, node, paths)
    text = {
        "patroni.yml": render(env, "patroni.yml.j2", **context),
        "patroni.env": render(env, "patroni.env.j2", **context),
        "post-bootstrap.sh": render(env, "post-bootstrap.sh.j2", **context),
        "pgbackrest.conf": render(env, "pgbackrest.conf.j2", **context),
        "node.env": render(
            env,
            "node.env.j2",
            **context,
            max_lag=settings.max_lag,
            report_heartbeat=settings.lifecycle.report_heartbeat,
        ),
    }
    checks.check_patroni(text["patroni.yml"], context)
    checks.check_envfile(text["patroni.env"], context)
    checks.check_pgbackrest(
        text["pgbackrest.conf"],
        f"pgbackrest.conf of {node.name}",
        cluster.scope,
        context["repo_options"],
        paths.data_dir,
    )
    checks.check_node_env(text["node.env"], context)
    files = [
        BundleFile(paths.config, text["patroni.yml"], "postgres:postgres", "0600"),
        BundleFile(paths.env, text["patroni.env"], "postgres:postgres", "0600"),
        BundleFile(paths.post_bootstrap, text["post-bootstrap.sh"], "postgres:postgres", "0700"),
        BundleFile(paths.ca, material.ca.cert_pem, "postgres:postgres", "0644"),
        BundleFile(paths.node_cert, tls.cert_pem, "postgres:postgres", "0644"),
        BundleFile(paths.node_key, tls.key_pem, "postgres:postgres", "0600"),
        BundleFile(paths.pgbackrest, text["pgbackrest.conf"], "postgres:postgres", "0600"),
        # Who the node is, for the reporter and the handover (docs/node-report.md); no secret.
        BundleFile(paths.node_env, text["node.env"], "root:root", "0644"),
    ]
    files += _backup_files(settings, env, context, material, node)
    services = []
    restart = []
    if settings.overlay.type == "nebula":
        files += _nebula_files(settings, env, context, node, node_dir)
        services.append("nebula.service")
    if cluster.dcs.type == "consul":
        files += _consul_files(settings, env, context, material, node, node_dir)
        services.append("consul.service")
        if consul_dns.enabled(settings):
            files += [BundleFile(*f) for f in consul_dns.files(env, context)]
            services.append(consul_dns.SERVICE)
            restart.append(consul_dns.RESOLVED)
    services.append("patroni.service")
    services += backup.timers(settings)
    if context["exporters"] is not None:
        files += _exporter_files(env, context, material)
        services += monitoring.SERVICES
    runcmd = service_commands(services, restart)
    write_files = [
        {"path": f.path, "owner": f.owner, "permissions": f.mode, "content": f.content}
        for f in files
    ]
    user_data = render(env, "launch.yaml.j2", **context, write_files=write_files, runcmd=runcmd)
    checks.check_user_data(user_data, write_files, runcmd)
    bundle = Bundle(node, files, services, user_data)
    if bundle.user_data_base64_size > USER_DATA_LIMIT:
        raise BakeryError(
            f"node {node.name}: user-data is {bundle.user_data_base64_size} bytes in base64, "
            f"over Nova's limit of {USER_DATA_LIMIT}"
        )
    return bundle


def service_commands(services: list[str], restart: list[str] | None = None) -> list[list[str]]:
    """What the user-data runs: enable the node's services, then start them.

    `--no-reload`: the units are already loaded from the image; enabling only adds symlinks, and
    the daemon reload that `enable --now` would do costs seconds of first boot under emulation.
    The units order themselves (patroni after consul after nebula). `restart`: running services
    whose configuration the bundle changed (systemd-resolved, for the Consul DNS forwarding),
    restarted before the node's own services start.
    """
    restarts = [["systemctl", "restart", *restart]] if restart else []
    return [
        ["systemctl", "--no-reload", "enable", *services],
        *restarts,
        ["systemctl", "start", *services],
    ]


def _exporter_files(env, context, material: _ClusterMaterial) -> list[BundleFile]:
    """The exporters' settings, the postgres_exporter's password and the scrape guard."""
    text = render(env, "exporters.env.j2", **context)
    checks.check_exporters_env(text, context)
    password = monitoring.password_file_content(material.passwords["monitor"].value)
    return [
        BundleFile(monitoring.ENV_FILE, text, "root:root", "0644"),
        # Only postgres_exporter's user reads it; the unit never puts it on a command line.
        BundleFile(monitoring.PASSWORD_FILE, password, "prometheus:prometheus", "0600"),
        BundleFile(
            monitoring.GUARD_FILE,
            render(env, "scrape-guard.nft.j2", **context),
            "root:root",
            "0644",
        ),
    ]


def _context(settings: Settings, material: _ClusterMaterial, node: Node, paths: NodePaths):
    cluster = settings.cluster
    pg = cluster.postgresql
    timings = cluster.patroni
    dcs = cluster.dcs
    cluster_parameters: dict[str, Any] = {
        "wal_level": "replica",
        "hot_standby": "on",
        "wal_log_hints": "on",
        "password_encryption": "scram-sha-256",
        "max_wal_senders": 10,
        "max_replication_slots": 10,
    }
    cluster_parameters |= backup.cluster_parameters(settings)
    cluster_parameters |= pg.parameters
    bootstrap_dcs = {
        "ttl": timings.ttl,
        "loop_wait": timings.loop_wait,
        "retry_timeout": timings.retry_timeout,
        "maximum_lag_on_failover": timings.maximum_lag_on_failover,
        "synchronous_mode": timings.synchronous_mode,
        "synchronous_mode_strict": timings.synchronous_mode_strict,
        "failsafe_mode": timings.failsafe_mode,
        "postgresql": {
            "use_pg_rewind": True,
            "use_slots": True,
            "parameters": cluster_parameters,
        },
    }
    recovery_conf = backup.recovery_conf(settings)
    if recovery_conf:
        bootstrap_dcs["postgresql"]["recovery_conf"] = recovery_conf
    replica_methods, replica_pgbackrest = backup.replica_methods(settings)
    local_parameters = {
        "ssl": "on",
        "ssl_cert_file": paths.node_cert,
        "ssl_key_file": paths.node_key,
        "ssl_ca_file": paths.ca,
        "ssl_min_protocol_version": "TLSv1.2",
        "unix_socket_directories": "/var/run/postgresql",
    }
    return {
        "node": node,
        "cluster": cluster,
        "dcs": dcs,
        "postgresql": pg,
        "paths": paths,
        "restapi_port": RESTAPI_PORT,
        "overlay": settings.overlay,
        "overlay_on": settings.overlay.type == "nebula",
        "passwords": material.passwords,
        "consul_token": material.acl_token,
        "admin_verifier": material.admin_verifier,
        "monitor_role": monitoring.MONITOR_ROLE,
        "monitor_verifier": material.monitor_verifier,
        "exporters": monitoring.exporters(settings, node),
        "bootstrap_dcs": bootstrap_dcs,
        "local_parameters": local_parameters,
        "pg_hba": pg_hba(pg.allowed_networks, monitoring.pg_hba_lines(settings)),
        "etcd_hosts": [f"{m.address}:{dcs.etcd3.port}" for m in dcs.members] if dcs.etcd3 else [],
        "replica_methods": replica_methods,
        "replica_pgbackrest": replica_pgbackrest,
        "restore_method_name": backup.RESTORE_METHOD,
        "restore_method": backup.restore_method(settings),
        "backup_job": backup.JOB,
        **backup.conf_context(settings, material.backup),
    }


def pg_hba(networks: list, monitor: list[str] | None = None) -> list[str]:
    """Client authentication: TLS and SCRAM from the allowed networks, nothing else.

    Patroni's local replication check connects to 127.0.0.1 without TLS, hence that one line.
    Order matters: PostgreSQL takes the first line that matches. `monitor`: the monitor role's
    own lines (monitoring.pg_hba_lines), before the allowed networks'.
    """
    lines = [
        "local all postgres peer",
        "local all all scram-sha-256",
        "host all all 127.0.0.1/32 scram-sha-256",
        "host replication replicator 127.0.0.1/32 scram-sha-256",
        *(monitor or []),
    ]
    for net in networks:
        lines.append(f"hostssl replication replicator {net} scram-sha-256")
        lines.append(f"hostssl all all {net} scram-sha-256")
    lines += [
        "host replication all 0.0.0.0/0 reject",
        "host all all 0.0.0.0/0 reject",
        "host replication all ::/0 reject",
        "host all all ::/0 reject",
    ]
    return lines


def _nebula_files(settings, env, context, node: Node, node_dir: Path) -> list[BundleFile]:
    from .. import pki

    overlay = settings.overlay
    host = pki.nebula_host(
        node_dir,
        overlay.ca_cert,
        overlay.ca_key,
        node.name,
        node.overlay_address,
        overlay.cidr.prefixlen,
        overlay.groups,
    )
    nebula_context = {
        **context,
        "static_host_map": {
            str(lh.overlay_address): [lh.public_address] for lh in overlay.lighthouses
        },
        "lighthouse_hosts": [str(lh.overlay_address) for lh in overlay.lighthouses],
        "monitoring_rules": monitoring.nebula_rules(settings),
    }
    config = render(env, "nebula.yml.j2", **nebula_context)
    checks.check_nebula(config, nebula_context)
    return [
        BundleFile("/etc/nebula/config.yml", config, "root:root", "0600"),
        BundleFile("/etc/nebula/ca.crt", overlay.ca_cert.read_text(), "root:root", "0644"),
        BundleFile("/etc/nebula/host.crt", host.cert_pem, "root:root", "0644"),
        BundleFile("/etc/nebula/host.key", host.key_pem, "root:root", "0600"),
    ]


def _backup_files(settings, env, context, material, node: Node) -> list[BundleFile]:
    """The repositories' CA files, the restore source's configuration and the backup
    schedule (docs/backups.md); pgbackrest.conf itself is among the node's main files."""
    access = material.backup
    files = []
    if access.repo.ca_pem is not None:
        files.append(BundleFile(backup.REPO_CA, access.repo.ca_pem, "postgres:postgres", "0644"))
    if context["restore_options"] is not None:
        text = render(env, "pgbackrest-restore.conf.j2", **context)
        checks.check_pgbackrest(
            text,
            f"restore.conf of {node.name}",
            context["restore_stanza"],
            context["restore_options"],
            context["paths"].data_dir,
        )
        # It holds the source repository's keys.
        files.append(BundleFile(backup.RESTORE_CONF, text, "postgres:postgres", "0600"))
        source = access.restore
        if source is not None and source.ca_pem is not None:
            files.append(BundleFile(backup.RESTORE_CA, source.ca_pem, "postgres:postgres", "0644"))
    for path, text in backup.schedule_dropins(settings).items():
        files.append(BundleFile(path, text, "root:root", "0644"))
    return files


def _consul_files(settings, env, context, material, node: Node, node_dir: Path):
    from .. import pki

    consul = settings.cluster.dcs.consul
    consul_context = {
        **context,
        "consul": consul,
        "retry_join": [m.address for m in settings.cluster.dcs.members],
        "gossip_key": material.gossip_key,
        "acl_token": material.acl_token,
        "dns_token": material.dns_token,
        "consul_dns_port": consul_dns.CONSUL_DNS_PORT,
    }
    text = render(env, "consul.hcl.j2", **consul_context)
    checks.check_consul(text, consul_context)
    files = [
        # It holds the gossip key and the agent's token.
        BundleFile("/etc/consul.d/consul.hcl", text, "consul:consul", "0600"),
        BundleFile(
            "/etc/consul.d/tls/ca.pem", material.consul_ca.cert_pem, "consul:consul", "0644"
        ),
        # Patroni registers HTTPS health checks of its REST API, whose certificate the cluster
        # CA signed; Consul verifies checks against the system roots, which Go takes from
        # SSL_CERT_FILE (consul.service reads consul.env).
        BundleFile(
            "/etc/consul.d/tls/checks-ca.pem", material.ca.cert_pem, "consul:consul", "0644"
        ),
        BundleFile(
            "/etc/consul.d/consul.env",
            "SSL_CERT_FILE=/etc/consul.d/tls/checks-ca.pem\n",
            "consul:consul",
            "0644",
        ),
    ]
    if not consul.auto_encrypt:
        # Named like the certificates `consul tls cert create -client` makes.
        name = f"client.{consul.datacenter}.consul"
        spec = pki.LeafSpec(name, (name, "localhost"), (), settings.pki.cert_days)
        client = pki.issue_cached(node_dir, "consul-client", material.consul_ca, spec)
        files += [
            BundleFile("/etc/consul.d/tls/client.pem", client.cert_pem, "consul:consul", "0644"),
            BundleFile("/etc/consul.d/tls/client.key", client.key_pem, "consul:consul", "0600"),
        ]
    return files


def describe(bundle: Bundle) -> dict[str, Any]:
    """The manifest entry of a node: no secret, only what a reviewer or a tool needs."""
    node = bundle.node
    return {
        "name": node.name,
        "az": node.az,
        "environment": node.environment,
        "private_address": str(node.private_address) if node.private_address else None,
        "overlay_address": str(node.overlay_address) if node.overlay_address else None,
        "services": bundle.services,
        "user_data_bytes": len(bundle.user_data.encode()),
        "user_data_base64_bytes": bundle.user_data_base64_size,
        "files": [
            {"path": f.path, "owner": f.owner, "mode": f.mode, "sha256": f.sha256}
            for f in bundle.files
        ],
    }


def node_file_path(root: Path, path: str) -> Path:
    """Where a node path lands under a directory (`files/etc/patroni/...`)."""
    return root / PurePosixPath(path).relative_to("/")
