"""`invoke launch`: PostgreSQL nodes in the chosen AZs, from the newest released golden image.

A node's identity (addresses, certificates, patroni.yml, consul.hcl, Nebula files) exists only
in its user-data; the image is the same for every node. Since certificates name the node's
private address, each node's port is created first, then its bundle is rendered for the
address Neutron gave it, then the server boots on that port.

Order of work, so that bad input changes nothing and nothing leaks:
1. every lookup in every environment (newest released image, flavor, network and subnet,
   security groups, key pair, compute AZ), no existing server of the same name, and a full
   render of every bundle on stand-in addresses from the subnets: all problems at once,
   before anything is created;
2. ports, then bundles for their addresses, then servers, each registered for removal before
   the call that creates it (and found again by its unique name);
3. on any failure, Ctrl-C or SIGTERM, every server and port of this launch is deleted.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..cleanup import (
    Cleanup,
    interrupt_on_sigterm,
    interrupts_deferred,
    shielded_from_interrupts,
)
from ..config import AvailabilityZone, Settings
from ..errors import BakeryError
from ..node import plan as planning
from ..node.bundle import Bundle, build_bundles
from .api import (
    TAG,
    CloudError,
    PreflightError,
    check_compute_az,
    cloud_errors,
    connect,
    delete_servers_named,
    find_named,
    image_property,
    server_in,
    servers_named,
    wait_for,
)
from .generations import generations, newest_released

BOOT_TIMEOUT = 600


@dataclass
class AzTarget:
    """One AZ, resolved in its environment before anything is created."""

    label: str
    environment: str
    conn: Any = field(repr=False)
    image: Any
    flavor: Any
    network: Any
    subnet: Any
    security_group_ids: list[str]
    key_name: str | None
    compute_az: str | None


@dataclass(frozen=True)
class LaunchedNode:
    name: str
    az: str
    environment: str
    server_id: str
    address: str
    image: str


@dataclass(frozen=True)
class LaunchResult:
    nodes: list[LaunchedNode]
    bundles: list[Bundle] = field(repr=False)


def port_name(node: str) -> str:
    return f"bakery-{node}"


def launch(
    settings: Settings, az_labels: Iterable[str], log: Callable[[str], None] = print
) -> LaunchResult:
    labels = planning.select_azs(settings, az_labels)
    _check_restore_source(settings)
    with interrupt_on_sigterm():
        targets = _preflight(settings, labels, log)
        return _Launch(settings, targets, log).run(labels)


# -- 1. preflight ---------------------------------------------------------------------------


def _check_restore_source(settings: Settings) -> None:
    """A cluster restored from a repository: the source must hold a backup to restore (to the
    target time), or nothing is created."""
    from ..repo.info import restore_problems

    problems = restore_problems(settings)
    if problems:
        raise PreflightError([str(p) for p in problems])


def _preflight(settings: Settings, labels: list[str], log) -> dict[str, AzTarget]:
    targets: dict[str, AzTarget] = {}
    problems: list[str] = []
    connections: dict[str, Any] = {}
    for label in labels:
        az = settings.azs[label]
        try:
            if az.environment not in connections:
                connections[az.environment] = connect(
                    az.environment, settings.environments[az.environment]
                )
            targets[label] = _resolve(settings, label, az, connections[az.environment])
        except BakeryError as error:
            problems.append(str(error))
    if not problems:
        problems += _generation_problems(targets)
    if not problems:
        problems += _render_problems(settings, labels, targets)
    if problems:
        raise PreflightError(problems)
    for label, target in targets.items():
        log(
            f"{label}: image {target.image.name} ({target.image.id}), flavor "
            f"{target.flavor.name}, network {target.network.name}, subnet {target.subnet.cidr}"
        )
    return targets


def _generation_problems(targets: dict[str, AzTarget]) -> list[str]:
    """One cluster, one generation: `bake --environment` can release in some environments
    only, and nodes of different builds would run different PostgreSQL or Patroni."""
    builds = {label: image_property(t.image, "bakery_build_id") for label, t in targets.items()}
    if len(set(builds.values())) <= 1:
        return []
    shown = ", ".join(f"AZ {label}: {build}" for label, build in builds.items())
    return [
        f"the newest released images differ ({shown}): bake in every environment of these "
        "AZs (`invoke bake`), so that all nodes start from the same build"
    ]


def _resolve(settings: Settings, label: str, az: AvailabilityZone, conn) -> AzTarget:
    where = f"AZ {label} (environment {az.environment})"
    definition = settings.image.definition
    with cloud_errors(where):
        newest = newest_released(generations(conn, definition))
        if newest is None:
            raise CloudError(f"{where}: no released image of {definition}: run `invoke bake` first")
        image = conn.image.get_image(newest.image_id)
        flavor = find_named(conn.compute.find_flavor, az.flavor, "flavor", where)
        if (flavor.disk or 0) < (image.min_disk or 0):
            raise CloudError(
                f"{where}: flavor {flavor.name} has a {flavor.disk} GB disk; image "
                f"{image.name} needs {image.min_disk} GB"
            )
        if (flavor.ram or 0) < (image.min_ram or 0):  # released images carry min_ram
            raise CloudError(
                f"{where}: flavor {flavor.name} has {flavor.ram} MiB of RAM; image "
                f"{image.name} needs {image.min_ram} MiB"
            )
        network = find_named(conn.network.find_network, az.network, "network", where)
        subnet = _subnet(conn, network, az, where)
        for address in az.addresses:
            query = {"network_id": network.id, "fixed_ips": f"ip_address={address}"}
            taken = list(conn.network.ports(**query))
            if taken:
                raise CloudError(f"{where}: address {address} is taken by port {taken[0].id}")
        group_ids = [
            find_named(conn.network.find_security_group, group, "security group", where).id
            for group in az.security_groups
        ]
        if az.key_pair is not None:
            find_named(conn.compute.find_keypair, az.key_pair, "key pair", where)
        if az.compute_az is not None:
            check_compute_az(conn, az.compute_az, where)
    return AzTarget(
        label,
        az.environment,
        conn,
        image,
        flavor,
        network,
        subnet,
        group_ids,
        az.key_pair,
        az.compute_az,
    )


def _subnet(conn, network, az: AvailabilityZone, where: str):
    """The IPv4 subnet the nodes get their addresses from: the configured one, else the one
    that holds the configured addresses, else the network's first."""
    subnets = [s for s in conn.network.subnets(network_id=network.id) if s.ip_version == 4]
    if az.subnet is not None:
        subnets = [s for s in subnets if ipaddress.ip_network(s.cidr) == az.subnet]
    if not subnets:
        wanted = f"subnet {az.subnet}" if az.subnet is not None else "an IPv4 subnet"
        raise CloudError(f"{where}: network {network.name} has no {wanted}")
    fitting = [s for s in subnets if all(a in ipaddress.ip_network(s.cidr) for a in az.addresses)]
    if not fitting:
        cidrs = ", ".join(s.cidr for s in subnets)
        addresses = ", ".join(map(str, az.addresses))
        raise CloudError(f"{where}: addresses {addresses} are not all inside one of {cidrs}")
    subnet = fitting[0]
    free = ipaddress.ip_network(subnet.cidr).num_addresses - 3  # network, gateway, broadcast
    if az.nodes > free:
        raise CloudError(f"{where}: subnet {subnet.cidr} is too small for {az.nodes} nodes")
    return subnet


def _stand_in_addresses(settings: Settings, targets: dict[str, AzTarget]) -> dict[str, Any]:
    """Addresses the nodes could get (configured ones, else the subnet's first hosts but the
    gateway), to render every bundle before any port exists."""
    hosts = {}
    for label, target in targets.items():
        gateway = target.subnet.gateway_ip
        cidr = ipaddress.ip_network(target.subnet.cidr)
        hosts[label] = (a for a in cidr.hosts() if str(a) != gateway)
    return {
        name: configured or next(hosts[label])
        for name, label, configured in planning.node_slots(settings, targets)
    }


def _render_problems(settings: Settings, labels: list[str], targets) -> list[str]:
    problems = []
    for name, label, _ in planning.node_slots(settings, labels):
        target = targets[label]
        with cloud_errors(f"environment {target.environment}"):
            existing = [("server", r) for r in servers_named(target.conn, name)]
            existing += [("port", r) for r in target.conn.network.ports(name=port_name(name))]
        problems += [
            f"environment {target.environment}: a {kind} {resource.name} exists "
            f"({resource.id}); launch creates new nodes only"
            for kind, resource in existing
        ]
    try:
        stand_ins = _stand_in_addresses(settings, targets)
        build_bundles(settings, planning.make_plan(settings, labels, stand_ins))
    except BakeryError as error:
        problems.append(str(error))
    return problems


# -- 2. create ------------------------------------------------------------------------------


class _Launch:
    def __init__(self, settings: Settings, targets: dict[str, AzTarget], log):
        self.settings = settings
        self.targets = targets
        self.log = log
        self.cleanup = Cleanup(log)
        self.cancel = threading.Event()

    def run(self, labels: list[str]) -> LaunchResult:
        try:
            result = self._create(labels)
        except BaseException:
            self.cancel.set()
            with shielded_from_interrupts():
                self.cleanup.run()
            if self.cleanup.leftovers:
                self.log(
                    "left behind, remove by hand (all tagged 'bakery'): "
                    + "; ".join(self.cleanup.leftovers)
                )
            raise
        return result

    def _create(self, labels: list[str]) -> LaunchResult:
        ports = {
            name: self._port(name, label, configured)
            for name, label, configured in planning.node_slots(self.settings, labels)
        }
        addresses = {
            name: ipaddress.IPv4Address(port.fixed_ips[0]["ip_address"])
            for name, port in ports.items()
        }
        plan = planning.make_plan(self.settings, labels, addresses)
        bundles = build_bundles(self.settings, plan)
        servers = {b.node.name: self._server(b, ports[b.node.name]) for b in bundles}
        for node in plan.nodes:
            conn, server = self.targets[node.az].conn, servers[node.name]
            wait_for(
                f"server {node.name} to become ACTIVE",
                functools.partial(server_in, conn, server.id, "ACTIVE", f"AZ {node.az}"),
                BOOT_TIMEOUT,
                self.cancel,
            )
        planning.save(self.settings, plan)
        nodes = [
            LaunchedNode(
                n.name,
                n.az,
                n.environment,
                servers[n.name].id,
                str(addresses[n.name]),
                self.targets[n.az].image.name,
            )
            for n in plan.nodes
        ]
        return LaunchResult(nodes, bundles)

    def _port(self, node: str, label: str, configured):
        target = self.targets[label]
        conn, name = target.conn, port_name(node)
        self.cleanup.push(
            f"environment {target.environment}: port {name}", lambda: _delete_ports(conn, name)
        )
        fixed_ip: dict[str, str] = {"subnet_id": target.subnet.id}
        if configured is not None:
            fixed_ip["ip_address"] = str(configured)
        groups: dict[str, Any] = {}  # none given: Neutron's default group of the project
        if target.security_group_ids:
            groups["security_groups"] = target.security_group_ids
        with (
            interrupts_deferred(),
            cloud_errors(f"environment {target.environment}: creating port {name}"),
        ):
            port = conn.network.create_port(
                name=name,
                network_id=target.network.id,
                fixed_ips=[fixed_ip],
                description=f"bakery node {node} of cluster {self.settings.cluster.scope}",
                **groups,
            )
            conn.network.set_tags(port, [TAG, f"bakery-cluster-{self.settings.cluster.scope}"])
        self.log(f"{label}: port {name} {port.fixed_ips[0]['ip_address']}")
        return port

    def _server(self, bundle: Bundle, port):
        node = bundle.node
        target = self.targets[node.az]
        conn = target.conn
        self.cleanup.push(
            f"environment {target.environment}: server {node.name}",
            lambda: delete_servers_named(conn, node.name),
        )
        extra: dict[str, Any] = {}
        if target.compute_az is not None:
            extra["availability_zone"] = target.compute_az
        if target.key_name is not None:
            extra["key_name"] = target.key_name
        with (
            interrupts_deferred(),
            cloud_errors(f"environment {target.environment}: creating server {node.name}"),
        ):
            server = conn.compute.create_server(
                name=node.name,
                image_id=target.image.id,
                flavor_id=target.flavor.id,
                networks=[{"port": port.id}],
                user_data=base64.b64encode(bundle.user_data.encode()).decode(),
                metadata={
                    TAG: "node",
                    "bakery_cluster": self.settings.cluster.scope,
                    "bakery_az": node.az,
                },
                tags=[TAG],
                **extra,
            )
        self.log(f"{node.az}: server {node.name} ({server.id}) from {target.image.name}")
        return server


def _delete_ports(conn, name: str) -> None:
    for port in conn.network.ports(name=name):
        conn.network.delete_port(port, ignore_missing=True)
