"""A running cluster as the cloud APIs show it: each node's server and port, the image
generation it runs, and its last report read from the server's console log.

This is all bakery knows about nodes it cannot reach: `status`, the launch's wait, `roll`,
`replace` and `destroy` start from here. A node is one slot of the config (its name, AZ and
environment, planning.node_slots); its port (`bakery-<name>`) is its lasting identity, the
server on it may come and go.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..config import Settings
from ..node import plan as planning
from ..node.report import Health, NodeReport, judge, last_report, stale_after
from .api import CloudError, cloud_errors, connect
from .generations import Generation, generations, newest_released

# Console lines read per node: enough for several heartbeats between boot chatter, little
# enough to read every few seconds (Nova returns the tail).
CONSOLE_LINES = 1000


def port_name(node: str) -> str:
    return f"bakery-{node}"


def cluster_tag(scope: str) -> str:
    """The tag of a cluster's ports, beside `bakery`."""
    return f"bakery-cluster-{scope}"


@dataclass
class CloudNode:
    name: str
    az: str
    environment: str
    conn: Any = field(repr=False)
    server: Any | None
    port: Any | None
    generation: Generation | None  # of the server's image; None: not a bakery image
    report: NodeReport | None
    console: str = field(default="", repr=False)

    @property
    def launched(self) -> bool:
        """A node exists once its port does; a node without either was never launched."""
        return self.server is not None or self.port is not None

    @property
    def server_status(self) -> str:
        return self.server.status if self.server is not None else "none"

    @property
    def image_id(self) -> str | None:
        if self.server is None:
            return None
        image = self.server.image
        return image.get("id") if isinstance(image, dict) else getattr(image, "id", None)

    @property
    def address(self) -> str | None:
        return self.port.fixed_ips[0]["ip_address"] if self.port is not None else None

    def console_tail(self, lines: int = 15) -> str:
        return "\n".join(self.console.splitlines()[-lines:])


@dataclass
class ClusterView:
    settings: Settings = field(repr=False)
    nodes: dict[str, CloudNode]
    generations: dict[str, list[Generation]]  # environment -> newest first
    read_at: dt.datetime

    def launched(self) -> list[CloudNode]:
        return [n for n in self.nodes.values() if n.launched]

    def newest(self, environment: str) -> Generation | None:
        return newest_released(self.generations.get(environment, []))

    def generation_state(self, node: CloudNode) -> str:
        """current (the newest released), outdated (an older bakery generation) or unknown."""
        if node.generation is None:
            return "unknown"
        newest = self.newest(node.environment)
        return "current" if newest and node.generation.image_id == newest.image_id else "outdated"

    def health(self, stale: bool = True) -> Health:
        """The reports' verdict (report.judge) over the launched nodes, plus what the cloud
        itself says: a server that is not ACTIVE, or gone from its port."""
        launched = self.launched()
        max_age = stale_after(self.settings.lifecycle.report_heartbeat) if stale else None
        verdict = judge(
            {n.name: n.report for n in launched if n.server is not None},
            self.settings.max_lag,
            self.read_at,
            max_age,
        )
        problems = []
        for node in launched:
            if node.server is None:
                problems.append(f"{node.name}: no server (its port {node.port.name} remains)")
            elif node.server.status != "ACTIVE":
                problems.append(f"{node.name}: server {node.server.status}")
        if not launched:
            problems.append("no node of the cluster exists")
        return Health(problems + verdict.problems, verdict.warnings, verdict.leader)


def connections(settings: Settings, labels: Iterable[str]) -> dict[str, Any]:
    """One connection per environment of the given AZs."""
    conns: dict[str, Any] = {}
    for label in labels:
        env = settings.azs[label].environment
        if env not in conns:
            conns[env] = connect(env, settings.environments[env])
    return conns


def read_cluster(
    settings: Settings,
    labels: Iterable[str],
    conns: dict[str, Any],
    consoles: bool = True,
) -> ClusterView:
    """Every node of the given AZs as the clouds show it now (consoles too, unless not)."""
    labels = list(labels)
    scope = settings.cluster.scope
    # Per environment one listing of images, servers and the cluster's ports (launch tags
    # them), then one console read per server: a wait reads this every few seconds.
    gens, all_servers, all_ports = {}, {}, {}
    for env in {settings.azs[label].environment for label in labels}:
        with cloud_errors(f"environment {env}"):
            gens[env] = generations(conns[env], settings.image.definition)
            all_servers[env] = list(conns[env].compute.servers())
            all_ports[env] = list(conns[env].network.ports(tags=cluster_tag(scope)))
    nodes = {}
    for name, label, _ in planning.node_slots(settings, labels):
        env = settings.azs[label].environment
        conn = conns[env]
        where = f"environment {env}"
        servers = [s for s in all_servers[env] if s.name == name]
        ports = [p for p in all_ports[env] if p.name == port_name(name)]
        foreign = [s for s in servers if (s.metadata or {}).get("bakery_cluster") != scope]
        if foreign:
            owner = (foreign[0].metadata or {}).get("bakery_cluster") or "no bakery cluster"
            raise CloudError(
                f"{where}: server {name} ({foreign[0].id}) belongs to {owner}, not to cluster "
                f"{scope}: node names must be unique per environment (cluster.name_prefix)"
            )
        if len(servers) > 1 or len(ports) > 1:
            raise CloudError(
                f"{where}: {len(servers)} servers and {len(ports)} ports of node {name}: "
                "remove the extra ones by hand (all tagged 'bakery')"
            )
        server = servers[0] if servers else None
        node = CloudNode(name, label, env, conn, server, ports[0] if ports else None, None, None)
        if server is not None:
            node.generation = next((g for g in gens[env] if g.image_id == node.image_id), None)
            if consoles:
                node.console = read_console(conn, server)
                node.report = last_report(node.console, name)
        nodes[name] = node
    return ClusterView(settings, nodes, gens, dt.datetime.now(dt.UTC))


def read_console(conn, server) -> str:
    """The tail of a server's console log; empty when the cloud has none (yet)."""
    import openstack.exceptions

    try:
        answer = conn.compute.get_server_console_output(server.id, length=CONSOLE_LINES)
    except openstack.exceptions.SDKException:
        return ""  # a server still building or in ERROR has no console
    return (answer or {}).get("output") or ""
