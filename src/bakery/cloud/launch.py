"""`invoke launch`: PostgreSQL nodes in the chosen AZs, from the newest released golden image,
and a wait until the cluster is healthy.

A node's identity (addresses, certificates, patroni.yml, consul.hcl, Nebula files) exists only
in its user-data; the image is the same for every node. Since certificates name the node's
private address, each node's port is created first, then its bundle is rendered for the
address Neutron gave it, then the server boots on that port.

Launch is idempotent: a node whose server exists is reported and left alone, a missing one is
created, on its existing port when that is still there (a server deleted by hand, or a launch
interrupted after the ports).

Order of work, so that bad input changes nothing and nothing leaks:
1. every lookup in every environment (newest released image, flavor, network and subnet,
   security groups, key pair, compute AZ), the nodes that exist already, leftover DCS keys of
   an earlier cluster of the same scope (where the DCS is reachable), and a full render of
   every bundle to create on stand-in addresses: all problems at once, before anything is
   created;
2. ports, then bundles for their addresses, then servers, each registered for removal before
   the call that creates it (and found again by its unique name);
3. on any failure, Ctrl-C or SIGTERM, every server and port this launch created is deleted;
4. unless told not to, a wait (watch.py) until every node reports running, one leader leads
   and every replica streams under lifecycle.max_lag.
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
from ..lock import lifecycle_lock
from ..node import plan as planning
from ..node.bundle import Bundle, build_bundles
from . import cluster as cloud_cluster
from . import dcs as cluster_dcs
from . import watch
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
    created: bool = True  # False: the server existed and was left alone


@dataclass(frozen=True)
class LaunchResult:
    nodes: list[LaunchedNode]
    bundles: list[Bundle] = field(repr=False)  # of the nodes created
    view: cloud_cluster.ClusterView | None = field(default=None, repr=False)  # after the wait


port_name = cloud_cluster.port_name


def launch(
    settings: Settings,
    az_labels: Iterable[str],
    log: Callable[[str], None] = print,
    wait: bool = True,
    progress: watch.Progress | None = None,
) -> LaunchResult:
    labels = planning.select_azs(settings, az_labels)
    _check_restore_source(settings)
    with interrupt_on_sigterm():
        targets, existing = _preflight(settings, labels, log)
        with lifecycle_lock(settings.state_dir, settings.cluster.scope, "launch"):
            result = _Launch(settings, targets, log).run(labels, existing)
            if not wait:
                return result
            view = wait_healthy(settings, log, progress or watch.Progress(log))
        return LaunchResult(result.nodes, result.bundles, view)


def wait_healthy(
    settings: Settings,
    log: Callable[[str], None],
    progress: watch.Progress,
    cancel: threading.Event | None = None,
) -> cloud_cluster.ClusterView:
    """Until every launched node of the cluster (every AZ of the config) reports running, one
    leads and the others stream under lifecycle.max_lag; CloudError naming each node's last
    report and console tail after lifecycle.launch_timeout."""
    labels = list(settings.azs)
    conns = cloud_cluster.connections(settings, labels)
    log(f"waiting for a healthy cluster (at most {settings.lifecycle.launch_timeout} s)")
    return watch.wait_for_view(
        "a healthy cluster",
        lambda: cloud_cluster.read_cluster(settings, labels, conns),
        lambda view: view.health(stale=False).problems,
        settings.lifecycle.launch_timeout,
        cancel or threading.Event(),
        progress,
    )


# -- 1. preflight ---------------------------------------------------------------------------


def _check_restore_source(settings: Settings) -> None:
    """A cluster restored from a repository: the source must hold a backup to restore (to the
    target time), or nothing is created."""
    from ..repo.info import restore_problems

    problems = restore_problems(settings)
    if problems:
        raise PreflightError([str(p) for p in problems])


def resolve_targets(settings: Settings, labels: list[str]) -> tuple[dict[str, AzTarget], list]:
    """Each AZ resolved in its environment (newest released image, flavor, network, ...), and
    every problem found on the way; one generation across all of them."""
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
    return targets, problems


def _preflight(settings: Settings, labels: list[str], log) -> tuple[dict[str, AzTarget], dict]:
    """The AZs resolved, and the nodes of them that exist already (name -> CloudNode)."""
    targets, problems = resolve_targets(settings, labels)
    existing: dict[str, cloud_cluster.CloudNode] = {}
    if not problems:
        try:
            view = cloud_cluster.read_cluster(
                settings, labels, {t.environment: t.conn for t in targets.values()}, False
            )
            existing = {n.name: n for n in view.launched()}
        except BakeryError as error:
            problems.append(str(error))
    if not problems:
        problems += _leftover_problems(settings, labels, existing)
        problems += _render_problems(settings, labels, targets, existing)
    if problems:
        raise PreflightError(problems)
    for label, target in targets.items():
        log(
            f"{label}: image {target.image.name} ({target.image.id}), flavor "
            f"{target.flavor.name}, network {target.network.name}, subnet {target.subnet.cidr}"
        )
    return targets, existing


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
        own = {port_name(name) for name, _, _ in planning.node_slots(settings, [label])}
        for address in az.addresses:
            query = {"network_id": network.id, "fixed_ips": f"ip_address={address}"}
            taken = [p for p in conn.network.ports(**query) if p.name not in own]
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


def stand_in_addresses(settings: Settings, targets: dict[str, AzTarget]) -> dict[str, Any]:
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


def _render_problems(settings: Settings, labels: list[str], targets, existing) -> list[str]:
    """Every bundle this launch would create, rendered on stand-in addresses (or the address
    of the node's existing port)."""
    addresses = stand_in_addresses(settings, targets)
    addresses |= {n.name: n.address for n in existing.values() if n.address is not None}
    slots = planning.node_slots(settings, labels)
    missing = [n for n, _, _ in slots if n not in existing or existing[n].server is None]
    try:
        render_bundles(settings, labels, addresses, missing)
    except BakeryError as error:
        return [str(error)]
    return []


def _ipv4(addresses: dict[str, Any]) -> dict[str, ipaddress.IPv4Address]:
    return {name: ipaddress.IPv4Address(str(a)) for name, a in addresses.items()}


def _leftover_problems(settings: Settings, labels: list[str], existing: dict) -> list[str]:
    """A new cluster (none of its nodes exists in any AZ of the config) on a scope whose keys
    an earlier cluster left in the DCS would never bootstrap: refuse, where bakery can see."""
    if settings.lifecycle.dcs_url is None or existing:
        return []
    others = [label for label in settings.azs if label not in labels]
    try:
        conns = cloud_cluster.connections(settings, others)
        if cloud_cluster.read_cluster(settings, others, conns, consoles=False).launched():
            return []  # other AZs of the cluster run: the keys are theirs
        keys = cluster_dcs.Dcs(settings).keys()
    except BakeryError as error:
        return [f"cannot check the DCS for an earlier cluster of this scope: {error}"]
    if not keys.initialized:
        return []
    return [
        f"the DCS still holds {len(keys.keys)} key(s) of an earlier cluster "
        f"{settings.cluster.scope} under {keys.prefix}: its `initialize` key keeps a new "
        "cluster from bootstrapping (it waits for a leader forever, or fails with a system "
        "ID mismatch). Clear them with `invoke destroy --yes` (lifecycle.dcs_url set) or "
        f"`{cluster_dcs.by_hand(settings)}`"
    ]


# -- 2. create ------------------------------------------------------------------------------


class _Launch:
    def __init__(self, settings: Settings, targets: dict[str, AzTarget], log):
        self.settings = settings
        self.targets = targets
        self.log = log
        self.cleanup = Cleanup(log)
        self.cancel = threading.Event()

    def run(self, labels: list[str], existing: dict) -> LaunchResult:
        try:
            result = self._create(labels, existing)
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

    def _create(self, labels: list[str], existing: dict) -> LaunchResult:
        running = {name: n for name, n in existing.items() if n.server is not None}
        for node in running.values():
            self.log(f"{node.az}: server {node.name} ({node.server.id}) exists: left alone")
        ports = {}
        for name, label, configured in planning.node_slots(self.settings, labels):
            if name in existing and existing[name].port is not None:
                ports[name] = existing[name].port
                if name not in running:
                    self.log(f"{label}: port {port_name(name)} exists: the server boots on it")
            elif name not in running:
                ports[name] = create_port(
                    self.settings, self.targets[label], name, configured, self.cleanup, self.log
                )
        addresses = {name: port.fixed_ips[0]["ip_address"] for name, port in ports.items()}
        for name, node in running.items():
            addresses.setdefault(name, node.address or _server_address(node.server))
        to_create = [
            n for n, _, _ in planning.node_slots(self.settings, labels) if n not in running
        ]
        bundles, plan = render_bundles(self.settings, labels, addresses, to_create)
        servers = {
            b.node.name: boot_server(
                self.settings,
                self.targets[b.node.az],
                b,
                ports[b.node.name],
                self.cleanup,
                self.log,
            )
            for b in bundles
        }
        for bundle in bundles:
            node = bundle.node
            wait_active(self.targets[node.az].conn, servers[node.name], node, self.cancel)
        planning.save(self.settings, plan)
        servers |= {name: node.server for name, node in running.items()}
        nodes = [
            LaunchedNode(
                n.name,
                n.az,
                n.environment,
                servers[n.name].id,
                str(addresses[n.name]),
                self.targets[n.az].image.name
                if n.name not in running
                else _image_name(running[n.name]),
                n.name not in running,
            )
            for n in plan.nodes
        ]
        return LaunchResult(nodes, bundles)


def render_bundles(
    settings: Settings, labels: list[str], addresses: dict[str, Any], names: Iterable[str]
) -> tuple[list[Bundle], planning.Plan]:
    """The bundles of the named nodes, each for its address; `addresses` holds every node of
    the AZs (a node without a port yet: any stand-in, its bundle is not rendered)."""
    plan = planning.make_plan(settings, labels, _ipv4(addresses))
    wanted = set(names)
    chosen = [n for n in plan.nodes if n.name in wanted]
    return build_bundles(settings, planning.Plan(chosen, plan.overlay_allocations)), plan


def _server_address(server) -> str:
    """The first fixed address of a server (for a node whose port is gone)."""
    for entries in (server.addresses or {}).values():
        for entry in entries:
            if entry.get("version") == 4:
                return entry["addr"]
    raise CloudError(
        f"server {server.name} has no IPv4 address and no port {port_name(server.name)}"
    )


def _image_name(node: cloud_cluster.CloudNode) -> str:
    return node.generation.name if node.generation is not None else f"image {node.image_id}"


def wait_active(conn, server, node, cancel: threading.Event) -> None:
    wait_for(
        f"server {node.name} to become ACTIVE",
        functools.partial(server_in, conn, server.id, "ACTIVE", f"AZ {node.az}"),
        BOOT_TIMEOUT,
        cancel,
    )


def create_port(settings: Settings, target: AzTarget, node: str, configured, cleanup, log):
    """The node's port (its lasting address), registered for removal before it is made."""
    conn, name = target.conn, port_name(node)
    cleanup.push(
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
            description=f"bakery node {node} of cluster {settings.cluster.scope}",
            **groups,
        )
        conn.network.set_tags(port, [TAG, cloud_cluster.cluster_tag(settings.cluster.scope)])
    log(f"{target.label}: port {name} {port.fixed_ips[0]['ip_address']}")
    return port


def boot_server(settings: Settings, target: AzTarget, bundle: Bundle, port, cleanup, log):
    """The node's server on its port with its bundle as user-data, registered for removal
    before it is made."""
    node = bundle.node
    conn = target.conn
    cleanup.push(
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
                "bakery_cluster": settings.cluster.scope,
                "bakery_az": node.az,
            },
            tags=[TAG],
            **extra,
        )
    log(f"{node.az}: server {node.name} ({server.id}) from {target.image.name}")
    return server


def _delete_ports(conn, name: str) -> None:
    for port in conn.network.ports(name=name):
        conn.network.delete_port(port, ignore_missing=True)
