"""`invoke launch --az a --az b` into the test cloud, and the nodes run for real: each server's
guest writes its user-data's files and starts the image's units (Nebula, Patroni 4.1.5 with
PostgreSQL 14.23), over the environments' own networks routed through the public segment,
with the lighthouse and the three etcd members outside both (tests/cloud/outside.py).

Each test starts from a healthy cluster (`heal`) and asserts only on a table of its own; the
deletion of the leader's server runs last, since a deleted server does not come back.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from harness import never_two_writers, wait_for
from netns import entered
from processes import alive, boot_ticks, start_time

from bakery.node import monitoring
from tests.owned_netns import ns_inode, ns_path, pids_in_netns
from tests.sigterm import teardown_first

from . import guest, underlay
from .outside import LaunchedCluster
from .workflow import cluster_config, end_cluster, run_task

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK50Warning"),
    pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK60Warning"),
]
# workflow.cluster_config's Patroni timings.
TTL, LOOP_WAIT = 20, 2
EXPECTED = {"e1-postgresql-0": ("az1", "compute1"), "e2-postgresql-0": ("az2", "compute2")}
LEADER_LOCK = "promoted self to leader by acquiring session lock"  # Patroni's log


@pytest.fixture(scope="module")
def launched(cloud, released, tmp_path_factory, cloud_report, request):
    """The outside (lighthouse, etcd), then `invoke launch --az a --az b`, until healthy."""
    config = cluster_config(tmp_path_factory.mktemp("cluster"))
    assert run_task(cloud, config, "ca").returncode == 0
    conns = {name: cloud.connect(name) for name in cloud.clouds}
    cluster = LaunchedCluster(config=config)
    failed_before = request.session.testsfailed
    try:
        cluster.start_outside()
        started = time.monotonic()
        # Launch waits for a healthy cluster (lifecycle.launch_timeout), read from the consoles.
        result = run_task(cloud, config, "launch", "--az", "a", "--az", "b", timeout=900)
        assert result.returncode == 0, result.stderr
        cluster.attach(conns, cloud.connect(cloud.admin_cloud))
        cluster.wait_healthy(300)
        took = time.monotonic() - started
        cloud_report.append(f"cloud tier: launch to healthy cluster {took:.0f} s")
        yield cluster
    finally:
        with teardown_first():
            end_cluster(cluster, conns.values(), request.session.testsfailed != failed_before)


def new_table(cluster: LaunchedCluster, leader: str, table: str, *rows: str) -> None:
    sql = f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (note text PRIMARY KEY);"
    sql += "".join(f"INSERT INTO {table} VALUES ('{row}');" for row in rows)  # noqa: S608
    cluster.psql.query(cluster.node(leader).target, sql)


def rows(cluster: LaunchedCluster, name: str, table: str) -> set[str]:
    out = cluster.psql.query(cluster.node(name).target, f"SELECT note FROM {table}")  # noqa: S608
    return set(out.splitlines())


def wait_rows(cluster: LaunchedCluster, name: str, table: str, expected: set[str]) -> None:
    wait_for(f"{sorted(expected)} on {name}", lambda: rows(cluster, name, table) == expected, 60)


def presented_certificate(cluster: LaunchedCluster, address: str) -> x509.Certificate:
    """The certificate a node's REST API presents, verified against the cluster CA."""
    context = ssl.create_default_context(cafile=cluster.ca)
    context.check_hostname = False  # checked below, against the Neutron port's address
    with entered(cluster.infra.host.netns):
        sock = socket.create_connection((address, 8008), timeout=5)
    with context.wrap_socket(sock) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def test_launched_nodes_form_a_streaming_cluster_over_the_overlay(launched: LaunchedCluster):
    leader, replica = launched.heal()
    assert set(launched.nodes) == set(EXPECTED)
    assert sorted(m["role"] for m in launched.members()) == ["leader", "replica"]
    assert launched.status(replica)["replication_state"] == "streaming"
    for name, (zone, host) in EXPECTED.items():
        assert launched.server(name).availability_zone == zone
        assert launched.admin.compute.get_server(launched.servers[name][1]).compute_host == host

    new_table(launched, leader, "bkc_launch", "on-the-leader")
    wait_rows(launched, replica, "bkc_launch", {"on-the-leader"})
    # Replication runs over the overlay: the leader sees the replica at its overlay address.
    clients = launched.psql.query(
        launched.node(leader).target, "SELECT client_addr FROM pg_stat_replication"
    )
    assert clients.splitlines() == [launched.node(replica).address]

    for name, node in launched.nodes.items():
        conn, _ = launched.servers[name]
        (port,) = conn.network.ports(name=f"bakery-{name}")
        port_address = ipaddress.ip_address(port.fixed_ips[0]["ip_address"])
        presented = presented_certificate(launched, node.address)
        issued = x509.load_pem_x509_certificate(node.file("/etc/patroni/tls/node.pem").read_bytes())
        assert presented.public_bytes(Encoding.DER) == issued.public_bytes(Encoding.DER)
        sans = presented.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert port_address in sans.get_values_for_type(x509.IPAddress)

    console = launched.console(leader)
    assert "[  OK  ] Started patroni.service" in console
    assert "Cloud-init v. " in console and " finished at " in console
    assert "BAKERY-MANIFEST {" in console
    # The bundle's metrics services, from Debian's units and the image's drop-ins.
    for unit in monitoring.SERVICES:
        verb = "Finished" if unit == "bakery-scrape-guard.service" else "Started"
        assert f"[  OK  ] {verb} {unit}" in console
    assert "[FAILED]" not in console


def test_a_stopped_replica_comes_back_streaming_with_its_data(launched: LaunchedCluster):
    leader, replica = launched.heal()
    new_table(launched, leader, "bkc_stop", "before-stop")
    wait_rows(launched, replica, "bkc_stop", {"before-stop"})
    disk = launched.disk(replica)
    data = disk / "root/var/lib/postgresql/14/patroni"
    data_inode = (data / "PG_VERSION").stat().st_ino

    launched.stop_server(replica)  # Nova's stop: an ACPI shutdown
    assert guest.processes(disk) == []
    console = launched.console(replica)
    assert "[  OK  ] Stopped patroni.service" in console
    assert console.rstrip().endswith("reboot: Power down")
    launched.psql.query(launched.node(leader).target, "INSERT INTO bkc_stop VALUES ('stopped')")

    launched.start_server(replica)  # boots the same disk again
    launched.wait_streaming(120, name=replica)
    assert (data / "PG_VERSION").stat().st_ino == data_inode  # no new copy of the data
    wait_rows(launched, replica, "bkc_stop", {"before-stop", "stopped"})
    assert launched.leader() == leader


def test_soft_and_hard_reboots_of_the_replica(launched: LaunchedCluster):
    leader, replica = launched.heal()
    conn, server_id = launched.servers[replica]
    disk = launched.disk(replica)
    boots = guest.read(disk, "state.json")["boots"]
    power_downs = launched.console(replica).count("reboot: Power down")
    for kind in ("SOFT", "HARD"):
        before = guest.read(disk, guest.RUN)["runner"]
        conn.compute.reboot_server(server_id, kind)
        wait_for(f"{kind} reboot of {replica}", lambda b=before: _rebooted(disk, b), 120)
        launched.wait_for_server(replica)
        launched.wait_streaming(120, name=replica)
    console = launched.console(replica)
    # The soft one shut down cleanly (ACPI), the hard one was a power cut: one power-down line.
    assert console.count("reboot: Power down") == power_downs + 1
    assert "bakery-guest: soft reboot" in console and "bakery-guest: hard reboot" in console
    assert guest.read(disk, "state.json")["boots"] == boots + 2
    # cloud-init's runcmd ran once for the instance; the units it enabled came back each boot.
    assert console.count("Cloud-init v. ") == boots + 2
    assert launched.journal_lines(replica, "runner", "runcmd: systemctl start") == 1


def _rebooted(disk, runner_before: int) -> bool:
    state = guest.read(disk, guest.RUN)
    return bool(state) and state["runner"] != runner_before and "holder" in state


def test_cutting_the_public_underlay_never_leaves_two_writers(launched: LaunchedCluster):
    leader, replica = launched.heal()
    cloud = launched.environments[leader]
    underlay.cut(launched.layout, cloud)
    try:
        seen = launched.watch_writers(leader, replica, 3 * TTL + 30)
    finally:
        underlay.restore(launched.layout, cloud)
    never_two_writers(seen, leader, replica)
    launched.wait_streaming(180, name=leader)
    assert launched.leader() == replica


def test_deleting_the_leaders_server_promotes_the_replica_within_ttl(
    launched: LaunchedCluster, cloud_report
):
    leader, replica = launched.heal()
    new_table(launched, leader, "bkc_delete", "before-delete")
    wait_rows(launched, replica, "bkc_delete", {"before-delete"})
    disk = launched.disk(leader)
    spec = guest.read(disk, guest.GUEST)
    inode = ns_inode(ns_path(spec["netns"]))
    running = [(pid, start_time(pid)) for pid in guest.processes(disk)]
    assert len(running) > 3  # the VM process, its holder, nebula, patroni, postgres ...

    conn, server_id = launched.servers[leader]
    server = launched.server(leader)
    deleted_at, deleted_ticks = time.monotonic(), boot_ticks()
    conn.compute.delete_server(server)  # a hard power-off, then the disk goes
    wait_for("the leader's guest gone", lambda: not any(alive(*p) for p in running), 60, 0.1)
    killed_at, killed_wall = time.monotonic(), time.time()
    launched.wait_leader(TTL + LOOP_WAIT + 60, not_=leader)
    writable = launched.wait_writable(replica, 30) - killed_at
    # Patroni logs this in the loop that takes the lock, as it starts the promotion.
    locked = launched.logged_at(replica, "patroni", LEADER_LOCK, killed_wall) - killed_wall
    cloud_report.append(
        f"cloud tier: leader's server deleted -> the replica took the leader lock {locked:.1f} s "
        f"after its power-off ({killed_at - deleted_at:.1f} s after the delete) and took writes "
        f"after {writable:.1f} s (ttl {TTL}, loop_wait {LOOP_WAIT})"
    )
    # The lock expires ttl after its last renewal, which came before the power-off, and the
    # replica looks every loop_wait: Patroni's own bound, and a second for the busy machine.
    assert 0 < locked <= TTL + LOOP_WAIT + 1
    assert rows(launched, replica, "bkc_delete") == {"before-delete"}

    conn.compute.wait_for_delete(server, interval=1, wait=120)
    assert not disk.exists()
    assert ns_inode(ns_path(spec["netns"])) is None
    # (A process started later in a namespace that reuses the number is someone else's.)
    assert [p for p in pids_in_netns(inode) if (start_time(p) or 0) <= deleted_ticks] == []
    del launched.servers[leader]
    del launched.nodes[leader]
