"""Metrics of a node and who may read them.

The golden image carries Debian's node_exporter and postgres_exporter, disabled, with drop-ins
that make them read `/etc/bakery/monitoring/exporters.env` (scripts/exporters). With
`monitoring.exporters` on (the default), the bundle writes that file, the postgres_exporter's
password file and the scrape guard, and enables the units:

- the exporters listen only on the monitoring address: the overlay's by default, or the
  private network's (`monitoring.listen`);
- `monitoring.networks` (default: `cluster.postgresql.allowed_networks`) may scrape: the
  scrape guard (nftables, loaded before the exporters start) resets everyone else, the Nebula
  firewall admits only those networks to the exporters' ports, and pg_hba lets the `monitor`
  role in from nowhere else;
- postgres_exporter logs in as `monitor` (a member of pg_monitor, created by post_bootstrap
  from a SCRAM verifier) with its own generated password, kept on the node in a 0600 file of
  the exporter's user, never on a command line.

`prometheus_files` is the target list `invoke render` writes for Prometheus (deploy/prometheus).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from ..config import Settings
from ..errors import BakeryError, ConfigError, Problem
from .plan import Node, Plan

NODE_EXPORTER_PORT = 9100
POSTGRES_EXPORTER_PORT = 9187
# The login postgres_exporter uses; a member of PostgreSQL's predefined role pg_monitor.
MONITOR_ROLE = "monitor"
CONFIG_DIR = "/etc/bakery/monitoring"
ENV_FILE = f"{CONFIG_DIR}/exporters.env"
PASSWORD_FILE = f"{CONFIG_DIR}/postgres-exporter.password"
GUARD_FILE = f"{CONFIG_DIR}/scrape-guard.nft"
# The image's units (scripts/exporters), in the order the bundle enables and starts them;
# the exporters require the guard, and the path unit turns job status files into metrics.
SERVICES = [
    "bakery-scrape-guard.service",
    "prometheus-node-exporter.service",
    "prometheus-postgres-exporter.service",
    "bakery-job-metrics.path",
]
# Where `invoke render` puts the target list: DIR/prometheus/ (see deploy/prometheus).
PROMETHEUS_DIR = "prometheus"


@dataclass(frozen=True)
class Exporters:
    """What a node's exporter files say (the templates' `exporters`)."""

    listen: ipaddress.IPv4Address
    networks: list[ipaddress.IPv4Network]
    node_port: int = NODE_EXPORTER_PORT
    postgres_port: int = POSTGRES_EXPORTER_PORT
    role: str = MONITOR_ROLE
    password_file: str = PASSWORD_FILE


def networks(settings: Settings) -> list[ipaddress.IPv4Network]:
    """Who may scrape: `monitoring.networks`, else whoever may reach PostgreSQL."""
    chosen = settings.monitoring.networks
    return list(chosen if chosen is not None else settings.cluster.postgresql.allowed_networks)


def listen_address(settings: Settings, node: Node) -> ipaddress.IPv4Address:
    """The one address the exporters listen on."""
    listen = settings.monitoring.listen
    if listen is None:
        listen = "overlay" if settings.overlay.type == "nebula" else "private"
    address = node.overlay_address if listen == "overlay" else node.private_address
    if address is None:
        raise BakeryError(f"node {node.name}: no {listen} address for the exporters")
    return address


def check_plan(settings: Settings, plan: Plan) -> None:
    """Before anything is written: every node has the address its exporters listen on."""
    if not settings.monitoring.exporters or settings.monitoring.listen != "private":
        return
    missing = [node for node in plan.nodes if node.private_address is None]
    if missing:
        raise ConfigError(
            [
                Problem(
                    f"bakery.azs.{node.az}.addresses",
                    f"node {node.name} has no private address for its exporters "
                    "(monitoring.listen is 'private'): give one, or listen on the overlay",
                )
                for node in missing
            ]
        )


def exporters(settings: Settings, node: Node) -> Exporters | None:
    if not settings.monitoring.exporters:
        return None
    return Exporters(listen_address(settings, node), networks(settings))


def nebula_rules(settings: Settings) -> list[dict[str, Any]]:
    """Nebula inbound rules: the exporters' ports from the monitoring networks only (Nebula
    matches `cidr` against the sender's overlay address)."""
    if not settings.monitoring.exporters:
        return []
    return [
        {"port": port, "proto": "tcp", "cidr": str(net)}
        for port in (NODE_EXPORTER_PORT, POSTGRES_EXPORTER_PORT)
        for net in networks(settings)
    ]


def pg_hba_lines(settings: Settings) -> list[str]:
    """The monitor role may log in locally (postgres_exporter) and, with TLS and SCRAM, from
    the monitoring networks (a central poller); it is rejected from anywhere else, even from
    the networks PostgreSQL's other clients come from. Goes before those lines."""
    lines = [f"hostssl all {MONITOR_ROLE} {net} scram-sha-256" for net in networks(settings)]
    return lines + [
        f"host all {MONITOR_ROLE} 0.0.0.0/0 reject",
        f"host all {MONITOR_ROLE} ::/0 reject",
    ]


def password_file_content(password: str) -> str:
    """postgres_exporter trims the file: a password it would read differently is refused."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in password) or password != password.strip():
        raise BakeryError(
            "the monitor password holds a control character or leading/trailing spaces, "
            "which postgres_exporter's password file cannot carry"
        )
    return password + "\n"


def prometheus_files(
    settings: Settings, nodes: Iterable[tuple[Node, str]], ca_pem: str
) -> dict[str, str]:
    """`DIR/prometheus/`: one file_sd target list per job, the CA that signed Patroni's REST
    API certificates, and this cluster's failover lag threshold for the alert rules.

    `nodes` are (node, REST API address) pairs. Patroni labels its own metrics with `scope`
    and `name`; the exporters' targets get the same labels, so rules can join them."""
    scope = settings.cluster.scope
    patroni, node_targets, postgres_targets = [], [], []
    for node, restapi in nodes:
        where = {"az": node.az, "environment": node.environment}
        patroni.append({"targets": [restapi], "labels": where})
        if settings.monitoring.exporters:
            listen = listen_address(settings, node)
            labels = {"scope": scope, "name": node.name, **where}
            node_targets.append({"targets": [f"{listen}:{NODE_EXPORTER_PORT}"], "labels": labels})
            postgres_targets.append(
                {"targets": [f"{listen}:{POSTGRES_EXPORTER_PORT}"], "labels": labels}
            )
    thresholds = {
        "groups": [
            {
                "name": f"bakery-thresholds-{scope}",
                "rules": [
                    {
                        # Read by the PatroniReplicaLagging alert (deploy/prometheus/rules).
                        "record": "bakery_patroni_maximum_lag_on_failover_bytes",
                        "expr": f"vector({settings.cluster.patroni.maximum_lag_on_failover})",
                        "labels": {"scope": scope},
                    }
                ],
            }
        ]
    }
    return {
        "patroni.json": _json(patroni),
        "node.json": _json(node_targets),
        "postgres.json": _json(postgres_targets),
        "ca.pem": ca_pem,
        "thresholds.rules.yml": "# This cluster's thresholds, rendered by bakery.\n"
        + yaml.safe_dump(thresholds, sort_keys=False),
    }


def _json(value: Any) -> str:
    return json.dumps(value, indent=2) + "\n"
