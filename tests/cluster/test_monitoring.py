"""Metrics of the cluster: a real Prometheus with deploy/prometheus and the rendered target
lists scrapes Patroni, node_exporter and postgres_exporter of every node over the overlay;
nobody outside monitoring.networks (198.19.0.1/32, the DCS host, in cluster.yaml) gets in:
Nebula drops another member, the scrape guard resets a host beside the overlay, pg_hba refuses
the monitor role from the cluster's own network."""

from __future__ import annotations

import dataclasses
import re
import socket
from pathlib import Path

import pytest
from harness import Cluster, wait_for
from netns import entered, run
from pgclient import Psql
from prometheus import Prometheus

from bakery.node.monitoring import MONITOR_ROLE, NODE_EXPORTER_PORT, POSTGRES_EXPORTER_PORT

EXPORTER_PORTS = (NODE_EXPORTER_PORT, POSTGRES_EXPORTER_PORT)


@pytest.fixture(scope="module")
def prometheus(cluster: Cluster):
    server = Prometheus.start(cluster)
    try:
        yield server
    finally:
        server.stop(cluster.sup)


def connect(netns: str, address: str, port: int, timeout: float = 3) -> str:
    """What a TCP connect from inside `netns` meets: 'connected', 'refused' or 'timeout'."""
    with entered(netns):
        sock = socket.socket()
    sock.settimeout(timeout)
    try:
        sock.connect((address, port))
        return "connected"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    finally:
        sock.close()


def scrape(netns: str, address: str, port: int) -> str:
    """GET /metrics from inside `netns`, as Prometheus does."""
    with entered(netns):
        sock = socket.create_connection((address, port), timeout=5)
    with sock:
        sock.sendall(f"GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head[:200]
    return body.decode()


def test_prometheus_scrapes_every_node_over_the_overlay(cluster: Cluster, prometheus):
    leader, replica = cluster.heal()
    addresses = {node.name: node.address for node in cluster.nodes.values()}

    def all_up():
        targets = prometheus.targets()
        up = {(t["labels"]["job"], t["labels"]["instance"]) for t in targets if t["health"] == "up"}
        return len(up) == 3 * len(addresses) and up

    up = wait_for("every target up in Prometheus", all_up, timeout=120, every=2)
    for address in addresses.values():  # on the overlay, each job at its own port
        assert {j for j, i in up if i.rsplit(":", 1)[0] == address} == {
            "patroni",
            "node",
            "postgres",
        }

    def series(expr):
        return {r["metric"].get("name"): r["value"][1] for r in prometheus.query(expr)}

    # Patroni 4's metric, labelled by Patroni itself.
    assert wait_for("patroni_primary of both", lambda: len(series("patroni_primary")) == 2, 60)
    assert series("patroni_primary") == {leader: "1", replica: "0"}
    # postgres_exporter logged in as the monitor role on every node.
    assert wait_for("pg_up of both", lambda: series("pg_up") == dict.fromkeys(addresses, "1"), 60)
    # node_exporter's own metrics, with the scope and member labels of the target list.
    uname = prometheus.query("node_uname_info")
    assert {r["metric"]["name"] for r in uname} == set(addresses)
    assert {r["metric"]["scope"] for r in uname} == {cluster.settings["cluster"]["scope"]}


def test_no_alert_fires_on_a_healthy_cluster(cluster: Cluster, prometheus):
    cluster.heal()
    wait_for("pg_up in Prometheus", lambda: prometheus.query("pg_up == 1"), 120, every=2)
    # The rules were evaluated at least once after the first scrape (15 s intervals).
    wait_for(
        "a rule evaluation after the scrapes",
        lambda: prometheus.query("bakery_patroni_maximum_lag_on_failover_bytes"),
        60,
        every=2,
    )
    assert prometheus.query('ALERTS{alertstate="firing"}') == []


def test_each_exporter_answers_a_scrape_from_the_monitoring_network(cluster: Cluster):
    cluster.heal()
    dcs = cluster.infra.host.netns
    for node in cluster.nodes.values():
        metrics = scrape(dcs, node.address, NODE_EXPORTER_PORT)
        assert re.search(r"^node_load1 [0-9.e+-]+$", metrics, re.M), node.name
        assert re.search(r"^pg_up 1$", scrape(dcs, node.address, POSTGRES_EXPORTER_PORT), re.M)


def test_exporters_listen_only_on_the_overlay_address(cluster: Cluster):
    leader, _ = cluster.heal()
    node = cluster.node(leader)
    listening = [line.split()[3] for line in node.enter(["ss", "-ltnH"]).stdout.splitlines()]
    for port in EXPORTER_PORTS:
        local = {address for address in listening if address.endswith(f":{port}")}
        assert local == {f"{node.address}:{port}"}


def test_a_member_outside_the_monitoring_networks_is_dropped_by_nebula(cluster: Cluster):
    leader, replica = cluster.heal()
    target = cluster.node(leader).address
    member = cluster.node(replica).host.netns  # on the overlay, not in monitoring.networks
    assert connect(member, target, 8008) == "connected"  # the overlay path itself works
    for port in EXPORTER_PORTS:
        assert connect(member, target, port) == "timeout", port
    dcs = cluster.infra.host.netns  # inside the monitoring networks
    for port in EXPORTER_PORTS:
        assert connect(dcs, target, port) == "connected", port


def test_a_host_beside_the_overlay_is_reset_by_the_scrape_guard(cluster: Cluster):
    """The outsider routes straight to the overlay address over the underlay, past Nebula:
    the node's own nftables guard answers with a reset."""
    leader, _ = cluster.heal()
    node = cluster.node(leader)
    outsider = cluster.net.hosts["out"]
    route = (f"{node.address}/32", "via", node.host.underlay)
    run("ip", "-n", outsider.netns, "route", "replace", *route)
    assert connect(outsider.netns, node.address, 8008) == "connected"  # the route works
    for port in EXPORTER_PORTS:
        assert connect(outsider.netns, node.address, port) == "refused", port
    rules = node.enter(["nft", "list", "table", "inet", "bakery_scrape_guard"]).stdout
    (rejected,) = re.findall(r"counter packets (\d+) bytes \d+ reject with tcp reset", rules)
    assert int(rejected) >= len(EXPORTER_PORTS)


def test_monitor_role_logs_in_only_from_the_monitoring_networks(cluster: Cluster):
    leader, replica = cluster.heal()
    target = cluster.node(leader).target
    password = (Path(cluster.settings["state_dir"]) / "secrets" / "monitor").read_text().strip()
    monitor = dataclasses.replace(cluster.psql, user=MONITOR_ROLE, password=password)
    # From the DCS host (in monitoring.networks): TLS and SCRAM, reading what pg_monitor may.
    assert monitor.query(target, "SELECT pg_has_role('pg_monitor', 'member')") == "t"
    superuser = "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
    assert monitor.query(target, superuser) == "f"
    # From another member: inside allowed_networks, outside monitoring.networks.
    member = Psql(cluster.node(replica).host.netns, cluster.ca, MONITOR_ROLE, password)
    refused = member.run(target, "SELECT 1")
    assert refused.returncode != 0
    assert f'rejects connection for host "{cluster.node(replica).address}", user "monitor"' in (
        refused.stderr
    )
    # postgres_exporter itself logs in on the node, over loopback, at each scrape.
    scraped = scrape(cluster.infra.host.netns, cluster.node(leader).address, POSTGRES_EXPORTER_PORT)
    assert re.search(r"^pg_up 1$", scraped, re.M)
    sessions = "SELECT DISTINCT client_addr FROM pg_stat_activity WHERE usename = 'monitor'"
    clients = cluster.local_sql(leader, sessions)
    assert "127.0.0.1" in clients.stdout.split()
